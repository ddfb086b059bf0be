"""Damaged qcow2 images: blockbed must fail like QEMU (EIO + corrupt bit), never
return wrong data silently and never write over metadata (issue #12).

Each kind of damage is built from a fresh qemu-img image (tests/qcow2_damage.py)
and given to both qemu-io and blockbed.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess

import pytest

from blockbed.block import registry
from blockbed.block.driver import CorruptImageError, ImageFormatError

from blockbed.cli import main as blockbed_main
from qcow2_damage import KINDS, PATTERN, build

CORRUPT_BIT = 2


def _incompat(path) -> int:
    with open(path, "rb") as f:
        f.seek(72)
        return struct.unpack(">Q", f.read(8))[0]


def _hash_without_features(path) -> str:
    """Hash of the whole file except the incompatible-features field (which the
    corrupt bit legitimately changes)."""
    data = bytearray(path.read_bytes())
    data[72:80] = bytes(8)
    return hashlib.sha256(data).hexdigest()


def _pair(tmp_path, qemu_img, qemu_io, dmg):
    """The damaged image for blockbed and an identical copy for QEMU."""
    img = tmp_path / "d.qcow2"
    build(qemu_img, qemu_io, img, dmg)
    ref = tmp_path / "ref.qcow2"
    shutil.copy(img, ref)
    return img, ref


@pytest.mark.parametrize("dmg", KINDS, ids=lambda d: d.name)
def test_read_fails_like_qemu(tmp_path, qemu_img, qemu_io, dmg):
    img, ref = _pair(tmp_path, qemu_img, qemu_io, dmg)
    q = subprocess.run([qemu_io, "-c", "read 0 512", str(ref)], capture_output=True, text=True)
    assert "Input/output error" in q.stdout + q.stderr
    assert dmg.expect in q.stderr
    node = registry.open_image(str(img), "qcow2", read_only=True)
    try:
        buf = bytearray(512)
        with pytest.raises(CorruptImageError) as ei:
            node.read(0, memoryview(buf))
        assert dmg.expect in str(ei.value)
        assert ei.value.errno == 5
    finally:
        node.close()
    assert not _incompat(img) & CORRUPT_BIT      # read-only open never writes


@pytest.mark.parametrize("dmg", KINDS, ids=lambda d: d.name)
def test_write_refused_and_marks_corrupt(tmp_path, qemu_img, qemu_io, dmg):
    img, ref = _pair(tmp_path, qemu_img, qemu_io, dmg)
    before = _hash_without_features(img)
    q = subprocess.run([qemu_io, "-c", "write -P 0xcd 0 4k", str(ref)],
                       capture_output=True, text=True)
    assert _incompat(ref) & CORRUPT_BIT
    assert "write failed: Input/output error" in q.stdout + q.stderr
    # QEMU's message for the write path (handle_copied differs from the read path)
    qmsg = q.stderr.split("Marking image as corrupt: ", 1)[1].split(
        "; further corruption events", 1)[0]
    node = registry.open_image(str(img), "qcow2")
    try:
        with pytest.raises(CorruptImageError) as ei:
            node.write(0, b"\xcd" * 4096)
        assert str(ei.value).endswith(qmsg)
    finally:
        node.close()
    assert _incompat(img) & CORRUPT_BIT, "the corrupt bit must be set as QEMU sets it"
    assert _hash_without_features(img) == before, "metadata or data changed"
    with pytest.raises(ImageFormatError):
        registry.open_image(str(img), "qcow2")
    registry.open_image(str(img), "qcow2", read_only=True).close()


@pytest.mark.parametrize("cmd", [["convert", "-O", "raw"], ["map"]])
def test_cli_one_line_error(tmp_path, capsys, qemu_img, qemu_io, cmd):
    """The tester's report: convert exited 0 with zeros, map said all zero."""
    img = tmp_path / "d.qcow2"
    build(qemu_img, qemu_io, img, KINDS[0])
    argv = ["img", *cmd, str(img)]
    if cmd[0] == "convert":
        argv.append(str(tmp_path / "out.raw"))
    rc = blockbed_main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    assert "Traceback" not in err
    assert "L2 table offset 0x40200 unaligned (L1 index: 0)" in err


def test_intact_image_still_reads(tmp_path, qemu_img, qemu_io):
    """Guard against over-eager checks: the undamaged image reads its data."""
    img = tmp_path / "ok.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "1M"], check=True)
    subprocess.run([qemu_io, "-c", f"write -P {PATTERN:#x} 0 64k", str(img)],
                   check=True, capture_output=True)
    node = registry.open_image(str(img), "qcow2", read_only=True)
    try:
        buf = bytearray(65536)
        node.read(0, memoryview(buf))
    finally:
        node.close()
    assert buf == bytes([PATTERN]) * 65536


@pytest.mark.parametrize("field,bits", [("l1", 0x80), ("l2", 0x100)])
def test_reserved_bits_tolerated_like_qemu(tmp_path, qemu_img, qemu_io, field, bits):
    """Reserved low bits of L1/L2 entries are masked, not fatal, in QEMU's I/O path:
    read and write succeed and the image is not marked corrupt (in both tools)."""
    from qcow2_damage import _u64
    img = tmp_path / "r.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "1M"], check=True)
    subprocess.run([qemu_io, "-c", f"write -P {PATTERN:#x} 0 64k", str(img)],
                   check=True, capture_output=True)
    with open(img, "r+b") as f:
        target = _u64(f, 40)
        if field == "l2":
            target = _u64(f, target) & 0x00FFFFFFFFFFFE00
        e = _u64(f, target)
        f.seek(target)
        f.write(struct.pack(">Q", e | bits))
    ref = tmp_path / "ref.qcow2"
    shutil.copy(img, ref)
    q = subprocess.run([qemu_io, "-c", f"read -P {PATTERN:#x} 0 4k", "-c",
                        "write -P 0xcd 0 4k", "-c", "read -P 0xcd 0 4k", str(ref)],
                       capture_output=True, text=True)
    assert q.returncode == 0 and "corrupt" not in q.stderr, q.stderr
    assert not _incompat(ref) & CORRUPT_BIT
    node = registry.open_image(str(img), "qcow2")
    try:
        buf = bytearray(4096)
        node.read(0, memoryview(buf))
        assert buf == bytes([PATTERN]) * 4096
        node.write(0, b"\xcd" * 4096)
        node.read(0, memoryview(buf))
        assert buf == b"\xcd" * 4096
    finally:
        node.close()
    assert not _incompat(img) & CORRUPT_BIT


def test_guest_sees_io_errors_on_unaligned_l2(tmp_path, qemu_img, qemu_io):
    """The tester's report: disktest on virtio PASSed while writing through the bogus
    L2 table.  Now every request through it fails with EIO (werror=report), the
    guest reports errors and FAILs, and the image carries the corrupt bit."""
    from conftest import guest_elf
    from blockbed.devices.attach import attach_drives
    from blockbed.machine import Machine, MachineConfig
    img = tmp_path / "d.qcow2"
    build(qemu_img, qemu_io, img, KINDS[0])
    m = Machine(MachineConfig(memory_mib=128, seed=1, timeout_s=120))
    try:
        attach_drives(m, [f"file={img},format=qcow2,if=virtio,werror=report,rerror=report"])
        m.load_kernel(str(guest_elf("disktest")), "dev=virtio seed=3 ops=40")
        res = m.run()
    finally:
        m.close()
    assert res.exit_code == 1 and "disktest: FAIL" in res.transcript, res.transcript
    assert "PASS" not in res.transcript.split("disktest:")[-1]
    assert _incompat(img) & CORRUPT_BIT
    q = subprocess.run([qemu_img, "info", str(img)], capture_output=True, text=True)
    assert "corrupt: true" in q.stdout
