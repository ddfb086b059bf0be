"""INQUIRY data, VPD pages (SPC-4 §7.8) and mode pages (SPC-4 §7.5, SBC-3 §6.4).

Pure functions of a :class:`DiskIdentity` and the live state, so each page
can be unit-tested byte for byte.  The contents follow QEMU 7.2's scsi-hd
where it has the page (vendor "QEMU", product "QEMU HARDDISK", version
"2.5+", SPC-3 claimed in byte 2, the 0xB0/0xB2 thin-provisioning fields);
docs/lsi.md lists where we differ (the control mode page 0x0A, which QEMU
lacks, and DPOFUA, which we set because FUA is honoured).
"""

from __future__ import annotations

from dataclasses import dataclass

from construct import (Array, BitsInteger, Bytes, Enum, Flag, GreedyBytes, Int8ub, Int16ub,
                       Int32ub, Int64ub, Padding, Struct, this)

from ..fastform import be_bits, bits, offsets

BLOCK_SIZE = 512
MAX_INQUIRY_LEN = 256
MAX_UNMAP_BLOCKS = (1 << 30) // BLOCK_SIZE    # 1 GiB per UNMAP descriptor set
MAX_UNMAP_DESCRIPTORS = 255                   # 255 * 16 + 8 bytes fit in 4 KiB
MAX_WRITE_SAME_BLOCKS = (1 << 30) // BLOCK_SIZE
UNMAP_GRANULARITY = 8                         # 4 KiB


@dataclass(frozen=True)
class DiskIdentity:
    """What INQUIRY reports; serial/device_id as QEMU's scsi-hd properties."""
    vendor: str = "QEMU"
    product: str = "QEMU HARDDISK"
    version: str = "2.5+"
    serial: str | None = None
    device_id: str | None = None      # VPD 0x83 vendor-specific ASCII designator
    removable: bool = False
    tcq: bool = True                  # the HBA supports tagged queuing (INQUIRY CMDQUE)
    rotation_rate: int = 0            # VPD 0xB1: 0 = not reported, 1 = non-rotating


# --- declarations ------------------------------------------------------------------------
#: Byte 0 of INQUIRY data and VPD pages (SPC-4 §6.4.2): peripheral qualifier and device type
Peripheral = be_bits("qualifier" / BitsInteger(3), "device_type" / BitsInteger(5))
#: Standard INQUIRY data, the first 36 bytes (SPC-4 §6.4.2, table 142)
StandardInquiry = Struct(
    "peripheral" / Peripheral,
    "byte1" / be_bits("rmb" / Flag, "lu_cong" / Flag, Padding(6)),
    "version" / Int8ub,
    "byte3" / be_bits(Padding(2), "normaca" / Flag, "hisup" / Flag,
                      "response_data_format" / BitsInteger(4)),
    "additional_length" / Int8ub,
    "byte5" / be_bits("sccs" / Flag, "acc" / Flag, "tpgs" / BitsInteger(2), "tpc" / Flag,
                      Padding(2), "protect" / Flag),
    "byte6" / be_bits(Padding(1), "encserv" / Flag, "vs" / Flag, "multip" / Flag, Padding(3),
                      "addr16" / Flag),
    "byte7" / be_bits(Padding(2), "wbus16" / Flag, "sync" / Flag, Padding(2), "cmdque" / Flag,
                      "vs2" / Flag),
    "vendor" / Bytes(8), "product" / Bytes(16), "revision" / Bytes(4),
)
#: A VPD page header (SPC-4 §7.8.1); the page follows
VpdHeader = Struct("peripheral" / Peripheral, "page_code" / Int8ub, "page_length" / Int16ub)
#: Supported VPD pages (SPC-4 §7.8.13)
SupportedVpd = Struct("header" / VpdHeader, "pages" / Array(this.header.page_length, Int8ub))
#: Unit serial number (SPC-4 §7.8.15)
UnitSerial = Struct("header" / VpdHeader, "serial" / Bytes(this.header.page_length))
#: A designation descriptor (SPC-4 §7.8.6.1)
DesignationDescriptor = Struct(
    "byte0" / be_bits("protocol_identifier" / BitsInteger(4), "code_set" / BitsInteger(4)),
    "byte1" / be_bits("piv" / Flag, Padding(1), "association" / BitsInteger(2),
                      "designator_type" / BitsInteger(4)),
    "reserved" / Int8ub, "designator_length" / Int8ub,
    "designator" / Bytes(this.designator_length))
CODE_SET_ASCII = 2
DESIGNATOR_VENDOR_SPECIFIC = 0
#: Device identification (SPC-4 §7.8.6); this disk reports at most one descriptor
DeviceIdentification = Struct("header" / VpdHeader, "descriptors" / GreedyBytes)
#: Block limits (SBC-3 §6.5.3), page length 0x3C
BlockLimits = Struct(
    "header" / VpdHeader, "flags" / be_bits(Padding(7), "wsnz" / Flag),
    "max_compare_and_write_length" / Int8ub, "optimal_transfer_length_granularity" / Int16ub,
    "max_transfer_length" / Int32ub, "optimal_transfer_length" / Int32ub,
    "max_prefetch_length" / Int32ub, "max_unmap_lba_count" / Int32ub,
    "max_unmap_block_descriptor_count" / Int32ub, "optimal_unmap_granularity" / Int32ub,
    "unmap_alignment" / be_bits("ugavalid" / Flag, "unmap_granularity_alignment" / BitsInteger(31)),
    "max_write_same_length" / Int64ub, "reserved" / Bytes(20))
#: Block device characteristics (SBC-3 §6.5.2), page length 0x3C
BlockDeviceCharacteristics = Struct(
    "header" / VpdHeader, "medium_rotation_rate" / Int16ub, "product_type" / Int8ub,
    "byte7" / be_bits("wabereq" / BitsInteger(2), "wacereq" / BitsInteger(2),
                      "nominal_form_factor" / BitsInteger(4)),
    "reserved" / Bytes(56))
ProvisioningType = Enum(BitsInteger(3), FULL=0, RESOURCE=1, THIN=2)
#: Logical block provisioning (SBC-3 §6.5.4), page length 4
LogicalBlockProvisioning = Struct(
    "header" / VpdHeader, "threshold_exponent" / Int8ub,
    "flags" / be_bits("lbpu" / Flag, "lbpws" / Flag, "lbpws10" / Flag, Padding(2),
                      "lbprz" / Flag, "anc_sup" / Flag, "dp" / Flag),
    "type" / be_bits(Padding(5), "provisioning_type" / ProvisioningType),
    "reserved" / Int8ub)
#: The VPD pages by code
VPD_PAGES = {0x00: SupportedVpd, 0x80: UnitSerial, 0x83: DeviceIdentification,
             0xB0: BlockLimits, 0xB1: BlockDeviceCharacteristics, 0xB2: LogicalBlockProvisioning}
_VPD_LEN = VpdHeader.sizeof()

#: Mode page header (SPC-4 §7.5.7): PS, SPF, PAGE CODE, PAGE LENGTH
ModePageHeader = Struct("byte0" / be_bits("ps" / Flag, "spf" / Flag, "page_code" / BitsInteger(6)),
                        "page_length" / Int8ub)
#: Read-write error recovery mode page 0x01 (SBC-3 §6.4.7)
RwErrorRecoveryPage = Struct(
    "header" / ModePageHeader,
    "flags" / be_bits("awre" / Flag, "arre" / Flag, "tb" / Flag, "rc" / Flag, "eer" / Flag,
                      "per" / Flag, "dte" / Flag, "dcr" / Flag),
    "read_retry_count" / Int8ub, "obsolete" / Bytes(3), "byte7" / Int8ub,
    "write_retry_count" / Int8ub, "reserved" / Int8ub, "recovery_time_limit" / Int16ub)
#: Caching mode page 0x08 (SBC-3 §6.4.5): WCE write cache enable, RCD read cache disable
CachingPage = Struct(
    "header" / ModePageHeader,
    "flags" / be_bits("ic" / Flag, "abpf" / Flag, "cap" / Flag, "disc" / Flag, "size" / Flag,
                      "wce" / Flag, "mf" / Flag, "rcd" / Flag),
    "retention" / be_bits("demand_read_retention_priority" / BitsInteger(4),
                          "write_retention_priority" / BitsInteger(4)),
    "disable_prefetch_transfer_length" / Int16ub, "minimum_prefetch" / Int16ub,
    "maximum_prefetch" / Int16ub, "maximum_prefetch_ceiling" / Int16ub,
    "byte12" / be_bits("fsw" / Flag, "lbcss" / Flag, "dra" / Flag, "vs" / BitsInteger(2),
                       Padding(2), "nv_dis" / Flag),
    "number_of_cache_segments" / Int8ub, "cache_segment_size" / Int16ub,
    "reserved" / Int8ub, "obsolete" / Bytes(3))
#: Control mode page 0x0A (SPC-4 §7.5.8)
ControlPage = Struct(
    "header" / ModePageHeader,
    "byte2" / be_bits("tst" / BitsInteger(3), "tmf_only" / Flag, "dpicz" / Flag,
                      "d_sense" / Flag, "gltsd" / Flag, "rlec" / Flag),
    "byte3" / be_bits("queue_algorithm_modifier" / BitsInteger(4), "nuar" / Flag,
                      "qerr" / BitsInteger(2), Padding(1)),
    "byte4" / be_bits("vs" / Flag, "rac" / Flag, "ua_intlck_ctrl" / BitsInteger(2), "swp" / Flag,
                      Padding(3)),
    "byte5" / be_bits("ato" / Flag, "tas" / Flag, "atmpe" / Flag, "rwwp" / Flag, Padding(1),
                      "autoload_mode" / BitsInteger(3)),
    "obsolete" / Bytes(2), "busy_timeout_period" / Int16ub,
    "extended_self_test_completion_time" / Int16ub)
#: Mode parameter header (6) (SPC-4 §7.5.5) and its SBC device-specific byte (SBC-3 §6.4.1)
DeviceSpecific = be_bits("wp" / Flag, Padding(2), "dpofua" / Flag, Padding(4))
ModeHeader6 = Struct("mode_data_length" / Int8ub, "medium_type" / Int8ub,
                     "device_specific" / DeviceSpecific, "block_descriptor_length" / Int8ub)
#: Mode parameter header (10) (SPC-4 §7.5.5)
ModeHeader10 = Struct("mode_data_length" / Int16ub, "medium_type" / Int8ub,
                      "device_specific" / DeviceSpecific,
                      "byte4" / be_bits(Padding(7), "longlba" / Flag), "reserved" / Int8ub,
                      "block_descriptor_length" / Int16ub)
#: Mode parameter block descriptor, general format (SPC-4 §7.5.6.1), as QEMU reports it
BlockDescriptor = be_bits("density_code" / BitsInteger(8), "number_of_blocks" / BitsInteger(24),
                          Padding(8), "block_length" / BitsInteger(24))
BLOCK_DESCRIPTOR_LEN = BlockDescriptor.sizeof()
_BD_BLOCKS_MAX = (1 << bits(BlockDescriptor)["number_of_blocks"][1]) - 1
MODE_HEADER_6_LEN, MODE_HEADER_10_LEN = ModeHeader6.sizeof(), ModeHeader10.sizeof()
MODE_HEADER_6_BDL = offsets(ModeHeader6)["block_descriptor_length"]
MODE_HEADER_10_BDL = offsets(ModeHeader10)["block_descriptor_length"]


def _size(con, name: str) -> int:
    return next(sc for sc in con.subcons if sc.name == name).sizeof()


def _pad(s: str, n: int) -> bytes:
    return s.encode("ascii", "replace")[:n].ljust(n, b" ")


_DISK = dict(qualifier=0, device_type=0)          # connected, direct-access block device
SPC3_VERSION = 0x05                               # VERSION: SPC-3, as QEMU claims
_INQ_LEN = StandardInquiry.sizeof()
_INQ_ADDL = offsets(StandardInquiry)["additional_length"] + 1


def _inquiry(peripheral: dict, ident: DiskIdentity | None) -> bytes:
    return StandardInquiry.build(dict(
        peripheral=peripheral,
        byte1=dict(rmb=bool(ident and ident.removable), lu_cong=False),
        version=SPC3_VERSION,
        byte3=dict(normaca=False, hisup=True, response_data_format=2),
        additional_length=_INQ_LEN - _INQ_ADDL,
        byte5=dict(sccs=False, acc=False, tpgs=0, tpc=False, protect=False),
        byte6=dict(encserv=False, vs=False, multip=False, addr16=False),
        byte7=dict(wbus16=False, sync=ident is not None, cmdque=bool(ident and ident.tcq),
                   vs2=False),
        vendor=_pad(ident.vendor, _size(StandardInquiry, "vendor")) if ident else bytes(8),
        product=_pad(ident.product, _size(StandardInquiry, "product")) if ident else bytes(16),
        revision=(ident.version.encode("ascii", "replace")[:4].ljust(4, b"\0")
                  if ident else bytes(4))))


def standard_inquiry(ident: DiskIdentity, alloc: int) -> bytes:
    """Standard INQUIRY data (SPC-4 §6.4.2), ``min(alloc, 256)`` bytes as QEMU returns:
    beyond the 36 declared bytes, zeros, and ADDITIONAL LENGTH counting them."""
    n = min(alloc, MAX_INQUIRY_LEN)
    b = bytearray(_inquiry(_DISK, ident).ljust(max(n, _INQ_LEN), b"\0"))
    if n > _INQ_LEN:
        b[_INQ_ADDL - 1] = n - _INQ_ADDL
    return bytes(b[:n])


def lun_not_present_inquiry(alloc: int) -> bytes:
    """INQUIRY on a LUN with no device: peripheral qualifier 3, type 0x1F (SPC-4 §6.4.2)."""
    return _inquiry(dict(qualifier=3, device_type=0x1F), None)[:min(alloc, _INQ_LEN)]


def _vpd(page: int, **fields) -> bytes:
    con = VPD_PAGES[page]
    return con.build(dict(header=dict(peripheral=_DISK, page_code=page,
                                      page_length=con.sizeof() - _VPD_LEN), **fields))


def vpd_page(ident: DiskIdentity, page: int, capacity_blocks: int, discard: bool) -> bytes | None:
    """VPD page ``page`` (SPC-4 §7.8, SBC-3 §6.5), or None if unsupported."""
    if page == 0x00:                               # supported VPD pages
        codes = [0x00] + ([0x80] if ident.serial else []) + [0x83, 0xB0, 0xB1, 0xB2]
        return SupportedVpd.build(dict(header=dict(peripheral=_DISK, page_code=page,
                                                   page_length=len(codes)), pages=codes))
    if page == 0x80:                               # unit serial number
        if not ident.serial:
            return None
        serial = ident.serial.encode("ascii", "replace")[:36]
        return UnitSerial.build(dict(header=dict(peripheral=_DISK, page_code=page,
                                                 page_length=len(serial)), serial=serial))
    if page == 0x83:                               # device identification
        did = (ident.device_id or "")[:247].encode("ascii", "replace")
        desc = DesignationDescriptor.build(dict(
            byte0=dict(protocol_identifier=0, code_set=CODE_SET_ASCII),
            byte1=dict(piv=False, association=0, designator_type=DESIGNATOR_VENDOR_SPECIFIC),
            reserved=0, designator_length=len(did), designator=did)) if did else b""
        return DeviceIdentification.build(dict(header=dict(peripheral=_DISK, page_code=page,
                                                           page_length=len(desc)),
                                               descriptors=desc))
    if page == 0xB0:                               # block limits (SBC-3 §6.5.3)
        return _vpd(page, flags=dict(wsnz=True), max_compare_and_write_length=0,
                    optimal_transfer_length_granularity=0,
                    max_transfer_length=0,         # not reported
                    optimal_transfer_length=0, max_prefetch_length=0,
                    max_unmap_lba_count=MAX_UNMAP_BLOCKS,
                    max_unmap_block_descriptor_count=MAX_UNMAP_DESCRIPTORS,
                    optimal_unmap_granularity=UNMAP_GRANULARITY,
                    unmap_alignment=dict(ugavalid=False, unmap_granularity_alignment=0),
                    max_write_same_length=MAX_WRITE_SAME_BLOCKS, reserved=bytes(20))
    if page == 0xB1:                               # block device characteristics
        return _vpd(page, medium_rotation_rate=ident.rotation_rate, product_type=0,
                    byte7=dict(wabereq=0, wacereq=0, nominal_form_factor=0), reserved=bytes(56))
    if page == 0xB2:                               # logical block provisioning (SBC-3 §6.5.4)
        # LBPU (UNMAP), LBPWS (WRITE SAME 16 + UNMAP), LBPWS10; thin when discard works.
        return _vpd(page, threshold_exponent=0,
                    flags=dict(lbpu=True, lbpws=True, lbpws10=True, lbprz=False, anc_sup=False,
                               dp=False),
                    type=dict(provisioning_type="THIN" if discard else "RESOURCE"), reserved=0)
    return None


# --- mode pages --------------------------------------------------------------------

class PageControl:
    CURRENT, CHANGEABLE, DEFAULT, SAVED = 0, 1, 2, 3


MODE_PAGE_RW_ERROR = 0x01
MODE_PAGE_CACHING = 0x08
MODE_PAGE_CONTROL = 0x0A
MODE_PAGE_ALL = 0x3F
MODE_PAGES = (MODE_PAGE_RW_ERROR, MODE_PAGE_CACHING, MODE_PAGE_CONTROL)
MODE_PAGE_DECLS = {MODE_PAGE_RW_ERROR: RwErrorRecoveryPage, MODE_PAGE_CACHING: CachingPage,
                   MODE_PAGE_CONTROL: ControlPage}
#: the WCE bit (in place) and the offset of its byte in the caching page
CACHING_WCE = 1 << bits(CachingPage.subcons[1].subcon)["wce"][0]
CACHING_FLAGS_OFFSET = offsets(CachingPage)["flags"]


def _zero(con) -> dict:
    """Every field of a declaration at zero (booleans False, bytes zero-filled)."""
    out: dict = {}
    for sc in con.subcons:
        if not sc.name:
            continue
        inner = sc.subcon
        if hasattr(inner, "subcons") or hasattr(getattr(inner, "subcon", None), "subcons"):
            out[sc.name] = _zero(inner if hasattr(inner, "subcons") else inner.subcon)
        elif isinstance(inner, Bytes):
            out[sc.name] = bytes(inner.length)
        else:
            out[sc.name] = 0
    return out


def mode_page(page: int, pc: int, wce: bool, default_wce: bool) -> bytes:
    """One mode page (with its 2-byte header) for page control ``pc`` (not SAVED).

    The changeable-values form is the mask of bits MODE SELECT may change:
    only WCE, in the caching page (SBC-3 §6.4.5)."""
    con = MODE_PAGE_DECLS.get(page)
    if con is None:
        raise ValueError(f"no mode page {page:#x}")
    v = _zero(con)
    v["header"] = dict(byte0=dict(ps=False, spf=False, page_code=page),
                       page_length=con.sizeof() - ModePageHeader.sizeof())
    changeable = pc == PageControl.CHANGEABLE
    if page == MODE_PAGE_RW_ERROR:                 # SBC-3 §6.4.7
        v["flags"]["awre"] = not changeable
    elif page == MODE_PAGE_CACHING:                # SBC-3 §6.4.5
        v["flags"]["wce"] = True if changeable else (
            default_wce if pc == PageControl.DEFAULT else wce)
    else:                                          # control, SPC-4 §7.5.8
        if not changeable:
            v["byte2"]["gltsd"] = True             # no implicit log saving
            v["byte3"]["queue_algorithm_modifier"] = 1   # unrestricted reordering
            v["busy_timeout_period"] = 0xFFFF      # unlimited
    return con.build(v)


def mode_page_length(page: int) -> int | None:
    con = MODE_PAGE_DECLS.get(page)
    return None if con is None else con.sizeof()


def mode_page_wce(page: bytes) -> bool:
    """The WCE bit of a caching mode page (as MODE SELECT sent it)."""
    return bool(page[CACHING_FLAGS_OFFSET] & CACHING_WCE)


def block_descriptor(blocks: int, block_length: int) -> bytes:
    """The mode parameter block descriptor (SPC-4 §7.5.6.1): NUMBER OF BLOCKS is zero when the
    capacity does not fit its 24 bits (as QEMU reports it)."""
    return BlockDescriptor.build(dict(density_code=0,
                                      number_of_blocks=blocks if blocks <= _BD_BLOCKS_MAX else 0,
                                      block_length=block_length))


def block_descriptor_length(block: bytes) -> int:
    """LOGICAL BLOCK LENGTH of a block descriptor (MODE SELECT)."""
    return BlockDescriptor.parse(block[:BLOCK_DESCRIPTOR_LEN]).block_length


def mode_header(ten: bool, data_length: int, write_protected: bool, bd_length: int) -> bytes:
    """The mode parameter header (6 or 10) (SPC-4 §7.5.5); MODE DATA LENGTH excludes itself,
    capped at 255 in the 6-byte form; DPOFUA is set (FUA is honoured)."""
    dsp = dict(wp=write_protected, dpofua=True)
    if ten:
        return ModeHeader10.build(dict(mode_data_length=data_length - 2, medium_type=0,
                                       device_specific=dsp, byte4=dict(longlba=False),
                                       reserved=0, block_descriptor_length=bd_length))
    return ModeHeader6.build(dict(mode_data_length=min(data_length - 1, 0xFF), medium_type=0,
                                  device_specific=dsp, block_descriptor_length=bd_length))
