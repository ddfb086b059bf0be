"""Drive options shared by the ATA controllers: reading the parsed ``--drive`` spec and
QEMU's default serial numbering."""

from __future__ import annotations

from typing import Any

from .drive import DriveConfig


def spec_option(spec: Any, *names: str) -> Any:
    """The first of ``names`` the spec sets: an attribute, a dict key or a device option."""
    for n in names:
        v = getattr(spec, n, None)
        if v is None and isinstance(spec, dict):
            v = spec.get(n)
        if v is None:
            opts = getattr(spec, "options", None) or getattr(spec, "device_options", None)
            if isinstance(opts, dict):
                v = opts.get(n)
        if v is not None:
            return v
    return None


def drive_config(spec: Any, default_serial: str) -> DriveConfig:
    """The drive identity from the spec's ``model``/``serial``/``firmware`` and sector
    size options, with ``default_serial`` when it names none."""
    cfg = DriveConfig(serial=default_serial)
    for key in ("model", "serial"):
        v = spec_option(spec, key)
        if v is not None:
            setattr(cfg, key, str(v))
    v = spec_option(spec, "firmware", "ver")
    if v is not None:
        cfg.firmware = str(v)
    for key, attr in (("logical_block_size", "logical_sector_size"),
                      ("physical_block_size", "physical_sector_size")):
        v = spec_option(spec, key)
        if v is not None:
            setattr(cfg, attr, int(v))
    return cfg


def default_serial(n: int) -> str:
    """QEMU's default ATA serial "QM%05d": a counter over every ATA device slot created
    on the pc machine — the PIIX IDE units first (1-4: bus*2+unit+1), then each AHCI
    port, which counts two (5, 7, … for the first HBA's ports 0, 1, …).  Matching it
    keeps guest transcripts identical."""
    return f"QM{n:05d}"
