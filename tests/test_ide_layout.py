"""The IDE bus-master declarations (blockbed/devices/ide_layout.py) and the fast forms
ide.py derives from them (SFF-8038i)."""

import struct


def test_ide_prd_fast_form_is_derived_and_matches_sff8038i():
    from blockbed.devices import ide, ide_layout as I
    assert I.PRD.format == "<LI" and I.PRD.size == 8
    assert I.PRD_EOT == 0x80000000 and I.PRD_COUNT == 0xFFFF
    assert I.BM_REGS.size == 8 and I.BM_PRDT_OFFSET == 4
    assert ide._PRD is I.PRD
    p = I.Prd.parse(struct.pack("<II", 0x2000, 0x80000000 | 512))
    assert p.base == 0x2000 and p.count.eot and p.count.byte_count == 512
