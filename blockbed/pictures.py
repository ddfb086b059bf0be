"""Drawing with matplotlib, an optional extra (``pip install 'blockbed[pictures]'``).

Only the picture modules import this; a missing matplotlib becomes one clear
:class:`PicturesUnavailable` error the CLI prints, never a traceback.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "install the optional extra: pip install 'blockbed[pictures]' (matplotlib)"


class PicturesUnavailable(Exception):
    pass


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PicturesUnavailable(f"drawing needs matplotlib: {INSTALL_HINT}") from None
    return plt


def check_output(path: str) -> str:
    """The format from the file name: svg or png (else ValueError)."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if ext not in ("svg", "png"):
        raise ValueError(f"{path}: the picture must be a .svg or .png file")
    return ext


def save(fig: Any, path: str) -> None:
    fmt = check_output(path)
    if fmt == "svg":
        import matplotlib
        matplotlib.rcParams["svg.fonttype"] = "none"     # labels stay text: searchable, small
    fig.savefig(path, format=fmt, bbox_inches="tight", dpi=110)
