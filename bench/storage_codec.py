"""How fast the storage codec seals and codes objects, beside raw pyeclib + AES-GCM.

For each code (4-of-8 and 8-of-16 by default) it encodes and decodes one object of
``--size-mib`` random bytes, fed in ``--chunk-kib`` chunks as the data path reads them:

- ``raw``: AES-256-GCM then pyeclib ``isa_l_rs_vand_inv``, segment by segment, in
  this process and nothing else (no hashes, no manifest, no copies): the floor;
- ``raw_blake3``: the same plus BLAKE3 of every share made (encode) or used (decode),
  which the codec cannot do without: what is left between it and ``codec`` is the
  codec's own cost;
- ``codec``: ``roost.storage`` ``Encoder`` / ``Decoder`` in this process (segments cut
  from the stream, BLAKE3 per share, the manifest, shares verified on the way back);
- ``codec_pool_W``: the same through a ``CodecPool`` of W worker processes.

Every variant runs in a fresh process, once with glibc's default malloc and once with
``tune_malloc`` (heap buffers kept for reuse) where that applies; pool workers always
tune themselves. Outputs are dropped as they come, as the data path sends them on.
Decoding is given the last k shares of each segment: for both codes that is parity only,
the slowest case. Figures are the best of ``--repeat`` runs (MB/s, 10^6 bytes a second).
Prints one JSON object; asserts nothing.

    .venv/bin/python bench/storage_codec.py
    .venv/bin/python bench/storage_codec.py --size-mib 64 --codes 4-of-8 --workers 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from roost.errors import RoostError
from roost.sim.bench import run_bench
from roost.storage import CodecParams, CodecPool, Decoder, Encoder
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best kept)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    return parser.parse_args()


def best_rate(size: int, repeat: int, run: Callable[[], None]) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = max(best, size / (time.perf_counter() - start) / 1e6)
    return round(best)


def raw(data: bytes, k: int, n: int, repeat: int, hashed: bool) -> dict[str, float]:
    """AES-GCM and pyeclib segment by segment; with ``hashed``, BLAKE3 of every share too."""
    coder = driver(k, n - k)
    key = AESGCM.generate_key(bit_length=256)
    count = len(data) // SEGMENT
    segments = [memoryview(data)[i * SEGMENT : (i + 1) * SEGMENT] for i in range(count)]

    def encode() -> None:
        aead = AESGCM(key)
        for i, plain in enumerate(segments):
            pieces = coder.encode(aead.encrypt(nonce(i, i == count - 1), plain, None))
            if hashed:
                for piece in pieces:
                    share_hash(piece)

    aead = AESGCM(key)
    fragments = [
        coder.encode(aead.encrypt(nonce(i, i == count - 1), plain, None))[n - k :]
        for i, plain in enumerate(segments)
    ]

    def decode() -> None:
        aead = AESGCM(key)
        for i, pieces in enumerate(fragments):
            if hashed:
                for piece in pieces:
                    share_hash(piece)
            aead.decrypt(nonce(i, i == count - 1), coder.decode(pieces), None)

    return {
        "encode": best_rate(len(data), repeat, encode),
        "decode": best_rate(len(data), repeat, decode),
    }


def codec(
    data: bytes, k: int, n: int, repeat: int, chunk: int, pool: CodecPool | None
) -> dict[str, float]:
    params = CodecParams(k, n)
    view = memoryview(data)

    def encode() -> None:
        encoder = Encoder(params, pool)
        for start in range(0, len(data), chunk):
            encoder.feed(view[start : start + chunk])
        encoder.finish()

    encoder = Encoder(params, pool)
    segments = encoder.feed(data) + encoder.finish()
    chosen = [s.shares[n - k :] for s in segments]
    del segments

    def decode() -> None:
        decoder = Decoder(encoder.manifest, encoder.data_key, pool)
        for number, shares in enumerate(chosen):
            decoder.feed(number, shares)
        decoder.finish()

    return {
        "encode": best_rate(len(data), repeat, encode),
        "decode": best_rate(len(data), repeat, decode),
    }


def variant(spec: tuple[str, bool, int, int, int, int, int]) -> dict[str, float]:
    """One variant in a fresh process, so no heap state carries over between them."""
    kind, tuned, k, n, size, repeat, chunk = spec
    if tuned:
        tune_malloc()
    data = os.urandom(size)
    if kind in ("raw", "raw_blake3"):
        return raw(data, k, n, repeat, hashed=kind == "raw_blake3")
    if kind == "codec":
        return codec(data, k, n, repeat, chunk, None)
    with CodecPool(int(kind.rpartition("_")[2])) as pool:
        return codec(data, k, n, repeat, chunk, pool)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib << 20
    kinds = ["raw", "raw_blake3", "codec", *(f"codec_pool_{w}" for w in args.workers.split(","))]
    result: dict[str, Any] = {
        "bench": "storage_codec",
        "object_mib": args.size_mib,
        "segment_kib": SEGMENT >> 10,
        "chunk_kib": args.chunk_kib,
        "backend": EC_TYPE,
        "repeat": args.repeat,
        "versions": versions(),
        "load_average_before": os.getloadavg()[0],
        "codes": {},
    }
    context = multiprocessing.get_context("spawn")
    for code in args.codes.split(","):
        k, n = (int(x) for x in code.split("-of-"))
        figures: dict[str, Any] = {}
        for kind in kinds:
            for tuned in (False, True):
                if (kind.startswith("codec_pool") and tuned) or (
                    kind == "raw_blake3" and not tuned
                ):
                    continue  # a pool's workers tune themselves; this process only copies
                name = f"{kind}{'_tuned' if tuned else ''}"
                spec = (kind, tuned, k, n, size, args.repeat, args.chunk_kib << 10)
                # A fresh process each (not daemonic: a pool's workers are its children).
                with ProcessPoolExecutor(1, mp_context=context) as proc:
                    figures[name] = proc.submit(variant, spec).result()
                print(f"{code} {name}: {figures[name]}", file=sys.stderr)
        figures["codec_vs_raw_tuned"] = ratios(figures["codec_tuned"], figures["raw_tuned"])
        figures["codec_vs_raw_blake3_tuned"] = ratios(
            figures["codec_tuned"], figures["raw_blake3_tuned"]
        )
        best = max(
            (f for f in figures if f.startswith("codec") and "_vs_" not in f),
            key=lambda f: figures[f]["encode"] + figures[f]["decode"],
        )
        figures["best_codec"] = best
        figures["best_codec_vs_raw_tuned"] = ratios(figures[best], figures["raw_tuned"])
        result["codes"][code] = figures
    result["load_average_after"] = os.getloadavg()[0]
    return result


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
