"""The codec through a pool of worker processes or through threads: the same bytes as in
this process, the same errors, several streams at once on one pool, caller's buffers
reused at once without harm, and nothing left in /dev/shm after."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from roost.errors import NotEnoughSharesError, StorageError
from roost.storage import (
    CodecParams,
    CodecPool,
    CodecThreads,
    Decoder,
    EncodedSegment,
    Encoder,
    Share,
)

SEGMENT = 64 << 10


@pytest.fixture(scope="module")
def processes() -> Iterator[CodecPool]:
    with CodecPool(2) as started:
        yield started


@pytest.fixture(scope="module")
def threads() -> Iterator[CodecThreads]:
    with CodecThreads(2) as started:
        yield started


@pytest.fixture(params=["processes", "threads"])
def pool(request: pytest.FixtureRequest) -> CodecPool | CodecThreads:
    started: CodecPool | CodecThreads = request.getfixturevalue(request.param)
    return started


def encode(
    data: bytes, params: CodecParams, pool: CodecPool | CodecThreads | None
) -> tuple[Encoder, list[EncodedSegment]]:
    encoder = Encoder(params, pool)
    segments = []
    for start in range(0, len(data), 10_000):
        segments += encoder.feed(data[start : start + 10_000])
    return encoder, segments + encoder.finish()


def decode(
    encoder: Encoder, segments: list[EncodedSegment], pool: CodecPool | CodecThreads | None
) -> bytes:
    decoder = Decoder(encoder.manifest, encoder.data_key, pool)
    k = encoder.manifest.k
    out = []
    for segment in segments:
        out += decoder.feed(segment.segment, segment.shares[-k:])
    return b"".join(d.plaintext for d in out + decoder.finish())


def decode_all(decoder: Decoder, batches: Sequence[Sequence[Share]]) -> None:
    for number, shares in enumerate(batches):
        decoder.feed(number, shares)
    decoder.finish()


@pytest.mark.parametrize("size", [0, 1000, SEGMENT, 5 * SEGMENT + 17])
def test_a_pool_codes_what_this_process_codes(pool: CodecPool | CodecThreads, size: int) -> None:
    data = os.urandom(size)
    params = CodecParams(4, 8, segment_size=SEGMENT, replica_below=4096)
    encoder, segments = encode(data, params, pool)
    assert len(segments) == encoder.manifest.segment_count
    assert decode(encoder, segments, None) == data  # pooled in, decoded here
    assert decode(encoder, segments, pool) == data
    for segment in segments:
        for share in segment.shares:
            assert (
                encoder.manifest.share_hash(segment.segment, share.index)
                == (segment.entry.hashes[share.index])
            )


def test_errors_come_back_from_the_workers_whole(pool: CodecPool | CodecThreads) -> None:
    data = os.urandom(3 * SEGMENT)
    encoder, segments = encode(data, CodecParams(3, 6, segment_size=SEGMENT), pool)
    bad = Share(1, 0, b"\x00" + segments[1].shares[0].data[1:])
    batches = [
        segments[0].shares[:3],
        (bad, *segments[1].shares[1:4]),
        (segments[2].shares[5], Share(2, 4, segments[1].shares[4].data)),
    ]
    # The error comes from whichever call collects segment 2: its feed or the finish.
    with pytest.raises(NotEnoughSharesError) as caught:
        decode_all(Decoder(encoder.manifest, encoder.data_key, pool), batches)
    error = caught.value
    assert (error.segment, error.have, error.corrupt) == (2, (5,), (4,))
    assert error.missing == (0, 1, 2, 3)
    assert str(error) == (
        "segment 2 has 1 good share of the 3 it needs; missing shares 0, 1, 2, 3; corrupt share 4"
    )


def test_a_corrupt_share_is_named_by_a_worker(pool: CodecPool | CodecThreads) -> None:
    data = os.urandom(2 * SEGMENT)
    encoder, segments = encode(data, CodecParams(2, 4, segment_size=SEGMENT), pool)
    decoder = Decoder(encoder.manifest, encoder.data_key, pool)
    shares = list(segments[0].shares)
    shares[2] = Share(0, 2, shares[2].data[:-1] + bytes([shares[2].data[-1] ^ 1]))
    out = decoder.feed(0, [shares[2], shares[3], shares[0]])
    out += decoder.feed(1, segments[1].shares[:2]) + decoder.finish()
    assert [d.corrupt for d in out] == [(2,), ()]
    assert b"".join(d.plaintext for d in out) == data


def test_streams_interleaved_on_one_pool_keep_their_own_results(
    pool: CodecPool | CodecThreads,
) -> None:
    small = CodecParams(2, 4, segment_size=4096)
    big = CodecParams(8, 16, segment_size=SEGMENT)
    a, b = Encoder(small, pool), Encoder(big, pool)
    one, two = os.urandom(20 * 4096 + 3), os.urandom(6 * SEGMENT)
    out_a: list[EncodedSegment] = []
    out_b: list[EncodedSegment] = []
    for i in range(20):
        out_a += a.feed(one[i * 4096 : (i + 1) * 4096])
        out_b += b.feed(two[i * len(two) // 20 : (i + 1) * len(two) // 20])
    out_a += a.feed(one[20 * 4096 :]) + a.finish()
    out_b += b.finish()
    assert decode(a, out_a, pool) == one
    assert decode(b, out_b, pool) == two


def test_a_closed_pool_frees_its_buffers_and_refuses_work() -> None:
    pool = CodecPool(1)
    params = CodecParams(2, 4, segment_size=SEGMENT)
    encoder, segments = encode(os.urandom(3 * SEGMENT), params, pool)
    assert decode(encoder, segments, pool)
    names = [shm.name for slot in pool._slots if slot for shm in (slot.inbox, slot.outbox)]
    assert names
    pool.close()
    assert not [name for name in names if Path("/dev/shm", name.lstrip("/")).exists()]
    with pytest.raises(StorageError, match="closed"):
        Encoder(CodecParams(2, 4), pool).finish()


@pytest.mark.parametrize("chunk", [1000, SEGMENT - 1, SEGMENT, 3 * SEGMENT + 5])
def test_a_buffer_the_caller_reuses_at_once_is_coded_as_it_was(
    threads: CodecThreads, chunk: int
) -> None:
    # Threads seal segments after feed returns: what they read must not be the caller's.
    data = os.urandom(7 * SEGMENT + 123)
    params = CodecParams(3, 5, segment_size=SEGMENT)
    for mutable in (bytearray, lambda b: memoryview(bytearray(b))):
        encoder = Encoder(params, threads)
        buffer = mutable(chunk)
        segments = []
        for start in range(0, len(data), chunk):
            part = data[start : start + chunk]
            buffer[: len(part)] = part
            segments += encoder.feed(buffer[: len(part)])
            buffer[:] = bytes(len(buffer))  # the caller reads the next chunk into it
        segments += encoder.finish()
        assert decode(encoder, segments, None) == data


def test_views_of_bytes_are_coded_in_place_and_kept_whole(threads: CodecThreads) -> None:
    data = os.urandom(5 * SEGMENT + 9)
    view = memoryview(data)
    params = CodecParams(2, 4, segment_size=SEGMENT)
    cuts = [0, 10, SEGMENT, SEGMENT + 1, 3 * SEGMENT - 7, 4 * SEGMENT, len(data)]
    for pool in (None, threads):
        encoder = Encoder(params, pool)
        segments = []
        for start, end in itertools.pairwise(cuts):
            segments += encoder.feed(view[start:end])
        segments += encoder.finish()
        assert encoder.manifest.object_size == len(data)
        assert decode(encoder, segments, threads) == data


def test_closed_threads_refuse_work() -> None:
    threads = CodecThreads(1)
    encoder, segments = encode(
        os.urandom(2 * SEGMENT), CodecParams(2, 4, segment_size=SEGMENT), threads
    )
    assert decode(encoder, segments, threads)
    threads.close()
    with pytest.raises(StorageError, match="codec threads are closed"):
        Encoder(CodecParams(2, 4), threads).finish()
