"""Regression: Linux's sym53c8xx scanning an absent SCSI ID on the LSI53C895A.

After Domain Validation of target 0 the SCSI scan selects IDs 1..6.  Nobody
answers, so the chip reports a selection timeout (SIST1 STO).  The driver's
SELECT sequence (sym_fw2.h) is

    SELECT:       SELECT ATN FROM dsa.select, ungetjob
                  LOAD SCRATCHA0, 4, FROM dsa.status     ; still runs while selecting
                  NOOP
    WF_SEL_DONE:  INT SIR_SEL_ATN_NO_MSG_OUT, IF NOT WHEN MSG_OUT
    SEND_IDENT:   MOVE FROM dsa.msgout, WHEN MSG_OUT
    ...

and ``sym_int_sto`` (sym_hipd.c) accepts the STO only with
``DSP == SCRIPTA_BA(np, wf_sel_done) + 8``: the chip goes on with the
instructions that do not need the bus and halts at the first phase test.  For
any other DSP it calls ``sym_start_reset``: a SCSI bus reset, a SIST0 RST
interrupt ("SCSI BUS reset detected"), 3 s of settle delay, per absent ID and
retry — 14 resets and 43 s of guest time, when blockbed halted SCRIPTS at the
SELECT itself.  QEMU's lsi53c895a defers STO the same way (the next block
move / transfer control stops the script).
"""

from __future__ import annotations

import struct

import pytest

from blockbed.devices.lsi53c895a import asm as A
from blockbed.devices.lsi53c895a import regs as R
from lsi_helpers import CDB, DONE, MSGOUT, SCRIPT, STATUS, TABLE, Phase, Rig, program

NOOP = lambda l: [0x80000000, 0]            # noqa: E731  JUMP, "if false", no condition
SIR_SEL_ATN_NO_MSG_OUT, SIR_UNGETJOB = 0x10, 0xE3
SCR0_VALUE = 0x12345678


@pytest.fixture
def rig():
    return Rig(targets=(0,), unit_attention=False)


def sym_select_script():
    return program([
        "select",
        lambda l: A.select_table(0, l["ungetjob"]),
        lambda l: A.load(R.SCRATCHA, 4, 8, dsa_relative=True),   # phys.head.status
        NOOP,
        "wf_sel_done",
        lambda l: A.interrupt(SIR_SEL_ATN_NO_MSG_OUT, when=Phase.MSG_OUT, if_true=False),
        "send_ident",
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 6, CDB),
        lambda l: A.move(Phase.STATUS, 1, STATUS),
        lambda l: A.interrupt(DONE),
        "ungetjob",
        lambda l: A.interrupt(SIR_UNGETJOB),
    ])


def start_job(rig, target):
    code, labels = program_and_load(rig)
    rig.qt.memwrite(TABLE, struct.pack("<III", target << 16, 0, SCR0_VALUE))
    rig.wl(R.SCRATCHA, 0)
    rig.wl(R.DSA, TABLE)
    rig.start(labels["select"])
    return labels


def program_and_load(rig):
    code, labels = sym_select_script()
    rig.qt.memwrite(SCRIPT, code)
    return code, labels


def test_selection_timeout_halts_at_the_first_phase_test(rig):
    """The guest-visible sequence sym_int_sto checks: STO alone, SCRIPTS stopped
    with DSP = WF_SEL_DONE + 8, the instructions between SELECT and the phase test
    executed, and no SCSI bus reset anywhere."""
    labels = start_job(rig, target=3)                  # nobody at ID 3
    ist, dstat, sist0, sist1 = rig.wait_interrupt()
    assert ist & R.ISTAT0_SIP and not ist & R.ISTAT0_DIP and dstat == 0
    assert sist1 == R.SIST1_STO and sist0 == 0         # no RST, no UDC, no MA
    assert rig.rl(R.DSP) == labels["wf_sel_done"] + 8  # sym_int_sto: recover, not reset
    assert rig.rl(R.SCRATCHA) == SCR0_VALUE            # the LOAD after SELECT ran
    assert rig.rb(R.ISTAT1) & R.ISTAT1_SRUN == 0
    assert not rig.rb(R.ISTAT0) & R.ISTAT0_CON
    assert not rig.rb(R.SSTAT0) & R.SSTAT0_RST
    # sym_recover_scsi_int restarts SCRIPTS; the next job (target 0) runs to the end
    rig.qt.memwrite(MSGOUT, b"\xc0")
    rig.qt.memwrite(CDB, bytes(6))                     # TEST UNIT READY
    start_job(rig, target=0)
    ist, dstat, sist0, sist1 = rig.wait_interrupt()
    assert (dstat & R.DSTAT_SIR, sist0, sist1) == (R.DSTAT_SIR, 0, 0)
    assert rig.rl(R.DSPS) == DONE and rig.qt.memread(STATUS, 1) == b"\x00"


def test_selection_timeout_follows_jumps_then_stops_at_a_block_move(rig):
    """Unconditional jumps do not need the bus; the block move they lead to does."""
    code, labels = program([
        "select",
        lambda l: A.select(4, l["ungetjob"]),
        lambda l: A.jump(l["there"]),
        lambda l: A.interrupt(0xE4),
        "there",
        lambda l: A.reg_imm(R.SCRATCHB, "mov", 0x5A),
        "move",
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.interrupt(DONE),
        "ungetjob",
        lambda l: A.interrupt(SIR_UNGETJOB),
    ])
    rig.qt.memwrite(SCRIPT, code)
    rig.start(labels["select"])
    ist, dstat, sist0, sist1 = rig.wait_interrupt()
    assert (dstat, sist0, sist1) == (0, 0, R.SIST1_STO)
    assert rig.rl(R.DSP) == labels["move"] + 8
    assert rig.rb(R.SCRATCHB) == 0x5A


def test_selection_timeout_is_not_lost_when_scripts_halt_first(rig):
    """A script that interrupts before touching the bus still sees the STO."""
    code, labels = program([
        "select",
        lambda l: A.select(5, l["ungetjob"]),
        lambda l: A.interrupt(0x42),
        "ungetjob",
        lambda l: A.interrupt(SIR_UNGETJOB),
    ])
    rig.qt.memwrite(SCRIPT, code)
    rig.start(labels["select"])
    ist, dstat, sist0, sist1 = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x42
    assert sist1 == R.SIST1_STO and sist0 == 0
