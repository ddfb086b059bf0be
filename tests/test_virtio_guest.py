"""The guest programs on blockbed's virtio-blk, with no QEMU needed.

- exits per request: the driver polls used.idx in RAM and, with EVENT_IDX,
  rings the doorbell once per batch: at most 2 exits per request is the
  issue's target (counted, not timed, so the test is deterministic);
- disktest's final disk is a function of its seed alone: two runs with
  different machine seeds (so different completion orders) leave
  byte-identical images;
- a device error surfaces in the guest: with blkdebug failing writes,
  disktest reports errors and FAILs instead of passing silently.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import REPO, guest_elf

sys.path.insert(0, str(REPO / "benchmarks"))

import guest_io  # noqa: E402

from blockbed.devices.attach import attach_drives  # noqa: E402
from blockbed.machine import Machine, MachineConfig  # noqa: E402

MiB = 1 << 20


def _image(path: Path, size: int = 16 * MiB) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("mode,bs,qd,limit", [("randread", 4096, 1, 1.05),
                                              ("seqwrite", 65536, 1, 1.05),
                                              ("randread", 4096, 32, 0.2),
                                              ("seqread", 65536, 32, 0.2)])
def test_exits_per_request(tmp_path, mode, bs, qd, limit):
    img = _image(tmp_path / "d.img")
    total = 512 * bs
    r = guest_io.run_blockbed(guest_elf("bench"), img,
                              f"dev=virtio mode={mode} bs={bs} qd={qd} total={total}",
                              total // bs, total)
    assert r.exits_per_req <= limit <= 2, f"{r.exits_per_req:.2f} exits per request"


def _disktest(img: Path, seed: int, append: str, drive_extra: str = "") -> tuple[int | None, str]:
    m = Machine(MachineConfig(memory_mib=128, seed=seed, timeout_s=120))
    try:
        attach_drives(m, [f"file={img},format=raw,if=virtio{drive_extra}"])
        m.load_kernel(str(guest_elf("disktest")), append)
        res = m.run()
    finally:
        m.close()
    return res.exit_code, res.transcript


def test_disktest_result_independent_of_completion_order(tmp_path):
    a, b = _image(tmp_path / "a.img", 4 * MiB), _image(tmp_path / "b.img", 4 * MiB)
    ra = _disktest(a, 1, "dev=virtio seed=9 ops=120 qd=16")
    rb = _disktest(b, 77, "dev=virtio seed=9 ops=120 qd=16")
    assert ra[0] == rb[0] == 0, ra[1] + rb[1]
    assert ra[1] == rb[1]
    assert a.read_bytes() == b.read_bytes()
    c = _image(tmp_path / "c.img", 4 * MiB)
    assert _disktest(c, 1, "dev=virtio seed=10 ops=120 qd=16")[0] == 0
    assert c.read_bytes() != a.read_bytes()            # the seed matters


def test_disktest_reports_device_errors(tmp_path):
    img = _image(tmp_path / "e.img", 4 * MiB)
    rules = tmp_path / "blkdebug.conf"
    rules.write_text("[inject-error]\nevent = \"write\"\nerrno = \"5\"\nonce = \"off\"\n")
    code, text = _disktest(img, 1, "dev=virtio seed=3 ops=40", ",werror=report")
    assert code == 0
    code, text = _disktest(Path(f"blkdebug:{rules}:{img}"), 1, "dev=virtio seed=3 ops=40",
                           ",werror=report")
    assert code == 1 and "disktest: FAIL" in text and "ERROR op 1" in text, text


def test_disktest_detects_silent_corruption(tmp_path):
    """disktest's verification is real: a device that flips one byte of every
    read covering sector 100 makes it report MISMATCH and FAIL."""
    from blockbed.block.backend import BlockBackend
    from blockbed.block.registry import open_image
    from blockbed.devices.virtio import blk

    class Corrupting(blk.VirtioBlk):
        def execute(self, req):
            r = super().execute(req)
            if req.type == blk.T_IN and req.sector <= 100 < req.sector + req.nbytes // 512:
                pos = (100 - req.sector) * 512 + 37
                for b in req.data:
                    if pos < len(b):
                        b[pos] ^= 0x01
                        break
                    pos -= len(b)
            return r

    img = _image(tmp_path / "c.img", 4 * MiB)
    backend = BlockBackend(open_image(str(img), "raw"))
    m = Machine(MachineConfig(memory_mib=128, timeout_s=120))
    try:
        m.add_pci(Corrupting(backend, merge=False))   # every read through execute()
        m.load_kernel(str(guest_elf("disktest")), "dev=virtio seed=5 ops=20")
        res = m.run()
    finally:
        m.close()
        backend.close()
    assert res.exit_code == 1
    assert "MISMATCH lba 100" in res.transcript and "disktest: FAIL" in res.transcript


def test_disktest_interrupt_driven(tmp_path):
    """virtio_irq=msix: the driver sleeps in hlt and is woken by MSI-X completions."""
    img = _image(tmp_path / "i.img", 4 * MiB)
    m = Machine(MachineConfig(memory_mib=128, seed=3, timeout_s=120))
    try:
        attach_drives(m, [f"file={img},format=raw,if=virtio"])
        m.load_kernel(str(guest_elf("disktest")), "dev=virtio seed=6 ops=60 virtio_irq=msix")
        res = m.run()
    finally:
        m.close()
    assert res.exit_code == 0 and "disktest: PASS" in res.transcript, res.transcript
    assert res.exits["interrupts"] > 50 and res.exits["hlt"] > 50
