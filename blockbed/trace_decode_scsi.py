"""Trace decoders for SCSI CDBs, LSI53C895A registers and SCRIPTS instructions.

All of them parse with the ``construct`` declarations
(:mod:`blockbed.devices.scsi.cdb`, :mod:`blockbed.devices.lsi53c895a.layout`,
:mod:`blockbed.devices.lsi53c895a.scripts_layout`), so a trace shows field
names, never hex.  :mod:`blockbed.trace_decode` re-exports them.

Only called under ``if trace.enabled:``.
"""

from __future__ import annotations

from typing import Any

from .devices.fastform import offsets, to_dict
from .devices.lsi53c895a import layout as lsi_layout
from .devices.lsi53c895a import scripts_layout
from .devices.scsi import cdb as scsi_cdb_layout
from .devices.scsi.constants import SAI_READ_CAPACITY_16, Op

__all__ = ["SCSI_OPCODES", "scsi_cdb", "lsi_register", "lsi_register_value", "lsi_insn",
           "LSI_REGISTERS"]


def _op_name(op: Op) -> str:
    """``WRITE_10`` -> ``WRITE(10)``, ``TEST_UNIT_READY`` -> ``TEST UNIT READY``."""
    words = op.name.split("_")
    if words[-1].isdigit():
        return " ".join(words[:-1]) + f"({words[-1]})"
    return " ".join(words)


#: SCSI operation codes (SPC-4 §4.2.5.1 / SBC-3 §5), named from the Op enumeration
SCSI_OPCODES = {int(o): _op_name(o) for o in Op}


def scsi_cdb(cdb: bytes) -> dict[str, Any]:
    """A SCSI CDB (SPC-4 §4.2, SBC-3 §5): the operation by name and, for the read/write
    family (READ, WRITE, VERIFY, WRITE SAME, SYNCHRONIZE CACHE), LBA / blocks / FUA;
    ``fields`` has every field of the CDB's declaration by name."""
    op = cdb[0]
    out: dict[str, Any] = {"opcode": SCSI_OPCODES.get(op, f"{op:#04x}"), "opcode_code": op}
    parsed = scsi_cdb_layout.parse(cdb)
    if parsed is None:
        return out
    if "lba" in parsed and "transfer_length" in parsed:
        rw = scsi_cdb_layout.rw_fields(cdb)
        out["lba"], out["blocks"] = rw.lba, parsed.transfer_length
        if "fua" in parsed.flags:
            out["fua"] = bool(parsed.flags.fua)
    elif "head" in parsed:                           # READ(6) / WRITE(6)
        out["lba"], out["blocks"] = parsed.head.lba, parsed.transfer_length or 256
    if op == Op.SERVICE_ACTION_IN_16 and parsed.action.service_action == SAI_READ_CAPACITY_16:
        out["service_action"] = "READ CAPACITY(16)"
    fields = to_dict(parsed)
    fields.pop("opcode", None)
    out["fields"] = fields
    return out


# --- LSI53C895A registers (manual chapter 5) ----------------------------------------------------
def _register_names() -> dict[int, str]:
    names: dict[int, str] = {}
    regs = lsi_layout.Registers
    for sc, (name, off) in zip(regs.subcons, offsets(regs).items()):
        size = sc.sizeof()
        if name.startswith("reserved"):
            continue
        if name == "dbc_dcmd":                       # DBC (24 bits) and DCMD share the dword
            names.update({off: "DBC", off + 1: "DBC+1", off + 2: "DBC+2", off + 3: "DCMD"})
        elif name == "scratchc_j":                   # SCRATCHC .. SCRATCHJ, four bytes each
            for i in range(size):
                names[off + i] = f"SCRATCH{chr(ord('C') + i // 4)}" + (f"+{i % 4}" if i % 4 else "")
        else:
            for i in range(size):
                names[off + i] = name.upper() + (f"+{i}" if i else "")
    return names


#: LSI53C895A register byte names by offset, from the declaration
LSI_REGISTERS = _register_names()
_BYTE_DECLS = {off: lsi_layout.REGISTER_DECLS[n.lower()] for off, n in LSI_REGISTERS.items()
               if n.lower() in lsi_layout.REGISTER_DECLS
               and lsi_layout.REGISTER_DECLS[n.lower()].sizeof() == 1}


def lsi_register(offset: int) -> str:
    """The name of an LSI register byte (a multi-byte register's name plus a byte suffix)."""
    return LSI_REGISTERS.get(offset, f"{offset:#04x}")


def lsi_register_value(offset: int, value: int) -> dict[str, Any] | int:
    """A one-byte register value by field (``{"con": True, "rst": False, ...}`` for SCNTL1);
    the plain value for registers without declared bits."""
    con = _BYTE_DECLS.get(offset)
    if con is None or not hasattr(con, "_bb_bits"):
        return value
    return to_dict(con.parse(bytes([value & 0xFF])))


def lsi_insn(raw: bytes) -> dict[str, Any]:
    """A SCRIPTS instruction (8 bytes, 12 for a memory move) by format and field
    (manual chapter 6)."""
    return scripts_layout.decode(raw)
