"""Disk geometry from the MBR (devices/geometry.py), differentially against QEMU 7.2:
the CHS a virtio-blk device reports in its config space (legacy BAR0, device config
offset 16: cylinders u16, heads u8, sectors u8) for disks whose MBR the declaration
builds -- a 16-head table, a 4-head/32-sector one, a 255-head one (QEMU falls back to
16/63), an entry with zero sectors, and no signature at all."""

from __future__ import annotations

import pytest

from blockbed.devices.geometry import Mbr
from blockbed.devices.virtio import layout as L
from test_virtio_legacy import MiB, QLegacyBlk, _QemuQtest

SIZE = 64 * MiB


def _disk(end_head: int, end_sec: int, sectors: int = 1000, signature: bool = True) -> bytes:
    part = dict(status=0x80, start_head=1, start_sector_cyl=1, start_cyl=0, type=0x83,
                end_head=end_head, end_sector_cyl=end_sec, end_cyl=100, lba_start=63,
                sectors=sectors)
    empty = dict(part, status=0, type=0, end_head=0, end_sector_cyl=0, sectors=0)
    mbr = bytearray(Mbr.build(dict(boot_code=bytes(446), partitions=[part] + [empty] * 3)))
    if not signature:
        mbr[510:512] = b"\0\0"
    return bytes(mbr) + bytes(SIZE - 512)


CASES = {"16 heads": _disk(15, 63), "4 heads 32 sectors": _disk(3, 32),
         "255 heads": _disk(254, 63), "no sectors": _disk(15, 63, sectors=0),
         "no signature": _disk(15, 63, signature=False), "blank": bytes(SIZE)}


def test_the_declaration_is_the_classic_mbr():
    raw = _disk(15, 63)[:512]
    parsed = Mbr.parse(raw)
    assert Mbr.sizeof() == 512 and raw[446] == 0x80 and raw[446 + 5] == 15
    assert parsed.partitions[0].lba_start == 63 and raw[510:512] == b"\x55\xaa"


def _geometry(inp, io: int = 0xC000) -> tuple[int, int, int]:
    base = io + L.LEGACY_SIZE + 16
    return inp(base, 2), inp(base + 2, 1), inp(base + 3, 1)


@pytest.mark.parametrize("name", list(CASES))
def test_geometry_matches_qemu(tmp_path, name):
    from tests.conftest import need_tool
    need_tool("qemu-system-x86_64")
    data = CASES[name]
    disk = tmp_path / "d.raw"
    disk.write_bytes(data)
    q = _QemuQtest(disk, "")
    try:
        q.cfg_write(0x10, 0xC000)
        q.cfg_write(0x04, 0x5, 2)
        want = _geometry(q.inp)
    finally:
        q.close()
    v = QLegacyBlk(data, transport="transitional")
    try:
        got = _geometry(lambda port, size: {1: v.qt.inb, 2: v.qt.inw}[size](port), v.io)
    finally:
        v.close()
    assert got == want, name
