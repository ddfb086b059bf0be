"""The SCRIPTS processor (LSI53C895A Technical Manual, chapter 6).

Every instruction is two 32-bit words (memory move: three) fetched from DSP,
which points into guest RAM or the on-chip SCRIPTS RAM.  The top two bits
of the first word pick the type:

====  =====================================================================
00    block move: bits 29 indirect, 28 table indirect, 27 MOVE/CHMOV,
      26:24 phase, 23:0 byte count; word 2 the address (or, table
      indirect, a signed 24-bit offset from DSA of a {count, address} pair)
01    I/O (bits 29:27 = 0 select, 1 wait disconnect, 2 wait reselect,
      3 set, 4 clear; bit 26 relative alternate address, 25 table
      indirect ID, 24 select with ATN, 19:16 ID, 10 carry, 6 ACK, 3 ATN)
      or register read-modify-write (29:27 = 5 SFBR→reg, 6 reg→SFBR,
      7 reg→reg; 26:24 operator; 23 use SFBR; 22:16 + bit 7 register;
      15:8 immediate)
10    transfer control (29:27 = 0 jump, 1 call, 2 return, 3 interrupt;
      26:24 phase; 23 relative; 21 compare carry; 20 interrupt on the
      fly; 19 jump if true; 18 compare data; 17 compare phase;
      15:8 mask of bits to ignore; 7:0 data)
110   memory move (23:0 count; word 2 source, word 3 destination)
111   load/store (28 DSA relative; 24 load; 23:16 register; 2:0 count)
====  =====================================================================

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
from . import regs as R
from .bus import Stall
from .regs import Phase

if TYPE_CHECKING:
    from .chip import LSI53C895A

MAX_MEMORY_MOVE = 1 << 24


def _sext24(v: int) -> int:
    v &= 0xFFFFFF
    return v - (1 << 24) if v & 0x800000 else v


class _Halt(Exception):
    """Internal: the current instruction ended SCRIPTS (interrupt already raised)."""


def execute(chip: "LSI53C895A", budget: int) -> None:
    """Run from DSP while ``chip.running``; at most ``budget`` instructions."""
    n = 0
    r = chip.r
    while chip.running and not chip.waiting_reselect and not chip.stalled:
        if n >= budget:
            if trace.enabled:
                trace.emit("lsi.runaway", dsp=chip.dsp, budget=budget)
            if chip.bus.current is not None:
                chip.bus.current.req.cancel()
            chip._bus_free()
            chip.scsi_interrupt(sist0=R.SIST0_UDC)
            chip.stop_scripts()
            return
        n += 1
        chip.insns_executed += 1
        dsp = chip.dsp
        try:
            try:
                insn, arg = chip.fetch(dsp)
            except DMAError:
                insn, arg = chip.read32(dsp), None     # the second word may be what faults
            if insn == 0:
                # An "empty opcode": skip one word (QEMU's behaviour); counts against the budget.
                chip.dsp = dsp + 4
                continue
            if arg is None:
                arg = chip.read32(dsp + 4)
            r[R.DCMD] = insn >> 24
            struct.pack_into("<I", r, R.DSPS, arg)
            chip.dsp = dsp + 8
            kind = insn >> 30
            if kind == 0:
                _block_move(chip, insn, arg)
            elif kind == 1:
                if (insn >> 27) & 7 < 5:
                    _io(chip, insn, arg)
                else:
                    _rw_register(chip, insn)
            elif kind == 2:
                _transfer_control(chip, insn, arg)
            elif insn & (1 << 29) == 0:
                _memory_move(chip, insn, arg)
            else:
                _load_store(chip, insn, arg)
        except DMAError as exc:
            if trace.enabled:
                trace.emit("lsi.bus_fault", dsp=dsp, error=str(exc))
            chip.dma_interrupt(R.DSTAT_BF)
            return
        except _Halt:
            return
        except Stall as st:
            if st.rewind:
                chip.dsp = dsp
            chip.stalled = True
            if trace.enabled:
                trace.emit("lsi.stall", dsp=chip.dsp, rewind=st.rewind)
            return
        if chip.running and not chip.waiting_reselect and r[R.DCNTL] & R.DCNTL_SSM:
            chip.dma_interrupt(R.DSTAT_SSI)          # single step: halt after each instruction
            return


def _illegal(chip: "LSI53C895A") -> None:
    chip.dma_interrupt(R.DSTAT_IID)
    raise _Halt


# --- block move ----------------------------------------------------------------------------
def _block_move(chip: "LSI53C895A", insn: int, arg: int) -> None:
    r = chip.r
    count = insn & 0xFFFFFF
    addr = arg
    if insn & (1 << 29):                      # indirect: word 2 points at the address
        addr = chip.read32(arg)
    elif insn & (1 << 28):                    # table indirect: {count, address} at DSA + offset
        entry = chip.mem_read((chip.get32(R.DSA) + _sext24(arg)) & 0xFFFFFFFF, 8)
        count, addr = struct.unpack("<II", entry)
        count &= 0xFFFFFF
    phase = (insn >> 24) & 7
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
        view = chip.view(addr, n)             # DMAError -> bus fault; the nexus stays intact
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
    op = (insn >> 27) & 7
    ident = insn
    if insn & (1 << 25):                      # table indirect: ID/SXFER/SCNTL3 from DSA + offset
        ident = chip.read32((chip.get32(R.DSA) + _sext24(insn)) & 0xFFFFFFFF)
    target = (ident >> 16) & 0x0F
    alt = arg
    if insn & (1 << 26):
        alt = (chip.dsp + _sext24(arg)) & 0xFFFFFFFF
    chip.set32(R.DNAD, alt)
    if op == 0:                               # SELECT [ATN]
        if chip.bus.connected:
            chip.dsp = alt                    # reselected (or still connected): alternate path
            return
        if insn & (1 << 25):
            chip.r[R.SXFER] = (ident >> 8) & 0xFF
            chip.r[R.SCNTL3] = (ident >> 24) & 0xFF
        if not chip.select(target, bool(insn & (1 << 24))):
            raise _Halt
    elif op == 1:                             # WAIT DISCONNECT
        chip.wait_disconnect()
        if not chip.running:
            raise _Halt
    elif op == 2:                             # WAIT RESELECT
        chip.wait_reselect(alt)
    elif op == 3:                             # SET
        if insn & (1 << 3):
            chip.set_atn()
        if insn & (1 << 6):
            chip.r[R.SBCL] |= R.SBCL_ACK
        if insn & (1 << 10):
            chip.carry = 1
    else:                                     # CLEAR
        if insn & (1 << 3):
            chip.r[R.SOCL] &= ~R.SOCL_ATN
            chip.r[R.SBCL] &= ~R.SBCL_ATN
        if insn & (1 << 6):
            chip.r[R.SBCL] &= ~R.SBCL_ACK
        if insn & (1 << 10):
            chip.carry = 0


def _rw_register(chip: "LSI53C895A", insn: int) -> None:
    op = (insn >> 27) & 7
    operator = (insn >> 24) & 7
    reg = ((insn >> 16) & 0x7F) | (insn & 0x80)
    imm = (insn >> 8) & 0xFF
    r = chip.r
    if op == 5:                               # MOVE SFBR <op> data TO reg
        a, b = r[R.SFBR], imm
    elif op == 6:                             # MOVE reg <op> data TO SFBR
        a, b = (chip.reg_read(reg) if operator else 0), imm
    else:                                     # MOVE reg <op> data|SFBR TO reg
        a = chip.reg_read(reg) if operator else 0
        b = r[R.SFBR] if insn & (1 << 23) else imm
    c = chip.carry
    if operator == 0:
        v = b
    elif operator == 1:                       # SHL through carry
        v, chip.carry = ((a << 1) | c) & 0xFF, a >> 7
    elif operator == 2:
        v = a | b
    elif operator == 3:
        v = a ^ b
    elif operator == 4:
        v = a & b
    elif operator == 5:                       # SHR through carry
        v, chip.carry = (a >> 1) | (c << 7), a & 1
    elif operator == 6:                       # ADD
        s = a + b
        v, chip.carry = s & 0xFF, s >> 8
    else:                                     # ADC
        s = a + b + c
        v, chip.carry = s & 0xFF, s >> 8
    if op == 6:
        r[R.SFBR] = v
    else:
        chip.reg_write(reg, v) if reg != R.SFBR else r.__setitem__(R.SFBR, v)


# --- transfer control -------------------------------------------------------------------------
def _transfer_control(chip: "LSI53C895A", insn: int, arg: int) -> None:
    op = (insn >> 27) & 7
    if op > 3:
        _illegal(chip)
    if insn & 0x002E0000 == 0:                # no condition and "jump if false": never taken
        return
    jmp = bool(insn & (1 << 19))
    cond = jmp
    r = chip.r
    if cond == jmp and insn & (1 << 21):
        cond = bool(chip.carry)
    if cond == jmp and insn & (1 << 17):
        cond = chip.bus.phase == (insn >> 24) & 7 if chip.bus.connected else \
            (r[R.SSTAT1] & R.PHASE_MASK) == (insn >> 24) & 7
    if cond == jmp and insn & (1 << 18):
        mask = (~insn >> 8) & 0xFF
        cond = (r[R.SFBR] & mask) == (insn & mask)
    if cond != jmp:
        return
    addr = arg
    if insn & (1 << 23):
        addr = (chip.dsp + _sext24(arg)) & 0xFFFFFFFF
    if op == 0:                               # JUMP
        chip.set32(R.ADDER, addr)
        chip.dsp = addr
    elif op == 1:                             # CALL
        chip.set32(R.TEMP, chip.dsp)
        chip.dsp = addr
    elif op == 2:                             # RETURN
        chip.dsp = chip.get32(R.TEMP)
    else:                                     # INT / INTFLY
        if insn & (1 << 20):
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
    count = insn & 0xFFFFFF
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
    n = insn & 7
    if n == 0 or n > 4:
        _illegal(chip)
    reg = (insn >> 16) & 0xFF
    addr = arg
    if insn & (1 << 28):
        addr = (chip.get32(R.DSA) + _sext24(arg)) & 0xFFFFFFFF
    if insn & (1 << 24):                      # LOAD
        data = chip.mem_read(addr, n)
        for i in range(n):
            chip.reg_write((reg + i) & 0xFF, data[i]) if (reg + i) & 0xFF != R.SFBR \
                else chip.r.__setitem__(R.SFBR, data[i])
    else:                                     # STORE
        chip.mem_write(addr, bytes(chip.reg_read((reg + i) & 0xFF) for i in range(n)))
