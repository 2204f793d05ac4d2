"""embedding_ann (shard): a faiss approximate-nearest-neighbour index over the unit patch
embeddings, for semantic queries (cosine = inner product of unit rows).

Pure compute in ``sphere_assets.lib.sphere.semantic`` (why faiss and IVF-Flat is in its
docstring: full vectors, so its scores are the exact cosines; seconds to build at 1M rows;
seeded; one recall knob, ``nprobe``). ``kind: hnsw`` builds faiss' HNSW graph instead.

Partitioned by shard like patch_embeddings: each shard's index is independent (its own k-means
lists), a query searches every shard and merges the per-shard top-k by cosine
(``semantic.merge_top_k``), so adding or changing a shard never refits the others.
"""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
from pydantic import Field

from sphere_assets.core.checks import partition_check_results, shard_check
from sphere_assets.core.lazy import lazy_module
from sphere_assets.core.metadata import partition_results
from sphere_assets.core.partitions import partitions_in_scope, shard_partitions
from sphere_assets.core.pools import HEAVY_POOL
from sphere_assets.navigate import io, report
from sphere_assets.navigate.contract import EMBEDDING_ANN
from sphere_assets.patching.contract import PATCH_EMBEDDINGS
from sphere_resources.warehouse import Warehouse, WarehouseResource

se = lazy_module("sphere_assets.lib.sphere.semantic")

RECALL_QUERIES = 256
RECALL_FLOOR = 0.9  # the check's pass line for recall@10 of stored rows against exact cosine


class EmbeddingAnnConfig(dg.Config):
    kind: str = Field("ivf", description="ivf (faiss IndexIVFFlat) | hnsw (faiss IndexHNSWFlat)")
    nlist: int = Field(0, description="ivf lists (0 = ~4 sqrt(N), >= 39 points per list)")
    nprobe: int = Field(0, description="ivf lists searched per query (0 = max(16, nlist/64))")
    hnsw_m: int = Field(32, description="hnsw graph degree")
    ef_construction: int = Field(80, description="hnsw build breadth")
    ef_search: int = Field(128, description="hnsw search breadth")
    train_sample: int = Field(131072, description="ivf k-means training rows (seeded sample)")
    seed: int = Field(0, description="seed of the training sample and the k-means")
    threads: int = Field(0, description="faiss OpenMP threads (0 = faiss' default)")

    def params(self) -> "se.AnnParams":
        return se.AnnParams(
            kind=self.kind,
            nlist=self.nlist,
            nprobe=self.nprobe,
            hnsw_m=self.hnsw_m,
            ef_construction=self.ef_construction,
            ef_search=self.ef_search,
            train_sample=self.train_sample,
            seed=self.seed,
        )


def sample_recall(index, x: np.ndarray, queries: int, seed: int) -> float:
    """recall@10 of the index for ``queries`` seeded stored rows (as queries) vs exact cosine."""
    if x.shape[0] == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(x.shape[0], min(queries, x.shape[0]), replace=False))
    truth, _ = se.top_k_cosine(x[rows], x, 10)
    found, _ = se.ann_search(index, x[rows], 10)
    return se.recall_at_k(found, truth)


def build_shard(store: Warehouse, key: str, config: EmbeddingAnnConfig) -> tuple[dict, float]:
    """Build and write one shard's index; (summary row, sample recall@10)."""
    emb, meta = io.read_embeddings(store, key, f"asset '{EMBEDDING_ANN.name}'")
    x = se.unit_rows(emb)
    params = config.params()
    if config.threads:
        import faiss

        faiss.omp_set_num_threads(config.threads)
    t0 = time.perf_counter()
    index = se.build_ann(x, params)
    seconds = time.perf_counter() - t0
    data = se.serialize_ann(index)
    ivf = params.kind == "ivf"
    summary = {
        "kind": params.kind,
        "rows": int(index.ntotal),
        "dim": int(x.shape[1]),
        "nlist": int(index.nlist) if ivf else 0,
        "nprobe": int(index.nprobe) if ivf else 0,
        "hnsw_m": 0 if ivf else params.hnsw_m,
        "ef_search": 0 if ivf else params.ef_search,
        "seed": params.seed,
        "model_sha256": meta.get("model_sha256", ""),
        "build_seconds": seconds,
        "index_bytes": len(data),
    }
    io.write_ann(store, key, data, summary)
    return summary, sample_recall(index, x, RECALL_QUERIES, params.seed)


@dg.asset(
    name=EMBEDDING_ANN.name,
    deps=[PATCH_EMBEDDINGS.name],
    partitions_def=shard_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="navigate",
    kinds={"faiss", "parquet"},
    pool=HEAVY_POOL,
    owners=["team:sphere"],
    tags={"family": "navigate"},
    description=(
        "faiss index (IVF-Flat, inner product on L2-normalised rows; or HNSW) over each shard's "
        "patch_embeddings, id = row: the approximate-nearest-neighbour path of `sphere query`. "
        "ann.faiss (faiss.serialize_index) + a one-row summary; recall@10 of 256 stored rows "
        "against exact cosine in the metadata."
    ),
)
def embedding_ann(
    context: dg.AssetExecutionContext, config: EmbeddingAnnConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    store = warehouse.store()
    metadata_by_partition = {}
    for key in context.partition_keys:
        summary, recall = build_shard(store, key, config)
        context.log.info(
            f"{EMBEDDING_ANN.name} shard {key}: {summary['kind']} over {summary['rows']} rows in "
            f"{summary['build_seconds']:.2f}s, recall@10 {recall:.3f}"
        )
        metadata_by_partition[key] = report.embedding_ann_metadata(
            summary, recall, RECALL_QUERIES, str(store.partition_dir(EMBEDDING_ANN.name, key))
        )
    return partition_results(context, metadata_by_partition)


@shard_check(
    asset=embedding_ann,
    additional_deps=[PATCH_EMBEDDINGS.name],
    description=f"Per shard: the index holds every patch_embeddings row, and recall@10 of "
    f"{RECALL_QUERIES} seeded stored rows against exact cosine is >= {RECALL_FLOOR}.",
    blocking=False,
)
def embedding_ann_recall(
    context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource
) -> Iterator:
    store = warehouse.store()
    results = {}
    for key in partitions_in_scope(context, store, EMBEDDING_ANN.name):
        index = se.deserialize_ann(
            io.read_ann_bytes(store, key, f"check of '{EMBEDDING_ANN.name}'")
        )
        emb, _ = io.read_embeddings(store, key, f"check of '{EMBEDDING_ANN.name}'")
        x = se.unit_rows(emb)
        recall = sample_recall(index, x, RECALL_QUERIES, 1)
        complete = int(index.ntotal) == x.shape[0]
        results[key] = dg.AssetCheckResult(
            passed=bool(complete and recall >= RECALL_FLOOR),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "partitions": key,
                "vectors": int(index.ntotal),
                "embeddings": int(x.shape[0]),
                "recall_at_10": round(recall, 4),
            },
        )
    yield from partition_check_results(context, results)
