"""``blockbed img amend`` against ``qemu-img amend`` 7.2 on identical fresh images:
same output and status; afterwards the same bytes where qemu-img's result is
deterministic (compat up/down, lazy refcounts, size), otherwise — refcount width
changes place the new refcount structures differently — the same ``qemu-img info``,
``map`` and contents, and a clean ``check``."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

IMAGES = ("a", "ov", "v2", "r8", "x", "z", "z2", "bm", "df", "l", "snap")


def _build(d: Path, qemu_img: str, qemu_io: str) -> None:
    d.mkdir()
    def img(*a):
        subprocess.run([qemu_img, *a], check=True, capture_output=True, cwd=d)
    def io(name, *cmds):
        subprocess.run([qemu_io, *sum((["-c", c] for c in cmds), []), name], check=True,
                       capture_output=True, cwd=d)
    img("create", "-q", "-f", "qcow2", "a.qcow2", "10M")
    io("a.qcow2", "write -P 1 0 1M", "write -z 2M 1M", "write -z -u 4M 64k",
       "write -c -P 2 6M 64k")
    img("create", "-q", "-f", "qcow2", "base.qcow2", "10M")
    io("base.qcow2", "write -P 3 0 10M")
    img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "ov.qcow2")
    io("ov.qcow2", "write -z 1M 128k", "write -P 4 3M 64k")
    img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "10M")
    io("v2.qcow2", "write -P 5 0 64k")
    img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", "r8.qcow2", "10M")
    img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "x.qcow2", "10M")
    img("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "z.qcow2", "10M")
    img("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "z2.qcow2", "10M")
    io("z2.qcow2", "write -c 0 64k")
    img("create", "-q", "-f", "qcow2", "bm.qcow2", "10M")
    img("bitmap", "--add", "bm.qcow2", "b0")
    img("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "df.qcow2", "10M")
    img("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "l.qcow2", "10M")
    io("l.qcow2", "write 0 64k")
    subprocess.run(["cp", "a.qcow2", "snap.qcow2"], cwd=d, check=True)
    img("snapshot", "-c", "s1", "snap.qcow2")
    io("snap.qcow2", "write -z 7M 64k")


def _info(d: Path, qemu_img: str, name: str) -> dict:
    info = json.loads(subprocess.run([qemu_img, "info", "--output=json", name], cwd=d,
                                     capture_output=True, text=True, check=True).stdout)
    for k in ("filename", "actual-size", "dirty-flag"):
        info.pop(k, None)
    for s in info.get("snapshots", []):
        for k in ("date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec"):
            s.pop(k, None)
    return info


def _map(d: Path, qemu_img: str, name: str) -> str:
    out = subprocess.run([qemu_img, "map", "--output=json", name], cwd=d, capture_output=True,
                         text=True).stdout
    return re.sub(r', "offset": \d+', "", out)


CASES = [
    "-o lazy_refcounts=on a.qcow2", "-o compat=0.10 a.qcow2", "-o compat=1.1 v2.qcow2",
    "-o compat=0.10 ov.qcow2", "-o compat=0.10 snap.qcow2", "-o compat=0.10 z.qcow2",
    "-o compat=0.10 l.qcow2", "-o lazy_refcounts=off l.qcow2",
    "-o refcount_bits=1 a.qcow2", "-o refcount_bits=64 a.qcow2", "-o refcount_bits=16 r8.qcow2",
    "-o refcount_bits=1 snap.qcow2", "-o data_file=e.raw df.qcow2",
    "-o compat=0.10 -o compat=1.1 a.qcow2", "-o compat=v2 a.qcow2", "-q -o size=20M a.qcow2",
    "--force -o size=5M a.qcow2", "-o size=512k a.qcow2",
    "-o backing_file=base.qcow2,backing_fmt=qcow2 ov.qcow2", "-o help a.qcow2",
    "-o size=20M,refcount_bits=2,lazy_refcounts=on snap.qcow2",
    # refused
    "-o compat=0.10 r8.qcow2", "-o compat=0.10 x.qcow2", "-o compat=0.10 z2.qcow2",
    "-o compat=0.10 df.qcow2", "-o data_file=foo a.qcow2", "-o data_file_raw=on a.qcow2",
    "-o data_file_raw=on df.qcow2", "-o compat=0.9 a.qcow2", "-o refcount_bits=3 a.qcow2",
    "-o size=abc a.qcow2", "-o lazy_refcounts=maybe a.qcow2", "-o encrypt.new-secret=x a.qcow2",
    "-o backing_file= a.qcow2", "-o backing_file=x.qcow2 ov.qcow2", "a.qcow2",
    "-o foo=1 a.qcow2", "-o cluster_size=4k a.qcow2", "-o extended_l2=on a.qcow2",
    "-o preallocation=full a.qcow2", "-f raw -o size=5M a.qcow2",
    "-o lazy_refcounts=on,compat=0.10 a.qcow2", "-o refcount_bits=64 -o compat=0.10 a.qcow2",
]


@pytest.mark.parametrize("args", CASES)
def test_amend_matches_qemu_img(qemu_img, qemu_io, tmp_path, args):
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    _build(q, qemu_img, qemu_io)
    _build(b, qemu_img, qemu_io)
    pq = subprocess.run([qemu_img, "amend", *argv], cwd=q, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pb = subprocess.run([sys.executable, "-m", "blockbed", "img", "amend", *argv], cwd=b,
                        capture_output=True, text=True, env=env)
    norm = pb.stderr.replace("blockbed img:", "qemu-img:").replace("blockbed img --help",
                                                                  "qemu-img --help")
    assert (pb.returncode, pb.stdout, norm) == (pq.returncode, pq.stdout, pq.stderr)
    for stem in IMAGES:
        name = f"{stem}.qcow2"
        if (b / name).read_bytes() == (q / name).read_bytes():
            continue
        assert "refcount_bits" in args or stem == "snap", f"{name}: bytes differ"
        assert _info(b, qemu_img, name) == _info(q, qemu_img, name), name
        assert _map(b, qemu_img, name) == _map(q, qemu_img, name), name
        assert subprocess.run([qemu_img, "check", "-q", name], cwd=b).returncode == 0, name
        assert subprocess.run([qemu_img, "compare", "-q", str(q / name), str(b / name)]
                              ).returncode == 0, name


def test_downgrade_refuses_persistent_bitmaps(qemu_img, qemu_io, tmp_path):
    """qemu-img 7.2 downgrades and leaves the bitmaps in a v2 header, where they are
    inconsistent and leak clusters; blockbed refuses and changes nothing."""
    d = tmp_path / "d"
    _build(d, qemu_img, qemu_io)
    before = _info(d, qemu_img, "bm.qcow2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "blockbed", "img", "amend", "-o", "compat=0.10",
                        "bm.qcow2"], cwd=d, capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "persistent bitmaps" in p.stderr
    # still v3 with its bitmap (opening it for writing re-stores the bitmap, as in QEMU)
    assert _info(d, qemu_img, "bm.qcow2") == before
    assert subprocess.run([qemu_img, "check", "-q", "bm.qcow2"], cwd=d).returncode == 0


def test_refcount_width_too_small_for_a_refcount(qemu_img, qemu_io, tmp_path):
    """A cluster shared by a snapshot has refcount 2: one bit cannot hold it."""
    d = tmp_path / "d"
    _build(d, qemu_img, qemu_io)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "blockbed", "img", "amend", "-o", "refcount_bits=1",
           "snap.qcow2"]
    p = subprocess.run(cmd, cwd=d, capture_output=True, text=True, env=env)
    pq = subprocess.run([qemu_img, "amend", "-o", "refcount_bits=1", "snap.qcow2"], cwd=d,
                        capture_output=True, text=True)
    assert p.returncode == pq.returncode
    if p.returncode:
        assert "Cannot decrease refcount entry width to 1 bits" in p.stderr
        assert "Cannot decrease refcount entry width to 1 bits" in pq.stderr
