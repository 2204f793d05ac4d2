"""Set algebra of two HLLSet layers: |A∖B|, |B∖A|, |A∩B|, Jaccard and BSS (τ, ρ), each with a
standard error.

Model (the bitmap analogue of Ertl 2017, "New cardinality estimation algorithms for
HyperLogLog sketches", section "joint estimation")
    Split the keys of two sets into ``a = |A∖B|``, ``b = |B∖A|`` and ``x = |A∩B|``.  A key
    lands in cell ``(reg, j)`` with probability ``q_j = p_j / m`` (``m = 2^P``, ``p_j`` the
    capped geometric run law of :func:`sphere_assets.lib.sketch.hllset.run_probabilities`).
    Poissonized, the numbers of A-only, B-only and shared keys in a cell are independent
    ``Poisson(a q_j)``, ``Poisson(b q_j)``, ``Poisson(x q_j)``, and cells are independent.  A
    cell's observation is the pair of bits (A's bit, B's bit); with ``s = e^{-a q}``,
    ``t = e^{-b q}``, ``u = e^{-x q}``::

        P00 = s t u          P10 = (1-s) t u          P01 = s (1-t) u
        P11 = 1 - s u - t u + s t u = (1-u) + u (1-s)(1-t)

    Unlike HyperLogLog, whose register keeps only the maximum run (Ertl's joint likelihood has
    to sum over which set produced the maximum), a bitmap register keeps every observed run, so
    each of the ``32 m`` cells is an independent four-way categorical observation.  The
    sufficient statistics are, per level j, the register counts ``C00_j, C10_j, C01_j, C11_j``
    of the four bit pairs (:func:`paired_level_counts`), and the log-likelihood is

        ℓ(a, b, x) = Σ_j  C00 log P00 + C10 log P10 + C01 log P01 + C11 log P11.

Joint maximum likelihood (:func:`joint_estimate`)
    ℓ is maximised over ``a, b, x ≥ 0`` by a projected Newton method (analytic gradient and
    Hessian, Levenberg damping when the Hessian is not negative definite, backtracking so that
    ℓ never decreases), started at the clipped inclusion–exclusion point.  A component is 0 at
    the optimum only when no register evidences it (``C10 = 0`` on every level for ``a`` — e.g.
    A ⊆ B, or identical sets; ``C11 = 0`` for ``x``).  The MLE uses the full four-way
    observation of every cell, where inclusion–exclusion combines three separately estimated
    marginals (A, B, A∪B) and ignores their correlation; that is why it is far less noisy at
    small overlaps.  Jaccard ``x / (a+b+x)``, ``τ`` and ``ρ`` are the MLE's functions of the
    estimates (invariance).

Standard errors
    From the expected Fisher information ``I(θ) = Σ_j m Σ_k ∇P_k ∇P_kᵀ / P_k`` evaluated at the
    estimate (each component raised to at least one key, so that a component estimated at 0
    gets the error of a single key instead of 0); ``Cov(θ̂) ≈ I⁻¹ - diag(θ)`` (the Poisson
    model's own variance of the set sizes removed, :func:`depoissonized`) and the delta method
    for ratios.  tests/lib/sketch/test_hll_estimators.py checks them against the spread of
    estimates over random pairs.

Inclusion–exclusion fallback (:func:`inclusion_exclusion`)
    ``x̂ = n̂_A + n̂_B - n̂_{A∪B}`` from three Poisson-ML cardinalities (the union is exact,
    ``sketch(A ∪ B) = sketch(A) | sketch(B)``), ``â = n̂_{A∪B} - n̂_B``, ``b̂ = n̂_{A∪B} - n̂_A``;
    unbiased to first order but noisy when x is small.  Its standard errors are those of a
    linear combination of the three marginal estimators: each is ``n_S + score_S / I_S`` to first
    order, with the score covariances computed cell by cell from the joint model.  The joint
    estimate falls back to it (``method = "inclusion-exclusion"``) if the Newton iteration does
    not converge.

AND-bitmap (:func:`and_bitmap`) is the old word-wise ``|A & B|`` / ``|A & ~B|`` estimate, kept
only as the benchmark's baseline: it counts a cell as shared whenever both sets set it, also
when different keys did, so it overestimates |A∩B| (+500% at Jaccard 0.05, BENCHMARKS.md).

BSS (as the research notes use it): ``τ(A, B) = |A∩B| / |B|`` — how
much of B is included in A — and ``ρ(A, B) = |A∖B| / |B|`` — how much of A lies outside B,
measured in units of B; NaN when B is empty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np

from sphere_assets.lib.sketch import hllset as hs

_jit = numba.njit(cache=True, nogil=True)

MAX_ITER = 200
TOL = 1e-10  # relative Newton step at which the iteration stops
SE_FLOOR_KEYS = 1.0  # standard errors are evaluated with every component at least this large


@dataclass(frozen=True)
class Estimate:
    """A value with its standard error."""

    value: float
    se: float

    def __format__(self, spec: str) -> str:
        return f"{format(self.value, spec)} ± {format(self.se, spec)}"


@dataclass(frozen=True)
class PairEstimate:
    """Estimates for one layer of two sketches A, B (see module docstring)."""

    a_only: Estimate  # |A∖B|
    b_only: Estimate  # |B∖A|
    both: Estimate  # |A∩B|
    union: Estimate  # |A∪B|
    card_a: Estimate  # |A|
    card_b: Estimate  # |B|
    jaccard: Estimate  # |A∩B| / |A∪B|
    tau: Estimate  # BSS τ(A, B) = |A∩B| / |B|
    rho: Estimate  # BSS ρ(A, B) = |A∖B| / |B|
    method: str  # "joint-ml", "inclusion-exclusion", "and-bitmap", "empty", "saturated"
    iterations: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Sufficient statistics
# ---------------------------------------------------------------------------------------------


@_jit
def _level_counts(wa, wb, out):
    """``out[j] = (#A bit j set, #B bit j set, #both set)`` over the registers.

    Byte histograms first (4 bytes per word, one increment each), then each byte value's bits:
    ~4x fewer operations than visiting the 32 bits of every word."""
    hist = np.zeros((3, 4, 256), dtype=np.int64)
    for r in range(wa.size):
        x = wa[r]
        y = wb[r]
        z = x & y
        for k in range(4):
            shift = np.uint32(8 * k)
            hist[0, k, (x >> shift) & np.uint32(255)] += 1
            hist[1, k, (y >> shift) & np.uint32(255)] += 1
            hist[2, k, (z >> shift) & np.uint32(255)] += 1
    for c in range(3):
        for k in range(4):
            for v in range(1, 256):
                n = hist[c, k, v]
                if n:
                    for bit in range(8):
                        if (v >> bit) & 1:
                            out[8 * k + bit, c] += n


def paired_level_counts(words_a: np.ndarray, words_b: np.ndarray) -> np.ndarray:
    """(32, 4) float64: per level j the register counts of the bit pairs 00, 10, 01, 11.

    ``words_a``, ``words_b``: one layer each, (2^P,) uint32."""
    wa = np.ascontiguousarray(words_a, dtype=np.uint32).reshape(-1)
    wb = np.ascontiguousarray(words_b, dtype=np.uint32).reshape(-1)
    if wa.shape != wb.shape:
        raise ValueError(f"layers differ in size: {wa.size} vs {wb.size} words")
    raw = np.zeros((hs.WORD_BITS, 3), dtype=np.int64)
    _level_counts(wa, wb, raw)
    na, nb, n11 = raw[:, 0], raw[:, 1], raw[:, 2]
    c11 = n11
    c10 = na - n11
    c01 = nb - n11
    c00 = wa.size - na - nb + n11
    return np.stack([c00, c10, c01, c11], axis=1).astype(np.float64)


def level_q(p: int) -> np.ndarray:
    """(32,) ``q_j = p_j / 2^P``: probability that a key lands in a given cell of level j."""
    return hs.run_probabilities() / float(1 << hs.check_p(p))


# ---------------------------------------------------------------------------------------------
# Likelihood
# ---------------------------------------------------------------------------------------------


@_jit
def _loglik(theta, counts, q):
    """ℓ(a, b, x); -inf where an observed cell has probability 0."""
    a, b, x = theta[0], theta[1], theta[2]
    total = 0.0
    for j in range(q.size):
        c00, c10, c01, c11 = counts[j, 0], counts[j, 1], counts[j, 2], counts[j, 3]
        qj = q[j]
        total -= qj * (a * (c00 + c01) + b * (c00 + c10) + x * (c00 + c10 + c01))
        es = -math.expm1(-a * qj)
        et = -math.expm1(-b * qj)
        u = math.exp(-x * qj)
        r = -math.expm1(-x * qj) + u * es * et
        if c10 > 0:
            total += c10 * math.log(es) if es > 0 else -math.inf
        if c01 > 0:
            total += c01 * math.log(et) if et > 0 else -math.inf
        if c11 > 0:
            total += c11 * math.log(r) if r > 0 else -math.inf
    return total


@_jit
def _grad_hess(theta, counts, q, g, h):
    """Gradient and Hessian of ℓ at ``theta`` (a, b, x), written into ``g`` (3,), ``h`` (3, 3)."""
    a, b, x = theta[0], theta[1], theta[2]
    g[:] = 0.0
    h[:, :] = 0.0
    for j in range(q.size):
        c00, c10, c01, c11 = counts[j, 0], counts[j, 1], counts[j, 2], counts[j, 3]
        qj = q[j]
        q2 = qj * qj
        s = math.exp(-a * qj)
        t = math.exp(-b * qj)
        u = math.exp(-x * qj)
        es = -math.expm1(-a * qj)
        et = -math.expm1(-b * qj)
        g[0] -= qj * (c00 + c01)
        g[1] -= qj * (c00 + c10)
        g[2] -= qj * (c00 + c10 + c01)
        if c10 > 0 and es > 0:
            g[0] += c10 * qj * s / es
            h[0, 0] -= c10 * q2 * s / (es * es)
        if c01 > 0 and et > 0:
            g[1] += c01 * qj * t / et
            h[1, 1] -= c01 * q2 * t / (et * et)
        r = -math.expm1(-x * qj) + u * es * et
        if c11 > 0 and r > 0:
            v = 1.0 - es * et  # s + t - s t
            ra = u * qj * s * et
            rb = u * qj * t * es
            rx = qj * u * v
            raa = -u * q2 * s * et
            rbb = -u * q2 * t * es
            rxx = -q2 * u * v
            rab = u * q2 * s * t
            rax = -q2 * u * s * et
            rbx = -q2 * u * t * es
            k = c11 / r
            k2 = c11 / (r * r)
            g[0] += k * ra
            g[1] += k * rb
            g[2] += k * rx
            h[0, 0] += k * raa - k2 * ra * ra
            h[1, 1] += k * rbb - k2 * rb * rb
            h[2, 2] += k * rxx - k2 * rx * rx
            h[0, 1] += k * rab - k2 * ra * rb
            h[0, 2] += k * rax - k2 * ra * rx
            h[1, 2] += k * rbx - k2 * rb * rx
    h[1, 0] = h[0, 1]
    h[2, 0] = h[0, 2]
    h[2, 1] = h[1, 2]


@_jit
def _newton(theta, counts, q, max_iter, tol):
    """Projected, damped Newton ascent of ℓ over θ ≥ 0 from ``theta`` (modified in place).
    Returns (iterations, converged)."""
    g = np.zeros(3)
    h = np.zeros((3, 3))
    cur = _loglik(theta, counts, q)
    lam = 0.0
    for it in range(1, max_iter + 1):
        _grad_hess(theta, counts, q, g, h)
        free = np.ones(3, dtype=np.bool_)
        for i in range(3):
            if theta[i] <= 0.0 and g[i] <= 0.0:
                free[i] = False  # active bound: ℓ decreases into the interior
        idx = np.flatnonzero(free)
        if idx.size == 0:
            return it, True
        neg = np.empty((idx.size, idx.size))
        rhs = np.empty(idx.size)
        for r in range(idx.size):
            rhs[r] = g[idx[r]]
            for c in range(idx.size):
                neg[r, c] = -h[idx[r], idx[c]]
        accepted = False
        for _ in range(60):
            m = neg.copy()
            for r in range(idx.size):
                m[r, r] += lam * max(abs(neg[r, r]), 1e-300)
            ok = True
            for r in range(idx.size):
                if not m[r, r] > 0:
                    ok = False
            step = np.zeros(idx.size)
            if ok:
                step = np.linalg.solve(m, rhs)
                ok = np.all(np.isfinite(step)) and np.dot(step, rhs) > 0
            if not ok:
                lam = max(1e-3, lam * 10.0)
                continue
            trial = theta.copy()
            for r in range(idx.size):
                trial[idx[r]] = max(theta[idx[r]] + step[r], 0.0)
            new = _loglik(trial, counts, q)
            if new >= cur:
                big = 0.0
                for i in range(3):
                    big = max(big, abs(trial[i] - theta[i]) / max(abs(trial[i]), 1.0))
                theta[:] = trial
                cur = new
                lam = lam * 0.1 if lam > 1e-6 else 0.0
                accepted = True
                if big <= tol:
                    return it, True
                break
            lam = max(1e-3, lam * 10.0)
        if not accepted:
            # no ascent direction improves ℓ within floating-point precision: at the optimum
            return it, True
    return max_iter, False


@_jit
def _fisher(theta, q, m):
    """Expected Fisher information (3, 3) of the four-way cell observations at ``theta``."""
    a, b, x = theta[0], theta[1], theta[2]
    info = np.zeros((3, 3))
    grads = np.zeros((4, 3))
    probs = np.zeros(4)
    for j in range(q.size):
        qj = q[j]
        s = math.exp(-a * qj)
        t = math.exp(-b * qj)
        u = math.exp(-x * qj)
        es = -math.expm1(-a * qj)
        et = -math.expm1(-b * qj)
        probs[0] = s * t * u
        probs[1] = es * t * u
        probs[2] = s * et * u
        probs[3] = -math.expm1(-x * qj) + u * es * et
        grads[0, 0] = grads[0, 1] = grads[0, 2] = -qj * probs[0]
        grads[1, 0], grads[1, 1], grads[1, 2] = qj * s * t * u, -qj * probs[1], -qj * probs[1]
        grads[2, 0], grads[2, 1], grads[2, 2] = -qj * probs[2], qj * s * t * u, -qj * probs[2]
        grads[3, 0] = u * qj * s * et
        grads[3, 1] = u * qj * t * es
        grads[3, 2] = qj * u * (1.0 - es * et)
        for k in range(4):
            if probs[k] > 0:
                for r in range(3):
                    for c in range(3):
                        info[r, c] += m * grads[k, r] * grads[k, c] / probs[k]
    return info


# ---------------------------------------------------------------------------------------------
# Estimates
# ---------------------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _derived(theta: np.ndarray, cov: np.ndarray, method: str, iterations: int) -> PairEstimate:
    """Every reported quantity of (a, b, x) with delta-method standard errors from ``cov``."""
    a, b, x = (float(v) for v in theta)

    def est(value: float, grad: tuple[float, float, float]) -> Estimate:
        gv = np.asarray(grad, dtype=np.float64)
        var = float(gv @ cov @ gv) if np.all(np.isfinite(gv)) else math.nan
        return Estimate(float(value), math.sqrt(max(var, 0.0)) if math.isfinite(var) else math.nan)

    u, nb = a + b + x, b + x
    jac = (-x / u**2, -x / u**2, (a + b) / u**2) if u > 0 else (math.nan,) * 3
    tau = (0.0, -x / nb**2, b / nb**2) if nb > 0 else (math.nan,) * 3
    rho = (1.0 / nb, -a / nb**2, -a / nb**2) if nb > 0 else (math.nan,) * 3
    return PairEstimate(
        a_only=est(a, (1, 0, 0)),
        b_only=est(b, (0, 1, 0)),
        both=est(x, (0, 0, 1)),
        union=est(u, (1, 1, 1)),
        card_a=est(a + x, (1, 0, 1)),
        card_b=est(nb, (0, 1, 1)),
        jaccard=est(_ratio(x, u), jac),
        tau=est(_ratio(x, nb), tau),
        rho=est(_ratio(a, nb), rho),
        method=method,
        iterations=iterations,
    )


def _special(counts: np.ndarray, m: int) -> str | None:
    """ "empty" when neither layer has a bit set, "saturated" when a layer is full."""
    if counts[:, 1:].sum() == 0:
        return "empty"
    set_a = counts[:, 1] + counts[:, 3]
    set_b = counts[:, 2] + counts[:, 3]
    if np.all(set_a >= m) or np.all(set_b >= m):
        return "saturated"
    return None


def _special_estimate(kind: str) -> PairEstimate:
    zero, nan = Estimate(0.0, 0.0), Estimate(math.nan, math.nan)
    if kind == "empty":
        return PairEstimate(zero, zero, zero, zero, zero, zero, nan, nan, nan, kind)
    inf = Estimate(math.inf, math.nan)
    return PairEstimate(inf, inf, inf, inf, inf, inf, nan, nan, nan, kind)


@_jit
def _poisson_ml(levels, q):
    """Root of Σ_j B_j q_j / (1 - e^{-n q_j}) = 1 (the Poisson-ML cardinality of
    :func:`sphere_assets.lib.sketch.hllset.cardinality_from_levels`, same Newton iteration)."""
    total = levels.sum()
    if total == 0:
        return 0.0
    n = max(total, 1.0)
    for _ in range(MAX_ITER):
        f = -1.0
        df = 0.0
        for j in range(q.size):
            if levels[j] > 0:
                nq = n * q[j]
                incl = -math.expm1(-nq)
                f += levels[j] * q[j] / incl
                df -= levels[j] * q[j] * q[j] * math.exp(-nq) / (incl * incl)
        step = -f / df
        n += step
        if abs(step) <= 1e-12 * max(n, 1.0):
            break
    return n


def _marginals(counts: np.ndarray, q: np.ndarray) -> tuple[float, float, float]:
    """Poisson-ML cardinalities (n_A, n_B, n_{A∪B}) from the paired level counts."""
    set_a = counts[:, 1] + counts[:, 3]
    set_b = counts[:, 2] + counts[:, 3]
    set_u = counts[:, 1] + counts[:, 2] + counts[:, 3]
    return _poisson_ml(set_a, q), _poisson_ml(set_b, q), _poisson_ml(set_u, q)


def _ie_covariance(q: np.ndarray, m: int, theta: np.ndarray) -> np.ndarray:
    """First-order covariance of the marginal MLEs (n̂_A, n̂_B, n̂_U) under the joint model at
    ``theta``: n̂_S ≈ n_S + score_S / I_S with score_S = Σ_c q (bit_S - π_S) / π_S, so
    Cov(n̂_S, n̂_T) = Σ_c q² (P(bit_S ∧ bit_T) - π_S π_T) / (π_S π_T) / (I_S I_T)."""
    a, b, x = (max(float(v), SE_FLOOR_KEYS) for v in theta)
    s, t, u = np.exp(-a * q), np.exp(-b * q), np.exp(-x * q)
    pi = [1 - s * u, 1 - t * u, 1 - s * t * u]  # P(bit set) for A, B, A∪B, per level
    p11 = -np.expm1(-x * q) + u * (1 - s) * (1 - t)
    # P(bit_S ∧ bit_T): A∧B = P11, A∧U = π_A, B∧U = π_B, S∧S = π_S
    joint = [[pi[0], p11, pi[0]], [p11, pi[1], pi[1]], [pi[0], pi[1], pi[2]]]
    info = np.array([m * np.sum(q * q * (1 - pi[i]) / pi[i]) for i in range(3)])
    score_cov = np.array(
        [
            [m * np.sum(q * q * (joint[i][k] - pi[i] * pi[k]) / (pi[i] * pi[k])) for k in range(3)]
            for i in range(3)
        ]
    )
    return score_cov / np.outer(info, info)


def inclusion_exclusion(words_a: np.ndarray, words_b: np.ndarray, p: int) -> PairEstimate:
    """The inclusion–exclusion estimate of one layer pair (module docstring), negative
    components clipped to 0 (the clipping is what makes it biased at tiny overlaps)."""
    counts = paired_level_counts(words_a, words_b)
    m = 1 << hs.check_p(p)
    kind = _special(counts, m)
    if kind is not None:
        return _special_estimate(kind)
    return _ie_from_counts(counts, p, level_q(p), m)


def _ie_from_counts(counts: np.ndarray, p: int, q: np.ndarray, m: int) -> PairEstimate:
    na, nb, nu = _marginals(counts, q)
    raw = np.array([nu - nb, nu - na, na + nb - nu])
    theta = np.maximum(raw, 0.0)
    # (a, b, x) = L (n_A, n_B, n_U)
    lin = np.array([[0.0, -1.0, 1.0], [-1.0, 0.0, 1.0], [1.0, 1.0, -1.0]])
    cov = depoissonized(lin @ _ie_covariance(q, m, theta) @ lin.T, theta)
    return _derived(theta, cov, "inclusion-exclusion", 0)


def joint_estimate(words_a: np.ndarray, words_b: np.ndarray, p: int) -> PairEstimate:
    """Joint maximum-likelihood estimate of one layer pair (module docstring)."""
    return joint_from_counts(paired_level_counts(words_a, words_b), p)


def joint_from_counts(counts: np.ndarray, p: int) -> PairEstimate:
    """:func:`joint_estimate` from the (32, 4) paired level counts."""
    m = 1 << hs.check_p(p)
    counts = np.ascontiguousarray(counts, dtype=np.float64)
    kind = _special(counts, m)
    if kind is not None:
        return _special_estimate(kind)
    q = level_q(p)
    na, nb, nu = _marginals(counts, q)
    has_a, has_b, has_x = (counts[:, k].sum() > 0 for k in (1, 2, 3))
    # start at clipped inclusion–exclusion; a component some register evidences starts > 0
    # (its likelihood is -inf at 0), one no register evidences starts at 0
    theta = np.array(
        [
            max(nu - nb, 1.0) if has_a else 0.0,
            max(nu - na, 1.0) if has_b else 0.0,
            max(na + nb - nu, 1.0) if has_x else 0.0,
        ]
    )
    iterations, converged = _newton(theta, counts, q, MAX_ITER, TOL)
    if not (converged and np.all(np.isfinite(theta))):
        return _ie_from_counts(counts, p, q, m)
    info = _fisher(np.maximum(theta, SE_FLOOR_KEYS), q, float(m))
    cov = depoissonized(np.linalg.inv(info), theta)
    return _derived(theta, cov, "joint-ml", iterations)


def depoissonized(cov: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Covariance for sets of fixed size from the Poisson-model one: the Poisson model also
    counts the variance ``n`` of the set sizes themselves, which fixed sets do not have
    (Var(θ̂ | θ) ≈ I⁻¹ - diag(θ)); eigenvalues clipped at 0.  Matters where the sketch is
    nearly exact (n ≲ a few m); measured in the tests' calibration check."""
    fixed = cov - np.diag(np.maximum(theta, 0.0))
    w, v = np.linalg.eigh((fixed + fixed.T) / 2)
    return (v * np.maximum(w, 0.0)) @ v.T


def and_bitmap(words_a: np.ndarray, words_b: np.ndarray, p: int) -> PairEstimate:
    """The word-wise baseline: ``|A∩B| ≈ card(A & B)``, ``|A∖B| ≈ card(A & ~B)``,
    ``|B∖A| ≈ card(B & ~A)`` (biased, see module docstring; no standard errors)."""
    wa = np.asarray(words_a, dtype=np.uint32)
    wb = np.asarray(words_b, dtype=np.uint32)
    a, b, x, ca, cb, u = hs.cardinality(np.stack([wa & ~wb, wb & ~wa, wa & wb, wa, wb, wa | wb]), p)
    nan = math.nan

    def e(v: float) -> Estimate:
        return Estimate(float(v), nan)

    return PairEstimate(
        a_only=e(a),
        b_only=e(b),
        both=e(x),
        union=e(u),
        card_a=e(ca),
        card_b=e(cb),
        jaccard=e(_ratio(x, u)),
        tau=e(_ratio(x, cb)),
        rho=e(_ratio(a, cb)),
        method="and-bitmap",
    )


ESTIMATORS = {"joint-ml": joint_estimate, "inclusion-exclusion": inclusion_exclusion}


def compare_layers(
    words_a: np.ndarray, words_b: np.ndarray, p: int, method: str = "joint-ml"
) -> list[PairEstimate]:
    """Estimates for every layer of two HLLSets' words (L, 2^P) — one :class:`PairEstimate`
    per layer; ``method`` "joint-ml" (default), "inclusion-exclusion" or "and-bitmap"."""
    fn = {**ESTIMATORS, "and-bitmap": and_bitmap}.get(method)
    if fn is None:
        raise ValueError(f"unknown estimator {method!r}: joint-ml, inclusion-exclusion, and-bitmap")
    wa, wb = np.asarray(words_a), np.asarray(words_b)
    if wa.shape != wb.shape:
        raise ValueError(f"HLLSet words differ in shape: {wa.shape} vs {wb.shape}")
    return [fn(wa[i], wb[i], p) for i in range(wa.shape[0])]
