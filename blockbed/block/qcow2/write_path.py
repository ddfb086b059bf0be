"""The qcow2 write path: guest writes, in place where OFLAG_COPIED says the
cluster is ours alone, otherwise into newly allocated clusters with
copy-on-write of the partial clusters' old content (spec "Cluster mapping";
QEMU block/qcow2.c qcow2_co_pwritev_part and block/qcow2-cluster.c
qcow2_alloc_host_offset, handle_copied, handle_alloc, l2_allocate).

Also the one place guest data is written to host clusters (encrypted when the
image is, overlap-checked against metadata), compressed cluster writes (QEMU
qcow2_co_pwritev_compressed), and the release of the clusters that replaced
L2 entries held (qcow2_free_any_cluster).  The ordering of metadata writes is
described in :mod:`.driver`.

:class:`Qcow2WritePath` is a mixin of :class:`~.driver.Qcow2Driver`; it imports
nothing from :mod:`.driver`.
"""

from __future__ import annotations

import errno
from array import array
from typing import Sequence

from ... import trace
from ..driver import BlockError, Buffer, check_request
from .cluster import (L2E_OFFSET_MASK, OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO,
                      ClusterType, cluster_type)
from .corrupt import c_hex
from .helpers import _byte_view, _log
from .state import Qcow2State


class Qcow2WritePath(Qcow2State):
    """Writes of a qcow2 image: in place, allocating with copy-on-write, compressed."""

    # uses: file, data_node, header, cluster_bits, cluster_size, l2_bits, mapping,
    # refcounts, overlap, bitmaps, crypto, has_data_file, data_file_raw,
    # lazy_refcounts, unsafe_order, pass_discard, _ctype, _last_compressed;
    # calls _check_writable, flush, signal_corruption (Qcow2Driver) and _entry,
    # _read_cluster_part (Qcow2ReadPath)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        n = len(data)
        if offset < 0 or offset + n > self.header.size:
            check_request(self, offset, n)
        self._check_writable()
        self.bitmaps.record(offset, n)
        if trace.enabled:
            trace.emit("qcow2.write", offset=offset, length=n, fua=fua)
        mv = _byte_view(data)
        if self.crypto is not None and (offset | n) & 511:
            from .encryption import aligned_write
            aligned_write(self, offset, mv, fua)     # encrypted I/O is in whole sectors
            return
        cb = self.cluster_bits
        cmask = self.cluster_size - 1
        if n and (offset & cmask) + n <= self.cluster_size:
            # fast path: overwrite in place (OFLAG_COPIED: the cluster is ours alone)
            mp = self.mapping
            l1i = offset >> (cb + self.l2_bits)
            if l1i < len(mp.l1) and not mp.damage:
                e1 = mp.l1[l1i]
                # only cluster-aligned tables/clusters; the slow path signals corruption
                if e1 & OFLAG_COPIED and e1 & cmask == 0:
                    e = mp.cache.get(e1 & L2E_OFFSET_MASK)[(offset >> cb) & ((1 << self.l2_bits) - 1)]
                    if e & (OFLAG_COPIED | OFLAG_COMPRESSED | cmask) == OFLAG_COPIED \
                            and not self.has_data_file:
                        host = (e & L2E_OFFSET_MASK) + (offset & cmask)
                        if host - (offset & cmask) >= self.file.length():
                            self._past_eof_desc(e, offset)
                        self._write_host(host, offset, [mv])
                        if fua:
                            self.flush()
                        return
        pos, end = offset, offset + n
        span = 1 << (cb + self.l2_bits)
        while pos < end:
            chunk_end = min(end, (pos // span + 1) * span)
            self._write_in_l2(pos, mv[pos - offset:chunk_end - offset])
            pos = chunk_end
        if fua:
            self.flush()

    def _write_host(self, host: int, guest: int, bufs: list) -> None:
        """The one place guest data goes to host clusters (encrypted here when the image
        is: ``bufs`` are joined into fresh ciphertext, the caller's buffers untouched)."""
        if self.crypto is not None:
            bufs = [self.crypto.encrypt(host, guest, bufs)]
        self.file.debug_event("write_aio")
        if self.data_node is not None:
            node = self.data_node
        else:
            node = self.file
            self.overlap.check(host, sum(len(b) for b in bufs), None)
        if len(bufs) == 1:
            node.write(host, bufs[0])
        else:
            node.writev(host, bufs)

    def _write_in_l2(self, pos: int, mv: memoryview) -> None:
        """Write ``mv`` at ``pos``; the range lies within one L2 table."""
        cb, cs = self.cluster_bits, self.cluster_size
        l2_mask = (1 << self.l2_bits) - 1
        end = pos + len(mv)
        l1i = pos >> (cb + self.l2_bits)
        mp = self.mapping
        off = mp.l2_offset(l1i)
        table = mp.cache.get(off) if off else None
        first_c, last_c = pos >> cb, (end - 1) >> cb
        c = first_c
        while c <= last_c:
            e = table[c & l2_mask] if table is not None else 0
            if e & L2E_OFFSET_MASK & (cs - 1) and not e & OFLAG_COMPRESSED:
                self._unaligned_desc(e, c << cb)
            inplace = (e & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) == OFLAG_COPIED
                       and (e & L2E_OFFSET_MASK or self.has_data_file)
                       and off and mp.l1[l1i] & OFLAG_COPIED)
            # extend the run of clusters of the same kind (contiguous host for in-place)
            k = c + 1
            if inplace:
                nxt = (e & L2E_OFFSET_MASK) + cs
                while k <= last_c:
                    e2 = table[k & l2_mask]
                    if e2 & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) != OFLAG_COPIED \
                            or e2 & L2E_OFFSET_MASK != nxt:
                        break
                    nxt += cs
                    k += 1
            else:
                while k <= last_c:
                    e2 = table[k & l2_mask] if table is not None else 0
                    if e2 & L2E_OFFSET_MASK & (cs - 1) and not e2 & OFLAG_COMPRESSED:
                        self._unaligned_desc(e2, k << cb)
                    if (e2 & (OFLAG_COPIED | OFLAG_COMPRESSED | OFLAG_ZERO | 0x1FE) == OFLAG_COPIED
                            and (e2 & L2E_OFFSET_MASK or self.has_data_file)
                            and mp.l1[l1i] & OFLAG_COPIED):
                        break
                    k += 1
            rs = max(pos, c << cb)
            re_ = min(end, k << cb)
            piece = mv[rs - pos:re_ - pos]
            if inplace:
                host = (e & L2E_OFFSET_MASK) + (rs & (cs - 1))
                if self.data_node is None and (host + len(piece) - 1) & ~(cs - 1) >= \
                        self.file.length():
                    self._past_eof_desc(e, rs)
                self._write_host(host, rs, [piece])
            else:
                table, off = self._alloc_and_write(l1i, c, k - c, rs, piece)
            c = k

    def _unaligned_desc(self, e: int, guest: int) -> None:
        """QEMU handle_copied/handle_alloc: a data or preallocated-zero descriptor that
        is not cluster aligned is never written through nor freed (its refcount
        update would hit an unrelated cluster)."""
        what = "Preallocated zero" if e & OFLAG_ZERO and not self.header.extended_l2 else "Data"
        self.signal_corruption(f"{what} cluster offset {c_hex(e & L2E_OFFSET_MASK)} "
                               f"unaligned (guest offset: {c_hex(guest)})")

    def _refuse_far_old(self, entries: Sequence[int], c0: int) -> None:
        """Before copy-on-write replaces ``entries`` (guest clusters c0..): a cluster
        they hold that starts past the end of the file was never written, so the
        entry is damaged, and freeing it after the copy would fail (QEMU copies, then
        logs 'qcow2_free_clusters failed'); refuse before allocating anything."""
        if self.has_data_file:
            return
        flen = self.file.length()
        for i, e in enumerate(entries):
            if e & L2E_OFFSET_MASK >= flen and self._ctype(e) in (
                    ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                self._past_eof_desc(e, (c0 + i) << self.cluster_bits)

    def _past_eof_desc(self, e: int, guest: int) -> None:
        """An in-place write to a data cluster that starts past the end of the file:
        the L2 entry is damaged (every allocated cluster was written).  QEMU writes
        there, growing the file to wherever the entry points (a 1 TiB sparse file);
        blockbed refuses, as its reads do."""
        self.signal_corruption(f"Data cluster offset {c_hex(e & L2E_OFFSET_MASK)} is beyond "
                               f"the end of the image file (guest offset: {c_hex(guest)})")

    # --- compressed writes (qemu-img convert -c) ---------------------------------
    def write_compressed(self, offset: int, data: Buffer, compressed: bytes | None = None
                         ) -> None:
        """Write one whole cluster compressed (qemu-img convert -c; QEMU
        qcow2_co_pwritev_compressed).  The last cluster of the image may be short
        (it is padded with zeros).  Data that does not shrink is written normally.
        ``compressed``: the cluster already compressed with :meth:`compress_cluster`
        (convert -m compresses on several threads, then writes in order)."""
        from .compress import compress
        cs = self.cluster_size
        n = len(data)
        check_request(self, offset, n)
        self._check_writable()
        if self.crypto is not None:
            raise BlockError(errno.EINVAL, "Compression and encryption not supported at the "
                                           "same time")
        if offset % cs or n > cs or (n < cs and offset + n != self.header.size):
            raise BlockError(errno.EINVAL, "qcow2: compressed writes must cover exactly one "
                                           "cluster (or the image's last, partial cluster)")
        self.bitmaps.record(offset, n)
        comp = compressed if compressed is not None else self.compress_cluster(data)
        l1i = offset >> (self.cluster_bits + self.l2_bits)
        idx = (offset >> self.cluster_bits) & ((1 << self.l2_bits) - 1)
        mp = self.mapping
        old = self._entry(offset)
        if self.has_data_file or len(comp) >= cs - 1 or cluster_type(old) not in (ClusterType.UNALLOCATED,
                                                             ClusterType.ZERO_PLAIN):
            self.write(offset, data)
            return
        table, l2off = self._l2_for_write(l1i)
        coff = self.refcounts.alloc_bytes(len(comp))
        self._last_compressed = None      # the same descriptor may now mean other data
        self.overlap.check(coff, len(comp), None)
        self.file.debug_event("write_compressed")
        self.file.write(coff, comp)
        nb = ((coff + len(comp) - 1) >> 9) - (coff >> 9)
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        self._set_entry(table, idx, OFLAG_COMPRESSED | (nb << mp.csize_shift) | coff)
        self.file.debug_event("l2_update_compressed")
        mp.cache.mark_dirty(l2off)

    def compress_cluster(self, data: Buffer) -> bytes:
        """The compressed form of one cluster's data (zero-padded to a cluster); pure,
        so it may run on any thread (zlib and zstd release the GIL)."""
        from .compress import compress
        cs = self.cluster_size
        full = bytes(data) if len(data) == cs else bytes(data) + bytes(cs - len(data))
        return compress(full, self.header.compression_type)

    def align_file_end(self) -> None:
        """Pad the file to a whole sector after packed compressed data, as QEMU's
        zero-length compressed write at the end of ``convert -c`` does (sector-based
        readers then never meet a short last sector)."""
        self._check_writable()
        n = self.file.length()
        if n % 512:
            self.file.truncate(n + 512 - n % 512)

    # --- allocation and L2 updates ----------------------------------------------------
    def _set_entry(self, table: array, idx: int, entry: int) -> None:
        """Store L2 entry ``idx`` (the extended-L2 driver also clears its bitmap)."""
        table[idx] = entry

    def _l2_for_write(self, l1i: int) -> tuple[array, int]:
        """An L2 table we may modify (OFLAG_COPIED), allocating or copying one (l2_allocate)."""
        mp = self.mapping
        if l1i >= len(mp.l1):
            mp.grow_l1(l1i + 1)
        e1 = mp.l1[l1i]
        old = mp.l2_offset(l1i)
        if old and e1 & OFLAG_COPIED:
            return mp.cache.get(old), old
        self.file.debug_event("l2_alloc")
        new_off = self.refcounts.alloc(1)
        if trace.enabled:
            trace.emit("qcow2.l2_alloc", l1_index=l1i, host_offset=new_off, copy_of=old)
        self.overlap.add(new_off, self.cluster_size, "l2")
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if old:
            self.file.debug_event("l2_alloc_cow_read")
            table = array("Q", mp.cache.get(old))
        else:
            table = array("Q", bytes(self.cluster_size))
        mp.cache.put_new(new_off, table)
        self.file.debug_event("l2_alloc_write")
        mp.cache.flush()
        mp.l1[l1i] = new_off | OFLAG_COPIED
        mp.write_l1_entry(l1i)
        if old:
            # the L1 entry no longer points at the shared table: drop our reference
            self.refcounts.free(old, 1, discard=False)
        return table, new_off

    def _alloc_and_write(self, l1i: int, c0: int, n: int, rs: int, piece: memoryview
                         ) -> tuple[array, int]:
        """Allocate ``n`` clusters for guest clusters c0.., write data with COW, link L2."""
        cb, cs = self.cluster_bits, self.cluster_size
        l2_mask = (1 << self.l2_bits) - 1
        table, l2off = self._l2_for_write(l1i)
        old_entries = [table[(c0 + i) & l2_mask] for i in range(n)]
        self._refuse_far_old(old_entries, c0)
        # with an external data file a guest cluster lives at its own offset, unrefcounted
        host = (c0 << cb) if self.has_data_file else self.refcounts.alloc(n)
        self.file.debug_event("cluster_alloc_space")
        start = c0 << cb
        endg = (c0 + n) << cb
        head_len = rs - start
        tail_len = endg - (rs + len(piece))
        if trace.enabled:
            trace.emit("qcow2.alloc", guest_offset=start, host_offset=host, clusters=n,
                       cow_head=head_len, cow_tail=tail_len)
        bufs: list[Buffer] = []
        if head_len:
            head = bytearray(head_len)
            self._read_cluster_part(start, old_entries[0], memoryview(head))
            bufs.append(head)
        bufs.append(piece)
        if tail_len:
            tail = bytearray(tail_len)
            self._read_cluster_part(rs + len(piece), old_entries[-1], memoryview(tail))
            bufs.append(tail)
        self._write_host(host, start, bufs)
        if head_len or tail_len or self.lazy_refcounts:
            # COW data must be durable before the L2 entry that exposes it.  With
            # lazy refcounts no refcount flush precedes the L2 write-back either,
            # so the new cluster's data (possibly extending the file) must be made
            # durable first, or a crash can leave L2 pointing past the end of file
            # (found by the crash engine's lazy_refcounts sweep).
            self.mapping.cache.depends_on_flush()
        # the table may have been evicted while we read COW data: reinstall it
        mp = self.mapping
        # the dependency first: setting it may write L2 tables out (to break a cycle),
        # which must not carry the new entries yet (QEMU sets it before the update too)
        if not self.lazy_refcounts and not self.unsafe_order:
            mp.cache.set_dependency(self.refcounts.cache)
        if l2off not in mp.cache.tables:
            table = mp.cache.get(l2off)
        for i in range(n):
            table[(c0 + i) & l2_mask] = (host + (i << cb)) | OFLAG_COPIED
        self.file.debug_event("l2_update")
        mp.cache.mark_dirty(l2off)
        self._release_entries(old_entries)
        return table, l2off

    def _release_entries(self, entries: Sequence[int]) -> None:
        """Drop the references old L2 entries held (after the entries were replaced)."""
        freed = False
        data_file_runs: list[list[int]] = []
        for e in entries:
            t = self._ctype(e)
            if t in (ClusterType.NORMAL, ClusterType.ZERO_ALLOC):
                if self.has_data_file:
                    # not refcounted: the data file itself is told (QEMU
                    # qcow2_free_any_cluster), in runs
                    off = e & L2E_OFFSET_MASK
                    if data_file_runs and data_file_runs[-1][1] == off:
                        data_file_runs[-1][1] += self.cluster_size
                    else:
                        data_file_runs.append([off, off + self.cluster_size])
                    continue
                off = e & L2E_OFFSET_MASK
                if not e & OFLAG_COPIED and not self.lazy_refcounts and \
                        self.refcounts.get(off >> self.cluster_bits) == 1:
                    # Without OFLAG_COPIED the cluster is shared (refcount >= 2).  With
                    # refcount 1 the entry points at a cluster someone else owns, or
                    # only lost its flag (a crash while a snapshot was being created):
                    # dropping the refcount would, in the first case, make a live
                    # cluster free for reuse.  QEMU frees it; blockbed leaks it, which
                    # is harmless in both cases (`img check -r leaks` reclaims it).
                    _log().warning("qcow2: cluster %s has refcount 1 but its L2 entry lacks "
                                   "OFLAG_COPIED; leaking it instead of freeing it",
                                   c_hex(off))
                    continue
                if not freed:
                    self.refcounts.cache.set_dependency(self.mapping.cache)
                    freed = True
                self.refcounts.free(off, 1)
            elif t == ClusterType.COMPRESSED:
                self._last_compressed = None
                if not freed:
                    self.refcounts.cache.set_dependency(self.mapping.cache)
                    freed = True
                coff, csize = self.mapping.compressed_range(e)
                first = coff >> self.cluster_bits
                last = (coff + csize - 1) >> self.cluster_bits
                self.refcounts.free(first << self.cluster_bits, last - first + 1)
        for start, stop in data_file_runs:
            self._free_in_data_file(start, stop)

    def _free_in_data_file(self, start: int, stop: int) -> None:
        """Clusters of the data file no entry uses any more: discarded (a hint), or with
        data_file_raw zeroed, since the raw data file must keep reading as the disk."""
        node = self.data_node
        stop = min(stop, self.header.size)
        if node is None or stop <= start:
            return
        if self.data_file_raw:
            node.write_zeroes(start, stop - start, may_unmap=True)
        elif self.pass_discard:
            try:
                node.discard(start, stop - start)
            except BlockError:
                pass                                # a discard is a hint
