"""The file protocol driver: data path, O_DIRECT, fallocate, SEEK_DATA, create/truncate."""

from __future__ import annotations

import errno
import json
import mmap
import os

import pytest

from blockbed import trace
from blockbed.block.driver import BlockError
from blockbed.block.file import (FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE,
                                 FileDriver, create_file)
from conftest import run_tool

MiB = 1 << 20


def aligned(n: int) -> memoryview:
    """Page-aligned writable memory, like guest RAM."""
    return memoryview(mmap.mmap(-1, n))


@pytest.fixture
def img(tmp_path):
    p = tmp_path / "disk.img"
    create_file(str(p), 4 * MiB)
    return str(p)


def test_readv_writev_round_trip(img):
    with FileDriver(img) as f:
        a, b = bytearray(b"A" * 1000), bytearray(b"B" * 3096)
        f.writev(8192, [memoryview(a), memoryview(b)])
        out1, out2 = bytearray(3000), bytearray(1096)
        f.readv(8192, [memoryview(out1), memoryview(out2)])
        assert bytes(out1 + out2) == bytes(a + b)
    with open(img, "rb") as fh:
        fh.seek(8192)
        assert fh.read(4096) == bytes(a + b)


def test_read_past_eof_reads_zeros_and_write_past_eof_grows(img):
    with FileDriver(img) as f:
        size = f.length()
        buf = bytearray(b"\xff" * 8192)
        f.read(size - 4096, memoryview(buf))
        assert buf == bytes(8192)
        f.write(size + 100, b"tail")
        assert f.length() == size + 104 == os.path.getsize(img)


def test_many_iovecs_beyond_iov_max(img):
    with FileDriver(img) as f:
        bufs = [memoryview(bytes([i % 251]) * 512) for i in range(1500)]
        f.writev(0, bufs)
        outs = [memoryview(bytearray(512)) for _ in range(1500)]
        f.readv(0, outs)
        assert all(o.tobytes() == b.tobytes() for o, b in zip(outs, bufs))


def test_open_flags_follow_cache_direct(img, monkeypatch):
    seen = []
    real_open = os.open

    def spy(path, flags, *a):
        seen.append(flags)
        return real_open(path, flags, *a)
    monkeypatch.setattr(os, "open", spy)
    FileDriver(img).close()
    FileDriver(img, direct=True).close()
    FileDriver(img, read_only=True).close()
    assert not seen[0] & os.O_DIRECT and seen[0] & os.O_RDWR
    assert seen[1] & os.O_DIRECT
    assert seen[2] & os.O_ACCMODE == os.O_RDONLY


def test_direct_aligned_goes_straight_through_unaligned_bounces(img):
    with FileDriver(img, direct=True) as f, trace.Recorder(["file."]) as rec:
        assert f.align in (512, 1024, 2048, 4096)
        buf = aligned(8192)
        buf[:] = b"D" * 8192
        f.writev(4096, [buf])
        back = aligned(8192)
        f.readv(4096, [back])
        assert back.tobytes() == b"D" * 8192
        io = [e for e in rec.events if e.name in ("file.pwritev", "file.preadv")]
        assert [e.fields["bounce"] for e in io] == [False, False]

        rec.events.clear()
        f.write(4096 + 7, b"xyz")                       # unaligned offset, bytes object
        small = bytearray(10)
        f.read(4096 + 5, memoryview(small))
        assert bytes(small) == b"DDxyzDDDDD"
        io = [e for e in rec.events if e.name in ("file.pwritev", "file.preadv")]
        assert io and all(e.fields["bounce"] for e in io)
        assert all(e.fields["offset"] % f.align == 0 and e.fields["length"] % f.align == 0
                   for e in io)


def test_direct_unaligned_write_at_eof_keeps_exact_size(tmp_path):
    p = str(tmp_path / "d.img")
    create_file(p, 4096)
    with FileDriver(p, direct=True) as f:
        f.write(4096, b"0123456789")
        assert f.length() == 4106
    assert os.path.getsize(p) == 4106
    with open(p, "rb") as fh:
        fh.seek(4096)
        assert fh.read() == b"0123456789"


def test_flush_is_fdatasync_and_failure_sticks(img, monkeypatch):
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    with FileDriver(img) as f:
        f.flush()
        assert calls == [f.fd] and f.fdatasync_count == 1

        def failing(fd):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(BlockError) as ei:
            f.flush()
        assert ei.value.errno == errno.EIO
        monkeypatch.setattr(os, "fdatasync", real)
        # The kernel may have dropped the dirty pages: a later flush must not claim success.
        with pytest.raises(BlockError, match="earlier flush failed"):
            f.flush()


@pytest.mark.parametrize("native", [False, True])
def test_fua_write_syscalls(img, monkeypatch, native):
    """Default (QEMU 7.2's file-posix): a FUA write is pwritev then fdatasync;
    native-fua=on: one pwritev2 with RWF_DSYNC."""
    calls = []
    real_w, real_s = os.pwritev, os.fdatasync

    def spy_w(fd, bufs, off, fl=0):
        calls.append(("pwritev", fl))
        return real_w(fd, bufs, off, fl)

    def spy_s(fd):
        calls.append(("fdatasync", 0))
        return real_s(fd)
    monkeypatch.setattr(os, "pwritev", spy_w)
    monkeypatch.setattr(os, "fdatasync", spy_s)
    with FileDriver(img, native_fua=native) as f:
        assert f.supports_fua == native
        f.write(0, b"x" * 512)
        f.write(0, b"y" * 512, fua=True)
    if native:
        assert calls == [("pwritev", 0), ("pwritev", os.RWF_DSYNC)]
    else:
        assert calls == [("pwritev", 0), ("pwritev", 0), ("fdatasync", 0)]


def _blocks(path: str) -> int:
    return os.stat(path).st_blocks * 512


def test_discard_punches_a_hole(img):
    with FileDriver(img) as f, trace.Recorder(["file.fallocate"]) as rec:
        f.write(0, b"\x11" * MiB)
        before = _blocks(img)
        f.discard(0, MiB)
        assert rec.events[-1].fields["mode"] == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        assert _blocks(img) <= before - MiB + 4096
        assert f.length() == 4 * MiB
        buf = bytearray(16)
        f.read(0, memoryview(buf))
        assert buf == bytes(16)


def test_write_zeroes_zero_range_or_punch(img):
    with FileDriver(img) as f, trace.Recorder(["file.fallocate"]) as rec:
        f.write(0, b"\x22" * MiB)
        f.write_zeroes(0, 4096)
        assert rec.events[-1].fields["mode"] == FALLOC_FL_ZERO_RANGE
        f.write_zeroes(4096, 8192, may_unmap=True)
        assert rec.events[-1].fields["mode"] == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        buf = bytearray(16384)
        f.read(0, memoryview(buf))
        assert buf[:12288] == bytes(12288) and buf[12288:] == b"\x22" * 4096
        # Past the end of the file, write_zeroes grows it.
        f.write_zeroes(4 * MiB, 4096, may_unmap=True)
        assert f.length() == 4 * MiB + 4096 == os.path.getsize(img)


def test_block_status_matches_qemu_img_map(img, qemu_img):
    with FileDriver(img) as f:
        f.write(0, b"a" * 65536)
        f.write(2 * MiB, b"b" * 65536)
        ours = [(e.offset, e.length, e.data, e.zero) for e in f.block_status(0, f.length())]
    out = run_tool(qemu_img, "map", "--output=json", "-f", "raw", img).stdout
    theirs = [(m["start"], m["length"], m["data"], m["zero"]) for m in json.loads(out)]
    assert ours == theirs


@pytest.mark.parametrize("prealloc", ["off", "falloc", "full"])
def test_create_preallocation(tmp_path, prealloc, qemu_img):
    p = str(tmp_path / f"{prealloc}.img")
    create_file(p, 2 * MiB, prealloc)
    assert os.path.getsize(p) == 2 * MiB
    if prealloc == "off":
        assert _blocks(p) == 0
    else:
        assert _blocks(p) >= 2 * MiB
    with FileDriver(p, read_only=True) as f:
        ext = f.block_status(0, 2 * MiB)
    # full writes zeros (data), falloc allocates unwritten extents (reported as holes/zero
    # or data depending on the file system), off is one hole: agree with qemu-img map.
    out = json.loads(run_tool(qemu_img, "map", "--output=json", "-f", "raw", p).stdout)
    assert [(e.offset, e.length, e.data) for e in ext] == \
        [(m["start"], m["length"], m["data"]) for m in out]


def test_truncate_grow_shrink_and_prealloc(img):
    with FileDriver(img) as f:
        f.truncate(MiB)
        assert f.length() == os.path.getsize(img) == MiB
        f.truncate(3 * MiB, preallocation="falloc")
        assert os.path.getsize(img) == 3 * MiB and _blocks(img) >= 2 * MiB
        with pytest.raises(BlockError, match="preallocation=bogus: invalid value; allowed: off, falloc, full"):
            f.truncate(4 * MiB, preallocation="bogus")


def test_read_only_refuses_writes(img):
    with FileDriver(img, read_only=True) as f:
        for op in (lambda: f.write(0, b"x"), lambda: f.discard(0, 512),
                   lambda: f.write_zeroes(0, 512), lambda: f.truncate(0)):
            with pytest.raises(BlockError) as ei:
                op()
            assert ei.value.errno == errno.EROFS


def test_open_errors_are_one_line(tmp_path):
    with pytest.raises(BlockError) as ei:
        FileDriver(str(tmp_path / "missing.img"))
    assert ei.value.errno == errno.ENOENT
    assert str(ei.value) == f"Could not open '{tmp_path / 'missing.img'}': No such file or directory"
    with pytest.raises(BlockError, match="Is a directory"):
        FileDriver(str(tmp_path))
    with pytest.raises(BlockError, match="force-share=on can only be used with read-only images"):
        FileDriver(str(tmp_path / "x"), force_share=True)


def test_syscall_trace_events(img):
    with trace.Recorder(["file."]) as rec:
        with FileDriver(img) as f:
            f.write(0, b"x" * 512)
            f.read(0, memoryview(bytearray(512)))
            f.flush()
            f.discard(0, 512)
            f.truncate(MiB)
    assert rec.names() == ["file.open", "file.pwritev", "file.preadv", "file.fdatasync",
                           "file.fallocate", "file.ftruncate"]


# --- model check: O_DIRECT bounce paths never corrupt neighbouring bytes --------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_ops = st.lists(st.tuples(st.sampled_from(["write", "read", "zeroes", "discard"]),
                          st.integers(0, 70_000), st.integers(0, 9_000), st.integers(1, 255),
                          st.booleans()),
                min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops, direct=st.booleans())
def test_file_driver_matches_a_byte_model(tmp_path, ops, direct):
    p = str(tmp_path / f"model-{direct}.img")
    create_file(p, 65536)
    model = bytearray(65536)
    with FileDriver(p, direct=direct) as f:
        for op, off, n, val, in_guest_memory in ops:
            if op == "write":
                data = bytes([val]) * n
                if in_guest_memory:
                    buf = aligned(max(n, 1))[:n]
                    buf[:] = data
                    f.writev(off, [buf])
                else:
                    f.write(off, data)
                if n and off + n > len(model):   # an empty write does not grow a file
                    model.extend(bytes(off + n - len(model)))
                model[off:off + n] = data
            elif op == "zeroes":
                f.write_zeroes(off, n, may_unmap=in_guest_memory)
                if n and off + n > len(model):
                    model.extend(bytes(off + n - len(model)))
                model[off:off + n] = bytes(n)
            elif op == "discard":
                n = min(n, max(0, len(model) - off))
                f.discard(off, n)
                model[off:off + n] = bytes(n)   # a punched hole reads as zeros
            else:
                out = aligned(max(n, 1))[:n] if in_guest_memory else memoryview(bytearray(n))
                f.read(off, out)
                expect = bytes(model[off:off + n]).ljust(n, b"\0")
                assert out.tobytes() == expect
            assert f.length() == len(model)
    assert open(p, "rb").read() == bytes(model)


def test_short_read_into_bytearrays_fills_the_callers_buffers(img):
    with FileDriver(img) as f:
        f.write(f.length() - 3, b"end")
        a, b = bytearray(b"\xff" * 2), bytearray(b"\xff" * 6)
        f.readv(f.length() - 3, [a, b])        # plain bytearrays, crossing EOF
        assert bytes(a + b) == b"end" + bytes(5)


@pytest.mark.parametrize("direct", [False, True])
def test_zero_length_requests(img, direct):
    with FileDriver(img, direct=direct) as f:
        f.write(7, b"")
        f.writev(4096, [memoryview(b"")])
        f.read(7, memoryview(bytearray(0)))
        f.readv(3, [])
        assert f.length() == 4 * MiB
