"""Metadata pointing 1 TiB past the end of the file must cost neither a 1 TiB file nor
hundreds of MB of memory (issue #12: "a write through an L2 pointer at 1 TiB makes
the process grow to 300 MB; qemu-io: 8 MB").

The cause was two-fold: with extended L2 entries an in-place write through an L2
entry far past the end of the file wrote there, growing the (sparse) file to
1 TiB, and ``check`` then kept a Python list entry per cluster of that file (16M
clusters: ~330 MB).  The write is now refused as without extended L2 entries,
and ``check`` keeps its counts in arrays of the refcount width (as QEMU: 2 bytes
a cluster with 16-bit refcounts).

Peak memory is measured in a wrapper process that runs the command as its child
and reports ``getrusage(RUSAGE_CHILDREN)``, so other tests' children don't count.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIB = 1 << 40
COPIED = 1 << 63

_WRAPPER = """
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr,
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def _measured(*argv: str) -> dict:
    """Run ``blockbed ARGV`` in a fresh child; its peak RSS in KiB and its output."""
    cmd = [sys.executable, "-c", _WRAPPER, sys.executable, "-m", "blockbed", *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(p.stdout)


def _image(qemu_img: str, qemu_io: str, path: Path, *opts: str) -> int:
    """A 4 MiB image with guest cluster 0 written; returns the offset of its L2 entry."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", *opts, str(path), "4M"],
                   check=True)
    subprocess.run([qemu_io, "-c", "write -P 0x11 0 64k", str(path)], check=True,
                   capture_output=True)
    b = path.read_bytes()
    l1 = struct.unpack_from(">Q", b, 40)[0]
    return struct.unpack_from(">Q", b, l1)[0] & 0x00FFFFFFFFFFFE00


def _poke(path: Path, off: int, value: int) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(">Q", value))


@pytest.fixture
def baseline_kb(qemu_img, tmp_path) -> int:
    img = tmp_path / "healthy.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(img), "4M"], check=True)
    return _measured("img", "info", str(img))["maxrss_kb"]


@pytest.mark.parametrize("flag", [COPIED, 0], ids=["copied", "shared"])
@pytest.mark.parametrize("opts", [(), ("-o", "extended_l2=on")], ids=["std", "extl2"])
@pytest.mark.parametrize("length", ["4k", "64k"])
def test_write_through_an_l2_entry_at_1tib_is_refused(qemu_img, qemu_io, tmp_path,
                                                      baseline_kb, opts, length, flag):
    """In place (COPIED) or copy-on-write (shared: the old cluster would be freed
    after the copy, which fails, leaving the new cluster leaked): refused first."""
    img = tmp_path / "far.qcow2"
    l2 = _image(qemu_img, qemu_io, img, *opts)
    _poke(img, l2, flag | TIB)
    size = img.stat().st_size
    r = _measured("io", "-c", f"write -P 0x22 0 {length}", str(img))
    assert "beyond the end of the image file" in r["err"], r
    assert img.stat().st_size == size, "the write grew the file to the damaged entry"
    assert r["maxrss_kb"] - baseline_kb < 16 << 10, r["maxrss_kb"]


def test_check_of_a_1tib_sparse_image_stays_small(qemu_img, qemu_io, tmp_path, baseline_kb):
    """A file grown to 1 TiB (by QEMU, or by the bug above): 16M clusters to count."""
    img = tmp_path / "sparse.qcow2"
    l2 = _image(qemu_img, qemu_io, img)
    _poke(img, l2, COPIED | TIB)
    os.truncate(img, TIB + 65536)
    r = _measured("img", "check", "--output=json", str(img))
    q = subprocess.run([qemu_img, "check", "--output=json", str(img)], capture_output=True,
                       text=True)
    assert r["rc"] == q.returncode == 2
    assert json.loads(r["out"])["corruptions"] == json.loads(q.stdout)["corruptions"]
    # was ~330 MB more than the baseline; the arrays need 2 x 32 MiB
    assert r["maxrss_kb"] - baseline_kb < 100 << 10, r["maxrss_kb"]
