"""qcow2 shrinking (``img resize --shrink``) against qemu-img 7.2 on identical images:
same messages and status, the same bytes where qemu-img's layout is deterministic,
otherwise the same ``qemu-img map`` and a clean ``qemu-img check``; data below the
new end is kept, clusters past it are freed and the file is cut."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

IMAGES = ("s.qcow2", "big.qcow2", "snap.qcow2", "v2.qcow2", "small.qcow2", "x.qcow2",
          "bm.qcow2")
# qemu-img lays these out differently (snapshot timestamps, its L1/L2 growth for
# extended L2, bitmap placement): compare their maps, not their bytes
LAYOUT_MAY_DIFFER = ("snap.qcow2", "v2.qcow2", "x.qcow2", "bm.qcow2")


def _build(d: Path, qemu_img: str, qemu_io: str) -> None:
    d.mkdir()
    def img(*a):
        subprocess.run([qemu_img, *a], check=True, capture_output=True, cwd=d)
    def io(name, *cmds):
        subprocess.run([qemu_io, *sum((["-c", c] for c in cmds), []), name], check=True,
                       capture_output=True, cwd=d)
    img("create", "-q", "-f", "qcow2", "s.qcow2", "1G")
    io("s.qcow2", "write -P 1 0 1M", "write -P 2 700M 1M", "write -P 3 900M 64k",
       "write -c -P 4 100M 64k")
    img("create", "-q", "-f", "qcow2", "big.qcow2", "100G")
    io("big.qcow2", "write 99G 64k", "write 1G 64k")
    img("create", "-q", "-f", "qcow2", "snap.qcow2", "1G")
    io("snap.qcow2", "write -P 5 0 1M", "write -P 6 700M 1M")
    img("snapshot", "-c", "a", "snap.qcow2")
    io("snap.qcow2", "write -P 7 800M 64k")
    img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1G")
    io("v2.qcow2", "write 500M 64k")
    img("snapshot", "-c", "a", "v2.qcow2")
    img("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=1",
        "small.qcow2", "1G")
    io("small.qcow2", "write 0 64M", "write 900M 64k")
    img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "x.qcow2", "1G")
    io("x.qcow2", "write -P 8 0 4k", "write -P 9 600M 8k")
    img("create", "-q", "-f", "qcow2", "bm.qcow2", "1G")
    img("bitmap", "--add", "bm.qcow2", "b0")


def _map(d: Path, qemu_img: str, name: str) -> str:
    return subprocess.run([qemu_img, "map", "--output=json", name], cwd=d,
                          capture_output=True, text=True).stdout


CASES = [
    "--shrink s.qcow2 800M", "--shrink s.qcow2 100M", "--shrink s.qcow2 1000k",
    "--shrink s.qcow2 -- -100M", "--shrink big.qcow2 1G", "--shrink big.qcow2 512M",
    "--shrink snap.qcow2 100M", "--shrink snap.qcow2 750M", "snap.qcow2 2G",
    "--shrink small.qcow2 10M", "--shrink x.qcow2 100M", "--shrink bm.qcow2 100M",
    # refused
    "s.qcow2 800M", "--shrink s.qcow2 0", "--shrink s.qcow2 100000",
    "--shrink v2.qcow2 100M", "v2.qcow2 2G",
]


@pytest.mark.parametrize("args", CASES)
def test_resize_shrink_matches_qemu_img(qemu_img, qemu_io, tmp_path, args):
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    _build(q, qemu_img, qemu_io)
    _build(b, qemu_img, qemu_io)
    pq = subprocess.run([qemu_img, "resize", *argv], cwd=q, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pb = subprocess.run([sys.executable, "-m", "blockbed", "img", "resize", *argv], cwd=b,
                        capture_output=True, text=True, env=env)
    assert (pb.returncode, pb.stdout, pb.stderr.replace("blockbed img:", "qemu-img:")) == \
        (pq.returncode, pq.stdout, pq.stderr)
    for name in IMAGES:
        if name in LAYOUT_MAY_DIFFER:
            assert _map(b, qemu_img, name) == _map(q, qemu_img, name) or \
                _strip(_map(b, qemu_img, name)) == _strip(_map(q, qemu_img, name)), name
            assert subprocess.run([qemu_img, "check", "-q", name], cwd=b).returncode == 0
            assert subprocess.run([qemu_img, "compare", "-q", str(q / name), str(b / name)]
                                  ).returncode == 0, name
        else:
            assert (b / name).read_bytes() == (q / name).read_bytes(), name


def _strip(m: str) -> str:
    import re
    return re.sub(r', "offset": \d+', "", m)


def _allocated(qemu_img: str, path: Path) -> int:
    import json
    out = subprocess.run([qemu_img, "check", "--output=json", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)["allocated-clusters"]


def test_shrink_keeps_data_below_the_new_end(qemu_img, qemu_io, tmp_path):
    _build(tmp_path / "d", qemu_img, qemu_io)
    d = tmp_path / "d"
    before = _allocated(qemu_img, d / "s.qcow2")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "blockbed", "img", "resize", "--shrink", "s.qcow2",
                    "750M"], cwd=d, check=True, env=env, capture_output=True)
    r = subprocess.run([qemu_io, "-c", "read -P 1 0 1M", "-c", "read -P 2 700M 1M",
                        "-c", "read -P 4 100M 64k", "s.qcow2"], cwd=d, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "Pattern verification failed" not in r.stdout
    # the cut-off cluster at 900M is freed, nothing leaks
    assert _allocated(qemu_img, d / "s.qcow2") == before - 1
