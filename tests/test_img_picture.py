"""``blockbed img map --picture``: the qcow2 layout of a qemu-made image, drawn."""

from __future__ import annotations

import subprocess
import sys

import pytest

from blockbed.block.qcow2.layout import read_layout
from conftest import REPO, run_tool


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockbed", *argv], capture_output=True, text=True, cwd=REPO)


@pytest.fixture
def image(tmp_path, qemu_img, qemu_io):
    """1 MiB + 64 KiB written, a snapshot, then the first cluster rewritten (COW of L2 and data)."""
    img = str(tmp_path / "i.qcow2")
    run_tool(qemu_img, "create", "-f", "qcow2", img, "64M")
    run_tool(qemu_io, "-c", "write 0 1M", "-c", "write 10M 64k", img)
    run_tool(qemu_img, "snapshot", "-c", "s1", img)
    run_tool(qemu_io, "-c", "write 0 64k", img)
    return img


def test_layout_counts(image):
    counts = read_layout(image).counts()
    assert counts == {"header": 1, "L1 table": 1, "L2 table": 2, "refcount table": 1, "refcount block": 1,
                      "snapshot table": 1, "snapshot L1": 1, "data": 18, "compressed data": 0, "unused": 0}


@pytest.mark.parametrize("ext", ["svg", "png"])
def test_picture(image, tmp_path, ext):
    pytest.importorskip("matplotlib", reason="the optional extra blockbed[pictures] is not installed")
    out = tmp_path / f"m.{ext}"
    p = _cli("img", "map", "--picture", str(out), image)
    assert p.returncode == 0, p.stderr
    assert "data 18" in p.stdout
    data = out.read_bytes()
    assert len(data) > 5000
    if ext == "svg":
        for label in ("header (1)", "L1 table (1)", "L2 table (2)", "refcount block (1)", "snapshot L1 (1)",
                      "data (18)"):
            assert label in data.decode(), label
    else:
        assert data.startswith(b"\x89PNG")


def test_picture_errors(tmp_path):
    raw = tmp_path / "r.raw"
    raw.write_bytes(bytes(65536))
    p = _cli("img", "map", "--picture", str(tmp_path / "x.svg"), str(raw))
    assert p.returncode == 1 and "not in qcow2 format" in p.stderr and "Traceback" not in p.stderr
    p = _cli("img", "map", "--picture", str(tmp_path / "x.gif"), str(raw))
    assert p.returncode == 1 and "must be a .svg or .png" in p.stderr
