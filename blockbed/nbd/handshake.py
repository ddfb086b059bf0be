"""The NBD handshake, server side: fixed newstyle negotiation and option haggling.

Spec (doc/proto.md of the NBD project), "Handshake" → "Newstyle negotiation"
and "Option haggling"; the replies and their wording follow qemu-nbd 7.2
(nbd/server.c), so a client sees the same answers from either server:

* greeting ``NBDMAGIC IHAVEOPT flags`` with FIXED_NEWSTYLE | NO_ZEROES;
* unknown client flags, a bad option magic or an option longer than 32 MiB
  end the connection;
* a client without FIXED_NEWSTYLE may only send NBD_OPT_EXPORT_NAME;
* EXPORT_NAME, INFO, GO, LIST, ABORT, STARTTLS (refused: no TLS),
  STRUCTURED_REPLY, LIST_META_CONTEXT / SET_META_CONTEXT (base:allocation,
  qemu:allocation-depth, qemu:dirty-bitmap:NAME); anything else is
  NBD_REP_ERR_UNSUP and the client may go on.

:func:`negotiate` returns a :class:`Session` (what transmission needs) or
None when the client aborted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from . import protocol as P


class Disconnect(Exception):
    """End the connection (a protocol violation or a closed socket); the text says why."""


class Channel(Protocol):
    def recv_exact(self, n: int) -> bytes: ...
    def send(self, data: bytes) -> None: ...


class ExportView(Protocol):
    """What negotiation needs to know of an export."""
    name: str
    description: str
    size: int
    flags: int
    request_alignment: int
    max_transfer: int
    allocation_depth: bool
    bitmap_names: list[str]


@dataclass
class Session:
    """The outcome of negotiation."""
    export: ExportView
    structured: bool
    # negotiated metadata contexts, (context id, name), in qemu's order
    contexts: list[tuple[int, str]] = field(default_factory=list)


# context ids as qemu-nbd numbers them
META_ID_BASE_ALLOCATION = 0
META_ID_ALLOCATION_DEPTH = 1
META_ID_DIRTY_BITMAP = 2


class _Option:
    """The payload of one option, read whole, parsed with qemu's length checks."""

    def __init__(self, opt: int, data: bytes):
        self.opt = opt
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes | None:
        """``n`` bytes, or None when the option is shorter (qemu: inconsistent lengths)."""
        if n > self.left:
            return None
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


class _Invalid(Exception):
    """Answer the current option with an error reply (the connection stays)."""

    def __init__(self, rep: int, message: str):
        super().__init__(message)
        self.rep = rep


def _opt_name(opt: int) -> str:
    return P.OPT_NAMES.get(opt, "<unknown>")


class Negotiation:
    """One client's option haggling."""

    def __init__(self, ch: Channel, exports: dict[str, ExportView]):
        self.ch = ch
        self.exports = exports
        self.structured = False
        self.no_zeroes = False
        self.meta_export: ExportView | None = None
        self.meta: list[tuple[int, str]] = []

    # --- replies -----------------------------------------------------------------------
    def reply(self, opt: int, rep: int, body: bytes = b"") -> None:
        self.ch.send(P.OPTION_REPLY.pack(P.REPLY_MAGIC, opt, rep, len(body)) + body)

    def info(self, opt: int, body: bytes) -> None:
        self.reply(opt, P.REP_INFO, body)

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> Session | None:
        self.ch.send(P.GREETING.pack(P.NBDMAGIC, P.IHAVEOPT,
                                     P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES))
        (flags,) = P.CLIENT_FLAGS.unpack(self.ch.recv_exact(4))
        fixed = bool(flags & P.FLAG_C_FIXED_NEWSTYLE)
        self.no_zeroes = bool(flags & P.FLAG_C_NO_ZEROES)
        rest = flags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)
        if rest:
            raise Disconnect(f"Unknown client flags 0x{rest:x} received")
        while True:
            magic, opt, length = P.OPTION.unpack(self.ch.recv_exact(P.OPTION.size))
            if magic != P.IHAVEOPT:
                raise Disconnect("Bad magic received")
            if length > P.MAX_OPTION:
                raise Disconnect(f"len ({length}) is larger than max len ({P.MAX_OPTION})")
            if opt == P.OPT_EXPORT_NAME:
                return self.export_name(length)
            if not fixed:
                raise Disconnect(f"Unsupported option {opt} ({_opt_name(opt)})")
            o = _Option(opt, self.ch.recv_exact(length))
            try:
                done = self.handle(o)
            except _Invalid as e:
                self.reply(opt, e.rep, str(e).encode())
                continue
            if done is not None:
                return done if isinstance(done, Session) else None

    def handle(self, o: _Option) -> "Session | bool | None":
        """Answer one option; a Session ends negotiation, True means abort."""
        opt = o.opt
        if opt == P.OPT_ABORT:
            try:
                self.reply(opt, P.REP_ACK)
            except OSError:
                pass                      # the client need not wait for the ACK
            return True
        if opt in (P.OPT_INFO, P.OPT_GO):
            return self.info_go(o)
        if opt == P.OPT_LIST:
            self._no_payload(o)
            for exp in self.exports.values():
                name, desc = exp.name.encode(), exp.description.encode()
                self.reply(opt, P.REP_SERVER, P.U32.pack(len(name)) + name + desc)
            self.reply(opt, P.REP_ACK)
            return None
        if opt == P.OPT_STARTTLS:
            self._no_payload(o)
            raise _Invalid(P.REP_ERR_POLICY, "TLS not configured")
        if opt == P.OPT_STRUCTURED_REPLY:
            self._no_payload(o)
            if self.structured:
                raise _Invalid(P.REP_ERR_INVALID, "structured reply already negotiated")
            self.structured = True
            self.reply(opt, P.REP_ACK)
            return None
        if opt in (P.OPT_LIST_META_CONTEXT, P.OPT_SET_META_CONTEXT):
            self.meta_queries(o)
            return None
        raise _Invalid(P.REP_ERR_UNSUP, f"Unsupported option {opt} ({_opt_name(opt)})")

    def _no_payload(self, o: _Option) -> None:
        if o.left:
            raise _Invalid(P.REP_ERR_INVALID, f"option '{_opt_name(o.opt)}' has unexpected length")

    def _take(self, o: _Option, n: int, check_nul: bool = False) -> bytes:
        b = o.take(n)
        if b is None:
            raise _Invalid(P.REP_ERR_INVALID, f"Inconsistent lengths in option {_opt_name(o.opt)}")
        if check_nul and b"\0" in b:
            raise _Invalid(P.REP_ERR_INVALID, f"Unexpected embedded NUL in option "
                                              f"{_opt_name(o.opt)}")
        return b

    def _name(self, o: _Option) -> bytes:
        (n,) = P.U32.unpack(self._take(o, 4))
        if n > P.MAX_STRING:
            raise _Invalid(P.REP_ERR_INVALID, f"Invalid name length: {n}")
        return self._take(o, n, check_nul=True)

    @staticmethod
    def _sane(name: str) -> str:
        return name if len(name) < 80 else name[:80] + "..."

    # --- NBD_OPT_EXPORT_NAME ---------------------------------------------------------------
    def export_name(self, length: int) -> Session:
        """Spec "NBD_OPT_EXPORT_NAME": no error reply exists, so an unknown export
        ends the connection."""
        if length > P.MAX_STRING:
            raise Disconnect("Bad length received")
        name = self.ch.recv_exact(length).decode("utf-8", "replace")
        exp = self.exports.get(name)
        if exp is None:
            raise Disconnect("export not found")
        flags = exp.flags | (P.FLAG_SEND_DF if self.structured else 0)
        out = P.EXPORT_NAME_REPLY.pack(exp.size, flags)
        if not self.no_zeroes:
            out += bytes(P.EXPORT_NAME_ZEROES)
        self.ch.send(out)
        return self._session(exp)

    def _session(self, exp: ExportView) -> Session:
        contexts = self.meta if self.meta_export is exp else []
        return Session(exp, self.structured, list(contexts))

    # --- NBD_OPT_INFO / NBD_OPT_GO -------------------------------------------------------------
    def info_go(self, o: _Option) -> Session | None:
        raw_name = self._name(o)
        (nreq,) = P.U16.unpack(self._take(o, 2))
        want_name = want_block = False
        for _ in range(nreq):
            (req,) = P.U16.unpack(self._take(o, 2))
            want_name |= req == P.INFO_NAME
            want_block |= req == P.INFO_BLOCK_SIZE
        if o.left:
            raise _Invalid(P.REP_ERR_INVALID, f"option '{_opt_name(o.opt)}' has unexpected length")
        name = raw_name.decode("utf-8", "replace")
        exp = self.exports.get(name)
        if exp is None:
            raise _Invalid(P.REP_ERR_UNKNOWN, f"export '{self._sane(name)}' not present")
        if want_name:
            self.info(o.opt, P.U16.pack(P.INFO_NAME) + raw_name)
        if exp.description:
            self.info(o.opt, P.U16.pack(P.INFO_DESCRIPTION) + exp.description.encode())
        # qemu: the minimum is the real alignment only for a client that promised to
        # honour it (it asked) or for INFO; otherwise 1 for old clients
        minimum = exp.request_alignment if (o.opt == P.OPT_INFO or want_block) else 1
        self.info(o.opt, P.INFO_BLOCK_SIZE_BODY.pack(
            P.INFO_BLOCK_SIZE, minimum, max(4096, minimum), min(exp.max_transfer, P.MAX_BUFFER)))
        flags = exp.flags | (P.FLAG_SEND_DF if self.structured else 0)
        self.info(o.opt, P.INFO_EXPORT_BODY.pack(P.INFO_EXPORT, exp.size, flags))
        if o.opt == P.OPT_INFO and not want_block and exp.request_alignment > 1:
            raise _Invalid(P.REP_ERR_BLOCK_SIZE_REQD,
                           "request NBD_INFO_BLOCK_SIZE to use this export")
        self.reply(o.opt, P.REP_ACK)
        if o.opt == P.OPT_GO:
            return self._session(exp)
        return None

    # --- NBD_OPT_{LIST,SET}_META_CONTEXT (spec "Metadata querying") ------------------------
    def meta_queries(self, o: _Option) -> None:
        listing = o.opt == P.OPT_LIST_META_CONTEXT
        if not listing and not self.structured:
            raise _Invalid(P.REP_ERR_INVALID, f"request option '{_opt_name(o.opt)}' when "
                                              "structured reply is not negotiated")
        if not listing:                     # a SET replaces the earlier choice, even on error
            self.meta_export, self.meta = None, []
        name = self._name(o).decode("utf-8", "replace")
        exp = self.exports.get(name)
        if exp is None:
            raise _Invalid(P.REP_ERR_UNKNOWN, f"export '{self._sane(name)}' not present")
        (nq,) = P.U32.unpack(self._take(o, 4))
        base = depth = False
        bitmaps = [False] * len(exp.bitmap_names)
        if listing and nq == 0:
            base, depth, bitmaps = True, exp.allocation_depth, [True] * len(bitmaps)
        for _ in range(nq):
            (qlen,) = P.U32.unpack(self._take(o, 4))
            if qlen > P.MAX_STRING:
                self._take(o, qlen)         # qemu skips an over-long query
                continue
            q = self._take(o, qlen, check_nul=True).decode("utf-8", "replace")
            b, d, which = _match_query(q, listing, exp.bitmap_names)
            base |= b
            depth |= d and exp.allocation_depth
            for i in which:
                bitmaps[i] = True
        chosen: list[tuple[int, str]] = []
        if base:
            chosen.append((META_ID_BASE_ALLOCATION, "base:allocation"))
        if depth:
            chosen.append((META_ID_ALLOCATION_DEPTH, "qemu:allocation-depth"))
        for i, bm in enumerate(exp.bitmap_names):
            if bitmaps[i]:
                chosen.append((META_ID_DIRTY_BITMAP + i, f"qemu:dirty-bitmap:{bm}"))
        for cid, cname in chosen:
            self.reply(o.opt, P.REP_META_CONTEXT,
                       P.U32.pack(0 if listing else cid) + cname.encode())
        self.reply(o.opt, P.REP_ACK)
        if not listing:
            self.meta_export, self.meta = exp, chosen


def _match_query(q: str, listing: bool,
                 bitmap_names: list[str]) -> tuple[bool, bool, list[int]]:
    """(base:allocation selected, qemu:allocation-depth selected, indexes of
    selected bitmaps) for one query.

    An empty leaf (``base:``, ``qemu:``, ``qemu:dirty-bitmap:``) selects all
    of that namespace when listing and nothing when setting; unknown
    namespaces and names select nothing (spec "Metadata querying")."""
    everything = list(range(len(bitmap_names)))
    if q.startswith("base:"):
        leaf = q[5:]
        return (leaf == "allocation" or (not leaf and listing)), False, []
    if q.startswith("qemu:"):
        leaf = q[5:]
        if not leaf:
            return False, listing, everything if listing else []
        if leaf == "allocation-depth":
            return False, True, []
        if leaf.startswith("dirty-bitmap:"):
            bm = leaf[len("dirty-bitmap:"):]
            if not bm:
                return False, False, everything if listing else []
            return False, False, [i for i, n in enumerate(bitmap_names) if n == bm][:1]
    return False, False, []


def negotiate(ch: Channel, exports: dict[str, ExportView]) -> Session | None:
    """Run the handshake; a Session to start transmission, None if the client
    aborted.  Raises :class:`Disconnect` (or OSError/EOFError) to drop it."""
    return Negotiation(ch, exports).run()
