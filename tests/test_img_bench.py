"""``blockbed img bench`` against ``qemu-img bench`` 7.2: the same lines (timings
masked), messages and status; writes land where qemu-img's land (offsets stepping
and wrapping as in its bench_cb), checked by comparing the images afterwards."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _mask(text: str) -> str:
    return re.sub(r"in \d+\.\d{3} seconds", "in X seconds", text)


def _bb(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "blockbed", "img", "bench", *argv], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120)


CASES = [
    "-c 1000 bb.qcow2", "-c 0 bb.qcow2", "-c 1000 -S 1M bb.qcow2", "-s 0 -c 1 bb.qcow2",
    "-c 1 -s 1000 bb.qcow2", "-i threads -c 10 bb.qcow2", "-q -c 10 bb.qcow2",
    "-f raw -c 1 bb.qcow2", "-n -t none -c 10 bb.qcow2",
    "-w -c 100 -s 64k -d 4 -o 1M -S 128k --pattern=0x5a --flush-interval=10 -t none bb.qcow2",
    "-w --flush-interval=64 --no-drain -c 200 bb.qcow2",
    # refused or failing
    "-c 10 -s 200M bb.qcow2", "-c 10 -o 100M bb.qcow2", "-c 10 -o 99M -s 2M bb.qcow2",
    "-c x bb.qcow2", "-d -1 bb.qcow2", "--flush-interval=5 -c 10 bb.qcow2",
    "-w --flush-interval=5 -c 20 bb.qcow2", "-i foo bb.qcow2", "-w --pattern=300 -c 1 bb.qcow2",
    "-n -c 10 bb.qcow2", "-i native -c 10 bb.qcow2", "bb.qcow2 x", "", "-c 10 -w -U bb.qcow2",
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: a or "(none)")
def test_bench_matches_qemu_img(qemu_img, tmp_path, args):
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    for d in (q, b):
        d.mkdir()
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "bb.qcow2", "100M"], cwd=d,
                       check=True)
    pq = subprocess.run([qemu_img, "bench", *argv], cwd=q, capture_output=True, text=True,
                        timeout=120)
    pb = _bb(b, argv)
    assert (pb.returncode, _mask(pb.stdout), pb.stderr.replace("blockbed img", "qemu-img")) == \
        (pq.returncode, _mask(pq.stdout), pq.stderr)
    if "-w" in argv:
        cmp = subprocess.run([qemu_img, "compare", str(q / "bb.qcow2"), str(b / "bb.qcow2")],
                             capture_output=True, text=True)
        assert cmp.returncode == 0, cmp.stdout


def test_bench_writes_wrap_like_qemu_img(qemu_img, tmp_path):
    """Offsets step by -S and wrap modulo (size - buffer size)."""
    argv = ["-w", "-c", "37", "-s", "64k", "-S", "320k", "--pattern=7", "bb.qcow2"]
    q, b = tmp_path / "q", tmp_path / "b"
    for d in (q, b):
        d.mkdir()
        subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "bb.qcow2", "1M"], cwd=d,
                       check=True)
    subprocess.run([qemu_img, "bench", *argv], cwd=q, check=True, capture_output=True)
    assert _bb(b, argv).returncode == 0
    raw = {}
    for d in (q, b):
        subprocess.run([qemu_img, "convert", "-O", "raw", "bb.qcow2", "out.raw"], cwd=d,
                       check=True)
        raw[d] = (d / "out.raw").read_bytes()
    assert raw[b] == raw[q] and raw[q].count(7) > 0
