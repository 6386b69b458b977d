"""The phases of one ``roost sim`` run: reuse or enroll, connect, run, stop cleanly.

Progress goes to stderr (rich), one summary line to stdout, and the figures to
``status.json`` in the data dir. The first Ctrl-C (or SIGTERM) stops cleanly: every
device says it goes offline and disconnects; a second Ctrl-C gives up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from roost.client import ClientConfig, RoostClient
from roost.errors import ConfigError
from roost.pki import JoinToken, fingerprint
from roost.sim.enroll import enroll_devices
from roost.sim.fleet import SIM_LABELS, Figures, Fleet, StatusFile
from roost.sim.store import IdentityCache

T = TypeVar("T")
TOKEN_TTL_S = 3600


class _Stopped(Exception):
    """Ctrl-C or SIGTERM arrived during a phase."""


class SimRun:
    def __init__(
        self, config: Path | None, devices: int, data: Path, heartbeat: float, duration: float
    ) -> None:
        self.config = ClientConfig.load(config)
        self.devices = devices
        self.heartbeat = heartbeat
        self.duration = duration
        self.cache = IdentityCache(data)
        self.figures = Figures(devices=devices)
        self.status = StatusFile(data / "status.json", self.figures)
        self.console = Console(stderr=True)
        self._stop: asyncio.Event | None = None

    # -- before the event loop: what can be reused, and a token for the rest ---------------

    def run(self) -> None:
        try:
            ca_pem = self.config.ca_file.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read the hub's CA {self.config.ca_file}: {err}") from err
        self.cache.bind(self.config.hub_url, fingerprint(ca_pem), ca_pem)
        self.status.write("preparing")
        with RoostClient(self.config, timeout=120) as api:
            ids = self._reusable(api)
            token = None
            if len(ids) < self.devices:
                answer = api.create_join_token(SIM_LABELS, uses=None, ttl_s=TOKEN_TTL_S)
                token = JoinToken.decode(answer["token"])
        try:
            asyncio.run(self._main(ids, token, ca_pem))
        finally:
            self.status.write("stopped")
        print(self.summary(), flush=True)

    def _reusable(self, api: RoostClient) -> list[str]:
        """Cached identities the hub still knows as active devices."""
        cached = self.cache.device_ids()
        if not cached:
            return []
        active = {d["id"] for d in api.devices() if d["state"] == "active"}
        for device_id in cached:
            if device_id not in active:
                self.cache.forget(device_id)
        return [d for d in cached if d in active][: self.devices]

    # -- in the event loop ---------------------------------------------------------------

    async def _main(self, ids: list[str], token: JoinToken | None, ca_pem: str) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        columns = (
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
        )
        with Progress(*columns, console=self.console) as progress:
            fleet: Fleet | None = None
            tasks: list[asyncio.Task[None]] = []
            try:
                with contextlib.suppress(_Stopped):  # a signal asked for a clean stop
                    ids = ids + await self._enroll(progress, token, ca_pem, self.devices - len(ids))
                    fleet = Fleet(self.cache, ids, self.heartbeat, self.figures)
                    tasks = [
                        asyncio.create_task(fleet.heartbeats()),
                        asyncio.create_task(fleet.resend()),
                    ]
                    await self._connect(progress, fleet)
                    await self._run(progress)
            finally:
                self.status.write("stopping")
                # Heartbeats go on while devices take their leave: a device still
                # connected must not fall silent and be judged offline meanwhile.
                if fleet is not None:
                    await fleet.close_all()
                for task in tasks:
                    task.cancel()

    def _on_signal(self) -> None:
        assert self._stop is not None
        self._stop.set()
        # A second Ctrl-C is the default one: it interrupts at once.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    async def _until_stopped(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._stop is not None
        work = asyncio.ensure_future(coroutine)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                raise _Stopped
        return work.result()

    async def _enroll(
        self, progress: Progress, token: JoinToken | None, ca_pem: str, count: int
    ) -> list[str]:
        if token is None or count <= 0:
            return []
        task = progress.add_task("enroll", total=count, note="")
        self.status.write("enrolling")
        started = time.monotonic()

        def enrolled(_device_id: str) -> None:
            self.figures.enrolled += 1
            progress.advance(task)

        try:
            return await self._until_stopped(
                enroll_devices(token, ca_pem, self.cache, count, on_enrolled=enrolled)
            )
        finally:
            self.figures.enroll_s = round(time.monotonic() - started, 2)

    async def _connect(self, progress: Progress, fleet: Fleet) -> None:
        task = progress.add_task("connect", total=len(fleet.links), note="")
        self.status.write("connecting")
        started = time.monotonic()

        def done() -> None:
            progress.advance(task)
            failed = self.figures.connect_failed
            progress.update(task, note=f"[red]{failed} failed[/]" if failed else "")

        try:
            await self._until_stopped(fleet.connect_all(done))
        finally:
            self.figures.connect_s = round(time.monotonic() - started, 2)

    async def _run(self, progress: Progress) -> None:
        assert self._stop is not None
        task = progress.add_task("run", total=self.duration or None, note="")
        self.status.write("running")
        started = time.monotonic()
        first_beats = last_beats = self.figures.heartbeats
        last_time = started
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1.0)
            now = time.monotonic()
            self.figures.run_s = round(now - started, 2)
            self.figures.heartbeats_per_s = round(
                (self.figures.heartbeats - first_beats) / max(now - started, 1e-3), 1
            )
            rate = (self.figures.heartbeats - last_beats) / max(now - last_time, 1e-3)
            last_beats, last_time = self.figures.heartbeats, now
            progress.update(
                task,
                completed=min(now - started, self.duration) if self.duration else 0,
                note=f"{self.figures.online} online · {rate:.0f} heartbeats/s · "
                f"{self.figures.commands} commands",
            )
            self.status.write()
            if self.duration and now - started >= self.duration:
                break

    def summary(self) -> str:
        f = self.figures
        failed = f", {f.connect_failed} failed" if f.connect_failed else ""
        apps = ""
        if f.apps_verified or f.apps_failed:
            apps = f"{f.apps_verified} app releases verified, {f.apps_failed} refused, "
        return (
            f"sim: {f.devices} devices, {f.connected} connected in {f.connect_s:g}s{failed} "
            f"({f.enrolled} enrolled in {f.enroll_s:g}s); {f.heartbeats} heartbeats "
            f"({f.heartbeats_per_s:.0f}/s while running), {f.commands} commands answered, "
            f"{f.reported} desired states reported, {apps}{f.disconnects} disconnects; "
            f"ran {f.run_s:g}s"
        )
