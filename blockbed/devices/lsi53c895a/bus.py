"""The SCSI bus as the LSI53C895A sees it, modelled from the target side.

A parallel SCSI target drives the bus phase by phase (SPI-5; SAM-5 for task
management): selection (with ATN) → MESSAGE OUT (IDENTIFY, tags,
task-management messages) → COMMAND → [DATA IN | DATA OUT] → STATUS →
MESSAGE IN (COMMAND COMPLETE) → bus free.  Targets are
:class:`~blockbed.devices.scsi.ScsiDisk` objects (LUN 0 each).

A READ whose IDENTIFY granted the disconnect privilege disconnects after its
CDB (MESSAGE IN: SAVE DATA POINTER, DISCONNECT), as QEMU's model and real
disks do, and reselects the initiator a few virtual ticks later; the script
meets the reselection in WAIT RESELECT (or an RSL interrupt reports it).

:class:`ScsiBus` is a mixin of :class:`~.chip.LSI53C895A`: its methods use the
chip's registers and interrupts; the SCRIPTS processor (:mod:`.scripts`)
calls the ``phase_*`` methods from its block moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ... import trace
from ..scsi import Direction, ScsiRequest
from . import regs as R
from .regs import Phase

if TYPE_CHECKING:
    from ..scsi import ScsiDisk


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


class ScsiBus:
    """Target-side protocol state machine (mixin of the chip; see the module docstring)."""

    targets: "dict[int, ScsiDisk]"
    bus: BusState
    disconnected: "list[Nexus]"
    sel_timeout_pending: bool = False     # a SELECT timed out; STO when SCRIPTS need the bus

    def selection_timeout(self) -> None:
        """Deliver a pending selection timeout: SIST1 STO, which halts SCRIPTS."""
        self.sel_timeout_pending = False
        self.scsi_interrupt(sist1=R.SIST1_STO)

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

    def scsi_bus_reset(self) -> None:
        """SCNTL1 RST: every target drops its nexuses and reports a unit attention."""
        self._cancel_all(reset_disks=True)
        self._bus_free()
        self.r[R.SSTAT0] |= R.SSTAT0_RST
        self.scsi_interrupt(sist0=R.SIST0_RST)

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
        """Arbitrate and select ``target``; False if nobody answers.

        A selection that times out does not halt SCRIPTS at the SELECT: the
        chip wins arbitration and the SCRIPTS processor goes on with the
        instructions that do not need the bus; the STO interrupt halts it at
        the first one that does (a block move, a phase test, a SCSI I/O
        instruction), with DSP past that instruction (``sel_timeout_pending``,
        taken by :func:`.scripts.execute`).  Linux's sym53c8xx checks for
        exactly that DSP (``sym_int_sto``: WF_SEL_DONE + 8) and resets the
        SCSI bus for any other; QEMU defers STO the same way."""
        r = self.r
        r[R.SDID] = target
        r[R.SSTAT0] |= R.SSTAT0_WOA
        if target == (r[R.SCID] & R.SCID_ENC) or target not in self.targets:
            if trace.enabled:
                trace.emit("lsi.select_timeout", target=target)
            self._bus_free()
            self.sel_timeout_pending = True
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
        if trace.enabled:
            from ... import trace_decode as d
            fields = d.scsi_cdb(cdb)
            nexus_key = (self, b.target, b.lun, b.tag)
            trace.begin("lsi", nexus_key, target=b.target, lun=b.lun, tag=b.tag,
                        dsa=int.from_bytes(self.r[R.DSA:R.DSA + 4], "little"),
                        op=d.op_kind(fields["opcode"]), cdb=fields)
        req = disk.request(cdb, b.lun)
        if trace.enabled:
            trace.rekey(nexus_key, req)
            if req.done:                         # answered at once: no data phase
                trace.end(req, status=req.status)
        if req.stopped:
            raise Stall(rewind=True)             # the COMMAND block move runs again on resume
        nx = Nexus(b.target, b.lun, b.tag, req)
        b.current = nx
        if trace.enabled:
            trace.emit("lsi.cmd", target=b.target, lun=b.lun, cdb=d.scsi_cdb(cdb), length=req.length)
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
