"""Shrinking a qcow2 image (``img resize --shrink``, ``img amend -o size=``).

QEMU 7.2 (block/qcow2.c qcow2_co_truncate, qcow2-cluster.c qcow2_shrink_l1_table,
qcow2-refcount.c qcow2_shrink_reftable) shrinks in four steps, each leaving a
consistent image if the next never happens:

1. *Drop the cut-off clusters.*  Every L2 entry past the new end (rounded up to a
   cluster) is cleared and its cluster's reference dropped; data that snapshots
   still reference stays.  Data past the new end is lost — that is what shrinking
   means, and why ``resize`` wants ``--shrink`` to do it.
2. *Drop the L2 tables past the new end.*  The L1 entries are zeroed on disk (and
   flushed) before the tables' clusters are freed, so a table is never freed while
   an entry still points at it.  The L1 table keeps its size, as in QEMU.
3. *Drop refcount blocks that count nothing* (or only themselves): the refcount
   table entry is cleared and flushed before the block's cluster is freed.
4. *Cut the file* after the last cluster still in use, then the header's size.
"""

from __future__ import annotations

import errno
import struct

from ..driver import BlockError
from .cache import dump_be_array

HEADER_SIZE_OFFSET = 24          # spec "Header": bytes 24-31, size


def clear_entries(drv, start: int, end: int) -> None:
    """Unmap the clusters of ``[start, end)`` (cluster aligned): their L2 entries become 0
    (QEMU's *full* discard: no zero flag, a backing file shows through) and their
    references are dropped.  Shared L2 tables (snapshots) are copied first, as for any
    write.  Works for normal and extended (two-word) L2 entries."""
    cb = drv.cluster_bits
    mp = drv.mapping
    stride = mp.stride
    span = 1 << (cb + mp.l2_bits)
    pos = start
    while pos < end:
        chunk_end = min(end, (pos // span + 1) * span)
        l1i = pos // span
        if mp.l2_offset(l1i):
            table, l2off = drv._l2_for_write(l1i)
            old: list[int] = []
            changed = False
            for c in range(pos >> cb, chunk_end >> cb):
                i = (c & (mp.l2_size - 1)) * stride
                if table[i] or (stride == 2 and table[i + 1]):
                    old.append(table[i])
                    table[i] = 0
                    if stride == 2:
                        table[i + 1] = 0
                    changed = True
            if changed:
                drv.file.debug_event("l2_update")
                mp.cache.mark_dirty(l2off)
                drv._release_entries([e for e in old if e])
        pos = chunk_end


def check_shrink(drv, length: int) -> None:
    """What QEMU refuses before it changes anything."""
    if drv.has_data_file:
        raise BlockError(errno.ENOTSUP, "qcow2: shrinking an image with an external data "
                                        "file is not supported")


def shrink(drv, length: int) -> None:
    check_shrink(drv, length)
    cs = drv.cluster_size
    old = drv.header.size
    start = -(-length // cs) * cs
    end = -(-old // cs) * cs
    # 1. the cut-off clusters
    if start < end:
        clear_entries(drv, start, end)
    drv.flush()
    # 2. the L2 tables past the new end
    span = cs << drv.l2_bits
    new_l1 = -(-length // span)
    mp = drv.mapping
    gone = [(i, mp.l1[i]) for i in range(new_l1, len(mp.l1)) if mp.l1[i]]
    if gone:
        for i, _ in gone:
            mp.l1[i] = 0
        first = gone[0][0]
        off = drv.header.l1_table_offset + first * 8
        n = len(mp.l1) - first
        drv.overlap.check(off, n * 8, "l1")
        drv.file.write(off, bytes(n * 8))
        drv.file.flush()
        from .cluster import L1E_OFFSET_MASK
        for _, e in gone:
            drv.refcounts.free(e & L1E_OFFSET_MASK, 1)
        drv.flush()
    # 3. refcount blocks that count nothing
    _shrink_reftable(drv)
    # 4. the file's tail and the header
    last = drv.refcounts._last_used_cluster()
    keep = (last + 1) * cs
    if keep < drv.file.length():
        drv.file.truncate(keep)
    drv.file.write(HEADER_SIZE_OFFSET, struct.pack(">Q", length))
    drv.file.flush()
    drv.header.size = length


def _shrink_reftable(drv) -> None:
    """Free refcount blocks whose every entry is zero, not counting the block's own
    cluster when it lies in its own range."""
    rc = drv.refcounts
    cs = drv.cluster_size
    unused: list[tuple[int, int]] = []
    for ti, off in enumerate(rc.table):
        if not off:
            continue
        vals = rc.codec.all_values(rc._block(off, ti))
        own = (off >> drv.cluster_bits) - (ti << rc.rb_bits)
        if 0 <= own < len(vals):
            vals[own] = 0
        if not any(vals):
            unused.append((ti, off))
    if not unused:
        return
    for ti, _ in unused:
        rc.table[ti] = 0
    drv.flush()
    raw = dump_be_array(rc.table)
    raw += bytes(drv.header.refcount_table_clusters * cs - len(raw))
    drv.overlap.check(drv.header.refcount_table_offset, len(raw), "reftable")
    drv.file.write(drv.header.refcount_table_offset, raw)
    drv.file.flush()
    for ti, off in unused:
        drv.forget_metadata(off)
        own_ti = (off >> drv.cluster_bits) >> rc.rb_bits
        if own_ti != ti and rc.table[own_ti]:
            rc.free(off, 1)            # counted by another block: drop that reference
