"""qemu-img's ``--object`` and ``--image-opts`` for ``blockbed img``.

``--object secret,id=ID,data=…`` registers a secret (:mod:`blockbed.block.secrets`).
``--image-opts`` turns an image argument into an option string,
``driver=qcow2,file.filename=PATH,encrypt.key-secret=ID``; :func:`resolve` maps
such a string back to (path, format, driver options).  Errors keep qemu-img's
wording: "Could not open 'ARG': reason", where ARG is the argument as given.
"""

from __future__ import annotations

import argparse
import errno

from ..block.driver import BlockError

# driver options an --image-opts string may carry (besides driver / file.*)
_DRIVER_KEYS = ("encrypt.key-secret",)
_IMAGE_ARGS = ("filename", "src", "img1", "img2")

_specs: dict[str, tuple[str, str | None, dict]] = {}


class ImageOpenError(BlockError):
    """An image could not be opened; ``str()`` already names the image."""


def add_arguments(p: argparse.ArgumentParser, image_opts: bool = True) -> None:
    p.add_argument("--object", action="append", default=[], metavar="OBJECTDEF",
                   help="secret,id=ID,data=PASS|file=PATH[,format=raw|base64]")
    if image_opts:
        p.add_argument("--image-opts", action="store_true",
                       help="image arguments are option strings "
                            "(driver=qcow2,file.filename=PATH,encrypt.key-secret=ID)")


def apply(a: argparse.Namespace) -> None:
    """Register the ``--object`` secrets and parse ``--image-opts`` arguments."""
    from ..block import secrets
    secrets.clear()
    for spec in getattr(a, "object", None) or []:
        secrets.add_object(spec)
    if getattr(a, "image_opts", False):
        for name in _IMAGE_ARGS:
            text = getattr(a, name, None)
            if text:
                _specs[text] = parse(text)


def parse(text: str) -> tuple[str, str | None, dict]:
    from ..block.drivespec import DriveSpecError, split_options
    try:
        items = split_options(text)
    except DriveSpecError as e:
        raise BlockError(errno.EINVAL, str(e)) from None
    path, fmt, extra = None, None, {}
    for k, v in items:
        if k == "driver":
            fmt = v
        elif k in ("file.filename", "file"):
            path = v
        elif k == "file.driver":
            if v != "file":
                raise BlockError(errno.EINVAL, f"Parameter 'file.driver' does not accept "
                                               f"value '{v}' (blockbed: file)")
        elif k in _DRIVER_KEYS:
            extra[k] = v
        else:
            raise BlockError(errno.EINVAL, f"Invalid parameter '{k}' in --image-opts "
                                           f"'{text}'; allowed: driver, file.filename, "
                                           f"file.driver, {', '.join(_DRIVER_KEYS)}")
    if not path:
        raise BlockError(errno.EINVAL, f"--image-opts '{text}': file.filename is required")
    return path, fmt, extra


def resolve(arg: str, fmt: str | None) -> tuple[str, str | None, dict]:
    """(path, format, driver options) for an image argument."""
    spec = _specs.get(arg)
    if spec is None:
        return arg, fmt, {}
    path, f, extra = spec
    return path, fmt or f, dict(extra)


def display_name(arg: str) -> str:
    """The image's name as qemu-img prints it (QEMU bdrv_refresh_filename): the file
    name, unless the options carry something the file name cannot say -- qcow2's
    "strong" encryption options -- and then ``json:{…}`` of the options, in the order
    QEMU's dictionary yields them."""
    import json
    spec = _specs.get(arg)
    if spec is None:
        return arg
    path, fmt, extra = spec
    if not extra:
        return path
    opts = {**extra, "driver": fmt or "qcow2", "file": {"driver": "file", "filename": path}}
    return "json:" + json.dumps(opts)


def open_error(arg: str, e: BlockError) -> ImageOpenError:
    return ImageOpenError(e.errno or errno.EINVAL, f"Could not open '{arg}': {e}")
