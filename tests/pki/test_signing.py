"""Device-signed HTTPS requests: what verifies and every way it must not."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from roost.errors import AuthError
from roost.pki import generate_key
from roost.pki.signing import DEVICE_HEADER, SIGNATURE_HEADER, TIME_HEADER, sign, verify

KEY = generate_key()
OTHER_KEY = generate_key()
DEVICE = "d" + "a" * 20
NOW = 1_900_000_000.7
SKEW = 300
METHOD, TARGET, BODY = "POST", "/api/v1/device/renew?full=1", b'{"csr": "..."}'


def signed(**changes: Any) -> dict[str, str]:
    request: dict[str, Any] = {
        "key": KEY,
        "device_id": DEVICE,
        "method": METHOD,
        "target": TARGET,
        "body": BODY,
        "now": NOW,
    }
    return sign(**(request | changes))


def check(headers: dict[str, str], **changes: Any) -> None:
    request: dict[str, Any] = {
        "public_key": KEY.public_key(),
        "headers": headers,
        "method": METHOD,
        "target": TARGET,
        "body": BODY,
        "now": NOW,
        "max_skew_s": SKEW,
    }
    verify(**(request | changes))


def test_headers() -> None:
    headers = signed()
    assert set(headers) == {DEVICE_HEADER, TIME_HEADER, SIGNATURE_HEADER}
    assert headers[DEVICE_HEADER] == DEVICE
    assert headers[TIME_HEADER] == str(int(NOW))
    base64.b64decode(headers[SIGNATURE_HEADER], validate=True)


def test_signed_request_verifies() -> None:
    check(signed())


def test_method_case_does_not_matter() -> None:
    check(signed(method="post"), method="POST")
    check(signed(method="POST"), method="post")


def test_empty_body_verifies() -> None:
    check(signed(method="GET", body=b""), method="GET", body=b"")


@pytest.mark.parametrize(
    ("what", "changes"),
    [
        ("body", {"body": BODY + b" "}),
        ("empty body", {"body": b""}),
        ("method", {"method": "PUT"}),
        ("path", {"target": "/api/v1/device/revoke?full=1"}),
        ("query", {"target": "/api/v1/device/renew?full=0"}),
        ("no query", {"target": "/api/v1/device/renew"}),
        ("other key", {"public_key": OTHER_KEY.public_key()}),
    ],
)
def test_tampered_request_is_refused(what: str, changes: dict[str, Any]) -> None:
    with pytest.raises(AuthError, match="does not verify"):
        check(signed(), **changes)


def _bump_time(headers: dict[str, str]) -> dict[str, str]:
    return headers | {TIME_HEADER: str(int(headers[TIME_HEADER]) + 1)}


def _swap_signature(headers: dict[str, str]) -> dict[str, str]:
    return headers | {SIGNATURE_HEADER: signed(body=b"other")[SIGNATURE_HEADER]}


def _garbage_signature(headers: dict[str, str]) -> dict[str, str]:
    return headers | {SIGNATURE_HEADER: base64.b64encode(b"\x30\x06garbage").decode()}


def _empty_signature(headers: dict[str, str]) -> dict[str, str]:
    return headers | {SIGNATURE_HEADER: ""}


@pytest.mark.parametrize(
    "tamper", [_bump_time, _swap_signature, _garbage_signature, _empty_signature]
)
def test_tampered_headers_are_refused(tamper: Callable[[dict[str, str]], dict[str, str]]) -> None:
    with pytest.raises(AuthError, match="does not verify"):
        check(tamper(signed()))


def test_signature_by_another_key_is_refused() -> None:
    with pytest.raises(AuthError):
        check(signed(key=OTHER_KEY))


@pytest.mark.parametrize(
    ("signed_at", "ok"),
    [
        (NOW, True),
        (NOW - SKEW + 1, True),
        (NOW + SKEW - 1, True),
        (NOW - SKEW - 1, False),  # stale
        (NOW - 24 * 3600, False),
        (NOW + SKEW + 1, False),  # from the future
        (0, False),
    ],
)
def test_freshness(signed_at: float, ok: bool) -> None:
    headers = signed(now=signed_at)
    if ok:
        check(headers)
    else:
        with pytest.raises(AuthError, match="too far"):
            check(headers)


def test_a_replayed_old_request_is_refused() -> None:
    headers = signed()
    check(headers)
    with pytest.raises(AuthError, match="too far"):
        check(headers, now=NOW + SKEW + 2)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({DEVICE_HEADER: DEVICE, SIGNATURE_HEADER: "AAAA"}, id="no-time"),
        pytest.param({DEVICE_HEADER: DEVICE, TIME_HEADER: str(int(NOW))}, id="no-signature"),
        pytest.param(
            {TIME_HEADER: "soon", SIGNATURE_HEADER: "AAAA"},
            id="time-not-a-number",
        ),
        pytest.param({TIME_HEADER: "1.5e9", SIGNATURE_HEADER: "AAAA"}, id="time-not-an-int"),
        pytest.param(
            {TIME_HEADER: str(int(NOW)), SIGNATURE_HEADER: "not base64!"},
            id="signature-not-base64",
        ),
    ],
)
def test_malformed_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(AuthError, match="missing or malformed"):
        check(headers)


def test_auth_errors_answer_401() -> None:
    with pytest.raises(AuthError) as caught:
        check({})
    assert caught.value.status == 401
