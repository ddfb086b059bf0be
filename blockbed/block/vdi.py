"""``vdi`` format driver (VirtualBox), read-only: dynamic and static images.

Layout (VirtualBox VDI header 1.1, as QEMU 7.2 block/vdi.c reads it): a
64-byte text, the little-endian signature ``0xBEDA107F`` at 64, version 1.1,
then offsets of the block map and of the data, the geometry, the disk size,
the block size (1 MiB: the only one QEMU accepts), and the block count.  The
block map has one 32-bit entry per block: the block's index in the data area,
``0xFFFFFFFF`` (never written) or ``0xFFFFFFFE`` (discarded); both of the
latter read as zeros.

Refused as QEMU refuses them: other versions, unaligned offsets, sector size
other than 512, block size other than 1 MiB, a disk larger than its block
map, link or parent UUIDs (differencing images), and ``block_extra`` (QEMU
never supported it).  Every field is checked in :meth:`VdiDriver.__init__`.
"""

from __future__ import annotations

import array
import struct
import sys

from .driver import BlockDriver
from .foreign import _vdi as _probe
from .readonlyfmt import (DATA, RECURSE, ZERO, ReadOnlyFormat, Run, block_map_runs,
                          check_field, check_range, open_without_options, read_exact,
                          refuse_create)

FMT = "vdi"
SECTOR = 512
SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
HEADER = struct.Struct("<64sIIIII256sIIIIIIIQIIII16s16s16s16s")   # 456 bytes
TYPE_DYNAMIC, TYPE_STATIC = 1, 2
BLOCK_SIZE = 1 << 20
BLOCKS_MAX = 0x3FFFFFFF
UNALLOCATED, DISCARDED = 0xFFFFFFFF, 0xFFFFFFFE


def probe(header: bytes, filename: str | None = None) -> int:
    return _probe(header, filename)


class VdiDriver(ReadOnlyFormat):
    driver_name = "vdi"

    def __init__(self, file: BlockDriver, *, read_only: bool):
        super().__init__(file, read_only)
        flen = file.length()
        check_field(FMT, flen >= HEADER.size, "file is too small, not a valid image")
        (_text, sig, version, _hsize, itype, _flags, _desc, off_bmap, off_data, _cyl, _heads,
         _secs, sector_size, _unused, disk_size, block_size, block_extra, blocks, _alloc,
         _uuid, _snap, link, parent) = HEADER.unpack(read_exact(file, 0, HEADER.size))
        check_field(FMT, sig == SIGNATURE, f"image not in VDI format (bad signature {sig:08x})")
        check_field(FMT, version == VERSION_1_1, f"unsupported VDI image (version "
                                                 f"{version >> 16}.{version & 0xFFFF})")
        check_field(FMT, itype in (TYPE_DYNAMIC, TYPE_STATIC),
                    f"unsupported VDI image (image type {itype})")
        check_field(FMT, off_bmap % SECTOR == 0, f"unsupported VDI image (unaligned block "
                                                 f"map offset {off_bmap:#x})")
        check_field(FMT, off_data % SECTOR == 0, f"unsupported VDI image (unaligned data "
                                                 f"offset {off_data:#x})")
        check_field(FMT, sector_size == SECTOR, f"unsupported VDI image (sector size "
                                                f"{sector_size} is not {SECTOR})")
        check_field(FMT, block_size == BLOCK_SIZE, f"unsupported VDI image (block size "
                                                   f"{block_size} is not {BLOCK_SIZE})")
        check_field(FMT, block_extra == 0, f"unsupported VDI image (block_extra "
                                           f"{block_extra})")
        check_field(FMT, blocks <= BLOCKS_MAX, f"unsupported VDI image (too many blocks "
                                               f"{blocks}, max is {BLOCKS_MAX})")
        disk_size = -(-disk_size // SECTOR) * SECTOR     # QEMU rounds an odd size up
        check_field(FMT, disk_size <= blocks * block_size,
                    f"unsupported VDI image (disk size {disk_size}, image bitmap has room "
                    f"for {blocks * block_size})")
        check_field(FMT, link == bytes(16), "unsupported VDI image (non-NULL link UUID)")
        check_field(FMT, parent == bytes(16), "unsupported VDI image (non-NULL parent UUID)")
        check_range(FMT, f"block map (offset_bmap, {blocks} blocks)", off_bmap, blocks * 4,
                    flen)
        bmap = array.array("I", read_exact(file, off_bmap, blocks * 4))
        if sys.byteorder == "big":
            bmap.byteswap()
        for i, entry in enumerate(bmap):
            if entry < DISCARDED and i * block_size < disk_size:
                check_range(FMT, f"block {i} (block map entry {entry})",
                            off_data + entry * block_size,
                            min(block_size, disk_size - i * block_size), flen)
        self.bmap = bmap
        self.allocated = [i for i, entry in enumerate(bmap) if entry < DISCARDED]
        self.data_offset = off_data
        self.static = itype == TYPE_STATIC
        self.size = disk_size

    def info_fields(self) -> dict:
        """QEMU's vdi_get_info: the block size (no format-specific information)."""
        return {"cluster-size": BLOCK_SIZE}

    def _runs(self, offset: int, length: int) -> list[Run]:
        # QEMU: DATA | OFFSET_VALID (and RECURSE for static images); holes BDRV_BLOCK_ZERO
        return block_map_runs(offset, length, BLOCK_SIZE, self.allocated, self._host,
                              self.file, RECURSE if self.static else DATA, ZERO)

    def _host(self, index: int, offset: int) -> int:
        return self.data_offset + self.bmap[index] * BLOCK_SIZE + offset % BLOCK_SIZE


open = open_without_options(FMT, VdiDriver)
create = refuse_create(FMT)
