"""blkdebug: config syntax, every event, once/always, ranges, states, error policies."""

from __future__ import annotations

import errno
import importlib.util
import os

import pytest

from blockbed.block.backend import STOPPED, BlockBackend
from blockbed.block.blkdebug import (DATA_EVENTS, QEMU_EVENTS, BlkdebugDriver, InjectError,
                                     SetState, parse_config)
from blockbed.block.driver import BlockDriver, BlockError
from blockbed.block.file import create_file
from blockbed.block.memory import MemoryDriver
from blockbed.block.registry import open_image
from conftest import run_tool


class FakeFormat(BlockDriver):
    """A format driver in miniature: raises a named event before each metadata write,
    exactly as qcow2 does with ``self.file.debug_event(...)``."""

    driver_name = "fake"

    def __init__(self, file: BlockDriver):
        self.file = file

    def children(self):
        return (self.file,)

    def read(self, offset, buf):
        self.file.read(offset, buf)

    def write(self, offset, data, fua=False):
        self.file.write(offset, data, fua)

    def metadata_update(self, event: str) -> None:
        self.file.debug_event(event)
        self.file.write(0, b"M" * 64)

    def flush(self):
        self.file.flush()

    def length(self):
        return self.file.length()


def config(tmp_path, text: str) -> str:
    p = tmp_path / "blkdebug.conf"
    p.write_text(text)
    return str(p)


METADATA_EVENTS = [e for e in QEMU_EVENTS if e != "none"]


@pytest.mark.parametrize("event", METADATA_EVENTS)
def test_each_metadata_event_fails_the_next_request(tmp_path, event):
    conf = config(tmp_path, f'[inject-error]\nevent = "{event}"\nerrno = "28"\nonce = "on"\n')
    dbg = BlkdebugDriver(MemoryDriver(4096), conf)
    fmt = FakeFormat(dbg)
    fmt.write(512, b"data")                     # other events do not trigger it
    with pytest.raises(BlockError) as ei:
        fmt.metadata_update(event)
    assert ei.value.errno == errno.ENOSPC
    assert f"(event {event})" in str(ei.value)
    fmt.metadata_update(event)                  # once: the second time succeeds
    assert dbg.injected == [(event, "write", 0, 64, errno.ENOSPC)]


@pytest.mark.parametrize("event", DATA_EVENTS)
def test_each_data_event(tmp_path, event):
    dbg = BlkdebugDriver(MemoryDriver(4096), config(tmp_path, f'[inject-error]\nevent = "{event}"\n'))
    ops = {"read": lambda: dbg.read(0, memoryview(bytearray(8))),
           "write": lambda: dbg.write(0, b"x"),
           "write_zeroes": lambda: dbg.write_zeroes(0, 8),
           "discard": lambda: dbg.discard(0, 8),
           "flush": dbg.flush}
    for _ in range(2):  # once=off: it keeps failing
        with pytest.raises(BlockError) as ei:
            ops[event]()
        assert ei.value.errno == errno.EIO
    # only that kind of request fails
    for other, op in ops.items():
        if other != event:
            op()


def test_failed_write_does_not_reach_the_child(tmp_path):
    mem = MemoryDriver(4096)
    dbg = BlkdebugDriver(mem, rules=[InjectError("write", once=True)])
    with pytest.raises(BlockError):
        dbg.write(0, b"lost")
    assert bytes(mem.buf[:4]) == bytes(4)
    dbg.write(0, b"kept")
    assert bytes(mem.buf[:4]) == b"kept"


def test_offset_range_and_sector(tmp_path):
    dbg = BlkdebugDriver(MemoryDriver(1 << 16), config(
        tmp_path, '[inject-error]\nevent = "write"\nsector = "8"\n'))
    dbg.write(0, b"x" * 4096)                   # bytes 0..4095: sector 8 is byte 4096
    with pytest.raises(BlockError):
        dbg.write(4000, b"x" * 200)             # contains byte 4096
    dbg.write(4097, b"x")
    dbg2 = BlkdebugDriver(MemoryDriver(1 << 16),
                          rules=[InjectError("read", offset=8192, length=4096)])
    dbg2.read(0, memoryview(bytearray(8192)))
    with pytest.raises(BlockError):
        dbg2.read(12287, memoryview(bytearray(1)))
    dbg2.read(12288, memoryview(bytearray(1)))


def test_set_state_rules(tmp_path):
    # Fail only the *second* l2_update (state 1 → 2 on the first, inject in state 2).
    conf = config(tmp_path, """
# a comment
[set-state]
event = "l2_update"
state = "1"
new_state = "2"

[inject-error]
event = "l2_update"
state = "2"
errno = "EIO"
""")
    dbg = BlkdebugDriver(MemoryDriver(4096), conf)
    fmt = FakeFormat(dbg)
    fmt.metadata_update("l2_update")
    assert dbg.state == 2
    with pytest.raises(BlockError):
        fmt.metadata_update("l2_update")


def test_iotype_and_default_mask(tmp_path):
    dbg = BlkdebugDriver(MemoryDriver(4096), config(
        tmp_path, '[inject-error]\nevent = "l2_load"\niotype = "read"\n'))
    fmt = FakeFormat(dbg)
    dbg.debug_event("l2_load")
    fmt.write(0, b"w")                         # writes pass
    with pytest.raises(BlockError):
        fmt.read(0, memoryview(bytearray(1)))
    # default mask for a metadata event: every data-path type but block-status
    dbg = BlkdebugDriver(MemoryDriver(4096), rules=[InjectError("l2_load")])
    dbg.debug_event("l2_load")
    dbg.block_status(0, 4096)
    with pytest.raises(BlockError):
        dbg.flush()


def test_event_names_accept_qemu_spellings():
    assert InjectError("l2_alloc.write").event == "l2_alloc_write"
    assert SetState("refblock-alloc", 2).event == "refblock_alloc"


@pytest.mark.parametrize("text,message", [
    ('[inject-err]\nevent = "read"\n',
     "line 1: unknown section [inject-err]; allowed: [inject-error], [set-state]"),
    ('[inject-error]\nevnt = "read"\n',
     "line 2: unknown key 'evnt' in [inject-error]; allowed: errno, event, immediately, "
     "iotype, length, offset, once, sector, state"),
    ('[inject-error]\nevent = "l9_update"\n', "unknown event 'l9_update'; allowed: "),
    ('[inject-error]\nerrno = "5"\n', "'event' is required"),
    ('[inject-error]\nevent = "read"\nerrno = "EFOO"\n',
     "errno=EFOO: expected a positive number or a name such as EIO, ENOSPC"),
    ('[inject-error]\nevent = "read"\nonce = "maybe"\n', "once=maybe: invalid value; allowed: on, off"),
    ('[inject-error]\nevent = "read"\niotype = "scan"\n',
     "iotype=scan: invalid value; allowed: read, write, write-zeroes, discard, flush, block-status"),
    ('[set-state]\nevent = "read"\n', "'new_state' is required"),
    ('event = "read"\n', "line 1: expected [section] or key = \"value\""),
])
def test_config_errors(text, message):
    with pytest.raises(ValueError) as ei:
        parse_config(text)
    assert message in str(ei.value)


def test_bad_config_through_open_image(tmp_path):
    img = str(tmp_path / "d.img")
    create_file(img, 1 << 20)
    conf = config(tmp_path, "[inject-error]\nevent = \"nope\"\n")
    with pytest.raises(BlockError, match="unknown event 'nope'"):
        open_image(f"blkdebug:{conf}:{img}", "raw")
    with pytest.raises(BlockError, match="cannot read config"):
        open_image(f"blkdebug:{tmp_path}/missing.conf:{img}", "raw")


# --- errors surfacing as the error policy -------------------------------------------------

@pytest.mark.parametrize("werror,expect", [("report", -errno.ENOSPC), ("ignore", 0),
                                           ("stop", STOPPED), ("enospc", STOPPED)])
def test_injected_error_through_backend_policy(tmp_path, werror, expect):
    img = str(tmp_path / "d.img")
    create_file(img, 1 << 20)
    conf = config(tmp_path, '[inject-error]\nevent = "write"\nerrno = "ENOSPC"\nonce = "on"\n')
    root = open_image(f"blkdebug:{conf}:{img}", "raw")
    assert root.describe() == f"raw(blkdebug(file({img})))"
    be = BlockBackend(root, werror=werror)
    stopped = []
    be.on_stop = stopped.append
    assert be.writev(0, [memoryview(b"x" * 512)]) == expect
    assert bool(stopped) == (expect == STOPPED)
    assert be.writev(0, [memoryview(b"x" * 512)]) == 0   # once: the retry succeeds
    be.close()


def test_qcow2_metadata_event_through_backend(tmp_path, qemu_img):
    if importlib.util.find_spec("blockbed.block.qcow2") is None:
        pytest.skip("the qcow2 driver is not in this tree yet")
    img = str(tmp_path / "d.qcow2")
    run_tool(qemu_img, "create", "-q", "-f", "qcow2", img, "1M")
    conf = config(tmp_path, '[inject-error]\nevent = "l2_update"\nerrno = "28"\nonce = "on"\n')
    root = open_image(f"blkdebug:{conf}:{img}", "qcow2")
    be = BlockBackend(root, werror="enospc")
    stops = []
    be.on_stop = stops.append
    assert be.writev(0, [memoryview(b"q" * 4096)]) == STOPPED
    assert stops[0].errno == errno.ENOSPC and stops[0].operation == "write"
    be.close()


# --- differential: the same config, the same commands, under qemu-io and under blockbed --------

DIFF_CASES = {
    "once": ('[inject-error]\nevent = "read_aio"\nerrno = "5"\nonce = "on"\n',
             ["read", "read"]),
    "always": ('[inject-error]\nevent = "read_aio"\nerrno = "5"\n', ["read", "read", "write"]),
    "enospc-on-write": ('[inject-error]\nevent = "write_aio"\nerrno = "28"\nonce = "on"\n',
                        ["write", "write", "read"]),
    "iotype": ('[inject-error]\nevent = "read_aio"\nerrno = "5"\niotype = "write"\n',
               ["read", "write"]),
    "state": ('[set-state]\nevent = "read_aio"\nstate = "1"\nnew_state = "2"\n'
              '[inject-error]\nevent = "read_aio"\nstate = "2"\nerrno = "5"\nonce = "on"\n',
              ["read", "read", "read"]),
}


def _qemu_results(qemu_io: str, target: str, ops: list[str]) -> list[int]:
    args = []
    for op in ops:
        args += ["-c", "read 0 4k" if op == "read" else "write -P 0x44 0 4k"]
    out = run_tool(qemu_io, "-f", "qcow2", *args, target, check=False).stdout
    results = []
    for line in out.splitlines():
        if line.startswith(("read failed: ", "write failed: ")):
            msg = line.split(": ", 1)[1]
            results.append(next(n for n in (errno.EIO, errno.ENOSPC) if os.strerror(n) == msg))
        elif line.startswith(("read 4096/4096", "wrote 4096/4096")):
            results.append(0)
    return results


@pytest.mark.parametrize("case", sorted(DIFF_CASES))
def test_same_outcomes_as_qemu(tmp_path, qemu_img, qemu_io, case):
    pytest.importorskip("blockbed.block.qcow2")
    text, ops = DIFF_CASES[case]
    conf = config(tmp_path, text)
    results = {}
    for who in ("qemu", "blockbed"):
        img = str(tmp_path / f"{who}.qcow2")
        run_tool(qemu_img, "create", "-q", "-f", "qcow2", img, "1M")
        run_tool(qemu_io, "-f", "qcow2", "-c", "write -P 0x33 0 64k", img)
        if who == "qemu":
            results[who] = _qemu_results(qemu_io, f"blkdebug:{conf}:{img}", ops)
            continue
        be = BlockBackend(open_image(f"blkdebug:{conf}:{img}", "qcow2"), werror="report")
        buf = memoryview(bytearray(b"\x44" * 4096))
        results[who] = [-(be.readv(0, [buf]) if op == "read" else be.writev(0, [buf]))
                        for op in ops]
        be.close()
    assert len(results["qemu"]) == len(ops)
    assert results["blockbed"] == results["qemu"]
