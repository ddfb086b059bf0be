"""A tiny SCRIPTS assembler: one function per instruction format (manual chapter 6).

Each function returns the instruction's 32-bit words; :func:`assemble`
packs a list of them into little-endian bytes.  Every field is placed by
name through the declarations in :mod:`.scripts_layout` (no bit position is
written here).  Tests use it to build scripts with no guest code;
guests/drivers/lsi.c spells the same formats as C macros.
"""

from __future__ import annotations

import struct

from . import scripts_layout as S
from .regs import Phase

__all__ = ["Phase", "move", "move_table", "move_indirect", "select", "select_table",
           "wait_disconnect", "wait_reselect", "set_bits", "clear_bits", "jump", "call", "ret",
           "interrupt", "memory_move", "load", "store", "reg_imm", "reg_to_sfbr", "sfbr_to_reg",
           "reg_op_sfbr", "assemble"]

OPS = {str(k).lower(): v for k, v in S.Operator.encmapping.items()}
_T = S.InsnType.encmapping
_IO = S.IoOpcode.encmapping
_RW = S.RwOpcode.encmapping
_TC = S.TcOpcode.encmapping
_T3 = S.InsnType3.encmapping


def _block_move(phase: int, count: int, indirect: bool = False, table: bool = False) -> int:
    return S.pack(S.F.block_move, type=_T["BLOCK_MOVE"], indirect=indirect, table_indirect=table,
                  move=1, phase=phase, count=count)


def move(phase: int, count: int, addr: int) -> list[int]:
    return [_block_move(phase, count), addr]


def move_table(phase: int, dsa_offset: int) -> list[int]:
    return [_block_move(phase, 0, table=True), dsa_offset & S.F.block_move["count"][1]]


def move_indirect(phase: int, count: int, ptr: int) -> list[int]:
    return [_block_move(phase, count, indirect=True), ptr]


def _io(op: str, ident: int = 0, alt: int = 0, atn_select: bool = False, rel: bool = False,
        table: bool = False, atn: bool = False, ack: bool = False, carry: bool = False) -> list[int]:
    if table:
        w = S.pack(S.F.io_table, type=_T["IO_OR_RW"], opcode=_IO[op], relative=rel,
                   table_indirect=1, select_atn=atn_select, table_offset=ident)
    else:
        w = S.pack(S.F.io, type=_T["IO_OR_RW"], opcode=_IO[op], relative=rel,
                   select_atn=atn_select, target_id=ident, carry=carry, ack=ack, atn=atn)
    return [w, alt & 0xFFFFFFFF]


def select(target: int, alt: int, atn: bool = True, rel: bool = False) -> list[int]:
    return _io("SELECT", target, alt, atn_select=atn, rel=rel)


def select_table(dsa_offset: int, alt: int, atn: bool = True, rel: bool = False) -> list[int]:
    return _io("SELECT", dsa_offset, alt, atn_select=atn, rel=rel, table=True)


def wait_disconnect() -> list[int]:
    return _io("WAIT_DISCONNECT")


def wait_reselect(alt: int, rel: bool = False) -> list[int]:
    return _io("WAIT_RESELECT", alt=alt, rel=rel)


def set_bits(atn=False, ack=False, carry=False) -> list[int]:
    return _io("SET", atn=atn, ack=ack, carry=carry)


def clear_bits(atn=False, ack=False, carry=False) -> list[int]:
    return _io("CLEAR", atn=atn, ack=ack, carry=carry)


def _tc(op: str, addr: int, when: int | None = None, data: tuple[int, int] | None = None,
        carry: bool = False, if_true: bool = True, rel: bool = False, fly: bool = False) -> list[int]:
    unconditional = when is None and data is None and not carry
    f: dict[str, int] = dict(type=_T["TRANSFER_CONTROL"], opcode=_TC[op], relative=rel,
                             carry_test=carry, int_fly=fly, if_true=if_true or unconditional)
    if when is not None:
        f.update(phase=when, compare_phase=1, wait_valid=1)
    if data is not None:
        value, ignore_mask = data
        f.update(compare_data=1, mask=ignore_mask, data=value)
    return [S.pack(S.F.tc, **f), addr & 0xFFFFFFFF]


def jump(addr: int, **kw) -> list[int]:
    return _tc("JUMP", addr, **kw)


def call(addr: int, **kw) -> list[int]:
    return _tc("CALL", addr, **kw)


def ret(**kw) -> list[int]:
    return _tc("RETURN", 0, **kw)


def interrupt(code: int, fly: bool = False, **kw) -> list[int]:
    return _tc("INT", code, fly=fly, **kw)


def memory_move(count: int, src: int, dst: int) -> list[int]:
    return [S.pack(S.F.memory_move, type=_T3["MEMORY_MOVE"], count=count), src, dst]


def _load_store(load: bool, reg: int, n: int, addr: int, dsa_relative: bool) -> list[int]:
    return [S.pack(S.F.load_store, type=_T3["LOAD_STORE"], dsa_relative=dsa_relative, load=load,
                   register=reg, count=n), addr & 0xFFFFFFFF]


def load(reg: int, n: int, addr: int, dsa_relative: bool = False) -> list[int]:
    return _load_store(True, reg, n, addr, dsa_relative)


def store(reg: int, n: int, addr: int, dsa_relative: bool = False) -> list[int]:
    return _load_store(False, reg, n, addr, dsa_relative)


def _rw(op: str, operator: str, reg: int, imm: int = 0, use_sfbr: bool = False) -> list[int]:
    low_bits = S.F.rw["reg_low"][1].bit_length()
    return [S.pack(S.F.rw, type=_T["IO_OR_RW"], opcode=_RW[op], operator=OPS[operator],
                   use_sfbr=use_sfbr, reg_low=reg, immediate=imm, reg_a7=reg >> low_bits), 0]


def reg_imm(reg: int, operator: str, imm: int) -> list[int]:
    """MOVE reg <operator> imm TO reg (read-modify-write)."""
    return _rw("REG_TO_REG", operator, reg, imm)


def reg_op_sfbr(reg: int, operator: str) -> list[int]:
    """MOVE reg <operator> SFBR TO reg."""
    return _rw("REG_TO_REG", operator, reg, use_sfbr=True)


def reg_to_sfbr(reg: int, operator: str = "or", imm: int = 0) -> list[int]:
    """MOVE reg <operator> imm TO SFBR (plain "MOVE reg TO SFBR" is ``reg | 0``: with the
    MOV operator the immediate alone is moved)."""
    return _rw("REG_TO_SFBR", operator, reg, imm)


def sfbr_to_reg(reg: int, operator: str = "or", imm: int = 0) -> list[int]:
    """MOVE SFBR <operator> imm TO reg (plain "MOVE SFBR TO reg" is ``SFBR | 0``)."""
    return _rw("SFBR_TO_REG", operator, reg, imm)


def assemble(*insns: list[int]) -> bytes:
    words = [w for i in insns for w in i]
    return struct.pack(f"<{len(words)}I", *words)
