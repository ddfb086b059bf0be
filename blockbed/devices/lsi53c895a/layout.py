"""The LSI53C895A operating register file, declared once with ``construct``.

LSI53C895A PCI to Ultra2 SCSI Controller Technical Manual, chapter 5
("Registers"): 256 bytes, the same in I/O space (BAR0) and memory space
(BAR1).  Registers the chip defines bit by bit are :func:`~..fastform.le_bits`
declarations (fields listed from bit 7 down, as the manual's register
diagrams are), so a parsed register file prints every bit by name; the
multi-byte registers (DSA, TEMP, DNAD, DSP, DSPS, SCRATCHx, ADDER) are
little-endian dwords, as the chip's byte lanes are.

:mod:`.regs` derives every offset and every bit mask the chip model uses
from :data:`Registers` (:func:`~..fastform.offsets`, :func:`~..fastform.mask`);
nothing else writes a register offset or a bit position.
"""

from __future__ import annotations

from construct import BitsInteger, Bytes, Enum, Flag, Int8ul, Int16ul, Int32ul, Padding, Struct

from ..fastform import le_bits

#: SCSI bus phase as the MSG, C/D and I/O signals encode it (SPI-5 §10.2; manual §2.2.8)
PhaseCode = Enum(BitsInteger(3), DATA_OUT=0, DATA_IN=1, COMMAND=2, STATUS=3, RES4=4, RES5=5,
                 MSG_OUT=6, MSG_IN=7)


def _signals(phase_name: str = "phase") -> list:
    """REQ ACK BSY SEL ATN MSG C/D I/O, the layout SOCL and SBCL share (§5: SOCL, SBCL).
    MSG, C/D and I/O (bits 2:0) together are the bus phase."""
    return ["req" / Flag, "ack" / Flag, "bsy" / Flag, "sel" / Flag, "atn" / Flag,
            phase_name / PhaseCode]


#: SCNTL0 SCSI Control 0 (§5, 0x00)
Scntl0 = le_bits("arb" / BitsInteger(2), "start" / Flag, "watn" / Flag, "epc" / Flag, Padding(1),
                 "aap" / Flag, "trg" / Flag)
#: SCNTL1 SCSI Control 1 (0x01): CON connected, RST assert SCSI RST/, SST start transfer
Scntl1 = le_bits("exc" / Flag, "adb" / Flag, "dhp" / Flag, "con" / Flag, "rst" / Flag,
                 "aesp" / Flag, "iarb" / Flag, "sst" / Flag)
#: SCNTL2 SCSI Control 2 (0x02)
Scntl2 = le_bits("sdu" / Flag, "chm" / Flag, "slpmd" / Flag, "slphben" / Flag, "wss" / Flag,
                 "vue0" / Flag, "vue1" / Flag, "wsr" / Flag)
#: SCNTL3 SCSI Control 3 (0x03): ULTRA, synchronous clock factor, EWS, clock conversion factor
Scntl3 = le_bits("ultra" / Flag, "scf" / BitsInteger(3), "ews" / Flag, "ccf" / BitsInteger(3))
#: SCID Chip SCSI ID (0x04): RRE respond to reselection, SRE respond to selection
Scid = le_bits(Padding(1), "rre" / Flag, "sre" / Flag, Padding(1), "enc" / BitsInteger(4))
#: SXFER SCSI Transfer (0x05): synchronous transfer period, maximum SCSI offset
Sxfer = le_bits("tp" / BitsInteger(3), "mo" / BitsInteger(5))
#: SDID SCSI Destination ID (0x06)
Sdid = le_bits(Padding(4), "enc" / BitsInteger(4))
#: GPREG General Purpose (0x07): GPIO4..0
Gpreg = le_bits(Padding(3), "gpio" / BitsInteger(5))
#: SOCL SCSI Output Control Latch (0x09)
Socl = le_bits(*_signals())
#: SSID SCSI Selector ID (0x0A): VAL, the ID of the selecting/reselecting device
Ssid = le_bits("val" / Flag, Padding(3), "enc" / BitsInteger(4))
#: SBCL SCSI Bus Control Lines (0x0B), read only
Sbcl = le_bits(*_signals())
#: DSTAT DMA Status (0x0C), read to clear: DFE FIFO empty, MDPE, BF bus fault, ABRT aborted,
#: SSI single step, SIR SCRIPTS interrupt instruction, IID illegal instruction
Dstat = le_bits("dfe" / Flag, "mdpe" / Flag, "bf" / Flag, "abrt" / Flag, "ssi" / Flag,
                "sir" / Flag, Padding(1), "iid" / Flag)
#: SSTAT0 SCSI Status 0 (0x0D): WOA won arbitration, RST SCSI RST/ received
Sstat0 = le_bits("ilf" / Flag, "orf" / Flag, "olf" / Flag, "aip" / Flag, "loa" / Flag,
                 "woa" / Flag, "rst" / Flag, "sdp0" / Flag)
#: SSTAT1 SCSI Status 1 (0x0E): FIFO flags, latched SDP0 and the latched bus phase
Sstat1 = le_bits("ff" / BitsInteger(4), "sdp0l" / Flag, "phase" / PhaseCode)
#: SSTAT2 SCSI Status 2 (0x0F)
Sstat2 = le_bits("ilf1" / Flag, "orf1" / Flag, "olf1" / Flag, Padding(1), "spl1" / Flag,
                 "ff4" / Flag, "ldsc" / Flag, "sdp1" / Flag)
#: ISTAT0 Interrupt Status 0 (0x14): ABRT, SRST software reset, SIGP signal process,
#: SEM, CON connected, INTF interrupt on the fly, SIP SCSI / DIP DMA interrupt pending
Istat0 = le_bits("abrt" / Flag, "srst" / Flag, "sigp" / Flag, "sem" / Flag, "con" / Flag,
                 "intf" / Flag, "sip" / Flag, "dip" / Flag)
#: ISTAT1 Interrupt Status 1 (0x15): FLSH, SRUN SCRIPTS running, SI
Istat1 = le_bits(Padding(5), "flsh" / Flag, "srun" / Flag, "si" / Flag)
#: CTEST1 Chip Test 1 (0x19): FIFO byte empty / full flags
Ctest1 = le_bits("fmt" / BitsInteger(4), "ffl" / BitsInteger(4))
#: CTEST2 Chip Test 2 (0x1A): SIGP (a copy of ISTAT0's, cleared on read), CM configured as
#: memory (bit 4), PCICIE PCI configuration info enable (bit 3, the one writable bit), DACK
Ctest2 = le_bits("ddir" / Flag, "sigp" / Flag, "cio" / Flag, "cm" / Flag, "pcicie" / Flag,
                 "teop" / Flag, "dreq" / Flag, "dack" / Flag)
#: CTEST3 Chip Test 3 (0x1B): chip revision, flush / clear DMA FIFO, fetch pin mode, WRIE
Ctest3 = le_bits("v" / BitsInteger(4), "flf" / Flag, "clf" / Flag, "fm" / Flag, "wrie" / Flag)
#: CTEST4 Chip Test 4 (0x21)
Ctest4 = le_bits("bdis" / Flag, "zmod" / Flag, "zsd" / Flag, "srtm" / Flag, "mpee" / Flag,
                 "fbl" / BitsInteger(3))
#: CTEST5 Chip Test 5 (0x22)
Ctest5 = le_bits("adck" / Flag, "bbck" / Flag, "dfs" / Flag, "masr" / Flag, "ddir" / Flag,
                 "bl2" / Flag, "bo" / BitsInteger(2))
#: DBC DMA Byte Counter (0x24, 24 bits) with DCMD DMA Command (0x27): together the first
#: word of the current SCRIPTS instruction
DbcDcmd = le_bits("dcmd" / BitsInteger(8), "dbc" / BitsInteger(24))
#: DMODE DMA Mode (0x38): burst length, source/destination I/O-memory, ERL, ERMP, BOF,
#: MAN manual start mode (a write to DSP does not start SCRIPTS)
Dmode = le_bits("bl" / BitsInteger(2), "siom" / Flag, "diom" / Flag, "erl" / Flag, "ermp" / Flag,
                "bof" / Flag, "man" / Flag)
#: DIEN DMA Interrupt Enable (0x39): the DSTAT bits that assert IRQ
Dien = le_bits(Padding(1), "mdpe" / Flag, "bf" / Flag, "abrt" / Flag, "ssi" / Flag, "sir" / Flag,
               Padding(1), "iid" / Flag)
#: DCNTL DMA Control (0x3B): PFF prefetch flush, SSM single step, STD start DMA (manual
#: mode), IRQD IRQ disable, COM 53C700 compatibility
Dcntl = le_bits("clse" / Flag, "pff" / Flag, "pfen" / Flag, "ssm" / Flag, "irqm" / Flag,
                "std" / Flag, "irqd" / Flag, "com" / Flag)
#: SIEN0 / SIST0 SCSI Interrupt Enable / Status 0 (0x40 / 0x42): MA phase mismatch
#: (initiator) or ATN (target), CMP function complete, SEL selected, RSL reselected,
#: SGE SCSI gross error, UDC unexpected disconnect, RST SCSI reset, PAR parity error
Int0 = le_bits("ma" / Flag, "cmp" / Flag, "sel" / Flag, "rsl" / Flag, "sge" / Flag, "udc" / Flag,
               "rst" / Flag, "par" / Flag)
#: SIEN1 / SIST1 (0x41 / 0x43): SBMC bus mode change, STO selection time-out, GEN general
#: purpose timer expired, HTH handshake-to-handshake timer expired
Int1 = le_bits(Padding(3), "sbmc" / Flag, Padding(1), "sto" / Flag, "gen" / Flag, "hth" / Flag)
#: MACNTL Memory Access Control (0x46)
Macntl = le_bits("typ" / BitsInteger(4), "dwr" / Flag, "drd" / Flag, "pscpt" / Flag,
                 "scpts" / Flag)
#: GPCNTL General Purpose Pin Control (0x47)
Gpcntl = le_bits("me" / Flag, "fe" / Flag, Padding(1), "gpio_dir" / BitsInteger(5))
#: STIME0 SCSI Timer 0 (0x48): handshake-to-handshake and selection time-out periods
Stime0 = le_bits("hth" / BitsInteger(4), "sel" / BitsInteger(4))
#: STIME1 SCSI Timer 1 (0x49): general purpose timer period in bits 3:0
Stime1 = le_bits(Padding(1), "hthba" / Flag, "gensf" / Flag, "hthsf" / Flag,
                 "gen" / BitsInteger(4))
#: STEST0 SCSI Test 0 (0x4C)
Stest0 = le_bits("ssaid" / BitsInteger(4), "slt" / Flag, "art" / Flag, "soz" / Flag, "som" / Flag)
#: STEST1 SCSI Test 1 (0x4D)
Stest1 = le_bits("sclk" / Flag, "siso" / Flag, Padding(2), "dblen" / Flag, "dblsel" / Flag,
                 Padding(2))
#: STEST2 SCSI Test 2 (0x4E)
Stest2 = le_bits("sce" / Flag, "rof" / Flag, "dif" / Flag, "slb" / Flag, "szm" / Flag,
                 "aws" / Flag, "ext" / Flag, "low" / Flag)
#: STEST3 SCSI Test 3 (0x4F)
Stest3 = le_bits("te" / Flag, "str" / Flag, "hsc" / Flag, "dsi" / Flag, "s16" / Flag,
                 "ttm" / Flag, "csf" / Flag, "stw" / Flag)
#: STEST4 SCSI Test 4 (0x52): SCSI bus mode (SE / LVD / HVD), clock quadrupler locked
Stest4 = le_bits("smode" / BitsInteger(2), "lock" / Flag, Padding(5))

#: The operating register file, offsets 0x00-0xFF (manual chapter 5, table 5.1)
Registers = Struct(
    "scntl0" / Scntl0, "scntl1" / Scntl1, "scntl2" / Scntl2, "scntl3" / Scntl3,
    "scid" / Scid, "sxfer" / Sxfer, "sdid" / Sdid, "gpreg" / Gpreg,
    "sfbr" / Int8ul, "socl" / Socl, "ssid" / Ssid, "sbcl" / Sbcl,
    "dstat" / Dstat, "sstat0" / Sstat0, "sstat1" / Sstat1, "sstat2" / Sstat2,
    "dsa" / Int32ul,
    "istat0" / Istat0, "istat1" / Istat1, "mbox0" / Int8ul, "mbox1" / Int8ul,
    "ctest0" / Int8ul, "ctest1" / Ctest1, "ctest2" / Ctest2, "ctest3" / Ctest3,
    "temp" / Int32ul,
    "dfifo" / Int8ul, "ctest4" / Ctest4, "ctest5" / Ctest5, "ctest6" / Int8ul,
    "dbc_dcmd" / DbcDcmd,
    "dnad" / Int32ul, "dsp" / Int32ul, "dsps" / Int32ul, "scratcha" / Int32ul,
    "dmode" / Dmode, "dien" / Dien, "sbr" / Int8ul, "dcntl" / Dcntl,
    "adder" / Int32ul,
    "sien0" / Int0, "sien1" / Int1, "sist0" / Int0, "sist1" / Int1,
    "slpar" / Int8ul, "swide" / Int8ul, "macntl" / Macntl, "gpcntl" / Gpcntl,
    "stime0" / Stime0, "stime1" / Stime1, "respid0" / Int8ul, "respid1" / Int8ul,
    "stest0" / Stest0, "stest1" / Stest1, "stest2" / Stest2, "stest3" / Stest3,
    "sidl" / Int16ul, "stest4" / Stest4, "reserved53" / Int8ul,
    "sodl" / Int16ul, "ccntl0" / Int8ul, "ccntl1" / Int8ul,
    "sbdl" / Int16ul, "reserved5a" / Bytes(2),
    "scratchb" / Int32ul,
    "scratchc_j" / Bytes(32),          # SCRATCHC..SCRATCHJ, 0x60-0x7F
    "reserved80" / Bytes(0x80),
)

#: A parsed view of one register by name (for decoders): name -> declaration
REGISTER_DECLS = {sc.name: sc.subcon for sc in Registers.subcons}
