"""Shared helpers for the LSI qtest tests: a machine with the chip, and a
standard SCRIPTS program (select, IDENTIFY, CDB, data, status, messages,
disconnect/reselect) assembled with blockbed.devices.lsi53c895a.asm."""

from __future__ import annotations

import struct

from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from blockbed.devices.lsi53c895a import LSI53C895A
from blockbed.devices.lsi53c895a import asm as A
from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.scsi import DiskIdentity, ScsiDisk
from blockbed.machine.board import Machine, MachineConfig
from blockbed.machine.qtest import QTest

Phase = A.Phase
SCRIPT = 0x10000
TABLE = 0x20000
MSGOUT = 0x21000
CDB = 0x21100
STATUS = 0x21200
MSGIN = 0x21300
DATA = 0x30000

DONE, ERR_PHASE, ERR_SIGP, ERR_RESEL = 0x01, 0xE1, 0xE2, 0xE3


def program(items) -> tuple[bytes, dict[str, int]]:
    """Two-pass assembly: items are label strings or callables(labels) -> words."""
    labels: dict[str, int] = {}
    for rnd in range(2):
        addr = SCRIPT
        words: list[int] = []
        for it in items:
            if isinstance(it, str):
                labels[it] = addr
                continue
            w = it(labels if rnd else _Zero())
            words += w
            addr += 4 * len(w)
    return struct.pack(f"<{len(words)}I", *words), labels


class _Zero(dict):
    def __missing__(self, key):
        return 0


def standard_script():
    L = lambda f: f  # noqa: E731
    return program([
        "start",
        L(lambda l: A.select_table(0, l["resel_err"])),
        L(lambda l: A.move_table(Phase.MSG_OUT, 8)),
        L(lambda l: A.move_table(Phase.COMMAND, 16)),
        "loop",
        L(lambda l: A.jump(l["di"], when=Phase.DATA_IN)),
        L(lambda l: A.jump(l["do"], when=Phase.DATA_OUT)),
        L(lambda l: A.jump(l["st"], when=Phase.STATUS)),
        L(lambda l: A.jump(l["mi"], when=Phase.MSG_IN)),
        L(lambda l: A.interrupt(ERR_PHASE)),
        "di",
        L(lambda l: A.move_table(Phase.DATA_IN, 24)),
        L(lambda l: A.jump(l["loop"])),
        "do",
        L(lambda l: A.move_table(Phase.DATA_OUT, 24)),
        L(lambda l: A.jump(l["loop"])),
        "st",
        L(lambda l: A.move_table(Phase.STATUS, 32)),
        L(lambda l: A.jump(l["loop"])),
        "mi",
        L(lambda l: A.move_table(Phase.MSG_IN, 40)),
        L(lambda l: A.jump(l["complete"], data=(0x00, 0))),
        L(lambda l: A.jump(l["disc"], data=(0x04, 0))),
        L(lambda l: A.clear_bits(ack=True)),
        L(lambda l: A.jump(l["loop"])),
        "disc",
        L(lambda l: A.clear_bits(ack=True)),
        L(lambda l: A.wait_disconnect()),
        L(lambda l: A.wait_reselect(l["sigp"])),
        L(lambda l: A.move_table(Phase.MSG_IN, 40)),
        L(lambda l: A.clear_bits(ack=True)),
        L(lambda l: A.jump(l["loop"])),
        "complete",
        L(lambda l: A.clear_bits(ack=True)),
        L(lambda l: A.wait_disconnect()),
        L(lambda l: A.interrupt(DONE)),
        "sigp",
        L(lambda l: A.interrupt(ERR_SIGP)),
        "resel_err",
        L(lambda l: A.interrupt(ERR_RESEL)),
    ])


class Rig:
    """A machine with one LSI controller and disks at the given targets
    (``unit_attention=False``: without the disks' power-on UNIT ATTENTION)."""

    def __init__(self, targets=(0,), blocks=2048, memory_mib=16, unit_attention=True):
        self.m = Machine(MachineConfig(memory_mib=memory_mib))
        self.chip = LSI53C895A()
        self.drivers = {}
        self.disks = {}
        for t in targets:
            drv = MemoryDriver(bytes(blocks * 512))
            be = BlockBackend(drv)
            self.drivers[t] = drv
            self.disks[t] = ScsiDisk(be, DiskIdentity(device_id=f"d{t}"))
            if not unit_attention:
                self.disks[t].unit_attention = None     # skip the power-on UNIT ATTENTION
            self.chip.add_target(t, self.disks[t])
        self.m.add_pci(self.chip)
        self.qt = QTest(self.m)
        self.qt.boot_firmware()
        self.mmio = self.qt.bar_address(self.chip, 1)
        self.io = self.qt.bar_address(self.chip, 0)
        self.ram = self.qt.bar_address(self.chip, 2)
        self.script, self.labels = standard_script()
        self.qt.memwrite(SCRIPT, self.script)

    # registers through the memory BAR
    def rb(self, off):
        return self.qt.readb(self.mmio + off)

    def wb(self, off, v):
        self.qt.writeb(self.mmio + off, v)

    def rl(self, off):
        return self.qt.readl(self.mmio + off)

    def wl(self, off, v):
        self.qt.writel(self.mmio + off, v)

    def start(self, addr):
        self.wl(R.DSP, addr)

    def wait_interrupt(self, limit=200):
        """Poll ISTAT0 (stepping virtual time) until DIP/SIP/INTF; returns (istat, dstat, sist0, sist1)."""
        for _ in range(limit):
            ist = self.rb(R.ISTAT0)
            if ist & (R.ISTAT0_DIP | R.ISTAT0_SIP | R.ISTAT0_INTF):
                dstat = self.rb(R.DSTAT) if ist & R.ISTAT0_DIP else 0
                sist0 = self.rb(R.SIST0) if ist & R.ISTAT0_SIP else 0
                sist1 = self.rb(R.SIST1) if ist & R.ISTAT0_SIP else 0
                return ist, dstat, sist0, sist1
            self.qt.clock_step(1)
        raise AssertionError("no interrupt")

    def command(self, target, cdb, data_len=0, out=b"", lun=0, identify=None):
        """Run one command through the standard script; returns (status, dsps, data, intr)."""
        qt = self.qt
        ident = identify if identify is not None else (0x80 | 0x40 | lun)
        qt.memwrite(MSGOUT, bytes([ident]))
        qt.memwrite(CDB, bytes(cdb))
        qt.memwrite(STATUS, b"\xee")
        if out:
            qt.memwrite(DATA, out)
        table = struct.pack("<IIIIIIIIIIII", target << 16, 0, 1, MSGOUT, len(cdb), CDB,
                            max(data_len, len(out)) or 1, DATA, 1, STATUS, 1, MSGIN)
        qt.memwrite(TABLE, table)
        qt.memwrite(SCRIPT, self.script)          # tests may have replaced it
        self.wl(R.DSA, TABLE)
        self.start(self.labels["start"])
        intr = self.wait_interrupt()
        status = qt.memread(STATUS, 1)[0]
        dsps = self.rl(R.DSPS)
        data = qt.memread(DATA, data_len) if data_len else b""
        return status, dsps, data, intr
