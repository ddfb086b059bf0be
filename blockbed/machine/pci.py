"""PCI: the host bridge, configuration mechanism #1, functions, BARs, MSI/MSI-X, INTx.

References: PCI Local Bus Specification 3.0 — §3.2.2.3.2 (configuration
mechanism #1 on ports 0xCF8/0xCFC), §6.1 (the type-0 header), §6.2.2
(the command register), §6.2.5 (base address registers and sizing), §6.7
(capability lists), §6.8 (MSI and MSI-X).

A :class:`PCIDevice` keeps its 256-byte configuration space as bytes with a
write mask and a write-1-to-clear mask, so guest writes need no per-register
code: BAR sizing falls out of the mask (write all-ones, read back the size
mask), read-only fields stay read-only.  After every write that can move a
window (the command register or a BAR), :meth:`PCIDevice.update_mappings`
re-decodes the BARs into the machine's port or MMIO bus — only while the
command register enables that space (§6.2.2).  DMA goes through
:meth:`PCIDevice.dma`, which refuses to master the bus while Bus Master
Enable is clear.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

from .. import trace
from .bus import ONES, Region, RegionHandler
from .memory import DMAError

if TYPE_CHECKING:
    from .board import Machine

# Configuration header offsets (§6.1)
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_PROG, HEADER_TYPE = 0x08, 0x09, 0x0E
BAR0, SUBSYS_VENDOR, SUBSYS_ID, CAP_PTR = 0x10, 0x2C, 0x2E, 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
# Command register bits (§6.2.2)
CMD_IO, CMD_MEMORY, CMD_BUS_MASTER, CMD_INTX_DISABLE = 1 << 0, 1 << 1, 1 << 2, 1 << 10
# Status register bits (§6.2.3)
STS_INTERRUPT, STS_CAP_LIST = 1 << 3, 1 << 4
# Capability IDs
CAP_MSI, CAP_VENDOR, CAP_MSIX = 0x05, 0x09, 0x11


class BarKind(Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(eq=False)
class Bar:
    index: int
    size: int
    kind: BarKind
    handler: RegionHandler
    prefetchable: bool = False
    name: str = ""
    mapped_at: int | None = None
    region: Region | None = None

    @property
    def type_bits(self) -> int:
        if self.kind is BarKind.IO:
            return 0x1
        bits = 0x4 if self.kind is BarKind.MEM64 else 0x0
        return bits | (0x8 if self.prefetchable else 0)


class SubRegions:
    """A BAR made of sub-ranges (register blocks, an MSI-X table …).

    ``add(offset, size, handler)``; accesses that hit no sub-range read
    all-ones and are dropped, like the rest of the bus.
    """

    def __init__(self) -> None:
        self._parts: list[tuple[int, int, RegionHandler]] = []

    def add(self, offset: int, size: int, handler: RegionHandler) -> None:
        self._parts.append((offset, offset + size, handler))
        self._parts.sort(key=lambda p: p[0])

    def read(self, offset: int, size: int) -> int:
        for start, end, h in self._parts:
            if start <= offset < end:
                return h.read(offset - start, size)
        return ONES[size]

    def write(self, offset: int, size: int, value: int) -> None:
        for start, end, h in self._parts:
            if start <= offset < end:
                h.write(offset - start, size, value)
                return


class PCIDevice:
    """One PCI function with a type-0 header.  Subclasses declare IDs, BARs and capabilities."""

    vendor_id = 0
    device_id = 0
    class_code = 0           # base << 16 | sub << 8 | prog-if
    revision = 0
    subsystem_vendor_id = 0
    subsystem_id = 0
    interrupt_pin = 0        # 0 none, 1 INTA# … 4 INTD#
    multifunction = False
    name = "pci-device"

    def __init__(self) -> None:
        self.machine: "Machine | None" = None
        self.devfn: int | None = None
        self.config = bytearray(256)
        self.wmask = bytearray(256)
        self.w1cmask = bytearray(256)
        self.bars: list[Bar | None] = [None] * 6
        self.msi: MsiCapability | None = None
        self.msix: MsixCapability | None = None
        self.intx_level = 0
        self._next_cap = 0x40
        self._last_cap = None
        c = self.config
        struct.pack_into("<HH", c, 0, self.vendor_id, self.device_id)
        c[REVISION] = self.revision
        c[CLASS_PROG:CLASS_PROG + 3] = self.class_code.to_bytes(3, "little")
        c[HEADER_TYPE] = 0x80 if self.multifunction else 0x00
        struct.pack_into("<HH", c, SUBSYS_VENDOR, self.subsystem_vendor_id, self.subsystem_id)
        c[INTERRUPT_PIN] = self.interrupt_pin
        # Command: I/O, memory, bus master, INTx disable are writable.
        struct.pack_into("<H", self.wmask, COMMAND, CMD_IO | CMD_MEMORY | CMD_BUS_MASTER | CMD_INTX_DISABLE)
        self.wmask[INTERRUPT_LINE] = 0xFF
        self.wmask[0x0C] = 0xFF  # cache line size
        self.wmask[0x0D] = 0xFF  # latency timer

    # --- declaration helpers for subclasses ------------------------------------
    def add_bar(self, index: int, size: int, kind: BarKind, handler: RegionHandler,
                prefetchable: bool = False, name: str = "") -> Bar:
        """Declare BAR ``index`` of ``size`` bytes (a power of two; I/O >= 4, memory >= 16)."""
        if size & (size - 1) or size < (4 if kind is BarKind.IO else 16):
            raise ValueError(f"BAR size {size:#x} must be a power of two (>= 4 I/O, >= 16 memory)")
        if kind is BarKind.MEM64 and index >= 5:
            raise ValueError("a 64-bit BAR needs two slots")
        bar = Bar(index, size, kind, handler, prefetchable, name or f"{self.name}.bar{index}")
        self.bars[index] = bar
        off = BAR0 + 4 * index
        struct.pack_into("<I", self.config, off, bar.type_bits)
        low_mask = ~(size - 1) & (0xFFFFFFFC if kind is BarKind.IO else 0xFFFFFFF0) & 0xFFFFFFFF
        struct.pack_into("<I", self.wmask, off, low_mask)
        if kind is BarKind.MEM64:
            struct.pack_into("<I", self.wmask, off + 4, (~(size - 1) >> 32) & 0xFFFFFFFF)
        return bar

    def add_capability(self, cap_id: int, length: int) -> int:
        """Append a capability of ``length`` bytes to the list; returns its offset."""
        off = self._next_cap
        if off + length > 256:
            raise ValueError("configuration space full")
        self.config[off] = cap_id
        self.config[off + 1] = 0
        if self._last_cap is None:
            self.config[CAP_PTR] = off
        else:
            self.config[self._last_cap + 1] = off
        self._last_cap = off
        self._next_cap = (off + length + 3) & ~3
        struct.pack_into("<H", self.config, STATUS, self.read_config_u16(STATUS) | STS_CAP_LIST)
        return off

    def add_msi(self, vectors: int = 1) -> "MsiCapability":
        self.msi = MsiCapability(self, vectors)
        return self.msi

    def add_msix(self, vectors: int, table_bar: int, table_offset: int,
                 pba_bar: int, pba_offset: int) -> "MsixCapability":
        self.msix = MsixCapability(self, vectors, table_bar, table_offset, pba_bar, pba_offset)
        return self.msix

    # --- configuration space access ----------------------------------------------
    def read_config_u16(self, off: int) -> int:
        return struct.unpack_from("<H", self.config, off)[0]

    def read_config_u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.config, off)[0]

    @property
    def command(self) -> int:
        cfg = self.config           # read at every DMA a device makes: two byte loads
        return cfg[COMMAND] | cfg[COMMAND + 1] << 8

    def config_read(self, offset: int, size: int) -> int:
        if offset + size > 256:
            return ONES[size]
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset + size > 256:
            return
        cfg, wm, w1c = self.config, self.wmask, self.w1cmask
        for i in range(size):
            b = (value >> (8 * i)) & 0xFF
            o = offset + i
            cfg[o] = (cfg[o] & ~wm[o]) | (b & wm[o])
            cfg[o] &= ~(b & w1c[o]) & 0xFF
        if trace.enabled:
            trace.emit("pci.config_write", dev=self.name, offset=offset, size=size, value=value)
        if offset < BAR0 + 24 and offset + size > COMMAND:
            self.update_mappings()
        if self.msi is not None or self.msix is not None:
            self.capability_written(offset, size)
        if offset <= COMMAND + 1 < offset + size:
            self._update_intx()

    def capability_written(self, offset: int, size: int) -> None:
        if self.msix is not None:
            self.msix.config_written()

    # --- BAR decoding ------------------------------------------------------------------
    def bar_address(self, bar: Bar) -> int | None:
        """Where the BAR decodes now, or None (space disabled or not programmed)."""
        off = BAR0 + 4 * bar.index
        low = self.read_config_u32(off)
        if bar.kind is BarKind.IO:
            if not self.command & CMD_IO:
                return None
            addr = low & 0xFFFFFFFC
            return addr if 0 < addr and addr + bar.size <= 0x10000 else None
        if not self.command & CMD_MEMORY:
            return None
        addr = low & 0xFFFFFFF0
        if bar.kind is BarKind.MEM64:
            addr |= self.read_config_u32(off + 4) << 32
        if addr == 0 or addr + bar.size > (1 << 64):
            return None
        return addr

    def update_mappings(self) -> None:
        if self.machine is None:
            return
        for bar in self.bars:
            if bar is None:
                continue
            addr = self.bar_address(bar)
            if addr == bar.mapped_at:
                continue
            bus = self.machine.pio if bar.kind is BarKind.IO else self.machine.mmio
            if bar.region is not None:
                bus.remove(bar.region)
                bar.region = None
            bar.mapped_at = addr
            if addr is not None:
                bar.region = bus.add(bar.name, addr, bar.size, bar.handler)
                if trace.enabled:
                    trace.emit("pci.bar_map", dev=self.name, bar=bar.index, addr=addr,
                               size=bar.size, decoded=bar.region is not None)

    # --- DMA and interrupts --------------------------------------------------------------
    def dma(self, addr: int, length: int, write: bool = False) -> memoryview:
        """A view of guest memory for this function's bus-master access; raises DMAError.
        ``write``: the device will write the range (GuestMemory.device_write_view)."""
        if not self.command & CMD_BUS_MASTER:
            if trace.enabled:
                trace.emit("pci.dma_no_busmaster", dev=self.name, addr=addr, length=length)
            raise DMAError(addr, length, "with bus mastering disabled")
        mem = self.machine.memory
        return mem.device_write_view(addr, length) if write else mem.view(addr, length)

    def set_irq(self, level: int) -> None:
        """Assert (1) or deassert (0) INTx#; MSI-X/MSI take precedence when enabled."""
        self.intx_level = 1 if level else 0
        self._update_intx()

    def _update_intx(self) -> None:
        sts = self.read_config_u16(STATUS)
        sts = (sts | STS_INTERRUPT) if self.intx_level else (sts & ~STS_INTERRUPT)
        struct.pack_into("<H", self.config, STATUS, sts)
        if self.machine is not None and self.interrupt_pin:
            asserted = bool(self.intx_level) and not (self.command & CMD_INTX_DISABLE)
            self.machine.pci.intx_changed(self, asserted)

    def notify(self, vector: int = 0) -> None:
        """Signal interrupt ``vector`` the way the guest enabled: MSI-X, MSI, else INTx pulse."""
        if self.msix is not None and self.msix.enabled:
            self.msix.notify(vector)
        elif self.msi is not None and self.msi.enabled:
            self.msi.notify(vector)
        else:
            self.set_irq(1)

    def reset(self) -> None:
        """Function-level reset of the device model; subclasses extend."""


class MsiCapability:
    """MSI with 64-bit addresses (§6.8.1): control, address low/high, data."""

    def __init__(self, dev: PCIDevice, vectors: int):
        self.dev = dev
        mmc = max(0, (vectors - 1).bit_length())
        self.off = off = dev.add_capability(CAP_MSI, 14)
        struct.pack_into("<H", dev.config, off + 2, (mmc << 1) | (1 << 7))
        struct.pack_into("<H", dev.wmask, off + 2, 0x0071)  # enable + multiple message enable
        struct.pack_into("<I", dev.wmask, off + 4, 0xFFFFFFFC)
        struct.pack_into("<I", dev.wmask, off + 8, 0xFFFFFFFF)
        struct.pack_into("<H", dev.wmask, off + 12, 0xFFFF)

    @property
    def enabled(self) -> bool:
        return bool(self.dev.config[self.off + 2] & 1)

    def notify(self, vector: int = 0) -> None:
        c = self.dev.config
        ctrl = struct.unpack_from("<H", c, self.off + 2)[0]
        allowed = 1 << ((ctrl >> 4) & 7)
        addr = struct.unpack_from("<Q", c, self.off + 4)[0]
        data = struct.unpack_from("<H", c, self.off + 12)[0]
        data = (data & ~(allowed - 1)) | (vector & (allowed - 1))
        if self.dev.command & CMD_BUS_MASTER:  # an MSI is a memory write: needs bus mastering
            self.dev.machine.apic.msi(addr, data)


class MsixCapability:
    """MSI-X (§6.8.2): a table of (address, data, mask) entries and a pending-bit array in BARs."""

    ENTRY = 16

    def __init__(self, dev: PCIDevice, vectors: int, table_bar: int, table_offset: int,
                 pba_bar: int, pba_offset: int):
        self.dev = dev
        self.vectors = vectors
        self.off = off = dev.add_capability(CAP_MSIX, 12)
        struct.pack_into("<HII", dev.config, off + 2, vectors - 1,
                         table_offset | table_bar, pba_offset | pba_bar)
        struct.pack_into("<H", dev.wmask, off + 2, 0xC000)  # enable, function mask
        self.table = bytearray(vectors * self.ENTRY)
        for i in range(vectors):  # every entry starts masked (§6.8.2.9)
            struct.pack_into("<I", self.table, i * self.ENTRY + 12, 1)
        self.pending = 0
        self.table_region = _MsixTable(self)
        self.pba_region = _MsixPba(self)

    @property
    def control(self) -> int:
        return struct.unpack_from("<H", self.dev.config, self.off + 2)[0]

    @property
    def enabled(self) -> bool:
        return bool(self.control & 0x8000)

    @property
    def function_masked(self) -> bool:
        return bool(self.control & 0x4000)

    def masked(self, n: int) -> bool:
        return self.function_masked or bool(self.table[n * self.ENTRY + 12] & 1)

    def notify(self, n: int) -> None:
        if not 0 <= n < self.vectors:
            return
        if self.masked(n):
            self.pending |= 1 << n
            return
        addr, data = struct.unpack_from("<QI", self.table, n * self.ENTRY)
        if self.dev.command & CMD_BUS_MASTER:
            self.dev.machine.apic.msi(addr, data)

    def config_written(self) -> None:
        self._flush_pending()

    def _flush_pending(self) -> None:
        if not self.enabled or self.function_masked:
            return
        for n in range(self.vectors):
            if self.pending >> n & 1 and not self.masked(n):
                self.pending &= ~(1 << n)
                self.notify(n)


class _MsixTable:
    def __init__(self, cap: MsixCapability):
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        if offset + size > len(self.cap.table):
            return ONES[size]
        return int.from_bytes(self.cap.table[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        t = self.cap.table
        if offset + size > len(t):
            return
        t[offset:offset + size] = value.to_bytes(size, "little")
        if offset % MsixCapability.ENTRY >= 12:
            self.cap._flush_pending()


class _MsixPba:
    def __init__(self, cap: MsixCapability):
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        return (self.cap.pending >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        pass  # read-only (§6.8.2.10)


class HostBridge(PCIDevice):
    """i440FX host bridge, 00:00.0 (8086:1237, class 06.00.00)."""

    vendor_id, device_id, class_code, revision, name = 0x8086, 0x1237, 0x060000, 0x02, "i440fx"


class IsaBridge(PCIDevice):
    """PIIX3 PCI-to-ISA bridge, 00:01.0 (8086:7000, class 06.01.00): the serial port and
    debug-exit sit behind it.  Its PIRQ route registers (0x60–0x63) hold the ISA IRQs the
    firmware gives to INTA#–INTD#."""

    vendor_id, device_id, class_code, name = 0x8086, 0x7000, 0x060100, "piix3-isa"
    multifunction = True

    def __init__(self) -> None:
        super().__init__()
        self.config[0x60:0x64] = bytes([10, 10, 11, 11])  # as SeaBIOS programs them
        self.wmask[0x60:0x64] = b"\xff" * 4


class PCIHost:
    """Configuration mechanism #1 on ports 0xCF8 (address) and 0xCFC–0xCFF (data), bus 0."""

    def __init__(self, machine: "Machine"):
        self.machine = machine
        self.address = 0
        self.functions: dict[int, PCIDevice] = {}
        self.intx_listeners: list[Callable[[PCIDevice, int, bool], None]] = []
        self.conf_addr = _ConfAddr(self)
        machine.pio.add("pci-conf-addr", 0xCF8, 4, self.conf_addr)
        machine.pio.add("pci-conf-data", 0xCFC, 4, _ConfData(self))

    def add(self, dev: PCIDevice, slot: int | None = None, function: int = 0) -> PCIDevice:
        if slot is None:
            slot = next(s for s in range(32) if (s << 3) not in self.functions)
        devfn = (slot << 3) | function
        if devfn in self.functions:
            raise ValueError(f"PCI slot {slot:02x}.{function} is taken by {self.functions[devfn].name}")
        dev.machine = self.machine
        dev.devfn = devfn
        self.functions[devfn] = dev
        return dev

    def find(self, vendor: int, device: int) -> list[PCIDevice]:
        return [d for _, d in sorted(self.functions.items())
                if d.vendor_id == vendor and d.device_id == device]

    def _target(self) -> tuple[PCIDevice | None, int]:
        a = self.address
        if not a & 0x80000000 or (a >> 16) & 0xFF != 0:
            return None, 0
        return self.functions.get((a >> 8) & 0xFF), a & 0xFC

    def config_read(self, devfn: int, offset: int, size: int) -> int:
        dev = self.functions.get(devfn)
        return ONES[size] if dev is None else dev.config_read(offset, size)

    def config_write(self, devfn: int, offset: int, size: int, value: int) -> None:
        dev = self.functions.get(devfn)
        if dev is not None:
            dev.config_write(offset, size, value)

    def intx_changed(self, dev: PCIDevice, asserted: bool) -> None:
        """Route a function's INTx# through the PIIX3 PIRQ swizzle to its ISA IRQ."""
        pin = dev.interrupt_pin - 1
        slot = dev.devfn >> 3
        pirq = (slot + pin) & 3
        isa = self.functions.get(1 << 3)
        irq = isa.config[0x60 + pirq] if isinstance(isa, IsaBridge) else dev.config[INTERRUPT_LINE]
        if trace.enabled:
            trace.emit("pci.intx", dev=dev.name, asserted=asserted, irq=irq)
        for listener in self.intx_listeners:
            listener(dev, irq, asserted)

    def irq_for(self, dev: PCIDevice) -> int:
        pin = dev.interrupt_pin - 1
        isa = self.functions.get(1 << 3)
        pirq = ((dev.devfn >> 3) + pin) & 3
        return isa.config[0x60 + pirq] if isinstance(isa, IsaBridge) else 11


class _ConfAddr:
    """CONFIG_ADDRESS at 0xCF8.  Only dword accesses reach it (§3.2.2.3.2); a *byte*
    access to 0xCF9 is the PIIX3's reset control register instead, as on the real
    chipset and QEMU (``rcr``: set by the Linux platform, reset.py)."""

    def __init__(self, host: PCIHost):
        self.host = host
        self.rcr: RegionHandler | None = None

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.host.address
        if offset == 1 and size == 1 and self.rcr is not None:
            return self.rcr.read(0, 1)
        return ONES[size]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.host.address = value & 0x80FFFFFC
        elif offset == 1 and size == 1 and self.rcr is not None:
            self.rcr.write(0, 1, value)


class _ConfData:
    def __init__(self, host: PCIHost):
        self.host = host

    def read(self, offset: int, size: int) -> int:
        dev, reg = self.host._target()
        if dev is None:
            return ONES[size]
        return dev.config_read(reg + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        dev, reg = self.host._target()
        if dev is not None:
            dev.config_write(reg + offset, size, value)


def assign_bars(host: PCIHost, io_base: int = 0xC000, mem_top: int = 0xFEC00000,
                mem_floor: int = 0xC0000000) -> list[str]:
    """The firmware step: give every BAR an address, enable decoding, as SeaBIOS does.

    I/O BARs from 0xC000 upward, memory BARs downward from below the I/O APIC,
    largest first so every BAR is naturally aligned; then the command register
    enables I/O, memory and bus mastering, and the interrupt line register gets
    the ISA IRQ of the function's PIRQ.  Returns messages for BARs that did not fit.
    """
    problems: list[str] = []
    bars = [(dev, bar) for _, dev in sorted(host.functions.items()) for bar in dev.bars if bar]
    io = io_base
    for dev, bar in sorted((x for x in bars if x[1].kind is BarKind.IO), key=lambda x: -x[1].size):
        io = (io + bar.size - 1) & ~(bar.size - 1)
        if io + bar.size > 0x10000:
            problems.append(f"{bar.name}: no I/O space left")
            continue
        struct.pack_into("<I", dev.config, BAR0 + 4 * bar.index, io | bar.type_bits)
        io += bar.size
    top = mem_top
    for dev, bar in sorted((x for x in bars if x[1].kind is not BarKind.IO), key=lambda x: -x[1].size):
        addr = (top - bar.size) & ~(bar.size - 1)
        if addr < mem_floor:
            problems.append(f"{bar.name}: no memory space left")
            continue
        struct.pack_into("<I", dev.config, BAR0 + 4 * bar.index, (addr & 0xFFFFFFF0) | bar.type_bits)
        if bar.kind is BarKind.MEM64:
            struct.pack_into("<I", dev.config, BAR0 + 4 * bar.index + 4, addr >> 32)
        top = addr
    for _, dev in sorted(host.functions.items()):
        if dev.interrupt_pin:
            dev.config[INTERRUPT_LINE] = host.irq_for(dev)
        if any(dev.bars):
            cmd = dev.command | CMD_BUS_MASTER
            if any(b and b.kind is BarKind.IO for b in dev.bars):
                cmd |= CMD_IO
            if any(b and b.kind is not BarKind.IO for b in dev.bars):
                cmd |= CMD_MEMORY
            struct.pack_into("<H", dev.config, COMMAND, cmd)
        dev.update_mappings()
    return problems
