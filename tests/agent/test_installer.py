"""System updates: the device's installer run on a verified, unpacked release, with the
argv, cwd and environment the docs promise; its output logged; failures in one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from roost.agent import installer
from roost.agent.supervisor import tail
from roost.apps.bundle import build_bundle
from roost.apps.installs import AppInstalls, InstalledVersion
from roost.errors import AppError, ConfigError

SYSTEM = """\
name = "fw"
version = "2.0.0"
kind = "system"
environment = {{ CHANNEL = "stable", ROOST_RELEASE_DIR = "/nope" }}

[install]
command = {command}
"""
# Records what it was given, prints a few lines, exits with $EXIT_WITH.
RECORDER = """\
import json, os, sys
print("flashing", sys.argv[1:])
print("line two")
with open(os.environ["RECORD_TO"], "w") as out:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}, out)
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""


def release(tmp_path: Path, command: str = '["image.bin", "--verify"]') -> InstalledVersion:
    source = tmp_path / "src"
    source.mkdir()
    (source / "roost.toml").write_text(SYSTEM.format(command=command))
    (source / "image.bin").write_bytes(b"\0" * 64)
    bundle = build_bundle(source, tmp_path / "bundles").path
    return AppInstalls(tmp_path / "apps").install(bundle)


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    record = tmp_path / "record.json"
    monkeypatch.setenv("RECORD_TO", str(record))
    return script


def test_argv_is_the_installer_then_the_manifests_install_command(tmp_path: Path) -> None:
    fw = release(tmp_path)
    assert installer.installer_argv("rauc  install", fw) == (
        "rauc",
        "install",
        "image.bin",
        "--verify",
    )
    assert installer.installer_argv("'/opt/my tool' -x", fw)[:2] == ("/opt/my tool", "-x")
    with pytest.raises(AppError, match="no system installer configured"):
        installer.installer_argv("  ", fw)
    with pytest.raises(ConfigError, match="system_installer"):
        installer.installer_argv("'unclosed", fw)


def test_the_environment_names_the_release_and_cannot_be_overridden(tmp_path: Path) -> None:
    fw = release(tmp_path)
    env = installer.installer_env(fw, {"PATH": "/bin", "ROOST_RELEASE_NAME": "x"})
    assert env["PATH"] == "/bin"
    assert env["CHANNEL"] == "stable"
    assert env["ROOST_RELEASE_NAME"] == "fw"
    assert env["ROOST_RELEASE_VERSION"] == "2.0.0"
    assert env["ROOST_RELEASE_DIR"] == str(fw.path.resolve())


async def test_an_installer_that_exits_0_installs(tmp_path: Path, recorder: Path) -> None:
    fw = release(tmp_path)
    logs = tmp_path / "logs"
    await installer.install(f"{sys.executable} {recorder}", fw, logs, timeout_s=30)
    got = json.loads((tmp_path / "record.json").read_text())
    assert got["argv"] == ["image.bin", "--verify"]
    assert got["cwd"] == str(fw.path.resolve())
    assert got["env"]["ROOST_RELEASE_DIR"] == str(fw.path.resolve())
    assert got["env"]["ROOST_RELEASE_VERSION"] == "2.0.0"
    lines = tail(logs, "fw", 10)
    assert lines[0].startswith("roost: installing fw 2.0.0: ")
    assert "flashing ['image.bin', '--verify']" in lines
    assert lines[-1] == "roost: the installer exited with code 0"


async def test_an_installer_that_fails_says_so_with_its_last_lines(
    tmp_path: Path, recorder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXIT_WITH", "3")
    fw = release(tmp_path)
    with pytest.raises(AppError) as caught:
        await installer.install(f"{sys.executable} {recorder}", fw, tmp_path / "logs", 30)
    message = str(caught.value)
    assert message.startswith("fw 2.0.0: the installer exited with code 3: flashing")
    assert message.endswith("| line two")
    assert "\n" not in message


async def test_an_installer_that_hangs_is_killed_at_its_timeout(tmp_path: Path) -> None:
    fw = release(
        tmp_path, '["-c", "import os, time; print(os.getpid(), flush=True); time.sleep(60)"]'
    )
    with pytest.raises(AppError, match=r"did not finish within 0.5s: \d+"):
        await installer.install(sys.executable, fw, tmp_path / "logs", timeout_s=0.5)
    line = next(t for t in tail(tmp_path / "logs", "fw", 10) if t.isdigit())
    with pytest.raises(ProcessLookupError):
        os.kill(int(line), 0)


async def test_an_installer_that_is_not_there_fails_cleanly(tmp_path: Path) -> None:
    fw = release(tmp_path)
    with pytest.raises(AppError, match="cannot run the installer /nonexistent/rauc"):
        await installer.install("/nonexistent/rauc install", fw, tmp_path / "logs", 30)
