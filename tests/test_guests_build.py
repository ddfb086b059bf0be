"""The freestanding guests: build, boot format, and behaviour under QEMU.

The ELF checks parse the files directly (ELF32 header, PT_LOAD segments,
multiboot v1 header per Multiboot 0.6.96 §3.1.1), so they fail if the build
produces something QEMU's ``-kernel`` loader or blockbed's would reject.
The QEMU checks boot the guests under ``qemu-system-x86_64 -machine pc``,
the reference machine; ``hello``'s view of PCI is compared against QEMU's
own ``info pci``.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import GUEST_BUILD, REPO, run_tool

GUESTS = REPO / "guests"
PROGRAMS = sorted(p.stem for p in (GUESTS / "programs").glob("*.c"))

MB_MAGIC = 0x1BADB002
MB_FLAGS_WANTED = 0x3          # page-align modules, memory information
PT_LOAD = 1
QEMU_TIMEOUT = 30


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """Bring guests/build up to date (a no-op when nothing is stale)."""
    need = shutil.which("gcc") and shutil.which("ld") and shutil.which("objcopy")
    if not need:
        pytest.skip("gcc/binutils not installed")
    run_tool("make", "-s", "-C", str(GUESTS))


# ---- the ELF files -----------------------------------------------------------

def parse_elf32(data: bytes) -> tuple[int, list[tuple[int, int, int, int, int]]]:
    """Return (entry, [(type, offset, paddr, filesz, memsz)]) of an ELF32 x86 file."""
    assert data[:4] == b"\x7fELF", "not an ELF file"
    assert data[4] == 1, "not ELF32 (QEMU's multiboot loader rejects ELF64)"
    assert data[5] == 1, "not little-endian"
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert (e_type, e_machine) == (2, 3), f"not an i386 executable: {e_type} {e_machine}"
    entry, phoff = struct.unpack_from("<II", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    phdrs = []
    for i in range(phnum):
        p_type, off, _vaddr, paddr, filesz, memsz = struct.unpack_from(
            "<IIIIII", data, phoff + i * phentsize)
        phdrs.append((p_type, off, paddr, filesz, memsz))
    return entry, phdrs


def find_multiboot_header(data: bytes) -> int:
    """Offset of a valid multiboot header in the first 8 KiB, 4-byte aligned."""
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MB_MAGIC:
            assert (magic + flags + checksum) & 0xFFFFFFFF == 0, "bad checksum"
            return off
    raise AssertionError("no multiboot header in the first 8 KiB")


def test_every_program_is_built() -> None:
    assert PROGRAMS, "no guest programs"
    for name in PROGRAMS:
        assert (GUEST_BUILD / f"{name}.elf").is_file(), name


@pytest.mark.parametrize("name", PROGRAMS)
def test_elf32_multiboot_image(name: str) -> None:
    data = (GUEST_BUILD / f"{name}.elf").read_bytes()
    entry, phdrs = parse_elf32(data)
    loads = [p for p in phdrs if p[0] == PT_LOAD]
    assert loads, "no PT_LOAD segment"
    for _t, off, paddr, filesz, memsz in loads:
        assert paddr >= 0x100000, f"segment below 1 MiB: {paddr:#x}"
        assert paddr + memsz < 0x100000000
        assert off + filesz <= len(data) and filesz <= memsz
    assert any(p <= entry < p + m for _t, _o, p, _f, m in loads), "entry outside the image"

    hdr = find_multiboot_header(data)
    flags = struct.unpack_from("<I", data, hdr + 4)[0]
    assert flags & MB_FLAGS_WANTED == MB_FLAGS_WANTED, f"flags {flags:#x}"
    assert not flags & 0x10000, "a.out kludge set: the loader should use the ELF headers"
    # The header must be loaded too (it is part of the image).
    assert any(o <= hdr < o + f for _t, o, _p, f, _m in loads)


def test_makefile_tracks_headers_drivers_and_clean(tmp_path: Path, qemu_system: str) -> None:
    """-MMD header dependencies, relink when a driver disappears, clean; and
    programs still link without any driver and say so at blkdev_open."""
    work = tmp_path / "guests"
    work.mkdir()
    shutil.copy(GUESTS / "Makefile", work)
    for sub in ("lib", "programs", "drivers"):
        shutil.copytree(GUESTS / sub, work / sub)
    make = ["make", "-s", "-C", str(work)]
    run_tool(*make)
    assert run_tool(*make, "-q", check=False).returncode == 0, "fresh build is stale"

    time.sleep(0.01)
    (work / "lib" / "io.h").touch()
    assert run_tool(*make, "-q", check=False).returncode == 1, "header change not seen"
    run_tool(*make)
    assert run_tool(*make, "-q", check=False).returncode == 0

    before = (work / "build" / "hello.elf").stat().st_mtime_ns
    for drv in (work / "drivers").glob("*.c"):
        drv.unlink()
    assert run_tool(*make, "-q", check=False).returncode == 1, "removed driver not seen"
    run_tool(*make)
    assert (work / "build" / "hello.elf").stat().st_mtime_ns != before
    serial = tmp_path / "nodrv.serial"
    proc = subprocess.run(qemu_cmd(qemu_system, work / "build" / "selftest.elf", serial, "",
                                   "-monitor", "none"),
                          capture_output=True, timeout=QEMU_TIMEOUT)
    out = serial.read_text()
    assert "blkdev: no such device type 'nosuch' (linked drivers: none)" in out, out
    assert "blkdev: no such device type 'ram' (linked drivers: none)" in out, out
    assert proc.returncode != 1, "selftest cannot pass without its ramdisk"

    run_tool(*make, "clean")
    assert not (work / "build").exists()


# ---- under QEMU ----------------------------------------------------------------

def qemu_cmd(qemu: str, elf: Path, serial: Path, append: str, *extra: str) -> list[str]:
    return [qemu, "-machine", "pc", "-accel", "tcg", "-display", "none", "-no-reboot",
            "-vga", "none", "-nodefaults", "-serial", f"file:{serial}",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", str(elf), "-append", append, *extra]


def boot(qemu: str, tmp_path: Path, name: str, append: str = "",
         *extra: str) -> tuple[int, str]:
    """Boot a guest to its exit; return (QEMU exit status, serial transcript)."""
    serial = tmp_path / f"{name}.serial"
    proc = subprocess.run(qemu_cmd(qemu, GUEST_BUILD / f"{name}.elf", serial, append,
                                   "-monitor", "none", *extra),
                          capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    out = serial.read_text(errors="replace") if serial.exists() else ""
    return proc.returncode, out + proc.stderr


def test_hello_boots(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "hello", "a=1 size=4K")
    lines = out.splitlines()
    assert status == 1, out                     # exit(0) -> (0 << 1) | 1
    assert lines[0] == "blockbed hello guest"
    assert re.fullmatch(r"mem: 12[0-7] MiB", lines[1]), lines[1]   # default -m 128
    # QEMU's first command-line word is the kernel path: ignored.
    assert [ln for ln in lines if ln.startswith("arg ")] == ["arg a=1", "arg size=4K"]
    assert "pci 00:00.0 8086:1237 class 06.00.00" in lines        # i440FX host bridge
    assert "pci 00:01.1 8086:7010 class 01.01.80" in lines        # PIIX3 IDE
    assert lines[-1] == "hello: done"


def test_hello_memory_size(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "hello", "", "-m", "256")
    assert status == 1, out
    assert re.search(r"^mem: 25[0-5] MiB$", out, re.M), out


def parse_hello_pci(out: str) -> dict[tuple[int, int, int], dict]:
    devs: dict[tuple[int, int, int], dict] = {}
    cur = None
    for ln in out.splitlines():
        m = re.fullmatch(r"pci (\w\w):(\w\w)\.(\d) (\w{4}):(\w{4}) class .*", ln)
        if m:
            cur = {"id": f"{m[4]}:{m[5]}", "bars": {}}
            devs[(int(m[1], 16), int(m[2], 16), int(m[3]))] = cur
            continue
        m = re.fullmatch(r"  bar (\d) (io|mem32|mem64)( prefetch)? addr=(0x\w+) size=(0x\w+)",
                         ln)
        if m:
            assert cur is not None
            cur["bars"][int(m[1])] = (m[2], bool(m[3]), int(m[4], 16), int(m[5], 16))
    return devs


def parse_info_pci(text: str) -> dict[tuple[int, int, int], dict]:
    """QEMU's HMP `info pci`: devices with BAR kind, address and size."""
    devs: dict[tuple[int, int, int], dict] = {}
    cur = None
    for ln in text.splitlines():
        m = re.search(r"Bus +(\d+), device +(\d+), function (\d+):", ln)
        if m:
            cur = {"bars": {}}
            devs[(int(m[1]), int(m[2]), int(m[3]))] = cur
            continue
        m = re.search(r"PCI device (\w{4}):(\w{4})", ln)
        if m and cur is not None:
            cur["id"] = f"{m[1]}:{m[2]}"
        m = re.search(r"BAR(\d): (I/O|32 bit|64 bit)( prefetchable)? ?(?:memory)? at "
                      r"(0x\w+) \[(0x\w+)\]", ln)
        if m and cur is not None and int(m[1]) < 6:
            kind = {"I/O": "io", "32 bit": "mem32", "64 bit": "mem64"}[m[2]]
            lo, hi = int(m[4], 16), int(m[5], 16)
            cur["bars"][int(m[1])] = (kind, bool(m[3]), lo, hi - lo + 1)
    return devs


def test_hello_pci_matches_qemu_info_pci(qemu_system: str, tmp_path: Path) -> None:
    """The guest's enumeration and BAR sizing agree with QEMU's own view:
    32/64-bit, prefetchable and I/O BARs (virtio-blk, AHCI, LSI) and a
    device behind a PCI-to-PCI bridge."""
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    serial = tmp_path / "hello.serial"
    cmd = qemu_cmd(qemu_system, GUEST_BUILD / "hello.elf", serial, "wait=1",
                   "-monitor", "stdio",
                   "-drive", f"file={disk},format=raw,if=none,id=d0,file.locking=off",
                   "-device", "virtio-blk-pci,drive=d0",
                   "-device", "ahci", "-device", "lsi53c895a",
                   "-device", "pci-bridge,chassis_nr=1,id=br",
                   "-drive", f"file={disk},format=raw,if=none,id=d1,readonly=on,"
                             "file.locking=off",
                   "-device", "virtio-blk-pci,drive=d1,bus=br,addr=3")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + QEMU_TIMEOUT
        while not (serial.exists() and "hello: done" in serial.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "guest did not finish"
            time.sleep(0.05)
        monitor, _ = proc.communicate("info pci\nquit\n", timeout=QEMU_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    guest = parse_hello_pci(serial.read_text())
    qemu = parse_info_pci(monitor)
    assert set(guest) == set(qemu)
    for bdf, dev in qemu.items():
        assert guest[bdf]["id"] == dev["id"], bdf
        assert guest[bdf]["bars"] == dev["bars"], bdf
    kinds = {bar[:2] for dev in guest.values() for bar in dev["bars"].values()}
    assert {("io", False), ("mem32", False), ("mem64", True)} <= kinds
    assert any(bdf[0] == 1 for bdf in guest), "nothing found behind the bridge"


def test_selftest_passes(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "selftest", "irq=1")
    assert "FAIL" not in out, out
    assert re.search(r"^selftest: \d+ checks, 0 failures$", out, re.M), out
    assert status == 1, out


def test_selftest_4k_sectors(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "selftest", "ram_sector=4096 ram_size=2M")
    assert "ram0: 512 sectors of 4096 bytes" in out, out
    assert status == 1, out


def test_exception_is_reported(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "selftest", "fault=ud2")
    assert re.search(r"^exception 6 \(invalid opcode\) error=0x0 rip=0x1", out, re.M), out
    assert status == 0x7F * 2 + 1


def test_bad_number_argument_is_a_clear_error(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "selftest", "ram_size=12x")
    assert "panic: cmdline: ram_size=12x is not a number" in out, out
    assert status == 0x7E * 2 + 1


def test_device_interrupts_msi_and_intx(qemu_system: str, tmp_path: Path) -> None:
    """MSI via the local APIC and level INTx via the I/O APIC reach IDT
    handlers, EOI works, and an acknowledged level interrupt does not
    repeat (QEMU's edu test device raises them on request)."""
    status, out = boot(qemu_system, tmp_path, "irqtest", "", "-device", "edu")
    assert "irqtest: msi ok" in out and "irqtest: intx ok" in out, out
    assert status == 1, out


def test_irqtest_without_device(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "irqtest")
    assert "irqtest: no edu device" in out, out
    assert status == 2 * 2 + 1


@pytest.mark.parametrize("cache,wce", [("writeback", 1), ("writethrough", 0)])
def test_ata_identify_decoding_matches_qemu(qemu_system: str, tmp_path: Path,
                                            cache: str, wce: int) -> None:
    """lib/ata.c decodes QEMU's real IDENTIFY DEVICE data: strings (byte
    swapped, trimmed), 48-bit capacity, write cache state from the drive's
    cache mode, feature bits."""
    disk = tmp_path / "ata.img"
    disk.write_bytes(bytes(3 * 1024 * 1024 + 512 * 7))
    status, out = boot(qemu_system, tmp_path, "ataprobe", "",
                       "-drive", f"file={disk},format=raw,if=none,id=d0,cache={cache}",
                       "-device", "ide-hd,drive=d0,bus=ide.0,unit=0,serial=SER-42,"
                                  "model=blockbed test disk")
    assert status == 1, out
    lines = [ln for ln in out.splitlines() if ln.startswith("ataprobe: ")]
    assert lines[0] == "ataprobe: model 'blockbed test disk' serial 'SER-42' firmware '2.5+'"
    assert lines[1] == f"ataprobe: sectors {6144 + 7} sector_size 512 lba48 1 dma 1"
    assert lines[2] == (f"ataprobe: wcache supported 1 enabled {wce} flush 1 flush_ext 1 "
                        "fua 0")
    cachename = "writeback" if wce else "writethrough"
    assert f"ata: {6144 + 7} sectors of 512 bytes, cache {cachename}, qd 0, caps flush" in out


def test_ataprobe_without_disk(qemu_system: str, tmp_path: Path) -> None:
    status, out = boot(qemu_system, tmp_path, "ataprobe")
    assert "ataprobe: no device" in out, out
    assert status == 5
