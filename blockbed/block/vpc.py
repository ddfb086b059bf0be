"""``vpc`` format driver (Virtual PC / VHD), read-only: fixed and dynamic disks.

Layout (Microsoft "Virtual Hard Disk Image Format Specification" 1.0; behaviour
as QEMU 7.2 block/vpc.c):

* the big-endian 512-byte **footer** (cookie ``conectix``) is the last sector
  of every VHD; dynamic disks also copy it to offset 0.  A *fixed* disk is
  the raw data followed by the footer; QEMU probes it as raw (only ``-f vpc``
  reads it as VHD), and so does blockbed.
* a **dynamic** disk's footer points (data_offset) to the dynamic disk header
  (cookie ``cxsparse``) which points to the BAT: ``max_table_entries``
  32-bit sector numbers, ``0xFFFFFFFF`` for an unallocated block.  An
  allocated block is a sector bitmap (``block_size / 4096`` bytes rounded up
  to a sector) followed by ``block_size`` bytes of data.  Like QEMU, reads do
  not consult the bitmap (every sector of an allocated block is read from
  the block); unallocated blocks read as zeros.
* **differencing** disks (type 4) need their parent: refused.

Virtual size (QEMU's rule): Virtual PC sizes a disk by its CHS geometry,
Hyper-V and others by ``current_size``.  The size is cyls*heads*secs sectors
unless the creator application is one that uses ``current_size`` ("win ",
"qem2", "d2v ", "CTXS", "tap\\0") or the geometry is the maximum
(65535/16/255); ``force_size_calc=chs|current_size`` overrides the table.
qemu-img writes creator "qemu" with a geometry that covers the size (rounding
the size up) or, with ``force_size=on``, "qem2" and the exact size.

Every field is validated in :meth:`VpcDriver._open_dynamic` / ``_size``.
"""

from __future__ import annotations

import builtins
import errno
import os
import struct

from .driver import BlockDriver, BlockError
from .foreign import _vpc as _probe
from .readonlyfmt import (DATA, RECURSE, ZERO, ReadOnlyFormat, Run, block_map_runs,
                          check_field, check_range, read_exact,
                          refuse_create)

FMT = "vpc"
SECTOR = 512
FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
DYN_HEADER = struct.Struct(">8sQQIIII")
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
MAX_GEOMETRY = 65535 * 16 * 255
MAX_SECTORS = 0xFF000000                    # 2040 GiB, QEMU's VHD_MAX_SECTORS
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\0")
UNALLOCATED_BLOCK = 0xFFFFFFFF


def probe(header: bytes, filename: str | None = None) -> int:
    """QEMU's vpc_probe: ``conectix`` at offset 0 scores 100.

    A fixed disk (the footer only in the last sector) scores 1, raw's score:
    probing still picks raw, as QEMU does, but an explicit ``format=vpc``
    passes the registry's "is it really a vpc image" check.
    """
    score = _probe(header, filename)
    if score or not filename:
        return score
    try:
        with builtins.open(filename, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < SECTOR:
                return 0
            f.seek(-SECTOR, os.SEEK_END)
            return 1 if f.read(8) == b"conectix" else 0
    except OSError:
        return 0


def checksum(raw: bytes, skip: slice) -> int:
    """One's complement of the byte sum, the checksum field (``skip``) counted as zero."""
    total = sum(raw) - sum(raw[skip])
    return ~total & 0xFFFFFFFF


class VpcDriver(ReadOnlyFormat):
    driver_name = "vpc"

    def __init__(self, file: BlockDriver, *, read_only: bool, size_calc: str | None = None):
        super().__init__(file, read_only)
        flen = file.length()
        self.file_len = flen
        check_field(FMT, flen >= SECTOR, "file is too small, not a valid image")
        raw = read_exact(file, 0, SECTOR)
        if raw[:8] != b"conectix":
            raw = read_exact(file, flen - SECTOR, SECTOR)
            check_field(FMT, raw[:8] == b"conectix", "invalid VPC image")
            self.disk_type = FIXED
        else:
            self.disk_type = DYNAMIC
        (_cookie, _features, _version, data_offset, _ts, creator, _cv, _os, _orig, current,
         cyls, heads, secs, dtype, csum, _uuid, _saved) = FOOTER.unpack_from(raw)
        check_field(FMT, checksum(raw, slice(64, 68)) == csum, "incorrect header checksum")
        check_field(FMT, dtype != DIFFERENCING, "differencing (child) VHD images are not "
                                                "supported: they need their parent; convert "
                                                "the chain with qemu-img")
        check_field(FMT, dtype in (FIXED, DYNAMIC), f"unknown disk type {dtype}")
        check_field(FMT, not (self.disk_type == DYNAMIC and dtype == FIXED),
                    "a fixed disk with its footer at offset 0 (its data would start with "
                    "the footer); QEMU reads the footer at 0 as a dynamic disk's")
        self.creator = creator
        self.size = self._size(cyls, heads, secs, current, creator, size_calc)
        if self.disk_type == FIXED:
            check_field(FMT, self.size <= flen - SECTOR,
                        f"virtual size {self.size} is larger than the data area of the fixed "
                        f"image ({flen - SECTOR} bytes)")
            self.block_size = 0
        else:
            self._open_dynamic(data_offset)

    @staticmethod
    def _size(cyls: int, heads: int, secs: int, current: int, creator: bytes,
              size_calc: str | None) -> int:
        check_field(FMT, size_calc in (None, "chs", "current_size"),
                    f"force_size_calc={size_calc}: expected chs or current_size")
        sectors = cyls * heads * secs
        use_chs = creator not in CURRENT_SIZE_CREATORS or size_calc == "chs"
        if not use_chs or sectors == MAX_GEOMETRY or size_calc == "current_size":
            sectors = current // SECTOR
        check_field(FMT, sectors <= MAX_SECTORS, f"image size {sectors * SECTOR} is too big "
                                                 "(at most 2040 GiB)")
        return sectors * SECTOR

    def _open_dynamic(self, data_offset: int) -> None:
        """Dynamic disk header and BAT, every field checked (QEMU's messages)."""
        check_range(FMT, "dynamic disk header (data_offset)", data_offset, 1024, self.file_len)
        raw = read_exact(self.file, data_offset, DYN_HEADER.size)
        magic, _next, table_offset, _ver, entries, block_size, _csum = DYN_HEADER.unpack(raw)
        check_field(FMT, magic == b"cxsparse", "invalid header magic")
        check_field(FMT, block_size >= SECTOR and block_size & (block_size - 1) == 0,
                    f"invalid block size {block_size}")
        check_field(FMT, self.size // block_size <= 0xFFFFFFFF, "too many blocks")
        check_field(FMT, entries * block_size >= self.size, "page table too small")
        check_range(FMT, f"BAT (table_offset, max_table_entries={entries})", table_offset,
                    entries * 4, self.file_len)
        self.block_size = block_size
        self.bitmap_size = -(-(block_size // (8 * SECTOR)) // SECTOR) * SECTOR
        bat = struct.unpack(f">{entries}I", read_exact(self.file, table_offset, entries * 4))
        self.bat = bat
        self.allocated = [i for i, sector in enumerate(bat) if sector != UNALLOCATED_BLOCK]
        for i, sector in enumerate(bat):
            if sector != UNALLOCATED_BLOCK and i * block_size < self.size:
                check_range(FMT, f"block {i} (BAT entry {sector})", sector * SECTOR,
                            self.bitmap_size + min(block_size, self.size - i * block_size),
                            self.file_len)

    def info_fields(self) -> dict:
        """QEMU's vpc_get_info: a dynamic disk's block size as its cluster size (a fixed
        disk has none); vpc has no format-specific information in QEMU 7.2."""
        return {"cluster-size": self.block_size} if self.block_size else {}

    def _runs(self, offset: int, length: int) -> list[Run]:
        if self.disk_type == FIXED:
            return [Run(offset, length, RECURSE, self.file, offset)]
        # QEMU: an unallocated block is BDRV_BLOCK_ZERO (vpc has no backing file)
        return block_map_runs(offset, length, self.block_size, self.allocated, self._host,
                              self.file, DATA, ZERO)

    def _host(self, index: int, offset: int) -> int:
        return self.bat[index] * SECTOR + self.bitmap_size + offset % self.block_size


def open(file_node: BlockDriver, *, read_only: bool, options: dict, opener=None) -> BlockDriver:
    opts = dict(options)
    size_calc = opts.pop("force_size_calc", None)
    if opts:
        raise BlockError(errno.EINVAL, f"vpc: unknown option '{next(iter(opts))}'; allowed: "
                                       "force_size_calc")
    return VpcDriver(file_node, read_only=read_only, size_calc=size_calc)


create = refuse_create(FMT)
