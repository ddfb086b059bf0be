"""LUKS1 headers, key slots and the anti-forensic splitter (QEMU crypto/block-luks.c,
as specified by the LUKS1 on-disk format document, "LUKS partition header").

The module knows nothing about where the LUKS area lives: callers give a
``read(offset, length)`` function over the area (a raw LUKS volume's first
bytes, or qcow2's "Full disk encryption header" clusters).

Layout QEMU 7.2 creates (offsets relative to the start of the area)::

    0         the 592-byte phdr (magic, cipher, hash, master key digest, 8 slots)
    4096      key slot 0's AF-split key material, key_bytes * 4000 bytes
    ...       slots 1..7, each rounded up to 4096 bytes
    payload   payload_offset sectors: the encrypted data (raw LUKS only)

Unlocking a slot: PBKDF2(passphrase, slot salt, slot iterations) gives the
slot key; it decrypts the slot's key material (same cipher, sectors numbered
from 0); AF-merging that gives a candidate master key, which is right when
PBKDF2(candidate, digest salt, digest iterations, 20 bytes) equals the stored
master key digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Callable

from construct import Array, Bytes, Const, Int16ub, Int32ub, PaddedString, Struct

from . import CryptoError
from .cipher import SECTOR, CipherSpec, SectorCipher, check_hash, hash_digest_size

MAGIC = b"LUKS\xba\xbe"
VERSION = 1
NUM_SLOTS = 8
STRIPES = 4000
SALT_LEN = 32
DIGEST_LEN = 20
SLOT_ACTIVE = 0x00AC71F3
SLOT_INACTIVE = 0x0000DEAD
KEY_SLOT_OFFSET = 4096        # key material starts here, each slot aligned to 4096 bytes
ALIGN = 4096
MIN_ITERS = 1000              # QEMU's floor for both the digest and the slot iterations
DEFAULT_ITER_TIME_MS = 2000

KeySlotStruct = Struct(
    "active" / Int32ub,
    "iterations" / Int32ub,
    "salt" / Bytes(SALT_LEN),
    "key_offset" / Int32ub,       # in 512-byte sectors from the start of the LUKS area
    "stripes" / Int32ub,
)

PhdrStruct = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ub,
    "cipher_name" / PaddedString(32, "ascii"),
    "cipher_mode" / PaddedString(32, "ascii"),
    "hash_spec" / PaddedString(32, "ascii"),
    "payload_offset" / Int32ub,   # sectors
    "key_bytes" / Int32ub,
    "mk_digest" / Bytes(DIGEST_LEN),
    "mk_digest_salt" / Bytes(SALT_LEN),
    "mk_digest_iterations" / Int32ub,
    "uuid" / PaddedString(40, "ascii"),
    "key_slots" / Array(NUM_SLOTS, KeySlotStruct),
)
PHDR_LEN = PhdrStruct.sizeof()          # 592

ReadFn = Callable[[int, int], bytes]


@dataclass
class KeySlot:
    active: bool
    iterations: int
    salt: bytes
    key_offset: int               # sectors
    stripes: int


@dataclass
class LuksHeader:
    """A decoded, validated LUKS1 header."""

    spec: CipherSpec
    hash_alg: str
    payload_offset: int           # sectors
    key_bytes: int
    mk_digest: bytes
    mk_digest_salt: bytes
    mk_digest_iterations: int
    uuid: str
    slots: list[KeySlot] = field(default_factory=list)

    @property
    def split_key_len(self) -> int:
        return self.key_bytes * STRIPES

    # --- encoding -------------------------------------------------------------------
    @classmethod
    def parse(cls, raw: bytes) -> "LuksHeader":
        if len(raw) < PHDR_LEN or raw[:6] != MAGIC:
            raise CryptoError("Volume is not in LUKS format")
        p = PhdrStruct.parse(raw[:PHDR_LEN])
        if p.version != VERSION:
            raise CryptoError(f"LUKS version {p.version} is not supported")
        spec = _spec_from_names(p.cipher_name.rstrip("\0"), p.cipher_mode.rstrip("\0"),
                                p.key_bytes)
        hash_alg = _check_header_hash(p.hash_spec.rstrip("\0"))
        slots = [KeySlot(s.active == SLOT_ACTIVE, s.iterations, bytes(s.salt), s.key_offset,
                         s.stripes) for s in p.key_slots]
        hdr = cls(spec, hash_alg, p.payload_offset, p.key_bytes, bytes(p.mk_digest),
                  bytes(p.mk_digest_salt), p.mk_digest_iterations, p.uuid.rstrip("\0"), slots)
        hdr._validate([s.active for s in p.key_slots])
        return hdr

    def _validate(self, raw_active: list[int]) -> None:
        """QEMU qcrypto_block_luks_check_header: slots sane and disjoint."""
        header_sectors = KEY_SLOT_OFFSET // SECTOR
        split_sectors = -(-self.split_key_len // SECTOR)
        for i, s in enumerate(self.slots):
            if raw_active[i] not in (SLOT_ACTIVE, SLOT_INACTIVE):
                raise CryptoError(f"Keyslot {i} state (active/disable) is corrupted")
            if s.active and s.iterations == 0:
                raise CryptoError(f"Keyslot {i} iteration count is zero")
            if s.stripes != STRIPES:
                raise CryptoError(f"Keyslot {i} is corrupted (stripes {s.stripes} != {STRIPES})")
            if s.key_offset < header_sectors:
                raise CryptoError(f"Keyslot {i} is overlapping with the LUKS header")
            if s.key_offset + split_sectors > self.payload_offset:
                raise CryptoError(f"Keyslot {i} is overlapping with the encrypted payload")
            for j in range(i + 1, len(self.slots)):
                o = self.slots[j]
                if s.key_offset < o.key_offset + split_sectors and \
                        o.key_offset < s.key_offset + split_sectors:
                    raise CryptoError(f"Keyslots {i} and {j} are overlapping in the header")
        if self.mk_digest_iterations == 0:
            raise CryptoError("LUKS master key digest iteration count is zero")

    def build(self) -> bytes:
        name, mode = _names_from_spec(self.spec)
        return PhdrStruct.build(dict(
            version=VERSION, cipher_name=name, cipher_mode=mode, hash_spec=self.hash_alg,
            payload_offset=self.payload_offset, key_bytes=self.key_bytes,
            mk_digest=self.mk_digest, mk_digest_salt=self.mk_digest_salt,
            mk_digest_iterations=self.mk_digest_iterations, uuid=self.uuid,
            key_slots=[dict(active=SLOT_ACTIVE if s.active else SLOT_INACTIVE,
                            iterations=s.iterations, salt=s.salt, key_offset=s.key_offset,
                            stripes=s.stripes) for s in self.slots]))

    def info(self) -> dict:
        """QEMU's QCryptoBlockInfoLUKS (qemu-img info's "encrypt" block, without "format")."""
        d: dict = {"cipher-alg": self.spec.alg, "cipher-mode": self.spec.mode,
                   "ivgen-alg": self.spec.ivgen}
        if self.spec.ivgen == "essiv":
            d["ivgen-hash-alg"] = self.spec.ivgen_hash
        d["hash-alg"] = self.hash_alg
        d["payload-offset"] = self.payload_offset * SECTOR
        d["master-key-iters"] = self.mk_digest_iterations
        d["uuid"] = self.uuid
        slots = []
        for s in self.slots:
            e: dict = {"active": s.active}
            if s.active:
                e["iters"] = s.iterations
                e["stripes"] = s.stripes
            e["key-offset"] = s.key_offset * SECTOR
            slots.append(e)
        d["slots"] = slots
        return d

    # --- keys ---------------------------------------------------------------------------
    def unlock(self, password: bytes, read: ReadFn) -> bytes:
        """The master key, from the first active slot ``password`` opens."""
        for slot in self.slots:
            if not slot.active:
                continue
            mk = self._try_slot(slot, password, read)
            if mk is not None:
                return mk
        raise CryptoError("Invalid password, cannot unlock any keyslot")

    def _try_slot(self, slot: KeySlot, password: bytes, read: ReadFn) -> bytes | None:
        slot_key = hashlib.pbkdf2_hmac(self.hash_alg, password, slot.salt, slot.iterations,
                                       self.key_bytes)
        material = bytearray(read(slot.key_offset * SECTOR, self.split_key_len))
        if len(material) != self.split_key_len:
            raise CryptoError("LUKS key material is truncated")
        SectorCipher(self.spec, slot_key).decrypt(0, material)
        candidate = af_merge(bytes(material), self.key_bytes, slot.stripes, self.hash_alg)
        digest = hashlib.pbkdf2_hmac(self.hash_alg, candidate, self.mk_digest_salt,
                                     self.mk_digest_iterations, DIGEST_LEN)
        return candidate if hmac.compare_digest(digest, self.mk_digest) else None

    @property
    def area_length(self) -> int:
        """Bytes of header + key material (QEMU's header length for qcow2)."""
        return self.payload_offset * SECTOR


# --- cipher names in the header ---------------------------------------------------------------
def _spec_from_names(cipher: str, mode: str, key_bytes: int) -> CipherSpec:
    base, _, ivpart = mode.partition("-")
    ivgen, _, ivhash = ivpart.partition(":")
    if cipher != "aes":
        raise CryptoError(f"Algorithm '{cipher}' with key size {key_bytes} bytes not supported "
                          "(blockbed supports aes)")
    per_key = key_bytes // 2 if base == "xts" else key_bytes
    if per_key not in (16, 24, 32) or (base == "xts" and key_bytes % 2):
        raise CryptoError(f"Algorithm '{cipher}' with key size {key_bytes} bytes not supported")
    return CipherSpec(alg=f"aes-{per_key * 8}", mode=base, ivgen=ivgen or "plain64",
                      ivgen_hash=ivhash or None)


def _names_from_spec(spec: CipherSpec) -> tuple[str, str]:
    mode = f"{spec.mode}-{spec.ivgen}"
    if spec.ivgen == "essiv":
        mode += f":{spec.ivgen_hash}"
    return "aes", mode


def _check_header_hash(name: str) -> str:
    try:
        return check_hash(name)
    except CryptoError:
        raise CryptoError(f"Unsupported LUKS hash '{name}'") from None


# --- anti-forensic splitter (LUKS1 spec, "AF-Splitter") ----------------------------------------
def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _diffuse(block: bytes, hash_alg: str) -> bytes:
    """H: each digest-sized chunk i becomes hash(be32(i) || chunk), truncated to the chunk."""
    ds = hash_digest_size(hash_alg)
    out = bytearray()
    for i in range(-(-len(block) // ds)):
        chunk = block[i * ds:(i + 1) * ds]
        out += hashlib.new(hash_alg, i.to_bytes(4, "big") + chunk).digest()[:len(chunk)]
    return bytes(out)


def af_split(key: bytes, stripes: int, hash_alg: str,
             random: Callable[[int], bytes] = os.urandom) -> bytes:
    """``stripes`` blocks: stripes-1 random ones and the last chosen so they merge to ``key``."""
    n = len(key)
    d = bytes(n)
    out = bytearray()
    for _ in range(stripes - 1):
        s = random(n)
        out += s
        d = _diffuse(_xor(d, s), hash_alg)
    out += _xor(d, key)
    return bytes(out)


def af_merge(material: bytes, key_len: int, stripes: int, hash_alg: str) -> bytes:
    if len(material) < key_len * stripes:
        raise CryptoError("LUKS key material is truncated")
    d = bytes(key_len)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, material[i * key_len:(i + 1) * key_len]), hash_alg)
    return _xor(d, material[(stripes - 1) * key_len:stripes * key_len])


# --- creation ------------------------------------------------------------------------------------
def pbkdf2_iters_per_second(hash_alg: str, key_len: int, out_len: int) -> int:
    """How many PBKDF2 iterations take one second of CPU (QEMU qcrypto_pbkdf2_count_iters,
    with a shorter measuring window: the result only scales iter-time)."""
    iters = 1 << 12
    while True:
        t0, w0 = time.thread_time(), time.perf_counter()
        hashlib.pbkdf2_hmac(hash_alg, bytes(key_len), bytes(SALT_LEN), iters, out_len)
        dt = time.thread_time() - t0
        if dt <= 0:
            dt = time.perf_counter() - w0      # coarse thread clock: fall back to wall time
        if dt >= 0.05 or iters >= 1 << 26:
            return max(1, int(iters / max(dt, 1e-6)))
        iters *= 4


def _slot_layout(key_bytes: int) -> tuple[int, int, int]:
    """(first key-material sector, sectors per slot, payload sector) of a new header:
    each slot holds the key split into STRIPES stripes, aligned to 4096 bytes."""
    split_sectors = -(-key_bytes * STRIPES // SECTOR)
    slot_stride = -(-split_sectors // (ALIGN // SECTOR)) * (ALIGN // SECTOR)
    first = KEY_SLOT_OFFSET // SECTOR
    return first, slot_stride, first + NUM_SLOTS * slot_stride


def area_bytes(spec: CipherSpec) -> int:
    """Bytes a new LUKS header with its key slots takes (QEMU's payload offset)."""
    return _slot_layout(spec.key_bytes)[2] * SECTOR


@dataclass
class CreateParams:
    spec: CipherSpec = field(default_factory=CipherSpec)
    hash_alg: str = "sha256"
    iter_time_ms: int = DEFAULT_ITER_TIME_MS


def create(password: bytes, params: CreateParams,
           random: Callable[[int], bytes] = os.urandom) -> tuple[LuksHeader, bytes, bytes]:
    """A new LUKS1 area with slot 0 set to ``password``.

    Returns (header, the whole area's bytes (header + key material, zero elsewhere),
    master key), following QEMU's qcrypto_block_luks_create: the digest iterations
    are one eighth of iter-time's worth, the slot's a whole iter-time's, both at
    least 1000.
    """
    spec, hash_alg = params.spec, check_hash(params.hash_alg)
    key_bytes = spec.key_bytes
    master = random(key_bytes)
    mk_salt = random(SALT_LEN)
    rate = pbkdf2_iters_per_second(hash_alg, key_bytes, DIGEST_LEN)
    mk_iters = max(MIN_ITERS, rate * params.iter_time_ms // 1000 // 8)
    if mk_iters > 0xFFFFFFFF:
        raise CryptoError(f"PBKDF iterations {mk_iters} larger than {0xFFFFFFFF}")
    mk_digest = hashlib.pbkdf2_hmac(hash_alg, master, mk_salt, mk_iters, DIGEST_LEN)
    first, slot_stride, payload = _slot_layout(key_bytes)
    slots = [KeySlot(False, 0, bytes(SALT_LEN), first + i * slot_stride, STRIPES)
             for i in range(NUM_SLOTS)]
    hdr = LuksHeader(spec, hash_alg, payload, key_bytes, mk_digest, mk_salt, mk_iters,
                     str(_uuid.uuid4()), slots)
    # slot 0
    salt = random(SALT_LEN)
    rate = pbkdf2_iters_per_second(hash_alg, len(password) or 1, key_bytes)
    iters = max(MIN_ITERS, rate * params.iter_time_ms // 1000)
    if iters > 0xFFFFFFFF:
        raise CryptoError(f"PBKDF iterations {iters} larger than {0xFFFFFFFF}")
    slot_key = hashlib.pbkdf2_hmac(hash_alg, password, salt, iters, key_bytes)
    material = bytearray(af_split(master, STRIPES, hash_alg, random))
    SectorCipher(spec, slot_key).encrypt(0, material)
    slots[0] = KeySlot(True, iters, salt, slots[0].key_offset, STRIPES)
    area = bytearray(hdr.area_length)
    area[:PHDR_LEN] = hdr.build()
    off = slots[0].key_offset * SECTOR
    area[off:off + len(material)] = material
    return hdr, bytes(area), master
