"""The SCRIPTS processor (LSI53C895A Technical Manual, chapter 6).

Every instruction is two 32-bit words (memory move: three) fetched from DSP,
which points into guest RAM or the on-chip SCRIPTS RAM.  The top two bits
of the first word pick the type: block move, I/O or read/write register,
transfer control, memory move or load/store.  The formats are declared in
:mod:`.scripts_layout`; the shifts and masks used here are derived from
those declarations at import (no bit position is written in this module).

Guards against hostile scripts, each ending in a guest-visible interrupt:
an instruction budget per run (an all-zero "empty opcode" loop or any
other endless loop ends in SIST0 UDC, as QEMU does since CVE-2019-12068);
DMA that misses RAM is DSTAT BF (bus fault); an illegal instruction is
DSTAT IID; and DMA into the chip's own registers is carried out as register
accesses with no re-entry into the processor (the CVE-2023-0330 class).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ... import trace
from ...machine.memory import DMAError
from ...machine.pci import CMD_BUS_MASTER, COMMAND
from . import regs as R
from . import scripts_layout as S
from .bus import Stall
from .regs import Phase

if TYPE_CHECKING:
    from .chip import LSI53C895A

MAX_MEMORY_MOVE = 1 << 24

# --- fields, derived from the declarations (scripts_layout) ---------------------------------
_BM, _IO, _IOT, _RWF, _TC = S.F.block_move, S.F.io, S.F.io_table, S.F.rw, S.F.tc
_TYPE_SHIFT = _BM["type"][0]
_TYPE3_SHIFT = S.F.memory_move["type"][0]
_DCMD_SHIFT = S.bits(R.L.DbcDcmd)["dcmd"][0]
_BM_INDIRECT, _BM_TABLE = S.flag(_BM, "indirect"), S.flag(_BM, "table_indirect")
_PHASE_SHIFT, _PHASE_MASK = _BM["phase"]
_COUNT_MASK = _BM["count"][1]
_ENTRY_COUNT_MASK = S.F.entry_count["byte_count"][1]
_ENTRY = S.BLOCK_MOVE_ENTRY
_OFFSET_BITS = _IOT["table_offset"][1].bit_length()        # signed DSA / relative offsets
_OFFSET_MASK, _OFFSET_SIGN = (1 << _OFFSET_BITS) - 1, 1 << (_OFFSET_BITS - 1)
_OP_SHIFT, _OP_MASK = _IO["opcode"]
_IO_REL, _IO_TABLE, _IO_SELATN = (S.flag(_IO, n) for n in ("relative", "table_indirect",
                                                           "select_atn"))
_IO_CARRY, _IO_ACK, _IO_ATN = (S.flag(_IO, n) for n in ("carry", "ack", "atn"))
_ID_SHIFT, _ID_MASK = S.F.select_entry["target_id"]
_SXFER_SHIFT, _SXFER_MASK = S.F.select_entry["sxfer"]
_SCNTL3_SHIFT, _SCNTL3_MASK = S.F.select_entry["scntl3"]
assert (_ID_SHIFT, _ID_MASK) == _IO["target_id"]       # the entry and the word agree (§6.3)
_IO_OP = S.IoOpcode.encmapping
_SELECT, _WAIT_DISC, _WAIT_RESEL, _SET = (_IO_OP[n] for n in ("SELECT", "WAIT_DISCONNECT",
                                                              "WAIT_RESELECT", "SET"))
_RW_OP = S.RwOpcode.encmapping
_RW_FIRST = min(_RW_OP.values())
_SFBR_TO_REG, _REG_TO_SFBR = _RW_OP["SFBR_TO_REG"], _RW_OP["REG_TO_SFBR"]
_OPER_SHIFT, _OPER_MASK = _RWF["operator"]
_RW_USE_SFBR = S.flag(_RWF, "use_sfbr")
_REG_SHIFT, _REG_MASK = _RWF["reg_low"]
_REG_A7 = S.flag(_RWF, "reg_a7")
_IMM_SHIFT, _IMM_MASK = _RWF["immediate"]
_OPER = S.Operator.encmapping
_MOV, _SHL, _OR, _XOR, _AND, _SHR, _ADD = (_OPER[n] for n in ("MOV", "SHL", "OR", "XOR", "AND",
                                                             "SHR", "ADD"))
_TC_OP = S.TcOpcode.encmapping
_JUMP, _CALL, _RETURN, _INT = (_TC_OP[n] for n in ("JUMP", "CALL", "RETURN", "INT"))
_TC_CONDITIONS = S.flag(_TC, "carry_test") | S.flag(_TC, "compare_data") \
    | S.flag(_TC, "compare_phase")
_TC_IF_TRUE, _TC_CARRY = S.flag(_TC, "if_true"), S.flag(_TC, "carry_test")
_TC_CMP_PHASE, _TC_CMP_DATA = S.flag(_TC, "compare_phase"), S.flag(_TC, "compare_data")
_TC_REL, _TC_FLY = S.flag(_TC, "relative"), S.flag(_TC, "int_fly")
_TC_MASK_SHIFT, _TC_BYTE = _TC["mask"]
_TC_DATA_SHIFT = _TC["data"][0]
_LS = S.F.load_store
_LS_COUNT_MASK = _LS["count"][1]
_LS_REG_SHIFT, _LS_REG_MASK = _LS["register"]
_LS_DSA_REL, _LS_LOAD = S.flag(_LS, "dsa_relative"), S.flag(_LS, "load")
_MM_COUNT_MASK = S.F.memory_move["count"][1]
_WORDS = struct.Struct("<II")          # the two words of an instruction, as fetched
_U32 = struct.Struct("<I")
_R_DSP, _R_DSPS, _R_DCMD, _R_DCNTL, _SSM = R.DSP, R.DSPS, R.DCMD, R.DCNTL, R.DCNTL_SSM
_R_ADDER, _R_TEMP, _R_SFBR, _R_SSTAT1, _R_DSA = R.ADDER, R.TEMP, R.SFBR, R.SSTAT1, R.DSA
_PHASE_BITS = R.PHASE_MASK
assert CMD_BUS_MASTER < 0x100            # bus master is in PCI COMMAND's low byte


def _sext24(v: int) -> int:
    """A signed table / relative offset (bits 23:0 of the word, §6.2.1, §6.5)."""
    v &= _OFFSET_MASK
    return v - (_OFFSET_MASK + 1) if v & _OFFSET_SIGN else v


class _Halt(Exception):
    """Internal: the current instruction ended SCRIPTS (interrupt already raised)."""


def execute(chip: "LSI53C895A", budget: int) -> None:
    """Run from DSP while ``chip.running``; at most ``budget`` instructions.

    The loop is the chip's hot path (a 4 KiB read through a disconnecting
    script is about 40 instructions): it reads DSP straight from the register
    file, fetches from guest RAM without a call, and advances DSP before the
    handler runs, because handlers read it (relative addressing, CALL) and
    may change it.
    """
    n = 0
    r = chip.r
    m = chip.machine
    ram = m.memory.buf if m is not None else None
    ram_end = m.memory.size - 8 if m is not None else -1
    cfg = chip.config                          # PCI COMMAND, byte 0: bus master (read per fetch)
    u32 = _U32
    pack_dsp = _U32.pack_into
    words = _WORDS.unpack_from
    try:
        while chip.running and not chip.waiting_reselect and not chip.stalled:
            if n >= budget:
                if trace.enabled:
                    trace.emit("lsi.runaway", dsp=chip.dsp, budget=budget)
                if chip.bus.current is not None:
                    chip.bus.current.req.cancel()
                chip._bus_free()
                chip.scsi_interrupt(sist0=R.SIST0_UDC)
                chip.stop_scripts()
                break
            n += 1
            dsp = u32.unpack_from(r, _R_DSP)[0]
            try:
                if 0 <= dsp <= ram_end and cfg[COMMAND] & CMD_BUS_MASTER:
                    insn, arg = words(ram, dsp)        # the common case: SCRIPTS in RAM
                else:
                    try:
                        insn, arg = chip.fetch(dsp)
                    except DMAError:
                        insn, arg = chip.read32(dsp), None     # the second word may be what faults
                    if arg is None and insn != 0:
                        arg = chip.read32(dsp + 4)
                if insn == 0:
                    # An "empty opcode": skip one word (QEMU's behaviour); counts against
                    # the budget.
                    pack_dsp(r, _R_DSP, (dsp + 4) & 0xFFFFFFFF)
                    continue
                r[_R_DCMD] = insn >> _DCMD_SHIFT
                pack_dsp(r, _R_DSPS, arg)
                pack_dsp(r, _R_DSP, (dsp + 8) & 0xFFFFFFFF)
                if trace.enabled:
                    from ... import trace_decode as d
                    trace.emit("lsi.insn", dsp=dsp, insn=d.lsi_insn(_WORDS.pack(insn, arg)))
                kind = insn >> _TYPE_SHIFT
                if chip.sel_timeout_pending and _needs_bus(insn, kind):
                    chip.selection_timeout()             # halts here, DSP past this instruction
                    break
                if kind == 2:
                    _transfer_control(chip, insn, arg)
                elif kind == 0:
                    _block_move(chip, insn, arg)
                elif kind == 1:
                    if (insn >> _OP_SHIFT) & _OP_MASK < _RW_FIRST:
                        _io(chip, insn, arg)
                    else:
                        _rw_register(chip, insn)
                elif insn >> _TYPE3_SHIFT == S.MEMORY_MOVE:
                    _memory_move(chip, insn, arg)
                else:
                    _load_store(chip, insn, arg)
            except DMAError as exc:
                if trace.enabled:
                    trace.emit("lsi.bus_fault", dsp=dsp, error=str(exc))
                chip.dma_interrupt(R.DSTAT_BF)
                break
            except _Halt:
                break
            except Stall as st:
                if st.rewind:
                    chip.dsp = dsp
                chip.stalled = True
                if trace.enabled:
                    trace.emit("lsi.stall", dsp=chip.dsp, rewind=st.rewind)
                return
            if r[_R_DCNTL] & _SSM and chip.running and not chip.waiting_reselect:
                chip.dma_interrupt(R.DSTAT_SSI)          # single step: halt after each instruction
                break
        if chip.sel_timeout_pending and not chip.running:
            chip.selection_timeout()                     # halted before needing the bus: STO anyway
    finally:
        chip.insns_executed += n


def _needs_bus(insn: int, kind: int) -> bool:
    """Whether an instruction waits for the SCSI bus: a block move, a SCSI I/O
    instruction, or a transfer control that tests the phase (WHEN / IF phase)."""
    if kind == 0:
        return True
    if kind == 1:
        return (insn >> _OP_SHIFT) & _OP_MASK < _RW_FIRST
    return kind == 2 and bool(insn & _TC_CMP_PHASE)


def _illegal(chip: "LSI53C895A") -> None:
    chip.dma_interrupt(R.DSTAT_IID)
    raise _Halt


# --- block move ----------------------------------------------------------------------------
def _block_move(chip: "LSI53C895A", insn: int, arg: int) -> None:
    r = chip.r
    count = insn & _COUNT_MASK
    addr = arg
    if insn & _BM_INDIRECT:                   # indirect: word 2 points at the address
        addr = chip.read32(arg)
    elif insn & _BM_TABLE:                    # table indirect: {count, address} at DSA + offset
        count, addr = chip.read_struct((_U32.unpack_from(r, _R_DSA)[0] + _sext24(arg)) & 0xFFFFFFFF,
                                       _ENTRY)
        count &= _ENTRY_COUNT_MASK
    phase = (insn >> _PHASE_SHIFT) & _PHASE_MASK
    chip.dbc = count
    chip.set32(R.DNAD, addr)
    if count == 0:
        _illegal(chip)                         # a zero byte count is an illegal instruction (§6)
    b = chip.bus
    if not b.connected:
        chip.scsi_interrupt(sist0=R.SIST0_UDC)  # nobody on the bus to transfer with
        raise _Halt
    if phase != b.phase:
        chip.scsi_interrupt(sist0=R.SIST0_MA)   # phase mismatch: target is in another phase
        raise _Halt
    if phase in (Phase.DATA_IN, Phase.DATA_OUT):
        _data(chip, addr, count, phase == Phase.DATA_IN)
    elif phase == Phase.COMMAND:
        n = min(count, 16)
        cdb = chip.mem_read(addr, n)
        r[R.SFBR] = cdb[0]
        chip.dbc = count - n
        chip.set32(R.DNAD, addr + n)
        chip.phase_command(cdb)
    elif phase == Phase.STATUS:
        status = chip.phase_status()
        chip.mem_write(addr, bytes([status]))
        r[R.SFBR] = status
        chip.dbc = count - 1
        chip.set32(R.DNAD, addr + 1)
    elif phase == Phase.MSG_OUT:
        data = chip.mem_read(addr, min(count, 64))
        chip.dbc = count - len(data)
        chip.set32(R.DNAD, addr + len(data))
        chip.phase_msg_out(data)
    elif phase == Phase.MSG_IN:
        q = b.msgin
        n = min(count, len(q))
        if n:
            chip.mem_write(addr, bytes(q[:n]))
            r[R.SFBR] = q[0]
            r[R.SIDL] = q[n - 1]
            del q[:n]
        chip.dbc = count - n
        chip.set32(R.DNAD, addr + n)
        if not q:
            chip.after_msg_in()
    else:
        chip.scsi_interrupt(sist0=R.SIST0_MA)   # reserved phases never occur
        raise _Halt
    left = chip.dbc
    r[R.DFIFO] = left & 0xFF
    if left and chip.running:
        # The target changed phase before the byte count ran out.
        chip.scsi_interrupt(sist0=R.SIST0_MA)
        raise _Halt


def _data(chip: "LSI53C895A", addr: int, count: int, data_in: bool) -> None:
    nx = chip.bus.current
    if nx is None:
        chip.scsi_interrupt(sist0=R.SIST0_MA)
        raise _Halt
    req = nx.req
    n = min(count, req.length - nx.pos)
    if n > 0:
        view = chip.view(addr, n, data_in)    # DMAError -> bus fault; the nexus stays intact
        ok = req.read(nx.pos, view) if data_in else req.write(nx.pos, view)
        if not ok and req.stopped:
            raise Stall(rewind=True)          # nothing of this move happened: redo it on resume
        if ok:
            nx.pos += n
            chip.dbc = count - n
            chip.set32(R.DNAD, addr + n)
            if trace.enabled:
                trace.emit("lsi.data", dir="in" if data_in else "out", addr=addr, length=n)
    if req.done or nx.pos >= req.length:
        chip._to_status()                     # finished (or failed): the target goes to STATUS


# --- I/O -------------------------------------------------------------------------------------
def _io(chip: "LSI53C895A", insn: int, arg: int) -> None:
    op = (insn >> _OP_SHIFT) & _OP_MASK
    ident = insn
    if insn & _IO_TABLE:                      # table indirect: ID/SXFER/SCNTL3 from DSA + offset
        ident = chip.read32((chip.get32(R.DSA) + _sext24(insn)) & 0xFFFFFFFF)
    target = (ident >> _ID_SHIFT) & _ID_MASK
    alt = arg
    if insn & _IO_REL:
        alt = (chip.dsp + _sext24(arg)) & 0xFFFFFFFF
    chip.set32(R.DNAD, alt)
    if op == _SELECT:                         # SELECT [ATN]
        if chip.bus.connected:
            chip.dsp = alt                    # reselected (or still connected): alternate path
            return
        if insn & _IO_TABLE:
            chip.r[R.SXFER] = (ident >> _SXFER_SHIFT) & _SXFER_MASK
            chip.r[R.SCNTL3] = (ident >> _SCNTL3_SHIFT) & _SCNTL3_MASK
        chip.select(target, bool(insn & _IO_SELATN))   # a timeout halts later (_needs_bus)
    elif op == _WAIT_DISC:                    # WAIT DISCONNECT
        chip.wait_disconnect()
        if not chip.running:
            raise _Halt
    elif op == _WAIT_RESEL:                   # WAIT RESELECT
        chip.wait_reselect(alt)
    elif op == _SET:                          # SET
        if insn & _IO_ATN:
            chip.set_atn()
        if insn & _IO_ACK:
            chip.r[R.SBCL] |= R.SBCL_ACK
        if insn & _IO_CARRY:
            chip.carry = 1
    else:                                     # CLEAR
        if insn & _IO_ATN:
            chip.r[R.SOCL] &= ~R.SOCL_ATN
            chip.r[R.SBCL] &= ~R.SBCL_ATN
        if insn & _IO_ACK:
            chip.r[R.SBCL] &= ~R.SBCL_ACK
        if insn & _IO_CARRY:
            chip.carry = 0


def _rw_register(chip: "LSI53C895A", insn: int) -> None:
    op = (insn >> _OP_SHIFT) & _OP_MASK
    operator = (insn >> _OPER_SHIFT) & _OPER_MASK
    reg = ((insn >> _REG_SHIFT) & _REG_MASK) | (insn & _REG_A7)   # A7 sits at bit 7 (§6.4)
    imm = (insn >> _IMM_SHIFT) & _IMM_MASK
    r = chip.r
    if op == _SFBR_TO_REG:                    # MOVE SFBR <op> data TO reg
        a, b = r[R.SFBR], imm
    elif op == _REG_TO_SFBR:                  # MOVE reg <op> data TO SFBR
        a, b = (chip.reg_read(reg) if operator != _MOV else 0), imm
    else:                                     # MOVE reg <op> data|SFBR TO reg
        a = chip.reg_read(reg) if operator != _MOV else 0
        b = r[R.SFBR] if insn & _RW_USE_SFBR else imm
    c = chip.carry
    if operator == _MOV:
        v = b
    elif operator == _SHL:                    # SHL through carry
        v, chip.carry = ((a << 1) | c) & 0xFF, a >> 7
    elif operator == _OR:
        v = a | b
    elif operator == _XOR:
        v = a ^ b
    elif operator == _AND:
        v = a & b
    elif operator == _SHR:                    # SHR through carry
        v, chip.carry = (a >> 1) | (c << 7), a & 1
    elif operator == _ADD:                    # ADD
        s = a + b
        v, chip.carry = s & 0xFF, s >> 8
    else:                                     # ADC
        s = a + b + c
        v, chip.carry = s & 0xFF, s >> 8
    if op == _REG_TO_SFBR:
        r[R.SFBR] = v
    else:
        chip.reg_write(reg, v) if reg != R.SFBR else r.__setitem__(R.SFBR, v)


# --- transfer control -------------------------------------------------------------------------
def _transfer_control(chip: "LSI53C895A", insn: int, arg: int) -> None:
    """JUMP, CALL, RETURN, INT (§6.5).  The instruction acts when every condition it
    tests (carry, phase, data) equals its true/false bit; with no condition it acts
    when that bit is set ("jump if false" of nothing: never)."""
    op = (insn >> _OP_SHIFT) & _OP_MASK
    if op > _INT:
        _illegal(chip)
    r = chip.r
    jmp = bool(insn & _TC_IF_TRUE)
    if insn & _TC_CONDITIONS:
        if insn & _TC_CARRY and bool(chip.carry) != jmp:
            return
        if insn & _TC_CMP_PHASE:
            want = (insn >> _PHASE_SHIFT) & _PHASE_MASK
            b = chip.bus
            now = b.phase if b.connected else r[_R_SSTAT1] & _PHASE_BITS
            if (now == want) != jmp:
                return
        if insn & _TC_CMP_DATA:
            mask = (~insn >> _TC_MASK_SHIFT) & _TC_BYTE
            if ((r[_R_SFBR] & mask) == ((insn >> _TC_DATA_SHIFT) & mask)) != jmp:
                return
    elif not jmp:
        return
    addr = arg
    if insn & _TC_REL:
        addr = (_U32.unpack_from(r, _R_DSP)[0] + _sext24(arg)) & 0xFFFFFFFF
    if op == _JUMP:                           # JUMP
        _U32.pack_into(r, _R_ADDER, addr)
        _U32.pack_into(r, _R_DSP, addr)
    elif op == _CALL:                         # CALL
        _U32.pack_into(r, _R_TEMP, _U32.unpack_from(r, _R_DSP)[0])
        _U32.pack_into(r, _R_DSP, addr)
    elif op == _RETURN:                       # RETURN
        _U32.pack_into(r, _R_DSP, _U32.unpack_from(r, _R_TEMP)[0])
    else:                                     # INT / INTFLY
        if insn & _TC_FLY:
            r[R.ISTAT0] |= R.ISTAT0_INTF
            chip._update_irq()
        else:
            chip.dma_interrupt(R.DSTAT_SIR)
            raise _Halt


# --- memory move, load/store --------------------------------------------------------------------
def _memory_move(chip: "LSI53C895A", insn: int, src: int) -> None:
    dsp = chip.dsp
    dst = chip.read32(dsp)
    chip.dsp = dsp + 4
    count = insn & _MM_COUNT_MASK
    chip.set32(R.TEMP + 0, chip.get32(R.TEMP))   # TEMP is preserved (drivers rely on it)
    pos = 0
    while pos < count and chip.running:
        n = min(4096, count - pos)
        data = chip.mem_read(src + pos, n)
        chip.mem_write(dst + pos, data)
        pos += n
    if trace.enabled:
        trace.emit("lsi.memory_move", src=src, dst=dst, count=count)


def _load_store(chip: "LSI53C895A", insn: int, arg: int) -> None:
    n = insn & _LS_COUNT_MASK
    if n == 0 or n > 4:
        _illegal(chip)
    reg = (insn >> _LS_REG_SHIFT) & _LS_REG_MASK
    addr = arg
    if insn & _LS_DSA_REL:
        addr = (chip.get32(R.DSA) + _sext24(arg)) & 0xFFFFFFFF
    if insn & _LS_LOAD:                       # LOAD
        data = chip.mem_read(addr, n)
        for i in range(n):
            chip.reg_write((reg + i) & 0xFF, data[i]) if (reg + i) & 0xFF != R.SFBR \
                else chip.r.__setitem__(R.SFBR, data[i])
    else:                                     # STORE
        chip.mem_write(addr, bytes(chip.reg_read((reg + i) & 0xFF) for i in range(n)))
