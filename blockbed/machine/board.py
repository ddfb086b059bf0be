"""The machine: RAM + CPU + buses + interrupt controllers + PCI + serial + debug-exit.

:class:`Machine` wires the parts together and owns the run loop::

    m = Machine(MachineConfig(memory_mib=256, seed=1))
    m.add_pci(SomeController(...))          # before boot
    m.load_kernel("guests/build/hello.elf", "a=1")
    result = m.run()                        # RunResult: kind, exit code, transcript, stats

The loop runs unicorn in slices that end only when the machine asks (the
guest's exit, an interrupt to deliver, HLT) or at the run's deadline — never
on an internal timer, because a stop landing inside an I/O callback makes
unicorn execute that instruction twice.  Between slices it delivers pending
interrupts, and while the guest halts it moves virtual time to the next
device event.  It ends on the guest's debug-exit write, a guest fault, a halt
nothing can wake, the block layer's ``stop`` error policy, the wall-clock
timeout, or the instruction budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable

from .. import trace
from .debugexit import DebugExit
from .serial import Serial16550
from .watchdog import Watchdog
from .boot import GDT_ADDR, MB_BOOT_MAGIC, BootError, LoadedKernel, load_multiboot
from .bus import IoPortBus, MmioBus
from .cpu import CPU, GuestFault, StopReason
from .events import EventQueue
from .interrupts import APIC_BASE, APIC_SIZE, LocalAPIC
from .ioapic import IOAPIC, IOAPIC_BASE, IOAPIC_SIZE
from .memory import GuestMemory
from .pci import HostBridge, IsaBridge, PCIDevice, PCIHost, assign_bars

MAX_RAM_MIB = 3 * 1024  # RAM stays below the PCI hole at 0xC0000000


class ExitKind(Enum):
    """How a run ended.  ``exit_status`` gives the process status `blockbed run` uses."""

    GUEST_EXIT = "guest-exit"      # the guest wrote to debug-exit: its value
    STOPPED = "stopped"            # the block layer's werror/rerror=stop paused the machine
    FAULT = "guest-fault"          # CPU exception, unmapped fetch, bad IDT …
    HALTED = "halted"              # HLT with nothing that could ever wake the CPU
    BUDGET = "instruction-budget"  # the instruction budget ran out
    TIMEOUT = "timeout"            # the wall-clock limit ran out
    INTERNAL = "internal-error"    # a bug in blockbed (a device model raised): not the guest


#: Guest debug-exit values 0..GUEST_STATUS_MAX are the process status as they are; any
#: other value (119..2^32-1: it would collide with the host outcomes below, or wrap
#: around to 0 = success) becomes GUEST_VALUE_OUT_OF_RANGE, and stderr names the value.
GUEST_STATUS_MAX = 118
GUEST_VALUE_OUT_OF_RANGE = 119

HOST_EXIT_STATUS = {
    ExitKind.STOPPED: 120,
    ExitKind.FAULT: 121,
    ExitKind.HALTED: 122,
    ExitKind.BUDGET: 123,
    ExitKind.TIMEOUT: 124,
    ExitKind.INTERNAL: 126,
}


@dataclass
class MachineConfig:
    memory_mib: int = 256
    seed: int = 0
    timeout_s: float = 60.0
    max_instructions: int | None = None
    echo_serial: Callable[[bytes], None] | None = None


@dataclass
class RunResult:
    kind: ExitKind
    exit_code: int | None
    reason: str
    transcript: str
    wall_s: float
    exits: dict[str, int]
    virtual_ticks: int
    instructions_at_least: int
    fault: GuestFault | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        if self.kind is ExitKind.GUEST_EXIT:
            v = self.exit_code
            return v if 0 <= v <= GUEST_STATUS_MAX else GUEST_VALUE_OUT_OF_RANGE
        return HOST_EXIT_STATUS[self.kind]

    def summary(self) -> str:
        ex = ", ".join(f"{k} {v}" for k, v in self.exits.items())
        return (f"blockbed: {self.kind.value}; exits: {ex}; virtual ticks {self.virtual_ticks}; "
                f"wall {self.wall_s:.3f} s")


class Machine:
    def __init__(self, config: MachineConfig | None = None):
        self.config = config = config or MachineConfig()
        if not 2 <= config.memory_mib <= MAX_RAM_MIB:
            raise ValueError(f"--memory must be between 2 and {MAX_RAM_MIB} MiB (got {config.memory_mib})")
        self.memory = GuestMemory(config.memory_mib << 20)
        self.warnings: list[str] = []
        self.events = EventQueue(config.seed)
        self.pio = IoPortBus()
        self.mmio = MmioBus(self.memory.size)
        self.apic = LocalAPIC(kick=self._kick, events=self.events)
        self.cpu = CPU(self)
        self.mmio.attach(self.cpu.uc, self.cpu.wrap_mmio, self.cpu.map_mmio)
        self.mmio.add("lapic", APIC_BASE, APIC_SIZE, self.apic)
        self.ioapic = IOAPIC(self.apic)
        self.apic.eoi_listeners.append(self.ioapic.eoi)
        self.mmio.add("ioapic", IOAPIC_BASE, IOAPIC_SIZE, self.ioapic)
        self.serial = Serial16550(echo=config.echo_serial)
        self.pio.add("serial0", 0x3F8, 8, self.serial)
        self.pio.add("debug-exit", 0xF4, 4, DebugExit(self.guest_exit))
        self.pci = PCIHost(self)
        self.pci.intx_listeners.append(lambda dev, irq, level: self.ioapic.set_line(irq, level))
        self.pci.add(HostBridge(), slot=0)
        self.pci.add(IsaBridge(), slot=1)
        # The PIIX3 IDE function 00:01.1 with its legacy channels, built in as on QEMU's pc.
        from ..devices.ide import find_or_add as _add_piix_ide
        _add_piix_ide(self)
        self.kernel: LoadedKernel | None = None
        self.exit_code: int | None = None
        self.stop_reason_text: str | None = None
        self._firmware_done = False
        self.on_close: list[Callable[[], None]] = []
        self.on_resume: list[Callable[[], None]] = []   # devices' restart after a stop

    # --- assembly ------------------------------------------------------------------
    def add_pci(self, dev: PCIDevice, slot: int | None = None) -> PCIDevice:
        return self.pci.add(dev, slot)

    def firmware(self) -> None:
        """Assign BARs and enable decoding, as SeaBIOS does before a -kernel boot."""
        if not self._firmware_done:
            self.warnings += assign_bars(self.pci)
            self._firmware_done = True

    def load_kernel(self, path: str, append: str = "", initrd: str | None = None) -> LoadedKernel:
        """Load a multiboot ELF or (detected by its "HdrS" header) a Linux bzImage."""
        from .linuxboot import LINUX_GDT_ADDR, is_bzimage, linux_gdt, load_linux
        self.firmware()
        if is_bzimage(path):
            self.kernel = load_linux(self.memory, path, append, initrd)
            from .platform import LinuxPlatform
            if getattr(self, "platform", None) is None:
                self.platform = LinuxPlatform(self)
            self.cpu.enter_linux32(self.kernel.entry, self.kernel.info_addr, LINUX_GDT_ADDR, linux_gdt())
            return self.kernel
        if initrd is not None:
            raise BootError("--initrd needs a Linux bzImage kernel (this is not one)")
        self.kernel = load_multiboot(self.memory, path, append)
        self.cpu.enter_multiboot(self.kernel.entry, MB_BOOT_MAGIC, self.kernel.info_addr, GDT_ADDR)
        return self.kernel

    # --- requests from devices ------------------------------------------------------
    def guest_exit(self, value: int) -> None:
        if self.exit_code is None:
            self.exit_code = value
        self.cpu.request_stop(StopReason.EXIT)

    def stop(self, reason: str) -> None:
        """Pause the machine (the block layer's ``stop`` error policy)."""
        if self.stop_reason_text is None:
            self.stop_reason_text = reason
        self.cpu.request_stop(StopReason.EXIT)

    def resume(self) -> None:
        """Continue after a stop (QEMU's monitor ``cont``): forget the stop reason and
        let every device restart what the error policy held (the failed request is
        submitted again).  The next :meth:`run` goes on from where the guest was."""
        if self.stop_reason_text is None:
            return
        if trace.enabled:
            trace.emit("machine.resume", after=self.stop_reason_text)
        self.stop_reason_text = None
        for fn in self.on_resume:
            fn()

    def _kick(self) -> None:
        self.cpu.kick()

    # --- the run loop ---------------------------------------------------------------------
    def run(self, timeout_s: float | None = None) -> RunResult:
        if self.kernel is None:
            raise RuntimeError("load_kernel() first")
        cfg = self.config
        timeout = cfg.timeout_s if timeout_s is None else timeout_s
        cpu = self.cpu
        start = time.monotonic()
        deadline = start + timeout
        kind, reason = None, ""
        budget = cfg.max_instructions
        if trace.enabled:
            cpu.track_mmio_rip()        # MMIO events name their instruction
        # The deadline is kept by one thread for the whole run (watchdog.py);
        # the slices themselves run without a timeout.
        cpu.deadline_passed = False
        watchdog = Watchdog(deadline, cpu.stop_for_deadline)
        try:
            while kind is None:
                if self.exit_code is not None:
                    kind, reason = ExitKind.GUEST_EXIT, f"guest exit {self.exit_code}"
                    break
                if self.stop_reason_text is not None:
                    kind, reason = ExitKind.STOPPED, f"machine stopped: {self.stop_reason_text}"
                    break
                if cpu.fault is not None:
                    kind = ExitKind.INTERNAL if cpu.fault.internal else ExitKind.FAULT
                    reason = cpu.fault.reason
                    break
                cpu.try_deliver_interrupt()
                if cpu.fault is not None:
                    continue
                if cpu.halted:
                    if self.apic.has_pending() and cpu.try_deliver_interrupt():
                        continue
                    if self.events.skip_to_next():
                        continue
                    # Nothing will wake the CPU: an interrupt may be pending but masked
                    # by IF=0 or the priority rules, or none is coming at all.
                    pending = self.apic.has_pending() or self.ioapic.asserted
                    if not cpu.regs64()["rflags"] & (1 << 9):
                        reason = "halted with interrupts disabled (IF=0) and nothing to wake it"
                    elif pending:
                        reason = "halted: the pending interrupt is blocked by priority"
                    else:
                        reason = "halted waiting for an interrupt, but no device has anything pending"
                    kind = ExitKind.HALTED
                    break
                now = time.monotonic()
                if now >= deadline:
                    kind, reason = ExitKind.TIMEOUT, f"wall-clock timeout after {timeout:g} s"
                    break
                # A slice has no timeout: the watchdog's stop at the deadline (like any
                # stop request the machine did not make) can land inside an MMIO or
                # port callback, and unicorn then runs that instruction again on
                # resume -- a device would see the access twice.  So the deadline only
                # ever ends the run; slices end early only through our own stop
                # requests (exit, interrupt kick), which the CPU's replay guard covers.
                if budget is not None:
                    remaining = budget - cpu.instructions_lower_bound
                    if remaining <= 0:
                        kind, reason = ExitKind.BUDGET, f"instruction budget of {budget} used up"
                        break
                    cpu.run_slice(count=remaining)
                else:
                    cpu.run_slice()
        finally:
            watchdog.cancel()
        wall = time.monotonic() - start
        if trace.enabled:
            trace.emit("machine.end", kind=kind.value, reason=reason)
        warnings = self.warnings + self.pio.conflicts + self.mmio.conflicts
        return RunResult(kind, self.exit_code, reason, self.serial.text(), wall,
                         cpu.exits.as_dict(), self.events.now, cpu.instructions_lower_bound,
                         cpu.fault, warnings)

    def close(self) -> None:
        for fn in self.on_close:
            fn()
        self.on_close.clear()
