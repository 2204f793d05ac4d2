"""Postgres access: a connection context manager, parameterized SQL and bulk COPY.

Unused by the embedded default; the catalog publish and Dagster's instance storage switch to
Postgres when ``SPHERE_POSTGRES_URL`` is set. Errors name host and database, never the password.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
from psycopg import sql
from pydantic import Field


class PostgresUnavailable(RuntimeError):
    pass


def redact_url(url: str) -> str:
    """host:port/dbname as user — for messages (no password)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:
        return "<unparseable connection string>"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    return f"{info.get('user', '?')}@{host}:{port}/{info.get('dbname', '?')}"


def connect(url: str, connect_timeout: int = 5, autocommit: bool = False):
    import psycopg

    if not url:
        raise PostgresUnavailable(
            "Postgres is not configured: set SPHERE_POSTGRES_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    try:
        return psycopg.connect(url, connect_timeout=connect_timeout, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        # psycopg's message can echo the conninfo; keep only the first line, which names the
        # server, and add our redacted target.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(url, redact_url(url))
        raise PostgresUnavailable(
            f"cannot connect to Postgres at {redact_url(url)}: {reason}"
        ) from None


def copy_rows(
    cursor, table: str | Sequence[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """COPY rows into ``table`` (``"name"`` or ``("schema", "name")``); returns the row count."""
    ident = sql.Identifier(*table) if not isinstance(table, str) else sql.Identifier(table)
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        ident, sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    n = 0
    with cursor.copy(stmt) as cp:
        for row in rows:
            cp.write_row(row)
            n += 1
    return n


class PostgresResource(dg.ConfigurableResource):
    """A Postgres database; ``url`` is a libpq URL such as postgresql://user@host:5432/db."""

    url: str = Field(default="", description="libpq connection URL; empty means Postgres is off.")
    connect_timeout: int = Field(
        default=5, description="Seconds before a connection attempt fails."
    )

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def describe(self) -> str:
        return redact_url(self.url) if self.url else "<not configured>"

    @contextmanager
    def connection(self, autocommit: bool = False) -> Iterator[Any]:
        conn = connect(self.url, self.connect_timeout, autocommit=autocommit)
        try:
            yield conn
            if not autocommit:
                conn.commit()
        except BaseException:
            if not autocommit:
                conn.rollback()
            raise
        finally:
            conn.close()

    def execute(
        self, query: str | sql.Composable, params: Sequence[Any] | dict | None = None
    ) -> list[tuple]:
        """Run one parameterized statement; returns its rows (empty for statements without)."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def copy_rows(self, table, columns, rows) -> int:
        with self.connection() as conn, conn.cursor() as cur:
            return copy_rows(cur, table, columns, rows)
