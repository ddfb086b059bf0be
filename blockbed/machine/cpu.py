"""The CPU: unicorn set-up, the run loop, HLT, exception and interrupt delivery, faults.

Unicorn is created in 32-bit mode so the boot loaders can load the flat
32-bit segments from their GDT (a 64-bit engine's register API stores only
the selector), then the engine is switched to its 64-bit API mode
(:meth:`CPU._engine_mode`): registers are read at full width and a slice may
start at any RIP.  The guest's own CR0/EFER/CS decide how code runs.

Unicorn has no interrupt input and does not enter exception handlers: it
stops with the vector.  Both are delivered by :mod:`.exceptions` the way a
long-mode CPU does (Intel SDM vol. 3 §6.14), through the guest's IDT, GDT
and TSS at linear addresses (:mod:`.paging`); the guest returns with IRETQ,
which unicorn executes.  RDTSC/RDTSCP follow the virtual clock.

HLT stops ``emu_start``; the loop then waits for the next device event or
pending interrupt.  What cannot be delivered (an exception outside long
mode, a triple fault, a CPL 3 -> 0 switch) ends the run with a
:class:`GuestFault` report (reason, RIP, the instruction disassembled with
capstone, registers).  Nothing a guest does reaches the user as a Python
traceback.

Split by concern: :mod:`.cpu_insns` (SYSCALL, RDTSC/RDTSCP hooks),
:mod:`.cpu_inspect` (fault reports, disassembly, the tracing RIP hook) and
:mod:`.cpu_state` (stop reasons, fault and exit-count records, MSR numbers) hold
the parts this module's :class:`CPU` mixes in or uses.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING

from unicorn import (UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR,
                     UC_MODE_32, UC_MODE_64, Uc, UcError)
from unicorn import unicorn_const as uc_const
from unicorn import x86_const as X

from .. import trace
from .bus import RegionHandler
from .clock import TSC_PER_TICK  # noqa: F401 -- re-exported (tests)
from .exceptions import (Delivery, Event, Frame, TripleFault, UnicornExceptionState,
                         needs_error_code)
from .paging import PagingState
from .cpu_insns import InstructionHooks
from .cpu_inspect import CPUInspect
from .cpu_state import (_REG64, _RUNNING, EFER, EXCEPTION_NAMES, RFLAGS_IF, ExitCounts,
                        GuestFault, StopReason)
from .pio_string import PioStrings
from .uc_direct import IN_CFUNC, OUT_CFUNC, code_invalidator, hook_insn, mmio_map, record

if TYPE_CHECKING:
    from .board import Machine

END_ADDRESS = 0xFFFF_FFFF_FFFF_FFFF


_UC_ERRORS = {
    uc_const.UC_ERR_INSN_INVALID: "CPU exception #UD invalid opcode",
    uc_const.UC_ERR_READ_UNMAPPED: "read from an unmapped physical address",
    uc_const.UC_ERR_WRITE_UNMAPPED: "write to an unmapped physical address",
    uc_const.UC_ERR_FETCH_UNMAPPED: "instruction fetch from an unmapped physical address",
    uc_const.UC_ERR_FETCH_PROT: "instruction fetch from a non-executable region (MMIO)",
    uc_const.UC_ERR_READ_UNALIGNED: "unaligned read",
    uc_const.UC_ERR_WRITE_UNALIGNED: "unaligned write",
    uc_const.UC_ERR_EXCEPTION: "unhandled CPU exception",
}


_PIO = "pio"        # tag of a port-I/O record in the replay guard
REPLAY_STEPS = 64   # instructions from a block start to a replayed MMIO access, at most


class CPU(InstructionHooks, CPUInspect):
    """One x86-64 CPU on unicorn, bound to a :class:`Machine`."""


    def __init__(self, machine: "Machine"):
        self.machine = machine
        self.uc = Uc(UC_ARCH_X86, UC_MODE_32)
        self.exits = ExitCounts()
        self.halted = False
        self.stop_reason = StopReason.NONE
        self.fault: GuestFault | None = None
        self._exception: int | None = None
        self._exc_error = 0
        self._exc_software = False
        self._exc_cr2 = 0
        self._cr2_at_slice = 0
        self._uc_exc = UnicornExceptionState.get()
        mem = machine.memory

        def read_phys(addr: int, n: int) -> bytes:
            if not mem.contains(addr, n):
                raise ValueError(f"physical address {addr:#x} (+{n}) is outside RAM")
            return mem.read(addr, n)

        def write_phys(addr: int, data: bytes) -> None:
            # The CPU's own stores (an exception or interrupt frame), made past
            # unicorn: like any x86 store, the next fetch must see them.
            if not mem.contains(addr, len(data)):
                raise ValueError(f"physical address {addr:#x} (+{len(data)}) is outside RAM")
            mem.write(addr, data)
            mem.drop_code(addr, len(data))

        self.delivery = Delivery(read_phys, write_phys, self._sysregs)
        self.instructions_lower_bound = 0
        self.deadline_passed = False              # set by the watchdog (stop_for_deadline)
        # MMIO replay guard (see wrap_mmio): unicorn re-executes an MMIO instruction
        # whose callback asked it to stop, so that access must not happen twice.
        self._replay: tuple | None = None
        self._replay_value = 0
        self._tsc_stop_ctx: tuple | None = None   # (RIP, context): see _restore_tsc_stop_context
        self._syscall_entry: int | None = None    # IA32_LSTAR, written to RIP after the slice
        self._mmio_rip_hook: int | None = None    # see track_mmio_rip (tracing only)
        self._mmio_rip = 0
        machine.memory.map_into(self.uc)
        drop = code_invalidator(self.uc)
        if drop is not None:
            machine.memory.drop_code = drop
        else:
            machine.warnings.append("this libunicorn cannot drop translated code: code that a "
                                    "device writes by DMA over code that ran may run stale")
        self._install_io_hooks()

    # --- exits -------------------------------------------------------------
    def _install_io_hooks(self) -> None:
        m = self.machine
        ports = m.pio.hook_ports
        events = m.events
        exits = self.exits
        ones = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}

        cpu = self
        strings = self.pio_strings = PioStrings(self)
        m.pio.wrap_strings = strings.wrap

        uc_ = self.uc

        # Port hooks: called by unicorn directly (uc_direct), so they guard themselves.
        def on_in(handle, port, size, ud):
            try:
                if cpu._replay is not None and cpu._pio_replayed(False, port, size, None):
                    return cpu._replay_value
                exits.pio += 1
                events.now += 1
                if events._heap and events._heap[0].due <= events.now:
                    events.run_due()
                if trace.enabled:
                    trace.leave()
                ent = ports.get(port)
                v = ones[size] if ent is None else ent[0].read(port - ent[1], size)
                if trace.enabled:
                    trace.leave()            # a read that completed a request does not tag the exit
                    trace.emit("pio.in", port=port, size=size, value=v, insn=cpu.exit_insn())
                if cpu.stop_reason is not _RUNNING:
                    # After a `rep ins` block (pio_string.py) unicorn re-executes its last unit.
                    last = v if strings.last is None else strings.take_last()
                    cpu._replay = (_PIO, False, port, size, None, last, cpu._io_key())
                return v
            except BaseException as exc:     # noqa: BLE001 -- raised again by emu_start
                record(uc_, exc)
                return 0

        def on_out(handle, port, size, value, ud):
            try:
                if cpu._replay is not None and cpu._pio_replayed(True, port, size, value):
                    return
                exits.pio += 1
                events.now += 1
                if events._heap and events._heap[0].due <= events.now:
                    events.run_due()
                if trace.enabled:
                    trace.leave()
                    trace.emit("pio.out", port=port, size=size, value=value, insn=cpu.exit_insn())
                ent = ports.get(port)
                if ent is not None:
                    ent[0].write(port - ent[1], size, value)
                if cpu.stop_reason is not _RUNNING:
                    last = value if strings.last is None else strings.take_last()
                    cpu._replay = (_PIO, True, port, size, last, None, cpu._io_key())
            except BaseException as exc:     # noqa: BLE001 -- raised again by emu_start
                record(uc_, exc)

        def on_intr(uc, intno, ud):
            if cpu._exception is not None:
                # A second report in the same slice: unicorn went on after our stop
                # request and ran the faulting instruction again, and QEMU's
                # double-fault rule (the first is still "in flight") turned it into
                # #DF.  The first one is what the guest did; it is delivered, and the
                # instruction then runs again.
                uc.emu_stop()
                return
            cpu._exception = intno
            if cpu._uc_exc.ok:
                cpu._exc_error, cpu._exc_software = cpu._uc_exc.read(uc)
            else:
                cpu._exc_error, cpu._exc_software = 0, intno in (3, 4) or intno >= 32
            if intno == 14:
                cpu._exc_cr2 = uc.reg_read(X.UC_X86_REG_CR2)
            uc.emu_stop()

        def on_invalid(uc, ud):
            # Unicorn's #UD (UD2, an unknown opcode): it stops at the instruction.
            cpu._exception = 6
            cpu._exc_error, cpu._exc_software = 0, False
            uc.emu_stop()       # without it unicorn idles until the slice's timeout
            return True

        def on_syscall(uc, ud):
            cpu._syscall()

        self.uc.hook_add(UC_HOOK_INSN, on_syscall, None, 1, 0, X.UC_X86_INS_SYSCALL)
        hook_insn(self.uc, X.UC_X86_INS_IN, IN_CFUNC, on_in)
        hook_insn(self.uc, X.UC_X86_INS_OUT, OUT_CFUNC, on_out)
        self.uc.hook_add(UC_HOOK_INTR, on_intr)
        self.uc.hook_add(UC_HOOK_INSN_INVALID, on_invalid)
        self._install_tsc_hooks()

    def _io_key(self) -> tuple[int, int, int, int]:
        """(RIP, RCX, RDI, RSI) at a port access: the instruction and, for a string
        instruction, the iteration (RCX counts down, RDI/RSI move, per iteration)."""
        rd = self.uc.reg_read
        return (rd(X.UC_X86_REG_RIP), rd(X.UC_X86_REG_RCX),
                rd(X.UC_X86_REG_RDI), rd(X.UC_X86_REG_RSI))

    def _pio_replayed(self, write: bool, port: int, size: int, value: int | None) -> bool:
        """The port-I/O half of the replay guard (see :meth:`wrap_mmio`).

        Called for a port access while a record is pending.  It is the replay when
        the access is the recorded one *and* the CPU is at the same instruction and
        iteration -- (RIP, RCX, RDI, RSI) as recorded -- because a ``rep ins``
        iteration whose IN was served but not committed runs again with the same
        registers, while the next iteration, or the next pass of a polling loop
        that did not re-execute, differs in RCX/RDI/RSI or comes after the stepping
        window.  A read is answered with the recorded value (``_replay_value``), a
        write dropped.  Any other access ends the wait."""
        rp = self._replay
        self._replay = None
        if rp[0] is _PIO and rp[1] is write and rp[2] == port and rp[3] == size and \
                (not write or rp[4] == value) and self._io_key() == rp[6]:
            if trace.enabled:
                trace.emit("cpu.pio_replay", write=write, port=port, size=size)
            self._replay_value = rp[5]
            return True
        if trace.enabled:
            trace.emit("cpu.pio_replay_mismatch", write=write, port=port, size=size)
        return False

    def _drop_completed_pio(self, resume_rip: int) -> bool:
        """Before resuming: a port-I/O record whose instruction is not where the CPU
        resumes belongs to an instruction that completed (unicorn stopped after it),
        so nothing will run again; drop it.  This is what keeps a polling loop of
        plain INs, whose registers do not change, from being answered a stale value.
        False when the record was dropped (or there is none)."""
        rp = self._replay
        if rp is not None and rp[0] is _PIO and rp[6][0] != resume_rip:
            self._replay = None
        return self._replay is not None

    def wrap_mmio(self, handler: RegionHandler) -> tuple:
        """Unicorn callbacks for one MMIO chunk: count, tick, call the handler.

        They take unicorn's engine handle first and guard their own exceptions, as
        :meth:`map_mmio` registers them without the binding's wrappers.

        Replay guard: when a stop is pending during an MMIO callback (``emu_stop``
        from an interrupt kick or a machine stop, raised by a device event, by the
        access itself, or earlier in a port-I/O hook, where unicorn defers it),
        unicorn stops at that access with RIP at the *start* of the instruction
        although the access was performed, and runs the instruction again on
        resume.  The callback then records the access; the next slice first executes
        that one instruction alone (:meth:`run_slice`), and its access is answered
        from the record (the read's value again; the write dropped) instead of
        reaching the device a second time.  Port I/O has the same guard
        (:meth:`_pio_replayed`), keyed by the registers of the iteration.
        """
        events = self.machine.events
        exits = self.exits
        read = handler.read
        write = handler.write
        cpu = self
        uc_ = self.uc

        def rd(handle, offset, size, ud):
            try:
                rp = cpu._replay
                if rp is not None:
                    cpu._replay = None
                    if rp[0] is handler and not rp[1] and rp[2] == offset and rp[3] == size:
                        if trace.enabled:
                            trace.emit("cpu.mmio_replay", write=False, offset=offset, size=size)
                        return rp[5]
                    if trace.enabled:
                        trace.emit("cpu.mmio_replay_mismatch", write=False, offset=offset, size=size)
                exits.mmio += 1
                events.now += 1
                if events._heap and events._heap[0].due <= events.now:
                    events.run_due()
                if trace.enabled:
                    trace.leave()
                v = read(offset, size)
                if trace.enabled:
                    trace.leave()
                    trace.emit("mmio.read", handler=type(handler).__name__, offset=offset, size=size, value=v,
                               insn=cpu.mmio_insn())
                if cpu.stop_reason is not _RUNNING:
                    cpu._replay = (handler, False, offset, size, None, v)
                return v
            except BaseException as exc:     # noqa: BLE001 -- raised again by emu_start
                record(uc_, exc)
                return 0

        def wr(handle, offset, size, value, ud):
            try:
                rp = cpu._replay
                if rp is not None:
                    cpu._replay = None
                    if rp[0] is handler and rp[1] and rp[2] == offset and rp[3] == size and rp[4] == value:
                        if trace.enabled:
                            trace.emit("cpu.mmio_replay", write=True, offset=offset, size=size)
                        return
                    if trace.enabled:
                        trace.emit("cpu.mmio_replay_mismatch", write=True, offset=offset, size=size)
                exits.mmio += 1
                events.now += 1
                if events._heap and events._heap[0].due <= events.now:
                    events.run_due()
                if trace.enabled:
                    trace.leave()
                    trace.emit("mmio.write", handler=type(handler).__name__, offset=offset, size=size,
                               value=value, insn=cpu.mmio_insn())
                write(offset, size, value)
                if cpu.stop_reason is not _RUNNING:
                    cpu._replay = (handler, True, offset, size, value, None)
            except BaseException as exc:     # noqa: BLE001 -- raised again by emu_start
                record(uc_, exc)

        return rd, wr

    def map_mmio(self, base: int, size: int, read, write) -> None:
        """Map one MMIO chunk with the callbacks of :meth:`wrap_mmio`, which unicorn
        calls directly (uc_direct: no binding frames on the exit path)."""
        mmio_map(self.uc, base, size, read, write)

    def request_stop(self, reason: StopReason = StopReason.EXIT) -> None:
        """Called from a hook (debug-exit, machine stop): end the current slice."""
        if self.stop_reason in (StopReason.NONE, StopReason.KICK):
            self.stop_reason = reason
        self.uc.emu_stop()

    def kick(self) -> None:
        """An interrupt became pending: return to the loop to deliver it."""
        if self.stop_reason is StopReason.NONE:
            self.stop_reason = StopReason.KICK
            self.uc.emu_stop()

    # --- registers -----------------------------------------------------------
    def _engine_mode(self, mode: int) -> None:
        """Set the mode field of unicorn's engine (``struct uc_struct { uc_arch arch;
        uc_mode mode; ...}``).  It only selects how the API treats register ids and
        the start address; the guest's CR0/EFER/CS (QEMU's hflags) decide how code
        runs.  The machine keeps it at UC_MODE_64 (full 64-bit registers, slices
        starting at any RIP — a 32-bit engine truncates the start address) and
        switches to UC_MODE_32 only around segment-register writes, which unicorn
        loads from the GDT in that mode (in 64-bit mode it stores the selector only)."""
        ctypes.cast(self.uc._uch, ctypes.POINTER(ctypes.c_int32))[1] = mode

    def load_segment(self, reg: int, selector: int) -> None:
        """Load a segment register from the guest's GDT, as a MOV to it would."""
        self._engine_mode(UC_MODE_32)
        try:
            self.uc.reg_write(reg, selector)
        finally:
            self._engine_mode(UC_MODE_64)

    def enter_privilege(self, cs: int, ss: int) -> None:
        """Switch to a more privileged CPL (an interrupt or SYSCALL from user mode)
        and load ``cs``/``ss`` from the GDT.

        Unicorn's register API checks a segment load against the current CPL as a
        MOV would (it refuses CS/SS of DPL 0 at CPL 3: UC_ERR_EXCEPTION, measured)
        and QEMU keeps the CPL in the hidden flags, where a load of SS sets it to the
        new SS's DPL.  So, as the CPU's own microcode does it without checks: clear
        CR0.PE for a moment (unicorn skips its checks outside protected mode, and a
        real-mode load of SS has DPL 0, which makes CPL 0), restore CR0, then load SS
        and CS normally at CPL 0 — descriptor flags (L, D, DPL) come from the GDT.
        Paging, EFER.LMA and the TLB are unaffected by PE alone in QEMU's
        cpu_x86_update_cr0 except for a TLB flush."""
        uc = self.uc
        cr0 = uc.reg_read(X.UC_X86_REG_CR0)
        self._engine_mode(UC_MODE_32)
        try:
            uc.reg_write(X.UC_X86_REG_CR0, cr0 & ~1)
            uc.reg_write(X.UC_X86_REG_SS, 0)
            uc.reg_write(X.UC_X86_REG_CR0, cr0)
            uc.reg_write(X.UC_X86_REG_SS, ss)
            uc.reg_write(X.UC_X86_REG_CS, cs)
        finally:
            self._engine_mode(UC_MODE_64)

    def regs64(self) -> dict[str, int]:
        rd = self.uc.reg_read
        return {name: rd(rid) for name, rid in _REG64}

    def write_regs64(self, **values: int) -> None:
        ids = dict(_REG64)
        for name, v in values.items():
            self.uc.reg_write(ids[name], v)

    def long_mode(self) -> bool:
        return bool(self.uc.reg_read(X.UC_X86_REG_MSR, EFER) & 0x400)

    def rip(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_RIP)

    # --- boot state (Multiboot 0.6.96 §3.2) -------------------------------
    def _flat32(self, gdt_addr: int, gdt: bytes, cs: int, ds: int) -> None:
        """Flat 32-bit protected mode with the given GDT, paging off, IF=0."""
        uc = self.uc
        self.machine.memory.write(gdt_addr, gdt)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_addr, len(gdt) - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR0, 0x11)  # PE | ET
        uc.reg_write(X.UC_X86_REG_CS, cs)
        for r in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_SS, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(r, ds)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        self._engine_mode(UC_MODE_64)

    def enter_multiboot(self, entry: int, magic: int, info_addr: int, gdt_addr: int) -> None:
        """32-bit flat protected mode at ``entry``, paging off, IF=0, EAX/EBX set."""
        uc = self.uc
        self._flat32(gdt_addr, struct.pack("<QQQ", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF), 0x08, 0x10)
        uc.reg_write(X.UC_X86_REG_RAX, magic)
        uc.reg_write(X.UC_X86_REG_RBX, info_addr)
        uc.reg_write(X.UC_X86_REG_RIP, entry)

    def enter_linux32(self, entry: int, boot_params: int, gdt_addr: int, gdt: bytes) -> None:
        """Linux 32-bit boot protocol entry (boot.rst): flat protected mode, paging and
        interrupts off, CS=0x10, DS/ES/SS=0x18, ESI=boot_params, EBP/EDI/EBX=0."""
        uc = self.uc
        self._flat32(gdt_addr, gdt, 0x10, 0x18)
        for r in (X.UC_X86_REG_RBP, X.UC_X86_REG_RDI, X.UC_X86_REG_RBX, X.UC_X86_REG_RAX):
            uc.reg_write(r, 0)
        uc.reg_write(X.UC_X86_REG_RSI, boot_params)
        uc.reg_write(X.UC_X86_REG_RIP, entry)

    # --- interrupt injection ------------------------------------------------------
    def try_deliver_interrupt(self) -> bool:
        """Deliver the highest pending vector if the guest can take it now."""
        apic = self.machine.apic
        if self._replay is not None or not (apic.irr or apic.extint_open()):
            return False    # an MMIO instruction must finish (its replay) first
        if not self.long_mode():
            return False  # guests take interrupts only once in long mode
        if not self.uc.reg_read(X.UC_X86_REG_RFLAGS) & RFLAGS_IF:
            return False
        # The APIC's own vectors first, then the 8259's through LINT0 in virtual-wire
        # mode (the INTA cycle), as QEMU's x86_cpu_exec_interrupt.
        source = apic
        vector = apic.pending_vector()
        if vector is None:
            vector = apic.pending_extint()
            if vector is None:
                return False
            source = apic.extint
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if not self.deliver(Event(vector, external=True),
                            f"interrupt vector {vector}"):
            return False
        source.accept(vector)
        self.exits.interrupts += 1
        self.halted = False
        if trace.enabled:
            trace.emit("cpu.interrupt", vector=vector, handler=self.uc.reg_read(X.UC_X86_REG_RIP), rip=rip)
        return True

    def _sysregs(self) -> tuple:
        rd = self.uc.reg_read
        paging = PagingState(rd(X.UC_X86_REG_CR0), rd(X.UC_X86_REG_CR3), rd(X.UC_X86_REG_CR4),
                             rd(X.UC_X86_REG_MSR, EFER))
        _s, idt_base, idt_limit, _f = rd(X.UC_X86_REG_IDTR)
        _s, gdt_base, gdt_limit, _f = rd(X.UC_X86_REG_GDTR)
        _s, tr_base, _l, _f = rd(X.UC_X86_REG_TR)
        return paging, (idt_base, idt_limit), (gdt_base, gdt_limit), tr_base

    def deliver(self, event: Event, what: str) -> bool:
        """Deliver an exception or interrupt through the guest's IDT (long mode,
        :mod:`.exceptions`); a triple fault ends the run with a report."""
        uc = self.uc
        rd = uc.reg_read
        frame = Frame(rd(X.UC_X86_REG_RIP), rd(X.UC_X86_REG_RSP), rd(X.UC_X86_REG_RFLAGS),
                      rd(X.UC_X86_REG_CS), rd(X.UC_X86_REG_SS))
        try:
            new, vector, cr2 = self.delivery.deliver(event, frame)
        except TripleFault as tf:
            self._fail(f"{what}: delivery failed, triple fault ({tf})")
            return False
        if cr2 is not None:
            uc.reg_write(X.UC_X86_REG_CR2, cr2)
        try:
            if (new.cs & 3) < (frame.cs & 3):
                self.enter_privilege(new.cs, new.ss)
            else:
                if new.cs != frame.cs:
                    self.load_segment(X.UC_X86_REG_CS, new.cs)
                if new.ss != frame.ss:
                    self.load_segment(X.UC_X86_REG_SS, new.ss)
        except UcError as err:
            self._fail(f"{what}: loading CS {new.cs:#x} / SS {new.ss:#x} failed ({err})")
            return False
        uc.reg_write(X.UC_X86_REG_RSP, new.rsp)
        uc.reg_write(X.UC_X86_REG_RFLAGS, new.rflags)
        uc.reg_write(X.UC_X86_REG_RIP, new.rip)
        if trace.enabled and not event.external:
            trace.emit("cpu.exception", vector=vector, error_code=event.error_code,
                       rip=frame.rip, handler=new.rip, cr2=cr2)
        return True

    def _deliver_exception(self) -> None:
        """The exception unicorn just reported, into the guest (long mode only)."""
        vec = self._exception
        self._exception = None
        if self._uc_exc.ok:
            self._uc_exc.clear_in_flight(self.uc)
        if vec != 14:
            # Unicorn leaves CR2 = 0xffff...fffe behind on other exceptions (#UD,
            # #GP from a segment load: measured), which a real CPU never does.  Only
            # a #PF writes CR2, and every #PF ends a slice, so CR2 is put back to its
            # value at the slice start (lost: a guest MOV to CR2 earlier in the slice).
            self.uc.reg_write(X.UC_X86_REG_CR2, self._cr2_at_slice)
        name = EXCEPTION_NAMES.get(vec, f"vector {vec}" + (" (software interrupt)" if vec >= 32 else ""))
        if not self.long_mode():
            self._fail(f"CPU exception {name} (exceptions are delivered only in long mode)")
            return
        software = self._exc_software
        err = self._exc_error if needs_error_code(vec, software) else None
        origin = None
        if software:
            # Unicorn resumes after INT n (CD ib) / INT3 (CC) / INTO (CE).
            rip = self.uc.reg_read(X.UC_X86_REG_RIP)
            origin = rip - (2 if self.read_code(rip - 2, 2) == bytes((0xCD, vec)) else 1)
        ev = Event(vec, err, software=software, cr2=self._exc_cr2 if vec == 14 else None,
                   origin_rip=origin)
        self.exits.exceptions += 1
        self.deliver(ev, f"CPU exception {name}")

    # --- faults ----------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        self.fault = self.describe_fault(reason)
        self.stop_reason = StopReason.FAULT

    def _internal_error(self, exc: BaseException) -> None:
        """A device model (or the machine) raised inside a unicorn callback: unicorn
        hands the exception back from ``emu_start``.  That is a bug in blockbed, not
        something the guest did; the run ends with a report naming the code, instead
        of a traceback (status 126)."""
        import traceback
        frames = traceback.extract_tb(exc.__traceback__)
        where = ""
        if frames:                      # the innermost frame: the code that raised
            f = frames[-1]
            path = f.filename.replace("\\", "/")
            cut = path.rfind("/blockbed/")
            path = path[cut + 1:] if cut >= 0 else path.rsplit("/", 1)[-1]
            where = f" at {path}:{f.lineno} in {f.name}"
        self._fail(f"internal error (a blockbed bug, please report it): "
                   f"{type(exc).__name__}: {exc}{where}")
        self.fault.internal = True

    def _classify_uc_error(self, err: UcError) -> str:
        if self._exception is not None:
            vec = self._exception
            return f"CPU exception {EXCEPTION_NAMES.get(vec, f'vector {vec}')}"
        if err.errno in _UC_ERRORS:
            return _UC_ERRORS[err.errno]
        return f"unicorn: {err}"

    # --- one slice -----------------------------------------------------------------
    def stop_for_deadline(self) -> None:
        """The run's wall-clock deadline passed (called from the watchdog thread)."""
        self.deadline_passed = True
        self.uc.emu_stop()

    def run_slice(self, count: int = 0) -> None:
        """Run guest code until an exit that needs the loop, HLT, a fault, or the
        run's deadline (:mod:`.watchdog`; the slice has no timeout of its own).

        With ``count`` unicorn also stops after that many instructions (it then
        counts every instruction, which halves the speed of tight loops, so the
        machine asks for it only when an instruction budget is set).
        """
        if self._uc_exc.ok:
            # A stop request pending when an exception is raised makes unicorn leave
            # without calling the interrupt hook and with QEMU's exception-in-flight
            # marker set (measured under Linux: a #PF dropped after an interrupt kick).
            # The instruction runs again and faults afresh, which the stale marker
            # would turn into #DF, then a silent triple-fault halt.  Between slices
            # nothing is in flight: clear it (about 2 us).
            self._uc_exc.clear_in_flight(self.uc)
        self.stop_reason = StopReason.NONE
        self._tsc_stop_ctx = None
        self._exception = None
        self._cr2_at_slice = self.uc.reg_read(X.UC_X86_REG_CR2)
        begin = self.rip()
        self.exits.slices += 1
        self._drop_completed_pio(begin)
        if self._replay is not None:
            # Unicorn resumes at the interrupted MMIO instruction, or at the start of
            # its translation block: step one instruction at a time until the
            # recorded access comes round again (answered from the record), then let
            # the loop deliver interrupts.  A different access ends the wait too.
            for _ in range(REPLAY_STEPS):
                try:
                    self.uc.emu_start(begin, END_ADDRESS, 0, 1)
                except UcError as err:
                    self._replay = None
                    if self.stop_reason is not StopReason.EXIT:
                        self._fail(self._classify_uc_error(err))
                    elif self._syscall_entry is not None:
                        self._enter_syscall()
                    return
                except BrokenPipeError:        # the serial echo's reader went away: the CLI's
                    raise
                except Exception as exc:       # noqa: BLE001 -- raised in a device callback
                    self._replay = None
                    self._internal_error(exc)
                    return
                self._restore_tsc_stop_context()
                self.instructions_lower_bound += 1
                if self._exception is not None and self.stop_reason is not StopReason.EXIT:
                    self._replay = None
                    self._deliver_exception()
                    return
                if self._syscall_entry is not None:
                    self._replay = None
                    self._enter_syscall()
                    return
                if self._replay is None or self.stop_reason is StopReason.EXIT:
                    break
                begin = self.rip()
                if not self._drop_completed_pio(begin):
                    break
            self._replay = None
            return
        try:
            remaps = self.machine.mmio.remaps
            self.uc.emu_start(begin, END_ADDRESS, 0, count)
        except UcError as err:
            if self.stop_reason is StopReason.EXIT:
                if self._syscall_entry is not None:
                    self._enter_syscall()
                return
            self._fail(self._classify_uc_error(err))
            return
        except BrokenPipeError:        # the serial echo's reader went away: the CLI's business
            raise
        except Exception as exc:       # noqa: BLE001 -- raised in a device callback
            self._internal_error(exc)
            return
        self._restore_tsc_stop_context()
        if self._exception is not None and self.stop_reason is not StopReason.EXIT:
            self._deliver_exception()
            return
        if self._syscall_entry is not None:
            self._enter_syscall()
            return
        if self.stop_reason is StopReason.NONE:
            if self.deadline_passed:
                return
            # Nothing asked unicorn to stop and the slice did not end: HLT.
            rip = self.rip()
            if rip and self.read_code(rip - 1, 1) == b"\xf4":
                self.halted = True
                self.exits.hlt += 1
                if trace.enabled:
                    trace.emit("cpu.hlt", rip=rip)
            elif count and self.machine.mmio.remaps != remaps:
                # A device changed the MMIO map inside a hook (a BAR enabled by a
                # config-space write): unicorn leaves the slice after that
                # instruction, not because the count ran out.
                self.instructions_lower_bound += 1
            elif count:
                self.instructions_lower_bound += count  # the count ran out: exactly `count` ran
