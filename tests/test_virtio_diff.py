"""Differential tests: the same guest on the same disk under QEMU 7.2 and blockbed.

QEMU runs ``-device virtio-blk-pci,disable-legacy=on`` (the modern-only
1AF4:1042 function blockbed models) on one copy of the image, blockbed
``--drive …,if=virtio`` on another.  The transcripts must be identical —
no line is excluded: the virtio driver and the programs print no
addresses and no timings, and the driver prints the offered and negotiated
feature words and (virtio_verbose=1) the whole device configuration, so
those are compared too.  The disks must be identical afterwards
(``qemu-img compare``).
"""

from __future__ import annotations

import shutil

import pytest

from conftest import guest_elf, run_tool
from harness import run_blockbed, run_qemu, assert_same_disk, assert_same_run

MiB = 1 << 20


def make_image(path, fmt: str = "raw") -> None:
    run_tool("qemu-img", "create", "-q", "-f", fmt, str(path), "16M")
    # Some content that disktest's fill pass must overwrite.
    run_tool("qemu-io", "-f", fmt, "-c", "write -P 0xab 1M 2M", "-c", "write -P 0x3c 9M 64k",
             str(path))


def differential(tmp_path, program: str, append: str, fmt: str = "raw", qemu_dev: str = "",
                 drive_opts: str = "", qemu_drive_opts: str = ""):
    a, b = tmp_path / f"qemu.{fmt}", tmp_path / f"bb.{fmt}"
    make_image(a, fmt)
    shutil.copy(a, b)
    elf = guest_elf(program)
    q = run_qemu(elf, append, extra=[
        "-drive", f"file={a},if=none,id=d0,format={fmt}{qemu_drive_opts}",
        "-device", f"virtio-blk-pci,drive=d0,disable-legacy=on{qemu_dev}"])
    bb = run_blockbed(elf, append, drives=[f"file={b},format={fmt},if=virtio{drive_opts}"])
    assert_same_run(q, bb)
    assert_same_disk(a, b, fmt)
    return q, bb


@pytest.mark.qemu
def test_disktest_default(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=virtio seed=11 ops=120")
    assert "disktest: PASS" in q.lines()
    assert q.status == 0


@pytest.mark.qemu
def test_disktest_direct_descriptors_no_event_idx(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest",
                        "dev=virtio seed=5 ops=80 qd=4 virtio_indirect=0 virtio_event_idx=0 "
                        "virtio_qsize=16 virtio_verbose=1")
    assert "disktest: PASS" in q.lines()
    assert any("negotiated 0x100006e44" in ln for ln in q.lines())


@pytest.mark.qemu
def test_disktest_msix_qcow2(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=virtio seed=4 ops=80 virtio_irq=msix",
                        fmt="qcow2")
    assert "disktest: PASS" in q.lines()


@pytest.mark.qemu
def test_identify_multiqueue_writethrough_serial(tools, tmp_path):
    q, _ = differential(tmp_path, "identify",
                        "dev=virtio virtio_verbose=1 virtio_queues=2 wce=toggle",
                        qemu_dev=",num-queues=2,serial=DIFF-SERIAL-01",
                        drive_opts=",num-queues=2,serial=DIFF-SERIAL-01,cache=writethrough",
                        qemu_drive_opts=",cache=writethrough")
    lines = q.lines()
    assert "serial: 'DIFF-SERIAL-01'" in lines
    assert "write cache: writethrough" in lines
    assert any("num_queues=2" in ln for ln in lines)
    assert any("offered 0x10130007e54" in ln for ln in lines)   # + MQ


@pytest.mark.qemu
def test_read_only_drive(tools, tmp_path):
    # identify on a read-only drive: RO offered and reported alike.  (disktest is not
    # used here: QEMU completes a DISCARD on a read-only drive with OK when
    # discard=ignore, we answer IOERR; see docs/virtio-blk.md, known differences.)
    q, _ = differential(tmp_path, "identify", "dev=virtio virtio_verbose=1",
                        drive_opts=",readonly=on", qemu_drive_opts=",readonly=on")
    lines = q.lines()
    assert any("offered 0x10130006e74" in ln for ln in lines)     # + RO (bit 5)
    assert "virtio0: read-only" in lines


@pytest.mark.qemu
def test_disktest_discard_unmap(tools, tmp_path):
    # discard=unmap: discards and unmapping write-zeroes punch holes in the raw file on
    # both emulators; the guest-visible content must still agree byte for byte.
    q, _ = differential(tmp_path, "disktest", "dev=virtio seed=21 ops=100",
                        drive_opts=",discard=unmap", qemu_drive_opts=",discard=unmap")
    assert "disktest: PASS" in q.lines()
