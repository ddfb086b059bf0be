"""The SCSI declarations (devices/scsi/cdb.py, pages.py, sense.py): sizes per SBC-3 /
SPC-4, parsed values print their field names, the disk's fast forms agree with
construct's parse on random input, and the pages and sense the disk builds from the
declarations are byte for byte what it built before them
(tests/data/scsi_pages_golden.json, recorded then)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from blockbed import trace_decode as d
from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from blockbed.devices.scsi import Direction, DiskIdentity, ScsiDisk, Status
from blockbed.devices.scsi import cdb as C
from blockbed.devices.scsi import pages as P
from blockbed.devices.scsi import sense as S
from blockbed.devices.scsi.constants import Op, Sense

GOLDEN = Path(__file__).parent / "data" / "scsi_pages_golden.json"
IDENTS = [DiskIdentity(),
          DiskIdentity(serial="SER123", device_id="dev0", removable=True, tcq=False, rotation_rate=1),
          DiskIdentity(vendor="VENDORLONGER", product="X" * 20, version="1", serial="S" * 40,
                       device_id="d" * 300)]


def test_sizes_per_spec():
    for op, con in C.CDBS.items():
        assert con.sizeof() == {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[op >> 5], Op(op).name
    sizes = {S.FixedSense: 18, P.StandardInquiry: 36, P.BlockLimits: 64,
             P.BlockDeviceCharacteristics: 64, P.LogicalBlockProvisioning: 8,
             P.CachingPage: 20, P.ControlPage: 12, P.RwErrorRecoveryPage: 12,
             P.ModeHeader6: 4, P.ModeHeader10: 8, P.BlockDescriptor: 8, P.VpdHeader: 4,
             C.UnmapHeader: 8, C.UnmapDescriptor: 16, C.ReadCapacity10Data: 8,
             C.ReadCapacity16Data: 32, C.ReportLunsHeader: 8}
    for con, n in sizes.items():
        assert con.sizeof() == n, con
    # a few field positions, written out from the standards
    assert C.offsets(C.Rw16)["transfer_length"] == 10 and C.offsets(C.Rw12)["group"] == 10
    assert C.offsets(C.ModeSense10)["allocation_length"] == 7
    assert C.offsets(C.ServiceActionIn16)["allocation_length"] == 10
    assert C.offsets(C.ReportLuns)["allocation_length"] == 6
    assert C.offsets(S.FixedSense)["asc"] == 12 and C.offsets(S.FixedSense)["information"] == 3
    assert C.flag_bits(C.RwFlags)["fua"] == 0x08 and C.flag_bits(C.WriteSameFlags)["unmap"] == 0x08
    assert C.flag_bits(C.VerifyFlags)["bytchk"] == 0x06 and P.CACHING_WCE == 0x04
    assert C.flag_bits(C.ModeSelectFlags) == {"pf": 0x10, "sp": 0x01}


def test_pages_and_sense_unchanged():
    g = json.loads(GOLDEN.read_text())
    for i, alloc, h in g["inquiry"]:
        got = P.standard_inquiry(IDENTS[i], alloc) if i >= 0 else P.lun_not_present_inquiry(alloc)
        assert got.hex() == h, (i, alloc)
    for i, page, disc, h in g["vpd"]:
        v = P.vpd_page(IDENTS[i], page, 1 << 20, disc)
        assert (None if v is None else v.hex()) == h, (i, page)
    for page, pc, wce, dwce, h in g["mode"]:
        assert P.mode_page(page, pc, wce, dwce).hex() == h
    for key, info, h in g["sense"]:
        assert S.fixed_sense(Sense(key, 0x24, 0x01), info).hex() == h


def test_parsed_values_print_field_names():
    w = C.parse(struct.pack(">BBIBHB", 0x2A, 0x08, 2048, 0, 8, 0))
    assert w.opcode == "WRITE_10" and w.flags.fua and w.lba == 2048 and w.transfer_length == 8
    assert "fua = True" in str(w) and "WRITE_10" in str(w)
    inq = P.StandardInquiry.parse(P.standard_inquiry(IDENTS[0], 36))
    assert inq.byte3.hisup and inq.byte3.response_data_format == 2 and inq.vendor == b"QEMU    "
    assert inq.byte7.cmdque and inq.byte7.sync and "cmdque = True" in str(inq)
    caching = P.CachingPage.parse(P.mode_page(P.MODE_PAGE_CACHING, 0, True, False))
    assert caching.flags.wce and caching.header.byte0.page_code == 8 and "wce = True" in str(caching)
    sense = S.FixedSense.parse(S.fixed_sense(Sense(5, 0x21, 0), info=77))
    assert sense.byte0.valid and sense.byte0.response_code == "CURRENT_FIXED"
    assert sense.byte2.sense_key == "ILLEGAL_REQUEST" and sense.information == 77
    assert "ILLEGAL_REQUEST" in str(sense)
    bl = P.BlockLimits.parse(P.vpd_page(IDENTS[0], 0xB0, 1000, True))
    assert bl.flags.wsnz and bl.max_unmap_lba_count == P.MAX_UNMAP_BLOCKS
    lbp = P.LogicalBlockProvisioning.parse(P.vpd_page(IDENTS[0], 0xB2, 1000, True))
    assert lbp.flags.lbpu and lbp.type.provisioning_type == "THIN"


_RW_OPS = [Op.READ_6, Op.WRITE_6, Op.READ_10, Op.WRITE_10, Op.READ_12, Op.WRITE_12, Op.READ_16,
           Op.WRITE_16, Op.VERIFY_10, Op.VERIFY_16, Op.WRITE_SAME_10, Op.WRITE_SAME_16,
           Op.SYNCHRONIZE_CACHE_10, Op.SYNCHRONIZE_CACHE_16]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_RW_OPS), st.binary(min_size=15, max_size=15))
def test_rw_fast_form_agrees_with_construct(op, rest):
    n = C.cdb_length(op)
    cdb = bytes([op]) + rest[:n - 1]
    rw = C.rw_fields(cdb)
    c = C.parse(cdb)
    if op in (Op.READ_6, Op.WRITE_6):
        assert (rw.lba, rw.count) == (c.head.lba, c.transfer_length or 256)
        return
    assert rw.lba == c.lba and rw.count == c.transfer_length
    assert rw.byte1 == cdb[1]
    assert C.CDBS[op].subcons[1].build(c.flags)[0] == cdb[1] & _declared(op)
    if "fua" in c.flags:
        assert rw.fua == c.flags.fua and rw.protect == c.flags.protect


def _declared(op) -> int:
    return sum(C.flag_bits(C.CDBS[op].subcons[1].subcon).values())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Op.INQUIRY, Op.REQUEST_SENSE, Op.MODE_SENSE_6, Op.MODE_SENSE_10,
                        Op.SERVICE_ACTION_IN_16, Op.REPORT_LUNS, Op.MODE_SELECT_6,
                        Op.MODE_SELECT_10, Op.UNMAP]),
       st.binary(min_size=15, max_size=15))
def test_length_fields_agree_with_construct(op, rest):
    cdb = bytes([op]) + rest[:C.cdb_length(op) - 1]
    c = C.parse(cdb)
    if "allocation_length" in c:
        assert C.allocation_length(cdb) == c.allocation_length
    else:
        assert C.parameter_list_length(cdb) == c.parameter_list_length


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 15), st.integers(0, 255), st.integers(0, 255),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_sense_fast_form_round_trip(key, asc, ascq, info):
    raw = S.fixed_sense(Sense(key, asc, ascq), info)
    c = S.FixedSense.parse(raw)
    assert (int(c.byte2.sense_key), c.asc, c.ascq) == (key, asc, ascq)
    assert c.byte0.valid == (info is not None) and c.information == (info or 0)
    assert c.additional_sense_length == 10 and S.FixedSense.build(c) == raw
    assert S.parse_fixed_sense(raw) == Sense(key, asc, ascq)


def _disk():
    be = BlockBackend(MemoryDriver(bytes(4096 * 512)))
    return ScsiDisk(be, DiskIdentity(), power_on_ua=False), be


def _run(disk, cdb, out=b""):
    req = disk.request(cdb)
    data = b""
    if req.status is None:
        buf = bytearray(out if req.direction is Direction.OUT else req.length)
        (req.write if req.direction is Direction.OUT else req.read)(0, memoryview(buf))
        data = bytes(buf)
        req.finish()
    return req.status, data


def test_disk_takes_parameter_lists_built_from_the_declarations():
    disk, be = _disk()
    discarded = []
    be.discard = lambda off, n: discarded.append((off, n)) or 0
    plist = C.UnmapParameterList.build(dict(
        header=dict(data_length=6 + 16, block_descriptor_data_length=16, reserved=bytes(4)),
        descriptors=[dict(lba=0, blocks=8, reserved=bytes(4))]))
    cdb = C.Unmap.build(dict(opcode="UNMAP", flags=dict(anchor=False), reserved=bytes(4),
                             group=dict(group_number=0), parameter_list_length=len(plist),
                             control=0))
    assert _run(disk, cdb, plist)[0] == Status.GOOD and discarded == [(0, 8 * 512)]
    # MODE SELECT(10) turning the write cache off, then MODE SENSE(10) reading it back
    page = P.mode_page(P.MODE_PAGE_CACHING, 0, False, True)
    hdr = P.ModeHeader10.build(dict(mode_data_length=0, medium_type=0,
                                    device_specific=dict(wp=False, dpofua=False),
                                    byte4=dict(longlba=False), reserved=0,
                                    block_descriptor_length=0))
    sel = C.ModeSelect10.build(dict(opcode="MODE_SELECT_10", flags=dict(pf=True, sp=False),
                                    reserved=bytes(5), parameter_list_length=len(hdr + page),
                                    control=0))
    assert _run(disk, sel, hdr + page)[0] == Status.GOOD and not be.write_cache_enabled
    sense = C.ModeSense10.build(dict(opcode="MODE_SENSE_10", flags=dict(llbaa=False, dbd=True),
                                     page=dict(pc=0, page_code=8), subpage_code=0,
                                     reserved=bytes(3), allocation_length=255, control=0))
    status, data = _run(disk, sense)
    h = P.ModeHeader10.parse(data)
    assert status == Status.GOOD and h.block_descriptor_length == 0 and h.device_specific.dpofua
    assert not P.CachingPage.parse(data[P.MODE_HEADER_10_LEN:]).flags.wce
    rc = C.ServiceActionIn16.build(dict(opcode="SERVICE_ACTION_IN_16",
                                        action=dict(service_action=0x10), lba=0,
                                        allocation_length=32, flags=dict(pmi=False), control=0))
    cap = C.ReadCapacity16Data.parse(_run(disk, rc)[1])
    assert cap.returned_lba == 4095 and cap.block_length == 512 and cap.provisioning.lbpme


def test_trace_decoder():
    x = d.scsi_cdb(struct.pack(">BBQIBB", 0x93, 0x08, 100, 8, 0, 0))
    assert x["opcode"] == "WRITE SAME(16)" and x["lba"] == 100 and x["blocks"] == 8
    assert x["fields"]["flags"]["unmap"] is True and d.op_kind(x["opcode"]) == "write_zeroes"
    r6 = d.scsi_cdb(bytes([0x08, 0x01, 0x02, 0x03, 0x00, 0x00]))
    assert r6["opcode"] == "READ(6)" and r6["lba"] == 0x10203 and r6["blocks"] == 256
    assert d.scsi_cdb(bytes([0xC0] + [0] * 9)) == {"opcode": "0xc0", "opcode_code": 0xC0}
    inq = d.scsi_cdb(bytes([0x12, 0x01, 0xB0, 0x00, 0x40, 0x00]))
    assert inq["opcode"] == "INQUIRY" and inq["fields"]["flags"]["evpd"] is True
    assert inq["fields"]["page_code"] == 0xB0 and inq["fields"]["allocation_length"] == 64
