"""duckdb_catalog over raw_articles materialized into a temporary warehouse: one view per Parquet
asset, row counts equal to the Parquet files, and the sphere_catalog status table."""

from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq

from sphere_assets.core.partitions import shard_keys
from sphere_assets.definitions import duckdb_catalog
from sphere_assets.ingest import raw_articles as ingest
from tests.ingest.test_raw_articles import materialize_shards


def test_duckdb_catalog_views_match_parquet(resources, tmp_path):
    materialize_shards(resources)
    res = dg.materialize(
        [ingest.raw_articles, duckdb_catalog], selection=[duckdb_catalog], resources=resources
    )
    assert res.success
    con = duckdb.connect(resources["catalog"].path, read_only=True)
    counts = dict(
        con.execute("select shard, count(*) from raw_articles group by 1 order by 1").fetchall()
    )
    catalog_rows = con.execute("select asset, status from sphere_catalog").fetchall()
    con.close()
    root = Path(resources["warehouse"].root) / "raw_articles"
    expected = {
        int(k): pq.read_metadata(root / f"shard={k}" / "part-0.parquet").num_rows
        for k in shard_keys()
    }
    assert counts == expected
    assert ("raw_articles", "view") in catalog_rows
