"""Releases of a small web app for system tests of updates, and what a device shows of them.

``write_app`` makes the folder of ``hello`` at a version: it serves ``index.html`` over
HTTP on a port of the test's choosing, saying which version it is (``served``), so a test
can tell from outside which version a device runs. A payload of random bytes, different
per version, makes a bundle large enough that installing it takes a moment.
``Reports`` polls what a device reports of the app and remembers every version it ever
reported, so a test can prove a version never ran.
"""

from __future__ import annotations

import hashlib
import random
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roost.apps.bundle import BuiltBundle, build_bundle
from roost.apps.installs import MARKER
from roost.client import RoostClient
from system.procs import wait_for

APP = "hello"

_MANIFEST = """\
name = "hello"
version = "{version}"
description = "answers hello over HTTP"
command = ["/usr/bin/python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
network = true
ports = [{{ port = {port} }}]

[health]
kind = "http"
port = {port}
interval = 1
timeout = 1
grace = 10
"""

PAYLOAD_FILE_BYTES = 1 << 20


def greeting(version: str, word: str = "hello") -> str:
    """What version ``version`` of the app answers at ``/index.html``."""
    return f"{word} from {version}\n"


def write_app(
    root: Path, version: str, port: int, *, payload_mb: int = 0, word: str = "hello"
) -> Path:
    """The app's folder at ``version``: manifest, ``index.html``, and ``payload_mb`` files
    of 1 MiB of random bytes (seeded by version and word, so a rebuild is identical)."""
    source = root / f"{APP}-{version}-{word}"
    source.mkdir(parents=True)
    (source / "roost.toml").write_text(_MANIFEST.format(version=version, port=port))
    (source / "index.html").write_text(greeting(version, word))
    rng = random.Random(f"{version}/{word}")
    for index in range(payload_mb):
        payload = source / "payload" / f"{index:02d}.bin"
        payload.parent.mkdir(exist_ok=True)
        payload.write_bytes(rng.randbytes(PAYLOAD_FILE_BYTES))
    return source


class Releases:
    """Bundles of the app listening on ``port``, built under ``work`` once each."""

    def __init__(self, work: Path, port: int, payload_mb: int = 0) -> None:
        self.work = work
        self.port = port
        self.payload_mb = payload_mb
        self._built: dict[tuple[str, str], BuiltBundle] = {}

    def bundle(self, version: str, word: str = "hello") -> BuiltBundle:
        """The bundle of ``version`` whose page says ``word``."""
        key = (version, word)
        if key not in self._built:
            source = write_app(
                self.work / "src", version, self.port, payload_mb=self.payload_mb, word=word
            )
            self._built[key] = build_bundle(source, self.work / "bundles" / word)
        return self._built[key]

    def source(self, version: str, word: str = "hello") -> Path:
        """The folder the bundle of ``version`` was built from."""
        self.bundle(version, word)
        return self.work / "src" / f"{APP}-{version}-{word}"

    def publish(self, api: RoostClient, version: str) -> dict[str, Any]:
        """Publish ``version`` (built if need be); the hub's answer."""
        published: dict[str, Any] = api.publish_app(self.bundle(version).path)
        return published


def tree(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory``, but the install marker."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MARKER
    }


def served(port: int) -> str | None:
    """What the app answers at ``/index.html`` on ``port``, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            text: str = r.read().decode()
            return text
    except OSError:
        return None


def catalog_dir(hub_data: Path) -> Path:
    """The default tenant's TUF repository in a hub's data dir."""
    return hub_data / "catalog" / "default"


class Reports:
    """What a device reports of the app, polled; remembers every version it reported."""

    def __init__(self, api: RoostClient, device_id: str) -> None:
        self.api = api
        self.device_id = device_id
        self.versions: set[str] = set()

    def now(self) -> dict[str, Any]:
        apps = self.api.twin(self.device_id)["reported"].get("apps") or {}
        app: dict[str, Any] = apps.get(APP) or {}
        if app.get("version"):
            self.versions.add(app["version"])
        return app

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60
    ) -> dict[str, Any]:
        """Poll until ``predicate`` holds for the reported app; that report."""

        def check() -> dict[str, Any]:
            app = self.now()
            return app if predicate(app) else {}

        return wait_for(check, timeout=timeout, interval=0.2, what=what)

    def wait_running(self, version: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait(
            lambda app: app.get("version") == version and app.get("state") == "running",
            f"{APP} {version} running on the device",
            timeout,
        )
