"""The LSI53C895A declarations (devices/lsi53c895a/layout.py, scripts_layout.py): the
register file has the manual's offsets (chapter 5), the SCRIPTS formats the manual's
bit positions (chapter 6); the fast forms the chip and the assembler use agree with
construct's parse; the assembler's words are the ones it produced before the
declarations existed (tests/data/lsi_asm_golden.json, recorded then)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from blockbed import trace_decode as d
from blockbed.devices.fastform import bits, to_dict
from blockbed.devices.lsi53c895a import asm as A
from blockbed.devices.lsi53c895a import layout as L
from blockbed.devices.lsi53c895a import regs as R
from blockbed.devices.lsi53c895a import scripts_layout as S

GOLDEN = Path(__file__).parent / "data" / "lsi_asm_golden.json"

# Offsets from the manual's register map (LSI53C895A TRM table 5.1), written out independently.
MANUAL_OFFSETS = {
    "SCNTL0": 0x00, "SCNTL1": 0x01, "SCNTL2": 0x02, "SCNTL3": 0x03, "SCID": 0x04, "SXFER": 0x05,
    "SDID": 0x06, "GPREG": 0x07, "SFBR": 0x08, "SOCL": 0x09, "SSID": 0x0A, "SBCL": 0x0B,
    "DSTAT": 0x0C, "SSTAT0": 0x0D, "SSTAT1": 0x0E, "SSTAT2": 0x0F, "DSA": 0x10, "ISTAT0": 0x14,
    "ISTAT1": 0x15, "MBOX0": 0x16, "MBOX1": 0x17, "CTEST0": 0x18, "CTEST1": 0x19, "CTEST2": 0x1A,
    "CTEST3": 0x1B, "TEMP": 0x1C, "DFIFO": 0x20, "CTEST4": 0x21, "CTEST5": 0x22, "CTEST6": 0x23,
    "DBC": 0x24, "DCMD": 0x27, "DNAD": 0x28, "DSP": 0x2C, "DSPS": 0x30, "SCRATCHA": 0x34,
    "DMODE": 0x38, "DIEN": 0x39, "SBR": 0x3A, "DCNTL": 0x3B, "ADDER": 0x3C, "SIEN0": 0x40,
    "SIEN1": 0x41, "SIST0": 0x42, "SIST1": 0x43, "MACNTL": 0x46, "GPCNTL": 0x47, "STIME0": 0x48,
    "STIME1": 0x49, "RESPID0": 0x4A, "RESPID1": 0x4B, "STEST0": 0x4C, "STEST1": 0x4D,
    "STEST2": 0x4E, "STEST3": 0x4F, "SIDL": 0x50, "STEST4": 0x52, "SODL": 0x54, "SBDL": 0x58,
    "SCRATCHB": 0x5C,
}


def test_register_file_offsets_and_size():
    assert L.Registers.sizeof() == 256 == R.REG_SIZE
    for name, off in MANUAL_OFFSETS.items():
        assert getattr(R, name) == off, name


def test_register_bits_match_the_manual():
    # a few bits the chip model depends on, from the manual's register diagrams
    assert (R.ISTAT0_SRST, R.ISTAT0_SIGP, R.ISTAT0_CON, R.ISTAT0_INTF, R.ISTAT0_SIP,
            R.ISTAT0_DIP) == (0x40, 0x20, 0x08, 0x04, 0x02, 0x01)
    assert (R.DSTAT_DFE, R.DSTAT_BF, R.DSTAT_ABRT, R.DSTAT_SSI, R.DSTAT_SIR, R.DSTAT_IID) == \
        (0x80, 0x20, 0x10, 0x08, 0x04, 0x01)
    assert (R.SIST0_MA, R.SIST0_UDC, R.SIST0_RST, R.SIST1_STO, R.SIST1_GEN) == \
        (0x80, 0x04, 0x02, 0x04, 0x02)
    assert (R.SCNTL1_CON, R.SCNTL1_RST, R.SCID_RRE, R.DCNTL_STD, R.DCNTL_SSM, R.DMODE_MAN) == \
        (0x10, 0x08, 0x40, 0x04, 0x10, 0x01)
    assert (R.CTEST2_SIGP, R.CTEST2_CM, R.CTEST2_PCICIE, R.CTEST2_DACK) == (0x40, 0x10, 0x08, 0x01)
    assert R.PHASE_MASK == 0x07 and R.SBCL_REQ == 0x80 and R.SOCL_ATN == 0x08
    for con in (L.Scntl0, L.Scntl1, L.Istat0, L.Dstat, L.Int0, L.Int1, L.Sbcl, L.Sstat1, L.Dcntl):
        assert con.sizeof() == 1


def test_parsed_register_file_prints_field_names():
    raw = bytearray(256)
    raw[R.ISTAT0] = R.ISTAT0_CON | R.ISTAT0_DIP
    raw[R.SBCL] = R.SBCL_REQ | 3                    # STATUS phase
    struct.pack_into("<I", raw, R.DSP, 0x12345678)
    raw[R.DBC:R.DBC + 4] = struct.pack("<I", (0x98 << 24) | 0x000123)
    regs = L.Registers.parse(bytes(raw))
    assert regs.istat0.con and regs.istat0.dip and not regs.istat0.sip
    assert regs.sbcl.req and regs.sbcl.phase == "STATUS"
    assert regs.dsp == 0x12345678 and regs.dbc_dcmd.dcmd == 0x98 and regs.dbc_dcmd.dbc == 0x123
    text = str(regs)
    assert "istat0" in text and "con = True" in text and "STATUS" in text
    assert L.Registers.build(regs) == bytes(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_register_file_round_trip(raw):
    """Every declared bit survives parse and build; the reserved ones (Padding) read as 0."""
    keep = L.Registers.build(L.Registers.parse(b"\xff" * 256))
    assert keep[R.DSTAT] == 0xFD and keep[R.SCID] == 0x6F and keep[R.SIEN1] == 0x17
    assert L.Registers.build(L.Registers.parse(raw)) == bytes(a & b for a, b in zip(raw, keep))


def test_scripts_formats_sizes_and_positions():
    for con in (S.BlockMove, S.Io, S.IoTable, S.ReadWriteRegister, S.TransferControl,
                S.MemoryMove, S.LoadStore, S.SelectEntry):
        assert con.sizeof() == 4
    for con in (S.BlockMoveInsn, S.IoInsn, S.ReadWriteRegisterInsn, S.TransferControlInsn,
                S.LoadStoreInsn, S.BlockMoveEntry):
        assert con.sizeof() == 8
    assert S.MemoryMoveInsn.sizeof() == 12
    # chapter 6: the bit positions, written out independently
    assert S.F.block_move == {"type": (30, 3), "indirect": (29, 1), "table_indirect": (28, 1),
                              "move": (27, 1), "phase": (24, 7), "count": (0, 0xFFFFFF)}
    assert S.F.io["opcode"] == (27, 7) and S.F.io["relative"] == (26, 1)
    assert S.F.io["target_id"] == (16, 15) and S.F.io["carry"] == (10, 1)
    assert S.F.io["ack"] == (6, 1) and S.F.io["atn"] == (3, 1)
    assert S.F.tc["relative"] == (23, 1) and S.F.tc["carry_test"] == (21, 1)
    assert S.F.tc["int_fly"] == (20, 1) and S.F.tc["if_true"] == (19, 1)
    assert S.F.tc["compare_data"] == (18, 1) and S.F.tc["compare_phase"] == (17, 1)
    assert S.F.tc["mask"] == (8, 0xFF) and S.F.tc["data"] == (0, 0xFF)
    assert S.F.rw["reg_low"] == (16, 0x7F) and S.F.rw["reg_a7"] == (7, 1)
    assert S.F.rw["immediate"] == (8, 0xFF) and S.F.rw["use_sfbr"] == (23, 1)
    assert S.F.load_store["load"] == (24, 1) and S.F.load_store["dsa_relative"] == (28, 1)
    assert S.F.load_store["register"] == (16, 0xFF) and S.F.load_store["count"] == (0, 7)
    assert S.F.select_entry == {"scntl3": (24, 0xFF), "target_id": (16, 15), "sxfer": (8, 0xFF)}


def test_assembler_words_unchanged():
    """Every recorded call of the assembler gives the words it gave before the declarations."""
    cases = json.loads(GOLDEN.read_text())
    assert len(cases) > 1000
    for c in cases:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in c["kwargs"].items()}
        assert getattr(A, c["fn"])(*c["args"], **kw) == c["words"], c


def _decode_by_hand(w0: int, w1: int) -> dict:
    """An independent reading of chapter 6 (literal bit positions), to check the declarations."""
    kind = w0 >> 30
    if kind == 0:
        return {"format": "block_move", "phase": (w0 >> 24) & 7, "count": w0 & 0xFFFFFF,
                "table": bool(w0 & 1 << 28), "indirect": bool(w0 & 1 << 29), "addr": w1}
    if kind == 1 and (w0 >> 27) & 7 < 5:
        return {"format": "io", "op": (w0 >> 27) & 7, "table": bool(w0 & 1 << 25),
                "rel": bool(w0 & 1 << 26), "atn_sel": bool(w0 & 1 << 24),
                "id": (w0 >> 16) & 15, "ack": bool(w0 & 1 << 6), "atn": bool(w0 & 1 << 3),
                "carry": bool(w0 & 1 << 10), "alt": w1}
    if kind == 1:
        return {"format": "rw", "op": (w0 >> 27) & 7, "operator": (w0 >> 24) & 7,
                "reg": ((w0 >> 16) & 0x7F) | (w0 & 0x80), "imm": (w0 >> 8) & 0xFF,
                "sfbr": bool(w0 & 1 << 23)}
    if kind == 2:
        return {"format": "tc", "op": (w0 >> 27) & 7, "phase": (w0 >> 24) & 7,
                "rel": bool(w0 & 1 << 23), "carry": bool(w0 & 1 << 21), "fly": bool(w0 & 1 << 20),
                "true": bool(w0 & 1 << 19), "data?": bool(w0 & 1 << 18),
                "phase?": bool(w0 & 1 << 17), "mask": (w0 >> 8) & 0xFF, "data": w0 & 0xFF,
                "addr": w1}
    if not w0 & 1 << 29:
        return {"format": "memory_move", "count": w0 & 0xFFFFFF, "src": w1}
    return {"format": "load_store", "load": bool(w0 & 1 << 24), "rel": bool(w0 & 1 << 28),
            "reg": (w0 >> 16) & 0xFF, "n": w0 & 7, "addr": w1}


def _decode_by_declaration(w0: int, w1: int) -> dict:
    x = S.decode(struct.pack("<II", w0, w1))
    c, f = x["dcmd"], x["format"]
    code = {**S.IoOpcode.encmapping, **S.RwOpcode.encmapping, **S.TcOpcode.encmapping}
    phase = dict(L.PhaseCode.encmapping)
    if f == "block_move":
        return {"format": f, "phase": phase[c["phase"]], "count": c["count"],
                "table": c["table_indirect"], "indirect": c["indirect"], "addr": x["address"]}
    if f in ("io", "io_table"):
        out = {"format": "io", "op": code[c["opcode"]], "table": c["table_indirect"],
               "rel": c["relative"], "atn_sel": c["select_atn"], "alt": x["alt_address"]}
        if f == "io":
            out.update(id=c["target_id"], ack=c["ack"], atn=c["atn"], carry=c["carry"])
        else:
            off = c["table_offset"]
            out.update(id=(off >> 16) & 15, ack=bool(off & 1 << 6), atn=bool(off & 1 << 3),
                       carry=bool(off & 1 << 10))
        return out
    if f == "read_write_register":
        return {"format": "rw", "op": code[c["opcode"]],
                "operator": S.Operator.encmapping[c["operator"]],
                "reg": c["reg_low"] | (c["reg_a7"] << 7), "imm": c["immediate"],
                "sfbr": c["use_sfbr"]}
    if f == "transfer_control":
        return {"format": "tc", "op": code[c["opcode"]] if isinstance(c["opcode"], str)
                else c["opcode"], "phase": phase[c["phase"]], "rel": c["relative"],
                "carry": c["carry_test"], "fly": c["int_fly"], "true": c["if_true"],
                "data?": c["compare_data"], "phase?": c["compare_phase"], "mask": c["mask"],
                "data": c["data"], "addr": x["address"]}
    if f == "memory_move":
        return {"format": f, "count": c["count"], "src": x["source"]}
    return {"format": f, "load": c["load"], "rel": c["dsa_relative"], "reg": c["register"],
            "n": c["count"], "addr": x["address"]}


def test_every_assembled_instruction_decodes_as_the_manual_says():
    for c in json.loads(GOLDEN.read_text()):
        w = c["words"]
        assert _decode_by_declaration(w[0], w[1]) == _decode_by_hand(w[0], w[1]), c


# The guest driver's SCRIPTS words (guests/drivers/lsi.c S_* macros), spelled out.
GUEST_WORDS = {
    "S_MOVE_TBL(P_DATA_IN, 24)": ((0x18000000 | 1 << 24), 24),
    "S_SELECT_TBL_ATN(0, alt)": (0x43000000, 0x100),
    "S_WAIT_DISCONNECT": (0x48000000, 0),
    "S_WAIT_RESELECT(alt)": (0x50000000, 0x200),
    "S_CLEAR_ACK": (0x60000040, 0),
    "S_JUMP(a)": (0x80080000, 0x300),
    "S_JUMP_WHEN(P_STATUS, a)": (0x800B0000 | 3 << 24, 0x400),
    "S_JUMP_IF_DATA(4, a)": (0x800C0004, 0x500),
    "S_INT(0xE1)": (0x98080000, 0xE1),
}


def test_guest_driver_instructions_decode():
    x = {k: S.decode(struct.pack("<II", *v)) for k, v in GUEST_WORDS.items()}
    assert x["S_MOVE_TBL(P_DATA_IN, 24)"]["dcmd"]["table_indirect"] is True
    assert x["S_MOVE_TBL(P_DATA_IN, 24)"]["dcmd"]["phase"] == "DATA_IN"
    sel = x["S_SELECT_TBL_ATN(0, alt)"]
    assert sel["format"] == "io_table" and sel["dcmd"]["opcode"] == "SELECT"
    assert sel["dcmd"]["select_atn"] is True
    assert x["S_WAIT_DISCONNECT"]["dcmd"]["opcode"] == "WAIT_DISCONNECT"
    assert x["S_WAIT_RESELECT(alt)"]["dcmd"]["opcode"] == "WAIT_RESELECT"
    assert x["S_CLEAR_ACK"]["dcmd"]["opcode"] == "CLEAR" and x["S_CLEAR_ACK"]["dcmd"]["ack"]
    j = x["S_JUMP_WHEN(P_STATUS, a)"]["dcmd"]
    assert j["opcode"] == "JUMP" and j["phase"] == "STATUS" and j["compare_phase"] and j["if_true"]
    jd = x["S_JUMP_IF_DATA(4, a)"]["dcmd"]
    assert jd["compare_data"] and jd["data"] == 4 and jd["mask"] == 0
    assert x["S_INT(0xE1)"]["dcmd"]["opcode"] == "INT" and x["S_INT(0xE1)"]["address"] == 0xE1
    # and the assembler spells them the same way
    assert A.move_table(A.Phase.DATA_IN, 24) == list(GUEST_WORDS["S_MOVE_TBL(P_DATA_IN, 24)"])
    assert A.select_table(0, 0x100) == list(GUEST_WORDS["S_SELECT_TBL_ATN(0, alt)"])
    assert A.clear_bits(ack=True) == list(GUEST_WORDS["S_CLEAR_ACK"])
    assert A.jump(0x400, when=3) == list(GUEST_WORDS["S_JUMP_WHEN(P_STATUS, a)"])
    assert A.jump(0x500, data=(4, 0)) == list(GUEST_WORDS["S_JUMP_IF_DATA(4, a)"])
    assert A.interrupt(0xE1) == list(GUEST_WORDS["S_INT(0xE1)"])


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_fast_fields_agree_with_construct_on_random_words(w0, w1):
    assert _decode_by_declaration(w0, w1) == _decode_by_hand(w0, w1)
    name, con = S.format_of(w0)
    parsed = con.parse(struct.pack("<II", w0, w1).ljust(con.sizeof(), b"\0"))
    fmt = {"block_move": S.F.block_move, "io": S.F.io, "io_table": S.F.io_table,
           "read_write_register": S.F.rw, "transfer_control": S.F.tc,
           "memory_move": S.F.memory_move, "load_store": S.F.load_store}[name]
    for field, (shift, m) in fmt.items():
        v = parsed.dcmd[field]
        want = (w0 >> shift) & m
        assert int(v) == want, field
    # reserved bits aside, building the parse gives the words back
    reserved = 0xFFFFFFFF & ~sum(m << sh for sh, m in fmt.values())
    assert con.build(parsed)[:8] == struct.pack("<II", w0 & ~reserved, w1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_table_entries_fast_form(count_word, addr):
    raw = struct.pack("<II", count_word, addr)
    e = S.BlockMoveEntry.parse(raw)
    count, a = S.BLOCK_MOVE_ENTRY.unpack(raw)
    assert e.count.byte_count == count & S.F.entry_count["byte_count"][1] and e.address == a
    sel = S.SelectEntry.parse(raw[:4])
    assert sel.target_id == (count_word >> 16) & 15 and sel.sxfer == (count_word >> 8) & 0xFF
    assert sel.scntl3 == count_word >> 24


def test_trace_decoders():
    insn = d.lsi_insn(A.assemble(A.move(A.Phase.COMMAND, 10, 0x21100)))
    assert insn == {"dcmd": {"type": "BLOCK_MOVE", "indirect": False, "table_indirect": False,
                             "move": True, "phase": "COMMAND", "count": 10},
                    "address": 0x21100, "format": "block_move"}
    mm = d.lsi_insn(A.assemble(A.memory_move(4, 0x1000, 0x2000))[:8])
    assert mm["format"] == "memory_move" and mm["source"] == 0x1000 and "destination" not in mm
    assert d.lsi_register(R.DCMD) == "DCMD" and d.lsi_register(R.DBC + 1) == "DBC+1"
    assert d.lsi_register(R.SCRATCHB + 4) == "SCRATCHC" and d.lsi_register(0x9F) == "0x9f"
    v = d.lsi_register_value(R.SIST0, R.SIST0_MA | R.SIST0_UDC)
    assert v["ma"] and v["udc"] and not v["rst"]
    assert d.lsi_register_value(R.SFBR, 5) == 5
    assert to_dict(L.Sbcl.parse(bytes([0x87])))["phase"] == "MSG_IN"
    assert bits(L.DbcDcmd)["dcmd"] == (24, 8)
