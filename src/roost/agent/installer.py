"""System updates: a verified, unpacked release of kind ``system`` handed to the installer
the device is configured with (``system_installer`` in the agent's settings: RAUC,
SWUpdate, a package manager, a script of the device's maker).

The agent does not supervise a system update, it runs the installer once:

- argv: the words of ``system_installer`` (split like a shell would, no shell runs)
  followed by the words of the manifest's ``[install] command``; with
  ``system_installer = "rauc install"`` and ``command = ["update.raucb"]`` that is
  ``rauc install update.raucb``;
- cwd: the unpacked release, ``DATA/apps/<name>/versions/<version>``;
- environment: the agent's own, plus the manifest's ``environment``, plus
  ``ROOST_RELEASE_NAME``, ``ROOST_RELEASE_VERSION`` and ``ROOST_RELEASE_DIR`` (the
  absolute cwd), which a manifest cannot override;
- stdin: ``/dev/null``; stdout and stderr go to ``DATA/app-logs/<name>.log`` (rotated
  like an app's log, so ``app-logs`` shows it);
- at most ``system_install_timeout_s``; then its whole session is killed.

Exit 0 means installed. Anything else raises ``AppError`` with the exit code and the last
lines of the installer's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from roost.agent.supervisor.logs import RotatingLog
from roost.apps.installs import InstalledVersion
from roost.errors import AppError, ConfigError

NO_INSTALLER = (
    "this device has no system installer configured "
    "(system_installer in the agent's settings.toml, or ROOST_SYSTEM_INSTALLER)"
)
# How much of the installer's output its error carries.
TAIL_LINES = 10
_READ_CHUNK = 64 << 10


def installer_argv(installer: str, release: InstalledVersion) -> tuple[str, ...]:
    """The installer's command line for ``release`` (module docstring)."""
    try:
        words = shlex.split(installer)
    except ValueError as err:
        raise ConfigError(f"setting system_installer: {err}") from err
    if not words:
        raise AppError(NO_INSTALLER)
    if release.manifest.install is None:
        raise AppError(f"{release.app} {release.version} is not a system update")
    return (*words, *release.manifest.install.command)


def installer_env(release: InstalledVersion, base: Mapping[str, str]) -> dict[str, str]:
    """The installer's environment: ``base``, the manifest's, and Roost's own variables."""
    return {
        **base,
        **release.manifest.env,
        "ROOST_RELEASE_NAME": release.app,
        "ROOST_RELEASE_VERSION": str(release.version),
        "ROOST_RELEASE_DIR": str(release.path.resolve()),
    }


async def install(
    installer: str, release: InstalledVersion, log_dir: Path, timeout_s: float
) -> None:
    """Run the installer on ``release``; returns when it exited 0, raises ``AppError``."""
    argv = installer_argv(installer, release)
    log = RotatingLog(log_dir, release.app)
    what = f"{release.app} {release.version}"
    log.write(f"roost: installing {what}: {shlex.join(argv)}\n".encode())
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=release.path,
            env=installer_env(release, os.environ),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        log.write(f"roost: cannot run the installer: {err}\n".encode())
        log.close()
        raise AppError(f"{what}: cannot run the installer {argv[0]}: {err.strerror}") from err
    try:
        assert proc.stdout is not None  # asked for a pipe
        async with asyncio.timeout(timeout_s):
            await _pump(proc.stdout, log, tail)
            returncode = await proc.wait()
    except TimeoutError:
        raise AppError(
            f"{what}: the installer did not finish within {timeout_s:g}s{_lines(tail)}"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.write(f"roost: the installer exited with code {proc.returncode}\n".encode())
        log.close()
    if returncode != 0:
        raise AppError(f"{what}: the installer exited with code {returncode}{_lines(tail)}")


async def _pump(stream: asyncio.StreamReader, log: RotatingLog, tail: deque[str]) -> None:
    """Copy the installer's output into its log, keeping its last lines."""
    partial = b""
    while chunk := await stream.read(_READ_CHUNK):
        log.write(chunk)
        *lines, partial = (partial + chunk).split(b"\n")
        tail.extend(line.decode("utf-8", "replace") for line in lines)
        partial = partial[-4096:]
    if partial:
        tail.append(partial.decode("utf-8", "replace"))


def _lines(tail: deque[str]) -> str:
    shown = [line.strip() for line in tail if line.strip()]
    return (": " + " | ".join(shown)) if shown else ""
