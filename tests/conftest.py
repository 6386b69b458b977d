"""Shared fixtures and hooks.

- Tests under ``tests/system/`` are marked ``system``.
- A failed test shows the log tails of the processes (``system.procs.Proc``) it started
  and of those still running.
- ``mosquitto_bin`` and ``postgres_bin_dir`` find the real tools or skip.
- ``postgres_server`` (session) runs one throwaway PostgreSQL server; ``postgres_url``
  (session) is a database on it; ``fresh_postgres_db`` is a new database for one test.
- ``migrated_db`` is the hub's database after its migrations, with the default tenant,
  once on SQLite and once on PostgreSQL.
- ``start_proc`` starts processes that are stopped when the test ends.
- Hypothesis runs without deadlines: tests never assert on timing. (Its ``.hypothesis``
  directory ignores itself with a ``.gitignore`` of its own.)
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path

import pytest
from hypothesis import settings

from roost.access.service import ensure_default_tenant
from roost.db import Database
from roost.hub.database import migrate
from system.procs import (
    PostgresServer,
    Proc,
    StartProc,
    require_mosquitto,
    require_postgres_bin_dir,
)

SYSTEM_DIR = Path(__file__).parent / "system"

settings.register_profile("roost", deadline=None)
settings.load_profile("roost")

_procs_before = pytest.StashKey[int]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SYSTEM_DIR in item.path.parents:
            item.add_marker(pytest.mark.system)


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_procs_before] = len(Proc.started)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        before = item.stash.get(_procs_before, len(Proc.started))
        for index, proc in enumerate(Proc.started):
            if index >= before or proc.alive:
                report.sections.append((f"log of {proc.name} ({proc.log_path})", proc.log_tail()))
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    # A safety net: no process of ours outlives the test session.
    for proc in reversed(Proc.started):
        proc.stop(timeout=2.0)


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """Path of the mosquitto binary; skips when it is not installed."""
    return require_mosquitto()


@pytest.fixture(scope="session")
def postgres_bin_dir() -> Path:
    """Directory of initdb, pg_ctl and postgres; skips when they are not installed."""
    return require_postgres_bin_dir()


@pytest.fixture(scope="session")
def postgres_server(postgres_bin_dir: Path) -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, on a free port, removed at the end."""
    with PostgresServer(postgres_bin_dir) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL ``postgresql://roost@127.0.0.1:PORT/roost_test`` of a fresh database."""
    return postgres_server.create_database("roost_test")


@pytest.fixture
def fresh_postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of an empty database of this test's own, dropped afterwards."""
    name = f"roost_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("fresh_postgres_db")
    database = Database(url)
    migrate(database)
    with database.session() as session:
        ensure_default_tenant(session)
    yield database
    database.dispose()


@pytest.fixture
def start_proc(tmp_path: Path) -> Iterator[StartProc]:
    """``start_proc(argv, name=..., env=..., cwd=...)`` starts a ``Proc`` logging to
    ``tmp_path/logs``; every one still running is stopped when the test ends."""
    started: list[Proc] = []

    def start(
        argv: Sequence[str | PathLike[str]],
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        proc = Proc(argv, log_dir=tmp_path / "logs", name=name, env=env, cwd=cwd).start()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()
