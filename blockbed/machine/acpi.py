"""Minimal ACPI tables for the Linux boot path: RSDP, RSDT, MADT, FADT, FACS, DSDT.

ACPI 6.x specification, chapter 5: RSDP §5.2.5 (revision 0 / ACPI 1.0 form,
20 bytes, found by the OS scanning 0xE0000-0xFFFFF on 16-byte boundaries),
the common header §5.2.6, RSDT §5.2.7, FADT §5.2.9 (the 116-byte revision-1
layout), FACS §5.2.10, DSDT §5.2.11.1, MADT §5.2.12 (processor local APIC,
I/O APIC, interrupt source override, local APIC NMI).  The values follow what
QEMU 7.2's pc machine (PIIX4 PM, hw/i386/acpi-build.c) presents, so a Linux
guest finds the same platform: PM1a event block at 0x600, PM1a control at
0x604 (where SLP_EN with SLP_TYP of \\_S5 powers off), PM timer at 0x608,
SCI on IRQ 9 (level, active high), ISA IRQ0 routed to GSI 2.  The DSDT (AML
from aml.py) holds ``\\_S5`` and the PCI root bridge ``\\_SB.PCI0`` with its
``_CRS`` windows and a static ``_PRT`` (PIIX3 PIRQ swizzle onto IRQs 10/11).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import aml

OEM_ID = b"BLKBED"
OEM_TABLE = b"BLOCKBED"
RSDP_SIG = b"RSD PTR "
PM_BASE = 0x600
SMI_CMD = 0xB2                       # QEMU's APM port; 0 would mean "ACPI fixed on"
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
SCI_IRQ = 9
LAPIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
# FADT flags (ACPI §5.2.9 table 5.10)
F_WBINVD, F_PROC_C1, F_SLP_BUTTON, F_RTC_S4 = 1 << 0, 1 << 2, 1 << 5, 1 << 7


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to zero modulo 256."""
    return (-sum(data)) & 0xFF


def _table(sig: bytes, revision: int, body: bytes) -> bytes:
    length = 36 + len(body)
    hdr = struct.pack("<4sIBB6s8sI4sI", sig, length, revision, 0, OEM_ID, OEM_TABLE,
                      1, b"BBED", 1)
    raw = bytearray(hdr + body)
    raw[9] = checksum(bytes(raw))
    return bytes(raw)


def madt(n_cpus: int = 1) -> bytes:
    body = struct.pack("<II", LAPIC_ADDR, 1)                        # PCAT_COMPAT: 8259s present
    for i in range(n_cpus):
        body += struct.pack("<BBBBI", 0, 8, i, i, 1)                 # local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_ADDR, 0)     # I/O APIC id 0, GSI base 0
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)               # ISA IRQ0 -> GSI2, bus defaults
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, 0x000D)  # SCI: level, active high
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)                 # NMI on LINT1, all CPUs
    return _table(b"APIC", 1, body)


#: The PIIX3's PIRQ route registers as SeaBIOS programs them (pci.IsaBridge): INTA#..INTD#
#: of the swizzle (slot + pin) & 3 reach ISA IRQs 10, 10, 11, 11.
PIRQ_IRQS = (10, 10, 11, 11)
PCI_HOLE = (0xC0000000, 0xFEBFFFFF)       # pci.assign_bars places memory BARs here


def pci_crs() -> bytes:
    """The host bridge's resources (§6.2.2 _CRS), as QEMU's pc DSDT: bus 0-255, the
    config ports 0xCF8-0xCFF consumed, I/O 0-0xCF7 and 0xD00-0xFFFF, the VGA window and
    the 32-bit PCI hole forwarded."""
    return (aml.word_space(aml.RES_BUS, 0, 0xFF)
            + aml.io_port(0xCF8, 0xCF8, 1, 8)
            + aml.word_space(aml.RES_IO, 0x0000, 0x0CF7, 0x03)
            + aml.word_space(aml.RES_IO, 0x0D00, 0xFFFF, 0x03)
            + aml.dword_memory(0x000A0000, 0x000BFFFF)
            + aml.dword_memory(*PCI_HOLE)
            + aml.end_tag())


def pci_prt(pirq_irqs: tuple[int, ...] = PIRQ_IRQS) -> bytes:
    """_PRT (§6.2.13) in its static-GSI form: for every slot 1-31 and pin INTA-INTD,
    Package{address (slot << 16 | 0xFFFF), pin, 0, GSI}.  GSIs named this way are
    level-triggered, active-low; the GSI is the ISA IRQ the PIIX3 routes the pin to
    (the I/O APIC's inputs 0-15 are the ISA IRQs)."""
    entries = [aml.package(aml.integer(slot << 16 | 0xFFFF), aml.integer(pin), aml.integer(0),
                           aml.integer(pirq_irqs[(slot + pin) & 3]))
               for slot in range(1, 32) for pin in range(4)]
    return aml.package(*entries)


def dsdt(pirq_irqs: tuple[int, ...] = PIRQ_IRQS) -> bytes:
    r"""\_S5 = {0, 0, 0, 0} (SLP_TYP 0 powers off, reset.py) and \_SB.PCI0, the PCI
    root bridge (PNP0A03) with its windows and interrupt routing, so that an OS with
    the ACPI interpreter on finds bus 0 and routes INTx (Linux probes PCI only through
    ACPI once SCI_EN is set)."""
    body = aml.name("_S5", aml.package(*(aml.integer(0),) * 4))
    body += aml.scope("\\_SB", aml.device(
        "PCI0",
        aml.name("_HID", aml.eisa_id("PNP0A03")),
        aml.name("_ADR", aml.integer(0)),
        aml.name("_UID", aml.integer(0)),
        aml.name("_CRS", aml.buffer(pci_crs())),
        aml.name("_PRT", pci_prt(pirq_irqs))))
    return _table(b"DSDT", 1, body)


def facs() -> bytes:
    # §5.2.10: signature, length 64, hardware signature, waking vector, lock, flags; no checksum
    return struct.pack("<4sIIIII", b"FACS", 64, 0, 0, 0, 0) + bytes(40)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(116 - 36)
    def put(off: int, fmt: str, v: int) -> None:
        struct.pack_into(fmt, body, off - 36, v)
    put(36, "<I", facs_addr)
    put(40, "<I", dsdt_addr)
    put(46, "<H", SCI_IRQ)
    put(48, "<I", SMI_CMD)
    put(52, "<B", ACPI_ENABLE)
    put(53, "<B", ACPI_DISABLE)
    put(56, "<I", PM_BASE)               # PM1a_EVT_BLK
    put(64, "<I", PM_BASE + 4)           # PM1a_CNT_BLK
    put(76, "<I", PM_BASE + 8)           # PM_TMR_BLK
    put(88, "<B", 4)                     # PM1_EVT_LEN
    put(89, "<B", 2)                     # PM1_CNT_LEN
    put(91, "<B", 4)                     # PM_TMR_LEN
    put(96, "<H", 0xFFF)                 # P_LVL2_LAT > 100: C2 not supported
    put(98, "<H", 0xFFF)                 # P_LVL3_LAT > 1000: C3 not supported
    put(108, "<B", 0x32)                 # CENTURY: the RTC register holding it
    put(112, "<I", F_WBINVD | F_PROC_C1 | F_SLP_BUTTON | F_RTC_S4)
    return _table(b"FACP", 1, bytes(body))


def rsdp(rsdt_addr: int) -> bytes:
    raw = bytearray(struct.pack("<8sB6sBI", RSDP_SIG, 0, OEM_ID, 0, rsdt_addr))
    raw[8] = checksum(bytes(raw))
    return bytes(raw)


@dataclass
class AcpiLayout:
    rsdp_addr: int
    blobs: dict[int, bytes]           # guest-physical address -> bytes


def build(rsdp_addr: int = 0xF5A00, tables_addr: int = 0xE0000, n_cpus: int = 1) -> AcpiLayout:
    """Lay the tables out from ``tables_addr`` (64-byte aligned, FACS first) and the
    RSDP at ``rsdp_addr`` (16-byte aligned, inside the BIOS area)."""
    if rsdp_addr % 16 or not 0xE0000 <= rsdp_addr < 0x100000:
        raise ValueError("the RSDP must be 16-byte aligned in 0xE0000-0xFFFFF")
    blobs: dict[int, bytes] = {}
    addr = tables_addr
    def place(data: bytes) -> int:
        nonlocal addr
        at = addr
        blobs[at] = data
        addr = (addr + len(data) + 63) & ~63
        return at
    facs_at = place(facs())
    dsdt_at = place(dsdt())
    fadt_at = place(fadt(facs_at, dsdt_at))
    madt_at = place(madt(n_cpus))
    rsdt_at = place(_table(b"RSDT", 1, struct.pack("<II", fadt_at, madt_at)))
    if not (addr <= rsdp_addr or tables_addr >= rsdp_addr + 20):
        raise ValueError("ACPI tables overlap the RSDP")
    blobs[rsdp_addr] = rsdp(rsdt_at)
    return AcpiLayout(rsdp_addr, blobs)
