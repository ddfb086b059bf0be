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
"""

from __future__ import annotations

import errno
import os
import struct
from array import array
from typing import Callable, Sequence

from ... import trace
from ..driver import (BlockDriver, BlockError, Buffer, CorruptImageError, Extent,
                      ImageFormatError, ReadOnlyError, check_request)
from .bitmaps import BitmapStore
from .cluster import (L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
                      ClusterType, Mapping, cluster_type, cluster_type_data_file)
from .compress import decompress
from .corrupt import c_hex
from .header import (MAX_L1_BYTES, AUTOCLEAR_BITMAPS, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS,
                     INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY,
                     MAX_CLUSTER_BITS, Header, parse_header)
from .overlap import OverlapMap
from .refcount import RefcountManager
from .snapshot import Snapshot, read_snapshots


def _log():
    """The driver's logger; ``logging`` is imported only when there is something to say
    (it costs start-up time of every ``blockbed img`` command otherwise)."""
    import logging
    return logging.getLogger("blockbed.qcow2")


DEFAULT_L2_CACHE_MAX = 32 << 20      # QEMU DEFAULT_L2_CACHE_MAX_SIZE
_ZEROS = memoryview(bytes(1 << 21))
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


def _zero_fill(buf: memoryview) -> None:
    n = len(buf)
    pos = 0
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        buf[pos:pos + k] = _ZEROS[:k]
        pos += k


def _parse_size(v) -> int:
    if isinstance(v, int):
        return v
    s = str(v).strip()
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    if s and s[-1].lower() in mult:
        return int(float(s[:-1]) * mult[s[-1].lower()])
    return int(s)


class Qcow2Driver(BlockDriver):
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

    # --- reads -------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        if offset < 0 or offset + n > self.header.size:
            check_request(self, offset, n)
        if trace.enabled:
            trace.emit("qcow2.read", offset=offset, length=n)
        if not isinstance(buf, memoryview):
            buf = memoryview(buf)
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
        if self.crypto is not None and (offset | n) & 511:
            from .encryption import aligned_read
            aligned_read(self, offset, buf)      # encrypted I/O is in whole sectors
            return
        cb = self.cluster_bits
        cmask = self.cluster_size - 1
        # fast path: one cluster, allocated data
        if n and (offset & cmask) + n <= self.cluster_size:
            mp = self.mapping
            l1i = offset >> (cb + self.l2_bits)
            if l1i < len(mp.l1) and not mp.damage:
                e1 = mp.l1[l1i]
                # cluster-aligned L2 table and data cluster only; anything else takes
                # the slow path, which signals corruption (qcow2_get_host_offset)
                if e1 & cmask == 0 and e1 & L2E_OFFSET_MASK:
                    e = mp.cache.get(e1 & L2E_OFFSET_MASK)[(offset >> cb) & ((1 << self.l2_bits) - 1)]
                    if e & (OFLAG_COMPRESSED | cmask) == 0 and e & L2E_OFFSET_MASK:
                        self._read_host((e & L2E_OFFSET_MASK) + (offset & cmask), buf, offset)
                        return
        pos = offset
        end = offset + n
        while pos < end:
            run, kind, host = self._extent(pos, end)
            dst = buf[pos - offset:pos - offset + run]
            if kind == ClusterType.NORMAL:
                self._read_host(host, dst, pos)
            elif kind == ClusterType.UNALLOCATED:
                self._read_backing(pos, dst)
            elif kind == ClusterType.COMPRESSED:
                self._read_compressed(pos, host, dst)
            else:
                _zero_fill(dst)
            pos += run

    def _read_host(self, host: int, dst: memoryview, guest: int = -1) -> None:
        """The one place guest data comes from host clusters (decrypted here when the
        image is encrypted; ``guest`` is the guest offset, legacy AES's IV)."""
        self.file.debug_event("read_aio")
        node = self.data_node
        if node is None:
            node = self.file
            self._check_data_cluster(host, len(dst), guest)
        try:
            node.read(host, dst)
        except BlockError as e:
            if e.errno != errno.EINVAL:
                raise
            # data clusters past the end of the file read as zeros (as QEMU's file driver)
            flen = node.length()
            avail = max(0, min(len(dst), flen - host))
            if avail:
                node.read(host, dst[:avail])
            _zero_fill(dst[avail:])
        if self.crypto is not None:
            self.crypto.decrypt(host, guest, dst)

    def _check_data_cluster(self, host: int, n: int, guest: int) -> None:
        """Guest data never comes from a cluster that holds metadata (an L2 entry
        pointing at the L1 table, a refcount block, ...).  QEMU checks overlaps on
        writes only and would return the metadata as data; blockbed refuses the read."""
        kinds = self.overlap.read_kinds
        cb = self.cluster_bits
        first = host >> cb
        last = (host + n - 1) >> cb
        if last << cb >= self.file.length():
            # The tail of a data cluster past the end of the file reads as zeros; a
            # cluster that *starts* past the end was never written (the file was cut):
            # QEMU returns zeros, blockbed an error.
            self.signal_corruption(f"Data cluster offset {c_hex(last << cb)} is beyond the "
                                   f"end of the image file (guest offset: "
                                   f"{c_hex(max(guest, 0))})")
        k = kinds.get(first)
        if k is None:
            if last == first:
                return
            for ci in range(first + 1, last + 1):
                k = kinds.get(ci)
                if k is not None:
                    first = ci
                    break
            else:
                return
        self.signal_corruption(f"Data cluster offset {c_hex(first << cb)} overlaps with "
                               f"metadata ({k}) (guest offset: {c_hex(max(guest, 0))})")

    def _write_host(self, host: int, guest: int, bufs: list) -> None:
        """The one place guest data goes to host clusters (encrypted here when the image
        is: ``bufs`` are joined into fresh ciphertext, the caller's buffers untouched)."""
        if self.crypto is not None:
            bufs = [self.crypto.encrypt(host, guest, bufs)]
        self.file.debug_event("write_aio")
        if self.data_node is not None:
            node = self.data_node
        else:
            node = self.file
            self.overlap.check(host, sum(len(b) for b in bufs), None)
        if len(bufs) == 1:
            node.write(host, bufs[0])
        else:
            node.writev(host, bufs)

    def _read_backing(self, pos: int, dst: memoryview) -> None:
        b = self.backing
        if b is None:
            _zero_fill(dst)
            return
        blen = b.length()
        avail = max(0, min(len(dst), blen - pos))
        if avail:
            self.file.debug_event("read_backing_aio")
            b.read(pos, dst[:avail])
        if avail < len(dst):
            _zero_fill(dst[avail:])

    def _read_compressed(self, pos: int, entry: int, dst: memoryview) -> None:
        cs = self.cluster_size
        data = self._decompress_cluster(entry)
        start = pos & (cs - 1)
        dst[:] = memoryview(data)[start:start + len(dst)]

    def _decompress_cluster(self, entry: int) -> bytes:
        cached = getattr(self, "_last_compressed", None)
        if cached and cached[0] == entry:
            return cached[1]
        coff, csize = self.mapping.compressed_range(entry)
        flen = self.file.length()
        csize = max(0, min(csize, flen - coff))
        raw = bytearray(csize)
        self.file.debug_event("read_compressed")
        if csize:
            self.file.read(coff, memoryview(raw))
        data = decompress(raw, self.cluster_size, self.header.compression_type)
        self._last_compressed = (entry, data)
        return data

    def _extent(self, pos: int, end: int) -> tuple[int, ClusterType, int]:
        """The longest run from ``pos`` (< end) with one cluster type and contiguous host.

        Returns (length, type, host offset of pos or the L2 entry for compressed).
        Runs stop at L2 table boundaries.
        """
        cb, cs = self.cluster_bits, self.cluster_size
        l2_size = 1 << self.l2_bits
        l1i = pos >> (cb + self.l2_bits)
        table_end = (l1i + 1) << (cb + self.l2_bits)
        lim = min(end, table_end)
        off = self.mapping.l2_offset(l1i)
        if not off:
            return lim - pos, ClusterType.UNALLOCATED, 0
        table = self.mapping.cache.get(off)
        idx = (pos >> cb) & (l2_size - 1)
        e = table[idx]
        t = self._ctype(e)
        if t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) and \
                e & L2E_OFFSET_MASK & (cs - 1):
            # QEMU qcow2_get_host_offset: data clusters must be cluster aligned
            self.signal_corruption(f"Cluster allocation offset {c_hex(e & L2E_OFFSET_MASK)} "
                                   f"unaligned (L2 offset: {c_hex(off)}, "
                                   f"L2 index: {c_hex(idx)})")
        run_end = min(lim, ((pos >> cb) + 1) << cb)
        if t == ClusterType.COMPRESSED:
            return run_end - pos, t, e
        host = (e & L2E_OFFSET_MASK) + (pos & (cs - 1)) if t == ClusterType.NORMAL else 0
        nxt_host = (e & L2E_OFFSET_MASK) + cs
        while run_end < lim:
            idx += 1
            e2 = table[idx]
            t2 = self._ctype(e2)
            if t2 != t:
                break
            if t == ClusterType.NORMAL:
                if e2 & L2E_OFFSET_MASK != nxt_host or e2 & 0x1FE:
                    break
                nxt_host += cs
            run_end = min(lim, run_end + cs)
        return run_end - pos, t, host

    # --- writes ----------------------------------------------------------------------
    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        n = len(data)
        if offset < 0 or offset + n > self.header.size:
            check_request(self, offset, n)
        self._check_writable()
        self.bitmaps.record(offset, n)
        if trace.enabled:
            trace.emit("qcow2.write", offset=offset, length=n, fua=fua)
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if self.crypto is not None and (offset | n) & 511:
            from .encryption import aligned_write
            aligned_write(self, offset, mv, fua)     # encrypted I/O is in whole sectors
            return
        cb = self.cluster_bits
        cmask = self.cluster_size - 1
        if n and (offset & cmask) + n <= self.cluster_size:
            # fast path: overwrite in place (OFLAG_COPIED: the cluster is ours alone)
            mp = self.mapping
            l1i = offset >> (cb + self.l2_bits)
            if l1i < len(mp.l1) and not mp.damage:
                e1 = mp.l1[l1i]
                # only cluster-aligned tables/clusters; the slow path signals corruption
                if e1 & OFLAG_COPIED and e1 & cmask == 0:
                    e = mp.cache.get(e1 & L2E_OFFSET_MASK)[(offset >> cb) & ((1 << self.l2_bits) - 1)]
                    if e & (OFLAG_COPIED | OFLAG_COMPRESSED | cmask) == OFLAG_COPIED \
                            and not self.has_data_file:
                        host = (e & L2E_OFFSET_MASK) + (offset & cmask)
                        if host - (offset & cmask) >= self.file.length():
                            self._past_eof_desc(e, offset)
                        self._write_host(host, offset, [mv])
                        if fua:
                            self.flush()
                        return
        pos, end = offset, offset + n
        span = 1 << (cb + self.l2_bits)
        while pos < end:
            chunk_end = min(end, (pos // span + 1) * span)
            self._write_in_l2(pos, mv[pos - offset:chunk_end - offset])
            pos = chunk_end
        if fua:
            self.flush()

    def _write_in_l2(self, pos: int, mv: memoryview) -> None:
        """Write ``mv`` at ``pos``; the range lies within one L2 table."""
        cb, cs = self.cluster_bits, self.cluster_size
        l2_mask = (1 << self.l2_bits) - 1
        end = pos + len(mv)
        l1i = pos >> (cb + self.l2_bits)
        mp = self.mapping
        off = mp.l2_offset(l1i)
        table = mp.cache.get(off) if off else None
        first_c, last_c = pos >> cb, (end - 1) >> cb
        c = first_c
        while c <= last_c:
            e = table[c & l2_mask] if table is not None else 0
            if e & L2E_OFFSET_MASK & (cs - 1) and not e & OFLAG_COMPRESSED:
                self._unaligned_desc(e, c << cb)
            inplace = (e & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) == OFLAG_COPIED
                       and (e & L2E_OFFSET_MASK or self.has_data_file)
                       and off and mp.l1[l1i] & OFLAG_COPIED)
            # extend the run of clusters of the same kind (contiguous host for in-place)
            k = c + 1
            if inplace:
                nxt = (e & L2E_OFFSET_MASK) + cs
                while k <= last_c:
                    e2 = table[k & l2_mask]
                    if e2 & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) != OFLAG_COPIED \
                            or e2 & L2E_OFFSET_MASK != nxt:
                        break
                    nxt += cs
                    k += 1
            else:
                while k <= last_c:
                    e2 = table[k & l2_mask] if table is not None else 0
                    if e2 & L2E_OFFSET_MASK & (cs - 1) and not e2 & OFLAG_COMPRESSED:
                        self._unaligned_desc(e2, k << cb)
                    if (e2 & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) == OFLAG_COPIED
                            and (e2 & L2E_OFFSET_MASK or self.has_data_file)
                            and mp.l1[l1i] & OFLAG_COPIED):
                        break
                    k += 1
            rs = max(pos, c << cb)
            re_ = min(end, k << cb)
            piece = mv[rs - pos:re_ - pos]
            if inplace:
                host = (e & L2E_OFFSET_MASK) + (rs & (cs - 1))
                if self.data_node is None and (host + len(piece) - 1) & ~(cs - 1) >= \
                        self.file.length():
                    self._past_eof_desc(e, rs)
                self._write_host(host, rs, [piece])
            else:
                table, off = self._alloc_and_write(l1i, c, k - c, rs, piece)
            c = k

    def _unaligned_desc(self, e: int, guest: int) -> None:
        """QEMU handle_copied/handle_alloc: a data or preallocated-zero descriptor that
        is not cluster aligned is never written through nor freed (its refcount
        update would hit an unrelated cluster)."""
        what = "Preallocated zero" if e & OFLAG_ZERO and not self.header.extended_l2 else "Data"
        self.signal_corruption(f"{what} cluster offset {c_hex(e & L2E_OFFSET_MASK)} "
                               f"unaligned (guest offset: {c_hex(guest)})")

    def _refuse_far_old(self, entries: Sequence[int], c0: int) -> None:
        """Before copy-on-write replaces ``entries`` (guest clusters c0..): a cluster
        they hold that starts past the end of the file was never written, so the
        entry is damaged, and freeing it after the copy would fail (QEMU copies, then
        logs 'qcow2_free_clusters failed'); refuse before allocating anything."""
        if self.has_data_file:
            return
        flen = self.file.length()
        for i, e in enumerate(entries):
            if e & L2E_OFFSET_MASK >= flen and self._ctype(e) in (
                    ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                self._past_eof_desc(e, (c0 + i) << self.cluster_bits)

    def _past_eof_desc(self, e: int, guest: int) -> None:
        """An in-place write to a data cluster that starts past the end of the file:
        the L2 entry is damaged (every allocated cluster was written).  QEMU writes
        there, growing the file to wherever the entry points (a 1 TiB sparse file);
        blockbed refuses, as its reads do."""
        self.signal_corruption(f"Data cluster offset {c_hex(e & L2E_OFFSET_MASK)} is beyond "
                               f"the end of the image file (guest offset: {c_hex(guest)})")

    def write_compressed(self, offset: int, data: Buffer, compressed: bytes | None = None
                         ) -> None:
        """Write one whole cluster compressed (qemu-img convert -c; QEMU
        qcow2_co_pwritev_compressed).  The last cluster of the image may be short
        (it is padded with zeros).  Data that does not shrink is written normally.
        ``compressed``: the cluster already compressed with :meth:`compress_cluster`
        (convert -m compresses on several threads, then writes in order)."""
        from .compress import compress
        cs = self.cluster_size
        n = len(data)
        check_request(self, offset, n)
        self._check_writable()
        if self.crypto is not None:
            raise BlockError(errno.EINVAL, "Compression and encryption not supported at the "
                                           "same time")
        if offset % cs or n > cs or (n < cs and offset + n != self.header.size):
            raise BlockError(errno.EINVAL, "qcow2: compressed writes must cover exactly one "
                                           "cluster (or the image's last, partial cluster)")
        self.bitmaps.record(offset, n)
        comp = compressed if compressed is not None else self.compress_cluster(data)
        l1i = offset >> (self.cluster_bits + self.l2_bits)
        idx = (offset >> self.cluster_bits) & ((1 << self.l2_bits) - 1)
        mp = self.mapping
        old = self._entry(offset)
        if self.has_data_file or len(comp) >= cs - 1 or cluster_type(old) not in (ClusterType.UNALLOCATED,
                                                             ClusterType.ZERO_PLAIN):
            self.write(offset, data)
            return
        table, l2off = self._l2_for_write(l1i)
        coff = self.refcounts.alloc_bytes(len(comp))
        self._last_compressed = None      # the same descriptor may now mean other data
        self.overlap.check(coff, len(comp), None)
        self.file.debug_event("write_compressed")
        self.file.write(coff, comp)
        nb = ((coff + len(comp) - 1) >> 9) - (coff >> 9)
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        self._set_entry(table, idx, OFLAG_COMPRESSED | (nb << mp.csize_shift) | coff)
        self.file.debug_event("l2_update_compressed")
        mp.cache.mark_dirty(l2off)

    def compress_cluster(self, data: Buffer) -> bytes:
        """The compressed form of one cluster's data (zero-padded to a cluster); pure,
        so it may run on any thread (zlib and zstd release the GIL)."""
        from .compress import compress
        cs = self.cluster_size
        full = bytes(data) if len(data) == cs else bytes(data) + bytes(cs - len(data))
        return compress(full, self.header.compression_type)

    def align_file_end(self) -> None:
        """Pad the file to a whole sector after packed compressed data, as QEMU's
        zero-length compressed write at the end of ``convert -c`` does (sector-based
        readers then never meet a short last sector)."""
        self._check_writable()
        n = self.file.length()
        if n % 512:
            self.file.truncate(n + 512 - n % 512)

    def _set_entry(self, table: array, idx: int, entry: int) -> None:
        """Store L2 entry ``idx`` (the extended-L2 driver also clears its bitmap)."""
        table[idx] = entry

    def _l2_for_write(self, l1i: int) -> tuple[array, int]:
        """An L2 table we may modify (OFLAG_COPIED), allocating or copying one (l2_allocate)."""
        mp = self.mapping
        if l1i >= len(mp.l1):
            mp.grow_l1(l1i + 1)
        e1 = mp.l1[l1i]
        old = mp.l2_offset(l1i)
        if old and e1 & OFLAG_COPIED:
            return mp.cache.get(old), old
        self.file.debug_event("l2_alloc")
        new_off = self.refcounts.alloc(1)
        if trace.enabled:
            trace.emit("qcow2.l2_alloc", l1_index=l1i, host_offset=new_off, copy_of=old)
        self.overlap.add(new_off, self.cluster_size, "l2")
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if old:
            self.file.debug_event("l2_alloc_cow_read")
            table = array("Q", mp.cache.get(old))
        else:
            table = array("Q", bytes(self.cluster_size))
        mp.cache.put_new(new_off, table)
        self.file.debug_event("l2_alloc_write")
        mp.cache.flush()
        mp.l1[l1i] = new_off | OFLAG_COPIED
        mp.write_l1_entry(l1i)
        if old:
            # the L1 entry no longer points at the shared table: drop our reference
            self.refcounts.free(old, 1, discard=False)
        return table, new_off

    def _alloc_and_write(self, l1i: int, c0: int, n: int, rs: int, piece: memoryview
                         ) -> tuple[array, int]:
        """Allocate ``n`` clusters for guest clusters c0.., write data with COW, link L2."""
        cb, cs = self.cluster_bits, self.cluster_size
        l2_mask = (1 << self.l2_bits) - 1
        table, l2off = self._l2_for_write(l1i)
        old_entries = [table[(c0 + i) & l2_mask] for i in range(n)]
        self._refuse_far_old(old_entries, c0)
        # with an external data file a guest cluster lives at its own offset, unrefcounted
        host = (c0 << cb) if self.has_data_file else self.refcounts.alloc(n)
        self.file.debug_event("cluster_alloc_space")
        start = c0 << cb
        endg = (c0 + n) << cb
        head_len = rs - start
        tail_len = endg - (rs + len(piece))
        if trace.enabled:
            trace.emit("qcow2.alloc", guest_offset=start, host_offset=host, clusters=n,
                       cow_head=head_len, cow_tail=tail_len)
        bufs: list[Buffer] = []
        if head_len:
            head = bytearray(head_len)
            self._read_cluster_part(start, old_entries[0], memoryview(head))
            bufs.append(head)
        bufs.append(piece)
        if tail_len:
            tail = bytearray(tail_len)
            self._read_cluster_part(rs + len(piece), old_entries[-1], memoryview(tail))
            bufs.append(tail)
        self._write_host(host, start, bufs)
        if head_len or tail_len or self.lazy_refcounts:
            # COW data must be durable before the L2 entry that exposes it.  With
            # lazy refcounts no refcount flush precedes the L2 write-back either,
            # so the new cluster's data (possibly extending the file) must be made
            # durable first, or a crash can leave L2 pointing past the end of file
            # (found by the crash engine's lazy_refcounts sweep).
            self.mapping.cache.depends_on_flush()
        # the table may have been evicted while we read COW data: reinstall it
        mp = self.mapping
        # the dependency first: setting it may write L2 tables out (to break a cycle),
        # which must not carry the new entries yet (QEMU sets it before the update too)
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        for i in range(n):
            table[(c0 + i) & l2_mask] = (host + (i << cb)) | OFLAG_COPIED
        self.file.debug_event("l2_update")
        mp.cache.mark_dirty(l2off)
        self._release_entries(old_entries)
        return table, l2off

    def _release_entries(self, entries: Sequence[int]) -> None:
        """Drop the references old L2 entries held (after the entries were replaced)."""
        freed = False
        data_file_runs: list[list[int]] = []
        for e in entries:
            t = self._ctype(e)
            if t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                if self.has_data_file:
                    # not refcounted: the data file itself is told (QEMU
                    # qcow2_free_any_cluster), in runs
                    off = e & L2E_OFFSET_MASK
                    if data_file_runs and data_file_runs[-1][1] == off:
                        data_file_runs[-1][1] += self.cluster_size
                    else:
                        data_file_runs.append([off, off + self.cluster_size])
                    continue
                off = e & L2E_OFFSET_MASK
                if not e & OFLAG_COPIED and not self.lazy_refcounts and \
                        self.refcounts.get(off >> self.cluster_bits) == 1:
                    # Without OFLAG_COPIED the cluster is shared (refcount >= 2).  With
                    # refcount 1 the entry points at a cluster someone else owns, or
                    # only lost its flag (a crash while a snapshot was being created):
                    # dropping the refcount would, in the first case, make a live
                    # cluster free for reuse.  QEMU frees it; blockbed leaks it, which
                    # is harmless in both cases (`img check -r leaks` reclaims it).
                    _log().warning("qcow2: cluster %s has refcount 1 but its L2 entry lacks "
                                   "OFLAG_COPIED; leaking it instead of freeing it",
                                   c_hex(off))
                    continue
                if not freed:
                    self.refcounts.cache.set_dependency(self.mapping.cache)
                    freed = True
                self.refcounts.free(off, 1)
            elif t == ClusterType.COMPRESSED:
                self._last_compressed = None
                if not freed:
                    self.refcounts.cache.set_dependency(self.mapping.cache)
                    freed = True
                coff, csize = self.mapping.compressed_range(e)
                first = coff >> self.cluster_bits
                last = (coff + csize - 1) >> self.cluster_bits
                self.refcounts.free(first << self.cluster_bits, last - first + 1)
        for start, stop in data_file_runs:
            self._free_in_data_file(start, stop)

    def _free_in_data_file(self, start: int, stop: int) -> None:
        """Clusters of the data file no entry uses any more: discarded (a hint), or with
        data_file_raw zeroed, since the raw data file must keep reading as the disk."""
        node = self.data_node
        stop = min(stop, self.header.size)
        if node is None or stop <= start:
            return
        if self.data_file_raw:
            node.write_zeroes(start, stop - start, may_unmap=True)
        elif self.pass_discard:
            try:
                node.discard(start, stop - start)
            except BlockError:
                pass                                # a discard is a hint

    def _read_cluster_part(self, pos: int, entry: int, dst: memoryview) -> None:
        """Guest content at ``pos`` (within one cluster) as described by ``entry``."""
        t = self._ctype(entry)
        cs = self.cluster_size
        if t == ClusterType.NORMAL:
            self._read_host((entry & L2E_OFFSET_MASK) + (pos & (cs - 1)), dst, pos)
        elif t == ClusterType.UNALLOCATED:
            self.file.debug_event("cow_read")
            self._read_backing(pos, dst)
        elif t == ClusterType.COMPRESSED:
            self._read_compressed(pos, entry, dst)
        else:
            _zero_fill(dst)

    # --- zeroes and discard -----------------------------------------------------------
    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Zeros, as QEMU serves them: its block layer splits the request at the
        cluster size (pwrite_zeroes_alignment) into a partial head, the aligned middle
        and a partial tail, and qcow2_co_pwrite_zeroes handles each; a partial piece
        becomes a whole zero cluster only when the cluster is unallocated or already
        zero and the rest of it reads as zeros, otherwise zeros are written as data.
        v2 has no zero flag: zeros are written where the range does not read as zero."""
        check_request(self, offset, length)
        self._check_writable()
        self.bitmaps.record(offset, length)
        if length == 0:
            return
        if self.header.version < 3:
            self._write_zero_data(offset, length)
            return
        cs = self.cluster_size
        end = offset + length
        a = min(end, -(-offset // cs) * cs)
        b = max(a, end // cs * cs)
        for p0, p1 in ((offset, a), (a, b), (b, end)):
            if p1 > p0 and not self._zero_piece(p0, p1, may_unmap):
                self._write_zero_bytes(p0, p1)

    def _zero_piece(self, start: int, stop: int, may_unmap: bool) -> bool:
        """One piece of a zero write (QEMU qcow2_co_pwrite_zeroes); False means "not
        supported here: write zeros as data"."""
        cs = self.cluster_size
        size = self.header.size
        head = start % cs
        tail = (-stop) % cs if stop != size else 0      # the last partial cluster is whole
        if head or tail:
            c0 = start - head
            if not (self._reads_zero(c0, start) and self._reads_zero(stop, stop + tail)):
                return False
            _, kind, _ = self._extent(c0, c0 + 1)
            if kind not in (ClusterType.UNALLOCATED, ClusterType.ZERO_PLAIN,
                            ClusterType.ZERO_ALLOC):
                return False
            start, stop = c0, min(size, c0 + cs)
        if self.data_file_raw and self.data_node is not None:
            # a raw data file must stay the disk's raw image: zero it first (QEMU)
            self.data_node.write_zeroes(start, stop - start, may_unmap)
        self._zero_clusters(start, stop, unmap=may_unmap)
        return True

    def _reads_zero(self, start: int, stop: int) -> bool:
        """Whether [start, stop) reads as zeros according to block status down the chain
        (QEMU's is_zero in qcow2.c, which clamps to the disk)."""
        stop = min(stop, self.header.size)
        return start >= stop or chain_reads_zero(self, start, stop - start)

    def _write_zero_bytes(self, start: int, stop: int) -> None:
        """The block layer's fallback for a zero write: a buffer of zeros, written."""
        while start < stop:
            k = min(stop - start, len(_ZEROS))
            self.write(start, _ZEROS[:k])
            start += k

    def _write_zero_data(self, offset: int, length: int) -> None:
        """Zeros written as data (v2 has no zero flag), skipping ranges that already
        read as zeros: zero clusters, and unallocated ones no backing file covers."""
        pos, end = offset, offset + length
        blen = self.backing.length() if self.backing is not None else 0
        while pos < end:
            run, kind, _ = self._extent(pos, end)
            if kind in (ClusterType.ZERO_PLAIN, ClusterType.ZERO_ALLOC) or \
                    (kind == ClusterType.UNALLOCATED and pos >= blen):
                pos += run
                continue
            if kind == ClusterType.UNALLOCATED and pos + run > blen:
                run = blen - pos
            stop = pos + run
            while pos < stop:
                k = min(stop - pos, len(_ZEROS))
                self.write(pos, _ZEROS[:k])
                pos += k

    def _zero_clusters(self, start: int, end: int, unmap: bool) -> None:
        """Set the v3 zero flag on whole clusters (QEMU zero_in_l2_slice)."""
        self._update_entries(start, end, "zero_unmap" if unmap else "zero")

    def discard(self, offset: int, length: int) -> None:
        check_request(self, offset, length)
        self._check_writable()
        self.bitmaps.record(offset, length)     # even where the discard is only a hint
        cs = self.cluster_size
        a = -(-offset // cs) * cs
        end = offset + length
        b = end // cs * cs
        if end == self.header.size:
            b = -(-end // cs) * cs
        if a >= b:
            return               # partial clusters: a discard is only a hint
        if self.header.version < 3 and self.backing is not None:
            return               # v2 cannot express "zero" and must not expose backing data
        self._update_entries(a, min(b, -(-self.header.size // cs) * cs), "discard")

    def _update_entries(self, start: int, end: int, mode: str) -> None:
        cb = self.cluster_bits
        l2_mask = (1 << self.l2_bits) - 1
        span = 1 << (cb + self.l2_bits)
        mp = self.mapping
        pos = start
        while pos < end:
            chunk_end = min(end, (pos // span + 1) * span)
            l1i = pos >> (cb + self.l2_bits)
            if mode == "full_discard" and not mp.l2_offset(l1i) or \
                    mode == "discard" and not mp.l2_offset(l1i) and \
                    (self.backing is None or self.header.version < 3):
                pos = chunk_end
                continue
            table, l2off = self._l2_for_write(l1i)
            old: list[int] = []
            for c in range(pos >> cb, -(-chunk_end >> cb) if chunk_end & ((1 << cb) - 1)
                           else chunk_end >> cb):
                i = c & l2_mask
                e = table[i]
                t = self._ctype(e)
                if mode == "full_discard":          # make_empty: the backing shows through
                    new = 0
                    release = t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC,
                                    ClusterType.COMPRESSED)
                elif mode == "discard":
                    if self.header.version >= 3 and (self.backing is not None or
                                                     t != ClusterType.UNALLOCATED):
                        new = OFLAG_ZERO
                    else:
                        new = 0
                    release = t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC,
                                    ClusterType.COMPRESSED)
                elif mode == "zero_unmap" or t in (ClusterType.COMPRESSED,) or \
                        (t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC) and not e & OFLAG_COPIED):
                    new = OFLAG_ZERO
                    release = t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC,
                                    ClusterType.COMPRESSED)
                else:   # keep the allocation, mark it zero (ZERO_ALLOC)
                    new = (e & (L2E_OFFSET_MASK | OFLAG_COPIED)) | OFLAG_ZERO
                    release = False
                if new != e:
                    table[i] = new
                    if release:
                        old.append(e)
            self.file.debug_event("l2_update")
            mp.cache.mark_dirty(l2off)
            if old:
                self._release_entries(old)
            pos = chunk_end

    # --- status ---------------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Extents of this node only; unallocated ranges have ``allocated=False``.

        ``zero`` is set for unallocated ranges that no backing file covers.
        """
        check_request(self, offset, length)
        out: list[Extent] = []
        pos, end = offset, offset + length
        blen = self.backing.length() if self.backing is not None else 0
        while pos < end:
            run, kind, host = self._extent(pos, end)
            if kind == ClusterType.UNALLOCATED and pos < blen < pos + run:
                run = blen - pos
            if kind == ClusterType.NORMAL and not self.has_data_file and \
                    self.crypto is None and self._metadata_preallocated():
                for ext in self._recurse_status(pos, run, host):
                    if out and _mergeable(out[-1], ext):
                        p = out[-1]
                        out[-1] = Extent(p.offset, p.length + ext.length, p.data, p.zero,
                                         p.allocated, p.host_offset, p.depth, p.host_node)
                    else:
                        out.append(ext)
                pos += run
                continue
            if kind == ClusterType.NORMAL and self.crypto is not None:
                # QEMU reports no host offset for encrypted data (it is not the guest's)
                ext = Extent(pos, run, data=True, zero=False, allocated=True)
            elif kind == ClusterType.NORMAL:
                ext = Extent(pos, run, data=True, zero=False, allocated=True,
                             host_offset=host, host_node=self.data_node or self.file)
            elif kind == ClusterType.COMPRESSED:
                ext = Extent(pos, run, data=True, zero=False, allocated=True)
            elif kind == ClusterType.UNALLOCATED:
                ext = Extent(pos, run, data=False, zero=pos >= blen, allocated=False)
            else:
                h = None
                if kind == ClusterType.ZERO_ALLOC and self.crypto is None:
                    e = self._entry(pos)
                    h = (e & L2E_OFFSET_MASK) + (pos & (self.cluster_size - 1))
                ext = Extent(pos, run, data=False, zero=True, allocated=True, host_offset=h,
                             host_node=(self.data_node or self.file) if h is not None else None)
            if out and _mergeable(out[-1], ext):
                p = out[-1]
                out[-1] = Extent(p.offset, p.length + ext.length, p.data, p.zero, p.allocated,
                                 p.host_offset, p.depth, p.host_node)
            else:
                out.append(ext)
            pos += run
        return out

    def _metadata_preallocated(self) -> bool:
        """QEMU's qcow2_detect_metadata_preallocation: far more clusters have a refcount
        than the file has allocated blocks.  Then data clusters that are holes in the
        file are reported as zero (BDRV_BLOCK_RECURSE)."""
        cached = getattr(self, "_prealloc_detected", None)
        if cached is not None:
            return cached
        path = _node_path(self.file)
        result = False
        if path:
            try:
                real = os.stat(path).st_blocks * 512 // self.cluster_size
            except OSError:
                real = None
            if real is not None:
                threshold = max(real * 10 // 9, real + 2)
                result = self._clusters_with_refcount(threshold) >= threshold
        self._prealloc_detected = result
        return result

    def _clusters_with_refcount(self, stop_at: int) -> int:
        """How many clusters inside the file have a nonzero refcount (counting stops at
        ``stop_at``).  One refcount block in memory at a time: a hostile cluster far
        past the data (a 1 TiB sparse file) costs time per block, not a list per
        cluster."""
        rc = self.refcounts
        end = -(-self.file.length() // self.cluster_size)
        flen = self.file.length()
        count = 0
        for ti, off in enumerate(rc.table):
            base = ti << rc.rb_bits
            if base >= end or count >= stop_at:
                break
            if not off or off % self.cluster_size or off >= flen:
                continue
            raw = bytearray(self.cluster_size)
            self.file.read(off, memoryview(raw))
            vals = rc.codec.all_values(rc.codec.load(raw))
            k = min(len(vals), end - base)
            count += k - vals[:k].count(0)
        return count

    def _recurse_status(self, pos: int, run: int, host: int) -> list[Extent]:
        out = []
        flen = self.file.length()
        avail = max(0, min(run, flen - host))
        if avail:
            for fe in self.file.block_status(host, avail):
                out.append(Extent(pos + fe.offset - host, fe.length, data=True, zero=fe.zero,
                                  allocated=True, host_offset=fe.offset, host_node=self.file))
        if avail < run:
            out.append(Extent(pos + avail, run - avail, data=True, zero=True, allocated=True,
                              host_offset=host + avail, host_node=self.file))
        return out

    def _entry(self, pos: int) -> int:
        cb = self.cluster_bits
        off = self.mapping.l2_offset(pos >> (cb + self.l2_bits))
        if not off:
            return 0
        return self.mapping.cache.get(off)[(pos >> cb) & ((1 << self.l2_bits) - 1)]

    def l2_entry(self, pos: int) -> int:
        """The raw L2 entry for guest offset ``pos`` (0 when no L2 table covers it)."""
        return self._entry(pos)

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


def _node_path(node: BlockDriver) -> str | None:
    """The host path under a protocol node (through filters), for relative backing names."""
    seen = 0
    while node is not None and seen < 16:
        path = getattr(node, "path", None) or getattr(node, "filename", None)
        if isinstance(path, str):
            return path
        kids = list(node.children())
        node = kids[0] if kids else None
        seen += 1
    return None


def chain_reads_zero(node: BlockDriver, offset: int, length: int) -> bool:
    """Whether every byte of [offset, offset+length) of ``node`` reads as zeros according
    to block status (unallocated ranges are asked of the backing node)."""
    for e in node.block_status(offset, length):
        if e.allocated or e.zero:
            if not e.zero:
                return False
            continue
        backing = getattr(node, "backing", None)
        if backing is None or not chain_reads_zero(backing, e.offset, e.length):
            return False
    return True


def _mergeable(a: Extent, b: Extent) -> bool:
    if (a.data, a.zero, a.allocated, a.depth) != (b.data, b.zero, b.allocated, b.depth):
        return False
    if a.end != b.offset:
        return False
    if (a.host_offset is None) != (b.host_offset is None):
        return False
    if a.host_offset is not None and a.host_offset + a.length != b.host_offset:
        return False
    if a.data and a.host_offset is None:
        return False          # compressed clusters stay separate
    return True
