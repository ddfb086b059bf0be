"""The crash-consistency conformance matrix (issue 8), guest-driven.

{virtio; ahci with and without NCQ; ide; lsi} x {none, writeback,
writethrough, directsync, unsafe} x {qcow2, raw}: flushtest runs on the
controller, the engine sweeps its crash states.  A correct stack shows zero
violations *and* real promises checked; ``unsafe`` must be reported as
violating (the negative control); the test-only faulty device options
(x-ignore-flush, x-ignore-fua) must be caught.  Sized for CI (about a
second per cell); ``make crash-long`` runs the large sweep
(test_crash_long.py).
"""

from __future__ import annotations

import pytest

from blockbed.crashrun.crashtest import DEFAULT_KERNEL, crashtest
from blockbed.devices.attach import controller_module

from conftest import guest_elf, run_tool

CONTROLLERS = ["virtio", "ahci,ncq=on", "ahci,ncq=off", "ide", "lsi"]
CACHES = ["none", "writeback", "writethrough", "directsync", "unsafe"]
FORMATS = ["qcow2", "raw"]


def _have(iface: str) -> bool:
    try:
        controller_module(iface.split(",")[0])
        return True
    except ValueError:
        return False


@pytest.fixture(scope="module")
def flushtest_elf():
    guest_elf("flushtest")
    return DEFAULT_KERNEL


def _image(tmp_path, fmt, qemu_img):
    img = tmp_path / f"disk.{fmt}"
    run_tool(qemu_img, "create", "-f", fmt, str(img), "16M")
    return img


def _run(tmp_path, qemu_img, iface, cache, fmt, extra="", states=120, ops=80, seed=0,
         append=None):
    if not _have(iface):
        pytest.skip(f"controller {iface} has not landed")
    img = _image(tmp_path, fmt, qemu_img)
    drive = f"file={img},format={fmt},if={iface},cache={cache}{extra}"
    rep = crashtest(drive, states=states, ops=ops, seed=seed, keep=None, append=append)
    return rep


def _guest_lines(rep) -> str:
    try:
        text = (rep.run_dir / "transcript.txt").read_text()
    except OSError:
        return "(transcript gone)"
    return "\n".join(line for line in text.splitlines() if "FT promise" not in line)[-3000:]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("iface", CONTROLLERS)
def test_matrix(tmp_path, qemu_img, flushtest_elf, iface, cache, fmt):
    rep = _run(tmp_path, qemu_img, iface, cache, fmt)
    assert rep.guest_exit == 0 and rep.guest_complete, _guest_lines(rep)
    assert rep.guest_promises >= 40 and rep.durable >= 40, "the sweep must hold real promises"
    assert rep.sweep.states_checked >= 100 and rep.sweep.bytes_verified > 0
    found = [v for v in rep.violations if v.kind != "guest"]
    kinds = {v.kind for v in found}
    if cache == "unsafe":
        assert rep.sweep.violating_states > 0, "cache=unsafe must be reported as violating"
        assert kinds == {"durability"}, "the device passed every promise down; the loss is the backend's"
    else:
        assert found == [], found[:3]


def test_ahci_exercises_fua_and_flush(tmp_path, qemu_img, flushtest_elf):
    """The AHCI cells must really take the FUA path (NCQ FUA bit / WRITE DMA FUA EXT)
    and the flush path, and every FUA promise must be one the backend agrees with."""
    for ncq in ("on", "off"):
        rep = _run(tmp_path, qemu_img, f"ahci,ncq={ncq}", "writeback", "raw")
        assert rep.ok, rep.violations[:3]
        assert rep.guest_config.get("fua") == "1" and rep.guest_config.get("flush") == "1"
        assert rep.host_counts["flush"] > 0
        assert rep.fua_requests > 5, "FUA writes must reach the backend as FUA"


FAULTS = [
    ("virtio", ",x-ignore-flush=on"),
    ("ahci,ncq=on", ",x-ignore-fua=on"),
    ("ahci,ncq=off", ",x-ignore-fua=on"),
    ("ahci,ncq=on", ",x-ignore-flush=on"),
    ("ide", ",x-ignore-flush=on"),
    ("lsi", ",x-ignore-fua=on"),
    ("lsi", ",x-ignore-flush=on"),
]


@pytest.mark.parametrize("iface,fault", FAULTS)
def test_faulty_device_options_are_caught(tmp_path, qemu_img, flushtest_elf, iface, fault):
    rep = _run(tmp_path, qemu_img, iface, "writeback", "raw", extra=fault, ops=150)
    kinds = {v.kind for v in rep.violations}
    assert "disagreement" in kinds, "the guest's promises must disagree with the backend's"
    assert "durability" in kinds, "and some crash state must actually lose a promised write"
    assert rep.meta["faults"] == fault.lstrip(",")


def test_same_faults_off_pass(tmp_path, qemu_img, flushtest_elf):
    rep = _run(tmp_path, qemu_img, "virtio", "writeback", "raw", extra=",x-ignore-flush=off")
    assert rep.ok


@pytest.mark.parametrize("iface", ["virtio", "ahci,ncq=on", "lsi"])
def test_queue_depth_one(tmp_path, qemu_img, flushtest_elf, iface):
    """The matrix runs at qd=4 (several virtio requests / NCQ tags in flight);
    queue depth 1 must hold too, and there the guest's promises and the
    backend's coincide write for write."""
    dev = iface.split(",")[0]
    rep = _run(tmp_path, qemu_img, iface, "writeback", "qcow2",
               append=f"dev={dev} seed=9 ops=100 qd=1")
    assert rep.guest_config.get("qd") == "1"
    found = [v for v in rep.violations if v.kind != "guest"]
    assert found == [], found[:3]
    assert rep.guest_promises >= 40
