"""Disk geometry (CHS) a device reports, guessed as QEMU's hw/block/hd-geometry.c does.

A disk's geometry is the triple a guest sees in virtio-blk's config space (and
in ATA IDENTIFY words 1/3/6 on QEMU).  QEMU derives it from the MBR: if a
partition entry's end CHS names a head count of at most 16, that geometry is
taken as the one the partitioning tool used; otherwise 16 heads and 63 sectors
per track.  The MBR's partition table is declared here, once, with construct
(the "classic" layout: 446 bytes of boot code, four 16-byte entries, the
0x55AA signature)."""

from __future__ import annotations

from construct import Array, Bytes, Const, Int8ul, Int32ul, Struct

from ..block.backend import BlockBackend
from .fastform import fast, offsets

#: One partition table entry (16 bytes).  CHS fields keep their packed form:
#: byte 1 the head, byte 2 the sector in bits 5:0 (cylinder bits 9:8 above it),
#: byte 3 the cylinder's low byte.
MbrPartition = Struct(
    "status" / Int8ul,
    "start_head" / Int8ul, "start_sector_cyl" / Int8ul, "start_cyl" / Int8ul,
    "type" / Int8ul,
    "end_head" / Int8ul, "end_sector_cyl" / Int8ul, "end_cyl" / Int8ul,
    "lba_start" / Int32ul,
    "sectors" / Int32ul,
)
#: The master boot record (one 512-byte sector).
Mbr = Struct(
    "boot_code" / Bytes(446),
    "partitions" / Array(4, MbrPartition),
    "signature" / Const(b"\x55\xaa"),
)

_PART = fast(MbrPartition)
_PART_OFF = offsets(MbrPartition)
_TABLE = offsets(Mbr)["partitions"]
_SIG = offsets(Mbr)["signature"]
_FIELDS = list(_PART_OFF)
_END_HEAD, _END_SEC, _SECTORS = (_FIELDS.index(n) for n in ("end_head", "end_sector_cyl", "sectors"))


def guess_geometry(backend: BlockBackend, sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) for a disk of ``sectors`` 512-byte sectors."""
    buf = bytearray(Mbr.sizeof())
    if sectors >= 1 and backend.readv(0, [memoryview(buf)]) == 0 and buf[_SIG:_SIG + 2] == b"\x55\xaa":
        for i in range(4):
            entry = _PART.unpack_from(buf, _TABLE + i * _PART.size)
            end_head, end_sec = entry[_END_HEAD], entry[_END_SEC] & 63
            if entry[_SECTORS] and end_head and end_sec:
                heads = end_head + 1
                cyl = sectors // (heads * end_sec)
                if 1 <= cyl <= 16383:
                    if heads <= 16:
                        return cyl, heads, end_sec
                    break
    cyl = sectors // (16 * 63)
    return min(max(cyl, 2), 16383), 16, 63
