"""``blockbed img snapshot``: qemu-img snapshot's actions and refusals (QEMU 7.2
qemu-img.c img_snapshot, block/snapshot.c for images without snapshots)."""

from __future__ import annotations

import argparse
import sys

from ..block.driver import BlockError
from .img import _fail, _human_info, _open_msg, _probe_format, image_info, open_arg


class SnapshotAction(argparse.Action):
    """-l/-c/-a/-d: each given one is recorded, so that two are refused as qemu-img
    refuses them ("Cannot mix"), even the same one twice."""

    def __call__(self, parser, namespace, values, option_string=None):
        done = list(getattr(namespace, self.dest, None) or [])
        done.append((self.const, None if self.nargs == 0 else values))
        setattr(namespace, self.dest, done)


def cmd_snapshot(a: argparse.Namespace) -> int:
    """qemu-img snapshot.  An empty tag is a tag: qemu-img creates (or looks up) the
    snapshot named "", so the action is chosen by which option was given."""
    from ..block.qcow2 import snapshot as snap
    actions = a.snapshot_actions or [("list", None)]
    if len(actions) > 1:                 # img_snapshot's check, before opening anything
        _fail("Cannot mix '-l', '-a', '-c', '-d'")
        print("Try 'blockbed img --help' for more information", file=sys.stderr)
        return 1
    action = None if actions[0][0] == "list" else actions[0]
    try:
        fmt = a.f or _probe_format(a.filename)
    except BlockError as e:
        return _fail(_open_msg(a.filename, e))
    if fmt != "qcow2":
        # raw: an empty list, or each action's failure as QEMU's block/snapshot.c words it
        open_arg(a.filename, fmt, read_only=action is None, force_share=a.U)[0].close()
        if action is None:
            return 0
        verb, name = action
        return _fail(f"Could not {verb} snapshot '{name}': " + {
            "create": "-95 (Operation not supported)",
            "apply": "Block driver does not support snapshots",
            "delete": "snapshot not found"}[verb])
    listing = action is None
    node, _ = open_arg(a.filename, "qcow2", read_only=listing, force_share=a.U and listing,
                       no_backing=True)
    try:
        if listing:
            info = image_info(node, "qcow2", a.filename)
            if info.get("snapshots"):
                text = _human_info(info)
                start = text.index("Snapshot list:")
                end = text.find("\nFormat specific information:")
                print(text[start:end if end >= 0 else None])
            return 0
        verb, name = action
        if verb != "create" and not any(name in (s.id_str, s.name) for s in node.snapshots):
            # qemu-img: delete looks the tag up itself; apply fails in bdrv_snapshot_goto
            return _fail(f"Could not {verb} snapshot '{name}': " +
                         ("snapshot not found" if verb == "delete"
                          else "Failed to load snapshot: No such file or directory"))
        try:
            {"create": snap.create_snapshot, "apply": snap.apply_snapshot,
             "delete": snap.delete_snapshot}[verb](node, name)
        except BlockError as e:
            return _fail(f"Could not {verb} snapshot '{name}': {e}")
        return 0
    finally:
        node.close()
