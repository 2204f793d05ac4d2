"""Micro entropy-model configurations: seconds to train, for tests of the mechanics."""

from sphere_assets.lib.text import entropy_model as em

MICRO = dict(dim=16, n_layers=2, n_heads=2, window=4, seq_len=16, batch_size=4, steps=6)


def micro(**kw) -> em.EntropyModelConfig:
    return em.EntropyModelConfig.tiny(**{**MICRO, **kw})
