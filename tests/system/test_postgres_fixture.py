"""The PostgreSQL fixtures start a real server and hand out working databases."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    parts = make_url(url)
    return psycopg.connect(
        host=parts.host, port=parts.port, user=parts.username, dbname=parts.database
    )


def test_postgres_url_answers(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://roost@127.0.0.1:")
    with _connect(postgres_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_fresh_database_is_its_own(postgres_url: str, fresh_postgres_db: str) -> None:
    assert make_url(fresh_postgres_db).database != make_url(postgres_url).database
    with _connect(fresh_postgres_db) as conn:
        count = conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'public'"
        ).fetchone()
    assert count == (0,)


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_an_empty_database(fresh_postgres_db: str, round_: int) -> None:
    # The table one round makes is not there in the next: creating it again works.
    with _connect(fresh_postgres_db) as conn:
        conn.execute("create table marker (round int)")
        conn.execute("insert into marker values (%s)", (round_,))
        assert conn.execute("select count(*) from marker").fetchone() == (1,)
