"""LSI53C895A register offsets and bits (LSI53C895A Technical Manual, chapter 5),
all derived at import from the declaration in :mod:`.layout`.

The same 256-byte register file appears in I/O space (BAR0) and memory
space (BAR1); BAR2 is the 8 KiB on-chip SCRIPTS RAM.
"""

from __future__ import annotations

from ..fastform import bits, mask, offsets
from . import layout as L

# --- register offsets (from the declaration) ------------------------------------------
_OFF = offsets(L.Registers)
SCNTL0, SCNTL1, SCNTL2, SCNTL3 = _OFF["scntl0"], _OFF["scntl1"], _OFF["scntl2"], _OFF["scntl3"]
SCID, SXFER, SDID, GPREG = _OFF["scid"], _OFF["sxfer"], _OFF["sdid"], _OFF["gpreg"]
SFBR, SOCL, SSID, SBCL = _OFF["sfbr"], _OFF["socl"], _OFF["ssid"], _OFF["sbcl"]
DSTAT, SSTAT0, SSTAT1, SSTAT2 = _OFF["dstat"], _OFF["sstat0"], _OFF["sstat1"], _OFF["sstat2"]
DSA = _OFF["dsa"]
ISTAT0, ISTAT1, MBOX0, MBOX1 = _OFF["istat0"], _OFF["istat1"], _OFF["mbox0"], _OFF["mbox1"]
CTEST0, CTEST1, CTEST2, CTEST3 = _OFF["ctest0"], _OFF["ctest1"], _OFF["ctest2"], _OFF["ctest3"]
TEMP = _OFF["temp"]
DFIFO, CTEST4, CTEST5, CTEST6 = _OFF["dfifo"], _OFF["ctest4"], _OFF["ctest5"], _OFF["ctest6"]
DBC = _OFF["dbc_dcmd"]
DCMD = DBC + bits(L.DbcDcmd)["dcmd"][0] // 8          # the dword's top byte
DNAD, DSP, DSPS, SCRATCHA = _OFF["dnad"], _OFF["dsp"], _OFF["dsps"], _OFF["scratcha"]
DMODE, DIEN, SBR, DCNTL = _OFF["dmode"], _OFF["dien"], _OFF["sbr"], _OFF["dcntl"]
ADDER = _OFF["adder"]
SIEN0, SIEN1, SIST0, SIST1 = _OFF["sien0"], _OFF["sien1"], _OFF["sist0"], _OFF["sist1"]
MACNTL, GPCNTL, STIME0, STIME1 = _OFF["macntl"], _OFF["gpcntl"], _OFF["stime0"], _OFF["stime1"]
RESPID0, RESPID1 = _OFF["respid0"], _OFF["respid1"]
STEST0, STEST1, STEST2, STEST3 = _OFF["stest0"], _OFF["stest1"], _OFF["stest2"], _OFF["stest3"]
SIDL, STEST4, SODL = _OFF["sidl"], _OFF["stest4"], _OFF["sodl"]
CCNTL0, CCNTL1, SBDL = _OFF["ccntl0"], _OFF["ccntl1"], _OFF["sbdl"]
SCRATCHB = _OFF["scratchb"]   # SCRATCHC..J follow (scratchc_j)

REG_SIZE = L.Registers.sizeof()   # the register file (I/O BAR is 256 bytes)
MMIO_SIZE = 0x400      # memory BAR (registers mirrored)
RAM_SIZE = 0x2000      # SCRIPTS RAM BAR

# --- bits (from the declaration) ------------------------------------------------------
SCNTL1_CON, SCNTL1_RST = mask(L.Scntl1, "con"), mask(L.Scntl1, "rst")
SCNTL1_IARB, SCNTL1_SST = mask(L.Scntl1, "iarb"), mask(L.Scntl1, "sst")
SCID_RRE, SCID_SRE = mask(L.Scid, "rre"), mask(L.Scid, "sre")
SCID_ENC = mask(L.Scid, "enc")
SDID_ENC = mask(L.Sdid, "enc")

(ISTAT0_ABRT, ISTAT0_SRST, ISTAT0_SIGP, ISTAT0_SEM, ISTAT0_CON, ISTAT0_INTF, ISTAT0_SIP,
 ISTAT0_DIP) = (mask(L.Istat0, n) for n in ("abrt", "srst", "sigp", "sem", "con", "intf", "sip",
                                            "dip"))
ISTAT1_SRUN = mask(L.Istat1, "srun")

DSTAT_DFE, DSTAT_MDPE, DSTAT_BF, DSTAT_ABRT, DSTAT_SSI, DSTAT_SIR, DSTAT_IID = (
    mask(L.Dstat, n) for n in ("dfe", "mdpe", "bf", "abrt", "ssi", "sir", "iid"))

SIST0_MA, SIST0_CMP, SIST0_SEL, SIST0_RSL, SIST0_SGE, SIST0_UDC, SIST0_RST, SIST0_PAR = (
    mask(L.Int0, n) for n in ("ma", "cmp", "sel", "rsl", "sge", "udc", "rst", "par"))
SIST1_SBMC, SIST1_STO, SIST1_GEN, SIST1_HTH = (
    mask(L.Int1, n) for n in ("sbmc", "sto", "gen", "hth"))

SSTAT0_WOA, SSTAT0_RST = mask(L.Sstat0, "woa"), mask(L.Sstat0, "rst")
SSTAT2_LDSC = mask(L.Sstat2, "ldsc")

SBCL_REQ, SBCL_ACK, SBCL_BSY, SBCL_SEL, SBCL_ATN = (
    mask(L.Sbcl, n) for n in ("req", "ack", "bsy", "sel", "atn"))
SOCL_ATN = mask(L.Socl, "atn")
PHASE_MASK = mask(L.Sbcl, "phase")
assert PHASE_MASK == mask(L.Sstat1, "phase") == mask(L.Socl, "phase")

DMODE_MAN = mask(L.Dmode, "man")
DCNTL_PFF, DCNTL_SSM, DCNTL_STD, DCNTL_IRQD, DCNTL_COM = (
    mask(L.Dcntl, n) for n in ("pff", "ssm", "std", "irqd", "com"))
CTEST2_SIGP, CTEST2_CM, CTEST2_PCICIE, CTEST2_DACK = (
    mask(L.Ctest2, n) for n in ("sigp", "cm", "pcicie", "dack"))
CTEST3_WRITABLE = mask(L.Ctest3, "flf") | mask(L.Ctest3, "clf") | mask(L.Ctest3, "fm") \
    | mask(L.Ctest3, "wrie")
STIME1_GEN = mask(L.Stime1, "gen")
DBC_MASK = mask(L.DbcDcmd, "dbc")


# SCSI bus phases (MSG, C/D, I/O): SPI-5 §10.2, from the declaration (layout.PhaseCode).
_PHASES = dict(L.PhaseCode.encmapping)


class Phase:
    DATA_OUT, DATA_IN = _PHASES["DATA_OUT"], _PHASES["DATA_IN"]
    COMMAND, STATUS = _PHASES["COMMAND"], _PHASES["STATUS"]
    MSG_OUT, MSG_IN = _PHASES["MSG_OUT"], _PHASES["MSG_IN"]
    NAMES = {v: str(k) for k, v in _PHASES.items()}


# SCSI messages (SPI-5 §4.5; SAM task management).
MSG_COMMAND_COMPLETE = 0x00
MSG_EXTENDED = 0x01
MSG_SAVE_DATA_POINTER = 0x02
MSG_DISCONNECT = 0x04
MSG_INITIATOR_ERROR = 0x05
MSG_ABORT = 0x06               # ABORT TASK SET
MSG_REJECT = 0x07
MSG_NOP = 0x08
MSG_PARITY_ERROR = 0x09
MSG_BUS_DEVICE_RESET = 0x0C    # TARGET RESET
MSG_ABORT_TAG = 0x0D           # ABORT TASK
MSG_CLEAR_QUEUE = 0x0E         # CLEAR TASK SET
MSG_SIMPLE_TAG, MSG_HEAD_TAG, MSG_ORDERED_TAG = 0x20, 0x21, 0x22
MSG_IDENTIFY = 0x80
IDENTIFY_DISCPRIV = 0x40
