"""Minimal ACPI tables for the Linux boot path: RSDP, RSDT, MADT, FADT, FACS, DSDT.

ACPI 6.x specification, chapter 5: RSDP §5.2.5 (revision 0 / ACPI 1.0 form,
20 bytes, found by the OS scanning 0xE0000-0xFFFFF on 16-byte boundaries),
the common header §5.2.6, RSDT §5.2.7, FADT §5.2.9 (the 116-byte revision-1
layout), FACS §5.2.10, DSDT §5.2.11.1, MADT §5.2.12 (processor local APIC,
I/O APIC, interrupt source override, local APIC NMI).  The values follow what
QEMU 7.2's pc machine (PIIX4 PM, hw/i386/acpi-build.c) presents, so a Linux
guest finds the same platform: PM1a event block at 0x600, PM1a control at
0x604 (where SLP_EN with SLP_TYP of \\_S5 powers off), PM timer at 0x608,
SCI on IRQ 9 (level, active high), ISA IRQ0 routed to GSI 2.  The DSDT holds
only ``Name(_S5, Package(){0,0,0,0})`` — no devices, no PCI routing (the
MP/$PIR or a richer DSDT is for later).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


def dsdt() -> bytes:
    # AML: NameOp "_S5_" PackageOp PkgLength=6 NumElements=4 Zero Zero Zero Zero
    aml = bytes([0x08]) + b"_S5_" + bytes([0x12, 0x06, 0x04, 0, 0, 0, 0])
    return _table(b"DSDT", 1, aml)


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
