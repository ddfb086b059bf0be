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
    # read's pattern range (-s start, -l length, only with -P) and the ignored -p
    ["write -P 0x11 0 512", "write -P 0x22 512 512", "read -P 0x22 -s 512 -l 512 0 1k",
     "read -P 0x22 -s 512 0 1k", "read -P 0x11 -l 512 0 1k", "read -P 0x11 -l 600 0 1k",
     "read -P 0x22 -s 512 -l 600 0 1k", "read -l 512 0 1k", "read -s 512 0 1k",
     "read -P 0x22 -s 256 100 1k", "read -P 0x22 -s -1 0 1k", "read -P 0x22 -l 0 0 1k",
     "read -P 0x11 -s 1k -l 1 0 1k", "read -p 0 512", "write -p -P 3 0 512", "read -P 3 0 512"],
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
    # close / open / reopen: no file open, open's options and errors, read-only reopen
    ["close", "read 0 512", "info", "length", "close", "open -o driver={fmt} img",
     "write -P 5 0 64k", "open img", "reopen -r", "write 0 512", "discard 0 512",
     "truncate 8M", "read -P 5 0 512", "reopen -w", "write -P 6 64k 4k", "reopen -r -w",
     "reopen x", "reopen -x", "reopen -c none", "reopen -c bogus", "reopen -o driver=bogus",
     "reopen -o driver={fmt}", "reopen -o file.filename=other", "c", "o -r -o driver={fmt} img",
     "read -P 6 64k 4k", "write 0 512", "close", "open -U -o driver={fmt} img",
     "open -k -o driver={fmt} img", "open -C -r -o driver={fmt} img", "open -t bogus img",
     "open -d bogus img", "open -i bogus img", "open", "open a b", "open -f raw img",
     "open -o driver={fmt},file.filename=img img", "open -o driver={fmt}", "open -r",
     "open missing", "open -o driver=bogus img", "open -d unmap -n -i native -o driver={fmt} img",
     "open -r img", "close x", "discard 0 64k", "map", "info", "close",
     "open -d ignore -k -n -o driver={fmt} img", "reopen -c writethrough", "discard 64k 64k",
     "map", "close", "open img2", "write -P 7 0 512", "reopen -r", "reopen -w", "info",
     "close", "open -r img2", "read -P 7 0 512"],
    # write -n (no fallback), write -b / read -b (the VM state: qcow2's lies past the
    # guest-visible end; raw has none), write -s repeating its file
    ["write -n 0 4k", "write -n -u 0 4k", "write -n -z 0 64k", "write -n -z 1000 4k",
     "write -P 1 128k 4k", "write -n -z 132k 4k", "write -n -z 250k 70k", "write -n -z 260k 200k",
     "write -n -z -f 0 512", "write -n -z -P 1 0 512", "map", "read -P 0 250k 6k",
     "write -b -P 7 512 1k", "read -b -P 7 512 1k", "read -b -P 0 0 512", "read -P 0 512 1k",
     "write -b 100 512", "read -b 0 100", "read -b x 512", "write -b -z 0 1k", "write -b -f 0 1k",
     "write -b -u 0 1k", "write -b -c -C 0 64k", "write -b -s src.bin 4k 8k", "read -b -v 4k 32",
     "read -b -q 0 1k", "read -b -C 0 1k", "write -b -P 9 1G 512", "read -b -P 9 1G 512",
     "read -b 600M 512", "write -b 9223372036854775296 512", "read -b 9223372036854775296 512",
     "write -b 0", "write -b 0 0", "write -c -z 512k 64k", "write -s src3 0 512", "read -v 0 16",
     "write -s nonexist 0 512", "read -q 0", "discard 0 1 2", "flush x", "map", "info",
     "truncate 8M", "info", "read -b -P 9 1G 512"],
    # open -s (a temporary overlay: the image is never written) and -C (copy-on-read)
    ["write -P 1 0 64k", "close", "open -s -o driver={fmt} img", "write -P 2 64k 64k",
     "read -P 2 64k 64k", "read -P 1 0 64k", "info", "map", "close", "open -s -r img2",
     "write 0 512", "close", "open -o driver={fmt} img", "read -P 0 64k 64k", "map", "close",
     "open -C -o driver={fmt} img", "read 1M 64k", "readv 2M 512 512", "aio_read 3M 512",
     "aio_flush", "read 4092k 4k", "map"],
]


def _dirs(tmp_path: Path, fmt: str | None) -> tuple[Path, Path]:
    """One directory per tool (q: qemu-io, b: blockbed io) holding the same files under
    the same names, so that messages naming them are equal: ``img`` (FMT, 4 MiB; none
    if FMT is None), ``img2`` (raw, 4 MiB), ``src.bin`` (4 KiB), ``src3`` (3 bytes)."""
    dirs = tmp_path / "q", tmp_path / "b"
    for d in dirs:
        d.mkdir()
        if fmt:
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(d / "img"), "4M"],
                           check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(d / "img2"), "4M"],
                       check=True)
        (d / "src.bin").write_bytes(bytes(range(256)) * 16)
        (d / "src3").write_bytes(b"abc")
    return dirs


def _both(dirs: tuple[Path, Path], args: list[str]) -> tuple[tuple, tuple]:
    """(qemu-io's, blockbed io's) (stdout, stderr, status), each run in its directory."""
    return (_run(["qemu-io", *args], dirs[0]),
            _run([sys.executable, "-m", "blockbed", "io", *args], dirs[1]))


def _same_images(dirs: tuple[Path, Path], *names: str) -> None:
    for name in names:
        cmp = subprocess.run(["qemu-img", "compare", str(dirs[0] / name), str(dirs[1] / name)],
                             capture_output=True, text=True)
        assert cmp.returncode == 0, name + ": " + cmp.stdout + cmp.stderr


def _run(cmd: list[str], cwd: Path | None = None) -> tuple[str, str, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=cwd)
    return _COMPACT.sub(r"\1,\2,TIME", _TIMING.sub("; TIME", p.stdout)), p.stderr, p.returncode


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s[0].replace(" ", "_"))
def test_same_output_and_image(tmp_path: Path, fmt: str, script: list[str]) -> None:
    dirs = _dirs(tmp_path, fmt)
    cargs = [x for c in script for x in ("-c", c.format(src="src.bin", fmt=fmt))]
    want, got = _both(dirs, ["-f", fmt, *cargs, "img"])
    assert got == want
    _same_images(dirs, "img", "img2")


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


NO_IMAGE = ["read 0 512", "info", "close", "map", "flush", "reopen", "write 0 512", "bogus",
            "open img2", "info", "reopen -o driver=raw", "reopen -o driver=qcow2",
            "write -P 1 0 512", "write -P 0x51 0 4", "reopen -o file.filename=img2", "close",
            "open img3", "write -b -P 3 0 4k", "read -b -P 3 0 4k", "o -r img2", "c",
            "o -r img2", "read -P 1 0 512", "c", "o -s img2", "info", "c", "open -r img2",
            "reopen -w", "write -P 2 0 512"]


def test_no_image_on_the_command_line(tmp_path: Path) -> None:
    """Without an image every command but open says "no file open"; a probed raw image
    warns (read-write opens only) and keeps sector 0 from turning into another format."""
    dirs = _dirs(tmp_path, None)
    for d in dirs:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "img3"), "4M"],
                       check=True)
    want, got = _both(dirs, [x for c in NO_IMAGE for x in ("-c", c)])
    assert "no file open, try 'help open'" in want[1] and "WARNING: Image format" in want[1]
    assert got == want
    _same_images(dirs, "img2", "img3")


_VMSTATE = [("write -b -P 9 0 128k", "read -b -P 9 0 3k"), ("write -b -P 7 3k 2k",
            "read -b -P 7 3k 2k"), ("write -b -P 8 1G 4k", "read -b -P 8 1G 4k"),
            ("write -P 1 0 64k", "read -P 1 0 64k"), ("write -P 2 1M 8k", "read -P 2 1M 8k"),
            (None, "read -b -P 9 5k 123k"), (None, "read -b -P 0 2G 512")]


@pytest.mark.parametrize("opts", ["cluster_size=65536", "cluster_size=4096",
                                  "extended_l2=on"])
@pytest.mark.parametrize("writer", ["blockbed", "qemu-io"])
def test_vmstate_between_tools(tmp_path: Path, opts: str, writer: str) -> None:
    """What one tool writes to the VM state area (and to the disk) the other reads back;
    qemu-img check finds nothing wrong."""
    img = tmp_path / "v.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, str(img), "3M"],
                   check=True)
    tools = {"qemu-io": ["qemu-io"], "blockbed": [sys.executable, "-m", "blockbed", "io"]}
    reader = "qemu-io" if writer == "blockbed" else "blockbed"
    w = _run([*tools[writer], "-f", "qcow2",
              *[x for c, _ in _VMSTATE if c for x in ("-c", c)], str(img)])
    assert w[2] == 0, w
    r = _run([*tools[reader], "-f", "qcow2",
              *[x for _, c in _VMSTATE for x in ("-c", c)], str(img)])
    assert r[2] == 0 and "verification failed" not in r[0], r
    chk = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0 and "No errors" in chk.stdout, chk.stdout + chk.stderr


def test_copy_on_read_from_a_backing_file(tmp_path: Path) -> None:
    """open -C copies what a read takes from the backing file into the top image (whole
    clusters; zeroes as zero clusters): the same output and the same qemu-img map."""
    dirs = _dirs(tmp_path, None)
    for d in dirs:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "base"), "4M"],
                       check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 5 60k 8k", "-c",
                        "write -P 6 1M 64k", str(d / "base")], check=True, capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2",
                        str(d / "top")], check=True)
    script = ["open -C -o driver=qcow2 top", "read -P 5 60k 4k", "map", "read 1M 512",
              "read 3M 4k", "map", "read -P 5 64k 4k", "map"]
    want, got = _both(dirs, [x for c in script for x in ("-c", c)])
    assert got == want
    maps = [subprocess.run(["qemu-img", "map", "--output=json", str(d / "top")],
                           capture_output=True, text=True, check=True).stdout for d in dirs]
    assert maps[0] == maps[1]
    _same_images(dirs, "top", "base")


@pytest.mark.parametrize("cmds, what", [
    (["close", "open -o driver=qcow2,lazy-refcounts=on img", "open img"],
     "option 'lazy-refcounts' is not supported"),
    (["close", "open -o driver=qcow2,file.driver=nbd img", "open img"], "only 'file' is supported"),
    (["reopen -o lazy-refcounts=on"], "option 'lazy-refcounts' is not supported"),
    (["close", "open -s -o driver=qcow2 img", "reopen -r"], "opened with -s is not supported"),
    (["close", "open -C -o driver=qcow2 img", "reopen -r"], "to r/o with copy-on-read enabled"),
])
def test_what_blockbed_cannot_honour_is_refused(tmp_path: Path, cmds: list[str],
                                                what: str) -> None:
    """An open/reopen setting blockbed cannot honour fails by name (status 1), never
    silently; the session goes on with what was open."""
    dirs = _dirs(tmp_path, "qcow2")
    script = [*cmds, "write -P 3 0 512", "read -P 3 0 512"]
    out, err, rc = _run([sys.executable, "-m", "blockbed", "io", "-f", "qcow2",
                         *[x for c in script for x in ("-c", c)], "img"], dirs[1])
    assert rc == 1 and what in err and "Traceback" not in err
    assert "read 512/512 bytes at offset 0" in out, out


def test_vmstate_on_an_image_with_a_data_file_is_refused_by_name(tmp_path: Path) -> None:
    """-b on a qcow2 image whose VM state area blockbed does not implement (external
    data file, encryption) is a one-line refusal, never a traceback or a guess."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=d.raw",
                    "img", "16M"], cwd=tmp_path, check=True)
    for cmd in ("write -b 0 512", "read -b 0 512"):
        out, err, rc = _run([sys.executable, "-m", "blockbed", "io", "-c", cmd, "img"], tmp_path)
        assert rc == 1 and "Traceback" not in err
        assert "VM state" in out and "external data file" in out, (out, err)


@pytest.mark.parametrize("opts", ["-s", "-C", "-d unmap", "-d ignore", "-d off", "-d bogus",
                                  "-k", "-k -n", "-i threads", "-i native", "-i native -n",
                                  "-i bogus", "-s -r", "-C -r"])
def test_command_line_open_options(tmp_path: Path, opts: str) -> None:
    """qemu-io's own -s (temporary overlay), -C (copy-on-read), -d, -i and -k on an
    overlay over a backing file: the same output and status, and the same qemu-img map
    afterwards (the overlay untouched by -s, clusters copied up by -C, a discarded
    cluster deallocated or not by -d)."""
    dirs = _dirs(tmp_path, None)
    for d in dirs:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d / "base"), "1M"],
                       check=True)
        subprocess.run(["qemu-io", "-c", "write -P 9 0 64k", str(d / "base")], check=True,
                       capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2",
                        str(d / "top")], check=True)
    script = ["write -P 1 64k 512", "read -P 9 0 512", "discard 64k 64k"]
    want, got = _both(dirs, [*opts.split(), *[x for c in script for x in ("-c", c)], "top"])
    assert got == want
    maps = [re.sub(r'"offset": \d+', "", subprocess.run(
        ["qemu-img", "map", "--output=json", str(d / "top")], capture_output=True, text=True,
        check=True).stdout) for d in dirs]
    assert maps[0] == maps[1]
