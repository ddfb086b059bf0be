"""Builders for damaged qcow2 images (corpus for tests/test_qcow2_damage.py).

Each damage kind starts from a fresh image made by qemu-img and filled by qemu-io,
then pokes one metadata field.  ``Damage.expect`` is QEMU's corruption message
(``qcow2_signal_corruption`` text) for the first access through the damaged field.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLUSTER = 65536
PATTERN = 0xAB


@dataclass(frozen=True)
class Damage:
    name: str
    field: str          # "l1" (entry 0) or "l2" (entry 0 of the first L2 table)
    value: int          # the new raw 64-bit entry
    expect: str         # QEMU's message, or "" when QEMU tolerates the damage


def _u64(f, off: int) -> int:
    f.seek(off)
    return struct.unpack(">Q", f.read(8))[0]


def build(qemu_img: str, qemu_io: str, path: Path, dmg: Damage) -> None:
    """Create a 1 MiB image whose first cluster holds PATTERN, then apply ``dmg``."""
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(path), "1M"], check=True)
    subprocess.run([qemu_io, "-c", f"write -P {PATTERN:#x} 0 64k", str(path)],
                   check=True, capture_output=True)
    with open(path, "r+b") as f:
        l1 = _u64(f, 40)
        if dmg.field == "l1":
            target = l1
        else:
            target = _u64(f, l1) & 0x00FFFFFFFFFFFE00
        f.seek(target)
        f.write(struct.pack(">Q", dmg.value))


COPIED = 1 << 63
KINDS = [
    Damage("l1-unaligned-512", "l1", COPIED | 0x40200,
           "L2 table offset 0x40200 unaligned (L1 index: 0)"),
    Damage("l1-unaligned-4k", "l1", COPIED | 0x41000,
           "L2 table offset 0x41000 unaligned (L1 index: 0)"),
    Damage("l1-unaligned-nocopied", "l1", 0x48000,
           "L2 table offset 0x48000 unaligned (L1 index: 0)"),
    Damage("l2-data-unaligned-512", "l2", COPIED | 0x50200,
           "Cluster allocation offset 0x50200 unaligned (L2 offset: 0x40000, L2 index: 0)"),
    Damage("l2-data-unaligned-32k", "l2", COPIED | 0x58000,
           "Cluster allocation offset 0x58000 unaligned (L2 offset: 0x40000, L2 index: 0)"),
    Damage("l2-zero-alloc-unaligned", "l2", COPIED | 0x58000 | 1,
           "Cluster allocation offset 0x58000 unaligned (L2 offset: 0x40000, L2 index: 0)"),
]
