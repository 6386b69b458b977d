"""Shares stream through a device both ways: never whole in memory, checked on the way.

A real HTTPS server on loopback stands in for the hub; it serves and takes bodies in
64 KiB pieces, so what tracemalloc sees at its peak is the device's own buffers.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import ssl
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import blake3
import pytest

from agent.https_server import serve_https
from roost.agent import hubapi, shares
from roost.agent.shares import ShareCommands, ShareStore
from roost.errors import StorageError
from roost.pki import signing

SHARE = "0123456789abcdef"
# Several chunks' worth: a device that held a share whole would peak above this.
SIZE = 16 * hubapi.CHUNK + 12_345
PEAK_LIMIT = 3 * hubapi.CHUNK


@dataclass
class FakeHub:
    """What the HTTPS server saw and what it serves."""

    url: str
    context: ssl.SSLContext
    share: Path
    received: dict[str, object] = field(default_factory=dict)
    # Set once the server has read a PUT to its end (the client may be done before).
    put_read: threading.Event = field(default_factory=threading.Event)

    def signer(self, method: str, target: str, body: bytes) -> dict[str, str]:
        # What a real signature covers, in plain sight: the hub's side is tested elsewhere.
        return {"x-roost-device": "d1", "x-roost-signature": f"{method} {target} {body.decode()}"}

    def call(self) -> tuple[str, ssl.SSLContext, hubapi.Signer]:
        return self.url, self.context, self.signer


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    share = tmp_path / "hub-share"
    with share.open("wb") as out:
        out.write(os.urandom(SIZE))
    received: dict[str, object] = {}
    put_read = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(SIZE))
            self.end_headers()
            with share.open("rb") as f:
                while piece := f.read(64 * 1024):
                    self.wfile.write(piece)

        def do_PUT(self) -> None:
            received.update({k.lower(): v for k, v in self.headers.items()})
            left, digest, count = int(self.headers["content-length"]), blake3.blake3(), 0
            while left:
                piece = self.rfile.read(min(64 * 1024, left))
                if not piece:
                    break
                digest.update(piece)
                count += len(piece)
                left -= len(piece)
            received.update({"path": self.path, "bytes": count, "hash": digest.hexdigest()})
            put_read.set()
            answer = b'{"ok": true}'
            self.send_response(200 if not left else 400)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            del format, args  # quiet

    with serve_https(Handler) as (url, context):
        yield FakeHub(url, context, share, received, put_read)


def _peak(run: Callable[[], object]) -> tuple[object, int]:
    """What ``run`` answered, and the most memory Python held meanwhile (all threads)."""
    tracemalloc.start()
    try:
        answer = run()
        return answer, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _file_hash(path: Path) -> str:
    return blake3.blake3(max_threads=1).update_mmap(path).hexdigest()


def test_a_share_is_fetched_to_disk_in_chunks_never_whole(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=4 * SIZE)
    commands = ShareCommands(store, fake_hub.call)
    args = {"share": SHARE, "size": SIZE, "hash": _file_hash(fake_hub.share)}

    answer, peak = _peak(lambda: asyncio.run(commands.fetch(args)))

    assert answer == {"share": SHARE, "bytes": SIZE}
    assert peak < PEAK_LIMIT, f"the device held {peak} bytes of a {SIZE}-byte share"
    assert _file_hash(tmp_path / "shares" / SHARE) == args["hash"]
    assert store.check(SHARE) == ""


def test_a_fetched_share_that_does_not_match_is_not_kept(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=4 * SIZE)
    commands = ShareCommands(store, fake_hub.call)
    args = {"share": SHARE, "size": SIZE, "hash": blake3.blake3(b"other").hexdigest()}
    with pytest.raises(StorageError, match="does not match its size and hash"):
        asyncio.run(commands.fetch(args))
    assert list((tmp_path / "shares").iterdir()) == [], "no part file, no share"


def _stored(tmp_path: Path) -> tuple[ShareStore, bytes]:
    store = ShareStore(tmp_path / "shares", quota_bytes=4 * SIZE)
    data = os.urandom(SIZE)
    store.put(SHARE, data, blake3.blake3(data).hexdigest())
    return store, data


def test_a_share_is_uploaded_from_disk_in_chunks_signed_over_its_hash(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    store, data = _stored(tmp_path)
    expected = blake3.blake3(data).hexdigest()
    del data
    commands = ShareCommands(store, fake_hub.call)
    path = f"/v1/store/shares/{SHARE}?get=0123456789abcdef"

    answer, peak = _peak(lambda: asyncio.run(commands.upload({"share": SHARE, "path": path})))

    assert answer == {"share": SHARE, "bytes": SIZE}
    assert peak < PEAK_LIMIT, f"the device held {peak} bytes of a {SIZE}-byte share"
    got = fake_hub.received
    assert (got["path"], got["bytes"], got["hash"]) == (path, SIZE, expected)
    assert got["content-length"] == str(SIZE)
    assert got[signing.DIGEST_HEADER] == expected
    # The signature covers the declared hash, since the body is not read before it is sent.
    assert got["x-roost-signature"] == f"PUT {path} blake3:{expected}"


@pytest.mark.parametrize("where", [10, SIZE - 10], ids=["first-chunk", "last-chunk"])
def test_a_share_rotten_on_disk_is_never_sent_whole(
    fake_hub: FakeHub, tmp_path: Path, where: int
) -> None:
    store, data = _stored(tmp_path)
    rotten = bytearray(data)
    rotten[where] ^= 1
    (tmp_path / "shares" / SHARE).write_bytes(rotten)
    commands = ShareCommands(store, fake_hub.call)
    path = f"/v1/store/shares/{SHARE}?get=0123456789abcdef"

    answer = asyncio.run(commands.upload({"share": SHARE, "path": path}))

    assert answer == {"share": SHARE, "problem": "corrupt"}
    # The last chunk is held back until the whole share has matched its hash.
    assert fake_hub.put_read.wait(10), "the hub's side never ended its read"
    assert 0 < int(str(fake_hub.received["bytes"])) < SIZE


def test_a_missing_share_is_said_so_not_sent(fake_hub: FakeHub, tmp_path: Path) -> None:
    store = ShareStore(tmp_path / "shares", quota_bytes=SIZE)
    commands = ShareCommands(store, fake_hub.call)
    path = f"/v1/store/shares/{SHARE}?get=0123456789abcdef"
    answer = asyncio.run(commands.upload({"share": SHARE, "path": path}))
    assert answer == {"share": SHARE, "problem": "missing"}
    assert fake_hub.received == {}


def test_the_reader_hands_out_views_of_one_buffer(tmp_path: Path) -> None:
    store, data = _stored(tmp_path)
    reader = store.open(SHARE)
    assert reader is not None
    seen = bytearray()
    buffers = set()
    for chunk in reader.chunks(chunk_size=hubapi.CHUNK):
        assert len(chunk) <= hubapi.CHUNK
        buffers.add(id(chunk.obj))
        seen += chunk
    assert bytes(seen) == data
    assert len(buffers) == 1, "one buffer reused, not one per chunk"


def _advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every (offset, length, advice) given to ``posix_fadvise`` from here on."""
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


def test_a_share_written_leaves_the_page_cache_as_it_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each advice covers all that came so far, not only the last window: pages still dirty
    # at one call are evicted at a later one, so a share never fills memory whole.
    data = os.urandom(SIZE)
    calls = _advised(monkeypatch)
    store = ShareStore(tmp_path / "shares", quota_bytes=SIZE)
    writer = store.receive(SHARE, SIZE, blake3.blake3(data).hexdigest())
    for start in range(0, SIZE, hubapi.CHUNK):
        writer.write(data[start : start + hubapi.CHUNK])
    writer.commit()
    evictions = [c for c in calls if c[2] == os.POSIX_FADV_DONTNEED]
    assert store.read(SHARE) == (data, "")
    assert len(evictions) == SIZE // shares.EVICT_EVERY, "evicted window by window"
    assert all(offset == 0 for offset, _, _ in evictions)
    lengths = [length for _, length, _ in evictions]
    assert lengths == sorted(lengths)
    assert lengths[-1] >= SIZE - shares.EVICT_EVERY


def test_a_share_read_leaves_the_page_cache_as_it_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, data = _stored(tmp_path)
    reader = store.open(SHARE)
    assert reader is not None
    calls = _advised(monkeypatch)
    assert b"".join(bytes(c) for c in reader.chunks()) == data
    assert calls[0][2] == os.POSIX_FADV_SEQUENTIAL
    evicted = [length for offset, length, advice in calls if advice == os.POSIX_FADV_DONTNEED]
    assert len(evicted) == SIZE // shares.EVICT_EVERY
    assert evicted[-1] >= SIZE - shares.EVICT_EVERY
