"""Where an object's shares go: the code for the fleet's size, and one device per share.

Pure: it sees devices as ``StorageNode`` values (id, free bytes, ``site`` and ``zone``
labels) that the caller read from the database, and answers with device ids. No I/O,
no clock, no randomness: the same inputs give the same answer, whatever their order.

The rules, in order:

1. **One share per device**, and only devices with room for a share.
2. **Failure domains first.** Each share goes to the site that holds the fewest of the
   object's shares so far, then to the zone (within that site) that holds the fewest, so
   shares cover every site before any site gets a second one, then every zone. A device
   without a ``site`` label is a site of its own (nothing says it fails with another),
   and likewise for ``zone``.
3. **Weighted rendezvous hashing on free capacity** among the devices that tie on rule 2:
   each device scores ``free / -ln(h)`` where ``h`` in (0, 1) comes from BLAKE3 of the
   object key and the device id. The top scorer of a set wins with probability
   proportional to its free bytes, and when a device joins or leaves only the objects it
   wins or held move (no global reshuffle).

Repair places only the missing shares: ``keep`` names the shares that still have a
healthy home, and they count toward rule 2 and are never moved.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import blake3

from roost.errors import PlacementError, ValidationError

MIN_DEVICES = 3

# (fewest devices, k, n): the default code for a fleet of at least that many devices.
_CODES = ((16, 8, 16), (12, 6, 12), (8, 4, 8), (6, 3, 6), (4, 2, 4), (3, 1, 3))


@dataclass(frozen=True)
class StorageNode:
    """A device that offers storage, as placement sees it."""

    device_id: str
    free_bytes: int
    site: str = ""
    zone: str = ""

    def __post_init__(self) -> None:
        if not self.device_id or self.free_bytes < 0:
            raise ValidationError(f"a storage node needs an id and free bytes >= 0: {self!r}")

    @property
    def site_key(self) -> str:
        return f"site:{self.site}" if self.site else f"device:{self.device_id}"

    @property
    def zone_key(self) -> str:
        return f"{self.site_key}/zone:{self.zone}" if self.zone else f"device:{self.device_id}"


def default_code(devices: int) -> tuple[int, int]:
    """The k-of-n code for a fleet of ``devices`` storage devices (at least 3)."""
    for fewest, k, n in _CODES:
        if devices >= fewest:
            return k, n
    raise PlacementError(
        f"storage needs at least {MIN_DEVICES} devices offering space; there "
        f"{'is' if devices == 1 else 'are'} {devices}"
    )


def choose_code(devices: int, override: tuple[int, int] | None = None) -> tuple[int, int]:
    """The default code for the fleet, or ``override`` (per bucket or object) if it fits."""
    if override is None:
        return default_code(devices)
    k, n = override
    if not 1 <= k < n:
        raise ValidationError(f"a {k}-of-{n} code is impossible: need 1 <= k < n")
    if n > devices:
        raise PlacementError(
            f"a {k}-of-{n} code needs {n} devices with free space (one share each); "
            f"there are {devices}"
        )
    return k, n


def repair_threshold(k: int, n: int) -> int:
    """Healthy shares below which an object is repaired: k + ceil((n - k) / 2)."""
    return k + math.ceil((n - k) / 2)


def rendezvous_score(key: str, node: StorageNode) -> float:
    """The node's weighted rendezvous score for ``key`` (higher wins)."""
    if node.free_bytes == 0:
        return 0.0
    digest = blake3.blake3(f"{key}\x00{node.device_id}".encode()).digest(8)
    unit = (int.from_bytes(digest, "big") + 0.5) / 2**64  # in (0, 1), never 0 or 1
    return node.free_bytes / -math.log(unit)


def place(
    key: str,
    nodes: Iterable[StorageNode],
    n: int,
    share_bytes: int = 1,
    keep: Mapping[int, str] | None = None,
) -> dict[int, str]:
    """The device for each of shares 0..n−1 of the object ``key``.

    ``share_bytes`` is the room a device needs for one share. ``keep`` maps share indices
    to the devices that still hold them (repair); only the other shares are placed, never
    on a device that already holds one.
    """
    by_id = {node.device_id: node for node in nodes}
    keep = dict(keep or {})
    if any(not 0 <= i < n for i in keep) or len(set(keep.values())) != len(keep):
        raise ValidationError(f"shares to keep must have distinct devices and indices < {n}")
    candidates = sorted(
        (
            node
            for node in by_id.values()
            if node.device_id not in keep.values() and node.free_bytes >= share_bytes
        ),
        key=lambda node: node.device_id,
    )
    wanted = [i for i in range(n) if i not in keep]
    if len(candidates) < len(wanted):
        raise PlacementError(
            f"{len(wanted)} of the object's {n} shares need a device each and only "
            f"{len(candidates)} devices have {share_bytes} bytes free"
        )
    kept = [by_id[d] if d in by_id else StorageNode(d, 0) for d in keep.values()]
    sites = Counter(node.site_key for node in kept)
    zones = Counter(node.zone_key for node in kept)
    scores = {node.device_id: rendezvous_score(key, node) for node in candidates}
    placed = dict(keep)
    for index in wanted:
        best = min(candidates, key=lambda c: _rank(c, sites, zones, scores[c.device_id]))
        candidates.remove(best)
        sites[best.site_key] += 1
        zones[best.zone_key] += 1
        placed[index] = best.device_id
    return dict(sorted(placed.items()))


def _rank(
    node: StorageNode, sites: Counter[str], zones: Counter[str], score: float
) -> tuple[int, int, float, str]:
    return sites[node.site_key], zones[node.zone_key], -score, node.device_id
