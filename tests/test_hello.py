"""`hello` under blockbed, and the same ELF under qemu-system-x86_64.

The lines that must agree: the banner, the memory size, the parsed arguments,
the final line, and every PCI function blockbed models, with its IDs, class
and BAR kinds and sizes.  What may differ, and why:

- BAR *addresses*: both firmwares (SeaBIOS, blockbed's) pick addresses by
  their own allocation order; guests must read BARs, never assume them.
- ``00:01.3 8086:7113`` (PIIX4 ACPI power management) exists only under
  QEMU: blockbed has no ACPI.
"""

from __future__ import annotations

import re

import pytest

from conftest import guest_elf
from harness import run_blockbed, run_qemu

QEMU_ONLY_FUNCTIONS = {"00:01.3"}


def normalise(lines: list[str]) -> list[str]:
    out, skip = [], False
    for ln in lines:
        m = re.match(r"pci (\S+) ", ln)
        if m:
            skip = m.group(1) in QEMU_ONLY_FUNCTIONS
        elif not ln.startswith("  bar "):
            skip = False
        if skip:
            continue
        out.append(re.sub(r"addr=0x[0-9a-f]+", "addr=*", ln))
    return out


def test_hello_exits_zero_under_blockbed():
    r = run_blockbed(guest_elf("hello"), "k=v")
    assert r.status == 0, r.stderr
    assert r.lines()[0] == "blockbed hello guest"
    assert "pci 00:00.0 8086:1237 class 06.00.00" in r.lines()
    assert "arg k=v" in r.lines()
    assert r.lines()[-1] == "hello: done"


def test_hello_agrees_with_qemu(qemu_system):
    elf = guest_elf("hello")
    ours = run_blockbed(elf, "k=v mode=diff")
    ref = run_qemu(elf, "k=v mode=diff")
    assert ref.status == 0 and ours.status == 0, (ref.stderr, ours.stderr)
    assert normalise(ours.lines()) == normalise(ref.lines())
