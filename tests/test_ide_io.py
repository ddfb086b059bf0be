"""PIIX3 IDE at the port level (qtest): identity, PIO (LBA28/LBA48 with HOB read-back,
READ/WRITE MULTIPLE), bus-master DMA (PRD tables, 64 KiB zero counts), device select,
SRST, IRQ 14/15, and hostile cases (short PRD tables, bus mastering off, absent slave)."""

from __future__ import annotations

import os
import struct

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from blockbed.devices import ide as I
from blockbed.machine.board import Machine, MachineConfig
from blockbed.machine.pci import CMD_BUS_MASTER
from blockbed.machine.qtest import QTest
from libqos_ata import Alloc

SEC = 512
P, C, P2, C2 = 0x1F0, 0x3F6, 0x170, 0x376


class IdeQ:
    def __init__(self, drives=((0, 0, 4 << 20),), nien=True):
        self.m = Machine(MachineConfig(memory_mib=64))
        self.backends = {}
        for bus, unit, size in drives:
            be = BlockBackend(MemoryDriver(size), request_log=True)
            I.attach(self.m, be, {"bus": bus, "unit": unit})
            self.backends[(bus, unit)] = be
        self.ide = self.m.pci.functions[(1 << 3) | 1]
        self.qt = QTest(self.m)
        self.qt.boot_firmware()
        self.bm = self.qt.bar_address(self.ide, 4)
        self.alloc = Alloc()
        if nien:
            self.qt.outb(C, 2)
            self.qt.outb(C2, 2)

    def wait(self, ctl=C):
        for _ in range(10000):
            st = self.qt.inb(ctl)
            if not st & 0x80:
                return st
        raise AssertionError("BSY stuck")

    def tf(self, cmd, lba=0, count=0, features=0, lba48=False, dev=0, base=P):
        o = self.qt.outb
        if lba48:
            o(base + 1, features >> 8)
            o(base + 2, count >> 8)
            o(base + 3, (lba >> 24) & 0xFF)
            o(base + 4, (lba >> 32) & 0xFF)
            o(base + 5, (lba >> 40) & 0xFF)
            o(base + 6, 0x40 | dev << 4)
        else:
            o(base + 6, 0x40 | dev << 4 | ((lba >> 24) & 0xF))
        o(base + 1, features & 0xFF)
        o(base + 2, count & 0xFF)
        o(base + 3, lba & 0xFF)
        o(base + 4, (lba >> 8) & 0xFF)
        o(base + 5, (lba >> 16) & 0xFF)
        o(base + 7, cmd)

    def pio_in(self, nwords, base=P, ctl=C):
        out = bytearray()
        st = self.wait(ctl)
        assert st & 0x08, hex(st)
        for _ in range(nwords):
            out += self.qt.inw(base).to_bytes(2, "little")
        return bytes(out)

    def pio_out(self, data, base=P, ctl=C):
        st = self.wait(ctl)
        assert st & 0x08, hex(st)
        for i in range(0, len(data), 2):
            self.qt.outw(base, int.from_bytes(data[i:i + 2], "little"))

    def prd(self, entries, ch=0):
        t = self.alloc(8 * len(entries), 8)
        raw = b"".join(struct.pack("<II", a, (n & 0xFFFF) | (0x80000000 if i == len(entries) - 1 else 0))
                       for i, (a, n) in enumerate(entries))
        self.qt.memwrite(t, raw)
        self.qt.outl(self.bm + 8 * ch + 4, t)

    def disk(self, bus=0, unit=0):
        return bytes(self.backends[(bus, unit)].root.buf)


@pytest.fixture
def q():
    return IdeQ()


def test_pci_identity_and_legacy_ports(q):
    cfg = q.qt.pci_config_read
    assert q.ide.devfn == (1 << 3) | 1
    assert cfg(q.ide, 0, 2) == 0x8086 and cfg(q.ide, 2, 2) == 0x7010
    assert cfg(q.ide, 8) >> 8 == 0x010180
    assert all(cfg(q.ide, 0x10 + 4 * i) == 0 for i in range(4))     # compatibility mode
    assert q.bm & 1 == 0 and cfg(q.ide, 0x20) & 1                   # BAR4 is I/O
    assert q.qt.inb(P + 7) == 0x50 and q.qt.inb(P + 2) == 1 and q.qt.inb(P + 3) == 1  # signature
    assert q.qt.inb(P2 + 7) == 0                                     # empty channel


def test_identify_pio(q):
    q.tf(0xEC)
    data = q.pio_in(256)
    w = struct.unpack("<256H", data)
    assert w[76] == 0 and w[75] == 0                  # parallel ATA: no NCQ
    assert w[100] | w[101] << 16 == (4 << 20) // SEC
    assert q.wait() == 0x50


@pytest.mark.parametrize("lba48", [False, True])
def test_pio_write_read_multi_sector(q, lba48):
    data = os.urandom(3 * SEC)
    lba = 0x1234
    q.tf(0x34 if lba48 else 0x30, lba=lba, count=3, lba48=lba48)
    for i in range(3):
        q.pio_out(data[i * SEC:(i + 1) * SEC])
    assert q.wait() == 0x50
    assert q.disk()[lba * SEC:(lba + 3) * SEC] == data
    q.tf(0x24 if lba48 else 0x20, lba=lba, count=3, lba48=lba48)
    got = b"".join(q.pio_in(256) for _ in range(3))
    assert got == data and q.wait() == 0x50


def test_pio_32bit_data_port(q):
    data = os.urandom(SEC)
    q.tf(0x30, lba=9, count=1)
    q.wait()
    for i in range(0, SEC, 4):
        q.qt.outl(P, int.from_bytes(data[i:i + 4], "little"))
    q.wait()
    q.tf(0x20, lba=9, count=1)
    q.wait()
    got = b"".join(q.qt.inl(P).to_bytes(4, "little") for _ in range(SEC // 4))
    assert got == data


def test_read_write_multiple(q):
    q.tf(0xC4, lba=0, count=4)                     # before SET MULTIPLE: aborted
    assert q.wait() & 1 and q.qt.inb(P + 1) == 0x04
    q.tf(0xC6, count=4)
    assert q.wait() == 0x50
    data = os.urandom(8 * SEC)
    q.tf(0xC5, lba=20, count=8)
    q.pio_out(data[:4 * SEC])                      # one DRQ block = 4 sectors
    q.pio_out(data[4 * SEC:])
    assert q.wait() == 0x50 and q.disk()[20 * SEC:28 * SEC] == data
    q.tf(0xC4, lba=20, count=8)
    assert q.pio_in(1024) + q.pio_in(1024) == data


def test_hob_readback_of_read_native_max_ext(q):
    q.tf(0x27, lba48=True)
    q.wait()
    low = q.qt.inb(P + 3) | q.qt.inb(P + 4) << 8 | q.qt.inb(P + 5) << 16
    q.qt.outb(C, 0x82)                             # HOB
    high = q.qt.inb(P + 3) | q.qt.inb(P + 4) << 8 | q.qt.inb(P + 5) << 16
    assert low | high << 24 == (4 << 20) // SEC - 1


def test_out_of_range_is_idnf(q):
    q.tf(0x20, lba=(4 << 20) // SEC, count=1)
    assert q.wait() == 0x51 and q.qt.inb(P + 1) == 0x10


@pytest.mark.parametrize("lba48", [False, True])
def test_bmdma_write_read(q, lba48):
    n = 16
    data = os.urandom(n * SEC)
    a, b = q.alloc(n * SEC), q.alloc(n * SEC)
    q.qt.memwrite(a, data)
    q.prd([(a, 3 * SEC), (a + 3 * SEC, 13 * SEC)])
    q.qt.outb(q.bm, 0)                             # direction: memory -> device
    q.tf(0x35 if lba48 else 0xCA, lba=50, count=n, lba48=lba48)
    q.qt.outb(q.bm, 1)
    assert q.wait() == 0x50
    assert q.qt.inb(q.bm + 2) & 0x07 == 0          # Active clear (nIEN: no Interrupt bit)
    assert q.disk()[50 * SEC:(50 + n) * SEC] == data
    q.qt.outb(q.bm, 0)
    q.prd([(b, n * SEC)])
    q.qt.outb(q.bm, 8)
    q.tf(0x25 if lba48 else 0xC8, lba=50, count=n, lba48=lba48)
    q.qt.outb(q.bm, 9)
    assert q.wait() == 0x50
    assert q.qt.memread(b, n * SEC) == data


def test_bmdma_start_before_command_and_interrupt(q):
    q.qt.outb(C, 0)                                 # interrupts on
    buf = q.alloc(SEC)
    q.prd([(buf, SEC)])
    q.qt.outb(q.bm, 9)
    q.tf(0xC8, lba=0, count=1)
    q.qt.run_until_idle()
    assert q.qt.inb(q.bm + 2) & 0x05 == 0x04        # done: Active 0, Interrupt 1
    assert 14 in q.m.ioapic.asserted
    q.qt.inb(P + 7)                                 # status read acknowledges
    assert 14 not in q.m.ioapic.asserted


def test_prd_zero_count_means_64k(q):
    data = os.urandom(128 * SEC)
    a = q.alloc(0x10000, 0x10000)
    b = q.alloc(0x10000, 0x10000)
    q.qt.memwrite(a, data)
    q.prd([(a, 0)])                                 # a count of 0 is 64 KiB
    q.qt.outb(q.bm, 0)
    q.tf(0xCA, lba=0, count=128)
    q.qt.outb(q.bm, 1)
    assert q.wait() == 0x50 and q.disk()[:0x10000] == data
    q.prd([(b, 0)])
    q.qt.outb(q.bm, 8)
    q.tf(0xC8, lba=0, count=128)
    q.qt.outb(q.bm, 9)
    assert q.wait() == 0x50 and q.qt.memread(b, 0x10000) == data


def test_prd_table_shorter_than_transfer(q):
    buf = q.alloc(4 * SEC)
    q.prd([(buf, SEC)])
    q.qt.outb(q.bm, 8)
    q.tf(0xC8, lba=0, count=4)
    q.qt.outb(q.bm, 9)
    st = q.wait()
    assert q.qt.inb(q.bm + 2) & 0x05 == 0           # Active 0, Interrupt 0 (SFF-8038i)
    assert st & 1 and q.qt.inb(P + 1) == 0x04
    q.qt.outb(q.bm, 0)
    q.tf(0xE7)                                      # the channel works again
    assert q.wait() == 0x50


def test_dma_with_bus_master_off(q):
    cmd = q.qt.pci_config_read(q.ide, 4, 2)
    q.qt.pci_config_write(q.ide, 4, cmd & ~CMD_BUS_MASTER, 2)
    buf = q.alloc(SEC)
    q.prd([(buf, SEC)])
    q.qt.outb(q.bm, 8)
    q.tf(0xC8, lba=0, count=1)
    q.qt.outb(q.bm, 9)
    assert q.wait() & 1 and q.qt.inb(q.bm + 2) & 0x02
    q.qt.pci_config_write(q.ide, 4, cmd, 2)
    q.qt.outb(q.bm + 2, 0x06)
    assert not q.qt.inb(q.bm + 2) & 0x06


def test_device_select_and_slave():
    q = IdeQ(drives=((0, 1, 1 << 20), (1, 0, 2 << 20)))
    q.qt.outb(P + 6, 0xA0)                          # master absent
    assert q.qt.inb(P + 7) == 0
    q.tf(0xEC, dev=0)                               # ignored: nobody answers
    assert q.qt.inb(P + 7) == 0
    q.tf(0xEC, dev=1)
    w = struct.unpack("<256H", q.pio_in(256))
    assert w[60] | w[61] << 16 == (1 << 20) // SEC
    q.tf(0xEC, base=P2)
    w = struct.unpack("<256H", q.pio_in(256, base=P2, ctl=C2))
    assert w[60] | w[61] << 16 == (2 << 20) // SEC


def test_alternate_status_follows_the_selected_unit():
    q = IdeQ(drives=((0, 1, 1 << 20),), nien=False)
    q.qt.outb(P + 6, 0xA0)                          # master absent: alternate status 0
    assert q.qt.inb(C) == 0
    q.qt.outb(P + 6, 0xB0)                          # slave present: DRDY
    assert q.qt.inb(C) & 0x40


def test_bus_master_registers_read_back_at_every_width(q):
    """The PRD table address drops bits 1:0 (SFF-8038i §2.1.3) written as one
    dword or byte by byte; status reads the same as a byte or in the dword."""
    q.qt.outl(q.bm + 4, 0x12345677)
    assert q.qt.inl(q.bm + 4) == 0x12345674
    for i, b in enumerate((0x0B, 0x22, 0x33, 0x44)):
        q.qt.outb(q.bm + 4 + i, b)
    assert q.qt.inl(q.bm + 4) == 0x44332208
    assert q.qt.inl(q.bm + 12) == 0                 # the other channel's table is untouched
    q.qt.outb(q.bm + 2, 0x60)                       # both drives DMA capable
    assert q.qt.inb(q.bm + 2) == 0x60 == (q.qt.inl(q.bm) >> 16) & 0xFF


def test_srst_cancels_and_restores_signature(q):
    q.tf(0x30, lba=1, count=1)                      # a write waiting for its data
    q.wait()
    q.qt.outb(C, 0x06)
    assert q.qt.inb(C) & 0x80
    q.qt.outb(C, 0x02)
    assert q.qt.inb(P + 7) == 0x50 and q.qt.inb(P + 1) == 0x01
    assert (q.qt.inb(P + 2), q.qt.inb(P + 3), q.qt.inb(P + 4), q.qt.inb(P + 5)) == (1, 1, 0, 0)
    q.qt.outw(P, 0x1234)                            # data after SRST goes nowhere
    assert not [e for e in q.backends[(0, 0)].request_log.entries if e.kind == "write"]


def test_execute_device_diagnostic(q):
    q.tf(0x90)
    assert q.wait() == 0x50 and q.qt.inb(P + 1) == 0x01


def test_trim_over_bmdma(q):
    ranges = q.alloc(SEC)
    q.qt.memwrite(ranges, struct.pack("<Q", 4 | (4 << 48)) + bytes(SEC - 8))
    q.prd([(ranges, SEC)])
    q.qt.outb(q.bm, 0)
    q.tf(0x06, count=1, features=1, lba48=True)
    q.qt.outb(q.bm, 1)
    assert q.wait() == 0x50
    e = q.backends[(0, 0)].request_log.entries[-1]
    assert (e.kind, e.offset, e.length) == ("discard", 4 * SEC, 4 * SEC)


def test_fpdma_aborts_on_pata(q):
    q.tf(0x60, count=0, features=1, lba48=True)
    assert q.wait() == 0x51 and q.qt.inb(P + 1) == 0x04


def test_hostile_register_traffic(q):
    """Data port traffic without DRQ, commands while BSY, a PRD table without EOT over
    zeroed memory, and a bus-master start with no command: nothing breaks, the
    channel still works."""
    assert q.qt.inw(P) == 0                         # no DRQ: the data port reads 0
    q.qt.outw(P, 0xBEEF)                            # and drops writes
    q.tf(0x20, lba=0, count=1)                      # PIO read -> BSY for a moment
    q.qt.outb(P + 7, 0xE7)                          # a command while BSY is ignored
    q.pio_in(256)
    assert q.wait() == 0x50
    zeros = q.alloc(8 * 8192, 8)                    # 8192 entries: 0 bytes at address 0
    q.qt.outl(q.bm + 4, zeros)                      # = 64 KiB each, no EOT anywhere
    q.qt.outb(q.bm, 8)
    q.tf(0xC8, lba=0, count=8)
    q.qt.outb(q.bm, 9)
    assert q.wait() == 0x50                         # the first entry covers the transfer
    q.qt.outb(q.bm, 0)
    q.qt.outb(q.bm, 1)                              # start with nothing to do
    q.qt.run_until_idle()
    q.qt.outb(q.bm, 0)
    q.tf(0xE7)
    assert q.wait() == 0x50
    assert not [e for e in q.backends[(0, 0)].request_log.entries if e.kind == "write"]
