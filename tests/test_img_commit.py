"""``blockbed img commit`` against ``qemu-img commit`` 7.2 on identical fresh chains:
the same output and status, the same contents and allocation (``qemu-img map``) of
every image afterwards, a clean ``qemu-img check``, and — where qemu-img rebuilds
the emptied overlay from scratch — the very same bytes."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

IMAGES = ("base.qcow2", "mid.qcow2", "top.qcow2", "big.qcow2", "snap.qcow2", "v2.qcow2")


def _build(d: Path, qemu_img: str, qemu_io: str) -> None:
    d.mkdir()
    def img(*a):
        subprocess.run([qemu_img, *a], check=True, capture_output=True, cwd=d)
    def io(name, *cmds):
        subprocess.run([qemu_io, *sum((["-c", c] for c in cmds), []), name], check=True,
                       capture_output=True, cwd=d)
    img("create", "-q", "-f", "qcow2", "base.qcow2", "64M")
    io("base.qcow2", "write -P 1 0 1M")
    img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid.qcow2")
    io("mid.qcow2", "write -P 2 512k 1M")
    img("create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2")
    io("top.qcow2", "write -P 3 5M 64k", "write -z 0 4k", "discard 600k 64k", "write -P 5 63M 1M")
    img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "big.qcow2", "100M")
    io("big.qcow2", "write -P 6 90M 64k")
    img("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "snap.qcow2")
    io("snap.qcow2", "write -P 6 9M 64k")
    img("snapshot", "-c", "s1", "snap.qcow2")
    io("snap.qcow2", "write -P 7 19M 64k")
    img("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2",
        "v2.qcow2")
    io("v2.qcow2", "write -P 8 3M 64k")


def _norm(text: str) -> str:
    return text.replace("blockbed img:", "qemu-img:").replace("blockbed img --help",
                                                              "qemu-img --help")


def _map(d: Path, qemu_img: str, name: str) -> list[dict]:
    """The allocation map without host offsets (placement may differ: QEMU's commit
    job runs its copies in parallel), adjacent equal extents merged."""
    out = subprocess.run([qemu_img, "map", "--output=json", name], cwd=d, capture_output=True,
                         text=True).stdout
    merged: list[dict] = []
    for e in json.loads(out):
        e.pop("offset", None)
        if merged and all(merged[-1][k] == e[k] for k in e if k not in ("start", "length")) \
                and merged[-1]["start"] + merged[-1]["length"] == e["start"]:
            merged[-1]["length"] += e["length"]
        else:
            merged.append(e)
    return merged


CASES = [
    "top.qcow2",                    # into mid, then top rebuilt empty
    "-d top.qcow2",                 # into mid, top kept
    "-b base.qcow2 top.qcow2",      # top and mid into base; nothing emptied
    "-b mid.qcow2 top.qcow2",       # -b names the backing file: no emptying either
    "big.qcow2",                    # overlay larger than its base: base grows
    "snap.qcow2",                   # snapshots: emptied by discarding
    "v2.qcow2",                     # compat 0.10: emptied by discarding
    "-r 100M -q top.qcow2",
    # refused
    "base.qcow2", "-b nonexist top.qcow2", "-b top.qcow2 top.qcow2", "-r x top.qcow2",
    "-t bogus top.qcow2", "top.qcow2 x", "",
]


@pytest.mark.parametrize("args", CASES, ids=lambda a: a or "(none)")
def test_commit_matches_qemu_img(qemu_img, qemu_io, tmp_path, args):
    argv = shlex.split(args)
    q, b = tmp_path / "q", tmp_path / "b"
    _build(q, qemu_img, qemu_io)
    _build(b, qemu_img, qemu_io)
    pq = subprocess.run([qemu_img, "commit", *argv], cwd=q, capture_output=True, text=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pb = subprocess.run([sys.executable, "-m", "blockbed", "img", "commit", *argv], cwd=b,
                        capture_output=True, text=True, env=env)
    assert (pb.returncode, pb.stdout, _norm(pb.stderr)) == (pq.returncode, pq.stdout, pq.stderr)
    for name in IMAGES:
        assert _map(b, qemu_img, name) == _map(q, qemu_img, name), name
        chk = subprocess.run([qemu_img, "check", name], cwd=b, capture_output=True, text=True)
        assert chk.returncode == 0, name + chk.stdout
        cmp = subprocess.run([qemu_img, "compare", str(q / name), str(b / name)],
                             capture_output=True, text=True)
        assert cmp.returncode == 0, name + cmp.stdout
    if args == "top.qcow2":
        # the emptied overlay is rebuilt exactly as qemu-img rebuilds it
        assert (b / "top.qcow2").read_bytes() == (q / "top.qcow2").read_bytes()


def test_commit_progress_line(qemu_img, qemu_io, tmp_path):
    _build(tmp_path / "d", qemu_img, qemu_io)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "blockbed", "img", "commit", "-p", "top.qcow2"],
                       cwd=tmp_path / "d", capture_output=True, env=env)
    assert p.returncode == 0
    assert p.stdout.startswith(b"    (0.00/100%)\r") and \
        p.stdout.endswith(b"    (100.00/100%)\r\nImage committed.\n")


def test_commit_refuses_a_base_held_by_another_writer(qemu_img, qemu_io, tmp_path):
    """The base is reopened for writing; a running guest on it keeps it locked."""
    d = tmp_path / "d"
    _build(d, qemu_img, qemu_io)
    holder = subprocess.Popen([qemu_io, "-c", "sleep 5000", str(d / "mid.qcow2")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import time
        time.sleep(0.5)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        p = subprocess.run([sys.executable, "-m", "blockbed", "img", "commit", "top.qcow2"],
                           cwd=d, capture_output=True, text=True, env=env)
        assert p.returncode == 1
        assert "lock" in p.stderr.lower() and p.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.wait()
