"""Unit tests of the SCSI disk command layer: each command's data, status and sense."""

from __future__ import annotations

import errno
import struct

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.driver import BlockError
from blockbed.block.memory import MemoryDriver
from blockbed.devices.scsi import Direction, DiskIdentity, ScsiDisk, Status, parse_fixed_sense
from blockbed.devices.scsi.constants import (CAPACITY_CHANGED, INVALID_FIELD, INVALID_OPCODE,
                                             INVALID_PARAM, LBA_OUT_OF_RANGE, LUN_NOT_SUPPORTED,
                                             MISCOMPARE_VERIFY, NO_SENSE, READ_ERROR,
                                             RESET_OCCURRED, SAVING_NOT_SUPPORTED, WRITE_ERROR,
                                             WRITE_PROTECTED, Sense)

BLOCKS = 2048


class FailingDriver(MemoryDriver):
    """Fails reads/writes touching byte ``bad`` with EIO (a bad sector)."""

    def __init__(self, data, bad: int):
        super().__init__(data)
        self.bad = bad

    def read(self, offset, buf):
        if offset <= self.bad < offset + len(buf):
            raise BlockError(errno.EIO, "bad sector")
        super().read(offset, buf)

    def write(self, offset, data, fua=False):
        if offset <= self.bad < offset + len(data):
            raise BlockError(errno.EIO, "bad sector")
        super().write(offset, data, fua)


def make(cache="writeback", read_only=False, drv=None, **ident):
    drv = drv or MemoryDriver(bytes(BLOCKS * 512))
    be = BlockBackend(drv, cache=cache, read_only=read_only)
    disk = ScsiDisk(be, DiskIdentity(**ident) if ident else None, power_on_ua=False)
    return disk, be, drv


def run(disk, cdb, out: bytes = b"", lun=0, piece=None):
    """Run one command; returns (status, data-in bytes, sense)."""
    req = disk.request(bytes(cdb), lun)
    data = bytearray()
    if req.status is None:
        n = req.length
        step = piece or max(n, 1)
        pos = 0
        while pos < n:
            k = min(step, n - pos)
            if req.direction is Direction.IN:
                buf = bytearray(k)
                if not req.read(pos, memoryview(buf)):
                    break
                data += buf
            else:
                if not req.write(pos, memoryview(out)[pos:pos + k]):
                    break
            pos += k
        req.finish()
    return req.status, bytes(data), req.sense


def sense_of(r) -> Sense:
    assert r[0] == Status.CHECK_CONDITION, r
    return parse_fixed_sense(r[2])


def cdb10(op, lba, count, b1=0):
    return struct.pack(">BBIBHB", op, b1, lba, 0, count, 0)


def cdb16(op, lba, count, b1=0):
    return struct.pack(">BBQIBB", op, b1, lba, count, 0, 0)


def test_unit_attention_at_power_on_then_cleared():
    be = BlockBackend(MemoryDriver(bytes(BLOCKS * 512)))
    disk = ScsiDisk(be)
    # INQUIRY is exempt from the unit attention.
    assert run(disk, [0x12, 0, 0, 0, 36, 0])[0] == Status.GOOD
    assert sense_of(run(disk, [0, 0, 0, 0, 0, 0])) == RESET_OCCURRED
    assert run(disk, [0, 0, 0, 0, 0, 0])[0] == Status.GOOD


def test_request_sense_returns_unit_attention_and_last_error():
    disk, be, _ = make()
    disk.reset()
    st, data, _ = run(disk, [0x03, 0, 0, 0, 18, 0])
    assert st == Status.GOOD and len(data) == 18 and parse_fixed_sense(data) == RESET_OCCURRED
    assert data[0] == 0x70 and data[7] == 10
    # After an error, REQUEST SENSE reports it once, then NO SENSE.
    assert sense_of(run(disk, [0xFF] + [0] * 11)) == INVALID_OPCODE
    assert parse_fixed_sense(run(disk, [0x03, 0, 0, 0, 18, 0])[1]) == INVALID_OPCODE
    assert parse_fixed_sense(run(disk, [0x03, 0, 0, 0, 18, 0])[1]) == NO_SENSE
    assert sense_of(run(disk, [0x03, 1, 0, 0, 18, 0])) == INVALID_FIELD   # DESC=1
    assert len(run(disk, [0x03, 0, 0, 0, 8, 0])[1]) == 8                   # allocation length


def test_capacity_change_unit_attention():
    disk, be, _ = make()
    assert be.resize((BLOCKS + 8) * 512) == 0
    assert sense_of(run(disk, [0x25] + [0] * 9)) == CAPACITY_CHANGED
    st, data, _ = run(disk, [0x25] + [0] * 9)
    assert st == Status.GOOD and struct.unpack(">II", data) == (BLOCKS + 8 - 1, 512)


def test_standard_inquiry():
    disk, _, _ = make()
    st, d, _ = run(disk, [0x12, 0, 0, 0, 36, 0])
    assert st == Status.GOOD and len(d) == 36
    assert d[0] == 0 and d[1] == 0 and d[2] == 5 and d[3] == 0x12 and d[4] == 31 and d[7] == 0x12
    assert d[8:16] == b"QEMU    " and d[16:32] == b"QEMU HARDDISK   " and d[32:36] == b"2.5+"
    st, d, _ = run(disk, [0x12, 0, 0, 0, 96, 0])
    assert len(d) == 96 and d[4] == 91
    assert len(run(disk, [0x12, 0, 0, 0, 5, 0])[1]) == 5
    assert sense_of(run(disk, [0x12, 0, 0x80, 0, 36, 0])) == INVALID_FIELD   # page without EVPD
    assert sense_of(run(disk, [0x12, 2, 0, 0, 36, 0])) == INVALID_FIELD      # CMDDT


def test_vpd_pages():
    disk, _, _ = make(serial="SER123", device_id="d0")
    d = run(disk, [0x12, 1, 0x00, 0, 255, 0])[1]
    assert d[:4] == bytes([0, 0, 0, 6]) and list(d[4:]) == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    assert run(disk, [0x12, 1, 0x80, 0, 255, 0])[1] == bytes([0, 0x80, 0, 6]) + b"SER123"
    assert run(disk, [0x12, 1, 0x83, 0, 255, 0])[1] == bytes([0, 0x83, 0, 6, 2, 0, 0, 2]) + b"d0"
    b0 = run(disk, [0x12, 1, 0xB0, 0, 255, 0])[1]
    assert b0[3] == 0x3C and b0[4] & 1                                # WSNZ
    assert struct.unpack_from(">II", b0, 20) == (1 << 21, 255)       # max unmap LBAs / descriptors
    b1 = run(disk, [0x12, 1, 0xB1, 0, 255, 0])[1]
    assert b1[1] == 0xB1 and b1[3] == 0x3C
    b2 = run(disk, [0x12, 1, 0xB2, 0, 255, 0])[1]
    assert b2 == bytes([0, 0xB2, 0, 4, 0, 0xE0, 2, 0])
    assert sense_of(run(disk, [0x12, 1, 0x99, 0, 255, 0])) == INVALID_FIELD
    # No serial: page 0x80 is not listed and not served.
    disk2, _, _ = make()
    assert 0x80 not in run(disk2, [0x12, 1, 0, 0, 255, 0])[1][4:]
    assert sense_of(run(disk2, [0x12, 1, 0x80, 0, 255, 0])) == INVALID_FIELD


def test_read_capacity():
    disk, _, _ = make()
    assert run(disk, [0x25] + [0] * 9)[1] == struct.pack(">II", BLOCKS - 1, 512)
    assert sense_of(run(disk, [0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0])) == INVALID_FIELD  # LBA w/o PMI
    d = run(disk, [0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0])[1]
    assert len(d) == 32 and struct.unpack_from(">QI", d) == (BLOCKS - 1, 512) and d[14] == 0x80
    assert sense_of(run(disk, [0x9E, 0x11] + [0] * 8 + [0, 0, 0, 32, 0, 0])) == INVALID_FIELD


@pytest.mark.parametrize("kind", [6, 10, 12, 16])
def test_read_write_all_sizes(kind):
    disk, be, drv = make()
    data = bytes(range(256)) * 8          # 4 blocks
    lba = 100
    if kind == 6:
        w, r = [0x0A, 0, 0, lba, 4, 0], [0x08, 0, 0, lba, 4, 0]
    elif kind == 10:
        w, r = cdb10(0x2A, lba, 4), cdb10(0x28, lba, 4)
    elif kind == 12:
        w, r = struct.pack(">BBIIBB", 0xAA, 0, lba, 4, 0, 0), struct.pack(">BBIIBB", 0xA8, 0, lba, 4, 0, 0)
    else:
        w, r = cdb16(0x8A, lba, 4), cdb16(0x88, lba, 4)
    assert run(disk, w, data, piece=700)[0] == Status.GOOD       # odd scatter pieces
    assert drv.buf[lba * 512:(lba + 4) * 512] == data
    st, got, _ = run(disk, r, piece=300)
    assert st == Status.GOOD and got == data


def test_read6_zero_means_256():
    disk, _, _ = make()
    req = disk.request(bytes([0x08, 0, 0, 0, 0, 0]))
    assert req.direction is Direction.IN and req.length == 256 * 512


def test_fua_reaches_backend():
    disk, be, _ = make()
    be.request_log.enabled = True
    run(disk, cdb10(0x2A, 0, 1, b1=0x08), bytes(512))
    run(disk, cdb10(0x2A, 1, 1), bytes(512))
    writes = [e for e in be.request_log if e.kind == "write"]
    assert [w.fua for w in writes] == [True, False]


def test_out_of_range_and_invalid_fields():
    disk, _, _ = make()
    assert sense_of(run(disk, cdb10(0x28, BLOCKS - 1, 2))) == LBA_OUT_OF_RANGE
    assert sense_of(run(disk, cdb16(0x8A, 1 << 40, 1))) == LBA_OUT_OF_RANGE
    assert sense_of(run(disk, cdb10(0x28, 0, 1, b1=0x20))) == INVALID_FIELD     # RDPROTECT
    assert sense_of(run(disk, [0x28, 0, 0])) == INVALID_FIELD                    # short CDB
    assert sense_of(run(disk, [0x60] + [0] * 15)) == INVALID_OPCODE             # reserved group 3
    assert sense_of(run(disk, [0x07] + [0] * 5)) == INVALID_OPCODE              # REASSIGN BLOCKS
    assert run(disk, [0x04] + [0] * 5)[0] == Status.GOOD                        # FORMAT UNIT
    assert sense_of(run(disk, [0x04, 0x10] + [0] * 4)) == INVALID_FIELD         # with FMTDATA
    assert sense_of(run(disk, b"")) == INVALID_OPCODE
    assert run(disk, cdb10(0x28, 0, 0)) == (Status.GOOD, b"", b"")              # zero blocks


def test_medium_error_on_eio():
    drv = FailingDriver(bytes(BLOCKS * 512), bad=10 * 512 + 3)
    disk, _, _ = make(drv=drv)
    assert sense_of(run(disk, cdb10(0x28, 8, 4))) == READ_ERROR
    assert sense_of(run(disk, cdb10(0x2A, 10, 1), bytes(512))) == WRITE_ERROR
    assert run(disk, cdb10(0x28, 0, 4))[0] == Status.GOOD


def test_read_only_write_protected():
    disk, _, _ = make(read_only=True)
    assert sense_of(run(disk, cdb10(0x2A, 0, 1), bytes(512))) == WRITE_PROTECTED
    assert run(disk, [0x1A, 0, 0x3F, 0, 255, 0])[1][2] & 0x80                   # WP in MODE SENSE


def test_verify():
    disk, _, drv = make()
    drv.buf[0:512] = b"\x5a" * 512
    assert run(disk, cdb10(0x2F, 0, 4))[0] == Status.GOOD                         # BYTCHK=0
    assert run(disk, cdb10(0x2F, 0, 1, b1=0x02), b"\x5a" * 512)[0] == Status.GOOD
    r = run(disk, cdb10(0x2F, 0, 1, b1=0x02), b"\x5a" * 100 + b"\0" * 412)
    assert sense_of(r) == MISCOMPARE_VERIFY and r[2][0] & 0x80                    # VALID + info
    assert sense_of(run(disk, cdb10(0x2F, BLOCKS, 1))) == LBA_OUT_OF_RANGE
    assert sense_of(run(disk, cdb10(0x2F, 0, 1, b1=0x04))) == INVALID_FIELD       # BYTCHK=2


@pytest.mark.parametrize("op,immed", [(0x35, 0), (0x35, 2), (0x91, 0), (0x91, 2)])
def test_synchronize_cache(op, immed):
    disk, be, drv = make()
    before = drv.flushes
    c = cdb10(op, 0, 0, b1=immed) if op == 0x35 else cdb16(op, 0, 0, b1=immed)
    assert run(disk, c)[0] == Status.GOOD
    assert drv.flushes == before + 1


def test_mode_sense_caching_current_changeable_default():
    disk, be, _ = make(cache="writeback")
    d = run(disk, [0x1A, 0x08, 0x08, 0, 255, 0])[1]            # DBD, caching, current
    assert d[0] == len(d) - 1 and d[3] == 0 and d[4:6] == b"\x08\x12" and d[6] & 0x04
    ch = run(disk, [0x1A, 0x08, 0x48, 0, 255, 0])[1]           # changeable
    assert ch[6] == 0x04 and not any(ch[7:]) and ch[4] == 0x08
    be.set_write_cache(False)
    assert not run(disk, [0x1A, 0x08, 0x08, 0, 255, 0])[1][6] & 0x04
    assert run(disk, [0x1A, 0x08, 0x88, 0, 255, 0])[1][6] & 0x04     # default stays WCE=1
    assert sense_of(run(disk, [0x1A, 0x08, 0xC8, 0, 255, 0])) == SAVING_NOT_SUPPORTED


def test_mode_sense_all_pages_and_block_descriptor():
    disk, _, _ = make()
    d = run(disk, [0x1A, 0, 0x3F, 0, 255, 0])[1]
    assert d[3] == 8 and int.from_bytes(d[5:8], "big") == BLOCKS and int.from_bytes(d[9:12], "big") == 512
    body = d[12:]
    codes, pos = [], 0
    while pos < len(body):
        codes.append(body[pos] & 0x3F)
        pos += body[pos + 1] + 2
    assert codes == [0x01, 0x08, 0x0A] and pos == len(body)
    d10 = run(disk, [0x5A, 0, 0x3F, 0, 0, 0, 0, 1, 0, 0])[1]
    assert struct.unpack_from(">H", d10)[0] == len(d10) - 2 and struct.unpack_from(">H", d10, 6)[0] == 8
    assert d10[16:] == body
    ctl = run(disk, [0x1A, 8, 0x0A, 0, 255, 0])[1][4:]
    assert ctl[:2] == b"\x0a\x0a" and ctl[3] == 0x10
    assert not any(run(disk, [0x1A, 8, 0x4A, 0, 255, 0])[1][6:])               # nothing changeable
    assert sense_of(run(disk, [0x1A, 0, 0x1C, 0, 255, 0])) == INVALID_FIELD    # unsupported page
    assert sense_of(run(disk, [0x1A, 0, 0x08, 1, 255, 0])) == INVALID_FIELD    # subpage
    assert len(run(disk, [0x1A, 0, 0x3F, 0, 10, 0])[1]) == 10                  # truncated


@pytest.mark.parametrize("ten", [False, True])
def test_mode_select_changes_wce(ten):
    disk, be, _ = make(cache="writeback")
    page = bytearray(run(disk, [0x1A, 8, 0x08, 0, 255, 0])[1][4:])
    page[2] &= ~0x04
    hdr = bytes(8) if ten else bytes(4)
    plist = hdr + bytes(page)
    cdb = [0x55, 0x10, 0, 0, 0, 0, 0, 0, len(plist), 0] if ten else [0x15, 0x10, 0, 0, len(plist), 0]
    assert run(disk, cdb, plist)[0] == Status.GOOD
    assert be.write_cache_enabled is False
    page[2] |= 0x04
    plist = hdr + bytes(page)
    assert run(disk, cdb, plist)[0] == Status.GOOD and be.write_cache_enabled is True


def test_mode_select_rejects_unchangeable_bits_and_bad_lists():
    disk, be, _ = make()
    page = bytearray(run(disk, [0x1A, 8, 0x08, 0, 255, 0])[1][4:])
    page[2] |= 0x01                                      # RCD is not changeable
    plist = bytes(4) + bytes(page)
    assert sense_of(run(disk, [0x15, 0x10, 0, 0, len(plist), 0], plist)) == INVALID_PARAM
    assert sense_of(run(disk, [0x15, 0x11, 0, 0, 0, 0])) == INVALID_FIELD      # SP
    assert sense_of(run(disk, [0x15, 0x00, 0, 0, 0, 0])) == INVALID_FIELD      # PF=0
    ctl = run(disk, [0x1A, 8, 0x0A, 0, 255, 0])[1][4:]
    bad = bytearray(ctl)
    bad[3] = 0
    pl = bytes(4) + bytes(bad)
    assert sense_of(run(disk, [0x15, 0x10, 0, 0, len(pl), 0], pl)) == INVALID_PARAM
    pl = bytes(4) + bytes(ctl)
    assert run(disk, [0x15, 0x10, 0, 0, len(pl), 0], pl)[0] == Status.GOOD   # unchanged is fine
    # block descriptor with a different block size
    pl = bytes([0, 0, 0, 8]) + bytes([0, 0, 0, 0, 0, 0, 0x10, 0])
    assert sense_of(run(disk, [0x15, 0x10, 0, 0, len(pl), 0], pl)) == INVALID_PARAM


def test_unmap_and_write_same():
    disk, be, drv = make()
    be.discard_mode = type(be.discard_mode)("unmap")
    drv.buf[:] = b"\xff" * len(drv.buf)
    # WRITE SAME(10) with a pattern
    pat = bytes(range(256)) * 2
    assert run(disk, cdb10(0x41, 4, 3), pat)[0] == Status.GOOD
    assert drv.buf[4 * 512:7 * 512] == pat * 3
    # WRITE SAME(16) with UNMAP and a zero block: zeroes (may unmap)
    assert run(disk, cdb16(0x93, 4, 2, b1=0x08), bytes(512))[0] == Status.GOOD
    assert drv.buf[4 * 512:6 * 512] == bytes(1024)
    # NDOB: no data-out phase
    req = disk.request(cdb16(0x93, 6, 1, b1=0x09))
    assert req.status == Status.GOOD and drv.buf[6 * 512:7 * 512] == bytes(512)
    assert sense_of(run(disk, cdb10(0x41, 0, 0), bytes(512))) == INVALID_FIELD   # WSNZ
    assert sense_of(run(disk, cdb10(0x41, BLOCKS, 1), bytes(512))) == LBA_OUT_OF_RANGE
    # UNMAP two ranges
    plist = struct.pack(">HH4x", 6 + 32, 32) + struct.pack(">QI4x", 10, 2) + struct.pack(">QI4x", 20, 1)
    assert run(disk, [0x42, 0, 0, 0, 0, 0, 0, 0, len(plist), 0], plist)[0] == Status.GOOD
    assert drv.buf[10 * 512:12 * 512] == bytes(1024) and drv.buf[20 * 512:21 * 512] == bytes(512)
    assert drv.buf[12 * 512] == 0xFF
    bad = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", BLOCKS, 1)
    assert sense_of(run(disk, [0x42, 0, 0, 0, 0, 0, 0, 0, len(bad), 0], bad)) == LBA_OUT_OF_RANGE
    assert sense_of(run(disk, [0x42, 1, 0, 0, 0, 0, 0, 0, 0, 0])) == INVALID_FIELD   # ANCHOR


def test_report_luns_and_absent_lun():
    disk, _, _ = make()
    d = run(disk, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0])[1]
    assert d == struct.pack(">II", 8, 0) + bytes(8)
    assert sense_of(run(disk, [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])) == INVALID_FIELD
    assert run(disk, [0x12, 0, 0, 0, 36, 0], lun=3)[1][0] == 0x7F
    assert sense_of(run(disk, [0, 0, 0, 0, 0, 0], lun=3)) == LUN_NOT_SUPPORTED


def test_start_stop_unit():
    disk, _, _ = make()
    assert run(disk, [0x1B, 0, 0, 0, 0, 0])[0] == Status.GOOD and disk.motor_stopped
    assert run(disk, [0x1B, 1, 0, 0, 1, 0])[0] == Status.GOOD and not disk.motor_stopped


def test_cancel():
    disk, _, _ = make()
    req = disk.request(cdb10(0x28, 0, 1))
    req.cancel()
    assert req.cancelled and req.status == Status.CHECK_CONDITION
    assert not req.read(0, memoryview(bytearray(512)))
