"""``blockbed img dd`` against ``qemu-img dd`` 7.2 (same output files, messages and
status) and, where qemu-img 7.2 applies ``count`` before ``skip``, against dd(1)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.fixture
def src(qemu_img, qemu_io, tmp_path) -> Path:
    p = tmp_path / "a.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(p), "10M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 1 0 1M", "-c", "write -P 2 5M 100k",
                    "-c", "write -P 3 9M 4k", str(p)], check=True, capture_output=True)
    return p


def _bb(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "blockbed", "img", "dd", *argv], cwd=cwd,
                          capture_output=True, text=True, env=env)


SAME = [
    "if=a.qcow2 of=o.raw", "-O qcow2 if=a.qcow2 of=o.qcow2 bs=64k count=3",
    "-O qcow2 if=a.qcow2 of=o.qcow2 skip=3 bs=1M", "if=a.qcow2 of=o bs=1M count=100",
    "-f raw if=a.qcow2 of=o bs=1M count=1", "if=a.qcow2 of=o count=1 bs=1.5k",
    "if=a.qcow2 of=o count=1k", "if=a.qcow2 of=o skip=20480", "if=a.qcow2 of=o count=0",
    "if=a.qcow2 of=o bs=4k skip=1280",
    "--image-opts if=driver=qcow2,file.filename=a.qcow2 of=o bs=64k count=2",
    # refused
    "if=a.qcow2", "of=x", "if=a.qcow2 of=o bs=0", "if=a.qcow2 of=o bs=4G",
    "if=a.qcow2 of=o bs=abc", "if=a.qcow2 of=o count=-1", "if=a.qcow2 of=o skip=x",
    "if=a.qcow2 of=o foo=1", "if=a.qcow2 of=o conv=notrunc", "if=nonexist of=o",
    "if=a.qcow2 of=o if=b", "-O bogus if=a.qcow2 of=o",
]


@pytest.mark.parametrize("args", SAME)
def test_dd_matches_qemu_img(qemu_img, src, tmp_path, args):
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    for d in (q, b):
        d.mkdir()
        shutil.copy(src, d / "a.qcow2")
    pq = subprocess.run([qemu_img, "dd", *argv], cwd=q, capture_output=True, text=True)
    pb = _bb(b, *argv)
    assert (pb.returncode, pb.stdout, pb.stderr.replace("blockbed img:", "qemu-img:")) == \
        (pq.returncode, pq.stdout, pq.stderr)
    assert sorted(os.listdir(b)) == sorted(os.listdir(q))
    for name in os.listdir(q):
        assert (b / name).read_bytes() == (q / name).read_bytes(), name


@pytest.mark.parametrize("bs,skip,count", [(3, 1, 5), ("1M", 1, 6), (512, 7, 100), ("4k", 2, 2),
                                           ("64k", 150, 20)])
def test_dd_skips_then_counts_as_dd1(qemu_img, src, tmp_path, bs, skip, count):
    """skip first, then count — dd(1)'s meaning, which qemu-img 7.2 gets wrong."""
    raw = tmp_path / "a.raw"
    subprocess.run([qemu_img, "convert", "-O", "raw", str(src), str(raw)], check=True)
    subprocess.run(["dd", f"if={raw}", f"of={tmp_path / 'ref'}", f"bs={bs}", f"skip={skip}",
                    f"count={count}", "status=none"], check=True)
    p = _bb(tmp_path, f"if={src}", "of=out", f"bs={bs}", f"skip={skip}", f"count={count}")
    assert p.returncode == 0, p.stderr
    ref, out = (tmp_path / "ref").read_bytes(), (tmp_path / "out").read_bytes()
    assert out[:len(ref)] == ref
    assert out[len(ref):] == bytes(len(out) - len(ref)) and len(out) - len(ref) < 512


def test_dd_skip_past_the_end_is_an_error(src, tmp_path):
    p = _bb(tmp_path, f"if={src}", "of=out", "skip=100000")
    assert p.returncode == 1
    assert p.stderr.strip().endswith("cannot skip to specified offset")
    assert not (tmp_path / "out").exists()


def test_dd_does_not_overwrite_its_own_input(src, tmp_path):
    before = src.read_bytes()
    p = _bb(tmp_path, f"if={src}", f"of={src}")
    assert p.returncode == 1 and "lock" in p.stderr
    assert src.read_bytes() == before
