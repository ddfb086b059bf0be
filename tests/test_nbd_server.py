"""``blockbed nbd`` against the real NBD clients and against qemu-nbd 7.2.

Differential: the same image is served by ``qemu-nbd`` and by ``blockbed nbd``
and the answers must be equal — ``nbdinfo --json`` / ``--map`` (libnbd),
and byte-level transcripts of a raw-socket client sending good and bad
requests (tests/nbd_raw.py).  Data paths are checked with nbdcopy,
qemu-img convert and qemu-io writing through the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockbed.nbd import protocol as P
from conftest import REPO, need_tool, run_tool
from nbd_raw import RawClient

MiB = 1 << 20
SIZE = 16 * MiB


@pytest.fixture(scope="module")
def tools() -> None:
    for t in ("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy"):
        need_tool(t)


def _wait_listening(path: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {proc.stderr.read()}")
        if os.path.exists(path):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {path}")


def _argv(kind: str, sock: str, image: Path, args: list[str]) -> list[str]:
    if kind == "qemu":
        return ["qemu-nbd", *args, "-k", sock, str(image)]
    return [sys.executable, "-m", "blockbed", "nbd", *args, "-k", sock, str(image)]


@contextlib.contextmanager
def serve(kind: str, image: Path, *args: str, persistent: bool = True):
    """Serve ``image`` with qemu-nbd (kind "qemu") or blockbed nbd ("ours")."""
    sock = str(image) + f".{kind}.sock"
    argv = _argv(kind, sock, image, (["-t"] if persistent else []) + list(args))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        # a probe connection counts as a client; it never negotiates, so even a
        # non-persistent server keeps running (qemu-nbd's rule as well)
        _wait_listening(sock, proc, kind)
        yield sock, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if kind == "ours":
            err = proc.stderr.read()
            assert "Traceback" not in err, err
            assert proc.returncode == 0, err


def uri(sock: str, name: str = "") -> str:
    return f"nbd+unix:///{name}?socket={sock}"


def _make_image(tmp: Path, fmt: str, bitmap: bool = False) -> Path:
    """Data, a written-zeroes range, explicit zero bytes, a partial cluster, holes."""
    img = tmp / f"disk.{fmt}"
    run_tool("qemu-img", "create", "-f", fmt, str(img), str(SIZE))
    cmds = ["write -P 0x11 0 64k", "write -z 1M 64k", "write -P 0 2M 64k",
            "write -P 0x22 3M 4k", "write -P 0x33 8M 1M"]
    if bitmap:
        run_tool("qemu-io", "-f", fmt, *sum((["-c", c] for c in cmds), []), str(img))
        run_tool("qemu-img", "bitmap", "--add", str(img), "b0")
        cmds = ["write -P 0x44 4M 64k", "write -P 0x55 12M 4k"]
    run_tool("qemu-io", "-f", fmt, *sum((["-c", c] for c in cmds), []), str(img))
    return img


def _twin(tmp: Path, fmt: str, bitmap: bool = False) -> tuple[Path, Path]:
    """Two identical images made the same way (a copy could change the holes)."""
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    return _make_image(tmp / "a", fmt, bitmap), _make_image(tmp / "b", fmt, bitmap)


def _nbdinfo(*args: str) -> str:
    return run_tool("nbdinfo", *args).stdout


def _json_info(sock: str) -> dict:
    info = json.loads(_nbdinfo("--json", uri(sock)))
    for e in info["exports"]:
        e.pop("uri")                      # names the socket
    return info


# --- nbdinfo, differential ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("opts", [[], ["-r"], ["-e", "3"], ["-r", "-e", "2", "-x", "disk"],
                                  ["--cache=none", "-D", "a disk"]])
def test_nbdinfo_json_matches_qemu(tools, tmp_path, fmt, opts):
    img = _make_image(tmp_path, fmt)
    out = {}
    name = opts[opts.index("-x") + 1] if "-x" in opts else ""
    for kind in ("qemu", "ours"):
        with serve(kind, img, "-f", fmt, *opts) as (sock, _):
            info = json.loads(_nbdinfo("--json", uri(sock, name)))
            for e in info["exports"]:
                e.pop("uri")
            listing = json.loads(_nbdinfo("--list", "--json", uri(sock)))
            for e in listing["exports"]:
                e.pop("uri")
            out[kind] = (info, listing)
    assert out["ours"] == out["qemu"]
    assert out["ours"][0]["exports"][0]["is_read_only"] == ("-r" in opts)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_nbdinfo_map_matches_qemu(tools, tmp_path, fmt):
    img = _make_image(tmp_path, fmt)
    out = {}
    for kind in ("qemu", "ours"):
        with serve(kind, img, "-f", fmt, "-r") as (sock, _):
            out[kind] = [_nbdinfo("--map", uri(sock)), _nbdinfo("--map", "--totals", uri(sock)),
                         _nbdinfo("--map", "--json", uri(sock))]
    assert out["ours"] == out["qemu"]
    kinds = {line.split()[-1] for line in out["ours"][0].splitlines()}
    assert {"data", "hole,zero"} <= kinds, out["ours"][0]


def test_backing_chain_map_matches_qemu(tools, tmp_path):
    base = _make_image(tmp_path, "qcow2")
    top = tmp_path / "top.qcow2"
    run_tool("qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    run_tool("qemu-io", "-f", "qcow2", "-c", "write -P 0x77 32k 64k", "-c", "write -z 8M 64k",
             str(top))
    out = {}
    for kind in ("qemu", "ours"):
        with serve(kind, top, "-f", "qcow2", "-r", "-A") as (sock, _):
            out[kind] = (_nbdinfo("--map", uri(sock)), _json_info(sock),
                         _nbdinfo("--map=qemu:allocation-depth", uri(sock)))
            run_tool("nbdcopy", uri(sock), str(tmp_path / f"{kind}.raw"))
    assert out["ours"] == out["qemu"]
    depths = {line.split(None, 3)[-1] for line in out["ours"][2].splitlines()}
    assert {"local", "backing depth 2", "absent"} <= depths, out["ours"][2]
    assert (tmp_path / "ours.raw").read_bytes() == (tmp_path / "qemu.raw").read_bytes()


def test_dirty_bitmap_matches_qemu(tools, tmp_path):
    img, copy = _twin(tmp_path, "qcow2", bitmap=True)
    out = {}
    for kind, path in (("qemu", img), ("ours", copy)):
        with serve(kind, path, "-f", "qcow2", "-B", "b0") as (sock, _):
            before = _nbdinfo("--map=qemu:dirty-bitmap:b0", uri(sock))
            # a write through the export dirties the (enabled) bitmap
            run_tool("qemu-io", "-f", "raw", "-c", "write -P 0x66 6M 128k", uri(sock))
            after = _nbdinfo("--map=qemu:dirty-bitmap:b0", uri(sock))
            ctx = _json_info(sock)["exports"][0]["contexts"]
            out[kind] = (before, after, ctx)
    assert out["ours"] == out["qemu"]
    assert "dirty" in out["ours"][0] and out["ours"][0] != out["ours"][1]
    assert out["ours"][2] == ["base:allocation", "qemu:dirty-bitmap:b0"]
    # the bitmap was stored on close with the new dirty range, as qemu-nbd stores it
    infos = [json.loads(run_tool("qemu-img", "info", "--output=json", str(p)).stdout)
             for p in (img, copy)]
    assert [i["format-specific"]["data"]["bitmaps"] for i in infos][0] == \
        infos[1]["format-specific"]["data"]["bitmaps"]
    run_tool("qemu-img", "check", str(copy))


@pytest.mark.parametrize("args,message", [
    (["-f", "raw", "NOFILE"], "Failed to blk_new_open 'NOFILE': Could not open 'NOFILE': "
                              "No such file or directory"),
    (["-f", "raw", "-k", "/nonexistent/dir/s", "IMG"],
     "Failed to bind socket to /nonexistent/dir/s: No such file or directory"),
])
def test_start_errors_match_qemu(tools, tmp_path, args, message):
    img = _make_image(tmp_path, "raw")
    args = [str(tmp_path / "absent") if a == "NOFILE" else str(img) if a == "IMG" else a
            for a in args]
    message = message.replace("NOFILE", str(tmp_path / "absent"))
    q = run_tool("qemu-nbd", *args, check=False)
    o = run_tool(sys.executable, "-m", "blockbed", "nbd", *args, check=False,
                 env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert q.stderr.strip() == f"qemu-nbd: {message}"
    assert o.stderr.strip() == f"blockbed nbd: {message}"
    assert o.returncode == q.returncode == 1


def test_missing_bitmap_is_refused(tools, tmp_path):
    img = _make_image(tmp_path, "qcow2")
    r = run_tool(sys.executable, "-m", "blockbed", "nbd", "-f", "qcow2", "-B", "nope",
                 "-k", str(tmp_path / "s"), str(img), check=False,
                 env=dict(os.environ, PYTHONPATH=str(REPO)))
    q = run_tool("qemu-nbd", "-f", "qcow2", "-B", "nope", "-k", str(tmp_path / "s"), str(img),
                 check=False)
    assert r.returncode == q.returncode == 1
    assert r.stderr.strip() == "blockbed nbd: Bitmap 'nope' is not found"
    assert q.stderr.strip() == "qemu-nbd: Bitmap 'nope' is not found"


# --- data paths with the real clients -------------------------------------------------------
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_nbdcopy_and_convert_equal_image(tools, tmp_path, fmt):
    img = _make_image(tmp_path, fmt)
    ref = tmp_path / "ref.raw"
    run_tool("qemu-img", "convert", "-f", fmt, "-O", "raw", str(img), str(ref))
    with serve("ours", img, "-f", fmt, "-r", "-e", "2") as (sock, _):
        run_tool("nbdcopy", uri(sock), str(tmp_path / "copy.raw"))
        run_tool("qemu-img", "convert", "-f", "raw", uri(sock), str(tmp_path / "conv.raw"))
    assert (tmp_path / "copy.raw").read_bytes() == ref.read_bytes()
    assert (tmp_path / "conv.raw").read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_qemu_io_writes_land_in_image(tools, tmp_path, fmt):
    img = _make_image(tmp_path, fmt)
    with serve("ours", img, "-f", fmt) as (sock, _):
        run_tool("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k",
                 "-c", "write -f -P 0xa5 5M 4k", "-c", "write -z 8M 64k", "-c", "flush",
                 uri(sock))
        r = run_tool("qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 64k",
                     "-c", "read -P 0 8M 64k", uri(sock))
        assert "Pattern verification failed" not in r.stdout
    r = run_tool("qemu-io", "-f", fmt, "-c", "read -P 0x5a 0 64k", "-c", "read -P 0xa5 5M 4k",
                 "-c", "read -P 0 8M 64k", "-c", f"read -P 0x33 {9 * MiB - 65536} 64k", str(img))
    assert "Pattern verification failed" not in r.stdout, r.stdout
    if fmt == "qcow2":
        run_tool("qemu-img", "check", str(img))


def test_read_only_refuses_writes(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    before = img.read_bytes()
    with serve("ours", img, "-f", "raw", "-r") as (sock, _):
        r = run_tool("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", uri(sock),
                     check=False)
        assert "write failed" in (r.stdout + r.stderr) or r.returncode != 0
        c = RawClient(sock)
        c.go()
        for cmd in (P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES):
            c.request(cmd, 0, 512, payload=bytes(512) if cmd == P.CMD_WRITE else b"")
            ch = c.chunks()
            assert ch[0]["error"] == P.EINVAL and ch[0]["message"] == "Export is read-only"
        c.request(P.CMD_DISC)
        c.close()
    assert img.read_bytes() == before


# --- operations through a raw client, differential ---------------------------------------------
def _ops_transcript(sock: str) -> list:
    """Write/zero/trim/FUA/flush/cache through the raw client; every reply decoded."""
    out = []
    c = RawClient(sock)
    info = c.go(contexts=[b"base:allocation"])
    out.append(info)
    steps = [(P.CMD_WRITE, 0, 4096, P.CMD_FLAG_FUA, b"\x77" * 4096),
             (P.CMD_WRITE_ZEROES, 64 * 1024, 128 * 1024, 0, b""),
             (P.CMD_WRITE_ZEROES, 8 * MiB, 64 * 1024, P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FUA, b""),
             (P.CMD_WRITE_ZEROES, 9 * MiB, 64 * 1024, P.CMD_FLAG_FAST_ZERO, b""),
             (P.CMD_TRIM, 8 * MiB + 512 * 1024, 256 * 1024, P.CMD_FLAG_FUA, b""),
             (P.CMD_FLUSH, 0, 0, 0, b""),
             (P.CMD_CACHE, 0, MiB, 0, b""),
             (P.CMD_READ, 0, 8192, 0, b""),
             (P.CMD_READ, 0, 8192, P.CMD_FLAG_DF | P.CMD_FLAG_FUA, b""),
             (P.CMD_BLOCK_STATUS, 0, SIZE, 0, b""),
             (P.CMD_BLOCK_STATUS, 8 * MiB, 2 * MiB, P.CMD_FLAG_REQ_ONE, b"")]
    for cmd, off, ln, fl, payload in steps:
        cookie = c.request(cmd, off, ln, fl, payload)
        chunks = c.chunks()
        assert all(ch["cookie"] == cookie for ch in chunks)
        out.append((cmd, chunks))
    c.request(P.CMD_DISC)
    out.append(c.closed_by_peer(5))
    c.close()
    return out


@pytest.mark.parametrize("fmt,opts", [("raw", []), ("raw", ["--discard=unmap"]),
                                      ("qcow2", ["--discard=unmap"]),
                                      ("qcow2", ["--cache=writethrough"])])
def test_operations_match_qemu(tools, tmp_path, fmt, opts):
    img, copy = _twin(tmp_path, fmt)
    res = {}
    for kind, path in (("qemu", img), ("ours", copy)):
        with serve(kind, path, "-f", fmt, *opts) as (sock, _):
            res[kind] = (_ops_transcript(sock), _nbdinfo("--map", uri(sock)))
    # chunking of sparse reads is free; compare the data they describe
    assert _flatten_reads(res["ours"]) == _flatten_reads(res["qemu"])
    run_tool("qemu-img", "compare", "-f", fmt, "-F", fmt, str(img), str(copy))


def _flatten_reads(res):
    transcript, mapping = res
    out = []
    for item in transcript:
        if isinstance(item, tuple) and item[0] == P.CMD_READ:
            data = bytearray()
            for ch in item[1]:
                if ch.get("type") == P.REPLY_TYPE_OFFSET_DATA:
                    data += ch["data"]
                elif ch.get("type") == P.REPLY_TYPE_OFFSET_HOLE:
                    data += bytes(ch["length"])
            out.append((P.CMD_READ, bytes(data), [ch.get("error") for ch in item[1]]))
        else:
            out.append(item)
    return out, mapping


# --- bad clients, differential --------------------------------------------------------------------
def _probe(sock: str, fn) -> list:
    """Run ``fn(client)`` on a fresh connection; record what happened, never raise."""
    c = RawClient(sock, timeout=5)
    rec: list = []
    try:
        fn(c, rec)
        rec.append(("open-after", not c.closed_by_peer(0.5)))
    except (EOFError, ConnectionError) as e:
        rec.append(("closed", type(e).__name__ if not isinstance(e, EOFError) else "eof"))
    finally:
        c.close()
    return rec


def _request_probe(cmd, off, ln, flags=0, payload=b"", structured=True, contexts=None):
    def fn(c, rec):
        c.go(structured=structured, contexts=contexts)
        c.request(cmd, off, ln, flags, payload)
        rec.append([{k: v for k, v in ch.items() if k != "data"} for ch in c.chunks()])
    return fn


def _opt_probe(*options, flags=P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES):
    def fn(c, rec):
        rec.append(c.greeting(flags))
        for opt, payload in options:
            c.option(opt, payload)
            if opt == P.OPT_EXPORT_NAME:
                rec.append(c.recv(10))
                return
            rec.append(c.replies_until_final())
    return fn


def _garbage(data: bytes):
    def fn(c, rec):
        c.recv(P.GREETING.size)
        c.send(data)
        rec.append(c.closed_by_peer(2))
    return fn


BIG = 32 * MiB
BAD_CLIENTS = {
    "garbage-handshake": _garbage(b"\xde\xad\xbe\xef" * 64),
    "unknown-client-flags": _garbage(P.CLIENT_FLAGS.pack(0x80 | 1)),
    "bad-option-magic": _garbage(P.CLIENT_FLAGS.pack(3) + P.OPTION.pack(0x1234, P.OPT_GO, 0)),
    "option-too-long": _garbage(P.CLIENT_FLAGS.pack(3) + P.OPTION.pack(P.IHAVEOPT, 99, BIG + 1)),
    "unknown-option-then-go": _opt_probe((99, b"xyz"), (P.OPT_GO, RawClient.go_payload())),
    "starttls": _opt_probe((P.OPT_STARTTLS, b"")),
    "list": _opt_probe((P.OPT_LIST, b""), (P.OPT_LIST, b"x")),
    "abort": _opt_probe((P.OPT_ABORT, b"")),
    "structured-twice": _opt_probe((P.OPT_STRUCTURED_REPLY, b""), (P.OPT_STRUCTURED_REPLY, b""),
                                   (P.OPT_STRUCTURED_REPLY, b"x")),
    "info-unknown-export": _opt_probe((P.OPT_INFO, RawClient.go_payload(b"nope"))),
    "info-name-blocksize": _opt_probe((P.OPT_INFO, RawClient.go_payload(
        b"", (P.INFO_NAME, P.INFO_BLOCK_SIZE, 77)))),
    "go-truncated": _opt_probe((P.OPT_GO, P.U32.pack(100) + b"ab")),
    "go-trailing": _opt_probe((P.OPT_GO, RawClient.go_payload() + b"zz")),
    "go-nul-name": _opt_probe((P.OPT_GO, P.U32.pack(2) + b"a\0" + P.U16.pack(0))),
    "set-meta-unstructured": _opt_probe((P.OPT_SET_META_CONTEXT,
                                         RawClient.meta_payload(b"", [b"base:allocation"]))),
    "list-meta": _opt_probe(*[(P.OPT_LIST_META_CONTEXT, RawClient.meta_payload(b"", q)) for q in (
        [], [b"base:"], [b"qemu:"], [b"qemu:dirty-bitmap:"], [b"qemu:dirty-bitmap:b0"],
        [b"base:allocation", b"other:thing", b"qemu:nope"], [b"base:allocationx"],
        [b"qemu:allocation-depth"])]),
    "set-meta": _opt_probe((P.OPT_STRUCTURED_REPLY, b""), *[
        (P.OPT_SET_META_CONTEXT, RawClient.meta_payload(n, q)) for n, q in (
            (b"", [b"base:"]), (b"", [b"qemu:dirty-bitmap:b0", b"base:allocation"]),
            (b"nope", [b"base:allocation"]))]),
    "export-name-unknown": _opt_probe((P.OPT_EXPORT_NAME, b"nope")),
    "export-name": _opt_probe((P.OPT_EXPORT_NAME, b"")),
    "export-name-oldstyle-zeroes": _opt_probe((P.OPT_EXPORT_NAME, b""),
                                              flags=P.FLAG_C_FIXED_NEWSTYLE),
    "not-fixed-newstyle-list": _opt_probe((P.OPT_LIST, b""), flags=0),
    "read-past-end": _request_probe(P.CMD_READ, SIZE, 512),
    "read-too-big": _request_probe(P.CMD_READ, 0, BIG + 1),
    "read-too-big-simple": _request_probe(P.CMD_READ, 0, BIG + 1, structured=False),
    "read-bad-flags": _request_probe(P.CMD_READ, 0, 512, 1 << 7),
    "read-df-simple": _request_probe(P.CMD_READ, 0, 512, P.CMD_FLAG_DF, structured=False),
    "read-zero-length": _request_probe(P.CMD_READ, 0, 0),
    "write-past-end": _request_probe(P.CMD_WRITE, SIZE - 256, 512, payload=bytes(512)),
    "write-too-big": _request_probe(P.CMD_WRITE, 0, BIG + 1),
    "write-zeroes-past-end": _request_probe(P.CMD_WRITE_ZEROES, SIZE, 1),
    "trim-bad-flags": _request_probe(P.CMD_TRIM, 0, 512, P.CMD_FLAG_NO_HOLE),
    "cache-too-big": _request_probe(P.CMD_CACHE, 0, 2 * BIG),
    "unknown-command": _request_probe(42, 0, 0),
    "status-not-negotiated": _request_probe(P.CMD_BLOCK_STATUS, 0, 512),
    "status-zero-length": _request_probe(P.CMD_BLOCK_STATUS, 0, 0, contexts=[b"base:allocation"]),
    "status-past-end": _request_probe(P.CMD_BLOCK_STATUS, SIZE - 512, 4096,
                                      contexts=[b"base:allocation"]),
    "status-both": _request_probe(P.CMD_BLOCK_STATUS, 0, SIZE,
                                  contexts=[b"qemu:dirty-bitmap:b0", b"base:allocation"]),
    "status-all-three": _request_probe(P.CMD_BLOCK_STATUS, 0, SIZE, P.CMD_FLAG_REQ_ONE,
                                       contexts=[b"qemu:", b"qemu:allocation-depth",
                                                 b"qemu:dirty-bitmap:b0", b"base:allocation"]),
    "bad-request-magic": lambda c, rec: (
        c.go(), c.send(P.REQUEST.pack(0x12345678, 0, P.CMD_READ, 77, 0, 512)),
        rec.append(c.chunks()), rec.append(c.closed_by_peer(2))),
    "bad-request-magic-simple": lambda c, rec: (
        c.go(structured=False), c.send(P.REQUEST.pack(0x12345678, 0, P.CMD_READ, 77, 0, 512)),
        rec.append(c.chunks()), rec.append(c.closed_by_peer(2))),
}


def test_bad_clients_match_qemu(tools, tmp_path):
    img = _make_image(tmp_path, "qcow2", bitmap=True)
    results = {}
    for kind in ("qemu", "ours"):
        with serve(kind, img, "-f", "qcow2", "-B", "b0", "-r", "-A") as (sock, proc):
            results[kind] = {name: _probe(sock, fn) for name, fn in BAD_CLIENTS.items()}
            # after all of it the server still serves
            assert _json_info(sock)["exports"][0]["export-size"] == SIZE
            assert proc.poll() is None
    for name in BAD_CLIENTS:
        assert results["ours"][name] == results["qemu"][name], name


# --- lifetime, transports, sharing -----------------------------------------------------------------
def test_exits_after_last_client_unless_persistent(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    with serve("ours", img, "-f", "raw", persistent=False) as (sock, proc):
        _probe(sock, _garbage(b"junk"))            # a failed handshake does not end it
        assert proc.poll() is None
        _nbdinfo("--size", uri(sock))
        assert proc.wait(timeout=15) == 0
        assert not os.path.exists(sock)             # the socket is removed on exit


def test_shared_clients_at_once(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    with serve("ours", img, "-f", "raw", "-e", "2") as (sock, _):
        a, b = RawClient(sock), RawClient(sock)
        a.go(), b.go()
        a.request(P.CMD_WRITE, 0, 512, 0, b"\x01" * 512)
        assert a.chunks()[0]["error"] == 0
        b.request(P.CMD_READ, 0, 512)
        assert b.chunks()[0]["data"] == b"\x01" * 512
        for c in (a, b):
            c.request(P.CMD_DISC)
            c.close()


def test_tcp_listener(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "blockbed", "nbd", "-f", "raw", "-r",
                             "-p", str(port), str(img)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert _nbdinfo("--size", f"nbd://127.0.0.1:{port}").strip() == str(SIZE)
        assert proc.wait(timeout=15) == 0          # not persistent: gone after nbdinfo
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fork_and_pid_file(tools, tmp_path):
    img = _make_image(tmp_path, "raw")
    sock, pidf = str(tmp_path / "f.sock"), tmp_path / "pid"
    run_tool(sys.executable, "-m", "blockbed", "nbd", "--fork", "--pid-file", str(pidf),
             "-f", "raw", "-k", sock, str(img), env=dict(os.environ, PYTHONPATH=str(REPO)))
    pid = int(pidf.read_text())
    try:
        assert _nbdinfo("--size", uri(sock)).strip() == str(SIZE)   # listening on return
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.mark.parametrize("kind", ["qemu", "ours"])
def test_shared_one_makes_the_second_client_wait(tools, tmp_path, kind):
    """-e 1 (the default): a second connection gets no greeting until the first leaves."""
    img = _make_image(tmp_path, "raw")
    with serve(kind, img, "-f", "raw") as (sock, _):
        a = RawClient(sock)
        a.go()
        b = RawClient(sock, timeout=1)
        with pytest.raises(TimeoutError):
            b.recv(1)
        a.request(P.CMD_DISC)
        a.close()
        b.s.settimeout(10)
        assert b.greeting() & P.FLAG_FIXED_NEWSTYLE
        b.close()


def test_sigterm_with_a_client_connected_closes_cleanly(tools, tmp_path):
    img = _make_image(tmp_path, "qcow2", bitmap=True)
    with serve("ours", img, "-f", "qcow2", "-B", "b0") as (sock, proc):
        c = RawClient(sock)
        c.go()
        c.request(P.CMD_WRITE, 14 * MiB, 4096, 0, b"\x99" * 4096)
        assert c.chunks()[0]["error"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert c.closed_by_peer(5)
        c.close()
    run_tool("qemu-img", "check", str(img))
    info = json.loads(run_tool("qemu-img", "info", "--output=json", str(img)).stdout)
    assert info["format-specific"]["data"]["bitmaps"][0]["flags"] == ["auto"]   # stored, not in-use
    r = run_tool("qemu-io", "-f", "qcow2", "-c", f"read -P 0x99 {14 * MiB} 4k", str(img))
    assert "Pattern verification failed" not in r.stdout


def test_image_opts_matches_qemu(tools, tmp_path):
    img = _make_image(tmp_path, "qcow2")
    spec = f"driver=qcow2,file.filename={img}"
    out = {}
    for kind in ("qemu", "ours"):
        sock = str(tmp_path / f"{kind}.sock")
        argv = (["qemu-nbd"] if kind == "qemu" else [sys.executable, "-m", "blockbed", "nbd"])
        proc = subprocess.Popen(argv + ["-t", "-r", "--image-opts", "-k", sock, spec],
                                env=dict(os.environ, PYTHONPATH=str(REPO)),
                                stderr=subprocess.PIPE, text=True)
        try:
            _wait_listening(sock, proc, kind)
            out[kind] = (_nbdinfo("--map", uri(sock)), _json_info(sock))
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert out["ours"] == out["qemu"]
