"""Pictures in the materialization metadata: one per partition, small, and first.

Every partition's materialization carries its own pictures (palette PNGs inline in markdown,
the only way the Dagster UI shows an image): here a 4-shard range run of shell_placements is
read back from the instance's event log, each picture decoded and compared across shards.
"""

from __future__ import annotations

import base64
import io
import re

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from sphere_assets.core.metadata import PICTURE_MAX_BYTES, figure_png, new_figure
from sphere_assets.harmonics import sh_basis as harmonics
from sphere_assets.patching.report import histogram_markdown
from sphere_assets.placements import defs
from sphere_assets.placements import shell_placements as placements
from tests.placements.test_shell_placements import fit_map, write_embeddings

SHARDS = ["0", "1", "2", "3"]
RANGE = {
    "dagster/asset_partition_range_start": SHARDS[0],
    "dagster/asset_partition_range_end": SHARDS[-1],
}
PICTURES = (
    "picture: shell occupancy vs capacity",
    "picture: points on the sphere (Mollweide, by shell)",
)
# the budget for one picture in the event log: 40 KB of metadata
ENTRY_MAX_CHARS = 40_960


def _png(markdown: str) -> bytes:
    match = re.fullmatch(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    return base64.b64decode(match.group(1))


def _latest_metadata(instance, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("shell_placements"), asset_partitions=[partition]
        ),
        limit=1,
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


@pytest.mark.slow  # four shards of > 4,000 points placed for real: ~80 s on 2 cores
def test_range_run_gives_every_shard_its_own_small_pictures_first(resources, tmp_path):
    store = resources["warehouse"].store()
    points = {}
    for key in SHARDS:  # > plot_sample points per shard, so the Mollweide is down-sampled
        emb = write_embeddings(store, key, 50, seed=10 + int(key))[0]
        points[key] = emb.shape[0]
    assert min(points.values()) > placements.ShellPlacementsConfig().plot_sample
    assert dg.materialize(
        [harmonics.sh_basis], partition_key=placements.BAND_LIMIT, resources=resources
    ).success
    assert fit_map(resources).success
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            [*defs.ASSETS, *defs.CHECKS],
            selection=[placements.shell_placements],
            instance=instance,
            resources=resources,
            tags=RANGE,
            run_config={
                "ops": {
                    "shell_placements": {
                        "config": {"recall_queries": 32, "waterfill": {"n_shells": 64}}
                    }
                }
            },
        )
        assert result.success
        seen: dict[str, set[bytes]] = {name: set() for name in PICTURES}
        for key in SHARDS:
            meta = _latest_metadata(instance, key)
            assert meta["points"] == points[key]
            # the pictures lead the metadata, under names that say what they show
            assert tuple(meta)[: len(PICTURES)] == PICTURES, list(meta)[:4]
            for name in PICTURES:
                assert len(meta[name]) <= ENTRY_MAX_CHARS, (key, name, len(meta[name]))
                png = _png(meta[name])
                assert len(png) <= PICTURE_MAX_BYTES
                with Image.open(io.BytesIO(png)) as image:
                    assert image.format == "PNG" and image.mode == "P", (key, name)
                    assert image.width >= 300, (key, name, image.size)
                seen[name].add(png)
        # each shard's picture is its own, not one shard's copied onto all of them
        for name, pngs in seen.items():
            assert len(pngs) == len(SHARDS), name


def test_length_histogram_is_per_shard_and_small():
    rng = np.random.default_rng(0)
    a = histogram_markdown(rng.geometric(0.2, 50_000), "blt_patches shard 0").value
    b = histogram_markdown(rng.geometric(0.3, 50_000), "blt_patches shard 1").value
    assert a != b
    for md in (a, b):
        assert len(md) <= ENTRY_MAX_CHARS
        with Image.open(io.BytesIO(_png(md))) as image:
            assert image.mode == "P"


def test_a_picture_over_budget_at_every_dpi_is_an_error():
    fig, ax = new_figure(7.0, 3.0)
    rng = np.random.default_rng(1)
    ax.imshow(rng.random((400, 400, 3)))  # noise does not compress
    with pytest.raises(ValueError, match="exceeds 2000 bytes"):
        figure_png(fig, max_bytes=2000)
