"""``blockbed img``: qemu-img's syntax and output over blockbed's block layer.

Subcommands: create (img_create.py), info, check, map, convert (img_convert.py),
compare, resize, snapshot (img_snapshot.py), bitmap and the rest (img_extra.py).  JSON output
matches ``qemu-img … --output=json`` of QEMU 7.2 field for field; key order
follows QEMU's QDict hash order so even the text is the same.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterator

from ..block.driver import BlockDriver, BlockError

CHUNK = 2 << 20


# --- QEMU-compatible JSON -------------------------------------------------------------
def _qdict_bucket(name: str) -> int:
    """QEMU qdict.c tdb_hash(name) % QDICT_BUCKET_MAX: the order keys are printed in."""
    v = (0x238F13AF * len(name)) & 0xFFFFFFFF
    for i, ch in enumerate(name.encode()):
        v = (v + (ch << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * v + 12345) & 0xFFFFFFFF) % 512


def _qdict_order(d: dict) -> list[tuple[str, Any]]:
    # within a bucket QEMU iterates newest first
    items = list(d.items())
    idx = {k: i for i, (k, _) in enumerate(items)}
    return sorted(items, key=lambda kv: (_qdict_bucket(kv[0]), -idx[kv[0]]))


def qemu_json(obj: Any, indent: int = 0) -> str:
    """Pretty JSON as QEMU's qobject_to_json_pretty writes it."""
    import json     # imported here: convert and create never print JSON
    pad = "    " * (indent + 1)
    end = "    " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        parts = [f"{pad}{json.dumps(k)}: {qemu_json(v, indent + 1)}" for k, v in _qdict_order(obj)]
        return "{\n" + ",\n".join(parts) + "\n" + end + "}"
    if isinstance(obj, list):
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(pad + qemu_json(v, indent + 1) for v in obj) + "\n" + end + "]"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    return json.dumps(obj)


def size_to_str(n: int) -> str:
    """QEMU's size_to_str (util/cutils.c): switch unit once the value reaches 1000."""
    import math
    suffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
    _, e = math.frexp(n / (1000.0 / 1024.0))
    i = max(0, min((e - 1) // 10, len(suffixes) - 1))
    return f"{_g3(n / (1 << (i * 10)))} {suffixes[i]}B"


def _g3(v: float) -> str:
    """C's %0.3g."""
    return f"{v:0.3g}"


# --- opening ------------------------------------------------------------------------------
def _probe_format(path: str) -> str:
    from ..block import registry
    from .imageopts import resolve
    path = resolve(path, None)[0]
    if registry.is_nbd_filename(path):
        from ..block.nbd import NbdDriver
        node = NbdDriver(path, read_only=True)
        try:
            head = bytearray(min(2048, node.length()))
            node.read(0, memoryview(head))
        finally:
            node.close()
        return registry.probe_other_format(bytes(head)) or "raw"
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError as e:
        raise BlockError(e.errno or errno.EIO, f"Could not open '{path}': {e.strerror}") from None
    return registry.probe_other_format(head) or "raw"


def unknown_format(fmt: str | None) -> bool:
    """``fmt`` names no format blockbed knows, not even one it only recognises (QEMU's
    bdrv_find_format failing: "Unknown driver", "Unknown file format")."""
    from ..block import foreign, registry
    return fmt is not None and fmt not in registry.available_formats() \
        and fmt not in foreign.PROBES


def open_img(path: str, fmt: str | None, *, read_only: bool = True, force_share: bool = False,
             no_backing: bool = False, extra: dict | None = None,
             no_io: bool = False, cache: str = "writeback") -> tuple[BlockDriver, str]:
    """Open an image argument (a path, or an --image-opts string).  ``no_io``: metadata
    only, as qemu-img info (an encrypted image then needs no key)."""
    from ..block import registry
    from ..block.crypto import CryptoError
    from .imageopts import open_error, resolve
    arg = path
    path, fmt, image_opts = resolve(arg, fmt)
    if unknown_format(fmt):
        raise BlockError(errno.EINVAL, f"Unknown driver '{fmt}'")
    if fmt is None:
        fmt = _probe_format(path)
    opts = dict(extra or {})
    opts.update(image_opts)
    if fmt == "qcow2" and no_backing:
        opts["backing"] = None
        opts["data-file"] = None          # info/check never touch guest data
    if fmt == "qcow2" and no_io:
        opts["x-no-io"] = True
    if fmt != "qcow2":
        opts = {}
    try:
        node = registry.open_image(path, fmt, read_only=read_only, cache=cache,
                                   force_share=force_share and read_only, options=opts)
    except CryptoError as e:
        raise open_error(arg, e) from None
    return node, fmt


def _open_msg(arg: str, e: BlockError) -> str:
    from .imageopts import ImageOpenError
    return str(e) if isinstance(e, ImageOpenError) else f"Could not open '{arg}': {e}"


def open_arg(path: str, fmt: str | None, **kw) -> tuple[BlockDriver, str]:
    """:func:`open_img` for an image named on the command line: a failure reads as
    qemu-img's img_open reports one, "Could not open 'ARG': " before the block layer's
    reason (which, for a missing file, names the file again, as in qemu-img)."""
    from .imageopts import ImageOpenError
    try:
        return open_img(path, fmt, **kw)
    except BlockError as e:
        raise ImageOpenError(e.errno or errno.EIO, _open_msg(path, e)) from None


def _fail(msg: str, code: int = 1) -> int:
    print(f"blockbed img: {msg}", file=sys.stderr)
    return code


def _parse_o(values: list[str] | None) -> dict:
    opts: dict[str, str] = {}
    for v in values or []:
        for kv in v.split(","):
            if not kv:
                continue
            k, sep, val = kv.partition("=")
            if not sep:
                raise BlockError(errno.EINVAL, f"Invalid option '{kv}': expected key=value")
            opts[k] = val
    return opts


# --- info -------------------------------------------------------------------------------------
def _resolve_path(arg: str) -> str:
    from .imageopts import resolve
    return resolve(arg, None)[0]


def _actual_size(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def image_info(node: BlockDriver, fmt: str, path: str) -> dict:
    """The ImageInfo fields qemu-img info prints (QAPI order of insertion); a foreign
    format driver adds its own (``info_fields``, ``host_files``)."""
    from ..block.readonlyfmt import node_path
    info: dict[str, Any] = {}
    if fmt == "qcow2":
        h = node.header
        info["virtual-size"] = node.length()
        info["filename"] = path
        info["cluster-size"] = node.cluster_size
        info["format"] = "qcow2"
        info["actual-size"] = _actual_size(_resolve_path(path))
        data: dict[str, Any] = {}
        if h.version == 2:
            data["compat"] = "0.10"
            data["compression-type"] = "zlib"
            data["refcount-bits"] = h.refcount_bits
        else:
            data["compat"] = "1.1"
            data["compression-type"] = "zstd" if h.compression_type == 1 else "zlib"
            data["lazy-refcounts"] = bool(h.compatible_features & 1)
            if node.bitmaps.info():
                data["bitmaps"] = node.bitmaps.info()
            data["refcount-bits"] = h.refcount_bits
            if node.crypto is not None:
                data["encrypt"] = node.crypto.info()
            if node.has_data_file:
                data["data-file"] = h.data_file
                data["data-file-raw"] = node.data_file_raw
            data["corrupt"] = bool(h.incompatible_features & 2)
            data["extended-l2"] = h.extended_l2
        if h.version == 2 and node.crypto is not None:
            data["encrypt"] = node.crypto.info()
        info["format-specific"] = {"type": "qcow2", "data": data}
        if node.crypto is not None:
            info["encrypted"] = True
        if h.backing_file:
            info["backing-filename"] = h.backing_file
            info["full-backing-filename"] = node.backing_path()
            if h.backing_format:
                info["backing-filename-format"] = h.backing_format
        if node.snapshots:
            info["snapshots"] = [{
                "id": s.id_str, "name": s.name, "vm-state-size": s.vm_state_size,
                "date-sec": s.date_sec, "date-nsec": s.date_nsec,
                "vm-clock-sec": s.vm_clock_nsec // 1_000_000_000,
                "vm-clock-nsec": s.vm_clock_nsec % 1_000_000_000,
                **({"icount": s.icount} if s.icount not in (None, 2 ** 64 - 1) else {}),
            } for s in node.snapshots]
        info["dirty-flag"] = bool(h.incompatible_features & 1)
    else:
        # QEMU counts whole sectors: a raw file's size is rounded up to 512 bytes
        info["virtual-size"] = -(-node.length() // 512) * 512
        nbd = getattr(node, "file", None)
        if getattr(nbd, "driver_name", "") == "nbd":
            # qemu-img: the server's normalised URI, and no disk size to report
            info["filename"] = nbd.filename
            info["format"] = fmt
            return info
        info["filename"] = path
        info["format"] = fmt
        info["actual-size"] = _actual_size(path)
        extra = getattr(node, "info_fields", None)
        if extra is not None:         # a foreign format driver (readonlyfmt.ReadOnlyFormat)
            info.update(extra())
            info["actual-size"] = sum(_actual_size(p) for p in
                                      map(node_path, node.host_files()) if p)
        info["dirty-flag"] = False
    return info


def nbd_filename(path: str) -> str | None:
    """``path`` if it names an NBD export rather than a file."""
    from ..block.registry import is_nbd_filename
    return path if is_nbd_filename(path) else None


def _chain(path: str, fmt: str | None, force_share: bool) -> Iterator[tuple[dict, BlockDriver]]:
    seen: set[str] = set()
    while path:
        real = os.path.realpath(path)
        if real in seen:
            raise BlockError(errno.ELOOP, f"Backing file '{path}' creates an infinite loop.")
        seen.add(real)
        node, f = open_arg(path, fmt, force_share=force_share, no_backing=True, no_io=True)
        try:
            info = image_info(node, f, path)
            from .imageopts import display_name
            if nbd_filename(path) is None:
                info["filename"] = display_name(path)
            nxt = info.get("full-backing-filename")
            fmt = info.get("backing-filename-format")
            yield info, node
        finally:
            node.close()
        path = nxt


def cmd_info(a: argparse.Namespace) -> int:
    from . import img_ova
    if img_ova.is_ova(a.filename, a.f):
        return img_ova.info(a)
    infos = []
    for info, node in _chain(a.filename, a.f, a.U):
        infos.append(info)
        if not a.backing_chain:
            break
    if a.output == "json":
        print(qemu_json(infos if a.backing_chain else infos[0]))
        return 0
    for i, info in enumerate(infos):
        if i:
            print()
        print(_human_info(info))
    return 0


def _human_info(info: dict) -> str:
    lines = [f"image: {info['filename']}", f"file format: {info['format']}",
             f"virtual size: {size_to_str(info['virtual-size'])} ({info['virtual-size']} bytes)",
             "disk size: " + (size_to_str(info["actual-size"]) if "actual-size" in info
                              else "unavailable")]
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        bf, full = info["backing-filename"], info["full-backing-filename"]
        lines.append(f"backing file: {bf}" + (f" (actual path: {full})" if full != bf else ""))
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("snapshots"):
        import time as _time
        lines.append("Snapshot list:")
        lines.append(f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}")
        for s in info["snapshots"]:
            date = _time.strftime("%Y-%m-%d %H:%M:%S", _time.localtime(s["date-sec"]))
            secs = s["vm-clock-sec"]
            clock = (f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}."
                     f"{s['vm-clock-nsec'] // 1_000_000:03d}")
            icount = str(s["icount"]) if "icount" in s else ""
            lines.append(f"{s['id']:<9} {s['name']:<16} {size_to_str(s['vm-state-size']):>8}"
                         f"{date:>20}{clock:>13}{icount:>11}")
    fs = info.get("format-specific")
    if fs:
        lines.append("Format specific information:")
        _dump_qobject(fs["data"], 1, lines)
    return "\n".join(lines)


def _scalar(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _dump_qobject(obj: Any, indent: int, lines: list[str]) -> None:
    """QEMU's dump_qdict/dump_qlist (block/qapi.c): nested, QDict hash order."""
    pad = " " * (indent * 4)
    if isinstance(obj, dict):
        for k, v in _qdict_order(obj):
            key = k.replace("-", " ")
            if isinstance(v, (dict, list)):
                lines.append(f"{pad}{key}:")
                _dump_qobject(v, indent + 1, lines)
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
    else:
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                lines.append(f"{pad}[{i}]:")
                _dump_qobject(v, indent + 1, lines)
            else:
                lines.append(f"{pad}[{i}]: {_scalar(v)}")


# --- check ----------------------------------------------------------------------------------
def cmd_check(a: argparse.Namespace) -> int:
    from ..block.qcow2.check import check_image
    try:
        fmt = a.f or _probe_format(a.filename)
    except BlockError as e:
        return _fail(_open_msg(a.filename, e), 1)
    if fmt != "qcow2":
        return _fail("This image format does not support checks", 63)
    try:
        node, _ = open_img(a.filename, "qcow2", read_only=not a.r, force_share=a.U and not a.r,
                           no_backing=True, extra={"x-check": True})
    except BlockError as e:
        return _fail(_open_msg(a.filename, e), 1)
    try:
        res = check_image(node, repair=a.r)
    finally:
        node.close()
    for m in res.messages:
        print(m, file=sys.stderr)
    if res.failed:
        return _fail(f"Check failed: {res.failed}")
    if a.output == "json":
        d: dict[str, Any] = {"filename": a.filename, "format": "qcow2",
                             "check-errors": res.check_errors}
        if res.image_end_offset:
            d["image-end-offset"] = res.image_end_offset
        for key, val in (("corruptions", res.corruptions), ("leaks", res.leaks),
                         ("corruptions-fixed", res.corruptions_fixed),
                         ("leaks-fixed", res.leaks_fixed),
                         ("total-clusters", res.total_clusters),
                         ("allocated-clusters", res.allocated_clusters),
                         ("fragmented-clusters", res.fragmented_clusters),
                         ("compressed-clusters", res.compressed_clusters)):
            if val:
                d[key] = val
        print(qemu_json(d))
    elif not a.q:
        if res.leaks_fixed or res.corruptions_fixed:
            print("The following inconsistencies were found and repaired:\n\n"
                  f"    {res.leaks_fixed} leaked clusters\n"
                  f"    {res.corruptions_fixed} corruptions\n\n"
                  "Double checking the fixed image now...")
        if not (res.corruptions or res.leaks or res.check_errors):
            print("No errors were found on the image.")
        else:
            if res.corruptions:
                print(f"\n{res.corruptions} errors were found on the image.\n"
                      "Data may be corrupted, or further writes to the image may corrupt it.")
            if res.leaks:
                print(f"\n{res.leaks} leaked clusters were found on the image.\n"
                      "This means waste of disk space, but no harm to data.")
            if res.check_errors:
                print(f"\n{res.check_errors} internal errors have occurred during the check.")
        if res.total_clusters and res.allocated_clusters:
            print(f"{res.allocated_clusters}/{res.total_clusters} = "
                  f"{res.allocated_clusters * 100 / res.total_clusters:0.2f}% allocated, "
                  f"{res.fragmented_clusters * 100 / res.allocated_clusters:0.2f}% fragmented, "
                  f"{res.compressed_clusters * 100 / res.allocated_clusters:0.2f}% compressed clusters")
        if res.image_end_offset:
            print(f"Image end offset: {res.image_end_offset}")
    if res.check_errors:
        print("qemu-img: Check failed", file=sys.stderr)
    return res.exit_code()


# --- map ------------------------------------------------------------------------------------
@dataclass
class MapEntry:
    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None
    filename: str | None = None


def chain_status(node: BlockDriver, offset: int, length: int, depth: int = 0) -> list[MapEntry]:
    """qemu-img's get_block_status: descend the backing chain through unallocated ranges."""
    out: list[MapEntry] = []
    for e in node.block_status(offset, length):
        if e.allocated or e.data or e.zero:
            out.append(MapEntry(e.offset, e.length, depth, bool(e.allocated or e.data or e.zero)
                                if e.allocated else False, e.zero, e.data, e.host_offset,
                                _host_name(e.host_node)))
            continue
        backing = getattr(node, "backing", None)
        if backing is None:
            out.append(MapEntry(e.offset, e.length, depth, False, True, False, None))
            continue
        out.extend(chain_status(backing, e.offset, e.length, depth + 1))
    return out


def _host_name(node: BlockDriver | None) -> str | None:
    if node is None:
        return None
    from ..block.qcow2.driver import _node_path
    return _node_path(node)


def _merge(entries: list[MapEntry]) -> list[MapEntry]:
    out: list[MapEntry] = []
    for e in entries:
        if out:
            p = out[-1]
            if (p.zero, p.data, p.depth, p.present) == (e.zero, e.data, e.depth, e.present) and \
                    (p.offset is None) == (e.offset is None) and \
                    (p.offset is None or p.offset + p.length == e.offset) and \
                    p.start + p.length == e.start:
                p.length += e.length
                continue
        out.append(MapEntry(**e.__dict__))
    return out


def cmd_map(a: argparse.Namespace) -> int:
    if a.picture:                    # a layout drawing instead of the map (own module)
        from .img_picture import map_picture
        return map_picture(a)
    node, _ = open_arg(a.filename, a.f, force_share=a.U)
    try:
        size = node.length()
        start = a.start_offset or 0
        end = size if a.max_length is None else min(size, start + a.max_length)
        entries: list[MapEntry] = []
        pos = start
        while pos < end:
            n = min(1 << 30, end - pos)
            entries.extend(chain_status(node, pos, n))
            pos += n
        entries = _merge(entries)
    finally:
        node.close()
    if a.output == "json":
        lines = []
        for e in entries:
            s = (f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth}, '
                 f'"present": {str(e.present).lower()}, "zero": {str(e.zero).lower()}, '
                 f'"data": {str(e.data).lower()}')
            if e.offset is not None:
                s += f', "offset": {e.offset}'
            lines.append(s + "}")
        print("[" + ",\n".join(lines) + "]")
    else:
        print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
        for e in entries:
            if e.data and e.offset is None:
                sys.stdout.flush()
                return _fail("File contains external, encrypted or compressed clusters.")
            if e.data and not e.zero and e.offset is not None:
                print(f"{_cx(e.start):<16}{_cx(e.length):<16}{_cx(e.offset):<16}"
                      f"{e.filename or a.filename}")
    return 0


def _cx(v: int) -> str:
    """C's %#llx: "0" for zero, "0x…" otherwise."""
    return f"{v:#x}" if v else "0"


def _progress(pct: float) -> None:
    sys.stdout.write(f"    ({pct:0.2f}/100%)\r")
    sys.stdout.flush()


# --- compare --------------------------------------------------------------------------------
def cmd_compare(a: argparse.Namespace) -> int:
    try:
        n1, _ = open_img(a.img1, a.f, force_share=a.U)
    except BlockError as e:
        return _fail(_open_msg(a.img1, e), 2)
    try:
        n2, _ = open_img(a.img2, a.F, force_share=a.U)
    except BlockError as e:
        n1.close()
        return _fail(_open_msg(a.img2, e), 2)
    try:
        s1, s2 = n1.length(), n2.length()
        if s1 != s2 and a.s:
            if not a.q:
                print("Strict mode: Image size mismatch!")
            return 1
        common = min(s1, s2)
        b1, b2 = bytearray(CHUNK), bytearray(CHUNK)
        pos = 0
        while pos < common:
            n = min(CHUNK, common - pos)
            m1, m2 = memoryview(b1)[:n], memoryview(b2)[:n]
            n1.read(pos, m1)
            n2.read(pos, m2)
            if m1 != m2:
                i = next(i for i in range(0, n, 512) if m1[i:i + 512] != m2[i:i + 512])
                if not a.q:
                    print(f"Content mismatch at offset {pos + i}!")
                return 1
            pos += n
        if s1 != s2:
            if not a.q:
                print("Warning: Image size mismatch!")
            big = n1 if s1 > s2 else n2
            end = max(s1, s2)
            while pos < end:
                n = min(CHUNK, end - pos)
                m = memoryview(b1)[:n]
                big.read(pos, m)
                if m != bytes(n):
                    i = next(i for i in range(0, n, 512) if m[i:i + 512] != bytes(min(512, n - i)))
                    if not a.q:
                        print(f"Content mismatch at offset {pos + i}!")
                    return 1
                pos += n
        if not a.q:
            print("Images are identical.")
        return 0
    except BlockError as e:
        print(f"blockbed img: {e}", file=sys.stderr)
        return 2
    finally:
        n1.close()
        n2.close()


# --- resize ---------------------------------------------------------------------------------
def cmd_resize(a: argparse.Namespace) -> int:
    from ..block.qcow2.imagecreate import parse_size
    node, fmt = open_arg(a.filename, a.f, read_only=False)
    try:
        cur = node.length()
        s = a.size
        try:
            if s.startswith("+"):
                new = cur + parse_size(s[1:])
            elif s.startswith("-"):
                new = cur - parse_size(s[1:])
            else:
                new = parse_size(s)
        except BlockError:
            return _fail("Parameter 'size' expects a non-negative number below 2^64\n"
                         + SIZE_SUFFIX_HINT)
        if new <= 0:
            return _fail("New image size must be positive")
        if new < cur and not a.shrink:
            _fail("Use the --shrink option to perform a shrink operation.")
            return _fail("warning: Shrinking an image will delete all data beyond the "
                         "shrunken image's end. Before performing such an operation, make "
                         "sure there is no important data there.")
        node.truncate(new)
        node.flush()
    finally:
        node.close()
    print("Image resized.")
    return 0


SIZE_SUFFIX_HINT = ("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                    "peta-\nand exabytes, respectively.")


# --- wiring -----------------------------------------------------------------------------------
FMT_HELP = "format of the image (probed if omitted)"
OUTPUT_HELP = "human (default) or json, as qemu-img"
SHARE_HELP = "open without locking out other users of the image (qemu-img -U)"


def register(sub: argparse._SubParsersAction) -> None:
    from .imageopts import add_arguments as add_image_arguments
    p = sub.add_parser("img", help="image tool with qemu-img's syntax and its 15 subcommands "
                                   "(create, info, check, map, convert, ..., bench)")
    s = p.add_subparsers(dest="img_command", required=True, metavar="SUBCOMMAND")

    c = s.add_parser("create", help="create an image")
    c.add_argument("-f", metavar="FMT", help="format of the new image: raw (default) or qcow2")
    c.add_argument("-o", action="append", metavar="OPTIONS",
                   help="format options, key=value[,key=value...] (repeatable)")
    c.add_argument("-b", metavar="BACKING_FILE", help="backing file of the new qcow2 image")
    c.add_argument("-F", metavar="BACKING_FMT", help="format of the backing file (required with -b)")
    c.add_argument("-u", action="store_true", help="unsafe: do not open the backing file (SIZE "
                                                   "is then required)")
    c.add_argument("-q", action="store_true", help="quiet: no 'Formatting' line")
    c.add_argument("filename", help="the image to create")
    c.add_argument("size", nargs="?", help="virtual size in bytes (k, M, G, T, P, E suffixes); "
                                           "default: the backing file's")
    add_image_arguments(c, image_opts=False)
    from .img_create import cmd_create
    c.set_defaults(func=_guard(cmd_create))

    i = s.add_parser("info", help="show image information")
    i.add_argument("-f", metavar="FMT", help=FMT_HELP)
    i.add_argument("--output", choices=("human", "json"), default="human", help=OUTPUT_HELP)
    i.add_argument("--backing-chain", action="store_true",
                   help="also show every image of the backing chain")
    i.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    i.add_argument("filename", help="the image")
    add_image_arguments(i, image_opts=True)
    i.set_defaults(func=_guard(cmd_info))

    k = s.add_parser("check", help="check (and repair) an image")
    k.add_argument("-f", metavar="FMT", help=FMT_HELP)
    k.add_argument("--output", choices=("human", "json"), default="human", help=OUTPUT_HELP)
    k.add_argument("-r", choices=("leaks", "all"),
                   help="repair: leaked clusters only, or all errors (opens read-write)")
    k.add_argument("-q", action="store_true", help="quiet: print errors only")
    k.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    k.add_argument("filename", help="the image")
    add_image_arguments(k, image_opts=True)
    k.set_defaults(func=_guard(cmd_check, 1))

    m = s.add_parser("map", help="show the image's allocation map")
    m.add_argument("-f", metavar="FMT", help=FMT_HELP)
    m.add_argument("--output", choices=("human", "json"), default="human", help=OUTPUT_HELP)
    m.add_argument("--start-offset", type=int, metavar="OFFSET",
                   help="first guest byte to map (default 0)")
    m.add_argument("--max-length", type=int, metavar="LEN",
                   help="map at most LEN bytes (default: to the end)")
    m.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    m.add_argument("--picture", metavar="OUT", help="draw the qcow2 file's layout into OUT (.svg/.png)")
    m.add_argument("filename", help="the image")
    add_image_arguments(m, image_opts=True)
    m.set_defaults(func=_guard(cmd_map))

    v = s.add_parser("convert", help="convert an image")
    v.add_argument("-f", metavar="FMT", help="format of the source (probed if omitted)")
    v.add_argument("-O", metavar="OUTPUT_FMT", help="format of the output: raw (default) or qcow2")
    v.add_argument("-o", action="append", metavar="OPTIONS",
                   help="options of the output format, key=value[,key=value...] (repeatable)")
    v.add_argument("-p", action="store_true", help="show progress")
    v.add_argument("-S", metavar="SPARSE_SIZE", help="zero runs this long (default 4k) are "
                                                      "left unwritten; 0 writes every byte")
    v.add_argument("-c", action="store_true", help="compress the output (qcow2)")
    v.add_argument("-m", metavar="NUM_COROUTINES",
                   help="parallel requests, 1-16 (default 8): -c compresses on that many "
                        "threads")
    v.add_argument("-W", action="store_true",
                   help="allow out-of-order writes (accepted: the output is written in "
                        "order, so it is the same with or without)")
    v.add_argument("-n", action="store_true", help="do not create the output: write into an "
                                                   "existing image")
    v.add_argument("-t", metavar="CACHE", help="cache mode of the output (default unsafe, as qemu-img)")
    v.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    v.add_argument("--bitmaps", action="store_true",
                   help="copy the persistent bitmaps (qcow2 to qcow2)")
    v.add_argument("--skip-broken-bitmaps", action="store_true",
                   help="with --bitmaps: skip inconsistent bitmaps instead of failing")
    from .img_ova import add_convert_arguments
    add_convert_arguments(v)
    v.add_argument("src", help="the source image")
    v.add_argument("dst", help="the output image")
    add_image_arguments(v, image_opts=True)
    from .img_convert import cmd_convert
    v.set_defaults(func=_guard(cmd_convert))

    q = s.add_parser("compare", help="compare two images' contents")
    q.add_argument("-f", metavar="FMT", help="format of the first image (probed if omitted)")
    q.add_argument("-F", metavar="FMT", help="format of the second image (probed if omitted)")
    q.add_argument("-s", action="store_true", help="strict: images of different sizes differ")
    q.add_argument("-p", action="store_true", help="show progress (accepted)")
    q.add_argument("-q", action="store_true", help="quiet: the exit status only")
    q.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    q.add_argument("img1", help="the first image")
    q.add_argument("img2", help="the second image")
    add_image_arguments(q, image_opts=True)
    q.set_defaults(func=_guard(cmd_compare, 2))

    from .img_snapshot import SnapshotAction, cmd_snapshot
    n = s.add_parser("snapshot", help="list, create, apply or delete internal snapshots")
    for flag, verb, what in (("-l", "list", "list the snapshots (the default)"),
                             ("-c", "create", "create a snapshot named SNAPSHOT"),
                             ("-a", "apply", "revert the image to SNAPSHOT"),
                             ("-d", "delete", "delete SNAPSHOT")):
        n.add_argument(flag, dest="snapshot_actions", action=SnapshotAction, const=verb,
                       nargs=0 if verb == "list" else None, help=what,
                       **({} if verb == "list" else {"metavar": "SNAPSHOT"}))
    n.add_argument("-f", metavar="FMT", help=FMT_HELP)
    n.add_argument("-q", action="store_true", help="quiet")
    n.add_argument("-U", "--force-share", dest="U", action="store_true", help=SHARE_HELP)
    n.add_argument("filename", help="the image")
    add_image_arguments(n, image_opts=True)
    n.set_defaults(func=_guard(cmd_snapshot))

    r = s.add_parser("resize", help="resize an image")
    r.add_argument("-f", metavar="FMT", help=FMT_HELP)
    r.add_argument("--shrink", action="store_true", help="allow a smaller size (data past it "
                                                        "is lost)")
    r.add_argument("-q", action="store_true", help="quiet")
    r.add_argument("filename", help="the image")
    r.add_argument("size", help="new size, or +SIZE / -SIZE relative to the current one")
    # qemu-img resize IMG -2M: "-2M" is the size, not an option (argparse takes only
    # plain negative numbers for values when the parser has no such option)
    r._negative_number_matcher = re.compile(r"^-\d+(\.\d+)?[bkKmMgGtTpPeE]?$")
    add_image_arguments(r, image_opts=True)
    r.set_defaults(func=_guard(cmd_resize))

    from .img_bitmap import register as register_bitmap
    register_bitmap(s, _guard)
    from .img_extra import register as register_extra
    register_extra(s, _guard)


def _guard(fn, code: int = 1):
    """Turn block-layer errors into one qemu-img-like line and an exit status."""
    def run(a: argparse.Namespace) -> int:
        try:
            from .imageopts import apply
            apply(a)
            return fn(a)
        except BlockError as e:
            print(f"blockbed img: {e}", file=sys.stderr)
            return code
        except BrokenPipeError:
            raise                   # `img info | head`: the reader left; main() exits quietly
        except OSError as e:
            print(f"blockbed img: {e.strerror or e}", file=sys.stderr)
            return code
    return run
