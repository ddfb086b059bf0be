"""The ATA command layer (devices/ata) on its own: decoding, IDENTIFY, errors, durability.

Each test drives :class:`AtaDrive` with task files as a transport would and checks
the outputs a drive must report (ATA8-ACS) and what reached the BlockBackend.
"""

from __future__ import annotations

import errno
import struct

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.driver import BlockError
from blockbed.block.memory import MemoryDriver
from blockbed.devices.ata import AtaDrive, Cmd, DriveConfig, Outputs, Protocol, TaskFile
from blockbed.devices.ata.identify import ata_string_decode
from blockbed.devices.ata.regs import ER_ABRT, ER_IDNF, ER_UNC, ST_ERR

SECTORS = 2048


def make(cache="writeback", ncq=32, discard="unmap", data=None, **cfg):
    be = BlockBackend(MemoryDriver(data if data is not None else SECTORS * 512), cache=cache,
                      request_log=True, discard=discard)
    return AtaDrive(be, DriveConfig(**cfg), ncq_depth=ncq), be


def words(drive) -> list[int]:
    return list(struct.unpack("<256H", drive.identify_data()))


def test_identify_fields():
    d, be = make(model="BLOCKBED DISK", serial="S123", firmware="1.0")
    raw = d.identify_data()
    w = words(d)
    assert ata_string_decode(raw[54:94]) == "BLOCKBED DISK"
    assert ata_string_decode(raw[20:40]) == "S123"
    assert ata_string_decode(raw[46:54]) == "1.0"
    assert w[0] & 0x8000 == 0                      # ATA device
    assert w[49] & (1 << 9) and w[49] & (1 << 8)   # LBA, DMA
    assert w[60] | w[61] << 16 == SECTORS
    assert w[83] & (1 << 10) and w[86] & (1 << 10)  # LBA48
    assert sum(w[100 + i] << (16 * i) for i in range(4)) == SECTORS
    assert w[75] == 31 and w[76] & (1 << 8)        # NCQ depth 32
    assert w[82] & (1 << 5) and w[85] & (1 << 5)   # write cache supported / enabled
    assert w[84] & (1 << 6) and w[87] & (1 << 6)   # WRITE DMA FUA EXT
    assert w[169] & 1 and w[105] >= 1              # TRIM
    assert w[106] == 0x4000                        # 512/512
    assert raw[510] == 0xA5 and sum(raw) % 256 == 0  # integrity word


def test_identify_sector_sizes_and_no_ncq_on_pata():
    d, _ = make(ncq=0, logical_sector_size=4096, physical_sector_size=4096)
    w = words(d)
    assert w[76] == 0 and w[75] == 0
    assert w[106] & (1 << 12) and w[117] | w[118] << 16 == 2048
    d2, _ = make(physical_sector_size=4096)
    assert words(d2)[106] == 0x4000 | (1 << 13) | 3


def test_identify_reflects_write_cache_state():
    d, be = make(cache="writethrough")
    assert not words(d)[85] & (1 << 5)
    out = d.execute(d.decode(TaskFile(Cmd.SET_FEATURES, features=0x02)))
    assert not out.failed and be.write_cache_enabled and words(d)[85] & (1 << 5)
    out = d.execute(d.decode(TaskFile(Cmd.SET_FEATURES, features=0x82)))
    assert not out.failed and not be.write_cache_enabled


@pytest.mark.parametrize("op,lba48", [(Cmd.READ_DMA, False), (Cmd.READ_DMA_EXT, True),
                                      (Cmd.READ_SECTORS, False), (Cmd.READ_SECTORS_EXT, True)])
def test_lba28_and_lba48_decoding(op, lba48):
    d, _ = make()
    tf = TaskFile(op, count=0, lba=0x12 | (0x34 << 24) if lba48 else 0x10, device=0x40 | 0x0)
    c = d.decode(tf)
    if lba48:
        assert isinstance(c, Outputs) and c.error == ER_IDNF   # LBA beyond the end
        c = d.decode(TaskFile(op, count=3, lba=0x100, device=0x40))
        assert (c.lba, c.nsect) == (0x100, 3)
    else:
        assert (c.lba, c.nsect) == (0x10, 256)     # count 0 = 256 sectors
        c = d.decode(TaskFile(op, count=1, lba=0x01, device=0x40 | 0x0))
        assert c.lba == 1


def test_lba28_uses_device_bits_27_24():
    d, _ = make(data=(1 << 28) * 0 + (SECTORS * 512))
    c = d.decode(TaskFile(Cmd.READ_DMA, count=1, lba=0x000005, device=0x41))
    assert isinstance(c, Outputs) and c.error == ER_IDNF and c.lba == 0x1000005


def test_chs_addressing():
    d, _ = make()
    # cylinder 1, head 2, sector 3 with 16 heads / 63 sectors
    c = d.decode(TaskFile(Cmd.READ_SECTORS, count=1, lba=3 | (1 << 8), device=0x02))
    assert c.lba == (1 * 16 + 2) * 63 + 2


def test_out_of_range_is_idnf_and_unknown_is_abrt():
    d, _ = make()
    out = d.decode(TaskFile(Cmd.WRITE_DMA_EXT, count=2, lba=SECTORS - 1, device=0x40))
    assert out.status & ST_ERR and out.error == ER_IDNF
    out = d.decode(TaskFile(0xFF))
    assert out.status & ST_ERR and out.error == ER_ABRT
    out = d.execute(d.decode(TaskFile(Cmd.NOP)))     # NOP always aborts
    assert out.error == ER_ABRT
    out = d.execute(d.decode(TaskFile(Cmd.SET_FEATURES, features=0x99)))
    assert out.error == ER_ABRT
    assert d.decode(TaskFile(Cmd.READ_MULTIPLE, count=1, device=0x40)).error == ER_ABRT  # no SET MULTIPLE yet


def test_fpdma_only_with_ncq():
    d, _ = make(ncq=0)
    assert d.decode(TaskFile(Cmd.READ_FPDMA_QUEUED, features=1)).error == ER_ABRT
    d, _ = make()
    c = d.decode(TaskFile(Cmd.WRITE_FPDMA_QUEUED, features=8, count=5 << 3, lba=16, device=0xC0))
    assert c.protocol is Protocol.FPDMA_OUT and c.tag == 5 and c.nsect == 8 and c.fua


@pytest.mark.parametrize("op,fua", [(Cmd.WRITE_DMA_EXT, False), (Cmd.WRITE_DMA_FUA_EXT, True)])
def test_fua_reaches_the_backend(op, fua):
    d, be = make()
    c = d.decode(TaskFile(op, count=1, lba=7, device=0x40))
    buf = memoryview(bytearray(b"\xab" * 512))
    assert not d.execute(c, [buf]).failed
    e = be.request_log.entries[-1]
    assert (e.kind, e.offset, e.fua, e.host_fua) == ("write", 7 * 512, fua, fua)
    assert bytes(be.root.buf[7 * 512:8 * 512]) == b"\xab" * 512


def test_ncq_fua_bit_is_honoured():
    d, be = make()
    for dev, fua in ((0x40, False), (0xC0, True)):
        c = d.decode(TaskFile(Cmd.WRITE_FPDMA_QUEUED, features=1, lba=3, device=dev))
        d.execute(c, [memoryview(bytearray(512))])
        assert be.request_log.entries[-1].fua is fua


def test_flush_and_trim():
    data = bytearray(b"\x11" * (SECTORS * 512))
    d, be = make(data=data)
    assert not d.execute(d.decode(TaskFile(Cmd.FLUSH_CACHE_EXT))).failed
    assert be.request_log.entries[-1].kind == "flush"
    ranges = struct.pack("<QQQ", 10 | (2 << 48), 0, 100 | (1 << 48)) + bytes(512 - 24)
    c = d.decode(TaskFile(Cmd.DATA_SET_MANAGEMENT, features=1, count=1))
    assert not d.execute(c, [memoryview(bytearray(ranges))]).failed
    kinds = [(e.kind, e.offset // 512, e.length // 512) for e in be.request_log.entries[-2:]]
    assert kinds == [("discard", 10, 2), ("discard", 100, 1)]
    bad = struct.pack("<Q", (SECTORS - 1) | (2 << 48)) + bytes(504)
    assert d.execute(c, [memoryview(bytearray(bad))]).error == ER_ABRT
    assert d.decode(TaskFile(Cmd.DATA_SET_MANAGEMENT, features=0, count=1)).error == ER_ABRT


def test_read_error_is_unc_write_error_is_abrt():
    class Failing(MemoryDriver):
        def read(self, offset, buf):
            raise BlockError(errno.EIO, "media error")

        def write(self, offset, data, fua=False):
            raise BlockError(errno.EIO, "media error")

    be = BlockBackend(Failing(SECTORS * 512), werror="report")
    d = AtaDrive(be)
    out = d.execute(d.decode(TaskFile(Cmd.READ_DMA_EXT, count=1, lba=4, device=0x40)),
                    [memoryview(bytearray(512))])
    assert out.status & ST_ERR and out.error == ER_UNC and out.lba == 4
    out = d.execute(d.decode(TaskFile(Cmd.WRITE_DMA_EXT, count=1, lba=4, device=0x40)),
                    [memoryview(bytearray(512))])
    assert out.status & ST_ERR and out.error == ER_ABRT


def test_read_only_write_aborts():
    be = BlockBackend(MemoryDriver(SECTORS * 512), read_only=True)
    d = AtaDrive(be)
    out = d.execute(d.decode(TaskFile(Cmd.WRITE_DMA, count=1, lba=1, device=0x40)),
                    [memoryview(bytearray(512))])
    assert out.error == ER_ABRT


def test_misc_non_data_commands():
    d, _ = make()
    assert d.execute(d.decode(TaskFile(Cmd.READ_NATIVE_MAX_ADDRESS_EXT))).lba == SECTORS - 1
    assert d.execute(d.decode(TaskFile(Cmd.READ_NATIVE_MAX_ADDRESS))).lba == SECTORS - 1
    assert d.execute(d.decode(TaskFile(Cmd.CHECK_POWER_MODE))).count == 0xFF
    d.execute(d.decode(TaskFile(Cmd.STANDBY_IMMEDIATE)))
    assert d.execute(d.decode(TaskFile(Cmd.CHECK_POWER_MODE))).count == 0x00
    diag = d.execute(d.decode(TaskFile(Cmd.EXECUTE_DEVICE_DIAGNOSTIC)))
    assert diag.error == 0x01 and diag.count == 1 and diag.lba == 1
    assert d.execute(d.decode(TaskFile(Cmd.SET_MULTIPLE_MODE, count=3))).error == ER_ABRT
    assert not d.execute(d.decode(TaskFile(Cmd.SET_MULTIPLE_MODE, count=8))).failed
    assert words(d)[59] == 0x108
    c = d.decode(TaskFile(Cmd.READ_MULTIPLE, count=20, device=0x40))
    assert d.drq_block_sectors(c) == 8
    assert not d.execute(d.decode(TaskFile(Cmd.SET_FEATURES, features=3, count=0x45))).failed
    assert words(d)[88] & 0xFF00 == 1 << 13          # UDMA5 selected
    assert d.execute(d.decode(TaskFile(Cmd.SET_FEATURES, features=3, count=0x47))).error == ER_ABRT


def test_ncq_error_log():
    d, _ = make()
    d.record_ncq_error(7, Outputs(status=0x41, error=ER_ABRT), lba=0x123456789)
    c = d.decode(TaskFile(Cmd.READ_LOG_EXT, count=1, lba=0x10))
    buf = bytearray(512)
    d.execute(c, [memoryview(buf)])
    assert buf[0] == 7 and buf[2] == 0x41 and buf[3] == ER_ABRT and sum(buf) % 256 == 0
    assert d.decode(TaskFile(Cmd.READ_LOG_EXT, count=1, lba=0x11)).error == ER_ABRT
