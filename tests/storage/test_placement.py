"""Placement: the code for the fleet's size, one share per device, sites and zones
covered first, the same answer for the same inputs, and shares drawn to free capacity."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import PlacementError, ValidationError
from roost.storage.placement import (
    StorageNode,
    choose_code,
    default_code,
    place,
    rendezvous_score,
    repair_threshold,
)

GIB = 1 << 30


@pytest.mark.parametrize(
    ("devices", "code"),
    [
        (3, (1, 3)),
        (4, (2, 4)),
        (5, (2, 4)),
        (6, (3, 6)),
        (7, (3, 6)),
        (8, (4, 8)),
        (11, (4, 8)),
        (12, (6, 12)),
        (15, (6, 12)),
        (16, (8, 16)),
        (1000, (8, 16)),
    ],
)
def test_the_default_code_follows_the_fleet_size(devices: int, code: tuple[int, int]) -> None:
    assert default_code(devices) == code
    assert choose_code(devices) == code


@pytest.mark.parametrize("devices", [0, 1, 2])
def test_fewer_than_three_devices_are_refused(devices: int) -> None:
    with pytest.raises(PlacementError, match="at least 3 devices offering space"):
        default_code(devices)


def test_a_code_can_be_chosen_if_the_fleet_can_hold_it() -> None:
    assert choose_code(20, (10, 14)) == (10, 14)
    assert choose_code(2, (1, 2)) == (1, 2)
    with pytest.raises(PlacementError, match=r"a 4-of-8 code needs 8 devices .* there are 6"):
        choose_code(6, (4, 8))
    with pytest.raises(ValidationError, match="impossible"):
        choose_code(10, (5, 5))


@pytest.mark.parametrize(
    ("k", "n", "threshold"),
    [(1, 3, 2), (2, 4, 3), (3, 6, 5), (4, 8, 6), (6, 12, 9), (8, 16, 12), (1, 2, 2)],
)
def test_the_repair_threshold(k: int, n: int, threshold: int) -> None:
    assert repair_threshold(k, n) == threshold


labels = st.sampled_from(["", "a", "b", "c", "d"])
nodes = st.lists(
    st.builds(
        StorageNode,
        device_id=st.text("0123456789abcdef", min_size=4, max_size=8),
        free_bytes=st.integers(0, 10 * GIB),
        site=labels,
        zone=labels,
    ),
    min_size=1,
    max_size=30,
    unique_by=lambda node: node.device_id,
)


@settings(max_examples=200)
@given(nodes, st.integers(1, 16), st.text(max_size=10), st.randoms(use_true_random=False))
def test_one_share_per_device_sites_first_and_the_same_answer_in_any_order(
    fleet: list[StorageNode], n: int, key: str, rng: random.Random
) -> None:
    eligible = [node for node in fleet if node.free_bytes >= 1]
    if len(eligible) < n:
        with pytest.raises(PlacementError, match="need a device each"):
            place(key, fleet, n)
        return
    placed = place(key, fleet, n)
    assert sorted(placed) == list(range(n))
    assert len(set(placed.values())) == n  # never two shares on one device
    by_id = {node.device_id: node for node in fleet}
    assert all(by_id[d].free_bytes >= 1 for d in placed.values())
    sites = {node.site_key for node in eligible}
    assert len({by_id[d].site_key for d in placed.values()}) == min(n, len(sites))
    counts = Counter(by_id[d].site_key for d in placed.values())
    # A site with a device to spare holds at most one share fewer than any other.
    unused = [node for node in eligible if node.device_id not in placed.values()]
    for site in {node.site_key for node in unused}:
        assert max(counts.values()) <= counts[site] + 1
    shuffled = fleet[:]
    rng.shuffle(shuffled)
    assert place(key, shuffled, n) == placed


def test_zones_are_covered_within_a_site() -> None:
    fleet = [StorageNode(f"d{i}", GIB, site="home", zone=f"z{i % 3}") for i in range(9)]
    for key in ("photo", "video", "notes", "backup"):
        placed = place(key, fleet, 3)
        zones = {fleet[int(d[1:])].zone for d in placed.values()}
        assert zones == {"z0", "z1", "z2"}, key


def test_no_room_no_share() -> None:
    fleet = [
        StorageNode(f"d{i}", free, site=f"s{i}") for i, free in enumerate([0, 10, 100, 1000, 5])
    ]
    placed = place("obj", fleet, 2, share_bytes=50)
    assert set(placed.values()) == {"d2", "d3"}
    with pytest.raises(
        PlacementError, match="3 of the object's 3 shares need a device each and only 2"
    ):
        place("obj", fleet, 3, share_bytes=50)


def test_shares_are_drawn_to_free_capacity() -> None:
    # Weighted rendezvous: the first share lands on a device with probability
    # proportional to its free bytes. 20,000 fixed keys (the "seed": no randomness).
    fleet = [StorageNode(f"dev-{w}", w * GIB) for w in range(1, 9)]
    total = sum(node.free_bytes for node in fleet)
    keys = [f"bucket/object-{i}" for i in range(20_000)]
    firsts = Counter(place(key, fleet, 1)[0] for key in keys)
    for node in fleet:
        expected = node.free_bytes / total
        assert abs(firsts[node.device_id] / len(keys) - expected) < 0.012, node.device_id
    # With n = 4 of 8 the biggest device holds shares of far more objects than the smallest.
    held = Counter(d for key in keys[:5000] for d in place(key, fleet, 4).values())
    assert held["dev-8"] > 2 * held["dev-1"]
    assert sorted(held, key=held.__getitem__) == [node.device_id for node in fleet]


def test_a_device_that_held_nothing_leaving_moves_nothing() -> None:
    fleet = [StorageNode(f"d{i:02}", (i % 5 + 1) * GIB) for i in range(20)]
    for key in (f"o{i}" for i in range(200)):
        placed = place(key, fleet, 6)
        idle = next(node for node in fleet if node.device_id not in placed.values())
        assert place(key, [node for node in fleet if node is not idle], 6) == placed


def test_repair_keeps_the_healthy_shares_and_places_only_the_lost() -> None:
    fleet = [StorageNode(f"d{i}", GIB, site=f"s{i % 4}") for i in range(12)]
    placed = place("obj", fleet, 8)
    site_of = {node.device_id: node.site for node in fleet}
    # Two shares lost in two different sites, each of which has a device to spare.
    lost = {0, next(i for i in range(1, 8) if site_of[placed[i]] != site_of[placed[0]])}
    gone = {placed[i] for i in lost}
    keep = {i: d for i, d in placed.items() if i not in lost}
    survivors = [node for node in fleet if node.device_id not in gone]
    repaired = place("obj", survivors, 8, keep=keep)
    assert {i: repaired[i] for i in keep} == keep
    assert len(set(repaired.values())) == 8
    assert not gone & set(repaired.values())
    assert sorted(Counter(site_of[d] for d in repaired.values()).values()) == [2, 2, 2, 2]
    with pytest.raises(ValidationError, match="distinct devices"):
        place("obj", fleet, 8, keep={0: "d1", 1: "d1"})


def test_scores_are_stable_and_zero_for_a_full_device() -> None:
    node = StorageNode("d1", GIB)
    assert rendezvous_score("k", node) == rendezvous_score("k", StorageNode("d1", GIB, site="x"))
    assert rendezvous_score("k", node) != rendezvous_score("other", node)
    assert rendezvous_score("k", StorageNode("d1", 0)) == 0.0
    with pytest.raises(ValidationError):
        StorageNode("", GIB)
