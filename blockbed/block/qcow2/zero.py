"""qcow2 zero writes and discard: the v3 zero flag on whole clusters, zeros
written as data where a cluster cannot take the flag (v2 images, partial
clusters that do not already read as zero), and discard (spec "Cluster
mapping", bit 0 of standard cluster descriptors; QEMU block/qcow2.c
qcow2_co_pwrite_zeroes and qcow2_co_pdiscard, block/qcow2-cluster.c
zero_in_l2_slice and discard_in_l2_slice).

:class:`Qcow2ZeroPath` is a mixin of :class:`~.driver.Qcow2Driver`; it imports
nothing from :mod:`.driver`.
"""

from __future__ import annotations

from ..driver import check_request
from .cluster import L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO, ClusterType
from .helpers import _ZEROS
from .state import Qcow2State
from .status import chain_reads_zero


class Qcow2ZeroPath(Qcow2State):
    """write_zeroes and discard of a qcow2 image."""

    # uses: file, data_node, backing, header, cluster_bits, cluster_size, l2_bits,
    # mapping, bitmaps, data_file_raw, _ctype; calls _check_writable (Qcow2Driver),
    # _extent (Qcow2ReadPath) and write, _l2_for_write, _release_entries
    # (Qcow2WritePath)

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
