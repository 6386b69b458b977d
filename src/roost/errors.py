"""The one error tree of Roost.

Every failure a person can see is one of these. Foreign exceptions (httpx, sqlite,
cryptography, gmqtt) are translated at the boundary with ``raise ... from err``; the CLI
prints ``str(error)`` as one line and exits non-zero, the API maps ``status`` to HTTP.

::

    RoostError
    ├── ConfigError              bad settings, missing client config
    ├── WireError                a malformed or oversized hub⇄agent message
    ├── PKIError                 certificates, keys, CSRs
    │   └── FingerprintMismatchError   the hub is not the one the token pinned
    ├── TokenError               join tokens and API tokens
    │   ├── TokenInvalidError    unknown, malformed or wrong secret
    │   ├── TokenExpiredError
    │   └── TokenUsedUpError
    ├── AuthError                no or bad credentials (401)
    ├── ForbiddenError           credentials fine, action not allowed (403)
    ├── NotFoundError            a device, command, tenant ... that is not there (404)
    ├── ConflictError            a name already taken (409)
    │   └── RepairBusyError      another hub holds an object's repair lease
    ├── ValidationError          bad input from a person (400/422)
    │   └── EventRefusedError    an app's event the device's agent did not take (names why;
    │                            ``retry_after`` when sending it again later can work)
    ├── HubError                 the hub answered with an error (client side)
    │   └── HubUnreachableError  no answer at all
    ├── BrokerError              the MQTT broker could not be started or reached
    ├── CommandError             a device command failed or timed out
    │   └── CommandTimeoutError
    ├── BundleError              an app manifest or bundle that is refused (names the field
    │                            or the member at fault)
    ├── CatalogError             the hub's signed catalog (TUF repository) cannot do it
    ├── UpdateError              fetching signed metadata or targets failed on a device
    │   └── UpdateRefusedError   verification refused them: tampered, rolled back,
    │                            expired, signed by an unknown key
    ├── AppError                 an app could not be started or supervised on a device
    ├── RolloutError             a rollout halted or was aborted (``roost deploy --wait``)
    ├── RuleError                a rules file that is refused: each problem named by its
    │                            path and position (``rules[0].actions[1].kind``)
    ├── DeliveryError            one try at delivering a rule's action failed (the outbox
    │                            retries it, or keeps it as a dead letter when ``permanent``)
    ├── FunctionError            a function's invocation failed: its error, its time or
    │                            memory limit (the invocation is recorded all the same)
    └── StorageError             objects stored across the devices
        ├── StorageBackendError  the erasure-coding library or its ISA-L backend is missing
        │                        (names the package to install)
        ├── ManifestError        a malformed manifest, or one whose root hash does not match
        ├── ShareCorruptError    a share whose BLAKE3 hash is not the manifest's (names it)
        ├── NotEnoughSharesError fewer than k good shares of a segment (names the missing)
        ├── DecryptionError      verified shares that do not open with the data key
        ├── PlacementError       too few devices for the code, or a code that cannot fit
        └── QuotaExceededError   a put that would take the tenant past its storage quota
                                 (413; names the object, its size, the usage and quota)
"""

from __future__ import annotations


class RoostError(Exception):
    """Base of every Roost error; ``status`` is the HTTP status the API answers with."""

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(RoostError):
    status = 400


class WireError(RoostError):
    status = 400


class PKIError(RoostError):
    status = 400


class FingerprintMismatchError(PKIError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(
            f"the hub's CA fingerprint {actual[:16]}… does not match the token's "
            f"{expected[:16]}…; refusing to trust it"
        )
        self.expected = expected
        self.actual = actual


class TokenError(RoostError):
    status = 401


class TokenInvalidError(TokenError):
    """Unknown, malformed, or the wrong secret."""


class TokenExpiredError(TokenError):
    """Past its time to live."""


class TokenUsedUpError(TokenError):
    """Every use it had is taken."""


class AuthError(RoostError):
    status = 401


class ForbiddenError(RoostError):
    status = 403


class NotFoundError(RoostError):
    status = 404


class ConflictError(RoostError):
    status = 409


class RepairBusyError(ConflictError):
    """Another hub replica is repairing the object (it holds the object's repair lease)."""


class ValidationError(RoostError):
    status = 422


class EventRefusedError(ValidationError):
    """The agent did not take an app's event; ``retry_after`` (seconds) is set when the
    same event may be sent again later (a rate limit), ``None`` when it never will be."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HubError(RoostError):
    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class HubUnreachableError(HubError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the hub at {url}: {reason}", status=503)
        self.url = url


class BrokerError(RoostError):
    status = 503


class CommandError(RoostError):
    status = 502

    def __init__(self, message: str, device_id: str = "") -> None:
        super().__init__(message)
        self.device_id = device_id


class CommandTimeoutError(CommandError):
    status = 504


class BundleError(RoostError):
    status = 422


class CatalogError(RoostError):
    status = 409


class UpdateError(RoostError):
    status = 502


class UpdateRefusedError(UpdateError):
    """Verification refused what the hub served: tampered, rolled back, expired, unknown key."""


class AppError(RoostError):
    status = 500


class RolloutError(RoostError):
    status = 409


class RuleError(RoostError):
    """A rules file that is refused; ``problems`` holds each problem's lines (with a caret)."""

    status = 422

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class FunctionError(RoostError):
    status = 502


class DeliveryError(RoostError):
    """A try at delivering an action failed. ``permanent``: another try cannot help (a 4xx
    answer, an unknown secret, a device of another tenant); ``retry_after``: the receiver
    asked for a pause of that many seconds."""

    status = 502

    def __init__(
        self, message: str, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


class StorageError(RoostError):
    status = 500


class StorageBackendError(StorageError):
    """pyeclib, liberasurecode or ISA-L cannot be loaded; the message names the package."""


class ManifestError(StorageError):
    """A manifest that is malformed, or whose root hash does not cover what it says."""


def _indices(indices: tuple[int, ...]) -> str:
    return ", ".join(str(i) for i in indices)


class ShareCorruptError(StorageError):
    status = 502

    def __init__(self, segment: int, index: int, reason: str = "") -> None:
        why = reason or "its BLAKE3 hash does not match the manifest"
        super().__init__(f"share {index} of segment {segment} is corrupt: {why}")
        self.segment = segment
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[int, int, str]]:  # across the codec's processes
        return type(self), (self.segment, self.index, self.reason)


class NotEnoughSharesError(StorageError):
    status = 503

    def __init__(
        self,
        segment: int,
        k: int,
        have: tuple[int, ...],
        missing: tuple[int, ...],
        corrupt: tuple[int, ...] = (),
    ) -> None:
        text = f"segment {segment} has {len(have)} good share{'' if len(have) == 1 else 's'}"
        text += f" of the {k} it needs"
        if missing:
            text += f"; missing share{'s' if len(missing) > 1 else ''} {_indices(missing)}"
        if corrupt:
            text += f"; corrupt share{'s' if len(corrupt) > 1 else ''} {_indices(corrupt)}"
        super().__init__(text)
        self.segment = segment
        self.k = k
        self.have = have
        self.missing = missing
        self.corrupt = corrupt

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), (self.segment, self.k, self.have, self.missing, self.corrupt)


class DecryptionError(StorageError):
    def __init__(self, segment: int) -> None:
        super().__init__(
            f"segment {segment} does not open with this data key: the key belongs to "
            "another object, or the manifest and its shares were altered together"
        )
        self.segment = segment

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return type(self), (self.segment,)


class PlacementError(StorageError):
    status = 507


class QuotaExceededError(StorageError):
    """A put refused because the tenant's objects would pass its storage quota: 413, the
    request's content is more than the hub will take for this tenant."""

    status = 413

    def __init__(self, message: str, size: int, used: int, quota: int) -> None:
        super().__init__(message)
        self.size = size
        self.used = used
        self.quota = quota
