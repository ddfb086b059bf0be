"""BlockBackend: cache modes observed at the system calls, WCE, FUA, policies, stats, log."""

from __future__ import annotations

import errno
import mmap
import os

import pytest

from blockbed import trace
from blockbed.block.backend import (STOPPED, BlockBackend, CacheMode, RequestLog, StopReason)
from blockbed.block.blkdebug import BlkdebugDriver, InjectError
from blockbed.block.file import FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, create_file
from blockbed.block.memory import MemoryDriver
from blockbed.block.registry import open_image

MiB = 1 << 20


class Syscalls:
    """Wraps the os functions file.py calls, recording what reached the kernel."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        real_open, real_pwritev, real_fdatasync = os.open, os.pwritev, os.fdatasync

        def spy_open(path, flags, *a):
            self.calls.append(("open", flags))
            return real_open(path, flags, *a)

        def spy_pwritev(fd, bufs, off, flags=0):
            self.calls.append(("pwritev", off, flags))
            return real_pwritev(fd, bufs, off, flags)

        def spy_fdatasync(fd):
            self.calls.append(("fdatasync",))
            return real_fdatasync(fd)
        monkeypatch.setattr(os, "open", spy_open)
        monkeypatch.setattr(os, "pwritev", spy_pwritev)
        monkeypatch.setattr(os, "fdatasync", spy_fdatasync)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def img(tmp_path):
    p = str(tmp_path / "disk.img")
    create_file(p, 4 * MiB)
    return p


@pytest.fixture
def sys_spy(monkeypatch):
    return Syscalls(monkeypatch)


def guest_buf(n: int, fill: bytes = b"g") -> memoryview:
    mv = memoryview(mmap.mmap(-1, max(n, mmap.PAGESIZE)))[:n]
    mv[:] = fill * n
    return mv


def backend(img: str, cache: str, native_fua: bool = True, **kw) -> BlockBackend:
    root = open_image(img, "raw", cache=cache, options={"native-fua": native_fua})
    return BlockBackend(root, cache, **kw)


# --- the cache mode table of semantics.md, at the system calls -------------------------

@pytest.mark.parametrize("mode,wce,direct,no_flush", [
    ("writeback", True, False, False),
    ("none", True, True, False),
    ("writethrough", False, False, False),
    ("directsync", False, True, False),
    ("unsafe", True, False, True),
])
def test_cache_mode_table(mode, wce, direct, no_flush):
    m = CacheMode.parse(mode)
    assert (m.writeback, m.direct, m.no_flush) == (wce, direct, no_flush)


@pytest.mark.parametrize("mode", CacheMode.names())
@pytest.mark.parametrize("native_fua", [True, False])
def test_cache_mode_system_calls(img, sys_spy, mode, native_fua):
    m = CacheMode.parse(mode)
    be = backend(img, mode, native_fua)
    opens = [c for c in sys_spy.calls if c[0] == "open"]
    assert len(opens) == 1 and bool(opens[0][1] & os.O_DIRECT) == m.direct
    assert be.write_cache_enabled == m.writeback
    sys_spy.clear()

    for i in range(3):
        assert be.writev(i * 4096, [guest_buf(4096)]) == 0
    writes = [c for c in sys_spy.calls if c[0] == "pwritev"]
    assert len(writes) == 3
    if m.writeback:
        # Write cache on: plain writes, no flush.
        assert sys_spy.count("fdatasync") == 0 and all(c[2] == 0 for c in writes)
    elif native_fua:
        # WCE off: every write durable on completion, RWF_DSYNC on the write itself.
        assert sys_spy.count("fdatasync") == 0
        assert all(c[2] == os.RWF_DSYNC for c in writes)
    else:
        # WCE off without native FUA: each write is followed by its own fdatasync.
        assert sys_spy.names() == ["pwritev", "fdatasync"] * 3
        assert all(c[2] == 0 for c in writes)

    sys_spy.clear()
    assert be.flush() == 0
    assert sys_spy.count("fdatasync") == (0 if m.no_flush else 1)
    assert be.stats.flushes_dropped == (1 if m.no_flush else 0)
    be.close()


def test_unsafe_never_reaches_fdatasync(img, sys_spy):
    be = backend(img, "unsafe", native_fua=False)
    be.writev(0, [guest_buf(512)], fua=True)
    be.set_write_cache(False)
    be.writev(512, [guest_buf(512)])
    be.write_zeroes(4096, 4096)
    be.flush()
    assert sys_spy.count("fdatasync") == 0
    assert all(c[2] == 0 for c in sys_spy.calls if c[0] == "pwritev")
    assert be.stats.fua_dropped == 2 and be.stats.flushes_dropped == 2
    be.close()


def test_wce_off_flushes_first_then_writes_fua(img, sys_spy):
    be = backend(img, "writeback")
    be.writev(0, [guest_buf(4096)])
    sys_spy.clear()
    assert be.set_write_cache(False) == 0
    assert sys_spy.names() == ["fdatasync"] and not be.write_cache_enabled
    be.writev(0, [guest_buf(4096)])
    assert sys_spy.calls[-1] == ("pwritev", 0, os.RWF_DSYNC)
    sys_spy.clear()
    be.set_write_cache(False)     # already off: no flush
    be.set_write_cache(True)      # turning on: no flush
    assert sys_spy.count("fdatasync") == 0
    be.writev(0, [guest_buf(4096)])
    assert sys_spy.calls[-1] == ("pwritev", 0, 0)
    be.close()


def test_fua_emulated_where_lower_layer_lacks_it(img, sys_spy):
    be = backend(img, "writeback", native_fua=False)
    assert not be.root.supports_fua
    sys_spy.clear()
    be.writev(0, [guest_buf(4096)], fua=True)
    assert sys_spy.names() == ["pwritev", "fdatasync"]
    assert be.stats.fua_emulated == 1
    be.close()
    be = backend(img, "writeback", native_fua=True)
    sys_spy.clear()
    be.writev(0, [guest_buf(4096)], fua=True)
    assert sys_spy.calls == [("pwritev", 0, os.RWF_DSYNC)] and be.stats.fua_emulated == 0
    be.close()


def test_write_zeroes_durable_when_wce_off(img, sys_spy):
    be = backend(img, "writethrough")
    sys_spy.clear()
    assert be.write_zeroes(0, 8192) == 0
    assert sys_spy.names() == ["fdatasync"]
    be.close()


# --- discard, detect-zeroes, read-only, ranges -----------------------------------------

def test_discard_ignore_and_unmap(img):
    with trace.Recorder(["file.fallocate"]) as rec:
        be = backend(img, "writeback")             # QEMU default: discard=ignore
        be.writev(0, [guest_buf(65536, b"d")])
        assert be.discard(0, 65536) == 0 and rec.events == []
        assert be.stats.discards_ignored == 1
        be.close()
        be = backend(img, "writeback", discard="unmap")
        assert be.discard(0, 65536) == 0
        assert [e.fields["mode"] & FALLOC_FL_PUNCH_HOLE for e in rec.events] == [FALLOC_FL_PUNCH_HOLE]
        # may_unmap of write_zeroes only counts with discard=unmap
        be.write_zeroes(0, 4096, may_unmap=True)
        assert rec.events[-1].fields["mode"] & FALLOC_FL_PUNCH_HOLE
        be.close()
        be = backend(img, "writeback")
        be.write_zeroes(0, 4096, may_unmap=True)
        assert rec.events[-1].fields["mode"] == FALLOC_FL_ZERO_RANGE
        be.close()


@pytest.mark.parametrize("dz,expect", [("off", None), ("on", FALLOC_FL_ZERO_RANGE),
                                       ("unmap", FALLOC_FL_PUNCH_HOLE)])
def test_detect_zeroes(img, sys_spy, dz, expect):
    be = backend(img, "writeback", detect_zeroes=dz, discard="unmap")
    with trace.Recorder(["file.fallocate"]) as rec:
        sys_spy.clear()
        assert be.writev(0, [guest_buf(4096, b"\0"), guest_buf(4096, b"\0")]) == 0
        assert be.writev(8192, [guest_buf(4096, b"\1")]) == 0   # not zero: a real write
    if expect is None:
        assert sys_spy.count("pwritev") == 2 and rec.events == []
    else:
        assert sys_spy.count("pwritev") == 1 and rec.events[0].fields["mode"] & expect
        assert be.stats.zero_writes_detected == 1
    be.close()


def test_detect_zeroes_unmap_needs_discard_unmap():
    with pytest.raises(ValueError, match="detect-zeroes=unmap: not allowed without discard=unmap"):
        BlockBackend(MemoryDriver(4096), detect_zeroes="unmap")


def test_read_only_and_range_errors(img):
    root = open_image(img, "raw", read_only=True)
    be = BlockBackend(root)
    assert be.read_only
    buf = guest_buf(512)
    assert be.writev(0, [buf]) == -errno.EROFS
    assert be.discard(0, 512) == -errno.EROFS
    assert be.write_zeroes(0, 512) == -errno.EROFS
    assert be.readv(4 * MiB - 256, [buf]) == -errno.EIO
    assert be.readv(-512, [buf]) == -errno.EIO
    assert be.stats.read.invalid == 2
    be.close()


# --- error policies -------------------------------------------------------------------------

def failing_backend(kind: str, err: int, **kw) -> BlockBackend:
    mem = MemoryDriver(1 << 16)
    dbg = BlkdebugDriver(mem, rules=[InjectError(kind, errno=err)])
    return BlockBackend(dbg, **kw)


def do(be: BlockBackend, kind: str) -> int:
    buf = memoryview(bytearray(512))
    return {"read": lambda: be.readv(0, [buf]), "write": lambda: be.writev(0, [buf]),
            "flush": be.flush, "discard": lambda: be.discard(0, 512),
            "write_zeroes": lambda: be.write_zeroes(0, 512)}[kind]()


WRITE_KINDS = ["write", "flush", "discard", "write_zeroes"]


@pytest.mark.parametrize("kind", WRITE_KINDS)
@pytest.mark.parametrize("policy,err,expect", [
    ("report", errno.EIO, -errno.EIO), ("ignore", errno.EIO, 0),
    ("stop", errno.EIO, STOPPED), ("enospc", errno.ENOSPC, STOPPED),
    ("enospc", errno.EIO, -errno.EIO),
])
def test_werror_policy(kind, policy, err, expect):
    be = failing_backend(kind, err, werror=policy, discard="unmap")
    stops: list[StopReason] = []
    be.on_stop = stops.append
    assert do(be, kind) == expect
    assert be.stats.kind(kind).errors == 1
    if expect == STOPPED:
        assert stops and stops[0].operation == kind and stops[0].errno == err
        assert "machine stopped by the error policy" in stops[0].message()
        assert be.stop_reason is stops[0]
    else:
        assert not stops
    # reads are not subject to werror
    assert do(be, "read") == 0


@pytest.mark.parametrize("policy,expect", [("report", -errno.EIO), ("ignore", 0),
                                           ("stop", STOPPED)])
def test_rerror_policy(policy, expect):
    be = failing_backend("read", errno.EIO, rerror=policy, werror="report")
    stops = []
    be.on_stop = stops.append
    assert do(be, "read") == expect
    assert bool(stops) == (expect == STOPPED)
    assert do(be, "write") == 0


def test_stop_without_handler_reports():
    be = failing_backend("write", errno.ENOSPC)
    assert do(be, "write") == -errno.ENOSPC


def test_bad_policy_values():
    with pytest.raises(ValueError, match="werror=bogus: invalid value; allowed: report, ignore, stop, enospc"):
        BlockBackend(MemoryDriver(512), werror="bogus")
    with pytest.raises(ValueError, match="rerror=enospc: invalid value; allowed: report, ignore, stop"):
        BlockBackend(MemoryDriver(512), rerror="enospc")


def test_failed_set_write_cache_keeps_wce():
    be = failing_backend("flush", errno.EIO, werror="report")
    assert be.set_write_cache(False) == -errno.EIO
    assert be.write_cache_enabled


# --- statistics, request log, resize ------------------------------------------------------------

def test_stats_count_ops_bytes_and_latency():
    be = BlockBackend(MemoryDriver(1 << 16))
    for _ in range(5):
        be.writev(0, [memoryview(bytes(1024))])
    be.readv(0, [memoryview(bytearray(2048))])
    be.flush()
    s = be.stats
    assert (s.write.ops, s.write.bytes, s.read.ops, s.read.bytes, s.flush.ops) == (5, 5120, 1, 2048, 1)
    assert sum(s.write.histogram) == 5 and s.write.total_ns > 0
    d = s.as_dict()
    assert d["write"]["ops"] == 5 and sum(d["write"]["histogram_us"].values()) == 5
    assert d["flush"]["ops"] == 1 and d["flushes_dropped"] == 0
    import json
    json.dumps(d)


def test_request_log_records_order_flags_wce_and_data():
    be = BlockBackend(MemoryDriver(1 << 16), "writeback", request_log=RequestLog(True, keep_data=True))
    be.writev(0, [memoryview(b"ab"), memoryview(b"cd")])
    be.flush()
    be.set_write_cache(False)
    be.writev(512, [memoryview(b"x" * 512)], fua=False)
    be.discard(0, 512)
    be.readv(0, [memoryview(bytearray(4))])
    log = be.request_log.entries
    assert [e.kind for e in log] == ["write", "flush", "flush", "write", "discard", "read"]
    w0, f0, f1, w1, d, r = log
    assert w0.data == b"abcd" and w0.length == 4 and not w0.fua and w0.wce_at_submit
    assert f1.wce_at_submit  # the flush set_write_cache did before turning WCE off
    assert w1.host_fua and not w1.fua and w1.wce_at_submit is False and w1.wce_at_complete is False
    assert d.dropped  # discard=ignore
    seqs = [s for e in log for s in (e.submit_seq, e.complete_seq)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.id for e in log] == [1, 2, 3, 4, 5, 6]
    assert all(e.error == 0 and e.result == 0 for e in log)


def test_request_log_records_errors():
    be = failing_backend("write", errno.EIO, werror="report")
    be.request_log.enabled = True
    do(be, "write")
    e = be.request_log.entries[0]
    assert (e.kind, e.error, e.result) == ("write", errno.EIO, -errno.EIO)


def test_request_log_is_off_by_default():
    be = BlockBackend(MemoryDriver(4096))
    be.writev(0, [memoryview(b"x")])
    assert len(be.request_log) == 0


def test_resize_notifies(img):
    be = backend(img, "writeback")
    seen = []
    be.resize_callbacks.append(seen.append)
    assert be.resize(8 * MiB) == 0
    assert seen == [8 * MiB] and be.length() == 8 * MiB == os.path.getsize(img)
    be.close()


def test_backend_trace_points():
    be = BlockBackend(MemoryDriver(4096))
    with trace.Recorder(["backend."]) as rec:
        be.writev(0, [memoryview(b"x")], fua=True)
        be.readv(0, [memoryview(bytearray(1))])
        be.flush()
    assert rec.names() == ["backend.write", "backend.read", "backend.flush"]
    assert rec.events[0].fields["fua"] is True


# --- end to end: every cache mode, raw and qcow2, checked by qemu-io -------------------------

@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("mode", CacheMode.names())
def test_every_cache_mode_writes_what_qemu_reads(tmp_path, qemu_img, qemu_io, fmt, mode):
    if fmt == "qcow2":
        pytest.importorskip("blockbed.block.qcow2")
    from conftest import run_tool
    p = str(tmp_path / f"d.{fmt}")
    run_tool(qemu_img, "create", "-q", "-f", fmt, p, "4M")
    be = BlockBackend(open_image(p, fmt, cache=mode), mode, discard="unmap")
    assert be.writev(0, [guest_buf(65536, b"\x11")]) == 0               # aligned guest memory
    assert be.writev(70000, [memoryview(b"\x22" * 1000)], fua=True) == 0  # unaligned bytes
    assert be.write_zeroes(8192, 4096) == 0
    assert be.flush() == 0
    back = guest_buf(4096)
    assert be.readv(69632, [back]) == 0
    assert back[368:1368].tobytes() == b"\x22" * 1000
    be.close()
    out = run_tool(qemu_io, "-f", fmt, "-c", "read -P 0x11 0 8192", "-c", "read -P 0 8192 4096",
                   "-c", "read -P 0x11 12288 53248", "-c", "read -P 0x22 70000 1000",
                   "-c", "read -P 0 71000 1000", p).stdout
    assert "Pattern verification failed" not in out and out.count("read ") == 5
    if fmt == "qcow2":
        run_tool(qemu_img, "check", p)


def test_create_image_raw_and_qcow2(tmp_path, qemu_img):
    from blockbed.block.registry import create_image
    from conftest import run_tool
    p = str(tmp_path / "full.img")
    create_image(p, "raw", 2 * MiB, {"preallocation": "full"})
    assert os.path.getsize(p) == 2 * MiB and os.stat(p).st_blocks * 512 >= 2 * MiB
    pytest.importorskip("blockbed.block.qcow2")
    q = str(tmp_path / "new.qcow2")
    create_image(q, "qcow2", 8 * MiB)
    info = run_tool(qemu_img, "info", "--output=json", q).stdout
    assert '"virtual-size": 8388608' in info and '"format": "qcow2"' in info


def test_driver_bug_becomes_eio_not_a_crash(capsys):
    class Buggy(MemoryDriver):
        def readv(self, offset, bufs):
            raise struct_error("unpack requires a buffer of 8 bytes")
    import struct
    struct_error = struct.error
    be = BlockBackend(Buggy(4096))
    assert be.readv(0, [memoryview(bytearray(8))]) == -errno.EIO
    assert be.readv(0, [memoryview(bytearray(8))]) == -errno.EIO
    assert be.internal_errors == 2 and be.stats.read.errors == 2
    err = capsys.readouterr().err
    assert err.count("internal error in memory: error: unpack requires a buffer of 8 bytes") == 1


def test_close_failure_is_a_warning_not_a_traceback(capsys):
    class FailingClose(MemoryDriver):
        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")
    be = BlockBackend(FailingClose(4096), name="d1")
    assert be.close() == -errno.ENOSPC
    assert capsys.readouterr().err == ("blockbed: warning: d1: closing the image failed: "
                                       "[Errno 28] No space left on device\n")
