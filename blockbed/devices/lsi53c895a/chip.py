"""The LSI53C895A: PCI function, register file, interrupts, and the SCSI bus.

The chip is an *initiator* on a SCSI bus whose targets are
:class:`~blockbed.devices.scsi.ScsiDisk` objects (one per target ID, LUN 0).
The target side of the protocol is modelled here, phase by phase, the way
a parallel SCSI target drives the bus (SPI-5; SAM-5 for task management):

selection (with ATN) → MESSAGE OUT (IDENTIFY, tags, task-management
messages) → COMMAND → [DATA IN | DATA OUT] → STATUS → MESSAGE IN
(COMMAND COMPLETE) → bus free.

A READ whose IDENTIFY granted the disconnect privilege disconnects after
its CDB (MESSAGE IN: SAVE DATA POINTER, DISCONNECT), as QEMU's model and
real disks do, and reselects the initiator a few virtual ticks later;
the script meets the reselection in WAIT RESELECT.  The SCRIPTS processor
(:mod:`.scripts`) moves the bytes of each phase with block moves.

Interrupts (manual §2.2.4): DSTAT (DMA), SIST0/SIST1 (SCSI) with the DIEN
and SIEN0/SIEN1 masks; ISTAT0 shows DIP/SIP/INTF.  Fatal conditions halt
SCRIPTS even when masked; CMP, SEL, RSL, GEN, HTH halt only when enabled.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ... import trace
from ...machine.memory import DMAError
from ...machine.pci import CMD_BUS_MASTER, BarKind, PCIDevice
from ..scsi import Direction, ScsiDisk, ScsiRequest
from . import regs as R
from .regs import Phase

_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
MAX_TARGETS = 7            # IDs 0..6; 7 is the initiator (QEMU's LSI_MAX_DEVS)
MAX_CDB = 16


class Stall(Exception):
    """The backend's stop policy parked a request: SCRIPTS pause (no interrupt) until
    :meth:`LSI53C895A.resume`.  ``rewind``: re-execute the current instruction then."""

    def __init__(self, rewind: bool):
        super().__init__("stalled")
        self.rewind = rewind


@dataclass
class Nexus:
    """One I_T_L_Q nexus: a command between this initiator and a target's LUN."""
    target: int
    lun: int
    tag: int | None
    req: ScsiRequest
    pos: int = 0                 # bytes of the data phase moved so far
    ready: bool = True           # data available (a disconnected READ: after its latency)
    event: object | None = None


@dataclass
class BusState:
    connected: bool = False
    target: int = 0
    lun: int = 0
    tag: int | None = None
    disc_priv: bool = False
    phase: int = Phase.DATA_OUT
    msgin: bytearray = field(default_factory=bytearray)
    after_msgin: str = "disconnect"      # disconnect | command | data | status
    current: Nexus | None = None


class _RegWindow:
    """A BAR onto the register file: byte accesses, multi-byte split low to high."""

    def __init__(self, chip: "LSI53C895A"):
        self.chip = chip

    def read(self, offset: int, size: int) -> int:
        v = 0
        for i in range(size):
            v |= self.chip.reg_read((offset + i) & 0xFF) << (8 * i)
        return v

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.chip.reg_write((offset + i) & 0xFF, (value >> (8 * i)) & 0xFF)


class _RamWindow:
    def __init__(self, chip: "LSI53C895A"):
        self.ram = chip.script_ram

    def read(self, offset: int, size: int) -> int:
        if offset + size > len(self.ram):
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.ram[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= len(self.ram):
            self.ram[offset:offset + size] = value.to_bytes(size, "little")


class LSI53C895A(PCIDevice):
    """LSI53C895A PCI-to-Ultra2 SCSI controller (1000:0012)."""

    vendor_id, device_id = 0x1000, 0x0012
    class_code = 0x010000            # mass storage, SCSI
    interrupt_pin = 1
    name = "lsi53c895a"

    INSN_BUDGET = 10_000             # instructions per SCRIPTS run (runaway guard)

    def __init__(self) -> None:
        super().__init__()
        self.r = bytearray(R.REG_SIZE)
        self.script_ram = bytearray(R.RAM_SIZE)
        self.targets: dict[int, ScsiDisk] = {}
        self.bus = BusState()
        self.disconnected: list[Nexus] = []
        self.carry = 0
        self.running = False
        self.waiting_reselect = False
        self.stalled = False                  # parked by werror/rerror=stop
        self._stalled_finish: Nexus | None = None
        self._executing = False
        self._irq_level = 0
        self.insns_executed = 0
        self.add_bar(0, R.REG_SIZE, BarKind.IO, _RegWindow(self), name="lsi.io")
        self.add_bar(1, R.MMIO_SIZE, BarKind.MEM32, _RegWindow(self), name="lsi.mmio")
        self.add_bar(2, R.RAM_SIZE, BarKind.MEM32, _RamWindow(self), name="lsi.ram")
        self.soft_reset()

    # --- targets ---------------------------------------------------------------------
    def add_target(self, target: int, disk: ScsiDisk) -> None:
        if not 0 <= target < MAX_TARGETS:
            raise ValueError(f"lsi: SCSI target id {target} out of range 0..{MAX_TARGETS - 1}")
        if target in self.targets:
            raise ValueError(f"lsi: SCSI target id {target} is already in use")
        self.targets[target] = disk

    def free_target(self) -> int:
        for t in range(MAX_TARGETS):
            if t not in self.targets:
                return t
        raise ValueError(f"lsi: all {MAX_TARGETS} SCSI target ids are in use")

    # --- 32-bit register helpers (little endian, as the chip's byte lanes) ---------------
    def get32(self, off: int) -> int:
        return struct.unpack_from("<I", self.r, off)[0]

    def set32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.r, off, v & 0xFFFFFFFF)

    @property
    def dsp(self) -> int:
        return self.get32(R.DSP)

    @dsp.setter
    def dsp(self, v: int) -> None:
        self.set32(R.DSP, v)

    @property
    def dbc(self) -> int:
        return self.get32(R.DBC) & 0xFFFFFF

    @dbc.setter
    def dbc(self, v: int) -> None:
        self.r[R.DBC:R.DBC + 3] = (v & 0xFFFFFF).to_bytes(3, "little")

    # --- reset -------------------------------------------------------------------------
    def soft_reset(self) -> None:
        """ISTAT0 SRST / power on: registers to their reset values, bus free, queues empty."""
        self._cancel_all(reset_disks=False)
        self.r[:] = bytes(R.REG_SIZE)
        self.r[R.CTEST2] = R.CTEST2_DACK
        self.r[R.SCID] = 0x07
        self.r[R.GPREG] = 0x7F
        self.r[R.STEST4] = 0xE0
        self.r[R.MACNTL] = 0x0F
        self.r[R.GPCNTL] = 0x0F
        self.carry = 0
        self.running = False
        self.waiting_reselect = False
        self.stalled = False
        self._stalled_finish = None
        self.bus = BusState()
        self._update_irq()

    def reset(self) -> None:
        self.soft_reset()
        for d in self.targets.values():
            d.reset()

    def _cancel_all(self, reset_disks: bool, target: int | None = None, lun: int | None = None) -> None:
        """Clear nexuses (ABORT/CLEAR QUEUE for a LUN, BUS DEVICE RESET for a target, bus reset)."""
        keep = []
        for nx in self.disconnected:
            if (target is None or nx.target == target) and (lun is None or nx.lun == lun):
                nx.req.cancel()
                if nx.event is not None and self.machine is not None:
                    self.machine.events.cancel(nx.event)
            else:
                keep.append(nx)
        self.disconnected = keep
        cur = self.bus.current
        if cur is not None and (target is None or cur.target == target) and (lun is None or cur.lun == lun):
            cur.req.cancel()
            self.bus.current = None
        if reset_disks:
            for t, d in self.targets.items():
                if target is None or t == target:
                    d.reset()

    # --- interrupts ------------------------------------------------------------------------
    def _update_irq(self) -> None:
        r = self.r
        level = 0
        ist = r[R.ISTAT0] & ~(R.ISTAT0_DIP | R.ISTAT0_SIP | R.ISTAT0_CON)
        if r[R.DSTAT]:
            ist |= R.ISTAT0_DIP
            if r[R.DSTAT] & r[R.DIEN]:
                level = 1
        if r[R.SIST0] or r[R.SIST1]:
            ist |= R.ISTAT0_SIP
            if (r[R.SIST0] & r[R.SIEN0]) or (r[R.SIST1] & r[R.SIEN1]):
                level = 1
        if ist & R.ISTAT0_INTF:
            level = 1
        if self.bus.connected:
            ist |= R.ISTAT0_CON
        r[R.ISTAT0] = ist
        if level != self._irq_level:
            self._irq_level = level
            if trace.enabled:
                trace.emit("lsi.irq", level=level, dstat=r[R.DSTAT], sist0=r[R.SIST0], sist1=r[R.SIST1])
            if self.machine is not None:
                self.set_irq(level)

    def dma_interrupt(self, bits: int) -> None:
        """A DMA interrupt (DSTAT): always halts SCRIPTS."""
        self.r[R.DSTAT] |= bits
        self.stop_scripts()
        self._update_irq()
        if trace.enabled:
            trace.emit("lsi.dma_interrupt", dstat=bits, dsp=self.dsp)

    def scsi_interrupt(self, sist0: int = 0, sist1: int = 0) -> None:
        """A SCSI interrupt (SIST0/1); fatal ones, or enabled non-fatal ones, halt SCRIPTS."""
        r = self.r
        r[R.SIST0] |= sist0
        r[R.SIST1] |= sist1
        halt0 = sist0 & (r[R.SIEN0] | ~(R.SIST0_CMP | R.SIST0_SEL | R.SIST0_RSL)) & 0xFF
        halt1 = sist1 & (r[R.SIEN1] | ~(R.SIST1_GEN | R.SIST1_HTH)) & 0xFF
        if halt0 or halt1:
            self.stop_scripts()
        self._update_irq()
        if trace.enabled:
            trace.emit("lsi.scsi_interrupt", sist0=sist0, sist1=sist1, dsp=self.dsp)

    def stop_scripts(self) -> None:
        self.running = False
        self.waiting_reselect = False
        self.stalled = False
        self._stalled_finish = None
        self.r[R.ISTAT1] &= ~R.ISTAT1_SRUN

    # --- register file --------------------------------------------------------------------
    def reg_read(self, off: int) -> int:
        r = self.r
        if trace.enabled:
            trace.emit("lsi.reg_read", reg=off)
        if off == R.DSTAT:
            v = r[R.DSTAT] | R.DSTAT_DFE
            r[R.DSTAT] = 0
            self._update_irq()
            return v
        if off in (R.SIST0, R.SIST1):
            v = r[off]
            r[off] = 0
            self._update_irq()
            return v
        if off == R.CTEST2:
            v = r[R.CTEST2] | R.CTEST2_DACK | R.CTEST2_CM
            if r[R.ISTAT0] & R.ISTAT0_SIGP:       # reading CTEST2 clears SIGP (§5, CTEST2)
                r[R.ISTAT0] &= ~R.ISTAT0_SIGP
                v |= R.CTEST2_SIGP
            return v
        if off == R.SSTAT2:
            return 0 if self.bus.connected else 0x02
        if off == R.SBDL:
            return self.bus.msgin[0] if self.bus.phase == Phase.MSG_IN and self.bus.msgin else 0
        if off == R.CTEST0:
            return 0xFF
        return r[off]

    def reg_write(self, off: int, val: int) -> None:
        r = self.r
        if trace.enabled:
            trace.emit("lsi.reg_write", reg=off, value=val)
        if off in (R.DSTAT, R.SSTAT0, R.SSTAT1, R.SSTAT2, R.SIST0, R.SIST1, R.SSID, R.SBCL,
                   R.ISTAT1, R.CTEST0, R.CTEST1, R.STEST4, R.SIDL, R.SBDL, R.SBDL + 1):
            return                                  # read-only
        if off == R.SCNTL1:
            r[off] = (val & ~R.SCNTL1_SST) & ~R.SCNTL1_CON | (r[off] & R.SCNTL1_CON)
            if val & R.SCNTL1_RST:
                if not r[R.SSTAT0] & R.SSTAT0_RST:
                    self.scsi_bus_reset()
            else:
                r[R.SSTAT0] &= ~R.SSTAT0_RST
            return
        if off == R.SDID:
            r[off] = val & 0x0F
            return
        if off == R.ISTAT0:
            r[off] = (r[off] & 0x0F) | (val & 0xF0)
            if val & R.ISTAT0_INTF:                 # writing 1 clears INTF
                r[off] &= ~R.ISTAT0_INTF
            r[off] &= ~R.ISTAT0_ABRT
            if val & R.ISTAT0_SRST:
                self.reset()
                return
            if val & R.ISTAT0_ABRT:
                self.dma_interrupt(R.DSTAT_ABRT)
            self._update_irq()
            if val & R.ISTAT0_SIGP and self.waiting_reselect:
                self.waiting_reselect = False
                self.dsp = self.get32(R.DNAD)       # WAIT RESELECT's alternate address
                self.run()
            return
        if off == R.CTEST2:
            r[off] = val & 0x08
            return
        if off == R.CTEST3:
            r[off] = val & 0x0F
            return
        if off == R.DCNTL:
            r[off] = val & ~(R.DCNTL_PFF | R.DCNTL_STD)
            if val & R.DCNTL_STD and not self.running:
                self.start()
            return
        r[off] = val
        if off == R.DSP + 3:                        # writing DSP's last byte starts SCRIPTS
            if not r[R.DMODE] & R.DMODE_MAN and not self.running:
                self.start()
        elif off in (R.DIEN, R.SIEN0, R.SIEN1):
            self._update_irq()
        elif off == R.STIME1 and val & 0x0F:
            self.scsi_interrupt(sist1=R.SIST1_GEN)  # general purpose timer: expires at once

    def scsi_bus_reset(self) -> None:
        """SCNTL1 RST: every target drops its nexuses and reports a unit attention."""
        self._cancel_all(reset_disks=True)
        self._bus_free()
        self.r[R.SSTAT0] |= R.SSTAT0_RST
        self.scsi_interrupt(sist0=R.SIST0_RST)

    # --- SCRIPTS start ------------------------------------------------------------------------
    def start(self) -> None:
        self.running = True
        self.waiting_reselect = False
        self.r[R.ISTAT1] |= R.ISTAT1_SRUN
        self.run()

    def run(self) -> None:
        """Execute SCRIPTS until they halt, wait, or the instruction budget runs out.

        Never re-entered: a register write made by the script itself (a memory
        move or store into this chip's registers) that would start SCRIPTS only
        changes DSP; the running loop continues from there (the CVE-2023-0330
        class of bug is recursion through such DMA)."""
        if self._executing:
            return
        from .scripts import execute
        self._executing = True
        try:
            execute(self, self.INSN_BUDGET)
        finally:
            self._executing = False

    # --- DMA ----------------------------------------------------------------------------------
    def _bar_hit(self, index: int, addr: int, length: int) -> int | None:
        bar = self.bars[index]
        base = bar.mapped_at if bar is not None else None
        if base is not None and base <= addr and addr + length <= base + bar.size:
            return addr - base
        return None

    def _is_own_regs(self, addr: int, length: int) -> int | None:
        off = self._bar_hit(1, addr, length)
        if off is not None and off + length <= R.REG_SIZE:
            return off
        return None

    def view(self, addr: int, length: int) -> memoryview:
        """Guest memory (or this chip's SCRIPTS RAM) for a DMA; raises DMAError elsewhere."""
        off = self._bar_hit(2, addr, length)
        if off is not None:
            return memoryview(self.script_ram)[off:off + length]
        if addr > 0xFFFFFFFF or length < 0:
            raise DMAError(addr, length)
        return self.dma(addr, length)

    def mem_read(self, addr: int, length: int) -> bytes:
        """Read for SCRIPTS fetches, table entries, memory moves and loads.

        A read of this chip's own register window is served as register reads
        (with their side effects), never through the bus, so it cannot recurse."""
        off = self._is_own_regs(addr, length)
        if off is not None:
            return bytes(self.reg_read(off + i) for i in range(length))
        return bytes(self.view(addr, length))

    def mem_write(self, addr: int, data: bytes) -> None:
        off = self._is_own_regs(addr, len(data))
        if off is not None:
            for i, b in enumerate(data):
                self.reg_write(off + i, b)
            return
        self.view(addr, len(data))[:] = data

    def read32(self, addr: int) -> int:
        mem = self.machine.memory if self.machine is not None else None
        if mem is not None and 0 <= addr and addr + 4 <= mem.size and self.command & CMD_BUS_MASTER:
            return _U32.unpack_from(mem.buf, addr)[0]    # the common case: RAM, no copy
        return int.from_bytes(self.mem_read(addr, 4), "little")

    def fetch(self, addr: int) -> tuple[int, int]:
        """The two words of an instruction at ``addr`` (SCRIPTS fetch)."""
        mem = self.machine.memory if self.machine is not None else None
        if mem is not None and 0 <= addr and addr + 8 <= mem.size and self.command & CMD_BUS_MASTER:
            return _U32X2.unpack_from(mem.buf, addr)
        return _U32X2.unpack(self.mem_read(addr, 8))

    # --- the SCSI bus (target side) ---------------------------------------------------------
    def set_phase(self, phase: int) -> None:
        b = self.bus
        b.phase = phase
        r = self.r
        r[R.SSTAT1] = (r[R.SSTAT1] & ~R.PHASE_MASK) | phase
        r[R.SBCL] = (r[R.SBCL] & ~R.PHASE_MASK) | phase | R.SBCL_REQ

    def _bus_free(self) -> None:
        b = self.bus
        b.connected = False
        b.current = None
        b.msgin.clear()
        b.phase = Phase.DATA_OUT
        self.r[R.SCNTL1] &= ~R.SCNTL1_CON
        self.r[R.SSTAT1] &= ~R.PHASE_MASK
        self.r[R.SBCL] = 0
        self.r[R.SOCL] &= ~R.SOCL_ATN
        self._update_irq()

    def _msg_in(self, msgs: bytes, then: str) -> None:
        self.bus.msgin += msgs
        self.bus.after_msgin = then
        self.set_phase(Phase.MSG_IN)

    def select(self, target: int, atn: bool) -> bool:
        """Arbitrate and select ``target``; False (and STO) if nobody answers."""
        r = self.r
        r[R.SDID] = target
        r[R.SSTAT0] |= R.SSTAT0_WOA
        if target == (r[R.SCID] & 0x0F) or target not in self.targets:
            if trace.enabled:
                trace.emit("lsi.select_timeout", target=target)
            self.scsi_interrupt(sist1=R.SIST1_STO)
            self._bus_free()
            return False
        b = self.bus
        b.connected = True
        b.target, b.lun, b.tag, b.disc_priv, b.current = target, 0, None, False, None
        b.msgin.clear()
        r[R.SCNTL1] |= R.SCNTL1_CON
        r[R.SBCL] |= R.SBCL_BSY
        if atn:
            r[R.SOCL] |= R.SOCL_ATN
            r[R.SBCL] |= R.SBCL_ATN
        self.set_phase(Phase.MSG_OUT if atn else Phase.COMMAND)
        self._update_irq()
        if trace.enabled:
            trace.emit("lsi.select", target=target, atn=atn)
        return True

    def set_atn(self) -> None:
        """SET ATN: a connected target answers with MESSAGE OUT at the next phase."""
        self.r[R.SOCL] |= R.SOCL_ATN
        self.r[R.SBCL] |= R.SBCL_ATN
        if self.bus.connected:
            self.set_phase(Phase.MSG_OUT)

    def wait_disconnect(self) -> None:
        b = self.bus
        if not b.connected:
            return
        if b.current is not None:
            # The initiator dropped a target that still had work to do.
            b.current.req.cancel()
            self._bus_free()
            self.scsi_interrupt(sist0=R.SIST0_UDC)
            return
        self._bus_free()

    def _data_phase_for(self, nx: Nexus) -> None:
        req = nx.req
        if req.done or nx.pos >= req.length:
            self._to_status()
        else:
            self.set_phase(Phase.DATA_IN if req.direction is Direction.IN else Phase.DATA_OUT)

    def _to_status(self) -> None:
        nx = self.bus.current
        if nx is not None and not nx.req.done:
            nx.req.finish()
            if nx.req.stopped:
                self._stalled_finish = nx
                raise Stall(rewind=False)
        self.set_phase(Phase.STATUS)

    def resume(self) -> None:
        """The machine resumed after a stop (werror/rerror=stop): retry what was parked
        and let SCRIPTS continue (QEMU's request restart on resume)."""
        for disk in self.targets.values():
            disk.backend.resume()
        if not self.stalled:
            return
        self.stalled = False
        nx, self._stalled_finish = self._stalled_finish, None
        if nx is not None:                       # the data phase was over: complete it
            nx.req.retry()
            if nx.req.stopped:
                self.stalled, self._stalled_finish = True, nx
                return
            self.set_phase(Phase.STATUS)
            if self.dbc:
                self.scsi_interrupt(sist0=R.SIST0_MA)
                return
        elif self.bus.current is not None:       # a data piece: the block move runs again
            self.bus.current.req.stopped = False
        if trace.enabled:
            trace.emit("lsi.resume", dsp=self.dsp)
        self.run()

    # phase handlers, called by block moves ------------------------------------------------
    def phase_msg_out(self, data: bytes) -> None:
        """Interpret MESSAGE OUT bytes (SPI-5 §4.5)."""
        b = self.bus
        i, n = 0, len(data)
        self.r[R.SOCL] &= ~R.SOCL_ATN
        self.r[R.SBCL] &= ~R.SBCL_ATN
        next_phase = Phase.COMMAND
        while i < n:
            m = data[i]
            i += 1
            self.r[R.SFBR] = m
            if m & R.MSG_IDENTIFY:
                b.lun = m & 0x07
                b.disc_priv = bool(m & R.IDENTIFY_DISCPRIV)
                next_phase = Phase.COMMAND
            elif m in (R.MSG_SIMPLE_TAG, R.MSG_HEAD_TAG, R.MSG_ORDERED_TAG):
                if i < n:
                    b.tag = data[i]
                    i += 1
            elif m == R.MSG_EXTENDED:
                if i < n:
                    ln = data[i]
                    i += 1 + (ln or 256)          # SDTR/WDTR/PPR: async narrow is kept
            elif m in (R.MSG_ABORT, R.MSG_CLEAR_QUEUE, R.MSG_ABORT_TAG, R.MSG_BUS_DEVICE_RESET):
                if trace.enabled:
                    trace.emit("lsi.task_management", msg=m, target=b.target, lun=b.lun)
                if m == R.MSG_BUS_DEVICE_RESET:
                    self._cancel_all(reset_disks=True, target=b.target)
                elif m == R.MSG_ABORT_TAG:
                    cur = b.current
                    if cur is not None:
                        cur.req.cancel()
                        b.current = None
                    else:
                        self._cancel_tag(b.target, b.lun, b.tag)
                else:
                    self._cancel_all(reset_disks=False, target=b.target, lun=b.lun)
                self._bus_free()
                return
            elif m in (R.MSG_NOP, R.MSG_REJECT, R.MSG_INITIATOR_ERROR, R.MSG_PARITY_ERROR):
                pass
            else:
                self._msg_in(bytes([R.MSG_REJECT]), "command" if b.current is None else "data")
                return
        if b.current is not None:
            self._data_phase_for(b.current)
        else:
            self.set_phase(next_phase)

    def _cancel_tag(self, target: int, lun: int, tag: int | None) -> None:
        keep = []
        for nx in self.disconnected:
            if nx.target == target and nx.lun == lun and nx.tag == tag:
                nx.req.cancel()
                if nx.event is not None and self.machine is not None:
                    self.machine.events.cancel(nx.event)
            else:
                keep.append(nx)
        self.disconnected = keep

    def phase_command(self, cdb: bytes) -> None:
        b = self.bus
        disk = self.targets[b.target]
        req = disk.request(cdb, b.lun)
        if req.stopped:
            raise Stall(rewind=True)             # the COMMAND block move runs again on resume
        nx = Nexus(b.target, b.lun, b.tag, req)
        b.current = nx
        if trace.enabled:
            trace.emit("lsi.cmd", target=b.target, lun=b.lun, cdb=cdb.hex(), length=req.length)
        if req.done:
            self._to_status()
        elif req.direction is Direction.IN and req.is_medium_read and b.disc_priv \
                and self.machine is not None:
            # Disconnect while the "medium" seeks; reselect when the data is ready.
            nx.ready = False
            b.current = None
            self.disconnected.append(nx)
            nx.event = self.machine.events.schedule(self.machine.events.jitter(2, 6),
                                                     self._data_ready, nx)
            self._msg_in(bytes([R.MSG_SAVE_DATA_POINTER, R.MSG_DISCONNECT]), "disconnect")
        else:
            self._data_phase_for(nx)

    def _data_ready(self, nx: Nexus) -> None:
        nx.ready = True
        nx.event = None
        self.try_reselect()

    def try_reselect(self) -> bool:
        """A target with data ready reselects when the bus is free and the script waits
        (WAIT RESELECT), or raises RSL when reselection interrupts are enabled."""
        b = self.bus
        if b.connected:
            return False
        nx = next((n for n in self.disconnected if n.ready), None)
        if nx is None:
            return False
        r = self.r
        irq_on_rsl = bool(r[R.SIEN0] & R.SIST0_RSL) and bool(r[R.SCID] & R.SCID_RRE)
        if not self.waiting_reselect:
            if not irq_on_rsl or self.running or r[R.ISTAT0] & (R.ISTAT0_SIP | R.ISTAT0_DIP):
                return False
        self.disconnected.remove(nx)
        b.connected = True
        b.target, b.lun, b.tag, b.current = nx.target, nx.lun, nx.tag, nx
        b.msgin.clear()
        r[R.SCNTL1] |= R.SCNTL1_CON
        r[R.SSID] = 0x80 | nx.target
        if not r[R.DCNTL] & R.DCNTL_COM:
            r[R.SFBR] = 1 << nx.target
        msgs = bytes([R.MSG_IDENTIFY | nx.lun])
        if nx.tag is not None:
            msgs += bytes([R.MSG_SIMPLE_TAG, nx.tag])
        self._msg_in(msgs, "data")
        if trace.enabled:
            trace.emit("lsi.reselect", target=nx.target, lun=nx.lun)
        if self.waiting_reselect:
            self.waiting_reselect = False
            self.run()
        else:
            self.scsi_interrupt(sist0=R.SIST0_RSL)
        return True

    def wait_reselect(self, alt: int) -> None:
        """WAIT RESELECT: take a pending reselection, or jump to ``alt`` on SIGP, or wait."""
        r = self.r
        self.set32(R.DNAD, alt)
        if r[R.ISTAT0] & R.ISTAT0_SIGP:
            self.dsp = alt
            return
        if self.bus.connected:
            self.dsp = alt
            return
        self.waiting_reselect = True
        if not self.try_reselect():
            self.waiting_reselect = True       # halt here until a target reselects or SIGP

    def phase_status(self) -> int:
        nx = self.bus.current
        status = nx.req.status if nx is not None and nx.req.status is not None else 0x02
        self.bus.current = None
        self._msg_in(bytes([R.MSG_COMMAND_COMPLETE]), "disconnect")
        return status

    def after_msg_in(self) -> None:
        b = self.bus
        then = b.after_msgin
        if then == "disconnect":
            self._bus_free()
        elif then == "command":
            self.set_phase(Phase.COMMAND)
        elif b.current is not None:
            self._data_phase_for(b.current)
        else:
            self.set_phase(Phase.COMMAND)
