"""Postgres access: a connection context manager, parameterized SQL and bulk COPY.

Unused by the embedded default; the catalog publish and Dagster's instance storage switch to
Postgres when ``SPHERE_POSTGRES_URL`` is set. Errors name host and database, never the password;
they say whether retrying can help (:func:`is_transient`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:  # psycopg loads only where a connection is made (step processes skip it)
    from psycopg import sql


class PostgresUnavailable(RuntimeError):
    """No connection to Postgres. ``transient`` says whether trying again later can help (a
    timeout, a server starting up or out of connection slots) or not (nothing listening at
    the address, no such host, database or role, wrong password): only transient ones are
    retried."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


_URL_SCHEMES = ("postgresql://", "postgres://")


def parse_url(url: str) -> dict[str, str]:
    """libpq connection parameters of a ``postgresql://`` URL or a ``key=value`` string.

    A URL is split with :func:`urllib.parse.urlsplit`, except that the user info ends at the
    *last* ``@`` before the host: a password with an unencoded ``@`` (``u:p@ss@host/db``) would
    otherwise leave part of itself in the host name (which libpq's own URL parser does, and
    then prints in its errors). Percent-escapes are decoded; query parameters are kept.
    """
    from urllib.parse import parse_qsl, unquote, urlsplit

    from psycopg.conninfo import conninfo_to_dict

    if not url.startswith(_URL_SCHEMES):
        return {k: str(v) for k, v in conninfo_to_dict(url).items()}
    scheme, rest = url.split("://", 1)
    params: dict[str, str] = {}
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, has_password, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if has_password:
            params["password"] = unquote(password)
    parts = urlsplit(f"{scheme}://{rest}")
    hosts, ports = [], []
    for hostport in parts.netloc.split(","):
        if hostport.startswith("["):  # IPv6 literal: [::1]:5432
            host, _, tail = hostport[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port = hostport.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if any(hosts):
        params["host"] = ",".join(hosts)
    if any(ports):
        params["port"] = ",".join(ports)
    if parts.path.strip("/"):
        params["dbname"] = unquote(parts.path[1:])
    params.update(parse_qsl(parts.query, keep_blank_values=True))
    return params


def redact_url(url: str) -> str:
    """user@host:port/dbname — for messages (never the password, nor any part of it)."""
    try:
        info = parse_url(url)
    except Exception:
        return "<unparseable connection string>"
    host = ",".join(f"[{h}]" if ":" in h else h for h in info.get("host", "localhost").split(","))
    port = info.get("port", "5432")
    return f"{info.get('user', '?')}@{host}:{port}/{info.get('dbname', '?')}"


# SQLSTATEs worth a retry: connection exceptions, serialization failure and deadlock, too many
# connections, lock not available, and a server shutting down / starting up.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "53300", "55P03", "57P01", "57P02", "57P03"})
TRANSIENT_SQLSTATE_CLASSES = ("08",)
# libpq reports connection failures as text only (no SQLSTATE); these say "try again later".
# Everything else — connection refused (nothing listens there: wrong port or no server), an
# unknown host, database or role, a failed authentication — is permanent.
TRANSIENT_MESSAGES = (
    "timeout expired",
    "timed out",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "too many connections",
    "remaining connection slots are reserved",
    "server closed the connection unexpectedly",
    "connection reset",
    "could not receive data from server",
    "could not send data to server",
    "terminating connection due to administrator command",
    "consuming input failed",
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Postgres error may go away when tried again (see TRANSIENT_*)."""
    if isinstance(exc, PostgresUnavailable):
        return exc.transient
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_SQLSTATE_CLASSES)
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):
        return False
    text = str(exc).lower()
    return any(m in text for m in TRANSIENT_MESSAGES)


def scrub(text: str, params: dict[str, str]) -> str:
    """``text`` without the password (libpq does not print it; this guards the rest)."""
    from urllib.parse import quote

    password = params.get("password", "")
    for form in {password, quote(password, safe="")}:
        if len(form) >= 3:  # shorter: replacing would mangle the message, not hide a secret
            text = text.replace(form, "***")
    return text


def connect(url: str, connect_timeout: int = 5, autocommit: bool = False):
    import psycopg

    if not url:
        raise PostgresUnavailable(
            "Postgres is not configured: set SPHERE_POSTGRES_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    try:
        params = parse_url(url)
    except Exception as exc:
        raise PostgresUnavailable(
            f"SPHERE_POSTGRES_URL is not a valid libpq URL or key=value string "
            f"({type(exc).__name__}); e.g. postgresql://user:pass@host:5432/db"
        ) from None
    target = redact_url(url)
    try:
        # the parsed parameters, not the URL: libpq would split an unencoded '@' differently
        return psycopg.connect(connect_timeout=connect_timeout, autocommit=autocommit, **params)
    except psycopg.Error as exc:
        # psycopg's message can echo the conninfo; keep only the first line, which names the
        # server, and add our redacted target.
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        transient = is_transient(exc)
        retry = "retried" if transient else "not retried: check the URL and the server"
        raise PostgresUnavailable(
            f"cannot connect to Postgres at {target}: {scrub(reason, params)} ({retry})",
            transient=transient,
        ) from None


def copy_rows(
    cursor, table: str | Sequence[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """COPY rows into ``table`` (``"name"`` or ``("schema", "name")``); returns the row count."""
    from psycopg import sql

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
