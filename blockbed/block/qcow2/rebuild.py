"""Rebuilding the refcount structure from the references ``check`` counted (QEMU
rebuild_refcount_structure, used by ``check -r all`` when refcount blocks are
missing or broken)."""

from __future__ import annotations

import struct
from array import array
from typing import TYPE_CHECKING

from .refcount import REFT_OFFSET_MASK, RefcountCodec

if TYPE_CHECKING:
    from .driver import Qcow2Driver


class RebuildFailed(Exception):
    """rebuild_refcount_structure failed before writing anything (qemu-img's message)."""


def rebuild_refcounts(drv: "Qcow2Driver", target: array) -> None:
    """Write a fresh refcount table and blocks holding ``target`` (QEMU
    rebuild_refcount_structure): refcount blocks and then the table go to the
    first free clusters; the header switches to them last."""
    cs, cb = drv.cluster_size, drv.cluster_bits
    codec = RefcountCodec(drv.header.refcount_order, cs)
    per = codec.entries
    rbb = per.bit_length() - 1
    vals = array(target.typecode, target)     # 1 TiB sparse file: not a list of 16M ints

    def alloc(n: int, first_free: list[int]) -> int:
        """QEMU alloc_clusters_imrt: first run of ``n`` free clusters from the hint; the
        hint moves to the first gap seen."""
        i = first_free[0]
        run = 0
        first_gap = True
        while run < n:
            if i >= len(vals) or not vals[i]:
                run += 1
                if first_gap:
                    first_free[0] = i
                    first_gap = False
            else:
                run = 0
            i += 1
        start = i - n
        if i > len(vals):
            vals.extend([0] * (i - len(vals)))
        for k in range(start, i):
            vals[k] = 1
        return start

    blocks_at: dict[int, int] = {}
    table_at, table_clusters = -1, 0

    def write_refblocks(first: int, end: int) -> None:
        """Allocate the refcount block of every used range in [first, end), scanning in
        cluster order; a block never goes into a range whose block is already placed."""
        first_free = [0]          # the scan's own hint, as in QEMU
        ci = first
        while ci < min(end, len(vals)):
            if not vals[ci]:
                ci += 1
                continue
            ti = ci >> rbb
            if ti not in blocks_at:
                if first_free[0] < ti << rbb:
                    first_free[0] = ti << rbb
                blocks_at[ti] = alloc(1, first_free)
            ci = (ti + 1) << rbb

    write_refblocks(0, len(vals))
    table_hint = [0]
    while True:
        need = -(-((max(blocks_at) + 1) * 8) // cs)
        if table_at >= 0 and need <= table_clusters:
            break
        if table_at >= 0:
            for k in range(table_at, table_at + table_clusters):
                vals[k] = 0
        table_clusters = need
        table_at = alloc(need, table_hint)
        write_refblocks(table_at, table_at + need)
        # blocks placed just now may sit in ranges without a block of their own
        write_refblocks(0, len(vals))
    t = table_clusters
    start = table_at
    # QEMU writes the new blocks and table through qcow2_pre_write_overlap_check,
    # which still sees the old refcount table's entries: a new block or table on a
    # cluster an old (broken, so uncounted) entry points into fails the rebuild
    old = [e & REFT_OFFSET_MASK for e in drv.refcounts.table if e & REFT_OFFSET_MASK]

    def hits_old(ci: int, n: int) -> bool:
        lo, hi = ci << cb, (ci + n) << cb
        return any(o < hi and lo < o + cs for o in old)

    if any(hits_old(ci, 1) for ci in blocks_at.values()):
        raise RebuildFailed("ERROR writing refblock: Input/output error")
    if hits_old(start, t):
        raise RebuildFailed("ERROR writing reftable: Input/output error")
    table = [0] * (t * cs // 8)
    f = drv.file
    for ti, ci in sorted(blocks_at.items()):
        table[ti] = ci << cb
        blk = codec.new()
        base = ti << rbb
        for j in range(per):
            v = vals[base + j] if base + j < len(vals) else 0
            if v:
                codec.set(blk, j, min(v, codec.max))
        f.write(ci << cb, codec.dump(blk))
    nblocks = len(blocks_at)
    f.write(start << cb, struct.pack(f">{len(table)}Q", *table))
    f.flush()
    f.write(48, struct.pack(">QI", start << cb, t))
    f.flush()
    drv.header.refcount_table_offset = start << cb
    drv.header.refcount_table_clusters = t
    # reload the refcount state and the overlap map
    rc = drv.refcounts
    for off in list(rc.cache.tables):
        rc.cache.forget(off)
    rc.load_table()
    rc.free_cluster_index = 0
    rc.max_allocated = max(rc.max_allocated, len(vals) - 1)
    ov = drv.overlap
    for ci, kind in list(ov.kinds.items()):
        if kind in ("reftable", "refblock"):
            del ov.kinds[ci]
    ov.add(start << cb, t * cs, "reftable")
    for off in rc.table:
        if off:
            ov.add(off, cs, "refblock")
