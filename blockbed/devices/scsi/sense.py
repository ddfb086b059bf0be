"""Fixed-format sense data (SPC-4 §4.5.3), declared once with ``construct``.

The disk reports errors as CHECK CONDITION plus 18 bytes of fixed-format
sense: response code 0x70 (current error), the sense key, the additional
sense length (10), ASC/ASCQ; with VALID set the INFORMATION field carries
the LBA of the failure.  The descriptor format (§4.5.2) is not offered:
REQUEST SENSE with DESC=1 is an INVALID FIELD IN CDB, as SPC-4 §6.39 allows.
"""

from __future__ import annotations

from construct import BitsInteger, Enum, Flag, Int8ub, Int32ub, Struct

from ..fastform import be_bits, bits, fast, offsets
from .constants import Sense, SenseKey

#: RESPONSE CODE (SPC-4 §4.5.1): fixed / descriptor format, current / deferred
ResponseCode = Enum(BitsInteger(7), CURRENT_FIXED=0x70, DEFERRED_FIXED=0x71,
                    CURRENT_DESCRIPTOR=0x72, DEFERRED_DESCRIPTOR=0x73)
SenseKeyField = Enum(BitsInteger(4), **{k.name: k.value for k in SenseKey})

#: Fixed-format sense data (SPC-4 §4.5.3, table 48)
FixedSense = Struct(
    "byte0" / be_bits("valid" / Flag, "response_code" / ResponseCode),
    "obsolete" / Int8ub,
    "byte2" / be_bits("filemark" / Flag, "eom" / Flag, "ili" / Flag, "sdat_ovfl" / Flag,
                      "sense_key" / SenseKeyField),
    "information" / Int32ub,
    "additional_sense_length" / Int8ub,
    "command_specific_information" / Int32ub,
    "asc" / Int8ub, "ascq" / Int8ub,
    "fru_sks" / be_bits("fru_code" / BitsInteger(8), "sksv" / Flag,
                        "sense_key_specific" / BitsInteger(23)),
)

FIXED_SENSE_LEN = FixedSense.sizeof()
_ADDL = offsets(FixedSense)["additional_sense_length"] + 1
_FAST = fast(FixedSense, big=True)
_B0 = bits(FixedSense.subcons[0].subcon)
_B2 = bits(FixedSense.subcons[2].subcon)
_VALID = 1 << _B0["valid"][0]
_RC_MASK = (1 << _B0["response_code"][1]) - 1
_KEY_MASK = (1 << _B2["sense_key"][1]) - 1
_CURRENT = ResponseCode.encmapping["CURRENT_FIXED"]
_FIXED_CODES = (ResponseCode.encmapping["CURRENT_FIXED"], ResponseCode.encmapping["DEFERRED_FIXED"])
_I = {sc.name: i for i, sc in enumerate(FixedSense.subcons)}   # one struct item per field


def fixed_sense(s: Sense, info: int | None = None) -> bytes:
    """Build fixed-format sense bytes for ``s``; ``info`` fills the INFORMATION field (VALID=1)."""
    return _FAST.pack(_CURRENT | (_VALID if info is not None else 0), 0, s.key & _KEY_MASK,
                      (info or 0) & 0xFFFFFFFF, FIXED_SENSE_LEN - _ADDL, 0, s.asc, s.ascq, 0)


def parse_fixed_sense(b: bytes) -> Sense:
    """The key/ASC/ASCQ of fixed-format sense bytes (for tests and tools)."""
    if len(b) < _I["ascq"] + 1 or (b[0] & _RC_MASK) not in _FIXED_CODES:
        raise ValueError(f"not fixed-format sense data: {bytes(b[:4]).hex()}")
    v = _FAST.unpack(bytes(b[:FIXED_SENSE_LEN]).ljust(FIXED_SENSE_LEN, b"\0"))
    return Sense(v[_I["byte2"]] & _KEY_MASK, v[_I["asc"]], v[_I["ascq"]])
