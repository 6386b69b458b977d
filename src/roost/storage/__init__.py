"""Storage across the devices: objects sealed, erasure-coded into shares and placed.

The pure parts live here: the codec (``Encoder``, ``Decoder``, ``rebuild_shares``,
``verify_share``), its ``Manifest``, ``CodecThreads`` and the ``CodecPool`` that run
the codec in threads or in worker processes, and the placement core (``place``,
``choose_code``, ``repair_threshold``). See docs/storage.md.
"""

from roost.storage.codec import (
    CodecParams,
    DecodedSegment,
    Decoder,
    EncodedSegment,
    Encoder,
    Share,
    rebuild_shares,
    verify_share,
)
from roost.storage.manifest import Manifest, SegmentEntry, share_hash
from roost.storage.placement import (
    StorageNode,
    choose_code,
    default_code,
    place,
    repair_threshold,
)
from roost.storage.pool import CodecPool, CodecThreads

__all__ = [
    "CodecParams",
    "CodecPool",
    "CodecThreads",
    "DecodedSegment",
    "Decoder",
    "EncodedSegment",
    "Encoder",
    "Manifest",
    "SegmentEntry",
    "Share",
    "StorageNode",
    "choose_code",
    "default_code",
    "place",
    "rebuild_shares",
    "repair_threshold",
    "share_hash",
    "verify_share",
]
