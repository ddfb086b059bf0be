"""logwrites: round trip, dm-log-writes ordering, torn tails, corruption, replay, CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.file import create_file
from blockbed.block.logwrites import (FLAG_FUA, FLAG_MAY_UNMAP, Kind, LogFormatError, LogReader,
                                      LogWritesDriver, read_log, replay)
from blockbed.block.memory import MemoryDriver
from blockbed.block.registry import open_image
from conftest import REPO, run_tool

MiB = 1 << 20


@pytest.fixture
def img(tmp_path):
    p = str(tmp_path / "disk.img")
    create_file(p, MiB)
    return p


def workload(be: BlockBackend, node: LogWritesDriver) -> None:
    be.writev(0, [memoryview(b"a" * 4096)])
    be.writev(4096, [memoryview(b"b" * 1000), memoryview(b"c" * 3096)], fua=True)
    node.mark("phase-1")
    be.flush()
    be.discard(0, 4096)
    be.write_zeroes(8192, 4096)
    be.writev(65536, [memoryview(b"d" * 512)])
    be.flush()


def test_round_trip_through_open_image(tmp_path, img):
    log = str(tmp_path / "w.log")
    before = open(img, "rb").read()
    root = open_image(img, "raw", options={"log-writes": log})
    assert root.describe() == f"raw(logwrites(file({img})))"
    be = BlockBackend(root, "writeback", discard="unmap")
    node = be.find_node(LogWritesDriver)
    workload(be, node)
    be.close()
    entries = read_log(log)
    assert [(e.seq, e.kind, e.offset, e.length, e.flags) for e in entries] == [
        (1, Kind.WRITE, 0, 4096, 0),
        (2, Kind.WRITE, 4096, 4096, FLAG_FUA),
        (3, Kind.MARK, 0, 0, 0),
        (4, Kind.FLUSH, 0, 0, 0),
        (5, Kind.DISCARD, 0, 4096, 0),
        (6, Kind.WRITE_ZEROES, 8192, 4096, 0),
        (7, Kind.WRITE, 65536, 512, 0),
        (8, Kind.FLUSH, 0, 0, 0),
    ]
    assert entries[1].data == b"b" * 1000 + b"c" * 3096 and entries[2].name == "phase-1"
    # Replaying the log onto the image as it was gives the image as it is.
    mem = MemoryDriver(before)
    replay(entries, mem)
    assert bytes(mem.buf) == open(img, "rb").read()


def test_wce_off_logs_every_write_fua(tmp_path, img):
    log = str(tmp_path / "w.log")
    be = BlockBackend(open_image(img, "raw", options={"log-writes": log}), "writethrough")
    be.writev(0, [memoryview(b"x" * 512)])
    be.writev(512, [memoryview(b"y" * 512)])
    be.close()
    assert [e.fua for e in read_log(log)] == [True, True]


def test_unsafe_logs_no_flush(tmp_path, img):
    log = str(tmp_path / "w.log")
    be = BlockBackend(open_image(img, "raw", options={"log-writes": log}), "unsafe")
    be.writev(0, [memoryview(b"x" * 512)])
    be.flush()
    be.close()
    assert [e.kind for e in read_log(log)] == [Kind.WRITE]


def test_flush_logged_after_writes_it_covers_and_only_on_success(tmp_path):
    class FailingFlush(MemoryDriver):
        def flush(self):
            raise OSError(5, "Input/output error")
    node = LogWritesDriver(FailingFlush(4096), str(tmp_path / "w.log"))
    node.write(0, b"x")
    with pytest.raises(OSError):
        node.flush()
    node.close()
    assert [e.kind for e in read_log(str(tmp_path / "w.log"))] == [Kind.WRITE]


def test_torn_tail_and_corruption(tmp_path):
    log = str(tmp_path / "w.log")
    node = LogWritesDriver(MemoryDriver(1 << 16), log)
    for i in range(3):
        node.write(i * 512, bytes([i + 1]) * 512)
    node.close()
    size = os.path.getsize(log)
    torn = str(tmp_path / "torn.log")
    shutil.copy(log, torn)
    os.truncate(torn, size - 100)
    with LogReader(torn) as r:
        got = list(r)
        assert [e.seq for e in got] == [1, 2] and r.truncated
    bad = str(tmp_path / "bad.log")
    data = bytearray(open(log, "rb").read())
    data[32 + 48 + 10] ^= 0xFF                    # inside entry 1's payload
    open(bad, "wb").write(data)
    with pytest.raises(LogFormatError, match="entry 1: CRC mismatch"):
        read_log(bad)
    open(bad, "wb").write(b"not a log at all" * 4)
    with pytest.raises(LogFormatError, match="not a blockbed write log"):
        read_log(bad)


def test_lazy_data(tmp_path):
    log = str(tmp_path / "w.log")
    node = LogWritesDriver(MemoryDriver(4096), log)
    node.write(100, b"hello")
    node.close()
    with LogReader(log, load_data=False) as r:
        (e,) = list(r)
        assert e.data is None and r.read_data(e) == b"hello"


def blockbed(*args: str) -> subprocess.CompletedProcess:
    code = "import sys; from blockbed.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, cwd=REPO)


def test_cli_dump_and_replay(tmp_path, img):
    log = str(tmp_path / "w.log")
    before = str(tmp_path / "before.img")
    shutil.copy(img, before)
    be = BlockBackend(open_image(img, "raw", options={"log-writes": log}), discard="unmap")
    workload(be, be.find_node(LogWritesDriver))
    be.close()
    p = blockbed("logwrites", "dump", "--data", "4", log)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "# blockbed log-writes v1, sector size 512"
    assert lines[2].split() == ["1", "write", "0", "4096", "-", "61616161"]
    assert lines[3].split()[:5] == ["2", "write", "4096", "4096", "fua"]
    assert lines[4].split() == ["3", "mark", "0", "0", "-", "'phase-1'"]
    assert lines[-1] == ("# 8 entries: 3 writes (8704 bytes), 2 flushes, 1 discards, "
                         "1 write-zeroes, 1 marks")
    # replay up to the mark: only the first two writes
    p = blockbed("logwrites", "replay", "--mark", "phase-1", log, before)
    assert p.returncode == 0 and "replayed 3 entries" in p.stdout, p.stderr
    data = open(before, "rb").read()
    assert data[:4096] == b"a" * 4096 and data[65536:65537] == b"\0"
    p = blockbed("logwrites", "dump", str(tmp_path / "missing.log"))
    assert p.returncode == 1 and "No such file or directory" in p.stderr
    assert "Traceback" not in p.stderr


def test_qcow2_host_writes_replay_to_identical_file(tmp_path, qemu_img):
    pytest.importorskip("blockbed.block.qcow2")
    img = str(tmp_path / "d.qcow2")
    run_tool(qemu_img, "create", "-q", "-f", "qcow2", img, "4M")
    before = open(img, "rb").read()
    log = str(tmp_path / "w.log")
    be = BlockBackend(open_image(img, "qcow2", options={"log-writes": log}))
    for i in range(8):
        be.writev(i * 300_000, [memoryview(bytes([i + 1]) * 4096)])
    be.flush()
    be.close()
    mem = MemoryDriver(before)
    replay(read_log(log), mem)
    after = open(img, "rb").read()
    assert bytes(mem.buf[:len(after)]) == after
    run_tool(qemu_img, "check", img)


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["write", "writev", "zeroes", "discard", "flush",
                                                "mark"]),
                              st.integers(0, 60_000), st.integers(1, 5_000), st.binary(min_size=1, max_size=64),
                              st.booleans()), max_size=20))
def test_replay_of_any_workload_reproduces_the_image(tmp_path_factory, ops):
    log = str(tmp_path_factory.mktemp("lw") / "w.log")
    initial = bytes(range(256)) * 256
    node = LogWritesDriver(MemoryDriver(initial), log)
    for op, off, n, data, fua in ops:
        if op == "write":
            node.write(off, (data * (n // len(data) + 1))[:n], fua)
        elif op == "writev":
            node.writev(off, [memoryview(data), memoryview(data[::-1])], fua)
        elif op == "zeroes":
            node.write_zeroes(off, n, fua)
        elif op == "discard":
            node.discard(off, min(n, max(0, node.length() - off)))
        elif op == "flush":
            node.flush()
        else:
            node.mark(data.hex())
    final = bytes(node.file.buf)
    node.close()
    entries = read_log(log)
    assert [e.seq for e in entries] == list(range(1, len(ops) + 1))
    mem = MemoryDriver(initial)
    replay(entries, mem)
    assert bytes(mem.buf) == final
