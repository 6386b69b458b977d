"""Certificate renewal without operator action, against a real hub, broker and agent.

The hub issues 20-second device certificates; the agent renews when less than a third of
the lifetime is left. The test waits for the agent to swap its certificate, checks the
hub saw it too, lets the first certificate expire and then kills the broker: the agent
can only come back with the renewed certificate.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from pathlib import Path

from system.harness import Hub, kill_pid
from system.procs import StartProc, wait_for

CERT_TTL_S = 20


def identity(data_dir: Path) -> dict[str, float]:
    loaded: dict[str, float] = json.loads((data_dir / "identity.json").read_text())
    return loaded


def issued_certs(hub: Hub, device_id: str) -> int:
    """Certificates the hub has issued to ``device_id`` (read from its SQLite file)."""
    url = f"file:{hub.data_dir / 'roost.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(url, uri=True)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM device_certs WHERE device_id = ?", (device_id,)
        ).fetchone()
    return int(count)


def test_agent_renews_its_certificate_and_reconnects_with_it(
    start_proc: StartProc, tmp_path: Path, mosquitto_bin: str
) -> None:
    hub = Hub.start(
        start_proc, tmp_path / "hub", settings={"ROOST_DEVICE_CERT_TTL_S": str(CERT_TTL_S)}
    )
    agent = hub.join(tmp_path / "agent")
    hub.wait_online([agent.device_id])
    first = identity(agent.data_dir)
    first_pem = (agent.data_dir / "identity.pem").read_text()
    with hub.client() as api:
        first_not_after = api.device(agent.device_id)["cert_not_after"]

        renewed = wait_for(
            lambda: identity(agent.data_dir)["not_after"] > first["not_after"] or None,
            timeout=CERT_TTL_S + 10,
            interval=0.2,
            what="the agent to renew its certificate",
        )
        assert renewed
        # A new key as well as a new certificate.
        assert (agent.data_dir / "identity.pem").read_text() != first_pem
        wait_for(
            lambda: api.device(agent.device_id)["cert_not_after"] > first_not_after,
            timeout=10,
            what="the hub to record the renewed certificate",
        )
        # One renewal, not a renewal loop: enrollment's certificate plus one.
        assert issued_certs(hub, agent.device_id) == 2
        hub.wait_online([agent.device_id])
        assert api.command(agent.device_id, "ping", timeout=10)["status"] == "ok"

        # Once the first certificate has expired, only the renewed one can connect.
        wait_for(
            lambda: time.time() > first["not_after"] + 1,
            timeout=CERT_TTL_S + 5,
            what="the first certificate to expire",
        )
        connects = agent.proc.log_text().count("online as")
        kill_pid(hub.broker_pid())
        wait_for(
            lambda: agent.proc.log_text().count("online as") > connects,
            timeout=30,
            what="the agent to reconnect to the restarted broker",
        )
        hub.wait_online([agent.device_id])
        assert api.command(agent.device_id, "ping", timeout=10)["status"] == "ok"
