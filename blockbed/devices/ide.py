"""PIIX3 IDE (8086:7010, class 01.01.80): two legacy ATA channels and bus-master DMA.

References: ATA/ATAPI-6 §9 (the PIO, DMA and non-data protocols seen through
the task-file registers, device selection, software reset), ATA8-ACS §4
(48-bit addressing through the "previous content" of the registers, read
back with HOB), SFF-8038i rev 1.0 (bus-master IDE: command/status/PRD
table registers, PRD format, the Active/Interrupt error combinations), the
Intel PIIX3 datasheet (function 1 of the PIIX3, compatibility mode, BAR4).

Compatibility mode: the channels sit at the fixed ISA ports 1F0h–1F7h/3F6h
(primary, IRQ 14) and 170h–177h/376h (secondary, IRQ 15) — not BARs; BAR4 is
the 16-byte bus-master block (8 bytes per channel).

Timing: a command makes the device BSY; its data block (PIO), its DMA or its
completion happens in an event a couple of virtual ticks later, so a guest
polls BSY like on hardware.  PIO data moves a DRQ block at a time through a
buffer (one sector, or the multiple count for READ/WRITE MULTIPLE); the data
port takes 16- and 32-bit accesses (rep insw/outsw, insl/outsl).

Errors and hostile guests: a PRD table shorter than the transfer ends the DMA
with Active=0 and Interrupt=0 in the bus-master status, the SFF-8038i
"PRD table smaller than the transfer" indication, with no data moved and the
device reporting ABRT; a DMA the host bus refuses (bus mastering off, an
address outside RAM) sets the bus-master Error bit and ABRT; commands to an
absent device are ignored, reads from an empty channel return 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import trace

from ..machine.memory import DMAError
from ..machine.pci import BarKind, PCIDevice
from .ide_layout import BM_PRDT_OFFSET, BM_REGS as _BM_REGS, BM_STATUS_OFFSET, PRD as _PRD, \
    PRD_COUNT as _PRD_COUNT, PRD_EOT as _PRD_EOT
from .ata import AtaDrive, Command, DriveConfig, Outputs, Protocol, TaskFile
from .ata.config import default_serial, drive_config, spec_option
from .ata.regs import DEV_DEV, ER_ABRT, ST_BSY, ST_DRDY, ST_DRQ, ST_DSC, ST_ERR

if TYPE_CHECKING:
    from ..machine.board import Machine

LEGACY = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))
CTL_NIEN, CTL_SRST, CTL_HOB = 0x02, 0x04, 0x80
BM_START, BM_READ = 0x01, 0x08          # command register: start, direction (1 = to memory)
BM_ACTIVE, BM_ERROR, BM_INTR = 0x01, 0x02, 0x04
BM_STATUS_RW = 0x60                     # drive 0/1 DMA capable bits
CMD_DELAY = 2
MAX_PRDS = 8192                         # a PRD table may not cross a 64 KiB boundary


@dataclass
class IdeUnit:
    drive: AtaDrive | None = None
    status: int = 0
    error: int = 0


@dataclass
class _Xfer:
    """A command in progress on a channel."""

    unit: int
    cmd: Command
    lba: int = 0
    remaining: int = 0          # sectors still to move (PIO)
    buf: bytearray = field(default_factory=bytearray)
    pos: int = 0
    block: int = 0              # sectors in the current DRQ block
    dma_ready: bool = False     # DMA command issued, waiting for the bus master


class IdeChannel:
    def __init__(self, ctrl: "PiixIde", index: int):
        self.ctrl = ctrl
        self.index = index
        self.cmd_base, self.ctl_base, self.irq = LEGACY[index]
        self.units = [IdeUnit(), IdeUnit()]
        self.feature = self.hob_feature = 0
        self.count = self.hob_count = 0
        self.lba = [0, 0, 0]
        self.hob_lba = [0, 0, 0]
        self.device = 0
        self.control = 0
        self.intrq = False
        self.xfer: _Xfer | None = None
        self.gen = 0
        self.bm_cmd = 0
        self.bm_status = 0
        self.bm_prdt = 0

    # --- helpers ----------------------------------------------------------------------
    @property
    def sel(self) -> int:
        return 1 if self.device & DEV_DEV else 0

    @property
    def unit(self) -> IdeUnit:
        return self.units[self.sel]

    def has_drives(self) -> bool:
        units = self.units
        return units[0].drive is not None or units[1].drive is not None

    def set_intrq(self, level: bool) -> None:
        self.intrq = level
        line = level and not self.control & CTL_NIEN
        m = self.ctrl.machine
        if m is not None:
            m.ioapic.set_line(self.irq, bool(line))

    def raise_irq(self) -> None:
        # The bus-master Interrupt bit follows the device's INTRQ, which nIEN masks.
        if self.xfer is not None and self.xfer.cmd.protocol.is_dma and not self.control & CTL_NIEN:
            self.bm_status |= BM_INTR
        self.set_intrq(True)

    def signature(self) -> None:
        """The ATA signature in the task file after reset/diagnostics (ATA8-ACS §9.12)."""
        self.count, self.lba, self.device = 1, [1, 0, 0], 0
        for u in self.units:
            if u.drive is not None:
                u.status, u.error = ST_DRDY | ST_DSC, 0x01
                u.drive.reset()
            else:
                u.status, u.error = 0, 0

    def reset(self) -> None:
        self.gen += 1
        self.xfer = None
        self.control = 0
        self.feature = self.hob_feature = self.hob_count = 0
        self.hob_lba = [0, 0, 0]
        self.bm_cmd = 0
        self.bm_status &= BM_STATUS_RW
        self.signature()
        self.set_intrq(False)

    # --- task-file registers ---------------------------------------------------------------
    def read_cmd_block(self, off: int, size: int) -> int:
        if off == 0:
            return self.read_data(size)
        if not self.has_drives():
            return 0
        u = self.unit
        hob = bool(self.control & CTL_HOB)
        if u.drive is None and off != 6:
            return 0           # the absent device of a pair reads as 0 (as QEMU)
        if off == 1:
            return self.hob_feature if hob else u.error
        if off == 2:
            return self.hob_count if hob else self.count
        if 3 <= off <= 5:
            return (self.hob_lba if hob else self.lba)[off - 3]
        if off == 6:
            return self.device | 0xA0
        if off == 7:
            self.set_intrq(False)           # reading Status acknowledges the interrupt
            return u.status
        return 0

    def write_cmd_block(self, off: int, size: int, value: int) -> None:
        if off == 0:
            self.write_data(size, value)
            return
        v = value & 0xFF
        self.control &= ~CTL_HOB             # any task-file write clears HOB (ATA8-ACS §6.?)
        if off == 1:
            self.hob_feature, self.feature = self.feature, v
        elif off == 2:
            self.hob_count, self.count = self.count, v
        elif 3 <= off <= 5:
            i = off - 3
            self.hob_lba[i], self.lba[i] = self.lba[i], v
        elif off == 6:
            self.device = v & ~0xA0
        elif off == 7:
            self.command(v)

    def read_ctl(self, off: int, size: int) -> int:
        # Alternate status (no acknowledge); polled while a command runs, so written
        # out: the selected unit's status, 0 when it is absent (or the channel empty).
        if off != 0:
            return 0
        u = self.units[1 if self.device & DEV_DEV else 0]
        return u.status if u.drive is not None else 0

    def write_ctl(self, off: int, size: int, value: int) -> None:
        if off != 0:
            return
        old = self.control
        self.control = value & (CTL_NIEN | CTL_SRST | CTL_HOB)
        if value & CTL_SRST and not old & CTL_SRST:
            self.gen += 1
            self.xfer = None
            for u in self.units:
                if u.drive is not None:
                    u.status = ST_BSY
        elif old & CTL_SRST and not value & CTL_SRST:
            self.signature()
        if (old ^ self.control) & CTL_NIEN:
            self.set_intrq(self.intrq)

    # --- commands ------------------------------------------------------------------------
    def taskfile(self, op: int) -> TaskFile:
        lba = self.lba[0] | self.lba[1] << 8 | self.lba[2] << 16 | \
            self.hob_lba[0] << 24 | self.hob_lba[1] << 32 | self.hob_lba[2] << 40
        return TaskFile(command=op, features=self.hob_feature << 8 | self.feature,
                        count=self.hob_count << 8 | self.count, lba=lba,
                        device=self.device, control=self.control)

    def command(self, op: int) -> None:
        u = self.unit
        if u.drive is None:
            return                                  # no device answers
        if u.status & ST_BSY and op != 0x08:
            return                                  # writes while BSY are ignored
        self.set_intrq(False)
        tf = self.taskfile(op)
        if trace.enabled:
            from .. import trace_decode as d
            regs = d.ata_taskfile(tf)
            trace.begin("ide", self, channel=self.index, unit=self.sel, op=d.op_kind(regs["command"]),
                        taskfile=regs)
            trace.emit("ide.cmd", channel=self.index, unit=self.sel, cmd=op)
        if op == 0x90:                              # EXECUTE DEVICE DIAGNOSTIC: both devices
            u.status = ST_BSY
            self.schedule(self.diagnostic)
            return
        decoded = u.drive.decode(tf)
        if isinstance(decoded, Outputs):
            u.status = ST_BSY
            self.schedule(self.finish, self.sel, decoded)
            return
        x = _Xfer(self.sel, decoded, lba=decoded.lba, remaining=decoded.nsect)
        self.xfer = x
        p = decoded.protocol
        if p is Protocol.PIO_IN:
            u.status = ST_BSY
            self.schedule(self.pio_in_block)
        elif p is Protocol.PIO_OUT:
            self.next_out_block(first=True)
        elif p.is_dma:
            u.status = ST_BSY | ST_DRDY
            x.dma_ready = True
            if self.bm_cmd & BM_START:
                self.schedule(self.run_dma)
        else:
            u.status = ST_BSY
            self.schedule(self.non_data)

    def schedule(self, fn, *args) -> None:
        self.ctrl.machine.events.schedule(CMD_DELAY, self._guarded, self.gen, fn, args,
                                          name="ide." + fn.__name__)

    def _guarded(self, gen: int, fn, args) -> None:
        if gen == self.gen:
            if trace.enabled:
                trace.enter(self)
            fn(*args)

    def set_outputs(self, out: Outputs, lba48: bool) -> None:
        if out.count is not None:
            self.count = out.count & 0xFF
            self.hob_count = (out.count >> 8) & 0xFF
        if out.lba is not None:
            self.lba = [(out.lba >> s) & 0xFF for s in (0, 8, 16)]
            if lba48:
                self.hob_lba = [(out.lba >> s) & 0xFF for s in (24, 32, 40)]
            else:
                self.device = (self.device & 0xF0) | ((out.lba >> 24) & 0x0F)

    def finish(self, unit: int, out: Outputs, cmd: Command | None = None) -> None:
        u = self.units[unit]
        if out.stopped:
            self.ctrl.stopped.append((self, unit, cmd))
            return
        self.set_outputs(out, cmd is not None and cmd.lba48)
        u.status = out.status & ~(ST_BSY | ST_DRQ)
        u.error = out.error
        if trace.enabled:
            trace.end(self, status=out.status, error=out.error)
        self.raise_irq()
        self.xfer = None

    def diagnostic(self) -> None:
        d0 = self.units[0].drive
        self.signature()
        if d0 is None:
            self.units[1].error = 0x01
        self.raise_irq()

    def non_data(self) -> None:
        x = self.xfer
        if x is None:
            return
        out = self.units[x.unit].drive.execute(x.cmd)
        self.finish(x.unit, out, x.cmd)

    # --- PIO ---------------------------------------------------------------------------------
    def pio_in_block(self) -> None:
        x = self.xfer
        if x is None:
            return
        u = self.units[x.unit]
        drive = u.drive
        if x.cmd.nsect == 0:          # IDENTIFY / READ LOG EXT: one 512-byte block
            x.buf = bytearray(x.cmd.nbytes)
            out = drive.execute(x.cmd, [memoryview(x.buf)])
            x.remaining = 0
        else:
            n = min(x.remaining, drive.drq_block_sectors(x.cmd))
            x.buf = bytearray(n * drive.sector_size)
            out = drive.execute(x.cmd, [memoryview(x.buf)], x.lba, n)
            x.lba += n
            x.remaining -= n
        if out.stopped or out.failed:
            self.finish(x.unit, out, x.cmd)
            return
        x.pos = 0
        u.status = ST_DRDY | ST_DSC | ST_DRQ
        self.raise_irq()

    def next_out_block(self, first: bool = False) -> None:
        x = self.xfer
        u = self.units[x.unit]
        n = min(x.remaining, u.drive.drq_block_sectors(x.cmd))
        x.block = n
        x.buf = bytearray(n * u.drive.sector_size)
        x.pos = 0
        u.status = ST_DRDY | ST_DSC | ST_DRQ
        if not first:
            self.raise_irq()

    def pio_out_block(self) -> None:
        x = self.xfer
        if x is None:
            return
        u = self.units[x.unit]
        out = u.drive.execute(x.cmd, [memoryview(x.buf)], x.lba, x.block)
        x.lba += x.block
        x.remaining -= x.block
        if out.stopped or out.failed or x.remaining == 0:
            self.finish(x.unit, out, x.cmd)
        else:
            self.next_out_block()

    def read_data(self, size: int) -> int:
        x = self.xfer
        if x is None or x.cmd.protocol is not Protocol.PIO_IN or \
                not self.units[x.unit].status & ST_DRQ:
            return 0
        b = x.buf[x.pos:x.pos + size]
        self._data_read(x, size)
        return int.from_bytes(b.ljust(size, b"\0"), "little")

    def read_data_string(self, size: int, count: int) -> memoryview | bytes:
        """``rep ins`` from the data register (machine/pio_string.py): up to
        ``count`` whole units of the current DRQ block at once, with the same
        effects as that many reads of :meth:`read_data` (the block's end moves
        to the next block or ends the command); empty where that would read 0."""
        x = self.xfer
        if x is None or x.cmd.protocol is not Protocol.PIO_IN or \
                not self.units[x.unit].status & ST_DRQ:
            return b""
        n = min(count, (len(x.buf) - x.pos) // size) * size
        data = memoryview(x.buf)[x.pos:x.pos + n]
        if n:
            self._data_read(x, n)
        return data

    def _data_read(self, x: _Xfer, n: int) -> None:
        x.pos += n
        if x.pos >= len(x.buf):
            u = self.units[x.unit]
            if x.remaining:
                u.status = ST_BSY
                self.schedule(self.pio_in_block)
            else:
                u.status = ST_DRDY | ST_DSC
                if trace.enabled:
                    trace.end(self, status=u.status, error=u.error)
                self.xfer = None

    def write_data(self, size: int, value: int) -> None:
        x = self.xfer
        if x is None or x.cmd.protocol is not Protocol.PIO_OUT or \
                not self.units[x.unit].status & ST_DRQ:
            return
        n = min(size, len(x.buf) - x.pos)
        x.buf[x.pos:x.pos + n] = value.to_bytes(size, "little")[:n]
        self._data_written(x, n)

    def write_data_string(self, size: int, data: memoryview) -> int:
        """``rep outs`` to the data register: the whole units of ``data`` that fit
        in the current DRQ block, as that many :meth:`write_data` calls; 0 where
        those would be ignored."""
        x = self.xfer
        if x is None or x.cmd.protocol is not Protocol.PIO_OUT or \
                not self.units[x.unit].status & ST_DRQ:
            return 0
        units = min(len(data), len(x.buf) - x.pos) // size
        n = units * size
        if n:
            x.buf[x.pos:x.pos + n] = data[:n]
            self._data_written(x, n)
        return units

    def _data_written(self, x: _Xfer, n: int) -> None:
        x.pos += n
        if x.pos >= len(x.buf):
            self.units[x.unit].status = ST_BSY
            self.schedule(self.pio_out_block)

    # --- bus-master DMA (SFF-8038i) ---------------------------------------------------------------
    def bm_write(self, off: int, size: int, value: int) -> None:
        if off == BM_PRDT_OFFSET and size == 4:  # the PRD table address as one dword
            self.bm_prdt = value & 0xFFFFFFFC
            return
        for i in range(size):
            self._bm_write_byte(off + i, (value >> (8 * i)) & 0xFF)

    def _bm_write_byte(self, off: int, v: int) -> None:
        if off == 0:
            old = self.bm_cmd
            self.bm_cmd = v & (BM_START | BM_READ)
            if v & BM_START and not old & BM_START:
                self.bm_status |= BM_ACTIVE
                x = self.xfer
                if x is not None and x.dma_ready:
                    self.schedule(self.run_dma)
            elif not v & BM_START and old & BM_START:
                self.bm_status &= ~BM_ACTIVE    # stopping aborts an unfinished transfer
        elif off == 2:
            self.bm_status = (self.bm_status & ~(v & (BM_ERROR | BM_INTR)))
            self.bm_status = (self.bm_status & ~BM_STATUS_RW) | (v & BM_STATUS_RW)
        elif 4 <= off <= 7:
            shift = 8 * (off - 4)
            self.bm_prdt = (self.bm_prdt & ~(0xFF << shift)) | (v << shift)
            self.bm_prdt &= 0xFFFFFFFC

    def bm_read(self, off: int, size: int) -> int:
        if size == 1 and off == BM_STATUS_OFFSET:  # status: polled after every transfer
            return self.bm_status
        regs = _BM_REGS.pack(self.bm_cmd, 0, self.bm_status, 0, self.bm_prdt)
        return int.from_bytes(regs[off:off + size].ljust(size, b"\0"), "little")

    def prd_views(self, nbytes: int, to_memory: bool = False) -> list[memoryview] | None:
        """The PRD table as guest-memory views totalling ``nbytes``; None if it is shorter.
        ``to_memory``: the command moves data to the host (the buffers will be written;
        the command decides, as the model moves data the command's way whatever the
        bus-master direction bit says)."""
        views: list[memoryview] = []
        need = nbytes
        addr = self.bm_prdt
        for _ in range(MAX_PRDS):
            base, cnt = _PRD.unpack(self.ctrl.dma(addr, _PRD.size))
            n = cnt & _PRD_COUNT or 0x10000       # a count of 0 means 64 KiB
            take = min(n, need)
            views.append(self.ctrl.dma(base & 0xFFFFFFFE, take, to_memory))
            need -= take
            addr += _PRD.size
            if need == 0:
                return views
            if cnt & _PRD_EOT:
                return None
        return None

    def run_dma(self) -> None:
        x = self.xfer
        if x is None or not x.dma_ready or not self.bm_cmd & BM_START:
            return
        x.dma_ready = False
        u = self.units[x.unit]
        try:
            views = self.prd_views(x.cmd.nbytes, to_memory=not x.cmd.protocol.to_device)
        except DMAError:
            if trace.enabled:
                trace.emit("ide.dma_error", channel=self.index)
            self.bm_status = (self.bm_status & ~BM_ACTIVE) | BM_ERROR
            self.finish(x.unit, u.drive.abort(), x.cmd)
            return
        if views is None:
            # SFF-8038i: Active=0, Interrupt=0 = "PRD table smaller than the transfer".
            self.bm_status &= ~BM_ACTIVE
            u.status, u.error = ST_DRDY | ST_DSC | ST_ERR, ER_ABRT
            self.xfer = None
            return
        out = u.drive.execute(x.cmd, views)
        if out.stopped:
            x.dma_ready = True
            self.ctrl.stopped.append((self, x.unit, x.cmd))
            return
        self.bm_status &= ~BM_ACTIVE
        self.finish(x.unit, out, x.cmd)


class _Port:
    def __init__(self, read, write):
        self.read, self.write = read, write


class _DataPort:
    """The data register (command block offset 0) on its own port: the one port
    with string transfers (``rep insw``/``outsw``, insl/outsl in one exit)."""

    def __init__(self, ch: IdeChannel):
        self.ch = ch

    def read(self, offset: int, size: int) -> int:
        return self.ch.read_data(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.ch.write_data(size, value)

    def read_string(self, offset: int, size: int, count: int) -> memoryview | bytes:
        return self.ch.read_data_string(size, count)

    def write_string(self, offset: int, size: int, data: memoryview) -> int:
        return self.ch.write_data_string(size, data)


class _TaskFilePort:
    """Command block offsets 1-7 (the registers after the data register)."""

    def __init__(self, ch: IdeChannel):
        self.read_block, self.write_block = ch.read_cmd_block, ch.write_cmd_block

    def read(self, offset: int, size: int) -> int:
        return self.read_block(offset + 1, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.write_block(offset + 1, size, value)


class PiixIde(PCIDevice):
    vendor_id, device_id, class_code, revision = 0x8086, 0x7010, 0x010180, 0x00
    subsystem_vendor_id, subsystem_id = 0x1AF4, 0x1100
    name = "piix3-ide"

    def __init__(self) -> None:
        super().__init__()
        self.channels = [IdeChannel(self, 0), IdeChannel(self, 1)]
        self.stopped: list[Any] = []
        self.add_bar(4, 16, BarKind.IO, _Port(self._bm_read, self._bm_write), name="piix-bmdma")
        # IDETIM (40h/42h): decode enable set, as SeaBIOS leaves it.
        struct.pack_into("<HH", self.config, 0x40, 0x8000, 0x8000)
        self.wmask[0x40:0x48] = b"\xff" * 8
        self._ports_mapped = False

    def map_legacy(self) -> None:
        if self._ports_mapped or self.machine is None:
            return
        self._ports_mapped = True
        for ch in self.channels:
            self.machine.pio.add(f"ide{ch.index}-data", ch.cmd_base, 1, _DataPort(ch))
            self.machine.pio.add(f"ide{ch.index}", ch.cmd_base + 1, 7, _TaskFilePort(ch))
            self.machine.pio.add(f"ide{ch.index}-ctl", ch.ctl_base, 1, _Port(ch.read_ctl, ch.write_ctl))

    def _bm_read(self, off: int, size: int) -> int:
        ch = self.channels[1 if off >= 8 else 0]
        return ch.bm_read(off & 7, size)

    def _bm_write(self, off: int, size: int, value: int) -> None:
        ch = self.channels[1 if off >= 8 else 0]
        ch.bm_write(off & 7, size, value)

    def attach_drive(self, channel: int, unit: int, backend, config: DriveConfig | None = None) -> AtaDrive:
        if channel not in (0, 1) or unit not in (0, 1):
            raise ValueError(f"IDE: bus {channel} unit {unit} does not exist (bus 0-1, unit 0-1)")
        u = self.channels[channel].units[unit]
        if u.drive is not None:
            raise ValueError(f"IDE: bus {channel} unit {unit} already has a drive")
        u.drive = AtaDrive(backend, config, ncq_depth=0)
        self.channels[channel].signature()
        self.channels[channel].bm_status |= 0x20 << unit       # drive DMA capable
        return u.drive

    def free_slot(self) -> tuple[int, int] | None:
        for c in self.channels:
            for i, u in enumerate(c.units):
                if u.drive is None:
                    return c.index, i
        return None

    def reset(self) -> None:
        for ch in self.channels:
            ch.reset()

    def resume(self) -> None:
        """The machine resumed after the ``stop`` error policy: retry the held commands."""
        for ch in self.channels:
            for u in ch.units:
                if u.drive is not None:
                    u.drive.backend.resume()
        self.retry_stopped()

    def retry_stopped(self) -> None:
        pending, self.stopped = self.stopped, []
        for ch, unit, cmd in pending:
            x = ch.xfer
            if x is None:
                continue
            if x.cmd.protocol.is_dma:
                ch.run_dma()
            elif x.cmd.protocol is Protocol.PIO_IN:
                ch.pio_in_block()
            elif x.cmd.protocol is Protocol.PIO_OUT:
                ch.pio_out_block()
            else:
                ch.non_data()


def find_or_add(machine: "Machine") -> PiixIde:
    """The machine's PIIX3 IDE function (00:01.1), added with its legacy ports if absent."""
    ide = machine.pci.functions.get((1 << 3) | 1)
    if not isinstance(ide, PiixIde):
        ide = PiixIde()
        machine.pci.add(ide, slot=1, function=1)
    ide.map_legacy()
    return ide


def attach(machine: "Machine", backend, spec: Any = None) -> PiixIde:
    """Attach a drive to the built-in IDE controller: ``bus`` = channel (0 primary,
    1 secondary), ``unit`` = 0 master / 1 slave; else the first free position, in
    QEMU's if=ide order (primary master, primary slave, secondary master, …)."""
    ide = find_or_add(machine)
    bus, unit = spec_option(spec, "bus"), spec_option(spec, "unit")
    if bus is None and unit is None:
        pos = ide.free_slot()
        if pos is None:
            raise ValueError("IDE: all four positions have drives")
        bus, unit = pos
    bus, unit = int(bus or 0), int(unit or 0)
    ide.attach_drive(bus, unit, backend, drive_config(spec, default_serial(1 + 2 * bus + unit)))
    return ide
