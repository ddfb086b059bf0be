"""The ``nbd`` protocol driver (blockbed/block/nbd.py) against qemu-nbd and our server.

``blockbed img info/map/convert`` on an NBD URI must print what qemu-img
prints for the same URI; writes through the driver must land in the image.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

from blockbed.block import registry
from blockbed.block.backend import BlockBackend
from blockbed.block.driver import BlockError
from blockbed.block.nbd import NbdAddress, parse_filename
from conftest import REPO, need_tool, run_tool
from test_nbd_server import SIZE, MiB, _make_image, serve, uri


@pytest.fixture(scope="module")
def tools() -> None:
    for t in ("qemu-nbd", "qemu-img", "qemu-io"):
        need_tool(t)


def _img(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_tool(sys.executable, "-m", "blockbed", "img", *args, check=check,
                    env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("name,addr", [
    ("nbd+unix:///?socket=/s", NbdAddress("/s", None, 10809, "")),
    ("nbd+unix:///disk?socket=/a/b", NbdAddress("/a/b", None, 10809, "disk")),
    ("nbd://127.0.0.1:1234/x", NbdAddress(None, "127.0.0.1", 1234, "x")),
    ("nbd://localhost", NbdAddress(None, "localhost", 10809, "")),
    ("nbd:unix:/s:exportname=e", NbdAddress("/s", None, 10809, "e")),
    ("nbd:127.0.0.1:99", NbdAddress(None, "127.0.0.1", 99, "")),
])
def test_parse_filename(name, addr):
    assert parse_filename(name) == addr


@pytest.mark.parametrize("name", ["nbd+unix:///x", "nbd://", "nbd:host", "nbd:host:port"])
def test_parse_filename_rejects(name):
    with pytest.raises(BlockError) as e:
        parse_filename(name)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("server", ["qemu", "ours"])
def test_info_map_convert_match_qemu_img(tools, tmp_path, fmt, server):
    img = _make_image(tmp_path, fmt)
    with serve(server, img, "-f", fmt, "-r", "-x", "disk", "-e", "4") as (sock, _):
        u = uri(sock, "disk")
        for args in (["info"], ["info", "--output=json"], ["info", "-f", "raw"],
                     ["map", "-f", "raw", "--output=json"], ["map", "-f", "raw"]):
            ours = _img(*args, u).stdout
            assert ours == run_tool("qemu-img", *args, u).stdout, args
        for ofmt in ("raw", "qcow2"):
            out = tmp_path / f"out.{ofmt}"
            _img("convert", "-f", "raw", "-O", ofmt, u, str(out))
            run_tool("qemu-img", "compare", "-f", fmt, "-F", ofmt, str(img), str(out))


def test_writes_through_driver_land_in_image(tools, tmp_path):
    img = _make_image(tmp_path, "qcow2")
    with serve("qemu", img, "-f", "qcow2") as (sock, _):
        node = registry.open_image(uri(sock), "raw", read_only=False)
        blk = BlockBackend(node, "writethrough", discard="unmap")
        assert blk.length() == SIZE
        assert blk.write(0, memoryview(b"\x5a" * 65536), fua=True) == 0
        node.file.max_block = 1 * MiB      # as a server with 1 MiB blocks: requests split
        big = bytes([0xA5]) * (5 * MiB + 4096)
        assert blk.write(10 * MiB, memoryview(big)) == 0
        back = bytearray(len(big))
        assert blk.read(10 * MiB, memoryview(back)) == 0 and back == big
        assert blk.write_zeroes(8 * MiB, 64 * 1024) == 0
        assert blk.discard(2 * MiB, 64 * 1024) == 0
        assert blk.flush() == 0
        buf = bytearray(64 * 1024)
        assert blk.read(8 * MiB, memoryview(buf)) == 0 and buf == bytes(len(buf))
        assert blk.read(SIZE, memoryview(bytearray(1))) < 0      # past the end
        blk.close()
    r = run_tool("qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 64k",
                 "-c", f"read -P 0xa5 {10 * MiB} {len(big)}", "-c", f"read -P 0 {8 * MiB} 64k",
                 str(img))
    assert "Pattern verification failed" not in r.stdout, r.stdout
    run_tool("qemu-img", "check", str(img))


def test_read_only_export_and_unknown_export(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    with serve("qemu", img, "-f", "raw", "-r") as (sock, _):
        with pytest.raises(BlockError) as e:
            registry.open_image(uri(sock), "raw", read_only=False)
        assert e.value.errno == errno.EACCES
        with pytest.raises(BlockError) as e:
            registry.open_image(uri(sock, "nope"), "raw", read_only=True)
        assert "export 'nope' not present" in str(e.value)
        r = _img("info", uri(sock, "nope"), check=False)
        assert r.returncode != 0 and "nope" in r.stderr
    with pytest.raises(BlockError) as e:
        registry.open_image(uri(str(tmp_path / "absent.sock")), "raw", read_only=True)
    assert e.value.errno == errno.ENOENT


def test_tcp_uri(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["qemu-nbd", "-t", "-r", "-f", "raw", "-b", "127.0.0.1",
                             "-p", str(port), str(img)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        u = f"nbd://127.0.0.1:{port}"
        assert _img("info", u).stdout == run_tool("qemu-img", "info", u).stdout
        out = tmp_path / "out.raw"
        _img("convert", "-f", "raw", "-O", "raw", u, str(out))
        assert out.read_bytes() == img.read_bytes()
    finally:
        proc.terminate()
        proc.wait()
