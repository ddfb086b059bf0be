"""Sector ciphers: an algorithm, a chaining mode and an IV generator, keyed.

QEMU (crypto/cipher.c, crypto/ivgen-*.c, crypto/block.c) encrypts a disk in
sectors of 512 bytes; each sector gets its own IV from its sector number:

* ``plain``   - the sector number's low 32 bits, little endian, zero padded;
* ``plain64`` - the whole 64-bit sector number, little endian, zero padded;
* ``essiv``   - the plain64 block encrypted with ``hash(key)`` as the key.

Work is done over whole buffers, with a Python step per sector only where the
IV must change: XTS gets one cipher context per sector (the tweak is the IV),
CBC decryption is one ECB pass over the buffer XORed with the previous
ciphertext block (the IV at each sector start), CBC encryption chains within a
sector so it is one context per sector.  A final partial sector (a multiple of
16 bytes, as in LUKS key material) is allowed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import CryptoError

SECTOR = 512
BLOCK = 16

CIPHER_KEY_BYTES = {"aes-128": 16, "aes-192": 24, "aes-256": 32}
MODES = ("xts", "cbc", "ecb")
IVGENS = ("plain", "plain64", "essiv")
HASHES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")


def hash_digest_size(name: str) -> int:
    try:
        return hashlib.new(name).digest_size
    except ValueError:
        raise CryptoError(f"Hash algorithm '{name}' is not available") from None


def check_hash(name: str) -> str:
    if name not in HASHES:
        raise CryptoError(f"Invalid hash algorithm '{name}'; allowed: {', '.join(HASHES)}")
    hash_digest_size(name)
    return name


@dataclass(frozen=True)
class CipherSpec:
    """What QEMU calls cipher-alg, cipher-mode, ivgen-alg and ivgen-hash-alg."""

    alg: str = "aes-256"
    mode: str = "xts"
    ivgen: str = "plain64"
    ivgen_hash: str | None = None

    def __post_init__(self) -> None:
        if self.alg not in CIPHER_KEY_BYTES:
            raise CryptoError(f"Unsupported cipher algorithm '{self.alg}' (blockbed supports "
                              f"{', '.join(CIPHER_KEY_BYTES)})")
        if self.mode not in MODES:
            raise CryptoError(f"Unsupported cipher mode '{self.mode}'; allowed: {', '.join(MODES)}")
        if self.ivgen not in IVGENS:
            raise CryptoError(f"Unsupported IV generator '{self.ivgen}'; allowed: "
                              f"{', '.join(IVGENS)}")
        if self.ivgen == "essiv":
            if not self.ivgen_hash:
                raise CryptoError("The essiv IV generator needs a hash (ivgen-hash-alg)")
            check_hash(self.ivgen_hash)
            if hash_digest_size(self.ivgen_hash) not in CIPHER_KEY_BYTES.values():
                raise CryptoError(f"Cipher aes does not accept a {self.ivgen_hash} digest "
                                  "as an essiv key")

    @property
    def key_bytes(self) -> int:
        """Bytes of key material: XTS takes two keys of the algorithm's size."""
        n = CIPHER_KEY_BYTES[self.alg]
        return 2 * n if self.mode == "xts" else n


class SectorCipher:
    """``spec`` keyed with ``key``: encrypt/decrypt buffers of sectors in place."""

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int = SECTOR):
        if len(key) != spec.key_bytes:
            raise CryptoError(f"Key for {spec.alg}-{spec.mode} must be {spec.key_bytes} "
                              f"bytes, not {len(key)}")
        self.spec = spec
        self.sector_size = sector_size
        try:
            self._alg = algorithms.AES(key)
        except ValueError as e:
            raise CryptoError(f"Invalid key: {e}") from None
        self._essiv = None
        if spec.ivgen == "essiv":
            ekey = hashlib.new(spec.ivgen_hash, key).digest()
            self._essiv = Cipher(algorithms.AES(ekey), modes.ECB())

    # --- IVs ----------------------------------------------------------------------
    def ivs(self, sector: int, count: int) -> bytes:
        """The IVs of ``count`` sectors from ``sector``, 16 bytes each, concatenated."""
        iv = self.spec.ivgen
        if iv == "plain":
            raw = b"".join(((s & 0xFFFFFFFF).to_bytes(4, "little") + bytes(12))
                           for s in range(sector, sector + count))
        else:
            raw = b"".join((s & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little") + bytes(8)
                           for s in range(sector, sector + count))
        if self._essiv is not None:
            raw = self._essiv.encryptor().update(raw)
        return raw

    # --- whole buffers -------------------------------------------------------------
    def _sectors(self, n: int) -> int:
        if n % BLOCK:
            raise CryptoError(f"Encrypted I/O must be a multiple of {BLOCK} bytes, not {n}")
        return -(-n // self.sector_size)

    def encrypt(self, sector: int, buf: bytearray | memoryview) -> None:
        """Encrypt ``buf`` (sectors from ``sector``) in place."""
        self._run(sector, memoryview(buf).cast("B"), encrypt=True)

    def decrypt(self, sector: int, buf: bytearray | memoryview) -> None:
        """Decrypt ``buf`` (sectors from ``sector``) in place."""
        self._run(sector, memoryview(buf).cast("B"), encrypt=False)

    def _run(self, sector: int, mv: memoryview, encrypt: bool) -> None:
        n = len(mv)
        if not n:
            return
        count = self._sectors(n)
        mode = self.spec.mode
        ss = self.sector_size
        if mode == "ecb":
            c = Cipher(self._alg, modes.ECB())
            ctx = c.encryptor() if encrypt else c.decryptor()
            _update(ctx, mv)
            return
        ivs = self.ivs(sector, count)
        if mode == "xts":
            for i in range(count):
                c = Cipher(self._alg, modes.XTS(ivs[i * 16:i * 16 + 16]))
                ctx = c.encryptor() if encrypt else c.decryptor()
                _update(ctx, mv[i * ss:(i + 1) * ss])
            return
        # CBC
        if encrypt:
            for i in range(count):
                ctx = Cipher(self._alg, modes.CBC(ivs[i * 16:i * 16 + 16])).encryptor()
                _update(ctx, mv[i * ss:(i + 1) * ss])
            return
        # CBC decryption: P[j] = D(C[j]) xor C[j-1], with C[-1] = the sector's IV
        prev = bytearray(n)
        prev[BLOCK:] = mv[:n - BLOCK]
        for i in range(count):
            prev[i * ss:i * ss + BLOCK] = ivs[i * 16:i * 16 + 16]
        plain = Cipher(self._alg, modes.ECB()).decryptor().update(mv)
        mv[:] = (int.from_bytes(plain, "little") ^ int.from_bytes(prev, "little")).to_bytes(
            n, "little")


def _update(ctx, mv: memoryview) -> None:
    """Run a cipher context over ``mv`` and store the result back in place."""
    mv[:] = ctx.update(mv)
