"""The LSI register window: wide accesses and the mirror behave as byte accesses.

The window serves an access whose bytes are all plain storage with one load or
store; these tests read and write registers with side effects through 16- and
32-bit accesses, directly and through the memory BAR's mirror, so a register
missing from the side-effect sets (chip._READ_ACTS, chip._WRITE_ACTS) or a wrong
fast path shows up as a lost side effect."""

from __future__ import annotations

import pytest

from blockbed.devices.lsi53c895a import regs as R

from lsi_helpers import DONE, SCRIPT, Rig
from blockbed.devices.lsi53c895a import asm as A


@pytest.fixture
def rig():
    return Rig(targets=(0,), unit_attention=False)


def _dword(off: int) -> int:
    return off & ~3


def test_dword_read_over_dstat_clears_it(rig):
    rig.chip.r[R.DSTAT] = R.DSTAT_SIR
    v = rig.rl(_dword(R.DSTAT))
    assert (v >> 8 * (R.DSTAT & 3)) & 0xFF == R.DSTAT_SIR | R.DSTAT_DFE
    assert rig.rb(R.DSTAT) == R.DSTAT_DFE          # read once: cleared


def test_word_read_of_sist_clears_both(rig):
    rig.chip.r[R.SIST0] = R.SIST0_MA
    rig.chip.r[R.SIST1] = R.SIST1_STO
    assert R.SIST1 == R.SIST0 + 1
    v = rig.qt.readw(rig.mmio + R.SIST0)
    assert v == R.SIST0_MA | R.SIST1_STO << 8
    assert rig.rb(R.SIST0) == 0 and rig.rb(R.SIST1) == 0


def test_ctest0_and_sstat2_are_computed_in_a_dword(rig):
    v = rig.rl(_dword(R.CTEST0))
    assert (v >> 8 * (R.CTEST0 & 3)) & 0xFF == 0xFF
    v = rig.rl(_dword(R.SSTAT2))
    assert (v >> 8 * (R.SSTAT2 & 3)) & 0xFF == R.SSTAT2_LDSC     # bus free


def test_plain_registers_round_trip_wide_and_through_the_mirror(rig):
    rig.wl(R.DSA, 0x12345678)
    assert rig.rl(R.DSA) == 0x12345678
    assert rig.qt.readl(rig.mmio + 0x100 + R.DSA) == 0x12345678     # the mirror
    rig.qt.writel(rig.mmio + 0x200 + R.SCRATCHA, 0xCAFEF00D)
    assert rig.rl(R.SCRATCHA) == 0xCAFEF00D


def test_read_only_bytes_ignore_a_dword_write(rig):
    before = rig.chip.r[R.SSTAT1]
    rig.wl(_dword(R.SSTAT1), 0xFFFFFFFF)
    assert rig.chip.r[R.SSTAT1] == before
    assert rig.chip.r[R.DSTAT] == 0


def test_dword_write_of_dsp_starts_scripts_directly_and_through_the_mirror(rig):
    rig.qt.memwrite(SCRIPT, A.assemble(A.interrupt(DONE)))
    for base in (0, 0x100):
        rig.qt.writel(rig.mmio + base + R.DSP, SCRIPT)
        ist, dstat, _, _ = rig.wait_interrupt()
        assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == DONE


def test_dword_write_over_istat0_with_srst_resets(rig):
    rig.wl(R.DSA, 0x1000)
    rig.wl(_dword(R.ISTAT0), R.ISTAT0_SRST << 8 * (R.ISTAT0 & 3))
    assert rig.rl(R.DSA) == 0
