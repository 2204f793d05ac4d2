"""adjacency materialized from synthetic blt_patches: the files of a shard (its check passes in
the shared materialization, which asserts every shard check)."""

from sphere_assets.core.partitions import shard_partitions


def test_shard_files(materialized):
    root, _ = materialized
    shard = shard_partitions.get_partition_keys()[0]
    assert sorted(p.name for p in (root / "adjacency" / f"shard={shard}").iterdir()) == [
        "_manifest.json",
        "context.safetensors",
        "csr.safetensors",
        "part-0.parquet",
    ]
