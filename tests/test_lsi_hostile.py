"""Hostile scripts and protocol abuse against the LSI53C895A: every case ends in a
defined interrupt or status, and the controller (and host) keep working."""

from __future__ import annotations

import struct
import time

import pytest

from blockbed.devices.lsi53c895a import asm as A
from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.scsi import parse_fixed_sense
from blockbed.devices.scsi.constants import INVALID_FIELD, RESET_OCCURRED

from lsi_helpers import CDB, DATA, DONE, MSGIN, MSGOUT, SCRIPT, STATUS, TABLE, Phase, Rig, program


def cdb10(op, lba, count, b1=0):
    return struct.pack(">BBIBHB", op, b1, lba, 0, count, 0)


@pytest.fixture
def rig():
    return Rig(targets=(0, 1), unit_attention=False)


def healthy(rig):
    """The controller still runs a command end to end."""
    st, dsps, data, _ = rig.command(0, [0x12, 0, 0, 0, 36, 0], 36)
    assert (st, dsps) == (0, DONE) and data[8:12] == b"QEMU"


def run_script(rig, items):
    code, labels = program(items)
    rig.qt.memwrite(SCRIPT, code)
    t = time.perf_counter()
    rig.start(SCRIPT)
    return rig.wait_interrupt(), time.perf_counter() - t


def test_empty_opcode_loop_is_stopped(rig):
    rig.qt.memwrite(SCRIPT, bytes(4096))
    rig.qt.memwrite(SCRIPT + 4096, A.assemble(A.jump(SCRIPT)))          # wrap around forever
    rig.start(SCRIPT)
    ist, dstat, s0, s1 = rig.wait_interrupt()
    assert s0 & R.SIST0_UDC and not rig.rb(R.ISTAT1) & R.ISTAT1_SRUN
    healthy(rig)


def test_jump_to_self_is_stopped(rig):
    (ist, dstat, s0, s1), secs = run_script(rig, ["x", lambda l: A.jump(l["x"])])
    assert s0 & R.SIST0_UDC and secs < 5
    healthy(rig)


def test_memory_move_into_own_registers_does_not_recurse(rig):
    """A memory move writing DSP (whose last byte starts SCRIPTS) and DCNTL STD
    through the chip's own MMIO window: no re-entry, execution simply continues
    at the new DSP (the CVE-2023-0330 class)."""
    qt = rig.qt
    target = SCRIPT + 0x800
    qt.memwrite(target, A.assemble(A.reg_imm(R.SCRATCHA, "mov", 0x99), A.interrupt(0x77)))
    qt.memwrite(0x50000, struct.pack("<I", target))
    qt.memwrite(0x50010, bytes([R.DCNTL_STD]))
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.memory_move(1, 0x50010, rig.mmio + R.DCNTL),       # "start" while running
        lambda l: A.memory_move(4, 0x50000, rig.mmio + R.DSP),         # jump by DMA
        lambda l: A.interrupt(0xBAD),
    ])
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x77 and rig.rb(R.SCRATCHA) == 0x99
    healthy(rig)


def test_store_and_load_through_own_registers(rig):
    (ist, dstat, _, _), _ = run_script(rig, [
        lambda l: A.reg_imm(R.SCRATCHA, "mov", 0x3C),
        lambda l: A.memory_move(4, rig.mmio + R.SCRATCHA, rig.mmio + R.SCRATCHB),
        lambda l: A.store(R.SCRATCHB, 4, rig.mmio + 0x60),                # into SCRATCHC
        lambda l: A.interrupt(1),
    ])
    assert dstat & R.DSTAT_SIR and rig.rb(R.SCRATCHB) == 0x3C and rig.rb(0x60) == 0x3C


def test_script_dma_soft_reset_stops_cleanly(rig):
    rig.qt.memwrite(0x50000, bytes([R.ISTAT0_SRST]))
    code, _ = program([lambda l: A.memory_move(1, 0x50000, rig.mmio + R.ISTAT0),
                       lambda l: A.interrupt(0xBAD)])
    rig.qt.memwrite(SCRIPT, code)
    rig.start(SCRIPT)
    assert not rig.rb(R.ISTAT1) & R.ISTAT1_SRUN and not rig.rb(R.ISTAT0) & 3
    # the reset reached the disks
    assert rig.command(0, [0] * 6)[0] == 2
    healthy(rig)


def test_block_move_past_ram_is_bus_fault(rig):
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\x80")
    qt.memwrite(CDB, bytes([0x12, 0, 0, 0, 36, 0]))
    beyond = 64 << 20                                                   # RAM is 16 MiB
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.select(0, 0),
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 6, CDB),
        lambda l: A.move(Phase.DATA_IN, 36, beyond),
        lambda l: A.interrupt(1),
    ])
    assert dstat & R.DSTAT_BF
    # recover: SCSI bus reset, then everything works again
    rig.wb(R.SCNTL1, R.SCNTL1_RST)
    rig.wb(R.SCNTL1, 0)
    rig.rb(R.SIST0)
    rig.command(0, [0] * 6)                                             # eats the unit attention
    healthy(rig)


def test_script_fetch_outside_ram_and_bus_master_off(rig):
    rig.start(0xF0000000)
    assert rig.wait_interrupt()[1] & R.DSTAT_BF
    cmd = rig.qt.pci_config_read(rig.chip, 4, 2)
    rig.qt.pci_config_write(rig.chip, 4, cmd & ~0x4, 2)                 # bus master off
    rig.start(SCRIPT)
    assert rig.wait_interrupt()[1] & R.DSTAT_BF
    rig.qt.pci_config_write(rig.chip, 4, cmd, 2)
    healthy(rig)


@pytest.mark.parametrize("insn", [
    [0xA8000000, 0],                       # transfer control opcode 5
    [0xE1000000 | (0x34 << 16), 0x50000],  # LOAD with a byte count of 0
    [0x08000000, 0x50000],                 # block move with a byte count of 0
])
def test_illegal_instructions(rig, insn):
    rig.qt.memwrite(SCRIPT, A.assemble(insn))
    rig.start(SCRIPT)
    assert rig.wait_interrupt()[1] & R.DSTAT_IID
    healthy(rig)


def _start_read_and_park(rig, target=0):
    """Start a READ that disconnects; interrupt the waiting script with SIGP."""
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\xc0")
    qt.memwrite(CDB, cdb10(0x28, 0, 1))
    qt.memwrite(TABLE, struct.pack("<12I", target << 16, 0, 1, MSGOUT, 10, CDB, 512, DATA,
                                   1, STATUS, 1, MSGIN))
    rig.wl(R.DSA, TABLE)
    rig.start(rig.labels["start"])
    assert rig.chip.waiting_reselect and len(rig.chip.disconnected) == 1
    rig.wb(R.ISTAT0, R.ISTAT0_SIGP)                                     # give up waiting
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR
    rig.rb(R.CTEST2)


def _send_message(rig, target, msgs):
    rig.qt.memwrite(MSGOUT, bytes(msgs))
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.select(target, 0),
        lambda l: A.move(Phase.MSG_OUT, len(msgs), MSGOUT),
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(0x44),
    ])
    return dstat, s0


@pytest.mark.parametrize("msg", [0x06, 0x0E, 0x0C])      # ABORT, CLEAR QUEUE, BUS DEVICE RESET
def test_task_management_messages_clear_a_disconnected_request(rig, msg):
    _start_read_and_park(rig, 0)
    dstat, s0 = _send_message(rig, 0, [0xC0, msg])
    assert dstat & R.DSTAT_SIR and not s0
    assert not rig.chip.disconnected
    rig.qt.clock_step(50)
    assert not rig.rb(R.ISTAT0) & 3                                     # nobody reselects
    if msg == 0x0C:                                                     # the target was reset
        assert rig.command(0, [0] * 6)[0] == 2
        assert parse_fixed_sense(rig.command(0, [3, 0, 0, 0, 18, 0], 18)[2]) == RESET_OCCURRED
    healthy(rig)


def test_abort_leaves_other_targets_alone(rig):
    _start_read_and_park(rig, 1)
    _send_message(rig, 0, [0xC0, 0x06])
    assert len(rig.chip.disconnected) == 1


def test_abort_during_connected_data_phase(rig):
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\x80")
    qt.memwrite(CDB, cdb10(0x28, 0, 8))
    qt.memwrite(0x21400, b"\x06")
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.select(0, 0),
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 10, CDB),
        lambda l: A.move(Phase.DATA_IN, 512, DATA),                  # part of the 4 KiB
        lambda l: A.set_bits(atn=True),
        lambda l: A.move(Phase.MSG_OUT, 1, 0x21400),                  # ABORT
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(0x45),
    ])
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x45 and not s0
    healthy(rig)


def test_unknown_message_is_rejected(rig):
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\xc0\x33")
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.select(0, 0),
        lambda l: A.move(Phase.MSG_OUT, 2, MSGOUT),
        lambda l: A.move(Phase.MSG_IN, 1, MSGIN),
        lambda l: A.jump(l["ok"], when=Phase.COMMAND),
        lambda l: A.interrupt(0xBAD),
        "ok", lambda l: A.interrupt(0x46),
    ])
    assert qt.memread(MSGIN, 1) == b"\x07" and rig.rl(R.DSPS) == 0x46
    rig.wb(R.SCNTL1, R.SCNTL1_RST)                                   # leave the bus
    rig.wb(R.SCNTL1, 0)
    rig.rb(R.SIST0)
    rig.command(0, [0] * 6)
    healthy(rig)


def test_short_and_garbage_cdbs(rig):
    st, dsps, _, _ = rig.command(0, cdb10(0x28, 0, 1)[:3], 512)         # 3 bytes of a 10-byte CDB
    assert (st, dsps) == (2, DONE)
    assert parse_fixed_sense(rig.command(0, [3, 0, 0, 0, 18, 0], 18)[2]) == INVALID_FIELD
    st, _, _, _ = rig.command(0, [0x7F] + [0] * 15)                     # reserved group
    assert st == 2
    healthy(rig)


def test_wait_disconnect_while_target_busy(rig):
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\x80")
    qt.memwrite(CDB, cdb10(0x28, 0, 1))
    (ist, dstat, s0, s1), _ = run_script(rig, [
        lambda l: A.select(0, 0),
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 10, CDB),
        lambda l: A.wait_disconnect(),                                  # target still has data
        lambda l: A.interrupt(1),
    ])
    assert s0 & R.SIST0_UDC
    healthy(rig)


def test_disconnected_read_completes_after_unrelated_commands(rig):
    """While target 0's READ is disconnected, target 1 serves a command; the
    READ then reselects when the script waits again."""
    rig.drivers[0].buf[0:512] = b"\x5c" * 512
    _start_read_and_park(rig, 0)
    healthy_target1 = rig.command(1, [0x12, 0, 0, 0, 36, 0], 36)
    assert healthy_target1[:2] == (0, DONE)
    code, _ = program([
        lambda l: A.wait_reselect(0),
        lambda l: A.move_table(Phase.MSG_IN, 40),
        lambda l: A.clear_bits(ack=True),
        lambda l: A.move_table(Phase.DATA_IN, 24),
        lambda l: A.move_table(Phase.STATUS, 32),
        lambda l: A.move_table(Phase.MSG_IN, 40),
        lambda l: A.clear_bits(ack=True),
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(0x48),
    ])
    rig.qt.memwrite(TABLE, struct.pack("<12I", 0, 0, 1, MSGOUT, 10, CDB, 512, DATA, 1, STATUS, 1, MSGIN))
    rig.qt.memwrite(SCRIPT, code)
    rig.qt.memwrite(DATA, bytes(512))
    rig.start(SCRIPT)
    _, dstat, s0, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x48, (dstat, s0)
    assert rig.qt.memread(DATA, 512) == b"\x5c" * 512 and rig.qt.memread(STATUS, 1) == b"\0"


def test_every_register_reads_without_a_host_error(rig):
    """Every byte of the register file can be read (sym53c8xx reads SBDL while
    negotiating; its handler once named an undefined ``Phase`` and the run ended in a
    host traceback)."""
    for off in range(0x60):
        if off in (R.ISTAT0, R.DSTAT, R.SIST0, R.SIST1):
            continue                       # read-to-clear: keep the rig's state
        rig.rb(off)
    assert rig.rb(R.SBDL) == 0             # no MESSAGE IN byte on an idle bus
    healthy(rig)
