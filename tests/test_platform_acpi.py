"""ACPI tables: checksums, structure, and the values Linux reads (as QEMU's pc machine)."""

import struct

import pytest

from blockbed.machine import acpi


def mem_of(layout):
    mem = bytearray(0x100000)
    for at, data in layout.blobs.items():
        mem[at:at + len(data)] = data
    return mem


def find_rsdp(mem):
    # what Linux's acpi_find_root_pointer does: scan 0xE0000-0xFFFFF on 16-byte boundaries
    for a in range(0xE0000, 0x100000, 16):
        if mem[a:a + 8] == b"RSD PTR " and sum(mem[a:a + 20]) & 0xFF == 0:
            return a
    return None


def table(mem, addr):
    sig, length = struct.unpack_from("<4sI", mem, addr)
    raw = bytes(mem[addr:addr + length])
    assert sum(raw) & 0xFF == 0, sig
    return sig, raw


def test_rsdp_rsdt_and_tables_checksum_and_link():
    lay = acpi.build()
    mem = mem_of(lay)
    a = find_rsdp(mem)
    assert a == lay.rsdp_addr
    assert mem[a + 15] == 0                            # ACPI 1.0 RSDP
    rsdt = struct.unpack_from("<I", mem, a + 16)[0]
    sig, raw = table(mem, rsdt)
    assert sig == b"RSDT"
    ptrs = struct.unpack_from(f"<{(len(raw) - 36) // 4}I", raw, 36)
    sigs = {table(mem, p)[0]: p for p in ptrs}
    assert set(sigs) == {b"FACP", b"APIC"}
    _, fadt = table(mem, sigs[b"FACP"])
    assert len(fadt) == 116
    facs_at, dsdt_at = struct.unpack_from("<II", fadt, 36)
    assert mem[facs_at:facs_at + 4] == b"FACS" and facs_at % 64 == 0
    sig, dsdt = table(mem, dsdt_at)
    assert sig == b"DSDT" and b"_S5_" in dsdt
    assert struct.unpack_from("<H", fadt, 46)[0] == 9          # SCI
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604      # PM1a_CNT (QEMU PIIX4 PM)
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608      # PM timer
    assert fadt[89] == 2 and fadt[91] == 4 and fadt[108] == 0x32


def test_madt_entries():
    lay = acpi.build(n_cpus=2)
    mem = mem_of(lay)
    madt_at = next(a for a, d in lay.blobs.items() if d[:4] == b"APIC")
    _, raw = table(mem, madt_at)
    lapic, flags = struct.unpack_from("<II", raw, 36)
    assert lapic == 0xFEE00000 and flags & 1
    off, entries = 44, []
    while off < len(raw):
        t, ln = raw[off], raw[off + 1]
        assert ln >= 2
        entries.append((t, raw[off:off + ln]))
        off += ln
    assert off == len(raw)
    assert [e[1][3] for e in entries if e[0] == 0] == [0, 1]   # APIC ids
    io = [e[1] for e in entries if e[0] == 1]
    assert len(io) == 1 and struct.unpack_from("<I", io[0], 4)[0] == 0xFEC00000
    isos = {e[1][3]: struct.unpack_from("<IH", e[1], 4) for e in entries if e[0] == 2}
    assert isos[0] == (2, 0) and isos[9] == (9, 0x0D)


def test_rsdp_placement_is_checked():
    with pytest.raises(ValueError):
        acpi.build(rsdp_addr=0xF5A08)
    with pytest.raises(ValueError):
        acpi.build(rsdp_addr=0xD0000)


# --- the DSDT's AML (machine/aml.py), checked by ACPICA's disassembler -------------------

def test_pkg_length_encoding():
    from blockbed.machine.aml import pkg_length
    assert pkg_length(0) == b"\x01" and pkg_length(62) == b"\x3f"
    assert pkg_length(63) == bytes([0x40 | (65 & 0xF), 65 >> 4])        # two bytes from 63
    n = 5000
    enc = pkg_length(n)
    total = n + len(enc)
    assert enc[0] >> 6 == len(enc) - 1 and enc[0] & 0xF == total & 0xF
    assert sum(b << (4 + 8 * i) for i, b in enumerate(enc[1:])) == total & ~0xF


def test_dsdt_disassembles_to_the_pci_root_and_routing(tmp_path):
    """iasl (ACPICA, the interpreter Linux runs) must read our DSDT back: the PCI root
    PNP0A03 with its windows and one _PRT entry per slot/pin on the PIIX3 swizzle."""
    import re
    import subprocess
    from conftest import need_tool
    from blockbed.machine import acpi
    iasl = need_tool("iasl")
    (tmp_path / "dsdt.aml").write_bytes(acpi.dsdt())
    p = subprocess.run([iasl, "-d", "dsdt.aml"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert 'EisaId ("PNP0A03")' in dsl and "Name (_S5, Package (0x04)" in dsl
    assert "WordBusNumber" in dsl and dsl.count("WordIO") == 2 and dsl.count("DWordMemory") == 2
    assert "0xC0000000,         // Range Minimum" in dsl
    prt = re.findall(r"Package \(0x04\)\s*\{\s*(0x[0-9A-F]+),\s*(\w+),\s*Zero,\s*(0x[0-9A-F]+)",
                     dsl)
    assert len(prt) == 31 * 4
    pins = {"Zero": 0, "One": 1, "0x02": 2, "0x03": 3}
    for addr, pin, gsi in prt:
        slot = int(addr, 16) >> 16
        assert int(gsi, 16) == acpi.PIRQ_IRQS[(slot + pins[pin]) & 3]
