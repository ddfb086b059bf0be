"""Code that a device writes into memory runs as written (guests/programs/dmacode.c).

The device models write guest RAM through the host mmap, which unicorn does not
see, so without GuestMemory.device_write_view the CPU kept running its old
translation of the bytes a read command replaced (every controller failed at the
second round; IDE PIO too, whose rep insw bulk copy is the CPU's own stores made
past unicorn).  Each case runs the same ELF under QEMU, whose DMA path drops the
translations, and compares the runs."""

from __future__ import annotations

import shutil

import pytest

from blockbed.machine import Machine, MachineConfig
from conftest import guest_elf
from harness import assert_same_run, run_blockbed, run_qemu

# (interface, guest driver options, QEMU device arguments for drive d0)
CASES = {
    "virtio": ("virtio", "", ["-device", "virtio-blk-pci,drive=d0,disable-legacy=on"]),
    "ahci-ncq": ("ahci", "", ["-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0"]),
    "ahci-dma": ("ahci", "ahci_ncq=0", ["-device", "ahci,id=a", "-device", "ide-hd,drive=d0,bus=a.0"]),
    "ide-bmdma": ("ide", "", ["-device", "ide-hd,drive=d0,bus=ide.0"]),
    "ide-pio": ("ide", "ide_dma=0", ["-device", "ide-hd,drive=d0,bus=ide.0"]),
    "lsi": ("lsi", "", ["-device", "lsi53c895a,id=s", "-device", "scsi-hd,drive=d0,bus=s.0"]),
}


@pytest.mark.qemu
@pytest.mark.parametrize("case", sorted(CASES))
def test_code_read_by_dma_runs_as_written(tools, tmp_path, case):
    dev, opts, qemu_dev = CASES[case]
    a, b = tmp_path / "qemu.raw", tmp_path / "bb.raw"
    a.write_bytes(bytes(1 << 20))
    shutil.copy(a, b)
    append = f"dev={dev} rounds=8 {opts}".strip()
    elf = guest_elf("dmacode")
    q = run_qemu(elf, append, extra=["-drive", f"file={a},if=none,id=d0,format=raw", *qemu_dev])
    bb = run_blockbed(elf, append, drives=[f"file={b},format=raw,if={dev}"])
    assert "dmacode: ok rounds=8" in bb.transcript, bb.transcript
    assert_same_run(q, bb)


def test_a_device_write_view_drops_translated_code():
    """The machine's side alone: device_write_view calls the CPU's invalidator for
    exactly the range, and the machine has one (no 'cannot drop' warning)."""
    m = Machine(MachineConfig(memory_mib=8))
    calls = []
    real = m.memory.drop_code
    m.memory.drop_code = lambda addr, n: (calls.append((addr, n)), real(addr, n))
    m.memory.device_write_view(0x3000, 512)[:4] = b"\x90\x90\x90\xc3"
    assert calls == [(0x3000, 512)]
    assert not any("cannot drop" in w for w in m.warnings)
    m.close()
