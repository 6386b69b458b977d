"""How fast the storage codec seals and codes objects, beside raw pyeclib + AES-GCM.

For each code (4-of-8 and 8-of-16 by default) it encodes and decodes one object of
``--size-mib`` random bytes, fed in ``--chunk-kib`` chunks as the data path reads them:

- ``raw``: AES-256-GCM then pyeclib ``isa_l_rs_vand_inv``, segment by segment, in
  this process and nothing else (no hashes, no manifest, no copies): the floor;
- ``raw_blake3``: the same plus BLAKE3 of every share made (encode) or used (decode),
  which the codec cannot do without: what is left between it and ``codec`` is the
  codec's own cost;
- ``raw_threads_T`` / ``raw_blake3_threads_T``: the same, each segment in one of T
  threads (AES-GCM and BLAKE3 let go of the GIL, pyeclib does not): the floor for
  ``codec_threads_T``;
- ``codec``: ``roost.storage`` ``Encoder`` / ``Decoder`` in this process (segments cut
  from the stream, BLAKE3 per share, the manifest, shares verified on the way back);
- ``codec_threads_T``: the same with ``CodecThreads(T)``, segments sealed and opened in
  T threads of this process;
- ``codec_pool_W``: the same through a ``CodecPool`` of W worker processes.

Every variant runs in a fresh process, once with glibc's default malloc and once with
``tune_malloc`` (heap buffers kept for reuse) where that applies; pool workers always
tune themselves. Outputs are dropped as they come, as the data path sends them on.
Decoding is given the last k shares of each segment: for both codes that is parity only,
the slowest case. Figures are the best of ``--rounds`` x ``--repeat`` runs (MB/s, 10^6
bytes a second): each round runs every variant once, in turn, so work that others start
on a shared machine falls on all of them alike. ``*_cores`` is the CPU time the best run
took (its process and a pool's workers) over its wall time: how many cores it kept busy.
``others_cpu_percent`` is how busy the machine was with work this benchmark did not start
(100 = every core). ``ceiling_vs_raw_tuned`` bounds ``best_codec_vs_raw_tuned``: the
hashing alone costs what it costs, so no codec that hashes every share can pass
``cores`` x ``raw_blake3_tuned``. Prints one JSON object; asserts nothing.

    .venv/bin/python bench/storage_codec.py
    .venv/bin/python bench/storage_codec.py --size-mib 64 --codes 4-of-8 --workers 1
    .venv/bin/python bench/storage_codec.py --threads 2,3 --workers ""
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roost.errors import RoostError
from roost.sim.bench import run_bench
from roost.storage import CodecParams, CodecPool, CodecThreads, Decoder, Encoder
from roost.storage.codec import nonce
from roost.storage.erasure import EC_TYPE, driver, tune_malloc
from roost.storage.manifest import share_hash

SEGMENT = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256, help="object size")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="size of each fed chunk")
    parser.add_argument("--codes", default="4-of-8,8-of-16", help="k-of-n, comma separated")
    parser.add_argument("--workers", default="1,2", help="pool sizes to try, comma separated")
    parser.add_argument("--threads", default="2", help="thread counts to try, comma separated")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all variants")
    parser.add_argument("--repeat", type=int, default=2, help="runs per variant and round")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    return parser.parse_args()


def cpu_seconds() -> float:
    """CPU time of this process and its children still running (a pool's workers)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    total = mine.ru_utime + mine.ru_stime
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def best_rate(size: int, repeat: int, run: Callable[[], None]) -> tuple[float, float]:
    """The best of ``repeat`` runs in MB/s, and the cores that run kept busy."""
    best, cores = 0.0, 0.0
    for _ in range(repeat):
        cpu, start = cpu_seconds(), time.perf_counter()
        run()
        wall = time.perf_counter() - start
        if size / wall / 1e6 > best:
            best, cores = size / wall / 1e6, (cpu_seconds() - cpu) / wall
    return round(best), round(cores, 2)


def rates(
    size: int, repeat: int, encode: Callable[[], None], decoding: Callable[[], Callable[[], None]]
) -> Any:
    """Encoding timed first, then ``decoding()`` makes what decoding needs and returns it.

    In that order both see the same heap: shares kept for decoding would otherwise leave
    the encoder's runs a fragmented one (~15 % slower, raw and codec alike).
    """
    enc, enc_cores = best_rate(size, repeat, encode)
    dec, dec_cores = best_rate(size, repeat, decoding())
    return {"encode": enc, "decode": dec, "encode_cores": enc_cores, "decode_cores": dec_cores}


def in_order(threads: int, jobs: Any) -> None:
    """Run ``jobs`` (callables) in ``threads`` threads, at most 2 per thread in flight."""
    with ThreadPoolExecutor(threads) as executor:
        pending: deque[Future[Any]] = deque()
        for job in jobs:
            pending.append(executor.submit(job))
            while len(pending) > 2 * threads:
                pending.popleft().result()
        for future in pending:
            future.result()


def raw(data: bytes, k: int, n: int, repeat: int, hashed: bool, threads: int) -> Any:
    """AES-GCM and pyeclib segment by segment; with ``hashed``, BLAKE3 of every share too.

    With ``threads``, each segment is done whole by one of that many threads.
    """
    coder = driver(k, n - k)
    key = AESGCM.generate_key(bit_length=256)
    count = len(data) // SEGMENT
    segments = [memoryview(data)[i * SEGMENT : (i + 1) * SEGMENT] for i in range(count)]

    def seal(i: int) -> None:
        pieces = coder.encode(AESGCM(key).encrypt(nonce(i, i == count - 1), segments[i], None))
        if hashed:
            for piece in pieces:
                share_hash(piece)

    def run(job: Callable[[int], None]) -> Callable[[], None]:
        if threads:
            return lambda: in_order(threads, (functools.partial(job, i) for i in range(count)))
        return lambda: [job(i) for i in range(count)] and None

    def decoding() -> Callable[[], None]:
        aead = AESGCM(key)
        fragments = [
            coder.encode(aead.encrypt(nonce(i, i == count - 1), plain, None))[n - k :]
            for i, plain in enumerate(segments)
        ]

        def unseal(i: int) -> None:
            pieces = fragments[i]
            if hashed:
                for piece in pieces:
                    share_hash(piece)
            AESGCM(key).decrypt(nonce(i, i == count - 1), coder.decode(pieces), None)

        return run(unseal)

    return rates(len(data), repeat, run(seal), decoding)


def codec(
    data: bytes, k: int, n: int, repeat: int, chunk: int, pool: CodecPool | CodecThreads | None
) -> Any:
    params = CodecParams(k, n)
    view = memoryview(data)

    def encode() -> None:
        encoder = Encoder(params, pool)
        for start in range(0, len(data), chunk):
            encoder.feed(view[start : start + chunk])
        encoder.finish()

    def decoding() -> Callable[[], None]:
        encoder = Encoder(params, pool)
        chosen = []
        for start in range(0, len(data), chunk):
            chosen += [s.shares[n - k :] for s in encoder.feed(view[start : start + chunk])]
        chosen += [s.shares[n - k :] for s in encoder.finish()]

        def decode() -> None:
            decoder = Decoder(encoder.manifest, encoder.data_key, pool)
            for number, shares in enumerate(chosen):
                decoder.feed(number, shares)
            decoder.finish()

        return decode

    return rates(len(data), repeat, encode, decoding)


def variant(spec: tuple[str, bool, int, int, int, int, int]) -> Any:
    """One variant in a fresh process, so no heap state carries over between them."""
    kind, tuned, k, n, size, repeat, chunk = spec
    if tuned:
        tune_malloc()
    data = os.urandom(size)
    base, _, count = kind.partition("_threads_")
    threads = int(count or 0)
    if base in ("raw", "raw_blake3"):
        return raw(data, k, n, repeat, hashed=base == "raw_blake3", threads=threads)
    if kind == "codec":
        return codec(data, k, n, repeat, chunk, None)
    if threads:
        with CodecThreads(threads) as pool:
            return codec(data, k, n, repeat, chunk, pool)
    with CodecPool(int(kind.rpartition("_")[2])) as pool:
        return codec(data, k, n, repeat, chunk, pool)


def kinds(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """The variants to run: (kind, tuned)."""
    threads = [t for t in args.threads.split(",") if t]
    workers = [w for w in args.workers.split(",") if w]
    out = [("raw", False), ("raw", True), *((f"raw_threads_{t}", True) for t in threads)]
    out += [("raw_blake3", True), *((f"raw_blake3_threads_{t}", True) for t in threads)]
    out += [("codec", False), ("codec", True)]
    out += [(f"codec_threads_{t}", tuned) for t in threads for tuned in (False, True)]
    # A pool's workers tune themselves; this process only copies.
    return out + [(f"codec_pool_{w}", False) for w in workers]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib << 20
    result: dict[str, Any] = {
        "bench": "storage_codec",
        "object_mib": args.size_mib,
        "segment_kib": SEGMENT >> 10,
        "chunk_kib": args.chunk_kib,
        "backend": EC_TYPE,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "versions": versions(),
        "cores": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "codes": {},
    }
    context = multiprocessing.get_context("spawn")
    machine = busy_seconds(), time.perf_counter()
    for code in args.codes.split(","):
        k, n = (int(x) for x in code.split("-of-"))
        figures: dict[str, Any] = {}
        for _ in range(args.rounds):
            for kind, tuned in kinds(args):
                name = f"{kind}{'_tuned' if tuned else ''}"
                spec = (kind, tuned, k, n, size, args.repeat, args.chunk_kib << 10)
                # A fresh process each (not daemonic: a pool's workers are its children).
                with ProcessPoolExecutor(1, mp_context=context) as proc:
                    figures[name] = better(figures.get(name), proc.submit(variant, spec).result())
                print(f"{code} {name}: {figures[name]}", file=sys.stderr)
        codecs = [f for f in figures if f.startswith("codec")]
        for name in [f for f in codecs if f.endswith("_tuned")]:
            # The codec beside the same work without it: raw + BLAKE3, as many threads.
            floor = name.replace("codec", "raw_blake3", 1)
            figures[f"{name}_vs_{floor}"] = ratios(figures[name], figures[floor])
        best = max(codecs, key=lambda f: figures[f]["encode"] + figures[f]["decode"])
        figures["best_codec"] = best
        figures["best_codec_vs_raw_tuned"] = ratios(figures[best], figures["raw_tuned"])
        # The most any codec that hashes every share could reach beside raw_tuned here:
        # raw_blake3's work in one thread, spread over every core with nothing lost.
        cores = os.cpu_count() or 1
        ceiling = {op: cores * figures["raw_blake3_tuned"][op] for op in ("encode", "decode")}
        figures["ceiling_vs_raw_tuned"] = ratios(ceiling, figures["raw_tuned"])
        result["codes"][code] = figures
    result["load_average_after"] = os.getloadavg()[0]
    mine = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = sum(r.ru_utime + r.ru_stime for r in mine)
    wall = time.perf_counter() - machine[1]
    others = (busy_seconds() - machine[0] - ours) / wall / (os.cpu_count() or 1)
    result["others_cpu_percent"] = round(max(0.0, others) * 100, 1)
    return result


def better(old: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    """Per operation, the faster of two results (with the cores that run used)."""
    if old is None:
        return new
    out = dict(old)
    for op in ("encode", "decode"):
        if new[op] > old[op]:
            out[op], out[f"{op}_cores"] = new[op], new[f"{op}_cores"]
    return out


def busy_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def ratios(ours: dict[str, float], floor: dict[str, float]) -> dict[str, float]:
    return {op: round(ours[op] / floor[op], 2) for op in ("encode", "decode")}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("pyeclib", "blake3", "cryptography")}


def main() -> int:
    args = parse_args()
    return run_bench(
        "storage_codec",
        keep=False,
        measure=lambda _root: measure(args),
        failures=(RoostError, OSError),
        json_out=args.json_out,
    )


if __name__ == "__main__":
    sys.exit(main())
