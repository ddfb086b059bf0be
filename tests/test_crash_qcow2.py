"""Host-level crash sweeps over allocation-heavy qcow2 workloads (issue 8, "qcow2 metadata").

No guest: the workload drives a BlockBackend directly (flushtest's mix,
spread out so nearly every write allocates), the host write log is swept,
and every state must open, check clean (leaks allowed) and keep every
durable write.  Covered: 512 B and 64 KiB clusters, refcount-table growth,
L1 growth (resize), lazy_refcounts on and off; the test-only
``x-unsafe-l2-before-refcount`` ordering bug must be caught, and a sample
of states is confirmed by the real qemu-img check.  (Snapshots join when the
qcow2 driver can create them.)
"""

from __future__ import annotations

import logging
import struct

import pytest

from blockbed.block.crash.checker import Checker
from blockbed.block.crash.session import Recording
from blockbed.block.crash.states import enumerate_states
from blockbed.block.crash.workload import WorkloadConfig, run_workload

logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)


def _hdr(image: bytes) -> dict:
    (l1_size, l1_off, rt_off, rt_clusters) = struct.unpack(">IQQI", image[36:60])
    return {"l1_size": l1_size, "l1_off": l1_off, "rt_off": rt_off, "rt_clusters": rt_clusters}


def _final_image(rec: Recording) -> bytes:
    from blockbed.block.crash.overlay import WorkingImage
    w = WorkingImage(rec.base, rec.log)
    w.advance(len(rec.log))
    return bytes(w.buf)


def _sweep(rec: Recording, states: int, seed: int = 1, qemu: float = 0.0):
    chk = Checker(rec.base, rec.log, rec.oracle(), "qcow2", seed)
    chk.qemu_fraction = qemu
    return chk.run(enumerate_states(rec.log, states, seed)), chk


SPREAD = dict(region_sectors=4096, lba_stride=8, max_sectors=16, p_discard=0.06, p_zeroes=0.04)


@pytest.mark.parametrize("lazy", ["off", "on"])
@pytest.mark.parametrize("cluster_size", [512, 65536])
def test_allocation_heavy_sweep_is_clean(cluster_size, lazy):
    rec = Recording.in_memory("qcow2", 32 << 20, "writeback",
                              create_options={"cluster_size": cluster_size, "lazy_refcounts": lazy})
    lazy_on = lazy == "on"          # dirty states are repaired on a copy: costlier per state
    run_workload(rec.backend, WorkloadConfig(ops=100 if lazy_on else 160, seed=11, **SPREAD))
    res, chk = _sweep(rec, 120 if lazy_on else 250)
    assert res.states_checked >= 100
    assert rec.oracle().durable_count() > 50
    assert res.violations == [], res.violations[:3]
    assert chk.checks_run > 15            # many distinct metadata states were checked


def test_refcount_table_growth_is_crash_safe():
    # 512 B clusters with 64-bit refcounts: one refcount block covers 64 clusters,
    # the initial one-cluster table 64 blocks = 2 MiB of file; the workload outgrows it.
    rec = Recording.in_memory("qcow2", 16 << 20, "writeback",
                              create_options={"cluster_size": 512, "refcount_bits": 64})
    run_workload(rec.backend, WorkloadConfig(ops=500, seed=5, region_sectors=32768 // 32,
                                             lba_stride=32, max_sectors=32, p_flush=0.08,
                                             p_discard=0.0, p_zeroes=0.0))
    before, after = _hdr(rec.base), _hdr(_final_image(rec))
    assert (after["rt_off"], after["rt_clusters"]) != (before["rt_off"], before["rt_clusters"]), \
        "the workload must make the refcount table grow"
    res, _ = _sweep(rec, 300)
    assert res.violations == [], res.violations[:3]


def test_l1_growth_is_crash_safe():
    rec = Recording.in_memory("qcow2", 1 << 20, "writeback", create_options={"cluster_size": 512})
    run_workload(rec.backend, WorkloadConfig(ops=60, seed=1, region_sectors=2048, lba_stride=1))
    assert rec.backend.resize(4 << 20) == 0
    run_workload(rec.backend, WorkloadConfig(ops=120, seed=2, region_sectors=8192 // 4,
                                             lba_stride=4, max_sectors=8))
    before, after = _hdr(rec.base), _hdr(_final_image(rec))
    assert after["l1_size"] > before["l1_size"] and after["l1_off"] != before["l1_off"]
    res, _ = _sweep(rec, 300)
    assert res.violations == [], res.violations[:3]


@pytest.mark.parametrize("cluster_size", [512, 65536])
def test_l2_before_refcount_ordering_bug_is_caught(cluster_size):
    rec = Recording.in_memory("qcow2", 8 << 20, "writeback",
                              create_options={"cluster_size": cluster_size},
                              open_options={"x-unsafe-l2-before-refcount": True})
    run_workload(rec.backend, WorkloadConfig(ops=100, seed=3, region_sectors=1024, lba_stride=8))
    res, _ = _sweep(rec, 200)
    corrupt = [v for v in res.violations if v.kind == "corruption"]
    assert corrupt, "an L2 entry durable before its refcount must show up as corruption"
    assert "refcount=0 reference=1" in " ".join(v.message for v in corrupt)


def test_qemu_img_check_agrees_on_clean_and_corrupt_states(qemu_img):
    for opts in ({}, {"x-unsafe-l2-before-refcount": True}):
        rec = Recording.in_memory("qcow2", 8 << 20, "writeback", open_options=opts)
        run_workload(rec.backend, WorkloadConfig(ops=80, seed=3, region_sectors=1024, lba_stride=8))
        res, chk = _sweep(rec, 120, qemu=0.2)
        assert chk.qemu_checked >= 10
        assert not [v for v in res.violations if v.kind == "qemu-disagrees"]
        assert chk.qemu_agreed == chk.qemu_checked
        if opts:
            assert res.violating_states > 0


def test_lazy_refcounts_data_is_durable_before_its_l2_entry():
    """With lazy refcounts no refcount flush orders a new cluster's data before
    the L2 entry that points at it, so the driver must flush the data first;
    without that a crash state can hold an L2 entry pointing past the end of
    the file (found by the ``make crash-long`` lazy_refcounts sweep)."""
    rec = Recording.in_memory("qcow2", 32 << 20, "writeback",
                              create_options={"cluster_size": 4096, "lazy_refcounts": "on"})
    run_workload(rec.backend, WorkloadConfig(ops=150, seed=21, region_sectors=8192, lba_stride=8,
                                             max_sectors=32, p_discard=0.06, p_zeroes=0.04))
    res = Checker(rec.base, rec.log, rec.oracle(), "qcow2", 3).run(enumerate_states(rec.log, 300, 3))
    assert res.states_checked >= 100
    assert res.violations == [], res.violations[:3]
