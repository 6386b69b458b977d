"""Signed updates for virtual devices: python-tuf over the hub's HTTPS, as each device.

A virtual device verifies its tenant's catalog exactly as an agent does, with the
agent's own code: a ``roost.agent.updates.SignedUpdates`` per job over ``hub_fetch``,
every request signed with the device's key and the hub checked against its CA, and the
device's trusted metadata in a directory of its own that outlives the run (rollback
protection included). It downloads and verifies the bundle and keeps it there; it never
unpacks or runs it.

TUF work blocks (file I/O, HTTPS, signatures), so it runs in one pool of ``workers``
threads shared by the whole fleet, never a thread per device. The pool's queue is FIFO
and the driver gives each device at most one job at a time, so devices are served in the
order they asked and one device's retries never push ahead of another's first try.

Counts of what the hub answered (metadata and bundle requests, bytes, requests that got
no answer) go into the run's ``Figures`` under a lock: the threads write, the event loop
reads.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from roost.agent import hubapi
from roost.agent.updates import METADATA_PATH, HubFetch, SignedUpdates, hub_fetch
from roost.errors import (
    HubError,
    HubUnreachableError,
    RoostError,
    UpdateRefusedError,
    WireError,
)
from roost.sim.apps import Fetch, Outcome
from roost.wire.apps import target_path

if TYPE_CHECKING:
    from roost.sim.fleet import Figures

# TUF jobs running at once for the whole simulator.
UPDATE_WORKERS = 16
FETCH_TIMEOUT_S = 30.0


class FleetUpdates:
    """The bounded pool that fetches and verifies releases for every virtual device."""

    def __init__(
        self, hub_url: str, ca_pem: str, figures: Figures, workers: int = UPDATE_WORKERS
    ) -> None:
        self.hub_url = hub_url
        self.figures = figures
        self._context = hubapi.verified_context(ca_pem)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="roost-sim-tuf")
        self._lock = threading.Lock()

    async def fetch(
        self, device_id: str, pem_path: Path, data_dir: Path, fetches: list[Fetch]
    ) -> list[Outcome]:
        """Download and verify ``fetches`` as ``device_id``, in the pool (FIFO)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, self.fetch_blocking, device_id, pem_path, data_dir, fetches
        )

    def fetch_blocking(
        self, device_id: str, pem_path: Path, data_dir: Path, fetches: list[Fetch]
    ) -> list[Outcome]:
        """What one agent does for an update, up to a verified bundle on its disk."""
        try:
            signer = hubapi.device_signer(device_id, pem_path.read_bytes())
        except (OSError, RoostError) as err:
            why = f"cannot load the device key: {err}"
            return [Outcome(f.name, f.version, why, final=True) for f in fetches]
        fetch = hub_fetch(self.hub_url, self._context, signer, FETCH_TIMEOUT_S)
        updates = SignedUpdates(data_dir, self._counted(fetch))
        return [self._one(updates, f) for f in fetches]

    def _one(self, updates: SignedUpdates, fetch: Fetch) -> Outcome:
        path = target_path(fetch.name, fetch.version)
        try:
            if updates.target(path) is None:
                error = f"the signed catalog has no target {path}"
                return Outcome(fetch.name, fetch.version, error, final=True)
            updates.download(path)
        except UpdateRefusedError as err:
            return Outcome(fetch.name, fetch.version, str(err), final=True)
        except RoostError as err:  # the hub unreachable, a disk error: tried again later
            return Outcome(fetch.name, fetch.version, str(err))
        return Outcome(fetch.name, fetch.version)

    def _counted(self, fetch: HubFetch) -> HubFetch:
        """The same fetch, counted: what the hub answered (any status) and what it did not."""

        def counted(path: str, max_bytes: int) -> bytes:
            try:
                data = fetch(path, max_bytes)
            except HubUnreachableError:
                self._count(path, 0, answered=False)
                raise
            except (HubError, WireError):  # an answer all the same (404: no newer root)
                self._count(path, 0)
                raise
            self._count(path, len(data))
            return data

        return counted

    def _count(self, path: str, size: int, answered: bool = True) -> None:
        figures = self.figures
        with self._lock:
            if not answered:
                figures.tuf_unanswered += 1
            elif path.startswith(METADATA_PATH):
                figures.tuf_metadata_requests += 1
            else:
                figures.tuf_target_requests += 1
            figures.tuf_bytes += size

    def close(self) -> None:
        """Drop the jobs not started yet; those running end within their timeout."""
        self._pool.shutdown(wait=False, cancel_futures=True)
