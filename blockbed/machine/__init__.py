"""A minimal AMD64 machine on unicorn.

- :mod:`.memory`   guest RAM from a host mmap; bound-checked DMA views.
- :mod:`.bus`      port-I/O and MMIO dispatch (misses read all-ones).
- :mod:`.events`   the deterministic event queue (virtual time, seeded order).
- :mod:`.interrupts` local APIC, MSI delivery, pending vectors.
- :mod:`.cpu`      unicorn set-up, the run loop, HLT, interrupt injection,
                   fault reports.
- :mod:`.pci`      host bridge, configuration mechanism #1, BARs, MSI/MSI-X.
- :mod:`.boot`     multiboot v1 ELF loader.
- :mod:`.board`    builds a machine: RAM + PCI + serial + debug-exit + drives.
- :mod:`.qtest`    drive a machine from Python with no guest code.
"""

from .board import Machine, MachineConfig, RunResult, ExitKind

__all__ = ["Machine", "MachineConfig", "RunResult", "ExitKind"]
