"""Damaged qcow2 headers are refused with the message qemu-img 7.2 gives, naming the
field that is wrong (they used to blame the backing file name, the backing-format
extension or the cluster size)."""

from __future__ import annotations

import struct
import subprocess

import pytest

from blockbed.cli import main as blockbed_main


def _backing_offset_1tib(p):
    with open(p, "r+b") as f:
        f.seek(8)
        f.write(struct.pack(">QI", 1 << 40, 10))


def _huge_unknown_extension(p):
    with open(p, "r+b") as f:
        f.seek(100)
        hl = struct.unpack(">I", f.read(4))[0]
        f.seek(hl)
        f.write(struct.pack(">II", 0x12345678, 1 << 20))


def _long_backing_format(p):
    with open(p, "r+b") as f:
        f.seek(100)
        hl = struct.unpack(">I", f.read(4))[0]
        f.seek(hl)
        f.write(struct.pack(">II", 0xE2792ACA, 40) + b"q" * 40 + bytes(8))


def _truncate_100(p):
    with open(p, "r+b") as f:
        f.truncate(100)


@pytest.mark.parametrize("damage", [_backing_offset_1tib, _huge_unknown_extension,
                                    _long_backing_format, _truncate_100],
                         ids=lambda f: f.__name__.strip("_"))
def test_header_damage_message_matches_qemu_img(qemu_img, tmp_path, capsys, damage):
    img = tmp_path / "d.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "10M"], check=True)
    damage(img)
    q = subprocess.run([qemu_img, "info", str(img)], capture_output=True, text=True)
    assert q.returncode == 1
    want = q.stderr.strip().split(f"Could not open '{img}': ", 1)[1]
    capsys.readouterr()
    assert blockbed_main(["img", "info", "-f", "qcow2", str(img)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith(want), (err, want)
