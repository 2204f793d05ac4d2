"""`sphere hll compare A B`: set algebra of two HLLSets, with standard errors.

    sphere hll compare ID_A ID_B                article ids in article_hllsets (whole articles;
                                                --span-a / --span-b pick a span)
    sphere hll compare set_a.bin ID_B           a raw HLLSet file (3 layers of 2^P little-endian
                                                uint32 words, or a .parquet row), as
                                                `sphere restore --file` reads it
Options: --method joint-ml (default) | inclusion-exclusion | and-bitmap, --warehouse DIR (default
$SPHERE_WAREHOUSE or data/warehouse), --json

Per n-gram layer: |A|, |B|, |A∖B|, |B∖A|, |A∩B|, Jaccard and BSS τ(A,B) = |A∩B|/|B|,
ρ(A,B) = |A∖B|/|B|, each ± its standard error (sphere_assets/lib/sketch/hll_estimators.py).
An argument that names an existing file is read as a file, anything else as an article id.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT

ROWS = (
    ("card_a", "|A|"),
    ("card_b", "|B|"),
    ("a_only", "|A∖B|"),
    ("b_only", "|B∖A|"),
    ("both", "|A∩B|"),
    ("jaccard", "Jaccard"),
    ("tau", "τ(A,B)"),
    ("rho", "ρ(A,B)"),
)


def add_hll_parser(sub) -> None:
    """Register ``hll compare`` on the ``sphere`` CLI's subparsers."""
    p_hll = sub.add_parser("hll", help="HLLSet set algebra (compare two sketches)")
    hll_sub = p_hll.add_subparsers(dest="hll_cmd", required=True)
    p = hll_sub.add_parser(
        "compare",
        help="estimate |A∖B|, |B∖A|, |A∩B|, Jaccard, τ, ρ of two HLLSets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("a", help="article id (article_hllsets) or HLLSet file")
    p.add_argument("b", help="article id (article_hllsets) or HLLSet file")
    p.add_argument("--span-a", type=int, default=-1, help="span index of A (-1 = whole article)")
    p.add_argument("--span-b", type=int, default=-1, help="span index of B (-1 = whole article)")
    p.add_argument(
        "--method",
        default="joint-ml",
        choices=["joint-ml", "inclusion-exclusion", "and-bitmap"],
    )
    p.add_argument(
        "--warehouse", default=os.environ.get("SPHERE_WAREHOUSE", DEFAULT_WAREHOUSE_ROOT)
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_compare)


def load_hllset(arg: str, span: int, store):
    """(HLLSet, description): a file when ``arg`` names one, else an article_hllsets row."""
    from sphere_assets.ngrams import io
    from sphere_assets.ngrams.restore_cli import hllset_from_file

    if Path(arg).is_file():
        return hllset_from_file(arg), f"file {arg}"
    hll, _ = io.load_stored_span(store, arg, span)
    return hll, f"article_hllsets {arg!r} span {span}"


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def run_compare(args) -> int:
    from sphere_resources.store import Warehouse

    store = Warehouse(args.warehouse)
    try:
        a, src_a = load_hllset(args.a, args.span_a, store)
        b, src_b = load_hllset(args.b, args.span_b, store)
        layers = a.compare(b, args.method)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"sphere hll compare: {exc}", file=sys.stderr)
        return 2
    if args.json:
        payload = {
            "a": src_a,
            "b": src_b,
            "p": a.p,
            "method": args.method,
            "layers": [
                {
                    "n": n,
                    "method": est.method,
                    **{
                        key: {
                            "value": _finite(getattr(est, key).value),
                            "se": _finite(getattr(est, key).se),
                        }
                        for key, _ in ROWS
                    },
                }
                for n, est in enumerate(layers, start=1)
            ],
        }
        print(json.dumps(payload, indent=2))
        return 0
    print(f"A: {src_a}\nB: {src_b}\nP={a.p}, estimator {args.method}")
    print(f"{'':10}" + "".join(f"{f'{n}-grams':>26}" for n in (1, 2, 3)))
    for key, label in ROWS:
        cells = []
        for est in layers:
            e = getattr(est, key)
            digits = 4 if key in ("jaccard", "tau", "rho") else 1
            se = "" if math.isnan(e.se) else f" ± {e.se:.{digits}f}"
            cells.append(f"{f'{e.value:.{digits}f}{se}':>26}")
        print(f"{label:10}" + "".join(cells))
    print(f"{'method':10}" + "".join(f"{est.method:>26}" for est in layers))
    return 0
