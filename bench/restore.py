"""Benchmark: restore quality vs span length and P, and restore latency.

Run:  .venv/bin/python bench/restore.py [--warehouse data/warehouse] [--mode random|content]
                                         [--spans 30] [--lengths 16,32,...] [--ps 10,12,14,16]
                                         [--context-order 6] [--no-length]

Patches: real ``blt_patches`` rows with ``--warehouse`` (when present), otherwise the bundled
corpus (pydoc_data.topics) cut by the deterministic synthetic patcher (``--mode random``: 1–8
byte chunks, the default; ``--mode content``: word-like, repetitive).  The output says which.

The whole corpus is ingested once (vocabulary, adjacency and the context counts of order
3..N, as ``ngram_vocabulary`` and ``adjacency_merged`` hold them).  Spans of L consecutive patches are drawn with a fixed seed
from articles with at least L patches (the same spans for every P); each span's HLLSet is the
one ``article_hllsets`` stores (the span padded with _START_/_END_) and is restored with
``restore(k, length=L)`` — the span's patch count, which ``article_hllsets`` stores beside
every HLLSet (``--no-length`` restores without it: trails, each 3-gram edge at most once).
"Held out" here means spans sampled independently of everything else — restore
is lookup, so the vocabulary does contain them.

Columns:
* exact@1 / exact@k — the top-1 / any of the top-k orderings equals the span.
* determined — share of spans without a repeated 2-gram (then the n-gram set fixes the
  ordering; with repeats, segments can swap or multiplicity is lost, and exactness may be
  impossible for any restorer).
* ned@1, ned@k — normalized token edit distance (Levenshtein / max length) of the top-1 and of
  the best of the top-k; "ned rand" — the same for a random permutation of the span (baseline).
* cover P/R — precision / recall of the validated n-grams (all 3 orders) vs the span's n-grams.
* round trip — re-ingesting the top-1 ordering reproduces the HLLSet bit-for-bit.
* ms — mean restore latency.

Latency: p50/p95 over many 64-patch spans at each P, with the full vocabulary loaded.
Ablation: exact@1 at 64 patches, P = 10, with and without the context counts and the length.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._patch_source import load_corpus, warehouse_corpus  # noqa: E402
from sphere_assets.lib.sketch import context_model as cm  # noqa: E402
from sphere_assets.lib.sketch import ngrams as ng  # noqa: E402
from sphere_assets.lib.sketch import restore as rs  # noqa: E402


def levenshtein(a: list[int], b: list[int]) -> int:
    """Token edit distance, one numpy row per token of ``a`` (insertions via a running min)."""
    if not a or not b:
        return max(len(a), len(b))
    bb = np.asarray(b)
    ramp = np.arange(len(b) + 1)
    prev = ramp.copy()
    for i, x in enumerate(a, start=1):
        partial = np.minimum(prev[:-1] + (bb != x), prev[1:] + 1)
        row = np.concatenate([[i], partial])
        prev = np.minimum.accumulate(row - ramp) + ramp
    return int(prev[-1])


def ned(a: list[bytes], b: list[bytes], ids: dict) -> float:
    if not a and not b:
        return 0.0
    ia = [ids.setdefault(x, len(ids)) for x in a]
    ib = [ids.setdefault(x, len(ids)) for x in b]
    return levenshtein(ia, ib) / max(len(a), len(b))


def determined(span: list[bytes]) -> bool:
    grams = ng.reference_keys(span)[2]
    return len(set(grams)) == len(grams)


def sample_spans(corpus, length: int, count: int, seed: int) -> list[list[bytes]]:
    lengths = np.diff(corpus.offsets)
    ok = np.flatnonzero(lengths >= length)
    if ok.size == 0:
        return []
    rng = np.random.default_rng([seed, length])
    out = []
    for _ in range(count):
        a = int(ok[rng.integers(ok.size)])
        start = int(rng.integers(0, lengths[a] - length + 1))
        out.append(corpus.article_patches(a)[start : start + length])
    return out


def cover_keys(index: rs.RestoreIndex, result: rs.RestoreResult) -> set:
    if not result.cover:
        return set()
    ones, twos, threes = result.cover
    toks = index.token_bytes
    keys = {(1, toks[i]) for i in ones[:, 0].tolist()}
    esc = index.table.escaped
    for n, rows in ((2, twos), (3, threes)):
        if rows.shape[0]:
            keys.update((n, k) for k in ng.join_keys(esc, rows).to_pylist())
    return keys


def true_keys(span: list[bytes]) -> set:
    ref = ng.reference_keys(span)
    return {(n, k) for n in ng.ORDERS for k in ref[n]}


def restore_span(index, span, h, k, beam, uses, with_length, use_context=True):
    return rs.restore(
        h,
        index,
        k=k,
        beam_width=beam,
        max_edge_uses=uses,
        length=len(span) if with_length else None,
        use_context=use_context,
    )


def evaluate(index, spans, k, beam, rng, uses=None, with_length=True, use_context=True) -> dict:
    ids: dict = {}
    rows = []
    for span in spans:
        h = ng.hllset_of_patches(span, index.p)
        result = restore_span(index, span, h, k, beam, uses, with_length, use_context)
        cands = [c.patches for c in result.candidates]
        top = cands[0] if cands else []
        shuffled = [span[i] for i in rng.permutation(len(span))]
        cover = cover_keys(index, result)
        truth = true_keys(span)
        hit = len(cover & truth)
        rows.append(
            {
                "exact1": bool(cands) and top == span,
                "exactk": span in cands,
                "determined": determined(span),
                "ned1": ned(top, span, ids),
                "nedk": min((ned(c, span, ids) for c in cands), default=1.0),
                "nedr": ned(shuffled, span, ids),
                "prec": hit / len(cover) if cover else 0.0,
                "rec": hit / len(truth),
                "rt": bool(cands) and ng.hllset_of_patches(top, index.p) == h,
                "ms": result.report.latency_ms,
                "edges": result.report.n_validated_edges,
            }
        )
    agg = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    det = [r for r in rows if r["determined"]]
    agg["exact1_det"] = float(np.mean([r["exact1"] for r in det])) if det else float("nan")
    agg["n"] = len(rows)
    return agg


def latency(index, spans, k, beam, uses=None, with_length=True) -> tuple[float, float, float]:
    hlls = [ng.hllset_of_patches(s, index.p) for s in spans]
    for span, h in list(zip(spans, hlls, strict=True))[:3]:
        restore_span(index, span, h, k, beam, uses, with_length)  # warm-up
    times = []
    for span, h in zip(spans, hlls, strict=True):
        t0 = time.perf_counter()
        restore_span(index, span, h, k, beam, uses, with_length)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), float(np.max(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warehouse", default=None, help="read blt_patches Parquet from here")
    ap.add_argument("--mode", default="random", choices=["random", "content"])
    ap.add_argument("--lengths", default="16,32,64,128,256,512,1024")
    ap.add_argument("--ps", default="10,12,14,16")
    ap.add_argument("--spans", type=int, default=30, help="spans per (length, P) cell")
    ap.add_argument("--latency-spans", type=int, default=200)
    ap.add_argument("--k", type=int, default=rs.DEFAULT_K)
    ap.add_argument("--beam", type=int, default=rs.DEFAULT_BEAM_WIDTH)
    ap.add_argument("--seed", type=int, default=20240607)
    ap.add_argument(
        "--max-uses",
        type=int,
        default=None,
        help="max uses of one edge per path (default: 1 without a length, unlimited with one)",
    )
    ap.add_argument(
        "--context-order",
        type=int,
        default=cm.DEFAULT_MAX_ORDER,
        help="highest context n-gram order (0 = rank by 3-gram weights only)",
    )
    ap.add_argument(
        "--no-length", action="store_true", help="restore without the span's patch count"
    )
    args = ap.parse_args()

    corpus = None
    if args.warehouse:
        corpus = warehouse_corpus(args.warehouse)
        if corpus is None:
            print(f"# no blt_patches under {args.warehouse!r}: using synthetic patches")
    if corpus is None:
        corpus = load_corpus(None, args.mode)
    lengths = [int(x) for x in args.lengths.split(",")]
    ps = [int(x) for x in args.ps.split(",")]
    t0 = time.perf_counter()
    table = ng.index_sequences(corpus.patches, corpus.offsets).table
    _ = table.hashes
    print(
        f"# patches: {corpus.source}; {corpus.n_patches:,} patches in {len(corpus.article_ids)} "
        f"articles; vocabulary 1/2/3-grams {table.size(1):,}/{table.size(2):,}/{table.size(3):,} "
        f"(ingested in {time.perf_counter() - t0:.2f}s)"
    )
    print(
        f"# k={args.k} beam={args.beam} max edge uses={args.max_uses} "
        f"spans/cell={args.spans} seed={args.seed}"
    )
    t0 = time.perf_counter()
    context = cm.count_patch_contexts(corpus.patches, corpus.offsets, args.context_order)
    print(
        f"# context counts, orders 3..{args.context_order}: {context.size:,} entries "
        f"({time.perf_counter() - t0:.2f}s)"
    )
    with_length = not args.no_length
    print(f"# length hint: {'yes (span patch count)' if with_length else 'no'}")
    indexes = {}
    for p in ps:
        t0 = time.perf_counter()
        indexes[p] = rs.RestoreIndex.build(table, p, context=context)
        print(f"# restore index P={p} built in {time.perf_counter() - t0:.2f}s")
    print()
    print(
        "| L | P | n | determined | exact@1 | exact@1 (determined) | exact@k | ned@1 | ned@k | "
        "ned rand | cover P | cover R | round trip | edges | ms |"
    )
    print("|" + "---|" * 15)
    best_p_256 = None
    for length in lengths:
        spans = sample_spans(corpus, length, args.spans, args.seed)
        if not spans:
            print(f"| {length} | - | 0 | no article has {length} patches |")
            continue
        for p in ps:
            rng = np.random.default_rng([args.seed, length, p])
            r = evaluate(indexes[p], spans, args.k, args.beam, rng, args.max_uses, with_length)
            print(
                f"| {length} | {p} | {r['n']} | {r['determined']:.2f} | {r['exact1']:.2f} | "
                f"{r['exact1_det']:.2f} | {r['exactk']:.2f} | {r['ned1']:.3f} | {r['nedk']:.3f} | "
                f"{r['nedr']:.3f} | {r['prec']:.3f} | {r['rec']:.3f} | {r['rt']:.2f} | "
                f"{r['edges']:.0f} | {r['ms']:.1f} |",
                flush=True,
            )
            if length == 256 and best_p_256 is None and r["exactk"] >= 0.9:
                best_p_256 = p
    if 256 in lengths:
        print(
            f"\n# smallest P with exact@k >= 0.9 at 256 patches: {best_p_256 or 'none of ' + str(ps)}"
        )
    print("\n| latency, 64-patch spans | P | spans | p50 ms | p95 ms | max ms |")
    print("|---|---|---|---|---|---|")
    spans = sample_spans(corpus, 64, args.latency_spans, args.seed + 1)
    for p in ps:
        p50, p95, worst = latency(indexes[p], spans, args.k, args.beam, args.max_uses, with_length)
        print(
            f"| full vocabulary | {p} | {len(spans)} | {p50:.2f} | {p95:.2f} | {worst:.2f} |",
            flush=True,
        )
    if 64 in lengths and 10 in indexes:
        print("\n| ablation, 64 patches, P=10 | length hint | context | exact@1 | exact@k |")
        print("|---|---|---|---|---|")
        spans = sample_spans(corpus, 64, args.spans, args.seed)
        for use_length in (True, False):
            for use_context in (True, False):
                rng = np.random.default_rng([args.seed, 64, 10])
                r = evaluate(
                    indexes[10], spans, args.k, args.beam, rng, None, use_length, use_context
                )
                print(
                    f"| | {'yes' if use_length else 'no'} | "
                    f"{'yes' if use_context and context.size else 'no'} | "
                    f"{r['exact1']:.2f} | {r['exactk']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
