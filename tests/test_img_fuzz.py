"""Differential fuzz: random images written by qemu-io (chains, zero writes with and
without unmap, discards, compressed clusters, snapshots, every refcount width) must
give the same info/map/check output from ``blockbed img`` as from qemu-img, and read
the same data through blockbed as ``qemu-img convert -O raw`` produces."""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from blockbed.block import registry
from blockbed.cli import main

COMMANDS = (["info", "--output=json"], ["info"], ["map", "--output=json"], ["map"],
            ["check", "--output=json"], ["check"], ["info", "--backing-chain", "--output=json"])


def _image(qemu_img: str, qemu_io: str, seed: int) -> int:
    r = random.Random(seed)
    run = lambda *a: subprocess.run(a, capture_output=True, text=True)
    cl = r.choice([512, 4096, 65536, 2 << 20])
    compat = r.choice(["0.10", "1.1"])
    rb = 16 if compat == "0.10" else r.choice([1, 2, 8, 16, 64])
    size = r.choice([1 << 20, 3 << 20, 5 << 20])
    args = [qemu_img, "create", "-q", "-f", "qcow2", "-o",
            f"cluster_size={cl},compat={compat},refcount_bits={rb}"]
    if r.random() < 0.4:
        run(qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", str(size // 2))
        run(qemu_io, "-c", "write -P 9 0 100k", "base.qcow2")
        args += ["-b", "base.qcow2", "-F", "qcow2"]
    run(*args, "t.qcow2", str(size))
    cmds: list[str] = []
    for _ in range(r.randrange(1, 12)):
        off = r.randrange(0, size // 512) * 512
        ln = min(size - off, r.choice([512, 4096, 65536, 200000]))
        k = r.random()
        if k < 0.5:
            cmds += ["-c", f"write -P {r.randrange(256)} {off} {ln}"]
        elif k < 0.7:
            cmds += ["-c", f"write -z {'-u ' if r.random() < 0.5 else ''}{off} {ln}"]
        elif k < 0.85:
            cmds += ["-c", f"discard {off} {ln}"]
        elif compat == "1.1" and cl <= 65536 and off // cl * cl + cl <= size:
            cmds += ["-c", f"write -c -P 5 {off // cl * cl} {cl}"]
    if cmds:
        run(qemu_io, *cmds, "t.qcow2")
    if r.random() < 0.3:
        run(qemu_img, "snapshot", "-c", "s1", "t.qcow2")
        run(qemu_io, "-c", f"write -P 3 0 {min(size, 70000)}", "t.qcow2")
    return size


def _one(qemu_img, qemu_io, capsys, seed):
    _image(qemu_img, qemu_io, seed)
    for cmd in COMMANDS:
        capsys.readouterr()
        rc = main(["img", *cmd, "t.qcow2"])
        ours = capsys.readouterr().out
        theirs = subprocess.run([qemu_img, *cmd, "t.qcow2"], capture_output=True, text=True)
        assert (rc, ours) == (theirs.returncode, theirs.stdout), (seed, cmd)
    subprocess.run([qemu_img, "convert", "-O", "raw", "t.qcow2", "ref.raw"], check=True)
    node = registry.open_image("t.qcow2", "qcow2", read_only=True)
    try:
        buf = bytearray(node.length())
        node.read(0, memoryview(buf))
    finally:
        node.close()
    with open("ref.raw", "rb") as f:
        assert buf == f.read(), seed


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_quick(qemu_img, qemu_io, capsys, tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    _one(qemu_img, qemu_io, capsys, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6, 150))
def test_fuzz_long(qemu_img, qemu_io, capsys, tmp_path, monkeypatch, seed):
    monkeypatch.chdir(tmp_path)
    _one(qemu_img, qemu_io, capsys, seed)
