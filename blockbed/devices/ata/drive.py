"""The ATA command layer shared by the AHCI and PIIX IDE transports.

A transport turns what the guest wrote (a Register H2D FIS, the IDE shadow
registers) into a :class:`~.regs.TaskFile`, asks :meth:`AtaDrive.decode` what
the command is (its protocol, LBA range, FUA, NCQ tag) or why it must be
rejected, moves the data the way the protocol says (PRDT, bus-master PRDs,
PIO words) and calls :meth:`AtaDrive.execute` with guest-memory views.  The
drive talks to the :class:`~blockbed.block.backend.BlockBackend` and returns
:class:`~.regs.Outputs`: the status/error a real drive would report.

Errors follow ATA8-ACS: ABRT for an unsupported command, feature or
parameter; IDNF for an LBA range past the end of the medium; UNC when the
block layer reports a read error (a media error).  The standard defines no
UNC for writes and flushes, so a failed write or flush reports ABRT (the
error outputs WRITE DMA and FLUSH CACHE list), with the LBA output set to the
start of the failed request.

Durability (the point of this layer, see docs/ata.md):
- WRITE DMA FUA EXT, WRITE MULTIPLE FUA EXT and WRITE FPDMA QUEUED with the
  FUA bit (Device register bit 7) are passed to the backend as FUA writes,
  whatever the write cache setting.  (QEMU 7.2 aborts the first and ignores
  the last.)
- FLUSH CACHE (EXT) flushes the backend; SET FEATURES 82h turns the write
  cache off, which flushes it first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ... import trace
from ...block.backend import STOPPED
from . import layout as L
from .identify import IdentifyState, build_identify, chs_geometry
from .regs import (DEV_FUA, DEV_HEAD, DEV_LBA, DSM_TRIM, ER_ABRT, ER_AMNF, ER_IDNF, ER_UNC,
                   LOG_NCQ_COMMAND_ERROR, NCQ_TAG, NCQ_TAG_SHIFT, SF_DISABLE_RLA, SF_DISABLE_WCE,
                   SF_ENABLE_RLA, SF_ENABLE_WCE, SF_XFER_MODE, ST_DRDY, ST_DSC, ST_ERR, Cmd, Outputs,
                   Protocol, TaskFile)

__all__ = ["AtaDrive", "Command", "DriveConfig"]

_P = Protocol
# opcode -> (protocol, lba48, fua).  28-bit commands with a count of 0 move 256
# sectors; 48-bit ones 65536 (ATA8-ACS §4.? "count field").
_RW_TABLE: dict[int, tuple[Protocol, bool, bool]] = {
    Cmd.READ_SECTORS: (_P.PIO_IN, False, False),
    Cmd.READ_SECTORS_NORETRY: (_P.PIO_IN, False, False),
    Cmd.READ_SECTORS_EXT: (_P.PIO_IN, True, False),
    Cmd.READ_MULTIPLE: (_P.PIO_IN, False, False),
    Cmd.READ_MULTIPLE_EXT: (_P.PIO_IN, True, False),
    Cmd.WRITE_SECTORS: (_P.PIO_OUT, False, False),
    Cmd.WRITE_SECTORS_NORETRY: (_P.PIO_OUT, False, False),
    Cmd.WRITE_SECTORS_EXT: (_P.PIO_OUT, True, False),
    Cmd.WRITE_MULTIPLE: (_P.PIO_OUT, False, False),
    Cmd.WRITE_MULTIPLE_EXT: (_P.PIO_OUT, True, False),
    Cmd.WRITE_MULTIPLE_FUA_EXT: (_P.PIO_OUT, True, True),
    Cmd.READ_DMA: (_P.DMA_IN, False, False),
    Cmd.READ_DMA_NORETRY: (_P.DMA_IN, False, False),
    Cmd.READ_DMA_EXT: (_P.DMA_IN, True, False),
    Cmd.WRITE_DMA: (_P.DMA_OUT, False, False),
    Cmd.WRITE_DMA_NORETRY: (_P.DMA_OUT, False, False),
    Cmd.WRITE_DMA_EXT: (_P.DMA_OUT, True, False),
    Cmd.WRITE_DMA_FUA_EXT: (_P.DMA_OUT, True, True),
    Cmd.READ_VERIFY_SECTORS: (_P.NON_DATA, False, False),
    Cmd.READ_VERIFY_SECTORS_NORETRY: (_P.NON_DATA, False, False),
    Cmd.READ_VERIFY_SECTORS_EXT: (_P.NON_DATA, True, False),
}
_MULTIPLE = {Cmd.READ_MULTIPLE, Cmd.READ_MULTIPLE_EXT, Cmd.WRITE_MULTIPLE,
             Cmd.WRITE_MULTIPLE_EXT, Cmd.WRITE_MULTIPLE_FUA_EXT}
_NON_DATA = {Cmd.NOP, Cmd.RECALIBRATE, Cmd.FLUSH_CACHE, Cmd.FLUSH_CACHE_EXT, Cmd.SET_FEATURES,
             Cmd.READ_NATIVE_MAX_ADDRESS, Cmd.READ_NATIVE_MAX_ADDRESS_EXT, Cmd.CHECK_POWER_MODE,
             Cmd.SET_MULTIPLE_MODE, Cmd.INITIALIZE_DEVICE_PARAMETERS, Cmd.STANDBY_IMMEDIATE,
             Cmd.IDLE_IMMEDIATE, Cmd.STANDBY, Cmd.IDLE, Cmd.SLEEP}


@dataclass(slots=True)
class Command:
    """A decoded command: what to transfer and how."""

    opcode: int
    protocol: Protocol
    tf: TaskFile
    lba: int = 0
    nsect: int = 0
    nbytes: int = 0          # bytes of data the command moves
    fua: bool = False
    tag: int = 0             # NCQ tag (FPDMA commands)
    lba48: bool = False      # a 48-bit command: outputs use the HOB bytes

    @property
    def name(self) -> str:
        try:
            return Cmd(self.opcode).name
        except ValueError:
            return f"{self.opcode:#04x}"

    @property
    def is_write(self) -> bool:
        return self.protocol.to_device


@dataclass
class DriveConfig:
    """The drive's identity and geometry; defaults match QEMU's ide-hd so that guest
    transcripts agree (QEMU names its drives "QEMU HARDDISK", firmware "2.5+")."""

    model: str = "QEMU HARDDISK"
    serial: str = "QM00001"
    firmware: str = "2.5+"
    logical_sector_size: int = 512
    physical_sector_size: int = 512
    trim: bool = True


@dataclass
class _State:
    read_look_ahead: bool = True
    multiple_count: int = 0
    pio_mode: int = 4
    mwdma_mode: int | None = None
    udma_mode: int | None = 5
    power_mode: int = 0xFF   # CHECK POWER MODE count output: FFh active/idle, 00h standby
    ncq_error_log: bytes = field(default=bytes(512))


class AtaDrive:
    """An ATA disk on a :class:`BlockBackend`.

    ``ncq_depth`` is 32 on a SATA transport (AHCI) and 0 on parallel ATA (PIIX
    IDE), where the FPDMA commands do not exist and abort.
    """

    MAX_MULTIPLE = 16

    def __init__(self, backend, config: DriveConfig | None = None, ncq_depth: int = 0):
        self.backend = backend
        self.config = config or DriveConfig()
        self.sector_size = self.config.logical_sector_size
        if self.sector_size not in (512, 1024, 2048, 4096):
            raise ValueError(f"logical sector size {self.sector_size} unsupported (512..4096)")
        if self.config.physical_sector_size % self.sector_size:
            raise ValueError("physical sector size must be a multiple of the logical one")
        self.ncq_depth = ncq_depth
        self.state = _State()

    # --- identity -------------------------------------------------------------------
    @property
    def sectors(self) -> int:
        return self.backend.length() // self.sector_size

    def identify_data(self) -> bytes:
        st = self.state
        c = self.config
        return build_identify(IdentifyState(
            sectors=self.sectors, model=c.model, serial=c.serial, firmware=c.firmware,
            logical_sector_size=self.sector_size, physical_sector_size=c.physical_sector_size,
            write_cache_enabled=self.backend.write_cache_enabled,
            read_look_ahead=st.read_look_ahead, ncq_depth=self.ncq_depth, trim=c.trim,
            multiple_count=st.multiple_count, max_multiple=self.MAX_MULTIPLE,
            pio_mode=st.pio_mode, mwdma_mode=st.mwdma_mode, udma_mode=st.udma_mode,
            gpl=True))

    def reset(self) -> None:
        """Hardware/software reset: the drive leaves standby; settings persist (ATA8-ACS
        §4.? — SET FEATURES settings survive resets unless reverting is enabled)."""
        self.state.power_mode = 0xFF

    # --- decoding -------------------------------------------------------------------
    @staticmethod
    def abort() -> Outputs:
        return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_ABRT)

    def idnf(self, lba: int) -> Outputs:
        return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_IDNF, lba=lba)

    def _lba28(self, tf: TaskFile) -> int | None:
        if tf.device & DEV_LBA:
            return ((tf.device & DEV_HEAD) << 24) | (tf.lba & 0xFFFFFF)
        # CHS addressing (ATA-5 and earlier): sector number 1-based, cylinder in LBA mid/high.
        sector = tf.lba & 0xFF
        cyl = (tf.lba >> 8) & 0xFFFF
        head = tf.device & DEV_HEAD
        cyls, heads, spt = chs_geometry(self.sectors)
        if sector == 0 or sector > spt or head >= heads:
            return None
        return (cyl * heads + head) * spt + sector - 1

    def decode(self, tf: TaskFile) -> Command | Outputs:
        """Classify a command, or return the error outputs it must end with at once."""
        op = tf.command
        entry = _RW_TABLE.get(op)
        if entry is not None:
            proto, lba48, fua = entry
            if lba48:
                lba, n = tf.lba & 0xFFFF_FFFF_FFFF, (tf.count & 0xFFFF) or 65536
            else:
                lba, n = self._lba28(tf), (tf.count & 0xFF) or 256
                if lba is None:
                    return self.idnf(0)
            if op in _MULTIPLE and self.state.multiple_count == 0:
                return self.abort()   # READ/WRITE MULTIPLE before SET MULTIPLE MODE
            if lba + n > self.sectors:
                return self.idnf(lba)
            nbytes = 0 if proto is _P.NON_DATA else n * self.sector_size
            return Command(op, proto, tf, lba, n, nbytes, fua, lba48=lba48)
        if op in (Cmd.READ_FPDMA_QUEUED, Cmd.WRITE_FPDMA_QUEUED):
            if not self.ncq_depth:
                return self.abort()
            n = (tf.features & 0xFFFF) or 65536
            lba = tf.lba & 0xFFFF_FFFF_FFFF
            proto = _P.FPDMA_IN if op == Cmd.READ_FPDMA_QUEUED else _P.FPDMA_OUT
            cmd = Command(op, proto, tf, lba, n, n * self.sector_size,
                          fua=bool(tf.device & DEV_FUA) and op == Cmd.WRITE_FPDMA_QUEUED,
                          tag=(tf.count & NCQ_TAG) >> NCQ_TAG_SHIFT)
            if lba + n > self.sectors:
                return self.idnf(lba)
            return cmd
        if op == Cmd.IDENTIFY_DEVICE:
            return Command(op, _P.PIO_IN, tf, nbytes=512)
        if op == Cmd.READ_NATIVE_MAX_ADDRESS_EXT:
            return Command(op, _P.NON_DATA, tf, lba48=True)
        if op == Cmd.READ_LOG_EXT:
            # Only the NCQ Command Error log (page 10h), one page (SATA §13.7.4).
            if tf.lba & 0xFF != LOG_NCQ_COMMAND_ERROR or (tf.count & 0xFFFF) != 1 or (tf.lba >> 8) & 0xFFFF:
                return self.abort()
            return Command(op, _P.PIO_IN, tf, nbytes=512)
        if op == Cmd.DATA_SET_MANAGEMENT:
            if not (self.config.trim and tf.features & DSM_TRIM):
                return self.abort()
            blocks = tf.count & 0xFFFF
            if blocks == 0 or blocks > 8:
                return self.abort()
            return Command(op, _P.DMA_OUT, tf, nsect=blocks, nbytes=blocks * 512)
        if op == Cmd.EXECUTE_DEVICE_DIAGNOSTIC:
            return Command(op, _P.DIAGNOSTIC, tf)
        if op in _NON_DATA:
            return Command(op, _P.NON_DATA, tf)
        return self.abort()

    def drq_block_sectors(self, cmd: Command) -> int:
        """Sectors per PIO DRQ data block: the multiple count for READ/WRITE MULTIPLE."""
        if cmd.opcode in _MULTIPLE:
            return self.state.multiple_count
        return 1

    # --- execution --------------------------------------------------------------------
    def execute(self, cmd: Command, bufs: list[memoryview] | None = None,
                lba: int | None = None, nsect: int | None = None) -> Outputs:
        """Run ``cmd``; data moves through ``bufs`` (views of guest memory or the
        transport's PIO buffer, totalling the bytes of this part).  A transport that
        moves data in pieces (IDE PIO) passes the piece's ``lba``/``nsect``."""
        op = cmd.opcode
        if trace.enabled:
            trace.emit("ata.exec", cmd=cmd.name, lba=cmd.lba if lba is None else lba,
                       nsect=cmd.nsect if nsect is None else nsect, fua=cmd.fua)
        if cmd.protocol in (_P.PIO_IN, _P.DMA_IN, _P.FPDMA_IN) and op not in (
                Cmd.IDENTIFY_DEVICE, Cmd.READ_LOG_EXT):
            return self._read(cmd, bufs or [], cmd.lba if lba is None else lba,
                              cmd.nsect if nsect is None else nsect)
        if cmd.protocol in (_P.PIO_OUT, _P.DMA_OUT, _P.FPDMA_OUT) and op != Cmd.DATA_SET_MANAGEMENT:
            return self._write(cmd, bufs or [], cmd.lba if lba is None else lba,
                               cmd.nsect if nsect is None else nsect)
        if op == Cmd.IDENTIFY_DEVICE:
            return self._copy_out(self.identify_data(), bufs or [])
        if op == Cmd.READ_LOG_EXT:
            return self._copy_out(self.state.ncq_error_log, bufs or [])
        if op == Cmd.DATA_SET_MANAGEMENT:
            return self._trim(bufs or [])
        return self._non_data(cmd)

    def _ok(self) -> Outputs:
        return Outputs()

    def _copy_out(self, data: bytes, bufs: list[memoryview]) -> Outputs:
        pos = 0
        for b in bufs:
            n = min(len(b), len(data) - pos)
            if n <= 0:
                break
            b[:n] = data[pos:pos + n]
            pos += n
        return self._ok()

    def _read(self, cmd: Command, bufs: list[memoryview], lba: int, nsect: int) -> Outputs:
        r = self.backend.readv(lba * self.sector_size, bufs)
        if r == STOPPED:
            return Outputs(stopped=True)
        if r < 0:
            return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_UNC, lba=lba)
        return self._ok()

    def _write(self, cmd: Command, bufs: list[memoryview], lba: int, nsect: int) -> Outputs:
        if self.backend.read_only:
            return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_ABRT, lba=lba)
        r = self.backend.writev(lba * self.sector_size, bufs, fua=cmd.fua)
        if r == STOPPED:
            return Outputs(stopped=True)
        if r < 0:
            return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_ABRT, lba=lba)
        return self._ok()

    def _trim(self, bufs: list[memoryview]) -> Outputs:
        """DATA SET MANAGEMENT / TRIM (ACS-2 §7.5): 8-byte LBA range entries, bits 47:0
        the start LBA and 63:48 the length in sectors; a length of 0 ends nothing, it
        is just skipped.  A range past the end of the medium aborts the command."""
        data = b"".join(bytes(b) for b in bufs)
        ranges = []
        cap = self.sectors
        size = L.DSM_RANGE.size
        for (entry,) in L.DSM_RANGE.iter_unpack(data[:len(data) - len(data) % size]):
            start, n = entry & L.DSM_LBA, entry >> L.DSM_LENGTH_SHIFT
            if n == 0:
                continue
            if start + n > cap:
                return self.abort()
            ranges.append((start, n))
        if ranges and self.backend.read_only:
            return self.abort()
        for start, n in ranges:
            r = self.backend.discard(start * self.sector_size, n * self.sector_size)
            if r == STOPPED:
                return Outputs(stopped=True)
            if r < 0:
                return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_ABRT, lba=start)
        return self._ok()

    def _non_data(self, cmd: Command) -> Outputs:
        op, tf, st = cmd.opcode, cmd.tf, self.state
        if op in (Cmd.FLUSH_CACHE, Cmd.FLUSH_CACHE_EXT):
            r = self.backend.flush()
            if r == STOPPED:
                return Outputs(stopped=True)
            if r < 0:
                return Outputs(status=ST_DRDY | ST_DSC | ST_ERR, error=ER_ABRT, lba=0)
            return self._ok()
        if op == Cmd.SET_FEATURES:
            return self._set_features(tf)
        if op == Cmd.READ_NATIVE_MAX_ADDRESS:
            last = min(self.sectors - 1, 0x0FFFFFFF)
            return Outputs(lba=last)
        if op == Cmd.READ_NATIVE_MAX_ADDRESS_EXT:
            return Outputs(lba=self.sectors - 1)
        if op == Cmd.CHECK_POWER_MODE:
            return Outputs(count=st.power_mode)
        if op in (Cmd.STANDBY_IMMEDIATE, Cmd.STANDBY, Cmd.SLEEP):
            st.power_mode = 0x00
            return self._ok()
        if op in (Cmd.IDLE_IMMEDIATE, Cmd.IDLE):
            st.power_mode = 0xFF
            return self._ok()
        if op == Cmd.SET_MULTIPLE_MODE:
            n = tf.count & 0xFF
            if n == 0 or n > self.MAX_MULTIPLE or n & (n - 1):
                return self.abort()
            st.multiple_count = n
            return self._ok()
        if op in (Cmd.INITIALIZE_DEVICE_PARAMETERS, Cmd.RECALIBRATE):
            return self._ok()
        if op in (Cmd.READ_VERIFY_SECTORS, Cmd.READ_VERIFY_SECTORS_NORETRY,
                  Cmd.READ_VERIFY_SECTORS_EXT):
            return self._ok()     # range already checked by decode; the medium is readable
        if op == Cmd.NOP:
            # NOP (subcommand 00h) always ends with ABRT (ATA8-ACS §7.25).
            return self.abort()
        if op == Cmd.EXECUTE_DEVICE_DIAGNOSTIC:
            return self.diagnostic()
        return self.abort()

    def diagnostic(self) -> Outputs:
        """EXECUTE DEVICE DIAGNOSTIC: error 01h (passed) and the ATA signature in the
        count/LBA outputs (ATA8-ACS §7.9, §9.12)."""
        self.reset()
        return Outputs(status=ST_DRDY | ST_DSC, error=ER_AMNF, lba=0x000001, count=0x01)

    def _set_features(self, tf: TaskFile) -> Outputs:
        sub = tf.features & 0xFF
        st = self.state
        if sub in (SF_ENABLE_WCE, SF_DISABLE_WCE):
            r = self.backend.set_write_cache(sub == SF_ENABLE_WCE)
            if r == STOPPED:
                return Outputs(stopped=True)
            if r < 0:
                return self.abort()
            return self._ok()
        if sub in (SF_ENABLE_RLA, SF_DISABLE_RLA):
            st.read_look_ahead = sub == SF_ENABLE_RLA
            return self._ok()
        if sub == SF_XFER_MODE:
            val = tf.count & 0xFF
            kind, mode = val >> L.XFER_KIND_SHIFT, val & L.XFER_MODE
            if kind == L.XferKind["PIO_DEFAULT"] and mode <= 1:   # PIO default (with/without IORDY)
                st.pio_mode = 0
            elif kind == L.XferKind["PIO"] and mode <= 4:         # PIO flow control mode n
                st.pio_mode = mode
            elif kind == L.XferKind["MWDMA"] and mode <= 2:       # multiword DMA mode n
                st.mwdma_mode, st.udma_mode = mode, None
            elif kind == L.XferKind["UDMA"] and mode <= 5:        # Ultra DMA mode n
                st.udma_mode, st.mwdma_mode = mode, None
            else:
                return self.abort()
            return self._ok()
        return self.abort()

    def record_ncq_error(self, tag: int, out: Outputs, lba: int = 0) -> None:
        """Fill the NCQ Command Error log (page 10h) for READ LOG EXT (SATA §13.7.4)."""
        log = bytearray(L.NCQ_ERROR_LOG.pack(
            tag & L.NCQ_LOG_TAG, out.status, out.error, lba & 0xFF, lba >> 8 & 0xFF,
            lba >> 16 & 0xFF, 0, lba >> 24 & 0xFF, lba >> 32 & 0xFF, lba >> 40 & 0xFF, 0, 0, 0))
        log[-1] = (-sum(log[:-1])) & 0xFF          # the checksum byte
        self.state.ncq_error_log = bytes(log)
