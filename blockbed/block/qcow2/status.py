"""qcow2 block status: which guest ranges are data, zero or unallocated, and
where the data lies in the host file (QEMU block/qcow2.c
qcow2_co_block_status; with metadata preallocation detected, data clusters
that are holes in the file are reported as zero, QEMU's
qcow2_detect_metadata_preallocation and BDRV_BLOCK_RECURSE).

Also :func:`chain_reads_zero` (whether a range reads as zeros down the
backing chain) and the merge rule for adjacent extents, which the
extended-L2 driver (:mod:`.subcluster`) shares.

:class:`Qcow2Status` is a mixin of :class:`~.driver.Qcow2Driver`; it imports
nothing from :mod:`.driver`.
"""

from __future__ import annotations

import os

from ..driver import BlockDriver, Extent, check_request
from .cluster import L2E_OFFSET_MASK, ClusterType
from .helpers import _node_path
from .state import Qcow2State


class Qcow2Status(Qcow2State):
    """block_status of a qcow2 image."""

    # uses: file, data_node, backing, cluster_size, refcounts, crypto, has_data_file,
    # _prealloc_detected; calls _extent, _entry (Qcow2ReadPath)

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
