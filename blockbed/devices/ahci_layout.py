"""Every guest-visible AHCI layout, declared once with ``construct`` (Serial ATA
AHCI 1.3; FIS layouts from SATA 3.x §10.5).

- the generic host control registers (AHCI 1.3 §3.1) and the per-port
  registers (§3.3), with their bit fields (:func:`~.fastform.le_bits`, listed
  from bit 31 down as the register tables are);
- the command header (§4.2.2), the command table (§4.2.3) and its PRDT entry
  (§4.2.3.3), the received-FIS area (§4.2.1);
- the FISes the HBA carries (SATA 3.x §10.5: Register H2D, Register D2H, PIO
  Setup, DMA Setup, Set Device Bits) with the FIS type enumeration; the ATA
  registers inside them are the declarations of :mod:`.ata.layout`;
- the SATA capability of the PCI function (§2.4) and the ICH9 index/data pair.

:mod:`.ahci` uses only the fast forms derived at the bottom of this module
(:mod:`.fastform`); the trace decoder (:mod:`blockbed.trace_decode_ahci`)
parses with the declarations themselves.
"""

from __future__ import annotations

from construct import (Array, BitsInteger, Bytes, Enum, Flag, Int8ul, Int16ul, Int32ul, Int64ul, Padding,
                       Struct, this)

from .ata.layout import CommandBlock, DeviceControl, Error, OutputBlock, Status, field_value
from .fastform import bits, fast, le_bits, mask, offsets

# --- generic host control (§3.1) ----------------------------------------------------------------
#: Interface speed: CAP.ISS, PxSSTS.SPD, PxSCTL.SPD (§3.1.1, §3.3.10)
Spd = Enum(BitsInteger(4), NONE=0, GEN1=1, GEN2=2, GEN3=3)
#: CAP host capabilities (§3.1.1): ISS interface speed, NCS number of command slots - 1,
#: NP number of ports - 1
Cap = le_bits("s64a" / Flag, "sncq" / Flag, "ssntf" / Flag, "smps" / Flag, "sss" / Flag,
              "salp" / Flag, "sal" / Flag, "sclo" / Flag, "iss" / Spd, Padding(1),
              "sam" / Flag, "spm" / Flag, "fbss" / Flag, "pmd" / Flag, "ssc" / Flag, "psc" / Flag,
              "ncs" / BitsInteger(5), "cccs" / Flag, "ems" / Flag, "sxs" / Flag, "np" / BitsInteger(5))
#: GHC global HBA control (§3.1.2): AE AHCI enable, MRSM MSI revert, IE, HR HBA reset
Ghc = le_bits("ae" / Flag, Padding(28), "mrsm" / Flag, "ie" / Flag, "hr" / Flag)
#: VS version (§3.1.5): major, minor (BCD-like: 0001_0300h is 1.3)
Vs = le_bits("mjr" / BitsInteger(16), "mnr" / BitsInteger(16))
#: CCC_CTL command completion coalescing control (§3.1.6)
CccCtl = le_bits("tv" / BitsInteger(16), "cc" / BitsInteger(8), "int" / BitsInteger(5),
                 Padding(2), "en" / Flag)
#: EM_LOC enclosure management location (§3.1.8): offset and size in dwords
EmLoc = le_bits("ofst" / BitsInteger(16), "sz" / BitsInteger(16))
#: EM_CTL enclosure management control (§3.1.9)
EmCtl = le_bits(Padding(5), "attr_pm" / Flag, "attr_alhd" / Flag, "attr_xmt" / Flag, Padding(4),
                "supp_sgpio" / Flag, "supp_ses2" / Flag, "supp_safte" / Flag, "supp_led" / Flag,
                Padding(6), "ctl_rst" / Flag, "ctl_tm" / Flag, Padding(7), "sts_mr" / Flag)
#: CAP2 host capabilities extended (§3.1.10)
Cap2 = le_bits(Padding(26), "deso" / Flag, "sadm" / Flag, "sds" / Flag, "apst" / Flag,
               "nvmp" / Flag, "boh" / Flag)
#: BOHC BIOS/OS handoff control and status (§3.1.11)
Bohc = le_bits(Padding(27), "bb" / Flag, "ooc" / Flag, "sooe" / Flag, "oos" / Flag, "bos" / Flag)

#: The generic host control registers, 00h-2Bh (§3.1)
GenericHostControl = Struct(
    "cap" / Cap, "ghc" / Ghc, "is" / Int32ul, "pi" / Int32ul, "vs" / Vs,
    "ccc_ctl" / CccCtl, "ccc_ports" / Int32ul, "em_loc" / EmLoc, "em_ctl" / EmCtl,
    "cap2" / Cap2, "bohc" / Bohc,
)

# --- port registers (§3.3) ----------------------------------------------------------------------
#: PxCLB command list base (§3.3.1): 1 KiB aligned
PxClb = le_bits("clb_31_10" / BitsInteger(22), Padding(10))
#: PxFB FIS base (§3.3.3): 256-byte aligned (FIS-based switching off)
PxFb = le_bits("fb_31_8" / BitsInteger(24), Padding(8))
#: PxIS interrupt status (§3.3.5)
PxIs = le_bits("cpds" / Flag, "tfes" / Flag, "hbfs" / Flag, "hbds" / Flag, "ifs" / Flag,
               "infs" / Flag, Padding(1), "ofs" / Flag, "ipms" / Flag, "prcs" / Flag, Padding(14),
               "dmps" / Flag, "pcs" / Flag, "dps" / Flag, "ufs" / Flag, "sdbs" / Flag, "dss" / Flag,
               "pss" / Flag, "dhrs" / Flag)
#: PxIE interrupt enable (§3.3.6): one enable per PxIS bit, at the same position
PxIe = le_bits("cpde" / Flag, "tfee" / Flag, "hbfe" / Flag, "hbde" / Flag, "ife" / Flag,
               "infe" / Flag, Padding(1), "ofe" / Flag, "ipme" / Flag, "prce" / Flag, Padding(14),
               "dmpe" / Flag, "pce" / Flag, "dpe" / Flag, "ufe" / Flag, "sdbe" / Flag, "dse" / Flag,
               "pse" / Flag, "dhre" / Flag)
#: PxCMD command and status (§3.3.7): ICC, ..., CR list running, FR FIS receive running,
#: CCS current command slot, FRE FIS receive enable, CLO, POD, SUD, ST start
PxCmd = le_bits("icc" / BitsInteger(4), "asp" / Flag, "alpe" / Flag, "dlae" / Flag, "atapi" / Flag,
                "apste" / Flag, "fbscp" / Flag, "esp" / Flag, "cpd" / Flag, "mpsp" / Flag,
                "hpcp" / Flag, "pma" / Flag, "cps" / Flag, "cr" / Flag, "fr" / Flag, "mpss" / Flag,
                "ccs" / BitsInteger(5), Padding(3), "fre" / Flag, "clo" / Flag, "pod" / Flag,
                "sud" / Flag, "st" / Flag)
#: PxTFD task file data (§3.3.8): the device's Error and Status registers
PxTfd = le_bits(Padding(16), "err" / BitsInteger(8), "sts" / BitsInteger(8))
#: PxSIG signature (§3.3.9): the first D2H FIS's LBA high/mid/low and count
PxSig = le_bits("lba_high" / BitsInteger(8), "lba_mid" / BitsInteger(8),
                "lba_low" / BitsInteger(8), "count" / BitsInteger(8))
#: PxSSTS.DET (§3.3.10)
SstsDet = Enum(BitsInteger(4), NONE=0, PRESENT_NO_PHY=1, PRESENT=3, OFFLINE=4)
#: PxSSTS.IPM: interface power state
Ipm = Enum(BitsInteger(4), NONE=0, ACTIVE=1, PARTIAL=2, SLUMBER=6, DEVSLEEP=8)
#: PxSSTS SATA status (§3.3.10)
PxSsts = le_bits(Padding(20), "ipm" / Ipm, "spd" / Spd, "det" / SstsDet)
#: PxSCTL.DET (§3.3.11): 1 = COMRESET (interface initialization), 4 = offline
SctlDet = Enum(BitsInteger(4), NO_ACTION=0, COMRESET=1, OFFLINE=4)
#: PxSCTL SATA control (§3.3.11)
PxSctl = le_bits(Padding(12), "pmp" / BitsInteger(4), "spm" / BitsInteger(4), "ipm" / BitsInteger(4),
                 "spd" / BitsInteger(4), "det" / SctlDet)
#: PxSERR SATA error (§3.3.12): DIAG bits 26:16, ERR bits 11:0
PxSerr = le_bits(Padding(5), "diag_x" / Flag, "diag_f" / Flag, "diag_t" / Flag, "diag_s" / Flag,
                 "diag_h" / Flag, "diag_c" / Flag, "diag_d" / Flag, "diag_b" / Flag,
                 "diag_w" / Flag, "diag_i" / Flag, "diag_n" / Flag, Padding(4), "err_e" / Flag,
                 "err_p" / Flag, "err_c" / Flag, "err_t" / Flag, Padding(6), "err_m" / Flag,
                 "err_i" / Flag)
#: PxSNTF SATA notification (§3.3.15)
PxSntf = le_bits(Padding(16), "pmn" / BitsInteger(16))
#: PxFBS FIS-based switching control (§3.3.16)
PxFbs = le_bits(Padding(12), "dwe" / BitsInteger(4), "ado" / BitsInteger(4), "dev" / BitsInteger(4),
                Padding(5), "sde" / Flag, "dec" / Flag, "en" / Flag)
#: PxDEVSLP device sleep (§3.3.17)
PxDevslp = le_bits(Padding(3), "dm" / BitsInteger(4), "dito" / BitsInteger(10),
                   "mdat" / BitsInteger(5), "deto" / BitsInteger(8), "dsp" / Flag, "adse" / Flag)

#: One port's registers, 80h bytes (§3.3)
PortRegs = Struct(
    "clb" / PxClb, "clbu" / Int32ul, "fb" / PxFb, "fbu" / Int32ul,
    "is" / PxIs, "ie" / PxIe, "cmd" / PxCmd, "reserved1c" / Int32ul,
    "tfd" / PxTfd, "sig" / PxSig, "ssts" / PxSsts, "sctl" / PxSctl, "serr" / PxSerr,
    "sact" / Int32ul, "ci" / Int32ul, "sntf" / PxSntf, "fbs" / PxFbs, "devslp" / PxDevslp,
    "reserved48" / Bytes(0x28), "vs" / Bytes(0x10),
)
#: The HBA memory registers (ABAR, §3): generic host control, reserved, the
#: NVMHCI range, vendor specific, then up to 32 ports from 100h
HbaRegs = Struct(
    "generic" / GenericHostControl, "reserved2c" / Bytes(0x34), "nvmhci" / Bytes(0x40),
    "vendor" / Bytes(0x60), "ports" / Array(this._params.ports, PortRegs),
)

# --- FISes (SATA 3.x §10.5) --------------------------------------------------------------------
#: FIS type (SATA 3.x §10.5.1, table "FIS types")
FisType = Enum(Int8ul, REG_H2D=0x27, REG_D2H=0x34, DMA_ACTIVATE=0x39, DMA_SETUP=0x41, DATA=0x46,
               BIST_ACTIVATE=0x58, PIO_SETUP=0x5F, SET_DEVICE_BITS=0xA1)

#: Register Host to Device FIS (SATA 3.x §10.5.5): byte 1 C (command register
#: update) and the port multiplier port; bytes 16-19 auxiliary
RegH2dFis = Struct(
    "fis_type" / FisType,
    "flags" / le_bits("c" / Flag, Padding(3), "pm_port" / BitsInteger(4)),
    "regs" / CommandBlock,
    "auxiliary" / Int32ul,
)
#: Register Device to Host FIS (§10.5.6): byte 1 I (interrupt)
RegD2hFis = Struct(
    "fis_type" / FisType,
    "flags" / le_bits(Padding(1), "i" / Flag, Padding(2), "pm_port" / BitsInteger(4)),
    "regs" / OutputBlock,
    Padding(6),
)
#: PIO Setup FIS (§10.5.11): I, D (1: device to host); E_Status is the status after
#: the data block, the transfer count its length in bytes
PioSetupFis = Struct(
    "fis_type" / FisType,
    "flags" / le_bits(Padding(1), "i" / Flag, "d" / Flag, Padding(1), "pm_port" / BitsInteger(4)),
    "regs" / OutputBlock,
    Padding(1), "e_status" / Status, "transfer_count" / Int16ul, Padding(2),
)
#: DMA Setup FIS (§10.5.9): A auto-activate, I, D; for first-party DMA queued
#: commands the buffer identifier is the NCQ tag (SATA 3.x §13.6, first-party DMA)
DmaSetupFis = Struct(
    "fis_type" / FisType,
    "flags" / le_bits("a" / Flag, "i" / Flag, "d" / Flag, Padding(1), "pm_port" / BitsInteger(4)),
    Padding(2), "buffer_id" / Int64ul, Padding(4), "buffer_offset" / Int32ul,
    "transfer_count" / Int32ul, Padding(4),
)
#: Set Device Bits FIS (§10.5.7): N notification, I; the Status bits it may change
#: (6:4 and 2:0; BSY and DRQ stay as they are); for NCQ bytes 4-7 are SActive (§13.6)
SetDeviceBitsFis = Struct(
    "fis_type" / FisType,
    "flags" / le_bits("n" / Flag, "i" / Flag, Padding(2), "pm_port" / BitsInteger(4)),
    "status" / le_bits(Padding(1), "status_hi" / BitsInteger(3), Padding(1),
                       "status_lo" / BitsInteger(3)),
    "error" / Error,
    "sactive" / Int32ul,
)

# --- system memory structures (§4.2) ------------------------------------------------------------
#: The received-FIS area (§4.2.1, FIS-based switching off): 256 bytes at PxFB
ReceivedFis = Struct(
    "dsfis" / DmaSetupFis, Padding(4),
    "psfis" / PioSetupFis, Padding(12),
    "rfis" / RegD2hFis, Padding(4),
    "sdbfis" / SetDeviceBitsFis,
    "ufis" / Bytes(64),
    Padding(96),
)
#: Command header DW0 (§4.2.2): PRDTL entries, PMP, C clear busy on R_OK, B BIST,
#: R reset, P prefetchable, W write (to device), A ATAPI, CFL command FIS length in dwords
CmdHeaderInfo = le_bits("prdtl" / BitsInteger(16), "pmp" / BitsInteger(4), Padding(1), "c" / Flag,
                        "b" / Flag, "r" / Flag, "p" / Flag, "w" / Flag, "a" / Flag,
                        "cfl" / BitsInteger(5))
#: One command header (§4.2.2): 32 bytes in the command list; CTBA is 128-byte aligned
CommandHeader = Struct(
    "info" / CmdHeaderInfo,
    "prdbc" / Int32ul,
    "ctba" / le_bits("ctba_31_7" / BitsInteger(25), Padding(7)),
    "ctbau" / Int32ul,
    Padding(16),
)
#: Physical region descriptor (§4.2.3.3): data base address (word aligned, 64-bit with
#: DBAU), I interrupt on completion, DBC byte count - 1 (at most 4 MiB)
PrdEntry = Struct(
    "dba" / Int64ul,
    Padding(4),
    "dbc" / le_bits("i" / Flag, Padding(9), "dbc" / BitsInteger(22)),
)
#: The command table (§4.2.3): command FIS, ATAPI command, PRDT at 80h; parse with
#: ``prdtl=`` the command header's PRDTL
CommandTable = Struct(
    "cfis" / Bytes(64),
    "acmd" / Bytes(16),
    Padding(48),
    "prdt" / Array(this._params.prdtl, PrdEntry),
)

# --- PCI (§2) --------------------------------------------------------------------------------------
#: The SATA capability (AHCI 1.3 §2.4): revision, then BAR location (4 = BAR0 .. 9 = BAR5,
#: 15 = in config space) and the offset of the index/data pair in dwords
SataCap = Struct(
    "cap_id" / Int8ul, "next" / Int8ul,
    "revision" / le_bits(Padding(8), "major" / BitsInteger(4), "minor" / BitsInteger(4)),
    "bar" / le_bits(Padding(8), "barofst" / BitsInteger(20), "barloc" / BitsInteger(4)),
)
#: The ICH9 index/data pair (BAR4; AHCI 1.3 §2.4 "index-data pair"): an ABAR offset, its data
IndexDataPair = Struct(Padding(0x10), "index" / Int32ul, "data" / Int32ul, Padding(8))


# --- fast forms, derived once ---------------------------------------------------------------------
def _enc(enum, name: str) -> int:
    return enum.encmapping[name]


def _masks(con, names: str) -> tuple[int, ...]:
    return tuple(mask(con, n) for n in names.split())


_GEN = offsets(GenericHostControl)
CAP, GHC, IS, PI, VS, CCC_CTL, CCC_PORTS, EM_LOC, EM_CTL, CAP2, BOHC = (
    _GEN[n] for n in "cap ghc is pi vs ccc_ctl ccc_ports em_loc em_ctl cap2 bohc".split())
CAP_S64A, CAP_SNCQ, CAP_SCLO, CAP_SAM = _masks(Cap, "s64a sncq sclo sam")
CAP_ISS_GEN1 = field_value(Cap, iss=_enc(Spd, "GEN1"))
CAP_NCS_SHIFT, CAP_NP_SHIFT = bits(Cap)["ncs"][0], bits(Cap)["np"][0]
GHC_HR, GHC_IE, GHC_AE = _masks(Ghc, "hr ie ae")
VERSION_1_3 = field_value(Vs, mjr=0x0001, mnr=0x0300)

PORT_BASE = offsets(HbaRegs, ports=0)["ports"]
PORT_SIZE = PortRegs.sizeof()
_PORT = offsets(PortRegs)
(P_CLB, P_CLBU, P_FB, P_FBU, P_IS, P_IE, P_CMD, P_TFD, P_SIG, P_SSTS, P_SCTL, P_SERR, P_SACT, P_CI,
 P_SNTF, P_FBS) = (_PORT[n] for n in
                   "clb clbu fb fbu is ie cmd tfd sig ssts sctl serr sact ci sntf fbs".split())
CLB_MASK, FB_MASK = mask(PxClb, "clb_31_10"), mask(PxFb, "fb_31_8")

IS_DHRS, IS_PSS, IS_DSS, IS_SDBS, IS_UFS, IS_DPS, IS_PCS = _masks(PxIs, "dhrs pss dss sdbs ufs dps pcs")
IS_OFS, IS_INFS, IS_IFS, IS_HBDS, IS_HBFS, IS_TFES = _masks(PxIs, "ofs infs ifs hbds hbfs tfes")
#: write-1-to-clear bits (§3.3.5: every bit but PCS, PRCS and UFS, which reflect other state)
IS_RWC = sum(mask(PxIs, n) for n in bits(PxIs) if n not in ("pcs", "prcs", "ufs"))
#: PxIE bits software can set: all but CPDE and DMPE (RO 0: no cold / mechanical presence)
IE_MASK = sum(mask(PxIe, n) for n in bits(PxIe) if n not in ("cpde", "dmpe"))
#: the fatal errors (§6.1.2): the port stops processing its command list
FATAL = IS_TFES | IS_HBFS | IS_HBDS | IS_IFS | IS_OFS

CMD_ST, CMD_SUD, CMD_POD, CMD_CLO, CMD_FRE = _masks(PxCmd, "st sud pod clo fre")
CMD_FR, CMD_CR, CMD_ATAPI, CMD_DLAE = _masks(PxCmd, "fr cr atapi dlae")
CMD_CCS, CMD_CCS_SHIFT = mask(PxCmd, "ccs"), bits(PxCmd)["ccs"][0]
#: the PxCMD bits this HBA lets software write
CMD_RW = CMD_ST | CMD_FRE | CMD_ATAPI | CMD_DLAE
TFD_ERR_SHIFT = bits(PxTfd)["err"][0]
TFD_STS = mask(PxTfd, "sts")
SERR_ERR_P, SERR_DIAG_X = _masks(PxSerr, "err_p diag_x")
#: PxSSTS with a drive: present with the phy up, Gen1, interface active (113h)
SSTS_UP = field_value(PxSsts, ipm=_enc(Ipm, "ACTIVE"), spd=_enc(Spd, "GEN1"), det=_enc(SstsDet, "PRESENT"))
SCTL_DET, SCTL_DET_COMRESET = mask(PxSctl, "det"), field_value(PxSctl, det=_enc(SctlDet, "COMRESET"))
SCTL_RW = sum(mask(PxSctl, n) for n in ("ipm", "spd", "det"))

FIS_REG_H2D, FIS_REG_D2H, FIS_DMA_SETUP, FIS_PIO_SETUP, FIS_SDB = (
    _enc(FisType, n) for n in ("REG_H2D", "REG_D2H", "DMA_SETUP", "PIO_SETUP", "SET_DEVICE_BITS"))
_RFIS = offsets(ReceivedFis)
RFIS_DSFIS, RFIS_PSFIS, RFIS_RFIS, RFIS_SDBFIS = (_RFIS[n] for n in ("dsfis", "psfis", "rfis", "sdbfis"))

H2D = fast(RegH2dFis)
H2D_C = mask(RegH2dFis.subcons[1].subcon, "c")
D2H = fast(RegD2hFis)
D2H_I = mask(RegD2hFis.subcons[1].subcon, "i")
PIO_SETUP = fast(PioSetupFis)
PIO_I, PIO_D = _masks(PioSetupFis.subcons[1].subcon, "i d")
DMA_SETUP = fast(DmaSetupFis)
DMA_A, DMA_D = _masks(DmaSetupFis.subcons[1].subcon, "a d")
SDB = fast(SetDeviceBitsFis)
SDB_I = mask(SetDeviceBitsFis.subcons[1].subcon, "i")
#: the Status bits an SDB FIS carries (the others, BSY and DRQ, keep their value)
SDB_STATUS = sum(_masks(SetDeviceBitsFis.subcons[2].subcon, "status_hi status_lo"))
CTL_SRST = mask(DeviceControl, "srst")

HDR = fast(CommandHeader)
HDR_SIZE = CommandHeader.sizeof()
HDR_PRDBC = offsets(CommandHeader)["prdbc"]
#: one PRDBC dword, for the update at completion
PRDBC = fast(Struct(CommandHeader.subcons[1]))
HDR_CFL = mask(CmdHeaderInfo, "cfl")
HDR_PRDTL_SHIFT = bits(CmdHeaderInfo)["prdtl"][0]
CTBA_MASK = mask(CommandHeader.subcons[2].subcon, "ctba_31_7")
CT_CFIS_SIZE = CommandTable.subcons[0].sizeof()
CT_PRDT = offsets(CommandTable, prdtl=0)["prdt"]
PRD = fast(PrdEntry)
PRD_SIZE = PrdEntry.sizeof()
PRD_I, PRD_DBC = _masks(PrdEntry.subcons[2].subcon, "i dbc")
#: the shortest command FIS the HBA accepts (a Register H2D FIS, in dwords)
CFL_MIN = RegH2dFis.sizeof() // Int32ul.sizeof()

SATA_CAP_SIZE = SataCap.sizeof()
SATA_CAP_BODY = fast(Struct(*SataCap.subcons[2:]))
SATA_CAP_OFF = offsets(SataCap)["revision"]
_IDP = offsets(IndexDataPair)
IDP_INDEX, IDP_DATA, IDP_SIZE = _IDP["index"], _IDP["data"], IndexDataPair.sizeof()
SATA_CAP_ID = 0x12                          # PCI capability ID: Serial ATA (PCI 3.0 appendix H)
SIG_COUNT, SIG_LBA_SHIFT = mask(PxSig, "count"), bits(PxSig)["lba_low"][0]


def sata_cap_values(bar: int, offset: int) -> tuple[int, int]:
    """SATACR0's revision (1.0) and SATACR1 for an index/data pair at ``offset`` of BAR ``bar``
    (§2.4.2: BARLOC 4-9 name BAR0-BAR5; BAROFST counts dwords), for :data:`SATA_CAP_BODY`."""
    return (field_value(SataCap.subcons[2].subcon, major=1, minor=0),
            field_value(SataCap.subcons[3].subcon, barloc=4 + bar, barofst=offset // Int32ul.sizeof()))
