"""Benchmark: blt_patches + patch_embeddings as the assets run, two model passes vs one.

    .venv/bin/python bench/patching_pair.py [--source data/warehouse] [--rounds 3] [--workers 0]

Copies raw_articles and entropy_model from ``--source`` (default: the project's warehouse, made
by ``make run``) into a temporary warehouse, then materializes blt_patches and patch_embeddings
over every shard in ONE run (``dg.materialize``, the partition range as one run, as
``sphere materialize-all`` does), alternating:

* ``two passes``: ``share_forward_pass=False`` — blt_patches runs the entropy model for the
  patches, patch_embeddings runs it again for the hidden states (the code before issue 19);
* ``one pass``: ``share_forward_pass=True`` (the default inside one run) — blt_patches' model
  pass also pools the vectors (patch_forward_cache) and patch_embeddings takes them.

Prints per round and configuration the seconds of each asset (its materialization's
``seconds``, summed over shards), the pair's MB/s (article bytes / the two assets' seconds),
the run's wall time, and whether the files are byte-identical between the configurations.
The best (minimum) round per configuration is summarized at the end: the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg

from sphere_assets.patching.blt_patches import BltPatchesConfig, blt_patches
from sphere_assets.patching.patch_embeddings import PatchEmbeddingsConfig, patch_embeddings
from sphere_resources.warehouse import WarehouseResource


def data_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for asset in ("blt_patches", "patch_embeddings")
        for p in sorted((root / asset).rglob("*"))
        if p.is_file() and p.name != "_manifest.json"
    }


def one_round(root: Path, keys: list[str], share: bool, workers: int) -> dict:
    t0 = time.perf_counter()
    result = dg.materialize(
        [blt_patches, patch_embeddings],
        resources={"warehouse": WarehouseResource(root=str(root))},
        tags={
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        },
        run_config=dg.RunConfig(
            ops={
                "blt_patches": BltPatchesConfig(share_forward_pass=share, workers=workers),
                "patch_embeddings": PatchEmbeddingsConfig(workers=workers),
            }
        ),
        raise_on_error=True,
    )
    wall = time.perf_counter() - t0
    out = {"wall": wall}
    for name in ("blt_patches", "patch_embeddings"):
        mats = result.asset_materializations_for_node(name)
        out[name] = sum(float(m.metadata["seconds"].value) for m in mats)
        out["bytes"] = sum(int(m.metadata["bytes"].value) for m in mats)
    out["pair"] = out["blt_patches"] + out["patch_embeddings"]
    out["digests"] = data_digests(root)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="data/warehouse")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="config workers (0 = automatic)")
    args = ap.parse_args()
    source = Path(args.source)
    keys = sorted(
        (p.name.split("=", 1)[1] for p in (source / "raw_articles").glob("shard=*")), key=int
    )
    if not keys or not (source / "entropy_model").is_dir():
        raise SystemExit(f"{source}: needs raw_articles and entropy_model (run `make run` first)")
    with tempfile.TemporaryDirectory(prefix="bench_pair_") as tmp:
        root = Path(tmp) / "warehouse"
        root.mkdir()
        for asset in ("raw_articles", "entropy_model"):
            shutil.copytree(source / asset, root / asset)
        os.environ.setdefault("DAGSTER_HOME", tmp)
        best: dict[bool, dict] = {}
        digests: dict[bool, dict] = {}
        for r in range(args.rounds):
            for share in (False, True):
                res = one_round(root, keys, share, args.workers)
                digests[share] = res.pop("digests")
                label = "one pass  " if share else "two passes"
                mbs = res["bytes"] / 1e6 / res["pair"]
                print(
                    f"round {r} {label}: blt_patches {res['blt_patches']:.2f}s "
                    f"patch_embeddings {res['patch_embeddings']:.2f}s pair {res['pair']:.2f}s "
                    f"= {mbs:.3f} MB/s (run wall {res['wall']:.1f}s)",
                    flush=True,
                )
                if share not in best or res["pair"] < best[share]["pair"]:
                    best[share] = res
        identical = digests[False] == digests[True]
    n_mb = best[True]["bytes"] / 1e6
    print(f"\n{n_mb:.3f} MB in {len(keys)} shards; files identical between the two: {identical}")
    for share in (False, True):
        b = best[share]
        print(
            f"{'one pass  ' if share else 'two passes'} (best of {args.rounds}): "
            f"blt_patches {b['blt_patches']:.2f}s + patch_embeddings {b['patch_embeddings']:.2f}s "
            f"= {b['pair']:.2f}s, {n_mb / b['pair']:.3f} MB/s for the pair"
        )
    print(f"speed-up of the pair: {best[False]['pair'] / best[True]['pair']:.2f}x")


if __name__ == "__main__":
    main()
