"""A raw-socket NBD client for tests: speaks the protocol byte by byte, so a test
can send what no well-behaved client (libnbd, qemu) would — and compare how
our server and qemu-nbd answer the same bytes.  Layouts come from
:mod:`blockbed.nbd.protocol`; the client logic here is deliberately separate
from the server's code.
"""

from __future__ import annotations

import socket
import struct

from blockbed.nbd import protocol as P


class RawClient:
    """One connection; methods return decoded replies as plain tuples/dicts."""

    def __init__(self, sock_path: str, timeout: float = 10.0):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(sock_path)
        self.cookie = 0

    def close(self) -> None:
        self.s.close()

    # --- bytes -------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            b = self.s.recv(n - len(buf))
            if not b:
                raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
            buf += b
        return bytes(buf)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def closed_by_peer(self, wait: float = 0.5) -> bool:
        """True if the server closes the connection within ``wait`` seconds (reads
        EOF); False if it is still open then (and has sent nothing more)."""
        old = self.s.gettimeout()
        self.s.settimeout(wait)
        try:
            return self.s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.s.settimeout(old)

    # --- handshake -----------------------------------------------------------------
    def greeting(self, client_flags: int = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES) -> int:
        magic, opts, flags = P.GREETING.unpack(self.recv(P.GREETING.size))
        assert (magic, opts) == (P.NBDMAGIC, P.IHAVEOPT)
        self.send(P.CLIENT_FLAGS.pack(client_flags))
        return flags

    def option(self, opt: int, payload: bytes = b"") -> None:
        self.send(P.OPTION.pack(P.IHAVEOPT, opt, len(payload)) + payload)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, opt, typ, length = P.OPTION_REPLY.unpack(self.recv(P.OPTION_REPLY.size))
        assert magic == P.REPLY_MAGIC, hex(magic)
        return opt, typ, self.recv(length)

    def replies_until_final(self) -> list[tuple[int, int, bytes]]:
        """Option replies up to and including the first ACK or error."""
        out = []
        while True:
            r = self.option_reply()
            out.append(r)
            if r[1] == P.REP_ACK or r[1] & (1 << 31):
                return out

    @staticmethod
    def go_payload(name: bytes = b"", infos: tuple[int, ...] = ()) -> bytes:
        return (P.U32.pack(len(name)) + name + P.U16.pack(len(infos))
                + b"".join(P.U16.pack(i) for i in infos))

    @staticmethod
    def meta_payload(name: bytes, queries: list[bytes]) -> bytes:
        return (P.U32.pack(len(name)) + name + P.U32.pack(len(queries))
                + b"".join(P.U32.pack(len(q)) + q for q in queries))

    def go(self, structured: bool = True, contexts: list[bytes] | None = None,
           name: bytes = b"") -> dict:
        """Greeting, optional structured replies and meta contexts, then GO;
        returns the export's size and flags."""
        self.greeting()
        if structured:
            self.option(P.OPT_STRUCTURED_REPLY)
            assert self.option_reply()[1] == P.REP_ACK
        if contexts:
            self.option(P.OPT_SET_META_CONTEXT, self.meta_payload(name, contexts))
            self.replies_until_final()
        self.option(P.OPT_GO, self.go_payload(name, (P.INFO_BLOCK_SIZE,)))
        info: dict = {}
        for _, typ, body in self.replies_until_final():
            if typ == P.REP_INFO:
                kind = P.U16.unpack_from(body)[0]
                if kind == P.INFO_EXPORT:
                    _, info["size"], info["flags"] = P.INFO_EXPORT_BODY.unpack(body)
                elif kind == P.INFO_BLOCK_SIZE:
                    info["block_size"] = P.INFO_BLOCK_SIZE_BODY.unpack(body)[1:]
            elif typ != P.REP_ACK:
                raise AssertionError(f"GO failed: {typ:#x} {body!r}")
        return info

    # --- transmission ----------------------------------------------------------------
    def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
                payload: bytes = b"") -> int:
        self.cookie += 1
        self.send(P.REQUEST.pack(P.REQUEST_MAGIC, flags, cmd, self.cookie, offset, length)
                  + payload)
        return self.cookie

    def simple_reply(self, data_len: int = 0) -> tuple[int, int, bytes]:
        """(error, cookie, data) of a simple reply."""
        magic, err, cookie = P.SIMPLE_REPLY.unpack(self.recv(P.SIMPLE_REPLY.size))
        assert magic == P.SIMPLE_REPLY_MAGIC, hex(magic)
        return err, cookie, self.recv(data_len) if not err else b""

    def chunks(self) -> list[dict]:
        """Structured reply chunks up to the one flagged DONE (or a simple reply)."""
        out = []
        while True:
            magic = P.U32.unpack(self.recv(4))[0]
            if magic == P.SIMPLE_REPLY_MAGIC:
                err, cookie = struct.unpack(">IQ", self.recv(12))
                out.append({"simple": True, "error": err, "cookie": cookie})
                return out
            assert magic == P.STRUCTURED_REPLY_MAGIC, hex(magic)
            flags, typ, cookie, length = struct.unpack(">HHQI", self.recv(P.CHUNK.size - 4))
            body = self.recv(length)
            c = {"flags": flags, "type": typ, "cookie": cookie}
            if typ == P.REPLY_TYPE_OFFSET_DATA:
                c["offset"], c["data"] = P.U64.unpack_from(body)[0], body[8:]
            elif typ == P.REPLY_TYPE_OFFSET_HOLE:
                c["offset"], c["length"] = P.HOLE_BODY.unpack(body)
            elif typ == P.REPLY_TYPE_BLOCK_STATUS:
                c["context"] = P.U32.unpack_from(body)[0]
                c["extents"] = [P.EXTENT.unpack_from(body, 4 + 8 * i)
                                for i in range((len(body) - 4) // 8)]
            elif typ in (P.REPLY_TYPE_ERROR, P.REPLY_TYPE_ERROR_OFFSET):
                c["error"], mlen = P.ERROR_BODY.unpack_from(body)
                c["message"] = body[6:6 + mlen].decode()
            out.append(c)
            if flags & P.REPLY_FLAG_DONE:
                return out

    def error_of(self, chunks: list[dict]) -> int:
        """The error value of a reply (0 if none)."""
        return next((c["error"] for c in chunks if c.get("error")), 0)
