"""HLLSet n-gram settings as a Dagster resource (precision P, span length, adjacency smoothing,
context order)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from sphere_assets.lib.sketch.adjacency import DEFAULT_ALPHA
from sphere_assets.lib.sketch.context_model import DEFAULT_MAX_ORDER, MAX_MAX_ORDER
from sphere_assets.lib.sketch.hllset import DEFAULT_P, MAX_P, MIN_P

DEFAULT_SPAN_PATCHES = 64
__all__ = ["DEFAULT_MAX_ORDER", "DEFAULT_SPAN_PATCHES", "HllSetResource"]


class HllSetResource(dg.ConfigurableResource):
    """Settings shared by ngram_index, ngram_vocabulary, article_hllsets and the adjacency assets.

    * ``p`` — HLLSet precision: 2^P uint32 words per layer (env ``SPHERE_HLL_P``);
    * ``span_patches`` — article_hllsets also stores one HLLSet per span of this many patches
      (env ``SPHERE_HLL_SPAN``; 0 = articles only);
    * ``alpha`` — additive smoothing of the adjacency weights ln((F3+α)/(F2+α·outdeg));
    * ``context_order`` — the adjacency assets also count patch n-grams of order 3..N (N =
      this, env ``SPHERE_HLL_CONTEXT_ORDER``; 0 = off), which restore uses to rank orderings.
    """

    p: int = Field(default=DEFAULT_P, description=f"HLLSet precision P in [{MIN_P}, {MAX_P}].")
    span_patches: int = Field(
        default=DEFAULT_SPAN_PATCHES, description="Patches per span HLLSet (0 = no spans)."
    )
    alpha: float = Field(default=DEFAULT_ALPHA, description="Adjacency weight smoothing (> 0).")
    context_order: int = Field(
        default=DEFAULT_MAX_ORDER,
        description=f"Highest patch n-gram order counted for restore ranking (0 = off, 4..{MAX_MAX_ORDER}).",
    )

    def checked(self) -> HllSetResource:
        if not MIN_P <= self.p <= MAX_P:
            raise ValueError(f"hll.p (SPHERE_HLL_P) must be in [{MIN_P}, {MAX_P}], got {self.p}")
        if self.span_patches < 0:
            raise ValueError(
                f"hll.span_patches (SPHERE_HLL_SPAN) must be >= 0, got {self.span_patches}"
            )
        if not self.alpha > 0:
            raise ValueError(f"hll.alpha must be > 0, got {self.alpha}")
        if not (self.context_order == 0 or 4 <= self.context_order <= MAX_MAX_ORDER):
            raise ValueError(
                "hll.context_order (SPHERE_HLL_CONTEXT_ORDER) must be 0 (off) or in "
                f"[4, {MAX_MAX_ORDER}], got {self.context_order}"
            )
        return self

    def metadata(self) -> dict:
        return {
            "hll/p": self.p,
            "hll/span_patches": self.span_patches,
            "hll/alpha": self.alpha,
            "hll/context_order": self.context_order,
        }
