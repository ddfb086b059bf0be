"""Fixed-format sense data (SPC-4 §4.5.3).

The disk reports errors as CHECK CONDITION plus 18 bytes of fixed-format
sense: response code 0x70 (current error), the sense key in byte 2, the
additional sense length (10) in byte 7, ASC/ASCQ in bytes 12/13.  The
descriptor format (§4.5.2) is not offered: REQUEST SENSE with DESC=1 is an
INVALID FIELD IN CDB, as SPC-4 §6.39 allows.
"""

from __future__ import annotations

from .constants import Sense

FIXED_SENSE_LEN = 18


def fixed_sense(s: Sense, info: int | None = None) -> bytes:
    """Build fixed-format sense bytes for ``s``; ``info`` fills the INFORMATION field (VALID=1)."""
    b = bytearray(FIXED_SENSE_LEN)
    b[0] = 0x70
    b[2] = s.key & 0x0F
    b[7] = FIXED_SENSE_LEN - 8
    b[12] = s.asc
    b[13] = s.ascq
    if info is not None:
        b[0] |= 0x80
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(b)


def parse_fixed_sense(b: bytes) -> Sense:
    """The key/ASC/ASCQ of fixed-format sense bytes (for tests and tools)."""
    if len(b) < 14 or (b[0] & 0x7F) not in (0x70, 0x71):
        raise ValueError(f"not fixed-format sense data: {bytes(b[:4]).hex()}")
    return Sense(b[2] & 0x0F, b[12], b[13])
