"""Every guest-visible virtio layout, declared once (virtio 1.2).

The transport (:mod:`.pci`), the split rings (:mod:`.virtqueue`) and the
block device (:mod:`.blk`) use the fast forms derived here at import time
(:mod:`blockbed.devices.fastform`); the trace decoders parse with the
declarations themselves.
"""

from __future__ import annotations

from construct import (Array, Bytes, Enum, Flag, FlagsEnum, Int8ul, Int16ul, Int32ul, Int64ul,
                       Padding, Struct, this)

from ..fastform import bits, fast, le_bits, offsets

# --- virtio PCI capabilities (§4.1.4) -------------------------------------------------------
CfgType = Enum(Int8ul, COMMON_CFG=1, NOTIFY_CFG=2, ISR_CFG=3, DEVICE_CFG=4, PCI_CFG=5,
               SHARED_MEMORY_CFG=8, VENDOR_CFG=9)

#: struct virtio_pci_cap (§4.1.4)
PciCap = Struct(
    "cap_vndr" / Int8ul, "cap_next" / Int8ul, "cap_len" / Int8ul, "cfg_type" / CfgType,
    "bar" / Int8ul, "id" / Int8ul, "padding" / Padding(2),
    "offset" / Int32ul, "length" / Int32ul,
)
#: struct virtio_pci_notify_cap (§4.1.4.4)
NotifyCap = Struct("cap" / PciCap, "notify_off_multiplier" / Int32ul)
#: struct virtio_pci_cfg_cap (§4.1.4.9)
PciCfgCap = Struct("cap" / PciCap, "pci_cfg_data" / Bytes(4))

DeviceStatus = FlagsEnum(Int8ul, ACKNOWLEDGE=1, DRIVER=2, DRIVER_OK=4, FEATURES_OK=8,
                         DEVICE_NEEDS_RESET=64, FAILED=128)

#: struct virtio_pci_common_cfg (§4.1.4.3), with queue_notify_data and queue_reset
CommonCfg = Struct(
    "device_feature_select" / Int32ul, "device_feature" / Int32ul,
    "driver_feature_select" / Int32ul, "driver_feature" / Int32ul,
    "config_msix_vector" / Int16ul, "num_queues" / Int16ul,
    "device_status" / DeviceStatus, "config_generation" / Int8ul,
    "queue_select" / Int16ul, "queue_size" / Int16ul, "queue_msix_vector" / Int16ul,
    "queue_enable" / Int16ul, "queue_notify_off" / Int16ul,
    "queue_desc" / Int64ul, "queue_driver" / Int64ul, "queue_device" / Int64ul,
    "queue_notify_data" / Int16ul, "queue_reset" / Int16ul,
)

#: The legacy register block at the start of the I/O BAR0 of a transitional or
#: legacy-only device (virtio 1.2 §4.1.4.8; virtio 0.9.5 "Virtio Header")
LegacyCfg = Struct(
    "host_features" / Int32ul, "guest_features" / Int32ul, "queue_pfn" / Int32ul,
    "queue_num" / Int16ul, "queue_sel" / Int16ul, "queue_notify" / Int16ul,
    "device_status" / DeviceStatus, "isr" / Int8ul,
)
#: Follows LegacyCfg only while MSI-X is enabled (§4.1.4.8); device configuration
#: comes after it (or right after LegacyCfg while MSI-X is disabled)
LegacyMsix = Struct("config_msix_vector" / Int16ul, "queue_msix_vector" / Int16ul)
#: A legacy queue address is a page frame number of 4096-byte pages (§4.1.4.8)
LEGACY_PFN_SHIFT = 12
#: Legacy rings (§2.7.2): the used ring starts at the next 4096-byte boundary
LEGACY_VRING_ALIGN = 4096

#: A notification (§4.1.4.4; without VIRTIO_F_NOTIFICATION_DATA): the queue index
Notify = Struct("vqn" / Int16ul)

#: The ISR status byte (§4.1.4.5), read to clear
Isr = le_bits(Padding(6), "device_config" / Flag, "queue" / Flag)

# --- split virtqueues (§2.7) -----------------------------------------------------------------
DescFlags = FlagsEnum(Int16ul, NEXT=1, WRITE=2, INDIRECT=4)
#: struct virtq_desc (§2.7.5)
VirtqDesc = Struct("addr" / Int64ul, "len" / Int32ul, "flags" / DescFlags, "next" / Int16ul)
#: struct virtq_avail (§2.7.6); parse with ``size=`` the queue size
VirtqAvail = Struct(
    "flags" / FlagsEnum(Int16ul, NO_INTERRUPT=1), "idx" / Int16ul,
    "ring" / Array(this._params.size, Int16ul), "used_event" / Int16ul,
)
#: struct virtq_used_elem (§2.7.8)
VirtqUsedElem = Struct("id" / Int32ul, "len" / Int32ul)
#: struct virtq_used (§2.7.8); parse with ``size=`` the queue size
VirtqUsed = Struct(
    "flags" / FlagsEnum(Int16ul, NO_NOTIFY=1), "idx" / Int16ul,
    "ring" / Array(this._params.size, VirtqUsedElem), "avail_event" / Int16ul,
)

# --- virtio-blk (§5.2) -------------------------------------------------------------------------
ReqType = Enum(Int32ul, IN=0, OUT=1, FLUSH=4, GET_ID=8, GET_LIFETIME=10, DISCARD=11,
               WRITE_ZEROES=13, SECURE_ERASE=14)
#: struct virtio_blk_req's device-readable header (§5.2.6)
BlkReqHeader = Struct("type" / ReqType, "reserved" / Int32ul, "sector" / Int64ul)
#: The status byte the device writes last (§5.2.6)
BlkStatus = Enum(Int8ul, OK=0, IOERR=1, UNSUPP=2)
#: struct virtio_blk_discard_write_zeroes (§5.2.6)
DwzSegment = Struct(
    "sector" / Int64ul, "num_sectors" / Int32ul,
    "flags" / le_bits(Padding(31), "unmap" / Flag),
)
#: struct virtio_blk_config (§5.2.4) up to write_zeroes_may_unmap (57 bytes, as QEMU
#: sizes it when DISCARD and WRITE_ZEROES are offered)
BlkConfig = Struct(
    "capacity" / Int64ul, "size_max" / Int32ul, "seg_max" / Int32ul,
    "geometry" / Struct("cylinders" / Int16ul, "heads" / Int8ul, "sectors" / Int8ul),
    "blk_size" / Int32ul,
    "topology" / Struct("physical_block_exp" / Int8ul, "alignment_offset" / Int8ul,
                        "min_io_size" / Int16ul, "opt_io_size" / Int32ul),
    "writeback" / Int8ul, "unused0" / Int8ul, "num_queues" / Int16ul,
    "max_discard_sectors" / Int32ul, "max_discard_seg" / Int32ul,
    "discard_sector_alignment" / Int32ul,
    "max_write_zeroes_sectors" / Int32ul, "max_write_zeroes_seg" / Int32ul,
    "write_zeroes_may_unmap" / Int8ul,
)

# --- fast forms, derived once ----------------------------------------------------------------
DESC = fast(VirtqDesc)
DESC_F_NEXT = DescFlags.flags["NEXT"]
DESC_F_WRITE = DescFlags.flags["WRITE"]
DESC_F_INDIRECT = DescFlags.flags["INDIRECT"]
AVAIL_F_NO_INTERRUPT = VirtqAvail.subcons[0].subcon.flags["NO_INTERRUPT"]
USED_ELEM = fast(VirtqUsedElem)
RING_U16 = fast(Struct("v" / Int16ul))
_avail = offsets(VirtqAvail, size=0)
AVAIL_FLAGS = _avail["flags"]
AVAIL_IDX = _avail["idx"]
AVAIL_RING = _avail["ring"]
AVAIL_ENTRY = Int16ul.sizeof()
_used = offsets(VirtqUsed, size=0)
USED_IDX = _used["idx"]
USED_RING = _used["ring"]


def avail_size(n: int) -> int:
    """Bytes of the available ring for queue size ``n`` (§2.7: 6 + 2n)."""
    return used_event_offset(n) + VirtqAvail.subcons[-1].sizeof()


def used_size(n: int) -> int:
    """Bytes of the used ring for queue size ``n`` (§2.7: 6 + 8n)."""
    return avail_event_offset(n) + VirtqUsed.subcons[-1].sizeof()


def used_event_offset(n: int) -> int:
    """Offset of ``used_event`` in the available ring (§2.7.10)."""
    return offsets(VirtqAvail, size=n)["used_event"]


def avail_event_offset(n: int) -> int:
    """Offset of ``avail_event`` in the used ring (§2.7.10)."""
    return offsets(VirtqUsed, size=n)["avail_event"]


BLK_HDR = fast(BlkReqHeader)
BLK_DWZ = fast(DwzSegment)
DWZ_FLAG_UNMAP = 1 << bits(DwzSegment.subcons[2].subcon)["unmap"][0]
BLK_CONFIG = fast(BlkConfig)
BLK_WRITEBACK_OFFSET = offsets(BlkConfig)["writeback"]
COMMON_CFG_SIZE = CommonCfg.sizeof()
#: offset -> (name, size) of every common-configuration field (the transport's dispatch)
COMMON_FIELDS: dict[int, tuple[str, int]] = {
    off: (sc.name, sc.sizeof()) for sc, off in
    zip(CommonCfg.subcons, offsets(CommonCfg).values())}
#: offset -> (name, size) of the legacy registers, MSI-X part at its offset after LegacyCfg
LEGACY_SIZE = LegacyCfg.sizeof()
LEGACY_MSIX_SIZE = LegacyMsix.sizeof()
LEGACY_FIELDS: dict[int, tuple[str, int]] = {
    off: (sc.name, sc.sizeof()) for sc, off in
    zip(LegacyCfg.subcons, offsets(LegacyCfg).values())}
LEGACY_FIELDS.update({
    LEGACY_SIZE + off: (sc.name, sc.sizeof()) for sc, off in
    zip(LegacyMsix.subcons, offsets(LegacyMsix).values())})


def legacy_rings(base: int, n: int) -> tuple[int, int, int]:
    """(desc, avail, used) addresses of a legacy ring of size ``n`` at ``base``
    (§2.7.2: avail right after the descriptor table, used aligned to 4096)."""
    avail = base + DESC.size * n
    used = avail + avail_size(n)
    used = (used + LEGACY_VRING_ALIGN - 1) & ~(LEGACY_VRING_ALIGN - 1)
    return base, avail, used


_cap = offsets(PciCap)
CAP_OFF_CFG_LEN, CAP_OFF_CFG_TYPE, CAP_OFF_BAR = _cap["cap_len"], _cap["cfg_type"], _cap["bar"]
CAP_OFF_OFFSET = _cap["offset"]
CAP_OFF_NOTIFY_MULT = offsets(NotifyCap)["notify_off_multiplier"]
CAP_OFF_PCI_CFG_DATA = offsets(PciCfgCap)["pci_cfg_data"]
CAP_LEN = PciCap.sizeof()
NOTIFY_CAP_LEN = NotifyCap.sizeof()
CAP_OFFSET_LENGTH = fast(Struct("offset" / Int32ul, "length" / Int32ul))
ISR_QUEUE = 1 << bits(Isr)["queue"][0]
ISR_CONFIG = 1 << bits(Isr)["device_config"][0]
