"""IDENTIFY DEVICE data (ATA8-ACS §7.16, table 22; ACS-2 for words 69, 105, 169).

The 256-word block is built from the drive's configuration and its live state
(write cache, transfer mode, multiple count), so it is rebuilt for every
IDENTIFY: a guest that turns the write cache off sees word 85 bit 5 clear.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layout as L
from .layout import field_value as fv

_W = L.IDENTIFY_WORD

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
    """The IDENTIFY DEVICE data for ``st``: every word number and bit position comes from
    the declaration :data:`.layout.Identify` (ATA8-ACS table 22)."""
    w = [0] * (L.IDENTIFY_SIZE // 2)

    def put(name: str, value: int) -> None:
        w[_W[name]] = value

    def put32(name: str, value: int) -> None:       # two words, least significant first
        w[_W[name]], w[_W[name] + 1] = value & 0xFFFF, value >> 16

    cyls, heads, spt = chs_geometry(st.sectors)
    put("general", fv(L.IdGeneral, fixed=1))         # fixed, non-removable ATA device
    put("cylinders", cyls)
    put("heads", heads)
    put("sectors_per_track", spt)
    put("max_multiple", fv(L.IdMaxMultiple, fixed_80h=0x80, max=st.max_multiple))
    put("capabilities", fv(L.IdCapabilities, iordy=1, lba=1, dma=1))
    put("capabilities2", fv(L.IdCapabilities2, valid=1))
    put("pio_timing", fv(L.IdPioTiming, mode=2))      # PIO cycle timing mode 2 (obsolete)
    put("valid", fv(L.IdValid, w88=1, w64_70=1, w54_58=1))
    put("cur_cylinders", cyls)
    put("cur_heads", heads)
    put("cur_sectors_per_track", spt)
    put32("cur_capacity", cyls * heads * spt)
    if st.multiple_count:
        put("multiple", fv(L.IdMultiple, valid=1, count=st.multiple_count))
    put32("lba28_sectors", min(st.sectors, LBA28_MAX))
    put("mwdma", fv(L.IdModes, supported=0x07,
                    selected=(1 << st.mwdma_mode) if st.mwdma_mode is not None else 0))
    put("pio_modes", fv(L.IdPioModes, pio3=1, pio4=1))
    for name in ("mwdma_min_cycle", "mwdma_rec_cycle", "pio_min_cycle", "pio_iordy_cycle"):
        put(name, 120)                                # ns
    # word 69: no deterministic / zeroing read after TRIM promised (0 whether TRIM or not)
    if st.ncq_depth:
        put("queue_depth", st.ncq_depth - 1)
        put("sata_caps", fv(L.IdSataCaps, ncq=1, gen2=1, gen1=1))
    put("major_version", fv(L.IdMajorVersion, ata4=1, ata5=1, ata6=1, ata7=1, ata8_acs=1))
    put("supported1", fv(L.IdCmdSet1, nop=1, look_ahead=1, write_cache=1))
    put("supported2", fv(L.IdCmdSet2, one=1, flush_cache_ext=1, flush_cache=1, lba48=1))
    put("supported3", fv(L.IdCmdSet3, one=1, fua_ext=1, gpl=int(st.gpl)))
    put("enabled1", fv(L.IdCmdSet1, nop=1, look_ahead=int(st.read_look_ahead),
                       write_cache=int(st.write_cache_enabled)))
    put("enabled2", fv(L.IdCmdSet2, flush_cache_ext=1, flush_cache=1, lba48=1))
    put("enabled3", fv(L.IdCmdSet3, one=1, fua_ext=1, gpl=int(st.gpl)))
    put("udma", fv(L.IdModes, supported=0x3F,
                   selected=(1 << st.udma_mode) if st.udma_mode is not None else 0))
    if not st.ncq_depth:
        put("reset_result", fv(L.IdResetResult, one=1, cblid=1, dev0=1))   # PATA, 80-wire cable
    for i, s in enumerate((0, 16, 32, 48)):
        w[_W["lba48_sectors"] + i] = (st.sectors >> s) & 0xFFFF
    if st.trim:
        put("dsm_max_blocks", st.dsm_max_blocks)
    ratio = st.physical_sector_size // st.logical_sector_size
    long_logical = st.logical_sector_size != 512
    put("sector_size", fv(L.IdSectorSize, valid=1, multiple_logical=int(ratio > 1),
                          long_logical=int(long_logical),
                          log2_per_physical=ratio.bit_length() - 1 if ratio > 1 else 0))
    if long_logical:
        put32("logical_sector_words", st.logical_sector_size // 2)
    if st.trim:
        put("dsm", fv(L.IdDsm, trim=1))
    put("rotation_rate", st.rotation_rate)
    data = bytearray(L.IDENTIFY_WORDS.pack(*w))
    for name, text in (("serial_number", st.serial), ("firmware_revision", st.firmware),
                       ("model_number", st.model)):
        off, n = L.IDENTIFY_STRINGS[name]
        data[off:off + n] = ata_string(text, n)
    # Word 255: integrity word, signature A5h and a checksum making the byte sum 0.
    integrity = 2 * _W["integrity"]
    data[integrity:integrity + 2] = fv(L.IdIntegrity, signature=L.INTEGRITY_SIGNATURE).to_bytes(2, "little")
    data[integrity + 1] = (-sum(data[:integrity + 1])) & 0xFF
    return bytes(data)
