"""The AHCI and ATA declarations (blockbed/devices/ahci_layout.py, devices/ata/layout.py):
the register maps and memory structures have AHCI 1.3's offsets and bit positions, the
FISes SATA 3.x's byte layout, IDENTIFY ATA8-ACS's word numbers; every fast form the
HBA and the drive use agrees with construct's parse on random input; parsed values are
what a guest wrote (qtest); IDENTIFY is byte for byte what the builder produced before
the declarations existed (tests/data/ata_identify_golden.json, recorded then)."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from libqos_ata import AhciQ, h2d

from blockbed import trace, trace_decode as d
from blockbed.devices import ahci as A, ahci_layout as L
from blockbed.devices.ata import identify as I, layout as AL, regs as R
from blockbed.devices.fastform import bits, to_dict

GOLDEN = Path(__file__).parent / "data" / "ata_identify_golden.json"
SEC = 512

# AHCI 1.3 §3.1 and §3.3 register maps, written out independently.
GENERIC = {"CAP": 0x00, "GHC": 0x04, "IS": 0x08, "PI": 0x0C, "VS": 0x10, "CCC_CTL": 0x14,
           "CCC_PORTS": 0x18, "EM_LOC": 0x1C, "EM_CTL": 0x20, "CAP2": 0x24, "BOHC": 0x28}
PORT = {"P_CLB": 0x00, "P_CLBU": 0x04, "P_FB": 0x08, "P_FBU": 0x0C, "P_IS": 0x10, "P_IE": 0x14,
        "P_CMD": 0x18, "P_TFD": 0x20, "P_SIG": 0x24, "P_SSTS": 0x28, "P_SCTL": 0x2C,
        "P_SERR": 0x30, "P_SACT": 0x34, "P_CI": 0x38, "P_SNTF": 0x3C, "P_FBS": 0x40}
ALL = [L.Cap, L.Ghc, L.Vs, L.CccCtl, L.EmLoc, L.EmCtl, L.Cap2, L.Bohc, L.GenericHostControl,
       L.PxClb, L.PxFb, L.PxIs, L.PxIe, L.PxCmd, L.PxTfd, L.PxSig, L.PxSsts, L.PxSctl, L.PxSerr,
       L.PxSntf, L.PxFbs, L.PxDevslp, L.PortRegs, L.RegH2dFis, L.RegD2hFis, L.PioSetupFis,
       L.DmaSetupFis, L.SetDeviceBitsFis, L.ReceivedFis, L.CommandHeader, L.PrdEntry, L.SataCap,
       L.IndexDataPair, AL.Status, AL.Error, AL.Device, AL.DeviceControl, AL.NcqCount,
       AL.XferMode, AL.CommandBlock, AL.OutputBlock, AL.DsmRange, AL.NcqErrorLog, AL.Identify]


def test_register_offsets_match_ahci_1_3():
    for name, off in {**GENERIC, **PORT}.items():
        assert getattr(A, name) == getattr(L, name) == off, name
    assert (A.PORT_BASE, A.PORT_SIZE) == (0x100, 0x80) and L.GenericHostControl.sizeof() == 0x2C
    assert L.HbaRegs.sizeof(ports=32) == 0x1100


def test_register_bits_match_ahci_1_3():
    assert (A.CAP_S64A, A.CAP_SNCQ, A.CAP_SCLO, A.CAP_SAM, A.CAP_ISS_GEN1) == \
        (1 << 31, 1 << 30, 1 << 24, 1 << 18, 1 << 20)
    assert bits(L.Cap)["ncs"] == (8, 5) and bits(L.Cap)["np"] == (0, 5)
    assert (A.GHC_HR, A.GHC_IE, A.GHC_AE, A.VERSION_1_3) == (1, 2, 1 << 31, 0x00010300)
    assert (A.IS_DHRS, A.IS_PSS, A.IS_DSS, A.IS_SDBS, A.IS_UFS, A.IS_DPS, A.IS_PCS) == \
        (1, 2, 4, 8, 16, 32, 64)
    assert (A.IS_OFS, A.IS_INFS, A.IS_IFS, A.IS_HBDS, A.IS_HBFS, A.IS_TFES) == \
        (1 << 24, 1 << 26, 1 << 27, 1 << 28, 1 << 29, 1 << 30)
    assert A.IE_MASK == 0x7DC0007F                 # all enables but CPDE and DMPE
    assert A.IS_RWC == 0xFD8000AF                  # all status bits but PRCS, PCS, UFS
    assert (A.CMD_ST, A.CMD_SUD, A.CMD_POD, A.CMD_CLO, A.CMD_FRE, A.CMD_FR, A.CMD_CR) == \
        (1, 2, 4, 8, 16, 1 << 14, 1 << 15)
    assert (A.CMD_ATAPI, A.CMD_DLAE, A.CMD_CCS, A.CMD_CCS_SHIFT) == (1 << 24, 1 << 25, 0x1F00, 8)
    assert (A.SERR_ERR_P, A.SERR_DIAG_X, A.SSTS_UP) == (1 << 10, 1 << 26, 0x113)
    assert (A.SCTL_DET, A.SCTL_DET_COMRESET, A.SCTL_RW) == (0xF, 1, 0xFFF)
    assert (A.CLB_MASK, A.FB_MASK, A.TFD_ERR_SHIFT, A.TFD_STS) == (0xFFFFFC00, 0xFFFFFF00, 8, 0xFF)


def test_memory_structures_match_ahci_1_3():
    # §4.2.1 received-FIS area, §4.2.2 command header, §4.2.3 command table / PRD
    assert (A.RFIS_DSFIS, A.RFIS_PSFIS, A.RFIS_RFIS, A.RFIS_SDBFIS) == (0x00, 0x20, 0x40, 0x58)
    assert L.ReceivedFis.sizeof() == 256
    assert A.HDR.size == A.HDR_SIZE == 32 and A.HDR_PRDBC == 4 and A.CTBA_MASK == 0xFFFFFF80
    assert bits(L.CmdHeaderInfo) == {"prdtl": (16, 16), "pmp": (12, 4), "c": (10, 1), "b": (9, 1),
                                     "r": (8, 1), "p": (7, 1), "w": (6, 1), "a": (5, 1),
                                     "cfl": (0, 5)}
    assert (A.CT_CFIS_SIZE, A.CT_PRDT, A.PRD_SIZE) == (64, 0x80, 16)
    assert (A.PRD_I, A.PRD_DBC) == (1 << 31, 0x3FFFFF) and A.PRD.format == "<Q4xI"
    assert L.CommandTable.sizeof(prdtl=3) == 0x80 + 3 * 16


def test_fis_layouts_match_sata():
    # SATA 3.x §10.5: FIS type codes and sizes (bytes)
    assert dict(L.FisType.encmapping) == {
        "REG_H2D": 0x27, "REG_D2H": 0x34, "DMA_ACTIVATE": 0x39, "DMA_SETUP": 0x41, "DATA": 0x46,
        "BIST_ACTIVATE": 0x58, "PIO_SETUP": 0x5F, "SET_DEVICE_BITS": 0xA1}
    assert [f.size for f in (A.H2D, A.D2H, A.PIO_SETUP, A.DMA_SETUP, A.SDB)] == [20, 20, 20, 28, 8]
    from blockbed.devices.fastform import offsets
    h = offsets(L.RegH2dFis)
    assert (h["regs.command"], h["regs.features"], h["regs.lba_low"], h["regs.device"],
            h["regs.lba_low_exp"], h["regs.features_exp"], h["regs.count"], h["regs.control"],
            h["auxiliary"]) == (2, 3, 4, 7, 8, 11, 12, 15, 16)
    p = offsets(L.PioSetupFis)
    assert (p["regs.status"], p["regs.count_exp"], p["e_status"], p["transfer_count"]) == (2, 13, 15, 16)
    m = offsets(L.DmaSetupFis)
    assert (m["buffer_id"], m["buffer_offset"], m["transfer_count"]) == (4, 16, 20)
    assert offsets(L.SetDeviceBitsFis)["sactive"] == 4 and A.SDB_STATUS == 0x77
    assert (A.H2D_C, A.D2H_I, A.PIO_I, A.PIO_D, A.DMA_A, A.DMA_D, A.SDB_I) == \
        (0x80, 0x40, 0x40, 0x20, 0x80, 0x20, 0x40)
    assert A.CFL_MIN == 5


def test_ata_registers_match_ata8_acs():
    assert (R.ST_BSY, R.ST_DRDY, R.ST_DF, R.ST_DSC, R.ST_DRQ, R.ST_ERR) == (0x80, 0x40, 0x20, 0x10, 8, 1)
    assert (R.ER_ICRC, R.ER_UNC, R.ER_IDNF, R.ER_ABRT, R.ER_AMNF) == (0x80, 0x40, 0x10, 4, 1)
    assert (R.DEV_FUA, R.DEV_LBA, R.DEV_DEV, R.DEV_HEAD) == (0x80, 0x40, 0x10, 0x0F)
    assert (R.CTL_HOB, R.CTL_SRST, R.CTL_NIEN) == (0x80, 4, 2)
    assert (R.NCQ_TAG, R.NCQ_TAG_SHIFT) == (0xF8, 3)
    assert AL.CommandBlock.sizeof() == 14 and AL.OutputBlock.sizeof() == 12


def test_identify_word_numbers_match_ata8_acs():
    w = AL.IDENTIFY_WORD
    expect = {"general": 0, "cylinders": 1, "heads": 3, "sectors_per_track": 6, "serial_number": 10,
              "firmware_revision": 23, "model_number": 27, "max_multiple": 47, "capabilities": 49,
              "valid": 53, "cur_capacity": 57, "multiple": 59, "lba28_sectors": 60, "mwdma": 63,
              "pio_modes": 64, "queue_depth": 75, "sata_caps": 76, "major_version": 80,
              "supported1": 82, "supported2": 83, "supported3": 84, "enabled1": 85,
              "enabled2": 86, "enabled3": 87, "udma": 88, "reset_result": 93,
              "lba48_sectors": 100, "dsm_max_blocks": 105, "sector_size": 106,
              "logical_sector_words": 117, "dsm": 169, "rotation_rate": 217, "integrity": 255}
    assert {k: w[k] for k in expect} == expect
    assert AL.Identify.sizeof() == 512 and AL.IDENTIFY_WORDS.size == 512
    assert AL.IDENTIFY_STRINGS == {"serial_number": (20, 20), "firmware_revision": (46, 8),
                                   "model_number": (54, 40)}
    assert bits(AL.IdCmdSet2)["lba48"] == (10, 1) and bits(AL.IdCmdSet3)["fua_ext"] == (6, 1)
    assert bits(AL.IdSataCaps)["ncq"] == (8, 1) and bits(AL.IdCmdSet1)["write_cache"] == (5, 1)


def _identify_cases():
    for sec, ncq, trim, wce, rla, gpl, ls, ps, mc, mw, ud in itertools.product(
            [2048, 1 << 30, 1 << 40], [0, 32], [True, False], [True, False], [True, False],
            [True, False], [512, 4096], [512, 4096], [0, 16], [None, 2], [None, 5]):
        if ps >= ls:
            yield I.IdentifyState(sectors=sec, model="QEMU HARDDISK", serial="QM00005",
                                  firmware="2.5+", ncq_depth=ncq, trim=trim, write_cache_enabled=wce,
                                  read_look_ahead=rla, gpl=gpl, logical_sector_size=ls,
                                  physical_sector_size=ps, multiple_count=mc, mwdma_mode=mw,
                                  udma_mode=ud)


def test_identify_unchanged_by_the_declarations():
    """Every configuration gives the bytes the hand-written builder gave (hashes recorded then)."""
    golden = json.loads(GOLDEN.read_text())
    got = [hashlib.sha256(I.build_identify(s)).hexdigest()[:16] for s in _identify_cases()]
    assert len(got) == len(golden) == 2304 and got == golden


def test_identify_parses_as_the_drive_state():
    s = I.IdentifyState(sectors=(1 << 33) + 5, model="BLOCKBED DISK", serial="SER1", firmware="1.0",
                        ncq_depth=32, write_cache_enabled=False, logical_sector_size=512,
                        physical_sector_size=4096, multiple_count=8)
    raw = I.build_identify(s)
    p = AL.Identify.parse(raw)
    assert p.lba48_sectors == s.sectors and p.lba28_sectors == I.LBA28_MAX
    assert p.queue_depth == 31 and p.sata_caps.ncq and p.sata_caps.gen1
    assert p.supported1.write_cache and not p.enabled1.write_cache and p.enabled1.look_ahead
    assert p.supported2.lba48 and p.enabled2.lba48 and p.supported3.fua_ext and p.enabled3.gpl
    assert p.sector_size.multiple_logical and p.sector_size.log2_per_physical == 3
    assert p.multiple.valid and p.multiple.count == 8 and p.max_multiple.max == 16
    assert I.ata_string_decode(p.model_number) == "BLOCKBED DISK" and p.dsm.trim
    assert p.integrity.signature == 0xA5 and sum(raw) % 256 == 0
    assert AL.Identify.build(p) == raw


# --- fast forms agree with construct's parse -----------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_command_header_fast_form_agrees(raw):
    info, prdbc, ctba, ctbau = A.HDR.unpack(raw)
    p = L.CommandHeader.parse(raw)
    assert (info & A.HDR_CFL, info >> A.HDR_PRDTL_SHIFT, prdbc) == (p.info.cfl, p.info.prdtl, p.prdbc)
    assert bool(info & L.mask(L.CmdHeaderInfo, "w")) == p.info.w
    assert (ctbau << 32) | (ctba & A.CTBA_MASK) == d.ahci_command_header(raw)["ctba"]
    assert d.ahci_command_header(raw)["ctba"] == (p.ctbau << 32) | (p.ctba.ctba_31_7 << 7)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_prd_fast_form_agrees(raw):
    dba, dbc = A.PRD.unpack(raw)
    p = L.PrdEntry.parse(raw)
    assert dba == p.dba and dbc & A.PRD_DBC == p.dbc.dbc and bool(dbc & A.PRD_I) == p.dbc.i


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_h2d_fast_form_agrees(raw):
    v = A.H2D.unpack(raw)
    p = L.RegH2dFis.parse(raw)
    r = p.regs
    assert v[0] == raw[0] and bool(v[1] & A.H2D_C) == p.flags.c
    assert (v[2], v[3], v[11], v[12], v[13]) == (r.command, r.features, r.features_exp, r.count,
                                                 r.count_exp)
    lba = v[4] | v[5] << 8 | v[6] << 16 | v[8] << 24 | v[9] << 32 | v[10] << 40
    f = d.h2d_fis(raw)
    assert f["lba"] == lba == int.from_bytes(raw[4:7], "little") | int.from_bytes(raw[8:11], "little") << 24
    assert f["device"] == v[7] == raw[7] and f["control"] == v[15] == raw[15]
    assert bool(v[15] & A.CTL_SRST) == r.control.srst and v[16] == p.auxiliary


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, (1 << 48) - 1),
       st.integers(0, 255), st.integers(0, 0xFFFF), st.booleans())
def test_d2h_fast_form_builds_what_construct_parses(status, error, lba, device, count, i):
    raw = A.D2H.pack(A.FIS_REG_D2H, A.D2H_I if i else 0, status, error, lba & 0xFF, lba >> 8 & 0xFF,
                     lba >> 16 & 0xFF, device, lba >> 24 & 0xFF, lba >> 32 & 0xFF,
                     lba >> 40 & 0xFF, count & 0xFF, count >> 8 & 0xFF)
    p = L.RegD2hFis.parse(raw)
    assert p.fis_type == "REG_D2H" and p.flags.i == i
    assert AL.Status.build(p.regs.status)[0] == status and AL.Error.build(p.regs.error)[0] == error
    assert AL.Device.build(p.regs.device)[0] == device
    assert p.regs.count | p.regs.count_exp << 8 == count
    assert (p.regs.lba_low | p.regs.lba_mid << 8 | p.regs.lba_high << 16 | p.regs.lba_low_exp << 24
            | p.regs.lba_mid_exp << 32 | p.regs.lba_high_exp << 40) == lba


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF), st.integers(0, 31),
       st.integers(0, 0xFFFFFFFF))
def test_sdb_pio_dma_fast_forms(status, error, done, tag, nbytes):
    p = L.SetDeviceBitsFis.parse(A.SDB.pack(A.FIS_SDB, A.SDB_I, status & A.SDB_STATUS, error, done))
    assert p.fis_type == "SET_DEVICE_BITS" and p.flags.i and not p.flags.n and p.sactive == done
    assert p.status.status_hi << 4 | p.status.status_lo == status & 0x77
    m = L.DmaSetupFis.parse(A.DMA_SETUP.pack(A.FIS_DMA_SETUP, A.DMA_A, tag, 0, nbytes))
    assert m.flags.a and not m.flags.d and m.buffer_id == tag and m.transfer_count == nbytes
    ps = L.PioSetupFis.parse(A.PIO_SETUP.pack(A.FIS_PIO_SETUP, A.PIO_D, status, error, *[0] * 9,
                                              status, nbytes & 0xFFFF))
    assert ps.flags.d and AL.Status.build(ps.e_status)[0] == status
    assert ps.transfer_count == nbytes & 0xFFFF


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=256, max_size=256))
def test_every_declaration_round_trips(raw):
    """Every declared field survives parse and build; reserved bits (Padding) read as 0."""
    for con in ALL:
        n = con.sizeof()
        keep = con.build(con.parse(b"\xff" * n))
        chunk = (raw * 3)[:n]
        assert con.build(con.parse(chunk)) == bytes(a & b for a, b in zip(chunk, keep)), con
    t = raw[:0x80] + raw[:32]
    assert L.CommandTable.build(L.CommandTable.parse(t, prdtl=2), prdtl=2)[0x50:0x80] == bytes(48)


def test_register_keep_masks_are_the_declared_bits():
    # the reserved bits of a few registers, from AHCI 1.3 §3: they read back as 0
    def keep(con):
        return int.from_bytes(con.build(con.parse(b"\xff" * 4)), "little")
    assert keep(L.Ghc) == 0x80000007 and keep(L.PxIs) == 0xFDC000FF and keep(L.PxTfd) == 0xFFFF
    assert keep(L.PxCmd) == 0xFFFFFF1F and keep(L.PxSerr) == 0x07FF0F03 and keep(L.PxClb) == 0xFFFFFC00


# --- what a guest wrote, parsed --------------------------------------------------------------
def test_decoded_values_equal_what_the_guest_wrote():
    q = AhciQ()
    q.port_start(0)
    buf = q.alloc(2 * SEC)
    q.qt.memwrite(buf, bytes(range(256)) * 4)
    fis = h2d(0x61, lba=0x123456789A, count=5 << 3, features=2, device=0xC0)   # WRITE FPDMA QUEUED
    ct = q.build(0, 5, fis, [(buf, SEC), (buf + SEC, SEC)], write=True, interrupt_last=True)
    hdr = q.qt.memread(q.clb[0] + 32 * 5, 32)
    p = L.CommandHeader.parse(hdr)
    assert p.info.prdtl == 2 and p.info.w and p.info.cfl == 5 and not p.info.a
    assert d.ahci_command_header(hdr)["ctba"] == ct
    table = L.CommandTable.parse(q.qt.memread(ct, 0x80 + 32), prdtl=2)
    assert [(e.dba, e.dbc.dbc + 1, e.dbc.i) for e in table.prdt] == [(buf, SEC, False), (buf + SEC, SEC, True)]
    f = d.h2d_fis(table.cfis)
    assert (f["command"], f["lba"], f["tag"], f["fua"], f["features"]) == \
        ("WRITE FPDMA QUEUED", 0x123456789A, 5, True, 2)
    assert f["fields"]["fis_type"] == "REG_H2D" and f["fields"]["regs"]["device"]["lba"] is True
    # the registers the guest programmed, parsed from the HBA's answers
    cmd = L.PxCmd.parse(q.pr(0, A.P_CMD).to_bytes(4, "little"))
    assert cmd.st and cmd.fre and cmd.fr and cmd.cr and cmd.sud and cmd.pod
    ssts = L.PxSsts.parse(q.pr(0, A.P_SSTS).to_bytes(4, "little"))
    assert (ssts.det, ssts.spd, ssts.ipm) == ("PRESENT", "GEN1", "ACTIVE")
    cap = L.Cap.parse(q.r(A.CAP).to_bytes(4, "little"))
    assert cap.ncs == 31 and cap.np == A.NUM_PORTS - 1 and cap.sncq and cap.iss == "GEN1"
    assert L.Vs.parse(q.r(A.VS).to_bytes(4, "little")) == {"mjr": 1, "mnr": 0x300}


def test_trace_events_carry_decoded_fises_and_registers():
    q = AhciQ()
    q.port_start(0)
    src = q.alloc(SEC)
    with trace.Recorder() as rec:
        q.pw(0, A.P_IE, A.IS_DHRS | A.IS_TFES)
        assert q.run(0, h2d(0xCA, lba=77, count=1), [(src, SEC)], write=True) == 0x50
    ev = {e.name: e.fields for e in rec.events}
    w = next(e.fields for e in rec.events if e.name == "ahci.port_write" and e.fields["offset"] == A.P_IE)
    assert w["register"] == "PxIE" and w["fields"]["dhre"] and w["fields"]["tfee"] and not w["fields"]["pse"]
    sub = ev["req.submit"]
    assert sub["fis"]["command"] == "WRITE DMA" and sub["fis"]["lba"] == 77
    assert sub["header"]["write"] and sub["header"]["prdtl"] == 1 and sub["header"]["fields"]["info"]["cfl"] == 5
    d2h = [e.fields["fis"] for e in rec.events if e.name == "ahci.fis"]
    assert d2h and d2h[-1]["fis_type"] == "REG_D2H" and d2h[-1]["flags"]["i"]
    assert d2h[-1]["regs"]["status"]["drdy"] and d2h[-1]["regs"]["lba_low"] == 77
    assert d2h[-1] == to_dict(L.RegD2hFis.parse(q.rfis(0, A.RFIS_RFIS, 20)))


def test_sata_capability_and_index_data_pair():
    q = AhciQ()
    cfg = bytes(q.hba.config)
    off = next(o for o in range(0x40, 0x100, 4) if cfg[o] == L.SATA_CAP_ID)
    p = L.SataCap.parse(cfg[off:off + L.SATA_CAP_SIZE])
    assert (p.revision.major, p.revision.minor, p.bar.barloc, p.bar.barofst) == (1, 0, 8, 4)
    assert struct.unpack_from("<HI", cfg, off + 2) == (0x0010, 0x48)      # as before the declarations


def test_dsm_range_and_ncq_error_log_match_the_spec():
    """ACS-2 §7.5.3.2 LBA range entries; SATA 3.x §13.7.4 NCQ Command Error log: the drive
    reads and writes them with the fast forms, construct reads them back."""
    from test_ata_drive import make

    from blockbed.devices.ata import Cmd, Outputs, TaskFile
    assert AL.DSM_RANGE.format == "<Q" and (AL.DSM_LBA, AL.DSM_LENGTH_SHIFT) == ((1 << 48) - 1, 48)
    assert R.DSM_RANGES_PER_BLOCK == 64 and AL.NcqErrorLog.sizeof() == 512
    e = AL.DsmRange.parse(struct.pack("<Q", 10 | (3 << 48)))
    assert (e.lba, e.length) == (10, 3)
    drv, _ = make()
    drv.record_ncq_error(9, Outputs(status=0x51, error=R.ER_ABRT), lba=0x123456789A)
    buf = bytearray(512)
    drv.execute(drv.decode(TaskFile(Cmd.READ_LOG_EXT, count=1, lba=0x10)), [memoryview(buf)])
    log = AL.NcqErrorLog.parse(bytes(buf))
    assert log.tag.tag == 9 and not log.tag.nq and log.regs.status.err and log.regs.error.abrt
    assert (log.regs.lba_low, log.regs.lba_mid, log.regs.lba_high, log.regs.lba_low_exp,
            log.regs.lba_mid_exp, log.regs.lba_high_exp) == (0x9A, 0x78, 0x56, 0x34, 0x12, 0)
    assert buf[0] == 9 and buf[2] == 0x51 and buf[4:7] == bytes([0x9A, 0x78, 0x56]) and sum(buf) % 256 == 0


def test_guest_visible_bytes_unchanged_by_the_declarations():
    """The received-FIS area, the command list (PRDBC) and the port registers after each
    step of a command sequence are what the hand-written HBA produced
    (tests/data/ahci_fis_golden.json, recorded before the declarations existed)."""
    q = AhciQ(disks=[1 << 20])
    q.port_start(0)
    out = []

    def snap(tag):
        out.append([tag, q.rfis(0, 0, 256).hex(), q.pr(0, A.P_TFD), q.pr(0, A.P_IS), q.pr(0, A.P_CI),
                    q.pr(0, A.P_SACT), q.pr(0, A.P_CMD), q.pr(0, A.P_SIG),
                    q.qt.memread(q.clb[0], 1024).hex()])
        q.pw(0, A.P_IS, 0xFFFFFFFF)

    snap("start")
    buf = q.alloc(8 * SEC)
    q.run(0, h2d(0xEC), [(buf, SEC)])
    snap("identify")
    q.qt.memwrite(buf, bytes(range(256)) * 16)
    q.run(0, h2d(0xCA, lba=5, count=2), [(buf, 2 * SEC)], write=True)
    snap("write dma")
    q.run(0, h2d(0x25, lba=0x1234, count=1), [(buf, SEC)])
    snap("read dma ext")
    q.run(0, h2d(0x20, lba=3, count=1), [(buf, SEC)])
    snap("pio read")
    q.run(0, h2d(0x30, lba=3, count=1), [(buf, SEC)], write=True)
    snap("pio write")
    for t in range(4):
        q.build(0, t, h2d(0x60, lba=8 * t, count=t << 3, features=1, device=0xC0 if t & 1 else 0x40),
                [(buf + t * SEC, SEC)])
    q.issue(0, 0xF, sact=0xF)
    q.wait()
    snap("ncq")
    q.run(0, h2d(0x25, lba=1 << 40, count=1), [(buf, SEC)])
    snap("idnf")
    golden = json.loads((Path(__file__).parent / "data" / "ahci_fis_golden.json").read_text())
    for got, want in zip(out, golden):
        assert got == want, got[0]
    assert len(out) == len(golden)


def test_set_transfer_mode_values_match_ata8_acs():
    """SET FEATURES 03h: Count bits 7:3 the transfer type, 2:0 the mode (ATA8-ACS table
    "Transfer/mode values"), for every Count value."""
    from test_ata_drive import make

    from blockbed.devices.ata import Cmd, TaskFile
    assert bits(AL.XferMode) == {"kind": (3, 5), "mode": (0, 3)}
    for val in range(256):
        drv, _ = make()
        out = drv.execute(drv.decode(TaskFile(Cmd.SET_FEATURES, features=3, count=val)))
        kind, mode = val >> 3, val & 7
        ok = val in (0, 1) or (kind, mode <= 4) == (1, True) or (kind, mode <= 2) == (4, True) \
            or (kind, mode <= 5) == (8, True)
        assert out.failed != ok, hex(val)
        if ok and kind == 8:
            assert (drv.state.udma_mode, drv.state.mwdma_mode) == (mode, None)


def test_bad_fis_event_carries_the_fis_decoded():
    q = AhciQ()
    q.port_start(0)
    fis = bytearray(h2d(0x25, count=1))
    fis[0] = 0x34                                   # a D2H FIS where a command FIS belongs
    q.build(0, 0, bytes(fis), [(q.alloc(SEC), SEC)])
    with trace.Recorder() as rec:
        q.issue(0, 1)
        q.wait()
    bad = next(e.fields for e in rec.events if e.name == "ahci.bad_fis")
    assert bad["type"] == 0x34 and bad["fis"]["fis_type"] == "REG_D2H"
    assert q.pr(0, A.P_IS) & A.IS_IFS


def test_ata_taskfile_decoder_names_the_registers():
    """The IDE trace's task file (trace_decode.ata_taskfile) carries the command block by
    its declaration too: the Device register's LBA bit and bits 27:24 by name."""
    from blockbed.devices.ata import TaskFile
    t = d.ata_taskfile(TaskFile(command=0xC8, lba=0x345678, count=2, device=0xE1, features=0))
    assert (t["command"], t["lba"], t["count"], t["lba48"]) == ("READ DMA", 0x1345678, 2, False)
    f = t["fields"]
    assert f["command"] == 0xC8 and f["lba_low"] == 0x78 and f["lba_high"] == 0x34
    assert f["device"] == {"fua": True, "lba": True, "obs5": True, "dev": False, "head": 1}
    t48 = d.ata_taskfile(TaskFile(command=0x25, lba=0x123456789A, count=0x102, device=0x40))
    assert t48["lba"] == 0x123456789A and t48["fields"]["lba_low_exp"] == 0x34
    assert t48["fields"]["count_exp"] == 1
