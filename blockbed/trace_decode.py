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

from .devices.ata import layout as ata_layout
from .devices.ata.regs import DEV_HEAD
from .devices.fastform import to_dict
from .devices.virtio import layout as virtio_layout

#: virtio-blk request types (virtio 1.2 §5.2.6), from the declaration
VIRTIO_BLK_TYPES = {v: str(k) for k, v in virtio_layout.ReqType.encmapping.items()}

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
    ignores the "previous content" bytes a 48-bit command uses.  ``fields``: the
    registers by the declaration :data:`~blockbed.devices.ata.layout.CommandBlock`
    (Device and Device Control bits by name)."""
    name = ATA_COMMANDS.get(tf.command, f"{tf.command:#04x}")
    if "EXT" in name or "FPDMA" in name:
        lba, count, lba48 = tf.lba, tf.count or 65536, True
    else:
        lba, count, lba48 = (tf.lba & 0xFFFFFF) | ((tf.device & DEV_HEAD) << 24), (tf.count & 0xFF) or 256, False
    return {"command": name, "command_code": tf.command, "features": tf.features & (0xFFFF if lba48 else 0xFF),
            "count": count, "lba": lba, "device": tf.device, "lba48": lba48,
            "fields": to_dict(ata_layout.CommandBlock.parse(ata_layout.COMMAND_BLOCK.pack(
                tf.command & 0xFF, tf.features & 0xFF, tf.lba & 0xFF, tf.lba >> 8 & 0xFF,
                tf.lba >> 16 & 0xFF, tf.device & 0xFF, tf.lba >> 24 & 0xFF, tf.lba >> 32 & 0xFF,
                tf.lba >> 40 & 0xFF, tf.features >> 8 & 0xFF, tf.count & 0xFF, tf.count >> 8 & 0xFF, 0,
                tf.control & 0xFF)))}


# AHCI command headers, FISes and port registers: parsed with their declarations.
from .trace_decode_ahci import ATA_COMMANDS, h2d_fis  # noqa: E402,F401
from .trace_decode_ahci import command_header as ahci_command_header  # noqa: E402,F401
from .trace_decode_ahci import fis as ahci_fis  # noqa: E402,F401
from .trace_decode_ahci import port_register as ahci_port_register  # noqa: E402,F401

# SCSI CDBs, LSI registers and SCRIPTS instructions: parsed with their declarations.
from .trace_decode_scsi import (LSI_REGISTERS, SCSI_OPCODES, lsi_insn, lsi_register,  # noqa: E402,F401
                                lsi_register_value, scsi_cdb)
