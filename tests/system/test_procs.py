"""The process helpers themselves: ports, polling, logs, stop and kill."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from system.procs import Proc, StartProc, free_port, port_is_open, wait_for

PY = sys.executable


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_for_returns_the_truthy_value() -> None:
    calls = iter([0, None, "", "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.001) == "done"


def test_wait_for_times_out_with_a_description() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the moon"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, what="the moon")


def test_wait_for_ignores_listed_errors_and_reports_the_last() -> None:
    def refuse() -> bool:
        raise ConnectionRefusedError("nobody home")

    with pytest.raises(AssertionError, match="nobody home"):
        wait_for(refuse, timeout=0.05, interval=0.01, ignore=(ConnectionRefusedError,))


def test_wait_for_lets_other_errors_through() -> None:
    def broken() -> bool:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        wait_for(broken, timeout=1)


def test_proc_logs_output_and_returns_its_code(start_proc: StartProc) -> None:
    proc = start_proc([PY, "-c", "import sys; print('hello'); sys.exit(3)"], name="hello")
    assert proc.wait(10) == 3
    assert "hello" in proc.log_text()
    assert proc.log_path.name == "hello.log"


def test_stop_sends_sigterm_first(tmp_path: Path) -> None:
    script = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
    script += "print('ready', flush=True)\ntime.sleep(60)\n"
    with Proc([PY, "-c", script], log_dir=tmp_path, name="polite") as proc:
        proc.wait_for_log("ready")
        assert proc.stop() == 7
    assert not proc.alive


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    script += "print('ready', flush=True)\ntime.sleep(60)\n"
    with Proc([PY, "-c", script], log_dir=tmp_path, name="stubborn") as proc:
        proc.wait_for_log("ready")
        assert proc.stop(timeout=0.2) == -signal.SIGKILL


def test_kill_is_a_crash(start_proc: StartProc) -> None:
    proc = start_proc([PY, "-c", "import time; time.sleep(60)"])
    assert proc.alive
    assert proc.kill() == -signal.SIGKILL
    assert not proc.alive


def test_wait_for_log_fails_fast_when_the_process_dies(start_proc: StartProc) -> None:
    proc = start_proc([PY, "-c", "print('oops: bad config')"], name="dies")
    with pytest.raises(AssertionError, match=r"(?s)dies exited with 0 .*oops: bad config"):
        proc.wait_for_log("never printed", timeout=10)


def test_log_names_do_not_collide(tmp_path: Path) -> None:
    first = Proc([PY, "-c", "pass"], log_dir=tmp_path, name="twin").start()
    second = Proc([PY, "-c", "pass"], log_dir=tmp_path, name="twin").start()
    assert first.wait(10) == second.wait(10) == 0
    assert first.log_path != second.log_path


def test_mosquitto_starts_on_a_free_port(
    mosquitto_bin: str, start_proc: StartProc, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = start_proc([mosquitto_bin, "-c", config], name="mosquitto")
    wait_for(lambda: port_is_open(port), timeout=10, what=f"mosquitto on port {port}")
    assert proc.alive
    assert proc.stop() == 0
