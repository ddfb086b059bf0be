"""The qcow2 read path: guest reads through the L1/L2 mapping to data, zero,
compressed or backing-file content (spec "Cluster mapping", "Compressed
Clusters"; QEMU block/qcow2.c qcow2_co_preadv_part), and the mapping lookups
the other paths share: :meth:`~Qcow2ReadPath._extent` (QEMU
qcow2_get_host_offset in block/qcow2-cluster.c) and the raw L2 entry.

Also the one place guest data is read from host clusters (the data file or
the image file, decrypted when the image is encrypted), with the refusal of a
data cluster that overlaps metadata or starts past the end of the file, and
the reads copy-on-write needs (:meth:`~Qcow2ReadPath._read_cluster_part`).

:class:`Qcow2ReadPath` is a mixin of :class:`~.driver.Qcow2Driver`; it imports
nothing from :mod:`.driver`.
"""

from __future__ import annotations

import errno

from ... import trace
from ..driver import BlockError, check_request
from .cluster import L2E_OFFSET_MASK, OFLAG_COMPRESSED, ClusterType
from .compress import decompress
from .corrupt import c_hex
from .helpers import _byte_view, _zero_fill
from .state import Qcow2State


class Qcow2ReadPath(Qcow2State):
    """Reads of a qcow2 image and the L2 lookups behind them."""

    # uses: file, data_node, backing, header, cluster_bits, cluster_size, l2_bits,
    # mapping, overlap, crypto, _ctype, _last_compressed; calls signal_corruption
    # (Qcow2Driver)

    def read(self, offset: int, buf: memoryview) -> None:
        n = len(buf)
        if offset < 0 or offset + n > self.header.size:
            check_request(self, offset, n)
        if trace.enabled:
            trace.emit("qcow2.read", offset=offset, length=n)
        buf = _byte_view(buf)
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

    # --- mapping lookups (also used by the write, zero and status paths) ----------
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

    def _entry(self, pos: int) -> int:
        cb = self.cluster_bits
        off = self.mapping.l2_offset(pos >> (cb + self.l2_bits))
        if not off:
            return 0
        return self.mapping.cache.get(off)[(pos >> cb) & ((1 << self.l2_bits) - 1)]

    def l2_entry(self, pos: int) -> int:
        """The raw L2 entry for guest offset ``pos`` (0 when no L2 table covers it)."""
        return self._entry(pos)
