"""Worker processes that seal and open segments, with buffers shared and reused.

pyeclib holds the GIL while it codes, so threads take turns; processes do not. Each
worker keeps its glibc heap for reuse (``tune_malloc``) and its own pyeclib coders.
Segments do not travel through pipes: every job has a *slot*, a pair of shared-memory
buffers kept for the life of the pool (grown when a bigger segment comes), and only the
job's small arguments and answer (sizes, hashes) are pickled. The caller's process
copies a segment in and its shares (or plaintext) out; everything else happens in the
worker.

Measured on the project's 2-core machine (``bench/storage_codec.py``, 4-of-8 encoding):
a ``ProcessPoolExecutor`` that pickled segments ran at ~350 MB/s against ~1,100–1,300
in-process; these shared slots bring one worker near that (~780–1,160), and two workers
on two cores lose to the caller's copies and to each other (~650–1,110). So the codec
runs in-process unless a pool is given; see docs/storage.md for when one is worth it.

Workers are started with ``spawn``: the hub is an asyncio process with threads, and a
forked copy of it could inherit a lock held by another thread. A pool is safe to share
between threads (one lock) and between interleaved encoders and decoders: answers are
matched to jobs by id, and each job's output is copied out as soon as it arrives.

``CodecThreads`` is the other way to use more than one core: threads in this process,
each sealing or opening whole segments, handed over by reference (no copies). AES-GCM
(``cryptography``) and BLAKE3 let go of the GIL while they work; pyeclib does not, and a
thread that finished hashing a share waits for the GIL while the other is in pyeclib.
On the project's 2-core machine two threads keep ~1.6 cores busy and decode 1.2–1.6×
faster than one thread; encoding gains less and varies from run to run (0.9–1.45×).
See docs/storage.md.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from roost.errors import RoostError, StorageError
from roost.storage.erasure import tune_malloc

_ALIGN = 1 << 16

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class _Slot:
    number: int
    inbox: SharedMemory
    outbox: SharedMemory


@dataclass
class _Pending:
    slot: _Slot
    worker: int
    build: Callable[[memoryview, Any], Any]


class Job:
    """A job in a pool: ``done`` without waiting, ``result`` waits (and raises its error)."""

    def __init__(self, pool: CodecPool, number: int) -> None:
        self._pool = pool
        self.number = number

    def done(self) -> bool:
        return self._pool._done(self.number)

    def result(self) -> Any:
        return self._pool._result(self.number)


def _serve(conn: Connection, jobs: dict[str, Callable[..., Any]]) -> None:
    """A worker's loop: attach the job's slot, run it, answer with its id."""
    tune_malloc()
    attached: dict[int, tuple[SharedMemory, SharedMemory]] = {}
    while (message := conn.recv()) is not None:
        number, kind, slot, names, args = message
        try:
            if slot not in attached or attached[slot][0].name != names[0]:
                for old in attached.pop(slot, ()):
                    old.close()
                attached[slot] = (SharedMemory(names[0]), SharedMemory(names[1]))
            inbox, outbox = attached[slot]
            answer = jobs[kind](_buf(inbox), _buf(outbox), *args)
        except RoostError as err:
            conn.send((number, err, None))
        except Exception as err:  # a bug, or the OS: the caller gets it as one of ours
            conn.send((number, StorageError(f"the codec worker failed: {err!r}"), None))
        else:
            conn.send((number, None, answer))
    for pair in attached.values():
        for shm in pair:
            shm.close()


def _worker_main(conn: Connection) -> None:
    from roost.storage.codec import WORKER_JOBS

    _serve(conn, WORKER_JOBS)


class _ClosedOnExit:
    """``with`` closes it (``close``), as a pool or threads must be once done with."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


class CodecPool(_ClosedOnExit):
    """``workers`` coding processes (default: one per core but one, at least one)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, (os.cpu_count() or 1) - 1)
        self.window = 2 * self.workers
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        for _ in range(self.workers):
            mine, theirs = context.Pipe()
            proc = context.Process(target=_worker_main, args=(theirs,), daemon=True)
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)
        self._lock = threading.RLock()
        self._slots: list[_Slot | None] = [None] * self.window
        self._free = list(range(self.window))
        self._pending: dict[int, _Pending] = {}
        self._answers: dict[int, tuple[BaseException | None, Any]] = {}
        self._load = [0] * self.workers
        self._numbers = itertools.count()
        self._closed = False

    def __repr__(self) -> str:
        return f"CodecPool(workers={self.workers})"

    def submit(
        self,
        kind: str,
        payload: list[bytes | memoryview],
        out_size: int,
        args: tuple[Any, ...],
        build: Callable[[memoryview, Any], Any],
    ) -> Job:
        """Copy ``payload`` into a free slot and run job ``kind`` on it in a worker.

        The worker gets the slot's inbox and outbox (at least ``out_size`` bytes) and
        ``args``; ``build(outbox, answer)`` runs here when its answer comes, and must copy
        out whatever it keeps: the slot is reused right after.
        """
        with self._lock:
            if self._closed:
                raise StorageError("the codec pool is closed")
            in_size = sum(len(p) for p in payload)
            slot = self._slot(in_size, out_size)
            offset = 0
            for part in payload:
                _buf(slot.inbox)[offset : offset + len(part)] = part
                offset += len(part)
            worker = self._load.index(min(self._load))
            number = next(self._numbers)
            names = (slot.inbox.name, slot.outbox.name)
            self._conns[worker].send((number, kind, slot.number, names, args))
            self._load[worker] += 1
            self._pending[number] = _Pending(slot, worker, build)
            return Job(self, number)

    def _slot(self, in_size: int, out_size: int) -> _Slot:
        while not self._free:
            self._receive(block=True)
        number = self._free.pop()
        slot = self._slots[number]
        if slot is None or slot.inbox.size < in_size or slot.outbox.size < out_size:
            if slot is not None:
                _drop(slot)
            slot = _Slot(number, _shm(in_size), _shm(out_size))
            self._slots[number] = slot
        return slot

    def _receive(self, block: bool) -> None:
        """Take every answer that has come (at least one when ``block``)."""
        busy = [self._conns[w] for w in range(self.workers) if self._load[w]]
        if not busy:
            raise StorageError("no codec job is in flight to wait for")
        for conn in wait(busy, timeout=None if block else 0):
            assert isinstance(conn, Connection)
            try:
                number, error, answer = conn.recv()
            except (EOFError, OSError) as err:
                raise StorageError("a codec worker died; close this pool") from err
            pending = self._pending.pop(number)
            self._load[pending.worker] -= 1
            try:
                if error is None:
                    answer = pending.build(_buf(pending.slot.outbox), answer)
            finally:
                self._free.append(pending.slot.number)
            self._answers[number] = (error, answer)

    def _done(self, number: int) -> bool:
        with self._lock:
            if number not in self._answers:
                self._receive(block=False)
            return number in self._answers

    def _result(self, number: int) -> Any:
        with self._lock:
            while number not in self._answers:
                self._receive(block=True)
            error, answer = self._answers.pop(number)
        if error is not None:
            raise error
        return answer

    def close(self) -> None:
        """Stop the workers and free the shared buffers; jobs still in flight are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.send(None)
            for proc in self._procs:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            for conn in self._conns:
                conn.close()
            for slot in self._slots:
                if slot is not None:
                    _drop(slot)
            self._slots = [None] * self.window


class CodecThreads(_ClosedOnExit):
    """``workers`` threads that seal and open segments (default: one per core).

    ``Encoder(params, threads)`` / ``Decoder(manifest, key, threads)`` hand each segment
    to a thread and take the results back in order, at most ``window`` segments ahead.
    One instance may serve many streams and threads at once. The segments and shares
    are passed by reference: only bytes that cannot change are handed over (the codec
    copies the rest first).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.window = 2 * self.workers
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="roost-codec")

    def __repr__(self) -> str:
        return f"CodecThreads(workers={self.workers})"

    def run(self, job: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Start ``job(*args)`` in a thread; its future raises what the job raised."""
        try:
            return self._executor.submit(job, *args, **kwargs)
        except RuntimeError as err:  # submit after shutdown
            raise StorageError("the codec threads are closed") from err

    def close(self) -> None:
        """Finish the jobs in flight and stop the threads."""
        self._executor.shutdown(wait=True)


def _shm(size: int) -> SharedMemory:
    return SharedMemory(create=True, size=max(_ALIGN, -(-size // _ALIGN) * _ALIGN))


def _buf(shm: SharedMemory) -> memoryview:
    view = shm.buf
    assert view is not None, "a shared buffer used after close"
    return view


def _drop(slot: _Slot) -> None:
    for shm in (slot.inbox, slot.outbox):
        shm.close()
        shm.unlink()
