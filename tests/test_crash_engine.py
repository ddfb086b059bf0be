"""Crash engine units: oracle rules, state enumeration, overlay, checker (both directions).

Everything here runs in memory (MemoryDriver + the recording filter); the
guest-driven matrix lives in test_crash_matrix.py.
"""

from __future__ import annotations

import logging
import random

import pytest

from blockbed.block.backend import RequestLogEntry
from blockbed.block.crash.checker import Checker
from blockbed.block.crash.guestrecord import GuestRecord, attach
from blockbed.block.crash.hostlog import HostLog, HostOp, OpKind
from blockbed.block.crash.intervals import IntervalMap
from blockbed.block.crash.oracle import Oracle
from blockbed.block.crash.overlay import WorkingImage
from blockbed.block.crash.sector import make_write, parse_sector
from blockbed.block.crash.session import Recording
from blockbed.block.crash.states import StateIdError, enumerate_states, parse_state_id, state_pieces
from blockbed.block.crash.workload import WorkloadConfig, run_workload

logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)

CACHES = ["writeback", "none", "writethrough", "directsync"]


# --- the oracle on synthetic request logs -------------------------------------------------

class Seq:
    """Builds RequestLogEntry lists with one shared seq counter; host position = seq."""

    def __init__(self):
        self.seq = 0
        self.entries: list[RequestLogEntry] = []

    def submit(self, kind, off=0, n=512, fua=False, wce=True, data=True, dropped=False):
        self.seq += 1
        e = RequestLogEntry(len(self.entries) + 1, kind, off, n, fua, wce, self.seq,
                            dropped=dropped, data=bytes(n) if data and kind == "write" else None)
        self.entries.append(e)
        return e

    def complete(self, e, wce=True, result=0, error=0):
        self.seq += 1
        e.complete_seq, e.wce_at_complete, e.result, e.error = self.seq, wce, result, error

    def oracle(self):
        return Oracle.from_request_log(self.entries, list(range(self.seq + 1)), self.seq)


def test_flush_covers_writes_completed_before_its_submission():
    s = Seq()
    w1 = s.submit("write"); s.complete(w1)
    w2 = s.submit("write", 512)
    f = s.submit("flush")            # w2 still in flight when the flush was submitted
    s.complete(w2)
    s.complete(f)
    o = s.oracle()
    assert o.write_by_req(w1.id).durable_pos == f.complete_seq
    assert o.write_by_req(w2.id).durable_pos is None


def test_earliest_completing_flush_wins():
    s = Seq()
    w = s.submit("write"); s.complete(w)
    f1 = s.submit("flush"); f2 = s.submit("flush")
    s.complete(f2); s.complete(f1)   # out of order completion
    assert s.oracle().write_by_req(w.id).durable_pos == f2.complete_seq


def test_fua_and_write_cache_off_for_the_whole_flight():
    s = Seq()
    fua = s.submit("write", fua=True); s.complete(fua)
    wt = s.submit("write", 512, wce=False); s.complete(wt, wce=False)
    toggled = s.submit("write", 1024, wce=False); s.complete(toggled, wce=True)   # WCE on mid-flight
    plain = s.submit("write", 1536); s.complete(plain)
    o = s.oracle()
    assert o.write_by_req(fua.id).durable_pos == fua.complete_seq
    assert o.write_by_req(wt.id).durable_pos == wt.complete_seq
    assert o.write_by_req(toggled.id).durable_pos is None
    assert o.write_by_req(plain.id).durable_pos is None


def test_dropped_flush_is_still_a_promise_and_failures_are_not():
    s = Seq()
    w = s.submit("write"); s.complete(w)
    bad = s.submit("write", 512); s.complete(bad, result=-5, error=5)
    f = s.submit("flush", dropped=True); s.complete(f)        # cache=unsafe
    w2 = s.submit("write", 1024); s.complete(w2)
    ff = s.submit("flush"); s.complete(ff, result=-5, error=5)  # a failed flush promises nothing
    o = s.oracle()
    assert o.write_by_req(w.id).durable_pos == f.complete_seq
    assert o.write_by_req(bad.id).durable_pos is None
    assert o.write_by_req(w2.id).durable_pos is None


def test_request_log_without_data_is_refused():
    s = Seq()
    e = s.submit("write", data=False); s.complete(e)
    with pytest.raises(ValueError, match="keep_data"):
        s.oracle()


def test_interval_map_matches_a_per_sector_model():
    for trial in range(60):
        rnd = random.Random(trial)
        m: IntervalMap = IntervalMap()
        ref = [None] * 120
        for n in range(25):
            a = rnd.randrange(120); b = rnd.randrange(a, 121); v = (n,)
            keep = (lambda o, new: o[0] % 3 == 0) if rnd.random() < .5 else None
            m.assign(a, b, v, keep)
            for x in range(a, b):
                if not (ref[x] is not None and keep and keep(ref[x], v)):
                    ref[x] = v
            assert [m.get(x) for x in range(120)] == ref


# --- states and overlay -----------------------------------------------------------------

def _log(*ops) -> HostLog:
    log = HostLog()
    for o in ops:
        log.append(o)
    return log


def W(off, n, fill, fua=False):
    return HostOp(OpKind.WRITE, off, n, bytes([fill]) * n, fua)


F = HostOp(OpKind.FLUSH)


def test_enumeration_boundaries_prefixes_and_subsets():
    log = _log(W(0, 1024, 1), W(1024, 2048, 2), F, W(0, 4096, 3), W(4096, 512, 4, fua=True))
    st = enumerate_states(log, None, seed=7)
    ids = [s.id for s in st]
    # boundaries of both epochs, prefix 1 of epoch 0 (prefix 2 = next boundary), tail prefixes 1..2
    for want in ("0.p0", "0.p1", "1.p0", "1.p1", "1.p2"):
        assert want in ids
    assert "0.p2" not in ids
    assert any(i.startswith("0.r") for i in ids) and any(i.startswith("1.r") for i in ids)
    assert [s.crash_pos for s in st] == sorted(s.crash_pos for s in st)
    # budget: boundaries first
    small = enumerate_states(log, 2, seed=7)
    assert [s.id for s in small] == ["0.p0", "1.p0"]
    # IDs replay to the same state and pieces
    for s in st:
        again = parse_state_id(log, s.id)
        assert state_pieces(log, again, 7) == state_pieces(log, s, 7)
    with pytest.raises(StateIdError):
        parse_state_id(log, "9.p0")
    with pytest.raises(StateIdError):
        parse_state_id(log, "bogus")


def test_random_subsets_tear_writes_and_keep_fua():
    log = _log(W(0, 16 * 512, 1), W(16 * 512, 8 * 512, 2), W(1 << 20, 512, 3, fua=True))
    torn = False
    for k in range(80):
        st = parse_state_id(log, f"0.r{k}")
        pieces = state_pieces(log, st, seed=1)
        assert (2, 0, 512) in pieces                       # the FUA write is always there
        for i, a, b in pieces:
            assert a % 512 == 0 and b % 512 == 0 and a < b
            if (a, b) != (0, log.ops[i].length):
                torn = True
    assert torn


def test_overlay_applies_and_undoes_in_place():
    base = bytes(range(256)) * 16
    log = _log(W(100, 300, 9), W(4000, 500, 8))      # the second grows the image
    work = WorkingImage(base, log)
    with work.overlay([(0, 0, 300), (1, 0, 500)]) as node:
        buf = bytearray(600)
        node.read(0, memoryview(buf)[:500])
        assert buf[100:400] == b"\x09" * 300 and buf[:100] == base[:100]
        assert node.length() == 4500
        tail = bytearray(20)
        node.read(4490, memoryview(tail))             # past the end reads zeros
        assert tail == b"\x08" * 10 + bytes(10)
    assert bytes(work.buf) == base
    work.advance(2)
    assert len(work.buf) == 4500 and work.buf[4000:4500] == b"\x08" * 500


def test_self_describing_sectors_roundtrip():
    data = make_write(17, 1000, 3, 2, 1)
    h = parse_sector(data[512:1024])
    assert (h.write_id, h.lba, h.epoch, h.index, h.flags, h.crc_ok) == (17, 1001, 2, 1, 1, True)
    bad = bytearray(data[:512]); bad[100] ^= 1
    assert not parse_sector(bytes(bad)).crc_ok
    assert parse_sector(bytes(512)) is None


# --- the checker, both directions ----------------------------------------------------------

def _run(fmt, cache, *, cfg=None, states=300, seed=1, **kw):
    rec = Recording.in_memory(fmt, 4 << 20, cache, **kw)
    wl = run_workload(rec.backend, cfg or WorkloadConfig(ops=150, seed=seed))
    orc = rec.oracle()
    attach(orc, GuestRecord.parse(wl.transcript))
    res, orc, st = rec.sweep(states=states, seed=seed, oracle=orc)
    return rec, res, orc


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("cache", CACHES)
def test_correct_stack_has_no_violations(fmt, cache):
    rec, res, orc = _run(fmt, cache)
    assert res.states_checked >= 100
    assert orc.durable_count() > 20            # the sweep really checked promises
    assert res.bytes_verified > 0
    assert not orc.disagreements
    assert res.violations == []


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_unsafe_is_reported_as_violating(fmt):
    rec, res, orc = _run(fmt, "unsafe")
    assert res.violating_states > 0
    assert any(v.kind == "durability" for v in res.violations)
    assert not orc.disagreements      # the device passed every flush down; the backend dropped it


@pytest.mark.parametrize("fault", ["ignore_flush", "ignore_fua"])
def test_faulty_device_is_caught(fault):
    cfg = WorkloadConfig(ops=150, seed=2, **{fault: True})
    rec, res, orc = _run("raw", "writeback", cfg=cfg)
    assert orc.disagreements, "the guest's promises must disagree with the backend's"
    assert res.violating_states > 0


def test_guest_record_attaches_to_backend_writes():
    rec = Recording.in_memory("raw", 1 << 20, "writeback")
    wl = run_workload(rec.backend, WorkloadConfig(ops=60, seed=5))
    record = GuestRecord.parse(wl.transcript + "FT promise id=zz after=1\nnoise\n")
    assert record.complete and len(record.promises) == wl.promises
    orc = rec.oracle()
    got = attach(orc, record)
    assert got.promises == wl.promises and not got.unmatched
    assert not orc.disagreements


def test_lost_write_in_the_host_log_is_detected():
    rec, res, orc = _run("raw", "writeback")
    assert not res.violations
    # remove the last data write before some flush that made it durable
    ops = rec.log.ops
    victim = next(i for i in range(len(ops) - 1, 0, -1)
                  if ops[i].kind is OpKind.FLUSH and ops[i - 1].kind is OpKind.WRITE) - 1
    ops[victim] = HostOp(OpKind.MARK)
    res2 = Checker(rec.base, rec.log, orc, "raw", 1).run(enumerate_states(rec.log, 300, 1))
    assert any(v.kind == "durability" for v in res2.violations)


def test_torn_metadata_in_the_host_log_is_detected():
    rec, res, orc = _run("qcow2", "writeback")
    assert not res.violations
    # corrupt one L1 update: point it at garbage
    l1_off = int.from_bytes(rec.base[40:48], "big")
    idx = next(i for i, op in enumerate(rec.log.ops)
               if op.kind is OpKind.WRITE and op.offset <= l1_off < op.end)
    op = rec.log.ops[idx]
    data = bytearray(op.data)
    data[l1_off - op.offset:l1_off - op.offset + 8] = (0x80000000_0FFF0000).to_bytes(8, "big")
    rec.log.ops[idx] = HostOp(OpKind.WRITE, op.offset, op.length, bytes(data))
    res2 = Checker(rec.base, rec.log, orc, "qcow2", 1).run(enumerate_states(rec.log, 300, 1))
    assert any(v.kind == "corruption" for v in res2.violations)


@pytest.mark.parametrize("case", ["unsafe", "lazy", "l2-before-refcount"])
def test_memo_and_incremental_agree_with_the_full_check(case):
    kw: dict = {}
    cache = "writeback"
    if case == "unsafe":
        cache = "unsafe"
    elif case == "lazy":
        kw["create_options"] = {"lazy_refcounts": "on"}
    else:
        kw["open_options"] = {"x-unsafe-l2-before-refcount": True}
    cfg = WorkloadConfig(ops=80, seed=3, region_sectors=1024, lba_stride=8, p_discard=0.05)
    rec = Recording.in_memory("qcow2", 8 << 20, cache, **kw)
    run_workload(rec.backend, cfg)
    orc = rec.oracle()
    states = enumerate_states(rec.log, 150, 4)
    fast = Checker(rec.base, rec.log, orc, "qcow2", 4).run(states)
    slow = Checker(rec.base, rec.log, orc, "qcow2", 4, incremental=False, memo=False).run(states)
    verdict = lambda r: [(s.state.id, sorted((v.kind, v.message) for v in s.violations)) for s in r.states]
    assert verdict(fast) == verdict(slow)
    assert fast.full_checks < slow.full_checks
    if case != "lazy":
        assert slow.violating_states > 0
    else:
        assert slow.violating_states == 0


def test_small_budget_still_gets_torn_subsets():
    """Prefixes alone never lose a write no flush covered; subsets must get room."""
    log = _log(*[W(i * 4096, 4096, i % 250 + 1) for i in range(300)])   # one epoch, no flush
    st = enumerate_states(log, 100, seed=1)
    assert len(st) == 100
    assert sum(1 for s in st if s.subset is not None) >= 49


def test_unsafe_raw_without_any_host_flush_is_caught_within_budget():
    rec, res, orc = _run("raw", "unsafe", states=60)
    assert rec.log.counts()["flush"] == 0
    assert res.violating_states > 0


def test_garbage_in_the_host_log_never_aborts_the_sweep():
    """Crash states are hostile input for the driver: the sweep reports, never raises."""
    rec, res, orc = _run("qcow2", "writeback", states=80)
    rnd = random.Random(9)
    meta_ops = [i for i, op in enumerate(rec.log.ops)
                if op.kind is OpKind.WRITE and op.offset < 0x50000]     # header/L1/refcounts/L2 area
    assert meta_ops
    for trial in range(6):
        ops = list(rec.log.ops)
        for i in rnd.sample(meta_ops, min(4, len(meta_ops))):
            op = ops[i]
            data = bytearray(op.data)
            for _ in range(8):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            if trial % 2:
                data[:72] = bytes(rnd.randrange(256) for _ in range(72)) if op.offset == 0 else data[:72]
            ops[i] = HostOp(OpKind.WRITE, op.offset, op.length, bytes(data))
        log = HostLog(ops)
        out = Checker(rec.base, log, orc, "qcow2", trial).run(enumerate_states(log, 60, trial))
        assert out.states_checked == 60
        for v in out.violations:
            assert "Traceback" not in v.message


def test_superseding_rules():
    """A durable write may be replaced only by a write (or discard) submitted after it
    and before the crash."""
    s = Seq()
    w1 = s.submit("write", 0, 512); w1.data = b"\x01" * 512; s.complete(w1)
    f = s.submit("flush"); s.complete(f)
    w2 = s.submit("write", 0, 512); w2.data = b"\x02" * 512; s.complete(w2)
    d = s.submit("discard", 0, 512); s.complete(d)
    dd = s.submit("discard", 0, 512, dropped=True); s.complete(dd)
    o = s.oracle()
    W1 = o.write_by_req(w1.id)
    assert o.accepts(0, b"\x01" * 512, W1, crash_pos=f.complete_seq)
    assert o.accepts(0, b"\x02" * 512, W1, crash_pos=w2.submit_seq)       # submitted before the crash
    assert not o.accepts(0, b"\x02" * 512, W1, crash_pos=w2.submit_seq - 1)
    assert o.accepts(0, bytes(512), W1, crash_pos=d.submit_seq)            # discarded after it
    assert not o.accepts(0, bytes(512), W1, crash_pos=d.submit_seq - 1)
    assert not o.accepts(0, b"\x03" * 512, W1, crash_pos=s.seq)            # foreign data never


def test_logwrites_file_path_correlates_with_the_request_log(tmp_path):
    """The persistent logwrites filter and CorrelatedRequestLog line up position for position."""
    from blockbed.block.backend import BlockBackend
    from blockbed.block.crash.timeline import CorrelatedRequestLog
    from blockbed.block.logwrites import LogWritesDriver, read_log
    from blockbed.block.registry import get_format, open_image

    for cache, expect_loss in (("writeback", False), ("unsafe", True)):
        img = tmp_path / f"{cache}.qcow2"
        get_format("qcow2").create(str(img), 4 << 20, {})
        base = img.read_bytes()
        root = open_image(str(img), "qcow2", options={"log-writes": str(tmp_path / f"{cache}.log")})
        lw = root.file if isinstance(getattr(root, "file", None), LogWritesDriver) else None
        assert lw is not None
        rlog = CorrelatedRequestLog(lambda: lw.log.seq)
        be = BlockBackend(root, cache, request_log=rlog)
        wl = run_workload(be, WorkloadConfig(ops=120, seed=4))
        be.close()
        log = HostLog.from_logwrites(read_log(str(tmp_path / f"{cache}.log")))
        orc = Oracle.from_request_log(rlog.entries, rlog.positions, len(log))
        attach(orc, GuestRecord.parse(wl.transcript))
        assert not orc.disagreements
        res = Checker(base, log, orc, "qcow2", 1).run(enumerate_states(log, 200, 1))
        assert (res.violating_states > 0) == expect_loss, res.violations[:2]
