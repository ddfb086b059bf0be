"""qcow2 encryption (spec "crypt_method" and "Full disk encryption header pointer";
QEMU block/qcow2.c qcow2_crypto_hdr_* and qcow2_co_encrypt/decrypt).

* crypt_method 2 (LUKS): a LUKS1 area (:mod:`blockbed.block.crypto.luks`)
  lives in refcounted clusters named by the 0x0537be77 header extension.
  Data clusters are encrypted in 512-byte sectors whose IV comes from the
  **host** offset (QEMU sets ``crypt_physical_offset`` for LUKS), so a cluster
  copied elsewhere must be re-encrypted - COW does that naturally because it
  decrypts what it reads and encrypts what it writes.
* crypt_method 1 (legacy AES): no header; the IV comes from the **guest**
  offset (:mod:`blockbed.block.crypto.qcowaes`).

Compressed clusters are never encrypted (QEMU refuses to write them in an
encrypted image).  Requests are done in whole sectors (QEMU's
request_alignment for encrypted images is 512): :func:`aligned_read` and
:func:`aligned_write` widen unaligned requests.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ... import trace
from ..crypto import CryptoError, KeyRequiredError
from ..crypto.cipher import IVGENS, MODES, SECTOR, CIPHER_KEY_BYTES, HASHES, CipherSpec, \
    SectorCipher
from ..crypto.luks import DEFAULT_ITER_TIME_MS, CreateParams, LuksHeader
from ..driver import BlockError, ImageFormatError
from .header import CRYPT_AES, CRYPT_LUKS, CRYPT_NONE

if TYPE_CHECKING:
    from .driver import Qcow2Driver

KEY_SECRET = "encrypt.key-secret"
NO_IO = "x-no-io"             # QEMU's BDRV_O_NO_IO: metadata only (qemu-img info)
OPEN_OPTIONS = (KEY_SECRET, NO_IO)

_LUKS_CREATE_KEYS = ("encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
                     "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time")
# qemu-img's order of the encryption options on the "Formatting ..." line
CREATE_KEYS = ("encryption", "encrypt.format", KEY_SECRET) + _LUKS_CREATE_KEYS


# --- opening --------------------------------------------------------------------------------
@dataclass
class Qcow2Crypto:
    """An encrypted image's cipher state; ``cipher`` is None when opened without a key
    (metadata only: info)."""

    method: int
    cipher: SectorCipher | None
    luks: LuksHeader | None = None

    @property
    def physical(self) -> bool:
        """LUKS takes the IV from the host offset, legacy AES from the guest offset."""
        return self.method == CRYPT_LUKS

    def _sector(self, host: int, guest: int) -> int:
        off = host if self.physical else guest
        if off % SECTOR:
            raise BlockError(errno.EINVAL, f"qcow2: encrypted I/O at {off:#x} is not "
                                           "sector aligned")
        return off // SECTOR

    def _need_key(self) -> SectorCipher:
        if self.cipher is None:
            raise KeyRequiredError()
        return self.cipher

    def decrypt(self, host: int, guest: int, buf: memoryview) -> None:
        """Decrypt data read from host offset ``host`` (guest offset ``guest``) in place."""
        self._need_key().decrypt(self._sector(host, guest), buf)

    def encrypt(self, host: int, guest: int, bufs) -> bytearray:
        """The ciphertext of ``bufs`` (joined) for host offset ``host`` - a fresh buffer,
        the caller's data is left alone."""
        cipher = self._need_key()
        out = bytearray(b"".join(bufs)) if len(bufs) != 1 else bytearray(bufs[0])
        cipher.encrypt(self._sector(host, guest), out)
        if trace.enabled:
            trace.emit("qcow2.encrypt", host_offset=host, guest_offset=guest, length=len(out))
        return out

    def info(self) -> dict:
        """qemu-img info's "encrypt" block (QCryptoBlockInfo)."""
        if self.method == CRYPT_AES:
            return {"format": "aes"}
        d = {"format": "luks"}
        d.update(self.luks.info())
        return d


def open_crypto(drv: "Qcow2Driver", opts: dict) -> Qcow2Crypto | None:
    """Parse the image's encryption (and unlock it when a key secret is given)."""
    from .. import secrets
    h = drv.header
    if h.crypt_method == CRYPT_NONE:
        return None
    sid = opts.get(KEY_SECRET)
    try:
        password = secrets.lookup(str(sid)) if sid else None
    except BlockError as e:
        raise CryptoError(str(e)) from None
    if h.crypt_method == CRYPT_AES:
        from ..crypto.qcowaes import qcow_aes_cipher
        if password is None and not opts.get(NO_IO):
            raise KeyRequiredError()
        return Qcow2Crypto(CRYPT_AES, qcow_aes_cipher(password) if password is not None
                           else None)
    ext = h.crypto
    flen = drv.file.length()
    if ext["offset"] % drv.cluster_size or ext["length"] == 0 or \
            ext["offset"] + ext["length"] > flen:
        raise ImageFormatError(f"qcow2: the LUKS header ({ext['length']} bytes at "
                               f"{ext['offset']:#x}) is not cluster aligned or lies past the "
                               f"end of the image file ({flen} bytes)")

    def read(off: int, length: int) -> bytes:
        # qcow2_crypto_hdr_read_func: only inside the extension's range
        if off < 0 or off + length > ext["length"]:
            raise CryptoError("Request for data outside of extension header")
        buf = bytearray(length)
        drv.file.read(ext["offset"] + off, memoryview(buf))
        return bytes(buf)

    luks = LuksHeader.parse(read(0, min(ext["length"], 4096)))
    if luks.area_length > ext["length"]:
        raise CryptoError("LUKS payload is overlapping with the header")
    if password is None:
        if not opts.get(NO_IO):
            raise KeyRequiredError()
        return Qcow2Crypto(CRYPT_LUKS, None, luks)
    master = luks.unlock(password, read)
    return Qcow2Crypto(CRYPT_LUKS, SectorCipher(luks.spec, master), luks)


# --- unaligned requests ------------------------------------------------------------------------
def aligned_read(drv: "Qcow2Driver", offset: int, buf: memoryview) -> None:
    """Read whole sectors around ``[offset, offset+len)`` and copy the middle out."""
    a = offset // SECTOR * SECTOR
    b = min(-(-(offset + len(buf)) // SECTOR) * SECTOR, drv.length())
    tmp = bytearray(b - a)
    drv.read(a, memoryview(tmp))
    buf[:] = memoryview(tmp)[offset - a:offset - a + len(buf)]


def aligned_write(drv: "Qcow2Driver", offset: int, data: memoryview, fua: bool) -> None:
    """Read-modify-write of the partial sectors at either end (QEMU's block layer does
    this for the 512-byte request alignment of encrypted images)."""
    end = offset + len(data)
    a = offset // SECTOR * SECTOR
    b = min(-(-end // SECTOR) * SECTOR, drv.length())
    tmp = bytearray(b - a)
    mv = memoryview(tmp)
    if a < offset:
        drv.read(a, mv[:SECTOR])
    if end < b:
        drv.read(b - SECTOR, mv[len(tmp) - SECTOR:])
    mv[offset - a:end - a] = data
    drv.write(a, mv, fua=fua)


# --- creation ------------------------------------------------------------------------------------
@dataclass
class EncryptOptions:
    """``-o encrypt.*`` of qemu-img create for qcow2."""

    format: str
    key_secret: str | None
    luks: CreateParams = field(default_factory=CreateParams)


def parse_create_options(opts: dict) -> EncryptOptions | None:
    """Pop and validate the encryption options (QEMU's messages)."""
    legacy = opts.pop("encryption", None)
    fmt = opts.pop("encrypt.format", None)
    sid = opts.pop(KEY_SECRET, None)
    luks_raw = {k: opts.pop(k) for k in _LUKS_CREATE_KEYS if k in opts}
    if legacy is not None and str(legacy).lower() in ("on", "true", "yes", "1"):
        if fmt not in (None, "aes"):
            raise BlockError(errno.EINVAL, "Encryption option 'encryption' is deprecated and "
                                           "conflicts with 'encrypt.format'")
        fmt = "aes"
    if fmt is None:
        if sid is not None or luks_raw:
            raise BlockError(errno.EINVAL, f"Parameter '{KEY_SECRET if sid else next(iter(luks_raw))}'"
                                           " is unexpected")
        return None
    if fmt not in ("luks", "aes"):
        raise BlockError(errno.EINVAL, f"Parameter 'format' does not accept value '{fmt}'")
    if fmt == "aes" and luks_raw:
        raise BlockError(errno.EINVAL, f"Parameter '{next(iter(luks_raw))}' is unexpected")
    if not sid:
        raise KeyRequiredError()
    from .. import secrets
    secrets.lookup(sid)             # fail before anything is created
    eo = EncryptOptions(fmt, sid)
    if fmt == "luks":
        eo.luks = _luks_params(luks_raw)
    return eo


def _luks_params(raw: dict) -> CreateParams:
    def choice(key: str, allowed, default):
        v = raw.get(f"encrypt.{key}", default)
        if v not in allowed:
            raise BlockError(errno.EINVAL, f"Parameter '{key}' does not accept value '{v}'")
        return v
    alg = choice("cipher-alg", CIPHER_KEY_BYTES, "aes-256")
    mode = choice("cipher-mode", MODES, "xts")
    ivgen = choice("ivgen-alg", IVGENS, "plain64")
    ivhash = choice("ivgen-hash-alg", HASHES, "sha256") if ivgen == "essiv" else None
    hash_alg = choice("hash-alg", HASHES, "sha256")
    try:
        iter_time = int(raw.get("encrypt.iter-time", DEFAULT_ITER_TIME_MS))
    except ValueError:
        raise BlockError(errno.EINVAL, "Parameter 'iter-time' expects a number") from None
    if iter_time <= 0:
        raise BlockError(errno.EINVAL, "Parameter 'iter-time' must be positive")
    return CreateParams(CipherSpec(alg, mode, ivgen, ivhash), hash_alg, iter_time)


def setup_encryption(drv: "Qcow2Driver", eo: EncryptOptions) -> None:
    """Make a freshly created (empty) image encrypted, as QEMU's qcow2_set_up_encryption
    after the image is sized: LUKS gets its area in newly allocated, zero-filled clusters
    and the header extension; AES only sets crypt_method."""
    from .. import secrets
    from ..crypto import luks
    password = secrets.lookup(eo.key_secret)
    h = drv.header
    if eo.format == "aes":
        h.crypt_method = CRYPT_AES
        drv.rewrite_header()
        return
    _, area, _ = luks.create(password, eo.luks)
    cs = drv.cluster_size
    nclusters = -(-len(area) // cs)
    off = drv.refcounts.alloc(nclusters)
    drv.overlap.add(off, len(area), "crypto_header")
    drv.file.write(off, area + bytes(nclusters * cs - len(area)))
    drv.flush()
    h.crypt_method = CRYPT_LUKS
    h.crypto = {"offset": off, "length": len(area)}
    drv.rewrite_header()
