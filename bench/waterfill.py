"""Benchmark: water-filled shell placement (lateral JAX method and THRML Langevin variant).

    .venv/bin/python bench/waterfill.py                       # N = 10K, 100K, 1M (+ corpus)
    .venv/bin/python bench/waterfill.py --n 100000 --methods lateral

Every case runs in its own child process (so peak RSS is that case's own), on synthetic
clustered embeddings (D = 128: 256 Gaussian clusters of random radius, log-normal norms) and,
if ``$SPHERE_WAREHOUSE/patch_embeddings`` (default ``data/warehouse``) exists, on the real
corpus embeddings of every shard. ``duplicates``: the synthetic set with 30% of the rows one
identical vector (the rank start cannot split the tie, the dynamics must); ``warmstart``:
every point starts in the innermost shell (the whole water-filling happens in the dynamics,
with lateral moves).
Per case: a cold call (includes jit compilation), then a warm call (timed); the reference in
the same process is ``numpy.argsort`` of the information score (the floor of any rank-based
fill), so ``ours/argsort`` = warm seconds / argsort seconds. Reported: points/s, passes,
promotions/lateral moves, balance (max |count - target|, within max(1, 1%)), recall@10
(placed / plain projection / random), peak RSS of the child, and for THRML the energy trace.

Targets (2 cores): lateral >= 1M points/s at 1M points with balance met; THRML 100K <= 60 s;
peak memory <= 2 GB at 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def clustered(n: int, d: int = 128, k: int = 256, seed: int = 0) -> np.ndarray:
    """Clustered embeddings generated in chunks (no N x D temporaries beyond the result)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    spread = (0.2 + 0.8 * rng.random(k)).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 65536):
        m = min(65536, n - i)
        lab = rng.integers(0, k, m)
        block = rng.standard_normal((m, d), dtype=np.float32)
        block *= spread[lab, None]
        block += centres[lab]
        block *= np.exp(0.5 * rng.standard_normal(m)).astype(np.float32)[:, None]
        out[i : i + m] = block
    return out


WAREHOUSE = Path(os.environ.get("SPHERE_WAREHOUSE", ROOT / "data" / "warehouse"))


def corpus_embeddings() -> tuple[np.ndarray, np.ndarray] | None:
    base = WAREHOUSE / "patch_embeddings"
    files = sorted(base.glob("shard=*/embeddings.safetensors"))
    if not files:
        return None
    from sphere_resources.store import read_safetensors

    embs, proms = [], []
    for f in files:
        arrays, _ = read_safetensors(f)
        embs.append(arrays["embeddings"])
        proms.append(arrays["prominence"])
    return np.concatenate(embs), np.concatenate(proms)


def run_case(source: str, n: int, method: str) -> dict:
    """Child process body: one (data, method) case."""
    from sphere_assets.lib.sphere import thrml_langevin as tl
    from sphere_assets.lib.sphere import waterfill as wf
    from sphere_assets.lib.sphere.neighbours import neighbourhood_recall, random_unit

    init = None
    if source == "corpus":
        emb, prom = corpus_embeddings()
    else:
        emb, prom = clustered(n), None
    if source == "duplicates":  # 30% of the rows are one and the same vector
        emb[: emb.shape[0] * 3 // 10] = emb[0]
    n = emb.shape[0]
    if source == "warmstart":  # everything poured into the innermost shell
        init = np.zeros(n, np.int32)
    cfg = wf.WaterfillConfig()

    def call():
        if method == "lateral":
            return wf.place(emb, prom, config=cfg, initial_shell=init)
        return tl.place_thrml(emb, prom, config=tl.LangevinConfig(waterfill=cfg))

    t = time.perf_counter()
    p = call()
    cold = time.perf_counter() - t
    t = time.perf_counter()
    p = call()
    warm = time.perf_counter() - t
    # the floor of a rank-based fill: argsort of the same scores (numpy, same process)
    prep = wf.prepare_inputs(emb, prom, cfg)
    score = prep.score.astype(np.float32)
    argsort_s = min(_timed(lambda: np.argsort(score)) for _ in range(3))
    st = p.stats
    q = 256
    out = {
        "source": source,
        "method": method,
        "n": n,
        "cold_s": cold,
        "warm_s": warm,
        "points_per_s": n / warm,
        "argsort_s": argsort_s,
        "ratio_vs_argsort": warm / argsort_s,
        "passes": st["passes"],
        "promotions": st["promotions"],
        "demotions": st["demotions"],
        "lateral_moves": st["lateral_moves"],
        "start_max_abs_deviation": st.get("start_max_abs_deviation", -1),
        "max_abs_deviation": st["max_abs_deviation"],
        "max_relative_deviation": st["max_relative_deviation"],
        "balanced": st["ok"],
        "recall_placed": neighbourhood_recall(emb, p.unit, 10, q),
        "recall_projection": neighbourhood_recall(emb, p.start_unit, 10, q),
        "recall_random": neighbourhood_recall(emb, random_unit(n), 10, q),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if method == "lateral":
        out["features_s"] = st["seconds_features"]
        out["dynamics_s"] = st["seconds_dynamics"]
    else:
        e = st["energy_trace"]
        out.update(
            knn_s=st["seconds_knn"],
            build_s=st["seconds_build"],
            sampling_s=st["seconds_sampling"],
            energy_first=e[0],
            energy_last=e[-1],
            energy_decreased=st["energy_decreased"],
        )
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--methods", nargs="*", default=["lateral", "thrml"])
    ap.add_argument("--thrml-max-n", type=int, default=100_000)
    ap.add_argument(
        "--sources",
        nargs="*",
        default=["synthetic", "duplicates", "warmstart"],
        help="synthetic | duplicates (30%% identical rows) | warmstart (all in shell 0)",
    )
    ap.add_argument("--child", nargs=3, metavar=("SOURCE", "N", "METHOD"))
    args = ap.parse_args()
    if args.child:
        source, n, method = args.child
        print("RESULT " + json.dumps(run_case(source, int(n), method)))
        return

    cases = [
        (src, n, m)
        for n in args.n
        for src in args.sources
        for m in args.methods
        if (src == "synthetic" or m == "lateral") and (m == "lateral" or n <= args.thrml_max_n)
    ]
    if (WAREHOUSE / "patch_embeddings").exists():
        cases += [("corpus", 0, m) for m in args.methods]
    else:
        print(f"no {WAREHOUSE}/patch_embeddings: corpus case skipped")
    load = os.getloadavg()
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    rows = []
    for source, n, method in cases:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", source, str(n), method],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"case {source} {n} {method} failed:\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[0][7:])
        rows.append(r)
        print(json.dumps(r))
    print()
    print(
        "| data | method | N | warm s | cold s | points/s | argsort s | ours/argsort | passes | "
        "prom / lat | start dev | max dev | balanced | recall@10 placed / proj / random | "
        "peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['source']} | {r['method']} | {r['n']:,} | {r['warm_s']:.3f} | "
            f"{r['cold_s']:.2f} | {r['points_per_s']:,.0f} | {r['argsort_s']:.4f} | "
            f"{r['ratio_vs_argsort']:.1f} | {r['passes']} | {r['promotions']} / "
            f"{r['lateral_moves']} | {r['start_max_abs_deviation']} | {r['max_abs_deviation']} "
            f"| {r['balanced']} | {r['recall_placed']:.3f} / {r['recall_projection']:.3f} / "
            f"{r['recall_random']:.4f} | {r['peak_rss_mb']:.0f} |"
        )
    for r in rows:
        if r["method"] == "thrml":
            print(
                f"thrml {r['source']} N={r['n']:,}: knn {r['knn_s']:.1f}s, build "
                f"{r['build_s']:.1f}s, sampling {r['sampling_s']:.1f}s; energy "
                f"{r['energy_first']:.1f} -> {r['energy_last']:.1f} "
                f"(decreased: {r['energy_decreased']})"
            )
        else:
            print(
                f"lateral {r['source']} N={r['n']:,}: features {r['features_s']:.3f}s, "
                f"dynamics {r['dynamics_s']:.3f}s"
            )
    print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
