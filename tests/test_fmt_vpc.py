"""The read-only vpc (VHD) driver reads what qemu-img writes, as qemu-img reads it.

Fixed and dynamic disks made by ``qemu-img create/convert -O vpc`` (with and without
``force_size``) read back equal to the raw pattern and to ``qemu-img convert -O raw``,
with qemu-img's virtual size (CHS or current_size, by creator application) and map.
Damaged footers, dynamic headers and BATs fail with one clear line.
"""

from __future__ import annotations

import json
import struct

import pytest

from blockbed.block import registry
from blockbed.block.vpc import checksum
from fmt_helpers import bb, check_against_qemu, expect_clear_error, make_raw, qemu

VPC = ["-f", "vpc"]


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "src.raw"
    make_raw(path)
    return path


@pytest.mark.parametrize("opts", ["subformat=dynamic", "subformat=fixed",
                                  "subformat=dynamic,force_size=on",
                                  "subformat=fixed,force_size=on"])
def test_converted_image_reads_as_qemu_reads_it(capsys, qemu_img, tmp_path, raw, opts):
    img = tmp_path / "disk.vhd"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vpc", "-o", opts, str(raw), str(img))
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw, VPC)
    if "fixed" not in opts:                  # dynamic: probed as vpc, as qemu-img does
        check_against_qemu(capsys, qemu_img, tmp_path, img, raw)


@pytest.mark.parametrize("opts", ["subformat=dynamic", "subformat=fixed"])
@pytest.mark.parametrize("size", ["10M", "1000000000", "3G"])
def test_created_image_size_as_qemu(capsys, qemu_img, tmp_path, opts, size):
    img = tmp_path / "new.vhd"
    qemu(qemu_img, "create", "-q", "-f", "vpc", "-o", opts, str(img), size)
    rc, out, err = bb(capsys, "info", *VPC, "--output=json", str(img))
    assert rc == 0, err
    ref = json.loads(qemu(qemu_img, "info", *VPC, "--output=json", str(img)).stdout)
    assert json.loads(out)["virtual-size"] == ref["virtual-size"]
    if size == "10M":
        check_against_qemu(capsys, qemu_img, tmp_path, img, None, VPC)


def test_force_size_calc_option(qemu_img, tmp_path):
    """A "qem2" image (force_size=on) is sized by current_size; force_size_calc=chs makes it
    the CHS size, as QEMU's option does."""
    img = tmp_path / "f.vhd"
    qemu(qemu_img, "create", "-q", "-f", "vpc", "-o", "force_size=on", str(img), "1000000000")
    for calc in ("chs", "current_size"):
        ref = json.loads(qemu(qemu_img, "info", "--output=json", "--image-opts",
                              f"driver=vpc,force_size_calc={calc},file.filename={img}").stdout)
        node = registry.open_image(str(img), "vpc", read_only=True,
                                   options={"force_size_calc": calc})
        try:
            assert node.length() == ref["virtual-size"]
        finally:
            node.close()
    assert ref["virtual-size"] == 1000000000


# --- malformed images ------------------------------------------------------------------------
def _dynamic(qemu_img, tmp_path, raw, opts="subformat=dynamic"):
    img = tmp_path / "bad.vhd"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vpc", "-o", opts, str(raw), str(img))
    return img


def _patch(img, offset, fmt, value, footer_at=0):
    """Patch a field, then make the footer at ``footer_at`` checksum right again."""
    data = bytearray(img.read_bytes())
    if footer_at < 0:
        footer_at += len(data)
    struct.pack_into(fmt, data, offset if offset >= 0 else len(data) + offset, value)
    foot = data[footer_at:footer_at + 512]
    struct.pack_into(">I", data, footer_at + 64, checksum(bytes(foot), slice(64, 68)))
    img.write_bytes(data)


CURRENT, CYLS, TYPE, DATA_OFFSET = 48, 56, 60, 16
DYN = 512
TABLE_OFFSET, ENTRIES, BLOCK_SIZE = DYN + 16, DYN + 28, DYN + 32
CASES = [
    ("differencing", TYPE, ">I", 4, ["differencing", "parent"]),
    ("type", TYPE, ">I", 9, ["unknown disk type 9"]),
    ("fixed-at-0", TYPE, ">I", 2, ["fixed disk with its footer at offset 0"]),
    ("dyn-magic", DYN, "8s", b"cxsparsx", ["invalid header magic"]),
    ("block-size", BLOCK_SIZE, ">I", 3000, ["invalid block size 3000"]),
    ("block-size0", BLOCK_SIZE, ">I", 0, ["invalid block size 0"]),
    ("bat-small", ENTRIES, ">I", 1, ["page table too small"]),
    ("bat-huge", ENTRIES, ">I", 0x40000000, ["BAT", "past the end"]),
    ("bat-offset", TABLE_OFFSET, ">Q", 1 << 40, ["BAT", "past the end"]),
    ("data-offset", DATA_OFFSET, ">Q", 1 << 40, ["dynamic disk header", "past the end"]),
    ("size", CURRENT, ">Q", 1 << 50, ["too big"]),
    ("creator", 28, "4s", b"qem2", ["page table too small"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_malformed_dynamic(capsys, qemu_img, tmp_path, raw, case):
    _, off, fmt, value, words = case
    img = _dynamic(qemu_img, tmp_path, raw)
    if case[0] == "creator":                    # current_size past what the BAT covers
        _patch(img, CURRENT, ">Q", 1 << 40)
    if case[0] == "size":                       # sized by current_size
        _patch(img, 28, "4s", b"qem2")
    _patch(img, off, fmt, value)
    expect_clear_error(capsys, img, [], "vpc", *words)


def test_bad_checksum(capsys, qemu_img, tmp_path, raw):
    img = _dynamic(qemu_img, tmp_path, raw)
    data = bytearray(img.read_bytes())
    data[70] ^= 1
    img.write_bytes(data)
    expect_clear_error(capsys, img, [], "incorrect header checksum")


def test_bat_entry_past_eof(capsys, qemu_img, tmp_path, raw):
    img = _dynamic(qemu_img, tmp_path, raw)
    table = struct.unpack_from(">Q", img.read_bytes(), TABLE_OFFSET)[0]
    _patch(img, table, ">I", 0x7FFFFFF0)
    expect_clear_error(capsys, img, [], "block 0", "past the end")


def test_truncated(capsys, qemu_img, tmp_path, raw):
    img = _dynamic(qemu_img, tmp_path, raw)
    data = img.read_bytes()
    img.write_bytes(data[:len(data) // 2])
    expect_clear_error(capsys, img, [], "past the end")
    img.write_bytes(data[:1000])
    expect_clear_error(capsys, img, [], "past the end")
    img.write_bytes(data[:100])
    expect_clear_error(capsys, img, VPC, "vpc")


def test_fixed_larger_than_its_data(capsys, qemu_img, tmp_path, raw):
    img = _dynamic(qemu_img, tmp_path, raw, "subformat=fixed")
    _patch(img, -512 + 28, "4s", b"qem2", footer_at=-512)
    _patch(img, -512 + CURRENT, ">Q", 1 << 36, footer_at=-512)
    expect_clear_error(capsys, img, VPC, "larger than the data area")


def test_raw_file_is_not_vpc(capsys, tmp_path, raw):
    expect_clear_error(capsys, raw, VPC, "is not a vpc image")
