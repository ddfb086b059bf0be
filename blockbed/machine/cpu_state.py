"""The CPU's vocabulary: why a slice stopped, what a fault report holds, exit counts,
and the architectural numbers (MSRs, RFLAGS bits, exception names) the CPU modules
share.  Kept apart from :mod:`.cpu` so its mixins (:mod:`.cpu_insns`,
:mod:`.cpu_inspect`) and :mod:`.pio_string` can import them without a cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from unicorn import x86_const as X

# The time-stamp counter follows the virtual clock: TSC = TSC_PER_TICK * ticks
# (clock.py).  RDTSC/RDTSCP are exits (one tick each), so a guest polling the TSC
# makes time advance and a run is reproducible (unicorn's own TSC reads the host clock).
MSR_TSC_AUX = 0xC0000103
MSR_STAR, MSR_LSTAR, MSR_FMASK = 0xC0000081, 0xC0000082, 0xC0000084
EFER = 0xC0000080
RFLAGS_IF = 1 << 9
RFLAGS_TF = 1 << 8
EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD exception",
}
_REG64 = [("rax", X.UC_X86_REG_RAX), ("rbx", X.UC_X86_REG_RBX), ("rcx", X.UC_X86_REG_RCX),
          ("rdx", X.UC_X86_REG_RDX), ("rsi", X.UC_X86_REG_RSI), ("rdi", X.UC_X86_REG_RDI),
          ("rbp", X.UC_X86_REG_RBP), ("rsp", X.UC_X86_REG_RSP), ("r8", X.UC_X86_REG_R8),
          ("r9", X.UC_X86_REG_R9), ("r10", X.UC_X86_REG_R10), ("r11", X.UC_X86_REG_R11),
          ("r12", X.UC_X86_REG_R12), ("r13", X.UC_X86_REG_R13), ("r14", X.UC_X86_REG_R14),
          ("r15", X.UC_X86_REG_R15), ("rip", X.UC_X86_REG_RIP), ("rflags", X.UC_X86_REG_RFLAGS)]


class StopReason(Enum):
    NONE = "none"
    EXIT = "exit"            # debug-exit written, or the machine asked to stop
    KICK = "kick"            # an interrupt became pending; deliver it
    FAULT = "fault"


_RUNNING = StopReason.NONE


@dataclass
class GuestFault:
    """Why and where a guest stopped making sense."""

    reason: str
    rip: int
    instruction: str = ""
    registers: dict[str, int] = field(default_factory=dict)
    long_mode: bool = False
    internal: bool = False       # blockbed's own error (a device model raised), not the guest's

    def report(self) -> str:
        lines = [f"guest fault: {self.reason}",
                 f"  at rip={self.rip:#x}: {self.instruction or '(no instruction bytes)'}"]
        regs = self.registers
        names = [n for n, _ in _REG64 if n in regs]
        for i in range(0, len(names), 4):
            lines.append("  " + "  ".join(f"{n:>6}={regs[n]:#018x}" for n in names[i:i + 4]))
        extra = {k: v for k, v in regs.items() if k not in names}
        if extra:
            lines.append("  " + "  ".join(f"{k}={v:#x}" for k, v in sorted(extra.items())))
        return "\n".join(lines)


@dataclass
class ExitCounts:
    pio: int = 0
    mmio: int = 0
    hlt: int = 0
    interrupts: int = 0
    exceptions: int = 0
    tsc: int = 0
    syscalls: int = 0
    slices: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(pio=self.pio, mmio=self.mmio, hlt=self.hlt, interrupts=self.interrupts)
