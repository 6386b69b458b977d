"""The apps reconciler against a real signed catalog (``TenantRepository`` on disk) served
through the fetch seam, with a real supervisor: transient errors are retried, refusals
are final, a staged release applies from disk, a system release needs an installer."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from roost.agent.apps import BAD_KEY, AppReconciler
from roost.agent.supervisor import Capabilities, Supervisor
from roost.apps.bundle import build_bundle
from roost.catalog import BlobStore, TenantRepository
from roost.errors import HubError, HubUnreachableError, NotFoundError
from roost.settings import AgentSettings
from roost.wire.apps import WantedApp, target_path

from .supervisor.conftest import PYTHON, QUICK, until

APP = 'name = "{name}"\nversion = "{version}"\ncommand = ["{python}", "-c", "{code}"]\n'
SLEEPER = "import time; time.sleep(60)"
SYSTEM = 'name = "fw"\nversion = "{version}"\nkind = "system"\n[install]\ncommand = ["go"]\n'


@dataclass
class Hub:
    """A tenant's catalog, served as the hub serves it; ``down`` makes it unreachable,
    ``status`` makes it answer with that HTTP status."""

    root: Path
    down: bool = False
    status: int | None = None
    fetched: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blobs = BlobStore(self.root / "blobs")
        self.repo = TenantRepository(self.root / "catalog", self.blobs)

    def publish(self, manifest: str, *, name: str, version: str) -> None:
        """Publish a folder with ``manifest`` as ``name``@``version`` (which it may not be)."""
        source = self.root / "src" / f"{name}-{version}"
        source.mkdir(parents=True)
        (source / "roost.toml").write_text(manifest)
        blob = self.blobs.put(build_bundle(source, self.root / "bundles").path)
        self.repo.add_target(target_path(name, version), blob, {})

    def fetch(self, path: str, max_bytes: int) -> bytes:
        self.fetched.append(path)
        if self.down:
            raise HubUnreachableError("https://hub.test", "connection refused")
        if self.status is not None:
            raise HubError("the hub is unwell", self.status)
        try:
            if path.startswith("/v1/tuf/metadata/"):
                return self.repo.metadata(path.removeprefix("/v1/tuf/metadata/"))
            return self.repo.target_file(path.removeprefix("/v1/tuf/targets/")).read_bytes()
        except NotFoundError as err:
            raise HubError(str(err), 404) from err


class Store(dict[str, Any]):
    def set(self, key: str, value: Any) -> None:
        self[key] = value


@dataclass
class Device:
    apps: AppReconciler
    store: Store
    changes: list[int]

    def want(self, **apps: WantedApp) -> None:
        self.apps.want(apps)

    async def until(self, name: str, predicate: Callable[[dict[str, Any]], bool]) -> None:
        await until(lambda: predicate(self.apps.report().get(name, {})), timeout=20)


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path / "hub")


@contextlib.asynccontextmanager
async def device(tmp_path: Path, hub: Hub, **settings: Any) -> AsyncIterator[Device]:
    config = AgentSettings.load(env={}, data_dir=tmp_path / "device", **settings)
    store = Store()
    changes: list[int] = []
    caps = Capabilities(bwrap=None, cgroup=None)
    async with Supervisor(capabilities=caps, settings=QUICK) as sup:
        apps = AppReconciler(config, lambda: hub.fetch, sup, store, lambda: changes.append(1))
        task = asyncio.create_task(apps.run())
        try:
            yield Device(apps, store, changes)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def app(name: str, version: str) -> str:
    return APP.format(name=name, version=version, python=PYTHON, code=SLEEPER)


async def test_an_unreachable_hub_is_retried_until_the_release_runs(
    tmp_path: Path, hub: Hub
) -> None:
    hub.publish(app("web", "1.0.0"), name="web", version="1.0.0")
    hub.down = True
    async with device(tmp_path, hub) as dev:
        dev.want(web=WantedApp("1.0.0"))
        await dev.until("web", lambda e: "cannot reach the hub" in e.get("error", ""))
        entry = dev.apps.report()["web"]
        assert (entry["state"], entry["version"], entry["wanted"]) == ("installing", None, "1.0.0")
        hub.down = False
        await dev.until("web", lambda e: e["state"] == "running" and e["version"] == "1.0.0")
        assert "error" not in dev.apps.report()["web"]


async def test_a_hub_answering_5xx_is_transient_too(tmp_path: Path, hub: Hub) -> None:
    hub.publish(app("web", "1.0.0"), name="web", version="1.0.0")
    hub.status = 503
    async with device(tmp_path, hub) as dev:
        dev.want(web=WantedApp("1.0.0"))
        await dev.until("web", lambda e: e.get("state") == "installing" and "error" in e)
        hub.status = None
        await dev.until("web", lambda e: e["state"] == "running")


async def test_a_release_that_is_not_what_it_claims_fails_for_good(
    tmp_path: Path, hub: Hub
) -> None:
    hub.publish(app("web", "1.0.0"), name="web", version="1.0.0")
    hub.publish(app("web", "1.0.0"), name="web", version="2.0.0")  # 2.0.0 holds 1.0.0
    async with device(tmp_path, hub) as dev:
        dev.want(web=WantedApp("1.0.0"))
        await dev.until("web", lambda e: e.get("state") == "running")
        dev.want(web=WantedApp("2.0.0"))
        await dev.until("web", lambda e: e["state"] == "failed")
        entry = dev.apps.report()["web"]
        assert entry["version"] == "1.0.0"  # the old one keeps running
        assert entry["error"] == "the catalog's web@2.0.0 holds web@1.0.0"
        fetched = len(hub.fetched)
        dev.apps.want({"web": WantedApp("2.0.0")})
        await dev.apps.reconcile()
        assert len(hub.fetched) == fetched  # not tried again
        assert dev.store.get(BAD_KEY) == {}  # a refusal is not kept across restarts


async def test_a_staged_release_applies_from_disk(tmp_path: Path, hub: Hub) -> None:
    for version in ("1.0.0", "1.1.0"):
        hub.publish(app("web", version), name="web", version=version)
    async with device(tmp_path, hub) as dev:
        dev.want(web=WantedApp("1.0.0"))
        await dev.until("web", lambda e: e.get("state") == "running")
        dev.want(web=WantedApp("1.1.0", apply=False))
        await dev.until("web", lambda e: e["state"] == "staged")
        assert dev.apps.report()["web"]["version"] == "1.0.0"
        hub.down = True  # applying must not need the hub
        dev.want(web=WantedApp("1.1.0"))
        await dev.until("web", lambda e: e["state"] == "running" and e["version"] == "1.1.0")


async def test_a_system_release_without_an_installer_fails(tmp_path: Path, hub: Hub) -> None:
    hub.publish(SYSTEM.format(version="1.0.0"), name="fw", version="1.0.0")
    async with device(tmp_path, hub) as dev:
        dev.want(fw=WantedApp("1.0.0"))
        await dev.until("fw", lambda e: e.get("state") == "failed")
        entry = dev.apps.report()["fw"]
        assert entry["kind"] == "system"
        assert entry["error"].startswith("this device has no system installer configured")


async def test_a_system_release_is_installed_by_the_installer(tmp_path: Path, hub: Hub) -> None:
    hub.publish(SYSTEM.format(version="1.0.0"), name="fw", version="1.0.0")
    installer = f"{sys.executable} -c 'import sys; assert sys.argv[1:] == [\"go\"]'"
    async with device(tmp_path, hub, system_installer=installer) as dev:
        dev.want(fw=WantedApp("1.0.0"))
        await dev.until("fw", lambda e: e.get("state") == "installed")
        assert dev.apps.report()["fw"]["version"] == "1.0.0"
        assert dev.apps.supervisor.states() == {}  # nothing supervised
