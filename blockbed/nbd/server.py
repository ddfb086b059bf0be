"""The NBD server: the listener and the transmission phase of each connection.

Spec (doc/proto.md of the NBD project), "Transmission": requests are
answered in order on each connection (one thread per connection; the block
node is shared under the export's lock).  Request checks and error values
follow qemu-nbd 7.2 (nbd/server.c nbd_co_receive_request / nbd_trip), which
a differential test holds us to:

* READ / WRITE / CACHE longer than 32 MiB: EINVAL; for a WRITE the payload
  was not read, so the connection ends after the reply;
* write, trim or write-zeroes on a read-only export, a range past the end,
  or a flag the command does not take: the payload (if any) is read, then
  EINVAL with qemu's message — qemu-nbd 7.2 reports every check failing
  before the request runs as EINVAL (not EPERM / ENOSPC);
* an unknown command: EINVAL, the connection stays; a bad request magic gets
  EINVAL, then the connection ends; NBD_CMD_DISC ends it;
* errors of the block layer itself map errno → NBD error (EROFS/EPERM →
  EPERM, ENOSPC → ENOSPC, …, :func:`protocol.nbd_errno`).

Structured replies (negotiated with NBD_OPT_STRUCTURED_REPLY): a READ
without DF is sent as one chunk per block-status run, OFFSET_HOLE for runs
that read as zeros and OFFSET_DATA otherwise; BLOCK_STATUS answers one chunk
per negotiated context; errors are ERROR chunks with qemu's message.

Lifetime as qemu-nbd: at most ``shared`` connections at once (others wait
in the listen backlog); without ``persistent`` the server stops when the
last client that completed negotiation disconnects.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import threading
from typing import Callable

from . import protocol as P
from .export import MAX_STATUS_EXTENTS, Export
from .handshake import META_ID_ALLOCATION_DEPTH, META_ID_BASE_ALLOCATION, META_ID_DIRTY_BITMAP, \
    Disconnect, Session, negotiate


class SocketChannel:
    """Exact reads and whole writes on a connected socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise EOFError("Unexpected end-of-file before all bytes were read"
                               if got else "end of file")
            got += k
        return bytes(buf)

    def recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            k = self.sock.recv_into(view[got:], len(view) - got)
            if not k:
                raise EOFError("Unexpected end-of-file before all bytes were read")
            got += k

    def send(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)


class _RequestError(Exception):
    """A request refused before it ran: reply EINVAL with this message."""


class Connection:
    """The transmission phase of one negotiated client."""

    def __init__(self, ch: SocketChannel, session: Session, log: Callable[[str], None]):
        self.ch = ch
        self.exp: Export = session.export  # type: ignore[assignment]
        self.structured = session.structured
        self.contexts = session.contexts
        self.log = log

    # --- replies ------------------------------------------------------------------------------
    def simple(self, cookie: int, err: int = 0, data: bytes | memoryview = b"") -> None:
        self.ch.send(P.SIMPLE_REPLY.pack(P.SIMPLE_REPLY_MAGIC, err, cookie) + bytes(data))

    def chunk(self, cookie: int, typ: int, body: bytes, done: bool) -> None:
        self.ch.send(P.CHUNK.pack(P.STRUCTURED_REPLY_MAGIC, P.REPLY_FLAG_DONE if done else 0,
                                  typ, cookie, len(body)) + body)

    def error(self, cookie: int, err: int, msg: str) -> None:
        """An error reply: an ERROR chunk when structured, else a simple reply."""
        if self.structured:
            m = msg.encode()
            self.chunk(cookie, P.REPLY_TYPE_ERROR, P.ERROR_BODY.pack(err, len(m)) + m, True)
        else:
            self.simple(cookie, err)

    def generic(self, cookie: int, ret: int, msg: str) -> None:
        """qemu's nbd_send_generic_reply: success is a simple reply even when structured."""
        if ret < 0:
            self.error(cookie, P.nbd_errno(-ret), msg)
        else:
            self.simple(cookie)

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            hdr = self.ch.recv_exact(P.REQUEST.size)
            magic, flags, cmd, cookie, offset, length = P.REQUEST.unpack(hdr)
            if magic != P.REQUEST_MAGIC:
                # qemu answers it (EINVAL, with the cookie as sent), then hangs up
                self.error(cookie, P.EINVAL, f"invalid magic (got 0x{magic:x})")
                raise Disconnect("Request handling failed in intermediate state")
            if cmd == P.CMD_DISC:
                return
            payload = None
            try:
                payload = self.receive(cmd, flags, offset, length)
            except _RequestError as e:
                self.error(cookie, P.EINVAL, str(e))
                if cmd == P.CMD_WRITE and length > P.MAX_BUFFER:
                    raise Disconnect("Request handling failed in intermediate state")
                continue
            self.handle(cmd, flags, cookie, offset, length, payload)

    def receive(self, cmd: int, flags: int, offset: int, length: int) -> bytearray | None:
        """Read a WRITE's payload and make qemu's checks, in qemu's order."""
        valid = P.CMD_FLAG_FUA
        check_length = check_rofs = False
        if cmd == P.CMD_READ:
            valid |= P.CMD_FLAG_DF if self.structured else 0
            check_length = True
        elif cmd == P.CMD_WRITE:
            check_length = check_rofs = True
        elif cmd == P.CMD_CACHE:
            check_length = True
        elif cmd == P.CMD_TRIM:
            check_rofs = True
        elif cmd == P.CMD_WRITE_ZEROES:
            valid |= P.CMD_FLAG_NO_HOLE | P.CMD_FLAG_FAST_ZERO
            check_rofs = True
        elif cmd == P.CMD_BLOCK_STATUS:
            valid |= P.CMD_FLAG_REQ_ONE
        if check_length and length > P.MAX_BUFFER:
            raise _RequestError(f"len ({length} ) is larger than max len ({P.MAX_BUFFER})")
        payload = None
        if cmd == P.CMD_WRITE:
            payload = bytearray(length)
            self.ch.recv_into(memoryview(payload))
        if check_rofs and self.exp.read_only:
            raise _RequestError("Export is read-only")
        size = self.exp.size
        if offset > size or length > size - offset:
            raise _RequestError(f"operation past EOF; From: {offset}, Len: {length}, "
                                f"Size: {size}")
        if flags & ~valid:
            raise _RequestError(f"unsupported flags for command "
                                f"{P.CMD_NAMES.get(cmd, '<unknown>')} (got 0x{flags:x})")
        return payload

    def handle(self, cmd: int, flags: int, cookie: int, offset: int, length: int,
               payload: bytearray | None) -> None:
        exp, blk = self.exp, self.exp.blk
        fua = bool(flags & P.CMD_FLAG_FUA)
        if cmd == P.CMD_READ:
            self.read(cookie, flags, offset, length)
        elif cmd == P.CMD_WRITE:
            with exp.lock:
                ret = blk.write(offset, memoryview(payload), fua=fua) if length else 0
            self.generic(cookie, ret, "writing to file failed")
        elif cmd == P.CMD_WRITE_ZEROES:
            with exp.lock:
                ret = blk.write_zeroes(offset, length,
                                       may_unmap=not flags & P.CMD_FLAG_NO_HOLE)
                if ret == 0 and fua:
                    ret = blk.flush()
            self.generic(cookie, ret, "writing to file failed")
        elif cmd == P.CMD_FLUSH:
            with exp.lock:
                ret = blk.flush()
            self.generic(cookie, ret, "flush failed")
        elif cmd == P.CMD_TRIM:
            with exp.lock:
                ret = blk.discard(offset, length)
                if ret == 0 and fua:
                    ret = blk.flush()
            self.generic(cookie, ret, "discard failed")
        elif cmd == P.CMD_CACHE:
            # a prefetch hint: nothing to warm in this server beyond the host page cache
            self.simple(cookie)
        elif cmd == P.CMD_BLOCK_STATUS:
            self.block_status(cookie, flags, offset, length)
        else:
            self.error(cookie, P.EINVAL, f"invalid request type ({cmd}) received")

    # --- READ --------------------------------------------------------------------------------------
    def _read(self, offset: int, buf: memoryview) -> int:
        with self.exp.lock:
            return self.exp.blk.read(offset, buf)

    def read(self, cookie: int, flags: int, offset: int, length: int) -> None:
        if flags & P.CMD_FLAG_FUA:          # qemu: a FUA read flushes first
            with self.exp.lock:
                ret = self.exp.blk.flush()
            if ret < 0:
                self.generic(cookie, ret, "flush failed")
                return
        if self.structured and not flags & P.CMD_FLAG_DF and length:
            self.sparse_read(cookie, offset, length)
            return
        buf = bytearray(length)
        ret = self._read(offset, memoryview(buf)) if length else 0
        if ret < 0:
            self.generic(cookie, ret, "reading from file failed")
        elif not self.structured:
            self.simple(cookie, 0, buf)
        elif length:
            self.chunk(cookie, P.REPLY_TYPE_OFFSET_DATA, P.U64.pack(offset) + buf, True)
        else:
            self.chunk(cookie, P.REPLY_TYPE_NONE, b"", True)

    def sparse_read(self, cookie: int, offset: int, length: int) -> None:
        try:
            runs = self.exp.status(offset, length)
        except OSError as e:
            self.error(cookie, P.nbd_errno(e.errno or errno.EIO),
                       f"unable to check for holes: {os.strerror(e.errno or errno.EIO)}")
            return
        pos, end = offset, offset + length
        for n, _data, zero in runs:
            final = pos + n == end
            if zero:
                self.chunk(cookie, P.REPLY_TYPE_OFFSET_HOLE, P.HOLE_BODY.pack(pos, n), final)
            else:
                buf = bytearray(n)
                ret = self._read(pos, memoryview(buf))
                if ret < 0:
                    self.error(cookie, P.nbd_errno(-ret), "reading from file failed")
                    return
                self.chunk(cookie, P.REPLY_TYPE_OFFSET_DATA, P.U64.pack(pos) + buf, final)
            pos += n

    # --- BLOCK_STATUS ----------------------------------------------------------------------------
    def block_status(self, cookie: int, flags: int, offset: int, length: int) -> None:
        if not length:
            self.error(cookie, P.EINVAL, "need non-zero length")
            return
        if not self.contexts:
            self.error(cookie, P.EINVAL, "CMD_BLOCK_STATUS not negotiated")
            return
        limit = 1 if flags & P.CMD_FLAG_REQ_ONE else MAX_STATUS_EXTENTS
        for i, (cid, _name) in enumerate(self.contexts):
            last = i == len(self.contexts) - 1
            try:
                if cid == META_ID_BASE_ALLOCATION:
                    ext = self.exp.allocation_extents(offset, length, limit)
                elif cid == META_ID_ALLOCATION_DEPTH:
                    ext = self.exp.depth_extents(offset, length, limit)
                else:
                    ext = self.exp.bitmap_extents(cid - META_ID_DIRTY_BITMAP, offset, length,
                                                  limit)
            except OSError as e:
                self.error(cookie, P.nbd_errno(e.errno or errno.EIO), "can't get block status")
                return
            body = P.U32.pack(cid) + b"".join(P.EXTENT.pack(n, f) for n, f in ext)
            self.chunk(cookie, P.REPLY_TYPE_BLOCK_STATUS, body, last)


class NbdServer:
    """Accepts connections on ``listener`` and serves ``exports``."""

    def __init__(self, listener: socket.socket, exports: dict[str, Export], *,
                 shared: int = 1, persistent: bool = False,
                 log: Callable[[str], None] | None = None):
        self.listener = listener
        self.exports = exports
        self.shared = shared
        self.persistent = persistent
        self.log = log or (lambda msg: print(f"blockbed nbd: {msg}", file=sys.stderr,
                                             flush=True))
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._active: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def serve(self) -> None:
        """Run until stopped (signal, or the last negotiated client left)."""
        sel = selectors.DefaultSelector()
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ)
        try:
            while not self.stop.is_set():
                with self._lock:
                    room = len(self._active) < self.shared
                if not room or not sel.select(timeout=0.2):
                    if not room:
                        self.stop.wait(0.05)
                    continue
                try:
                    conn, _ = self.listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                conn.setblocking(True)
                with self._lock:
                    self._active.add(conn)
                t = threading.Thread(target=self._client, args=(conn,), daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
                t.start()
        finally:
            sel.close()
            with self._lock:
                for c in self._active:
                    try:
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            for t in self._threads:
                t.join(timeout=5)

    def _client(self, conn: socket.socket) -> None:
        negotiated = False
        ch = SocketChannel(conn)
        try:
            session = negotiate(ch, self.exports)  # type: ignore[arg-type]
            if session is not None:
                negotiated = True
                Connection(ch, session, self.log).run()
        except Disconnect as e:
            self.log(("Disconnect client, due to: " if negotiated
                      else "option negotiation failed: ") + str(e))
        except EOFError as e:
            if str(e) != "end of file":     # a clean close between messages is silent
                self.log(f"Disconnect client, due to: {e}")
        except OSError as e:
            self.log(f"Disconnect client, due to: {e.strerror or e}")
        except Exception as e:            # a bug must not take the other clients down
            self.log(f"Disconnect client, due to: internal error: {type(e).__name__}: {e}")
        finally:
            try:
                conn.close()
            except OSError:
                pass
            with self._lock:
                self._active.discard(conn)
                last = not self._active
            if negotiated and last and not self.persistent:
                self.stop.set()


def listen_unix(path: str) -> socket.socket:
    """A listening Unix socket at ``path`` (an old socket file is replaced, as QEMU does)."""
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            os.unlink(path)
    except OSError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def listen_tcp(host: str, port: int) -> socket.socket:
    s = socket.create_server((host, port), reuse_port=False, backlog=16)
    return s
