"""The state of an open qcow2 image that the driver's I/O mixins rely on,
declared once with its types: :class:`Qcow2State` is the common base of
:class:`~.read_path.Qcow2ReadPath`, :class:`~.write_path.Qcow2WritePath`,
:class:`~.zero.Qcow2ZeroPath` and :class:`~.status.Qcow2Status`.

It only declares (annotations, no values, no methods): the attributes are set
by :meth:`.driver.Qcow2Driver.__init__` (the cluster geometry from the header,
spec "Header"; the L1/L2 mapping and the refcount manager with their caches).
Each mixin names, in a comment, the ones it uses and the methods of the other
parts it calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..driver import BlockDriver
    from .bitmaps import BitmapStore
    from .cluster import ClusterType, Mapping
    from .encryption import Qcow2Crypto
    from .header import Header
    from .overlap import OverlapMap
    from .refcount import RefcountManager


class Qcow2State:
    """Attributes of :class:`~.driver.Qcow2Driver` used by its I/O mixins."""

    file: BlockDriver                     # the image file (protocol node)
    data_node: BlockDriver | None         # the external data file, if the image has one
    backing: BlockDriver | None
    header: Header
    cluster_bits: int
    cluster_size: int
    l2_bits: int                          # log2 of the entries per L2 table
    mapping: Mapping                      # L1 table and L2 cache
    refcounts: RefcountManager
    overlap: OverlapMap                   # metadata ranges guest data must not touch
    bitmaps: BitmapStore                  # persistent dirty bitmaps (writes are recorded)
    crypto: Qcow2Crypto | None
    has_data_file: bool
    data_file_raw: bool
    lazy_refcounts: bool
    unsafe_order: bool                    # x-unsafe-l2-before-refcount
    pass_discard: bool
    _ctype: Callable[[int], ClusterType]  # L2 entry -> cluster type for this image
    _last_compressed: tuple[int, bytes] | None   # set lazily: last decompressed cluster
    _prealloc_detected: bool | None       # set lazily by Qcow2Status._metadata_preallocated
