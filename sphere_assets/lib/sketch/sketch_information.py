"""How much a sketch register can say about a cardinality: Fisher information and the
Cramér–Rao floor on the relative standard error, per register and per bit of memory.

Model (Poissonized, as in ``hllset``): ``n`` distinct keys spread over ``m`` registers, so a
register sees ``Poisson(λ)`` keys, ``λ = n / m``; a key lands on rank ``j`` with probability
``p_j``. Any unbiased estimator of ``n`` from ``m`` such registers has a relative variance of at
least ``1 / (m · λ² I(λ))`` (Cramér–Rao), where ``λ² I(λ)`` is the scale-free Fisher
information of one register:

* **bitmap register** (this project's HLLSet layer: one bit per rank, set when any key had that
  rank): the bits are independent Poisson indicators, ``P(bit j) = 1 - exp(-x_j)`` with
  ``x_j = λ p_j``, so ``λ² I = Σ_j x_j² / (exp(x_j) - 1)``. With ``p_j = 2^-(j+1)`` the sum
  over the geometric grid tends to ``π² / (6 ln 2) ≈ 2.373`` (the integral of ``x / (e^x - 1)``
  over ``d ln x``): relative standard error ``≈ 0.649 / sqrt(m)``.
* **max register** (HyperLogLog: the largest rank seen, ranks ``k ≥ 1`` with ``2^-k``):
  ``P(max ≤ k) = exp(-λ 2^-k)``; summed numerically its information is ``≈ 0.930``, i.e.
  ``1.037 / sqrt(m)`` — the figure HyperLogLog's estimators reach (``1.04 / sqrt(m)``).

Both oscillate slightly with ``log2 λ``; :func:`mean_information` averages one period. The
memory-variance product ``bits per register / (λ² I)`` compares sketches at equal memory: the
relative variance of a sketch of ``M`` bits is at least ``MVP / M``.
"""

from __future__ import annotations

import math

import numpy as np

BITMAP_RANKS = 32  # ranks 0..31 of an HLLSet word, the last capped (see hllset)
BITMAP_LIMIT = math.pi**2 / (6 * math.log(2))  # asymptotic λ² I of a bitmap register


def bitmap_rank_probabilities(ranks: int = BITMAP_RANKS) -> np.ndarray:
    """[ranks] p_j = 2^-(j+1) for j < ranks - 1 and the capped last rank 2^-(ranks-1)."""
    p = 0.5 ** (np.arange(ranks, dtype=np.float64) + 1)
    p[-1] = 0.5 ** (ranks - 1)
    return p


def bitmap_register_information(load: float, ranks: int = BITMAP_RANKS) -> float:
    """λ² I(λ) of one bitmap register at ``load`` = λ keys per register."""
    x = load * bitmap_rank_probabilities(ranks)
    return float(np.sum(x * x * np.exp(-x) / -np.expm1(-x)))  # = x² / (e^x - 1), no overflow


def max_register_information(load: float, max_rank: int = 64) -> float:
    """λ² I(λ) of one HyperLogLog register (the largest rank, ranks 1..max_rank, 2^-k each)."""
    k = np.arange(0, max_rank + 1, dtype=np.float64)
    cdf = np.exp(-load * 0.5**k)  # P(max <= k); P(max <= 0) = P(empty) = exp(-λ)
    dcdf = -(0.5**k) * cdf  # d/dλ
    pmf = np.diff(cdf, prepend=0.0)
    dpmf = np.diff(dcdf, prepend=0.0)
    keep = pmf > 0
    return float(load * load * np.sum(dpmf[keep] ** 2 / pmf[keep]))


def mean_information(info, load: float = 1e4, steps: int = 64) -> float:
    """``info`` averaged over one octave of load above ``load`` (removes the log2 ripple)."""
    loads = load * 2.0 ** (np.arange(steps) / steps)
    return float(np.mean([info(x) for x in loads]))


def relative_standard_error(information: float, registers: int) -> float:
    """Cramér–Rao floor on the relative standard error of a cardinality from ``registers``."""
    return 1.0 / math.sqrt(registers * information)


def memory_variance_product(information: float, bits_per_register: int) -> float:
    """Bits of memory × relative variance: lower is better at equal memory."""
    return bits_per_register / information
