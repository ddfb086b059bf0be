"""The large crash sweep (``make crash-long``, about 25 minutes on two cores):
every controller and cache mode, both formats, queue depth 1 and 16, 800
guest operations and 4000 states per cell, a qemu-img sample; and
allocation-heavy qcow2 sweeps (1500 states each, 512 B to 2 MiB clusters).
Marked slow: not part of ``make test``.

Run: ``python3 -m pytest -q -m slow tests/test_crash_long.py``.
"""

from __future__ import annotations

import logging

import pytest

from blockbed.crashrun.crashtest import crashtest
from blockbed.block.crash.checker import Checker
from blockbed.block.crash.session import Recording
from blockbed.block.crash.states import enumerate_states
from blockbed.block.crash.workload import WorkloadConfig, run_workload

from conftest import guest_elf, run_tool
from test_crash_matrix import CACHES, CONTROLLERS, FORMATS, _have

logging.getLogger("blockbed.qcow2").setLevel(logging.CRITICAL)
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("qd", [1, 16])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("iface", CONTROLLERS)
def test_long_matrix(tmp_path, qemu_img, iface, cache, fmt, qd):
    if not _have(iface):
        pytest.skip(f"{iface} has not landed")
    guest_elf("flushtest")
    img = tmp_path / f"disk.{fmt}"
    run_tool(qemu_img, "create", "-f", fmt, str(img), "64M")
    dev = iface.split(",")[0]
    rep = crashtest(f"file={img},format={fmt},if={iface},cache={cache}", states=4000,
                    append=f"dev={dev} seed=7 ops=800 qd={qd} region=8192 maxsec=32",
                    qemu_fraction=0.01 if fmt == "qcow2" else 0.0, keep=None)
    assert rep.guest_exit == 0, rep.violations[:3]
    found = [v for v in rep.violations if v.kind != "guest"]
    if cache == "unsafe":
        assert rep.sweep.violating_states > 0
    else:
        assert found == [], found[:3]
    assert rep.qemu_agreed == rep.qemu_checked


@pytest.mark.parametrize("opts", [
    {"cluster_size": 512}, {"cluster_size": 65536}, {"cluster_size": 4096, "lazy_refcounts": "on"},
    {"cluster_size": 512, "refcount_bits": 64}, {"cluster_size": 2097152},
])
def test_long_qcow2_allocation_sweep(opts):
    rec = Recording.in_memory("qcow2", 32 << 20, "writeback", create_options=opts)
    run_workload(rec.backend, WorkloadConfig(ops=600, seed=21, region_sectors=8192, lba_stride=8,
                                             max_sectors=32, p_discard=0.06, p_zeroes=0.04))
    res = Checker(rec.base, rec.log, rec.oracle(), "qcow2", 3).run(
        enumerate_states(rec.log, 1500, 3))
    assert res.violations == [], res.violations[:3]
