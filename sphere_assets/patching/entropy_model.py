"""entropy_model (unpartitioned): the BLT byte LM trained on a deterministic sample of every
raw_articles shard.

Writes ``model.safetensors`` (weights + config), ``heldout.safetensors`` (token entropies of the
held-out text), ``calibration.safetensors`` (token entropies of the sample blt_patches calibrates
its threshold on: byte windows drawn uniformly from every shard, ``lib.text.calibration_sample``;
how representative it is — articles, shards covered, bytes, share of the corpus — is in the
metadata, beside the training sample's articles and shards) and a summary row.
Re-materializing with the same corpus and config gives byte-identical files. The model is
``sphere_assets.lib.text.entropy_model``, its training ``lib.text.entropy_training``.
"""

import hashlib
import time
from dataclasses import fields

import dagster as dg
from pydantic import Field

from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.ingest.contract import RAW_ARTICLES
from sphere_assets.ingest.raw_articles import raw_articles
from sphere_assets.patching import io, report
from sphere_assets.patching.contract import ENTROPY_MODEL
from sphere_resources.warehouse import WarehouseResource

# torch/JAX compute, loaded on first use (sphere_assets/core/lazy.py)
em = lazy_module("sphere_assets.lib.text.entropy_model")
et = lazy_module("sphere_assets.lib.text.entropy_training")
pt = lazy_module("sphere_assets.lib.text.patcher")
rt = lazy_module("sphere_assets.lib.text.torch_runtime")
cs = lazy_module("sphere_assets.lib.text.calibration_sample")
tc = lazy_module("sphere_assets.lib.text.corpus")


class EntropyModelAssetConfig(dg.Config):
    """Preset plus optional overrides of :class:`EntropyModelConfig` fields (None = preset's)."""

    preset: str = Field("tiny", description="tiny (default, ≤60 s on 2 CPU cores) | base")
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    window: int | None = Field(None, description="attention window (keys per query)")
    seq_len: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    seed: int | None = None
    sample_bytes: int | None = Field(None, description="byte budget of the training sample")
    holdout_fraction: float | None = None
    max_eval_bytes: int | None = None
    num_threads: int | None = Field(None, description="torch threads (0 = torch's default)")
    device: str = Field("cpu", description="torch device: cpu | cuda | cuda:N | auto")
    calibration_bytes: int = Field(
        1 << 20,
        description="bytes of the θ-calibration sample, shared equally by the shards (a shard "
        "of at most its share is taken whole)",
    )
    calibration_window: int = Field(2048, description="bytes per calibration window")

    def to_model_config(self) -> "em.EntropyModelConfig":
        """The preset with every override that is set (the fields shared by name)."""
        presets = {"tiny": em.EntropyModelConfig.tiny, "base": em.EntropyModelConfig.base}
        if self.preset not in presets:
            raise ValueError(f"entropy_model preset must be one of {sorted(presets)}")
        names = {f.name for f in fields(em.EntropyModelConfig)}
        overrides = {k: v for k, v in self.model_dump().items() if k in names and v is not None}
        return presets[self.preset](**overrides)


@dg.asset(
    name=ENTROPY_MODEL.name,
    deps=[raw_articles],
    group_name="patching",
    kinds={"torch", "safetensors", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "patching"},
    description=(
        "Small causal byte LM of the BLT entropy-model family (260-token byte vocabulary, "
        "RMSNorm, RoPE, SwiGLU, windowed causal attention), trained with torch on a "
        "deterministic sample of all raw_articles shards. model.safetensors holds weights + "
        "config; heldout.safetensors the held-out token entropies used to calibrate "
        "blt_patches' threshold; metadata reports held-out bits/byte vs the unigram baseline."
    ),
)
def entropy_model(
    context: dg.AssetExecutionContext, config: EntropyModelAssetConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    cfg = config.to_model_config()
    device = rt.resolve_device(config.device)
    t0 = time.perf_counter()
    sample = et.sample_training_bytes(io.iter_corpus(store), cfg)
    context.log.info(
        f"entropy_model: sample {sample.train_bytes} train / {sample.heldout_bytes} held-out bytes "
        f"({len(sample.train_article_ids)} / {len(sample.heldout_segments)} articles); training "
        f"{cfg.steps} steps on {device}"
    )
    model, training = et.train_entropy_model(
        sample, cfg, device, log_every=max(1, cfg.steps // 10), log=context.log.info
    )
    keys = store.partitions(RAW_ARTICLES.name)
    plans = cs.plan_windows(
        {k: io.shard_bytes(store, RAW_ARTICLES.name, "n_bytes", [k]) for k in keys},
        config.calibration_bytes,
        config.calibration_window,
        cfg.seed,
    )
    t_cal = time.perf_counter()
    with rt.torch_runtime(cfg.num_threads):
        heldout = [pt.token_entropies(model, seg) for seg in sample.heldout_segments]
        segments, cal_stats = cs.sample_segments(
            model,
            plans,
            lambda key: io.iter_shard_articles(store, key),
            config.calibration_window,
        )
    coverage = {
        **cal_stats.as_metadata(),
        "calibration_seconds": round(time.perf_counter() - t_cal, 2),
        **sample_coverage(sample, len(keys)),
    }
    context.log.info(
        f"entropy_model: θ-calibration sample {cal_stats.bytes} bytes from "
        f"{cal_stats.articles} articles in {cal_stats.shards}/{len(keys)} shards "
        f"({cal_stats.shards_whole} whole, {cal_stats.windows} windows)"
    )
    # the training wall time stays out of the file: re-materializing writes the same bytes
    metrics = {k: repr(v) for k, v in training.as_metadata().items() if k != "train_seconds"}
    payload = io.model_file_bytes(*em.model_file_tensors(model, metrics))
    sha = hashlib.sha256(payload).hexdigest()
    row = io.entropy_model_row(training, cfg, sha, sample, str(device))
    io.write_entropy_model(
        store,
        payload,
        sha,
        heldout,
        row,
        (segments, cal_stats.segment_shard, cal_stats.as_metadata()),
    )
    context.log.info(
        f"entropy_model: held-out {training.heldout_bits_per_byte:.3f} bits/byte vs unigram "
        f"{training.unigram_bits_per_byte:.3f} ({training.num_parameters} params, "
        f"{training.train_seconds:.1f}s training)"
    )
    return dg.MaterializeResult(
        metadata={
            **report.entropy_model_metadata(
                config.preset,
                cfg,
                training,
                sample,
                str(device),
                sha,
                str(io.model_path(store)),
                time.perf_counter() - t0,
            ),
            **coverage,
        }
    )


def sample_coverage(sample, n_shards: int) -> dict:
    """How representative the training sample is: its articles and the shards they come from
    (an article's shard is ``corpus.shard_of`` its id)."""
    ids = [*sample.train_article_ids, *sample.heldout_article_ids]
    shards = {tc.shard_of(i, n_shards) for i in ids} if n_shards else set()
    return {
        "sample_articles": len(set(ids)),
        "sample_shards_covered": len(shards),
        "shards": n_shards,
    }


@dg.asset_check(
    asset=entropy_model,
    description="The stored model loads (config rebuilds the exact parameter set, sha256 matches "
    "the summary row) and its held-out bits/byte beats the unigram-entropy baseline.",
    blocking=True,
)
def entropy_model_beats_unigram(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    store = warehouse.store()
    row = io.read_model_row(store)
    _, _, sha = io.load_model(store)
    bpb, unigram = row["heldout_bits_per_byte"], row["unigram_bits_per_byte"]
    return dg.AssetCheckResult(
        passed=bool(bpb < unigram and sha == row["model_sha256"]),
        metadata={
            "heldout_bits_per_byte": bpb,
            "unigram_bits_per_byte": unigram,
            "margin_bits": round(unigram - bpb, 4),
            "sha256_matches": sha == row["model_sha256"],
        },
    )
