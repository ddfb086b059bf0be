"""Changing an existing qcow2 image's options (``img amend``; QEMU qcow2_amend_options).

What can change, in QEMU 7.2's order (each step durable before the next):

1. ``compat`` up: the header is rewritten as version 3.
2. ``refcount_bits``: new refcount table and blocks of the new width are written
   after the end of the file, the header switches to them in one write, then the
   old structures are freed (:func:`change_refcount_order`).
3. ``data_file`` (only for images that have one): the name in the header.
4. ``lazy_refcounts``: the compatible feature bit (turning it off first makes a
   dirty image clean).
5. ``size``: grow or shrink (:mod:`.shrink`).
6. ``compat`` down (:func:`downgrade`): refcounts must be 16 bits wide and no
   incompatible feature may remain; zero clusters are expanded (v2 has no zero
   flag), compatible and autoclear bits dropped, the header rewritten as v2.

Backing files are changed with ``img rebase``, never here.  Deliberately unlike
qemu-img 7.2, a downgrade refuses an image with persistent bitmaps instead of
leaving them behind in a v2 header as inconsistent bitmaps.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Callable

from ..driver import BlockError
from .cache import dump_be_array, load_be_array
from .cluster import L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO, ClusterType
from .refcount import RefcountCodec, RefcountManager

COMPAT_LAZY_REFCOUNTS = 1
INCOMPAT_DIRTY = 1
INCOMPAT_COMPRESSION = 8
HEADER_V3_LENGTH = 112

# (name, type, help) as qemu-img amend -o help prints them
AMEND_OPTIONS = [
    ("backing_file", "str", "File name of a base image"),
    ("backing_fmt", "str", "Image format of the base image"),
    ("compat", "str", "Compatibility level (v2 [0.10] or v3 [1.1])"),
    ("data_file", "str", "File name of an external data file"),
    ("data_file_raw", "bool (on/off)", "The external data file must stay valid as a raw image"),
    ("encrypt.iter-time", "num", "Time to spend in PBKDF in milliseconds"),
    ("encrypt.keyslot", "num", "Select a single keyslot to modify explicitly"),
    ("encrypt.new-secret", "str", "New secret to set in the matching keyslots. "
                                  "Empty string to erase"),
    ("encrypt.old-secret", "str", "Select all keyslots that match this password"),
    ("encrypt.state", "str", "Select new state of affected keyslots (active/inactive)"),
    ("lazy_refcounts", "bool (on/off)", "Postpone refcount updates"),
    ("refcount_bits", "num", "Width of a reference count entry in bits"),
    ("size", "size", "Virtual disk size"),
]
CREATE_ONLY = ("cluster_size", "preallocation", "compression_type", "extended_l2",
               "encryption", "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg",
               "encrypt.cipher-mode", "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg",
               "encrypt.hash-alg")


class AmendError(BlockError):
    """A refused amendment; ``hint`` is qemu-img's second line, if any."""

    def __init__(self, msg: str, hint: str | None = None):
        super().__init__(errno.EINVAL, msg)
        self.hint = hint


@dataclass
class AmendPlan:
    version: int | None = None
    refcount_bits: int | None = None
    lazy_refcounts: bool | None = None
    size: int | None = None
    data_file: str | None = None
    data_file_raw: bool | None = None
    backing_file: str | None = None
    backing_fmt: str | None = None
    encrypt: dict | None = None


def _bool(name: str, v: str) -> bool:
    low = str(v).lower()
    if low in ("on", "yes", "true", "y"):
        return True
    if low in ("off", "no", "false", "n"):
        return False
    raise AmendError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_plan(opts: dict) -> AmendPlan:
    """Turn ``-o`` key/values into a plan, with qemu-img's messages for bad ones."""
    from .imagecreate import parse_size
    known = {n for n, _, _ in AMEND_OPTIONS}
    p = AmendPlan()
    for k, v in opts.items():
        if k in CREATE_ONLY:
            raise AmendError(f"Invalid parameter '{k}'",
                             "This option is only supported for image creation")
        if k not in known:
            raise AmendError(f"Invalid parameter '{k}'")
        if k == "compat":
            if v in ("0.10", "v2"):
                p.version = 2
            elif v in ("1.1", "v3"):
                p.version = 3
            else:
                raise AmendError(f"Unknown compatibility level {v}")
        elif k == "refcount_bits":
            try:
                bits = int(str(v), 0)
            except ValueError:
                raise AmendError(f"Parameter '{k}' expects a number") from None
            if bits <= 0 or bits > 64 or bits & (bits - 1):
                raise AmendError("Refcount width must be a power of two and may not exceed "
                                 "64 bits")
            p.refcount_bits = bits
        elif k == "lazy_refcounts":
            p.lazy_refcounts = _bool(k, v)
        elif k == "data_file_raw":
            p.data_file_raw = _bool(k, v)
        elif k == "size":
            try:
                p.size = parse_size(v)
            except BlockError:
                raise AmendError("Parameter 'size' expects a non-negative number below 2^64\n"
                                 "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                                 "giga-, tera-, peta-\nand exabytes, respectively.") from None
        elif k == "data_file":
            p.data_file = v
        elif k == "backing_file":
            p.backing_file = v
        elif k == "backing_fmt":
            p.backing_fmt = v
        else:
            p.encrypt = {**(p.encrypt or {}), k: v}
    return p


def amend(drv, p: AmendPlan, status: Callable[[float], None] = lambda pct: None) -> None:
    """Apply the plan to the open, writable image ``drv`` (see the module docstring)."""
    h = drv.header
    old_version = h.version
    new_version = p.version or old_version
    if p.backing_file is not None or p.backing_fmt is not None:
        if p.backing_file != h.backing_file or (p.backing_fmt is not None and
                                                 p.backing_fmt != h.backing_format):
            raise AmendError("Cannot amend the backing file",
                             "You can use 'qemu-img rebase' instead.")
    if p.encrypt:
        if drv.crypto is None:
            raise AmendError("Can't amend encryption options - encryption not present")
        raise AmendError("Amending encryption key slots is not supported by blockbed; "
                         "convert with new encryption options instead")
    bits = 1 << h.refcount_order
    if p.refcount_bits is not None and p.refcount_bits != 16 and new_version < 3:
        raise AmendError("Refcount widths other than 16 bits require compatibility level "
                         "1.1 or above (use compat=1.1 or greater)")
    if p.lazy_refcounts and new_version < 3:
        raise AmendError("Lazy refcounts only supported with compatibility level 1.1 and "
                         "above (use compat=1.1 or greater)")
    if p.data_file is not None and not drv.has_data_file:
        raise AmendError("data-file can only be set for images that use an external data file")
    if p.data_file_raw and not drv.data_file_raw:
        raise AmendError("data-file-raw cannot be set on existing images")
    status(0.0)
    if new_version > old_version:
        h.version = 3
        h.header_length = HEADER_V3_LENGTH
        drv.rewrite_header()
    if p.refcount_bits is not None and p.refcount_bits != bits:
        change_refcount_order(drv, p.refcount_bits.bit_length() - 1)
    if p.data_file is not None and p.data_file != h.data_file:
        h.data_file = p.data_file
        drv.rewrite_header()         # the new file is opened next time, as in qemu-img
    if p.data_file_raw is False and drv.data_file_raw:
        from .header import AUTOCLEAR_DATA_FILE_RAW
        h.autoclear_features &= ~AUTOCLEAR_DATA_FILE_RAW
        drv.data_file_raw = False
        drv._write_features()
    if p.lazy_refcounts is not None and p.lazy_refcounts != drv.lazy_refcounts:
        if p.lazy_refcounts:
            h.compatible_features |= COMPAT_LAZY_REFCOUNTS
        else:
            _mark_clean(drv)
            h.compatible_features &= ~COMPAT_LAZY_REFCOUNTS
        drv.lazy_refcounts = p.lazy_refcounts
        drv._write_features()
    if p.size is not None and p.size != h.size:
        drv.truncate(p.size)
    if new_version < old_version:
        downgrade(drv)
    status(100.0)


def _mark_clean(drv) -> None:
    """Refcounts on disk complete, dirty bit cleared (QEMU qcow2_mark_clean)."""
    drv.flush()
    if drv.header.incompatible_features & INCOMPAT_DIRTY:
        drv.header.incompatible_features &= ~INCOMPAT_DIRTY
        drv._write_features()
    if hasattr(drv, "_set_dirty"):
        drv._set_dirty = False


def downgrade(drv) -> None:
    h = drv.header
    if h.refcount_order != 4:
        raise AmendError("compat=0.10 requires refcount_bits=16")
    if drv.has_data_file:
        raise AmendError("Cannot downgrade an image with a data file")
    if h.bitmaps or len(getattr(drv.bitmaps, "entries", ())):
        raise AmendError("Cannot downgrade an image with persistent bitmaps; remove them "
                         "first (img bitmap --remove)")
    _mark_clean(drv)
    rest = h.incompatible_features & ~INCOMPAT_COMPRESSION
    if rest:
        raise AmendError(f"Cannot downgrade an image with incompatible features {rest:#x} set")
    expand_zero_clusters(drv)
    if h.incompatible_features & INCOMPAT_COMPRESSION:
        if _has_compressed_clusters(drv):
            raise AmendError("Cannot downgrade an image with zstd compression type and "
                             "existing compressed clusters")
        h.incompatible_features &= ~INCOMPAT_COMPRESSION
        h.compression_type = 0
    h.compatible_features = 0
    h.autoclear_features = 0
    drv.lazy_refcounts = False
    h.version = 2
    h.header_length = 72
    drv.flush()
    drv.rewrite_header()


def _l1_tables(drv) -> list[list[int]]:
    """The active L1 table and every snapshot's, as lists of entries."""
    drv.mapping.check_usable()
    tables = [list(drv.mapping.l1)]
    for s in drv.snapshots:
        if s.l1_size:
            buf = bytearray(s.l1_size * 8)
            drv.file.read(s.l1_table_offset, memoryview(buf))
            tables.append(list(load_be_array("Q", buf)))
    return tables


def _l2_offsets(drv) -> list[int]:
    seen: dict[int, None] = {}
    for l1 in _l1_tables(drv):
        for e in l1:
            off = e & L1E_OFFSET_MASK
            if off:
                seen[off] = None
    return list(seen)


def _has_compressed_clusters(drv) -> bool:
    for off in _l2_offsets(drv):
        table = drv.mapping.l2_table(off)
        if any(drv._ctype(e) == ClusterType.COMPRESSED for e in table):
            return True
    return False


def expand_zero_clusters(drv) -> None:
    """Replace every zero-flagged L2 entry, in the active and the snapshots' tables, by
    what v2 can say: unallocated when nothing shows through (no backing file), else a
    cluster of zeros (QEMU qcow2_expand_zero_clusters).  Shared tables are changed in
    place: the change keeps every referencing tree's contents."""
    cs = drv.cluster_size
    zeros = bytes(cs)
    for off in _l2_offsets(drv):
        table = drv.mapping.l2_table(off)
        changed = False
        for i, e in enumerate(table):
            if not e & OFLAG_ZERO:
                continue
            host = e & L2E_OFFSET_MASK
            if host:                                  # ZERO_ALLOC: zeros into its cluster
                drv.overlap.check(host, cs, "data")
                drv.file.write(host, zeros)
                table[i] = e & ~OFLAG_ZERO
            elif drv.backing is None:                 # ZERO_PLAIN, nothing shows through
                table[i] = 0
            else:                                     # ZERO_PLAIN over a backing file
                new = drv.refcounts.alloc(1)
                drv.overlap.check(new, cs, "data")
                drv.file.write(new, zeros)
                table[i] = new | OFLAG_COPIED
            changed = True
        if changed:
            drv.file.flush()                          # zeros before the entries expose them
            drv.mapping.cache.mark_dirty(off)
    drv.flush()


def change_refcount_order(drv, order: int) -> None:
    """Rewrite the refcount structures with ``1 << order``-bit entries (QEMU
    qcow2_change_refcount_order, by a different but equally safe route).

    The new table and blocks go after the end of the file, so nothing in use is
    overwritten; the header switches to them in one write; then the old table and
    blocks are freed in the new structure.  A crash before the header write leaves
    the old, valid structures (plus leaked clusters at the end); after it, the new
    ones, with the old clusters leaked until freed.
    """
    cs = drv.cluster_size
    h = drv.header
    old = drv.refcounts
    drv.flush()
    new_codec = RefcountCodec(order, cs)
    file_clusters = -(-drv.file.length() // cs)
    n = max(file_clusters, (old._last_used_cluster() + 1) if old.table else 0)
    values = [old.get(ci) for ci in range(n)]
    for ci, v in enumerate(values):
        if v > new_codec.max:
            raise AmendError(f"Cannot decrease refcount entry width to {new_codec.bits} "
                             f"bits: Cluster at offset {ci * cs:#x} has a refcount of {v}")
    per_block = new_codec.entries
    per_table_cluster = cs // 8
    start = file_clusters                 # the new structures' first cluster
    blocks = table = 0
    while True:                           # blocks and table must also count themselves
        total = start + blocks + table
        used_ranges = {ci // per_block for ci, v in enumerate(values) if v}
        used_ranges.update(range(start // per_block, (total - 1) // per_block + 1))
        nb = len(used_ranges)
        nt = -(-(max(used_ranges) + 1) // per_table_cluster)
        if (nb, nt) == (blocks, table):
            break
        blocks, table = nb, nt
    total = start + blocks + table
    values.extend([0] * (total - len(values)))
    for ci in range(start, total):
        values[ci] = 1
    ranges = sorted({ci // per_block for ci, v in enumerate(values) if v})
    block_at = {r: start + k for k, r in enumerate(ranges)}
    table_off = (start + blocks) * cs
    reftable = [0] * (table * per_table_cluster)
    for r, c in block_at.items():
        reftable[r] = c * cs
        blk = new_codec.new()
        for j in range(per_block):
            ci = r * per_block + j
            if ci < len(values) and values[ci]:
                new_codec.set(blk, j, values[ci])
        drv.file.write(c * cs, new_codec.dump(blk))
    from array import array
    drv.file.write(table_off, dump_be_array(array("Q", reftable)))
    drv.file.flush()
    old_table_off, old_table_clusters = h.refcount_table_offset, h.refcount_table_clusters
    old_blocks = [off for off in old.table if off]
    h.refcount_order = order
    h.refcount_table_offset = table_off
    h.refcount_table_clusters = table
    drv.rewrite_header()
    # from here on the new structures count: free the old ones in them
    drv.refcounts = RefcountManager(drv, max(4, old.cache.capacity))
    drv.refcounts.load_table()
    drv.overlap.remove(old_table_off, old_table_clusters * cs)
    for off in old_blocks:
        drv.overlap.remove(off, cs)
    drv.overlap.add(table_off, table * cs, "reftable")
    for c in block_at.values():
        drv.overlap.add(c * cs, cs, "refblock")
    drv.refcounts.free(old_table_off, old_table_clusters)
    for off in old_blocks:
        drv.refcounts.free(off, 1)
    drv.flush()
