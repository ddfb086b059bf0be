"""The legacy qcow/qcow2 AES scheme (QEMU crypto/block-qcow.c; qcow2 crypt_method 1).

AES-128-CBC over 512-byte sectors, IV = the sector number (plain64), key = the
passphrase's bytes up to the first NUL, truncated or zero-padded to 16 bytes -
no key derivation, no salt, which is why QEMU only keeps it so old images can
be converted.  The sector number is the guest offset / 512 (qcow2 spec,
"crypt_method": "the initialization vector is the 64-bit little endian sector
number of the guest sector").
"""

from __future__ import annotations

from .cipher import CipherSpec, SectorCipher

SPEC = CipherSpec(alg="aes-128", mode="cbc", ivgen="plain64")


def qcow_aes_cipher(password: bytes) -> SectorCipher:
    key = password.split(b"\0", 1)[0][:16].ljust(16, b"\0")
    return SectorCipher(SPEC, key)
