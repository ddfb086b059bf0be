"""Secret objects, as QEMU's ``--object secret,id=ID,data=…|file=…[,format=raw|base64]``.

Tools register secrets up front (``--object`` on ``img`` and ``run``); drivers
look them up by id when an option such as ``encrypt.key-secret=ID`` names one.
Error texts are QEMU 7.2's (qom/object.c, crypto/secret_common.c) so scripts
that grep for them keep working.
"""

from __future__ import annotations

import base64
import binascii
import errno

from .driver import BlockError

_secrets: dict[str, bytes] = {}

_KEYS = ("id", "data", "file", "format")


def _split(text: str) -> list[tuple[str, str]]:
    """QemuOpts splitting, shared with ``-drive`` (``,,`` is a literal comma)."""
    from .drivespec import DriveSpecError, split_options
    try:
        return split_options(text)
    except DriveSpecError as e:
        raise BlockError(errno.EINVAL, str(e).replace("drive: ", "object: ", 1)) from None


def add_object(spec: str) -> str:
    """Register ``secret,id=…,data=…`` (the text after ``--object``); returns the id."""
    items = _split(spec)
    first = items[0] if items else ("", "")
    if first[0] == "qom-type":
        kind = first[1]
    elif first[1] == "on":          # a bare first word names the type
        kind = first[0]
    else:
        kind = ""
    if kind != "secret":
        raise BlockError(errno.EINVAL, f"Invalid object type '{kind}': blockbed supports "
                                       "'secret'")
    items = items[1:]
    opts: dict[str, str] = {}
    for k, v in items:
        if k not in _KEYS:
            raise BlockError(errno.EINVAL, f"Parameter '{k}' is unexpected")
        opts[k] = v
    if "id" not in opts:
        raise BlockError(errno.EINVAL, "Parameter 'id' is missing")
    sid = opts["id"]
    if sid in _secrets:
        raise BlockError(errno.EEXIST, f"attempt to add duplicate property '{sid}' to object "
                                       "(type 'container')")
    if "data" in opts and "file" in opts:
        raise BlockError(errno.EINVAL, "'file' and 'data' are mutually exclusive")
    if "data" not in opts and "file" not in opts:
        raise BlockError(errno.EINVAL, "Either 'file' or 'data' must be provided")
    fmt = opts.get("format", "raw")
    if fmt not in ("raw", "base64"):
        raise BlockError(errno.EINVAL, f"Parameter 'format' does not accept value '{fmt}'")
    if "file" in opts:
        try:
            with open(opts["file"], "rb") as f:
                value = f.read()
        except OSError as e:
            raise BlockError(e.errno or errno.EIO, f"Unable to read {opts['file']}: "
                                                   f"{e.strerror}") from None
    else:
        value = opts["data"].encode()
    if fmt == "base64":
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BlockError(errno.EINVAL, "Unable to decode base64 data") from None
    _secrets[sid] = value
    return sid


def lookup(sid: str) -> bytes:
    """The secret's bytes; QEMU's error when there is no such secret."""
    try:
        return _secrets[sid]
    except KeyError:
        raise BlockError(errno.ENOENT, f"No secret with id '{sid}'") from None


def clear() -> None:
    """Forget every secret (tests; a tool run starts empty)."""
    _secrets.clear()
