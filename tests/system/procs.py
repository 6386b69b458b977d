"""Helpers for system tests: free ports, real binaries, polling, supervised processes.

System tests start real programs (Mosquitto, PostgreSQL, the hub, agents) on free ports
in temporary directories and always clean them up. A tool that is not installed skips
the tests that need it, with a reason that says what to install; a tool that is there but
fails is an error. Every process writes its output to a log file, and the tail of each
log is printed under a failed test (see ``tests/conftest.py``).

PostgreSQL refuses to run as root. When the tests run as root, the server runs as the
``postgres`` user that the Debian package creates, in a directory of its own under the
system temp dir (pytest's own temp dirs are mode 0700 and root's, so that user could not
reach them).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import pytest

T = TypeVar("T")

MOSQUITTO_FALLBACK = "/usr/sbin/mosquitto"
POSTGRES_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it; a race is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or where Debian puts it (/usr/sbin is not on
    every user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return MOSQUITTO_FALLBACK if os.access(MOSQUITTO_FALLBACK, os.X_OK) else None


def require_mosquitto() -> str:
    """The mosquitto binary, or skip the calling test."""
    found = find_mosquitto()
    if found is None:
        pytest.skip("mosquitto binary not found (apt-get install mosquitto)")
    return found


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); unparsable names sort first.
    try:
        return tuple(int(part) for part in path.parent.name.split("."))
    except ValueError:
        return ()


def find_postgres_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin that has initdb, pg_ctl and postgres."""
    candidates = [
        path
        for path in Path("/").glob(POSTGRES_GLOB.lstrip("/"))
        if all(os.access(path / tool, os.X_OK) for tool in POSTGRES_TOOLS)
    ]
    return max(candidates, key=_version_key, default=None)


def require_postgres_bin_dir() -> Path:
    """The PostgreSQL server binaries, or skip the calling test."""
    found = find_postgres_bin_dir()
    if found is None:
        pytest.skip(
            f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
            f"{POSTGRES_GLOB} (apt-get install postgresql)"
        )
    return found


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    *,
    what: str | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions listed in ``ignore`` count as "not yet" (a port that still refuses
    connections); on timeout an ``AssertionError`` says what was awaited and the last
    such exception.
    """
    description = what or getattr(predicate, "__name__", repr(predicate))
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
        except ignore as err:
            last_error = err
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {description}{detail}")
        time.sleep(interval)


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """A subprocess whose output goes to ``log_dir/<name>.log``; a context manager.

    The process runs in a session of its own. ``kill()`` is a crash (SIGKILL to the
    process only, so children it started live on, as they would); ``stop()`` asks with
    SIGTERM and kills after a timeout; leaving the ``with`` block stops it and kills
    whatever is left of its process group.
    """

    # Every Proc started in this pytest session, oldest first: a failed test prints the
    # log tails of those it started and of those still running.
    started: ClassVar[list[Proc]] = []

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_dir: Path,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [os.fspath(arg) for arg in argv]
        self.name = name or Path(self.argv[0]).name
        self.env = env
        self.cwd = cwd
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        counter = 1
        while self.log_path.exists():
            counter += 1
            self.log_path = log_dir / f"{self.name}.{counter}.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        env = {**os.environ, **self.env} if self.env is not None else None
        with self.log_path.open("wb") as log:
            # The child keeps its own copy of the log descriptor; ours closes here.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        Proc.started.append(self)
        return self

    def __enter__(self) -> Self:
        return self.start() if self._popen is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end by itself; ``subprocess.TimeoutExpired`` if not."""
        return self.popen.wait(timeout)

    def signal(self, signum: int) -> None:
        if self.alive:
            self.popen.send_signal(signum)

    def kill(self) -> int:
        """SIGKILL the process (a crash) and reap it; its return code."""
        self.signal(signal.SIGKILL)
        return self.popen.wait()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; then clean up the process group.

        Returns the return code, or None when the process was never started.
        """
        if self._popen is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            code = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            code = self.kill()
        self._kill_group()
        return code

    def _kill_group(self) -> None:
        # The session leader's pid is the group id; children it left behind die here.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` shows up in the log; fail at once if the process dies."""

        def logged() -> bool:
            if text in self.log_text():
                return True
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited with {self.returncode} before logging {text!r}; "
                    f"log tail:\n{self.log_tail()}"
                )
            return False

        wait_for(logged, timeout, what=f"{self.name} to log {text!r}")

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<Proc {self.name} pid={self._popen.pid if self._popen else None} {state}>"


# What the ``start_proc`` fixture hands a test.
StartProc = Callable[..., Proc]


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1, trust auth, started with pg_ctl.

    Made for tests: fsync off, no locale, a superuser named ``user``. As root the server
    runs as ``run_as`` (default ``postgres``); the data dir is a fresh temp dir owned by
    that user and removed by ``stop()``.
    """

    def __init__(self, bin_dir: Path, *, user: str = "roost", run_as: str = "postgres") -> None:
        self.bin_dir = bin_dir
        self.user = user
        self.port = 0
        self._account: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._account = pwd.getpwnam(run_as)
            except KeyError:
                pytest.skip(
                    f"running as root and there is no {run_as!r} user to run PostgreSQL as "
                    f"(apt-get install postgresql creates it)"
                )
        self.base = Path(tempfile.mkdtemp(prefix="roost-pg-"))
        self.data_dir = self.base / "data"
        self.log_path = self.base / "postgres.log"
        if self._account is not None:
            os.chown(self.base, self._account.pw_uid, self._account.pw_gid)
        self._running = False

    def _run(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool, as the unprivileged account when we are root."""
        extra: dict[str, Any] = {}
        env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
        if self._account is not None:
            extra = {
                "user": self._account.pw_uid,
                "group": self._account.pw_gid,
                "extra_groups": [],
            }
            env |= {"HOME": str(self.base), "USER": self._account.pw_name}
        tool = os.fspath(self.bin_dir / argv[0])
        return subprocess.run(
            [tool, *argv[1:]],
            cwd=self.base,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL {what} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\nserver log tail:\n{tail(self.log_path)}"
            )

    def start(self, attempts: int = 3) -> Self:
        initdb = self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        self._check(initdb, "initdb")
        # free_port() can race with another process; a few fresh ports settle it.
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            options = " ".join(
                [
                    f"-p {self.port}",
                    "-h 127.0.0.1",
                    f"-k '{self.base}'",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                ]
            )
            result = self._run(
                "pg_ctl",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_path),
                "--wait",
                "--timeout",
                "60",
                "--options",
                options,
                "start",
            )
            if result.returncode == 0:
                self._running = True
                return self
            if attempt == attempts:
                self._check(result, "start")
        return self  # pragma: no cover - the loop returns or raises

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        try:
            if self._running:
                result = self._run(
                    "pg_ctl", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait", "stop"
                )
                if result.returncode != 0:
                    self._run(
                        "pg_ctl", "--pgdata", str(self.data_dir), "--mode", "immediate", "stop"
                    )
                self._running = False
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def url(self, dbname: str) -> str:
        """The SQLAlchemy URL of database ``dbname`` on this server."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True
        )

    def create_database(self, name: str) -> str:
        """Create an empty database; its URL."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any session still connected to it."""
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
