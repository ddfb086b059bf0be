"""SCRIPTS instruction formats and table-indirect entries, declared once.

LSI53C895A Technical Manual, chapter 6 ("SCSI SCRIPTS Instruction Set"):
every instruction is a DCMD/DBC dword (the first word, which the chip loads
into DCMD and DBC) followed by the DSPS dword (memory move: and a third, the
destination).  The first word's two top bits select the type (§6.1); the
formats below are :func:`~..fastform.le_bits` declarations of that first
word, fields from bit 31 down as the manual draws them.  The table-indirect
entries a block move or SELECT reads at DSA + offset are declared too.

The SCRIPTS processor (:mod:`.scripts`) and the assembler (:mod:`.asm`) use
the shifts and masks derived here at import (:data:`F`); the trace decoder
parses with the declarations (:func:`decode`).
"""

from __future__ import annotations

from typing import Any

from construct import BitsInteger, Enum, Flag, Int32ul, Padding, Struct

from ..fastform import bits, fast, le_bits, to_dict
from .layout import PhaseCode

#: Instruction type, bits 31:30 (§6.1)
InsnType = Enum(BitsInteger(2), BLOCK_MOVE=0, IO_OR_RW=1, TRANSFER_CONTROL=2, MEMORY_OR_LOAD=3)

#: Block move, type 00 (§6.2): indirect, table indirect, opcode (1 MOVE / 0 CHMOV, in
#: initiator mode), phase, byte count (word 2: address, or the table entry's DSA offset)
BlockMove = le_bits("type" / InsnType, "indirect" / Flag, "table_indirect" / Flag,
                    "move" / Flag, "phase" / PhaseCode, "count" / BitsInteger(24))

IoOpcode = Enum(BitsInteger(3), SELECT=0, WAIT_DISCONNECT=1, WAIT_RESELECT=2, SET=3, CLEAR=4)
#: I/O instruction, type 01 with opcode 0-4 (§6.3): relative alternate address, table
#: indirect (then bits 23:0 are the select table entry's DSA offset: :data:`IoTable`),
#: select with ATN, destination ID; SET/CLEAR carry, ACK, ATN
Io = le_bits("type" / InsnType, "opcode" / IoOpcode, "relative" / Flag, "table_indirect" / Flag,
             "select_atn" / Flag, Padding(4), "target_id" / BitsInteger(4), Padding(5),
             "carry" / Flag, Padding(3), "ack" / Flag, Padding(2), "atn" / Flag, Padding(3))
#: The table-indirect form of an I/O instruction: bits 23:0 are a signed DSA offset
IoTable = le_bits("type" / InsnType, "opcode" / IoOpcode, "relative" / Flag,
                  "table_indirect" / Flag, "select_atn" / Flag, "table_offset" / BitsInteger(24))

RwOpcode = Enum(BitsInteger(3), SFBR_TO_REG=5, REG_TO_SFBR=6, REG_TO_REG=7)
Operator = Enum(BitsInteger(3), MOV=0, SHL=1, OR=2, XOR=3, AND=4, SHR=5, ADD=6, ADC=7)
#: Read/write register, type 01 with opcode 5-7 (§6.4): operator, use SFBR as the operand
#: (reg-to-reg form), register address bits 6:0 (22:16) and bit 7 (bit 7), immediate data
ReadWriteRegister = le_bits(
    "type" / InsnType, "opcode" / RwOpcode, "operator" / Operator, "use_sfbr" / Flag,
    "reg_low" / BitsInteger(7), "immediate" / BitsInteger(8), "reg_a7" / Flag, Padding(7))

TcOpcode = Enum(BitsInteger(3), JUMP=0, CALL=1, RETURN=2, INT=3)
#: Transfer control, type 10 (§6.5): phase to compare, relative addressing, carry test,
#: interrupt on the fly, jump if true/false, compare data, compare phase, wait for valid
#: phase, mask of data bits NOT compared, data to compare with SFBR
TransferControl = le_bits(
    "type" / InsnType, "opcode" / TcOpcode, "phase" / PhaseCode, "relative" / Flag, Padding(1),
    "carry_test" / Flag, "int_fly" / Flag, "if_true" / Flag, "compare_data" / Flag,
    "compare_phase" / Flag, "wait_valid" / Flag, "mask" / BitsInteger(8),
    "data" / BitsInteger(8))

#: Bits 31:29 of a type-11 instruction: memory move (110) or load/store (111)
InsnType3 = Enum(BitsInteger(3), MEMORY_MOVE=0b110, LOAD_STORE=0b111)
#: Memory move, type 110 (§6.6): no flush, byte count; words 2 and 3 source and destination
MemoryMove = le_bits("type" / InsnType3, Padding(4), "no_flush" / Flag,
                     "count" / BitsInteger(24))
#: Load/store, type 111 (§6.7): DSA relative, no flush, load (1) / store (0), register
#: address, byte count 1-4
LoadStore = le_bits("type" / InsnType3, "dsa_relative" / Flag, Padding(2),
                    "no_flush" / Flag, "load" / Flag, "register" / BitsInteger(8), Padding(13),
                    "count" / BitsInteger(3))

#: Whole instructions: the first word and the words after it
BlockMoveInsn = Struct("dcmd" / BlockMove, "address" / Int32ul)
IoInsn = Struct("dcmd" / Io, "alt_address" / Int32ul)
IoTableInsn = Struct("dcmd" / IoTable, "alt_address" / Int32ul)
ReadWriteRegisterInsn = Struct("dcmd" / ReadWriteRegister, "unused" / Int32ul)
TransferControlInsn = Struct("dcmd" / TransferControl, "address" / Int32ul)
MemoryMoveInsn = Struct("dcmd" / MemoryMove, "source" / Int32ul, "destination" / Int32ul)
LoadStoreInsn = Struct("dcmd" / LoadStore, "address" / Int32ul)

# --- table-indirect entries (§6.2.1 block move, §6.3.1 select) -------------------------------
#: A block move's table entry at DSA + offset: byte count (bits 23:0) and address
BlockMoveEntry = Struct("count" / le_bits(Padding(8), "byte_count" / BitsInteger(24)),
                        "address" / Int32ul)
#: A SELECT's table entry at DSA + offset: SCNTL3, destination ID, SXFER to load
SelectEntry = le_bits("scntl3" / BitsInteger(8), Padding(4), "target_id" / BitsInteger(4),
                      "sxfer" / BitsInteger(8), Padding(8))


class _Fields:
    """(shift, mask-after-shift) of each named field of every format, from the declarations:
    ``F.block_move["count"]`` is ``(0, 0xFFFFFF)``."""

    def __init__(self) -> None:
        for name, con in (("block_move", BlockMove), ("io", Io), ("io_table", IoTable),
                          ("rw", ReadWriteRegister), ("tc", TransferControl),
                          ("memory_move", MemoryMove), ("load_store", LoadStore),
                          ("select_entry", SelectEntry),
                          ("entry_count", BlockMoveEntry.subcons[0].subcon)):
            setattr(self, name, {k: (s, (1 << w) - 1) for k, (s, w) in bits(con).items()})


F = _Fields()
MEMORY_MOVE = InsnType3.encmapping["MEMORY_MOVE"]
LOAD_STORE = InsnType3.encmapping["LOAD_STORE"]
#: the fast form of a block move's table entry (count dword, address)
BLOCK_MOVE_ENTRY = fast(BlockMoveEntry)


def field(value: int, fmt: dict[str, tuple[int, int]], name: str) -> int:
    """Field ``name`` of an instruction word (not for the hot path: it binds constants)."""
    shift, m = fmt[name]
    return (value >> shift) & m


def flag(fmt: dict[str, tuple[int, int]], name: str) -> int:
    """The in-place mask of field ``name``."""
    shift, m = fmt[name]
    return m << shift


def pack(fmt: dict[str, tuple[int, int]], **values: int) -> int:
    """Build an instruction word from named field values (the assembler's encoder); each
    value is cut to its field's width (two's complement for a negative DSA offset or
    relative address), as an assembler does."""
    w = 0
    for k, v in values.items():
        shift, m = fmt[k]
        w |= (int(v) & m) << shift
    return w


def format_of(insn: int) -> tuple[str, Any]:
    """The format name and the instruction declaration for first word ``insn`` (§6.1)."""
    kind = insn >> F.block_move["type"][0]
    if kind == 0:
        return "block_move", BlockMoveInsn
    if kind == 1:
        if field(insn, F.io, "opcode") >= 5:
            return "read_write_register", ReadWriteRegisterInsn
        if insn & flag(F.io, "table_indirect"):
            return "io_table", IoTableInsn
        return "io", IoInsn
    if kind == 2:
        return "transfer_control", TransferControlInsn
    if field(insn, F.memory_move, "type") == MEMORY_MOVE:
        return "memory_move", MemoryMoveInsn
    return "load_store", LoadStoreInsn


def decode(raw: bytes) -> dict[str, Any]:
    """An instruction (8 bytes, or 12 for a memory move) as named fields (trace, tests).
    A memory move given only its first 8 bytes is decoded without its destination."""
    insn = int.from_bytes(raw[:4], "little")
    name, con = format_of(insn)
    size = con.sizeof()
    short = len(raw) < size
    out = to_dict(con.parse(bytes(raw[:size]).ljust(size, b"\0")))
    if short:
        out.pop(con.subcons[-1].name, None)
    out["format"] = name
    return out
