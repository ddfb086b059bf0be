"""AHCI I/O at the register level (qtest): IDENTIFY, PIO and DMA, LBA28/LBA48,
fragmented PRDTs, NCQ with several tags outstanding (completing out of order),
flush, FUA, TRIM, write cache, interrupts (INTx and MSI)."""

from __future__ import annotations

import os
import struct

import pytest

from blockbed.devices import ahci as A
from blockbed.devices.ata.identify import ata_string_decode
from blockbed.machine.pci import CMD_INTX_DISABLE
from libqos_ata import AhciQ, h2d

SEC = 512


@pytest.fixture
def q():
    q = AhciQ(disks=[4 << 20])
    q.port_start(0)
    return q


def test_identify_via_pio_setup(q):
    buf = q.alloc(512)
    tfd = q.run(0, h2d(0xEC), [(buf, 512)])
    assert tfd == 0x50
    data = q.qt.memread(buf, 512)
    assert ata_string_decode(data[54:94]) == "QEMU HARDDISK" and ata_string_decode(data[20:40]) == "SER0"
    assert q.prdbc(0, 0) == 512 and q.pr(0, A.P_CI) == 0
    ps = q.rfis(0, A.RFIS_PSFIS, 20)
    assert ps[0] == 0x5F and ps[1] & 0x20 and ps[15] == 0x50    # PIO Setup, to host, E_Status
    assert q.pr(0, A.P_IS) & A.IS_PSS


@pytest.mark.parametrize("rd,wr,lba", [(0xC8, 0xCA, 0x1234), (0x25, 0x35, 0x1F00),
                                       (0x20, 0x30, 77), (0x24, 0x34, 4000)])
def test_write_then_read(q, rd, wr, lba):
    n = 8
    src, dst = q.alloc(n * SEC), q.alloc(n * SEC)
    data = os.urandom(n * SEC)
    q.qt.memwrite(src, data)
    assert q.run(0, h2d(wr, lba=lba, count=n), [(src, n * SEC)], write=True) == 0x50
    assert q.disk()[lba * SEC:(lba + n) * SEC] == data
    assert q.prdbc(0, 0) == n * SEC
    assert q.run(0, h2d(rd, lba=lba, count=n), [(dst, n * SEC)]) == 0x50
    assert q.qt.memread(dst, n * SEC) == data
    d2h = q.rfis(0, A.RFIS_RFIS, 20)
    is_pio = rd in (0x20, 0x24)
    assert is_pio or (d2h[0] == 0x34 and d2h[2] == 0x50)


def test_lba28_device_nibble(q):
    src = q.alloc(SEC)
    q.qt.memwrite(src, b"\x5a" * SEC)
    lba = 0x1234
    fis = h2d(0xCA, lba=lba, count=1, device=0x40)
    assert q.run(0, fis, [(src, SEC)], write=True) == 0x50
    assert q.disk()[lba * SEC:(lba + 1) * SEC] == b"\x5a" * SEC
    # LBA bits 27:24 come from the Device register: 0x1001234 is past the end -> IDNF
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) & ~A.CMD_ST)
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) | A.CMD_ST)
    tfd = q.run(0, h2d(0xCA, lba=lba, count=1, device=0x41), [(src, SEC)], write=True)
    assert tfd == (0x10 << 8) | 0x51


def test_fragmented_prdt(q):
    """Sixteen PRD entries of odd sizes and scattered addresses make one 8-sector transfer."""
    n = 8
    data = os.urandom(n * SEC)
    sizes = [2, 510, 1024, 6, 250, 256, 1000, 24, 2, 2, 96, 330, 400, 98, 40, 56]
    assert sum(sizes) == n * SEC
    prdt, off = [], 0
    for s in sizes:
        a = q.alloc(s + 64, 2) + 2          # word aligned, not page aligned
        q.qt.memwrite(a, data[off:off + s])
        prdt.append((a, s))
        off += s
    assert q.run(0, h2d(0x35, lba=100, count=n), prdt, write=True) == 0x50
    assert q.disk()[100 * SEC:108 * SEC] == data
    dsts = [(q.alloc(s, 2), s) for s in reversed(sizes)]
    assert q.run(0, h2d(0x25, lba=100, count=n), dsts) == 0x50
    assert b"".join(q.qt.memread(a, s) for a, s in dsts) == data


def test_prdt_longer_than_transfer_is_fine(q):
    big = q.alloc(8 * SEC)
    assert q.run(0, h2d(0x25, lba=0, count=1), [(big, 4 * SEC), (big + 4 * SEC, 4 * SEC)]) == 0x50
    assert q.prdbc(0, 0) == SEC


def test_ncq_several_tags_out_of_order(q):
    tags = list(range(12))
    bufs = {}
    for t in tags:
        bufs[t] = q.alloc(4 * SEC)
        q.qt.memwrite(bufs[t], bytes([t + 1]) * 4 * SEC)
        q.build(0, t, h2d(0x61, lba=64 * t, features=4, count=t << 3), [(bufs[t], 4 * SEC)], write=True)
    mask = (1 << len(tags)) - 1
    q.issue(0, mask, sact=mask)
    assert q.pr(0, A.P_CI) == 0                 # accepted at once
    assert q.pr(0, A.P_SACT) != 0               # still outstanding
    q.wait()
    assert q.pr(0, A.P_SACT) == 0 and q.pr(0, A.P_IS) & A.IS_SDBS
    order = [e.offset // (64 * SEC) for e in q.backends[0].request_log.entries if e.kind == "write"]
    assert sorted(order) == tags and order != tags          # all done, out of order
    for t in tags:
        assert q.disk()[64 * t * SEC:(64 * t + 4) * SEC] == bytes([t + 1]) * 4 * SEC
    # reads back through NCQ
    for t in tags:
        q.build(0, t, h2d(0x60, lba=64 * t, features=4, count=t << 3), [(bufs[t] + 0, 4 * SEC)])
        q.qt.memwrite(bufs[t], bytes(4 * SEC))
    q.issue(0, mask, sact=mask)
    q.wait()
    for t in tags:
        assert q.qt.memread(bufs[t], 4 * SEC) == bytes([t + 1]) * 4 * SEC
    sdb = q.rfis(0, A.RFIS_SDBFIS, 8)
    assert sdb[0] == 0xA1 and sdb[1] & 0x40


def test_ncq_fua_and_fua_ext_are_durable_writes(q):
    buf = q.alloc(SEC)
    log = q.backends[0].request_log.entries
    q.run(0, h2d(0x3D, lba=5, count=1), [(buf, SEC)], write=True)     # WRITE DMA FUA EXT
    assert (log[-1].kind, log[-1].fua) == ("write", True)
    q.run(0, h2d(0x35, lba=5, count=1), [(buf, SEC)], write=True)
    assert log[-1].fua is False
    for dev, fua in ((0xC0, True), (0x40, False)):                     # NCQ FUA = Device bit 7
        q.build(0, 3, h2d(0x61, lba=9, features=1, count=3 << 3, device=dev), [(buf, SEC)], write=True)
        q.issue(0, 1 << 3, sact=1 << 3)
        q.wait()
        assert (log[-1].kind, log[-1].fua) == ("write", fua)


def test_flush_trim_and_write_cache(q):
    log = q.backends[0].request_log.entries
    assert q.run(0, h2d(0xE7)) == 0x50 and log[-1].kind == "flush"
    assert q.run(0, h2d(0xEA)) == 0x50 and log[-1].kind == "flush"
    ranges = q.alloc(SEC)
    q.qt.memwrite(ranges, struct.pack("<QQ", 8 | (16 << 48), 0) + bytes(SEC - 16))
    assert q.run(0, h2d(0x06, features=1, count=1), [(ranges, SEC)], write=True) == 0x50
    assert (log[-1].kind, log[-1].offset, log[-1].length) == ("discard", 8 * SEC, 16 * SEC)
    assert q.run(0, h2d(0xEF, features=0x82)) == 0x50
    assert not q.backends[0].write_cache_enabled
    buf = q.alloc(SEC)
    q.run(0, h2d(0xEC), [(buf, SEC)])
    w85 = struct.unpack_from("<H", q.qt.memread(buf, SEC), 170)[0]
    assert not w85 & (1 << 5)
    q.run(0, h2d(0x35, lba=1, count=1), [(buf, SEC)], write=True)
    assert log[-1].host_fua                      # WCE off: every write is durable
    assert q.run(0, h2d(0xEF, features=0x02)) == 0x50 and q.backends[0].write_cache_enabled


def test_read_native_max_and_check_power_mode(q):
    q.run(0, h2d(0x27))
    d2h = q.rfis(0, A.RFIS_RFIS, 20)
    lba = int.from_bytes(d2h[4:7], "little") | int.from_bytes(d2h[8:11], "little") << 24
    assert lba == (4 << 20) // SEC - 1
    q.run(0, h2d(0xE5))
    assert q.rfis(0, A.RFIS_RFIS, 20)[12] == 0xFF


def test_intx_interrupt(q):
    irq = q.m.pci.irq_for(q.hba)
    q.pw(0, A.P_IE, A.IS_DHRS)
    q.w(A.GHC, A.GHC_AE | A.GHC_IE)
    q.run(0, h2d(0xE7))
    assert q.r(A.IS) == 1 and irq in q.m.ioapic.asserted
    q.pw(0, A.P_IS, A.IS_DHRS)
    assert q.r(A.IS) == 0 and irq not in q.m.ioapic.asserted
    cmd = q.qt.pci_config_read(q.hba, 4, 2)
    q.qt.pci_config_write(q.hba, 4, cmd | CMD_INTX_DISABLE, 2)
    q.run(0, h2d(0xE7))
    assert q.r(A.IS) == 1 and irq not in q.m.ioapic.asserted


def test_msi_interrupt(q):
    off = q.hba.msi.off
    q.qt.pci_config_write(q.hba, off + 4, 0xFEE00000)
    q.qt.pci_config_write(q.hba, off + 8, 0)
    q.qt.pci_config_write(q.hba, off + 12, 0x45, 2)
    q.qt.pci_config_write(q.hba, off + 2, 1, 2)
    q.pw(0, A.P_IE, A.IS_DHRS | A.IS_SDBS)
    q.w(A.GHC, A.GHC_AE | A.GHC_IE)
    assert 0x45 not in q.qt.pending_vectors()
    q.run(0, h2d(0xE7))
    assert 0x45 in q.qt.pending_vectors()


def test_second_port_and_attach_wiring():
    q = AhciQ(disks=[1 << 20, 2 << 20])
    q.port_start(1)
    buf = q.alloc(SEC)
    q.qt.memwrite(buf, b"\x77" * SEC)
    assert q.run(1, h2d(0x35, lba=3, count=1), [(buf, SEC)], write=True) == 0x50
    assert q.disk(1)[3 * SEC:4 * SEC] == b"\x77" * SEC and q.disk(0) == bytes(1 << 20)


def test_prd_interrupt_bit_sets_dps(q):
    buf = q.alloc(2 * SEC)
    q.build(0, 0, h2d(0x25, lba=0, count=2), [(buf, SEC), (buf + SEC, SEC)], interrupt_last=True)
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_DPS
    q.pw(0, A.P_IS, 0xFFFFFFFF)
    q.run(0, h2d(0x25, lba=0, count=2), [(buf, 2 * SEC)])
    assert not q.pr(0, A.P_IS) & A.IS_DPS
