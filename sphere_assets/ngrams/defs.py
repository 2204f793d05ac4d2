"""The ngrams family's assets and checks, collected for ``sphere_assets.definitions``."""

from sphere_assets.ngrams.adjacency import adjacency, adjacency_csr_valid
from sphere_assets.ngrams.adjacency_merged import (
    adjacency_merged,
    adjacency_merged_equals_whole,
    restore_quality,
)
from sphere_assets.ngrams.article_hllsets import article_hllsets, article_hllsets_consistent
from sphere_assets.ngrams.ngram_index import ngram_index, ngram_index_consistent
from sphere_assets.ngrams.ngram_vocabulary import (
    ngram_vocabulary,
    ngram_vocabulary_merge_consistent,
)

ASSETS = [ngram_index, ngram_vocabulary, article_hllsets, adjacency, adjacency_merged]
CHECKS = [
    ngram_index_consistent,
    ngram_vocabulary_merge_consistent,
    article_hllsets_consistent,
    adjacency_csr_valid,
    adjacency_merged_equals_whole,
    restore_quality,
]
