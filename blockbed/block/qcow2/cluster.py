"""Cluster mapping: L1 table, L2 tables, entry decoding (spec "Cluster mapping").

Guest offset → L1 index (high bits) → L2 table → L2 entry → host cluster.
The L1 table is held in memory whole and written through (each entry change
is written and flushed); L2 tables go through the write-back
:class:`~.cache.MetadataCache`, whose size is the ``l2-cache-size`` option.
"""

from __future__ import annotations

import errno
import struct
from array import array
from enum import IntEnum
from typing import TYPE_CHECKING

from ... import trace
from ..driver import BlockError
from .corrupt import c_hex
from .cache import MetadataCache, dump_be_array, load_be_array
from .header import MAX_L1_BYTES

if TYPE_CHECKING:
    from .driver import Qcow2Driver

L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED = 0x7F000000000001FF
L2E_STD_RESERVED = 0x3F000000000001FE     # bits 1-8 and 56-61 of a standard descriptor
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1


class ClusterType(IntEnum):
    UNALLOCATED = 0
    ZERO_PLAIN = 1
    ZERO_ALLOC = 2
    NORMAL = 3
    COMPRESSED = 4


def cluster_type(entry: int) -> ClusterType:
    if entry & OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    if entry & OFLAG_ZERO:
        return ClusterType.ZERO_ALLOC if entry & L2E_OFFSET_MASK else ClusterType.ZERO_PLAIN
    if entry & L2E_OFFSET_MASK:
        return ClusterType.NORMAL
    return ClusterType.UNALLOCATED


def cluster_type_extl2(entry: int) -> ClusterType:
    """With extended L2 entries bit 0 is reserved (zero status lives in the bitmap), so a
    cluster is only compressed, allocated or not (spec "Extended L2 Entries")."""
    if entry & OFLAG_COMPRESSED:
        return ClusterType.COMPRESSED
    return ClusterType.NORMAL if entry & L2E_OFFSET_MASK else ClusterType.UNALLOCATED


def cluster_type_extl2_data_file(entry: int) -> ClusterType:
    """Extended L2 entries with an external data file (offset 0 + COPIED is allocated)."""
    t = cluster_type_extl2(entry)
    if t == ClusterType.UNALLOCATED and entry & OFLAG_COPIED:
        return ClusterType.NORMAL
    return t


def cluster_type_data_file(entry: int) -> ClusterType:
    """With an external data file, offset 0 is a real cluster: OFLAG_COPIED tells an
    allocated cluster at offset 0 from an unallocated entry (every data-file cluster
    has refcount 1, so COPIED is always set on allocated ones)."""
    if entry & (OFLAG_COMPRESSED | OFLAG_ZERO) or entry & L2E_OFFSET_MASK:
        return cluster_type(entry)
    return ClusterType.NORMAL if entry & OFLAG_COPIED else ClusterType.UNALLOCATED


class Mapping:
    """The active L1 table and the L2 cache of one image."""

    def __init__(self, drv: "Qcow2Driver", l2_cache_entries: int):
        self.drv = drv
        self.file = drv.file
        self.cb = drv.cluster_bits
        self.cs = 1 << self.cb
        # extended L2 entries are 128 bits: the descriptor, then the subcluster bitmap
        self.stride = 2 if drv.header.extended_l2 else 1
        self.l2_bits = self.cb - 3 - (self.stride - 1)
        self.l2_size = 1 << self.l2_bits
        self.l1: array = array("Q")       # native-endian copy of the on-disk table
        self.damage: str | None = None    # why the table cannot be used (load_l1)
        self.cache = MetadataCache(self.file, "l2", self.cs, l2_cache_entries,
                                   lambda b: load_be_array("Q", b), dump_be_array,
                                   "l2_update", "l2_load",
                                   check_write=lambda off, n: drv.overlap.check(off, n, "l2"),
                                   check_load=self._check_l2_table,
                                   describe=self._describe_l2)
        # compressed-cluster geometry (spec "Compressed Clusters Descriptor")
        self.csize_shift = 62 - (self.cb - 8)
        self.csize_mask = (1 << (self.cb - 8)) - 1
        self.coffset_mask = (1 << self.csize_shift) - 1

    def _check_l2_table(self, off: int) -> None:
        """Validate an L2 table offset before the table is read (once per cache miss).

        QEMU checks only the alignment (in :meth:`l2_offset`); blockbed also refuses a
        table that lies past the end of the file (it would read as zeros: all data
        silently gone) or on a cluster that holds other metadata (its "entries" would
        be refcounts or L1 entries, and a write would land on that metadata)."""
        drv = self.drv
        kind = drv.overlap.read_kinds.get(off >> self.cb)
        where = self._l1_index_of(off)
        if kind is not None and kind != "l2":
            drv.signal_corruption(f"L2 table offset {c_hex(off)} overlaps with metadata "
                                  f"({kind.replace('+l2', '')}) (L1 index: {where})")
        if off + self.cs > self.file.length():
            drv.signal_corruption(f"L2 table offset {c_hex(off)} is beyond the end of the "
                                  f"image file (L1 index: {where})")

    def _describe_l2(self, off: int) -> dict:
        """Trace fields of an L2 table: which L1 entry points at it, and so which
        guest range it maps (only computed when tracing is on)."""
        for i, e in enumerate(self.l1):
            if e & L1E_OFFSET_MASK == off:
                span = 1 << (self.cb + self.l2_bits)
                return {"l1_index": i, "guest_start": i * span, "guest_end": (i + 1) * span}
        return {}

    def _l1_index_of(self, off: int) -> str:
        for i, e in enumerate(self.l1):
            if e & L1E_OFFSET_MASK == off:
                return c_hex(i)
        return "?"

    def load_l1(self) -> None:
        """Read the active L1 table (QEMU qcow2_do_open).

        QEMU 7.2 opens an image whose L1 table lies at offset 0 (the header is read
        as L1 entries) or past the end of the file (zeros: the whole disk reads as
        unallocated, silently).  blockbed opens it too, so ``info`` and ``check``
        work, but records the damage in :attr:`damage` and refuses every lookup
        through the table with EIO (and the corrupt bit), never zeros for data."""
        h = self.drv.header
        n = h.l1_size
        self.damage = None
        if not n:
            self.l1 = array("Q")
            return
        off = h.l1_table_offset
        if off == 0:
            self.damage = "Active L1 table offset 0 overlaps with qcow2_header"
        elif off + n * 8 > -(-self.file.length() // self.cs) * self.cs:
            self.damage = f"Active L1 table offset {off:#x} is beyond the end of the image file"
        buf = bytearray(n * 8)
        self.file.read(off, memoryview(buf))     # past the end of the file: zeros
        self.l1 = load_be_array("Q", buf)

    def check_usable(self) -> None:
        """Refuse (EIO, corrupt bit) any use of an L1 table :meth:`load_l1` found damaged:
        every lookup, and operations that take the table whole (snapshots, resize,
        amend)."""
        if self.damage:
            self.drv.signal_corruption(self.damage)

    def l2_offset(self, l1_index: int) -> int:
        """The L2 table offset for an L1 index (0 = none); checks alignment."""
        self.check_usable()
        if l1_index >= len(self.l1):
            return 0
        e = self.l1[l1_index]
        off = e & L1E_OFFSET_MASK
        # QEMU qcow2_get_host_offset/get_cluster_table: the L2 table must be
        # cluster aligned (0x40200 with 64 KiB clusters is refused with EIO).
        if off & (self.cs - 1):
            self.drv.signal_corruption(f"L2 table offset {c_hex(off)} unaligned "
                                       f"(L1 index: {c_hex(l1_index)})")
        return off

    def entry_slots(self, table: array):
        """(slot, descriptor) for every entry of an L2 table; ``slot`` indexes ``table``
        (with extended L2 entries the bitmap is at ``slot + 1``)."""
        if self.stride == 1:
            return enumerate(table)
        return zip(range(0, len(table), 2), table[::2])

    def l2_table(self, off: int) -> array:
        return self.cache.get(off)

    def compressed_range(self, entry: int) -> tuple[int, int]:
        """(host offset, byte length) of a compressed cluster's data."""
        coff = entry & self.coffset_mask
        nsec = ((entry >> self.csize_shift) & self.csize_mask) + 1
        return coff, nsec * 512 - (coff & 511)

    def write_l1_entry(self, index: int) -> None:
        """Write one L1 entry and flush (QEMU qcow2_write_l1_entry uses pwrite_sync)."""
        h = self.drv.header
        off = h.l1_table_offset + index * 8
        self.drv.overlap.check(off, 8, "l1")
        self.file.debug_event("l1_update")
        self.file.write(off, struct.pack(">Q", self.l1[index]))
        self.file.flush()

    def grow_l1(self, min_size: int, exact: bool = False) -> None:
        """Move the L1 table to a bigger one (QEMU qcow2_grow_l1_table).

        The new table is written and flushed before the header points at it;
        the old one is freed afterwards.
        """
        drv = self.drv
        old_size = len(self.l1)
        if min_size <= old_size:
            return
        new_size = min_size
        if not exact:
            new_size = max(old_size, 1)
            while new_size < min_size:
                new_size = (new_size * 3 + 1) // 2
        if new_size * 8 > MAX_L1_BYTES:
            if min_size * 8 > MAX_L1_BYTES:
                raise BlockError(errno.EFBIG, "qcow2: the L1 table would exceed QEMU's "
                                              "limit of 32 MiB")
            new_size = MAX_L1_BYTES // 8
        nbytes = -(-(new_size * 8) // self.cs) * self.cs
        if trace.enabled:
            trace.emit("qcow2.l1_grow", old_size=old_size, new_size=new_size)
        self.file.debug_event("l1_grow_alloc_table")
        new_off = drv.refcounts.alloc(nbytes // self.cs)
        drv.refcounts.cache.flush()
        drv.overlap.add(new_off, nbytes, "l1")
        table = array("Q", self.l1)
        table.extend(array("Q", bytes(8 * (new_size - old_size))))
        raw = dump_be_array(table) + bytes(nbytes - new_size * 8)
        self.file.debug_event("l1_grow_write_table")
        drv.overlap.check(new_off, nbytes, "l1")
        self.file.write(new_off, raw)
        self.file.flush()
        self.file.debug_event("l1_grow_activate_table")
        old_off = drv.header.l1_table_offset
        self.file.write(36, struct.pack(">IQ", new_size, new_off))
        self.file.flush()
        drv.header.l1_size = new_size
        drv.header.l1_table_offset = new_off
        self.l1 = table
        if old_size:
            old_bytes = -(-(old_size * 8) // self.cs) * self.cs
            drv.overlap.remove(old_off, old_bytes)
            drv.refcounts.free(old_off, old_bytes // self.cs)
