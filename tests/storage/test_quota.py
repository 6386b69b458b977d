"""The quota decision: which quota holds, and whether a put fits under it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import QuotaExceededError, ValidationError
from roost.storage.quota import Override, Usage, check_put, effective_quota, room, show_size

KiB, MiB = 1024, 1024 * 1024


@pytest.mark.parametrize(
    ("default", "override", "expected"),
    [
        (0, None, None),  # no hub default, no tenant quota: no limit
        (10 * MiB, None, 10 * MiB),  # the hub's default
        (10 * MiB, Override(5 * MiB), 5 * MiB),  # the tenant's own wins
        (10 * MiB, Override(None), None),  # ... even when it is no limit
        (0, Override(0), 0),  # a tenant that may keep nothing
    ],
)
def test_the_tenants_own_quota_wins_over_the_hubs_default(
    default: int, override: Override | None, expected: int | None
) -> None:
    assert effective_quota(default, override) == expected


@pytest.mark.parametrize(
    ("quota", "stored", "pending", "size", "fits"),
    [
        (None, 10**15, 10**15, 10**15, True),
        (100, 0, 0, 100, True),  # exactly the quota
        (100, 0, 0, 101, False),
        (100, 60, 0, 40, True),
        (100, 60, 0, 41, False),
        (100, 0, 60, 41, False),  # a put in progress holds its room
        (100, 30, 30, 40, True),
        (100, 30, 30, 41, False),
        (0, 0, 0, 0, True),  # an empty object fits any quota
        (0, 0, 0, 1, False),
        (100, 120, 0, 0, True),  # over already (the quota was lowered): empty still fits
        (100, 120, 0, 1, False),
    ],
)
def test_a_put_fits_when_usage_pending_and_its_size_stay_within_the_quota(
    quota: int | None, stored: int, pending: int, size: int, fits: bool
) -> None:
    usage = Usage(stored=stored, pending=pending)
    if fits:
        check_put("b/x", size, quota, usage)
    else:
        with pytest.raises(QuotaExceededError) as refused:
            check_put("b/x", size, quota, usage)
        assert refused.value.status == 413
        assert (refused.value.size, refused.value.used, refused.value.quota) == (
            size,
            stored + pending,
            quota,
        )


@given(
    quota=st.none() | st.integers(0, 1 << 40),
    stored=st.integers(0, 1 << 40),
    pending=st.integers(0, 1 << 40),
    size=st.integers(0, 1 << 40),
)
def test_the_room_left_is_exactly_what_a_put_may_take(
    quota: int | None, stored: int, pending: int, size: int
) -> None:
    usage = Usage(stored, pending)
    left = room(quota, usage)
    try:
        check_put("b/x", size, quota, usage)
    except QuotaExceededError:
        assert left is not None
        assert size > left
    else:
        assert left is None or size <= left


def test_the_refusal_is_one_line_naming_the_object_its_size_and_the_usage() -> None:
    with pytest.raises(QuotaExceededError) as refused:
        check_put("photos/big.bin", 3 * MiB, 10 * MiB, Usage(stored=6 * MiB, pending=2 * MiB))
    assert str(refused.value) == (
        "photos/big.bin (3.0 MiB) does not fit the tenant's storage quota: "
        "8.0 MiB of 10.0 MiB used, 2.0 MiB of it by puts in progress"
    )
    with pytest.raises(QuotaExceededError, match=r"^photos/big.bin \(more than 5.0 KiB\) does"):
        check_put("photos/big.bin", 5 * KiB, 4 * KiB, Usage(), so_far=True)


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValidationError):
        Usage(stored=-1)
    with pytest.raises(ValidationError):
        check_put("b/x", -1, None, Usage())


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (20 * MiB, "20.0 MiB"),
        (3 * 1024 * MiB, "3.0 GiB"),
        (5 * 1024**4, "5.0 TiB"),
        (2048 * 1024**4, "2048.0 TiB"),
    ],
)
def test_sizes_are_shown_in_binary_units(size: int, shown: str) -> None:
    assert show_size(size) == shown
