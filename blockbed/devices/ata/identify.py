"""IDENTIFY DEVICE data (ATA8-ACS §7.16, table 22; ACS-2 for words 69, 105, 169).

The 256-word block is built from the drive's configuration and its live state
(write cache, transfer mode, multiple count), so it is rebuilt for every
IDENTIFY: a guest that turns the write cache off sees word 85 bit 5 clear.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LBA28_MAX = 0x0FFFFFFF


def ata_string(text: str, nbytes: int) -> bytes:
    """An ATA string field: ASCII, space padded, two characters per word with the
    first character in the high byte (ATA8-ACS §3.2.9)."""
    raw = text.encode("ascii", "replace")[:nbytes].ljust(nbytes, b" ")
    out = bytearray(nbytes)
    out[0::2] = raw[1::2]
    out[1::2] = raw[0::2]
    return bytes(out)


def ata_string_decode(data: bytes) -> str:
    swapped = bytearray(len(data))
    swapped[0::2] = data[1::2]
    swapped[1::2] = data[0::2]
    return swapped.decode("ascii", "replace").rstrip()


@dataclass
class IdentifyState:
    """Everything IDENTIFY reports; the drive fills it in at each IDENTIFY."""

    sectors: int                 # capacity in logical sectors
    model: str
    serial: str
    firmware: str
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    write_cache_enabled: bool = True
    read_look_ahead: bool = True
    ncq_depth: int = 0           # 0: not a SATA/NCQ transport (PIIX IDE)
    trim: bool = True
    dsm_max_blocks: int = 8
    max_multiple: int = 16
    multiple_count: int = 0
    pio_mode: int = 4            # the selected transfer mode (SET FEATURES 03h)
    mwdma_mode: int | None = None
    udma_mode: int | None = 5
    gpl: bool = True             # READ LOG EXT (NCQ error log)
    rotation_rate: int = 1       # word 217: 1 = non-rotating medium


def chs_geometry(sectors: int) -> tuple[int, int, int]:
    """The default translation geometry (cylinders, heads, sectors/track): 16 heads,
    63 sectors, cylinders capped at 16383 (ATA8-ACS annex, the usual BIOS geometry)."""
    heads, spt = 16, 63
    cyls = max(1, min(sectors // (heads * spt), 16383))
    return cyls, heads, spt


def build_identify(st: IdentifyState) -> bytes:
    w = [0] * 256
    cyls, heads, spt = chs_geometry(st.sectors)
    w[0] = 0x0040                       # fixed, non-removable ATA device
    w[1], w[3], w[6] = cyls, heads, spt
    w[47] = 0x8000 | st.max_multiple    # READ/WRITE MULTIPLE: max sectors per DRQ block
    w[49] = (1 << 11) | (1 << 9) | (1 << 8)  # IORDY, LBA, DMA
    w[50] = 0x4000
    w[51] = 0x0200                      # PIO data transfer cycle timing mode (obsolete)
    w[53] = 0x0007                      # words 54-58, 64-70 and 88 are valid
    w[54], w[55], w[56] = cyls, heads, spt
    chs_cap = cyls * heads * spt
    w[57], w[58] = chs_cap & 0xFFFF, chs_cap >> 16
    if st.multiple_count:
        w[59] = 0x0100 | st.multiple_count
    lba28 = min(st.sectors, LBA28_MAX)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    w[63] = 0x0007 | ((1 << (8 + st.mwdma_mode)) if st.mwdma_mode is not None else 0)
    w[64] = 0x0003                      # PIO modes 3 and 4
    w[65] = w[66] = w[67] = w[68] = 120
    if st.trim:
        w[69] = 0                       # no deterministic/zeroing read after TRIM promised
    if st.ncq_depth:
        w[75] = st.ncq_depth - 1        # queue depth - 1
        w[76] = (1 << 8) | (1 << 2) | (1 << 1)  # NCQ; SATA Gen1 and Gen2 signalling
    w[80] = 0x01F0                      # ATA/ATAPI-4 .. ATA8-ACS
    w[81] = 0
    w[82] = (1 << 14) | (1 << 6) | (1 << 5)  # NOP, read look-ahead, volatile write cache
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)  # FLUSH CACHE EXT, FLUSH CACHE, LBA48
    w[84] = (1 << 14) | (1 << 6) | ((1 << 5) if st.gpl else 0)  # WRITE DMA FUA EXT, GPL
    w[85] = (1 << 14) | ((1 << 6) if st.read_look_ahead else 0) | \
        ((1 << 5) if st.write_cache_enabled else 0)
    w[86] = (1 << 13) | (1 << 12) | (1 << 10)
    w[87] = (1 << 14) | (1 << 6) | ((1 << 5) if st.gpl else 0)
    w[88] = 0x003F | ((1 << (8 + st.udma_mode)) if st.udma_mode is not None else 0)
    w[93] = 0x6001 if not st.ncq_depth else 0
    w[100:104] = [(st.sectors >> s) & 0xFFFF for s in (0, 16, 32, 48)]
    if st.trim:
        w[105] = st.dsm_max_blocks
    # Words 106, 117-118: sector sizes (ATA8-ACS §7.16.7.?)
    w106 = 0x4000
    ratio = st.physical_sector_size // st.logical_sector_size
    if ratio > 1:
        w106 |= (1 << 13) | (ratio.bit_length() - 1)
    if st.logical_sector_size != 512:
        w106 |= 1 << 12
        words = st.logical_sector_size // 2
        w[117], w[118] = words & 0xFFFF, words >> 16
    w[106] = w106
    if st.trim:
        w[169] = 0x0001                 # DATA SET MANAGEMENT TRIM supported
    w[217] = st.rotation_rate
    data = bytearray(struct.pack("<256H", *w))
    data[20:40] = ata_string(st.serial, 20)
    data[46:54] = ata_string(st.firmware, 8)
    data[54:94] = ata_string(st.model, 40)
    # Word 255: integrity word, signature A5h and a checksum making the byte sum 0.
    data[510] = 0xA5
    data[511] = (-sum(data[:511])) & 0xFF
    return bytes(data)
