"""The qcow2 format driver: a :class:`BlockDriver` over a protocol node.

Reads follow the mapping to data, zero, compressed or backing-file content.
Writes overwrite in place where OFLAG_COPIED says the cluster is ours alone,
and otherwise allocate new clusters with copy-on-write of the partial
clusters' old content (spec "Cluster mapping", QEMU block/qcow2-cluster.c).

Metadata ordering, as QEMU does it with cache dependencies (see
:mod:`.cache`): refcounts are durable before the L2 entries that use the new
clusters, copy-on-write data before the L2 entry that exposes it, new L2
tables before the L1 entry that points at them, and L2 entries are cleared
durably before the refcount drop that frees their clusters.  A host crash at
any moment therefore leaves an image that checks clean except for leaks.

This module holds :class:`Qcow2Driver` itself: opening (header, caches,
overlap map, backing and data files), header rewrites, reopening read/write,
corruption handling, flush, truncate and close (QEMU block/qcow2.c).  The
I/O paths are mixins in their own modules, as QEMU splits qcow2 by concern:
:mod:`.read_path` (reads and the mapping lookups), :mod:`.write_path`
(writes, allocation with copy-on-write, compressed writes), :mod:`.zero`
(write_zeroes and discard) and :mod:`.status` (block status); :mod:`.state`
declares the attributes they rely on.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Callable

from ... import trace
from ..driver import (BlockDriver, BlockError, CorruptImageError, ImageFormatError,
                      ReadOnlyError)
from .bitmaps import BitmapStore
from .cluster import L2E_OFFSET_MASK, Mapping, cluster_type, cluster_type_data_file
from .header import (MAX_L1_BYTES, AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS,
                     INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY,
                     MAX_CLUSTER_BITS, Header, parse_header)
from .helpers import _log, _node_path
from .overlap import OverlapMap
from .read_path import Qcow2ReadPath
from .refcount import RefcountManager
from .snapshot import Snapshot, read_snapshots
from .status import Qcow2Status
from .write_path import Qcow2WritePath
from .zero import Qcow2ZeroPath

# Defined in the modules above and importable from here as before the split
# (subcluster.py, cli/img.py and the tests import some of them from this module).
from .helpers import _ZEROS, _zero_fill                     # noqa: F401
from .status import _mergeable, chain_reads_zero            # noqa: F401


DEFAULT_L2_CACHE_MAX = 32 << 20      # QEMU DEFAULT_L2_CACHE_MAX_SIZE
MAX_BACKING_DEPTH = 128


class BackingChainTooDeep(ImageFormatError):
    """More backing files than :data:`MAX_BACKING_DEPTH`.  QEMU 7.2 sets no fixed limit (a chain
    of 1,100 qcow2 files opens in qemu-img); ours guards the opener's recursion (about five
    Python frames per level, so 128 stays far from the interpreter's limit) and is reported as
    one line at the top instead of one "Could not open backing file" per level."""

_OPTIONS = frozenset({
    "l2-cache-size", "refcount-cache-size", "backing", "data-file", "pass-discard-request",
    "x-unsafe-l2-before-refcount", "filename", "x-check", "cache.no-flush",
    "encrypt.key-secret", "x-no-io",
})

# realpaths of images being opened right now, to refuse backing loops
_opening: list[str] = []


def _parse_size(v) -> int:
    if isinstance(v, int):
        return v
    s = str(v).strip()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if s and s[-1].lower() in mult:
        return int(float(s[:-1]) * mult[s[-1].lower()])
    return int(s)


class Qcow2Driver(Qcow2ReadPath, Qcow2WritePath, Qcow2ZeroPath, Qcow2Status, BlockDriver):
    """A qcow2 image on ``file`` (options: ``l2-cache-size``, ``refcount-cache-size``,
    ``backing`` (a node, or None for no backing), ``pass-discard-request``,
    ``x-unsafe-l2-before-refcount``, ``filename``)."""

    driver_name = "qcow2"

    def __init__(self, file: BlockDriver, *, read_only: bool = False,
                 options: dict | None = None,
                 opener: Callable[..., BlockDriver] | None = None,
                 filename: str | None = None):
        opts = dict(options or {})
        unknown = sorted(set(opts) - _OPTIONS)
        if unknown:
            raise BlockError(errno.EINVAL, f"qcow2: unknown option '{unknown[0]}'; allowed: "
                                           f"{', '.join(sorted(_OPTIONS))}")
        if opts.get("cache.no-flush"):
            file = _NoFlush(file)        # cache=unsafe: flushes never reach the host
        self.file = file
        self.options = opts
        self.read_only = bool(read_only or file.read_only)
        self.filename = filename or opts.get("filename") or _node_path(file)
        self.backing: BlockDriver | None = None
        self.corrupt = False
        self._closed = False
        self.unsafe_order = bool(opts.get("x-unsafe-l2-before-refcount", False))
        self.pass_discard = bool(opts.get("pass-discard-request", True))
        self.repair_message: str | None = None
        self._set_dirty = False
        flen = file.length()
        first = bytearray(min(flen, 512))
        file.read(0, memoryview(first))
        if len(first) < 72 or first[:4] != b"QFI\xfb":
            raise ImageFormatError("Image is not in qcow2 format")
        cb = int.from_bytes(first[20:24], "big")
        if not 9 <= cb <= MAX_CLUSTER_BITS:
            raise ImageFormatError(f"Unsupported cluster size: 2^{cb}")
        raw = bytearray(min(flen, 1 << cb))
        file.read(0, memoryview(raw))
        self.check_mode = bool(opts.get("x-check", False))   # qemu-img check: allow repair
        self.header: Header = parse_header(bytes(raw), check=self.check_mode)
        h = self.header
        self.cluster_bits = h.cluster_bits
        self.cluster_size = h.cluster_size
        self.l2_bits = h.cluster_bits - 3 - h.extended_l2
        self.corrupt = bool(h.incompatible_features & INCOMPAT_CORRUPT)
        if self.corrupt and not self.read_only and not self.check_mode:
            raise ImageFormatError("qcow2: Image is corrupt; cannot be opened read/write")
        self.data_node: BlockDriver | None = None
        self.has_data_file = bool(h.incompatible_features & INCOMPAT_DATA_FILE)
        self.data_file_raw = bool(h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW)
        self._ctype = cluster_type_data_file if self.has_data_file else cluster_type
        if h.extended_l2:
            # subcluster-aware I/O lives in its own module (spec "Extended L2 Entries")
            from .subcluster import ExtL2Driver, extl2_ctype
            self.__class__ = ExtL2Driver
            self._ctype = extl2_ctype(self.has_data_file)
        self.overlap = OverlapMap(h.cluster_bits, self._overlap_violation)
        # cache sizes (QEMU: l2-cache-size defaults to what covers the disk, up to 32 MiB)
        cs = self.cluster_size
        need = max(1, -(-h.size // (cs << self.l2_bits))) * cs
        l2_bytes = _parse_size(opts.get("l2-cache-size", min(need, DEFAULT_L2_CACHE_MAX)))
        rc_bytes = _parse_size(opts.get("refcount-cache-size", max(4 * cs, l2_bytes // 4)))
        self.refcounts = RefcountManager(self, max(4, rc_bytes // cs))
        self.mapping = Mapping(self, max(2, l2_bytes // cs))
        self.refcounts.load_table()
        self.mapping.load_l1()
        self.snapshots: list[Snapshot] = []
        snap_bytes = 0
        self.snapshot_table_bytes = 0
        self.snapshot_error: str | None = None    # check mode: why the table is unreadable
        if h.nb_snapshots:
            try:
                self.snapshots, snap_bytes = read_snapshots(file, h.snapshots_offset,
                                                            h.nb_snapshots, cs, flen)
            except ImageFormatError as e:
                if not self.check_mode:
                    raise
                self.snapshot_error = str(e)     # reported by check (as QEMU's)
            self.snapshot_table_bytes = snap_bytes
        self.bitmaps = BitmapStore(self)
        self._build_overlap_map(snap_bytes)
        self.crypto = None
        if h.crypt_method:
            from .encryption import open_crypto
            self.crypto = open_crypto(self, opts)
        self.lazy_refcounts = bool(h.compatible_features & COMPAT_LAZY_REFCOUNTS)
        self._open_backing(opts, opener)
        if self.has_data_file:
            self._open_data_file(opts, opener)
        if h.incompatible_features & INCOMPAT_DIRTY and not self.read_only and not self.check_mode:
            self._repair_dirty()
        if not self.read_only and h.version >= 3 and h.autoclear_features & ~AUTOCLEAR_BITMAPS:
            # unknown autoclear bits must be cleared by a writer (spec "autoclear_features")
            h.autoclear_features &= AUTOCLEAR_BITMAPS
            self._write_features()
        if not self.read_only and not self.check_mode:
            self.bitmaps.open_rw()      # persistent bitmaps: loaded, flagged IN_USE

    # --- opening helpers -----------------------------------------------------
    def _build_overlap_map(self, snap_bytes: int) -> None:
        h, cs = self.header, self.cluster_size
        ov = self.overlap
        ov.add(0, cs, "header")
        # The L1 entries the virtual size needs are "l1"; a longer table is legal and
        # its tail ("l1_unused") is protected from writes as QEMU does, but it is
        # never looked up, so entries there claim no L2 table and a data read from a
        # cluster the tail covers is not refused.
        needed = self._l1_needed()
        if h.l1_size:
            used = min(h.l1_size, needed) * 8
            if h.l1_size > needed:
                ov.add(h.l1_table_offset + used, h.l1_size * 8 - used, "l1_unused")
            if used:
                ov.add(h.l1_table_offset, used, "l1")
        ov.add(h.refcount_table_offset, h.refcount_table_clusters * cs, "reftable")
        for off in self.refcounts.table:
            if off:
                ov.add(off, cs, "refblock")
        for e in self.mapping.l1[:needed]:
            off = e & L2E_OFFSET_MASK
            if off:
                ov.add(off, cs, "l2")
        if snap_bytes:
            ov.add(h.snapshots_offset, snap_bytes, "snapshot_table")
        for s in self.snapshots:
            # a snapshot whose L1 reference is invalid (refused when used) claims
            # nothing: its bogus range would cover other, healthy metadata
            if s.l1_size and s.l1_size <= MAX_L1_BYTES // 8 and not s.l1_table_offset % cs:
                ov.add(s.l1_table_offset, s.l1_size * 8, "inactive_l1")
        if h.bitmaps and h.bitmaps["bitmap_directory_size"]:
            ov.add(h.bitmaps["bitmap_directory_offset"], h.bitmaps["bitmap_directory_size"],
                   "bitmap_directory")
        if h.crypto and h.crypto["length"]:
            ov.add(h.crypto["offset"], h.crypto["length"], "crypto_header")
        for e in self.bitmaps.entries:
            # not in QEMU's overlap checks: a guest write through a damaged L2 entry
            # would otherwise land on a bitmap table (found by tests/test_qcow2_fuzz.py)
            if e.table_size:
                ov.add(e.table_offset, e.table_size * 8, "bitmap_table")

    def _l1_needed(self) -> int:
        """L1 entries the virtual size needs (QEMU size_to_l1)."""
        span = 1 << (self.cluster_bits + self.l2_bits)
        return -(-self.header.size // span)

    def _open_backing(self, opts: dict, opener) -> None:
        h = self.header
        if "backing" in opts:
            self.backing = opts["backing"]
            return
        if not h.backing_file:
            return
        if opener is None:
            raise ImageFormatError(f"qcow2: image has a backing file ({h.backing_file}) but no "
                                   "opener was given to open it")
        path = self.backing_path()
        real = os.path.realpath(path)
        me = os.path.realpath(self.filename) if self.filename else None
        if real == me or real in _opening:
            raise ImageFormatError(f"qcow2: backing file loop: {h.backing_file!r} "
                                   "is already part of the backing chain")
        if len(_opening) >= MAX_BACKING_DEPTH:
            raise BackingChainTooDeep(f"Backing chain is too deep: more than {MAX_BACKING_DEPTH} "
                                      f"images below '{_opening[0]}'")
        if me:
            _opening.append(me)
        try:
            self.backing = opener(path, format=h.backing_format, read_only=True)
        except BackingChainTooDeep:
            raise                     # one line, not "Could not open backing file: " per level
        except BlockError as e:
            raise ImageFormatError(f"Could not open backing file: {e}") from None
        except OSError as e:
            raise ImageFormatError(f"Could not open backing file '{path}': "
                                   f"{e.strerror or e}") from None
        finally:
            if me:
                _opening.remove(me)

    def _open_data_file(self, opts: dict, opener) -> None:
        """The external data file (spec "External data file name"): a raw node that holds
        every guest data cluster at its guest offset."""
        if "data-file" in opts:
            self.data_node = opts["data-file"] or _MissingDataFile(self.header.data_file)
            return
        if opener is None:
            raise ImageFormatError("qcow2: the image keeps its data in an external data file "
                                   f"({self.header.data_file}) but no opener was given")
        # QEMU opens the name as written (relative names are relative to the current
        # directory, not to the image's directory as backing files are)
        path = self.header.data_file
        try:
            self.data_node = opener(path, format="raw", read_only=self.read_only)
        except OSError as e:
            raise ImageFormatError(f"Could not open data file '{path}': "
                                   f"{getattr(e, 'strerror', None) or e}") from None

    def relative_path(self, name: str) -> str:
        if os.path.isabs(name) or not self.filename:
            return name
        return os.path.join(os.path.dirname(self.filename), name)

    def backing_path(self) -> str:
        """The backing file name resolved against this image's directory (as QEMU does)."""
        name = self.header.backing_file or ""
        if os.path.isabs(name) or not self.filename or ":" in name.split("/")[0]:
            return name
        return os.path.join(os.path.dirname(self.filename), name)

    def _repair_dirty(self) -> None:
        from .check import check_image
        res = check_image(self, repair="all")
        self.header.incompatible_features &= ~INCOMPAT_DIRTY
        self._write_features()
        self.repair_message = ("qcow2: image was not closed cleanly (dirty bit set with "
                               "lazy_refcounts); refcounts were repaired: "
                               f"{res.leaks_fixed} leaks and {res.corruptions_fixed} "
                               "corruptions fixed")
        _log().warning("%s", self.repair_message)
        if trace.enabled:
            trace.emit("qcow2.repair_dirty", leaks_fixed=res.leaks_fixed,
                       corruptions_fixed=res.corruptions_fixed)

    def rewrite_header(self) -> None:
        """Write the whole header cluster from :attr:`header` (extensions the driver does not
        know are written back unchanged, as the spec requires of a writer)."""
        from .header import serialize_header
        self._check_writable()
        raw = serialize_header(self.header)
        raw += bytes(self.cluster_size - len(raw))    # QEMU writes the whole cluster
        self.flush()
        self.overlap.check(0, len(raw), "header")
        self.file.write(0, raw)
        self.file.flush()

    def change_backing_file(self, name: str | None, fmt: str | None) -> None:
        """Point the header at another backing file (qemu-img rebase -u)."""
        self.header.backing_file = name or None
        self.header.backing_format = fmt if name else None
        self.rewrite_header()

    def reopen_rw(self) -> None:
        """Make a read-only image writable, as ``qemu-img commit`` reopens its base: the
        protocol node first, then what a writer does at open (refuse a corrupt image,
        repair a dirty one, clear unknown autoclear bits, take the bitmaps in use)."""
        if not self.read_only:
            return
        if self.corrupt:
            raise ImageFormatError("qcow2: Image is corrupt; cannot be opened read/write")
        reopen = getattr(self.file, "reopen_rw", None)
        if reopen is None:
            raise BlockError(errno.EACCES, f"{self.file.describe()}: cannot be reopened "
                                           "for writing")
        reopen()
        self.read_only = False
        h = self.header
        if h.incompatible_features & INCOMPAT_DIRTY:
            self._repair_dirty()
        if h.version >= 3 and h.autoclear_features & ~AUTOCLEAR_BITMAPS:
            h.autoclear_features &= AUTOCLEAR_BITMAPS
            self._write_features()
        self.bitmaps.open_rw()

    def _write_features(self) -> None:
        if self.header.version < 3:
            return
        h = self.header
        self.file.write(72, struct.pack(">QQQ", h.incompatible_features,
                                        h.compatible_features, h.autoclear_features))
        self.file.flush()

    # --- corruption -------------------------------------------------------------
    def _overlap_violation(self, msg: str) -> None:
        self.signal_corruption(msg)

    def signal_corruption(self, msg: str) -> None:
        """Mark the image corrupt (v3 header bit) and refuse further writes (QEMU
        qcow2_signal_corruption; on a read-only image the event is not fatal and is
        worded so).  Always raises CorruptImageError."""
        first = not self.corrupt
        self.corrupt = True
        if first:
            if self.read_only:
                _log().error("qcow2: Image is corrupt: %s; further non-fatal corruption "
                             "events will be suppressed", msg)
            else:
                _log().error("qcow2: Marking image as corrupt: %s; further corruption "
                             "events will be suppressed", msg)
            if trace.enabled:
                trace.emit("qcow2.corrupt", message=msg)
            if not self.read_only and self.header.version >= 3:
                self.header.incompatible_features |= INCOMPAT_CORRUPT
                try:
                    self._write_features()
                except OSError:
                    pass
        raise CorruptImageError(f"qcow2: image is corrupt: {msg}")

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("qcow2: the image is opened read-only")
        if self.corrupt and not self.check_mode:
            raise CorruptImageError("qcow2: the image is marked corrupt; writes are refused "
                                    "(run 'blockbed img check -r all' to repair it)")
        if self.lazy_refcounts and not self._set_dirty and self.header.version >= 3:
            self.header.incompatible_features |= INCOMPAT_DIRTY
            self._write_features()
            self._set_dirty = True

    # --- size -------------------------------------------------------------------
    def length(self) -> int:
        return self.header.size

    # --- flush, resize, close ------------------------------------------------------------------
    def flush(self) -> None:
        if self.read_only or self._closed:
            return
        if self.corrupt and not self.check_mode:
            # metadata of a corrupt image is never written again (QEMU stops the driver);
            # data already written still reaches the disk
            self.file.flush()
            return
        mp, rc = self.mapping, self.refcounts
        if trace.enabled:
            trace.emit("qcow2.flush", dirty_l2=len(mp.cache.dirty),
                       dirty_refblocks=len(rc.cache.dirty))
        if self.data_node is not None:
            self.data_node.flush()          # data before the L2 entries that expose it
        self.file.debug_event("flush_to_os")
        if self.unsafe_order:
            mp.cache.depends = None
            mp.cache.write_dirty()
            rc.cache.write_dirty()
        else:
            mp.cache.write_dirty()
            rc.cache.write_dirty()
            mp.cache.write_dirty()
        self.file.debug_event("flush_to_disk")
        self.file.flush()
        rc.process_discards()

    def truncate(self, length: int) -> None:
        """Grow or shrink the virtual disk (QEMU qcow2_co_truncate; the caller decides
        whether shrinking is wanted, as ``qemu-img resize --shrink``)."""
        self._check_writable()
        self.mapping.check_usable()
        h = self.header
        if length % 512:
            raise BlockError(errno.EINVAL, "The new size must be a multiple of 512")
        if length == h.size:
            return
        if self.snapshots and h.version < 3:
            raise BlockError(errno.ENOTSUP, "Can't resize a v2 image which has snapshots")
        self.bitmaps.check_resize()
        if length < h.size:
            from .shrink import shrink
            shrink(self, length)
            self.bitmaps.resize(length)
            return
        need = -(-length // (1 << (self.cluster_bits + self.l2_bits)))
        if need > len(self.mapping.l1):
            self.mapping.grow_l1(need, exact=True)
        self.file.write(24, struct.pack(">Q", length))
        self.file.flush()
        h.size = length
        self.bitmaps.resize(length)

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.read_only and not self.corrupt:
                self.bitmaps.store()        # persistent bitmaps back, IN_USE cleared
                self.flush()
                if self._set_dirty:
                    self.header.incompatible_features &= ~INCOMPAT_DIRTY
                    self._write_features()
        finally:
            self._closed = True
            self.file.close()
            if self.data_node is not None:
                self.data_node.close()
            if self.backing is not None:
                self.backing.close()

    def children(self):
        kids = [self.file]
        if self.data_node is not None:
            kids.append(self.data_node)
        if self.backing is not None:
            kids.append(self.backing)
        return kids

    def debug_event(self, name: str) -> None:
        self.file.debug_event(name)

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hit/miss statistics of the L2 and refcount-block caches."""
        return {"l2": self.mapping.cache.stats(), "refcount": self.refcounts.cache.stats()}

    def forget_metadata(self, offset: int) -> None:
        """A cluster was freed: drop cached tables and overlap records for it."""
        self.mapping.cache.forget(offset)
        self.refcounts.cache.forget(offset)
        kind = self.overlap.kind_at(offset)
        if kind in ("l2", "refblock"):
            self.overlap.remove(offset, self.cluster_size)


class _MissingDataFile(BlockDriver):
    """Stands in for an external data file that was deliberately not opened (info,
    check): metadata work goes on, any data access fails clearly."""

    driver_name = "missing-data-file"

    def __init__(self, name: str | None):
        self.name = name

    def _fail(self, *args, **kw):
        raise BlockError(errno.ENOENT, f"qcow2: the external data file '{self.name}' is not open")

    read = write = _fail

    def flush(self) -> None:
        pass

    def length(self) -> int:
        return 0


class _NoFlush:
    """Delegates to a node but drops flushes (QEMU's BDRV_O_NO_FLUSH, cache=unsafe)."""

    def __init__(self, node: BlockDriver):
        self._node = node

    def flush(self) -> None:
        pass

    def children(self):
        return (self._node,)

    def __getattr__(self, name):
        return getattr(self._node, name)
