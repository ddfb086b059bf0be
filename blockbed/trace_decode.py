"""Decode the structures trace events carry: one small function per kind.

Events that carry a structure carry it as field names and values (a plain
dict, JSON-friendly), never as hex, so a student reads ``{"opcode":
"WRITE(10)", "lba": 2048, "blocks": 8, "fua": 1}`` rather than
``2a08000008000000080000``.  Every decoder lives here so that the
``construct`` layout declarations (virtio, AHCI, ATA, SCSI, LSI) can replace
the bodies in one place (virtio, AHCI, ATA and IDE ones now parse with
their declarations): each function takes the raw bytes (or the parsed
object a device already has) and returns a dict.

Only called under ``if trace.enabled:``.
"""

from __future__ import annotations

import struct
from typing import Any

from .devices.fastform import to_dict
from .devices.virtio import layout as virtio_layout

#: virtio-blk request types (virtio 1.2 §5.2.6), from the declaration
VIRTIO_BLK_TYPES = {v: str(k) for k, v in virtio_layout.ReqType.encmapping.items()}

#: ATA commands seen in the guests (ATA8-ACS §7)
ATA_COMMANDS = {0x20: "READ SECTORS", 0x24: "READ SECTORS EXT", 0x25: "READ DMA EXT",
                0x30: "WRITE SECTORS", 0x34: "WRITE SECTORS EXT", 0x35: "WRITE DMA EXT",
                0x3D: "WRITE DMA FUA EXT", 0x60: "READ FPDMA QUEUED", 0x61: "WRITE FPDMA QUEUED",
                0x06: "DATA SET MANAGEMENT", 0xC8: "READ DMA", 0xCA: "WRITE DMA",
                0xE7: "FLUSH CACHE", 0xEA: "FLUSH CACHE EXT", 0xEC: "IDENTIFY DEVICE",
                0xEF: "SET FEATURES", 0x2F: "READ LOG EXT", 0x90: "EXECUTE DEVICE DIAGNOSTIC"}

#: SCSI operation codes (SPC-4 / SBC-3)
SCSI_OPCODES = {0x00: "TEST UNIT READY", 0x03: "REQUEST SENSE", 0x12: "INQUIRY",
                0x1A: "MODE SENSE(6)", 0x25: "READ CAPACITY(10)", 0x28: "READ(10)",
                0x2A: "WRITE(10)", 0x2F: "VERIFY(10)", 0x35: "SYNCHRONIZE CACHE(10)",
                0x41: "WRITE SAME(10)", 0x42: "UNMAP", 0x5A: "MODE SENSE(10)",
                0x88: "READ(16)", 0x8A: "WRITE(16)", 0x91: "SYNCHRONIZE CACHE(16)",
                0x93: "WRITE SAME(16)", 0x9E: "SERVICE ACTION IN(16)", 0xA0: "REPORT LUNS"}


def op_kind(name: str) -> str:
    """The common name of an operation across controllers: read, write, flush,
    discard, write_zeroes or other (what the viewer groups by)."""
    n = name.upper()
    if "FLUSH" in n or "SYNCHRONIZE" in n:
        return "flush"
    if "WRITE SAME" in n or n == "WRITE_ZEROES":
        return "write_zeroes"
    if n in ("DISCARD", "UNMAP", "DATA SET MANAGEMENT"):
        return "discard"
    if n == "OUT" or n.startswith("WRITE"):
        return "write"
    if n == "IN" or n.startswith("READ") and "CAPACITY" not in n and "LOG" not in n:
        return "read"
    return "other"


def virtio_blk_header(raw: bytes) -> dict[str, Any]:
    """The virtio-blk request header (virtio 1.2 §5.2.6) as the guest wrote it:
    type (by name), reserved, sector — parsed by ``virtio.layout.BlkReqHeader``."""
    return to_dict(virtio_layout.BlkReqHeader.parse(raw))


def virtq_desc(raw: bytes) -> dict[str, Any]:
    """A split-ring descriptor (virtio 1.2 §2.7.5): addr, len, flags (by name), next."""
    return to_dict(virtio_layout.VirtqDesc.parse(raw))


def virtio_blk_dwz(raw: bytes) -> dict[str, Any]:
    """A discard / write-zeroes segment (virtio 1.2 §5.2.6): sector, num_sectors, flags."""
    return to_dict(virtio_layout.DwzSegment.parse(raw))


def ata_taskfile(tf: Any) -> dict[str, Any]:
    """The ATA command-block registers (a :class:`~blockbed.devices.ata.regs.TaskFile`)
    as the command addresses them: a 28-bit command (ATA8-ACS §4.1) takes LBA
    bits 27:24 from the device register and an 8-bit count (0 means 256), and
    ignores the "previous content" bytes a 48-bit command uses."""
    name = ATA_COMMANDS.get(tf.command, f"{tf.command:#04x}")
    if "EXT" in name or "FPDMA" in name:
        lba, count, lba48 = tf.lba, tf.count or 65536, True
    else:
        lba, count, lba48 = (tf.lba & 0xFFFFFF) | ((tf.device & 0x0F) << 24), (tf.count & 0xFF) or 256, False
    return {"command": name, "command_code": tf.command, "features": tf.features & (0xFFFF if lba48 else 0xFF),
            "count": count, "lba": lba, "device": tf.device, "lba48": lba48}


def h2d_fis(cfis: bytes) -> dict[str, Any]:
    """A Register Host-to-Device FIS (SATA 3.x §10.5.5, AHCI §4.2.3.1 command FIS)."""
    lba = int.from_bytes(cfis[4:7], "little") | (int.from_bytes(cfis[8:11], "little") << 24)
    return {"fis_type": cfis[0], "c": bool(cfis[1] & 0x80), "pm_port": cfis[1] & 0xF,
            "command": ATA_COMMANDS.get(cfis[2], f"{cfis[2]:#04x}"), "command_code": cfis[2],
            "features": cfis[3] | (cfis[11] << 8), "lba": lba, "device": cfis[7],
            "count": cfis[12] | (cfis[13] << 8), "control": cfis[15]}


def ahci_command_header(dw0: int, prdbc: int, ctba: int) -> dict[str, Any]:
    """An AHCI command header (AHCI 1.3 §4.2.2): CFL, A, W, P, PRDTL, PRDBC, CTBA."""
    return {"cfl": dw0 & 0x1F, "atapi": bool(dw0 & 0x20), "write": bool(dw0 & 0x40),
            "prefetch": bool(dw0 & 0x80), "prdtl": dw0 >> 16, "prdbc": prdbc, "ctba": ctba}


def scsi_cdb(cdb: bytes) -> dict[str, Any]:
    """A SCSI CDB (SBC-3 §5): operation, and LBA / transfer length / FUA for the
    READ, WRITE, VERIFY and SYNCHRONIZE CACHE families."""
    op = cdb[0]
    out: dict[str, Any] = {"opcode": SCSI_OPCODES.get(op, f"{op:#04x}"), "opcode_code": op}
    group = op >> 5
    if group in (1, 2) and len(cdb) >= 10:        # 10-byte CDBs
        out["lba"] = struct.unpack_from(">I", cdb, 2)[0]
        out["blocks"] = struct.unpack_from(">H", cdb, 7)[0]
    elif group == 4 and len(cdb) >= 16:           # 16-byte CDBs
        out["lba"] = struct.unpack_from(">Q", cdb, 2)[0]
        out["blocks"] = struct.unpack_from(">I", cdb, 10)[0]
    if op in (0x28, 0x2A, 0x88, 0x8A, 0x2F):
        out["fua"] = bool(cdb[1] & 0x08)
    return out


#: LSI53C895A operating registers by offset (LSI 53C895A TRM §5)
LSI_REGISTERS = {0x00: "SCNTL0", 0x01: "SCNTL1", 0x02: "SCNTL2", 0x03: "SCNTL3", 0x04: "SCID",
                 0x0C: "DSTAT", 0x0D: "SSTAT0", 0x0E: "SSTAT1", 0x0F: "SSTAT2",
                 0x10: "DSA", 0x14: "ISTAT", 0x2C: "DSP", 0x30: "DSPS", 0x38: "DMODE",
                 0x39: "DIEN", 0x3B: "DCNTL", 0x40: "SIEN0", 0x41: "SIEN1",
                 0x42: "SIST0", 0x43: "SIST1"}


def lsi_register(offset: int) -> str:
    """The name of an LSI register byte (the aligned dword's name plus a byte suffix)."""
    name = LSI_REGISTERS.get(offset)
    if name is not None:
        return name
    base = offset & ~3
    if base in LSI_REGISTERS and LSI_REGISTERS[base] in ("DSA", "DSP", "DSPS"):
        return f"{LSI_REGISTERS[base]}+{offset - base}"
    return f"{offset:#04x}"
