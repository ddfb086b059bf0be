"""ATA task-file vocabulary: status and error bits, command opcodes, the task file.

References: ATA8-ACS (T13/1699-D) §6 (status/error outputs) and §7 (commands),
ACS-2 §7.5 (DATA SET MANAGEMENT), SATA 3.x §13.6 (first-party DMA queued
commands: NCQ).  Both transports (AHCI FISes, the IDE shadow registers)
carry the same fields, so they share :class:`TaskFile`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..fastform import bits, mask
from . import layout as L

# Status, Error and Device register bits, from the declarations in :mod:`.layout`
ST_ERR = mask(L.Status, "err")     # an error occurred; see the error register
ST_DRQ = mask(L.Status, "drq")     # data request: the device is ready to move a PIO data block
ST_DSC = mask(L.Status, "dsc")     # device seek complete (obsolete, still reported by drives and QEMU)
ST_DF = mask(L.Status, "df")       # device fault
ST_DRDY = mask(L.Status, "drdy")   # device ready
ST_BSY = mask(L.Status, "bsy")     # busy

ER_AMNF = mask(L.Error, "amnf")    # (obsolete) also the "diagnostic passed" code 01h after reset
ER_ABRT = mask(L.Error, "abrt")    # command aborted: unsupported command/feature, bad parameter
ER_IDNF = mask(L.Error, "idnf")    # ID not found: the LBA is out of range
ER_UNC = mask(L.Error, "unc")      # uncorrectable data: a media (read) error
ER_ICRC = mask(L.Error, "icrc")

DEV_LBA = mask(L.Device, "lba")
DEV_FUA = mask(L.Device, "fua")    # FPDMA QUEUED: Forced Unit Access (SATA §13.6.4.1 / §13.6.5.1)
DEV_DEV = mask(L.Device, "dev")    # IDE: drive select (0 master, 1 slave)
DEV_HEAD = mask(L.Device, "head")  # LBA 27:24 of a 28-bit command (or the CHS head)

# Count of an FPDMA QUEUED command: the NCQ tag
NCQ_TAG, NCQ_TAG_SHIFT = mask(L.NcqCount, "tag"), bits(L.NcqCount)["tag"][0]

# Device Control register bits
CTL_SRST = mask(L.DeviceControl, "srst")
CTL_NIEN = mask(L.DeviceControl, "nien")
CTL_HOB = mask(L.DeviceControl, "hob")

# Device signature of an ATA (non-packet) device after reset/diagnostics (ATA8-ACS §9.12)
SIGNATURE_ATA = 0x00000101  # LBA high:mid:low:count = 00:00:01:01

# READ LOG EXT: the log address of the NCQ Command Error log (SATA 3.x §13.7.4)
LOG_NCQ_COMMAND_ERROR = 0x10

# DATA SET MANAGEMENT
DSM_TRIM = 0x01
DSM_RANGES_PER_BLOCK = 512 // L.DsmRange.sizeof()   # 8-byte entries per 512-byte block (ACS-2 §7.5.3.2)

# SET FEATURES subcommands used here (ATA8-ACS §7.48)
SF_ENABLE_WCE = 0x02
SF_XFER_MODE = 0x03
SF_DISABLE_RLA = 0x55
SF_DISABLE_WCE = 0x82
SF_ENABLE_RLA = 0xAA


class Cmd(enum.IntEnum):
    """The command opcodes the drive implements (ATA8-ACS §7; ACS-2 for DSM)."""

    NOP = 0x00
    DATA_SET_MANAGEMENT = 0x06
    RECALIBRATE = 0x10
    READ_SECTORS = 0x20
    READ_SECTORS_NORETRY = 0x21
    READ_SECTORS_EXT = 0x24
    READ_DMA_EXT = 0x25
    READ_NATIVE_MAX_ADDRESS_EXT = 0x27
    READ_MULTIPLE_EXT = 0x29
    READ_LOG_EXT = 0x2F
    WRITE_SECTORS = 0x30
    WRITE_SECTORS_NORETRY = 0x31
    WRITE_SECTORS_EXT = 0x34
    WRITE_DMA_EXT = 0x35
    WRITE_MULTIPLE_EXT = 0x39
    WRITE_DMA_FUA_EXT = 0x3D
    READ_VERIFY_SECTORS = 0x40
    READ_VERIFY_SECTORS_NORETRY = 0x41
    READ_VERIFY_SECTORS_EXT = 0x42
    READ_FPDMA_QUEUED = 0x60
    WRITE_FPDMA_QUEUED = 0x61
    EXECUTE_DEVICE_DIAGNOSTIC = 0x90
    INITIALIZE_DEVICE_PARAMETERS = 0x91
    READ_MULTIPLE = 0xC4
    WRITE_MULTIPLE = 0xC5
    SET_MULTIPLE_MODE = 0xC6
    READ_DMA = 0xC8
    READ_DMA_NORETRY = 0xC9
    WRITE_DMA = 0xCA
    WRITE_DMA_NORETRY = 0xCB
    WRITE_MULTIPLE_FUA_EXT = 0xCE
    STANDBY_IMMEDIATE = 0xE0
    IDLE_IMMEDIATE = 0xE1
    STANDBY = 0xE2
    IDLE = 0xE3
    CHECK_POWER_MODE = 0xE5
    SLEEP = 0xE6
    FLUSH_CACHE = 0xE7
    FLUSH_CACHE_EXT = 0xEA
    IDENTIFY_DEVICE = 0xEC
    SET_FEATURES = 0xEF
    READ_NATIVE_MAX_ADDRESS = 0xF8


class Protocol(enum.Enum):
    """How a command moves data (ATA8-ACS §7, the "Protocol" line of each command)."""

    NON_DATA = "non-data"
    PIO_IN = "pio-in"
    PIO_OUT = "pio-out"
    DMA_IN = "dma-in"
    DMA_OUT = "dma-out"
    FPDMA_IN = "fpdma-in"      # NCQ: READ FPDMA QUEUED
    FPDMA_OUT = "fpdma-out"    # NCQ: WRITE FPDMA QUEUED
    DIAGNOSTIC = "diagnostic"

    @property
    def is_dma(self) -> bool:
        return self in (Protocol.DMA_IN, Protocol.DMA_OUT, Protocol.FPDMA_IN, Protocol.FPDMA_OUT)

    @property
    def is_pio(self) -> bool:
        return self in (Protocol.PIO_IN, Protocol.PIO_OUT)

    @property
    def is_ncq(self) -> bool:
        return self in (Protocol.FPDMA_IN, Protocol.FPDMA_OUT)

    @property
    def to_device(self) -> bool:
        return self in (Protocol.PIO_OUT, Protocol.DMA_OUT, Protocol.FPDMA_OUT)


@dataclass(slots=True)
class TaskFile:
    """The command-block registers as a host writes them (Register H2D FIS, or the
    IDE shadow registers with their "previous content" bytes for 48-bit commands).

    ``features`` and ``count`` are 16-bit (the upper byte is the 48-bit "exp"
    byte), ``lba`` is 48-bit (LBA low/mid/high plus their exp bytes).  For a
    28-bit command the transport passes the low bytes; the drive takes LBA
    bits 27:24 from ``device``.
    """

    command: int
    features: int = 0
    count: int = 0
    lba: int = 0
    device: int = 0
    control: int = 0


@dataclass(slots=True)
class Outputs:
    """What the device reports when the command ends (the D2H / SDB FIS or the
    shadow registers): status, error and, where a command defines them, the
    LBA and count outputs.  ``stopped``: the block layer's ``stop`` error policy
    paused the machine; the command is not complete and must be run again."""

    status: int = ST_DRDY | ST_DSC
    error: int = 0
    lba: int | None = None
    count: int | None = None
    stopped: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.status & ST_ERR)
