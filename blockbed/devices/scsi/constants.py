"""SCSI constants: operation codes (SPC-4 §4.2 / SBC-3 §5), status codes
(SAM-5 §5.3) and the sense codes this disk reports (SPC-4 Annex D)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Op(enum.IntEnum):
    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    FORMAT_UNIT = 0x04
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    VERIFY_10 = 0x2F
    SYNCHRONIZE_CACHE_10 = 0x35
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    MODE_SELECT_10 = 0x55
    MODE_SENSE_10 = 0x5A
    READ_16 = 0x88
    WRITE_16 = 0x8A
    VERIFY_16 = 0x8F
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    SERVICE_ACTION_IN_16 = 0x9E     # service action 0x10: READ CAPACITY (16)
    REPORT_LUNS = 0xA0
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    VERIFY_12 = 0xAF


SAI_READ_CAPACITY_16 = 0x10


class Status(enum.IntEnum):
    """SAM-5 §5.3.1 status codes."""
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28


class SenseKey(enum.IntEnum):
    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


@dataclass(frozen=True, slots=True)
class Sense:
    """A (sense key, ASC, ASCQ) triple."""
    key: int
    asc: int
    ascq: int

    def __str__(self) -> str:
        return f"{self.key:x}/{self.asc:02x}/{self.ascq:02x}"


NO_SENSE = Sense(SenseKey.NO_SENSE, 0x00, 0x00)
INVALID_OPCODE = Sense(SenseKey.ILLEGAL_REQUEST, 0x20, 0x00)
LBA_OUT_OF_RANGE = Sense(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00)
INVALID_FIELD = Sense(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00)
LUN_NOT_SUPPORTED = Sense(SenseKey.ILLEGAL_REQUEST, 0x25, 0x00)
INVALID_PARAM = Sense(SenseKey.ILLEGAL_REQUEST, 0x26, 0x00)        # invalid field in parameter list
INVALID_PARAM_LEN = Sense(SenseKey.ILLEGAL_REQUEST, 0x1A, 0x00)    # parameter list length error
SAVING_NOT_SUPPORTED = Sense(SenseKey.ILLEGAL_REQUEST, 0x39, 0x00)
INVALID_MESSAGE = Sense(SenseKey.ILLEGAL_REQUEST, 0x49, 0x00)
READ_ERROR = Sense(SenseKey.MEDIUM_ERROR, 0x11, 0x00)              # unrecovered read error
WRITE_ERROR = Sense(SenseKey.MEDIUM_ERROR, 0x0C, 0x00)
WRITE_PROTECTED = Sense(SenseKey.DATA_PROTECT, 0x27, 0x00)
SPACE_ALLOC_FAILED = Sense(SenseKey.DATA_PROTECT, 0x27, 0x07)
MISCOMPARE_VERIFY = Sense(SenseKey.MISCOMPARE, 0x1D, 0x00)
RESET_OCCURRED = Sense(SenseKey.UNIT_ATTENTION, 0x29, 0x00)        # power on, reset or BDR occurred
CAPACITY_CHANGED = Sense(SenseKey.UNIT_ATTENTION, 0x2A, 0x09)
COMMANDS_CLEARED = Sense(SenseKey.UNIT_ATTENTION, 0x2F, 0x00)     # commands cleared by another initiator
IO_ERROR = Sense(SenseKey.ABORTED_COMMAND, 0x00, 0x06)            # I/O process terminated
