"""NBD wire constants and structures, all in one place.

Numbers and layouts follow the NBD protocol specification (doc/proto.md of
the NBD project): "Handshake" (newstyle negotiation, option haggling),
"Transmission" (requests, simple and structured replies), "Metadata querying"
and "Error values".  Every multi-byte field is big-endian ("network byte
order", spec "Conventions").  The :mod:`struct` formats below are the only
place the layouts are spelled out; handshake and server code packs and
unpacks through them.
"""

from __future__ import annotations

import errno
import struct

# --- handshake ("Newstyle negotiation") --------------------------------------------------
NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT", also NBD_OPTS_MAGIC
REPLY_MAGIC = 0x0003E889045565A9        # option reply magic

# handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# options ("Option types")
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_PEEK_EXPORT = 4
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

OPT_NAMES = {
    OPT_EXPORT_NAME: "export name", OPT_ABORT: "abort", OPT_LIST: "list",
    OPT_PEEK_EXPORT: "peek export", OPT_STARTTLS: "starttls", OPT_INFO: "info",
    OPT_GO: "go", OPT_STRUCTURED_REPLY: "structured reply",
    OPT_LIST_META_CONTEXT: "list meta context", OPT_SET_META_CONTEXT: "set meta context",
}

# option reply types ("Option reply types"); errors have bit 31 set
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

# NBD_REP_INFO types ("NBD_OPT_INFO and NBD_OPT_GO")
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags ("Transmission flags")
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8
FLAG_SEND_RESIZE = 1 << 9
FLAG_SEND_CACHE = 1 << 10
FLAG_SEND_FAST_ZERO = 1 << 11

# --- transmission ("Request message", "Request types", "Command flags") ----------------
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_RESIZE = 8

CMD_NAMES = {CMD_READ: "read", CMD_WRITE: "write", CMD_DISC: "disconnect",
             CMD_FLUSH: "flush", CMD_TRIM: "trim", CMD_CACHE: "cache",
             CMD_WRITE_ZEROES: "write zeroes", CMD_BLOCK_STATUS: "block status"}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply chunks ("Structured reply chunk message")
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# base:allocation and qemu:dirty-bitmap flags ("Metadata querying")
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
STATE_DIRTY = 1 << 0

# error values ("Error values")
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

# limits: the spec's string limit and the 32 MiB payload limit qemu-nbd enforces
MAX_STRING = 4096
MAX_BUFFER = 32 << 20
MAX_OPTION = MAX_BUFFER

# --- layouts ---------------------------------------------------------------------------
GREETING = struct.Struct(">QQH")            # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")              # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")       # REPLY_MAGIC, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")    # size, transmission flags (+124 zero bytes)
INFO_EXPORT_BODY = struct.Struct(">HQH")    # INFO_EXPORT, size, flags
INFO_BLOCK_SIZE_BODY = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum
REQUEST = struct.Struct(">IHHQQI")          # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")        # magic, error, cookie
CHUNK = struct.Struct(">IHHQI")             # magic, flags, type, cookie, length
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
HOLE_BODY = struct.Struct(">QI")            # offset, length
ERROR_BODY = struct.Struct(">IH")           # error, message length
EXTENT = struct.Struct(">II")               # length, flags

EXPORT_NAME_ZEROES = 124


def nbd_errno(err: int) -> int:
    """A host errno as the NBD error value (QEMU system_errno_to_nbd_errno)."""
    if err in (errno.EPERM, errno.EROFS):
        return EPERM
    if err in (errno.EIO, errno.ENOMEM, errno.EOVERFLOW, errno.ESHUTDOWN):
        return err
    if err in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return ENOSPC
    if err in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return ENOTSUP
    return EINVAL
