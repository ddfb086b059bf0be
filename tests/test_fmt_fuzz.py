"""Random damage to foreign images: opening and reading them raises BlockError (one clear
line) or succeeds — never another exception, never a read outside the file."""

from __future__ import annotations

import os
import random

import pytest

from blockbed.block import registry
from blockbed.block.driver import BlockError
from fmt_helpers import qemu

MiB = 1 << 20
KINDS = [("vmdk", "subformat=monolithicSparse"), ("vmdk", "subformat=streamOptimized"),
         ("vpc", "subformat=dynamic"), ("vdi", "static=off"), ("qed", "cluster_size=4096"),
         ("vhdx", "block_size=1M")]


def _source(tmp_path):
    raw = tmp_path / "src.raw"
    rnd = random.Random(7)
    data = bytearray(2 * MiB)
    for off in (0, 300_000, MiB + 4096, 2 * MiB - 5000):
        data[off:off + 4000] = rnd.randbytes(4000)
    raw.write_bytes(data)
    return raw


def _read_all(node) -> None:
    size = node.length()
    node.block_status(0, size)
    buf = bytearray(256 * 1024)
    for off in range(0, size, len(buf)):
        n = min(len(buf), size - off)
        node.read(off, memoryview(buf)[:n])


@pytest.mark.parametrize("fmt,opts", KINDS, ids=lambda v: v.split("=")[-1])
def test_damaged_metadata_never_crashes(qemu_img, tmp_path, fmt, opts):
    img = tmp_path / f"disk.{fmt}"
    qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, "-o", opts, str(_source(tmp_path)),
         str(img))
    good = img.read_bytes()
    node = registry.open_image(str(img), fmt, read_only=True)
    try:
        _read_all(node)
    finally:
        node.close()
    rnd = random.Random(f"{fmt}{opts}")
    meta_end = min(len(good), 96 * 1024)            # header, tables, first grains
    errors = 0
    for _ in range(int(os.environ.get("FMT_FUZZ_N", "150"))):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 8)):
            pos = rnd.randrange(meta_end) if rnd.random() < 0.8 else rnd.randrange(len(data))
            data[pos] = rnd.randrange(256) if rnd.random() < 0.5 else data[pos] ^ 0xFF
        if rnd.random() < 0.1:
            data = data[:rnd.randrange(len(data))]
        img.write_bytes(data)
        try:
            node = registry.open_image(str(img), fmt, read_only=True)
        except BlockError as e:
            assert "\n" not in str(e)
            errors += 1
            continue
        try:
            _read_all(node)
        except BlockError as e:
            assert "\n" not in str(e)
            errors += 1
        finally:
            node.close()
    assert errors                                   # the damage was noticed sometimes


def test_random_descriptors_never_crash(tmp_path):
    """Descriptor text assembled from plausible and broken pieces: BlockError or a node."""
    (tmp_path / "f.vmdk").write_bytes(bytes(4096))
    rnd = random.Random(11)
    pieces = ['createType="monolithicFlat"', 'createType="twoGbMaxExtentSparse"',
              'createType="vmfs"', 'createType=', 'parentCID=ffffffff', 'parentCID=zz',
              'parentCID=12345678', 'parentFileNameHint="f.vmdk"', 'CID=1', 'version=1',
              'RW 8 FLAT "f.vmdk" 0', 'RW 8 FLAT "f.vmdk" 99', 'RW 8 SPARSE "f.vmdk"',
              'RDONLY 4 ZERO "z"', 'RW -1 FLAT "f.vmdk" 0', 'RW 8 FLAT "f.vmdk', 'RW',
              'NOACCESS 8 FLAT "f.vmdk" 0', 'RW 8 VMFS "f.vmdk"', 'RW 8 VMFS "/nonexistent"',
              '# comment', '', '\x00', 'ddb.geometry.cylinders = "20"', '"', '==']
    img = tmp_path / "d.vmdk"
    for _ in range(int(os.environ.get("FMT_FUZZ_N", "150")) * 2):
        lines = [rnd.choice(pieces) for _ in range(rnd.randint(1, 8))]
        img.write_text("# Disk DescriptorFile\n" + "\n".join(lines) + "\n")
        try:
            node = registry.open_image(str(img), "vmdk", read_only=True)
        except BlockError as e:
            assert "\n" not in str(e)
            continue
        try:
            _read_all(node)
        except BlockError as e:
            assert "\n" not in str(e)
        finally:
            node.close()
