"""Join tokens and secrets: round trips, damaged and foreign tokens, secret hashing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roost.errors import TokenError, TokenInvalidError
from roost.pki import JoinToken, hash_secret, new_api_token, new_secret, secret_matches
from roost.pki.tokens import API_PREFIX, JOIN_PREFIX

FINGERPRINT = hashlib.sha256(b"ca").hexdigest()
TOKEN = JoinToken("https://hub.local:7443", FINGERPRINT, "tok123", "s3cr3t-value")
URLSAFE = re.compile(r"^[A-Za-z0-9_-]*$")


def wrap(body: object) -> str:
    raw = json.dumps(body).encode()
    return JOIN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_encode_looks_like_a_join_token() -> None:
    text = TOKEN.encode()
    assert text.startswith("rjt1_")
    assert URLSAFE.match(text[len(JOIN_PREFIX) :])  # copy-paste safe: no "=", "+" or "/"


def test_round_trip() -> None:
    assert JoinToken.decode(TOKEN.encode()) == TOKEN


@pytest.mark.parametrize("around", [" ", "\n", "\t", "  \r\n"])
def test_whitespace_around_is_forgiven(around: str) -> None:
    assert JoinToken.decode(around + TOKEN.encode() + around) == TOKEN


@given(
    host=st.text(min_size=1),
    fingerprint=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    token_id=st.text(),
    secret=st.text(),
)
def test_any_token_round_trips(host: str, fingerprint: str, token_id: str, secret: str) -> None:
    token = JoinToken("https://" + host, fingerprint, token_id, secret)
    encoded = token.encode()
    assert URLSAFE.match(encoded[len(JOIN_PREFIX) :])
    assert JoinToken.decode(encoded) == token


def test_secret_stays_out_of_repr() -> None:
    assert "s3cr3t-value" not in repr(TOKEN)
    assert "tok123" in repr(TOKEN)


DAMAGED = [
    pytest.param("rjt1_", id="prefix-only"),
    pytest.param(TOKEN.encode()[:-10], id="truncated"),
    pytest.param(TOKEN.encode()[:20], id="mostly-gone"),
    pytest.param("rjt1_!!!!", id="not-base64"),
    pytest.param("rjt1_" + base64.urlsafe_b64encode(b"hello").decode(), id="not-json"),
    pytest.param("rjt1_" + base64.urlsafe_b64encode(b"\xff\xfe\xfa").decode(), id="not-utf8"),
    pytest.param(wrap(["https://hub", FINGERPRINT, "i", "s"]), id="json-list"),
    pytest.param(wrap("https://hub"), id="json-string"),
    pytest.param(wrap(None), id="json-null"),
    pytest.param(wrap({"u": "https://hub", "f": FINGERPRINT, "i": "i"}), id="no-secret"),
    pytest.param(wrap({"u": "https://hub", "f": FINGERPRINT, "s": "s"}), id="no-id"),
    pytest.param(wrap({"f": FINGERPRINT, "i": "i", "s": "s"}), id="no-url"),
    pytest.param(wrap({"u": "https://hub", "i": "i", "s": "s"}), id="no-fingerprint"),
    pytest.param(wrap({"u": "http://hub", "f": FINGERPRINT, "i": "i", "s": "s"}), id="plain-http"),
    pytest.param(wrap({"u": "hub:7443", "f": FINGERPRINT, "i": "i", "s": "s"}), id="no-scheme"),
    pytest.param(
        wrap({"u": "https://h", "f": FINGERPRINT[:-1], "i": "i", "s": "s"}), id="short-fp"
    ),
    pytest.param(
        wrap({"u": "https://h", "f": FINGERPRINT + "0", "i": "i", "s": "s"}), id="long-fp"
    ),
]

FOREIGN = [
    pytest.param("", id="empty"),
    pytest.param(new_api_token(), id="api-token"),
    pytest.param("rjt2_" + TOKEN.encode()[len(JOIN_PREFIX) :], id="future-version"),
    pytest.param("RJT1_" + TOKEN.encode()[len(JOIN_PREFIX) :], id="prefix-case"),
    pytest.param(TOKEN.encode()[len(JOIN_PREFIX) :], id="no-prefix"),
    pytest.param("eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo", id="jwt"),
    pytest.param(FINGERPRINT, id="a-fingerprint"),
]


@pytest.mark.parametrize("text", DAMAGED)
def test_damaged_tokens_are_invalid(text: str) -> None:
    with pytest.raises(TokenInvalidError, match="damaged"):
        JoinToken.decode(text)


@pytest.mark.parametrize("text", FOREIGN)
def test_foreign_tokens_are_invalid(text: str) -> None:
    with pytest.raises(TokenInvalidError, match="not a Roost join token"):
        JoinToken.decode(text)


def test_token_errors_are_token_errors() -> None:
    # The API maps the family to 401.
    with pytest.raises(TokenError) as caught:
        JoinToken.decode("nope")
    assert caught.value.status == 401


@given(st.text())
def test_decode_is_total(text: str) -> None:
    """Any text is either a token (that encodes back to a token equal to it) or invalid."""
    try:
        token = JoinToken.decode(text)
    except TokenInvalidError:
        return
    assert JoinToken.decode(token.encode()) == token


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=200))
def test_decode_of_base64ish_bodies_is_total(body: str) -> None:
    with contextlib.suppress(TokenInvalidError):
        JoinToken.decode(JOIN_PREFIX + body)


# --- secrets --------------------------------------------------------------------------


def test_new_secrets_are_long_random_and_urlsafe() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert URLSAFE.match(secret)
        assert len(secret) >= 43  # 32 random bytes


def test_api_tokens() -> None:
    token = new_api_token()
    assert token.startswith(API_PREFIX)
    assert token != new_api_token()
    assert len(token) >= len(API_PREFIX) + 43


def test_hash_secret_is_hex_sha256() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()
    assert hash_secret("abc") == hash_secret("abc")
    assert hash_secret("abc") != hash_secret("abd")
    assert hash_secret("é") == hashlib.sha256("é".encode()).hexdigest()
    secret = new_secret()
    assert secret not in hash_secret(secret)


@given(secret=st.text(), other=st.text())
def test_secret_matches_only_its_own_hash(secret: str, other: str) -> None:
    stored = hash_secret(secret)
    assert secret_matches(secret, stored)
    assert secret_matches(other, stored) == (other == secret)


@pytest.mark.parametrize("stored", ["", "0" * 64, "not-hex", hash_secret("x").upper()])
def test_secret_does_not_match_a_foreign_hash(stored: str) -> None:
    assert not secret_matches("x", stored)
