"""Guest-level durability through the ATA drivers under blockbed: the flushtest guest's
FUA writes must reach the block layer as FUA writes on both controllers and on both
AHCI paths (WRITE DMA FUA EXT without NCQ, the FPDMA FUA bit with NCQ) — the two
places QEMU 7.2 drops FUA — and every promise the guest records must be backed by
a durable request in the backend's log."""

from __future__ import annotations

import re

import pytest

from blockbed.devices.attach import attach_drives
from blockbed.machine import Machine, MachineConfig
from conftest import guest_elf


def run_guest(tmp_path, program, append, dev, drive_opts=""):
    img = tmp_path / "d.raw"
    img.write_bytes(bytes(16 << 20))
    m = Machine(MachineConfig(memory_mib=128, seed=3, timeout_s=60))
    backends = attach_drives(m, [f"file={img},format=raw,if={dev}{drive_opts}"], request_log=True)
    m.load_kernel(str(guest_elf(program)), append)
    r = m.run()
    m.close()
    return r, backends[0].request_log.entries


@pytest.mark.parametrize("dev,extra,fpdma", [("ahci", "", True), ("ahci", "ahci_ncq=0", False),
                                              ("ide", "", False)])
def test_flushtest_fua_writes_are_durable(tmp_path, dev, extra, fpdma):
    r, log = run_guest(tmp_path, "flushtest", f"dev={dev} seed=4 ops=80 qd=8 fua=1 wce=1 {extra}", dev)
    assert r.exit_code == 0, r.transcript
    assert "FT verify ok" in r.transcript
    m = re.search(r"FT summary writes=\d+ promises=\d+ flushes=\d+ fua=(\d+)", r.transcript)
    n_fua = int(m.group(1))
    assert n_fua > 0
    fua_writes = [e for e in log if e.kind == "write" and e.fua]
    assert len(fua_writes) == n_fua
    assert all(e.host_fua and e.result == 0 for e in fua_writes)
    # every "why=fua" promise names a write the backend did durably
    assert len(re.findall(r"why=fua", r.transcript)) == n_fua


def test_flushtest_write_cache_off_makes_writes_durable(tmp_path):
    r, log = run_guest(tmp_path, "flushtest", "dev=ahci seed=1 ops=60 qd=8 fua=0 wce=1", "ahci")
    assert r.exit_code == 0 and "FT verify ok" in r.transcript
    assert int(re.search(r"toggles=(\d+)", r.transcript).group(1)) > 0
    assert any(e.kind == "write" and not e.wce_at_submit and e.host_fua for e in log)
    assert not any(e.kind == "write" and e.fua for e in log)


@pytest.mark.parametrize("dev", ["ahci", "ide"])
def test_4k_logical_sectors(tmp_path, dev):
    """logical_block_size=4096 (IDENTIFY words 106, 117-118): the drivers read the
    sector size from IDENTIFY and disktest passes.  Not differential: QEMU 7.2's
    ide-hd refuses a logical block size other than 512."""
    r, log = run_guest(tmp_path, "disktest", f"dev={dev} seed=2 ops=40 qd=4 span=256", dev,
                       ",logical_block_size=4096,physical_block_size=4096")
    assert r.exit_code == 0, r.transcript
    assert "sectors of 4096" in r.transcript.splitlines()[0]
    assert all(e.offset % 4096 == 0 and e.length % 4096 == 0 for e in log if e.kind in ("read", "write"))
