"""Self-describing sectors: the layout flushtest (guests/programs/flushtest.c) writes.

Every 512-byte sector a workload writes says who wrote it, so a crash
state can be read back and explained ("sector 812 holds write 17 of epoch 3,
expected write 22") and the guest's record of promises can be tied to the
backend's requests without trusting the device::

    0   magic     u32  0x31535446 ("FTS1")
    4   write_id  u32  the guest's write id (1, 2, …)
    8   lba       u64  the sector's own LBA
    16  epoch     u32  guest flushes completed when the write was submitted
    20  index     u32  sector index within the write
    24  flags     u32  bit 0 FUA requested, bit 1 write cache was off
    28  crc32     u32  zlib CRC-32 of the sector with this field zero
    32  fill      480 bytes, byte k = (write_id * 131 + lba * 7 + k) & 0xff

All fields little-endian.  The fill makes every sector of every write
distinct, so a sector that landed at the wrong LBA or from the wrong write
is never mistaken for the right one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SECTOR = 512
MAGIC = 0x31535446
HEADER = struct.Struct("<IIQIIII")
FLAG_FUA = 1
FLAG_WT = 2
_CYCLE = bytes(range(256)) * 3


@dataclass(frozen=True, slots=True)
class SectorHeader:
    write_id: int
    lba: int
    epoch: int
    index: int
    flags: int
    crc_ok: bool


def make_sector(write_id: int, lba: int, epoch: int, index: int, flags: int = 0) -> bytes:
    start = (write_id * 131 + lba * 7 + 32) & 0xFF
    fill = _CYCLE[start:start + SECTOR - 32]
    body = bytearray(HEADER.pack(MAGIC, write_id, lba, epoch, index, flags, 0) + fill)
    struct.pack_into("<I", body, 28, zlib.crc32(body))
    return bytes(body)


def make_write(write_id: int, lba: int, count: int, epoch: int, flags: int = 0) -> bytes:
    return b"".join(make_sector(write_id, lba + i, epoch, i, flags) for i in range(count))


def parse_sector(data: bytes | memoryview) -> SectorHeader | None:
    """The header of a self-describing sector, or None if it is not one."""
    if len(data) < SECTOR:
        return None
    magic, wid, lba, epoch, index, flags, crc = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        return None
    body = bytearray(data[:SECTOR])
    body[28:32] = b"\0\0\0\0"
    return SectorHeader(wid, lba, epoch, index, flags, zlib.crc32(body) == crc)
