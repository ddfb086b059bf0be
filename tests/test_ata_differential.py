"""Differential tests for AHCI and PIIX IDE: the same guest on the same disk under
QEMU 7.2 and blockbed.

QEMU runs ``-device ahci,id=a -device ide-hd,drive=d0,bus=a.0`` (ICH9 AHCI) or the
pc machine's built-in PIIX3 IDE (``if=ide``); blockbed ``--drive …,if=ahci|ide``.
The transcripts must be identical line for line (the drivers and programs print no
addresses or timings; the default serials follow QEMU's QM%05d numbering), and the
disks identical afterwards (``qemu-img compare``).

The one path excluded, and why: QEMU 7.2 does not implement WRITE DMA FUA EXT (it
aborts the command and clears IDENTIFY word 84 bit 6) and ignores the FUA bit of
WRITE FPDMA QUEUED (it only traces it).  The drivers decide from IDENTIFY, so under
QEMU they never send FUA EXT; the ``identify`` program prints the capability list,
where blockbed's extra "fua" would differ, so those runs pass ahci_fua=0 /
ide_fua=0 to leave that one capability out.  disktest consumes its random stream
the same way whatever the device offers, so its runs keep FUA on: under blockbed
FUA writes really happen (checked through the request log elsewhere), and the
transcript and the disk must still agree.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import guest_elf, run_tool
from harness import run_blockbed, run_qemu, assert_same_disk, assert_same_run


def make_image(path, fmt: str = "raw") -> None:
    run_tool("qemu-img", "create", "-q", "-f", fmt, str(path), "16M")
    run_tool("qemu-io", "-f", fmt, "-c", "write -P 0xab 0 1M", "-c", "write -P 0x3c 9M 64k",
             str(path))


def differential(tmp_path, program: str, append: str, dev: str, fmt: str = "raw",
                 drive_opts: str = ""):
    a, b = tmp_path / f"qemu.{fmt}", tmp_path / f"bb.{fmt}"
    make_image(a, fmt)
    shutil.copy(a, b)
    elf = guest_elf(program)
    if dev == "ahci":
        extra = ["-drive", f"file={a},if=none,id=d0,format={fmt}",
                 "-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0"]
    else:
        extra = ["-drive", f"file={a},if=ide,format={fmt}"]
    q = run_qemu(elf, append, extra=extra)
    bb = run_blockbed(elf, append, drives=[f"file={b},format={fmt},if={dev}{drive_opts}"])
    assert_same_run(q, bb)
    assert_same_disk(a, b, fmt)
    return q, bb


@pytest.mark.qemu
def test_ahci_disktest_non_queued(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ahci seed=3 ops=120 span=4096 ahci_ncq=0", "ahci")
    assert "disktest: PASS" in q.lines() and q.status == 0


@pytest.mark.qemu
def test_ahci_disktest_ncq(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ahci seed=7 ops=150 qd=16 span=4096", "ahci")
    assert "disktest: PASS" in q.lines() and q.status == 0


@pytest.mark.qemu
def test_ahci_disktest_qcow2(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ahci seed=9 ops=80 qd=4 span=2048", "ahci",
                        fmt="qcow2")
    assert "disktest: PASS" in q.lines()


@pytest.mark.qemu
def test_ide_disktest_bmdma(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ide seed=5 ops=120 span=4096", "ide")
    assert "disktest: PASS" in q.lines() and q.status == 0


@pytest.mark.qemu
def test_ide_disktest_pio(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ide seed=2 ops=40 span=512 maxsec=16 ide_dma=0",
                        "ide")
    assert "disktest: PASS" in q.lines() and q.status == 0


@pytest.mark.qemu
@pytest.mark.parametrize("dev", ["ahci", "ide"])
def test_identify_and_write_cache_toggle(tools, tmp_path, dev):
    # {dev}_fua=0: QEMU 7.2 clears IDENTIFY word 84 bit 6 (no WRITE DMA FUA EXT); see above.
    q, _ = differential(tmp_path, "identify", f"dev={dev} wce=toggle {dev}_fua=0", dev)
    assert q.status == 0
    assert any(ln.startswith("model: 'QEMU HARDDISK'") for ln in q.lines())
    assert "identify: set write cache off: ok, now writethrough" in q.lines()


@pytest.mark.qemu
def test_ahci_identify_write_cache_off_from_cache_mode(tools, tmp_path):
    """cache=writethrough makes IDENTIFY word 85 bit 5 clear on both."""
    a, b = tmp_path / "q.raw", tmp_path / "b.raw"
    make_image(a)
    shutil.copy(a, b)
    elf = guest_elf("identify")
    q = run_qemu(elf, "dev=ahci ahci_fua=0", extra=[
        "-drive", f"file={a},if=none,id=d0,format=raw,cache=writethrough",
        "-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0"])
    bb = run_blockbed(elf, "dev=ahci ahci_fua=0",
                      drives=[f"file={b},format=raw,if=ahci,cache=writethrough"])
    assert bb.lines() == q.lines()
    assert "write cache: writethrough" in q.lines()


@pytest.mark.qemu
def test_two_ahci_ports_and_ide_slave(tools, tmp_path):
    """Drive placement: AHCI port 1 (idx 1) and the IDE primary slave."""
    imgs = {}
    for side in ("q", "b"):
        for n in range(2):
            p = tmp_path / f"{side}{n}.raw"
            run_tool("qemu-img", "create", "-q", "-f", "raw", str(p), f"{8 + 8 * n}M")
            imgs[side, n] = p
    elf = guest_elf("identify")
    q = run_qemu(elf, "dev=ahci idx=1 ahci_fua=0", extra=[
        "-drive", f"file={imgs['q', 0]},if=none,id=d0,format=raw",
        "-drive", f"file={imgs['q', 1]},if=none,id=d1,format=raw",
        "-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0",
        "-device", "ide-hd,drive=d1,bus=a.1"])
    bb = run_blockbed(elf, "dev=ahci idx=1 ahci_fua=0", drives=[
        f"file={imgs['b', 0]},format=raw,if=ahci", f"file={imgs['b', 1]},format=raw,if=ahci"])
    assert bb.lines() == q.lines() and q.status == 0
    assert any("32768 sectors" in ln for ln in q.lines())
    q = run_qemu(elf, "dev=ide idx=1 ide_fua=0", extra=[
        "-drive", f"file={imgs['q', 0]},if=ide,format=raw,index=0",
        "-drive", f"file={imgs['q', 1]},if=ide,format=raw,index=1"])
    bb = run_blockbed(elf, "dev=ide idx=1 ide_fua=0", drives=[
        f"file={imgs['b', 0]},format=raw,if=ide", f"file={imgs['b', 1]},format=raw,if=ide"])
    assert bb.lines() == q.lines() and q.status == 0
