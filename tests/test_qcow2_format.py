"""qcow2 format details: header encoding, extensions, lazy refcounts, the corrupt
bit, the L2 cache option, refcount widths."""

from __future__ import annotations

import logging
import struct
import subprocess

import pytest

from blockbed.block import registry
from blockbed.block.driver import BlockError
from blockbed.block.memory import MemoryDriver
from blockbed.block.qcow2 import probe
from blockbed.block.qcow2.check import check_image
from blockbed.block.qcow2.driver import Qcow2Driver
from blockbed.block.qcow2.header import (HeaderV2Struct, parse_header, serialize_header)
from blockbed.block.qcow2.imagecreate import create, create_on_node
from blockbed.block.qcow2.refcount import RefcountCodec


@pytest.mark.parametrize("opts", [
    "compat=0.10", "compat=1.1", "cluster_size=512", "cluster_size=2M,refcount_bits=64",
    "compression_type=zstd,lazy_refcounts=on",
])
def test_header_reencodes_byte_identically(qemu_img, tmp_path, opts):
    base = tmp_path / "base.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    img = tmp_path / "i.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.qcow2",
                    "-F", "qcow2", str(img), "64M"], check=True)
    raw = img.read_bytes()
    h = parse_header(raw[:h_cs(raw)])
    assert h.backing_file == "base.qcow2" and h.backing_format == "qcow2"
    enc = serialize_header(h)
    assert raw[:len(enc)] == enc


def h_cs(raw: bytes) -> int:
    return 1 << HeaderV2Struct.parse(raw).cluster_bits


def test_unknown_extension_survives_a_header_rewrite(qemu_img, tmp_path):
    img = tmp_path / "u.qcow2"
    create(str(img), 1 << 20, {})
    raw = bytearray(img.read_bytes())
    h = parse_header(bytes(raw[:65536]))
    h.unknown_extensions.append((0x12345678, b"opaque payload"))
    enc = serialize_header(h)
    raw[:len(enc)] = enc
    img.write_bytes(raw)
    node = registry.open_image(str(img), "qcow2")
    assert node.header.unknown_extensions == [(0x12345678, b"opaque payload")]
    node.change_backing_file("other.qcow2", "qcow2")
    node.close()
    again = parse_header(img.read_bytes()[:65536])
    assert again.unknown_extensions == [(0x12345678, b"opaque payload")]
    assert again.backing_file == "other.qcow2"
    out = subprocess.run([qemu_img, "info", "-U", str(img)], capture_output=True, text=True)
    assert "backing file: other.qcow2" in out.stdout


def test_probe():
    mem = MemoryDriver()
    create_on_node(mem, 1 << 20, {})
    assert probe(bytes(mem.buf[:512]), None) == 100
    assert probe(b"\0" * 512, None) == 0


@pytest.mark.parametrize("order", range(7))
def test_refcount_codec_widths(order):
    codec = RefcountCodec(order, 512)
    blk = codec.new()
    vals = [(i * 7 + 3) & codec.max for i in range(codec.entries)]
    for i, v in enumerate(vals):
        codec.set(blk, i, v)
    assert [codec.get(blk, i) for i in range(codec.entries)] == vals
    assert codec.all_values(codec.load(codec.dump(blk))) == vals
    if order == 0:        # LSB first within a byte, as QEMU stores it
        b = codec.new()
        codec.set(b, 0, 1)
        assert codec.dump(b)[0] == 1


def test_lazy_refcounts_dirty_bit_and_repair(caplog):
    mem = MemoryDriver()
    create_on_node(mem, 8 << 20, {"lazy_refcounts": "on", "cluster_size": "4096"})
    drv = Qcow2Driver(mem)
    assert mem.buf[79] & 1 == 0
    drv.write(0, b"\x42" * 100_000)
    assert mem.buf[79] & 1 == 1              # dirty bit set on first write
    drv.write(1 << 20, b"\x43" * 50_000)
    drv.mapping.cache.write_dirty()          # L2 tables reach the disk, refcounts do not
    assert drv.refcounts.cache.dirty         # (lazy: no dependency forces them first)
    crashed = bytes(mem.buf)                 # the host dies here
    drv.close()
    assert mem.buf[79] & 1 == 0              # cleared on clean close
    assert check_image(Qcow2Driver(MemoryDriver(bytes(mem.buf)), read_only=True)).corruptions == 0

    before = check_image(Qcow2Driver(MemoryDriver(crashed), read_only=True))
    assert before.corruptions > 0            # refcounts lag behind the L2 tables
    with caplog.at_level(logging.WARNING, logger="blockbed.qcow2"):
        fixed = Qcow2Driver(MemoryDriver(crashed))
    assert fixed.repair_message and "repaired" in fixed.repair_message
    assert any("repaired" in r.message for r in caplog.records)
    res = check_image(fixed)
    assert (res.corruptions, res.leaks) == (0, 0)
    buf = bytearray(100_000)
    fixed.read(0, memoryview(buf))
    assert buf == b"\x42" * 100_000


def test_qemu_dirty_lazy_image_is_repaired_on_open(qemu_img, qemu_io, tmp_path):
    img = tmp_path / "lazy.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
                    str(img), "8M"], check=True)
    subprocess.run([qemu_io, "-c", "write -P 9 0 300k", "-c", "abort", str(img)],
                   capture_output=True)
    assert img.read_bytes()[79] & 1                      # qemu left it dirty
    node = registry.open_image(str(img), "qcow2")
    assert node.repair_message
    node.close()
    chk = subprocess.run([qemu_img, "check", str(img)], capture_output=True, text=True)
    assert chk.returncode == 0, chk.stdout + chk.stderr


def test_corrupt_bit_set_on_overlap_and_writes_refused():
    mem = MemoryDriver()
    create_on_node(mem, 4 << 20, {})
    drv = Qcow2Driver(mem)
    drv.write(0, b"\1" * 65536)
    drv.flush()
    l1 = struct.unpack(">Q", mem.buf[0x30000:0x30008])[0] & 0x00FFFFFFFFFFFE00
    drv.close()
    # point the first data cluster at the L1 table
    mem.buf[l1:l1 + 8] = struct.pack(">Q", 0x30000 | (1 << 63))
    drv = Qcow2Driver(mem)
    with pytest.raises(BlockError, match="corrupt"):
        drv.write(0, b"\2" * 512)
    assert mem.buf[79] & 2                                   # corrupt bit on disk
    with pytest.raises(BlockError, match="corrupt"):
        drv.write(1 << 20, b"\3" * 512)                     # every later write refused
    buf = bytearray(512)
    drv.read(1 << 20, memoryview(buf))                       # reads still work
    with pytest.raises(BlockError, match="corrupt"):
        Qcow2Driver(mem)                                     # read-write open refused
    # the data cluster is the L1 table: QEMU would return the table as data,
    # blockbed refuses the read (read-only opens never mark the image)
    with pytest.raises(BlockError, match="overlaps with metadata"):
        Qcow2Driver(mem, read_only=True).read(0, memoryview(buf))


def test_l2_cache_size_and_statistics():
    mem = MemoryDriver()
    create_on_node(mem, 64 << 20, {"cluster_size": "4096"})      # 32 L2 tables, 2 MiB each
    drv = Qcow2Driver(mem, options={"l2-cache-size": 2 * 4096})
    assert drv.cache_stats()["l2"]["capacity"] == 2
    model = bytearray(64 << 20)
    for i in range(0, 64 << 20, 700_000):
        drv.write(i, b"\x77" * 5000)
        model[i:i + 5000] = b"\x77" * 5000
    buf = bytearray(len(model))
    drv.read(0, memoryview(buf))
    assert buf == model
    st = drv.cache_stats()["l2"]
    assert st["misses"] > 20 and st["hits"] > 0 and st["entries"] <= 2
    res = check_image(drv)
    assert (res.corruptions, res.leaks) == (0, 0)
    big = Qcow2Driver(MemoryDriver(bytes(mem.buf)), read_only=True)
    assert big.cache_stats()["l2"]["capacity"] == 32         # default: covers the disk


def test_shorter_backing_reads_zeros_past_its_end():
    backing = MemoryDriver(b"\x55" * 1000 + b"\x66" * 24)         # 1 KiB backing
    mem = MemoryDriver()
    create_on_node(mem, 1 << 20, {"cluster_size": "512"})
    drv = Qcow2Driver(mem, options={"backing": backing})
    buf = bytearray(4096)
    drv.read(0, memoryview(buf))
    assert buf[:1000] == b"\x55" * 1000 and buf[1000:1024] == b"\x66" * 24
    assert buf[1024:] == bytes(3072)
    drv.write(700, b"\x01" * 10)                                  # COW from the backing
    drv.read(0, memoryview(buf))
    assert buf[:700] == b"\x55" * 700 and buf[700:710] == b"\x01" * 10
    assert buf[710:1000] == b"\x55" * 290


def test_trace_events_tell_the_allocation_story():
    from blockbed import trace
    backing = MemoryDriver(b"\x55" * (1 << 20))
    mem = MemoryDriver()
    create_on_node(mem, 1 << 20, {"cluster_size": "4096"})
    drv = Qcow2Driver(mem, options={"backing": backing})
    with trace.Recorder(prefixes=("qcow2.",)) as rec:
        drv.write(5000, b"\x01" * 100)            # COW head and tail from the backing file
        drv.flush()
    # the allocation story; metadata cache and refcount detail events interleave
    story = [e for e in rec.events if not e.name.startswith(("qcow2.cache_", "qcow2.refcount_update"))]
    names = [e.name for e in story]
    assert names[:3] == ["qcow2.write", "qcow2.l2_alloc", "qcow2.alloc"]
    assert "qcow2.refcount_update" in rec.names()
    alloc = story[2].fields
    assert (alloc["guest_offset"], alloc["clusters"]) == (4096, 1)
    assert (alloc["cow_head"], alloc["cow_tail"]) == (904, 4096 - 1004)
    assert names[-1] == "qcow2.flush"


def test_unknown_open_option_is_refused():
    mem = MemoryDriver()
    create_on_node(mem, 1 << 20, {})
    with pytest.raises(BlockError, match="unknown option 'l2-cache-sise'"):
        Qcow2Driver(mem, options={"l2-cache-sise": 65536})


def test_write_paths_by_l2_entry():
    """In-place overwrite, free-space reuse, zero flags with and without unmap, v2 zeros."""
    from blockbed import trace
    from blockbed.block.qcow2.cluster import L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO
    mem = MemoryDriver()
    create_on_node(mem, 4 << 20, {"cluster_size": "4096"})
    drv = Qcow2Driver(mem)
    drv.write(0, b"\1" * 8192)
    e0 = drv.l2_entry(0)
    assert e0 & OFLAG_COPIED and e0 & L2E_OFFSET_MASK
    with trace.Recorder(prefixes=("qcow2.alloc",)) as rec:
        drv.write(100, b"\2" * 50)                            # OFLAG_COPIED: in place
    assert rec.events == [] and drv.l2_entry(0) == e0
    host1 = drv.l2_entry(4096) & L2E_OFFSET_MASK
    drv.discard(4096, 4096)                                   # v3: zero flag, cluster freed
    assert drv.l2_entry(4096) == OFLAG_ZERO
    assert drv.refcounts.get(host1 >> 12) == 0
    drv.write(1 << 20, b"\3" * 4096)                          # the freed cluster is reused
    assert drv.l2_entry(1 << 20) & L2E_OFFSET_MASK == host1
    drv.write_zeroes(1 << 20, 4096, may_unmap=False)          # zero flag, allocation kept
    assert drv.l2_entry(1 << 20) == host1 | OFLAG_COPIED | OFLAG_ZERO
    drv.write_zeroes(0, 4096, may_unmap=True)                 # zero flag, cluster freed
    assert drv.l2_entry(0) == OFLAG_ZERO
    assert drv.refcounts.get((e0 & L2E_OFFSET_MASK) >> 12) == 0
    buf = bytearray(4096)
    drv.read(1 << 20, memoryview(buf))
    assert buf == bytes(4096)
    drv.close()

    v2 = MemoryDriver()
    create_on_node(v2, 4 << 20, {"cluster_size": "4096", "compat": "0.10"})
    d2 = Qcow2Driver(v2)
    d2.write(0, b"\1" * 4096)
    d2.write_zeroes(0, 4096, may_unmap=True)                  # v2: zeros written as data
    e = d2.l2_entry(0)
    assert not e & OFLAG_ZERO and e & L2E_OFFSET_MASK
    d2.write_zeroes(1 << 20, 8192)                            # already zero: nothing allocated
    assert d2.l2_entry(1 << 20) == 0
    d2.read(0, memoryview(buf))
    assert buf == bytes(4096)
    d2.close()


def test_l2_cache_events_name_the_l1_index():
    """Trace events of the L2 cache say which L1 entry (and guest range) a table maps,
    so a student can follow guest offset -> L1 index -> L2 table (issue #14)."""
    from blockbed import trace
    mem = MemoryDriver()
    create_on_node(mem, 2 << 30, {})                 # 64 KiB clusters: 512 MiB per L2
    drv = Qcow2Driver(mem, options={"l2-cache-size": 2 * 65536})
    drv.write(0, b"\1" * 4096)
    drv.write(1 << 30, b"\2" * 4096)                 # L1 index 2
    drv.write(3 << 29, b"\3" * 4096)                 # L1 index 3: evicts index 0
    drv.flush()
    with trace.Recorder(["qcow2.cache_"]) as rec:
        buf = bytearray(4096)
        drv.read(1 << 30, memoryview(buf))           # hit
        drv.read(0, memoryview(buf))                 # miss: loaded again
    got = [(e.name, e.fields.get("cache"), e.fields.get("l1_index"), e.fields.get("guest_start"))
           for e in rec.events if e.fields.get("cache") == "l2"]
    assert got == [("qcow2.cache_hit", "l2", 2, 1 << 30), ("qcow2.cache_load", "l2", 0, 0)]
    drv.close()
