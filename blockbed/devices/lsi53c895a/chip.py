"""The LSI53C895A: PCI function, register file, interrupts, DMA, SCRIPTS start.

The chip is the *initiator* on a SCSI bus whose targets are SCSI disks; the
bus protocol lives in :mod:`.bus` (a mixin), the SCRIPTS processor in
:mod:`.scripts`.

Interrupts (manual §2.2.4): DSTAT (DMA), SIST0/SIST1 (SCSI) with the DIEN
and SIEN0/SIEN1 masks; ISTAT0 shows DIP/SIP/INTF/CON.  Fatal conditions halt
SCRIPTS even when masked; CMP, SEL, RSL, GEN, HTH halt only when enabled.
"""
from __future__ import annotations

import struct

from ... import trace
from ...machine.memory import DMAError
from ...machine.pci import CMD_BUS_MASTER, COMMAND, BarKind, PCIDevice
from ..scsi import ScsiDisk
from . import regs as R
from .bus import BusState, Nexus, ScsiBus, Stall

__all__ = ["LSI53C895A", "MAX_TARGETS", "Stall", "Nexus"]

_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_DCMD_SHIFT = 8 * (R.DCMD - R.DBC)     # DCMD is the top byte of the DBC dword
MAX_TARGETS = 7            # IDs 0..6; 7 is the initiator (QEMU's LSI_MAX_DEVS)

# Registers whose read has a side effect or is computed (reg_read), and those whose
# write is masked, ignored or acts (reg_write); every other byte is plain storage.
_READ_ACTS = frozenset({R.DSTAT, R.SIST0, R.SIST1, R.CTEST2, R.SSTAT2, R.SBDL, R.CTEST0})
_READ_ONLY = frozenset({R.DSTAT, R.SSTAT0, R.SSTAT1, R.SSTAT2, R.SIST0, R.SIST1, R.SSID,
                        R.SBCL, R.ISTAT1, R.CTEST0, R.CTEST1, R.STEST4, R.SIDL, R.SBDL,
                        R.SBDL + 1})
_WRITE_ACTS = _READ_ONLY | {R.SCNTL1, R.SDID, R.ISTAT0, R.CTEST2, R.CTEST3, R.DCNTL,
                            R.DSP + 3, R.DIEN, R.SIEN0, R.SIEN1, R.STIME1}
_PLAIN_READ = bytes(0 if o in _READ_ACTS else 1 for o in range(R.REG_SIZE))
_PLAIN_WRITE = bytes(0 if o in _WRITE_ACTS else 1 for o in range(R.REG_SIZE))


def _plain(table: bytes, offset: int, size: int) -> bool:
    """Whether the ``size`` bytes from ``offset`` are all plain (no wrap-around)."""
    if offset + size > len(table):
        return False
    if size == 1:
        return bool(table[offset])
    return table.find(0, offset, offset + size) < 0


class _RegWindow:
    """A BAR onto the register file: byte accesses, multi-byte split low to high.

    An access whose bytes are all plain storage (no read or write side effect:
    :data:`_PLAIN_READ`, :data:`_PLAIN_WRITE`) is one load or store of the file,
    the same result as byte by byte; the rest go through reg_read/reg_write."""

    def __init__(self, chip: "LSI53C895A"):
        self.chip = chip

    def read(self, offset: int, size: int) -> int:
        o = offset & 0xFF                   # the memory BAR mirrors the 256-byte file
        if not trace.enabled and _plain(_PLAIN_READ, o, size):
            return int.from_bytes(self.chip.r[o:o + size], "little")
        v = 0
        for i in range(size):
            v |= self.chip.reg_read((offset + i) & 0xFF) << (8 * i)
        return v

    def write(self, offset: int, size: int, value: int) -> None:
        o = offset & 0xFF
        if not trace.enabled and _plain(_PLAIN_WRITE, o, size):
            self.chip.r[o:o + size] = value.to_bytes(size, "little")
            return
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


class LSI53C895A(ScsiBus, PCIDevice):
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
        self.sel_timeout_pending = False      # SELECT timed out, STO not yet delivered
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
        return _U32.unpack_from(self.r, off)[0]

    def set32(self, off: int, v: int) -> None:
        _U32.pack_into(self.r, off, v & 0xFFFFFFFF)

    # DSP is read and written for every SCRIPTS instruction: no helper call in between.
    @property
    def dsp(self) -> int:
        return _U32.unpack_from(self.r, R.DSP)[0]

    @dsp.setter
    def dsp(self, v: int) -> None:
        _U32.pack_into(self.r, R.DSP, v & 0xFFFFFFFF)

    @property
    def dbc(self) -> int:
        return _U32.unpack_from(self.r, R.DBC)[0] & R.DBC_MASK

    @dbc.setter
    def dbc(self, v: int) -> None:
        # DBC is the dword's low 24 bits; its top byte is DCMD, which stays.
        r = self.r
        _U32.pack_into(r, R.DBC, (v & R.DBC_MASK) | r[R.DCMD] << _DCMD_SHIFT)

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
        self.sel_timeout_pending = False
        self._stalled_finish = None
        self.bus = BusState()
        self._update_irq()

    def reset(self) -> None:
        self.soft_reset()
        for d in self.targets.values():
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
        if off not in _READ_ACTS:
            return r[off]
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
            return 0 if self.bus.connected else R.SSTAT2_LDSC
        if off == R.SBDL:
            return self.bus.msgin[0] if self.bus.phase == R.Phase.MSG_IN and self.bus.msgin else 0
        if off == R.CTEST0:
            return 0xFF
        return r[off]

    def reg_write(self, off: int, val: int) -> None:
        r = self.r
        if trace.enabled:
            trace.emit("lsi.reg_write", reg=off, value=val)
        if off not in _WRITE_ACTS:
            r[off] = val
            return
        if off in _READ_ONLY:
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
            r[off] = val & R.SDID_ENC
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
            r[off] = val & R.CTEST2_PCICIE
            return
        if off == R.CTEST3:
            r[off] = val & R.CTEST3_WRITABLE
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
        elif off == R.STIME1 and val & R.STIME1_GEN:
            self.scsi_interrupt(sist1=R.SIST1_GEN)  # general purpose timer: expires at once

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

    def view(self, addr: int, length: int, write: bool = False) -> memoryview:
        """Guest memory (or this chip's SCRIPTS RAM) for a DMA; raises DMAError elsewhere.
        ``write``: the chip will write the range (see PCIDevice.dma)."""
        off = self._bar_hit(2, addr, length)
        if off is not None:
            return memoryview(self.script_ram)[off:off + length]
        if addr > 0xFFFFFFFF or length < 0:
            raise DMAError(addr, length)
        return self.dma(addr, length, write)

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
        self.view(addr, len(data), write=True)[:] = data

    def read32(self, addr: int) -> int:
        mem = self.machine.memory if self.machine is not None else None
        if mem is not None and 0 <= addr and addr + 4 <= mem.size and self.command & CMD_BUS_MASTER:
            return _U32.unpack_from(mem.buf, addr)[0]    # the common case: RAM, no copy
        return int.from_bytes(self.mem_read(addr, 4), "little")

    def read_struct(self, addr: int, st: struct.Struct) -> tuple:
        """A structure the chip reads by DMA (a SCRIPTS fetch, a block move's table
        entry): unpacked from guest RAM without a copy in the common case, else
        through :meth:`mem_read` (SCRIPTS RAM, the chip's own registers, DMAError)."""
        mem = self.machine.memory if self.machine is not None else None
        if mem is not None and 0 <= addr and addr + st.size <= mem.size and \
                self.config[COMMAND] & CMD_BUS_MASTER:
            return st.unpack_from(mem.buf, addr)
        return st.unpack(self.mem_read(addr, st.size))

    def fetch(self, addr: int) -> tuple[int, int]:
        """The two words of an instruction at ``addr`` (SCRIPTS fetch)."""
        return self.read_struct(addr, _U32X2)