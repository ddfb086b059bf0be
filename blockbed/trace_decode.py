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


# SCSI CDBs, LSI registers and SCRIPTS instructions: parsed with their declarations.
from .trace_decode_scsi import (LSI_REGISTERS, SCSI_OPCODES, lsi_insn, lsi_register,  # noqa: E402,F401
                                lsi_register_value, scsi_cdb)
