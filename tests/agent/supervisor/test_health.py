"""Health: the pure verdict, and http/tcp/command checks turning unhealthy and back."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.agent.supervisor import AppState, Capabilities, HealthCheck, Supervisor
from roost.agent.supervisor.health import HealthTracker

from .conftest import PYTHON, QUICK, free_port, py_spec, until

CHECK = HealthCheck(kind="tcp", port=1, grace_s=5.0, retries=2)


@pytest.mark.parametrize(
    ("probes", "healthy"),
    [
        ([], None),
        ([(1.0, False), (2.0, False), (3.0, False)], None),  # all in the grace period
        ([(6.0, False)], None),  # one failure of two
        ([(6.0, False), (7.0, False)], False),
        ([(6.0, False), (7.0, True), (8.0, False)], True),  # a success resets the count
        ([(1.0, True), (6.0, False), (7.0, False)], False),
        ([(6.0, False), (7.0, False), (8.0, True)], True),
    ],
)
def test_tracker(probes: list[tuple[float, bool]], healthy: bool | None) -> None:
    tracker = HealthTracker(CHECK, started_at=0.0)
    for now, ok in probes:
        tracker = tracker.observe(ok, now)
    assert tracker.healthy is healthy


# Serves HTTP (or just accepts TCP) while the file SICK does not exist.
SERVER = """
import http.server, os, socketserver, sys
port, sick = int(os.environ["PORT"]), os.environ["SICK"]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if os.path.exists(sick) else 200)
        self.end_headers()
    def log_message(self, *a):
        pass
socketserver.TCPServer.allow_reuse_address = True
with socketserver.TCPServer(("127.0.0.1", port), H) as s:
    s.serve_forever()
"""
TCP_SERVER = """
import os, socket, time
port, sick = int(os.environ["PORT"]), os.environ["SICK"]
s = None
while True:
    if os.path.exists(sick) and s:
        s.close(); s = None
    elif not os.path.exists(sick) and not s:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port)); s.listen()
    time.sleep(0.02)
"""


@pytest.mark.parametrize("kind", ["http", "tcp", "command"])
async def test_check_turns_unhealthy_and_back(tmp_path: Path, kind: str) -> None:
    port, sick = free_port(), tmp_path / "sick"
    check = HealthCheck(
        kind=kind,  # type: ignore[arg-type]
        port=port,
        path="/health",
        command=(
            PYTHON,
            "-c",
            f"import os, sys; sys.exit(os.path.exists({str(sick)!r}))",
        ),
        interval_s=0.05,
        timeout_s=1.0,
        grace_s=0.0,
        retries=2,
    )
    code = TCP_SERVER if kind == "tcp" else SERVER
    spec = py_spec(
        tmp_path,
        "svc",
        code,
        env={"PORT": str(port), "SICK": str(sick)},
        network=True,
        health=check,
    )
    async with Supervisor(capabilities=Capabilities(), settings=QUICK) as sup:
        await sup.apply({"svc": spec})
        assert sup.states()["svc"].state is AppState.STARTING
        await until(lambda: sup.states()["svc"].state is AppState.RUNNING)
        assert sup.states()["svc"].healthy is True
        sick.touch()
        await until(lambda: sup.states()["svc"].state is AppState.UNHEALTHY)
        assert sup.states()["svc"].healthy is False
        sick.unlink()
        await until(lambda: sup.states()["svc"].state is AppState.RUNNING)
        assert sup.states()["svc"].restarts == 0


async def test_nothing_listening_is_unhealthy(tmp_path: Path) -> None:
    check = HealthCheck(kind="http", port=free_port(), interval_s=0.05, grace_s=0.0, retries=1)
    spec = py_spec(tmp_path, "deaf", "import time; time.sleep(60)", network=True, health=check)
    async with Supervisor(capabilities=Capabilities(), settings=QUICK) as sup:
        await sup.apply({"deaf": spec})
        await until(lambda: sup.states()["deaf"].state is AppState.UNHEALTHY)
