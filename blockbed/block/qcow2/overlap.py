"""Metadata overlap checks (QEMU's qcow2_check_metadata_overlap, "cached" mode).

Every cluster that holds metadata of the active image (header, L1 table, L2
tables, refcount table and blocks, snapshot table and snapshot L1 tables,
bitmap directory) is recorded with its kind.  Before any write the driver
asks whether the target range belongs to something else; if it does the image
is inconsistent, so the driver marks it corrupt and refuses the write instead
of letting data land on metadata.
"""

from __future__ import annotations

from typing import Callable


class OverlapMap:
    #: kinds a write of another kind may share a cluster with: the unused tail of a
    #: longer-than-needed L1 table is written (whole) together with the used part
    COMPATIBLE = {("l1", "l1_unused"), ("l1", "l1+l1_unused"), ("l1", "l1_unused+l1")}

    def __init__(self, cluster_bits: int, on_violation: Callable[[str], None]):
        self.cluster_bits = cluster_bits
        self.kinds: dict[int, str] = {}
        self.on_violation = on_violation

    @property
    def read_kinds(self) -> "_ReadKinds":
        """The map as guest-data reads see it: ``l1_unused`` clusters are not
        metadata any I/O looks at (a data cluster may legally lie under them)."""
        return _ReadKinds(self.kinds)

    def add(self, offset: int, length: int, kind: str) -> None:
        """Record metadata; a cluster claimed by two kinds becomes "a+b", which no
        write matches, so any later write to it is refused."""
        cb = self.cluster_bits
        kinds = self.kinds
        for ci in range(offset >> cb, (offset + length - 1 >> cb) + 1 if length else offset >> cb):
            old = kinds.get(ci)
            kinds[ci] = kind if old is None or old == kind else f"{old}+{kind}"

    def check_free(self, offset: int, length: int) -> None:
        """Clusters about to be allocated must not hold metadata (refcounts are wrong)."""
        cb = self.cluster_bits
        for ci in range(offset >> cb, ((offset + length - 1) >> cb) + 1):
            k = self.kinds.get(ci)
            if k is not None:
                self.on_violation(f"Preventing allocation of cluster {ci}: it holds {k} "
                                  "but its refcount is 0")

    def remove(self, offset: int, length: int) -> None:
        cb = self.cluster_bits
        for ci in range(offset >> cb, (offset + length - 1 >> cb) + 1 if length else offset >> cb):
            self.kinds.pop(ci, None)

    def kind_at(self, offset: int) -> str | None:
        return self.kinds.get(offset >> self.cluster_bits)

    def check(self, offset: int, length: int, kind: str | None) -> None:
        """Refuse a write of ``kind`` (None = guest data) over other metadata."""
        if length <= 0 or not self.kinds:
            return
        cb = self.cluster_bits
        kinds = self.kinds
        first, last = offset >> cb, (offset + length - 1) >> cb
        if last - first > len(kinds):
            hits = [ci for ci in kinds if first <= ci <= last]
        else:
            hits = [ci for ci in range(first, last + 1) if ci in kinds]
        for ci in hits:
            k = kinds[ci]
            if k != kind and (kind, k) not in self.COMPATIBLE:
                what = "guest data" if kind is None else kind
                self.on_violation(f"Preventing invalid write on metadata (overlaps with {k}): "
                                  f"{what} write at {offset:#x}+{length:#x}")


class _ReadKinds:
    """A view of the cluster→kind map that hides ``l1_unused``."""
    __slots__ = ("kinds",)

    def __init__(self, kinds: dict[int, str]):
        self.kinds = kinds

    def get(self, ci: int) -> str | None:
        k = self.kinds.get(ci)
        if k is None or k == "l1_unused":
            return None
        return k.replace("+l1_unused", "").replace("l1_unused+", "")
