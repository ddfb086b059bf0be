"""Disk encryption shared by the format drivers (QEMU crypto/: block-luks.c, block-qcow.c).

``cipher`` turns (algorithm, mode, IV generator, key) into a sector cipher that
encrypts whole buffers of 512-byte sectors; ``luks`` parses, creates and unlocks
LUKS1 headers (independent of where the header is stored, so qcow2 and a raw
LUKS driver can share it); ``qcowaes`` is the legacy qcow/qcow2 AES scheme.
"""

from __future__ import annotations

from ..driver import ImageFormatError


class CryptoError(ImageFormatError):
    """An encryption problem that stops an image from opening (wrong password,
    missing secret, unsupported cipher, damaged LUKS header)."""


class KeyRequiredError(CryptoError):
    """The image is encrypted and no key was given for I/O (QEMU's message)."""

    def __init__(self) -> None:
        super().__init__("Parameter 'encrypt.key-secret' is required for cipher")
