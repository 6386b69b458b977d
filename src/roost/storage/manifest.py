"""The manifest of a stored object: how it was coded, and the hash of every share.

A manifest is what the hub keeps about an object (never the data key, which is wrapped
apart): the codec, k and n, the segment size, the object's size, and for each segment
the size of its shares and the BLAKE3 hash of each of its n shares. ``root`` is one
BLAKE3 hash over all of that in a fixed binary layout (``_canonical``), so a manifest
read back from the database or a backup is checked whole before any share is trusted.

Pure: no I/O. ``to_json`` / ``from_json`` round-trip exactly; ``from_json`` refuses
anything malformed or whose root does not match with a ``ManifestError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import blake3

from roost.errors import ManifestError
from roost.storage.erasure import CODECS, MAX_SHARES

FORMAT = 1
CIPHER = "aes-256-gcm"
HASH = "blake3"
REPLICA = "replica"
"""The codec of objects stored as whole copies: k = 1, every share is the sealed segment."""

HASH_SIZE = 32


def segments_for(object_size: int, segment_size: int) -> int:
    """How many segments an object has: at least one, even when it is empty."""
    return max(1, -(-object_size // segment_size))


def share_hash(data: bytes | memoryview) -> bytes:
    """The BLAKE3 hash a share is known by (the manifest's and a device's scrub)."""
    # Hashing every share is the codec's largest cost (n/k times the object). BLAKE3's
    # own threads (max_threads) hash a lone 256 KiB share faster, but made the whole
    # encoder slower on the project's 2-core machine (~1.15 against ~1.45 GB/s).
    return blake3.blake3(data).digest()


@dataclass(frozen=True)
class SegmentEntry:
    """One segment: the size of each of its shares and their hashes, by share index."""

    share_size: int
    hashes: tuple[bytes, ...]


@dataclass(frozen=True)
class Manifest:
    codec: str
    k: int
    n: int
    segment_size: int
    object_size: int
    segments: tuple[SegmentEntry, ...]
    root: bytes

    @classmethod
    def build(
        cls,
        codec: str,
        k: int,
        n: int,
        segment_size: int,
        object_size: int,
        segments: tuple[SegmentEntry, ...],
    ) -> Manifest:
        """A manifest with its root hash computed over the rest."""
        draft = cls(codec, k, n, segment_size, object_size, segments, bytes(HASH_SIZE))
        return replace(draft, root=_root(draft))

    def __post_init__(self) -> None:
        _check(self)

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    def plain_size(self, segment: int) -> int:
        """How many bytes of the object segment ``segment`` holds."""
        if segment < self.segment_count - 1:
            return self.segment_size
        return self.object_size - self.segment_size * (self.segment_count - 1)

    def share_hash(self, segment: int, index: int) -> bytes:
        return self.segments[segment].hashes[index]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "codec": self.codec,
                "cipher": CIPHER,
                "hash": HASH,
                "k": self.k,
                "n": self.n,
                "segment_size": self.segment_size,
                "object_size": self.object_size,
                "segments": [
                    {"share_size": s.share_size, "hashes": [h.hex() for h in s.hashes]}
                    for s in self.segments
                ],
                "root": self.root.hex(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check a manifest; anything wrong is a ``ManifestError``."""
        try:
            raw = json.loads(text)
            if raw["format"] != FORMAT or raw["cipher"] != CIPHER or raw["hash"] != HASH:
                raise ManifestError(
                    f"unknown manifest format {raw['format']!r} ({raw['cipher']}, {raw['hash']})"
                )
            segments = tuple(
                SegmentEntry(_int(s["share_size"]), tuple(bytes.fromhex(h) for h in s["hashes"]))
                for s in raw["segments"]
            )
            manifest = cls(
                codec=_str(raw["codec"]),
                k=_int(raw["k"]),
                n=_int(raw["n"]),
                segment_size=_int(raw["segment_size"]),
                object_size=_int(raw["object_size"]),
                segments=segments,
                root=bytes.fromhex(raw["root"]),
            )
        except (ValueError, TypeError, KeyError) as err:
            raise ManifestError(f"malformed manifest: {err!r}") from err
        if _root(manifest) != manifest.root:
            raise ManifestError("the manifest's root hash does not match its contents")
        return manifest


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _check(m: Manifest) -> None:
    """The shape every manifest has, whoever made it."""
    if m.codec not in (*CODECS, REPLICA):
        raise ManifestError(f"unknown codec {m.codec!r} in the manifest")
    if not 1 <= m.k < m.n <= MAX_SHARES or (m.codec == REPLICA and m.k != 1):
        raise ManifestError(f"impossible code {m.codec} {m.k}-of-{m.n} in the manifest")
    if m.segment_size < 1 or m.object_size < 0:
        raise ManifestError("impossible sizes in the manifest")
    if len(m.root) != HASH_SIZE:
        raise ManifestError("the manifest's root hash is not 32 bytes")
    if len(m.segments) != segments_for(m.object_size, m.segment_size):
        raise ManifestError(
            f"{len(m.segments)} segments cannot hold {m.object_size} bytes "
            f"of {m.segment_size}-byte segments"
        )
    for number, entry in enumerate(m.segments):
        if len(entry.hashes) != m.n or any(len(h) != HASH_SIZE for h in entry.hashes):
            raise ManifestError(f"segment {number} does not list {m.n} 32-byte share hashes")
        if entry.share_size < 1:
            raise ManifestError(f"segment {number} has shares of {entry.share_size} bytes")


def _root(m: Manifest) -> bytes:
    """BLAKE3 over every field but the root, in a fixed binary layout."""
    head = f"roost-manifest/{FORMAT}/{CIPHER}/{HASH}/{m.codec}/{m.k}/{m.n}/"
    head += f"{m.segment_size}/{m.object_size}/{len(m.segments)}/"
    parts = [head.encode()]
    for entry in m.segments:
        parts.append(entry.share_size.to_bytes(8, "big"))
        parts.extend(entry.hashes)
    return share_hash(b"".join(parts))
