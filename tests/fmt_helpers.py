"""Helpers of the foreign-format reader tests (tests/test_fmt_*.py): a raw source with a
known pattern, images made from it by qemu-img, and the differential checks against
qemu-img (compare, convert -O raw byte-equal, info fields, map)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from blockbed.cli import main as blockbed_main

MiB = 1 << 20
# (offset, length): data runs of the pattern; everything else is a hole.  An odd total
# size (not a multiple of any grain or block) and runs crossing grain boundaries.
PATTERN_RUNS = [(0, 4096), (65536 + 512, 70000), (3 * MiB, MiB), (6 * MiB - 700, 1400)]
PATTERN_SIZE = 10 * MiB + 3 * 512


def make_raw(path: Path, size: int = PATTERN_SIZE, runs=PATTERN_RUNS) -> bytes:
    """Write the pattern (data runs, holes between) to ``path``; return its bytes."""
    b = bytearray(size)
    for n, (off, ln) in enumerate(runs):
        b[off:off + ln] = bytes(((n * 37 + i * 7) & 0xFF) | 1 for i in range(ln))
    b[size - 1000:] = b"\xa5" * 1000                    # data in the last partial grain
    path.write_bytes(b)
    return bytes(b)


def qemu(qemu_img: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([qemu_img, *argv], capture_output=True, text=True, check=True)


def bb(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``blockbed img ARGV`` in-process: (rc, stdout, stderr)."""
    capsys.readouterr()
    rc = blockbed_main(["img", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def info_json(qemu_img: str, img: Path, fmt: list[str] = ()) -> dict:
    return json.loads(qemu(qemu_img, "info", *fmt, "--output=json", str(img)).stdout)


def check_against_qemu(capsys, qemu_img: str, tmp_path: Path, img: Path, raw: Path | None,
                       fmt: list[str] = ()) -> None:
    """blockbed reads ``img`` as qemu-img does: info fields, compare, convert, map."""
    rc, out, err = bb(capsys, "info", *fmt, "--output=json", str(img))
    assert rc == 0, err
    mine, ref = json.loads(out), info_json(qemu_img, img, fmt)
    assert (mine["virtual-size"], mine["format"]) == (ref["virtual-size"], ref["format"])
    if raw is not None:
        rc, out, err = bb(capsys, "compare", *fmt, "-F", "raw", str(img), str(raw))
        # a size mismatch (VHD sizes round up to the CHS geometry) is only a warning
        assert (rc, out.strip().splitlines()[-1]) == (0, "Images are identical."), err
    ours, theirs = tmp_path / "bb.raw", tmp_path / "qemu.raw"
    rc, _, err = bb(capsys, "convert", *fmt, "-O", "raw", str(img), str(ours))
    assert rc == 0, err
    qemu(qemu_img, "convert", *fmt, "-O", "raw", str(img), str(theirs))
    assert ours.read_bytes() == theirs.read_bytes()
    rc, out, err = bb(capsys, "map", *fmt, "--output=json", str(img))
    assert rc == 0, err
    assert out == qemu(qemu_img, "map", *fmt, "--output=json", str(img)).stdout
    # to qcow2 and back: the same guest bytes
    q = tmp_path / "bb.qcow2"
    rc, _, err = bb(capsys, "convert", *fmt, "-O", "qcow2", str(img), str(q))
    assert rc == 0, err
    qemu(qemu_img, "compare", "-f", "qcow2", "-F", "raw", str(q), str(theirs))


def expect_clear_error(capsys, img: Path, fmt: list[str], *words: str,
                       at_open: bool = True) -> str:
    """``convert`` (and ``info`` if the fault is in what open reads, ``at_open``) of a
    malformed image fails with one line naming the fault."""
    runs = [["convert", *fmt, "-O", "raw", str(img), str(img.with_suffix(".out"))]]
    if at_open:
        runs.insert(0, ["info", *fmt, str(img)])
    for argv in runs:
        rc, out, err = bb(capsys, *argv)
        assert rc == 1, (argv, out, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        for w in words:
            assert w in err, (w, err)
    return err
