"""The ATA layouts, declared once with ``construct``: the task-file registers and
the IDENTIFY DEVICE data.

- Status, Error, Device and Device Control registers (ATA8-ACS §6.1, §6.2;
  bit names as in ATA/ATAPI-7 for the bits ATA8-ACS made obsolete);
- the command-block registers in the order a Register Host-to-Device FIS
  carries them (SATA 3.x §10.5.5, FIS bytes 2-15), and the output registers in
  the order the Register Device-to-Host and PIO Setup FISes carry them
  (§10.5.6, §10.5.11, bytes 2-13).  The AHCI FIS declarations
  (:mod:`..ahci_layout`) are built from these;
- the 256-word IDENTIFY DEVICE data (ATA8-ACS §7.16.7, table 22; ACS-2 for
  words 69, 105 and 169), every word the drive fills named at its word number,
  with its bit fields where the drive sets bits.

:mod:`.regs` and :mod:`.identify` use the fast forms derived here
(:mod:`..fastform`); nothing else writes a bit position or a word number.
"""

from __future__ import annotations

from construct import (Array, BitsInteger, Bytes, Enum, Flag, Int8ul, Int16ul, Int32ul, Int64ul, Padding,
                       Struct)

from ..fastform import bits, fast, le_bits, mask, offsets

# --- task-file registers (ATA8-ACS §6) ---------------------------------------------------------
#: Status (ATA8-ACS §6, normal and error outputs; ATA/ATAPI-7 names): BSY, DRDY, DF device fault, DSC (seek
#: complete, obsolete but still reported), DRQ, CORR and IDX (obsolete), ERR
Status = le_bits("bsy" / Flag, "drdy" / Flag, "df" / Flag, "dsc" / Flag, "drq" / Flag,
                 "corr" / Flag, "idx" / Flag, "err" / Flag)
#: Error (ATA8-ACS §6.1): ICRC, UNC uncorrectable, MC, IDNF ID not found, MCR, ABRT
#: aborted, NM, AMNF (bit 0 is also the "diagnostic passed" code 01h)
Error = le_bits("icrc" / Flag, "unc" / Flag, "mc" / Flag, "idnf" / Flag, "mcr" / Flag,
                "abrt" / Flag, "nm" / Flag, "amnf" / Flag)
#: Device: bit 7 is FUA for READ/WRITE FPDMA QUEUED (SATA 3.x §13.6.4.1, §13.6.5.1),
#: LBA addressing, DEV drive select (IDE), bits 3:0 LBA 27:24 or the CHS head
Device = le_bits("fua" / Flag, "lba" / Flag, "obs5" / Flag, "dev" / Flag, "head" / BitsInteger(4))
#: Device Control (ATA8-APT, the Device Control register): HOB high-order byte, SRST software reset, nIEN
DeviceControl = le_bits("hob" / Flag, Padding(4), "srst" / Flag, "nien" / Flag, Padding(1))

#: Count of READ/WRITE FPDMA QUEUED (SATA 3.x §13.6.4.1, §13.6.5.1): PRIO, the NCQ tag in
#: bits 7:3 (Features holds the sector count)
NcqCount = le_bits("prio" / BitsInteger(2), Padding(6), "tag" / BitsInteger(5), Padding(3))

#: Count of SET FEATURES 03h, set transfer mode (ATA8-ACS §7.48, table "Transfer/mode
#: values"): the transfer type (00001b PIO flow control, 00100b multiword DMA, 01000b
#: Ultra DMA; 00000b PIO default) and the mode number
XferType = Enum(BitsInteger(5), PIO_DEFAULT=0x00, PIO=0x01, MWDMA=0x04, UDMA=0x08)
XferMode = le_bits("kind" / XferType, "mode" / BitsInteger(3))

#: The command-block registers as a Register H2D FIS carries them (SATA 3.x §10.5.5,
#: bytes 2-15): the LBA low/mid/high bytes are LBA 7:0, 15:8, 23:16; their "exp"
#: bytes LBA 31:24, 39:32, 47:40; the exp bytes of Features and Count are bits 15:8
CommandBlock = Struct(
    "command" / Int8ul, "features" / Int8ul,
    "lba_low" / Int8ul, "lba_mid" / Int8ul, "lba_high" / Int8ul, "device" / Device,
    "lba_low_exp" / Int8ul, "lba_mid_exp" / Int8ul, "lba_high_exp" / Int8ul,
    "features_exp" / Int8ul,
    "count" / Int8ul, "count_exp" / Int8ul, "icc" / Int8ul, "control" / DeviceControl,
)
#: The output registers as a Register D2H or PIO Setup FIS carries them (SATA 3.x
#: §10.5.6, §10.5.11, bytes 2-13; byte 11 is reserved)
OutputBlock = Struct(
    "status" / Status, "error" / Error,
    "lba_low" / Int8ul, "lba_mid" / Int8ul, "lba_high" / Int8ul, "device" / Device,
    "lba_low_exp" / Int8ul, "lba_mid_exp" / Int8ul, "lba_high_exp" / Int8ul, Padding(1),
    "count" / Int8ul, "count_exp" / Int8ul,
)

# --- DATA SET MANAGEMENT and the NCQ Command Error log ------------------------------------------
#: A DATA SET MANAGEMENT LBA range entry (ACS-2 §7.5.3.2): range length in sectors
#: (bits 63:48, 0 = unused entry) and the starting LBA (bits 47:0); 64 to a 512-byte block
DsmRange = le_bits("length" / BitsInteger(16), "lba" / BitsInteger(48))
#: The NCQ Command Error log, page 10h (SATA 3.x §13.7.4): NQ (the error was not for
#: a queued command), UNL, the tag; the failed command's outputs in the order of a D2H
#: FIS; the vendor bytes; a checksum making the byte sum 0
NcqErrorLog = Struct(
    "tag" / le_bits("nq" / Flag, "unl" / Flag, Padding(1), "tag" / BitsInteger(5)),
    Padding(1),
    "regs" / OutputBlock,
    Padding(242),
    Padding(255),                # vendor specific, 256-510
    "checksum" / Int8ul,
)

# --- IDENTIFY DEVICE data (ATA8-ACS §7.16.7, table 22) ----------------------------------------
#: Word 0: general configuration (bit 15 = 0: ATA device; bit 6 "fixed" is obsolete)
IdGeneral = le_bits("atapi" / Flag, Padding(8), "fixed" / Flag, Padding(6))
#: Word 47: 80h in bits 15:8, bits 7:0 the READ/WRITE MULTIPLE maximum per DRQ block
IdMaxMultiple = le_bits("fixed_80h" / BitsInteger(8), "max" / BitsInteger(8))
#: Word 49: capabilities: IORDY supported, LBA supported, DMA supported
IdCapabilities = le_bits(Padding(4), "iordy" / Flag, "iordy_disable" / Flag, "lba" / Flag,
                         "dma" / Flag, Padding(8))
#: Word 50: capabilities (bits 15:14 = 01b: the word is valid)
IdCapabilities2 = le_bits("valid" / BitsInteger(2), Padding(13), "standby_min" / Flag)
#: Word 51 (obsolete): the PIO data transfer cycle timing mode, bits 15:8
IdPioTiming = le_bits("mode" / BitsInteger(8), Padding(8))
#: Word 53: which of words 54-58, 64-70 and 88 are valid
IdValid = le_bits(Padding(13), "w88" / Flag, "w64_70" / Flag, "w54_58" / Flag)
#: Word 59: the multiple count is valid (bit 8) and its value
IdMultiple = le_bits(Padding(7), "valid" / Flag, "count" / BitsInteger(8))
#: Words 63 and 88: transfer modes selected (bits 15:8) and supported (bits 7:0)
IdModes = le_bits("selected" / BitsInteger(8), "supported" / BitsInteger(8))
#: Word 64: advanced PIO modes supported (PIO 3 and 4)
IdPioModes = le_bits(Padding(14), "pio4" / Flag, "pio3" / Flag)
#: Word 76: Serial ATA capabilities: NCQ, SATA Gen2 and Gen1 signalling speeds
IdSataCaps = le_bits(Padding(7), "ncq" / Flag, Padding(5), "gen2" / Flag, "gen1" / Flag,
                     Padding(1))
#: Word 80: major version (bit 4 ATA/ATAPI-4 ... bit 8 ATA8-ACS, bit 9 ACS-2)
IdMajorVersion = le_bits(Padding(6), "acs2" / Flag, "ata8_acs" / Flag, "ata7" / Flag, "ata6" / Flag,
                         "ata5" / Flag, "ata4" / Flag, Padding(4))
#: Words 82 and 85: command sets supported / enabled (bit 14 NOP, 6 read look-ahead,
#: 5 volatile write cache)
IdCmdSet1 = le_bits(Padding(1), "nop" / Flag, Padding(7), "look_ahead" / Flag,
                    "write_cache" / Flag, Padding(5))
#: Words 83 and 86: bit 14 (word 83: always 1), FLUSH CACHE EXT, FLUSH CACHE, 48-bit
IdCmdSet2 = le_bits(Padding(1), "one" / Flag, "flush_cache_ext" / Flag, "flush_cache" / Flag,
                    Padding(1), "lba48" / Flag, Padding(10))
#: Words 84 and 87: bit 14 always 1, WRITE DMA FUA EXT, general purpose logging
IdCmdSet3 = le_bits(Padding(1), "one" / Flag, Padding(7), "fua_ext" / Flag, "gpl" / Flag,
                    Padding(5))
#: Word 93: hardware reset result (PATA only): bit 14 set, CBLID- above VIH (an 80-conductor
#: cable), device 1 and device 0 results (bit 0: this word is for device 0)
IdResetResult = le_bits(Padding(1), "one" / Flag, "cblid" / Flag, "dev1" / BitsInteger(5),
                        "dev0" / BitsInteger(8))
#: Word 106: physical / logical sector size (bits 15:14 = 01b valid, several logical
#: sectors per physical one, logical sector longer than 256 words, log2 of the ratio)
IdSectorSize = le_bits("valid" / BitsInteger(2), "multiple_logical" / Flag,
                       "long_logical" / Flag, Padding(8), "log2_per_physical" / BitsInteger(4))
#: Word 169 (ACS-2): DATA SET MANAGEMENT TRIM supported
IdDsm = le_bits(Padding(15), "trim" / Flag)
#: Word 255: integrity word: checksum (bits 15:8, the byte sum is 0) and signature A5h
IdIntegrity = le_bits("checksum" / BitsInteger(8), "signature" / BitsInteger(8))

#: The IDENTIFY DEVICE data, 256 words; the comments are the word numbers
Identify = Struct(
    "general" / IdGeneral,                      # 0
    "cylinders" / Int16ul,                      # 1 (obsolete: default CHS)
    "specific_config" / Int16ul,                # 2
    "heads" / Int16ul,                          # 3 (obsolete)
    "retired4" / Bytes(4),                      # 4-5
    "sectors_per_track" / Int16ul,              # 6 (obsolete)
    "reserved7" / Bytes(6),                     # 7-9
    "serial_number" / Bytes(20),                # 10-19 (ATA string)
    "retired20" / Bytes(6),                     # 20-22
    "firmware_revision" / Bytes(8),             # 23-26
    "model_number" / Bytes(40),                 # 27-46
    "max_multiple" / IdMaxMultiple,             # 47
    "trusted_computing" / Int16ul,              # 48
    "capabilities" / IdCapabilities,            # 49
    "capabilities2" / IdCapabilities2,          # 50
    "pio_timing" / IdPioTiming,                 # 51 (obsolete)
    "obsolete52" / Int16ul,                     # 52
    "valid" / IdValid,                          # 53
    "cur_cylinders" / Int16ul,                  # 54 (obsolete: current CHS)
    "cur_heads" / Int16ul,                      # 55
    "cur_sectors_per_track" / Int16ul,          # 56
    "cur_capacity" / Int32ul,                   # 57-58
    "multiple" / IdMultiple,                    # 59
    "lba28_sectors" / Int32ul,                  # 60-61
    "obsolete62" / Int16ul,                     # 62
    "mwdma" / IdModes,                          # 63
    "pio_modes" / IdPioModes,                   # 64
    "mwdma_min_cycle" / Int16ul,                # 65
    "mwdma_rec_cycle" / Int16ul,                # 66
    "pio_min_cycle" / Int16ul,                  # 67
    "pio_iordy_cycle" / Int16ul,                # 68
    "additional" / Int16ul,                     # 69 (ACS-2: deterministic read after TRIM ...)
    "reserved70" / Bytes(10),                   # 70-74
    "queue_depth" / Int16ul,                    # 75 (depth - 1)
    "sata_caps" / IdSataCaps,                   # 76
    "sata_caps2" / Int16ul,                     # 77
    "sata_features" / Int16ul,                  # 78
    "sata_enabled" / Int16ul,                   # 79
    "major_version" / IdMajorVersion,           # 80
    "minor_version" / Int16ul,                  # 81
    "supported1" / IdCmdSet1,                   # 82
    "supported2" / IdCmdSet2,                   # 83
    "supported3" / IdCmdSet3,                   # 84
    "enabled1" / IdCmdSet1,                     # 85
    "enabled2" / IdCmdSet2,                     # 86
    "enabled3" / IdCmdSet3,                     # 87
    "udma" / IdModes,                           # 88
    "reserved89" / Bytes(8),                    # 89-92
    "reset_result" / IdResetResult,             # 93
    "reserved94" / Bytes(12),                   # 94-99
    "lba48_sectors" / Int64ul,                  # 100-103
    "streaming" / Int16ul,                      # 104
    "dsm_max_blocks" / Int16ul,                 # 105 (ACS-2)
    "sector_size" / IdSectorSize,               # 106
    "reserved107" / Bytes(20),                  # 107-116
    "logical_sector_words" / Int32ul,           # 117-118
    "reserved119" / Bytes(100),                 # 119-168
    "dsm" / IdDsm,                              # 169 (ACS-2)
    "reserved170" / Bytes(94),                  # 170-216
    "rotation_rate" / Int16ul,                  # 217 (1: non-rotating medium)
    "reserved218" / Bytes(74),                  # 218-254
    "integrity" / IdIntegrity,                  # 255
)

# --- fast forms, derived once ----------------------------------------------------------------
COMMAND_BLOCK = fast(CommandBlock)
DSM_RANGE = fast(DsmRange)
DSM_LBA, DSM_LENGTH_SHIFT = mask(DsmRange, "lba"), bits(DsmRange)["length"][0]
NCQ_ERROR_LOG = fast(NcqErrorLog)
XFER_KIND_SHIFT, XFER_MODE = bits(XferMode)["kind"][0], mask(XferMode, "mode")
#: transfer type name -> code (the drive's SET FEATURES 03h dispatch)
XferKind = dict(XferType.encmapping)
NCQ_LOG_TAG = mask(NcqErrorLog.subcons[0].subcon, "tag")
OUTPUT_BLOCK = fast(OutputBlock)
IDENTIFY_SIZE = Identify.sizeof()
#: IDENTIFY as 256 little-endian words (how the builder writes it)
IDENTIFY_WORDS = fast(Array(IDENTIFY_SIZE // Int16ul.sizeof(), Int16ul))
#: word number of every IDENTIFY field
IDENTIFY_WORD = {name: off // Int16ul.sizeof() for name, off in offsets(Identify).items()}
_IDENTIFY_FIELDS = {sc.name: sc for sc in Identify.subcons}
#: byte offset and length of the ATA string fields
IDENTIFY_STRINGS = {n: (offsets(Identify)[n], _IDENTIFY_FIELDS[n].sizeof())
                    for n in ("serial_number", "firmware_revision", "model_number")}
INTEGRITY_SIGNATURE = 0xA5                 # ATA8-ACS table 22: word 255 bits 7:0
INTEGRITY_CHECKSUM_SHIFT = bits(IdIntegrity)["checksum"][0]


def field_value(con, **fields: int) -> int:
    """The value of bit-field register ``con`` with the named fields set and the
    others zero, every position from the declaration (a width overflow is an error)."""
    pos = bits(con)
    out = 0
    for name, v in fields.items():
        shift, width = pos[name]
        v = int(v)
        if not 0 <= v < 1 << width:
            raise ValueError(f"{name}={v} does not fit in {width} bits")
        out |= v << shift
    return out


__all__ = ["Status", "Error", "Device", "DeviceControl", "NcqCount", "XferMode", "CommandBlock",
           "OutputBlock", "DsmRange", "NcqErrorLog", "Identify", "DSM_RANGE", "NCQ_ERROR_LOG",
           "COMMAND_BLOCK", "OUTPUT_BLOCK", "IDENTIFY_WORDS", "IDENTIFY_WORD", "IDENTIFY_STRINGS",
           "field_value"]
