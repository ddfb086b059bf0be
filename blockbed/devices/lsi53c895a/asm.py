"""A tiny SCRIPTS assembler: one function per instruction format (manual chapter 6).

Each function returns the instruction's 32-bit words; :func:`assemble`
packs a list of them into little-endian bytes.  Tests use it to build
scripts with no guest code; guests/drivers/lsi.c spells the same formats
as C macros.
"""

from __future__ import annotations

import struct

from .regs import Phase

__all__ = ["Phase", "move", "move_table", "move_indirect", "select", "select_table",
           "wait_disconnect", "wait_reselect", "set_bits", "clear_bits", "jump", "call", "ret",
           "interrupt", "memory_move", "load", "store", "reg_imm", "reg_to_sfbr", "sfbr_to_reg",
           "reg_op_sfbr", "assemble"]

OPS = {"mov": 0, "shl": 1, "or": 2, "xor": 3, "and": 4, "shr": 5, "add": 6, "adc": 7}


def move(phase: int, count: int, addr: int) -> list[int]:
    return [(1 << 27) | (phase << 24) | (count & 0xFFFFFF), addr]


def move_table(phase: int, dsa_offset: int) -> list[int]:
    return [(1 << 28) | (1 << 27) | (phase << 24), dsa_offset & 0xFFFFFF]


def move_indirect(phase: int, count: int, ptr: int) -> list[int]:
    return [(1 << 29) | (1 << 27) | (phase << 24) | (count & 0xFFFFFF), ptr]


def _io(op: int, ident: int = 0, alt: int = 0, atn_select: bool = False, rel: bool = False,
        table: bool = False, atn: bool = False, ack: bool = False, carry: bool = False) -> list[int]:
    w = (1 << 30) | (op << 27) | (rel << 26) | (table << 25) | (atn_select << 24)
    w |= (ident & 0xFFFFFF) if table else ((ident & 0xF) << 16)
    w |= (carry << 10) | (ack << 6) | (atn << 3)
    return [w, alt & 0xFFFFFFFF]


def select(target: int, alt: int, atn: bool = True, rel: bool = False) -> list[int]:
    return _io(0, target, alt, atn_select=atn, rel=rel)


def select_table(dsa_offset: int, alt: int, atn: bool = True, rel: bool = False) -> list[int]:
    return _io(0, dsa_offset, alt, atn_select=atn, rel=rel, table=True)


def wait_disconnect() -> list[int]:
    return _io(1)


def wait_reselect(alt: int, rel: bool = False) -> list[int]:
    return _io(2, alt=alt, rel=rel)


def set_bits(atn=False, ack=False, carry=False) -> list[int]:
    return _io(3, atn=atn, ack=ack, carry=carry)


def clear_bits(atn=False, ack=False, carry=False) -> list[int]:
    return _io(4, atn=atn, ack=ack, carry=carry)


def _tc(op: int, addr: int, when: int | None = None, data: tuple[int, int] | None = None,
        carry: bool = False, if_true: bool = True, rel: bool = False, fly: bool = False) -> list[int]:
    w = (2 << 30) | (op << 27) | (rel << 23) | (carry << 21) | (fly << 20)
    unconditional = when is None and data is None and not carry
    w |= (1 << 19) if (if_true or unconditional) else 0
    if when is not None:
        w |= (when << 24) | (1 << 17) | (1 << 16)
    if data is not None:
        value, ignore_mask = data
        w |= (1 << 18) | ((ignore_mask & 0xFF) << 8) | (value & 0xFF)
    return [w, addr & 0xFFFFFFFF]


def jump(addr: int, **kw) -> list[int]:
    return _tc(0, addr, **kw)


def call(addr: int, **kw) -> list[int]:
    return _tc(1, addr, **kw)


def ret(**kw) -> list[int]:
    return _tc(2, 0, **kw)


def interrupt(code: int, fly: bool = False, **kw) -> list[int]:
    return _tc(3, code, fly=fly, **kw)


def memory_move(count: int, src: int, dst: int) -> list[int]:
    return [(0b110 << 29) | (count & 0xFFFFFF), src, dst]


def load(reg: int, n: int, addr: int, dsa_relative: bool = False) -> list[int]:
    return [(0b111 << 29) | (dsa_relative << 28) | (1 << 24) | (reg << 16) | n, addr & 0xFFFFFFFF]


def store(reg: int, n: int, addr: int, dsa_relative: bool = False) -> list[int]:
    return [(0b111 << 29) | (dsa_relative << 28) | (reg << 16) | n, addr & 0xFFFFFFFF]


def _rw(op: int, operator: str, reg: int, imm: int = 0, use_sfbr: bool = False) -> list[int]:
    return [(1 << 30) | (op << 27) | (OPS[operator] << 24) | (use_sfbr << 23)
            | ((reg & 0x7F) << 16) | ((imm & 0xFF) << 8) | (reg & 0x80), 0]


def reg_imm(reg: int, operator: str, imm: int) -> list[int]:
    """MOVE reg <operator> imm TO reg (read-modify-write)."""
    return _rw(7, operator, reg, imm)


def reg_op_sfbr(reg: int, operator: str) -> list[int]:
    """MOVE reg <operator> SFBR TO reg."""
    return _rw(7, operator, reg, use_sfbr=True)


def reg_to_sfbr(reg: int, operator: str = "or", imm: int = 0) -> list[int]:
    """MOVE reg <operator> imm TO SFBR (plain "MOVE reg TO SFBR" is ``reg | 0``: with the
    MOV operator the immediate alone is moved)."""
    return _rw(6, operator, reg, imm)


def sfbr_to_reg(reg: int, operator: str = "or", imm: int = 0) -> list[int]:
    """MOVE SFBR <operator> imm TO reg (plain "MOVE SFBR TO reg" is ``SFBR | 0``)."""
    return _rw(5, operator, reg, imm)


def assemble(*insns: list[int]) -> bytes:
    words = [w for i in insns for w in i]
    return struct.pack(f"<{len(words)}I", *words)
