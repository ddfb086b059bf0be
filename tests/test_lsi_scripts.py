"""LSI53C895A through the qtest API: registers, SCRIPTS instructions, SCSI phases,
disconnect/reselect, interrupts and the hostile-script guards."""

from __future__ import annotations

import struct

import pytest

from blockbed.devices.lsi53c895a import asm as A
from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.scsi import parse_fixed_sense
from blockbed.devices.scsi.constants import (INVALID_FIELD, LBA_OUT_OF_RANGE, RESET_OCCURRED,
                                             LUN_NOT_SUPPORTED)

from lsi_helpers import (DATA, DONE, ERR_SIGP, SCRIPT, TABLE, Phase, Rig, program)


def cdb10(op, lba, count, b1=0):
    return struct.pack(">BBIBHB", op, b1, lba, 0, count, 0)


@pytest.fixture
def rig():
    return Rig(targets=(0, 2), unit_attention=False)


def test_pci_identity_and_bars(rig):
    qt, chip = rig.qt, rig.chip
    assert qt.pci_config_read(chip, 0) == 0x00121000
    assert qt.pci_config_read(chip, 8) >> 8 == 0x010000
    assert rig.io & 1 == 0 and rig.io and rig.mmio and rig.ram
    # the I/O BAR and the memory BAR are the same register file
    qt.outb(rig.io + R.SCRATCHA, 0x5A)
    assert rig.rb(R.SCRATCHA) == 0x5A
    rig.wl(R.SCRATCHB, 0x11223344)
    assert qt.inl(rig.io + R.SCRATCHB) == 0x11223344
    # the SCRIPTS RAM BAR
    qt.writel(rig.ram + 0x100, 0xCAFEBABE)
    assert chip.script_ram[0x100:0x104] == struct.pack("<I", 0xCAFEBABE)


def test_reset_values_and_read_only_registers(rig):
    assert rig.rb(R.ISTAT0) == 0 and rig.rb(R.SSTAT2) == 0x02      # bus free
    rig.wb(R.DSTAT, 0xFF)
    assert rig.rb(R.DSTAT) == R.DSTAT_DFE                          # DFE only; write ignored
    rig.wb(R.SDID, 0xF3)
    assert rig.rb(R.SDID) == 0x03


def test_inquiry_through_scripts(rig):
    st, dsps, data, (ist, dstat, s0, s1) = rig.command(0, [0x12, 0, 0, 0, 36, 0], 36)
    assert (st, dsps) == (0, DONE)
    assert dstat & R.DSTAT_SIR and not s0 and not s1
    assert data[8:32] == b"QEMU    QEMU HARDDISK   "
    assert rig.rb(R.ISTAT0) & R.ISTAT0_CON == 0                   # bus free again


def test_read_disconnects_and_reselects(rig):
    rig.drivers[2].buf[512 * 7:512 * 9] = bytes(range(256)) * 4
    qt = rig.qt
    # Start and look before time advances: the target disconnected, the script waits.
    from lsi_helpers import CDB, MSGOUT, STATUS, MSGIN
    qt.memwrite(MSGOUT, b"\xc0")
    qt.memwrite(CDB, cdb10(0x28, 7, 2))
    qt.memwrite(TABLE, struct.pack("<12I", 2 << 16, 0, 1, MSGOUT, 10, CDB, 1024, DATA, 1, STATUS, 1, MSGIN))
    rig.wl(R.DSA, TABLE)
    rig.start(rig.labels["start"])
    assert rig.chip.waiting_reselect and rig.chip.disconnected
    assert rig.rb(R.ISTAT0) & R.ISTAT0_CON == 0
    ist, dstat, s0, s1 = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == DONE
    assert rig.rb(R.SSID) == 0x82                                  # reselected by target 2
    assert qt.memread(DATA, 1024) == bytes(range(256)) * 4
    assert qt.memread(STATUS, 1) == b"\x00"


def test_no_disconnect_without_privilege(rig):
    rig.drivers[0].buf[0:512] = b"\xab" * 512
    st, dsps, data, _ = rig.command(0, cdb10(0x28, 0, 1), 512, identify=0x80)
    assert st == 0 and data == b"\xab" * 512 and not rig.chip.disconnected


def test_write_and_flush(rig):
    payload = bytes(range(256)) * 8
    st, dsps, _, _ = rig.command(0, cdb10(0x2A, 100, 4, b1=0x08), out=payload)
    assert (st, dsps) == (0, DONE)
    assert rig.drivers[0].buf[100 * 512:104 * 512] == payload
    st, _, _, _ = rig.command(0, [0x35] + [0] * 9)
    assert st == 0 and rig.drivers[0].flushes >= 1


def test_check_condition_and_request_sense(rig):
    st, dsps, _, _ = rig.command(0, cdb10(0x28, 5000, 1), 512)
    assert (st, dsps) == (2, DONE)                                 # no data phase happened
    st, _, data, _ = rig.command(0, [0x03, 0, 0, 0, 18, 0], 18)
    assert st == 0 and parse_fixed_sense(data) == LBA_OUT_OF_RANGE
    st, _, _, _ = rig.command(0, [0x12, 0, 0x80, 0, 36, 0], 36)     # invalid field
    assert st == 2
    assert parse_fixed_sense(rig.command(0, [0x03, 0, 0, 0, 18, 0], 18)[2]) == INVALID_FIELD


def test_absent_lun(rig):
    st, _, data, _ = rig.command(0, [0x12, 0, 0, 0, 36, 0], 36, lun=3)
    assert st == 0 and data[0] == 0x7F
    st, _, _, _ = rig.command(0, [0, 0, 0, 0, 0, 0], lun=3)
    assert st == 2


def test_selection_timeout(rig):
    ist, dstat, s0, s1 = rig.command(5, [0, 0, 0, 0, 0, 0])[3]
    assert s1 & R.SIST1_STO and not dstat
    assert rig.rb(R.ISTAT1) & R.ISTAT1_SRUN == 0
    # the initiator's own ID is not a target either
    assert rig.command(7, [0, 0, 0, 0, 0, 0])[3][3] & R.SIST1_STO
    # the controller still works
    assert rig.command(0, [0, 0, 0, 0, 0, 0])[:2] == (0, DONE)


def test_short_transfer_is_phase_mismatch(rig):
    # 36 bytes of INQUIRY into a 100-byte block move: MA with DBC = residual
    st, dsps, _, (ist, dstat, s0, s1) = rig.command(0, [0x12, 0, 0, 0, 36, 0], 100)
    assert s0 & R.SIST0_MA and rig.chip.dbc == 64
    assert rig.chip.bus.phase == Phase.STATUS


def _run(rig, items, setup=None):
    code, labels = program(items)
    rig.qt.memwrite(SCRIPT, code)
    if setup:
        setup()
    rig.start(SCRIPT)
    return rig.wait_interrupt(), labels


def test_jump_call_return_and_data_compare(rig):
    (ist, dstat, _, _), _ = _run(rig, [
        lambda l: A.reg_imm(R.SCRATCHA, "mov", 0x42),
        lambda l: A.reg_to_sfbr(R.SCRATCHA),                     # SFBR = 0x42
        lambda l: A.call(l["sub"]),
        lambda l: A.jump(l["bad"], data=(0x41, 0)),              # not taken
        lambda l: A.jump(l["good"], data=(0x40, 0x03)),          # taken: low bits ignored
        "bad", lambda l: A.interrupt(0xBAD),
        "good", lambda l: A.jump(l["rel"], rel=True) if False else A.jump(8, rel=True),
        lambda l: A.interrupt(0xBAD),
        lambda l: A.interrupt(0x600D),
        "sub", lambda l: A.reg_imm(R.SCRATCHA + 1, "mov", 0x77),
        lambda l: A.ret(),
    ])
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x600D
    assert rig.rb(R.SCRATCHA + 1) == 0x77


def test_register_arithmetic_and_carry(rig):
    (_, dstat, _, _), _ = _run(rig, [
        lambda l: A.reg_imm(R.SCRATCHA, "mov", 0xF0),
        lambda l: A.reg_imm(R.SCRATCHA, "add", 0x20),            # 0x10, carry 1
        lambda l: A.jump(l["c"], carry=True),
        lambda l: A.interrupt(0xBAD),
        "c",
        lambda l: A.reg_imm(R.SCRATCHA + 1, "adc", 0x01),        # 0 + 1 + carry = 2
        lambda l: A.reg_imm(R.SCRATCHA + 2, "mov", 0x81),
        lambda l: A.clear_bits(carry=True),
        lambda l: A.reg_imm(R.SCRATCHA + 2, "shl", 0),           # 0x02, carry 1
        lambda l: A.reg_imm(R.SCRATCHA + 3, "mov", 0x0F),
        lambda l: A.reg_imm(R.SCRATCHA + 3, "xor", 0xFF),        # 0xF0
        lambda l: A.reg_to_sfbr(R.SCRATCHA + 3, "and", 0x3C),     # SFBR = 0x30
        lambda l: A.sfbr_to_reg(R.SCRATCHB, "or", 0x01),         # 0x31
        lambda l: A.interrupt(1),
    ])
    assert rig.rl(R.SCRATCHA) == 0xF0020210
    assert rig.rb(R.SCRATCHB) == 0x31 and rig.chip.carry == 1


def test_memory_move_load_store(rig):
    qt = rig.qt
    (_, dstat, _, _), _ = _run(rig, [
        lambda l: A.memory_move(16, 0x40000, 0x41000),
        lambda l: A.load(R.SCRATCHA, 4, 0x40000),
        lambda l: A.load(R.SCRATCHB, 4, 0x8, dsa_relative=True),
        lambda l: A.store(R.SCRATCHA, 4, 0x42000),
        lambda l: A.interrupt(1),
    ], setup=lambda: (qt.memwrite(0x40000, bytes(range(16))), rig.wl(R.DSA, 0x40000)))
    assert qt.memread(0x41000, 16) == bytes(range(16))
    assert rig.rl(R.SCRATCHA) == 0x03020100 and rig.rl(R.SCRATCHB) == 0x0B0A0908
    assert qt.memread(0x42000, 4) == bytes([0, 1, 2, 3])


def test_scripts_run_from_script_ram(rig):
    code = A.assemble(A.reg_imm(R.SCRATCHA, "mov", 9), A.interrupt(0x77))
    rig.qt.memwrite(rig.ram, b"") if False else None
    for i in range(0, len(code), 4):
        rig.qt.writel(rig.ram + i, struct.unpack_from("<I", code, i)[0])
    rig.start(rig.ram)
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x77 and rig.rb(R.SCRATCHA) == 9


def test_interrupt_on_the_fly_and_masks(rig):
    qt = rig.qt
    (ist, dstat, _, _), _ = _run(rig, [lambda l: A.interrupt(0, fly=True),
                                      lambda l: A.reg_imm(R.SCRATCHA, "mov", 5),
                                      lambda l: A.interrupt(3)])
    # INTFLY does not halt: the script went on to the INT
    assert ist & R.ISTAT0_INTF and rig.rb(R.SCRATCHA) == 5
    rig.wb(R.ISTAT0, R.ISTAT0_INTF)
    assert not rig.rb(R.ISTAT0) & R.ISTAT0_INTF
    # INTx follows DIEN: masked SIR sets DIP but not the line
    rig.wb(R.DIEN, 0)
    _run(rig, [lambda l: A.interrupt(4)]) if False else None
    rig.qt.memwrite(SCRIPT, A.assemble(A.interrupt(4)))
    rig.start(SCRIPT)
    assert rig.rb(R.ISTAT0) & R.ISTAT0_DIP
    assert not qt.pci_config_read(rig.chip, 4, 4) >> 16 & 0x08
    rig.wb(R.DIEN, R.DSTAT_SIR)
    assert qt.pci_config_read(rig.chip, 4, 4) >> 16 & 0x08       # line asserted
    rig.rb(R.DSTAT)
    assert not qt.pci_config_read(rig.chip, 4, 4) >> 16 & 0x08


def test_single_step(rig):
    rig.qt.memwrite(SCRIPT, A.assemble(A.reg_imm(R.SCRATCHA, "mov", 1),
                                       A.reg_imm(R.SCRATCHA, "add", 1), A.interrupt(9)))
    rig.wb(R.DCNTL, R.DCNTL_SSM)
    rig.start(SCRIPT)
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SSI and rig.rb(R.SCRATCHA) == 1 and rig.rl(R.DSP) == SCRIPT + 8
    rig.wb(R.DCNTL, R.DCNTL_SSM | R.DCNTL_STD)
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SSI and rig.rb(R.SCRATCHA) == 2
    rig.wb(R.DCNTL, R.DCNTL_STD)
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 9


def test_manual_start_mode(rig):
    rig.qt.memwrite(SCRIPT, A.assemble(A.interrupt(5)))
    rig.wb(R.DMODE, R.DMODE_MAN)
    rig.start(SCRIPT)
    assert not rig.rb(R.ISTAT0) & R.ISTAT0_DIP                    # not started
    rig.wb(R.DCNTL, R.DCNTL_STD)
    assert rig.wait_interrupt()[1] & R.DSTAT_SIR


def test_indirect_and_table_block_moves(rig):
    from lsi_helpers import CDB, MSGOUT, STATUS, MSGIN
    qt = rig.qt
    qt.memwrite(MSGOUT, b"\x80")
    qt.memwrite(CDB, bytes([0x12, 0, 0, 0, 36, 0]))
    qt.memwrite(0x45000, struct.pack("<I", DATA))                 # pointer for the indirect move
    (ist, dstat, s0, s1), _ = _run(rig, [
        lambda l: A.select(0, 0, atn=True),
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 6, CDB),
        lambda l: A.move_indirect(Phase.DATA_IN, 36, 0x45000),
        lambda l: A.move(Phase.STATUS, 1, STATUS),
        lambda l: A.move(Phase.MSG_IN, 1, MSGIN),
        lambda l: A.clear_bits(ack=True),
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(1),
    ])
    assert dstat & R.DSTAT_SIR, (dstat, s0, s1)
    assert qt.memread(DATA + 8, 4) == b"QEMU" and qt.memread(MSGIN, 1) == b"\x00"


def test_phase_mismatch_when_script_expects_wrong_phase(rig):
    (ist, dstat, s0, s1), _ = _run(rig, [
        lambda l: A.select(0, 0, atn=True),
        lambda l: A.move(Phase.COMMAND, 6, 0x21100),               # target is in MSG OUT
        lambda l: A.interrupt(1),
    ])
    assert s0 & R.SIST0_MA and not dstat




def test_wait_reselect_sigp_wakes(rig):
    code, labels = program([lambda l: A.wait_reselect(l["alt"]), lambda l: A.interrupt(0xBAD),
                            "alt", lambda l: A.interrupt(0x5165)])
    rig.qt.memwrite(SCRIPT, code)
    rig.start(SCRIPT)
    rig.qt.clock_step(50)
    assert rig.chip.waiting_reselect and not rig.rb(R.ISTAT0) & 3
    rig.wb(R.ISTAT0, R.ISTAT0_SIGP)
    _, dstat, _, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x5165
    assert rig.rb(R.CTEST2) & R.CTEST2_SIGP and not rig.rb(R.CTEST2) & R.CTEST2_SIGP


def test_soft_reset(rig):
    rig.wl(R.SCRATCHA, 0x12345678)
    rig.wb(R.ISTAT0, R.ISTAT0_SRST)
    assert rig.rl(R.SCRATCHA) == 0 and rig.rb(R.ISTAT0) == 0
    # disks report the reset as a unit attention
    st, _, _, _ = rig.command(0, [0, 0, 0, 0, 0, 0])
    assert st == 2
    assert parse_fixed_sense(rig.command(0, [0x03, 0, 0, 0, 18, 0], 18)[2]) == RESET_OCCURRED


def test_scsi_bus_reset(rig):
    rig.wb(R.SIEN0, R.SIST0_RST)
    rig.wb(R.SCNTL1, R.SCNTL1_RST)
    assert rig.rb(R.SSTAT0) & R.SSTAT0_RST
    assert rig.rb(R.SIST0) & R.SIST0_RST
    rig.wb(R.SCNTL1, 0)
    assert rig.command(2, [0, 0, 0, 0, 0, 0])[0] == 2              # unit attention


def test_reselection_interrupt_mode(rig):
    """With SCID RRE and SIEN0 RSL, a target with data ready reselects while the
    SCRIPTS are halted and raises RSL (instead of waiting in WAIT RESELECT)."""
    from lsi_helpers import CDB, MSGOUT, STATUS, MSGIN
    qt = rig.qt
    rig.drivers[0].buf[0:512] = b"\x77" * 512
    rig.wb(R.SCID, R.SCID_RRE | 7)
    rig.wb(R.SIEN0, R.SIST0_RSL)
    qt.memwrite(MSGOUT, b"\xc0")
    qt.memwrite(CDB, cdb10(0x28, 0, 1))
    code, _ = program([
        lambda l: A.select(0, 0),
        lambda l: A.move(Phase.MSG_OUT, 1, MSGOUT),
        lambda l: A.move(Phase.COMMAND, 10, CDB),
        lambda l: A.move(Phase.MSG_IN, 2, MSGIN),                 # SAVE DATA POINTER, DISCONNECT
        lambda l: A.clear_bits(ack=True),
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(0x10),                              # go idle
    ])
    qt.memwrite(SCRIPT, code)
    rig.start(SCRIPT)
    ist, dstat, s0, _ = rig.wait_interrupt()
    assert dstat & R.DSTAT_SIR and rig.rl(R.DSPS) == 0x10
    assert qt.memread(MSGIN, 2) == b"\x02\x04"
    ist, dstat, s0, _ = rig.wait_interrupt()                      # the target comes back
    assert s0 & R.SIST0_RSL and rig.rb(R.SSID) == 0x80
    assert rig.rb(R.ISTAT0) & R.ISTAT0_CON
    code, _ = program([
        lambda l: A.move(Phase.MSG_IN, 1, MSGIN),                 # IDENTIFY
        lambda l: A.clear_bits(ack=True),
        lambda l: A.move(Phase.DATA_IN, 512, DATA),
        lambda l: A.move(Phase.STATUS, 1, STATUS),
        lambda l: A.move(Phase.MSG_IN, 1, MSGIN + 1),
        lambda l: A.clear_bits(ack=True),
        lambda l: A.wait_disconnect(),
        lambda l: A.interrupt(0x11),
    ])
    qt.memwrite(SCRIPT, code)
    rig.start(SCRIPT)
    _, dstat, _, _ = rig.wait_interrupt()
    assert rig.rl(R.DSPS) == 0x11 and qt.memread(MSGIN, 2) == b"\x80\x00"
    assert qt.memread(DATA, 512) == b"\x77" * 512


def test_attach_puts_drives_on_one_controller(tmp_path):
    from blockbed.devices.attach import attach_drives
    from blockbed.devices.lsi53c895a import LSI53C895A
    from blockbed.machine.board import Machine, MachineConfig
    imgs = []
    for i in range(3):
        p = tmp_path / f"d{i}.img"
        p.write_bytes(bytes(1 << 20))
        imgs.append(p)
    m = Machine(MachineConfig(memory_mib=16))
    attach_drives(m, [f"file={imgs[0]},format=raw,if=lsi",
                      f"file={imgs[1]},format=raw,if=lsi,unit=4,serial=S1",
                      f"file={imgs[2]},format=raw,if=lsi"])
    chips = [d for d in m.pci.find(0x1000, 0x0012)]
    assert len(chips) == 1 and isinstance(chips[0], LSI53C895A)
    assert sorted(chips[0].targets) == [0, 1, 4]
    assert chips[0].targets[4].ident.serial == "S1"
    with pytest.raises(ValueError, match="already in use"):
        attach_drives(m, [f"file={imgs[0]},format=raw,if=lsi,unit=4,force-share=on,read-only=on"])
