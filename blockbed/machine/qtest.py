"""Drive a machine from Python with no guest code (in the spirit of QEMU's qtest).

Device tests build a :class:`Machine`, add their device, call
:meth:`QTest.boot_firmware` (assigns BARs and enables decoding, as the
firmware does) and then poke registers and memory::

    m = Machine(MachineConfig(memory_mib=64))
    dev = m.add_pci(MyDevice(...))
    qt = QTest(m)
    qt.boot_firmware()
    bar = qt.bar_address(dev, 0)
    qt.writel(bar + 0x10, 1)
    qt.clock_step(100)          # let scheduled completions run

Accesses go through the same dispatch the CPU uses (port bus, MMIO bus, PCI
configuration mechanism #1), and each advances virtual time by one tick as a
CPU exit would, so device behaviour under qtest matches behaviour under a
guest.
"""

from __future__ import annotations

from .board import Machine
from .pci import BAR0, PCIDevice


class QTest:
    def __init__(self, machine: Machine):
        self.m = machine

    def boot_firmware(self) -> None:
        self.m.firmware()

    # --- port I/O ------------------------------------------------------------
    def _tick(self) -> None:
        self.m.events.tick()

    def inb(self, port: int) -> int:
        self._tick()
        return self.m.pio.read(port, 1)

    def inw(self, port: int) -> int:
        self._tick()
        return self.m.pio.read(port, 2)

    def inl(self, port: int) -> int:
        self._tick()
        return self.m.pio.read(port, 4)

    def outb(self, port: int, value: int) -> None:
        self._tick()
        self.m.pio.write(port, 1, value & 0xFF)

    def outw(self, port: int, value: int) -> None:
        self._tick()
        self.m.pio.write(port, 2, value & 0xFFFF)

    def outl(self, port: int, value: int) -> None:
        self._tick()
        self.m.pio.write(port, 4, value & 0xFFFFFFFF)

    # --- MMIO (or RAM, when the address is in RAM) ----------------------------
    def _read(self, addr: int, size: int) -> int:
        self._tick()
        if addr < self.m.memory.size:
            return int.from_bytes(self.m.memory.read(addr, size), "little")
        return self.m.mmio.read(addr, size)

    def _write(self, addr: int, size: int, value: int) -> None:
        self._tick()
        if addr < self.m.memory.size:
            self.m.memory.write(addr, value.to_bytes(size, "little"))
        else:
            self.m.mmio.write(addr, size, value & ((1 << (8 * size)) - 1))

    def readb(self, addr: int) -> int: return self._read(addr, 1)
    def readw(self, addr: int) -> int: return self._read(addr, 2)
    def readl(self, addr: int) -> int: return self._read(addr, 4)
    def readq(self, addr: int) -> int: return self._read(addr, 8)
    def writeb(self, addr: int, v: int) -> None: self._write(addr, 1, v)
    def writew(self, addr: int, v: int) -> None: self._write(addr, 2, v)
    def writel(self, addr: int, v: int) -> None: self._write(addr, 4, v)
    def writeq(self, addr: int, v: int) -> None: self._write(addr, 8, v)

    # --- guest memory ------------------------------------------------------------
    def memread(self, addr: int, length: int) -> bytes:
        return self.m.memory.read(addr, length)

    def memwrite(self, addr: int, data: bytes) -> None:
        self.m.memory.write(addr, data)

    # --- PCI configuration through mechanism #1 ---------------------------------------
    @staticmethod
    def _cf8(devfn: int, offset: int) -> int:
        return 0x80000000 | (devfn << 8) | (offset & 0xFC)

    def pci_config_read(self, dev: PCIDevice | int, offset: int, size: int = 4) -> int:
        devfn = dev if isinstance(dev, int) else dev.devfn
        self.outl(0xCF8, self._cf8(devfn, offset))
        port = 0xCFC + (offset & 3)
        return {1: self.inb, 2: self.inw, 4: self.inl}[size](port)

    def pci_config_write(self, dev: PCIDevice | int, offset: int, value: int, size: int = 4) -> None:
        devfn = dev if isinstance(dev, int) else dev.devfn
        self.outl(0xCF8, self._cf8(devfn, offset))
        port = 0xCFC + (offset & 3)
        {1: self.outb, 2: self.outw, 4: self.outl}[size](port, value)

    def bar_address(self, dev: PCIDevice, index: int) -> int:
        """The address BAR ``index`` holds now (read through configuration space)."""
        low = self.pci_config_read(dev, BAR0 + 4 * index)
        if low & 1:
            return low & 0xFFFFFFFC
        addr = low & 0xFFFFFFF0
        if (low >> 1) & 3 == 2:
            addr |= self.pci_config_read(dev, BAR0 + 4 * index + 4) << 32
        return addr

    # --- time and interrupts ------------------------------------------------------
    def clock_step(self, ticks: int = 1) -> None:
        self.m.events.step(ticks)

    def run_until_idle(self, limit: int = 1_000_000) -> None:
        """Run events until none is pending (bounded by ``limit`` events)."""
        n = 0
        while self.m.events.skip_to_next():
            n += 1
            if n >= limit:
                raise RuntimeError("event queue did not drain")

    def pending_vectors(self) -> list[int]:
        irr = self.m.apic.irr
        return [v for v in range(256) if irr >> v & 1]

    def ack_vector(self, vector: int) -> None:
        """Take a pending vector as the CPU would and EOI it."""
        self.m.apic.accept(vector)
        self.m.apic.eoi()
