"""The guest's own record of the promises it was given, and tying it to the oracle.

flushtest (and the Python workloads in :mod:`.workload`) print one line per
promise, in the order they were given::

    FT promise id=17 after=42 why=flush

meaning: by its protocol's rules the guest now holds write 17 durable, and
it learned so before submitting write 43 (``after`` = the last write id it
had submitted).  The engine maps guest write ids to backend requests through
the self-describing sectors (:mod:`.sector`) and places the promise at the
host position where the backend received write ``after+1`` (or the end of
the run): a crash from there on must show write 17.  If the backend's own
rules do not already make that write durable by then, the device lost a
promise on its way down (x-ignore-flush, x-ignore-fua): a *disagreement*.

Other record lines::

    FT config dev=virtio qd=4 fua=0 flush=1 wce=1 wce_toggle=1 discard=1
    FT summary writes=N promises=M flushes=F errors=E
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field

from .oracle import GuestWrite, Oracle
from .sector import SECTOR, parse_sector

_LINE = re.compile(r"^FT (\w+)(.*)$")
_KV = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True, slots=True)
class Promise:
    write_id: int
    after: int
    why: str


@dataclass
class GuestRecord:
    promises: list[Promise] = field(default_factory=list)
    config: dict[str, str] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    complete: bool = False       # the summary line was seen

    @classmethod
    def parse(cls, transcript: str) -> "GuestRecord":
        rec = cls()
        for line in transcript.splitlines():
            m = _LINE.match(line.strip())
            if not m:
                continue
            kv = dict(_KV.findall(m.group(2)))
            what = m.group(1)
            try:
                if what == "promise":
                    rec.promises.append(Promise(int(kv["id"]), int(kv["after"]), kv.get("why", "?")))
                elif what == "config":
                    rec.config.update(kv)
                elif what == "summary":
                    rec.summary.update(kv)
                    rec.complete = True
            except (KeyError, ValueError):
                continue   # a garbled line is not a promise; never guess one
        return rec


@dataclass
class AttachResult:
    promises: int = 0
    unmatched: list[int] = field(default_factory=list)   # guest ids with no backend write


def guest_ids(oracle: Oracle) -> dict[int, list[GuestWrite]]:
    """Guest write id → the backend writes carrying it (from the sector headers)."""
    out: dict[int, list[GuestWrite]] = {}
    for w in oracle.writes:
        if w.kind != "write" or w.data is None or len(w.data) < SECTOR:
            continue
        h = parse_sector(w.data[:SECTOR])
        if h is None or not h.crc_ok:
            continue
        w.guest_id = h.write_id
        out.setdefault(h.write_id, []).append(w)
    return out


def attach(oracle: Oracle, record: GuestRecord) -> AttachResult:
    """Add the guest's promises to ``oracle`` as claims (see module docstring)."""
    ids = guest_ids(oracle)
    # host position at which the backend received each guest write id, in id order
    firsts = sorted((wid, min(w.submit_pos for w in ws)) for wid, ws in ids.items())
    keys = [k for k, _ in firsts]
    # a deep queue may reach the backend out of id order: take the earliest
    # backend arrival among all ids after the promise
    suffix = [0] * len(firsts)
    best = oracle.end_pos
    for i in range(len(firsts) - 1, -1, -1):
        best = min(best, firsts[i][1])
        suffix[i] = best
    res = AttachResult()
    for p in record.promises:
        ws = ids.get(p.write_id)
        if not ws:
            res.unmatched.append(p.write_id)
            continue
        k = bisect_right(keys, p.after)
        pos = suffix[k] if k < len(firsts) else oracle.end_pos
        for w in ws:
            oracle.add_guest_claim(w, pos, f"{p.why} (guest write {p.write_id})")
        res.promises += 1
    return res
