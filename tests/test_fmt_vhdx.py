"""The read-only vhdx driver reads what qemu-img writes, as qemu-img reads it; damaged
headers, region tables, metadata and BATs fail with one clear line."""

from __future__ import annotations

import struct
import subprocess

import pytest

from blockbed.block import vhdx
from fmt_helpers import check_against_qemu, expect_clear_error, make_raw, qemu

KiB = 1024


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "src.raw"
    make_raw(path)
    return path


@pytest.mark.parametrize("opts", ["subformat=dynamic", "subformat=fixed", "block_size=1M",
                                  "block_size=64M,block_state_zero=off"])
def test_converted_image_reads_as_qemu_reads_it(capsys, qemu_img, tmp_path, raw, opts):
    img = tmp_path / "disk.vhdx"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vhdx", "-o", opts, str(raw), str(img))
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)


def test_created_image_with_writes(capsys, qemu_img, qemu_io, tmp_path):
    img = tmp_path / "new.vhdx"
    qemu(qemu_img, "create", "-q", "-f", "vhdx", str(img), "10M")
    subprocess.run([qemu_io, "-f", "vhdx", "-c", "write -P 0x5a 1536k 8k", "-c",
                    "write -P 0x33 9M 64k", str(img)], check=True, capture_output=True)
    check_against_qemu(capsys, qemu_img, tmp_path, img, None)


def test_crc32c():
    assert vhdx.crc32c(b"123456789") == 0xE3069283          # the CRC-32C check value


def _image(qemu_img, tmp_path, raw):
    img = tmp_path / "bad.vhdx"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vhdx", str(raw), str(img))
    return img


def _layout(img):
    """(BAT offset, metadata region offset, {item guid: offset in the file})."""
    data = img.read_bytes()
    regions = {}
    for i in range(struct.unpack_from("<I", data, 192 * KiB + 8)[0]):
        guid, off, _len, _req = vhdx.REGION_ENTRY.unpack_from(data, 192 * KiB + 16 + 32 * i)
        regions[guid] = off
    meta = regions[vhdx.METADATA_GUID]
    items = {}
    for i in range(struct.unpack_from("<H", data, meta + 10)[0]):
        item, off, _size, _flags, _ = vhdx.META_ENTRY.unpack_from(data, meta + 32 + 32 * i)
        items[item] = meta + off
    return regions[vhdx.BAT_GUID], meta, items


def _patch(img, offset, fmt, value, crc_block=None):
    """Patch a field; ``crc_block`` (offset, size) gets its CRC-32C at +4 recomputed."""
    data = bytearray(img.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    if crc_block:
        start, size = crc_block
        struct.pack_into("<I", data, start + 4, 0)
        struct.pack_into("<I", data, start + 4, vhdx.crc32c(bytes(data[start:start + size])))
    img.write_bytes(data)


def test_malformed_headers(capsys, qemu_img, tmp_path, raw):
    img = _image(qemu_img, tmp_path, raw)
    good = img.read_bytes()
    _patch(img, 0, "8s", b"vhdxfilf")
    expect_clear_error(capsys, img, ["-f", "vhdx"], "is not a vhdx image")
    img.write_bytes(good)
    _patch(img, 64 * KiB + 100, "<I", 0xDEAD)               # one header bad: the other wins
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)
    _patch(img, 128 * KiB + 100, "<I", 0xDEAD)
    expect_clear_error(capsys, img, [], "no valid VHDX header found")
    img.write_bytes(good)
    for off in (64 * KiB, 128 * KiB):                       # the log may need replay
        _patch(img, off + 48, "<I", 1, crc_block=(off, 4 * KiB))
    expect_clear_error(capsys, img, [], "log GUID set", "qemu-img check -r all")
    img.write_bytes(good)
    for off in (192 * KiB, 256 * KiB):
        _patch(img, off + 100, "<I", 0xDEAD)
    expect_clear_error(capsys, img, [], "no valid region table")
    img.write_bytes(good)
    for off in (192 * KiB, 256 * KiB):                      # the BAT past the end
        _patch(img, off + 16 + 16, "<Q", 1 << 40, crc_block=(off, 64 * KiB))
        _patch(img, off + 16 + 32 + 16, "<Q", 1 << 40, crc_block=(off, 64 * KiB))
    expect_clear_error(capsys, img, [], "past the end")
    img.write_bytes(good[:200 * KiB])
    expect_clear_error(capsys, img, [], "too small")


@pytest.mark.parametrize("case", [
    ("block-size", "file", 0, "<I", 3 * 1024 * 1024, ["invalid block size 3145728"]),
    ("parent", "file", 4, "<I", 2, ["differencing images"]),
    ("size", "size", 0, "<Q", 1 << 50, ["invalid virtual disk size"]),
    ("sector", "lss", 0, "<I", 1024, ["invalid logical sector size 1024"]),
], ids=lambda c: c[0])
def test_malformed_metadata(capsys, qemu_img, tmp_path, raw, case):
    _, item, delta, fmt, value, words = case
    img = _image(qemu_img, tmp_path, raw)
    _, _, items = _layout(img)
    guid = {"file": vhdx.FILE_PARAMETERS, "size": vhdx.VIRTUAL_DISK_SIZE,
            "lss": vhdx.LOGICAL_SECTOR_SIZE}[item]
    _patch(img, items[guid] + delta, fmt, value)
    expect_clear_error(capsys, img, [], "vhdx", *words)


def test_malformed_bat(capsys, qemu_img, tmp_path, raw):
    img = _image(qemu_img, tmp_path, raw)
    good = img.read_bytes()
    bat, _, _ = _layout(img)
    _patch(img, bat, "<Q", (1 << 30 << 20) | 6)             # block 0 far past the end
    expect_clear_error(capsys, img, [], "block 0", "past the end")
    img.write_bytes(good)
    _patch(img, bat, "<Q", 7)                                # partially present
    expect_clear_error(capsys, img, [], "block 0", "invalid BAT entry state 7")
    img.write_bytes(good)
    _patch(img, bat, "<Q", 6)                                # offset 0: the headers
    expect_clear_error(capsys, img, [], "block 0", "points into the headers")
