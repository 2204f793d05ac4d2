"""`sphere restore`: turn an HLLSet back into k candidate patch orderings.

    sphere restore --article ID [--span K]     the HLLSet stored in article_hllsets
    sphere restore --file set.bin              raw HLLSet: 3 layers of 2^P little-endian uint32
                                               words back to back (P from the size)
    sphere restore --file set.parquet          one row with layer1/layer2/layer3[/p] columns
    sphere restore --text "some text"          patched with the pipeline's BLT patcher (the
                                               entropy_model in the warehouse); without a model
                                               the synthetic content patcher is used and the
                                               output says so
Options: --k 5 --beam 16 --length N --max-uses U --no-context --open-ends --whole-article
--warehouse DIR (default $SPHERE_WAREHOUSE or data/warehouse) --json

Open ends: --text is a span that may start and end mid-article (a sentence copied from the
middle of a document), so by default its orderings may start and end at any patch whose
n-gram edges are validated, not only at the article's _START_/_END_ (its first and last
patches, cut by the copy, are usually not the corpus' patches there); --whole-article restores
it as a whole article.  --article and --file restore from _START_ to _END_ unless --open-ends.

The span length (patches) is known for --article (the row's patch_count) and --text; give it
with --length for --file.  With a length, only orderings of that many patches are returned and
3-gram edges may repeat; without one, each edge is used at most --max-uses times (default 1).
The restore index over the vocabulary (ngram_vocabulary) and, when present, the weights and
context counts (adjacency_merged) is built once per materialization (by the restore_quality
check, or by the first call) and cached beside the warehouse; each call maps it read-only
(io.load_restore_index: O(1) in the corpus size, "index loaded in" below), and a restore reads
only the pages it looks up.  The report gives |candidates|, |cover|, |validated edges|,
coverage and latency for the restore.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from sphere_resources.contracts import DEFAULT_WAREHOUSE_ROOT


def add_restore_parser(sub) -> None:
    """Register the ``restore`` subcommand on the ``sphere`` CLI's subparsers."""
    p = sub.add_parser(
        "restore",
        help="restore patch orderings from an HLLSet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--article", help="article_id whose stored HLLSet to restore")
    src.add_argument("--file", help="HLLSet file (.bin raw layers or .parquet row)")
    src.add_argument("--text", help="text to patch, sketch and restore")
    p.add_argument("--span", type=int, default=-1, help="with --article: span index (-1 = whole)")
    p.add_argument("--k", type=int, default=5, help="orderings to return")
    p.add_argument("--beam", type=int, default=16, help="beam width")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="patches in the span (known for --article and --text; give it for --file)",
    )
    p.add_argument(
        "--max-uses",
        type=int,
        default=None,
        help="times one 3-gram edge may be used per ordering (default: 1 without a length, "
        "unlimited with one)",
    )
    p.add_argument(
        "--no-context",
        action="store_true",
        help="rank by 3-gram adjacency weights only (ignore the context counts)",
    )
    p.add_argument(
        "--p", type=int, default=None, help="with --text: HLLSet precision (default: vocabulary's)"
    )
    ends = p.add_mutually_exclusive_group()
    ends.add_argument(
        "--open-ends",
        action="store_true",
        default=None,
        help="orderings may start/end inside the span (default for --text)",
    )
    ends.add_argument(
        "--whole-article",
        dest="open_ends",
        action="store_false",
        help="orderings run from the article's _START_ to its _END_ (default for --article/--file)",
    )
    p.add_argument(
        "--warehouse", default=os.environ.get("SPHERE_WAREHOUSE", DEFAULT_WAREHOUSE_ROOT)
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_restore)


def hllset_from_file(path: str):
    from sphere_assets.lib.sketch import hllset as hs

    file = Path(path)
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        row = pq.read_table(file).slice(0, 1).to_pylist()
        if not row:
            raise ValueError(f"{path}: no rows")
        r = row[0]
        layers = [r["layer1"], r["layer2"], r["layer3"]]
        p = int(r["p"]) if "p" in r and r["p"] is not None else _p_of(len(layers[0]))
        return hs.HLLSet.from_layer_bytes(layers, p)
    data = file.read_bytes()
    if len(data) % 3:
        raise ValueError(f"{path}: {len(data)} bytes is not three equal layers")
    size = len(data) // 3
    p = _p_of(size)
    return hs.HLLSet.from_layer_bytes([data[i * size : (i + 1) * size] for i in range(3)], p)


def _p_of(layer_bytes: int) -> int:
    words = layer_bytes // 4
    p = int(words).bit_length() - 1
    if words < 1 or (1 << p) != words or layer_bytes % 4:
        raise ValueError(f"an HLLSet layer of {layer_bytes} bytes is not 2^P uint32 words")
    return p


def patch_text(text: str, store) -> tuple[list[bytes], str]:
    """Patches of ``text``: the pipeline's BLT patcher if an entropy model exists, else synthetic."""
    import warnings

    import dagster as dg

    # blt_patches' module is imported for its config and calibration only; the beta notices of
    # its asset definitions are noise here
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    data = text.encode("utf-8")
    try:
        from sphere_assets.lib.text import patcher as pt
        from sphere_assets.patching import io as patching_io
        from sphere_assets.patching.blt_patches import BltPatchesConfig, calibrate

        model, _, _ = patching_io.load_model(store)
        config = BltPatchesConfig()
        calibration = calibrate(config, patching_io.load_calibration_segments(store)[0])
        res = pt.patch_article(model, data, calibration.threshold, config.mode, config.max_length())
        starts, lengths = res.byte_start.tolist(), res.byte_len.tolist()
        patches = [data[s : s + n] for s, n in zip(starts, lengths, strict=True)]
        return patches, f"BLT patcher (entropy_model, θ={calibration.threshold:.4f}, {config.mode})"
    except Exception as exc:  # no model yet, or patching unavailable: say so and go on
        from sphere_assets.lib.sketch.synthetic_patches import content_patches

        return content_patches(data), f"synthetic content patcher (no BLT patcher: {exc})"


def run_restore(args) -> int:
    from sphere_assets.lib.sketch import ngrams as ng
    from sphere_assets.lib.sketch import restore as rs
    from sphere_assets.ngrams import io
    from sphere_resources.store import Warehouse

    store = Warehouse(args.warehouse)
    source = ""
    truth = None
    length = args.length
    load_s = 0.0

    def open_index(p):
        # the index open alone (mapped: O(1) in the corpus size); reading the span or patching
        # the text is not counted
        nonlocal load_s
        t0 = time.perf_counter()
        index = io.load_restore_index(store, p)
        load_s = time.perf_counter() - t0
        return index

    try:
        if args.article is not None:
            hll, stored_length = io.load_stored_span(store, args.article, args.span)
            length = stored_length if length is None else length
            source = f"article_hllsets {args.article!r} span {args.span}"
            index = open_index(hll.p)
        elif args.file is not None:
            hll = hllset_from_file(args.file)
            source = f"file {args.file}"
            index = open_index(hll.p)
        else:
            index = open_index(args.p)
            truth, how = patch_text(args.text, store)
            hll = ng.hllset_of_patches(truth, index.p)
            length = len(truth) if length is None else length
            source = f"text ({len(truth)} patches, {how})"
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"sphere restore: {exc}", file=sys.stderr)
        return 2
    try:
        result = rs.restore(
            hll,
            index,
            k=args.k,
            beam_width=args.beam,
            verify=True,
            max_edge_uses=args.max_uses,
            length=length,
            use_context=not args.no_context,
            open_ends=(args.text is not None) if args.open_ends is None else args.open_ends,
        )
    except ValueError as exc:
        print(f"sphere restore: {exc}", file=sys.stderr)
        return 2
    payload = {
        "source": source,
        "index_load_seconds": round(load_s, 3),
        "report": result.report.as_dict(),
        "candidates": [
            {
                "rank": i + 1,
                "confidence": c.confidence,
                "coverage": c.edge_coverage,
                "score": c.score,
                "patches": len(c.patches),
                "roundtrip": c.roundtrip,
                "exact": (c.patches == truth) if truth is not None else None,
                "text": c.text,
            }
            for i, c in enumerate(result.candidates)
        ],
    }
    if args.json:
        print(json.dumps(payload, indent=2, default=_json_default))
        return 0 if result.ok else 1
    r = result.report
    print(
        f"source: {source}  (index loaded in {load_s:.2f}s, P={r.p}, length {r.length or '-'}, "
        f"context order {r.context_order or 'off'}, "
        f"{'open ends' if r.open_ends else '_START_ to _END_'})"
    )
    print(
        f"set bits {list(r.n_set_bits)}  candidates {list(r.n_candidates)}  cover {r.n_cover}  "
        f"validated edges {r.n_validated_edges} ({r.n_synthesized_edges} synthesized)  "
        f"coverage {r.coverage:.3f}  latency {r.latency_ms:.2f} ms"
    )
    if not result.ok:
        print(f"no ordering: {result.reason}")
        return 1
    for c in payload["candidates"]:
        exact = "" if c["exact"] is None else f"  exact={c['exact']}"
        print(
            f"#{c['rank']} confidence {c['confidence']:.3f} coverage {c['coverage']:.3f} "
            f"score {c['score']:.2f} patches {c['patches']} roundtrip={c['roundtrip']}{exact}"
        )
        print("   " + repr(c["text"]))
    return 0


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
