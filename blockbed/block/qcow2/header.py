"""qcow2 header and header extensions (QEMU docs/interop/qcow2.txt, "Header").

The on-disk structures are declared with ``construct``; :class:`Header` is the
decoded, validated form the driver works with.  Header extensions the driver
does not understand are kept as raw ``(type, bytes)`` pairs and written back
unchanged when the header is rewritten ("Header extensions": unknown ones must
be preserved by a writer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from construct import (Bytes, Const, Int8ub, Int16ub, Int32ub, Int64ub, PaddedString, Struct)

from ..driver import ImageFormatError

MAGIC = b"QFI\xfb"
HEADER_V2_LEN = 72
HEADER_V3_LEN = 104           # without the compression_type byte
HEADER_V3_QEMU_LEN = 112      # QEMU 7.2 writes the compression_type byte + padding

# --- feature bits (spec: "incompatible_features", "compatible_features", "autoclear_features")
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_SUPPORTED = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_DATA_FILE
                      | INCOMPAT_EXTL2)
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

# --- header extension types ("Header extensions")
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
MAX_BACKING_NAME = 1023
# QEMU's implementation limits (block/qcow2.h): the spec allows more, QEMU refuses more.
MAX_REFTABLE_BYTES = 8 << 20
MAX_L1_BYTES = 32 << 20
MAX_SNAPSHOTS = 65536
# L1/L2 entries hold bits 9..55 of an offset ("Cluster mapping"): 2^56 bytes of host file.
MAX_HOST_OFFSET = (1 << 56) - 1
# QEMU's QCOW_MAX_L1_SIZE bounds the virtual size together with the cluster size.

HeaderV2Struct = Struct(
    "magic" / Const(MAGIC),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "cluster_bits" / Int32ub,
    "size" / Int64ub,
    "crypt_method" / Int32ub,
    "l1_size" / Int32ub,
    "l1_table_offset" / Int64ub,
    "refcount_table_offset" / Int64ub,
    "refcount_table_clusters" / Int32ub,
    "nb_snapshots" / Int32ub,
    "snapshots_offset" / Int64ub,
)

HeaderV3Tail = Struct(
    "incompatible_features" / Int64ub,
    "compatible_features" / Int64ub,
    "autoclear_features" / Int64ub,
    "refcount_order" / Int32ub,
    "header_length" / Int32ub,
)

CompressionTypeField = Struct("compression_type" / Int8ub, "padding" / Bytes(7))

ExtensionHeader = Struct("type" / Int32ub, "length" / Int32ub)

FeatureNameEntry = Struct(
    "type" / Int8ub,            # 0 incompatible, 1 compatible, 2 autoclear
    "bit" / Int8ub,
    "name" / PaddedString(46, "utf8"),
)

BitmapsExtension = Struct(
    "nb_bitmaps" / Int32ub,
    "reserved32" / Int32ub,
    "bitmap_directory_size" / Int64ub,
    "bitmap_directory_offset" / Int64ub,
)

CryptoExtension = Struct("offset" / Int64ub, "length" / Int64ub)

BitmapDirEntry = Struct(
    "bitmap_table_offset" / Int64ub,
    "bitmap_table_size" / Int32ub,
    "flags" / Int32ub,
    "type" / Int8ub,
    "granularity_bits" / Int8ub,
    "name_size" / Int16ub,
    "extra_data_size" / Int32ub,
)

# The feature name table QEMU 7.2 writes, in its order.
QEMU_FEATURE_TABLE: tuple[tuple[int, int, str], ...] = (
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
)


@dataclass
class Header:
    """The decoded header plus every extension (spec "Header", "Header extensions")."""

    version: int = 3
    cluster_bits: int = 16
    size: int = 0
    crypt_method: int = 0
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = HEADER_V3_QEMU_LEN
    compression_type: int = COMPRESSION_ZLIB
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    bitmaps: dict | None = None           # BitmapsExtension fields
    crypto: dict | None = None            # CryptoExtension fields
    unknown_extensions: list[tuple[int, bytes]] = field(default_factory=list)
    has_feature_table: bool = False
    # bytes of the v3 header past the fields we know (header_length > 112), kept as-is
    header_tail: bytes = b""

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def extended_l2(self) -> bool:
        """Incompatible bit 4: 128-bit L2 entries with subcluster bitmaps."""
        return bool(self.incompatible_features & INCOMPAT_EXTL2)

    def feature_name(self, kind: int, bit: int) -> str:
        return self.feature_names.get((kind, bit), f"Unknown incompatible feature: {1 << bit:x}"
                                      if kind == 0 else f"bit {bit}")


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def parse_header(raw: bytes, check: bool = False) -> Header:
    """Decode and validate the header in ``raw`` (the first cluster, or more).

    ``check``: opened for ``check`` (QEMU's BDRV_O_CHECK): an image without a
    refcount table and a bad snapshot table pointer are left to the check.

    Every field is range-checked here so the rest of the driver can trust it;
    errors are :class:`ImageFormatError` with the field named.
    """
    if len(raw) < HEADER_V2_LEN or raw[:4] != MAGIC:
        raise ImageFormatError("Image is not in qcow2 format")
    h2 = HeaderV2Struct.parse(raw)
    if h2.version not in (2, 3):
        raise ImageFormatError(f"Unsupported qcow2 version {h2.version}")
    hdr = Header(version=h2.version, cluster_bits=h2.cluster_bits, size=h2.size,
                 crypt_method=h2.crypt_method, l1_size=h2.l1_size,
                 l1_table_offset=h2.l1_table_offset,
                 refcount_table_offset=h2.refcount_table_offset,
                 refcount_table_clusters=h2.refcount_table_clusters,
                 nb_snapshots=h2.nb_snapshots, snapshots_offset=h2.snapshots_offset)
    if not MIN_CLUSTER_BITS <= hdr.cluster_bits <= MAX_CLUSTER_BITS:
        raise ImageFormatError(f"Unsupported cluster size: 2^{hdr.cluster_bits}")
    cs = hdr.cluster_size
    if hdr.version == 2:
        hdr.header_length = HEADER_V2_LEN
        hdr.refcount_order = 4
    else:
        if len(raw) < HEADER_V3_LEN:
            # QEMU reads the missing bytes as zeros: header_length 0 is too short
            raise ImageFormatError("qcow2 header too short")
        t = HeaderV3Tail.parse(raw[HEADER_V2_LEN:])
        hdr.incompatible_features = t.incompatible_features
        hdr.compatible_features = t.compatible_features
        hdr.autoclear_features = t.autoclear_features
        hdr.refcount_order = t.refcount_order
        hdr.header_length = t.header_length
        if hdr.header_length < HEADER_V3_LEN:
            raise ImageFormatError("qcow2 header too short")
        if hdr.header_length > cs or hdr.header_length > len(raw):
            raise ImageFormatError("qcow2 header exceeds cluster size")
        if hdr.header_length > HEADER_V3_LEN:
            hdr.compression_type = raw[HEADER_V3_LEN]
            hdr.header_tail = bytes(raw[HEADER_V3_QEMU_LEN:hdr.header_length])
        if hdr.refcount_order > 6:
            raise ImageFormatError("Reference count entry width too large; may not exceed 64 bits")
    # --- extensions, then the backing file name
    end = cs  # extensions end before the backing file name, or at the cluster's end
    if h2.backing_file_offset > cs:            # QEMU qcow2_do_open
        raise ImageFormatError("Invalid backing file offset")
    if h2.backing_file_offset:
        end = min(end, h2.backing_file_offset)
    _parse_extensions(hdr, raw, hdr.header_length, end)
    if h2.backing_file_offset:
        if h2.backing_file_size > MAX_BACKING_NAME or h2.backing_file_offset + h2.backing_file_size > cs \
                or h2.backing_file_offset + h2.backing_file_size > len(raw):
            raise ImageFormatError("Backing file name too long")
        name = bytes(raw[h2.backing_file_offset:h2.backing_file_offset + h2.backing_file_size])
        try:
            hdr.backing_file = name.decode("utf-8")
        except UnicodeDecodeError:
            raise ImageFormatError("Backing file name is not valid UTF-8") from None
    _validate(hdr, check)
    return hdr


BACKING_FORMAT_MAX = 16       # QEMU's BlockDriverState.backing_format[16]


def _parse_extensions(hdr: Header, raw: bytes, start: int, end: int) -> None:
    off = start
    while True:
        if off + 8 > end:
            if off >= end:
                return  # v2 images may end without an end marker when a backing name follows
            # QEMU reads the 8 bytes past the end anyway, then finds them "too large"
            raise ImageFormatError("Header extension too large")
        ext = ExtensionHeader.parse(raw[off:off + 8])
        off += 8
        if ext.type == EXT_END:
            return
        if ext.length > end - off:                # QEMU qcow2_read_extensions
            raise ImageFormatError("Header extension too large")
        if ext.type == EXT_BACKING_FORMAT and ext.length >= BACKING_FORMAT_MAX:
            raise ImageFormatError("ERROR: ext_backing_format: len=%u too large (>=%u)"
                                   % (ext.length, BACKING_FORMAT_MAX))
        data = bytes(raw[off:off + ext.length])
        off += _pad8(ext.length)
        if ext.type == EXT_BACKING_FORMAT:
            hdr.backing_format = data.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif ext.type == EXT_FEATURE_TABLE:
            hdr.has_feature_table = True
            for i in range(len(data) // 48):
                e = FeatureNameEntry.parse(data[i * 48:(i + 1) * 48])
                hdr.feature_names[(e.type, e.bit)] = e.name.split("\0", 1)[0]
        elif ext.type == EXT_BITMAPS:
            if len(data) < BitmapsExtension.sizeof():
                raise ImageFormatError("bitmaps_ext: Invalid extension length")
            b = BitmapsExtension.parse(data)
            hdr.bitmaps = {k: b[k] for k in ("nb_bitmaps", "reserved32",
                                             "bitmap_directory_size", "bitmap_directory_offset")}
        elif ext.type == EXT_CRYPTO:
            if len(data) != CryptoExtension.sizeof():
                raise ImageFormatError("Unable to read CRYPTO header extension")
            c = CryptoExtension.parse(data)
            hdr.crypto = {"offset": c.offset, "length": c.length}
        elif ext.type == EXT_DATA_FILE:
            hdr.data_file = data.decode("utf-8", "replace")
        else:
            hdr.unknown_extensions.append((ext.type, data))


def _validate(hdr: Header, check: bool) -> None:
    cs = hdr.cluster_size
    if hdr.incompatible_features & ~INCOMPAT_SUPPORTED:
        bad = hdr.incompatible_features & ~INCOMPAT_SUPPORTED
        names = []                    # QEMU report_unsupported_feature: table order, then
        for (kind, bit), name in hdr.feature_names.items():        # the rest as one mask
            if kind == 0 and bit < 64 and bad >> bit & 1:
                names.append(name[:46])
                bad &= ~(1 << bit)
        if bad:
            names.append(f"Unknown incompatible feature: {bad:x}")
        raise ImageFormatError("Unsupported qcow2 feature(s): " + ", ".join(names))
    if hdr.incompatible_features & INCOMPAT_DATA_FILE and hdr.data_file is None:
        raise ImageFormatError("qcow2: the image uses an external data file but its header "
                               "does not name one (external data file extension missing)")
    if hdr.autoclear_features & AUTOCLEAR_DATA_FILE_RAW and \
            not hdr.incompatible_features & INCOMPAT_DATA_FILE:
        hdr.autoclear_features &= ~AUTOCLEAR_DATA_FILE_RAW     # meaningless without a data file
    if hdr.incompatible_features & INCOMPAT_COMPRESSION:
        if hdr.compression_type not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
            raise ImageFormatError(f"qcow2: unknown compression type: {hdr.compression_type}")
    elif hdr.compression_type != COMPRESSION_ZLIB:
        raise ImageFormatError("qcow2: Compression type incompatible feature bit must be set")
    if hdr.crypt_method not in (CRYPT_NONE, CRYPT_AES, CRYPT_LUKS):
        raise ImageFormatError("Unsupported encryption method "       # QEMU prints it as int
                               f"{hdr.crypt_method - (hdr.crypt_method >> 31 << 32)}")
    if hdr.crypt_method == CRYPT_LUKS and hdr.crypto is None:
        raise ImageFormatError("qcow2: LUKS encryption (crypt_method 2) without the full disk "
                               "encryption header extension")
    if hdr.crypto is not None and hdr.crypt_method != CRYPT_LUKS:
        raise ImageFormatError("CRYPTO header extension only expected with LUKS encryption "
                               "method")
    # QEMU qcow2_validate_table: a table must start on a cluster boundary
    for name, what in (("refcount_table_offset", "Reference count table"),
                       ("snapshots_offset", "Snapshot table"),
                       ("l1_table_offset", "Active L1 table")):
        if getattr(hdr, name) % cs and not (check and name == "snapshots_offset"):
            raise ImageFormatError(f"{what} offset invalid")
    if hdr.refcount_table_clusters == 0 and not check:
        raise ImageFormatError("Image does not contain a reference count table")
    if hdr.refcount_table_clusters * cs > MAX_REFTABLE_BYTES:
        raise ImageFormatError("Reference count table too large")
    if hdr.l1_size * 8 > MAX_L1_BYTES:
        raise ImageFormatError("Active L1 table too large")
    if hdr.nb_snapshots > MAX_SNAPSHOTS and not check:
        raise ImageFormatError("Snapshot table too large")
    l2_bits = hdr.cluster_bits - 3 - hdr.extended_l2
    if hdr.extended_l2 and cs // 32 < 512:
        # 32 subclusters per cluster, each at least a sector (QEMU qcow2_do_open)
        raise ImageFormatError(f"Unsupported subcluster size: {cs // 32}")
    needed = -(-hdr.size // (1 << (hdr.cluster_bits + l2_bits))) if hdr.size else 0
    # QEMU qcow2_do_open: size_to_l1() beyond INT_MAX is "Image is too big"
    if hdr.size > (1 << 63) - 1 or needed > 0x7FFFFFFF:
        raise ImageFormatError("Image is too big")
    if needed > hdr.l1_size:
        raise ImageFormatError("L1 table is too small")
    # QEMU 7.2 checks only alignment and overflow here: a table at offset 0 or past
    # the end of the file opens (it reads as the header bytes or as zeros); the
    # driver refuses I/O through it (Qcow2Driver.l1_damage, RefcountManager.damage)
    for name, off, length in (
            ("Active L1 table", hdr.l1_table_offset, hdr.l1_size * 8),
            ("Reference count table", hdr.refcount_table_offset, hdr.refcount_table_clusters * cs)):
        if off + length > MAX_HOST_OFFSET:
            raise ImageFormatError(f"{name} offset invalid")


FEATURE_TABLE_MIN_CLUSTER = 8192


def serialize_header(hdr: Header) -> bytes:
    """Encode header + extensions + backing name into one cluster's worth of bytes.

    Extension order follows QEMU's qcow2_update_header: crypto, data file,
    backing format, feature table, bitmaps, unknown extensions, end marker;
    the backing file name follows the end marker.
    """
    cs = hdr.cluster_size
    out = bytearray()
    out += HeaderV2Struct.build(dict(
        version=hdr.version, backing_file_offset=0, backing_file_size=0,
        cluster_bits=hdr.cluster_bits, size=hdr.size, crypt_method=hdr.crypt_method,
        l1_size=hdr.l1_size, l1_table_offset=hdr.l1_table_offset,
        refcount_table_offset=hdr.refcount_table_offset,
        refcount_table_clusters=hdr.refcount_table_clusters,
        nb_snapshots=hdr.nb_snapshots, snapshots_offset=hdr.snapshots_offset))
    if hdr.version >= 3:
        hlen = max(hdr.header_length, HEADER_V3_QEMU_LEN)
        out += HeaderV3Tail.build(dict(
            incompatible_features=hdr.incompatible_features,
            compatible_features=hdr.compatible_features,
            autoclear_features=hdr.autoclear_features,
            refcount_order=hdr.refcount_order, header_length=hlen))
        out += CompressionTypeField.build(dict(compression_type=hdr.compression_type,
                                               padding=bytes(7)))
        out += hdr.header_tail
        out += bytes(hlen - len(out))

    def ext(kind: int, data: bytes) -> bytes:
        return (ExtensionHeader.build(dict(type=kind, length=len(data))) + data
                + bytes(_pad8(len(data)) - len(data)))

    before: list[bytes] = []
    after: list[bytes] = []
    if hdr.crypto is not None:
        before.append(ext(EXT_CRYPTO, CryptoExtension.build(hdr.crypto)))
    if hdr.data_file is not None:
        before.append(ext(EXT_DATA_FILE, hdr.data_file.encode()))
    if hdr.backing_format and hdr.backing_file:
        before.append(ext(EXT_BACKING_FORMAT, hdr.backing_format.encode()))
    if hdr.bitmaps is not None:
        after.append(ext(EXT_BITMAPS, BitmapsExtension.build(hdr.bitmaps)))
    for kind, data in hdr.unknown_extensions:
        after.append(ext(kind, data))
    name = (hdr.backing_file or "").encode()
    if len(name) > MAX_BACKING_NAME:
        raise ImageFormatError("Backing file name too long")
    need_end = hdr.version >= 3 or bool(name or before or after)
    table = b""
    if hdr.version >= 3 and cs >= FEATURE_TABLE_MIN_CLUSTER:
        # the feature name table is optional: QEMU leaves it out when it does not fit,
        # and (measured: qemu-img 7.2 create/convert) for clusters below 8 KiB
        table = ext(EXT_FEATURE_TABLE, b"".join(
            FeatureNameEntry.build(dict(type=t, bit=b, name=n)) for t, b, n in QEMU_FEATURE_TABLE))
        total = len(out) + sum(map(len, before + after)) + len(table) + 8 + len(name)
        if total >= cs:
            table = b""
    for part in before:
        out += part
    out += table
    for part in after:
        out += part
    if need_end:
        out += ExtensionHeader.build(dict(type=EXT_END, length=0))
    if name:
        struct.pack_into(">QI", out, 8, len(out), len(name))
        out += name
    if len(out) > cs:
        raise ImageFormatError("Cannot write the qcow2 header: header extensions and the "
                               f"backing file name do not fit in one cluster ({cs} bytes)")
    return bytes(out)
