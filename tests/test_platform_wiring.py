"""The Linux platform attached to a machine: ports decode, ACPI tables in the BIOS area."""

from blockbed.machine.board import Machine, MachineConfig
from blockbed.machine.platform import ACPI_RSDP, LinuxPlatform
from blockbed.machine.qtest import QTest


def test_linux_platform_ports_and_tables():
    m = Machine(MachineConfig(memory_mib=64))
    try:
        plat = LinuxPlatform(m)
        assert m.pio.conflicts == []
        qt = QTest(m)
        assert qt.memread(ACPI_RSDP, 8) == b"RSD PTR "
        qt.outb(0x70, 0x15)
        assert qt.inb(0x71) == 640 & 0xFF
        qt.outb(0x43, 0x34)                 # PIT ch0 rate generator, period 5 ticks
        qt.outb(0x40, 5)
        qt.outb(0x40, 0)
        for port, v in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
            qt.outb(port, v)
        qt.clock_step(10)
        assert plat.pic.pending_vector() == 0x30    # IRQ0 from the PIT through the 8259
    finally:
        m.close()
