"""The CDBs the disk implements and their parameter lists, declared once with
``construct`` (SPC-4 §4.2, SBC-3 §5), with the fast forms the disk uses.

Every CDB is big-endian; bit fields are :func:`~..fastform.be_bits`
groups listed from bit 7 down, as the standards' CDB tables are, so a parsed
CDB prints its fields by name (:func:`parse`).  The read/write family is the
hot path: :func:`rw_fields` unpacks it with a :class:`struct.Struct` derived
from the declaration at import (:func:`~..fastform.fast`) and shifts/masks
derived with :func:`~..fastform.bits`.

Decoding never raises on guest input: :func:`cdb_length` returns None for a
reserved group (the caller answers INVALID COMMAND OPERATION CODE), and the
field readers take a CDB already known to be long enough.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from construct import (Array, BitsInteger, Bytes, Enum, Flag, Int8ub, Int16ub, Int32ub, Int64ub,
                       Padding, Struct, this)

from ..fastform import be_bits, bits, fast, offsets, to_dict
from .constants import Op

# --- common pieces -------------------------------------------------------------------------
_OPS = {o.name: o.value for o in Op}
#: OPERATION CODE (SPC-4 §4.2.5.1), printed by name
Opcode = Enum(Int8ub, **_OPS)
#: Byte 1 of READ/WRITE (10/12/16) (SBC-3 §5.11, §5.32): RDPROTECT/WRPROTECT, DPO, FUA, FUA_NV
RwFlags = be_bits("protect" / BitsInteger(3), "dpo" / Flag, "fua" / Flag, Padding(1),
                  "fua_nv" / Flag, Padding(1))
#: Byte 1 of VERIFY (10/12/16) (SBC-3 §5.27): VRPROTECT, DPO, BYTCHK
VerifyFlags = be_bits("vrprotect" / BitsInteger(3), "dpo" / Flag, Padding(1),
                      "bytchk" / BitsInteger(2), Padding(1))
#: Byte 1 of WRITE SAME (10/16) (SBC-3 §5.41, §5.42): WRPROTECT, ANCHOR, UNMAP, PBDATA,
#: LBDATA, NDOB (WRITE SAME(16) only; obsolete in the 10-byte form)
WriteSameFlags = be_bits("wrprotect" / BitsInteger(3), "anchor" / Flag, "unmap" / Flag,
                         "pbdata" / Flag, "lbdata" / Flag, "ndob" / Flag)
#: Byte 1 of SYNCHRONIZE CACHE (10/16) (SBC-3 §5.22, §5.23): SYNC_NV (obsolete), IMMED
SyncFlags = be_bits(Padding(5), "sync_nv" / Flag, "immed" / Flag, Padding(1))
#: The GROUP NUMBER byte (SBC-3 §4.22)
Group = be_bits(Padding(3), "group_number" / BitsInteger(5))

# --- READ / WRITE / VERIFY (SBC-3 §5.11-5.15, §5.27, §5.32-5.36) -----------------------------
#: READ(6) / WRITE(6) (SBC-3 §5.15, §5.36): 21-bit LBA, transfer length 0 = 256 blocks
Rw6 = Struct("head" / be_bits("opcode" / Enum(BitsInteger(8), **_OPS), Padding(3), "lba" / BitsInteger(21)),
             "transfer_length" / Int8ub, "control" / Int8ub)


def _rw10(flags):
    return Struct("opcode" / Opcode, "flags" / flags, "lba" / Int32ub, "group" / Group,
                  "transfer_length" / Int16ub, "control" / Int8ub)


def _rw12(flags):
    return Struct("opcode" / Opcode, "flags" / flags, "lba" / Int32ub,
                  "transfer_length" / Int32ub, "group" / Group, "control" / Int8ub)


def _rw16(flags):
    return Struct("opcode" / Opcode, "flags" / flags, "lba" / Int64ub,
                  "transfer_length" / Int32ub, "group" / Group, "control" / Int8ub)


#: READ(10) / WRITE(10) (SBC-3 §5.11, §5.32)
Rw10, Rw12, Rw16 = _rw10(RwFlags), _rw12(RwFlags), _rw16(RwFlags)
#: VERIFY(10/12/16) (SBC-3 §5.27-5.29)
Verify10, Verify12, Verify16 = _rw10(VerifyFlags), _rw12(VerifyFlags), _rw16(VerifyFlags)
#: WRITE SAME(10/16) (SBC-3 §5.41, §5.42)
WriteSame10, WriteSame16 = _rw10(WriteSameFlags), _rw16(WriteSameFlags)
#: SYNCHRONIZE CACHE(10/16) (SBC-3 §5.22, §5.23): LBA and NUMBER OF BLOCKS (0 = to the end)
SyncCache10, SyncCache16 = _rw10(SyncFlags), _rw16(SyncFlags)

# --- UNMAP (SBC-3 §5.28) ---------------------------------------------------------------------
Unmap = Struct("opcode" / Opcode, "flags" / be_bits(Padding(7), "anchor" / Flag),
               "reserved" / Bytes(4), "group" / Group, "parameter_list_length" / Int16ub,
               "control" / Int8ub)
#: UNMAP block descriptor (SBC-3 §5.28.2)
UnmapDescriptor = Struct("lba" / Int64ub, "blocks" / Int32ub, "reserved" / Bytes(4))
#: UNMAP parameter list header (SBC-3 §5.28.2)
UnmapHeader = Struct("data_length" / Int16ub, "block_descriptor_data_length" / Int16ub,
                     "reserved" / Bytes(4))
#: The whole UNMAP parameter list (header, then the descriptors the header's length covers)
UnmapParameterList = Struct(
    "header" / UnmapHeader,
    "descriptors" / Array(this.header.block_descriptor_data_length // UnmapDescriptor.sizeof(),
                          UnmapDescriptor))

# --- MODE SENSE / MODE SELECT (SPC-4 §6.9-6.12) ----------------------------------------------
#: PC (page control) and PAGE CODE, byte 2 of MODE SENSE (SPC-4 §6.11.1)
PageSelect = be_bits("pc" / BitsInteger(2), "page_code" / BitsInteger(6))
ModeSense6 = Struct("opcode" / Opcode, "flags" / be_bits(Padding(4), "dbd" / Flag, Padding(3)),
                    "page" / PageSelect, "subpage_code" / Int8ub,
                    "allocation_length" / Int8ub, "control" / Int8ub)
ModeSense10 = Struct("opcode" / Opcode,
                     "flags" / be_bits(Padding(3), "llbaa" / Flag, "dbd" / Flag, Padding(3)),
                     "page" / PageSelect, "subpage_code" / Int8ub, "reserved" / Bytes(3),
                     "allocation_length" / Int16ub, "control" / Int8ub)
#: MODE SELECT byte 1 (SPC-4 §6.9): PF page format, SP save pages
ModeSelectFlags = be_bits(Padding(3), "pf" / Flag, Padding(3), "sp" / Flag)
ModeSelect6 = Struct("opcode" / Opcode, "flags" / ModeSelectFlags, "reserved" / Bytes(2),
                     "parameter_list_length" / Int8ub, "control" / Int8ub)
ModeSelect10 = Struct("opcode" / Opcode, "flags" / ModeSelectFlags, "reserved" / Bytes(5),
                      "parameter_list_length" / Int16ub, "control" / Int8ub)

# --- INQUIRY, REQUEST SENSE, READ CAPACITY, REPORT LUNS ------------------------------------
#: INQUIRY (SPC-4 §6.4.1): CMDDT (obsolete), EVPD, page code, allocation length
Inquiry = Struct("opcode" / Opcode,
                 "flags" / be_bits("reserved" / BitsInteger(6), "cmddt" / Flag, "evpd" / Flag),
                 "page_code" / Int8ub, "allocation_length" / Int16ub, "control" / Int8ub)
#: REQUEST SENSE (SPC-4 §6.39): DESC selects descriptor-format sense
RequestSense = Struct("opcode" / Opcode, "flags" / be_bits(Padding(7), "desc" / Flag),
                      "reserved" / Bytes(2), "allocation_length" / Int8ub, "control" / Int8ub)
#: READ CAPACITY(10) (SBC-3 §5.16): LBA (with PMI), PMI
ReadCapacity10 = Struct("opcode" / Opcode, "reserved1" / Int8ub, "lba" / Int32ub,
                        "reserved2" / Bytes(2), "flags" / be_bits(Padding(7), "pmi" / Flag),
                        "control" / Int8ub)
#: READ CAPACITY(10) parameter data (SBC-3 §5.16.2)
ReadCapacity10Data = Struct("returned_lba" / Int32ub, "block_length" / Int32ub)
#: SERVICE ACTION IN(16) / READ CAPACITY(16) (SBC-3 §5.17)
ServiceActionIn16 = Struct(
    "opcode" / Opcode, "action" / be_bits(Padding(3), "service_action" / BitsInteger(5)),
    "lba" / Int64ub, "allocation_length" / Int32ub, "flags" / be_bits(Padding(7), "pmi" / Flag),
    "control" / Int8ub)
#: READ CAPACITY(16) parameter data (SBC-3 §5.17.2)
ReadCapacity16Data = Struct(
    "returned_lba" / Int64ub, "block_length" / Int32ub,
    "protection" / be_bits(Padding(4), "p_type" / BitsInteger(3), "prot_en" / Flag),
    "exponents" / be_bits("p_i_exponent" / BitsInteger(4),
                          "lbppbe" / BitsInteger(4)),
    "provisioning" / be_bits("lbpme" / Flag, "lbprz" / Flag,
                             "lowest_aligned_lba" / BitsInteger(14)),
    "reserved" / Bytes(16))
#: REPORT LUNS (SPC-4 §6.33)
ReportLuns = Struct("opcode" / Opcode, "reserved1" / Int8ub, "select_report" / Int8ub,
                    "reserved2" / Bytes(3), "allocation_length" / Int32ub, "reserved3" / Int8ub,
                    "control" / Int8ub)
#: REPORT LUNS parameter data (SPC-4 §6.33.2): list length, then 8-byte LUNs
ReportLunsHeader = Struct("lun_list_length" / Int32ub, "reserved" / Bytes(4))
Lun = Struct("lun" / Int64ub)
#: START STOP UNIT (SBC-3 §5.25)
StartStopUnit = Struct("opcode" / Opcode, "flags" / be_bits(Padding(7), "immed" / Flag),
                       "reserved" / Int8ub,
                       "modifier" / be_bits(Padding(4), "power_condition_modifier" / BitsInteger(4)),
                       "power" / be_bits("power_condition" / BitsInteger(4), Padding(1),
                                         "no_flush" / Flag, "loej" / Flag, "start" / Flag),
                       "control" / Int8ub)
#: FORMAT UNIT (SBC-3 §5.3)
FormatUnit = Struct("opcode" / Opcode,
                    "flags" / be_bits("fmtpinfo" / BitsInteger(2), "longlist" / Flag,
                                      "fmtdata" / Flag, "cmplst" / Flag,
                                      "defect_list_format" / BitsInteger(3)),
                    "vendor" / Int8ub, "obsolete" / Bytes(2), "control" / Int8ub)
#: TEST UNIT READY (SPC-4 §6.37)
TestUnitReady = Struct("opcode" / Opcode, "reserved" / Bytes(4), "control" / Int8ub)

#: The declaration of every CDB the disk implements, by operation code
CDBS: dict[int, Any] = {
    Op.TEST_UNIT_READY: TestUnitReady, Op.REQUEST_SENSE: RequestSense, Op.FORMAT_UNIT: FormatUnit,
    Op.READ_6: Rw6, Op.WRITE_6: Rw6, Op.INQUIRY: Inquiry, Op.MODE_SELECT_6: ModeSelect6,
    Op.MODE_SENSE_6: ModeSense6, Op.START_STOP_UNIT: StartStopUnit,
    Op.READ_CAPACITY_10: ReadCapacity10, Op.READ_10: Rw10, Op.WRITE_10: Rw10,
    Op.VERIFY_10: Verify10, Op.SYNCHRONIZE_CACHE_10: SyncCache10,
    Op.WRITE_SAME_10: WriteSame10, Op.UNMAP: Unmap, Op.MODE_SELECT_10: ModeSelect10,
    Op.MODE_SENSE_10: ModeSense10, Op.READ_16: Rw16, Op.WRITE_16: Rw16, Op.VERIFY_16: Verify16,
    Op.SYNCHRONIZE_CACHE_16: SyncCache16, Op.WRITE_SAME_16: WriteSame16,
    Op.SERVICE_ACTION_IN_16: ServiceActionIn16, Op.REPORT_LUNS: ReportLuns,
    Op.READ_12: Rw12, Op.WRITE_12: Rw12, Op.VERIFY_12: Verify12,
}

_GROUP_LEN = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}
assert all(_GROUP_LEN[op >> 5] == con.sizeof() for op, con in CDBS.items())


def cdb_length(opcode: int) -> int | None:
    """The CDB length the group code (bits 7:5 of the opcode) implies; None for groups 3, 6, 7."""
    return _GROUP_LEN.get(opcode >> 5)


def parse(cdb: bytes) -> Any:
    """The declaration's parse of a CDB the disk implements (a container printing its field
    names), or None for another opcode or a short CDB."""
    con = CDBS.get(cdb[0]) if cdb else None
    if con is None or len(cdb) < con.sizeof():
        return None
    return con.parse(bytes(cdb[:con.sizeof()]))


def describe(cdb: bytes) -> dict[str, Any] | None:
    """:func:`parse` as plain data (for trace events)."""
    c = parse(cdb)
    return None if c is None else to_dict(c)


# --- the fast read/write path, derived from the declarations ----------------------------------
@dataclass(slots=True)
class RW:
    """LBA, transfer length (blocks) and flag bits of a READ/WRITE/VERIFY/WRITE SAME CDB.
    (Not frozen: a frozen dataclass costs a microsecond more per command to build.)"""
    lba: int
    count: int
    fua: bool = False
    protect: int = 0      # RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7:5)
    byte1: int = 0


_RW6 = fast(Rw6, big=True)
_RW6_LBA_MASK = (1 << bits(Rw6.subcons[0].subcon)["lba"][1]) - 1
_RW10, _RW12, _RW16 = fast(Rw10, big=True), fast(Rw12, big=True), fast(Rw16, big=True)
_RWB = bits(RwFlags)
_FUA = 1 << _RWB["fua"][0]
_PROTECT_SHIFT = _RWB["protect"][0]
# struct field index of lba / flags / transfer length in each fast form (one item per field)
_I10 = {n: i for i, n in enumerate(sc.name for sc in Rw10.subcons)}
_I12 = {n: i for i, n in enumerate(sc.name for sc in Rw12.subcons)}
_I16 = {n: i for i, n in enumerate(sc.name for sc in Rw16.subcons)}
_FAST = {1: (_RW10, _I10), 2: (_RW10, _I10), 5: (_RW12, _I12), 4: (_RW16, _I16)}
_FAST = {g: (s, i["flags"], i["lba"], i["transfer_length"]) for g, (s, i) in _FAST.items()}


def rw_fields(cdb: bytes) -> RW:
    """Decode the LBA and count of a 6/10/12/16-byte read/write-family CDB (SBC-3 §5);
    also WRITE SAME, VERIFY and SYNCHRONIZE CACHE, whose fields sit in the same places."""
    group = cdb[0] >> 5
    if group == 0:
        # READ(6)/WRITE(6): 21-bit LBA, count 0 means 256 blocks (SBC-3 §5.15).
        head, count, _ = _RW6.unpack_from(cdb)
        return RW(head & _RW6_LBA_MASK, count or 256)
    s, fi, li, ci = _FAST[group]
    f = s.unpack_from(cdb)
    b1 = f[fi]
    return RW(f[li], f[ci], bool(b1 & _FUA), b1 >> _PROTECT_SHIFT, b1)


def flag_bits(flags_decl: Any) -> dict[str, int]:
    """In-place masks of a one-byte flags declaration (``flag_bits(WriteSameFlags)["unmap"]``)."""
    return {k: ((1 << w) - 1) << s for k, (s, w) in bits(flags_decl).items()}


_OFF = {op: offsets(con) for op, con in CDBS.items()}
_ALLOC = {op: (o["allocation_length"], CDBS[op].subcons[[sc.name for sc in CDBS[op].subcons]
                                                        .index("allocation_length")].sizeof())
          for op, o in _OFF.items() if "allocation_length" in o}
_PLEN = {op: (o["parameter_list_length"],
              CDBS[op].subcons[[sc.name for sc in CDBS[op].subcons]
                               .index("parameter_list_length")].sizeof())
         for op, o in _OFF.items() if "parameter_list_length" in o}
READ_CAPACITY_10_LENGTH = ReadCapacity10Data.sizeof()


def allocation_length(cdb: bytes) -> int:
    """ALLOCATION LENGTH of the data-in commands the disk emulates (from the declarations)."""
    op = cdb[0]
    if op == Op.READ_CAPACITY_10:
        return READ_CAPACITY_10_LENGTH
    try:
        off, n = _ALLOC[op]
    except KeyError:
        raise ValueError(f"no allocation length for opcode {op:#x}") from None
    return int.from_bytes(cdb[off:off + n], "big")


def parameter_list_length(cdb: bytes) -> int:
    """PARAMETER LIST LENGTH of MODE SELECT (6/10) and UNMAP."""
    op = cdb[0]
    try:
        off, n = _PLEN[op]
    except KeyError:
        raise ValueError(f"no parameter list for opcode {op:#x}") from None
    return int.from_bytes(cdb[off:off + n], "big")


__all__ = ["RW", "rw_fields", "cdb_length", "allocation_length", "parameter_list_length",
           "parse", "describe", "flag_bits", "CDBS"]
