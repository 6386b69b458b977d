"""A tenant's storage quota: which quota holds, and whether a put fits under it.

Pure: the caller reads the quota row and the tenant's usage from the database (under
the tenant's lock, ``usage.lock``) and passes them in; nothing here reads a database or
a clock.

What counts is the *logical* size of objects (the bytes a person put), not the raw bytes
of their shares on devices: a tenant does not pay for the code the hub chose. Objects
still being put count with the size they declared (or have spooled so far), so two puts
running at once cannot both fit into the same room.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.errors import QuotaExceededError, ValidationError


@dataclass(frozen=True)
class Usage:
    """A tenant's bytes that count against its quota: complete objects, and the puts in
    progress (their reservations)."""

    stored: int = 0
    pending: int = 0

    def __post_init__(self) -> None:
        if self.stored < 0 or self.pending < 0:
            raise ValidationError(f"usage cannot be negative: {self!r}")

    @property
    def total(self) -> int:
        return self.stored + self.pending


@dataclass(frozen=True)
class Override:
    """The owner's quota for one tenant: ``quota_bytes`` None means no limit."""

    quota_bytes: int | None


def effective_quota(default_bytes: int, override: Override | None) -> int | None:
    """The quota that holds: the tenant's own if the owner set one, else the hub's default
    (0 there means none); None: no limit."""
    if override is not None:
        return override.quota_bytes
    return default_bytes or None


def room(quota: int | None, usage: Usage) -> int | None:
    """Bytes a new put may still take (0 when the quota was lowered below the usage: only
    empty objects); None: no limit."""
    if quota is None:
        return None
    return max(0, quota - usage.total)


def check_put(
    what: str, size: int, quota: int | None, usage: Usage, *, so_far: bool = False
) -> None:
    """Refuse a put of ``size`` bytes that would take the tenant past its quota;
    ``so_far``: the put is still arriving and has ``size`` bytes up to now."""
    if size < 0:
        raise ValidationError(f"{what}: a size cannot be negative ({size})")
    left = room(quota, usage)
    if left is None or size <= left:
        return
    assert quota is not None  # a room means a quota
    pending = f", {show_size(usage.pending)} of it by puts in progress" if usage.pending else ""
    more = "more than " if so_far else ""
    raise QuotaExceededError(
        f"{what} ({more}{show_size(size)}) does not fit the tenant's storage quota: "
        f"{show_size(usage.total)} of {show_size(quota)} used{pending}",
        size=size,
        used=usage.total,
        quota=quota,
    )


def show_size(size: int) -> str:
    """Bytes for a person: ``512 B``, ``1.5 KiB``, ``20.0 MiB``, ``3.2 GiB``, ``1.1 TiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
