"""Benchmark: what loading the code location costs. Every Dagster step and asset-check
subprocess imports ``sphere_assets.definitions`` before it runs, so this is paid per step.

Each variant runs in a fresh interpreter, several times; the median wall time and peak RSS are
printed with the ratio against the reference measured in the same run: ``import dagster`` alone
(the floor no code location can go below). Targets: <= 2 s and <= 200 MB.

    .venv/bin/python bench/code_location.py [--runs 5]
"""

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, resource, sys, time
t0 = time.perf_counter()
import {module}
seconds = time.perf_counter() - t0
heavy = sorted(m for m in ("torch", "jax", "thrml", "numba", "duckdb", "psycopg", "scipy") if m in sys.modules)
print(json.dumps({{"seconds": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "heavy": heavy}}))
"""


def measure(module: str, runs: int) -> dict:
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(s["seconds"] for s in samples),
        "rss_mb": statistics.median(s["rss_mb"] for s in samples),
        "heavy": samples[-1]["heavy"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    ref = measure("dagster", args.runs)
    loc = measure("sphere_assets.definitions", args.runs)
    print(f"{'import':<28} {'median s':>9} {'peak RSS MB':>12}  heavy modules loaded")
    for name, m in (("dagster (reference)", ref), ("sphere_assets.definitions", loc)):
        print(
            f"{name:<28} {m['seconds']:>9.2f} {m['rss_mb']:>12.0f}  {', '.join(m['heavy']) or '-'}"
        )
    print(
        f"ratio code location / dagster: time {loc['seconds'] / ref['seconds']:.2f}x, "
        f"RSS {loc['rss_mb'] / ref['rss_mb']:.2f}x"
    )
    ok = loc["seconds"] <= 2.0 and loc["rss_mb"] <= 200 and not loc["heavy"]
    print(f"targets (<= 2 s, <= 200 MB, none of the heavy modules): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
