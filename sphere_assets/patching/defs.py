"""The patching family's assets and checks, collected for ``sphere_assets.definitions``."""

from sphere_assets.patching.blt_patches import blt_patches, blt_patches_reassemble
from sphere_assets.patching.entropy_model import entropy_model, entropy_model_beats_unigram
from sphere_assets.patching.patch_embeddings import patch_embeddings, patch_embeddings_consistent

ASSETS = [entropy_model, blt_patches, patch_embeddings]
CHECKS = [entropy_model_beats_unigram, blt_patches_reassemble, patch_embeddings_consistent]
