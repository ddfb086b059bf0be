"""Disk layout and data pattern used by the Linux guest's /init (docs/linux-guest.md).

The test disk is DISK_SIZE bytes.  The ext4 filesystem covers [0, FS_SIZE); the raw pattern
region is [PATTERN_OFFSET, PATTERN_OFFSET + PATTERN_SIZE), written by dd with oflag=direct.
The pattern is deterministic so the host can check the disk after the guest ran.
"""
from __future__ import annotations

import hashlib

MiB = 1 << 20
DISK_SIZE = 64 * MiB
FS_SIZE = 56 * MiB
PATTERN_OFFSET = 60 * MiB
PATTERN_SIZE = 1 * MiB
CONTROLLERS = ("virtio", "ahci", "ide", "lsi")


def pattern(size: int = PATTERN_SIZE) -> bytes:
    """SHA-256 counter stream: block i of 32 bytes is sha256(b"blockbed-linux-%d" % i)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(b"blockbed-linux-%d" % i).digest()
        i += 1
    return bytes(out[:size])
