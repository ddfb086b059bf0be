"""Random SCRIPTS and random CDBs: the device never raises, the host stays healthy,
and the controller still works afterwards."""

from __future__ import annotations

import random
import struct

from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.scsi import Direction

from lsi_helpers import DONE, SCRIPT, TABLE, Rig


def test_random_scripts_never_raise():
    rig = Rig(targets=(0, 3), unit_attention=False)
    rnd = random.Random(1234)
    ram = 16 << 20
    for _ in range(150):
        words = []
        for _ in range(48):
            top = rnd.choice([0x00, 0x01, 0x08, 0x09, 0x0E, 0x0F, 0x18, 0x40, 0x41, 0x43, 0x48,
                              0x50, 0x58, 0x60, 0x78, 0x70, 0x68, 0x80, 0x88, 0x90, 0x98, 0xA0,
                              0xC0, 0xE0, 0xE1, 0xF1, rnd.randrange(256)])
            words.append((top << 24) | rnd.randrange(1 << 24))
            # second word: somewhere in RAM near our buffers, the chip's BARs, or anywhere
            words.append(rnd.choice([SCRIPT + 8 * rnd.randrange(48), TABLE + rnd.randrange(64),
                                     rig.mmio + rnd.randrange(0x100), rig.ram + rnd.randrange(0x2000),
                                     rnd.randrange(ram), rnd.randrange(1 << 32)]))
        rig.qt.memwrite(SCRIPT, struct.pack(f"<{len(words)}I", *words))
        rig.qt.memwrite(TABLE, bytes(rnd.randrange(256) for _ in range(64)))
        rig.wl(R.DSA, TABLE)
        rig.wb(R.DCNTL, 0)
        rig.start(SCRIPT)
        rig.qt.clock_step(20)
        # whatever happened, clean up like a driver would
        rig.rb(R.DSTAT), rig.rb(R.SIST0), rig.rb(R.SIST1)
        rig.wb(R.ISTAT0, R.ISTAT0_SRST)
        rig.wb(R.ISTAT0, 0)
    for d in rig.disks.values():
        d.unit_attention = None
    st, dsps, data, _ = rig.command(0, [0x12, 0, 0, 0, 36, 0], 36)
    assert (st, dsps) == (0, DONE) and data[8:12] == b"QEMU"


def test_random_cdbs_never_raise():
    rig = Rig(targets=(0,))
    disk = rig.disks[0]
    rnd = random.Random(99)
    ops = [0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x28, 0x2A, 0x2F, 0x35, 0x41,
           0x42, 0x55, 0x5A, 0x88, 0x8A, 0x8F, 0x91, 0x93, 0x9E, 0xA0, 0xA8, 0xAA, 0xAF]
    for _ in range(3000):
        n = rnd.choice([0, 1, 3, 6, 10, 12, 16])
        cdb = bytearray(rnd.randrange(256) for _ in range(n))
        if n and rnd.random() < 0.8:
            cdb[0] = rnd.choice(ops)
            for i in range(2, min(n, 10)):        # keep lengths mostly small
                if rnd.random() < 0.5:
                    cdb[i] = 0
        req = disk.request(bytes(cdb), lun=rnd.choice([0, 0, 0, 1]))
        if req.status is None:
            length = min(req.length, 1 << 16)
            buf = bytearray(rnd.randrange(256) for _ in range(min(length, 64))) + bytes(max(0, length - 64))
            pos = 0
            while pos < length:
                k = min(length - pos, rnd.choice([1, 7, 512, 4096]))
                view = memoryview(buf)[pos:pos + k]
                ok = req.read(pos, view) if req.direction is Direction.IN else req.write(pos, view)
                if not ok:
                    break
                pos += k
            if req.length <= 1 << 16:
                req.finish()
            else:
                req.cancel()
        assert req.status is None or req.status in (0, 2)
