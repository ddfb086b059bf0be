"""``blockbed img rebase`` against ``qemu-img rebase`` 7.2: run both on identical
fresh image sets and compare stdout/stderr/status, then the resulting images: the
same ``qemu-img info`` (backing file and format), the same ``qemu-img map`` (what
was copied in, down to the host offsets) and a clean ``qemu-img check``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _build(d: Path, qemu_img: str, qemu_io: str) -> None:
    d.mkdir()
    def run(*a):
        subprocess.run(a, check=True, capture_output=True, cwd=d)
    run(qemu_img, "create", "-q", "-f", "qcow2", "base.qcow2", "64M")
    run(qemu_io, "-c", "write -P 1 0 1M", "-c", "write -P 2 10M 64k", "base.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", "base2.qcow2", "64M")
    run(qemu_io, "-c", "write -P 1 0 512k", "-c", "write -P 3 20M 64k",
        "-c", "write -P 4 40M 3k", "base2.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2")
    run(qemu_io, "-c", "write -P 9 30M 4k", "-c", "write -z 10M 4k", "ov.qcow2")
    run(qemu_img, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
        "short.qcow2", "128M")
    run(qemu_io, "-c", "write -P 7 100M 64k", "short.qcow2")


def _norm(text: str) -> str:
    return text.replace("blockbed img:", "qemu-img:").replace("blockbed img --help",
                                                              "qemu-img --help")


def _state(d: Path, qemu_img: str, name: str) -> tuple:
    info = json.loads(subprocess.run([qemu_img, "info", "--output=json", name], cwd=d,
                                     capture_output=True, text=True, check=True).stdout)
    keep = {k: info.get(k) for k in ("backing-filename", "backing-filename-format",
                                     "virtual-size")}
    m = subprocess.run([qemu_img, "map", "--output=json", name], cwd=d, capture_output=True,
                       text=True)
    return keep, m.stdout, m.returncode


CASES = [
    "-b base2.qcow2 -F qcow2 ov.qcow2",          # copy what differs, point at base2
    "-b '' ov.qcow2",                            # remove the backing file: copy it all in
    "-b base2.qcow2 -F qcow2 short.qcow2",       # image larger than both backing files
    "-b ov.qcow2 -F qcow2 short.qcow2",          # onto a sibling overlay (a deeper chain)
    "-b base.qcow2 -F qcow2 short.qcow2",        # same backing: nothing to copy
    "-b base2.qcow2 -F raw ov.qcow2",            # the new backing read as raw bytes
    "-p -b base2.qcow2 -F qcow2 short.qcow2",    # progress lines
    "-p -u -b base2.qcow2 -F qcow2 ov.qcow2",
    "-q -p -b base2.qcow2 -F qcow2 ov.qcow2",
    "-u -b nonexist -F qcow2 ov.qcow2",          # unsafe: header only
    "-u ov.qcow2",                               # unsafe without -b: no backing file
    "-T none -t writethrough -b base2.qcow2 -F qcow2 short.qcow2",
    # refused, some after copying (qemu-img 7.2 checks -F only when writing the header)
    "-b base2.qcow2 ov.qcow2", "ov.qcow2", "-b nonexist -F qcow2 ov.qcow2",
    "-t bogus -b base2.qcow2 -F qcow2 ov.qcow2", "-b base2.qcow2 -F qcow2 ov.qcow2 x",
    "-f raw -b base2.qcow2 -F qcow2 ov.qcow2", "-u -f raw -b base2.qcow2 -F qcow2 ov.qcow2",
]


@pytest.mark.parametrize("args", CASES)
def test_rebase_matches_qemu_img(qemu_img, qemu_io, tmp_path, args):
    import shlex
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    _build(q, qemu_img, qemu_io)
    _build(b, qemu_img, qemu_io)
    pq = subprocess.run([qemu_img, "rebase", *argv], cwd=q, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pb = subprocess.run([sys.executable, "-m", "blockbed", "img", "rebase", *argv], cwd=b,
                        capture_output=True, text=True, env=env)
    assert (pb.returncode, pb.stdout, _norm(pb.stderr)) == (pq.returncode, pq.stdout, pq.stderr)
    for name in ("ov.qcow2", "short.qcow2"):
        assert _state(b, qemu_img, name) == _state(q, qemu_img, name), name
        if "-u" not in argv:
            assert subprocess.run([qemu_img, "check", "-q", name], cwd=b).returncode == 0
        cmp = subprocess.run([qemu_img, "compare", "-q", str(q / name), str(b / name)],
                             cwd=b)
        assert cmp.returncode in (0, 2 if "-u" in argv else 0), name


def test_safe_rebase_keeps_the_guest_view(qemu_img, qemu_io, tmp_path):
    """The point of safe mode: the image reads the same before and after."""
    _build(tmp_path / "d", qemu_img, qemu_io)
    d = tmp_path / "d"
    subprocess.run([qemu_img, "convert", "-O", "raw", "short.qcow2", "before.raw"], cwd=d,
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "blockbed", "img", "rebase", "-b", "base2.qcow2",
                    "-F", "qcow2", "short.qcow2"], cwd=d, check=True, env=env)
    r = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "qcow2", "before.raw",
                        "short.qcow2"], cwd=d, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
