"""Every asset's ``code_version``, in one place (applied by ``automation.apply_orchestration``).

Dagster marks an asset *stale* ("code version changed") when its definition's code version differs
from the one recorded on its latest materialization, and ``entropy_model``'s automation condition
refits it when its code version changes. So a version must change whenever the asset's logic
does: its asset module, its family's ``io.py`` / ``report.py`` / ``contract.py`` and the
``sphere_assets.lib`` modules those import (directly, lazily, or through other lib modules).

Kept honest by ``tests/layout/test_code_versions.py``: ``tests/layout/code_versions.json`` records
each asset's version with the sha256 of those files; when a file changes and the version here
does not, the test fails. Then bump the asset's version below and refresh the lock with
``python -m tests.layout.code_versions --update`` (which refuses to record new hashes for an
asset whose version was not bumped).

Versions are plain strings; bump them as ``"1"`` → ``"2"``.
"""

CODE_VERSIONS: dict[str, str] = {
    # ingest
    "raw_articles": "1",
    # harmonics
    "sh_basis": "2",  # 2: the orthonormality check reports per band limit (same output)
    # patching
    "entropy_model": "3",  # 3: calibration.safetensors (θ sample from every shard)
    "blt_patches": "3",  # 3: θ on the every-shard sample; one model pass with patch_embeddings
    "patch_embeddings": "3",  # 3: takes blt_patches' pooled vectors (patch_forward_cache)
    # ngrams
    "ngram_index": "3",  # 2: lib/sketch/restore.py open ends (issue 19); 3: shared helpers (same output)
    "ngram_vocabulary": "4",  # 3: out-of-core k-way merge; 4: dead reader removed (same bytes)
    "article_hllsets": "3",  # 2: lib/sketch/restore.py open ends; 3: shared helpers (same output)
    "adjacency": "3",  # 2: lib/sketch/restore.py open ends; 3: shared helpers (same output)
    "adjacency_merged": "4",  # 3: out-of-core merge; 4: dead reader removed (same bytes)
    # placements
    "sphere_map": "6",  # 2: PCA-3 baseline from the model; 3: faster kernels (same outputs); 4: spreading.py gained a method (same outputs: the layout keeps gradient); 5: faster map kernels (same outputs); 6: layout room 1.25 degrees (was 1.5)
    "shell_placements": "9",  # 4: global map, spreading; 5: refactor; 6: faster map (same outputs); 7: least-move spreading; 8: faster map (same outputs); 9: the map of sphere_map 6
    # navigate
    "sphere_index": "1",
    "embedding_ann": "1",
    # catalog
    "duckdb_catalog": "2",  # 2: sphere_cone macros (catalog/navigate_sql.py)
    "postgres_catalog": "2",  # 2: the row-count check reports per shard (same output)
}
