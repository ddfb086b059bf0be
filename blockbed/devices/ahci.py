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

Layouts: every register offset and bit, the command header, PRD entry and FIS
forms used here are derived from the ``construct`` declarations in
:mod:`.ahci_layout` (and :mod:`.ata.layout`); trace events carry them parsed
(:mod:`blockbed.trace_decode_ahci`).

Departures from QEMU 7.2 on purpose: VS reads 1.3 (QEMU says 1.0), a failed
command leaves its PxCI bit set as §6.1.2 says, WRITE DMA FUA EXT works and
the NCQ FUA bit makes the write durable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import trace
from ..machine.memory import DMAError
from ..machine.pci import BarKind, PCIDevice
from .ata import AtaDrive, Command, DriveConfig, Outputs, Protocol, TaskFile
from .ata.config import default_serial, drive_config, spec_option
from .ata.regs import ER_ABRT, ER_AMNF, SIGNATURE_ATA, ST_BSY, ST_DRDY, ST_DRQ, ST_DSC, ST_ERR
# Every register offset, bit, FIS and memory-structure form below is derived from the
# declarations in ahci_layout (AHCI 1.3, SATA 3.x); the names are re-exported for tests.
from .ahci_layout import (  # noqa: F401
    BOHC, CAP, CAP2, CAP_ISS_GEN1, CAP_NCS_SHIFT, CAP_NP_SHIFT, CAP_S64A, CAP_SAM, CAP_SCLO,
    CAP_SNCQ, CCC_CTL, CCC_PORTS, CFL_MIN, CLB_MASK, CMD_ATAPI, CMD_CCS, CMD_CCS_SHIFT, CMD_CLO,
    CMD_CR, CMD_DLAE, CMD_FR, CMD_FRE, CMD_POD, CMD_RW, CMD_ST, CMD_SUD, CT_CFIS_SIZE, CT_PRDT,
    CTBA_MASK, CTL_SRST, D2H, D2H_I, DMA_A, DMA_D, DMA_SETUP, EM_CTL, EM_LOC, FATAL, FB_MASK,
    FIS_DMA_SETUP, FIS_PIO_SETUP, FIS_REG_D2H, FIS_REG_H2D, FIS_SDB, GHC, GHC_AE, GHC_HR, GHC_IE,
    H2D, H2D_C, HDR, HDR_PRDBC, HDR_PRDTL_SHIFT, HDR_CFL, HDR_SIZE, IDP_DATA, IDP_INDEX, IDP_SIZE,
    IE_MASK, IS, IS_DHRS, IS_DPS, IS_DSS, IS_HBDS, IS_HBFS, IS_IFS, IS_INFS, IS_OFS, IS_PCS,
    IS_PSS, IS_RWC, IS_SDBS, IS_TFES, IS_UFS, P_CI, P_CLB, P_CLBU, P_CMD, P_FB, P_FBS, P_FBU,
    P_IE, P_IS, P_SACT, P_SCTL, P_SERR, P_SIG, P_SNTF, P_SSTS, P_TFD, PI, PIO_D, PIO_I,
    PIO_SETUP, PORT_BASE, PORT_SIZE, PRD, PRD_DBC, PRD_I, PRD_SIZE, PRDBC, RFIS_DSFIS,
    RFIS_PSFIS, RFIS_RFIS, RFIS_SDBFIS, SATA_CAP_BODY, SATA_CAP_OFF, SATA_CAP_ID, SATA_CAP_SIZE, SCTL_DET,
    SCTL_DET_COMRESET, SCTL_RW, SDB, SDB_I, SDB_STATUS, SERR_DIAG_X, SERR_ERR_P, SSTS_UP,
    SIG_COUNT, SIG_LBA_SHIFT, TFD_ERR_SHIFT, TFD_STS, VERSION_1_3, VS, sata_cap_values)

if TYPE_CHECKING:
    from ..machine.board import Machine

NUM_PORTS = 6
ABAR_SIZE = 0x1000

NONQUEUED_DELAY = 2      # ticks from fetch to completion of a non-queued command
NCQ_DELAY = (1, 12)      # jitter range for NCQ completions (out of order)
#: PxTFD while the interface is in reset or before the first D2H FIS (§3.3.8: 7Fh)
TFD_RESET = 0x7F
#: PxSIG before the signature arrives (§3.3.9)
SIG_NONE = 0xFFFFFFFF


def signature_outputs() -> Outputs:
    """The D2H FIS outputs that carry the ATA signature after a reset (ATA8-ACS §9.12:
    diagnostic code 01h in Error, the signature in LBA and Count, as PxSIG lays it out)."""
    return Outputs(status=ST_DRDY | ST_DSC, error=ER_AMNF, lba=SIGNATURE_ATA >> SIG_LBA_SHIFT,
                   count=SIGNATURE_ATA & SIG_COUNT)


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
        self.tfd = TFD_RESET
        self.sig = SIG_NONE
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
        if self.drive is None or self.sctl & SCTL_DET == SCTL_DET_COMRESET:
            return 0
        return SSTS_UP

    def deliver_signature(self) -> None:
        """The device's first D2H FIS after a reset (ATA signature), once FIS receive is on."""
        if not self.sig_pending or not self.cmd & CMD_FRE or self.sctl & SCTL_DET == SCTL_DET_COMRESET:
            return
        self.sig_pending = False
        self.sig = SIGNATURE_ATA
        self.post_d2h(signature_outputs(), interrupt=True)

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
            from .. import trace_decode as d
            trace.emit("ahci.port_write", port=self.index, offset=off, value=val,
                       **d.ahci_port_register(off, val))
        if off == P_CLB:
            self.clb = val & CLB_MASK                # 1 KiB aligned
        elif off == P_CLBU:
            self.clbu = val
        elif off == P_FB:
            self.fb = val & FB_MASK                  # 256-byte aligned
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
            old = self.sctl & SCTL_DET
            self.sctl = val & SCTL_RW
            new = self.sctl & SCTL_DET
            if old != SCTL_DET_COMRESET and new == SCTL_DET_COMRESET:
                self.tfd, self.sig = TFD_RESET, SIG_NONE   # interface in reset
                self.cancel_all()
            elif old == SCTL_DET_COMRESET and new != SCTL_DET_COMRESET:
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
            self.cmd &= ~(CMD_CR | CMD_CCS)
            self.halted = False

    def cancel_all(self) -> None:
        self.gen += 1
        self.busy_slot = None
        self.ncq.clear()
        self.stopped.clear()

    # --- memory helpers ------------------------------------------------------------------
    def _dma(self, addr: int, length: int, write: bool = False) -> memoryview:
        try:
            return self.hba.dma(addr, length, write)
        except DMAError as exc:
            raise HostBusError(str(exc)) from None

    def _fis_area(self, off: int, length: int) -> memoryview | None:
        if not self.cmd & CMD_FRE:
            return None
        return self._dma(((self.fbu << 32) | self.fb) + off, length)

    # --- FISes to the host ---------------------------------------------------------------
    def _post_fis(self, off: int, form: Any, *values: int) -> bool:
        """Write a FIS (``form``, a fast form from ahci_layout) into the received-FIS area
        at ``off`` when FIS receive is on (§4.2.1); False after a host bus error."""
        try:
            area = self._fis_area(off, form.size)
        except HostBusError:
            self.host_bus_fatal()
            return False
        if area is not None:
            form.pack_into(area, 0, *values)
            if trace.enabled:
                from .. import trace_decode as d
                trace.emit("ahci.fis", port=self.index, fis=d.ahci_fis(bytes(area)))
        return True

    def post_d2h(self, out: Outputs, interrupt: bool = True, tf: TaskFile | None = None) -> None:
        """A Register D2H FIS (SATA 3.x §10.5.6) into RFIS; PxTFD takes its Status/Error."""
        lba = out.lba if out.lba is not None else (tf.lba if tf else 0)
        count = out.count if out.count is not None else (tf.count if tf else 0)
        self.tfd = (out.error << TFD_ERR_SHIFT) | out.status
        if not self._post_fis(RFIS_RFIS, D2H, FIS_REG_D2H, D2H_I if interrupt else 0,
                              out.status, out.error, lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF,
                              tf.device if tf else 0, lba >> 24 & 0xFF, lba >> 32 & 0xFF,
                              lba >> 40 & 0xFF, count & 0xFF, count >> 8 & 0xFF):
            return
        bits = (IS_DHRS if interrupt else 0) | (IS_TFES if out.status & ST_ERR else 0)
        if bits:
            self.raise_is(bits)

    def post_pio_setup(self, out: Outputs, nbytes: int, to_host: bool, interrupt: bool) -> None:
        """A PIO Setup FIS (§10.5.11) into PSFIS: Status while the data moves (DRQ), E_Status
        the status after it, the transfer count."""
        if not self._post_fis(RFIS_PSFIS, PIO_SETUP, FIS_PIO_SETUP,
                              (PIO_D if to_host else 0) | (PIO_I if interrupt else 0),
                              (out.status & ~ST_BSY) | ST_DRQ, out.error, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                              out.status, nbytes & 0xFFFF):
            return
        self.tfd = (out.error << TFD_ERR_SHIFT) | out.status
        bits = (IS_PSS if interrupt else 0) | (IS_TFES if out.status & ST_ERR else 0)
        if bits:
            self.raise_is(bits)

    def post_dma_setup(self, tag: int, nbytes: int, to_host: bool) -> bool:
        """A DMA Setup FIS (§10.5.9) into DSFIS: auto-activate, the DMA buffer identifier is
        the NCQ tag; False after a host bus error."""
        return self._post_fis(RFIS_DSFIS, DMA_SETUP, FIS_DMA_SETUP, DMA_A | (DMA_D if to_host else 0),
                              tag, 0, nbytes)

    def post_sdb(self, done: int, out: Outputs) -> None:
        """A Set Device Bits FIS (§10.5.7) into SDBFIS: the completed tags leave PxSACT; only
        the Status bits an SDB FIS carries change in PxTFD (BSY and DRQ keep theirs)."""
        self.sact &= ~done
        self.tfd = ((out.error << TFD_ERR_SHIFT) | (out.status & SDB_STATUS)
                    | (self.tfd & TFD_STS & ~SDB_STATUS))
        if not self._post_fis(RFIS_SDBFIS, SDB, FIS_SDB, SDB_I, out.status & SDB_STATUS, out.error, done):
            return
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
        self.tfd = (ER_ABRT << TFD_ERR_SHIFT) | ST_DRDY | ST_ERR
        self.raise_is(IS_HBFS)

    def fatal(self, bit: int, serr: int = 0) -> None:
        self.serr |= serr
        self.tfd = (ER_ABRT << TFD_ERR_SHIFT) | ST_DRDY | ST_ERR
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
        """Command header ``slot`` (§4.2.2): its DW0, the command table address, the header."""
        hdr = self._dma(((self.clbu << 32) | self.clb) + slot * HDR_SIZE, HDR_SIZE)
        info, _prdbc, ctba, ctbau = HDR.unpack_from(hdr)
        return info, (ctbau << 32) | (ctba & CTBA_MASK), hdr

    def start(self, slot: int) -> bool:
        """Begin the command in ``slot``; False when it must wait (NCQ still draining)."""
        info, ctba, hdr = self.header(slot)
        cfl = info & HDR_CFL
        cfis = self._dma(ctba, CT_CFIS_SIZE)
        (fis_type, flags, command, features, lba0, lba1, lba2, device, lba3, lba4, lba5, features_exp,
         count, count_exp, _icc, control, _aux) = H2D.unpack_from(cfis)
        self.cmd = (self.cmd & ~CMD_CCS) | (slot << CMD_CCS_SHIFT)
        if fis_type != FIS_REG_H2D or cfl < CFL_MIN:
            if trace.enabled:
                from .. import trace_decode as d
                trace.emit("ahci.bad_fis", port=self.index, slot=slot, type=fis_type, cfl=cfl,
                           fis=d.ahci_fis(bytes(cfis)))
            self.fatal(IS_IFS, SERR_ERR_P)
            return False
        if not flags & H2D_C:
            self.control_fis(slot, control)
            return True
        tf = TaskFile(command=command, features=features | features_exp << 8,
                      lba=lba0 | lba1 << 8 | lba2 << 16 | lba3 << 24 | lba4 << 32 | lba5 << 40,
                      device=device, count=count | count_exp << 8, control=control)
        decoded = self.drive.decode(tf)
        if trace.enabled:
            from .. import trace_decode as d
            fis = d.h2d_fis(bytes(cfis))
            trace.begin("ahci", (self, slot), port=self.index, slot=slot, op=d.op_kind(fis["command"]),
                        header=d.ahci_command_header(bytes(hdr)), fis=fis)
            trace.emit("ahci.cmd", port=self.index, slot=slot, cmd=tf.command,
                       ncq=isinstance(decoded, Command) and decoded.protocol.is_ncq)
        if isinstance(decoded, Command) and decoded.protocol.is_ncq:
            return self.start_ncq(slot, decoded)
        if self.ncq:
            return False          # a non-queued command waits until the NCQ queue drains
        self.busy_slot = slot
        self.tfd = (self.tfd & ~TFD_STS) | ST_BSY | ST_DRDY
        self.hba.machine.events.schedule(NONQUEUED_DELAY, self.complete, self.gen, slot, decoded, tf,
                                         name="ahci.complete")
        return True

    def control_fis(self, slot: int, control: int) -> None:
        """A Register H2D FIS with C=0 updates the Device Control register: SRST (§10.4.1)."""
        srst = bool(control & CTL_SRST)
        self.ci &= ~(1 << slot)
        if srst:
            self.srst = True
            self.tfd = ST_BSY
        elif self.srst:
            self.srst = False
            self.drive.reset()
            self.sig = SIGNATURE_ATA
            self.post_d2h(signature_outputs(), interrupt=True)

    def start_ncq(self, slot: int, cmd: Command) -> bool:
        tag = cmd.tag
        self.ci &= ~(1 << slot)              # the device accepted the command (D2H, BSY=0)
        if tag in self.ncq:
            # A tag that is already outstanding: the device aborts (SATA §13.6.?): NCQ error.
            self.ncq_error(tag, Outputs(status=ST_DRDY | ST_ERR, error=ER_ABRT))
            return False
        self.ncq[tag] = _Ncq(slot, cmd, self.gen)
        self.tfd = (self.tfd & ~TFD_STS) | ST_DRDY | ST_DSC
        ev = self.hba.machine.events
        ev.schedule(ev.jitter(*NCQ_DELAY), self.complete_ncq, self.gen, tag, name="ahci.ncq")
        return True

    # --- data movement ------------------------------------------------------------------------
    def prdt_views(self, ctba: int, prdtl: int, nbytes: int, to_memory: bool = False
                   ) -> list[memoryview]:
        """Views of the PRDT's buffers covering ``nbytes`` (§4.2.3: DBA, DBC 0-based, at
        most 4 MiB; only the entries the transfer needs are read).  Sets ``self.dps``
        when a consumed entry has its I bit (interrupt on descriptor processed).
        ``to_memory``: a device-to-host transfer (the buffers will be written)."""
        views: list[memoryview] = []
        self.dps = False
        if nbytes == 0:
            return views
        need = nbytes
        table = self._dma(ctba + CT_PRDT, prdtl * PRD_SIZE) if prdtl else b""
        for dba, dbc in PRD.iter_unpack(table):
            n = min((dbc & PRD_DBC) + 1, need)
            views.append(self._dma(dba, n, to_memory))
            if dbc & PRD_I:
                self.dps = True
            need -= n
            if need == 0:
                return views
        raise PrdtTooShort(f"PRDT of {prdtl} entries is {need} bytes short of {nbytes}")

    def run_with_data(self, slot: int, cmd: Command) -> Outputs | None:
        """Move the command's data through its PRDT; None after a fatal HBA error."""
        info, ctba, hdr = self.header(slot)
        try:
            views = self.prdt_views(ctba, info >> HDR_PRDTL_SHIFT, cmd.nbytes,
                                    to_memory=not cmd.protocol.to_device)
        except PrdtTooShort:
            if trace.enabled:
                trace.emit("ahci.prdt_short", port=self.index, slot=slot)
            self.fatal(IS_OFS)
            return None
        out = self.drive.execute(cmd, views)
        if not out.stopped:
            PRDBC.pack_into(hdr, HDR_PRDBC, 0 if out.failed else cmd.nbytes)
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
            if not self.post_dma_setup(tag, q.cmd.nbytes, to_host=q.cmd.protocol is Protocol.FPDMA_IN):
                return
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
        if offset == IDP_INDEX:
            return self.index
        if offset == IDP_DATA:
            return self.hba.abar.read(self.index, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IDP_INDEX:
            self.index = value & (ABAR_SIZE - 1) & ~3
        elif offset == IDP_DATA:
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
                    | ((slots - 1) << CAP_NCS_SHIFT) | ((ports - 1) << CAP_NP_SHIFT))
        self.pi = (1 << ports) - 1
        self.ports = [AhciPort(self, i) for i in range(ports)]
        self.ghc = GHC_AE
        self.irq_level = 0
        self.abar = _Abar(self)
        self.add_bar(4, IDP_SIZE, BarKind.IO, _Idp(self), name="ahci.idp")
        self.add_bar(5, ABAR_SIZE, BarKind.MEM32, self.abar, name="ahci.abar")
        self.add_msi(1)
        sata = self.add_capability(SATA_CAP_ID, SATA_CAP_SIZE)   # SATA capability (AHCI 1.3 §2.4)
        SATA_CAP_BODY.pack_into(self.config, sata + SATA_CAP_OFF, *sata_cap_values(4, IDP_INDEX))

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
