"""Patch sequences for the n-gram / restore benchmarks: real blt_patches or a synthetic stand-in.

``--warehouse DIR`` reads ``DIR/blt_patches/*/*.parquet`` (Hive layout, any shard), orders each
article's rows by ``patch_index`` and uses the ``patch`` bytes.  Without it, or when that
directory holds no blt_patches files, the bundled corpus (pydoc_data.topics) is cut by the
deterministic synthetic patcher.  The returned corpus' ``source`` says which.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sphere_assets.lib.sketch.ngrams import sequence_offsets
from sphere_assets.lib.sketch.synthetic_patches import PatchedCorpus, bundled_corpus


def warehouse_corpus(warehouse: str) -> PatchedCorpus | None:
    files = sorted(glob.glob(os.path.join(warehouse, "blt_patches", "*", "*.parquet")))
    if not files:
        return None
    table = pa.concat_tables(
        [pq.read_table(f, columns=["article_id", "patch_index", "patch"]) for f in files]
    )
    table = table.sort_by([("article_id", "ascending"), ("patch_index", "ascending")])
    ids = table.column("article_id")
    encoded = pc.dictionary_encode(ids).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    change = np.flatnonzero(np.diff(codes)) + 1
    lengths = np.diff(np.concatenate([[0], change, [len(codes)]]))
    starts = np.concatenate([[0], change]).astype(np.int64)
    article_ids = [ids[int(s)].as_py() for s in starts] if len(codes) else []
    patches = table.column("patch").combine_chunks()
    return PatchedCorpus(
        article_ids, patches, sequence_offsets(lengths), f"warehouse:{warehouse}/blt_patches"
    )


def load_corpus(warehouse: str | None, mode: str = "content", seed: int = 0) -> PatchedCorpus:
    if warehouse:
        corpus = warehouse_corpus(warehouse)
        if corpus is not None and corpus.n_patches:
            return corpus
        print(f"# no blt_patches Parquet under {warehouse!r}; falling back to synthetic patches")
    return bundled_corpus(mode=mode, seed=seed)


def concat_corpora(corpora: list[PatchedCorpus], source: str) -> PatchedCorpus:
    ids: list[str] = []
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for i, c in enumerate(corpora):
        ids.extend(f"{i}:{a}" for a in c.article_ids)
        offsets.append(c.offsets[1:] + base)
        base += c.n_patches
    return PatchedCorpus(
        ids, pa.concat_arrays([c.patches for c in corpora]), np.concatenate(offsets), source
    )
