"""The read-only vmdk driver reads what qemu-img writes, as qemu-img reads it.

Differential: images made by ``qemu-img create -f vmdk`` and ``qemu-img convert -O vmdk
-o subformat=...`` from a raw pattern (data and holes) compare equal to the pattern,
convert to the same raw bytes as ``qemu-img convert -O raw``, and report the same
virtual size, format and map.  A corpus of damaged images fails with one clear line.
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from blockbed.block import registry
from blockbed.block.driver import BlockError
from fmt_helpers import MiB, bb, check_against_qemu, expect_clear_error, make_raw, qemu

SUBFORMATS = ["monolithicSparse", "streamOptimized", "monolithicFlat",
              "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
              "monolithicSparse,compat6=on", "streamOptimized,compat6=on"]


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "src.raw"
    make_raw(path)
    return path


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_converted_image_reads_as_qemu_reads_it(capsys, qemu_img, tmp_path, raw, subformat):
    img = tmp_path / "disk.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
         str(raw), str(img))
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized",
                                       "monolithicFlat", "twoGbMaxExtentSparse"])
def test_created_empty_image_reads_zeros(capsys, qemu_img, tmp_path, subformat):
    img = tmp_path / "empty.vmdk"
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(img),
         "10M")
    check_against_qemu(capsys, qemu_img, tmp_path, img, None)


def test_zero_grains_read_as_zeros(capsys, qemu_img, qemu_io, tmp_path, raw):
    """GTE 1 (zeroed_grain=on, written by qemu-io write -z) is a zero grain, not sector 1."""
    img = tmp_path / "z.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", "zeroed_grain=on",
         str(raw), str(img))
    subprocess.run([qemu_io, "-f", "vmdk", "-c", "write -z 0 64k", str(img)], check=True,
                   capture_output=True)
    data = bytearray(raw.read_bytes())
    data[:65536] = bytes(65536)
    raw.write_bytes(data)
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)
    rc, out, _ = bb(capsys, "map", "--output=json", str(img))
    assert '"start": 0, "length": 65536, "depth": 0, "present": true, "zero": true, ' \
           '"data": false' in out


@pytest.mark.parametrize("kind", ["Sparse", "Flat"])
def test_several_extents_across_the_2g_boundary(capsys, qemu_img, qemu_io, tmp_path, kind):
    """twoGbMaxExtent{Sparse,Flat} of 5 GiB: three extent files; data on both sides of each
    seam."""
    img = tmp_path / "big.vmdk"
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat=twoGbMaxExtent{kind}",
         str(img), "5G")
    seams = [(2 << 30) - 4096, (4 << 30) - 4096, (5 << 30) - 12288]
    for n, off in enumerate(seams):
        subprocess.run([qemu_io, "-f", "vmdk", "-c", f"write -P {n + 0x41} {off} 8k",
                        str(img)], check=True, capture_output=True)
    assert len(list(tmp_path.glob(f"big-{kind[0].lower()}*.vmdk"))) == 3
    rc, out, err = bb(capsys, "map", "--output=json", str(img))
    assert rc == 0, err
    assert out == qemu(qemu_img, "map", "--output=json", str(img)).stdout
    node = registry.open_image(str(img), None, read_only=True)
    try:
        assert node.length() == 5 << 30
        for n, off in enumerate(seams):
            buf = bytearray(16384)
            node.read(off - 4096, memoryview(buf))
            assert buf == bytes(4096) + bytes([n + 0x41]) * 8192 + bytes(4096)
    finally:
        node.close()


def test_stream_footer_header(capsys, qemu_img, tmp_path, raw):
    """gdOffset = GD_AT_END: the grain directory comes from the footer at EOF-1536."""
    img = tmp_path / "s.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
         str(raw), str(img))
    data = bytearray(img.read_bytes())
    header = bytes(data[:512])
    footer_marker = struct.pack("<QII", 1, 0, 3).ljust(512, b"\0")
    eos = bytes(512)
    data[56:64] = struct.pack("<Q", 0xFFFFFFFFFFFFFFFF)
    img.write_bytes(bytes(data) + footer_marker + header + eos)
    rc, out, err = bb(capsys, "compare", "-F", "raw", str(img), str(raw))
    assert (rc, out.strip()) == (0, "Images are identical."), err


def test_write_open_is_refused(tmp_path, qemu_img):
    img = tmp_path / "d.vmdk"
    qemu(qemu_img, "create", "-q", "-f", "vmdk", str(img), "1M")
    with pytest.raises(BlockError, match="read-only"):
        registry.open_image(str(img), None, read_only=False)
    node = registry.open_image(str(img), "vmdk", read_only=True)
    try:
        with pytest.raises(BlockError, match="read-only"):
            node.write(0, memoryview(bytes(512)))
    finally:
        node.close()


# --- malformed images ------------------------------------------------------------------------
def _sparse(qemu_img, tmp_path, raw, subformat="monolithicSparse"):
    img = tmp_path / "bad.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
         str(raw), str(img))
    return img


def _patch(img, offset, fmt, value):
    data = bytearray(img.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    img.write_bytes(data)


# header field offsets (SparseExtentHeader, little-endian)
VERSION, CAPACITY, GRAIN, GTES, GD, GRAIN_OFF = 4, 12, 20, 44, 56, 64
HEADER_CASES = [
    ("version", VERSION, "<I", 7, ["unsupported VMDK version 7"]),
    ("gtes", GTES, "<I", 4096, ["L2 table size too big"]),
    ("grain0", GRAIN, "<Q", 0, ["L1 entry size is invalid"]),
    ("grain-huge", GRAIN, "<Q", 1 << 30, ["invalid granularity"]),
    ("gd-huge", CAPACITY, "<Q", 1 << 52, ["L1 size too big"]),
    ("capacity", CAPACITY, "<Q", 1 << 60, ["capacity", "too large"]),
    ("gd-past-eof", CAPACITY, "<Q", 1 << 40, ["grain directory", "past the end"]),
    ("gd-offset", GD, "<Q", 1 << 40, ["grain directory", "past the end"]),
    ("grain-offset", GRAIN_OFF, "<Q", 1 << 30, ["file truncated, expecting at least"]),
]


@pytest.mark.parametrize("case", HEADER_CASES, ids=lambda c: c[0])
def test_malformed_header(capsys, qemu_img, tmp_path, raw, case):
    _, off, fmt, value, words = case
    img = _sparse(qemu_img, tmp_path, raw)
    _patch(img, off, fmt, value)
    expect_clear_error(capsys, img, [], "vmdk", *words)


def _gd_sector(img) -> int:
    return struct.unpack_from("<Q", img.read_bytes(), GD)[0]


def test_grain_table_past_eof(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw)
    _patch(img, _gd_sector(img) * 512, "<I", 0x7FFFFFF0)
    expect_clear_error(capsys, img, [], "grain table 0", "past the end")


def test_grain_past_eof(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw)
    gt = struct.unpack_from("<I", img.read_bytes(), _gd_sector(img) * 512)[0]
    _patch(img, gt * 512, "<I", 0x7FFFFFF0)
    expect_clear_error(capsys, img, [], "grain 0", "past the end", at_open=False)


def test_truncated_files(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw)
    data = img.read_bytes()
    img.write_bytes(data[:len(data) // 2])             # grains past the end
    expect_clear_error(capsys, img, [], "past the end", at_open=False)
    img.write_bytes(data[:600])                         # tables past the end
    expect_clear_error(capsys, img, [], "vmdk")
    img.write_bytes(data[:40])
    expect_clear_error(capsys, img, ["-f", "vmdk"], "vmdk")


def test_bad_magic_is_not_vmdk(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw)
    _patch(img, 0, "4s", b"KDMW")
    expect_clear_error(capsys, img, ["-f", "vmdk"], "is not a vmdk image")


def test_corrupt_compressed_grain(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw, "streamOptimized")
    gt = struct.unpack_from("<I", img.read_bytes(), _gd_sector(img) * 512)[0]
    grain0 = struct.unpack_from("<I", img.read_bytes(), gt * 512)[0]
    data = bytearray(img.read_bytes())
    data[grain0 * 512 + 12:grain0 * 512 + 40] = b"\xff" * 28
    img.write_bytes(data)
    expect_clear_error(capsys, img, [], "compressed grain", "corrupt", at_open=False)
    _patch(img, grain0 * 512 + 8, "<I", 1 << 31)
    expect_clear_error(capsys, img, [], "compressed grain", "invalid size", at_open=False)


def test_bad_stream_footer(capsys, qemu_img, tmp_path, raw):
    img = _sparse(qemu_img, tmp_path, raw, "streamOptimized")
    _patch(img, GD, "<Q", 0xFFFFFFFFFFFFFFFF)
    expect_clear_error(capsys, img, [], "invalid footer")


DESCRIPTOR_CASES = [
    ("missing-extent", 'RW 20480 FLAT "nothere-flat.vmdk" 0', ["could not open extent"]),
    ("bad-line", 'RW x FLAT "d-flat.vmdk" 0', ["invalid extent line"]),
    ("flat-no-offset", 'RW 20480 FLAT "d-flat.vmdk"', ["invalid extent line"]),
    ("protocol", 'RW 20480 FLAT "nbd://localhost/x" 0', ["names a protocol"]),
    ("type", 'RW 20480 VMFSRDM "d-flat.vmdk"', ["unsupported extent type 'VMFSRDM'"]),
    ("too-long", 'RW 99999999 FLAT "d-flat.vmdk" 0', ["flat extent", "past the end"]),
    ("no-extents", '', ["lists 0 extents"]),
]


@pytest.mark.parametrize("case", DESCRIPTOR_CASES, ids=lambda c: c[0])
def test_malformed_descriptor(capsys, tmp_path, case):
    _, line, words = case
    (tmp_path / "d-flat.vmdk").write_bytes(bytes(20480 * 512))
    img = tmp_path / "d.vmdk"
    img.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                   f'createType="monolithicFlat"\n\n{line}\n')
    expect_clear_error(capsys, img, [], "vmdk", *words)


def test_missing_parent_and_unknown_type_refused(capsys, tmp_path):
    (tmp_path / "d-flat.vmdk").write_bytes(bytes(512))
    img = tmp_path / "d.vmdk"
    ext = 'RW 1 FLAT "d-flat.vmdk" 0\n'
    img.write_text('version=1\nparentCID=1234abcd\nparentFileNameHint="p.vmdk"\n'
                   f'createType="monolithicFlat"\n{ext}')
    expect_clear_error(capsys, img, [], "could not open backing file", "p.vmdk")
    img.write_text(f'version=1\ncreateType="custom"\n{ext}')
    expect_clear_error(capsys, img, [], "unsupported image type 'custom'")


def test_descriptor_with_rdonly_and_zero_extents(capsys, tmp_path):
    """VMware reads RDONLY and ZERO extents (QEMU skips them; documented difference)."""
    (tmp_path / "a-flat.vmdk").write_bytes(b"\x11" * MiB)
    img = tmp_path / "d.vmdk"
    img.write_text('version=1\ncreateType="monolithicFlat"\nRDONLY 2048 FLAT "a-flat.vmdk" 0\n'
                   'RW 2048 ZERO "zero"\n')
    node = registry.open_image(str(img), "vmdk", read_only=True)
    try:
        assert node.length() == 2 * MiB
        buf = bytearray(4096)
        node.read(MiB - 2048, memoryview(buf))
        assert buf == b"\x11" * 2048 + bytes(2048)
    finally:
        node.close()


def test_descriptor_without_a_host_directory(tmp_path):
    """A descriptor read from a node with no host path (an NBD export) cannot name extents
    relative to itself (QEMU: "Cannot use relative paths with VMDK descriptor file")."""
    from blockbed.block.memory import MemoryDriver
    from blockbed.block.vmdk import VmdkDriver
    text = b'version=1\ncreateType="monolithicFlat"\nRW 1 FLAT "x-flat.vmdk" 0\n'
    mem = MemoryDriver(len(text))
    mem.write(0, memoryview(text))
    with pytest.raises(BlockError, match="cannot use relative paths"):
        VmdkDriver(mem, read_only=True)


def _delta(qemu_img, qemu_io, tmp_path, raw):
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", str(raw), str(base))
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(child))
    subprocess.run([qemu_io, "-f", "vmdk", "-c", "write -P 0x77 60k 72k", "-c",
                    "write -P 0x66 3M 4k", str(child)], check=True, capture_output=True)
    return base, child


def test_delta_link_reads_through_the_parent(capsys, qemu_img, qemu_io, tmp_path, raw):
    """A child made by qemu-img create -b: unallocated grains come from the parent, map
    descends into it (depth 1), as qemu-img's."""
    _, child = _delta(qemu_img, qemu_io, tmp_path, raw)
    check_against_qemu(capsys, qemu_img, tmp_path, child, None)
    rc, out, _ = bb(capsys, "map", "--output=json", str(child))
    assert '"depth": 1' in out
    rc, out, _ = bb(capsys, "map", str(child))          # the File column names the parent
    assert out == qemu(qemu_img, "map", str(child)).stdout and "base.vmdk" in out


def test_human_map_names_the_extent_files(capsys, qemu_img, tmp_path, raw):
    img = tmp_path / "two.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o",
         "subformat=twoGbMaxExtentSparse", str(raw), str(img))
    rc, out, _ = bb(capsys, "map", str(img))
    assert out == qemu(qemu_img, "map", str(img)).stdout and "two-s001.vmdk" in out


def test_delta_link_faults(capsys, qemu_img, qemu_io, tmp_path, raw):
    base, child = _delta(qemu_img, qemu_io, tmp_path, raw)
    data = base.read_bytes()
    i = data.index(b"CID=")
    base.write_bytes(data[:i + 4] + b"0badc0de" + data[i + 12:])       # the parent changed
    expect_clear_error(capsys, child, [], "has CID 0badc0de", "parentCID=")
    base.write_bytes(data)
    cdata = child.read_bytes()
    child.write_bytes(cdata.replace(b'parentFileNameHint="base.vmdk"',
                                    b'parentFileNameHint="chil.vmdk"').replace(
                                        b"parentCID", b"parentCID", 1))
    (tmp_path / "chil.vmdk").symlink_to(child)                       # a loop: child -> itself
    expect_clear_error(capsys, child, [], "creates an infinite loop")


def test_vmfs_descriptor(capsys, qemu_img, tmp_path, raw):
    """createType vmfs with a VMFS extent (ESX's flat disk), as qemu-img reads it.  (No
    blank line before the extent line: QEMU 7.2's sscanf reads across it and adds the
    extent twice, doubling the disk; blockbed reads such a descriptor correctly.)"""
    size = raw.stat().st_size
    flat = tmp_path / "esx-flat.vmdk"
    flat.write_bytes(raw.read_bytes())
    img = tmp_path / "esx.vmdk"
    img.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                   'createType="vmfs"\n# Extent description\n'
                   f'RW {size // 512} VMFS "esx-flat.vmdk"\n')
    check_against_qemu(capsys, qemu_img, tmp_path, img, raw)


def _cowd(raw_bytes: bytes, grain_sectors: int = 16) -> bytes:
    """An ESX COWD (vmfsSparse) extent of ``raw_bytes``: header, one-entry grain directory
    at sector 4, one 4096-entry grain table at sector 5, then the non-zero grains."""
    sectors = -(-len(raw_bytes) // 512)
    gb = grain_sectors * 512
    gt = [0] * 4096
    grains = []
    next_sector = 5 + 32
    for g in range(-(-len(raw_bytes) // gb)):
        chunk = raw_bytes[g * gb:(g + 1) * gb]
        if chunk.strip(b"\0"):
            gt[g] = next_sector
            grains.append(chunk.ljust(gb, b"\0"))
            next_sector += grain_sectors
    header = struct.pack("<4sIIIIII", b"COWD", 1, 3, sectors, grain_sectors, 4, 1)
    return (header.ljust(4 * 512, b"\0") + struct.pack("<I", 5).ljust(512, b"\0") +
            struct.pack("<4096I", *gt) + b"".join(grains))


def test_cowd_extent_reads_as_qemu_reads_it(capsys, qemu_img, tmp_path, raw):
    """ESX vmfsSparse (COWD) named by a vmfsSparse descriptor, as qemu-img reads it; alone
    (qemu-img refuses a sparse extent without a descriptor CID) it reads the same."""
    img = tmp_path / "esx-delta.vmdk"
    img.write_bytes(_cowd(raw.read_bytes()))
    rc, out, err = bb(capsys, "compare", "-F", "raw", str(img), str(raw))
    assert (rc, out.strip()) == (0, "Images are identical."), err
    desc = tmp_path / "esx.vmdk"
    desc.write_text('version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="vmfsSparse"\n'
                    f'RW {raw.stat().st_size // 512} VMFSSPARSE "esx-delta.vmdk"\n')
    check_against_qemu(capsys, qemu_img, tmp_path, desc, raw)
    _patch(img, 24, "<I", 0)                    # no grain directory to cover the disk
    expect_clear_error(capsys, img, [], "does not cover")
    _patch(img, 16, "<I", 0)
    expect_clear_error(capsys, img, [], "L1 entry size is invalid")
