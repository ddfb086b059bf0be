"""ICH9-compatible AHCI host bus adapter (8086:2922, class 01.06.01, ABAR in BAR5).

Reference: Serial ATA AHCI 1.3 — §3.1 generic host control registers, §3.3
port registers, §4.2 received-FIS area, command list, command table and PRDT,
§5 the command-processing model (non-queued and NCQ), §6.1 error handling,
§10.4 resets.  QEMU's hw/ide/ahci.c was read for the ICH9 PCI identity and
for where QEMU departs from the spec (noted below and in docs/ata.md).

Model
-----
A guest write to PxCI (with PxCMD.ST set) makes the port fetch the newly
issued command headers and FISes at once; data moves and the command
completes in an event a few virtual ticks later, so polling guests see
PxCI/PxSACT stay set for a while and NCQ commands finish out of order
(seeded jitter).  The block I/O happens at completion time: a command that
is cancelled first (PxCMD.ST cleared, COMRESET, HBA reset) never touches the
disk.

- Non-queued commands run one at a time in slot order; the final status is a
  D2H Register FIS (or, for PIO data-in, the PIO Setup FIS's E_Status),
  PRDBC gets the byte count, PxCI is cleared, PxIS.DHRS / PSS are set.
- NCQ (READ/WRITE FPDMA QUEUED): the device accepts the command (PxCI clears
  at once), a DMA Setup FIS names the tag when its data moves, and a Set
  Device Bits FIS clears its PxSACT bit.  The FUA bit is honoured.
- Errors: a command that ends with ERR sets PxIS.TFES; the port halts with
  PxCI (and, for NCQ, PxSACT) bits left set until software clears PxCMD.ST
  (§6.1.2 fatal errors).  NCQ errors also fill the NCQ Command Error log
  (READ LOG EXT page 10h).  A DMA the host bus refuses (bus mastering off,
  address outside RAM) sets PxIS.HBFS; a PRDT that describes fewer bytes than
  the command moves sets PxIS.OFS; a command FIS that is not a Register H2D
  FIS sets PxIS.IFS and PxSERR.ERR.P — all fatal, all leave the host healthy.
- Resets: GHC.HR (HBA reset), PxSCTL.DET=1→0 (COMRESET), PxCMD.ST 1→0 all
  cancel outstanding commands.  After a reset the device's signature D2H FIS
  arrives when FIS receive is enabled (PxCMD.FRE), as in QEMU.
- Interrupts: INTx level = any enabled port interrupt and GHC.IE; MSI (one
  vector) is signalled on each new enabled port interrupt.

Departures from QEMU 7.2 on purpose: VS reads 1.3 (QEMU says 1.0), a failed
command leaves its PxCI bit set as §6.1.2 says, WRITE DMA FUA EXT works and
the NCQ FUA bit makes the write durable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import trace
from ..machine.memory import DMAError
from ..machine.pci import BarKind, PCIDevice
from .ata import AtaDrive, Command, DriveConfig, Outputs, Protocol, TaskFile
from .ata.config import default_serial, drive_config, spec_option
from .ata.regs import (ER_ABRT, SIGNATURE_ATA, ST_BSY, ST_DRDY, ST_DRQ, ST_DSC, ST_ERR)

if TYPE_CHECKING:
    from ..machine.board import Machine

NUM_PORTS = 6
ABAR_SIZE = 0x1000

# Generic host control (§3.1)
CAP, GHC, IS, PI, VS, CCC_CTL, CCC_PORTS, EM_LOC, EM_CTL, CAP2, BOHC = (
    0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28)
CAP_S64A, CAP_SNCQ, CAP_SCLO, CAP_SAM = 1 << 31, 1 << 30, 1 << 24, 1 << 18
CAP_ISS_GEN1 = 1 << 20
GHC_HR, GHC_IE, GHC_AE = 1 << 0, 1 << 1, 1 << 31
VERSION_1_3 = 0x00010300

# Port registers (§3.3), offsets within the port's 0x80 bytes
PORT_BASE, PORT_SIZE = 0x100, 0x80
P_CLB, P_CLBU, P_FB, P_FBU, P_IS, P_IE, P_CMD, P_TFD, P_SIG, P_SSTS, P_SCTL, P_SERR, \
    P_SACT, P_CI, P_SNTF, P_FBS = (0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x20, 0x24,
                                   0x28, 0x2C, 0x30, 0x34, 0x38, 0x3C, 0x40)
# PxIS bits
IS_DHRS, IS_PSS, IS_DSS, IS_SDBS, IS_UFS, IS_DPS, IS_PCS = 1, 2, 4, 8, 16, 32, 64
IS_OFS, IS_INFS, IS_IFS, IS_HBDS, IS_HBFS, IS_TFES = 1 << 24, 1 << 26, 1 << 27, 1 << 28, 1 << 29, 1 << 30
IS_RWC = 0xFDC000AF & ~IS_PCS          # write-1-to-clear bits (PCS, PRCS reflect PxSERR)
IE_MASK = 0x7DC0007F                   # CPDE and DMPE are RO 0 (no cold/mechanical presence)
FATAL = IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_OFS
# PxCMD bits
CMD_ST, CMD_SUD, CMD_POD, CMD_CLO, CMD_FRE = 1, 2, 4, 8, 16
CMD_FR, CMD_CR = 1 << 14, 1 << 15
CMD_ATAPI, CMD_DLAE = 1 << 24, 1 << 25
CMD_RW = CMD_ST | CMD_FRE | CMD_ATAPI | CMD_DLAE
# PxSERR bits
SERR_ERR_P, SERR_DIAG_X = 1 << 10, 1 << 26
# PxSSTS: DET=3 (device present, phy up), SPD=1 (Gen1), IPM=1 (active)
SSTS_UP = 0x113

# FIS types and received-FIS area offsets (§4.2.1)
FIS_REG_H2D, FIS_REG_D2H, FIS_DMA_SETUP, FIS_PIO_SETUP, FIS_SDB = 0x27, 0x34, 0x41, 0x5F, 0xA1
RFIS_DSFIS, RFIS_PSFIS, RFIS_RFIS, RFIS_SDBFIS = 0x00, 0x20, 0x40, 0x58

NONQUEUED_DELAY = 2      # ticks from fetch to completion of a non-queued command
NCQ_DELAY = (1, 12)      # jitter range for NCQ completions (out of order)

_HDR = struct.Struct("<IIQ")      # DW0 flags/PRDTL, DW1 PRDBC, CTBA (64-bit)
_PRD = struct.Struct("<QII")      # DBA (64-bit), reserved, DW3 DBC/I


class HostBusError(Exception):
    """A DMA the host bus refused: becomes PxIS.HBFS."""


class PrdtTooShort(Exception):
    """The PRDT describes fewer bytes than the command moves: becomes PxIS.OFS."""


@dataclass
class _Ncq:
    slot: int
    cmd: Command
    gen: int


class AhciPort:
    """One port: its registers, the attached drive, the commands in flight."""

    def __init__(self, hba: "AhciController", index: int):
        self.hba = hba
        self.index = index
        self.drive: AtaDrive | None = None
        self.clb = self.clbu = self.fb = self.fbu = 0
        self.dps = False
        self.reset_registers()

    # --- reset ---------------------------------------------------------------------
    def reset_registers(self) -> None:
        """Values after an HBA reset (AHCI 1.3 §3.3; PxCLB/PxFB are not reset)."""
        self.is_ = 0
        self.ie = 0
        self.cmd = CMD_SUD | CMD_POD     # SUD RO 1 (CAP.SSS=0), POD RO 1 (no cold presence)
        self.sctl = 0
        self.serr = 0
        self.link_reset(initial=True)

    def link_reset(self, initial: bool = False) -> None:
        """COMRESET / port reset: cancel everything, the device will send its signature."""
        self.gen = getattr(self, "gen", 0) + 1
        self.tfd = 0x7F
        self.sig = 0xFFFFFFFF
        self.sact = 0
        self.ci = 0
        self.busy_slot: int | None = None
        self.ncq: dict[int, _Ncq] = {}
        self.halted = False
        self.srst = False
        self.stopped: list[Any] = []
        self.sig_pending = self.drive is not None
        if self.drive is not None:
            self.drive.reset()
        if not initial:
            self.serr |= SERR_DIAG_X   # COMINIT received (§3.3.12)
            self.deliver_signature()

    @property
    def ssts(self) -> int:
        if self.drive is None or self.sctl & 0xF == 1:
            return 0
        return SSTS_UP

    def deliver_signature(self) -> None:
        """The device's first D2H FIS after a reset (ATA signature), once FIS receive is on."""
        if not self.sig_pending or not self.cmd & CMD_FRE or self.sctl & 0xF == 1:
            return
        self.sig_pending = False
        out = Outputs(status=ST_DRDY | ST_DSC, error=0x01, lba=SIGNATURE_ATA >> 8 & 0xFFFFFF,
                      count=SIGNATURE_ATA & 0xFF)
        self.sig = SIGNATURE_ATA
        self.post_d2h(out, interrupt=True)

    # --- register access ---------------------------------------------------------------
    def read(self, off: int) -> int:
        if off == P_CLB: return self.clb
        if off == P_CLBU: return self.clbu
        if off == P_FB: return self.fb
        if off == P_FBU: return self.fbu
        if off == P_IS: return self.is_ | (IS_PCS if self.serr & SERR_DIAG_X else 0)
        if off == P_IE: return self.ie
        if off == P_CMD: return self.cmd
        if off == P_TFD: return self.tfd
        if off == P_SIG: return self.sig
        if off == P_SSTS: return self.ssts
        if off == P_SCTL: return self.sctl
        if off == P_SERR: return self.serr
        if off == P_SACT: return self.sact
        if off == P_CI: return self.ci
        return 0

    def write(self, off: int, val: int) -> None:
        if trace.enabled:
            trace.emit("ahci.port_write", port=self.index, offset=off, value=val)
        if off == P_CLB:
            self.clb = val & ~0x3FF & 0xFFFFFFFF     # 1 KiB aligned
        elif off == P_CLBU:
            self.clbu = val
        elif off == P_FB:
            self.fb = val & ~0xFF & 0xFFFFFFFF       # 256-byte aligned
        elif off == P_FBU:
            self.fbu = val
        elif off == P_IS:
            self.is_ &= ~(val & IS_RWC)
            self.hba.update_irq()
        elif off == P_IE:
            self.ie = val & IE_MASK
            self.hba.update_irq()
        elif off == P_CMD:
            self.write_cmd(val)
        elif off == P_SCTL:
            old = self.sctl & 0xF
            self.sctl = val & 0xFFF
            new = self.sctl & 0xF
            if old != 1 and new == 1:
                self.tfd, self.sig = 0x7F, 0xFFFFFFFF   # interface in reset
                self.cancel_all()
            elif old == 1 and new != 1:
                self.link_reset()
                self.hba.update_irq()
        elif off == P_SERR:
            self.serr &= ~val
        elif off == P_SACT:
            if self.cmd & CMD_ST:
                self.sact |= val & self.hba.slot_mask
        elif off == P_CI:
            if self.cmd & CMD_ST:
                self.ci |= val & self.hba.slot_mask
                self.process()

    def write_cmd(self, val: int) -> None:
        old = self.cmd
        self.cmd = (old & ~CMD_RW) | (val & CMD_RW)
        if val & CMD_CLO and not old & CMD_ST:
            self.tfd &= ~(ST_BSY | ST_DRQ)     # command list override (§3.3.7): CLO self-clears
        if self.cmd & CMD_FRE:
            self.cmd |= CMD_FR
            self.deliver_signature()
        else:
            self.cmd &= ~CMD_FR
        if self.cmd & CMD_ST and not old & CMD_ST:
            self.cmd |= CMD_CR
            self.process()
        elif not self.cmd & CMD_ST and old & CMD_ST:
            # §3.3.7 PxCMD.ST: clearing it clears PxCI, PxSACT and PxCMD.CCS; CR follows.
            self.cancel_all()
            self.ci = self.sact = 0
            self.cmd &= ~(CMD_CR | 0x1F00)
            self.halted = False

    def cancel_all(self) -> None:
        self.gen += 1
        self.busy_slot = None
        self.ncq.clear()
        self.stopped.clear()

    # --- memory helpers ------------------------------------------------------------------
    def _dma(self, addr: int, length: int) -> memoryview:
        try:
            return self.hba.dma(addr, length)
        except DMAError as exc:
            raise HostBusError(str(exc)) from None

    def _fis_area(self, off: int, length: int) -> memoryview | None:
        if not self.cmd & CMD_FRE:
            return None
        return self._dma(((self.fbu << 32) | self.fb) + off, length)

    # --- FISes to the host ---------------------------------------------------------------
    def post_d2h(self, out: Outputs, interrupt: bool = True, tf: TaskFile | None = None) -> None:
        fis = bytearray(20)
        lba = out.lba if out.lba is not None else (tf.lba if tf else 0)
        count = out.count if out.count is not None else (tf.count if tf else 0)
        fis[0], fis[1], fis[2], fis[3] = FIS_REG_D2H, 0x40 if interrupt else 0, out.status, out.error
        fis[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
        fis[7] = tf.device if tf else 0
        fis[8:11] = ((lba >> 24) & 0xFFFFFF).to_bytes(3, "little")
        fis[12:14] = (count & 0xFFFF).to_bytes(2, "little")
        self.tfd = (out.error << 8) | out.status
        try:
            area = self._fis_area(RFIS_RFIS, 20)
        except HostBusError:
            self.host_bus_fatal()
            return
        if area is not None:
            area[:] = fis
        bits = (IS_DHRS if interrupt else 0) | (IS_TFES if out.status & ST_ERR else 0)
        if bits:
            self.raise_is(bits)

    def post_pio_setup(self, out: Outputs, nbytes: int, to_host: bool, interrupt: bool) -> None:
        fis = bytearray(20)
        fis[0] = FIS_PIO_SETUP
        fis[1] = (0x20 if to_host else 0) | (0x40 if interrupt else 0)
        fis[2] = (out.status & ~ST_BSY) | ST_DRQ     # status while data moves
        fis[3] = out.error
        fis[15] = out.status                         # E_Status: the status after the transfer
        fis[16:18] = (nbytes & 0xFFFF).to_bytes(2, "little")
        try:
            area = self._fis_area(RFIS_PSFIS, 20)
        except HostBusError:
            self.host_bus_fatal()
            return
        if area is not None:
            area[:] = fis
        self.tfd = (out.error << 8) | out.status
        bits = (IS_PSS if interrupt else 0) | (IS_TFES if out.status & ST_ERR else 0)
        if bits:
            self.raise_is(bits)

    def post_dma_setup(self, tag: int, nbytes: int, to_host: bool) -> None:
        fis = bytearray(28)
        fis[0] = FIS_DMA_SETUP
        fis[1] = 0x80 | (0x20 if to_host else 0)     # auto-activate, direction
        struct.pack_into("<Q", fis, 4, tag)          # DMA buffer identifier: the tag
        struct.pack_into("<I", fis, 20, nbytes)
        area = self._fis_area(RFIS_DSFIS, 28)
        if area is not None:
            area[:] = fis

    def post_sdb(self, done: int, out: Outputs) -> None:
        fis = bytearray(8)
        fis[0], fis[1] = FIS_SDB, 0x40
        fis[2] = out.status & 0x77
        fis[3] = out.error
        struct.pack_into("<I", fis, 4, done)
        self.sact &= ~done
        self.tfd = (out.error << 8) | (out.status & 0x77) | (self.tfd & 0x88)
        try:
            area = self._fis_area(RFIS_SDBFIS, 8)
        except HostBusError:
            self.host_bus_fatal()
            return
        if area is not None:
            area[:] = fis
        self.raise_is(IS_SDBS | (IS_TFES if out.status & ST_ERR else 0))

    def raise_is(self, bits: int) -> None:
        self.is_ |= bits
        if bits & FATAL:
            self.halted = True
        self.hba.update_irq(new=bool(bits & self.ie))

    # --- fatal errors ----------------------------------------------------------------------
    def host_bus_fatal(self) -> None:
        if trace.enabled:
            trace.emit("ahci.hbfs", port=self.index)
        self.tfd = (ER_ABRT << 8) | ST_DRDY | ST_ERR
        self.raise_is(IS_HBFS)

    def fatal(self, bit: int, serr: int = 0) -> None:
        self.serr |= serr
        self.tfd = (ER_ABRT << 8) | ST_DRDY | ST_ERR
        self.raise_is(bit)

    # --- command processing ---------------------------------------------------------------
    def process(self) -> None:
        """Fetch the issued commands the port can start now (§5.3 command processing)."""
        if not self.cmd & CMD_ST or self.halted or self.drive is None or self.srst_blocked():
            return
        todo = self.ci & ~self._started_mask()
        slot = 0
        while todo and not self.halted and self.busy_slot is None:
            if not todo >> slot & 1:
                slot += 1
                continue
            todo &= ~(1 << slot)
            try:
                if not self.start(slot):
                    return
            except HostBusError:
                self.host_bus_fatal()
                return
            slot += 1

    def srst_blocked(self) -> bool:
        return False

    def _started_mask(self) -> int:
        return 0 if self.busy_slot is None else 1 << self.busy_slot

    def header(self, slot: int) -> tuple[int, int, memoryview]:
        base = ((self.clbu << 32) | self.clb) + slot * 32
        dw0, _prdbc, ctba = _HDR.unpack(self._dma(base, 16))
        return dw0, ctba & ~0x7F, self._dma(base, 32)

    def start(self, slot: int) -> bool:
        """Begin the command in ``slot``; False when it must wait (NCQ still draining)."""
        dw0, ctba, hdr = self.header(slot)
        cfl = dw0 & 0x1F
        cfis = bytes(self._dma(ctba, 64))
        self.cmd = (self.cmd & ~0x1F00) | (slot << 8)      # PxCMD.CCS
        if cfis[0] != FIS_REG_H2D or cfl < 5:
            if trace.enabled:
                trace.emit("ahci.bad_fis", port=self.index, slot=slot, type=cfis[0], cfl=cfl)
            self.fatal(IS_IFS, SERR_ERR_P)
            return False
        if not cfis[1] & 0x80:
            self.control_fis(slot, cfis)
            return True
        tf = TaskFile(command=cfis[2], features=cfis[3] | (cfis[11] << 8),
                      lba=int.from_bytes(cfis[4:7], "little") | (int.from_bytes(cfis[8:11], "little") << 24),
                      device=cfis[7], count=cfis[12] | (cfis[13] << 8), control=cfis[15])
        decoded = self.drive.decode(tf)
        if trace.enabled:
            from .. import trace_decode as d
            fis = d.h2d_fis(cfis)
            trace.begin("ahci", (self, slot), port=self.index, slot=slot, op=d.op_kind(fis["command"]),
                        header=d.ahci_command_header(dw0, 0, ctba), fis=fis)
            trace.emit("ahci.cmd", port=self.index, slot=slot, cmd=tf.command,
                       ncq=isinstance(decoded, Command) and decoded.protocol.is_ncq)
        if isinstance(decoded, Command) and decoded.protocol.is_ncq:
            return self.start_ncq(slot, decoded)
        if self.ncq:
            return False          # a non-queued command waits until the NCQ queue drains
        self.busy_slot = slot
        self.tfd = (self.tfd & 0xFF00) | ST_BSY | ST_DRDY
        self.hba.machine.events.schedule(NONQUEUED_DELAY, self.complete, self.gen, slot, decoded, tf,
                                         name="ahci.complete")
        return True

    def control_fis(self, slot: int, cfis: bytes) -> None:
        """A Register H2D FIS with C=0 updates the Device Control register: SRST (§10.4.1)."""
        srst = bool(cfis[15] & 0x04)
        self.ci &= ~(1 << slot)
        if srst:
            self.srst = True
            self.tfd = ST_BSY
        elif self.srst:
            self.srst = False
            self.drive.reset()
            self.sig = SIGNATURE_ATA
            self.post_d2h(Outputs(status=ST_DRDY | ST_DSC, error=0x01, lba=0x000001, count=1),
                          interrupt=True)

    def start_ncq(self, slot: int, cmd: Command) -> bool:
        tag = cmd.tag
        self.ci &= ~(1 << slot)              # the device accepted the command (D2H, BSY=0)
        if tag in self.ncq:
            # A tag that is already outstanding: the device aborts (SATA §13.6.?): NCQ error.
            self.ncq_error(tag, Outputs(status=ST_DRDY | ST_ERR, error=ER_ABRT))
            return False
        self.ncq[tag] = _Ncq(slot, cmd, self.gen)
        self.tfd = (self.tfd & 0xFF00) | ST_DRDY | ST_DSC
        ev = self.hba.machine.events
        ev.schedule(ev.jitter(*NCQ_DELAY), self.complete_ncq, self.gen, tag, name="ahci.ncq")
        return True

    # --- data movement ------------------------------------------------------------------------
    def prdt_views(self, ctba: int, prdtl: int, nbytes: int) -> list[memoryview]:
        """Views of the PRDT's buffers covering ``nbytes`` (§4.2.3: DBA, DBC 0-based, at
        most 4 MiB; only the entries the transfer needs are read).  Sets ``self.dps``
        when a consumed entry has its I bit (interrupt on descriptor processed)."""
        views: list[memoryview] = []
        self.dps = False
        if nbytes == 0:
            return views
        need = nbytes
        table = self._dma(ctba + 0x80, prdtl * 16) if prdtl else b""
        for dba, _rsv, dw3 in _PRD.iter_unpack(table):
            n = min((dw3 & 0x3FFFFF) + 1, need)
            views.append(self._dma(dba, n))
            if dw3 & 0x80000000:
                self.dps = True
            need -= n
            if need == 0:
                return views
        raise PrdtTooShort(f"PRDT of {prdtl} entries is {need} bytes short of {nbytes}")

    def run_with_data(self, slot: int, cmd: Command) -> Outputs | None:
        """Move the command's data through its PRDT; None after a fatal HBA error."""
        dw0, ctba, hdr = self.header(slot)
        try:
            views = self.prdt_views(ctba, dw0 >> 16, cmd.nbytes)
        except PrdtTooShort:
            if trace.enabled:
                trace.emit("ahci.prdt_short", port=self.index, slot=slot)
            self.fatal(IS_OFS)
            return None
        out = self.drive.execute(cmd, views)
        if not out.stopped:
            struct.pack_into("<I", hdr, 4, 0 if out.failed else cmd.nbytes)   # PRDBC
            if self.dps and not out.failed:
                self.raise_is(IS_DPS)          # a PRD with the I bit was processed
        return out

    def complete(self, gen: int, slot: int, decoded: Command | Outputs, tf: TaskFile) -> None:
        if gen != self.gen:
            return               # cancelled by a reset or PxCMD.ST=0
        if trace.enabled:
            trace.enter((self, slot))
        try:
            if isinstance(decoded, Outputs):
                out = decoded
                self.finish(slot, out, tf, pio_in=False)
                return
            out = self.run_with_data(slot, decoded) if decoded.nbytes else self.drive.execute(decoded)
            if out is None:
                return
            if out.stopped:
                self.stopped.append((self.complete, gen, slot, decoded, tf))
                return
            p = decoded.protocol
            if p.is_pio:
                self.post_pio_setup(out, decoded.nbytes, to_host=p is Protocol.PIO_IN,
                                    interrupt=p is Protocol.PIO_IN)
            self.finish(slot, out, tf, pio_in=p is Protocol.PIO_IN)
        except HostBusError:
            self.host_bus_fatal()

    def finish(self, slot: int, out: Outputs, tf: TaskFile, pio_in: bool) -> None:
        if trace.enabled:
            trace.end((self, slot), status=out.status, error=out.error)
        if not pio_in or out.failed:
            self.post_d2h(out, interrupt=True, tf=tf)
        if out.failed:
            return               # TFES: PxCI stays set, the port halts (§6.1.2)
        self.ci &= ~(1 << slot)
        self.busy_slot = None
        self.process()

    def complete_ncq(self, gen: int, tag: int) -> None:
        if gen != self.gen or tag not in self.ncq:
            return
        q = self.ncq[tag]
        if trace.enabled:
            trace.enter((self, q.slot))
        try:
            self.post_dma_setup(tag, q.cmd.nbytes, to_host=q.cmd.protocol is Protocol.FPDMA_IN)
            out = self.run_with_data(q.slot, q.cmd)
        except HostBusError:
            self.host_bus_fatal()
            return
        if out is None:
            return
        if out.stopped:
            self.stopped.append((self.complete_ncq, gen, tag))
            return
        if out.failed:
            self.ncq_error(tag, out)
            return
        del self.ncq[tag]
        if trace.enabled:
            trace.end((self, q.slot), status=out.status, error=out.error, tag=tag)
        self.post_sdb(1 << tag, Outputs(status=ST_DRDY | ST_DSC))
        if not self.ncq:
            self.process()       # non-queued commands may have been waiting

    def ncq_error(self, tag: int, out: Outputs) -> None:
        """An NCQ command failed: the device aborts every outstanding NCQ command and
        reports through an SDB FIS with ERR; PxSACT keeps the failed tags (SATA §13.6.?,
        AHCI §6.1.2)."""
        self.drive.record_ncq_error(tag, out, self.ncq[tag].cmd.lba if tag in self.ncq else 0)
        self.gen += 1            # outstanding NCQ commands will not complete
        self.ncq.clear()
        self.post_sdb(0, Outputs(status=(out.status | ST_ERR) & ~ST_BSY, error=out.error or ER_ABRT))

    def retry_stopped(self) -> None:
        """After the machine resumes from a ``stop`` error policy: run the stopped commands again."""
        pending, self.stopped = self.stopped, []
        for fn, *args in pending:
            fn(*args)


class _Abar:
    def __init__(self, hba: "AhciController"):
        self.hba = hba

    def read(self, offset: int, size: int) -> int:
        aligned = offset & ~3
        lo = self.hba.read32(aligned)
        if (offset & 3) + size <= 4:
            return (lo >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)
        hi = self.hba.read32(aligned + 4)
        return (((hi << 32) | lo) >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset & 3:
            return               # AHCI registers take aligned accesses only
        self.hba.write32(offset, value & 0xFFFFFFFF)
        if size == 8:
            self.hba.write32(offset + 4, value >> 32)


class _Idp:
    """The ICH9 index/data pair in BAR4 (index at 10h, data at 14h): ABAR through I/O ports."""

    def __init__(self, hba: "AhciController"):
        self.hba = hba
        self.index = 0

    def read(self, offset: int, size: int) -> int:
        if offset == 0x10:
            return self.index
        if offset == 0x14:
            return self.hba.abar.read(self.index, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x10:
            self.index = value & (ABAR_SIZE - 1) & ~3
        elif offset == 0x14:
            self.hba.abar.write(self.index, size, value)


class AhciController(PCIDevice):
    vendor_id, device_id, class_code, revision = 0x8086, 0x2922, 0x010601, 0x02
    subsystem_vendor_id, subsystem_id = 0x1AF4, 0x1100
    interrupt_pin = 1
    name = "ahci"

    def __init__(self, ports: int = NUM_PORTS, slots: int = 32):
        super().__init__()
        if not 1 <= ports <= 32 or not 1 <= slots <= 32:
            raise ValueError("AHCI: 1-32 ports and 1-32 command slots")
        self.nports = ports
        self.nslots = slots
        self.slot_mask = (1 << slots) - 1
        self.cap = (CAP_S64A | CAP_SNCQ | CAP_SCLO | CAP_ISS_GEN1 | CAP_SAM
                    | ((slots - 1) << 8) | (ports - 1))
        self.pi = (1 << ports) - 1
        self.ports = [AhciPort(self, i) for i in range(ports)]
        self.ghc = GHC_AE
        self.irq_level = 0
        self.abar = _Abar(self)
        self.add_bar(4, 32, BarKind.IO, _Idp(self), name="ahci.idp")
        self.add_bar(5, ABAR_SIZE, BarKind.MEM32, self.abar, name="ahci.abar")
        self.add_msi(1)
        sata = self.add_capability(0x12, 8)            # SATA capability (ICH9 §14.1.?)
        struct.pack_into("<HI", self.config, sata + 2, 0x0010, 0x8 | (4 << 4))  # rev 1.0; BAR4+10h

    # --- wiring -----------------------------------------------------------------------------
    def attach_drive(self, port: int, backend, config: DriveConfig | None = None,
                     ncq: bool = True) -> AtaDrive:
        if not 0 <= port < self.nports:
            raise ValueError(f"AHCI port {port} does not exist (0-{self.nports - 1})")
        p = self.ports[port]
        if p.drive is not None:
            raise ValueError(f"AHCI port {port} already has a drive")
        p.drive = AtaDrive(backend, config, ncq_depth=32 if ncq else 0)
        p.sig_pending = True
        return p.drive

    def free_port(self) -> int | None:
        return next((p.index for p in self.ports if p.drive is None), None)

    def dma(self, addr: int, length: int) -> memoryview:
        return super().dma(addr, length)

    # --- registers ---------------------------------------------------------------------------
    def read32(self, off: int) -> int:
        if off < PORT_BASE:
            if off == CAP: return self.cap
            if off == GHC: return self.ghc
            if off == IS: return self.global_is()
            if off == PI: return self.pi
            if off == VS: return VERSION_1_3
            return 0              # CCC, EM, CAP2, BOHC: not implemented (CAP bits clear)
        n, poff = divmod(off - PORT_BASE, PORT_SIZE)
        if n < self.nports:
            return self.ports[n].read(poff)
        return 0

    def write32(self, off: int, val: int) -> None:
        if off < PORT_BASE:
            if off == GHC:
                if val & GHC_HR:
                    self.hba_reset()
                else:
                    self.ghc = GHC_AE | (val & GHC_IE)
                    self.update_irq()
            elif off == IS:
                self.update_irq()   # IS bits mirror the ports' enabled PxIS (cleared there)
            return
        n, poff = divmod(off - PORT_BASE, PORT_SIZE)
        if n < self.nports:
            self.ports[n].write(poff, val)

    def global_is(self) -> int:
        v = 0
        for p in self.ports:
            if p.read(P_IS) & p.ie:
                v |= 1 << p.index
        return v

    def update_irq(self, new: bool = False) -> None:
        level = 1 if (self.global_is() and self.ghc & GHC_IE) else 0
        if self.msi is not None and self.msi.enabled:
            if level and new:
                self.notify(0)
            return
        if level != self.irq_level:
            self.irq_level = level
            self.set_irq(level)

    def hba_reset(self) -> None:
        """GHC.HR (§10.4.3): every port and GHC back to reset values; HR reads 0 after."""
        if trace.enabled:
            trace.emit("ahci.hba_reset")
        self.ghc = GHC_AE
        for p in self.ports:
            p.reset_registers()
        self.irq_level = 0
        self.set_irq(0)

    def reset(self) -> None:
        self.hba_reset()

    def resume(self) -> None:
        """The machine resumed after the ``stop`` error policy: clear each backend's
        stopped state and run the commands that were held again (rerror/werror=stop)."""
        for p in self.ports:
            if p.drive is not None and p.stopped:
                p.drive.backend.resume()
                p.retry_stopped()

    retry_stopped = resume


def attach(machine: "Machine", backend, spec: Any = None) -> AhciController:
    """Attach a drive to the machine's AHCI controller (created on first use).

    The port comes from the spec's ``bus`` option (QEMU's ``bus=ahci.N``), else the
    first free one; ``ncq=off`` hides NCQ; the serial defaults to QEMU's "QM%05d"
    numbering so transcripts agree.
    """
    hba = next((d for d in machine.pci.functions.values() if isinstance(d, AhciController)), None)
    if hba is None:
        hba = AhciController()
        machine.add_pci(hba)
    port = spec_option(spec, "port", "bus")
    port = hba.free_port() if port is None else int(port)
    if port is None:
        raise ValueError(f"AHCI: all {hba.nports} ports have drives")
    ncq = spec_option(spec, "ncq")
    hbas = [d for _, d in sorted(machine.pci.functions.items()) if isinstance(d, AhciController)]
    serial = default_serial(5 + 2 * (NUM_PORTS * hbas.index(hba) + port))
    hba.attach_drive(port, backend, drive_config(spec, serial), ncq=True if ncq is None else bool(ncq))
    return hba
