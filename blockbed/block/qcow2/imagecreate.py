"""Image creation and preallocation (QEMU qcow2_co_create, preallocate_co).

The whole initial layout is computed up front and written in bulk, so even
``preallocation=metadata`` for millions of clusters is a handful of large
sequential writes:

    cluster 0        header (+ extensions, backing file name)
    1 .. T           refcount table
    .. R             refcount blocks (all refcounts 1)
    .. L             L1 table
    .. (prealloc)    all L2 tables, then all data clusters, in guest order

With no preallocation and small tables this is exactly QEMU's layout
(header, refcount table, one refcount block, L1).
"""

from __future__ import annotations

import errno
import os
import sys
from array import array
from dataclasses import dataclass
from typing import Iterator

from ..driver import BlockDriver, BlockError
from .cluster import OFLAG_COPIED, OFLAG_ZERO
from .header import (AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, COMPRESSION_ZLIB,
                     COMPRESSION_ZSTD, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE, INCOMPAT_EXTL2,
                     MAX_L1_BYTES,
                     Header, serialize_header)
from .refcount import RefcountCodec

PREALLOC_MODES = ("off", "metadata", "falloc", "full")


@dataclass
class CreateOptions:
    cluster_size: int = 65536
    version: int = 3
    refcount_bits: int = 16
    lazy_refcounts: bool = False
    preallocation: str = "off"
    backing_file: str | None = None
    backing_fmt: str | None = None
    compression_type: int = COMPRESSION_ZLIB
    data_file: str | None = None
    data_file_raw: bool = False
    extended_l2: bool = False
    encrypt: "object | None" = None    # encryption.EncryptOptions

    @property
    def l2_entries(self) -> int:
        """Entries per L2 table: 8-byte entries, or 16-byte extended ones."""
        return self.cluster_size // (16 if self.extended_l2 else 8)


def _bool(v, name: str) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("on", "yes", "true", "y"):         # QEMU qapi_bool_parse
        return True
    if s in ("off", "no", "false", "n"):
        return False
    raise BlockError(errno.EINVAL, f"Parameter '{name}' expects 'on' or 'off'")


def parse_size(v) -> int:
    """qemu-img size syntax: 1G, 512M, 64k, 1.5G, plain bytes."""
    if isinstance(v, int):
        return v
    s = str(v).strip()
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50,
             "e": 1 << 60}
    try:
        if s and s[-1].lower() in units:
            val = float(s[:-1]) * units[s[-1].lower()]
        else:
            val = float(s) if "." in s else int(s)
    except ValueError:
        raise BlockError(errno.EINVAL, f"Invalid size '{v}': expected a number with an optional "
                                       "suffix k, M, G, T, P or E") from None
    if val < 0:
        raise BlockError(errno.EINVAL, f"Invalid size '{v}': must not be negative")
    return int(val)


def parse_options(options: dict) -> CreateOptions:
    """Validate ``-o`` options with QEMU's error messages."""
    o = CreateOptions()
    opts = dict(options or {})
    if "cluster_size" in opts:
        o.cluster_size = parse_size(opts.pop("cluster_size"))
    cs = o.cluster_size
    if cs < 512 or cs > (2 << 20) or cs & (cs - 1):
        raise BlockError(errno.EINVAL, "Cluster size must be a power of two between 512 and 2048k")
    compat = str(opts.pop("compat", "1.1"))
    if compat in ("0.10", "v2"):
        o.version = 2
    elif compat in ("1.1", "v3"):
        o.version = 3
    else:
        raise BlockError(errno.EINVAL, f"Invalid compatibility level: '{compat}'")
    if "refcount_bits" in opts:
        rb = opts.pop("refcount_bits")
        try:
            o.refcount_bits = int(str(rb), 0)      # QEMU number options: 16, 0x10
        except ValueError:
            raise BlockError(errno.EINVAL, f"Invalid refcount_bits '{rb}'") from None
    rb = o.refcount_bits
    if rb < 1 or rb > 64 or rb & (rb - 1):
        raise BlockError(errno.EINVAL, "Refcount width must be a power of two and may not "
                                       "exceed 64 bits")
    if o.version == 2 and rb != 16:
        raise BlockError(errno.EINVAL, "Different refcount widths than 16 bits require "
                                       "compatibility level 1.1 or above (use compat=1.1 or greater)")
    if "lazy_refcounts" in opts:
        o.lazy_refcounts = _bool(opts.pop("lazy_refcounts"), "lazy_refcounts")
    if o.lazy_refcounts and o.version == 2:
        raise BlockError(errno.EINVAL, "Lazy refcounts only supported with compatibility level "
                                       "1.1 and above (use compat=1.1 or greater)")
    o.preallocation = str(opts.pop("preallocation", "off"))
    if o.preallocation not in PREALLOC_MODES:
        raise BlockError(errno.EINVAL, f"Parameter 'preallocation' does not accept value "
                                       f"'{o.preallocation}'")
    o.backing_file = opts.pop("backing_file", None) or None
    o.backing_fmt = opts.pop("backing_fmt", None) or None
    o.extended_l2 = _bool(opts.pop("extended_l2", False), "extended_l2")
    if o.extended_l2:
        if o.version < 3:
            raise BlockError(errno.EINVAL, "Extended L2 entries are only supported with "
                                           "compatibility level 1.1 and above (use version=v3 "
                                           "or greater)")
        if cs < 16384:
            raise BlockError(errno.EINVAL, "Extended L2 entries are only supported with "
                                           "cluster sizes of at least 16384 bytes")
    if o.backing_file and o.preallocation != "off" and not o.extended_l2:
        raise BlockError(errno.EINVAL, "Backing file and preallocation can only be used at "
                                       "the same time if extended_l2 is on")
    ct = str(opts.pop("compression_type", "zlib"))
    if ct == "zlib":
        o.compression_type = COMPRESSION_ZLIB
    elif ct == "zstd":
        o.compression_type = COMPRESSION_ZSTD
    else:
        raise BlockError(errno.EINVAL, f"Parameter 'compression-type' does not accept value '{ct}'")
    if o.compression_type != COMPRESSION_ZLIB and o.version == 2:
        raise BlockError(errno.EINVAL, "Non-zlib compression type is only supported with "
                                       "compatibility level 1.1 and above (use compat=1.1 or greater)")
    if any(k == "encryption" or k.startswith("encrypt.") for k in opts):
        from .encryption import parse_create_options
        if "encryption" in opts:
            opts["encryption"] = "on" if _bool(opts["encryption"], "encryption") else "off"
        o.encrypt = parse_create_options(opts)
    o.data_file = opts.pop("data_file", None) or None
    o.data_file_raw = _bool(opts.pop("data_file_raw", False), "data_file_raw")
    if o.data_file and o.version == 2:
        raise BlockError(errno.EINVAL, "External data files are only supported with "
                                       "compatibility level 1.1 and above")
    if o.data_file_raw and not o.data_file:
        raise BlockError(errno.EINVAL, "data_file_raw can only be enabled if data_file is set")
    if o.data_file and o.compression_type != COMPRESSION_ZLIB:
        pass
    opts.pop("size", None)
    if opts:
        raise BlockError(errno.EINVAL, f"Invalid parameter '{next(iter(opts))}'")
    return o


@dataclass
class Layout:
    header: Header
    reftable_off: int
    reftable_clusters: int
    refblocks_off: int
    nb_refblocks: int
    l1_off: int
    l1_size: int
    l2_off: int          # preallocated L2 tables (0 when none)
    nb_l2: int
    data_off: int
    nb_data: int
    total_clusters: int


def plan(size: int, o: CreateOptions) -> Layout:
    cs = o.cluster_size
    cb = cs.bit_length() - 1
    l2_entries = o.l2_entries
    l1_size = -(-size // (cs * l2_entries)) if size else 0
    if l1_size * 8 > MAX_L1_BYTES:
        raise BlockError(errno.EFBIG, "Could not resize image: The image size is too large "
                                      f"for the cluster size {cs} (L1 table would exceed 32 MiB)")
    l1_clusters = -(-(l1_size * 8) // cs)
    prealloc = o.preallocation != "off" or o.data_file_raw
    nb_data = -(-size // cs) if prealloc else 0
    nb_l2 = -(-nb_data // l2_entries) if prealloc else 0
    external = bool(o.data_file)
    codec = RefcountCodec(o.refcount_bits.bit_length() - 1, cs)
    t, r = 1, 1
    while True:
        n = 1 + t + r + l1_clusters + nb_l2 + (0 if external else nb_data)
        nr = -(-n // codec.entries)
        nt = -(-(nr * 8) // cs)
        if (nt, nr) == (t, r):
            break
        t, r = nt, nr
    if t * cs > (8 << 20):
        raise BlockError(errno.EFBIG, "The image size is too large for this cluster size and "
                                      "refcount width (refcount table would exceed 8 MiB)")
    reftable_off = cs
    refblocks_off = reftable_off + t * cs
    l1_off = refblocks_off + r * cs
    l2_off = l1_off + l1_clusters * cs
    data_off = 0 if external else l2_off + nb_l2 * cs
    h = Header(version=o.version, cluster_bits=cb, size=size, l1_size=l1_size,
               l1_table_offset=l1_off if l1_size else 0, refcount_table_offset=reftable_off,
               refcount_table_clusters=t, refcount_order=o.refcount_bits.bit_length() - 1,
               header_length=112 if o.version >= 3 else 72,
               compression_type=o.compression_type,
               backing_file=o.backing_file, backing_format=o.backing_fmt if o.backing_file else None)
    if o.lazy_refcounts:
        h.compatible_features |= COMPAT_LAZY_REFCOUNTS
    if o.compression_type != COMPRESSION_ZLIB:
        h.incompatible_features |= INCOMPAT_COMPRESSION
    if o.extended_l2:
        h.incompatible_features |= INCOMPAT_EXTL2
    if external:
        h.data_file = o.data_file
        h.incompatible_features |= INCOMPAT_DATA_FILE
        if o.data_file_raw:
            h.autoclear_features |= AUTOCLEAR_DATA_FILE_RAW
    total = 1 + t + r + l1_clusters + nb_l2 + (0 if external else nb_data)
    return Layout(h, reftable_off, t, refblocks_off, r, l1_off, l1_size,
                  l2_off if nb_l2 else 0, nb_l2, data_off, nb_data, total)


def _be_q(values: array) -> bytes:
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def metadata_writes(lay: Layout, o: CreateOptions) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) writes that build the image, in file order, in large chunks."""
    cs = o.cluster_size
    yield 0, serialize_header(lay.header).ljust(cs, b"\0")
    # refcount table
    entries = array("Q", range(lay.refblocks_off, lay.refblocks_off + lay.nb_refblocks * cs, cs))
    raw = _be_q(entries)
    yield lay.reftable_off, raw + bytes(lay.reftable_clusters * cs - len(raw))
    # refcount blocks: every cluster of the image has refcount 1
    codec = RefcountCodec(o.refcount_bits.bit_length() - 1, cs)
    full = codec.filled_block(codec.entries)
    remaining = lay.total_clusters
    chunk: list[bytes] = []
    off = lay.refblocks_off
    for _ in range(lay.nb_refblocks):
        k = min(remaining, codec.entries)
        chunk.append(full if k == codec.entries else codec.filled_block(k))
        remaining -= k
        if len(chunk) * cs >= (8 << 20):
            yield off, b"".join(chunk)
            off += len(chunk) * cs
            chunk = []
    if chunk:
        yield off, b"".join(chunk)
    # L1 table
    if lay.l1_size:
        if lay.nb_l2:
            l1 = array("Q", range(lay.l2_off | OFLAG_COPIED, (lay.l2_off + lay.nb_l2 * cs) | OFLAG_COPIED, cs))
            raw = _be_q(l1)
        else:
            raw = b""
        # QEMU writes exactly l1_size entries; the rest of the cluster stays past EOF
        yield lay.l1_off, raw + bytes(lay.l1_size * 8 - len(raw))
    # L2 tables, 8 MiB at a time
    if lay.nb_l2:
        per_write = max(1, (8 << 20) // cs)
        l2_entries = o.l2_entries
        for first in range(0, lay.nb_l2, per_write):
            ntab = min(per_write, lay.nb_l2 - first)
            c0 = first * l2_entries
            c1 = min(lay.nb_data, (first + ntab) * l2_entries)
            start = (lay.data_off + c0 * cs) | OFLAG_COPIED
            if o.encrypt is not None and o.version >= 3 and not o.extended_l2:
                # the clusters hold no ciphertext yet: flag them "allocated, reads as
                # zeros", or they would decrypt to garbage (QEMU's images do)
                start |= OFLAG_ZERO
            vals = array("Q", range(start, start + (c1 - c0) * cs, cs))
            if o.extended_l2:
                # preallocated clusters keep an all-zero bitmap: every subcluster stays
                # unallocated (QEMU preallocate_co links with m->prealloc)
                wide = array("Q", bytes(16 * len(vals)))
                wide[::2] = vals
                vals = wide
            raw = _be_q(vals)
            yield lay.l2_off + first * cs, raw + bytes(ntab * cs - len(raw))


def create_on_node(node: BlockDriver, size: int, options: dict) -> Layout:
    """Write a new qcow2 image onto an (empty) protocol node."""
    o = parse_options(options)
    size = -(-size // 512) * 512
    lay = plan(size, o)
    node.truncate(0)
    for off, data in metadata_writes(lay, o):
        node.write(off, data)
    if lay.nb_data:
        end = lay.data_off + lay.nb_data * lay.header.cluster_size
        if o.preallocation == "full":
            node.write_zeroes(lay.data_off, end - lay.data_off)
        elif node.length() < end:
            node.truncate(end)
    node.flush()
    return lay


def _create_data_file(image_path: str, o: CreateOptions, size: int) -> None:
    """The external data file (raw, ``size`` bytes).  As in QEMU the name is used as
    written: a relative name is relative to the current directory."""
    path = o.data_file
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
        if o.preallocation == "falloc" and size:
            os.posix_fallocate(fd, 0, size)
        elif o.preallocation == "full":
            zeros = bytes(8 << 20)
            for pos in range(0, size, len(zeros)):
                os.pwrite(fd, zeros[:min(len(zeros), size - pos)], pos)
    finally:
        os.close(fd)


def create(path: str, size: int, options: dict) -> None:
    """Create ``path`` as a qcow2 image of ``size`` bytes (``-o`` options as a dict)."""
    o = parse_options(options)
    if size is None:
        raise BlockError(errno.EINVAL, "Image creation needs a size parameter")
    size = -(-int(size) // 512) * 512
    lay = plan(size, o)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        raise BlockError(e.errno or errno.EIO, f"Could not create '{path}': {e.strerror}") from None
    lock = None
    try:
        try:
            from ..locking import ImageLock, Permissions
            lock = ImageLock(fd, path, Permissions.for_open(read_only=False))
        except ImportError:  # pragma: no cover - locking is part of the block layer
            lock = None
        os.ftruncate(fd, 0)
        for off, data in metadata_writes(lay, o):
            os.pwrite(fd, data, off)
        if o.data_file:
            _create_data_file(path, o, size)
        if lay.nb_data and not o.data_file:
            end = lay.data_off + lay.nb_data * lay.header.cluster_size
            if o.preallocation == "falloc":
                os.posix_fallocate(fd, lay.data_off, end - lay.data_off)
            elif o.preallocation == "full":
                zeros = bytes(8 << 20)
                pos = lay.data_off
                while pos < end:
                    k = min(len(zeros), end - pos)
                    os.pwrite(fd, zeros[:k] if k < len(zeros) else zeros, pos)
                    pos += k
            if os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)
        os.fsync(fd)
    except OSError as e:
        if isinstance(e, BlockError):
            raise
        raise BlockError(e.errno or errno.EIO, f"Could not create '{path}': {e.strerror}") from None
    finally:
        if lock is not None:
            lock.release()
        os.close(fd)
    if o.encrypt is not None:
        _encrypt_new_image(path, o)


def _encrypt_new_image(path: str, o: CreateOptions) -> None:
    """Set up encryption on the sized image (QEMU does it after blk_truncate, so the
    LUKS area follows the L1 table and any preallocated clusters)."""
    from ..file import FileDriver
    from .driver import Qcow2Driver
    from .encryption import setup_encryption
    drv = Qcow2Driver(FileDriver(path), options={"filename": path})
    try:
        setup_encryption(drv, o.encrypt)
    finally:
        drv.close()
    if o.preallocation != "off" and o.version < 3:
        _encrypt_zeros(path, o)


def _encrypt_zeros(path: str, o: CreateOptions) -> None:
    """v2 has no zero flag: write the ciphertext of zeros over the preallocated clusters
    (in place, they are allocated), so that the new disk reads as zeros -- a
    preallocated encrypted image from qemu-img reads back garbage."""
    from ..file import FileDriver
    from .driver import Qcow2Driver
    drv = Qcow2Driver(FileDriver(path), options={"filename": path,
                                                 "encrypt.key-secret": o.encrypt.key_secret})
    try:
        chunk = bytes(1 << 20)
        size = drv.length()
        for pos in range(0, size, len(chunk)):
            drv.write(pos, chunk[:min(len(chunk), size - pos)])
    finally:
        drv.close()
