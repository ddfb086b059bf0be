"""Hostile guests against the AHCI HBA: each case must end in the error status AHCI 1.3
§6.1 defines, with the host healthy and the port usable again after the §6.2.2 recovery
(clear PxCMD.ST, clear PxSERR/PxIS, set ST) — proven by a good command afterwards."""

from __future__ import annotations

import struct

import pytest

from blockbed.devices import ahci as A
from blockbed.machine.pci import CMD_BUS_MASTER
from libqos_ata import AhciQ, h2d

SEC = 512


@pytest.fixture
def q():
    q = AhciQ(disks=[1 << 20])
    q.port_start(0)
    return q


def recover_and_check(q, port=0):
    """Software recovery, then a write+read that must work."""
    q.pw(port, A.P_CMD, q.pr(port, A.P_CMD) & ~A.CMD_ST)
    assert not q.pr(port, A.P_CMD) & A.CMD_CR
    assert q.pr(port, A.P_CI) == 0 and q.pr(port, A.P_SACT) == 0
    q.pw(port, A.P_SERR, 0xFFFFFFFF)
    q.pw(port, A.P_IS, 0xFFFFFFFF)
    if q.pr(port, A.P_TFD) & 0x88:
        q.pw(port, A.P_SCTL, 1)
        q.pw(port, A.P_SCTL, 0)
        q.pw(port, A.P_SERR, 0xFFFFFFFF)
        q.pw(port, A.P_IS, 0xFFFFFFFF)
    q.pw(port, A.P_CMD, q.pr(port, A.P_CMD) | A.CMD_ST)
    buf = q.alloc(SEC)
    q.qt.memwrite(buf, b"\xc3" * SEC)
    assert q.run(port, h2d(0x35, lba=40, count=1), [(buf, SEC)], write=True, slot=5) == 0x50
    assert q.disk()[40 * SEC:41 * SEC] == b"\xc3" * SEC


def test_prdt_too_short_is_overflow(q):
    buf = q.alloc(8 * SEC)
    before = q.disk()
    q.build(0, 0, h2d(0x25, lba=0, count=8), [(buf, 4 * SEC)])
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_OFS and q.pr(0, A.P_CI) == 1      # fatal: CI stays set
    q.build(0, 1, h2d(0x35, lba=0, count=8), [(buf, SEC)], write=True)
    recover_and_check(q)
    assert q.disk()[:SEC] == before[:SEC]


def test_zero_prdt_entries_for_a_data_command(q):
    q.build(0, 0, h2d(0x35, lba=2, count=1), [], write=True)
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_OFS
    recover_and_check(q)


def test_out_of_range_lba_is_tfes_with_idnf(q):
    buf = q.alloc(SEC)
    q.build(0, 0, h2d(0x25, lba=(1 << 20) // SEC, count=1), [(buf, SEC)])
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_TFES
    assert q.pr(0, A.P_TFD) == (0x10 << 8) | 0x51
    assert q.pr(0, A.P_CI) == 1
    recover_and_check(q)


def test_unknown_command_aborts(q):
    q.build(0, 0, h2d(0xA1))           # IDENTIFY PACKET DEVICE on an ATA disk
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_TFES and q.pr(0, A.P_TFD) >> 8 == 0x04
    recover_and_check(q)


def test_unknown_fis_type_is_interface_fatal(q):
    fis = bytearray(h2d(0x25, count=1))
    fis[0] = 0x39                      # a DMA Activate FIS has no business in a command table
    q.build(0, 0, bytes(fis), [(q.alloc(SEC), SEC)])
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_IFS and q.pr(0, A.P_SERR) & A.SERR_ERR_P
    recover_and_check(q)


def test_command_fis_length_too_short(q):
    q.build(0, 0, h2d(0xE7), cfl=1)
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_IFS
    recover_and_check(q)


def test_ncq_tag_reuse_aborts_outstanding(q):
    buf = q.alloc(SEC)
    # tag 3 twice, from slots 3 and 4, in one CI write
    q.build(0, 3, h2d(0x61, lba=10, features=1, count=3 << 3), [(buf, SEC)], write=True)
    q.build(0, 4, h2d(0x61, lba=11, features=1, count=3 << 3), [(buf, SEC)], write=True)
    q.issue(0, (1 << 3) | (1 << 4), sact=(1 << 3) | (1 << 4))
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_TFES and q.pr(0, A.P_TFD) & 1
    assert q.pr(0, A.P_SACT) & (1 << 3)                 # failed tags stay set
    assert not [e for e in q.backends[0].request_log.entries if e.kind == "write"]
    # the NCQ error log names the tag (READ LOG EXT page 10h, after recovery)
    recover_and_check(q)
    log = q.alloc(SEC)
    assert q.run(0, h2d(0x2F, lba=0x10, count=1), [(log, SEC)]) == 0x50
    assert q.qt.memread(log, 1)[0] == 3


def test_slots_beyond_ncs_are_ignored():
    q = AhciQ(slots=8)
    q.port_start(0)
    assert (q.r(A.CAP) >> 8) & 0x1F == 7
    q.build(0, 9, h2d(0xE7))
    q.issue(0, 1 << 9, sact=1 << 9)
    q.wait()
    assert q.pr(0, A.P_CI) == 0 and q.pr(0, A.P_SACT) == 0
    assert not q.backends[0].request_log.entries
    recover_and_check(q)


def test_hba_reset_with_commands_outstanding(q):
    buf = q.alloc(SEC)
    for t in range(6):
        q.build(0, t, h2d(0x61, lba=t, features=1, count=t << 3), [(buf, SEC)], write=True)
    q.issue(0, 0x3F, sact=0x3F)
    q.w(A.GHC, A.GHC_HR)               # before any completes
    q.wait()
    assert not [e for e in q.backends[0].request_log.entries if e.kind == "write"]
    assert q.pr(0, A.P_SACT) == 0 and q.pr(0, A.P_CI) == 0 and q.pr(0, A.P_IS) == 0
    q.port_start(0)
    assert q.pr(0, A.P_SIG) == 0x101
    recover_and_check(q)


def test_comreset_with_commands_outstanding(q):
    buf = q.alloc(SEC)
    q.build(0, 0, h2d(0x35, lba=1, count=1), [(buf, SEC)], write=True)
    q.issue(0, 1)
    q.pw(0, A.P_SCTL, 1)
    assert q.pr(0, A.P_SSTS) & 0xF == 0
    q.pw(0, A.P_SCTL, 0)
    q.wait()
    assert q.pr(0, A.P_SSTS) == 0x113 and q.pr(0, A.P_SIG) == 0x101
    assert q.pr(0, A.P_SERR) & A.SERR_DIAG_X
    assert not q.backends[0].request_log.entries
    recover_and_check(q)


def test_st_clear_cancels_ncq(q):
    buf = q.alloc(SEC)
    q.build(0, 1, h2d(0x61, lba=1, features=1, count=1 << 3), [(buf, SEC)], write=True)
    q.issue(0, 2, sact=2)
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) & ~A.CMD_ST)
    q.wait()
    assert not q.backends[0].request_log.entries
    recover_and_check(q)


def test_dma_with_bus_master_off_is_host_bus_fatal(q):
    cmd = q.qt.pci_config_read(q.hba, 4, 2)
    q.qt.pci_config_write(q.hba, 4, cmd & ~CMD_BUS_MASTER, 2)
    q.build(0, 0, h2d(0x25, count=1), [(q.alloc(SEC), SEC)])
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_HBFS
    q.qt.pci_config_write(q.hba, 4, cmd, 2)
    recover_and_check(q)


def test_prd_outside_ram_is_host_bus_fatal(q):
    q.build(0, 0, h2d(0x25, count=1), [(0xFFFF_0000_0000, SEC)])
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_HBFS
    recover_and_check(q)


def test_command_list_outside_ram(q):
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) & ~A.CMD_ST)
    q.pw(0, A.P_CLBU, 0x100)
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) | A.CMD_ST)
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_HBFS
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) & ~A.CMD_ST)
    q.pw(0, A.P_CLBU, 0)
    recover_and_check(q)


def test_huge_prdtl_is_bounded(q):
    # PRDTL 65535 over zeroed memory: every entry is 1 byte at address 0 (DBC 0, an odd
    # count the spec forbids); the HBA walks only the entries the transfer needs.
    q.build(0, 0, h2d(0x25, count=1), [], prdtl=65535)
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_CI) == 0 and q.prdbc(0, 0) == SEC
    # a write whose table runs past the end of RAM is a host bus error, not a crash
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) & ~A.CMD_ST)
    q.pw(0, A.P_CMD, q.pr(0, A.P_CMD) | A.CMD_ST)
    q.build(0, 0, h2d(0x35, count=128), [], write=True, prdtl=65535)
    hdr = q.clb[0]
    top = q.m.memory.size - 0x100
    q.qt.memwrite(hdr + 8, struct.pack("<Q", top))
    q.qt.memwrite(top, h2d(0x35, count=128))
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_IS) & A.IS_HBFS
    recover_and_check(q)


def test_srst_through_control_fis(q):
    q.build(0, 0, h2d(0, control=0x04, c=False))
    q.issue(0, 1)
    q.wait()
    assert q.pr(0, A.P_TFD) & 0x80
    q.build(0, 1, h2d(0, control=0x00, c=False))
    q.issue(0, 2)
    q.wait()
    assert q.pr(0, A.P_TFD) == 0x150 and q.pr(0, A.P_SIG) == 0x101 and q.pr(0, A.P_CI) == 0
    recover_and_check(q)


def test_werror_stop_holds_the_command_until_resume():
    """werror=stop: the failed write is neither completed nor failed; after resume it runs."""
    import errno

    from blockbed.block.backend import BlockBackend
    from blockbed.block.driver import BlockError
    from blockbed.block.memory import MemoryDriver

    class Flaky(MemoryDriver):
        broken = True

        def write(self, offset, data, fua=False):
            if self.broken:
                raise BlockError(errno.EIO, "injected")
            super().write(offset, data, fua)

    drv = Flaky(1 << 20)
    be = BlockBackend(drv, werror="stop")
    stops = []
    be.on_stop = stops.append
    q = AhciQ(backends=[be])
    q.port_start(0)
    buf = q.alloc(SEC)
    q.qt.memwrite(buf, b"\x99" * SEC)
    q.build(0, 2, h2d(0x61, lba=6, features=1, count=2 << 3), [(buf, SEC)], write=True)
    q.issue(0, 1 << 2, sact=1 << 2)
    q.wait()
    assert stops and q.pr(0, A.P_SACT) == 1 << 2 and not q.pr(0, A.P_IS) & A.IS_TFES
    drv.broken = False
    q.hba.resume()
    assert q.pr(0, A.P_SACT) == 0 and q.disk()[6 * SEC:7 * SEC] == b"\x99" * SEC
