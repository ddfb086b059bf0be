"""``nbd`` protocol driver: an image on an NBD server, as QEMU's block/nbd.c.

Filenames (QEMU's NBD URIs, docs "Network Block Device" in qemu-block-drivers):

* ``nbd+unix:///EXPORT?socket=PATH`` — a Unix socket (EXPORT may be empty);
* ``nbd://HOST[:PORT]/EXPORT`` (also ``nbd+tcp://``) — TCP, port 10809 by default;
* ``nbd:unix:PATH[:exportname=EXPORT]`` and ``nbd:HOST:PORT[:exportname=EXPORT]``,
  QEMU's older pseudo-protocol syntax.

The client side of the NBD spec (doc/proto.md of the NBD project): fixed
newstyle handshake, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT
``base:allocation`` (for :meth:`block_status`), NBD_OPT_GO asking for
NBD_INFO_BLOCK_SIZE; then one request at a time on one connection (the
driver holds a lock).  Requests are split at the server's maximum block size;
FUA, TRIM and WRITE_ZEROES are used when the export advertises them, and
emulated (write + flush, nothing, zero writes) when not.  NBD error values
are Linux errno numbers, so a server's EIO/ENOSPC/EPERM… surfaces as that
errno in :class:`BlockError`.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import urllib.parse
from dataclasses import dataclass

from ..nbd import protocol as P
from .driver import BlockDriver, BlockError, Buffer, Extent, ReadOnlyError, check_request

DEFAULT_PORT = 10809


@dataclass(frozen=True)
class NbdAddress:
    unix: str | None
    host: str | None
    port: int
    export: str

    def display(self) -> str:
        """The name qemu-img prints for the image (QEMU's nbd_refresh_filename)."""
        name = f"/{self.export}" if self.export else ""
        if self.unix is not None:
            return f"nbd+unix://{name}?socket={self.unix}"
        port = f":{self.port}" if self.port != DEFAULT_PORT else ""
        return f"nbd://{self.host}{port}{name}"


def parse_filename(name: str) -> NbdAddress:
    """An NBD filename (see the module docstring) → where to connect."""
    bad = BlockError(errno.EINVAL, f"'{name}': not an NBD URI (nbd+unix:///EXPORT?socket=PATH "
                                   "or nbd://HOST:PORT/EXPORT)")
    if name.startswith(("nbd://", "nbd+tcp://", "nbd+unix://")):
        u = urllib.parse.urlsplit(name)
        export = urllib.parse.unquote(u.path[1:] if u.path.startswith("/") else u.path)
        q = urllib.parse.parse_qs(u.query)
        if u.scheme == "nbd+unix":
            if u.netloc or "socket" not in q:
                raise bad
            return NbdAddress(q["socket"][0], None, DEFAULT_PORT, export)
        if not u.hostname:
            raise bad
        return NbdAddress(None, u.hostname, u.port or DEFAULT_PORT, export)
    if name.startswith("nbd:"):
        rest, export = name[4:], ""
        if ":exportname=" in rest:
            rest, _, export = rest.partition(":exportname=")
        if rest.startswith("unix:"):
            return NbdAddress(rest[5:], None, DEFAULT_PORT, export)
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise bad
        return NbdAddress(None, host, int(port), export)
    raise bad


class NbdDriver(BlockDriver):
    """A connected NBD export as a protocol node."""

    driver_name = "nbd"

    def __init__(self, filename: str, *, read_only: bool = False):
        self.addr = parse_filename(filename)
        self.filename = self.addr.display()
        self._lock = threading.Lock()
        self._cookie = 0
        self._sock = self._connect()
        try:
            self._handshake()
        except BaseException:
            self._sock.close()
            raise
        self.read_only = read_only or bool(self.flags & P.FLAG_READ_ONLY)
        if not read_only and self.flags & P.FLAG_READ_ONLY:
            self._sock.close()
            raise BlockError(errno.EACCES, "Could not open image: the NBD export is read-only")
        self.supports_fua = bool(self.flags & P.FLAG_SEND_FUA)

    # --- connection -----------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        a = self.addr
        try:
            if a.unix is not None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(a.unix)
                except OSError:
                    s.close()
                    raise
                return s
            return socket.create_connection((a.host, a.port))
        except OSError as e:
            where = a.unix if a.unix is not None else f"{a.host}:{a.port}"
            raise BlockError(e.errno or errno.EIO, f"Failed to connect to '{where}': "
                                                   f"{e.strerror or e}") from None

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        try:
            while got < n:
                k = self._sock.recv_into(view[got:], n - got)
                if not k:
                    raise BlockError(errno.EIO, "nbd: the server closed the connection")
                got += k
        except OSError as e:
            if isinstance(e, BlockError):
                raise
            raise BlockError(e.errno or errno.EIO, f"nbd: {e.strerror or e}") from None
        return bytes(buf)

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise BlockError(e.errno or errno.EIO, f"nbd: {e.strerror or e}") from None

    # --- handshake (spec "Newstyle negotiation") --------------------------------------------
    def _option(self, opt: int, payload: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; its replies (type, body) up to the final ACK or error."""
        self._send(P.OPTION.pack(P.IHAVEOPT, opt, len(payload)) + payload)
        out = []
        while True:
            magic, ropt, typ, length = P.OPTION_REPLY.unpack(self._recv(P.OPTION_REPLY.size))
            if magic != P.REPLY_MAGIC or ropt != opt:
                raise BlockError(errno.EIO, "nbd: bad option reply from the server")
            body = self._recv(length) if length else b""
            out.append((typ, body))
            if typ == P.REP_ACK or typ & (1 << 31):
                return out

    def _handshake(self) -> None:
        magic, opts, hflags = P.GREETING.unpack(self._recv(P.GREETING.size))
        if magic != P.NBDMAGIC or opts != P.IHAVEOPT:
            raise BlockError(errno.EINVAL, "nbd: the server does not speak newstyle NBD")
        if not hflags & P.FLAG_FIXED_NEWSTYLE:
            raise BlockError(errno.EINVAL, "nbd: the server does not do fixed newstyle")
        cflags = P.FLAG_C_FIXED_NEWSTYLE | (P.FLAG_C_NO_ZEROES if hflags & P.FLAG_NO_ZEROES
                                            else 0)
        self._send(P.CLIENT_FLAGS.pack(cflags))
        self.structured = self._option(P.OPT_STRUCTURED_REPLY)[-1][0] == P.REP_ACK
        name = self.addr.export.encode()
        self.base_context: int | None = None
        if self.structured:
            q = b"base:allocation"
            replies = self._option(P.OPT_SET_META_CONTEXT, P.U32.pack(len(name)) + name
                                   + P.U32.pack(1) + P.U32.pack(len(q)) + q)
            for typ, body in replies:
                if typ == P.REP_META_CONTEXT and body[4:] == q:
                    self.base_context = P.U32.unpack_from(body)[0]
        replies = self._option(P.OPT_GO, P.U32.pack(len(name)) + name + P.U16.pack(1)
                               + P.U16.pack(P.INFO_BLOCK_SIZE))
        typ, body = replies[-1]
        if typ != P.REP_ACK:
            msg = body.decode("utf-8", "replace") or f"option reply {typ:#x}"
            raise BlockError(errno.ENOENT if typ == P.REP_ERR_UNKNOWN else errno.EINVAL,
                             f"Requested export not available: {msg}")
        self.size, self.flags = 0, 0
        self.min_block, self.max_block = 1, P.MAX_BUFFER
        for typ, body in replies:
            if typ != P.REP_INFO or len(body) < 2:
                continue
            kind = P.U16.unpack_from(body)[0]
            if kind == P.INFO_EXPORT:
                _, self.size, self.flags = P.INFO_EXPORT_BODY.unpack(body)
            elif kind == P.INFO_BLOCK_SIZE:
                _, self.min_block, _pref, mx = P.INFO_BLOCK_SIZE_BODY.unpack(body)
                self.max_block = max(1, min(mx, P.MAX_BUFFER))

    # --- requests (spec "Transmission") -------------------------------------------------------
    def _request(self, cmd: int, offset: int, length: int, flags: int = 0,
                 payload: Buffer | None = None, read_into: memoryview | None = None,
                 extents: list | None = None) -> None:
        """One request and its whole reply; raises BlockError for an error reply."""
        with self._lock:
            self._cookie += 1
            cookie = self._cookie
            hdr = P.REQUEST.pack(P.REQUEST_MAGIC, flags, cmd, cookie, offset, length)
            self._send(hdr + bytes(payload) if payload is not None else hdr)
            self._reply(cookie, cmd, offset, read_into, extents)

    def _reply(self, cookie: int, cmd: int, offset: int, read_into: memoryview | None,
               extents: list | None) -> None:
        err, msg = 0, ""
        while True:
            magic = P.U32.unpack(self._recv(4))[0]
            if magic == P.SIMPLE_REPLY_MAGIC:
                e, c = P.SIMPLE_REPLY.unpack(P.U32.pack(magic) + self._recv(12))[1:]
                if c != cookie:
                    raise BlockError(errno.EIO, "nbd: reply to an unknown request")
                if not e and cmd == P.CMD_READ and read_into is not None:
                    read_into[:] = self._recv(len(read_into))
                err = err or e
                break
            if magic != P.STRUCTURED_REPLY_MAGIC:
                raise BlockError(errno.EIO, f"nbd: bad reply magic 0x{magic:x}")
            rest = self._recv(P.CHUNK.size - 4)
            _, cflags, typ, c, length = P.CHUNK.unpack(P.U32.pack(magic) + rest)
            body = self._recv(length) if length else b""
            if c != cookie:
                raise BlockError(errno.EIO, "nbd: reply to an unknown request")
            if typ == P.REPLY_TYPE_OFFSET_DATA and read_into is not None:
                o = P.U64.unpack_from(body)[0] - offset
                data = body[8:]
                if o < 0 or o + len(data) > len(read_into):
                    raise BlockError(errno.EIO, "nbd: data chunk outside the request")
                read_into[o:o + len(data)] = data
            elif typ == P.REPLY_TYPE_OFFSET_HOLE and read_into is not None:
                ho, hl = P.HOLE_BODY.unpack(body)
                o = ho - offset
                if o < 0 or o + hl > len(read_into):
                    raise BlockError(errno.EIO, "nbd: hole chunk outside the request")
                read_into[o:o + hl] = bytes(hl)
            elif typ == P.REPLY_TYPE_BLOCK_STATUS and extents is not None:
                if P.U32.unpack_from(body)[0] == self.base_context:
                    extents.extend(P.EXTENT.unpack_from(body, 4 + 8 * i)
                                   for i in range((len(body) - 4) // 8))
            elif typ in (P.REPLY_TYPE_ERROR, P.REPLY_TYPE_ERROR_OFFSET):
                e, mlen = P.ERROR_BODY.unpack_from(body)
                err, msg = err or e or errno.EIO, body[6:6 + mlen].decode("utf-8", "replace")
            if cflags & P.REPLY_FLAG_DONE:
                break
        if err:
            raise BlockError(err, f"nbd: {msg or os.strerror(err)}")

    def _pieces(self, offset: int, length: int):
        step = self.max_block
        while length:
            n = min(length, step)
            yield offset, n
            offset += n
            length -= n

    # --- data path ----------------------------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        check_request(self, offset, len(buf))
        buf = buf.cast("B") if buf.format != "B" else buf
        pos = 0
        for off, n in self._pieces(offset, len(buf)):
            self._request(P.CMD_READ, off, n, read_into=buf[pos:pos + n])
            pos += n

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        if self.read_only:
            raise ReadOnlyError("nbd: the export is open read-only")
        view = memoryview(data).cast("B")
        check_request(self, offset, len(view))
        flags = P.CMD_FLAG_FUA if fua and self.supports_fua else 0
        pos = 0
        for off, n in self._pieces(offset, len(view)):
            self._request(P.CMD_WRITE, off, n, flags, payload=view[pos:pos + n])
            pos += n
        if fua and not self.supports_fua:
            self.flush()

    def flush(self) -> None:
        if self.flags & P.FLAG_SEND_FLUSH:
            self._request(P.CMD_FLUSH, 0, 0)

    def discard(self, offset: int, length: int) -> None:
        check_request(self, offset, length)
        if self.read_only:
            raise ReadOnlyError("nbd: the export is open read-only")
        if self.flags & P.FLAG_SEND_TRIM:
            for off, n in self._pieces(offset, length):
                self._request(P.CMD_TRIM, off, n)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        if self.read_only:
            raise ReadOnlyError("nbd: the export is open read-only")
        if not self.flags & P.FLAG_SEND_WRITE_ZEROES:
            super().write_zeroes(offset, length, may_unmap)
            return
        check_request(self, offset, length)
        flags = 0 if may_unmap else P.CMD_FLAG_NO_HOLE
        for off, n in self._pieces(offset, length):
            self._request(P.CMD_WRITE_ZEROES, off, n, flags)

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """base:allocation as extents (all data when the server has no such context)."""
        check_request(self, offset, length)
        if self.base_context is None or not length:
            return super().block_status(offset, length)
        out: list[Extent] = []
        pos, end = offset, offset + length
        while pos < end:
            ext: list[tuple[int, int]] = []
            self._request(P.CMD_BLOCK_STATUS, pos, min(end - pos, 1 << 31), extents=ext)
            if not ext:
                raise BlockError(errno.EIO, "nbd: empty block status reply")
            for n, f in ext:
                n = min(n, end - pos)
                if n <= 0:
                    break
                out.append(Extent(pos, n, data=not f & P.STATE_HOLE,
                                  zero=bool(f & P.STATE_ZERO), allocated=True,
                                  host_offset=pos, host_node=self))
                pos += n
        return out

    # --- size and lifetime ---------------------------------------------------------------------
    def length(self) -> int:
        return self.size

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            with self._lock:
                sock.sendall(P.REQUEST.pack(P.REQUEST_MAGIC, 0, P.CMD_DISC, 0, 0, 0))
        except OSError:
            pass
        sock.close()

    def describe(self) -> str:
        return f"nbd({self.filename})"
