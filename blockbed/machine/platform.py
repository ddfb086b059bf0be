"""The PC legacy platform a Linux guest expects, attached only on the Linux boot path.

Multiboot guests keep the lean machine (no timers ticking, no extra ports), so
their behaviour and exit counts are unchanged.  For a bzImage the board adds:
the 8259 pair (pic.py) as the CPU's ExtINT interrupt source, the 8254 (pit.py,
IRQ0 -> PIC IR0 and I/O APIC pin 2 as the MADT's override says), the RTC/CMOS
(rtc.py, IRQ8) with the memory-size bytes, the 16550's interrupt on IRQ4, reset ports and the PIIX4 PM block
(reset.py), and the ACPI tables (acpi.py) in the reserved BIOS area 0xF0000.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import acpi
from .pic import PICPair
from .pit import PIT
from .reset import ResetControl
from .rtc import RTC

if TYPE_CHECKING:
    from .board import Machine

ACPI_RSDP = 0xF0000
ACPI_TABLES = 0xF0100


class LinuxPlatform:
    def __init__(self, m: "Machine"):
        self.m = m
        self.pic = PICPair(notify=m._kick)
        m.pio.add("pic-master", 0x20, 2, self.pic.handler("master"))
        m.pio.add("pic-slave", 0xA0, 2, self.pic.handler("slave"))
        m.pio.add("elcr", 0x4D0, 2, self.pic.handler("elcr"))
        m.apic.extint = self.pic      # INTR -> LINT0 (virtual wire until the guest masks it)
        self.pit = PIT(m.events, irq=lambda lvl: self._isa_irq(0, lvl))
        m.pio.add("pit", 0x40, 4, self.pit)
        self.rtc = RTC(m.events, irq=lambda lvl: self._isa_irq(8, lvl))
        self.rtc.set_memory(m.memory.size)
        m.pio.add("rtc", 0x70, 2, self.rtc)
        m.serial.irq = lambda lvl: self._isa_irq(4, lvl)   # COM1 -> IRQ4 (the MADT has no override)
        self.reset = ResetControl(self._on_reset, self._on_poweroff, events=m.events)
        m.pio.add("port92", 0x92, 1, self.reset.port92_handler())
        m.pio.add("kbc-cmd", 0x64, 1, self.reset.kbc_handler())
        m.pci.conf_addr.rcr = self.reset.cf9_handler()   # byte accesses to 0xCF9
        m.pio.add("piix4-pm", acpi.PM_BASE, 12, self.reset.pm_handler())
        m.pio.add("apm", acpi.SMI_CMD, 2, self.reset.smi_cmd_handler())
        layout = acpi.build(rsdp_addr=ACPI_RSDP, tables_addr=ACPI_TABLES)
        for at, data in layout.blobs.items():
            m.memory.write(at, data)

    def _isa_irq(self, irq: int, level: bool) -> None:
        self.pic.set_irq(irq, level)
        self.m.ioapic.set_line(2 if irq == 0 else irq, level)   # MADT override IRQ0 -> GSI2

    def _on_reset(self, why: str) -> None:
        self.m.warnings.append(f"guest requested a reset ({why}); the run ends")
        self.m.guest_exit(0)

    def _on_poweroff(self, why: str) -> None:
        self.m.guest_exit(0)
