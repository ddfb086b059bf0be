"""``vhdx`` format driver, read-only: fixed and dynamic VHDX images.

Layout (Microsoft [MS-VHDX] 1.0; behaviour as QEMU 7.2 block/vhdx.c): the file
identifier (``vhdxfile``) at 0; two headers (``head``, CRC-32C) at 64 KiB and
128 KiB, the valid one with the larger sequence number wins; two region tables
(``regi``, CRC-32C) at 192 and 256 KiB naming the BAT and metadata regions; the
metadata table (``metadata``) with the file parameters (block size, has-parent),
virtual disk size and logical sector size.  The BAT interleaves one sector-bitmap
entry after every ``chunk ratio`` payload entries; a payload entry's low 3 bits
are its state (6 fully present: the data is at the entry's MiB offset; 0, 1, 2, 3
not present / undefined / zero / unmapped: zeros).

Refused: differencing images (has-parent), a header whose log GUID is set (the
log may hold writes to replay; QEMU replays it when it can write — ``qemu-img
check -r all`` does), unknown required regions or metadata items.  QEMU 7.2 has
no block-status for vhdx, so ``qemu-img map`` reports the whole disk as data
without offsets; blockbed reports the same.

Every field is checked in :meth:`VhdxDriver.__init__` and the helpers it calls.
"""

from __future__ import annotations

import struct
import uuid

from .driver import BlockDriver, Extent, check_request
from .foreign import _vhdx as _probe
from .readonlyfmt import (DATA, ZERO, ReadOnlyFormat, Run, check_field, check_range,
                          chunks, merge_runs, open_without_options, read_exact,
                          refuse_create)

FMT = "vhdx"
KiB, MiB = 1 << 10, 1 << 20
HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
REGION_HEADER = struct.Struct("<4sIII")
REGION_ENTRY = struct.Struct("<16sQII")
META_HEADER = struct.Struct("<8sHH20s")
META_ENTRY = struct.Struct("<16sIII4s")


def _guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


BAT_GUID = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
KNOWN_ITEMS = {FILE_PARAMETERS, VIRTUAL_DISK_SIZE, LOGICAL_SECTOR_SIZE,
               _guid("BECA12AB-B2E6-4523-93EF-C309E000C746"),      # virtual disk id
               _guid("CDA348C7-445D-4471-9CC9-E9885251C556"),      # physical sector size
               _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")}      # parent locator
PAYLOAD_FULLY_PRESENT, PAYLOAD_PARTIALLY_PRESENT = 6, 7
MAX_SIZE = 64 << 40                                 # the format's 64 TiB limit


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the VHDX headers and region tables carry it."""
    crc = 0xFFFFFFFF
    t = _CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _checked(raw: bytes, csum_at: int) -> bool:
    stored = struct.unpack_from("<I", raw, csum_at)[0]
    return crc32c(raw[:csum_at] + bytes(4) + raw[csum_at + 4:]) == stored


def probe(header: bytes, filename: str | None = None) -> int:
    return _probe(header, filename)


class VhdxDriver(ReadOnlyFormat):
    driver_name = "vhdx"

    def __init__(self, file: BlockDriver, *, read_only: bool):
        super().__init__(file, read_only)
        self.file_len = flen = file.length()
        check_field(FMT, flen >= 320 * KiB, "file is too small, not a valid image")
        check_field(FMT, read_exact(file, 0, 8) == b"vhdxfile", "invalid file identifier")
        self._header()
        bat, meta = self._regions()
        self._metadata(*meta)
        self._bat(*bat)

    def _header(self) -> None:
        best = None
        for off in (64 * KiB, 128 * KiB):
            raw = read_exact(self.file, off, 4 * KiB)
            if raw[:4] == b"head" and _checked(raw, 4):
                h = HEADER.unpack_from(raw)
                if best is None or h[2] > best[2]:
                    best = h
        check_field(FMT, best is not None, "no valid VHDX header found")
        _sig, _csum, _seq, _fw, _dw, log_guid, _lv, version, _ll, _lo = best
        check_field(FMT, version == 1, f"unsupported VHDX version {version}")
        check_field(FMT, log_guid == bytes(16), "the log may hold writes to replay (log GUID "
                                                "set); replay it first: qemu-img check -r "
                                                "all")

    def _regions(self) -> tuple[tuple[int, int], tuple[int, int]]:
        raw = read_exact(self.file, 192 * KiB, 64 * KiB)
        if not (raw[:4] == b"regi" and _checked(raw, 4)):
            raw = read_exact(self.file, 256 * KiB, 64 * KiB)      # the backup copy
        check_field(FMT, raw[:4] == b"regi" and _checked(raw, 4), "no valid region table")
        count = REGION_HEADER.unpack_from(raw)[2]
        check_field(FMT, count <= 2047, f"region table entry count {count} is too large")
        found: dict[bytes, tuple[int, int]] = {}
        for i in range(count):
            guid, off, length, required = REGION_ENTRY.unpack_from(raw, 16 + 32 * i)
            if guid not in (BAT_GUID, METADATA_GUID):
                check_field(FMT, not required & 1, f"unsupported required region "
                                                   f"{uuid.UUID(bytes_le=guid)}")
                continue
            what = "BAT" if guid == BAT_GUID else "metadata region"
            check_field(FMT, off % MiB == 0 and off >= MiB and length % MiB == 0,
                        f"{what} (offset {off}, {length} bytes) is not MiB-aligned")
            check_range(FMT, what, off, length, self.file_len)
            found[guid] = (off, length)
        check_field(FMT, BAT_GUID in found and METADATA_GUID in found,
                    "the region table has no BAT or no metadata region")
        return found[BAT_GUID], found[METADATA_GUID]

    def _metadata(self, offset: int, length: int) -> None:
        raw = read_exact(self.file, offset, min(length, 64 * KiB))
        sig, _res, count, _ = META_HEADER.unpack_from(raw)
        check_field(FMT, sig == b"metadata", "invalid metadata table signature")
        check_field(FMT, count <= 2047, f"metadata entry count {count} is too large")
        items: dict[bytes, bytes] = {}
        for i in range(count):
            item, off, size, flags, _ = META_ENTRY.unpack_from(raw, 32 + 32 * i)
            if item not in KNOWN_ITEMS:
                check_field(FMT, not flags & 4, f"unsupported required metadata item "
                                                f"{uuid.UUID(bytes_le=item)}")
                continue
            check_field(FMT, off >= 64 * KiB and off + size <= length and size <= 64 * KiB,
                        f"metadata item {uuid.UUID(bytes_le=item)} (offset {off}, {size} "
                        "bytes) is outside the metadata region")
            items[item] = read_exact(self.file, offset + off, size)
        for item, name, n in ((FILE_PARAMETERS, "file parameters", 8),
                              (VIRTUAL_DISK_SIZE, "virtual disk size", 8),
                              (LOGICAL_SECTOR_SIZE, "logical sector size", 4)):
            check_field(FMT, len(items.get(item, b"")) >= n, f"metadata item {name} is "
                                                             "missing")
        block_size, flags = struct.unpack_from("<II", items[FILE_PARAMETERS])
        size = struct.unpack_from("<Q", items[VIRTUAL_DISK_SIZE])[0]
        lss = struct.unpack_from("<I", items[LOGICAL_SECTOR_SIZE])[0]
        check_field(FMT, not flags & 2, "differencing images (has parent) are not supported; "
                                        "convert the chain with qemu-img")
        check_field(FMT, MiB <= block_size <= 256 * MiB and block_size & (block_size - 1) == 0,
                    f"invalid block size {block_size}")
        check_field(FMT, lss in (512, 4096), f"invalid logical sector size {lss}")
        check_field(FMT, 0 < size <= MAX_SIZE and size % lss == 0,
                    f"invalid virtual disk size {size}")
        self.block_size, self.size = block_size, size
        self.chunk_ratio = (1 << 23) * lss // block_size

    def _bat(self, offset: int, length: int) -> None:
        blocks = -(-self.size // self.block_size)
        entries = blocks + (blocks - 1) // self.chunk_ratio
        check_field(FMT, entries * 8 <= length, f"the BAT region ({length} bytes) is too "
                                                f"small for {entries} entries")
        bat = struct.unpack(f"<{entries}Q", read_exact(self.file, offset, entries * 8))
        self.bat = bat
        for b in range(blocks):
            e = bat[b + b // self.chunk_ratio]
            state = e & 7
            check_field(FMT, state in (0, 1, 2, 3, PAYLOAD_FULLY_PRESENT),
                        f"block {b}: invalid BAT entry state {state}")
            if state == PAYLOAD_FULLY_PRESENT:
                check_field(FMT, e >> 20 >= 1, f"block {b}: BAT entry points into the headers")
                check_range(FMT, f"block {b} (BAT entry)", (e >> 20) << 20,
                            min(self.block_size, self.size - b * self.block_size),
                            self.file_len)

    def info_fields(self) -> dict:
        """QEMU's vhdx_get_info: the block size, fixed or dynamic alike (no
        format-specific information in QEMU 7.2)."""
        return {"cluster-size": self.block_size}

    def _runs(self, offset: int, length: int) -> list[Run]:
        out = []
        bs = self.block_size
        for b, pos, n in chunks(offset, length, bs):
            e = self.bat[b + b // self.chunk_ratio]
            if e & 7 == PAYLOAD_FULLY_PRESENT:
                out.append(Run(pos, n, DATA, self.file, ((e >> 20) << 20) + pos % bs))
            else:
                out.append(Run(pos, n, ZERO))
        return merge_runs(out)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """QEMU 7.2's vhdx has no block status: all data, no offsets (qemu-img map)."""
        check_request(self, offset, length)
        return [Extent(offset, length, data=True, zero=False)]


open = open_without_options(FMT, VhdxDriver)
create = refuse_create(FMT)
