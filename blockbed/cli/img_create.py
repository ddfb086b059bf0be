"""``blockbed img create``: qemu-img create's checks, messages and "Formatting" line."""

from __future__ import annotations

import argparse
import os

from ..block.driver import BlockError
from .img import SIZE_SUFFIX_HINT, _fail, _parse_o, open_img, unknown_format


def _create_error(a: argparse.Namespace, msg: str, hint: str = "") -> int:
    """An image creation error as qemu-img img_create reports one: the new image's name,
    the error, then any hint on the lines below."""
    return _fail(f"{a.filename}: {msg}" + (f"\n{hint}" if hint else ""))


def cmd_create(a: argparse.Namespace) -> int:
    """qemu-img create: the checks and their order follow QEMU 7.2 block.c bdrv_img_create
    -- option values, backing file name, then the backing file opened (unless -u) for its
    format and size.  7.2 no longer probes a backing file's format for a new image (probing
    raw data is how a guest could make the host open any file): without -F it refuses,
    naming the format it detected, and creates nothing."""
    from ..block import registry
    from ..block.qcow2.imagecreate import parse_size
    fmt = a.f or "raw"
    opts = _parse_o(a.o)
    try:
        size = parse_size(a.size) if a.size is not None else None
    except BlockError:                      # qemu-img img_create's cvtnum check
        return _fail("Invalid image size specified. You may use k, M, G, T, P or E suffixes "
                     "for\nblockbed img: kilobytes, megabytes, gigabytes, terabytes, petabytes "
                     "and exabytes.")
    if unknown_format(fmt):
        return _create_error(a, f"Unknown file format '{fmt}'")
    if fmt == "raw":
        # the -o options are parsed first (QemuOpts of file-posix's create options) ...
        for key in opts:
            if key not in _RAW_CREATE_OPTS:
                return _create_error(a, f"Invalid parameter '{key}'")
        # ... then -b and -F are set into them
        for value, what in ((a.b, "Backing file"), (a.F, "Backing file format")):
            if value is not None:
                return _create_error(a, f"{what} not supported for file format '{fmt}'")
    if a.b is not None:
        opts["backing_file"] = a.b
    if a.F is not None:
        opts["backing_fmt"] = a.F
    if fmt == "qcow2":
        bad = _bad_option_value(opts)
        if bad:
            return _create_error(a, bad)
    if "size" in opts:                      # -o size=N, the other way to give the size
        try:
            osize = parse_size(opts.pop("size"))
        except BlockError:
            return _create_error(a, "Parameter 'size' expects a non-negative number below "
                                    "2^64\n" + SIZE_SUFFIX_HINT)
        if size is not None:
            return _create_error(a, "The image size must be specified only once")
        size = osize
    bf, bfmt = opts.get("backing_file"), opts.get("backing_fmt") or None
    if bf is not None:
        if bf == a.filename:
            return _create_error(a, "Error: Trying to create an image with the same filename "
                                    "as the backing file")
        if bf == "":
            return _create_error(a, "Expected backing file name, got empty string")
    if bf and not a.u:
        path = bf if os.path.isabs(bf) else os.path.join(os.path.dirname(a.filename), bf)
        try:
            b, detected = open_img(path, bfmt, force_share=True)
        except BlockError as e:
            return _create_error(a, str(e), "Could not open backing image.")
        try:
            if not bfmt:
                return _create_error(a, "Backing file specified without backing format",
                                     f"Detected format of {detected}.")
            if size is None:
                size = -(-b.length() // 512) * 512      # bdrv_getlength counts sectors
        finally:
            b.close()
    elif bf and not bfmt:
        return _create_error(a, "Backing file specified without backing format")
    if size is None:
        return _create_error(a, "Image creation needs a size parameter")
    if not a.q:
        print(f"Formatting '{a.filename}', " + _format_line(fmt, size, opts))
    if fmt == "qcow2" and bfmt and not bf:
        # qcow2_co_create, after the "Formatting" line; the image is not left behind
        return _create_error(a, "Backing format cannot be used without backing file")
    registry.create_image(a.filename, fmt, size, opts)
    return 0


# QEMU 7.2 raw (file-posix) create options; blockbed implements preallocation
_RAW_CREATE_OPTS = ("size", "preallocation", "nocow", "extent_size_hint")
_SIZE_OPTS = ("cluster_size",)
_NUMBER_OPTS = ("refcount_bits",)
_BOOL_OPTS = ("lazy_refcounts", "extended_l2", "data_file_raw", "encryption")


def _bad_option_value(opts: dict) -> str | None:
    """QemuOpts' type check of the qcow2 create options, which fails before qemu-img
    prints its "Formatting" line, with its messages."""
    from ..block.qcow2.imagecreate import _bool, parse_size
    for k in _SIZE_OPTS:
        if k in opts:
            try:
                parse_size(opts[k])
            except BlockError:
                return f"Parameter '{k}' expects a non-negative number below 2^64\n" \
                    + SIZE_SUFFIX_HINT
    for k in _NUMBER_OPTS:
        if k in opts:
            try:
                int(str(opts[k]), 0)
            except ValueError:
                return f"Parameter '{k}' expects a number"
    for k in _BOOL_OPTS:
        if k in opts:
            try:
                _bool(opts[k], k)
            except BlockError as e:
                return str(e)
    return None


def _format_line(fmt: str, size: int, opts: dict) -> str:
    if fmt != "qcow2":
        extra = "".join(f" {k}={v}" for k, v in opts.items())
        return f"fmt={fmt} size={size}{extra}"
    parts = [f"fmt=qcow2"]
    if any(k == "encryption" or k.startswith("encrypt.") for k in opts):
        from ..block.qcow2.encryption import CREATE_KEYS
        parts += [f"{k}={opts[k]}" for k in CREATE_KEYS if k in opts]
    parts += [f"cluster_size={_normalised(opts.get('cluster_size', 65536), size=True)}",
              f"extended_l2={opts.get('extended_l2', 'off')}"]
    if "preallocation" in opts:
        parts.append(f"preallocation={opts['preallocation']}")
    parts.append(f"compression_type={opts.get('compression_type', 'zlib')}")
    parts.append(f"size={size}")
    if opts.get("backing_file"):
        parts.append(f"backing_file={opts['backing_file']}")
    if opts.get("backing_fmt"):
        parts.append(f"backing_fmt={opts['backing_fmt']}")
    if opts.get("data_file"):
        parts.append(f"data_file={opts['data_file']}")
        parts.append(f"data_file_raw={opts.get('data_file_raw', 'off')}")
    if "compat" in opts:
        parts.append(f"compat={opts['compat']}")
    parts.append(f"lazy_refcounts={opts.get('lazy_refcounts', 'off')}")
    parts.append(f"refcount_bits={_normalised(opts.get('refcount_bits', 16))}")
    return " ".join(parts)


def _normalised(value, size: bool = False) -> str:
    """QemuOpts prints size and number options normalised (16K -> 16384, 0x10 -> 16); a
    value that does not parse is printed as given (creation then reports it)."""
    from ..block.qcow2.imagecreate import parse_size
    try:
        return str(parse_size(value) if size else int(str(value), 0))
    except (BlockError, ValueError):
        return str(value)
