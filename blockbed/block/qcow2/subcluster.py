"""Extended L2 entries and subcluster allocation (spec "Extended L2 Entries",
"Subcluster Allocation"; QEMU 7.2 block/qcow2-cluster.c).

With incompatible bit 4 an L2 entry is 128 bits: the standard cluster
descriptor followed by a 64-bit bitmap for the cluster's 32 subclusters —
bits 0-31 say "allocated" (the data is in the host cluster), bits 32-63 say
"reads as zeros".  Neither bit means the subcluster is unallocated: it reads
from the backing file, or zeros without one.  A table holds cluster_size/16
entries; the L2 cache keeps the raw 64-bit words, so descriptor ``i`` is word
``2i`` and its bitmap word ``2i + 1``.

What the bitmap buys: a small write into a fresh cluster over a backing file
copies only the edges of the touched *subclusters* (QEMU calculate_l2_meta),
and the rest of the cluster stays unallocated.  Zero writes work at
subcluster granularity too.

:class:`ExtL2Driver` is the :class:`~.driver.Qcow2Driver` of such images: it
replaces the methods whose behaviour depends on the entry layout (read,
write, write_zeroes, discard, block_status) and keeps everything else —
metadata ordering, refcounts, caches, snapshots, check — from the base driver.
"""

from __future__ import annotations

from array import array
from enum import IntEnum
from typing import Callable

from ... import trace
from ..driver import Buffer, Extent, check_request
from .cluster import (L2E_OFFSET_MASK, OFLAG_COPIED, ClusterType, cluster_type_extl2,
                      cluster_type_extl2_data_file)
from .driver import Qcow2Driver, _mergeable, _zero_fill
from .helpers import _byte_view

SUBCLUSTERS = 32                       # per cluster, fixed by the spec
ALL_ALLOC = (1 << 32) - 1              # bitmap bits 0-31
ALL_ZERO = ALL_ALLOC << 32             # bitmap bits 32-63


class SubclusterType(IntEnum):
    """QEMU's QCow2SubclusterType: the state of one subcluster."""
    UNALLOCATED_PLAIN = 0     # no host cluster, no bits: backing file / zeros
    UNALLOCATED_ALLOC = 1     # host cluster, no bits for this subcluster: backing / zeros
    ZERO_PLAIN = 2            # no host cluster, zero bit
    ZERO_ALLOC = 3            # host cluster, zero bit
    NORMAL = 4                # host cluster, allocation bit: data
    COMPRESSED = 5            # the whole cluster is compressed
    INVALID = 6               # the bitmap contradicts itself or the descriptor


_HAS_HOST = (SubclusterType.NORMAL, SubclusterType.ZERO_ALLOC, SubclusterType.UNALLOCATED_ALLOC)
_UNALLOCATED = (SubclusterType.UNALLOCATED_PLAIN, SubclusterType.UNALLOCATED_ALLOC)
_ZERO = (SubclusterType.ZERO_PLAIN, SubclusterType.ZERO_ALLOC)


def extl2_ctype(data_file: bool) -> Callable[[int], ClusterType]:
    """The cluster-type decoder for extended entries (bit 0 is reserved there)."""
    return cluster_type_extl2_data_file if data_file else cluster_type_extl2


def _ctz32(v: int) -> int:
    v &= ALL_ALLOC
    return (v & -v).bit_length() - 1 if v else 32


def _clz32(v: int) -> int:
    return 32 - (v & ALL_ALLOC).bit_length()


def bits(first: int, end: int) -> int:
    """Allocation-bit mask for subclusters first..end-1 (shift by 32 for zero bits)."""
    return ((1 << end) - 1) ^ ((1 << first) - 1)


def subcluster_type(ctype: ClusterType, bitmap: int, sc: int) -> SubclusterType:
    """The type of subcluster ``sc`` (QEMU qcow2_get_subcluster_type).

    A bitmap is invalid when any subcluster has both bits set (allocated
    cluster), or when an unallocated cluster has allocation bits."""
    if ctype == ClusterType.COMPRESSED:
        return SubclusterType.COMPRESSED
    if ctype == ClusterType.NORMAL:
        if (bitmap >> 32) & bitmap & ALL_ALLOC:
            return SubclusterType.INVALID
        if bitmap >> (32 + sc) & 1:
            return SubclusterType.ZERO_ALLOC
        if bitmap >> sc & 1:
            return SubclusterType.NORMAL
        return SubclusterType.UNALLOCATED_ALLOC
    if bitmap & ALL_ALLOC:
        return SubclusterType.INVALID
    if bitmap >> (32 + sc) & 1:
        return SubclusterType.ZERO_PLAIN
    return SubclusterType.UNALLOCATED_PLAIN


def range_type(ctype: ClusterType, bitmap: int, sc: int) -> tuple[SubclusterType, int]:
    """(type of subcluster ``sc``, how many subclusters from ``sc`` share it)
    (QEMU qcow2_get_subcluster_range_type)."""
    t = subcluster_type(ctype, bitmap, sc)
    below = (1 << sc) - 1
    if t in (SubclusterType.INVALID, SubclusterType.COMPRESSED):
        return t, SUBCLUSTERS - sc
    if t == SubclusterType.NORMAL:
        return t, _ctz32(~(bitmap | below)) - sc
    if t in _ZERO:
        return t, _ctz32(~((bitmap >> 32) | below)) - sc
    return t, _ctz32(((bitmap >> 32) | bitmap) & ~below) - sc


class ExtL2Driver(Qcow2Driver):
    """A qcow2 image with extended L2 entries (set as the class by Qcow2Driver.__init__)."""

    # --- geometry and entries ---------------------------------------------------------
    @property
    def sc_bits(self) -> int:
        return self.cluster_bits - 5

    def _locate(self, pos: int) -> tuple[int, int]:
        """(L1 index, entry index within its L2 table) of guest offset ``pos``."""
        cb = self.cluster_bits
        return pos >> (cb + self.l2_bits), (pos >> cb) & ((1 << self.l2_bits) - 1)

    def _entry(self, pos: int) -> int:
        l1i, idx = self._locate(pos)
        off = self.mapping.l2_offset(l1i)
        return self.mapping.cache.get(off)[2 * idx] if off else 0

    def l2_bitmap(self, pos: int) -> int:
        """The subcluster bitmap of the cluster at guest offset ``pos`` (0 without an L2 table)."""
        l1i, idx = self._locate(pos)
        off = self.mapping.l2_offset(l1i)
        return self.mapping.cache.get(off)[2 * idx + 1] if off else 0

    def _set_entry(self, table: array, idx: int, entry: int) -> None:
        # a compressed cluster's bitmap must be zero (spec "Extended L2 Entries")
        table[2 * idx] = entry
        table[2 * idx + 1] = 0

    def _invalid(self, l2off: int, idx: int) -> None:
        # C's %#x, as QEMU prints it: "0" for zero
        self.signal_corruption(f"Invalid cluster entry found (L2 offset: {l2off:#x}, "
                               f"L2 index: {idx:#x})".replace("0x0)", "0)"))

    def _classify(self, e: int, bm: int, sc: int, l2off: int, idx: int
                  ) -> tuple[SubclusterType, int]:
        t, n = range_type(self._ctype(e), bm, sc)
        if t == SubclusterType.INVALID:
            self._invalid(l2off, idx)
        if t in _HAS_HOST and e & 0x1FE:
            self.signal_corruption(f"Cluster allocation offset {e & L2E_OFFSET_MASK | (e & 0x1FE):#x}"
                                   f" unaligned (L2 offset: {l2off:#x}, L2 index: {idx:#x})")
        return t, n

    def _sc_extent(self, pos: int, end: int) -> tuple[int, SubclusterType, int]:
        """The longest run from ``pos`` (< end) of one subcluster type with contiguous
        host offsets, within one L2 table (QEMU count_contiguous_subclusters).

        Returns (length, type, host offset of ``pos``; the L2 entry for compressed)."""
        cb, scb = self.cluster_bits, self.sc_bits
        l1i, idx = self._locate(pos)
        lim = min(end, (l1i + 1) << (cb + self.l2_bits))
        off = self.mapping.l2_offset(l1i)
        if not off:
            return lim - pos, SubclusterType.UNALLOCATED_PLAIN, 0
        table = self.mapping.cache.get(off)
        sc = (pos >> scb) & (SUBCLUSTERS - 1)
        e = table[2 * idx]
        t, n = self._classify(e, table[2 * idx + 1], sc, off, idx)
        cstart = pos >> cb << cb
        if t == SubclusterType.COMPRESSED:
            return min(lim, cstart + (1 << cb)) - pos, t, e
        host = (e & L2E_OFFSET_MASK) + (pos & ((1 << cb) - 1)) if t in _HAS_HOST else 0
        expect = e & L2E_OFFSET_MASK
        run_end = cstart + ((sc + n) << scb)
        while run_end < lim and sc + n == SUBCLUSTERS:
            idx += 1
            e = table[2 * idx]
            bm = table[2 * idx + 1]
            t2, n = range_type(self._ctype(e), bm, 0)
            if t2 != t:
                break
            if t in _HAS_HOST:
                expect += 1 << cb
                if e & L2E_OFFSET_MASK != expect or e & 0x1FE:
                    break
            sc = 0
            run_end += n << scb
        return min(run_end, lim) - pos, t, host

    # --- reads ---------------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        check_request(self, offset, n)
        if trace.enabled:
            trace.emit("qcow2.read", offset=offset, length=n)
        buf = _byte_view(buf)
        if self.crypto is not None and (offset | n) & 511:
            from .encryption import aligned_read
            aligned_read(self, offset, buf)      # encrypted I/O is in whole sectors
            return
        pos, end = offset, offset + n
        while pos < end:
            run, t, host = self._sc_extent(pos, end)
            dst = buf[pos - offset:pos - offset + run]
            if t == SubclusterType.NORMAL:
                self._read_host(host, dst, pos)
            elif t in _UNALLOCATED:
                self._read_backing(pos, dst)
            elif t == SubclusterType.COMPRESSED:
                self._read_compressed(pos, host, dst)
            else:
                _zero_fill(dst)
            pos += run

    # --- status --------------------------------------------------------------------------
    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Subcluster-granular status (QEMU qcow2_co_block_status): unallocated
        subclusters of an allocated cluster keep their host offset but are not
        allocated, so the backing file decides them."""
        check_request(self, offset, length)
        out: list[Extent] = []
        pos, end = offset, offset + length
        blen = self.backing.length() if self.backing is not None else 0
        node = self.data_node or self.file
        while pos < end:
            run, t, host = self._sc_extent(pos, end)
            if t in _UNALLOCATED and pos < blen < pos + run:
                run = blen - pos
            # QEMU reports no host offset for encrypted data (it is not the guest's)
            h = host if t in _HAS_HOST and self.crypto is None else None
            if t == SubclusterType.NORMAL and not self.has_data_file and \
                    self.crypto is None and self._metadata_preallocated():
                exts = self._recurse_status(pos, run, host)
            elif t == SubclusterType.NORMAL:
                exts = [Extent(pos, run, data=True, zero=False, allocated=True,
                               host_offset=h, host_node=node if h is not None else None)]
            elif t == SubclusterType.COMPRESSED:
                exts = [Extent(pos, run, data=True, zero=False, allocated=True)]
            elif t in _UNALLOCATED:
                exts = [Extent(pos, run, data=False, zero=pos >= blen, allocated=False,
                               host_offset=h, host_node=node if h is not None else None)]
            else:
                exts = [Extent(pos, run, data=False, zero=True, allocated=True, host_offset=h,
                               host_node=node if h is not None else None)]
            for ext in exts:
                if out and _mergeable(out[-1], ext):
                    p = out[-1]
                    out[-1] = Extent(p.offset, p.length + ext.length, p.data, p.zero,
                                     p.allocated, p.host_offset, p.depth, p.host_node)
                else:
                    out.append(ext)
            pos += run
        return out

    # --- writes --------------------------------------------------------------------------
    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        n = len(data)
        check_request(self, offset, n)
        self._check_writable()
        self.bitmaps.record(offset, n)          # persistent dirty bitmaps, as the base
        if trace.enabled:
            trace.emit("qcow2.write", offset=offset, length=n, fua=fua)
        mv = _byte_view(data)
        if self.crypto is not None and (offset | n) & 511:
            from .encryption import aligned_write
            aligned_write(self, offset, mv, fua)     # encrypted I/O is in whole sectors
            return
        pos, end = offset, offset + n
        span = 1 << (self.cluster_bits + self.l2_bits)
        # QEMU extends one request's host range contiguously where it can
        # (qcow2_alloc_host_offset: handle_alloc after handle_copied/handle_alloc
        # allocates *at* the next host offset), without moving the free-cluster hint
        self._host_hint: int | None = None
        while pos < end:
            chunk_end = min(end, (pos // span + 1) * span)
            self._write_in_l2(pos, mv[pos - offset:chunk_end - offset])
            pos = chunk_end
        if fua:
            self.flush()

    def _in_place(self, l1i: int, e: int) -> bool:
        """QEMU handle_copied: an allocated cluster that is ours alone is written in place."""
        return (self._ctype(e) == ClusterType.NORMAL and bool(e & OFLAG_COPIED)
                and bool(self.mapping.l1[l1i] & OFLAG_COPIED))

    def _write_in_l2(self, pos: int, mv: memoryview) -> None:
        """Write ``mv`` at ``pos``; the range lies within one L2 table."""
        cb = self.cluster_bits
        cs = 1 << cb
        end = pos + len(mv)
        mp = self.mapping
        l1i, _ = self._locate(pos)
        mask = (1 << self.l2_bits) - 1
        c, last_c = pos >> cb, (end - 1) >> cb
        while c <= last_c:
            off = mp.l2_offset(l1i)
            table = mp.cache.get(off) if off else None
            if table is not None:
                # QEMU checks every entry a write touches (calculate_l2_meta)
                for k in range(c, last_c + 1):
                    j = 2 * (k & mask)
                    if subcluster_type(self._ctype(table[j]), table[j + 1], 0) == \
                            SubclusterType.INVALID:
                        self._invalid(off, k & mask)
            e = table[2 * (c & mask)] if table is not None else 0
            inplace = table is not None and self._in_place(l1i, e)
            if inplace and e & 0x1FE:
                self._classify(e, table[2 * (c & mask) + 1], 0, off, c & mask)
            # extend the run: contiguous in-place clusters, or clusters needing allocation
            k = c + 1
            nxt = (e & L2E_OFFSET_MASK) + cs
            while k <= last_c:
                e2 = table[2 * (k & mask)] if table is not None else 0
                if table is not None and self._in_place(l1i, e2):
                    if not inplace or e2 & L2E_OFFSET_MASK != nxt or e2 & 0x1FE:
                        break
                    nxt += cs
                elif inplace:
                    break
                k += 1
            rs, re_ = max(pos, c << cb), min(end, k << cb)
            piece = mv[rs - pos:re_ - pos]
            if inplace:
                self._write_in_place(l1i, off, c, k, rs, piece)
                self._host_hint = (e & L2E_OFFSET_MASK) + ((k - c) << cb)
            elif self.has_data_file:
                self._alloc_and_write_sc(l1i, c, k - c, rs, piece, c << cb)
            else:
                if table is not None:
                    self._refuse_far_old([table[2 * (x & mask)] for x in range(c, k)], c)
                self._l2_for_write(l1i)      # the L2 table is allocated before the data
                host = None
                hint = self._host_hint
                if hint is not None:
                    got = self.refcounts.alloc_at(hint, k - c)
                    if got:
                        host, k = hint, c + got
                        re_ = min(end, k << cb)
                        piece = mv[rs - pos:re_ - pos]
                if host is None:
                    host = self.refcounts.alloc(k - c)
                self._alloc_and_write_sc(l1i, c, k - c, rs, piece, host)
                self._host_hint = host + ((k - c) << cb)
            c = k

    def _cow_edges(self, c0: int, n: int, rs: int, re_: int, keep_old: bool) -> tuple[int, int]:
        """The guest range [start, end) to write for data [rs, re_) into clusters c0..c0+n-1:
        the data plus the copy-on-write edges (QEMU calculate_l2_meta)."""
        cb, scb = self.cluster_bits, self.sc_bits
        first = c0 << cb
        last = (c0 + n - 1) << cb
        e0, bm0 = self._entry(first), self.l2_bitmap(first)
        sc0 = (rs >> scb) & (SUBCLUSTERS - 1)
        t0 = subcluster_type(self._ctype(e0), bm0, sc0)
        e1, bm1 = self._entry(last), self.l2_bitmap(last)
        sc1 = ((re_ - 1) >> scb) & (SUBCLUSTERS - 1)
        t1 = subcluster_type(self._ctype(e1), bm1, sc1)
        if keep_old:
            start = rs if t0 == SubclusterType.NORMAL else first + (sc0 << scb)
            stop = re_ if t1 == SubclusterType.NORMAL else last + ((sc1 + 1) << scb)
            return start, stop
        if t0 == SubclusterType.COMPRESSED:
            start = first
        elif t0 in _HAS_HOST:
            # skip leading subclusters that hold no data: they stay unallocated/zero
            start = first + (min(sc0, _ctz32(bm0)) << scb)
        else:
            start = first + (sc0 << scb)
        if t1 == SubclusterType.COMPRESSED:
            stop = last + (1 << cb)
        elif t1 in _HAS_HOST:
            stop = last + (1 << cb) - (min(SUBCLUSTERS - 1 - sc1, _clz32(bm1)) << scb)
        else:
            stop = last + ((sc1 + 1) << scb)
        return start, stop

    def _cow_buffers(self, start: int, rs: int, piece: memoryview, stop: int) -> list[Buffer]:
        """Old guest content before and after ``piece`` (read before any metadata changes)."""
        bufs: list[Buffer] = []
        tail_at = rs + len(piece)
        for a, b in ((start, rs), (tail_at, stop)):
            if b > a:
                buf = bytearray(b - a)
                self.file.debug_event("cow_read")
                # a subcluster may reach past the end of the disk: that part stays zero
                inside = min(b, self.header.size) - a
                if inside > 0:
                    self.read(a, memoryview(buf)[:inside])
                bufs.append(buf)
            if a == start:
                bufs.append(piece)
        return bufs

    def _write_with_cow(self, host: int, start: int, rs: int, piece: memoryview,
                        stop: int) -> None:
        """Write guest range [start, stop) at ``host``: ``piece`` at ``rs`` and the old
        content around it.  When both copy-on-write edges read as zeros the host range is
        zeroed on the file instead and only the data written (QEMU handle_alloc_space)."""
        re_ = rs + len(piece)
        # (not for an encrypted image: zeros on the file are not the ciphertext of zeros)
        if (start < rs or stop > re_) and self.data_node is None and self.crypto is None and \
                self._reads_zero(start, rs) and self._reads_zero(re_, stop):
            self.overlap.check(host, stop - start, None)
            self.file.debug_event("cluster_alloc_space")
            self.file.write_zeroes(host, stop - start)
            self._write_host(host + rs - start, rs, [piece])
            return
        self._write_host(host, start, self._cow_buffers(start, rs, piece, stop))

    def _mark_written(self, table: array, c0: int, n: int, start: int, stop: int,
                      hosts: list[int] | None) -> None:
        """Set allocation bits (and clear zero bits) of the subclusters [start, stop)
        touches in clusters c0..c0+n-1 (QEMU qcow2_alloc_cluster_link_l2); ``hosts``
        are the new descriptors, or None to keep them."""
        cb, scb = self.cluster_bits, self.sc_bits
        mask = (1 << self.l2_bits) - 1
        for i in range(n):
            cbase = (c0 + i) << cb
            lo = max(start, cbase) - cbase
            hi = min(stop, cbase + (1 << cb)) - cbase
            m = bits(lo >> scb, ((hi - 1) >> scb) + 1)
            j = 2 * ((c0 + i) & mask)
            if hosts is not None:
                table[j] = hosts[i]
            table[j + 1] = (table[j + 1] | m) & ~(m << 32)

    def _write_in_place(self, l1i: int, l2off: int, c0: int, c1: int, rs: int,
                        piece: memoryview) -> None:
        """Overwrite allocated clusters c0..c1-1 that are ours alone; subclusters that were
        unallocated or zero get their edges copied and become allocated."""
        cb, scb = self.cluster_bits, self.sc_bits
        mp = self.mapping
        table = mp.cache.get(l2off)
        mask = (1 << self.l2_bits) - 1
        re_ = rs + len(piece)
        all_data = True
        for c in range(c0, c1):
            j = 2 * (c & mask)
            cbase = c << cb
            sc_from = (max(rs, cbase) - cbase) >> scb
            sc_to = (min(re_, cbase + (1 << cb)) - 1 - cbase) >> scb
            t, n = range_type(ClusterType.NORMAL, table[j + 1], sc_from)
            if t != SubclusterType.NORMAL or sc_from + n <= sc_to:
                all_data = False
                break
        e0 = table[2 * (c0 & mask)]
        host0 = (e0 & L2E_OFFSET_MASK) if e0 & L2E_OFFSET_MASK or not self.has_data_file \
            else c0 << cb
        if self.data_node is None and host0 + ((c1 - 1 - c0) << cb) >= self.file.length():
            # a damaged entry far past the end: writing would grow the file to it
            self._past_eof_desc(table[2 * ((c1 - 1) & mask)], rs)
        if all_data:
            self._write_host(host0 + rs - (c0 << cb), rs, [piece])
            return
        start, stop = self._cow_edges(c0, c1 - c0, rs, re_, keep_old=True)
        if trace.enabled:
            trace.emit("qcow2.subcluster_write", guest_offset=start, length=stop - start,
                       cow_head=rs - start, cow_tail=stop - re_)
        self._write_with_cow(host0 + start - (c0 << cb), start, rs, piece, stop)
        # the data must be durable before the bitmap that exposes it
        mp.cache.depends_on_flush()
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        self._mark_written(table, c0, c1 - c0, start, stop, None)
        self.file.debug_event("l2_update")
        mp.cache.mark_dirty(l2off)

    def _alloc_and_write_sc(self, l1i: int, c0: int, n: int, rs: int, piece: memoryview,
                            host: int) -> None:
        """Place guest clusters c0.. at the ``n`` new host clusters at ``host``: write the
        data and only the copy-on-write edges of the touched subclusters; link L2."""
        cb = self.cluster_bits
        cs = 1 << cb
        mask = (1 << self.l2_bits) - 1
        re_ = rs + len(piece)
        start, stop = self._cow_edges(c0, n, rs, re_, keep_old=False)
        table, l2off = self._l2_for_write(l1i)
        old_entries = [table[2 * ((c0 + i) & mask)] for i in range(n)]
        self.file.debug_event("cluster_alloc_space")
        if trace.enabled:
            trace.emit("qcow2.alloc", guest_offset=c0 << cb, host_offset=host, clusters=n,
                       cow_head=rs - start, cow_tail=stop - re_)
        self._write_with_cow(host + start - (c0 << cb), start, rs, piece, stop)
        mp = self.mapping
        if start < rs or stop > re_ or self.lazy_refcounts:
            mp.cache.depends_on_flush()
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        self._mark_written(table, c0, n, start, stop,
                           [(host + i * cs) | OFLAG_COPIED for i in range(n)])
        self.file.debug_event("l2_update")
        mp.cache.mark_dirty(l2off)
        self._release_entries(old_entries)

    # --- zeroes and discard ---------------------------------------------------------------
    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """Zeros at subcluster granularity, as QEMU's block layer splits the request
        (pwrite_zeroes_alignment = subcluster size) and qcow2_co_pwrite_zeroes serves it:
        partial subclusters become zero subclusters only if the rest already reads as
        zeros, otherwise they (and anything compressed in the way) are written as data."""
        check_request(self, offset, length)
        self._check_writable()
        self.bitmaps.record(offset, length)
        if not length:
            return
        scs = 1 << self.sc_bits
        end = offset + length
        pieces = []
        a = min(end, -(-offset // scs) * scs)
        if a > offset:
            pieces.append((offset, a))
        b = max(a, end // scs * scs)
        if b > a:
            pieces.append((a, b))
        if end > b:
            pieces.append((b, end))
        for p0, p1 in pieces:
            if not self._zero_piece(p0, p1, may_unmap):
                self._write_zero_bytes(p0, p1)

    def _zero_piece(self, start: int, stop: int, may_unmap: bool) -> bool:
        """One piece of a zero write; False means "not supported, write zeros as data"."""
        scs = 1 << self.sc_bits
        size = self.header.size
        head = start % scs
        tail = (-stop) % scs if stop != size else 0
        if head or tail:
            s0 = start - head
            if not (self._reads_zero(s0, start) and self._reads_zero(stop, min(size, stop + tail))):
                return False
            _, t, _ = self._sc_extent(s0, s0 + 1)
            if t not in _UNALLOCATED and t not in _ZERO:
                return False
            start, stop = s0, min(size, s0 + scs)
        return self._zeroize(start, stop, may_unmap)

    def _zeroize(self, start: int, stop: int, may_unmap: bool) -> bool:
        """QEMU qcow2_subcluster_zeroize: subcluster bits for the partial clusters at
        both ends, whole clusters get an all-zero bitmap."""
        cb = self.cluster_bits
        cs = 1 << cb
        size = self.header.size
        first_full = min(stop, -(-start // cs) * cs)
        last_full = stop if stop >= size else max(first_full, stop >> cb << cb)
        partial = [(s, e) for s, e in ((start, first_full), (last_full, stop)) if e > s]
        for s, _ in partial:
            if self._ctype(self._entry(s)) == ClusterType.COMPRESSED:
                return False      # a compressed cluster cannot be zeroed in part
        if self.data_file_raw:
            # the raw data file must read as the guest does (QEMU qcow2_subcluster_zeroize)
            self.data_node.write_zeroes(start, min(stop, size) - start)
        if first_full > start:
            self._zero_subclusters(start, first_full)
        pos = first_full
        span = 1 << (cb + self.l2_bits)
        while pos < last_full:
            chunk = min(last_full, (pos // span + 1) * span)
            self._zero_clusters_sc(pos, chunk, may_unmap)
            pos = chunk
        if stop > last_full:
            self._zero_subclusters(last_full, stop)
        return True

    def _zero_subclusters(self, start: int, stop: int) -> None:
        """Zero bits for subclusters of one cluster (QEMU zero_l2_subclusters)."""
        scb = self.sc_bits
        l1i, idx = self._locate(start)
        table, l2off = self._l2_for_write(l1i)
        sc0 = (start >> scb) & (SUBCLUSTERS - 1)
        sc1 = ((stop - 1) >> scb & (SUBCLUSTERS - 1)) + 1
        m = bits(sc0, sc1)
        old = table[2 * idx + 1]
        new = (old | (m << 32)) & ~m
        if new != old:
            table[2 * idx + 1] = new
            self.file.debug_event("l2_update")
            self.mapping.cache.mark_dirty(l2off)

    def _zero_clusters_sc(self, start: int, stop: int, may_unmap: bool) -> None:
        """All-zero bitmaps for whole clusters in one L2 table (QEMU zero_in_l2_slice):
        compressed clusters are always released, allocated ones only with may_unmap."""
        cb = self.cluster_bits
        l1i, _ = self._locate(start)
        table, l2off = self._l2_for_write(l1i)
        self._all_zero(table, l2off, start >> cb, -(-stop >> cb),
                       lambda t: t == ClusterType.COMPRESSED or
                       (may_unmap and t == ClusterType.NORMAL))

    def _all_zero(self, table: array, l2off: int, c0: int, c1: int,
                  unmap: Callable[[ClusterType], bool | None]) -> None:
        """Give guest clusters c0..c1-1 (one L2 table) an all-zero bitmap; ``unmap(type)``
        says whether the host cluster is dropped too (None: leave the entry alone).
        Entries change first, then the old clusters are released (QEMU order)."""
        mask = (1 << self.l2_bits) - 1
        released: list[int] = []
        changed = False
        for c in range(c0, c1):
            j = 2 * (c & mask)
            e = table[j]
            t = self._ctype(e)
            drop = unmap(t)
            if drop is None:
                continue
            new = 0 if drop else e
            if (new, ALL_ZERO) == (e, table[j + 1]):
                continue
            table[j], table[j + 1] = new, ALL_ZERO
            changed = True
            if drop and t != ClusterType.UNALLOCATED:
                released.append(e)
        if changed:
            self.file.debug_event("l2_update")
            self.mapping.cache.mark_dirty(l2off)
        if released:
            self._release_entries(released)     # (data-file clusters: the data file is told)

    def discard(self, offset: int, length: int) -> None:
        """Whole clusters only, as QEMU: discarded clusters read as zeros (all-zero bitmap,
        no host cluster) when there is a backing file or they were allocated."""
        check_request(self, offset, length)
        self._check_writable()
        self.bitmaps.record(offset, length)     # even where the discard is only a hint
        cb = self.cluster_bits
        cs = 1 << cb
        end = offset + length
        a = -(-offset // cs) * cs
        b = end // cs * cs
        if end == self.header.size:
            b = -(-end // cs) * cs
        if a >= b:
            return
        span = 1 << (cb + self.l2_bits)
        pos = a
        while pos < b:
            chunk = min(b, (pos // span + 1) * span)
            l1i, _ = self._locate(pos)
            if not self.mapping.l2_offset(l1i) and self.backing is None:
                pos = chunk
                continue
            table, l2off = self._l2_for_write(l1i)
            # no backing file: unallocated clusters already read as zeros
            self._all_zero(table, l2off, pos >> cb, chunk >> cb,
                           lambda t: None if self.backing is None and
                           t == ClusterType.UNALLOCATED else True)
            pos = chunk


def check_bitmap(ctype: ClusterType, entry: int, bitmap: int, index: int) -> tuple[str | None, bool]:
    """qemu-img check's view of one extended L2 entry's bitmap (QEMU check_refcounts_l2):
    (error message or None, whether the entry's clusters go uncounted)."""
    if ctype == ClusterType.COMPRESSED:
        if bitmap:
            return (f"ERROR compressed cluster {index} with non-zero subcluster allocation "
                    f"bitmap, entry={entry:#x}"), True
    elif ctype == ClusterType.NORMAL:
        if (bitmap >> 32) & bitmap & ALL_ALLOC:
            return (f"ERROR offset={entry & L2E_OFFSET_MASK:x}: Allocated cluster has "
                    "corrupted subcluster allocation bitmap"), False
    elif bitmap & ALL_ALLOC:
        return "ERROR: Unallocated cluster has non-zero subcluster allocation map", False
    return None, False
