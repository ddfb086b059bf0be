"""What the CPU can tell about itself: fault reports and disassembly.

A guest fault ends a run with a :class:`.cpu.GuestFault` (reason, RIP, the
instruction disassembled with capstone through the guest's page tables, the
registers); trace events of exits carry the instruction that caused them, for MMIO
exits with the RIP a tracing memory hook learns (:meth:`CPUInspect.track_mmio_rip`).
:class:`CPUInspect` is a mixin of :class:`.cpu.CPU`.
"""

from __future__ import annotations

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UcError
from unicorn import x86_const as X

from .cpu_state import EFER, GuestFault
from .paging import PageFault, read_entry, translate


class CPUInspect:
    """Fault reports, instruction bytes and their disassembly (a mixin of the CPU)."""

    def describe_fault(self, reason: str) -> GuestFault:
        try:
            lm = self.long_mode()
            regs = self.regs64()
            if not lm:
                regs = {k: v & 0xFFFFFFFF for k, v in regs.items()}
            rip = regs["rip"]
            for name, rid in (("cr0", X.UC_X86_REG_CR0), ("cr2", X.UC_X86_REG_CR2),
                              ("cr3", X.UC_X86_REG_CR3), ("cr4", X.UC_X86_REG_CR4)):
                regs[name] = self.uc.reg_read(rid)
            regs["efer"] = self.uc.reg_read(X.UC_X86_REG_MSR, EFER)
            regs["cs"] = self.uc.reg_read(X.UC_X86_REG_CS)
        except UcError:
            lm, regs, rip = False, {}, 0
        return GuestFault(reason, rip, self.disassemble(rip, lm), regs, lm)

    def exit_insn(self) -> str:
        """The instruction at RIP when a port exit is being served (trace events only:
        the same capstone text as a fault report).  For MMIO exits see
        :meth:`mmio_insn`: unicorn does not bring RIP up to date inside MMIO
        callbacks (it is a translation block's start there)."""
        try:
            lm = self.long_mode()
            rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        except UcError:
            return ""
        return f"{rip:#x}: {self.disassemble(rip, lm)}"

    def track_mmio_rip(self) -> None:
        """While tracing: learn the RIP of every MMIO access, for :meth:`mmio_insn`.

        Unicorn restores the guest PC from the translation block before it calls a
        *memory hook* (``cpu_restore_state`` in cputlb.c), though not before an MMIO
        callback.  So a read/write hook on the addresses above RAM records RIP, and the
        MMIO callback that follows names the right instruction.  Any memory hook sends
        every guest access down unicorn's slow path, so it is installed only when a
        run starts with tracing on, and never removed (removing flushes every block)."""
        if self._mmio_rip_hook is not None:
            return
        cpu = self

        def on_access(uc, access, addr, size, value, ud):
            cpu._mmio_rip = uc.reg_read(X.UC_X86_REG_RIP)
        self._mmio_rip_hook = self.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_access,
                                               None, self.machine.memory.size, 0xFFFFFFFFFFFFFFFF)

    def mmio_insn(self) -> str:
        """The instruction of the MMIO access being served (tracing only; empty when
        :meth:`track_mmio_rip` is not on)."""
        if self._mmio_rip_hook is None:
            return ""
        try:
            return f"{self._mmio_rip:#x}: {self.disassemble(self._mmio_rip, self.long_mode())}"
        except UcError:
            return ""

    def read_code(self, addr: int, n: int) -> bytes:
        """Up to ``n`` bytes at linear ``addr`` (through the guest's page tables
        when paging is on); fewer, or none, where the walk or RAM ends."""
        out = b""
        paging = self._sysregs()[0]
        mem = self.machine.memory
        while len(out) < n:
            try:
                phys = translate(paging, read_entry(mem), addr + len(out))
            except PageFault:
                break
            chunk = min(n - len(out), 0x1000 - ((addr + len(out)) & 0xFFF), max(0, mem.size - phys))
            if chunk <= 0:
                break
            out += mem.read(phys, chunk)
        return out

    def disassemble(self, rip: int, long_mode: bool) -> str:
        code = self.read_code(rip, 15)
        n = len(code)
        if n == 0:
            return ""
        try:
            import capstone
            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if long_mode else capstone.CS_MODE_32)
            for insn in md.disasm(code, rip):
                return f"{insn.mnemonic} {insn.op_str}".strip() + f"  [{insn.bytes.hex()}]"
        except Exception as exc:  # capstone missing or broken: show the bytes
            return f"bytes {code.hex()} ({exc})"
        return f"undecodable bytes {code.hex()}"
