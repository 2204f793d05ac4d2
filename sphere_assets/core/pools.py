"""Concurrency pools. Steps that run torch or JAX share the ``heavy`` pool, so two of them never
compete for the 2 cores and the memory of one machine (limit set in dagster.yaml)."""

HEAVY_POOL = "heavy"
HEAVY_KINDS = frozenset({"torch", "pytorch", "jax"})
