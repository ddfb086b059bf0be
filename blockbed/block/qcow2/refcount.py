"""Refcount table, refcount blocks and cluster allocation (spec "Cluster refcounts").

A cluster is free exactly when its refcount is 0; a range whose refcount
block does not exist yet reads as refcount 0.  Allocation scans upward from a
hint (QEMU's ``free_cluster_index``), so freed clusters are reused before the
file grows.

Ordering (crash safety): a new refcount block is written and flushed before
the refcount table entry that hooks it up; a grown refcount table (with the
refcount blocks describing it) is written and flushed before the header
switches to it, and only then is the old table freed.  Refcount changes
themselves go through the write-back cache in :mod:`.cache`.
"""

from __future__ import annotations

import errno
import struct
from array import array
from typing import TYPE_CHECKING, Callable

from ... import trace
from ..driver import BlockError
from .cache import MetadataCache, dump_be_array, load_be_array
from .corrupt import c_hex

if TYPE_CHECKING:
    from .driver import Qcow2Driver

REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
_TYPECODES = {3: "B", 4: "H", 5: "I", 6: "Q"}


class RefcountCodec:
    """Access to the ``1 << refcount_order``-bit entries of one refcount block.

    Orders 3..6 map onto an ``array`` of that width; orders 0..2 are packed
    into bytes starting at the least significant bit, as QEMU stores them.
    """

    def __init__(self, order: int, cluster_size: int):
        self.order = order
        self.bits = 1 << order
        self.entries = cluster_size * 8 // self.bits
        self.max = (1 << self.bits) - 1
        self.cluster_size = cluster_size
        if order >= 3:
            tc = _TYPECODES[order]
            self.load: Callable[[bytes], object] = lambda b: load_be_array(tc, b)
            self.dump: Callable[[object], bytes] = dump_be_array
            self.new: Callable[[], object] = lambda: array(tc, bytes(cluster_size))
        else:
            self.load = bytearray
            self.dump = bytes
            self.new = lambda: bytearray(cluster_size)
            self._per_byte_bits = 3 - order      # log2(entries per byte)

    def get(self, blk, i: int) -> int:
        if self.order >= 3:
            return blk[i]
        shift = (i & ((1 << self._per_byte_bits) - 1)) * self.bits
        return (blk[i >> self._per_byte_bits] >> shift) & self.max

    def set(self, blk, i: int, v: int) -> None:
        if self.order >= 3:
            blk[i] = v
            return
        j = i >> self._per_byte_bits
        shift = (i & ((1 << self._per_byte_bits) - 1)) * self.bits
        blk[j] = (blk[j] & ~(self.max << shift) & 0xFF) | (v << shift)

    def all_values(self, blk) -> list[int]:
        if self.order >= 3:
            return blk.tolist()
        out = []
        per = 1 << self._per_byte_bits
        for byte in blk:
            for k in range(per):
                out.append((byte >> (k * self.bits)) & self.max)
        return out

    def filled_block(self, count: int, value: int = 1) -> bytes:
        """A block whose first ``count`` entries are ``value`` (bulk creation)."""
        if self.order >= 3:
            a = array(_TYPECODES[self.order], [value]) * count
            a.extend(array(_TYPECODES[self.order], [0]) * (self.entries - count))
            return dump_be_array(a)
        per = 8 // self.bits
        full, rest = divmod(count, per)
        byte = 0
        for k in range(per):
            byte |= value << (k * self.bits)
        out = bytearray(bytes([byte]) * full)
        if rest:
            b = 0
            for k in range(rest):
                b |= value << (k * self.bits)
            out.append(b)
        out += bytes(self.cluster_size - len(out))
        return bytes(out)


class RefcountManager:
    """The refcount table in memory, refcount blocks through a cache, the allocator."""

    def __init__(self, drv: "Qcow2Driver", cache_entries: int):
        self.drv = drv
        self.file = drv.file
        self.cluster_bits = drv.cluster_bits
        self.cs = 1 << drv.cluster_bits
        self.codec = RefcountCodec(drv.header.refcount_order, self.cs)
        self.rb_bits = (self.codec.entries).bit_length() - 1
        self.rb_mask = self.codec.entries - 1
        self.table: array = array("Q")
        self.cache = MetadataCache(self.file, "refcount", self.cs, cache_entries,
                                   self.codec.load, self.codec.dump,
                                   "refblock_update", "refblock_load",
                                   check_write=lambda off, n: drv.overlap.check(off, n, "refblock"))
        self.free_cluster_index = 0
        self.max_allocated = 0            # highest cluster given out in this session
        self.pending_discards: list[tuple[int, int]] = []
        self.free_byte_offset = 0          # where the next compressed cluster may go
        self.damage: str | None = None     # why the table cannot be used (load_table)

    # --- table ------------------------------------------------------------
    def load_table(self) -> None:
        """Read the refcount table (QEMU qcow2_refcount_init).

        As QEMU 7.2, neither the table's place nor its entries are validated at open,
        so an image whose refcounts are damaged still opens and its data reads.  A
        table at offset 0 (the header read as entries) or past the end of the file
        (zeros: every cluster would look free) is recorded in :attr:`damage` and
        refused at the first refcount access; a bad entry is refused when its block
        is needed (:meth:`_block`).  QEMU would instead allocate over the header or
        other metadata and then mark the image corrupt."""
        h = self.drv.header
        n = h.refcount_table_clusters * self.cs
        off = h.refcount_table_offset
        flen = self.file.length()
        self.damage = None
        if off == 0:
            self.damage = "Reference count table offset 0 overlaps with qcow2_header"
        elif off + n > -(-flen // self.cs) * self.cs:
            self.damage = (f"Reference count table offset {off:#x} is beyond the end of "
                           "the image file")
        buf = bytearray(n)
        self.file.debug_event("reftable_load")
        self.file.read(off, memoryview(buf))     # past the end of the file: zeros
        self.table = load_be_array("Q", buf)

    def _usable(self) -> None:
        if self.damage:
            self.drv.signal_corruption(self.damage)

    def block_offset(self, ti: int) -> int:
        return self.table[ti] if ti < len(self.table) else 0

    # --- lookup ------------------------------------------------------------
    def get(self, ci: int) -> int:
        self._usable()
        ti = ci >> self.rb_bits
        if ti >= len(self.table):
            return 0
        off = self.table[ti]
        if not off:
            return 0
        return self.codec.get(self._block(off, ti), ci & self.rb_mask)

    def _block(self, off: int, ti: int):
        """The refcount block ``off`` of table index ``ti`` (QEMU qcow2_get_refcount
        and alloc_refcount_block refuse an unaligned block offset with EIO)."""
        if off & ~REFT_OFFSET_MASK:
            self.drv.signal_corruption(f"Refblock offset {off:#x} of refcount table entry "
                                       f"{ti} has reserved bits set")
        if off & (self.cs - 1):
            self.drv.signal_corruption(f"Refblock offset {c_hex(off)} unaligned "
                                       f"(reftable index: {c_hex(ti)})")
        if off >= self._eof_limit():
            self.drv.signal_corruption(f"Refblock at {off:#x} (reftable index {ti:#x}) is "
                                       "past the end of the image file")
        return self.cache.get(off)

    def _eof_limit(self) -> int:
        return max(self.file.length(), (self.max_allocated + 1) << self.cluster_bits) + self.cs

    # --- allocation -------------------------------------------------------------
    def find_free(self, n: int, start: int | None = None) -> int:
        """First cluster of a run of ``n`` clusters with refcount 0, from the hint."""
        self._usable()
        i = self.free_cluster_index if start is None else start
        run = 0
        while run < n:
            ci = i + run
            ti = ci >> self.rb_bits
            off = self.table[ti] if ti < len(self.table) else 0
            if not off:
                run += self.codec.entries - (ci & self.rb_mask)   # a whole missing block is free
                continue
            blk = self._block(off, ti)
            j = ci & self.rb_mask
            if self.codec.order >= 3:
                # find the next non-zero entry quickly within this block
                end = min(self.codec.entries, j + (n - run))
                k = j
                while k < end and blk[k] == 0:
                    k += 1
                if k < end:
                    i = ci - j + k + 1
                    run = 0
                else:
                    run += end - j
            else:
                if self.codec.get(blk, j) == 0:
                    run += 1
                else:
                    i = ci + 1
                    run = 0
        return i

    def alloc(self, n: int) -> int:
        """Allocate ``n`` contiguous clusters; returns the host offset (refcounts = 1)."""
        if n <= 0:
            raise ValueError(n)
        self.file.debug_event("cluster_alloc")
        while True:
            start = self.find_free(n)
            if (start + n) << self.cluster_bits > (1 << 56):
                raise BlockError(errno.EFBIG, "qcow2: the image file would exceed the maximum "
                                              "host offset (2^56 bytes)")
            self.drv.overlap.check_free(start << self.cluster_bits, n << self.cluster_bits)
            if self._ensure_blocks(start, n):
                continue          # metadata was allocated; the free run may have moved
            self.update(start, n, +1)
            self.free_cluster_index = start + n
            return start << self.cluster_bits

    def alloc_at(self, offset: int, n: int) -> int:
        """Allocate as many of the ``n`` clusters at ``offset`` as are free in a row and
        return how many (QEMU qcow2_alloc_clusters_at, used to extend a write's host
        range contiguously).  The free-cluster hint does not move."""
        start = offset >> self.cluster_bits
        while True:
            k = 0
            while k < n and self.get(start + k) == 0:
                k += 1
            if not k:
                return 0
            self.drv.overlap.check_free(offset, k << self.cluster_bits)
            if self._ensure_blocks(start, k):
                continue          # a new refcount block may have taken one of them
            self.file.debug_event("cluster_alloc")
            self.update(start, k, +1)
            return k

    def alloc_bytes(self, size: int) -> int:
        """Room for ``size`` bytes of compressed data (QEMU qcow2_alloc_bytes).

        Compressed clusters are packed one after another; each host cluster's
        refcount counts the compressed clusters that touch it.  Data that does not
        fit in the rest of the current host cluster continues into the next one when
        that is the first free cluster (the spec lets compressed data span host
        clusters; QEMU packs the same way), else it starts a new cluster.
        """
        self.file.debug_event("cluster_alloc_bytes")
        cs = self.cs
        off = self.free_byte_offset
        if off and self.get(off >> self.cluster_bits) in (0, self.codec.max):
            off = 0
        if off and cs - (off & (cs - 1)) < size:
            nxt = (off >> self.cluster_bits) + 1
            if self.find_free(1) == nxt and self.alloc_at(nxt << self.cluster_bits, 1):
                self.update(off >> self.cluster_bits, 1, +1)    # the shared, partial cluster
                self.free_cluster_index = max(self.free_cluster_index, nxt + 1)
            else:
                off = 0
        elif off:
            self.update(off >> self.cluster_bits, 1, +1)
        if not off:
            off = self.alloc(-(-size // cs))
        end = off + size
        self.free_byte_offset = end if end & (cs - 1) else 0
        return off

    def _ensure_blocks(self, start: int, n: int) -> bool:
        """Make sure refcount blocks cover [start, start+n); True if any had to be made."""
        for ti in range(start >> self.rb_bits, ((start + n - 1) >> self.rb_bits) + 1):
            if ti >= len(self.table):
                self.grow_table(ti)
                return True
            if not self.table[ti]:
                self._alloc_block(ti)
                return True
        return False

    def _alloc_block(self, ti: int) -> None:
        """Create the refcount block for table index ``ti`` (QEMU alloc_refcount_block)."""
        self.file.debug_event("refblock_alloc")
        while True:
            b = self.find_free(1)
            bti = b >> self.rb_bits
            if bti == ti or (bti < len(self.table) and self.table[bti]):
                break
            if bti >= len(self.table):
                self.grow_table(max(ti, bti))
                return
            self._alloc_block(bti)
            if self.table[ti]:
                return
        off = b << self.cluster_bits
        self.drv.overlap.check_free(off, self.cs)
        if trace.enabled:
            trace.emit("qcow2.refblock_alloc", table_index=ti, host_offset=off,
                       self_describing=bti == ti)
        blk = self.codec.new()
        if bti == ti:
            self.codec.set(blk, b & self.rb_mask, 1)      # self-describing block
        else:
            self.update(b, 1, +1)
        self.max_allocated = max(self.max_allocated, b)
        self.drv.overlap.add(off, self.cs, "refblock")
        self.cache.put_new(off, blk)
        # the block and the refcount of its cluster are durable before the table points at it
        self.file.debug_event("refblock_alloc_write")
        self.cache.flush()
        self.file.debug_event("refblock_alloc_hookup")
        self.drv.overlap.check(self.drv.header.refcount_table_offset + ti * 8, 8, "reftable")
        self.file.write(self.drv.header.refcount_table_offset + ti * 8, struct.pack(">Q", off))
        self.file.flush()
        self.table[ti] = off

    def _last_used_cluster(self) -> int:
        for ti in range(len(self.table) - 1, -1, -1):
            off = self.table[ti]
            if not off:
                continue
            vals = self.codec.all_values(self._block(off, ti))
            for j in range(len(vals) - 1, -1, -1):
                if vals[j]:
                    return (ti << self.rb_bits) + j
        return 0

    def grow_table(self, min_index: int) -> None:
        """Move the refcount table to a bigger one at the end of the image.

        New refcount blocks for the uncovered ranges are placed right after the
        new table and describe the table and themselves (QEMU's
        qcow2_refcount_area).  Written and flushed before the header switch.
        """
        drv = self.drv
        self.file.debug_event("reftable_grow")
        old_n = len(self.table)
        eof = -(-self.file.length() // self.cs)
        start = max(eof, self.max_allocated + 1, self._last_used_cluster() + 1)
        want = max(min_index + 1, old_n + (old_n >> 1) + 1)
        tc, nb = 1, 0
        for _ in range(64):
            area_end = start + tc + nb
            last_ti = max(want - 1, (area_end - 1) >> self.rb_bits)
            new_len = last_ti + 1
            ntc = -(-(new_len * 8) // self.cs)
            nnb = sum(1 for ti in range(start >> self.rb_bits, ((start + ntc + nb - 1) >> self.rb_bits) + 1)
                      if ti >= old_n or not self.table[ti])
            if (ntc, nnb) == (tc, nb):
                break
            tc, nb = ntc, nnb
        if tc * self.cs > (8 << 20):
            raise BlockError(errno.EFBIG, "qcow2: refcount table would exceed QEMU's limit of 8 MiB")
        table_off = start << self.cluster_bits
        area = range(start, start + tc + nb)
        if trace.enabled:
            trace.emit("qcow2.reftable_grow", old_entries=old_n, new_clusters=tc,
                       new_blocks=nb, host_offset=table_off)
        new_table = array("Q", self.table)
        new_table.extend(array("Q", bytes(8 * (tc * self.cs // 8 - old_n))))
        # refcount blocks for the uncovered ranges, right after the table
        new_blocks: dict[int, object] = {}
        nxt = start + tc
        for ti in range(start >> self.rb_bits, ((start + tc + nb - 1) >> self.rb_bits) + 1):
            if ti >= old_n or not self.table[ti]:
                new_blocks[ti] = self.codec.new()
                new_table[ti] = nxt << self.cluster_bits
                nxt += 1
        for ci in area:
            ti = ci >> self.rb_bits
            if ti in new_blocks:
                self.codec.set(new_blocks[ti], ci & self.rb_mask, 1)
            else:
                self.update(ci, 1, +1)
        self.max_allocated = max(self.max_allocated, start + tc + nb - 1)
        self.file.debug_event("refblock_alloc_write_blocks")
        for ti, blk in new_blocks.items():
            drv.overlap.check(new_table[ti], self.cs, "refblock")
            self.file.write(new_table[ti], self.codec.dump(blk))
        self.file.debug_event("refblock_alloc_write_table")
        drv.overlap.check(table_off, tc * self.cs, "reftable")
        self.file.write(table_off, dump_be_array(new_table))
        self.cache.flush()
        # switch the header to the new table
        self.file.debug_event("refblock_alloc_switch_table")
        old_off, old_clusters = drv.header.refcount_table_offset, drv.header.refcount_table_clusters
        self.file.write(48, struct.pack(">QI", table_off, tc))
        self.file.flush()
        drv.header.refcount_table_offset = table_off
        drv.header.refcount_table_clusters = tc
        self.table = new_table
        drv.overlap.remove(old_off, old_clusters * self.cs)
        drv.overlap.add(table_off, tc * self.cs, "reftable")
        for ti in new_blocks:
            drv.overlap.add(new_table[ti], self.cs, "refblock")
        for ti, blk in new_blocks.items():
            self.cache.tables[new_table[ti]] = blk  # clean copies, already on disk
        self.cache._make_room()
        self.free(old_off, old_clusters)

    def update(self, start: int, n: int, delta: int) -> None:
        """Add ``delta`` to the refcounts of clusters [start, start+n) (blocks must exist).

        Works a refcount block at a time: one lookup, one range check and one slice
        assignment per block for the array-backed widths (8..64 bits), so allocating
        a 2 MiB run of 64 KiB clusters is not 32 trips through the cache."""
        if trace.enabled:
            trace.emit("qcow2.refcount_update", cluster=start, clusters=n, delta=delta)
        self._usable()
        codec = self.codec
        ci, end = start, start + n
        while ci < end:
            ti = ci >> self.rb_bits
            off = self.table[ti] if ti < len(self.table) else 0
            if not off:
                if delta < 0:
                    self.drv.signal_corruption(f"Freeing cluster {ci} that has no refcount block")
                raise AssertionError("refcount block missing for an allocated cluster")
            blk = self._block(off, ti)
            stop = min(end, (ti + 1) << self.rb_bits)
            j0 = ci & self.rb_mask
            j1 = j0 + (stop - ci)
            if codec.order >= 3:
                self._update_array(blk, ci, j0, j1, delta)
            else:
                for k in range(j0, j1):
                    codec.set(blk, k, self._checked(ci + k - j0, codec.get(blk, k) + delta))
            self.cache.mark_dirty(off)
            if delta < 0:
                self._note_freed(blk, ci, j0, j1)
            elif stop - 1 > self.max_allocated:
                self.max_allocated = stop - 1
            ci = stop

    def _update_array(self, blk: array, ci: int, j0: int, j1: int, delta: int) -> None:
        old = blk[j0:j1]
        lo, hi = min(old), max(old)
        if lo + delta < 0 or hi + delta > self.codec.max:
            bad = next(k for k, v in enumerate(old) if not 0 <= v + delta <= self.codec.max)
            self._checked(ci + bad, old[bad] + delta)      # raises with the message
        if lo == hi:
            blk[j0:j1] = array(blk.typecode, [lo + delta]) * (j1 - j0)
        else:
            blk[j0:j1] = array(blk.typecode, [v + delta for v in old])

    def _checked(self, ci: int, v: int) -> int:
        if v < 0:
            self.drv.signal_corruption(f"Cluster {ci} is freed twice (refcount would drop "
                                       "below zero)")
        if v > self.codec.max:
            raise BlockError(errno.ERANGE, f"qcow2: refcount of cluster {ci} would overflow "
                                           f"{self.codec.bits} bits")
        return v

    def _note_freed(self, blk, ci: int, j0: int, j1: int) -> None:
        """Move the allocation hints after refcounts in [j0, j1) of a block dropped."""
        get = self.codec.get
        for k in range(j0, j1):
            if get(blk, k) == 0:
                c = ci + k - j0
                if c < self.free_cluster_index:
                    self.free_cluster_index = c
                break
        fb = self.free_byte_offset
        if fb and ci <= fb >> self.cluster_bits < ci + (j1 - j0) and \
                get(blk, j0 + (fb >> self.cluster_bits) - ci) == 0:
            self.free_byte_offset = 0

    def free(self, offset: int, n_clusters: int, discard: bool = True) -> None:
        """Drop one reference to each cluster of a range (QEMU qcow2_free_clusters)."""
        self.file.debug_event("cluster_free")
        start = offset >> self.cluster_bits
        self.update(start, n_clusters, -1)
        for ci in range(start, start + n_clusters):
            if self.get(ci) == 0:
                o = ci << self.cluster_bits
                self.drv.forget_metadata(o)
                if discard and self.drv.pass_discard:
                    self.pending_discards.append((o, self.cs))

    def process_discards(self) -> None:
        """Pass freed clusters down to the file once the metadata that freed them is durable."""
        pend, self.pending_discards = self.pending_discards, []
        if not pend:
            return
        pend.sort()
        merged: list[list[int]] = []
        for o, n in pend:
            if self.get(o >> self.cluster_bits) != 0:
                continue                        # reallocated since it was freed
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1][1] += n
            else:
                merged.append([o, n])
        flen = self.file.length()
        for o, n in merged:
            n = min(n, flen - o)
            if n > 0:
                try:
                    self.file.discard(o, n)
                except BlockError:
                    pass                        # a discard is a hint
