import pytest

from sphere_resources.jax_device import JaxDeviceError, JaxDeviceResource
from sphere_resources.postgres import PostgresResource, PostgresUnavailable, redact_url


def test_jax_cpu_device_and_metadata():
    res = JaxDeviceResource(platform="cpu")
    dev = res.device()
    assert dev.platform == "cpu"
    meta = res.metadata()
    assert meta["jax/platform"] == "cpu" and meta["jax/x64"] == "True"
    import jax.numpy as jnp

    assert jnp.ones(2).dtype == jnp.float64  # x64 applied


def test_jax_absent_platform_is_a_clear_error_not_a_cpu_fallback():
    with pytest.raises(JaxDeviceError, match="'gpu' requested but not available"):
        JaxDeviceResource(platform="gpu").device()
    with pytest.raises(JaxDeviceError, match="index 7 out of range"):
        JaxDeviceResource(platform="cpu", device_index=7).device()
    assert JaxDeviceResource(platform="auto").device() is not None


def test_postgres_connect_copy_and_parameterized_query(postgres_url, pg_schema):
    pg = PostgresResource(url=postgres_url)
    pg.execute(f'CREATE TABLE "{pg_schema}".items (id int primary key, name text, score real)')
    rows = [(i, f"name {i}; DROP TABLE x --'", i / 2) for i in range(1000)]
    assert pg.copy_rows((pg_schema, "items"), ["id", "name", "score"], rows) == 1000
    got = pg.execute(
        f'SELECT count(*), sum(id) FROM "{pg_schema}".items WHERE name LIKE %s', ("name 1%",)
    )
    assert got == [(111, sum(i for i in range(1000) if str(i).startswith("1")))]
    (name,) = pg.execute(f'SELECT name FROM "{pg_schema}".items WHERE id = %s', (5,))[0]
    assert name == "name 5; DROP TABLE x --'"


def test_postgres_failed_transaction_rolls_back(postgres_url, pg_schema):
    pg = PostgresResource(url=postgres_url)
    pg.execute(f'CREATE TABLE "{pg_schema}".t (id int primary key)')
    with pytest.raises(Exception, match="duplicate key"):
        with pg.connection() as conn, conn.cursor() as cur:
            cur.execute(f'INSERT INTO "{pg_schema}".t VALUES (1)')
            cur.execute(f'INSERT INTO "{pg_schema}".t VALUES (1)')
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".t') == [(0,)]


def test_postgres_down_names_host_and_database_without_password():
    url = "postgresql://sphere:s3cret@127.0.0.1:1/sphere_db"
    with pytest.raises(PostgresUnavailable) as err:
        with PostgresResource(url=url, connect_timeout=2).connection():
            pass
    msg = str(err.value)
    assert "127.0.0.1:1/sphere_db" in msg and "s3cret" not in msg
    assert redact_url(url) == "sphere@127.0.0.1:1/sphere_db"
    with pytest.raises(PostgresUnavailable, match="SPHERE_POSTGRES_URL"):
        with PostgresResource(url="").connection():
            pass


def test_jax_platform_typo_is_a_clear_error():
    with pytest.raises(JaxDeviceError, match="'cpux' is not one of"):
        JaxDeviceResource(platform="cpux").device()
