"""The PIIX IDE bus-master layouts, declared once (SFF-8038i / PIIX3 datasheet):
the per-channel bus-master registers and the Physical Region Descriptor.
:mod:`.ide` uses the fast forms derived here (:mod:`.fastform`)."""

from __future__ import annotations

from construct import BitsInteger, Flag, Int8ul, Int32ul, Padding, Struct

from .fastform import fast, le_bits, mask, offsets

#: One PRD entry (SFF-8038i §2): base address (bit 0 zero), byte count (0 = 64 KiB), EOT
Prd = Struct(
    "base" / Int32ul,
    "count" / le_bits("eot" / Flag, Padding(15), "byte_count" / BitsInteger(16)),
)
#: Bus-master command register (SFF-8038i §3.1)
BmCommand = le_bits(Padding(4), "read_from_device" / Flag, Padding(2), "start" / Flag)
#: Bus-master status register (SFF-8038i §3.2)
BmStatus = le_bits("simplex_only" / Flag, "drive1_dma_capable" / Flag, "drive0_dma_capable" / Flag,
                   Padding(2), "interrupt" / Flag, "error" / Flag, "active" / Flag)
#: One channel's bus-master register block
BmRegs = Struct("command" / BmCommand, "reserved0" / Int8ul, "status" / BmStatus,
                "reserved1" / Int8ul, "prdt" / Int32ul)

PRD = fast(Prd)
PRD_EOT = mask(Prd.subcons[1].subcon, "eot")
PRD_COUNT = mask(Prd.subcons[1].subcon, "byte_count")
BM_REGS = fast(BmRegs)
BM_PRDT_OFFSET = offsets(BmRegs)["prdt"]
BM_STATUS_OFFSET = offsets(BmRegs)["status"]
