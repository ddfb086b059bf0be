"""AHCI with interrupts (the driver's ahci_irq=msi|intx mode) under QEMU 7.2 and blockbed.

The driver sleeps with hlt and takes PxIS in its handler; completions arrive as MSI
(one vector) or as the level INTx line through the I/O APIC.  Same transcripts and
identical disks on both.  These runs also cover the machine's MMIO replay guard
(machine/cpu.py): an interrupt raised while the guest writes PxCI used to make
unicorn execute that write twice, which the HBA rightly reports as an NCQ tag
reused (I/O errors in disktest).
"""

from __future__ import annotations

import pytest

from test_ata_differential import differential


@pytest.mark.qemu
@pytest.mark.parametrize("mode,seed", [("msi", 3), ("msi", 7), ("intx", 5)])
def test_disktest_with_interrupts(tools, tmp_path, mode, seed):
    q, bb = differential(tmp_path, "disktest",
                         f"dev=ahci seed={seed} ops=100 qd=8 span=2048 ahci_irq={mode}", "ahci")
    assert "disktest: PASS" in q.lines() and q.status == 0


@pytest.mark.qemu
def test_non_queued_with_msi(tools, tmp_path):
    q, _ = differential(tmp_path, "disktest", "dev=ahci seed=2 ops=60 span=1024 ahci_ncq=0 ahci_irq=msi",
                        "ahci")
    assert "disktest: PASS" in q.lines()
