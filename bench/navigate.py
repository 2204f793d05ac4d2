"""Benchmark: the navigator's cone queries and semantic search, side by side.

Run:  .venv/bin/python bench/navigate.py [--n 1000000] [--dims 64,128] [--cones 1000]
                                         [--queries 200] [--warehouse data/warehouse]
                                         [--text-queries 40] [--hnsw] [--threads 2]

1. Cones, N synthetic clustered points on the sphere (200 von Mises-Fisher-like clusters and a
   uniform background, shells 0..127): ``--cones`` random directions with apertures uniform in
   1..30 degrees (half of them in a random 16-shell band). Every result is compared with brute
   force (the cone predicate on all N points, vectorised numpy): set equality. Timings p50/p95
   per aperture bucket for the cell index (``lib/sphere/cones.py``), brute force, and the
   library anchor: ``healpy.query_disc(inclusive=True)`` + the points of those cells by
   ``np.isin`` over every point's cell + the exact filter (what healpy alone gives).
2. Semantic top-10, N synthetic clustered embeddings (2,000 Gaussian clusters of random widths)
   for each D of ``--dims``: ``--queries`` held-out queries drawn from the same clusters; the
   truth is exact cosine over all N. Paths: brute force (numpy matmul, one query at a time),
   the ANN index (faiss IVF-Flat as the ``embedding_ann`` asset builds it, an ``nprobe`` sweep;
   ``--hnsw`` adds faiss HNSW where N <= ``--hnsw-max-n``), and the cone-candidate path (the points are placed by a PCA-3
   map of the embeddings, the query by the same map; a sweep of the candidate budget). recall@10,
   p50/p95 single-query latency, queries/s, build seconds, index bytes.
3. The real corpus (``--warehouse``, when its shell_placements / patch_embeddings exist): the
   same three paths over every shard (cone index over the stored placements; the cone path
   places a query at its stored direction); queries are stored patches.
4. End to end: ``Navigator.query_text`` (what ``sphere query --text`` runs) in a warm process
   on ``--text-queries`` snippets of the corpus (p50/p95, including patching and embedding the
   text), and the cold start of ``sphere query --text ... --json`` as a subprocess.

Threads: faiss/BLAS run with ``--threads`` (default 2, the target machine's cores).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sphere_assets.lib.sphere import cones  # noqa: E402
from sphere_assets.lib.sphere import semantic as se  # noqa: E402

K = 10


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q)) if len(xs) else float("nan")


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0


# --- 1. cones ---------------------------------------------------------------------------------


def sphere_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = cones.unit_vectors(rng.standard_normal((200, 3)))
    kappa = rng.uniform(0.05, 0.4, 200)  # angular spread (radians) of each cluster
    n_bg = n // 5
    lab = rng.integers(0, 200, n - n_bg)
    v = centres[lab] + kappa[lab, None] * rng.standard_normal((n - n_bg, 3))
    v = np.vstack([v, rng.standard_normal((n_bg, 3))])
    r = rng.uniform(1.0, 2.0, n)
    xyz = (cones.unit_vectors(v) * r[:, None]).astype(np.float32)  # stored as float32, like x/y/z
    return cones.unit_vectors(xyz), rng.integers(0, 128, n).astype(np.int32)


def bench_cones(n: int, n_cones: int, seed: int = 0) -> list[str]:
    import healpy as hp

    unit, shell = sphere_points(n, seed)
    index, build_s = timed(cones.build_cone_index, unit, shell)
    pix = hp.vec2pix(index.nside, unit[:, 0], unit[:, 1], unit[:, 2])
    rng = np.random.default_rng(seed + 1)
    rows = {"<=5": [], ">5": []}
    mismatches = 0
    sizes = []
    for i in range(n_cones):
        d = cones.unit_vectors(rng.standard_normal((1, 3)))[0]
        a_deg = rng.uniform(1.0, 30.0)
        a = math.radians(a_deg)
        band = None
        if i % 2:
            s0 = int(rng.integers(0, 113))
            band = (s0, s0 + 15)
        (m,), t_idx = timed(cones.cone_query, index, d, a, band)
        want, t_bf = timed(cones.brute_force_cone, unit, shell, d, a, band)
        t0 = time.perf_counter()
        cells = hp.query_disc(index.nside, d, a, inclusive=True)
        cand = np.flatnonzero(np.isin(pix, cells))
        dot = cones.dots(unit[cand], d)
        keep = dot >= math.cos(a)
        if band is not None:
            keep &= (shell[cand] >= band[0]) & (shell[cand] <= band[1])
        anchor = cand[keep]
        t_hp = time.perf_counter() - t0
        got = np.sort(m.rows)
        if not (np.array_equal(got, want) and np.array_equal(anchor, want)):
            mismatches += 1
        sizes.append(want.size)
        rows["<=5" if a_deg <= 5 else ">5"].append((t_idx, t_bf, t_hp, want.size, m.candidates))
    out = [
        f"### cones: {n:,} points, nside {index.nside}, {index.n_bands} bands of 16 shells, "
        f"index built in {build_s:.2f} s ({index.offsets.nbytes + index.unit.nbytes + index.row.nbytes + index.shell.nbytes:,} bytes)",
        "",
        f"{n_cones} random cones (apertures 1-30 deg, half in a 16-shell band): results equal "
        f"to brute force (set equality, index and healpy anchor): "
        f"**{n_cones - mismatches}/{n_cones}**; points per cone: median {int(np.median(sizes)):,}, "
        f"max {max(sizes):,}.",
        "",
        "| apertures | cones | index p50 ms | index p95 ms | brute force p50 ms | healpy query_disc + isin p50 ms | speed-up vs brute force (p50) | points p50 | candidates p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, rs in rows.items():
        if not rs:
            continue
        t_idx, t_bf, t_hp, pts, cand = (np.array(c) for c in zip(*rs, strict=True))
        out.append(
            f"| {label} deg | {len(rs)} | {pct(t_idx, 50):.3f} | {pct(t_idx, 95):.3f} | "
            f"{pct(t_bf, 50):.2f} | {pct(t_hp, 50):.2f} | {np.median(t_bf) / np.median(t_idx):.0f}x | "
            f"{int(np.median(pts)):,} | {int(np.median(cand)):,} |"
        )
    return out


# --- 2. semantic --------------------------------------------------------------------------------


def clustered_embeddings(n: int, dim: int, n_queries: int, seed: int):
    rng = np.random.default_rng(seed)
    n_clusters = 2000
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    width = rng.uniform(0.4, 1.2, n_clusters).astype(np.float32)
    lab = rng.integers(0, n_clusters, n + n_queries)
    x = np.empty((n + n_queries, dim), np.float32)
    for s in range(0, n + n_queries, 200_000):
        e = min(s + 200_000, n + n_queries)
        noise = rng.standard_normal((e - s, dim)).astype(np.float32)
        x[s:e] = centres[lab[s:e]] + width[lab[s:e], None] * noise
    x = se.unit_rows(x)
    return x[:n], x[n:]


def pca3_map(x: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(x.shape[0], min(x.shape[0], 50_000), replace=False)].astype(np.float64)
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    comps = vt[:3].T

    def place(e: np.ndarray) -> np.ndarray:
        return cones.unit_vectors((np.asarray(e, dtype=np.float64) - mean) @ comps)

    return place


def single_queries(fn, queries) -> tuple[list, list]:
    found, lat = [], []
    for q in queries:
        r, t = timed(fn, q)
        found.append(r)
        lat.append(t)
    return found, lat


def row(name, recall, lat, build_s, nbytes, extra="") -> str:
    qps = len(lat) / max(sum(lat), 1e-12)
    return (
        f"| {name} | {recall:.3f} | {pct(lat, 50):.2f} | {pct(lat, 95):.2f} | {qps:,.0f} | "
        f"{build_s:.1f} | {nbytes / 2**20:,.0f} | {extra} |"
    )


def cone_candidate_rows(
    x, queries, truth, q_dirs, unit, shell, label="cone-candidate"
) -> list[str]:
    """Table rows of the cone-candidate path over a sweep of candidate budgets."""
    out = []
    cindex, build_s = timed(cones.build_cone_index, unit, shell)
    cbytes = cindex.offsets.nbytes + cindex.unit.nbytes + cindex.row.nbytes + cindex.shell.nbytes
    n = x.shape[0]
    for want in (1_000, 4_096, 16_384, 65_536, 262_144):
        if want > n:
            continue
        found, lat, cands = [], [], []
        for q, d in zip(queries, q_dirs, strict=True):
            (rows, _, cand), t = timed(se.cone_candidate_search, q, d, cindex, x, K, want)
            found.append(rows)
            lat.append(t)
            cands.append(cand.rows.size)
        padded = np.array([np.pad(f, (0, K - f.size), constant_values=-1) for f in found])
        out.append(
            row(
                f"{label}, {want:,} candidates",
                se.recall_at_k(padded, truth),
                lat,
                build_s,
                cbytes,
                f"reranked median {int(np.median(cands)):,} ({np.median(cands) / n:.1%})",
            )
        )
    return out


def semantic_paths(
    x, queries, truth, q_dirs, unit, shell, hnsw: bool, label: str, n_bf: int = 50
) -> list[str]:
    """The table rows of every path over embeddings ``x`` (unit) and placements ``unit``."""
    out = [
        f"### semantic top-{K}: {label}",
        "",
        "| path | recall@10 | p50 ms | p95 ms | queries/s | build s | index MiB | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    # brute force: one query at a time, the first n_bf queries
    _, lat = single_queries(lambda q: se.top_k_cosine(q[None], x, K), queries[:n_bf])
    out.append(row("brute force (numpy)", 1.0, lat, 0.0, x.nbytes, f"{n_bf} queries"))
    # ANN: IVF-Flat as the asset builds it, then an nprobe sweep
    index, build_s = timed(se.build_ann, x, se.AnnParams(kind="ivf"))
    nbytes = len(se.serialize_ann(index))
    default_nprobe = index.nprobe
    for nprobe in sorted(
        {
            default_nprobe // 4,
            default_nprobe // 2,
            default_nprobe,
            default_nprobe * 2,
            default_nprobe * 4,
        }
        - {0}
    ):
        se.set_search_params(index, nprobe=nprobe)
        found, lat = single_queries(
            lambda q, ix=index: se.ann_search(ix, q[None], K)[0][0], queries
        )
        rec = se.recall_at_k(np.array(found), truth)
        tag = " (default)" if nprobe == default_nprobe else ""
        out.append(
            row(
                f"faiss IVF-Flat nprobe {nprobe}{tag}",
                rec,
                lat,
                build_s,
                nbytes,
                f"nlist {index.nlist}",
            )
        )
    del index
    if hnsw:
        index, build_s = timed(se.build_ann, x, se.AnnParams(kind="hnsw"))
        nbytes = len(se.serialize_ann(index))
        for ef in (32, 64, 128, 256):
            se.set_search_params(index, ef_search=ef)
            found, lat = single_queries(
                lambda q, ix=index: se.ann_search(ix, q[None], K)[0][0], queries
            )
            rec = se.recall_at_k(np.array(found), truth)
            out.append(row(f"faiss HNSW M=32 efSearch {ef}", rec, lat, build_s, nbytes, ""))
        del index
    out += cone_candidate_rows(x, queries, truth, q_dirs, unit, shell)
    return out


def bench_semantic(n: int, dim: int, n_queries: int, hnsw: bool, seed: int = 0) -> list[str]:
    (x, queries), gen_s = timed(clustered_embeddings, n, dim, n_queries, seed)
    truth, truth_s = timed(se.top_k_cosine, queries, x, K)
    place = pca3_map(x)
    unit = place(x)
    shell = np.zeros(n, np.int32)
    q_dirs = place(queries)
    label = (
        f"{n:,} synthetic clustered embeddings, D = {dim}, {n_queries} held-out queries "
        f"(data {gen_s:.1f} s, exact truth {truth_s:.1f} s); cone path on a PCA-3 map"
    )
    return semantic_paths(x, queries, truth[0], q_dirs, unit, shell, hnsw, label)


# --- 3. the real corpus ---------------------------------------------------------------------------


def bench_real(warehouse: str, n_queries: int, hnsw: bool) -> list[str]:
    import sphere_assets.contracts  # noqa: F401  (registers every contract)
    from sphere_assets.navigate import io as nio
    from sphere_resources.store import Warehouse

    store = Warehouse(warehouse)
    keys = store.partitions("shell_placements")
    if not keys:
        return [f"(no shell_placements in {warehouse}: real-corpus section skipped)"]
    import pyarrow.parquet as pq

    units, shells, embs = [], [], []
    for key in keys:
        # straight from the Parquet file: x, y, z and shell are in every placements schema
        t = pq.read_table(
            store.partition_dir("shell_placements", key) / "part-0.parquet",
            columns=["x", "y", "z", "shell"],
        )
        xyz = np.stack([t[c].to_numpy().astype(np.float64) for c in "xyz"], axis=1)
        units.append(cones.unit_vectors(xyz))
        shells.append(t["shell"].to_numpy())
        embs.append(nio.read_embeddings(store, key, "bench")[0])
    unit, shell = np.concatenate(units), np.concatenate(shells)
    x = se.unit_rows(np.concatenate(embs))
    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(x.shape[0], n_queries, replace=False))
    truth, _ = se.top_k_cosine(x[rows], x, K)
    label = (
        f"the bundled corpus ({x.shape[0]:,} patches, D = {x.shape[1]}, shards {','.join(keys)} "
        f"as one index here), {n_queries} stored patches as queries (each finds itself), "
        "cone path around each query's stored placement"
    )
    out = semantic_paths(x, x[rows], truth, unit[rows], unit, shell, hnsw, label)
    if store.partitions("embedding_ann") == keys:
        # what `sphere query` runs: the materialized per-shard indexes, merged by cosine
        from sphere_assets.navigate.navigate import Navigator

        nav = Navigator(store).load(path="ann")
        starts = np.cumsum([0] + [len(e) for e in embs])
        shard_no = {k: i for i, k in enumerate(keys)}
        found, lat = [], []
        for q in x[rows]:
            (hits, _), t = timed(nav.search, q, K, "ann")
            found.append([starts[shard_no[s.key]] + r for s, r, _ in hits])
            lat.append(t)
        summary = nio.read_ann_summary(store, keys[0])
        out.append(
            row(
                f"`Navigator.search` path ann ({len(keys)} shard indexes)",
                se.recall_at_k(np.array(found), truth),
                lat,
                0.0,
                sum(
                    (store.partition_dir("embedding_ann", k) / "ann.faiss").stat().st_size
                    for k in keys
                ),
                f"shard 0: nlist {summary['nlist']}, nprobe {summary['nprobe']}",
            )
        )
    try:  # the placements family's fitted map: the cone path on map directions (no water-fill)
        from sphere_assets.lib.sphere.sphere_map import map_directions
        from sphere_assets.placements.io import load_sphere_map

        model = load_sphere_map(store)
    except (ImportError, ValueError, KeyError, FileNotFoundError) as exc:  # none, or stale
        out.append(f"(no usable sphere_map: {type(exc).__name__}: {exc})")
    else:
        raw = np.concatenate(embs)
        mapped = cones.unit_vectors(map_directions(model, raw))
        out += cone_candidate_rows(
            x,
            x[rows],
            truth,
            mapped[rows],
            mapped,
            shell,
            "cone-candidate on sphere_map directions",
        )
        ang = []
        for q, t in zip(rows, truth, strict=True):
            ang.extend(np.degrees(np.arccos(np.clip(mapped[t[1:]] @ mapped[q], -1, 1))).tolist())
        out += [
            "",
            f"On sphere_map directions: the 9 nearest neighbours lie a median {np.median(ang):.1f} "
            f"deg away (p90 {np.percentile(ang, 90):.1f} deg).",
        ]
    # how close are true neighbours on the map?
    ang = []
    for q, t in zip(rows, truth, strict=True):
        dots = np.clip(unit[t[1:]] @ unit[q], -1, 1)
        ang.extend(np.degrees(np.arccos(dots)).tolist())
    out += [
        "",
        f"Angle on the sphere between a stored patch and its 9 nearest embedding-space "
        f"neighbours: median {np.median(ang):.1f} deg, p90 {np.percentile(ang, 90):.1f} deg "
        f"(uniform random pairs: median 90 deg).",
    ]
    return out


# --- 4. end to end --------------------------------------------------------------------------------


def bench_text(warehouse: str, n_texts: int) -> list[str]:
    from sphere_assets.navigate.navigate import Navigator
    from sphere_resources.store import Warehouse

    store = Warehouse(warehouse)
    if not store.partitions("embedding_ann"):
        return [f"(no embedding_ann in {warehouse}: end-to-end section skipped)"]
    raw = []
    for key in store.partitions("raw_articles"):
        raw += store.read_table("raw_articles", key, ["text"]).column("text").to_pylist()
    rng = np.random.default_rng(9)
    texts = []
    while len(texts) < n_texts:
        t = raw[int(rng.integers(0, len(raw)))]
        s = int(rng.integers(0, max(1, len(t) - 120)))
        snippet = t[s : s + int(rng.integers(20, 120))].strip()
        if snippet:
            texts.append(snippet)
    t0 = time.perf_counter()
    nav = Navigator(store).load(path="ann")
    nav.query_text(texts[0], k=K)  # model load + threshold calibration + first torch call
    warm_up = time.perf_counter() - t0
    out = []
    for path in ("ann", "exact"):
        if path == "exact":
            nav.load(path="exact")
        lat, embed = [], []
        for t in texts:
            r, s = timed(nav.query_text, t, K, 0, path)
            lat.append(s)
            embed.append(r.timings["embed"])
        out.append(
            f"| warm `Navigator.query_text`, path {path} | {len(texts)} | {pct(lat, 50):.1f} | "
            f"{pct(lat, 95):.1f} | {pct(embed, 50):.1f} |"
        )
    colds = []
    for t in texts[:3]:
        cmd = [
            sys.executable,
            "-m",
            "sphere_assets.cli",
            "query",
            "--text",
            t,
            "--json",
            "--warehouse",
            warehouse,
        ]
        _, s = timed(subprocess.run, cmd, capture_output=True, check=True)
        colds.append(s)
    return [
        f"### end to end: `sphere query --text` on {warehouse}",
        "",
        "| what | texts | p50 ms | p95 ms | of which patch + embed p50 ms |",
        "|---|---|---|---|---|",
        *out,
        "",
        f"Loading the navigator and the first query in a fresh process: {warm_up:.2f} s. Cold "
        f"start of `sphere query --text ... --json` (a new process: imports, torch, faiss, "
        f"healpy, the model, the threshold calibration): {', '.join(f'{c:.2f}' for c in colds)} s.",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--cones", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--text-queries", type=int, default=40)
    ap.add_argument("--hnsw", action="store_true", help="add faiss HNSW (N <= --hnsw-max-n)")
    ap.add_argument("--hnsw-max-n", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--skip", default="", help="comma list of sections to skip: cones,semantic,real,text"
    )
    args = ap.parse_args()
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    lines = []
    t_all = time.perf_counter()
    with threadpool_limits(args.threads):
        if "cones" not in skip:
            lines += bench_cones(args.n, args.cones) + [""]
            print("\n".join(lines), flush=True)
        if "semantic" not in skip:
            for dim in (int(d) for d in args.dims.split(",") if d):
                hnsw = args.hnsw and args.n <= args.hnsw_max_n
                part = bench_semantic(args.n, dim, args.queries, hnsw) + [""]
                print("\n".join(part), flush=True)
                lines += part
        if args.warehouse and "real" not in skip:
            part = bench_real(args.warehouse, args.queries, args.hnsw) + [""]
            print("\n".join(part), flush=True)
            lines += part
        if args.warehouse and "text" not in skip:
            part = bench_text(args.warehouse, args.text_queries) + [""]
            print("\n".join(part), flush=True)
            lines += part
    print(f"(total {time.perf_counter() - t_all:.0f} s, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
