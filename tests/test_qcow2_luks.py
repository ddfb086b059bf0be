"""qcow2 encryption: LUKS (crypt_method 2) and legacy AES (crypt_method 1).

Unit tests of the LUKS module and the sector ciphers (an IEEE 1619 XTS vector,
round trips, AF split/merge), then differential tests both ways against QEMU:
qemu-img/qemu-io write, blockbed reads the same bytes; blockbed creates and
writes, qemu-img reads the same bytes and checks the image clean.  Errors
(wrong password, missing secret, missing key, damaged LUKS header) must be one
clear line with QEMU's wording.  iter-time stays tiny so the suite is fast.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, guest_elf, run_tool
from qcow2_helpers import run_workload

from blockbed.block import registry, secrets
from blockbed.block.crypto import CryptoError
from blockbed.block.crypto.cipher import CipherSpec, SectorCipher
from blockbed.block.crypto.luks import (PHDR_LEN, CreateParams, LuksHeader, af_merge, af_split,
                                        create as luks_create)
from blockbed.block.driver import BlockError, CorruptImageError

PASS = "hunter2"
SECRET = ["--object", f"secret,id=sec0,data={PASS}"]
FAST = "encrypt.iter-time=10"


def bb(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-m", "blockbed", *args], capture_output=True,
                       text=True, env=env, timeout=120)
    if check and p.returncode:
        raise AssertionError(f"blockbed {' '.join(args)} exited {p.returncode}\n{p.stderr}")
    assert "Traceback" not in p.stderr, p.stderr
    return p


def opts(path: Path, sid: str = "sec0") -> str:
    return f"driver=qcow2,file.filename={path},encrypt.key-secret={sid}"


def qemu_create(qemu_img: str, path: Path, size: str, o: str) -> None:
    """qemu-img create with retries: Debian's 7.2 often fails its PBKDF2 benchmark with
    "Unable to get accurate CPU usage" (about 40% of attempts on an idle 2-core machine,
    most of them when the machine is busy): the thread CPU time it measures reads 0 ms.
    Retried for up to a minute; a failure after that is a test failure, not a skip, so
    that CI never passes without the qemu-made images."""
    deadline = time.monotonic() + 60
    while True:
        p = run_tool(qemu_img, "create", "-q", "-f", "qcow2", *SECRET, "-o", o, str(path), size,
                     check=False)
        if p.returncode == 0:
            return
        assert "Unable to get accurate CPU usage" in p.stderr, p.stderr
        assert time.monotonic() < deadline, "qemu-img failed its PBKDF2 benchmark for a minute"
        time.sleep(0.05)


def qemu_raw(qemu_img: str, path: Path, out: Path) -> bytes:
    run_tool(qemu_img, "convert", *SECRET, "--image-opts", opts(path), "-O", "raw", str(out))
    return out.read_bytes()


_qemu_cache: dict[str, bytes] = {}


def qemu_luks(qemu_img: str, path: Path, variant: str = "default") -> Path:
    """A fresh copy of a 1 MiB LUKS image qemu-img made (made once per variant: QEMU's
    PBKDF2 benchmark costs a second or more per create)."""
    if variant not in _qemu_cache:
        extra = {**LUKS_VARIANTS, **EXTL2}[variant]
        qemu_create(qemu_img, path, "1M", f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}{extra}")
        _qemu_cache[variant] = path.read_bytes()
    path.write_bytes(_qemu_cache[variant])
    return path


@pytest.fixture(autouse=True)
def _secret():
    secrets.clear()
    secrets.add_object(f"secret,id=sec0,data={PASS}")
    yield
    secrets.clear()


# --- the cipher and LUKS module ------------------------------------------------------------
def test_xts_matches_ieee1619_vector_2():
    c = SectorCipher(CipherSpec("aes-128", "xts", "plain64"), b"\x11" * 16 + b"\x22" * 16)
    buf = bytearray(b"\x44" * 32)
    c.encrypt(0x3333333333, buf)       # the data unit sequence number is the plain64 IV
    assert buf.hex() == "c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"


@pytest.mark.parametrize("spec", [CipherSpec("aes-256", "xts", "plain64"),
                                  CipherSpec("aes-128", "cbc", "essiv", "sha256"),
                                  CipherSpec("aes-192", "cbc", "plain"),
                                  CipherSpec("aes-256", "cbc", "plain64"),
                                  CipherSpec("aes-128", "ecb", "plain64")])
def test_sector_cipher_round_trip_is_per_sector(spec):
    rnd = random.Random(1)
    key = rnd.randbytes(spec.key_bytes)
    plain = rnd.randbytes(8 * 512 + 96)          # a partial last sector, as LUKS key material
    c = SectorCipher(spec, key)
    whole = bytearray(plain)
    c.encrypt(1000, whole)
    assert whole != plain
    # sector by sector gives the same ciphertext: the IV depends only on the sector number
    for i in range(0, len(plain), 512):
        piece = bytearray(plain[i:i + 512])
        c.encrypt(1000 + i // 512, piece)
        assert piece == whole[i:i + 512]
    c.decrypt(1000, whole)
    assert whole == plain


def test_af_split_merge_round_trip():
    key = bytes(range(64))
    for h in ("sha256", "sha1", "sha512"):
        material = af_split(key, 4000, h)
        assert len(material) == 64 * 4000
        assert af_merge(material, 64, 4000, h) == key
        damaged = bytearray(material)
        damaged[1234] ^= 1
        assert af_merge(bytes(damaged), 64, 4000, h) != key


def test_luks_create_parse_unlock_round_trip():
    hdr, area, master = luks_create(PASS.encode(), CreateParams(iter_time_ms=10))
    assert len(area) == 2068480 and hdr.payload_offset == 4040   # QEMU's aes-256-xts layout
    parsed = LuksHeader.parse(area)
    assert parsed.build() == area[:PHDR_LEN]
    assert [s.key_offset * 512 for s in parsed.slots] == [4096 + i * 258048 for i in range(8)]
    read = lambda off, n: area[off:off + n]                      # noqa: E731
    assert parsed.unlock(PASS.encode(), read) == master
    with pytest.raises(CryptoError, match="Invalid password, cannot unlock any keyslot"):
        parsed.unlock(b"wrong", read)


def test_luks_module_known_answer_from_qemu_image(tmp_path, qemu_img, qemu_io):
    """Unlock a header qemu-img wrote with the module alone, and decrypt a sector qemu-io
    wrote with the master key: IV = host offset / 512 (QEMU crypt_physical_offset)."""
    img = qemu_luks(qemu_img, tmp_path / "q.qcow2")
    run_tool(qemu_io, *SECRET, "--image-opts", opts(img), "-c", "write -P 0xa5 0 512")
    raw = img.read_bytes()
    (off, length), = [struct.unpack(">QQ", raw[i + 8:i + 24]) for i in range(112, 512, 8)
                      if raw[i:i + 4] == b"\x05\x37\xbe\x77"]
    hdr = LuksHeader.parse(raw[off:off + 4096])
    assert hdr.area_length == length
    master = hdr.unlock(PASS.encode(), lambda o, n: raw[off + o:off + o + n])
    l1 = struct.unpack(">Q", raw[40:48])[0]
    l2 = struct.unpack(">Q", raw[l1:l1 + 8])[0] & 0x00FFFFFFFFFFFE00
    host = struct.unpack(">Q", raw[l2:l2 + 8])[0] & 0x00FFFFFFFFFFFE00
    sector = bytearray(raw[host:host + 512])
    assert sector != b"\xa5" * 512
    SectorCipher(hdr.spec, master).decrypt(host // 512, sector)
    assert sector == b"\xa5" * 512


# --- qemu writes, blockbed reads -------------------------------------------------------------
QEMU_WRITES = ["write -P 0x5a 0 70k", "write -P 0x33 200k 1k", "write -P 0x11 1000 3000",
               "write -z 300k 64k", "write -P 0x77 1020k 4k"]
LUKS_VARIANTS = {
    "default": "",
    "cbc-essiv": ",encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,"
                 "encrypt.ivgen-hash-alg=sha256,encrypt.hash-alg=sha1",
    "cbc-plain": ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain",
}
EXTL2 = {"extl2": ",extended_l2=on"}


@pytest.mark.parametrize("variant", sorted(LUKS_VARIANTS))
def test_qemu_writes_blockbed_reads(tmp_path, qemu_img, qemu_io, variant):
    img = qemu_luks(qemu_img, tmp_path / "q.qcow2", variant)
    run_tool(qemu_io, *SECRET, "--image-opts", opts(img), *sum((["-c", c] for c in QEMU_WRITES), []))
    ref = qemu_raw(qemu_img, img, tmp_path / "ref.raw")
    bb("img", "convert", *SECRET, "--image-opts", opts(img), "-O", "raw", str(tmp_path / "b.raw"))
    assert (tmp_path / "b.raw").read_bytes() == ref
    # unaligned reads through the driver (sectors are widened and decrypted)
    node = registry.open_image(str(img), "qcow2", read_only=True,
                               options={"encrypt.key-secret": "sec0"})
    try:
        for off, n in ((999, 3003), (65535, 2), (1, 1), (204799, 1026)):
            buf = bytearray(n)
            node.read(off, memoryview(buf))
            assert buf == ref[off:off + n]
    finally:
        node.close()


def test_info_json_equals_qemu(tmp_path, qemu_img):
    img = qemu_luks(qemu_img, tmp_path / "q.qcow2", "cbc-essiv")
    q = run_tool(qemu_img, "info", "--output=json", str(img)).stdout
    b = bb("img", "info", "--output=json", str(img)).stdout     # no key needed (QEMU: NO_IO)
    assert b == q
    assert json.loads(b)["encrypted"] is True
    qh = run_tool(qemu_img, "info", str(img)).stdout.splitlines()[4:]
    bh = bb("img", "info", str(img)).stdout.splitlines()[4:]
    assert bh == qh


def test_legacy_aes_qemu_writes_blockbed_reads(tmp_path, qemu_img, qemu_io):
    img = tmp_path / "aes.qcow2"
    run_tool(qemu_img, "create", "-q", "-f", "qcow2", *SECRET, "-o",
             "encrypt.format=aes,encrypt.key-secret=sec0", str(img), "1M")
    run_tool(qemu_io, *SECRET, "--image-opts", opts(img), *sum((["-c", c] for c in QEMU_WRITES), []))
    ref = qemu_raw(qemu_img, img, tmp_path / "ref.raw")
    bb("img", "convert", *SECRET, "--image-opts", opts(img), "-O", "raw", str(tmp_path / "b.raw"))
    assert (tmp_path / "b.raw").read_bytes() == ref
    assert bb("img", "info", "--output=json", str(img)).stdout == \
        run_tool(qemu_img, "info", "--output=json", str(img)).stdout


# --- blockbed writes, qemu reads -------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["luks", "luks-cbc-essiv", "aes", "luks-extl2"])
def test_blockbed_writes_qemu_reads(tmp_path, qemu_img, fmt):
    img = tmp_path / "b.qcow2"
    o = "encrypt.format=aes,encrypt.key-secret=sec0" if fmt == "aes" else \
        f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}" + \
        {"luks-cbc-essiv": LUKS_VARIANTS["cbc-essiv"], "luks-extl2": EXTL2["extl2"]}.get(fmt, "")
    size = 3 << 20
    bb("img", "create", "-q", "-f", "qcow2", *SECRET, "-o", o, str(img), str(size))
    model = bytearray(size)
    node = registry.open_image(str(img), "qcow2", options={"encrypt.key-secret": "sec0"})
    try:
        run_workload(node, model, seed=7, nops=120)       # unaligned writes, COW, zeroes
    finally:
        node.close()
    assert qemu_raw(qemu_img, img, tmp_path / "ref.raw") == model
    run_tool(qemu_img, "check", *SECRET, "--image-opts", opts(img))
    run_tool(qemu_img, "compare", *SECRET, "--image-opts", opts(img),
             f"driver=raw,file.filename={tmp_path / 'ref.raw'}")
    assert bb("img", "check", *SECRET, "--image-opts", opts(img)).returncode == 0


def test_convert_to_luks_is_ciphertext_on_disk(tmp_path, qemu_img):
    src = tmp_path / "src.raw"
    pattern = b"blockbed plaintext marker 0123456789abcdef" * 12
    src.write_bytes((pattern * 2100)[:1 << 20])
    dst = tmp_path / "enc.qcow2"
    bb("img", "convert", *SECRET, "-O", "qcow2", "-o",
       f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}", str(src), str(dst))
    disk = dst.read_bytes()
    assert pattern[:64] not in disk and b"plaintext marker" not in disk
    assert qemu_raw(qemu_img, dst, tmp_path / "back.raw") == src.read_bytes()
    run_tool(qemu_img, "check", *SECRET, "--image-opts", opts(dst))
    # and back out through blockbed, and compared by blockbed
    bb("img", "compare", *SECRET, "--image-opts", opts(dst), f"driver=raw,file.filename={src}")


def test_blockbed_info_equals_qemu_on_blockbed_image(tmp_path, qemu_img):
    img = tmp_path / "b.qcow2"
    bb("img", "create", "-q", "-f", "qcow2", *SECRET, "-o",
       f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}", str(img), "1M")
    assert bb("img", "info", "--output=json", str(img)).stdout == \
        run_tool(qemu_img, "info", "--output=json", str(img)).stdout
    # QEMU's layout: header, refcount table, refcount block, L1, then the LUKS area
    assert img.stat().st_size == 0x240000
    run_tool(qemu_img, "check", *SECRET, "--image-opts", opts(img))


# --- errors ----------------------------------------------------------------------------------
@pytest.fixture
def enc_image(tmp_path) -> Path:
    from blockbed.block.qcow2.imagecreate import create
    img = tmp_path / "e.qcow2"
    create(str(img), 1 << 20, {"encrypt.format": "luks", "encrypt.key-secret": "sec0",
                               "encrypt.iter-time": "10"})
    return img


def test_wrong_password(enc_image, tmp_path):
    p = bb("img", "convert", "--object", "secret,id=sec0,data=nope", "--image-opts",
           opts(enc_image), "-O", "raw", str(tmp_path / "x.raw"), check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == (f"blockbed img: Could not open '{opts(enc_image)}': "
                                "Invalid password, cannot unlock any keyslot")
    secrets.clear()
    secrets.add_object("secret,id=sec0,data=nope")
    with pytest.raises(CryptoError, match="Invalid password"):
        registry.open_image(str(enc_image), "qcow2", options={"encrypt.key-secret": "sec0"})


def test_missing_secret_object(enc_image, tmp_path):
    p = bb("img", "compare", *SECRET, "--image-opts", opts(enc_image, "sec9"),
           opts(enc_image), check=False)
    assert p.returncode == 2
    assert f"Could not open '{opts(enc_image, 'sec9')}': No secret with id 'sec9'" in p.stderr


@pytest.mark.parametrize("cmd", [["convert", "-O", "raw"], ["map"], ["check"]])
def test_missing_key_is_qemus_error(enc_image, tmp_path, cmd, qemu_img):
    extra = [str(tmp_path / "x.raw")] if cmd[0] == "convert" else []
    p = bb("img", *cmd, str(enc_image), *extra, check=False)
    q = run_tool(qemu_img, *cmd, str(enc_image), *extra, check=False)
    want = f"Could not open '{enc_image}': Parameter 'encrypt.key-secret' is required for cipher"
    assert want in p.stderr and want in q.stderr
    assert p.returncode == q.returncode == 1


def test_create_errors_are_qemus():
    from blockbed.block.qcow2.imagecreate import parse_options
    for o, msg in (({"encrypt.format": "luks"}, "Parameter 'encrypt.key-secret' is required"),
                   ({"encrypt.format": "luks", "encrypt.key-secret": "x"}, "No secret with id 'x'"),
                   ({"encrypt.format": "aes", "encrypt.key-secret": "sec0",
                     "encrypt.cipher-alg": "aes-128"}, "Parameter 'encrypt.cipher-alg' is unexpected"),
                   ({"encrypt.format": "luks", "encrypt.key-secret": "sec0",
                     "encrypt.cipher-alg": "foo"}, "Parameter 'cipher-alg' does not accept value 'foo'"),
                   ({"encrypt.format": "foo", "encrypt.key-secret": "sec0"},
                    "Parameter 'format' does not accept value 'foo'")):
        with pytest.raises(BlockError, match=msg):
            parse_options(o)


def _crypto_ext(img: Path) -> tuple[int, int]:
    raw = img.read_bytes()[:4096]
    i = raw.index(b"\x05\x37\xbe\x77")
    return struct.unpack(">QQ", raw[i + 8:i + 24])


def _poke(rel: int, data: bytes):
    """Damage: overwrite ``data`` at ``rel`` bytes into the LUKS area."""
    def damage(f, off: int) -> None:
        f.seek(off + rel)
        f.write(data)
    return damage


LUKS_MAGIC_DAMAGED = b"LUKZ\xba\xbe"          # the real magic is "LUKS\xba\xbe"


@pytest.mark.parametrize("damage, needle", [
    (_poke(0, LUKS_MAGIC_DAMAGED), "Volume is not in LUKS format"),
    (_poke(208 + 44, struct.pack(">I", 7)), "Keyslot 0 is corrupted (stripes 7 != 4000)"),
    (_poke(4096 + 100, bytes(64)), "Invalid password, cannot unlock any keyslot"),
    (_poke(208, struct.pack(">I", 0x1234)), "Keyslot 0 state (active/disable) is corrupted"),
], ids=["magic", "stripes", "key-material", "slot-state"])
def test_damaged_luks_header_is_a_clear_error(enc_image, tmp_path, damage, needle):
    off, _ = _crypto_ext(enc_image)
    with open(enc_image, "r+b") as f:
        damage(f, off)
    with pytest.raises(CryptoError) as ei:
        registry.open_image(str(enc_image), "qcow2", options={"encrypt.key-secret": "sec0"})
    assert needle in str(ei.value)
    p = bb("img", "convert", *SECRET, "--image-opts", opts(enc_image), "-O", "raw",
           str(tmp_path / "x.raw"), check=False)
    assert p.returncode == 1 and needle in p.stderr


def test_crypto_extension_past_eof_is_refused(enc_image):
    raw = bytearray(enc_image.read_bytes())
    i = raw.index(b"\x05\x37\xbe\x77")
    raw[i + 8:i + 16] = struct.pack(">Q", 1 << 40)
    enc_image.write_bytes(bytes(raw))
    with pytest.raises(BlockError, match="LUKS header"):
        registry.open_image(str(enc_image), "qcow2", options={"encrypt.key-secret": "sec0"})


def test_compression_with_encryption_is_refused(enc_image, tmp_path):
    node = registry.open_image(str(enc_image), "qcow2", options={"encrypt.key-secret": "sec0"})
    try:
        with pytest.raises(BlockError, match="Compression and encryption not supported"):
            node.write_compressed(0, b"\x01" * 65536)
    finally:
        node.close()
    src = tmp_path / "s.raw"
    src.write_bytes(b"\x01" * 65536)
    p = bb("img", "convert", "-c", *SECRET, "-O", "qcow2", "-o",
           f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}", str(src),
           str(tmp_path / "c.qcow2"), check=False)
    assert p.returncode == 1 and "Compression and encryption not supported" in p.stderr


def test_luks_area_is_refcounted_and_protected(enc_image):
    off, length = _crypto_ext(enc_image)
    node = registry.open_image(str(enc_image), "qcow2", options={"encrypt.key-secret": "sec0"})
    try:
        from blockbed.block.qcow2.check import check_image
        res = check_image(node)
        assert (res.corruptions, res.leaks) == (0, 0)      # the LUKS clusters are counted
        assert node.refcounts.get(off >> node.cluster_bits) == 1
        node.write(0, b"\x42" * 512)
        # point guest cluster 0 at the LUKS area: the next write must be refused
        l2off = node.mapping.l2_offset(0)
        table = node.mapping.cache.get(l2off)
        table[0] = off | (1 << 63)
        with pytest.raises(CorruptImageError, match="crypto_header"):
            node.write(0, b"\x43" * 512)
    finally:
        node.close()
    hdr = enc_image.read_bytes()[off:off + 6]
    assert hdr == b"LUKS\xba\xbe"


def test_secret_objects():
    secrets.clear()
    secrets.add_object("secret,id=a,data=aHVudGVyMg==,format=base64")
    assert secrets.lookup("a") == b"hunter2"
    for spec, msg in (("secret,id=b", "Either 'file' or 'data' must be provided"),
                      ("secret,id=b,data=x,file=y", "'file' and 'data' are mutually exclusive"),
                      ("secret,data=x", "Parameter 'id' is missing"),
                      ("secret,id=b,data=x,foo=1", "Parameter 'foo' is unexpected"),
                      ("secret,id=a,data=x", "attempt to add duplicate property 'a'")):
        with pytest.raises(BlockError, match=msg):
            secrets.add_object(spec)


def test_secret_from_file(tmp_path, enc_image):
    f = tmp_path / "pw"
    f.write_text(PASS)
    bb("img", "convert", "--object", f"secret,id=k,file={f}", "--image-opts",
       opts(enc_image, "k"), "-O", "raw", str(tmp_path / "x.raw"))


# --- blockbed run with an encrypted drive ----------------------------------------------------
def test_run_guest_on_encrypted_drive(enc_image, tmp_path, qemu_img):
    img = tmp_path / "g.qcow2"
    bb("img", "create", "-q", "-f", "qcow2", *SECRET, "-o",
       f"encrypt.format=luks,encrypt.key-secret=sec0,{FAST}", str(img), "8M")
    drive = f"file={img},format=qcow2,if=virtio,encrypt.key-secret=sec0"
    p = bb("run", "--kernel", str(guest_elf("disktest")), "--append", "dev=virtio seed=3 ops=20",
           "--drive", drive, *SECRET, check=False)
    assert p.returncode == 0 and "disktest: PASS" in p.stdout, p.stdout + p.stderr
    run_tool(qemu_img, "check", *SECRET, "--image-opts", opts(img))
    p = bb("run", "--kernel", str(guest_elf("disktest")), "--drive",
           f"file={img},format=qcow2,if=virtio", check=False)
    assert p.returncode == 2
    assert "Parameter 'encrypt.key-secret' is required for cipher" in p.stderr


def test_one_mib_read_is_fast(tmp_path):
    """Whole-buffer crypto: a 1 MiB read of XTS data stays far from per-byte Python speed."""
    img = tmp_path / "p.qcow2"
    from blockbed.block.qcow2.imagecreate import create
    create(str(img), 2 << 20, {"encrypt.format": "luks", "encrypt.key-secret": "sec0",
                               "encrypt.iter-time": "10"})
    node = registry.open_image(str(img), "qcow2", options={"encrypt.key-secret": "sec0"})
    try:
        data = random.Random(2).randbytes(1 << 20)
        node.write(0, data)
        buf = bytearray(1 << 20)
        t0 = time.perf_counter()
        node.read(0, memoryview(buf))
        elapsed = time.perf_counter() - t0
        assert buf == data
        assert elapsed < 0.5, elapsed
    finally:
        node.close()


def test_run_refuses_legacy_aes_like_qemu_system_emulators(tmp_path):
    from blockbed.block.drivespec import DriveSpecError, open_drive
    from blockbed.block.qcow2.imagecreate import create
    img = tmp_path / "aes.qcow2"
    create(str(img), 1 << 20, {"encrypt.format": "aes", "encrypt.key-secret": "sec0"})
    with pytest.raises(DriveSpecError, match="AES-CBC encrypted qcow2 images is no longer "
                                             "supported in system emulators"):
        open_drive(f"file={img},format=qcow2,if=virtio,encrypt.key-secret=sec0")


# --- encryption with extended L2 entries (subclusters) ----------------------------------------
def test_extended_l2_luks_qemu_writes_blockbed_reads(tmp_path, qemu_img, qemu_io):
    """QEMU allows extended_l2 with LUKS: subcluster copy-on-write and in-place writes must go
    through the cipher like any other data (the IV is the host offset)."""
    img = qemu_luks(qemu_img, tmp_path / "q.qcow2", "extl2")
    run_tool(qemu_io, *SECRET, "--image-opts", opts(img), *sum((["-c", c] for c in QEMU_WRITES), []))
    ref = qemu_raw(qemu_img, img, tmp_path / "ref.raw")
    bb("img", "convert", *SECRET, "--image-opts", opts(img), "-O", "raw", str(tmp_path / "b.raw"))
    assert (tmp_path / "b.raw").read_bytes() == ref
    assert bb("img", "map", "--output=json", *SECRET, "--image-opts", opts(img)).stdout == \
        run_tool(qemu_img, "map", "--output=json", *SECRET, "--image-opts", opts(img)).stdout
    # (blockbed writing such an image: test_blockbed_writes_qemu_reads[luks-extl2])


# --- preallocation: a new encrypted disk reads as zeros --------------------------------------
@pytest.mark.parametrize("fmt,compat,prealloc", [("luks", "1.1", "metadata"), ("luks", "1.1", "full"),
                                                 ("aes", "1.1", "falloc"), ("aes", "0.10", "metadata")])
def test_preallocated_encrypted_image_reads_zeros(tmp_path, qemu_img, qemu_io, fmt, compat, prealloc):
    """qemu-img's preallocated encrypted images decrypt never-written clusters to garbage;
    blockbed's read zeros (v3: the entries carry the zero flag; v2: the clusters hold
    encrypted zeros), for qemu-io too, and a partial write keeps the rest zero."""
    img = tmp_path / "p.qcow2"
    enc = f"encrypt.format=luks,{FAST}" if fmt == "luks" else "encrypt.format=aes"
    bb("img", "create", "-q", "-f", "qcow2", *SECRET, "-o",
       f"{enc},encrypt.key-secret=sec0,compat={compat},preallocation={prealloc}",
       str(img), "1M")
    run_tool(qemu_io, *SECRET, "--image-opts", opts(img), "-c", "read -P 0 0 1M")
    node = registry.open_image(str(img), "qcow2", options={"encrypt.key-secret": "sec0"})
    try:
        node.write(70000, b"\x5a" * 3000)
    finally:
        node.close()
    want = bytearray(1 << 20)
    want[70000:73000] = b"\x5a" * 3000
    assert qemu_raw(qemu_img, img, tmp_path / "r.raw") == want
    run_tool(qemu_img, "check", *SECRET, "--image-opts", opts(img))


def test_info_with_image_opts_names_the_image_like_qemu(tmp_path, qemu_img):
    """With the key in --image-opts, qemu-img info names the image json:{…} (the options
    the file name cannot carry); without driver options it is the file name.  check
    prints the option string as given."""
    img = qemu_luks(qemu_img, tmp_path / "q.qcow2")
    for spec in (opts(img), f"driver=qcow2,file.filename={img}"):
        for out in ([], ["--output=json"]):
            args = ["info", *out, *SECRET, "--image-opts", spec]
            assert bb("img", *args).stdout == run_tool(qemu_img, *args).stdout, (spec, out)
    args = ["check", "--output=json", *SECRET, "--image-opts", opts(img)]
    assert bb("img", *args).stdout == run_tool(qemu_img, *args).stdout
