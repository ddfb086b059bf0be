"""LSI53C895A SCSI controller (1000:0012) with its SCRIPTS processor.

- :mod:`.regs`: register map and bits
- :mod:`.chip`: the PCI device, register file, interrupts, DMA
- :mod:`.bus`: the SCSI bus from the target side (phases, messages, disconnect/reselect)
- :mod:`.scripts`: the SCRIPTS processor
- :mod:`.asm`: a SCRIPTS assembler for tests

:func:`attach` is what ``--drive …,if=lsi`` calls: every such drive becomes
a SCSI disk on one controller, at target ``unit=`` (else the first free ID).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..scsi import DiskIdentity, ScsiDisk
from .chip import MAX_TARGETS, LSI53C895A

if TYPE_CHECKING:
    from ...machine.board import Machine

__all__ = ["LSI53C895A", "attach", "MAX_TARGETS"]


def attach(machine: "Machine", backend, spec) -> LSI53C895A:
    """Add ``backend`` as a SCSI disk to the machine's LSI controller (created on first use)."""
    found = [d for d in machine.pci.find(LSI53C895A.vendor_id, LSI53C895A.device_id)
             if isinstance(d, LSI53C895A)]
    chip = found[0] if found else machine.add_pci(LSI53C895A())
    opts = getattr(spec, "device_options", {}) or {}
    unit = opts.get("unit")
    target = chip.free_target() if unit is None else int(unit)
    serial = getattr(spec, "serial", None)
    device_id = serial[:20] if serial else backend.name
    chip.add_target(target, ScsiDisk(backend, DiskIdentity(serial=serial, device_id=device_id)))
    return chip
