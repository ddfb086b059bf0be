"""Trace decoders for AHCI: command headers, FISes and port register writes.

All of them parse with the ``construct`` declarations in
:mod:`blockbed.devices.ahci_layout` (and the ATA registers of
:mod:`blockbed.devices.ata.layout` inside the FISes), so a trace shows field
names, never hex.  The command and the header also get a short summary (the
ATA command by name, the 48-bit LBA, the 16-bit count, the table address) in
front of ``fields``, the whole parsed declaration.  :mod:`blockbed.trace_decode`
re-exports them (import this module through it).

Only called under ``if trace.enabled:``.
"""

from __future__ import annotations

from typing import Any

from .devices import ahci_layout as L
from .devices.fastform import bits, offsets, to_dict

__all__ = ["ATA_COMMANDS", "h2d_fis", "command_header", "fis", "port_register"]

#: ATA commands seen in the guests (ATA8-ACS §7)
ATA_COMMANDS = {0x20: "READ SECTORS", 0x24: "READ SECTORS EXT", 0x25: "READ DMA EXT",
                0x30: "WRITE SECTORS", 0x34: "WRITE SECTORS EXT", 0x35: "WRITE DMA EXT",
                0x3D: "WRITE DMA FUA EXT", 0x60: "READ FPDMA QUEUED", 0x61: "WRITE FPDMA QUEUED",
                0x06: "DATA SET MANAGEMENT", 0xC8: "READ DMA", 0xCA: "WRITE DMA",
                0xE7: "FLUSH CACHE", 0xEA: "FLUSH CACHE EXT", 0xEC: "IDENTIFY DEVICE",
                0xEF: "SET FEATURES", 0x2F: "READ LOG EXT", 0x90: "EXECUTE DEVICE DIAGNOSTIC"}
_FPDMA = (0x60, 0x61)
_H2D_OFF = offsets(L.RegH2dFis)
_CTBA_SHIFT = bits(L.CommandHeader.subcons[2].subcon)["ctba_31_7"][0]


def _lba(r: Any) -> int:
    return (r.lba_low | r.lba_mid << 8 | r.lba_high << 16 | r.lba_low_exp << 24
            | r.lba_mid_exp << 32 | r.lba_high_exp << 40)


def h2d_fis(raw: bytes) -> dict[str, Any]:
    """A Register Host-to-Device FIS (SATA 3.x §10.5.5; AHCI 1.3 §4.2.3 command FIS):
    the ATA command by name, 16-bit features and count, 48-bit LBA, the Device and
    Control registers as numbers; for READ/WRITE FPDMA QUEUED the tag (Count 7:3) and
    FUA (Device bit 7).  ``fields``: the whole FIS by its declaration."""
    p = L.RegH2dFis.parse(raw[:L.RegH2dFis.sizeof()])
    r = p.regs
    out: dict[str, Any] = {
        "fis_type": raw[0], "c": p.flags.c, "pm_port": p.flags.pm_port,
        "command": ATA_COMMANDS.get(r.command, f"{r.command:#04x}"), "command_code": r.command,
        "features": r.features | r.features_exp << 8, "lba": _lba(r),
        "device": raw[_H2D_OFF["regs.device"]], "count": r.count | r.count_exp << 8,
        "control": raw[_H2D_OFF["regs.control"]]}
    if r.command in _FPDMA:
        out["tag"] = r.count >> 3                    # SATA 3.x §13.6.4.1: Count 7:3
        out["fua"] = r.device.fua
    out["fields"] = to_dict(p)
    return out


def command_header(raw: bytes) -> dict[str, Any]:
    """An AHCI command header (AHCI 1.3 §4.2.2): CFL, A, W, P, PRDTL, PRDBC and the
    command table's address; ``fields``: the header by its declaration."""
    p = L.CommandHeader.parse(raw[:L.HDR_SIZE])
    i = p.info
    ctba = (p.ctbau << 32) | (p.ctba.ctba_31_7 << _CTBA_SHIFT)
    return {"cfl": i.cfl, "atapi": i.a, "write": i.w, "prefetch": i.p, "prdtl": i.prdtl,
            "prdbc": p.prdbc, "ctba": ctba, "fields": to_dict(p)}


_FIS_DECLS = {L.FIS_REG_H2D: L.RegH2dFis, L.FIS_REG_D2H: L.RegD2hFis, L.FIS_PIO_SETUP: L.PioSetupFis,
              L.FIS_DMA_SETUP: L.DmaSetupFis, L.FIS_SDB: L.SetDeviceBitsFis}


def fis(raw: bytes) -> dict[str, Any]:
    """Any FIS the HBA carries, by its type's declaration (SATA 3.x §10.5); an unknown
    type gives its number and the bytes."""
    con = _FIS_DECLS.get(raw[0]) if raw else None
    if con is None or len(raw) < con.sizeof():
        return {"fis_type": raw[0] if raw else None, "raw": bytes(raw).hex()}
    return to_dict(con.parse(raw[:con.sizeof()]))


_PORT_REGS = {off: sc for off, sc in zip(offsets(L.PortRegs).values(), L.PortRegs.subcons)}


def port_register(offset: int, value: int) -> dict[str, Any]:
    """A port register write (AHCI 1.3 §3.3) by name, and by field for the registers
    with declared bits (``{"register": "PxCMD", "fields": {"st": True, ...}}``)."""
    sc = _PORT_REGS.get(offset)
    if sc is None:
        return {"register": f"{offset:#04x}"}
    out: dict[str, Any] = {"register": "Px" + sc.name.upper()}
    if getattr(sc.subcon, "_bb_bits", None) is not None:
        out["fields"] = to_dict(sc.subcon.parse((value & 0xFFFFFFFF).to_bytes(4, "little")))
    return out
