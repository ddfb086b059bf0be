"""Differential fuzz of ``check``: qemu-written images with one metadata word damaged
(a flipped flag bit, a zeroed entry, an entry shifted by a cluster) give the same
stdout, stderr and exit status from ``blockbed img check`` as from ``qemu-img check``,
plain, with ``-r leaks`` and with ``-r all``."""

from __future__ import annotations

import random
import shutil
import struct
import subprocess

import pytest

from blockbed.cli import main
from test_img_fuzz import _image


def _damage(seed: int) -> bool:
    r = random.Random(seed * 7)
    with open("t.qcow2", "rb") as f:
        data = bytearray(f.read())
    cs = 1 << struct.unpack(">I", data[20:24])[0]
    l1, rt = struct.unpack(">Q", data[40:48])[0], struct.unpack(">Q", data[48:56])[0]
    targets = [l1, rt]
    rb = struct.unpack(">Q", data[rt:rt + 8])[0] & ~511
    if rb and rb + cs <= len(data):
        targets.append(rb)
    if l1 + 8 <= len(data):
        l2 = struct.unpack(">Q", data[l1:l1 + 8])[0] & 0x00FFFFFFFFFFFE00
        if l2 and l2 + cs <= len(data):
            targets.append(l2)
    idx = r.choice(targets) + 8 * r.randrange(0, min(8, cs // 8))
    if idx + 8 > len(data):
        return False
    v = struct.unpack(">Q", data[idx:idx + 8])[0]
    kind = r.random()
    if kind < 0.4:
        v ^= 1 << r.choice([63, 62, 0, 9, 16, 17, 20])
    elif kind < 0.7:
        v = 0
    else:
        v = (v + cs) & (2**64 - 1)
    data[idx:idx + 8] = struct.pack(">Q", v)
    with open("t.qcow2", "wb") as f:
        f.write(data)
    return True


def _one(qemu_img, qemu_io, capfd, seed):
    _image(qemu_img, qemu_io, seed)
    if not _damage(seed):
        return
    for mode in ([], ["-r", "leaks"], ["-r", "all"]):
        shutil.copy("t.qcow2", "a.qcow2")
        shutil.copy("t.qcow2", "b.qcow2")
        theirs = subprocess.run([qemu_img, "check", *mode, "--output=json", "a.qcow2"],
                                capture_output=True, text=True)
        capfd.readouterr()
        rc = main(["img", "check", *mode, "--output=json", "b.qcow2"])
        ours = capfd.readouterr()
        assert rc == theirs.returncode, (seed, mode, ours.err, theirs.stderr)
        assert ours.out.replace("b.qcow2", "X") == theirs.stdout.replace("a.qcow2", "X"), \
            (seed, mode)
        assert ours.err.replace("b.qcow2", "X").replace("blockbed img: ", "qemu-img: ") == \
            theirs.stderr.replace("a.qcow2", "X"), \
            (seed, mode)


@pytest.mark.parametrize("seed", range(5))
def test_check_fuzz_quick(qemu_img, qemu_io, capfd, tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    _one(qemu_img, qemu_io, capfd, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5, 150))
def test_check_fuzz_long(qemu_img, qemu_io, capfd, tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    _one(qemu_img, qemu_io, capfd, seed)
