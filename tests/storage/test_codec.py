"""The codec: any k of n shares rebuild an object byte for byte, fewer do not, a flipped
bit is caught by its share's hash, and repair rebuilds shares the manifest already knows.

Segments are 4 KiB here (the smallest allowed) so that a few KiB of data make objects of
several segments, and the replication threshold is 1 KiB so both codecs are exercised.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyeclib.ec_iface import ECDriverError

from roost.errors import (
    DecryptionError,
    ManifestError,
    NotEnoughSharesError,
    ShareCorruptError,
    StorageError,
    ValidationError,
)
from roost.storage import (
    CodecParams,
    Decoder,
    EncodedSegment,
    Encoder,
    Manifest,
    Share,
    rebuild_shares,
    verify_share,
)
from roost.storage.codec import REPLICA_BELOW, nonce
from roost.storage.erasure import CODECS, EC_TYPE, driver
from roost.storage.manifest import REPLICA

SEGMENT = 4096
CODES = [(1, 3), (2, 4), (3, 6), (4, 8), (6, 12), (8, 16), (5, 7), (10, 12)]

codes = st.sampled_from(CODES)
erasure_codes = st.sampled_from(CODECS)
# Sizes drawn evenly up to 3 segments and a bit (plain st.binary stays mostly small).
objects = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda size, seed: random.Random(seed).randbytes(size),
        st.integers(0, 3 * SEGMENT + 100),
        st.integers(),
    ),
)


def encode(
    data: bytes, k: int, n: int, chunks: list[int] | None = None, codec: str = EC_TYPE
) -> tuple[Encoder, list[EncodedSegment]]:
    params = CodecParams(k, n, segment_size=SEGMENT, replica_below=1024, codec=codec)
    encoder = Encoder(params)
    segments: list[EncodedSegment] = []
    start = 0
    for size in chunks or [len(data)]:
        segments += encoder.feed(data[start : start + size])
        start += size
    segments += encoder.feed(data[start:])
    segments += encoder.finish()
    return encoder, segments


def decode(encoder: Encoder, chosen: list[list[Share]]) -> bytes:
    decoder = Decoder(encoder.manifest, encoder.data_key)
    out = []
    for number, shares in enumerate(chosen):
        out += decoder.feed(number, shares)
    out += decoder.finish()
    assert all(not d.corrupt for d in out)
    return b"".join(d.plaintext for d in out)


def flip(share: Share, bit: int) -> Share:
    data = bytearray(share.data)
    data[bit // 8 % len(data)] ^= 1 << (bit % 8)
    return Share(share.segment, share.index, bytes(data))


@settings(max_examples=200)
@given(objects, codes, erasure_codes, st.data())
def test_any_k_shares_rebuild_the_object(
    data: bytes, code: tuple[int, int], codec: str, draw: st.DataObject
) -> None:
    encoder, segments = encode(data, *code, codec=codec)
    manifest = encoder.manifest
    assert manifest.object_size == len(data)
    assert [s.segment for s in segments] == list(range(manifest.segment_count))
    chosen = []
    for segment in segments:
        assert [s.index for s in segment.shares] == list(range(manifest.n))
        indices = draw.draw(st.permutations(range(manifest.n)))[: manifest.k]
        chosen.append([segment.shares[i] for i in indices])
    assert decode(encoder, chosen) == data


@settings(max_examples=60)
@given(objects, codes, erasure_codes, st.data())
def test_k_minus_one_shares_do_not(
    data: bytes, code: tuple[int, int], codec: str, draw: st.DataObject
) -> None:
    encoder, segments = encode(data, *code, codec=codec)
    manifest = encoder.manifest
    segment = segments[draw.draw(st.integers(0, len(segments) - 1))]
    indices = sorted(draw.draw(st.permutations(range(manifest.n)))[: manifest.k - 1])
    decoder = Decoder(manifest, encoder.data_key)
    for earlier in segments[: segment.segment]:
        decoder.feed(earlier.segment, earlier.shares)
    with pytest.raises(NotEnoughSharesError) as caught:
        decoder.feed(segment.segment, [segment.shares[i] for i in indices])
    error = caught.value
    assert (error.segment, error.have) == (segment.segment, tuple(indices))
    assert error.missing == tuple(i for i in range(manifest.n) if i not in indices)
    assert "\n" not in str(error)
    if manifest.codec in CODECS:
        # Not only our count: the erasure code itself cannot rebuild from k - 1 shares.
        with pytest.raises(ECDriverError):
            driver(manifest.k, manifest.n - manifest.k, codec).decode(
                [segment.shares[i].data for i in indices]
            )


@settings(max_examples=200)
@given(objects, codes, st.data())
def test_a_flipped_bit_in_any_share_is_caught(
    data: bytes, code: tuple[int, int], draw: st.DataObject
) -> None:
    encoder, segments = encode(data, *code)
    manifest = encoder.manifest
    segment = segments[draw.draw(st.integers(0, len(segments) - 1))]
    index = draw.draw(st.integers(0, manifest.n - 1))
    bad = flip(segment.shares[index], draw.draw(st.integers(min_value=0)))
    verify_share(manifest, segment.shares[index])
    with pytest.raises(ShareCorruptError) as caught:
        verify_share(manifest, bad)
    assert (caught.value.segment, caught.value.index) == (segment.segment, index)
    assert str(caught.value) == (
        f"share {index} of segment {segment.segment} is corrupt: "
        "its BLAKE3 hash does not match the manifest"
    )
    # Handed to the decoder first among k + 1 (or all n) shares: rejected, named, not used.
    others = [s for s in segment.shares if s.index != index][: manifest.k]
    decoder = Decoder(manifest, encoder.data_key)
    for earlier in segments[: segment.segment]:
        decoder.feed(earlier.segment, earlier.shares)
    decoded = decoder.feed(segment.segment, [bad, *others])
    decoded += (
        decoder.feed(segment.segment + 1, segments[segment.segment + 1].shares)
        if (segment.segment + 1 < len(segments))
        else []
    )
    found = next(d for d in decoded if d.segment == segment.segment)
    assert found.corrupt == (index,)
    start = segment.segment * SEGMENT
    assert found.plaintext == data[start : start + SEGMENT]
    # With only k - 1 good shares beside it, the error names it as corrupt.
    decoder = Decoder(manifest, encoder.data_key)
    for earlier in segments[: segment.segment]:
        decoder.feed(earlier.segment, earlier.shares)
    with pytest.raises(NotEnoughSharesError) as short:
        decoder.feed(segment.segment, [bad, *others[: manifest.k - 1]])
    assert short.value.corrupt == (index,)
    assert f"corrupt share {index}" in str(short.value)


@settings(max_examples=40)
@given(objects, codes, st.lists(st.integers(0, SEGMENT + 7), max_size=6))
def test_how_the_stream_is_chunked_changes_nothing_but_the_key(
    data: bytes, code: tuple[int, int], chunks: list[int]
) -> None:
    whole, whole_segments = encode(data, *code)
    parts, parts_segments = encode(data, *code, chunks=chunks)
    a, b = whole.manifest, parts.manifest
    assert (a.codec, a.k, a.n, a.object_size, a.segment_count) == (
        b.codec,
        b.k,
        b.n,
        b.object_size,
        b.segment_count,
    )
    assert whole.data_key != parts.data_key
    assert decode(parts, [list(s.shares[-b.k :]) for s in parts_segments]) == data
    assert len(whole_segments) == len(parts_segments)


def strided(data: bytes) -> memoryview:
    """A view of every other byte of a bytes object: ``data``, not contiguous."""
    doubled = bytearray(2 * len(data))
    doubled[::2] = data
    return memoryview(bytes(doubled))[::2]


BUFFERS = [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), strided]


@settings(max_examples=60)
@given(
    objects, codes, st.lists(st.tuples(st.integers(0, 2 * SEGMENT + 7), st.sampled_from(BUFFERS)))
)
@example(bytes(range(256)) * 40, (2, 4), [(2 * SEGMENT + 7, strided)])  # a segment inside it
def test_any_kind_of_buffer_in_any_chunks_decodes_to_the_object(
    data: bytes, code: tuple[int, int], chunks: list[tuple[int, Any]]
) -> None:
    # Segments are cut from views of bytes chunks, or gathered from several, or copied
    # from buffers that could change: the bytes that come back are the same.
    encoder = Encoder(CodecParams(*code, segment_size=SEGMENT, replica_below=1024))
    segments: list[EncodedSegment] = []
    start = 0
    for size, kind in [*chunks, (len(data), bytes)]:
        segments += encoder.feed(kind(data[start : start + size]))
        start += size
    segments += encoder.finish()
    assert encoder.manifest.object_size == len(data)
    assert decode(encoder, [list(s.shares[: encoder.manifest.k]) for s in segments]) == data


@settings(max_examples=40)
@given(objects, codes)
def test_the_manifest_round_trips_and_refuses_tampering(data: bytes, code: tuple[int, int]) -> None:
    manifest = encode(data, *code)[0].manifest
    text = manifest.to_json()
    assert Manifest.from_json(text) == manifest
    assert Manifest.from_json(text.encode()).to_json() == text
    hashes = manifest.segments[0].hashes
    tampered = text.replace(hashes[0].hex(), hashes[0][::-1].hex(), 1)
    if tampered != text:
        with pytest.raises(ManifestError, match="root hash does not match"):
            Manifest.from_json(tampered)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"format": 2, "cipher": "aes-256-gcm", "hash": "blake3"}',
    ],
)
def test_a_malformed_manifest_is_one_clear_error(text: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_json(text)
    assert "\n" not in str(caught.value)


def test_the_manifest_checks_its_shape() -> None:
    manifest = encode(b"x" * (2 * SEGMENT), 4, 8)[0].manifest
    changes: list[tuple[dict[str, Any], str]] = [
        ({"object_size": 5 * SEGMENT}, "segments cannot hold"),
        ({"k": 8}, "impossible code"),
        ({"codec": "zfec"}, "unknown codec"),
        ({"root": b"short"}, "not 32 bytes"),
        ({"segments": (manifest.segments[0], manifest.segments[0])[:1]}, "segments cannot"),
    ]
    for change, match in changes:
        with pytest.raises(ManifestError, match=match):
            dataclasses.replace(manifest, **change)


@settings(max_examples=60)
@given(objects, codes, erasure_codes, st.data())
def test_repair_rebuilds_shares_byte_for_byte(
    data: bytes, code: tuple[int, int], codec: str, draw: st.DataObject
) -> None:
    encoder, segments = encode(data, *code, codec=codec)
    manifest = encoder.manifest
    segment = segments[-1]
    order = draw.draw(st.permutations(range(manifest.n)))
    have, lost = order[: manifest.k], sorted(order[manifest.k :])
    rebuilt = rebuild_shares(manifest, segment.segment, [segment.shares[i] for i in have], lost)
    assert [s.index for s in rebuilt] == lost
    assert [s.data for s in rebuilt] == [segment.shares[i].data for i in lost]


def test_small_objects_are_copies_and_big_ones_are_coded() -> None:
    params = CodecParams(4, 8)
    for size, codec, k, n in [
        (0, REPLICA, 1, 5),
        (REPLICA_BELOW - 1, REPLICA, 1, 5),
        (REPLICA_BELOW, EC_TYPE, 4, 8),
    ]:
        encoder = Encoder(params)
        segments = encoder.feed(b"\x00" * size) + encoder.finish()
        manifest = encoder.manifest
        assert (manifest.codec, manifest.k, manifest.n) == (codec, k, n)
        if codec == REPLICA:
            assert len({s.data for s in segments[0].shares}) == 1
    # A 1-of-n code is copies whatever the size.
    encoder = Encoder(CodecParams(1, 3, segment_size=SEGMENT))
    encoder.feed(b"y" * 3 * SEGMENT)
    encoder.finish()
    assert (encoder.manifest.codec, encoder.manifest.n, encoder.manifest.segment_count) == (
        REPLICA,
        3,
        3,
    )


def test_shares_hold_no_plaintext() -> None:
    secret = b"the known test object " * 2000
    _, segments = encode(secret, 4, 8)
    for segment in segments:
        for share in segment.shares:
            assert b"known test" not in share.data


def test_the_wrong_key_does_not_open_a_segment() -> None:
    encoder, segments = encode(b"z" * 5000, 2, 4)
    other = Encoder(CodecParams(2, 4)).data_key
    decoder = Decoder(encoder.manifest, other)
    with pytest.raises(DecryptionError, match="segment 0 does not open"):
        decoder.feed(0, segments[0].shares)


def test_a_segment_moved_to_another_position_does_not_open() -> None:
    # Two full segments: equal plaintext, different nonces, so their shares differ and
    # the hashes already tell them apart; the nonce alone also refuses the swap.
    encoder, segments = encode(b"q" * 2 * SEGMENT, 2, 4)
    assert nonce(0, False) != nonce(0, True) != nonce(1, True)
    assert segments[0].entry.hashes != segments[1].entry.hashes
    moved = [Share(0, s.index, s.data) for s in segments[1].shares]
    decoder = Decoder(encoder.manifest, encoder.data_key)
    with pytest.raises(NotEnoughSharesError) as caught:
        decoder.feed(0, moved)
    assert caught.value.corrupt == (0, 1, 2, 3)


def test_segments_go_in_order_and_all_of_them() -> None:
    encoder, segments = encode(b"r" * 3 * SEGMENT, 2, 4)
    decoder = Decoder(encoder.manifest, encoder.data_key)
    with pytest.raises(StorageError, match="out of order"):
        decoder.feed(1, segments[1].shares)
    decoder.feed(0, segments[0].shares)
    with pytest.raises(StorageError, match="only 1 of the object's 3 segments"):
        decoder.finish()


def test_an_encoder_is_used_once() -> None:
    encoder = Encoder(CodecParams(2, 4))
    with pytest.raises(StorageError, match="once the encoder is finished"):
        _ = encoder.manifest
    encoder.finish()
    with pytest.raises(StorageError, match="already encoded"):
        encoder.feed(b"more")


@pytest.mark.parametrize(
    ("k", "n", "segment_size", "match"),
    [
        (0, 3, SEGMENT, "impossible"),
        (3, 3, SEGMENT, "impossible"),
        (16, 33, SEGMENT, "impossible"),
        (2, 4, 100, "segment size"),
    ],
)
def test_impossible_params_are_refused(k: int, n: int, segment_size: int, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CodecParams(k, n, segment_size=segment_size)
    with pytest.raises(ValidationError, match="unknown erasure code 'zfec'"):
        CodecParams(2, 4, codec="zfec")
