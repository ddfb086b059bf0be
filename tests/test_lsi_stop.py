"""werror/rerror=stop through the LSI: the backend parks a request, SCRIPTS pause with
no interrupt and nothing completes; after resume() the request is retried and completes."""

from __future__ import annotations

import errno
import struct

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.driver import BlockError
from blockbed.block.memory import MemoryDriver
from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.scsi import DiskIdentity, ScsiDisk, Status
from blockbed.devices.scsi.disk import Direction

from lsi_helpers import CDB, DATA, DONE, MSGIN, MSGOUT, STATUS, TABLE, Rig


class Flaky(MemoryDriver):
    """Fails the named operations with EIO while ``failing`` holds them."""

    def __init__(self, size):
        super().__init__(bytes(size))
        self.failing: set[str] = set()

    def read(self, offset, buf):
        if "read" in self.failing:
            raise BlockError(errno.EIO, "injected")
        super().read(offset, buf)

    def write(self, offset, data, fua=False):
        if "write" in self.failing:
            raise BlockError(errno.EIO, "injected")
        super().write(offset, data, fua)

    def flush(self):
        if "flush" in self.failing:
            raise BlockError(errno.EIO, "injected")
        super().flush()


def cdb10(op, lba, count, b1=0):
    return struct.pack(">BBIBHB", op, b1, lba, 0, count, 0)


@pytest.fixture
def setup():
    rig = Rig(targets=(1,))
    drv = Flaky(2048 * 512)
    be = BlockBackend(drv, werror="stop", rerror="stop")
    stops = []
    be.on_stop = stops.append
    rig.chip.targets[0] = ScsiDisk(be, DiskIdentity(), power_on_ua=False)
    return rig, drv, be, stops


def start(rig, cdb, length, out=b""):
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\xc0")
    qt.memwrite(CDB, bytes(cdb))
    qt.memwrite(STATUS, b"\xee")
    if out:
        qt.memwrite(DATA, out)
    qt.memwrite(TABLE, struct.pack("<12I", 0, 0, 1, MSGOUT, len(cdb), CDB, max(length, 1), DATA,
                                   1, STATUS, 1, MSGIN))
    qt.memwrite(0x10000, rig.script)
    rig.wl(R.DSA, TABLE)
    rig.start(rig.labels["start"])


def parked(rig):
    rig.qt.clock_step(50)
    assert rig.chip.stalled
    assert not rig.rb(R.ISTAT0) & (R.ISTAT0_DIP | R.ISTAT0_SIP)
    assert rig.qt.memread(STATUS, 1) == b"\xee"                 # nothing completed


def finish(rig):
    rig.chip.resume()
    _, dstat, s0, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == DONE, (dstat, s0)
    return rig.qt.memread(STATUS, 1)[0]


def test_write_parked_then_retried(setup):
    rig, drv, be, stops = setup
    drv.failing = {"write"}
    start(rig, cdb10(0x2A, 10, 2), 1024, out=b"\x42" * 1024)
    parked(rig)
    assert len(stops) == 1 and stops[0].operation == "write"
    drv.failing = set()
    assert finish(rig) == 0
    assert drv.buf[10 * 512:12 * 512] == b"\x42" * 1024


def test_read_parked_after_reselection(setup):
    rig, drv, be, stops = setup
    drv.buf[0:512] = b"\x99" * 512
    drv.failing = {"read"}
    start(rig, cdb10(0x28, 0, 1), 512)
    parked(rig)
    drv.failing = set()
    assert finish(rig) == 0 and rig.qt.memread(DATA, 512) == b"\x99" * 512


def test_still_failing_parks_again(setup):
    rig, drv, be, stops = setup
    drv.failing = {"write"}
    start(rig, cdb10(0x2A, 0, 1), 512, out=bytes(512))
    parked(rig)
    rig.chip.resume()
    parked(rig)
    assert len(stops) == 2
    drv.failing = set()
    assert finish(rig) == 0


def test_synchronize_cache_parked(setup):
    rig, drv, be, stops = setup
    drv.failing = {"flush"}
    start(rig, [0x35] + [0] * 9, 0)
    parked(rig)
    drv.failing = set()
    before = drv.flushes
    assert finish(rig) == 0 and drv.flushes == before + 1


def test_mode_select_parked_in_its_flush(setup):
    rig, drv, be, stops = setup
    disk = rig.chip.targets[0]
    page = bytearray(20)
    page[0], page[1] = 0x08, 0x12                                   # WCE=0
    drv.failing = {"flush"}
    start(rig, [0x15, 0x10, 0, 0, 24, 0], 24, out=bytes(4) + bytes(page))
    parked(rig)
    assert be.write_cache_enabled                                   # not changed yet
    drv.failing = set()
    assert finish(rig) == 0 and not be.write_cache_enabled


def test_disk_level_retry():
    drv = Flaky(64 * 512)
    be = BlockBackend(drv, werror="stop")
    be.on_stop = lambda r: None
    disk = ScsiDisk(be, power_on_ua=False)
    drv.failing = {"flush"}
    req = disk.request(bytes([0x35] + [0] * 9))
    assert req.stopped and req.status is None
    drv.failing = set()
    req.retry()
    assert req.status == Status.GOOD and not req.stopped
