"""INQUIRY data, VPD pages (SPC-4 §7.8) and mode pages (SPC-4 §7.5, SBC-3 §6.4).

Pure functions of a :class:`DiskIdentity` and the live state, so each page
can be unit-tested byte for byte.  The contents follow QEMU 7.2's scsi-hd
where it has the page (vendor "QEMU", product "QEMU HARDDISK", version
"2.5+", SPC-3 claimed in byte 2, the 0xB0/0xB2 thin-provisioning fields);
docs/lsi.md lists where we differ (the control mode page 0x0A, which QEMU
lacks, and DPOFUA, which we set because FUA is honoured).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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


def _pad(s: str, n: int) -> bytes:
    return s.encode("ascii", "replace")[:n].ljust(n, b" ")


def standard_inquiry(ident: DiskIdentity, alloc: int) -> bytes:
    """Standard INQUIRY data (SPC-4 §6.4.2), ``min(alloc, 256)`` bytes as QEMU returns."""
    n = min(alloc, MAX_INQUIRY_LEN)
    b = bytearray(max(n, 36))
    b[0] = 0x00                                  # peripheral qualifier 0, direct-access block device
    b[1] = 0x80 if ident.removable else 0x00     # RMB
    b[2] = 0x05                                  # VERSION: SPC-3
    b[3] = 0x12                                  # HISUP, response data format 2
    b[4] = (n - 5) if n > 36 else 31             # ADDITIONAL LENGTH
    b[7] = 0x10 | (0x02 if ident.tcq else 0)     # SYNC, CMDQUE
    b[8:16] = _pad(ident.vendor, 8)
    b[16:32] = _pad(ident.product, 16)
    b[32:36] = ident.version.encode("ascii", "replace")[:4].ljust(4, b"\0")
    return bytes(b[:n])


def lun_not_present_inquiry(alloc: int) -> bytes:
    """INQUIRY on a LUN with no device: peripheral qualifier 3, type 0x1F (SPC-4 §6.4.2)."""
    b = bytearray(36)
    b[0] = 0x7F
    b[2] = 0x05
    b[3] = 0x12
    b[4] = 31
    return bytes(b[:min(alloc, 36)])


def vpd_page(ident: DiskIdentity, page: int, capacity_blocks: int, discard: bool) -> bytes | None:
    """VPD page ``page`` (SPC-4 §7.8, SBC-3 §6.5), or None if unsupported."""
    body: bytes
    if page == 0x00:                               # supported VPD pages
        pages = [0x00] + ([0x80] if ident.serial else []) + [0x83, 0xB0, 0xB1, 0xB2]
        body = bytes(pages)
    elif page == 0x80:                             # unit serial number
        if not ident.serial:
            return None
        body = ident.serial.encode("ascii", "replace")[:36]
    elif page == 0x83:                             # device identification
        did = (ident.device_id or "")[:247].encode("ascii", "replace")
        body = (bytes([0x02, 0x00, 0x00, len(did)]) + did) if did else b""
    elif page == 0xB0:                             # block limits (SBC-3 §6.5.3)
        bl = bytearray(0x3C)
        bl[0] = 0x01                               # WSNZ: WRITE SAME with 0 blocks is refused
        struct.pack_into(">I", bl, 4, 0)           # MAXIMUM TRANSFER LENGTH: not reported
        struct.pack_into(">II", bl, 16, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS)
        struct.pack_into(">I", bl, 24, UNMAP_GRANULARITY)
        struct.pack_into(">Q", bl, 32, MAX_WRITE_SAME_BLOCKS)
        body = bytes(bl)
    elif page == 0xB1:                             # block device characteristics
        bc = bytearray(0x3C)
        struct.pack_into(">H", bc, 0, ident.rotation_rate)
        body = bytes(bc)
    elif page == 0xB2:                             # logical block provisioning (SBC-3 §6.5.4)
        # LBPU (UNMAP), LBPWS (WRITE SAME 16 + UNMAP), LBPWS10; type 2 = thin.
        body = bytes([0x00, 0xE0, 0x02 if discard else 0x01, 0x00])
    else:
        return None
    return bytes([0x00, page, len(body) >> 8, len(body) & 0xFF]) + body


# --- mode pages --------------------------------------------------------------------

class PageControl:
    CURRENT, CHANGEABLE, DEFAULT, SAVED = 0, 1, 2, 3


MODE_PAGE_RW_ERROR = 0x01
MODE_PAGE_CACHING = 0x08
MODE_PAGE_CONTROL = 0x0A
MODE_PAGE_ALL = 0x3F
MODE_PAGES = (MODE_PAGE_RW_ERROR, MODE_PAGE_CACHING, MODE_PAGE_CONTROL)
CACHING_WCE = 0x04   # byte 2 bit 2 of the caching page


def mode_page(page: int, pc: int, wce: bool, default_wce: bool) -> bytes:
    """One mode page (with its 2-byte header) for page control ``pc`` (not SAVED).

    The changeable-values form is the mask of bits MODE SELECT may change:
    only WCE, in the caching page (SBC-3 §6.4.5)."""
    if page == MODE_PAGE_RW_ERROR:                 # SBC-3 §6.4.7
        p = bytearray(12)
        if pc != PageControl.CHANGEABLE:
            p[2] = 0x80                            # AWRE
    elif page == MODE_PAGE_CACHING:                # SBC-3 §6.4.5
        p = bytearray(20)
        if pc == PageControl.CHANGEABLE:
            p[2] = CACHING_WCE
        elif pc == PageControl.DEFAULT:
            p[2] = CACHING_WCE if default_wce else 0
        else:
            p[2] = CACHING_WCE if wce else 0
    elif page == MODE_PAGE_CONTROL:                # SPC-4 §7.5.7
        p = bytearray(12)
        if pc != PageControl.CHANGEABLE:
            p[2] = 0x02                            # GLTSD: no implicit log saving
            p[3] = 0x10                            # queue algorithm modifier 1: unrestricted
            p[8:10] = b"\xff\xff"                  # BUSY TIMEOUT PERIOD: unlimited
    else:
        raise ValueError(f"no mode page {page:#x}")
    p[0] = page
    p[1] = len(p) - 2
    return bytes(p)


def mode_page_length(page: int) -> int | None:
    return {MODE_PAGE_RW_ERROR: 12, MODE_PAGE_CACHING: 20, MODE_PAGE_CONTROL: 12}.get(page)
