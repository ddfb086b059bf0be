"""The read-only qed and vdi drivers read what qemu-img writes, as qemu-img reads it;
damaged headers and tables fail with one clear line."""

from __future__ import annotations

import struct
import subprocess

import pytest

from fmt_helpers import check_against_qemu, expect_clear_error, make_raw, qemu


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "src.raw"
    make_raw(path)
    return path


@pytest.mark.parametrize("fmt,opts", [("qed", "cluster_size=65536"),
                                      ("qed", "cluster_size=4096"),
                                      ("qed", "table_size=2"),
                                      ("qed", "table_size=16,cluster_size=4096"),
                                      ("vdi", "static=off"),
                                      ("vdi", "static=on")])
def test_converted_image_reads_as_qemu_reads_it(capsys, qemu_img, tmp_path, raw, fmt, opts):
    img = tmp_path / f"disk.{fmt}"
    qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, "-o", opts, str(raw), str(img))
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)


@pytest.mark.parametrize("fmt", ["qed", "vdi"])
def test_created_image_with_a_write(capsys, qemu_img, qemu_io, tmp_path, fmt):
    img = tmp_path / f"new.{fmt}"
    qemu(qemu_img, "create", "-q", "-f", fmt, str(img), "10M")
    check_against_qemu(capsys, qemu_img, tmp_path, img, None)
    subprocess.run([qemu_io, "-f", fmt, "-c", "write -P 0x5a 1536k 8k", str(img)],
                   check=True, capture_output=True)
    if fmt == "qed":
        subprocess.run([qemu_io, "-f", fmt, "-c", "write -z 0 64k", str(img)], check=True,
                       capture_output=True)
    check_against_qemu(capsys, qemu_img, tmp_path, img, None)


def _patch(img, offset, fmt, value):
    data = bytearray(img.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    img.write_bytes(data)


def _image(qemu_img, tmp_path, raw, fmt):
    img = tmp_path / f"bad.{fmt}"
    qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, str(raw), str(img))
    return img


# QED header: cluster 4, table 8, header 12, features 16, l1 40, image size 48
QED_CASES = [
    ("features", 16, "<Q", 1 << 9, ["unsupported QED features: 0x200"]),
    ("backing", 16, "<Q", 1, ["backing file name", "outside the header"]),
    ("cluster", 4, "<I", 3000, ["invalid cluster size 3000"]),
    ("cluster-huge", 4, "<I", 1 << 30, ["invalid cluster size"]),
    ("table", 8, "<I", 32, ["invalid table size 32"]),
    ("header", 12, "<I", 1 << 20, ["invalid header size"]),
    ("size", 48, "<Q", 1 << 62, ["invalid image size"]),
    ("l1-eof", 40, "<Q", 1 << 40, ["L1 table", "past the end"]),
    ("l1-align", 40, "<Q", 65536 + 8, ["L1 table offset", "invalid"]),
]


def test_qed_tables_past_eof(capsys, qemu_img, tmp_path, raw):
    img = _image(qemu_img, tmp_path, raw, "qed")
    l1 = struct.unpack_from("<Q", img.read_bytes(), 40)[0]
    l2 = struct.unpack_from("<Q", img.read_bytes(), l1)[0]
    data = img.read_bytes()
    _patch(img, l2, "<Q", 1 << 40)
    expect_clear_error(capsys, img, [], "cluster 0", "past the end", at_open=False)
    img.write_bytes(data)
    _patch(img, l1, "<Q", 1 << 40)
    expect_clear_error(capsys, img, [], "L2 table 0", "past the end")
    img.write_bytes(data[:len(data) // 2])
    expect_clear_error(capsys, img, [], "past the end", at_open=False)
    img.write_bytes(data[:40])
    expect_clear_error(capsys, img, ["-f", "qed"], "too small")


# VDI header: version 68, type 76, bmap 340, data 344, sector size 360, disk size 368,
# block size 376, block extra 380, blocks 384, link uuid 424, parent uuid 440
VDI_CASES = [
    ("version", 68, "<I", 0x00020000, ["unsupported VDI image (version 2.0)"]),
    ("type", 76, "<I", 4, ["image type 4"]),
    ("bmap-align", 340, "<I", 0x201, ["unaligned block map offset 0x201"]),
    ("data-align", 344, "<I", 0x401, ["unaligned data offset 0x401"]),
    ("sector", 360, "<I", 4096, ["sector size 4096 is not 512"]),
    ("block", 376, "<I", 2 << 20, ["block size 2097152 is not 1048576"]),
    ("extra", 380, "<I", 512, ["block_extra"]),
    ("disk-size", 368, "<Q", 1 << 40, ["image bitmap has room for"]),
    ("blocks-huge", 384, "<I", 0x7FFFFFFF, ["too many blocks"]),
    ("bmap-eof", 384, "<I", 0x3FFFFFFF, ["block map", "past the end"]),
    ("bmap-offset", 340, "<I", 0x7FFFFE00, ["block map", "past the end"]),
    ("link", 424, "<I", 1, ["non-NULL link UUID"]),
    ("parent", 440, "<I", 1, ["non-NULL parent UUID"]),
]


@pytest.mark.parametrize("image_format,case",
                         [("qed", c) for c in QED_CASES] + [("vdi", c) for c in VDI_CASES],
                         ids=lambda v: v if isinstance(v, str) else v[0])
def test_malformed_header(capsys, qemu_img, tmp_path, raw, image_format, case):
    _, off, fmt, value, words = case
    img = _image(qemu_img, tmp_path, raw, image_format)
    _patch(img, off, fmt, value)
    expect_clear_error(capsys, img, [], image_format, *words)


def test_vdi_block_past_eof_and_truncated(capsys, qemu_img, tmp_path, raw):
    img = _image(qemu_img, tmp_path, raw, "vdi")
    data = img.read_bytes()
    bmap = struct.unpack_from("<I", data, 340)[0]
    _patch(img, bmap, "<I", 0x1000)
    expect_clear_error(capsys, img, [], "block 0", "past the end")
    img.write_bytes(data[:len(data) // 2])
    expect_clear_error(capsys, img, [], "past the end")
    img.write_bytes(data[:300])
    expect_clear_error(capsys, img, ["-f", "vdi"], "too small")
    _patch(img, 64, "<I", 0x12345678)
    expect_clear_error(capsys, img, ["-f", "vdi"], "is not a vdi image")


@pytest.mark.parametrize("fmt", ["vmdk", "vpc", "vdi", "qed"])
def test_create_is_refused(capsys, tmp_path, fmt):
    from fmt_helpers import bb
    rc, _, err = bb(capsys, "create", "-f", fmt, str(tmp_path / "x"), "1M")
    assert rc == 1 and err.count("\n") == 1
    assert f"image format '{fmt}' cannot be created by blockbed" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backing_fmt", ["raw", "qed"])
def test_qed_backing_file(capsys, qemu_img, qemu_io, tmp_path, raw, backing_fmt):
    """Unallocated clusters come from the backing file (raw: no-probe bit; qed: probed);
    map descends into it as qemu-img's does."""
    base = raw
    if backing_fmt == "qed":
        base = tmp_path / "base.qed"
        qemu(qemu_img, "convert", "-f", "raw", "-O", "qed", str(raw), str(base))
    child = tmp_path / "child.qed"
    qemu(qemu_img, "create", "-q", "-f", "qed", "-b", base.name, "-F", backing_fmt,
         str(child))
    subprocess.run([qemu_io, "-f", "qed", "-c", "write -P 0x77 60k 72k", "-c",
                    "write -z 3M 64k", str(child)], check=True, capture_output=True)
    check_against_qemu(capsys, qemu_img, tmp_path, child, None)


def test_qed_backing_faults(capsys, qemu_img, tmp_path):
    a, b = tmp_path / "a.qed", tmp_path / "b.qed"
    qemu(qemu_img, "create", "-q", "-f", "qed", str(b), "1M")
    qemu(qemu_img, "create", "-q", "-f", "qed", "-b", "b.qed", "-F", "qed", str(a))
    qemu(qemu_img, "create", "-q", "-f", "qed", "-b", "a.qed", "-F", "qed", str(b))
    expect_clear_error(capsys, a, [], "creates an infinite loop")
    b.unlink()
    expect_clear_error(capsys, a, [], "could not open backing file", "b.qed")
    _patch(a, 56, "<I", 1 << 20)                        # the name outside the header
    expect_clear_error(capsys, a, [], "backing file name", "outside the header")
