"""Hostile-queue tests: a guest that breaks every rule it can.

Each malformed case must end in the outcome the spec gives — a request
status (IOERR/UNSUPP) when the status byte is reachable, DEVICE_NEEDS_RESET
(virtio 1.2 §2.1.2) when the ring itself is broken — and never in a Python
exception in the host (``internal_errors`` counts any that the transport
caught).  After a reset the device must work again.
"""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libqos_virtio import (ACK, D_INDIRECT, D_NEXT, D_WRITE, DEFAULT_FEATURES, DRIVER, DRIVER_OK,
                           F_INDIRECT, FEATURES_OK, NEEDS_RESET, S_IOERR, S_OK, S_UNSUPP, STATUS,
                           T_FLUSH, T_IN, T_OUT, QVirtioBlk)

MiB = 1 << 20
CAP = MiB // 512
OUTSIDE = 64 * MiB          # guest RAM is 16 MiB


@pytest.fixture
def vb():
    v = QVirtioBlk(MiB)
    v.start(size=8)
    yield v
    assert v.dev.internal_errors == 0
    v.close()


def needs_reset(v: QVirtioBlk) -> bool:
    return bool(v.status & NEEDS_RESET)


def assert_recovers(v: QVirtioBlk) -> None:
    """After a reset and a new initialisation the device serves requests again."""
    v.cw8(STATUS, 0)
    assert v.status == 0
    v.rings.clear()
    v.start(size=8)
    assert v.do(T_FLUSH)[0] == S_OK


def broken_chain(v: QVirtioBlk, parts, q: int = 0) -> None:
    """Write raw descriptors (addr, len, flags, next) at 0.. and publish head 0."""
    r = v.rings[q]
    for i, (a, n, f, nxt) in enumerate(parts):
        v.write_desc(r.desc, i, a, n, f, nxt)
    v.publish(0, q)
    v.kick(q)


# --- ring structure: DEVICE_NEEDS_RESET ---------------------------------------------

def test_descriptor_loop(vb):
    hdr = vb.header(T_IN)
    buf = vb.alloc(512)
    broken_chain(vb, [(hdr, 16, D_NEXT, 1), (buf, 512, D_NEXT | D_WRITE, 2),
                      (buf, 1, D_NEXT | D_WRITE, 1)])
    assert needs_reset(vb) and vb.used() == []
    assert "loops" in vb.dev.broken
    assert_recovers(vb)


def test_chain_longer_than_queue_in_indirect_table(vb):
    # an indirect table whose entries chain back to the start: a loop inside the table
    hdr = vb.header(T_FLUSH)
    table = vb.alloc(16 * 2)
    vb.write_desc(table, 0, hdr, 16, D_NEXT, 1)
    vb.write_desc(table, 1, hdr, 16, D_NEXT, 0)
    broken_chain(vb, [(table, 32, D_INDIRECT, 0)])
    assert needs_reset(vb)
    assert_recovers(vb)


def test_next_out_of_range(vb):
    hdr = vb.header(T_FLUSH)
    broken_chain(vb, [(hdr, 16, D_NEXT, 8)])        # queue size 8
    assert needs_reset(vb) and ">= 8" in vb.dev.broken


def test_avail_head_out_of_range(vb):
    r = vb.rings[0]
    vb.qt.writew(r.avail + 4, 200)
    vb.qt.writew(r.avail + 2, 1)
    vb.kick()
    assert needs_reset(vb)


def test_avail_idx_jumps_beyond_queue_size(vb):
    vb.qt.writew(vb.rings[0].avail + 2, 9)           # 9 new entries in a ring of 8
    vb.kick()
    assert needs_reset(vb) and vb.used() == []


@pytest.mark.parametrize("case", ["not_negotiated", "with_next", "nested", "bad_len",
                                  "zero_len", "outside_ram", "too_long"])
def test_bad_indirect(case):
    v = QVirtioBlk(MiB)
    try:
        want = DEFAULT_FEATURES & ~(1 << F_INDIRECT) if case == "not_negotiated" else None
        v.start(want, size=8)
        hdr = v.header(T_FLUSH)
        st = v.alloc(1)
        table = v.alloc(64)
        v.write_desc(table, 0, hdr, 16, D_NEXT, 1)
        v.write_desc(table, 1, st, 1, D_WRITE, 0)
        inner = v.alloc(32)
        v.write_desc(inner, 0, table, 32, D_INDIRECT, 0)
        long_table = v.alloc(16 * 9)        # 9 entries, queue size 8, no loop
        for k in range(8):
            v.write_desc(long_table, k, hdr, 16, D_NEXT, k + 1)
        v.write_desc(long_table, 8, st, 1, D_WRITE, 0)
        parts = {
            "not_negotiated": [(table, 32, D_INDIRECT, 0)],
            "with_next": [(table, 32, D_INDIRECT | D_NEXT, 1), (st, 1, D_WRITE, 0)],
            "nested": [(inner, 16, D_INDIRECT, 0)],
            "bad_len": [(table, 24, D_INDIRECT, 0)],
            "zero_len": [(table, 0, D_INDIRECT, 0)],
            "outside_ram": [(OUTSIDE, 32, D_INDIRECT, 0)],
            "too_long": [(long_table, 16 * 9, D_INDIRECT, 0)],
        }[case]
        broken_chain(v, parts)
        assert needs_reset(v) and v.used() == []
        assert v.dev.internal_errors == 0
        assert_recovers(v)
    finally:
        v.close()


def test_indirect_after_normal_descriptors_is_valid(vb):
    # §2.7.5.3.2: "zero or more normal chained descriptors followed by a single
    # descriptor with flags&VIRTQ_DESC_F_INDIRECT"; the table's WRITE flag is ignored.
    hdr = vb.header(T_OUT, 2)
    data = vb.alloc(512)
    vb.qt.memwrite(data, b"\x77" * 512)
    st = vb.alloc(1)
    table = vb.alloc(32)
    vb.write_desc(table, 0, data + 256, 256, D_NEXT, 1)
    vb.write_desc(table, 1, st, 1, D_WRITE, 0)
    broken_chain(vb, [(hdr, 16, D_NEXT, 1), (data, 256, D_NEXT, 2),
                      (table, 32, D_INDIRECT | D_WRITE, 0)])
    assert not needs_reset(vb) and len(vb.used()) == 1
    assert vb.status_at(st) == S_OK
    assert bytes(vb.backend.root.buf[1024:1536]) == b"\x77" * 512


def test_readable_after_writable(vb):
    hdr = vb.header(T_OUT)
    st = vb.alloc(1)
    data = vb.alloc(512)
    broken_chain(vb, [(hdr, 16, D_NEXT, 1), (st, 1, D_WRITE | D_NEXT, 2), (data, 512, 0, 0)])
    assert needs_reset(vb)


def test_no_status_descriptor(vb):
    hdr = vb.header(T_FLUSH)
    broken_chain(vb, [(hdr, 16, 0, 0)])
    assert needs_reset(vb)


def test_zero_length_status(vb):
    hdr = vb.header(T_FLUSH)
    st = vb.alloc(1)
    broken_chain(vb, [(hdr, 16, D_NEXT, 1), (st, 0, D_WRITE, 0)])
    assert needs_reset(vb)


def test_status_outside_ram(vb):
    hdr = vb.header(T_FLUSH)
    broken_chain(vb, [(hdr, 16, D_NEXT, 1), (OUTSIDE, 1, D_WRITE, 0)])
    assert needs_reset(vb)


def test_rings_outside_ram():
    v = QVirtioBlk(MiB)
    try:
        v.negotiate()
        v.setup_queue(0, 8, desc=OUTSIDE)
        v.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        v.kick()
        assert needs_reset(v) and "outside guest RAM" in v.dev.broken
        assert v.dev.internal_errors == 0
    finally:
        v.close()


def test_bus_mastering_off(vb):
    vb.qt.pci_config_write(vb.dev, 4, 0x0002, 2)     # memory space only
    vb.submit(T_FLUSH)
    assert needs_reset(vb)


def test_needs_reset_raises_config_interrupt_and_stops_processing(vb):
    hdr = vb.header(T_FLUSH)
    broken_chain(vb, [(hdr, 16, 0, 0)])
    assert needs_reset(vb) and vb.isr() & 2
    # further notifications are ignored until reset (§2.1.2)
    r = vb.rings[0]
    r.next_desc = 4
    vb.submit(T_FLUSH)
    assert vb.used() == []
    vb.cw8(STATUS, vb.status | DRIVER_OK)            # the driver cannot clear it
    assert needs_reset(vb)


# --- request contents: status IOERR / UNSUPP --------------------------------------------

def test_buffer_outside_ram_is_ioerr(vb):
    hdr = vb.header(T_IN, 0)
    st = vb.alloc(1)
    vb.put_chain([(hdr, 16, 0), (OUTSIDE, 512, D_WRITE), (st, 1, D_WRITE)])
    vb.kick()
    (head, used_len), = vb.used()
    assert vb.status_at(st) == S_IOERR and used_len == 0
    assert not needs_reset(vb)


def test_buffer_straddling_end_of_ram_is_ioerr(vb):
    hdr = vb.header(T_OUT, 0)
    st = vb.alloc(1)
    vb.put_chain([(hdr, 16, 0), (16 * MiB - 256, 512, 0), (st, 1, D_WRITE)])
    vb.kick()
    assert len(vb.used()) == 1 and vb.status_at(st) == S_IOERR


def test_in_with_readable_data_is_ioerr(vb):
    hdr = vb.header(T_IN)
    data = vb.alloc(512)
    st = vb.alloc(1)
    vb.put_chain([(hdr, 16, 0), (data, 512, 0), (st, 1, D_WRITE)])
    vb.kick()
    assert len(vb.used()) == 1 and vb.status_at(st) == S_IOERR


def test_out_with_writable_data_is_ioerr(vb):
    vb.backend.root.buf[0:512] = b"\x11" * 512
    hdr = vb.header(T_OUT)
    data = vb.alloc(512)
    st = vb.alloc(1)
    vb.put_chain([(hdr, 16, 0), (data, 512, D_WRITE), (st, 1, D_WRITE)])
    vb.kick()
    assert len(vb.used()) == 1 and vb.status_at(st) == S_IOERR
    assert bytes(vb.backend.root.buf[0:512]) == b"\x11" * 512


@pytest.mark.parametrize("hdr_len", [0, 8, 15])
def test_short_header_is_ioerr(vb, hdr_len):
    hdr = vb.header(T_OUT)
    st = vb.alloc(1)
    parts = ([(hdr, hdr_len, 0)] if hdr_len else []) + [(st, 1, D_WRITE)]
    vb.put_chain(parts)
    vb.kick()
    assert len(vb.used()) == 1 and vb.status_at(st) == S_IOERR
    assert not needs_reset(vb)


@pytest.mark.parametrize("sector,count", [(CAP, 1), (CAP - 1, 2), (2 ** 64 - 1, 1),
                                          (2 ** 63, 8)])
def test_past_capacity_is_ioerr(vb, sector, count):
    assert vb.do(T_IN, sector, read_len=512 * count)[0] == S_IOERR
    assert vb.do(T_OUT, sector, bytes(512 * count))[0] == S_IOERR


@pytest.mark.parametrize("length", [1, 511, 513, 1000])
def test_length_not_multiple_of_512_is_ioerr(vb, length):
    assert vb.do(T_IN, 0, read_len=length)[0] == S_IOERR
    assert vb.do(T_OUT, 0, bytes(length))[0] == S_IOERR


@pytest.mark.parametrize("rtype", [2, 3, 5, 10, 14, 0x7FFFFFFF, 0xFFFFFFFF])
def test_unknown_type_is_unsupp(vb, rtype):
    assert vb.do(rtype, 0, read_len=0)[0] == S_UNSUPP


def test_notify_for_missing_queue_is_ignored(vb):
    vb.qt.writew(vb.notify + 5 * vb.notify_mult, 5)
    vb.qt.writew(vb.notify + 0xFFC, 0)
    assert not needs_reset(vb)
    assert vb.do(T_FLUSH)[0] == S_OK


def test_requests_before_driver_ok_are_not_consumed():
    v = QVirtioBlk(MiB)
    try:
        v.negotiate()
        v.setup_queue(0, 8)
        head, st, _ = v.submit(T_OUT, 0, b"\x22" * 512)
        assert v.used() == [] and v.status_at(st) == 0xEE
        assert bytes(v.backend.root.buf[:512]) == bytes(512)
        v.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        v.kick()
        assert [h for h, _ in v.used()] == [head] and v.status_at(st) == S_OK
    finally:
        v.close()


def test_driver_cannot_set_needs_reset(vb):
    vb.cw8(STATUS, vb.status | NEEDS_RESET)
    assert not needs_reset(vb)
    assert vb.do(T_FLUSH)[0] == S_OK


def test_driver_ok_without_features_ok():
    v = QVirtioBlk(MiB)
    try:
        v.cw8(STATUS, ACK | DRIVER)
        v.setup_queue(0, 8)
        v.cw8(STATUS, ACK | DRIVER | DRIVER_OK)
        assert needs_reset(v)
        v.submit(T_FLUSH)
        assert v.used() == []
    finally:
        v.close()


def test_odd_register_accesses_do_not_crash(vb):
    qt = vb.qt
    for off in range(0, 0x40):
        for size, rd, wr in ((1, qt.readb, qt.writeb), (2, qt.readw, qt.writew),
                             (4, qt.readl, qt.writel)):
            rd(vb.common + off)
            rd(vb.devcfg + off)
            rd(vb.isr_addr + off)
    for off in (0x3, 0x11, 0x13, 0x17, 0x1F, 0x3B, 0x40, 0xFFF):
        qt.writel(vb.common + off, 0xFFFFFFFF)
        qt.writeb(vb.devcfg + off, 0xFF)
    assert vb.dev.internal_errors == 0


# --- fuzz: arbitrary descriptor tables and rings ------------------------------------------

desc_st = st.tuples(st.sampled_from([0, 0x101000, 0x101010, 0x1FF000, 16 * MiB - 8, 2 ** 40,
                                     2 ** 64 - 16]),
                    st.sampled_from([0, 1, 15, 16, 512, 4096, 2 ** 31, 2 ** 32 - 1]),
                    st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))


_fuzz_dev: list[QVirtioBlk] = []


@settings(max_examples=200, deadline=None)
@given(descs=st.lists(desc_st, min_size=1, max_size=8),
       heads=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4),
       hdr=st.binary(min_size=16, max_size=16),
       avail_idx=st.integers(0, 0xFFFF))
def test_fuzz_rings_never_raise(descs, heads, hdr, avail_idx):
    # One machine for all examples (creating one costs ~0.3 s): reset between them.
    if not _fuzz_dev:
        _fuzz_dev.append(QVirtioBlk(MiB, memory_mib=16))
    v = _fuzz_dev[0]
    v.cw8(STATUS, 0)
    v.rings.clear()
    v.heap = 0x100000
    v.start(size=8)
    r = v.rings[0]
    v.qt.memwrite(0x100000 + 0x1000, hdr + bytes(4096))
    for i, (a, n, f, nxt) in enumerate(descs):
        v.write_desc(r.desc, i, a, n, f & 7, nxt % 10)
    for i, h in enumerate(heads):
        v.qt.writew(r.avail + 4 + 2 * i, h % 10)
    v.qt.writew(r.avail + 2, avail_idx % 12 if avail_idx & 1 else len(heads))
    v.kick()
    assert v.dev.internal_errors == 0
    assert len(v.used()) <= 8
