"""CDB decoding (SPC-4 §4.2): lengths by group code and the LBA/transfer
length fields of the SBC-3 read/write family.

Decoding never raises on guest input: :func:`cdb_length` returns None for a
reserved group (the caller answers INVALID COMMAND OPERATION CODE), and
:func:`rw_fields` reads the fields of a CDB already known to be long enough.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import Op

_GROUP_LEN = {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}


def cdb_length(opcode: int) -> int | None:
    """The CDB length the group code (bits 7:5 of the opcode) implies; None for groups 3, 6, 7."""
    return _GROUP_LEN.get(opcode >> 5)


@dataclass(frozen=True, slots=True)
class RW:
    """LBA, transfer length (blocks) and flag bits of a READ/WRITE/VERIFY/WRITE SAME CDB."""
    lba: int
    count: int
    fua: bool = False
    protect: int = 0      # RDPROTECT/WRPROTECT/VRPROTECT (byte 1 bits 7:5)
    byte1: int = 0


def rw_fields(cdb: bytes) -> RW:
    """Decode the LBA and count of a 6/10/12/16-byte read/write-family CDB (SBC-3 §5)."""
    op = cdb[0]
    group = op >> 5
    if group == 0:
        # READ(6)/WRITE(6): 21-bit LBA, count 0 means 256 blocks (SBC-3 §5.13).
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        count = cdb[4] or 256
        return RW(lba, count)
    b1 = cdb[1]
    fua = bool(b1 & 0x08)
    protect = b1 >> 5
    if group in (1, 2):
        lba, = struct.unpack_from(">I", cdb, 2)
        count, = struct.unpack_from(">H", cdb, 7)
    elif group == 5:
        lba, count = struct.unpack_from(">II", cdb, 2)
    else:  # group 4, 16-byte
        lba, count = struct.unpack_from(">QI", cdb, 2)
    return RW(lba, count, fua, protect, b1)


def allocation_length(cdb: bytes) -> int:
    """ALLOCATION LENGTH of the data-in commands the disk emulates."""
    op = cdb[0]
    if op in (Op.INQUIRY,):
        return struct.unpack_from(">H", cdb, 3)[0]
    if op in (Op.REQUEST_SENSE, Op.MODE_SENSE_6):
        return cdb[4]
    if op == Op.MODE_SENSE_10:
        return struct.unpack_from(">H", cdb, 7)[0]
    if op in (Op.REPORT_LUNS, Op.SERVICE_ACTION_IN_16):
        return struct.unpack_from(">I", cdb, 6 if op == Op.REPORT_LUNS else 10)[0]
    if op == Op.READ_CAPACITY_10:
        return 8
    raise ValueError(f"no allocation length for opcode {op:#x}")


def parameter_list_length(cdb: bytes) -> int:
    """PARAMETER LIST LENGTH of MODE SELECT (6/10) and UNMAP."""
    op = cdb[0]
    if op == Op.MODE_SELECT_6:
        return cdb[4]
    if op in (Op.MODE_SELECT_10, Op.UNMAP):
        return struct.unpack_from(">H", cdb, 7)[0]
    raise ValueError(f"no parameter list for opcode {op:#x}")
