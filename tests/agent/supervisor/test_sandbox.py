"""The sandbox on this device: bubblewrap confinement and cgroup limits, for real."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from roost.agent.supervisor import AppState, Capabilities, RestartPolicy, Supervisor

from .conftest import QUICK, py_spec, until

PROBE_WRITES = """
import json, os, sys
results = {}
for label, path in json.loads(sys.argv[1]).items():
    try:
        with open(path, "w") as f:
            f.write("x")
        results[label] = True
    except OSError:
        results[label] = False
print(json.dumps(results), flush=True)
"""
CONNECT = """
import json, os, socket
try:
    socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=2).close()
    print(json.dumps("connected"), flush=True)
except OSError as err:
    print(json.dumps(f"refused: {err}"), flush=True)
"""
HOG = """
chunks = []
for _ in range(60):
    chunks.append(bytearray(8 << 20))  # 480 MiB in all, touched
print("survived", flush=True)
"""


async def _run_once(
    tmp_path: Path, caps: Capabilities, name: str, code: str, **kw: object
) -> object:
    """Run the app to its end and return the JSON it printed last."""
    spec = py_spec(tmp_path, name, code, restart=RestartPolicy("never"), **kw)
    async with Supervisor(capabilities=caps, settings=QUICK) as sup:
        await sup.apply({name: spec})
        await until(lambda: sup.states()[name].state in (AppState.STOPPED, AppState.FAILED))
        assert sup.states()[name].isolation.startswith("bwrap")
        return json.loads(sup.tail(name, 1)[0])


async def test_writes_only_in_data_dir_and_private_tmp(
    tmp_path: Path, bwrap_caps: Capabilities
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    host_tmp = Path("/tmp") / f"roost-sandbox-{uuid.uuid4().hex}"
    app_dir = tmp_path / "apps" / "jail"
    targets = {
        "app_dir": str(app_dir / "x"),
        "etc": "/etc/roost-sandbox-test",
        "root": "/root/roost-sandbox-test",
        "data_dir": str(data_dir / "ok"),
        "tmp": str(host_tmp),
    }
    code = f"import sys; sys.argv[1:] = [{json.dumps(targets)!r}]\n" + PROBE_WRITES
    results = await _run_once(tmp_path, bwrap_caps, "jail", code, data_dir=data_dir)
    assert results == {"app_dir": False, "etc": False, "root": False, "data_dir": True, "tmp": True}
    assert (data_dir / "ok").read_text() == "x"
    assert not host_tmp.exists()  # the app's /tmp was its own
    assert not Path("/etc/roost-sandbox-test").exists()  # noqa: ASYNC240 - a test


@pytest.mark.parametrize(("network", "connected"), [(False, False), (True, True)])
async def test_network_only_when_asked(
    tmp_path: Path, bwrap_caps: Capabilities, network: bool, connected: bool
) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await _run_once(
            tmp_path, bwrap_caps, "net", CONNECT, env={"PORT": str(port)}, network=network
        )
    assert (result == "connected") == connected, result


async def test_memory_limit_stops_a_hog(tmp_path: Path, device_caps: Capabilities) -> None:
    """By the cgroup where the device has a writable memory controller, else by rlimits."""
    spec = py_spec(
        tmp_path, "hog", HOG, memory_bytes=64 << 20, cpu=0.5, restart=RestartPolicy("never")
    )
    async with Supervisor(capabilities=device_caps, settings=QUICK) as sup:
        await sup.apply({"hog": spec})
        await until(lambda: sup.states()["hog"].last_exit is not None, timeout=30)
        status = sup.states()["hog"]
        limited_by = "cgroup" if device_caps.cgroup is not None else "rlimits"
        assert limited_by in status.isolation
        assert status.state is AppState.FAILED
        assert status.last_exit != 0
        assert "survived" not in sup.tail("hog")


async def test_rlimits_stop_a_hog_without_cgroups(tmp_path: Path) -> None:
    spec = py_spec(tmp_path, "hog", HOG, memory_bytes=64 << 20, restart=RestartPolicy("never"))
    async with Supervisor(capabilities=Capabilities(), settings=QUICK) as sup:
        await sup.apply({"hog": spec})
        await until(lambda: sup.states()["hog"].state is AppState.FAILED, timeout=30)
        assert sup.states()["hog"].isolation == "rlimits"
        assert any("MemoryError" in line for line in sup.tail("hog"))


async def test_stop_leaves_no_process_in_the_sandbox(
    tmp_path: Path, bwrap_caps: Capabilities
) -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
        "print('up', flush=True); time.sleep(60)\n"
    )
    async with Supervisor(capabilities=bwrap_caps, settings=QUICK) as sup:
        await sup.apply({"box": py_spec(tmp_path, "box", code)})
        await until(lambda: "up" in sup.tail("box"))
        pid = sup.states()["box"].pid
        assert pid is not None
        from roost.agent.supervisor.process import descendants

        tree = descendants(pid) | {pid}
        assert len(tree) >= 3
        await sup.apply({})
    assert "bye" in (tmp_path / "logs" / "box.log").read_text()
    from .conftest import alive

    assert not any(alive(p) for p in tree)
