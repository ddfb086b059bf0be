"""`blockbed io` against qemu-io 7.2: same commands, same output (timings masked),
equal images (qemu-img compare)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HAVE = shutil.which("qemu-io") and shutil.which("qemu-img")
pytestmark = pytest.mark.skipif(
    not _HAVE and os.environ.get("BLOCKBED_REQUIRE_QEMU") != "1",
    reason="qemu-io/qemu-img not installed")
_TIMING = re.compile(r"; .* sec \(.*/sec and .* ops/sec\)")
_COMPACT = re.compile(r"^(\d+),(\d+),[\d:.]+,[\d.]+,[\d.]+$", re.M)     # -C lines

SCRIPTS = [
    ["write -P 0x5a 0 64k", "read -P 0x5a 0 64k", "read -P 0x5b 0 4k"],
    ["write -z 1M 64k", "read -P 0 1M 64k", "read -v 0 48", "flush", "length"],
    ["write -P 0x11 0 128k", "discard 0 64k", "read -P 0 0 64k", "read -P 0x11 64k 64k",
     "discard -q 64k 64k", "discard 0"],
    ["write -P 0xff 2M 4k", "read 2M 4k", "read 4M 4k", "read -q -P 0xff 2M 4k"],
    ["write -z -P 1 0 4k", "write -u 0 4k", "read 0", "read x 4k", "read 0 4x",
     "bogus", "write -q 512 512", "read -P 0 0 512"],
    # vectored and aio I/O, map/alloc, truncate, info
    ["writev -P 0x5a 0 4k 8k", "readv -P 0x5a 0 4k 8k", "readv -P 0x5b 0 512",
     "readv -v 0 16 16", "writev -C 64k 512", "aio_write -P 7 64k 4k", "aio_flush",
     "aio_read -P 7 64k 4k", "aio_flush", "map", "alloc 0 64k", "alloc 12k 64k", "alloc 1M",
     "alloc 4M", "alloc 3M 2M", "alloc 1 512", "truncate 8M", "length", "info", "readv 0"],
    # shrink and grow, FUA, compressed writes (refused over allocated clusters), -s, bad
    # options with their usage lines
    ["write -P 1 0 1M", "write -P 2 3M 64k", "truncate 2M", "map", "read -P 1 0 1M",
     "truncate 6M", "alloc 0 6M", "writev -f -P 9 4M 512 512", "writev -F 0 512",
     "truncate -m bogus 6M", "write -c 64k 64k", "write -c 1M 128k", "write -z 2M 64k",
     "write -c 2M 64k", "write -c 100k 64k", "write -s {src} 8k 4k",
     "write -s {src} -P 1 8k 4k", "write -f -P 3 0 512", "read -F 0 512",
     "discard -C 1M 64k", "read -C -P 0 1M 64k", "map", "info"],
]


def _run(cmd: list[str]) -> tuple[str, str, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    return _COMPACT.sub(r"\1,\2,TIME", _TIMING.sub("; TIME", p.stdout)), p.stderr, p.returncode


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s[0].replace(" ", "_"))
def test_same_output_and_image(tmp_path: Path, fmt: str, script: list[str]) -> None:
    a, b = tmp_path / "q.img", tmp_path / "b.img"
    for p in (a, b):
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(p), "4M"], check=True)
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 16)
    cargs = [x for c in script for x in ("-c", c.format(src=src))]
    want = _run(["qemu-io", "-f", fmt, *cargs, str(a)])
    got = _run([sys.executable, "-m", "blockbed", "io", "-f", fmt, *cargs, str(b)])
    assert got == want
    cmp = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, str(a), str(b)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_commands_from_stdin(tmp_path: Path) -> None:
    """Without -c, qemu-io reads commands from stdin (no prompt when not a tty)."""
    a, b = tmp_path / "q.img", tmp_path / "b.img"
    for p in (a, b):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "1M"], check=True)
    text = "write -P 7 0 4k\nread -P 7 0 4k\nread -P 8 0 512\nquit\nwrite 0 4k\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = []
    for cmd in (["qemu-io", "-f", "qcow2", str(a)],
                [sys.executable, "-m", "blockbed", "io", "-f", "qcow2", str(b)]):
        p = subprocess.run(cmd, input=text, capture_output=True, text=True, env=env, timeout=60)
        out.append((_TIMING.sub("; TIME", p.stdout), p.returncode))
    assert out[1] == out[0]
    assert subprocess.run(["qemu-img", "compare", str(a), str(b)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("extra", [["-t", "bogus"], []])
def test_bad_open_is_one_line(tmp_path: Path, extra: list[str]) -> None:
    """A missing image or a bad cache mode: one line on stderr, status 1, as qemu-io."""
    missing = str(tmp_path / "missing.qcow2")
    for cmd in (["qemu-io"], [sys.executable, "-m", "blockbed", "io"]):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.run([*cmd, "-f", "qcow2", *extra, "-c", "read 0 4k", missing],
                           capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 1 and p.stdout == ""
        assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr
