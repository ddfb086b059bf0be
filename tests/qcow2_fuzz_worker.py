"""Worker for tests/test_qcow2_fuzz.py: exercise one damaged image, in its own process.

Run as ``python qcow2_fuzz_worker.py ro|rw IMAGE`` (``ro``: the whole-image read
and the read-only commands; ``rw``: the writes).  The parent limits the
address space and the time, so a metadata field that makes blockbed allocate
gigabytes or loop forever fails the example instead of killing the test run.

Prints one JSON object: whether the whole-image read succeeded (and its digest),
the status of each read-only command, and which writes were made durable.  Any
exception other than a BlockError escapes as a traceback: that is a crash.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys

from blockbed.block import registry
from blockbed.block.driver import BlockError
from blockbed.cli import main as blockbed_main
from qcow2_corpus import FREES, WRITES, expected_after

READ_ONLY = [["info"], ["info", "--output=json"], ["check"], ["map", "--output=json"],
             ["snapshot", "-l"]]



def _cli(argv: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = blockbed_main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
    if "Traceback" in err.getvalue():
        raise AssertionError(f"{argv}: traceback printed:\n{err.getvalue()}")
    if rc and not err.getvalue().strip():
        raise AssertionError(f"{argv}: status {rc} without a message")
    return rc


def read_only(path: str) -> dict:
    res: dict = {"read": None, "commands": {}}
    try:
        node = registry.open_image(path, "qcow2", read_only=True)
        try:
            buf = bytearray(node.length())
            node.read(0, memoryview(buf))
            res["read"] = hashlib.sha256(buf).hexdigest()
            res["length"] = len(buf)
        finally:
            node.close()
    except BlockError as e:
        res["read_error"] = str(e)
    for cmd in READ_ONLY:
        res["commands"][" ".join(cmd)] = _cli(["img", *cmd, path])
    return res


def read_write(path: str) -> dict:
    res: dict = {"durable": [], "readback_ok": True}
    try:
        node = registry.open_image(path, "qcow2")
    except BlockError:
        return res
    try:
        for i, (off, n) in enumerate(WRITES):
            try:
                node.write(off, bytes([0x70 + i]) * n)
                node.flush()
                res["durable"].append(i)
            except BlockError:
                pass
        res["freed"] = []
        for j, (kind, off, n) in enumerate(FREES):
            try:
                if kind == "discard":
                    node.discard(off, n)
                else:
                    node.write_zeroes(off, n, may_unmap=kind == "zero-unmap")
                node.flush()
                res["freed"].append(j)
            except BlockError:
                pass
    finally:
        with contextlib.suppress(BlockError):
            node.close()
    if res["durable"] or res["freed"]:
        node = registry.open_image(path, "qcow2", read_only=True)
        try:
            for i, want in expected_after(res["durable"], res["freed"]).items():
                off, n = WRITES[i] if isinstance(i, int) else FREES[int(i[1:])][1:]
                buf = bytearray(n)
                node.read(off, memoryview(buf))
                if buf != want:
                    res["readback_ok"] = False
                    res["bad"] = str(i)
        finally:
            node.close()
    return res


if __name__ == "__main__":
    mode, image = sys.argv[1], sys.argv[2]
    print(json.dumps(read_only(image) if mode == "ro" else read_write(image)))
