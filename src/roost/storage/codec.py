"""The storage codec: an object in, sealed and erasure-coded shares out, and back.

Pure: no sockets, no files, no database, no clock. The only thing it takes from the
world is randomness for each object's data key. The data path (hub and agents) moves
the shares and keeps the manifest and the wrapped key; this module only transforms.

An object is cut into segments of ``segment_size`` bytes (1 MiB by default; the last
may be shorter, an empty object is one empty segment). Each segment is

1. sealed with AES-256-GCM under the object's own random 256-bit data key, with the
   nonce made from the segment's index and whether it is the last one (``nonce``);
2. split into n shares, any k of which rebuild it: pyeclib's ``isa_l_rs_vand_inv``
   (Reed-Solomon, MDS; ``isa_l_rs_cauchy`` on request), or, for a *replicated* object,
   n whole copies (k = 1);
3. hashed, share by share, with BLAKE3; the hashes go into the manifest.

Nonces never repeat under a key. The key is drawn fresh for every ``Encoder`` (every
put, a retried put included) and never leaves the encoder except to be wrapped, and
within an object each (index, last) pair is sealed exactly once, so every nonce is used
once per key. Repair rebuilds shares from shares (``rebuild_shares``) and never seals
again; anything that must re-encrypt takes a new key. Putting the last-segment flag in
the nonce (the STREAM construction) means a segment cut off the end, or moved, no longer
opens. The 88-bit index cannot wrap.

Small objects are replicated: an object below ``replica_below`` (64 KiB) that fits in
one segment, or any object whose code has k = 1, is stored as n − k + 1 whole copies of
its sealed segment, a "1-of-r" code (codec ``replica``). It survives as many lost
devices as the k-of-n code would, a get needs one device instead of k, and no fragment
headers pad a few bytes.

``Encoder`` and ``Decoder`` are streaming and push-driven: feed chunks or segments,
get back what is ready, in order. With ``CodecThreads`` the segments are sealed and
opened in threads of this process, with a ``CodecPool`` in worker processes.

The stream is not copied where it need not be: a segment that lies whole in a chunk of
``bytes`` is sealed from a view of that chunk, which the encoder may hold until the next
``feed`` or ``finish``; only a segment that spans chunks is gathered, into buffers kept
for the encoder's life. A chunk whose memory could change (a ``bytearray``, a view of
one) is copied when it arrives.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roost.errors import (
    DecryptionError,
    NotEnoughSharesError,
    ShareCorruptError,
    StorageError,
    ValidationError,
)
from roost.storage.erasure import CODECS, EC_TYPE, MAX_SHARES, driver
from roost.storage.manifest import REPLICA, Manifest, SegmentEntry, share_hash
from roost.storage.pool import CodecPool, CodecThreads

DEFAULT_SEGMENT_SIZE = 1 << 20
REPLICA_BELOW = 64 << 10
KEY_SIZE = 32
TAG_SIZE = 16

T = TypeVar("T")


def nonce(segment: int, last: bool) -> bytes:
    """The 96-bit GCM nonce of a segment: its index (88 bits) and the last-segment flag."""
    return segment.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


@dataclass(frozen=True)
class CodecParams:
    """How objects are coded: k of n shares rebuild a segment of ``segment_size`` bytes."""

    k: int
    n: int
    segment_size: int = DEFAULT_SEGMENT_SIZE
    replica_below: int = REPLICA_BELOW
    codec: str = EC_TYPE

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValidationError(
                f"unknown erasure code {self.codec!r}; one of {', '.join(CODECS)}"
            )
        if not 1 <= self.k < self.n <= MAX_SHARES:
            raise ValidationError(
                f"a {self.k}-of-{self.n} code is impossible: need 1 <= k < n <= {MAX_SHARES}"
            )
        if not 4096 <= self.segment_size <= 64 << 20:
            raise ValidationError(f"segment size {self.segment_size} is not in 4 KiB..64 MiB")
        if self.replica_below < 0:
            raise ValidationError("the replication threshold cannot be negative")

    def shape(self, object_size_below_threshold: bool) -> Shape:
        """The code an object gets: erasure-coded, or whole copies when small or k = 1."""
        if self.k == 1 or object_size_below_threshold:
            return Shape(REPLICA, 1, self.n - self.k + 1)
        return Shape(self.codec, self.k, self.n)


@dataclass(frozen=True)
class Shape:
    """The code one object actually has (what its manifest records)."""

    codec: str
    k: int
    n: int


@dataclass(frozen=True)
class Share:
    """Share ``index`` (0..n−1) of segment ``segment``: what one device stores."""

    segment: int
    index: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class EncodedSegment:
    """A segment's n shares, by index, and what the manifest records of them."""

    segment: int
    shares: tuple[Share, ...]
    entry: SegmentEntry


@dataclass(frozen=True)
class DecodedSegment:
    """A segment's plaintext, and the shares that were handed in but did not verify."""

    segment: int
    plaintext: bytes = field(repr=False)
    corrupt: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Opening:
    """What a worker needs of the manifest to open one segment (not all of it)."""

    shape: Shape
    segment: int
    last: bool
    plain_size: int
    entry: SegmentEntry


def _seal(
    key: bytes, shape: Shape, segment: int, last: bool, plain: bytes | memoryview
) -> tuple[list[bytes], tuple[bytes, ...]]:
    """Seal one segment and split it: its n pieces (a replica's are one object) and hashes."""
    sealed = AESGCM(key).encrypt(nonce(segment, last), plain, None)
    if shape.codec == REPLICA:
        return [sealed] * shape.n, (share_hash(sealed),) * shape.n
    pieces = driver(shape.k, shape.n - shape.k, shape.codec).encode(sealed)
    return pieces, tuple(share_hash(p) for p in pieces)


def seal_segment(
    key: bytes, shape: Shape, segment: int, last: bool, plain: bytes | memoryview
) -> EncodedSegment:
    """Seal one segment of an object into its n hashed shares."""
    pieces, hashes = _seal(key, shape, segment, last, plain)
    shares = tuple(Share(segment, i, p) for i, p in enumerate(pieces))
    return EncodedSegment(segment, shares, SegmentEntry(len(pieces[0]), hashes))


def _verified(opening: _Opening, shares: Iterable[Share]) -> tuple[dict[int, bytes], list[int]]:
    """The first k shares whose hashes match, by index, and the indices that did not."""
    k, n, entry = opening.shape.k, opening.shape.n, opening.entry
    good: dict[int, bytes] = {}
    corrupt: list[int] = []
    for share in shares:
        if share.segment != opening.segment or not 0 <= share.index < n:
            raise ShareCorruptError(share.segment, share.index, "not a share of this segment")
        if share.index in good or share.index in corrupt:
            continue
        if share_hash(share.data) == entry.hashes[share.index]:
            # pyeclib takes bytes only: any other buffer trips an assertion in C and aborts
            # the process. bytes() of a bytes object is that object, no copy.
            good[share.index] = bytes(share.data)
            if len(good) == k:
                break
        else:
            corrupt.append(share.index)
    if len(good) < k:
        missing = tuple(i for i in range(n) if i not in good and i not in corrupt)
        raise NotEnoughSharesError(
            opening.segment, k, tuple(sorted(good)), missing, tuple(sorted(corrupt))
        )
    return good, sorted(corrupt)


def _unsealed(key: bytes, opening: _Opening, shares: Iterable[Share]) -> tuple[bytes, list[int]]:
    """The sealed segment rebuilt from the first k good shares, and the corrupt ones."""
    good, corrupt = _verified(opening, shares)
    shape = opening.shape
    if shape.codec == REPLICA:
        return next(iter(good.values())), corrupt
    coder = driver(shape.k, shape.n - shape.k, shape.codec)
    return coder.decode(list(good.values())), corrupt


def open_segment(key: bytes, opening: _Opening, shares: Iterable[Share]) -> DecodedSegment:
    """Verify shares, rebuild the sealed segment from k of them and open it."""
    sealed, corrupt = _unsealed(key, opening, shares)
    try:
        plain = AESGCM(key).decrypt(nonce(opening.segment, opening.last), sealed, None)
    except InvalidTag as err:
        raise DecryptionError(opening.segment) from err
    if len(plain) != opening.plain_size:
        raise DecryptionError(opening.segment)
    return DecodedSegment(opening.segment, plain, tuple(corrupt))


# What a pool worker runs (roost.storage.pool): the same steps, reading the job's input
# from the slot's inbox and writing its output to the outbox instead of returning it.


def _seal_job(
    inbox: memoryview,
    outbox: memoryview,
    key: bytes,
    shape: Shape,
    segment: int,
    last: bool,
    size: int,
) -> tuple[int, tuple[bytes, ...]]:
    with inbox[:size] as plain:
        pieces, hashes = _seal(key, shape, segment, last, plain)
    width = len(pieces[0])
    for i, piece in enumerate(pieces[:1] if shape.codec == REPLICA else pieces):
        outbox[i * width : (i + 1) * width] = piece
    return width, hashes


def _sealed_out(shape: Shape, segment: int, outbox: memoryview, answer: Any) -> EncodedSegment:
    width, hashes = answer
    if shape.codec == REPLICA:
        pieces = [bytes(outbox[:width])] * shape.n
    else:
        pieces = [bytes(outbox[i * width : (i + 1) * width]) for i in range(shape.n)]
    shares = tuple(Share(segment, i, p) for i, p in enumerate(pieces))
    return EncodedSegment(segment, shares, SegmentEntry(width, hashes))


def _open_job(
    inbox: memoryview,
    outbox: memoryview,
    key: bytes,
    opening: _Opening,
    layout: tuple[tuple[int, int], ...],
) -> tuple[int, ...]:
    shares, offset = [], 0
    for index, length in layout:
        shares.append(Share(opening.segment, index, bytes(inbox[offset : offset + length])))
        offset += length
    sealed, corrupt = _unsealed(key, opening, shares)
    if len(sealed) - TAG_SIZE != opening.plain_size:
        raise DecryptionError(opening.segment)
    with outbox[: opening.plain_size] as out:
        try:
            AESGCM(key).decrypt_into(nonce(opening.segment, opening.last), sealed, None, out)
        except InvalidTag as err:
            raise DecryptionError(opening.segment) from err
    return tuple(corrupt)


def _opened_out(opening: _Opening, outbox: memoryview, corrupt: Any) -> DecodedSegment:
    return DecodedSegment(opening.segment, bytes(outbox[: opening.plain_size]), corrupt)


WORKER_JOBS: dict[str, Callable[..., Any]] = {"seal": _seal_job, "open": _open_job}


def _opening(manifest: Manifest, segment: int) -> _Opening:
    return _Opening(
        Shape(manifest.codec, manifest.k, manifest.n),
        segment,
        segment == manifest.segment_count - 1,
        manifest.plain_size(segment),
        manifest.segments[segment],
    )


def verify_share(manifest: Manifest, share: Share) -> None:
    """Check one share against the manifest; a bad one is a ``ShareCorruptError`` naming it."""
    if not 0 <= share.segment < manifest.segment_count or not 0 <= share.index < manifest.n:
        raise ShareCorruptError(share.segment, share.index, "the manifest has no such share")
    if share_hash(share.data) != manifest.share_hash(share.segment, share.index):
        raise ShareCorruptError(share.segment, share.index)


def rebuild_shares(
    manifest: Manifest, segment: int, shares: Iterable[Share], wanted: Sequence[int]
) -> tuple[Share, ...]:
    """Rebuild shares ``wanted`` of ``segment`` from any k good ones, for repair.

    Works on the sealed bytes only: no key, no new nonce. The rebuilt shares are byte for
    byte the ones first made, so their hashes are the manifest's and it does not change.
    """
    opening = _opening(manifest, segment)
    good, _ = _verified(opening, shares)
    if manifest.codec == REPLICA:
        pieces = [next(iter(good.values()))] * len(wanted)
    else:
        coder = driver(manifest.k, manifest.n - manifest.k, manifest.codec)
        pieces = coder.reconstruct(list(good.values()), list(wanted))
    rebuilt = tuple(Share(segment, i, p) for i, p in zip(wanted, pieces, strict=True))
    for share in rebuilt:
        verify_share(manifest, share)
    return rebuilt


class _Job(Protocol):
    """A job in flight: a pool's ``Job``, a thread's ``Future``, or one already run."""

    def done(self) -> bool: ...

    def result(self) -> Any: ...


class _Now:
    """A job run at once in this process."""

    def __init__(self, value: object) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self) -> object:
        return self._value


class _Pipeline(Generic[T]):
    """Jobs run here, in ``CodecThreads`` or in a ``CodecPool``; results come out in order.

    At most ``pool.window`` jobs are in flight once ``ready`` returns, so memory stays
    bounded however fast the caller feeds.
    """

    def __init__(self, pool: CodecPool | CodecThreads | None) -> None:
        self.pool = pool
        self._pending: deque[_Job] = deque()

    def add(self, job: _Job) -> None:
        self._pending.append(job)

    def ready(self, drain: bool = False) -> list[T]:
        """Results done at the front; waits while too many are in flight (or all, ``drain``)."""
        window = 0 if drain or self.pool is None else self.pool.window
        out: list[T] = []
        while self._pending and (len(self._pending) > window or self._pending[0].done()):
            out.append(cast(T, self._pending.popleft().result()))
        return out


class _Stream:
    """The bytes fed to an encoder and not yet sealed, cut into segments with few copies.

    ``cut`` gives a view of the next segment: of the chunk itself when the segment lies in
    one, else of a buffer it was gathered into. Buffers are reused ``buffers`` cuts later,
    so a view must be done with by then (the encoder keeps fewer segments in flight).
    """

    def __init__(self, segment_size: int, buffers: int) -> None:
        self.held = 0
        self._parts: deque[memoryview] = deque()
        self._buffers: list[bytearray | None] = [None] * buffers
        self._segment_size = segment_size
        self._turn = 0

    def add(self, chunk: bytes | bytearray | memoryview) -> int:
        """Hold on to ``chunk`` (copied unless it is immutable); its size in bytes."""
        view = memoryview(chunk)
        if not (isinstance(view.obj, bytes) and view.c_contiguous):
            # The caller may reuse its buffer once feed returns; bytes cannot change.
            view = memoryview(view.tobytes())
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if view.nbytes:
            self._parts.append(view)
            self.held += view.nbytes
        return view.nbytes

    def cut(self, size: int) -> memoryview:
        """The next ``size`` bytes held (``size`` <= ``held``)."""
        self.held -= size
        if not size:
            return memoryview(b"")
        first = self._parts[0]
        if len(first) > size:
            self._parts[0] = first[size:]
            return first[:size]
        if len(first) == size:
            return self._parts.popleft()
        return self._gather(size)

    def _gather(self, size: int) -> memoryview:
        """The next ``size`` bytes, which span parts, copied into the next buffer."""
        buffer = self._buffers[self._turn]
        if buffer is None:
            buffer = self._buffers[self._turn] = bytearray(self._segment_size)
        self._turn = (self._turn + 1) % len(self._buffers)
        offset = 0
        while offset < size:
            part = self._parts.popleft()
            taken = min(len(part), size - offset)
            buffer[offset : offset + taken] = part[:taken]
            if taken < len(part):
                self._parts.appendleft(part[taken:])
            offset += taken
        return memoryview(buffer)[:size]


class Encoder:
    """One object in, in chunks; its encoded segments out, in order; then its manifest.

    ``feed`` and ``finish`` return the segments that are ready. ``data_key`` is the
    object's fresh key: wrap it and keep it with the manifest, and never reuse it.
    """

    def __init__(self, params: CodecParams, pool: CodecPool | CodecThreads | None = None) -> None:
        self.params = params
        self.data_key = AESGCM.generate_key(bit_length=KEY_SIZE * 8)
        # Threads read a gathered segment after this returns: one buffer for each of the
        # segments in flight and the one being gathered. Elsewhere it is read at once.
        buffers = pool.window + 1 if isinstance(pool, CodecThreads) else 1
        self._stream = _Stream(params.segment_size, buffers)
        self._size = 0
        self._next = 0
        self._shape: Shape | None = None
        self._entries: list[SegmentEntry] = []
        self._jobs: _Pipeline[EncodedSegment] = _Pipeline(pool)
        self._manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"Encoder({self.params!r}, segments={self._next})"

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[EncodedSegment]:
        if self._manifest is not None:
            raise StorageError("this object is already encoded; start a new Encoder")
        self._size += self._stream.add(chunk)
        size = self.params.segment_size
        out: list[EncodedSegment] = []
        # Cut a segment only once more bytes follow it: whether it is the last is in its nonce.
        while self._stream.held > size:
            self._seal(self._stream.cut(size), last=False)
            out += self._jobs.ready()
        return self._take(out)

    def finish(self) -> list[EncodedSegment]:
        """Seal the last segment, wait for every segment, and make the manifest."""
        if self._manifest is not None:
            return []
        self._seal(self._stream.cut(self._stream.held), last=True)
        self._stream = _Stream(self.params.segment_size, 1)  # lets go of the buffers
        out = self._take(self._jobs.ready(drain=True))
        assert self._shape is not None
        self._manifest = Manifest.build(
            self._shape.codec,
            self._shape.k,
            self._shape.n,
            self.params.segment_size,
            self._size,
            tuple(self._entries),
        )
        return out

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise StorageError("the manifest is known once the encoder is finished")
        return self._manifest

    def _seal(self, plain: memoryview, last: bool) -> None:
        """Seal ``plain`` as the next segment here, or hand it to the threads or the pool."""
        if self._shape is None:
            # The first segment decides: an object that ends below the threshold is copied.
            self._shape = self.params.shape(last and self._size < self.params.replica_below)
        shape, segment, key = self._shape, self._next, self.data_key
        pool = self._jobs.pool
        if pool is None:
            self._jobs.add(_Now(seal_segment(key, shape, segment, last, plain)))
        elif isinstance(pool, CodecThreads):
            self._jobs.add(pool.run(seal_segment, key, shape, segment, last, plain))
        else:
            size = len(plain)
            bound = shape.n * ((size + TAG_SIZE) // shape.k + 1024)
            args = (key, shape, segment, last, size)
            build = functools.partial(_sealed_out, shape, segment)
            self._jobs.add(pool.submit("seal", [plain], bound, args, build))
        self._next += 1

    def _take(self, done: list[EncodedSegment]) -> list[EncodedSegment]:
        self._entries.extend(s.entry for s in done)
        return done


class Decoder:
    """One object's segments in, each as any k (or more) of its shares; plaintext out.

    Feed the segments in order, 0 first. Each share is checked against the manifest's
    hash; the first k that verify are used and the rest of a segment's shares are left
    alone. Shares that did not verify are named in ``DecodedSegment.corrupt``; fewer than
    k good ones is a ``NotEnoughSharesError`` naming the missing and the corrupt shares.
    With a pool, a segment's error is raised by the ``feed`` or ``finish`` that collects
    it, which may come after the ``feed`` of later segments.
    """

    def __init__(
        self, manifest: Manifest, data_key: bytes, pool: CodecPool | CodecThreads | None = None
    ) -> None:
        if len(data_key) != KEY_SIZE:
            raise ValidationError(f"a data key is {KEY_SIZE} bytes, not {len(data_key)}")
        self.manifest = manifest
        self._key = data_key
        self._next = 0
        self._done = 0
        self._jobs: _Pipeline[DecodedSegment] = _Pipeline(pool)

    def __repr__(self) -> str:
        return f"Decoder(segments={self._next}/{self.manifest.segment_count})"

    def feed(self, segment: int, shares: Sequence[Share]) -> list[DecodedSegment]:
        if segment != self._next or segment >= self.manifest.segment_count:
            raise StorageError(
                f"segment {segment} fed out of order: segment {self._next} of "
                f"{self.manifest.segment_count} comes next"
            )
        opening = _opening(self.manifest, segment)
        pool = self._jobs.pool
        if pool is None:
            self._jobs.add(_Now(open_segment(self._key, opening, shares)))
        elif isinstance(pool, CodecThreads):
            # A thread reads the shares after feed returns: hand it bytes, which cannot
            # change (bytes() of bytes is the same object, no copy).
            owned = [Share(s.segment, s.index, bytes(s.data)) for s in shares]
            self._jobs.add(pool.run(open_segment, self._key, opening, owned))
        else:
            layout = tuple((s.index, len(s.data)) for s in shares)
            args = (self._key, opening, layout)
            build = functools.partial(_opened_out, opening)
            payload: list[bytes | memoryview] = [s.data for s in shares]
            self._jobs.add(pool.submit("open", payload, opening.plain_size, args, build))
        self._next += 1
        return self._count(self._jobs.ready())

    def finish(self) -> list[DecodedSegment]:
        """Wait for every segment fed; all of the object's segments must have been."""
        out = self._count(self._jobs.ready(drain=True))
        if self._done != self.manifest.segment_count:
            raise StorageError(
                f"only {self._done} of the object's {self.manifest.segment_count} segments "
                "were decoded"
            )
        return out

    def _count(self, done: list[DecodedSegment]) -> list[DecodedSegment]:
        self._done += len(done)
        return done
