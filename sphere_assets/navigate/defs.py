"""The navigate family's assets and checks, as sphere_assets/definitions.py collects them."""

from sphere_assets.navigate.embedding_ann import embedding_ann, embedding_ann_recall
from sphere_assets.navigate.sphere_index import sphere_index, sphere_index_exact

ASSETS = [sphere_index, embedding_ann]
CHECKS = [sphere_index_exact, embedding_ann_recall]
