"""Benchmark: BLT entropy + patching throughput vs the same run's raw model forward pass.

    .venv/bin/python bench/patching.py [--threads 1 2] [--repeat 5] [--steps N]

1. Trains the default tiny entropy model (EntropyModelConfig.tiny) on the bundled corpus
   (pydoc_data.topics) and reports training time, held-out bits/byte and the unigram baseline.
2. Over every article of the corpus, per thread count, times each stage in --repeat interleaved
   rounds after a warm-up round (bytes/s from the minimum wall time; median and CPU beside it):

   * ``raw forward``: ``model(tokens)`` (embedding, blocks, final norm, head: full logits) on
     non-overlapping chunks of the inference chunk size — the bare model cost, the reference;
   * ``entropy``: entropies for every byte with full context (overlapping chunks, blocked
     head + entropy), no patch rule;
   * ``entropy + patching``: ``patcher.patch_article`` — entropies, BLT's start rule, max-length
     split, per-patch mean/max/first entropy;
   * ``+ pooling``: ``patch_embeddings.pool_patch_embeddings`` on those patches (a second
     trunk pass; shown for completeness).

   and prints bytes/s and the overhead ratio ``t(entropy + patching) / t(raw forward) - 1``.

Targets (issue 3): entropy + patching >= 0.2 MB/s on 2 cores for the tiny model, overhead <= 10%.
The machine may be shared: CPU time (process_time) is printed beside wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sphere_assets.compute import entropy_model as em
from sphere_assets.compute import patch_embeddings as pe
from sphere_assets.compute import patcher as pt


def corpus() -> list[tuple[str, bytes]]:
    from pydoc_data.topics import topics

    return [(f"pydoc:{k}", v.encode("utf-8")) for k, v in sorted(topics.items())]


def timed_interleaved(stages: dict, repeat: int) -> dict[str, tuple[float, float, float]]:
    """Per stage (min wall s, median wall s, min cpu s) over ``repeat`` rounds after a warm-up
    round. Stages alternate inside each round so load changes hit them alike; the minimum is
    the least-disturbed estimate on a shared machine."""
    for fn in stages.values():
        fn()
    walls: dict[str, list[float]] = {k: [] for k in stages}
    cpus: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(repeat):
        for name, fn in stages.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - w)
            cpus[name].append(time.process_time() - c)
    return {k: (min(walls[k]), statistics.median(walls[k]), min(cpus[k])) for k in stages}


def raw_forward(model, articles, chunk):
    with torch.inference_mode():
        for _, data in articles:
            tokens = torch.from_numpy(em.bytes_to_tokens(data))
            for s in range(0, len(tokens), chunk):
                model(tokens[s : s + chunk][None])


def entropy_only(model, articles):
    for _, data in articles:
        pt.article_entropies(model, data)


def entropy_and_patching(model, articles, threshold, out=None):
    for _, data in articles:
        res = pt.patch_article(model, data, threshold, "global", 128)
        if out is not None:
            out.append(res)


def pooling(model, articles, patches):
    for (_, data), res in zip(articles, patches, strict=True):
        pe.pool_patch_embeddings(
            model, data, res.byte_start, res.byte_len, byte_entropy=res.byte_entropy
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="override training steps")
    args = ap.parse_args()

    articles = corpus()
    total = sum(len(d) for _, d in articles)
    cfg = em.EntropyModelConfig.tiny(**({"steps": args.steps} if args.steps else {}))
    print(f"# corpus: pydoc_data.topics, {len(articles)} articles, {total / 1e6:.3f} MB")
    print(f"# model: {cfg.to_json()}")

    t0 = time.perf_counter()
    sample = em.sample_training_bytes(articles, cfg)
    model, report = em.train_entropy_model(sample, cfg)
    print(
        f"training: {report.steps} steps in {report.train_seconds:.1f} s wall "
        f"({time.perf_counter() - t0:.1f} s incl. sampling + eval), {report.num_parameters} "
        f"params, {cfg.num_threads} thread(s)"
    )
    print(
        f"held-out bits/byte {report.heldout_bits_per_byte:.3f} vs unigram "
        f"{report.unigram_bits_per_byte:.3f} (held-out empirical unigram entropy "
        f"{report.heldout_unigram_entropy_bits:.3f}); {report.train_bytes} train / "
        f"{report.heldout_bytes} held-out bytes"
    )
    with em.torch_runtime(1):
        held = [pt.token_entropies(model, s) for s in sample.heldout_segments]
    cal = pt.calibrate_threshold(held, 4.5, "global", 128)
    print(
        f"calibrated θ = {cal.threshold:.4f} nats (held-out mean {cal.achieved_mean_patch_bytes:.3f} "
        f"bytes, {cal.evaluations} bisection evaluations)"
    )
    chunk = em.default_chunk_size(cfg)
    print(
        f"inference chunk {chunk} tokens, overlap {em.default_context(cfg)} tokens "
        f"(receptive field {em.receptive_field(cfg)})\n"
    )

    header = (
        f"{'threads':>7} | {'stage':<20} | {'min wall s':>10} | {'median s':>8} | "
        f"{'min cpu s':>9} | {'MB/s':>6} | vs raw fwd"
    )
    print(header)
    print("-" * len(header))
    summary = []
    for threads in args.threads:
        with em.torch_runtime(threads):
            patches: list = []
            entropy_and_patching(model, articles, cal.threshold, patches)
            times = timed_interleaved(
                {
                    "raw forward (ref)": lambda: raw_forward(model, articles, chunk),
                    "entropy": lambda: entropy_only(model, articles),
                    "entropy + patching": lambda: entropy_and_patching(
                        model, articles, cal.threshold
                    ),
                    "pooling (2nd pass)": lambda p=patches: pooling(model, articles, p),
                },
                args.repeat,
            )
        raw = times["raw forward (ref)"][0]
        for name, (wall, median, cpu) in times.items():
            print(
                f"{threads:>7} | {name:<20} | {wall:10.3f} | {median:8.3f} | {cpu:9.3f} | "
                f"{total / wall / 1e6:6.3f} | x{wall / raw:.3f}"
            )
        pat = times["entropy + patching"]
        raw_cpu = times["raw forward (ref)"][2]
        n_patches = sum(r.num_patches for r in patches)
        ent = times["entropy"][0]
        summary.append(
            (
                threads,
                total / pat[0] / 1e6,
                pat[0] / raw - 1,
                pat[2] / raw_cpu - 1,
                pat[0] / ent - 1,
                total / n_patches,
            )
        )
    print()
    for threads, mbps, overhead, overhead_cpu, rule_overhead, mean in summary:
        print(
            f"threads={threads}: entropy+patching {mbps:.3f} MB/s (target >= 0.2); vs raw forward "
            f"{overhead:+.1%} wall, {overhead_cpu:+.1%} cpu (target <= +10%); patch rule + "
            f"statistics on top of the entropies {rule_overhead:+.1%}; mean patch {mean:.2f} bytes"
        )
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
