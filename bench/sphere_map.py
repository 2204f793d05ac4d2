"""The one sphere map (issue 14) against PCA-3 and UMAP, side by side in one run.

    python bench/sphere_map.py                                   # bundled corpus + 1M synthetic
    python bench/sphere_map.py --warehouse W1 --warehouse W2     # several real corpora
    python bench/sphere_map.py --synthetic 0 --no-umap           # quick

For every real corpus (a warehouse holding patch_embeddings) and for a synthetic clustered set
(broad clusters of tight near-duplicate groups, like patch embeddings):

* fit: ours (``sphere_map``, method neighbour), plain PCA-3, and UMAP (umap-learn,
  ``output_metric="haversine"``, defaults otherwise) on the same evenly spaced 16K sample;
  fit seconds of each;
* sample quality: tie-aware recall@10 (1,000 queries) and trustworthiness@10 (scikit-learn,
  cosine input metric, 2,000 rows) of the three;
* union recall@10 over all rows of all shards (1,000 queries, tie-aware): ours, one global PCA-3,
  and today's per-shard PCA-3 (each shard fitted on itself);
* coherence: the max angle between a shard's rows placed alone and placed inside another shard;
* placement with the water-filling (per shard): crowding (share of points with a same-shell
  neighbour within 0.01 / 0.5 degrees) before and after the spreading step, union recall before
  and after it, balance per shard and of the union;
* throughput of the map alone and of a whole placement at 1M points, and peak RSS (the map's
  throughput and peak in a child process that only places: ``--throughput-only``).

Each corpus and the throughput run in their own child process (``--phase``), so the bench
process holds no corpus, fit or metric and each phase's peak RSS is its own (printed at the end
of the phase; the largest of them next to the bench process's own at the end).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sphere_assets.lib.sphere import sphere_map as sm  # noqa: E402
from sphere_assets.lib.sphere import waterfill as wf  # noqa: E402
from sphere_assets.lib.sphere.features import evenly_spaced, fit_sphere_map, unit_rows  # noqa: E402
from sphere_assets.lib.sphere.neighbours import neighbourhood_recall  # noqa: E402
from sphere_assets.lib.sphere.shells import balance_report  # noqa: E402
from sphere_assets.lib.sphere.spreading import angle_between  # noqa: E402

QUERIES = 1000
MAP_PASSES = 3  # map passes timed in the throughput child (the best is reported)
TRUST_ROWS = 2000


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def own_peak_rss_gb() -> float:
    """Peak RSS of this process image (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return peak_rss_gb()


def load_warehouse(root: str) -> dict:
    from sphere_assets.placements import io
    from sphere_resources.warehouse import Warehouse

    store = Warehouse(root)
    keys = io.embedding_shards(store)
    parts = [io.load_shard_vectors(store, k) for k in keys]
    return {
        "name": root,
        "embeddings": np.concatenate([p["embeddings"] for p in parts]),
        "prominence": np.concatenate([p["prominence"] for p in parts]),
        "shard": np.concatenate([np.full(len(p["prominence"]), i) for i, p in enumerate(parts)]),
    }


def synthetic(n: int, dim: int = 64, clusters: int = 60, groups: int = 40000, seed: int = 0):
    """Broad clusters of tight groups (near-duplicates), varying norms, 4 shards."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    gc = centres[rng.integers(0, clusters, groups)]
    gc += 0.35 * rng.standard_normal((groups, dim)).astype(np.float32)
    emb = gc[rng.integers(0, groups, n)]
    for a in range(0, n, 65536):  # the same draws as one call, without an [n, D] float64 array
        m = min(65536, n - a)
        emb[a : a + m] += 0.04 * rng.standard_normal((m, dim)).astype(np.float32)
    emb *= np.exp(0.3 * rng.standard_normal(n)).astype(np.float32)[:, None]
    return {
        "name": f"synthetic {n:,} x {dim}",
        "embeddings": emb,
        "prominence": np.linalg.norm(emb, axis=1),
        "shard": np.repeat(np.arange(4), -(-n // 4))[:n],
    }


def umap_unit(sample: np.ndarray, seed: int = 0) -> np.ndarray:
    import umap

    e = umap.UMAP(output_metric="haversine", metric="cosine", random_state=seed).fit_transform(
        sample
    )
    return np.stack(
        [np.sin(e[:, 0]) * np.cos(e[:, 1]), np.sin(e[:, 0]) * np.sin(e[:, 1]), np.cos(e[:, 0])],
        axis=1,
    )


def trust(x: np.ndarray, unit: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    rows = evenly_spaced(x.shape[0], TRUST_ROWS)
    return float(trustworthiness(unit_rows(x[rows]), unit[rows], n_neighbors=10, metric="cosine"))


def per_shard_pca(emb: np.ndarray, shard: np.ndarray) -> np.ndarray:
    """Today's map: PCA-3 fitted per shard on that shard alone."""
    out = np.empty((emb.shape[0], 3))
    for s in np.unique(shard):
        rows = shard == s
        model = sm.fit_sphere_map_model(
            emb[rows][evenly_spaced(int(rows.sum()), 16384)], None, sm.SphereMapConfig("pca3")
        )
        out[rows] = sm.map_directions(model, emb[rows])
    return out


def bench_corpus(data: dict, use_umap: bool, sample_size: int) -> dict:
    emb, prom, shard = data["embeddings"], data["prominence"], data["shard"]
    n = emb.shape[0]
    print(f"\n== {data['name']}: {n:,} rows, D = {emb.shape[1]}, {len(np.unique(shard))} shards")
    counts = [int((shard == s).sum()) for s in np.unique(shard)]
    picks = sm.corpus_sample_rows(counts, sample_size)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
    order = np.argsort(shard, kind="stable")  # rows grouped by shard, as the warehouse stores
    rows = np.concatenate([order[a + p] for a, p in zip(starts, picks, strict=True)])
    sample = emb[rows]

    t = time.perf_counter()
    ours = sm.fit_sphere_map_model(sample, prom[rows], sm.SphereMapConfig(), shard[rows])
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    pca = sm.fit_sphere_map_model(sample, prom[rows], sm.SphereMapConfig(method="pca3"))
    t_pca = time.perf_counter() - t
    fits = {"ours": (sm.map_directions(ours, sample), t_ours)}
    fits["PCA-3"] = (sm.map_directions(pca, sample), t_pca)
    if use_umap:
        t = time.perf_counter()
        fits["UMAP haversine"] = (umap_unit(sample), time.perf_counter() - t)
    print(f"sample of {sample.shape[0]:,} rows: fit s | recall@10 | trustworthiness@10")
    res: dict = {"n": n}
    for name, (unit, secs) in fits.items():
        rec = neighbourhood_recall(sample, unit, 10, QUERIES)
        tw = trust(sample, unit)
        res[name] = {"fit_s": secs, "recall": rec, "trust": tw}
        print(f"  {name:<15} {secs:8.1f} | {rec:9.4f} | {tw:.4f}")
    if use_umap:
        u, o = res["UMAP haversine"], res["ours"]
        print(
            f"  ours / UMAP: recall {o['recall'] / max(u['recall'], 1e-9):.2f}x, "
            f"trustworthiness {o['trust'] / u['trust']:.3f}x, fit time {o['fit_s'] / u['fit_s']:.2f}x"
        )

    t = time.perf_counter()
    unit_all = sm.map_directions(ours, emb)
    t_apply = time.perf_counter() - t
    union = {
        "ours": neighbourhood_recall(emb, unit_all, 10, QUERIES),
        "PCA-3 (one global fit)": neighbourhood_recall(
            emb, sm.map_directions(pca, emb), 10, QUERIES
        ),
        "PCA-3 per shard (before)": neighbourhood_recall(
            emb, per_shard_pca(emb, shard), 10, QUERIES
        ),
    }
    print(f"union recall@10 over all {n:,} rows (tie-aware, {QUERIES} queries):")
    for name, v in union.items():
        print(f"  {name:<26} {v:.4f}")
    res["union"] = union
    print(f"map applied to {n:,} rows: {t_apply:.2f} s ({n / t_apply / 1e6:.2f}M rows/s)")

    # coherence: shard 0's rows alone and appended after shard 1's rows
    a = shard == 0
    b = shard == (1 if len(np.unique(shard)) > 1 else 0)
    alone = sm.map_directions(ours, emb[a])
    inside = sm.map_directions(ours, np.concatenate([emb[b], emb[a]]))[int(b.sum()) :]
    worst = float(np.rad2deg(angle_between(alone, inside).max())) if alone.size else 0.0
    print(f"coherence: max angle between shard-0 rows placed alone / inside shard 1: {worst:.3g} deg "
          f"(bit-identical: {np.array_equal(alone, inside)})")  # fmt: skip
    res["coherence_max_deg"] = worst

    # placement per shard with the water-filling + spreading
    placed = np.empty_like(unit_all)
    crowd = {k: [] for k in ("b001", "a001", "b05", "a05")}
    union_counts = union_targets = None
    bal_ok = True
    t = time.perf_counter()
    for s in np.unique(shard):
        sel = np.flatnonzero(shard == s)
        p = wf.place(emb[sel], prom[sel], sphere_map=ours)
        placed[sel] = p.unit
        st = p.stats
        w = sel.size
        crowd["b001"].append((st["crowding_0.01deg_before"], w))
        crowd["a001"].append((st["crowding_0.01deg_after"], w))
        crowd["b05"].append((st["crowding_0.5deg_before"], w))
        crowd["a05"].append((st["crowding_0.5deg_after"], w))
        bal_ok &= bool(st["ok"])
        union_counts = p.counts if union_counts is None else union_counts + p.counts
        union_targets = p.targets if union_targets is None else union_targets + p.targets
    t_place = time.perf_counter() - t
    wavg = {k: sum(v * w for v, w in c) / n for k, c in crowd.items()}
    after = neighbourhood_recall(emb, placed.astype(np.float64), 10, QUERIES)
    whole = balance_report(union_counts, union_targets)
    print(f"placement (water-filling + spreading), {t_place:.1f} s ({n / t_place:,.0f} rows/s):")
    print(f"  crowding within 0.01 deg: {wavg['b001']:.4f} -> {wavg['a001']:.4f}")
    print(f"  crowding within 0.5 deg:  {wavg['b05']:.4f} -> {wavg['a05']:.4f}")
    print(f"  union recall@10: map {union['ours']:.4f} -> placed {after:.4f} "
          f"({(after / union['ours'] - 1) * 100:+.1f}%)")  # fmt: skip
    print(f"  balance: every shard {bal_ok}, union {whole['ok']} "
          f"(max |count - target| {whole['max_abs_deviation']})")  # fmt: skip
    res.update(crowding=wavg, recall_placed=after, balanced=bal_ok and whole["ok"])
    print(f"peak RSS of this phase's process {own_peak_rss_gb():.2f} GB")
    return res


def bench_throughput(n: int) -> None:
    """Map and PCA-3 throughput at n synthetic rows, measured in a child process that only
    places (its peak RSS is the placement's own, not the bench's: UMAP, metrics, fits)."""
    import json
    import subprocess
    import tempfile

    data = synthetic(n)
    emb = data["embeddings"]
    model = sm.fit_sphere_map_model(emb[evenly_spaced(n, 16384)], None, sm.SphereMapConfig())
    with tempfile.TemporaryDirectory(prefix="sphere_map_bench_") as tmp:
        np.save(f"{tmp}/embeddings.npy", emb)
        np.savez(f"{tmp}/model.npz", **model.tensors())
        Path(f"{tmp}/scalars.json").write_text(json.dumps(model.scalars()))
        del data, emb
        child = [sys.executable, __file__, "--place-only", tmp]
        res = json.loads(subprocess.run(child, check=True, capture_output=True).stdout)
    t_map, t_pca, t_scores = res["map_s"], res["pca_s"], res["scores_s"]
    print(f"\n== throughput at {n:,} rows (D = {res['dim']}), a child process that only places")
    print(f"  load average before the map passes: {' / '.join(f'{v:.2f}' for v in res['load'])}")
    print(f"  map (neighbour):  {t_map:.2f} s = {n / t_map / 1e6:.2f}M rows/s "
          f"(CPU {res['map_cpu_s']:.2f} s = {res['map_cpu_s'] / n * 1e6:.2f} us/row, "
          f"{res['threads']} threads; the best of {len(res['map_runs'])} passes, wall / CPU s: "
          f"{', '.join(f'{w:.2f} / {c:.2f}' for w, c in res['map_runs'])})")  # fmt: skip
    print(f"  PCA-3 projection: {t_pca:.2f} s = {n / t_pca / 1e6:.2f}M rows/s "
          f"(CPU {res['pca_cpu_s']:.2f} s; map / PCA-3: {t_map / t_pca:.1f}x wall time, "
          f"{res['map_cpu_s'] / res['pca_cpu_s']:.1f}x CPU time)")  # fmt: skip
    print(f"  map_scores (features + score + map + angles): {t_scores:.2f} s = "
          f"{n / t_scores / 1e6:.2f}M rows/s")  # fmt: skip
    print(f"  peak RSS of the placing process: {res['rss_after_map_gb']:.2f} GB after the map "
          f"pass ({res['rss_loaded_gb']:.2f} GB with the embeddings loaded), "
          f"{res['rss_end_gb']:.2f} GB at the end; the phase's process "
          f"{own_peak_rss_gb():.2f} GB")  # fmt: skip


def place_only(folder: str) -> None:
    """The child of ``bench_throughput``: load, place, time, print JSON."""
    import json

    import numba

    from sphere_assets.lib.sphere.features import embedding_features

    emb = np.load(f"{folder}/embeddings.npy")
    tensors = dict(np.load(f"{folder}/model.npz"))
    model = sm.SphereMapModel.from_tensors(
        tensors, json.loads(Path(f"{folder}/scalars.json").read_text())
    )
    sm.map_scores(model, emb[:100])  # compiled kernels loaded
    rss_loaded = own_peak_rss_gb()
    load = os.getloadavg()
    runs = []  # the machine is shared: several passes, the best one reported (all printed)
    for _ in range(MAP_PASSES):
        t, c = time.perf_counter(), time.process_time()
        sm.map_directions(model, emb)
        runs.append((time.perf_counter() - t, time.process_time() - c))
    t_map, c_map = min(runs)
    rss_map = own_peak_rss_gb()
    pca = fit_sphere_map(emb, 16384)
    t, c = time.perf_counter(), time.process_time()
    embedding_features(emb, pca)
    t_pca, c_pca = time.perf_counter() - t, time.process_time() - c
    t = time.perf_counter()
    sm.map_scores(model, emb)
    t_scores = time.perf_counter() - t
    print(json.dumps({
        "dim": int(emb.shape[1]), "threads": numba.get_num_threads(),
        "map_s": t_map, "map_cpu_s": c_map, "map_runs": runs, "load": load,
        "pca_s": t_pca, "pca_cpu_s": c_pca, "scores_s": t_scores,
        "rss_loaded_gb": rss_loaded, "rss_after_map_gb": rss_map, "rss_end_gb": own_peak_rss_gb(),
    }))  # fmt: skip


def run_phase(*phase: str, common: list[str]) -> None:
    """One phase of the bench in a child process (its memory is returned when it exits)."""
    sys.stdout.flush()
    subprocess.run([sys.executable, __file__, "--phase", *phase, *common], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", action="append", help="warehouse with patch_embeddings")
    ap.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic rows (0: none)")
    ap.add_argument("--no-umap", action="store_true")
    ap.add_argument("--sample", type=int, default=16384)
    ap.add_argument("--place-only", metavar="DIR", help=argparse.SUPPRESS)  # throughput child
    ap.add_argument("--throughput-only", action="store_true", help="only the 1M-row throughput")
    ap.add_argument("--phase", nargs=2, metavar=("KIND", "WHAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.place_only:
        place_only(args.place_only)
        return
    if args.throughput_only:
        bench_throughput(args.synthetic)
        return
    if args.phase:  # a child of the run below: warehouse ROOT | synthetic N | throughput N
        kind, what = args.phase
        if kind == "throughput":
            bench_throughput(int(what))
        else:
            data = load_warehouse(what) if kind == "warehouse" else synthetic(int(what))
            bench_corpus(data, not args.no_umap, args.sample)
        return
    common = ["--sample", str(args.sample)] + (["--no-umap"] if args.no_umap else [])
    for root in args.warehouse or [str(ROOT / "data" / "warehouse")]:
        run_phase("warehouse", root, common=common)
    if args.synthetic:
        run_phase("synthetic", str(args.synthetic), common=common)
        run_phase("throughput", str(args.synthetic), common=common)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    print(f"\npeak RSS: bench process {own_peak_rss_gb():.2f} GB (holds no corpus); largest phase "
          f"process {children:.2f} GB (the throughput phase's placing process included)")  # fmt: skip


if __name__ == "__main__":
    main()
