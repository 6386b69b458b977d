"""An app from folder to running on a real device: build, publish, want, verify, run.

The operator builds and publishes a bundle with the CLI; the hub checks it and signs it
into the tenant's TUF catalog; the device's desired state names the version; the agent
fetches the signed metadata and the bundle over its own authenticated HTTPS, verifies
them, unpacks, and runs the app under its supervisor, reporting its state and health.
A second version replaces the first; dropping the app from the desired state stops it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from system.harness import Hub, cli_ok
from system.procs import StartProc, free_port, wait_for
from system.releases import write_app


def reported_app(api: Any, device_id: str) -> dict[str, Any]:
    app: dict[str, Any] = (api.twin(device_id)["reported"].get("apps") or {}).get("hello", {})
    return app


def test_a_published_app_runs_on_the_device_and_is_replaced_and_removed(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(start_proc, tmp_path / "hub")
    config = hub.data_dir / "client.toml"
    agent = hub.join(tmp_path / "agent", {"role": "kiosk"})
    hub.wait_online([agent.device_id])
    port = free_port()

    bundles = tmp_path / "bundles"
    for version in ("1.0.0", "1.1.0"):
        out = cli_ok(
            config, "app", "build", str(write_app(tmp_path, version, port)), "--out", str(bundles)
        )
        assert f"hello-{version}.tar.gz" in out
    published = json.loads(
        cli_ok(config, "app", "publish", str(bundles / "hello-1.0.0.tar.gz"), "--json")
    )
    assert published["new"] is True
    assert published["version"] == "1.0.0"
    again = cli_ok(config, "app", "publish", str(bundles / "hello-1.0.0.tar.gz"))
    assert "already published" in again

    with hub.client() as api:
        api.set_desired(agent.device_id, {"apps": {"hello": {"version": "1.0.0"}}})
        wait_for(
            lambda: reported_app(api, agent.device_id).get("state") == "running",
            timeout=60,
            what="hello 1.0.0 running on the device",
        )
        app = reported_app(api, agent.device_id)
        assert app["version"] == "1.0.0"
        assert app["isolation"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            assert r.read().decode() == "hello from 1.0.0\n"
        logs = cli_ok(config, "app", "logs", agent.device_id, "hello", "-n", "20")
        assert "GET /index.html" in logs
        shown = api.app("hello")
        assert [r["version"] for r in shown["releases"]] == ["1.0.0"]
        assert shown["devices"][agent.device_id]["version"] == "1.0.0"

        # A new version replaces the running one.
        cli_ok(config, "app", "publish", str(bundles / "hello-1.1.0.tar.gz"))
        api.set_desired(agent.device_id, {"apps": {"hello": {"version": "1.1.0"}}})
        wait_for(
            lambda: (
                reported_app(api, agent.device_id).get("version") == "1.1.0"
                and reported_app(api, agent.device_id).get("state") == "running"
            ),
            timeout=60,
            what="hello 1.1.0 running",
        )

        def serves(text: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
                    return bool(r.read().decode() == text)
            except OSError:
                return False

        wait_for(lambda: serves("hello from 1.1.0\n"), timeout=20, what="the new version serving")
        listing = cli_ok(config, "app", "ls")
        assert "hello" in listing
        assert "1.1.0" in listing

        # A version that is not in the catalog is reported, and the running one stays.
        api.set_desired(agent.device_id, {"apps": {"hello": {"version": "9.9.9"}}})
        wait_for(
            lambda: "error" in reported_app(api, agent.device_id),
            timeout=60,
            what="the missing version reported",
        )
        assert reported_app(api, agent.device_id)["version"] == "1.1.0"
        assert serves("hello from 1.1.0\n")

        # Dropping the app from the desired state stops it.
        api.set_desired(agent.device_id, {"apps": {}})
        wait_for(
            lambda: not reported_app(api, agent.device_id),
            timeout=60,
            what="hello gone from the device",
        )
        wait_for(lambda: not serves("hello from 1.1.0\n"), timeout=20, what="hello stopped")
    assert not (agent.data_dir / "apps" / "hello" / "versions").exists()
