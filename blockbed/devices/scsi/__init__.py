"""SCSI block device (SBC-3/SPC-4), transport-independent: a CDB in, data, status and sense out.

- :mod:`.constants`: opcodes, status, sense codes
- :mod:`.sense`: fixed-format sense data
- :mod:`.cdb`: CDB lengths and fields
- :mod:`.pages`: INQUIRY, VPD and mode pages
- :mod:`.disk`: :class:`ScsiDisk` and :class:`ScsiRequest`
"""

from .constants import Op, Sense, SenseKey, Status
from .disk import BLOCK_SIZE, Direction, DiskIdentity, ScsiDisk, ScsiRequest
from .sense import fixed_sense, parse_fixed_sense

__all__ = ["Op", "Sense", "SenseKey", "Status", "BLOCK_SIZE", "Direction", "DiskIdentity",
           "ScsiDisk", "ScsiRequest", "fixed_sense", "parse_fixed_sense"]
