"""How large a qcow2 (or raw) file an image needs: ``qemu-img measure``'s numbers.

The rules are QEMU 7.2's (block/qcow2.c qcow2_calc_prealloc_size and qcow2_measure,
block/qcow2-refcount.c qcow2_refcount_metadata_size, block/raw-format.c raw_measure):

* *fully allocated*: one header cluster; L2 tables for every guest cluster (the entry
  count rounded up to whole tables); the L1 table rounded up to whole clusters; the
  refcount table and blocks that cover all of that plus themselves (a fixed point);
  the data; and for LUKS the encryption header area, rounded up to a cluster.
* *required*: the same metadata, but data clusters only where the source has data
  (block status DATA and not ZERO, each extent widened to whole clusters), or the
  whole virtual size when the new image will have a backing file (the data may
  come from anywhere in the chain) or is preallocated with ``full``/``falloc``.
* *bitmaps* (qcow2 v3 target, qcow2 source): for each persistent bitmap its data
  clusters (as if fully dirty) and bitmap table clusters, and the directory.

This is the size of a freshly written image, not of the source file: a compacted
copy made by ``img convert`` fits in ``required``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..driver import BlockDriver, BlockError

# formats whose drivers exist in QEMU but have no measure callback
KNOWN_FORMATS = ("vmdk", "vpc", "vhdx", "vdi", "qed", "qcow", "luks", "parallels", "dmg",
                 "bochs", "cloop")

REFTABLE_ENTRY = 8
L2E_NORMAL, L2E_EXTENDED = 8, 16
MAX_L1_BYTES = 32 << 20          # QCOW_MAX_L1_SIZE


class MeasureOptionError(BlockError):
    """A ``-o`` option the target format does not take (qemu-img adds a second line)."""


@dataclass
class MeasureInfo:
    required: int
    fully_allocated: int
    bitmaps: int | None = None      # None: the line/field is not printed


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def refcount_metadata_size(clusters: int, cluster_size: int, refcount_order: int) -> int:
    """Bytes of refcount table + blocks for ``clusters`` clusters plus themselves.

    Iterate until the count stops changing: adding refcount blocks needs refcounts
    for them, which may need another block and another table cluster.
    """
    per_block = cluster_size * 8 >> refcount_order
    per_table_cluster = cluster_size // REFTABLE_ENTRY
    table = blocks = 0
    n = -1
    while True:
        last = n
        blocks = -(-(clusters + table + blocks) // per_block)
        table = -(-blocks // per_table_cluster)
        n = clusters + blocks + table
        if n == last:
            return (blocks + table) * cluster_size


def prealloc_size(total_size: int, cluster_size: int, refcount_order: int,
                  extended_l2: bool) -> int:
    """The file size of a fully preallocated image (qcow2_calc_prealloc_size)."""
    aligned = _round_up(total_size, cluster_size)
    l2e = L2E_EXTENDED if extended_l2 else L2E_NORMAL
    meta = cluster_size                                   # the header cluster
    nl2e = _round_up(aligned // cluster_size, cluster_size // l2e)
    meta += nl2e * l2e                                    # L2 tables
    nl1e = _round_up(nl2e * l2e // cluster_size, cluster_size // 8)
    meta += nl1e * 8                                      # the L1 table
    meta += refcount_metadata_size((meta + aligned) // cluster_size, cluster_size,
                                   refcount_order)
    return meta + aligned


def _data_extents(node: BlockDriver, offset: int, length: int):
    """(offset, length) runs that read as stored data anywhere in the backing chain
    (QEMU's block status *above*: DATA|ALLOCATED and not ZERO)."""
    for e in node.block_status(offset, length):
        if e.zero:
            continue
        if e.data:
            yield e.offset, e.length
            continue
        backing = getattr(node, "backing", None)
        if e.allocated or backing is None:
            continue
        end = min(e.offset + e.length, backing.length())
        if e.offset < end:
            yield from _data_extents(backing, e.offset, end - e.offset)


def _allocated_data(node: BlockDriver, cluster_size: int) -> int:
    """Bytes of whole clusters holding data in ``node`` and its backing chain.

    Each data run is widened to cluster boundaries; a cluster shared by two runs
    counts once (QEMU advances past the widened end the same way).
    """
    size = node.length()
    required = 0
    counted_to = 0                      # clusters below this are counted
    pos = 0
    while pos < size:
        n = min(size - pos, 1 << 30)
        for off, ln in _data_extents(node, pos, n):
            start = max(off - off % cluster_size, counted_to)
            end = _round_up(off + ln, cluster_size)
            if end > start:
                required += end - start
                counted_to = end
        pos += n
    return required


def _luks_area(opts) -> int:
    """Bytes of the LUKS header and key slots that qcow2 keeps before the data."""
    from ..crypto import luks
    return luks.area_bytes(opts.luks.spec)


def measure_qcow2(options: dict, size: int | None, node: BlockDriver | None) -> MeasureInfo:
    from .imagecreate import parse_options
    from .bitmaps import BitmapStore, dir_entry_size
    opts = dict(options)
    opts.pop("size", None)            # --size or the source decides (as qemu-img)
    try:
        o = parse_options(opts)
    except BlockError as e:
        if str(e).startswith("Invalid parameter"):
            raise MeasureOptionError(e.errno, str(e)) from None
        raise
    cs = o.cluster_size
    virtual = _round_up(size or 0, cs)
    l2e = L2E_EXTENDED if o.extended_l2 else L2E_NORMAL
    if -(-(virtual // cs) // (cs // l2e)) * 8 > MAX_L1_BYTES:
        raise BlockError(errno.EFBIG, "The image size is too large (try using a larger "
                                      "cluster size)")
    required = 0
    bitmaps = None
    if node is not None:
        ssize = node.length()
        virtual = _round_up(ssize, cs)
        required = virtual if o.backing_file else _allocated_data(node, cs)
        store = getattr(node, "bitmaps", None)
        if o.version >= 3 and getattr(node, "driver_name", "") == "qcow2":
            bitmaps = 0
            dir_size = 0
            if isinstance(store, BitmapStore):
                for e in store.entries:
                    gran = 1 << e.granularity_bits
                    bits = -(-ssize // gran)
                    data_clusters = -(-(-(-bits // 8)) // cs)
                    bitmaps += data_clusters * cs
                    bitmaps += _round_up(data_clusters * 8, cs)
                    dir_size += dir_entry_size(len(e.name.encode()))
            bitmaps += _round_up(dir_size, cs)
    if o.preallocation in ("full", "falloc"):
        required = virtual
    luks = _round_up(_luks_area(o.encrypt), cs) if o.encrypt and o.encrypt.format == "luks" else 0
    full = luks + prealloc_size(virtual, cs, o.refcount_bits.bit_length() - 1, o.extended_l2)
    return MeasureInfo(full - virtual + required, full, bitmaps)


def measure_raw(options: dict, size: int | None, node: BlockDriver | None) -> MeasureInfo:
    """raw_measure: a raw file is as large as the disk, allocated or not."""
    opts = dict(options)
    opts.pop("size", None)
    opts.pop("preallocation", None)
    if opts:
        raise MeasureOptionError(errno.EINVAL, f"Invalid parameter '{next(iter(opts))}'")
    if node is not None:
        n = node.length()
    else:
        n = _round_up(size or 0, 512)
    return MeasureInfo(n, n)
