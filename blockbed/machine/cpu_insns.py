"""The instructions blockbed executes for unicorn: SYSCALL and RDTSC/RDTSCP.

Unicorn runs a hook instead of SYSCALL (without one the instruction is a no-op) and
can hook RDTSC/RDTSCP (the hook replaces its host-clock implementation).  Both hooks
are methods of the CPU, kept here: :class:`InstructionHooks` is a mixin of
:class:`.cpu.CPU`, whose state (``uc``, ``machine``, ``exits``, ``stop_reason``) they
use.  SYSCALL follows the SDM (vol. 2B) with the RIP write deferred to the slice's
end; RDTSC follows the virtual clock (:data:`.clock.TSC_PER_TICK`).
"""

from __future__ import annotations

import ctypes

from unicorn import x86_const as X

from .. import trace
from .clock import TSC_PER_TICK
from .cpu_state import _RUNNING, EFER, MSR_FMASK, MSR_LSTAR, MSR_STAR, MSR_TSC_AUX
from .uc_direct import Msr, hook_insn, record


class InstructionHooks:
    """SYSCALL and RDTSC/RDTSCP, as methods of the CPU (a mixin)."""

    def _syscall(self) -> None:
        """SYSCALL (SDM vol. 2B, 64-bit mode): RCX <- next RIP, R11 <- RFLAGS,
        RFLAGS &= ~IA32_FMASK, CS <- STAR[47:32], SS <- STAR[47:32] + 8, CPL 0,
        RIP <- IA32_LSTAR.

        Unicorn runs only the hook for SYSCALL (measured: without one, the
        instruction is a no-op), with RIP still at the instruction.  Everything but
        RIP is written here; RIP is not.  Writing RIP from inside a hook sets
        unicorn's "skip PC sync" flag, which only the next exit check consumes, and
        a SYSCALL's block ends without one: the flag then stays set for the rest of
        the slice, so every later stop (an MMIO kick, a port hook) left RIP at a
        stale block start with the registers of a later instruction (unicorn 2.1.4,
        ``uc_reg_write`` and ``HELPER(check_exit_request)``; measured under Linux:
        ``ahci_qc_issue`` restarted from its entry with EDI = 1 << tag, then #PF).
        So the hook ends the slice, and :meth:`run_slice` writes LSTAR to RIP after
        ``emu_start`` returns, where a write is a plain start address.  The
        selectors are loaded from the GDT, where the SDM loads fixed flat
        descriptors: the same for any OS whose GDT holds what its STAR names
        (Linux's __KERNEL_CS/__KERNEL_DS).  SYSRET needs nothing: unicorn executes
        it (CPL 3 from STAR[63:48])."""
        uc = self.uc
        rd = uc.reg_read
        efer = rd(X.UC_X86_REG_MSR, EFER)
        if not efer & 1 or not self.long_mode():    # EFER.SCE clear (or legacy mode): #UD
            self._exception = 6
            self._exc_error, self._exc_software = 0, False
            uc.emu_stop()
            return
        rip = rd(X.UC_X86_REG_RIP)
        rflags = rd(X.UC_X86_REG_RFLAGS)
        star = rd(X.UC_X86_REG_MSR, MSR_STAR)
        lstar = rd(X.UC_X86_REG_MSR, MSR_LSTAR)
        fmask = rd(X.UC_X86_REG_MSR, MSR_FMASK)
        uc.reg_write(X.UC_X86_REG_RCX, rip + 2)
        uc.reg_write(X.UC_X86_REG_R11, rflags & ~(1 << 16))         # RF cleared
        sel = star >> 32 & 0xFFFC
        if rd(X.UC_X86_REG_CS) & 3:
            self.enter_privilege(sel, sel + 8)
        else:
            self.load_segment(X.UC_X86_REG_SS, sel + 8)
            self.load_segment(X.UC_X86_REG_CS, sel)
        uc.reg_write(X.UC_X86_REG_RFLAGS, rflags & ~fmask & ~(1 << 16) | 2)
        self._syscall_entry = lstar         # RIP: written after the slice (see above)
        uc.emu_stop()
        self.exits.syscalls += 1
        if trace.enabled:
            trace.emit("cpu.syscall", rip=rip, nr=rd(X.UC_X86_REG_RAX), entry=lstar)

    def _enter_syscall(self) -> None:
        """The RIP half of :meth:`_syscall`, between slices: jump to IA32_LSTAR."""
        self.uc.reg_write(X.UC_X86_REG_RIP, self._syscall_entry)
        self._syscall_entry = None

    def _restore_tsc_stop_context(self) -> None:
        """A stop requested inside the RDTSC hook (a device event due at that tick
        raised an interrupt) makes unicorn leave with RIP at the RDTSC, to run it
        again, but with CPU state it did not write back on that path: measured under
        Linux, RFLAGS 0x847 in the hook and 0xa4db3d4f after the slice (reserved bits
        set, then #GP at the next PUSHF).  The context saved in the hook, before the
        RDTSC ran, is put back whole (registers, flags, the rest of the CPU state;
        memory is not part of it and needs nothing), so the RDTSC runs again from
        exactly where the guest was."""
        sf = self._tsc_stop_ctx
        if sf is not None:
            self._tsc_stop_ctx = None
            if self.uc.reg_read(X.UC_X86_REG_RIP) == sf[0]:
                self.uc.context_restore(sf[1])

    def _install_tsc_hooks(self) -> None:
        """RDTSC/RDTSCP from the virtual clock (see TSC_PER_TICK).

        Unicorn >= 2.1.2 can hook both instructions (the hook returns 1 to skip
        its own, host-clock based, implementation), but the Python binding only
        accepts IN/OUT/SYSCALL/SYSENTER/CPUID, so the hook is registered directly
        (uc_direct) with CPUID's callback type (same signature)."""
        from unicorn.unicorn_py3.arch import intel
        from unicorn.unicorn_py3.unicorn import uclib
        events = self.machine.events
        exits = self.exits
        cpu = self
        # EDX:EAX in one uc_reg_write_batch: two binding-level reg_write calls cost
        # ~11 us per RDTSC (Linux reads the TSC ~800,000 times in one boot of the test
        # guest, measured with cProfile), the batch about 1 us.  The engine is in
        # 64-bit mode while guest code runs, so the upper halves are cleared, as
        # RDTSC does in 64-bit mode.
        # RDTSCP (Linux's rdtsc_ordered() when CPUID offers it: most of those reads)
        # also sets ECX to IA32_TSC_AUX, read with one uc_reg_read_batch.
        handle = self.uc._uch
        write_batch = uclib.uc_reg_write_batch
        read_batch = uclib.uc_reg_read_batch
        tsc_ids = (ctypes.c_int * 3)(X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX)
        tsc_vals = (ctypes.c_uint64 * 3)()
        base = ctypes.addressof(tsc_vals)
        tsc_ptrs = (ctypes.c_void_p * 3)(base, base + 8, base + 16)
        aux_id = (ctypes.c_int * 1)(X.UC_X86_REG_MSR)
        aux = Msr(MSR_TSC_AUX, 0)
        aux_ptr = (ctypes.c_void_p * 1)(ctypes.addressof(aux))
        self._tsc_batch = (tsc_ids, tsc_vals, tsc_ptrs, aux_id, aux, aux_ptr)   # kept alive

        def tick_tsc(uc, rdtscp: bool) -> int:
            exits.tsc += 1
            events.now += 1
            if events._heap and events._heap[0].due <= events.now:
                if cpu.stop_reason is _RUNNING and cpu._tsc_stop_ctx is None:
                    # The state at the RDTSC, in case an event below asks for a stop
                    # (see _restore_tsc_stop_context): about 2 us, only when an event is due.
                    ctx = (uc.reg_read(X.UC_X86_REG_RIP), uc.context_save())
                    events.run_due()
                    if cpu.stop_reason is not _RUNNING:
                        cpu._tsc_stop_ctx = ctx
                else:
                    events.run_due()
            tsc = events.now * TSC_PER_TICK
            tsc_vals[0] = tsc & 0xFFFFFFFF
            tsc_vals[1] = (tsc >> 32) & 0xFFFFFFFF
            if rdtscp:
                read_batch(handle, aux_id, aux_ptr, 1)
                tsc_vals[2] = aux.value & 0xFFFFFFFF
                write_batch(handle, tsc_ids, tsc_ptrs, 3)
            else:
                write_batch(handle, tsc_ids, tsc_ptrs, 2)
            if trace.enabled:
                trace.emit("cpu.rdtsc", tsc=tsc)
            return 1

        uc_ = self.uc

        def direct(rdtscp: bool):
            """The hook for one of the two, called by unicorn directly (uc_direct),
            so it guards its own exceptions."""
            def on_tsc(handle, ud):
                try:
                    return tick_tsc(uc_, rdtscp)
                except BaseException as exc:     # noqa: BLE001 -- raised again by emu_start
                    record(uc_, exc)
                    return 1
            return on_tsc

        hook_insn(uc_, X.UC_X86_INS_RDTSC, intel.HOOK_INSN_CPUID_CFUNC, direct(False))
        hook_insn(uc_, X.UC_X86_INS_RDTSCP, intel.HOOK_INSN_CPUID_CFUNC, direct(True))
