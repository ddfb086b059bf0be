"""OVA archives: the disks of an OVF package, read in place from the tar.

An OVA (DMTF DSP0243, OVF 1.x/2.x, "OVF package as a single file") is a USTAR tar
whose first member is the OVF descriptor (``*.ovf``, XML), optionally followed by a
manifest (``*.mf``: lines ``SHA1(name)= hex`` or ``SHA256(name)= hex``) and a
certificate, then the files the descriptor's ``References/File`` elements name by
``ovf:href``.  ``DiskSection/Disk`` elements give each virtual disk: ``ovf:fileRef``
(a File's ``ovf:id``), ``ovf:capacity`` in ``ovf:capacityAllocationUnits``
(DSP0004 programmatic units: ``byte``, ``byte * 2^30``, ...; default bytes) and
``ovf:format`` (usually a streamOptimized VMDK).

Nothing is extracted: each member is a read-only :class:`MemberView` of the byte
range of the tar that holds it (the tar header's data offset and size), and the disk's
format driver (VMDK) opens on that view.  The one exception is a File with
``ovf:compression="gzip"`` (DSP0243 §5.3: the file is stored gzip-compressed;
``ovf:size`` and the manifest's digest are those of the stored bytes): gzip allows no
random access, so the member is decompressed once, streaming, to an unlinked
temporary file, and the VMDK opens on that (at most the OVF capacity plus an eighth
plus 64 MiB of output, so a gzip bomb ends with one line instead of a full disk).  A disk must be self-contained: a VMDK whose
descriptor names extent or parent files is refused (they would be host files outside
the archive).  Member and href names with ``..``, absolute paths, links, devices,
sparse or duplicate members are refused, each with one line; the manifest, when
present, is checked (every listed member, SHA1 or SHA256) before a disk is read.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xml.etree.ElementTree as ET

from .driver import BlockDriver, BlockError, ImageFormatError, ReadOnlyError, check_request

HASH_CHUNK = 1 << 20
GUNZIP_CHUNK = 64 << 10
_MF_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$")
DISK_FORMATS = ("vmdk",)           # formats a disk member may have (self-contained only)


class OvaError(ImageFormatError):
    """A malformed or refused OVA: one line naming the archive and the fault."""


def is_ova_header(header: bytes) -> bool:
    """A USTAR header (``ustar`` at 257) whose first member is named ``*.ovf``: the
    layout DSP0243 requires (the descriptor comes first)."""
    if len(header) < 512 or header[257:262] != b"ustar":
        return False
    name = header[:100].split(b"\0", 1)[0]
    return name.lower().endswith(b".ovf")


class MemberView(BlockDriver):
    """Bytes ``[start, start+size)`` of the tar node, read-only.  It has no children
    and no path, so a VMDK descriptor on it cannot name files relative to it; the
    archive owns (and closes) the tar node."""

    driver_name = "ova-member"
    read_only = True

    def __init__(self, tar: BlockDriver, start: int, size: int, label: str):
        self.tar, self.start, self.size, self.label = tar, start, size, label

    def read(self, offset: int, buf: memoryview) -> None:
        check_request(self, offset, len(buf))
        self.tar.read(self.start + offset, buf)

    def write(self, offset: int, data, fua: bool = False) -> None:
        raise ReadOnlyError(f"{self.label}: an OVA member is read-only")

    def flush(self) -> None:
        pass

    def length(self) -> int:
        return self.size

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.label


@dataclass(frozen=True)
class OvfDisk:
    """One ``DiskSection/Disk`` with its file: ``number`` counts from 1 in document
    order."""

    number: int
    disk_id: str
    href: str
    capacity: int
    format_uri: str
    file_size: int | None = None       # the File's ovf:size, when given
    compression: str = ""              # the File's ovf:compression: "" or "gzip"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    """An attribute by local name, whatever the OVF namespace (1.x or 2.x)."""
    for k, v in el.attrib.items():
        if _local(k) == name:
            return v
    return None


def _children(root: ET.Element, section: str, name: str) -> list[ET.Element]:
    """``<name>`` elements directly inside the Envelope's ``<section>`` elements."""
    return [c for s in root if _local(s.tag) == section for c in s if _local(c.tag) == name]


def parse_units(units: str, where: str) -> int:
    """DSP0004 programmatic units of a capacity: ``byte``, then ``* 2^N``, ``* 10^N``
    or ``* N`` factors (``byte * 2^30`` is GiB)."""
    parts = [p.strip() for p in units.split("*")]
    if parts[0].lower() != "byte":
        raise OvaError(f"{where}: capacity unit '{units}' is not a multiple of byte")
    factor = 1
    for p in parts[1:]:
        m = re.fullmatch(r"(\d+)\s*\^\s*(\d+)|(\d+)", p)
        if not m or (m.group(2) and int(m.group(2)) > 80):
            raise OvaError(f"{where}: capacity unit '{units}': cannot read factor '{p}'")
        factor *= int(m.group(1)) ** int(m.group(2)) if m.group(1) else int(m.group(3))
    return factor


def safe_name(name: str, what: str, where: str) -> str:
    """A member or href name: relative, no ``..`` component, no backslash tricks."""
    if not name or name.startswith("/") or "\\" in name or "\0" in name or \
            ".." in name.split("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", name):
        raise OvaError(f"{where}: {what} '{name}' is not a plain relative name inside the "
                       "archive (absolute, '..', or a URL)")
    return posixpath.normpath(name)


def parse_ovf(text: bytes, where: str) -> list[OvfDisk]:
    """The disks of an OVF descriptor, each with its file's href and its capacity."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise OvaError(f"{where}: the OVF descriptor is not well-formed XML ({e})") from None
    if _local(root.tag) != "Envelope":
        raise OvaError(f"{where}: the OVF descriptor's root is <{_local(root.tag)}>, "
                       "not <Envelope>")
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}                 # href -> ovf:size, where given
    compressed: dict[str, str] = {}            # href -> "gzip"
    for f in _children(root, "References", "File"):
        fid, href = _attr(f, "id"), _attr(f, "href")
        if not fid or not href:
            raise OvaError(f"{where}: a References/File lacks ovf:id or ovf:href")
        comp = (_attr(f, "compression") or "").strip()
        if comp not in ("", "identity", "gzip"):
            raise OvaError(f"{where}: file '{href}' is compressed with '{comp}'; only gzip "
                           "is defined by OVF")
        if _attr(f, "chunkSize"):
            raise OvaError(f"{where}: file '{href}' is split in chunks; not supported")
        files[fid] = safe_name(href, "ovf:href", where)
        if comp == "gzip":
            compressed[files[fid]] = comp
        size = _attr(f, "size")
        if size is not None and size.strip():
            if not size.strip().isdigit():
                raise OvaError(f"{where}: file '{href}': ovf:size '{size}' is not a number")
            sizes[files[fid]] = int(size)
    disks: list[OvfDisk] = []
    for d in _children(root, "DiskSection", "Disk"):
        did, ref, cap = _attr(d, "diskId"), _attr(d, "fileRef"), _attr(d, "capacity")
        label = f"{where}: disk '{did}'"
        if not did or cap is None:
            raise OvaError(f"{where}: a DiskSection/Disk lacks ovf:diskId or ovf:capacity")
        if not ref:
            continue                       # an empty disk: no file, nothing to convert
        if ref not in files:
            raise OvaError(f"{label}: ovf:fileRef '{ref}' names no References/File")
        if not cap.strip().isdigit():
            raise OvaError(f"{label}: ovf:capacity '{cap}' is not a number")
        units = _attr(d, "capacityAllocationUnits") or "byte"
        disks.append(OvfDisk(len(disks) + 1, did, files[ref],
                             int(cap) * parse_units(units, label), _attr(d, "format") or "",
                             sizes.get(files[ref]), compressed.get(files[ref], "")))
    if not disks:
        raise OvaError(f"{where}: the OVF descriptor describes no disk with a file")
    return disks


class OvaArchive:
    """An OVA opened on a (read-only) node of the tar file: its members by name, the
    OVF disks, the manifest checked.  ``close`` closes the tar node."""

    def __init__(self, tar: BlockDriver, where: str):
        self.tar, self.where = tar, where
        self.members: dict[str, tuple[int, int]] = {}      # name -> (data offset, size)
        try:
            self._read_members()
            ovf = [n for n in self.members if n.lower().endswith(".ovf")]
            if len(ovf) != 1:
                raise OvaError(f"{where}: expected one OVF descriptor (*.ovf), found "
                               f"{len(ovf)}")
            self.ovf_name = ovf[0]
            self.disks = parse_ovf(self._bytes(self.ovf_name), where)
            for d in self.disks:
                if d.href not in self.members:
                    raise OvaError(f"{where}: disk '{d.disk_id}': the file '{d.href}' is "
                                   "not in the archive")
                if d.file_size is not None and d.file_size != self.members[d.href][1]:
                    raise OvaError(f"{where}: file '{d.href}' has {self.members[d.href][1]} "
                                   f"bytes in the archive, its ovf:size says {d.file_size}")
            self.manifest = self._check_manifest()
        except BaseException:
            tar.close()
            raise

    def _read_members(self) -> None:
        import tarfile        # (here: every `img info` probes for an OVA; tarfile is slow to import)
        fobj = _NodeFile(self.tar)
        try:
            with tarfile.open(fileobj=fobj, mode="r:") as tf:
                infos = tf.getmembers()
        except (tarfile.TarError, EOFError) as e:
            raise OvaError(f"{self.where}: not a readable tar archive ({e})") from None
        for ti in infos:
            name = safe_name(ti.name, "member", self.where)
            if ti.isdir():
                continue
            if not ti.isreg() or ti.issparse():
                raise OvaError(f"{self.where}: member '{ti.name}' is not a regular file "
                               "(link, device or sparse member)")
            if name in self.members:
                raise OvaError(f"{self.where}: member '{name}' appears twice")
            if ti.offset_data + ti.size > self.tar.length():
                raise OvaError(f"{self.where}: member '{name}' runs past the end of the "
                               "archive (truncated)")
            self.members[name] = (ti.offset_data, ti.size)

    def _bytes(self, name: str, limit: int = 16 << 20) -> bytes:
        off, size = self.members[name]
        if size > limit:
            raise OvaError(f"{self.where}: '{name}' is larger than {limit} bytes")
        buf = bytearray(size)
        if size:
            self.tar.read(off, memoryview(buf))
        return bytes(buf)

    def _check_manifest(self) -> str | None:
        """Every ``ALGO(name)= digest`` line of the manifest must match the member."""
        mf = [n for n in self.members if n.lower().endswith(".mf")]
        if not mf:
            return None
        if len(mf) > 1:
            raise OvaError(f"{self.where}: more than one manifest (*.mf)")
        for line in self._bytes(mf[0]).decode("utf-8", "replace").splitlines():
            if not line.strip():
                continue
            m = _MF_LINE.match(line.strip())
            if not m:
                raise OvaError(f"{self.where}: manifest '{mf[0]}': cannot read line "
                               f"'{line.strip()[:80]}'")
            algo, name, want = m.group(1), safe_name(m.group(2).strip(), "manifest entry",
                                                     self.where), m.group(3).lower()
            if name not in self.members:
                raise OvaError(f"{self.where}: manifest lists '{name}', which is not in the "
                               "archive")
            got = self._digest(name, algo)
            if got != want:
                raise OvaError(f"{self.where}: manifest {algo} mismatch for '{name}': the "
                               f"member hashes to {got}, the manifest says {want}")
        return mf[0]

    def _digest(self, name: str, algo: str) -> str:
        import hashlib
        h = hashlib.new(algo.lower())
        off, size = self.members[name]
        buf = bytearray(HASH_CHUNK)
        pos = 0
        while pos < size:
            n = min(HASH_CHUNK, size - pos)
            view = memoryview(buf)[:n]
            self.tar.read(off + pos, view)
            h.update(view)
            pos += n
        return h.hexdigest()

    def view(self, name: str) -> MemberView:
        off, size = self.members[name]
        return MemberView(self.tar, off, size, f"{self.where}({name})")

    def open_disk(self, disk: OvfDisk) -> BlockDriver:
        """The disk's format node on its member view; its size must be the OVF
        capacity.  Extent or parent files (outside the archive) are refused."""
        from . import registry
        label = f"{self.where}: disk {disk.number} ('{disk.href}')"
        view = self._gunzip(disk, label) if disk.compression == "gzip" else self.view(disk.href)
        header = bytearray(min(registry.PROBE_BYTES, view.length()))
        view.read(0, memoryview(header))
        fmt = registry.probe_other_format(bytes(header)) or "raw"
        if fmt not in DISK_FORMATS:
            raise OvaError(f"{label} is {fmt}, not a VMDK disk")

        def outside(path: str, *a, **kw) -> BlockDriver:
            raise BlockError(errno.ENOTSUP, f"it names the file '{path}' outside the archive")
        try:
            node = registry.get_format(fmt).open(view, read_only=True, options={},
                                                 opener=outside)
        except BlockError as e:
            raise BlockError(e.errno or errno.EINVAL, f"{label}: {e}") from None
        if node.length() != disk.capacity:
            node.close()
            raise OvaError(f"{label}: the disk's virtual size is {node.length()} bytes, the "
                           f"OVF capacity is {disk.capacity} bytes")
        return node

    def _gunzip(self, disk: OvfDisk, label: str) -> BlockDriver:
        """The member decompressed to an unlinked temporary file, as a read-only node.
        Concatenated gzip members (RFC 1952 §2.2) are one stream; trailing garbage, a
        truncated stream or more output than the bound is refused."""
        import tempfile
        import zlib
        from .file import FileDriver
        off, size = self.members[disk.href]
        bound = disk.capacity + disk.capacity // 8 + (64 << 20)
        fd, path = tempfile.mkstemp(prefix="blockbed-ova-")
        try:
            with os.fdopen(fd, "wb") as out:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                # 64 KiB of input inflates to at most ~66 MiB (deflate's 1032:1 bound)
                buf, pos, total = bytearray(GUNZIP_CHUNK), 0, 0
                while pos < size:
                    n = min(GUNZIP_CHUNK, size - pos)
                    view = memoryview(buf)[:n]
                    self.tar.read(off + pos, view)
                    pos += n
                    data = bytes(view)
                    while data:
                        if d.eof:                    # bytes after a member: the next member
                            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        try:
                            chunk = d.decompress(data)
                        except zlib.error as e:
                            raise OvaError(f"{label}: not valid gzip data ({e})") from None
                        data = d.unused_data if d.eof else b""
                        total += len(chunk)
                        if total > bound:
                            raise OvaError(f"{label}: decompresses to more than {bound} bytes "
                                           f"for a {disk.capacity}-byte disk")
                        out.write(chunk)
                if not d.eof:
                    raise OvaError(f"{label}: the gzip stream is truncated")
            node = FileDriver(path, read_only=True, locking="off")
        finally:
            os.unlink(path)
        return node

    def close(self) -> None:
        self.tar.close()


class _NodeFile:
    """A read-only, seekable file object on a node (what tarfile reads the headers
    through)."""

    def __init__(self, node: BlockDriver):
        self.node, self.pos, self.size = node, 0, node.length()

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        buf = bytearray(max(n, 0))
        if n > 0:
            self.node.read(self.pos, memoryview(buf))
            self.pos += n
        return bytes(buf)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True
