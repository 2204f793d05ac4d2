"""Real spherical harmonics on an equiangular grid: basis tables and fast transforms (pure).

Conventions
-----------
* Band limit ``L``: degrees ``0 <= l < L``; ``L*L`` real coefficients, flat index
  ``i = l*l + l + m`` for ``m = -l..l``.
* Real spherical harmonics, matching scipy's complex ``sph_harm_y(l, m, theta, phi)``
  (``theta`` = colatitude, Condon-Shortley phase included in scipy's ``Y_l^m``)::

      Y_{l,0}  = Y_l^0
      Y_{l,m}  = sqrt(2) (-1)^m Re Y_l^m  = sqrt(2) lam_lm(theta) cos(m phi)     (m > 0)
      Y_{l,-m} = sqrt(2) (-1)^m Im Y_l^m  = sqrt(2) lam_lm(theta) sin(m phi)     (m > 0)

  where ``lam_lm(theta) = sqrt((2l+1)/(4pi) (l-m)!/(l+m)!) P_lm(cos theta)`` is the orthonormal
  associated Legendre function *without* the Condon-Shortley phase (the ``(-1)^m`` above cancels
  scipy's).  ``lam_lm >= 0`` near the north pole for every m.
* Mapping to complex / healpy-style coefficients (both use the Condon-Shortley phase) of a real
  field ``f = sum c_{l,m} Y_{l,m} = sum a_lm Y_l^m``::

      a_l0 = c_{l,0};   a_lm = (-1)^m (c_{l,m} - i c_{l,-m}) / sqrt(2);   a_{l,-m} = (-1)^m conj(a_lm)
      c_{l,m} = sqrt(2) (-1)^m Re a_lm;   c_{l,-m} = -sqrt(2) (-1)^m Im a_lm          (m > 0)

  (``real_to_complex`` / ``complex_to_real`` implement it; healpy/ducc0 store only m >= 0.)

Grid and quadrature
-------------------
* ``theta_t = (2t+1) pi / (4L)``, ``t = 0..2L-1`` (Fejer's first rule nodes in ``cos theta``;
  no poles, symmetric about the equator: ``theta_{2L-1-t} = pi - theta_t``).
* ``phi_k = 2 pi k / n_phi`` with ``n_phi = 2L``: the smallest even count ``>= 2L-1``, which is
  what the analysis needs (the product of two band-limited rows has |m| <= 2L-2, so ``n_phi``
  samples integrate it exactly) and keeps ``rfft`` sizes FFT-friendly (powers of two for the
  cached keys).
* ``weights[t] = (2/L) sin(theta_t) sum_{k<L} sin((2k+1) theta_t)/(2k+1) * (2 pi / n_phi)``: the
  Fejer-1 / Driscoll-Healy weights, *including* the longitude factor ``2pi/n_phi``, so that
  ``sum_{t,k} weights[t] f(theta_t, phi_k)`` is the integral over the sphere (total 4 pi).  The
  theta rule integrates every polynomial in ``cos theta`` of degree <= 2L-1 exactly, hence
  ``analysis`` inverts ``synthesis`` exactly (up to rounding) for band-limited signals.

Legendre table (``ShBasis.legendre``)
--------------------------------------
Only the northern half grid ``t = 0..L-1`` is stored; the south follows from
``lam_lm(pi - theta) = (-1)^(l+m) lam_lm(theta)``.  Orders are grouped in blocks
``[m0, m1)`` (``m_blocks(L)``); block g holds an array of shape ``(m1-m0, 2, J, L)`` indexed
``[m - m0, p, j, t] = lam_{l,m}(theta_t)`` with ``l = m + p + 2j`` (``p`` = parity of ``l-m``),
``J = ceil((L - m0)/2)``, and zeros where ``l >= L``.  The blocks are flattened in C order and
concatenated along rows, giving ``legendre.shape == (n_rows, L)``.  ``legendre_row_lm(L)`` gives
``(l, m)`` for every row (-1 for padding).  The blocks make the transforms a handful of batched
matrix products per direction with ~1/G zero padding instead of a dense ``[m, l, t]`` cube (half
of it zeros); the parity split turns the full-grid sum into two half-length sums.

Recursion (``_legendre_by_step``): vectorised over theta and m, one step per ``k = l - m``::

    lam_mm     = sqrt(1/(4pi)) prod_{i<=m} sqrt((2i+1)/(2i)) sin^m theta
    lam_m+1,m  = sqrt(2m+3) cos theta lam_mm
    lam_lm     = a_lm (cos theta lam_l-1,m - lam_l-2,m / a_l-1,m),  a_lm = sqrt((4l^2-1)/(l^2-m^2))

``sin^m theta`` underflows float64 long before L=512 near the poles, so values are carried as
mantissa * 2**exponent: the start exponent is exact integer arithmetic from ``frexp(sin theta)``,
the mantissas are rescaled by 2**-256 whenever they grow past 2**256, and ``ldexp`` produces the
final value (an honest underflow to 0 only where the true value is below ~1e-308).  No factorials.

Accuracy near the poles: ``lam_l0`` has slope ~ l^2 in ``cos theta``, so a recursion fed with a
rounded ``cos theta`` (scipy's, for one) is off by ~l^2 * 1e-16 there (~3e-11 at l=511 on the
first L=512 ring).  Here theta is folded onto the northern hemisphere (``(-1)^(l-m)`` for the
south) and ``cos theta * p`` is evaluated as ``p - (2 sin^2(theta/2)) p``, which keeps the error
at the ~l * 1e-16 level of the recurrence itself (checked against mpmath at L=512).

Point evaluation: ``evaluate(L, theta, phi)`` (numpy, float64) and ``evaluate_jax`` (same
recursion under ``lax.scan``; traceable, L static) return real ``Y_lm`` as ``[N, L*L]`` for any
L <= MAX_L.  ``grid_cell`` maps points to their nearest grid node for histogramming (numpy or
JAX inputs); ``basis_diagnostics`` gives the Gram / addition-theorem / NaN / zero-column health
used by the tests and the ``sh_basis`` asset check.

Transforms (JAX)
----------------
``synthesis`` / ``analysis`` run jit-compiled on an ``ShtPlan``: the basis' tables as device
arrays (a pytree; ``L`` and the block shapes are static).  Pass an ``ShBasis`` for convenience
(its plan is built once and cached per basis object and dtype), or inside your own jitted code
pass the plan as an *argument*::

    plan = sht_plan(build_basis(64))            # device arrays, built once
    @jax.jit
    def step(plan, coeffs):                     # plan is a pytree: traced, not a constant
        return analysis(plan, synthesis(plan, coeffs) ** 2)
    step(plan, coeffs)

(closing over the plan, or calling with an ``ShBasis`` inside a jitted function, also works,
but then the tables become compile-time constants.)  ``sht_plan(basis, device=...)`` places the
tables on the device chosen by the JAX resource.
float64 needs ``jax.config.update("jax_enable_x64", True)`` (the JAX resource does that); the
library never flips global config: asking for float64 with x64 off raises ``RuntimeError``.
``sht_plan(basis, dtype=jnp.float32)`` gives a float32 plan that works without x64.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "sphere.sh_basis.v1"
MAX_L = 1024  # sin^m start mantissas stay normal float64 for m < 1024 (0.5**1023 > 1e-308)
_RESCALE_BITS = 256
_RESCALE_LIMIT = 2.0**_RESCALE_BITS
_N_BLOCKS = 8


# ---------------------------------------------------------------------------------------------
# grid and quadrature


def grid_theta(L: int) -> np.ndarray:
    """Colatitudes theta_t = (2t+1) pi / (4L), t = 0..2L-1."""
    return (2 * np.arange(2 * L) + 1) * np.pi / (4 * L)


def n_phi_for(L: int) -> int:
    """Longitude count: 2L (>= 2L-1 needed for exact analysis; even for rfft)."""
    return 2 * L


def grid_phi(L: int) -> np.ndarray:
    n_phi = n_phi_for(L)
    return 2 * np.pi * np.arange(n_phi) / n_phi


def quadrature_weights(L: int) -> np.ndarray:
    """Fejer-1 weights in theta times 2pi/n_phi (sum = 4pi); exact for cos-polynomials <= 2L-1."""
    theta = grid_theta(L)
    odd = 2 * np.arange(L) + 1
    series = np.sin(np.outer(theta, odd)) @ (1.0 / odd)
    return (2.0 / L) * np.sin(theta) * series * (2 * np.pi / n_phi_for(L))


# ---------------------------------------------------------------------------------------------
# stable associated Legendre recursion


def _start_mantissa_exponent(L: int, sin_theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lam_mm(theta) for m < L as (mantissa [L, N] in [0.5, 1), int exponent [L, N])."""
    m = np.arange(L)
    const = _start_constants(L)
    s_mant, s_exp = np.frexp(sin_theta)  # sin = s_mant * 2**s_exp, s_mant in [0.5, 1)
    mant = const[:, None] * s_mant[None, :] ** m[:, None]  # >= 0.5**m: normal while m < 1024
    mant, exp2 = np.frexp(mant)
    exponent = exp2.astype(np.int64) + m[:, None] * s_exp[None, :].astype(np.int64)
    pole = (sin_theta == 0)[None, :] & (m[:, None] > 0)  # sin^m = 0 exactly
    return np.where(pole, 0.0, mant), np.where(pole, 0, exponent)


def _reflect(theta: np.ndarray):
    """Fold colatitudes onto the northern hemisphere: (sin, cos, 1 - cos, south mask).

    ``1 - cos = 2 sin^2(theta/2)`` is formed without cancellation: near the poles lam_l0 has
    slope ~ l^2 in cos(theta), so the recursion must never see a rounded cos(theta) there.
    """
    theta = np.clip(theta, 0.0, np.pi)
    south = theta > np.pi / 2
    folded = np.where(south, np.pi - theta, theta)
    return np.sin(folded), np.cos(folded), 2 * np.sin(folded / 2) ** 2, south


def _legendre_by_step(L: int, theta: np.ndarray):
    """Yield (k, lam) for k = l - m = 0..L-1, lam[m, n] = lam_{m+k, m}(theta_n) for m < L-k."""
    if not 1 <= L <= MAX_L:
        raise ValueError(f"band limit L={L} outside 1..{MAX_L}")
    sin_t, cos_t, one_minus_cos, south = _reflect(np.asarray(theta, dtype=np.float64))
    x, u = cos_t[None, :], one_minus_cos[None, :]
    flip = np.where(south, -1.0, 1.0)[None, :]  # lam(pi - theta) = (-1)^k lam(theta)
    p_prev, exponent = _start_mantissa_exponent(L, sin_t)  # k = 0
    yield 0, np.ldexp(p_prev, exponent)
    if L == 1:
        return
    m = np.arange(L, dtype=np.float64)[:, None]
    p_cur = np.sqrt(2 * m[: L - 1] + 3) * x * p_prev[: L - 1]  # k = 1
    p_prev, exponent = p_prev[: L - 1], exponent[: L - 1]
    yield 1, flip * np.ldexp(p_cur, exponent)
    for k in range(2, L):
        n = L - k
        mm = m[:n]
        ll = mm + k
        a = np.sqrt((4 * ll * ll - 1) / (k * (2 * mm + k)))
        b_inv = np.sqrt(((k - 1) * (2 * mm + k - 1)) / (4 * (ll - 1) ** 2 - 1))
        # x p_cur written as p_cur - u p_cur: exact to rounding of p, not of cos(theta)
        p_new = a * ((p_cur[:n] - b_inv * p_prev[:n]) - u * p_cur[:n])
        p_prev, exponent = p_cur[:n], exponent[:n]
        big = np.abs(p_new) > _RESCALE_LIMIT
        if big.any():  # keep mantissas finite; the exponent carries the scale exactly
            p_new = np.where(big, np.ldexp(p_new, -_RESCALE_BITS), p_new)
            p_prev = np.where(big, np.ldexp(p_prev, -_RESCALE_BITS), p_prev)
            exponent = exponent + np.where(big, _RESCALE_BITS, 0)
        p_cur = p_new
        value = np.ldexp(p_cur, exponent)
        yield k, (flip * value if k % 2 else value)


# ---------------------------------------------------------------------------------------------
# table layout


def m_blocks(L: int, n_blocks: int = _N_BLOCKS) -> tuple[tuple[int, int, int], ...]:
    """Order blocks (m0, m1, J): block rows hold l = m + p + 2j, j < J = ceil((L - m0)/2)."""
    width = max(1, -(-L // n_blocks))
    return tuple((m0, min(m0 + width, L), (L - m0 + 1) // 2) for m0 in range(0, L, width))


def _block_row_lm(L: int, blocks) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block: l and m arrays of shape (S, 2, J); l = -1 where padded (l >= L)."""
    out = []
    for m0, m1, J in blocks:
        mm, p, j = np.meshgrid(np.arange(m0, m1), np.arange(2), np.arange(J), indexing="ij")
        ll = mm + p + 2 * j
        pad = ll >= L
        out.append((np.where(pad, -1, ll), np.where(pad, -1, mm)))
    return out


def legendre_row_lm(L: int) -> tuple[np.ndarray, np.ndarray]:
    """(l, m) of every row of ``ShBasis.legendre``; -1 marks zero padding rows."""
    parts = _block_row_lm(L, m_blocks(L))
    return (
        np.concatenate([lr.reshape(-1) for lr, _ in parts]),
        np.concatenate([mr.reshape(-1) for _, mr in parts]),
    )


def _legendre_table(L: int, theta_half: np.ndarray) -> np.ndarray:
    """Rows in the block layout (see module docstring), columns = north half-grid points."""
    row_l, row_m = legendre_row_lm(L)
    n_rows = row_l.size
    # row of (m, k=l-m) in the table, for scatter during the recursion
    row_of = np.full((L, L), -1, dtype=np.int64)
    valid = row_l >= 0
    row_of[row_m[valid], row_l[valid] - row_m[valid]] = np.nonzero(valid)[0]
    table = np.zeros((n_rows, theta_half.size))
    for k, lam in _legendre_by_step(L, theta_half):
        table[row_of[: L - k, k]] = lam
    return table


# ---------------------------------------------------------------------------------------------
# basis


@dataclass(frozen=True, eq=False)
class ShBasis:
    """Precomputed equiangular grid, quadrature and Legendre table for band limit L (immutable).

    ``weights`` include the 2pi/n_phi longitude factor (sum = 4pi).  ``legendre`` is float64,
    shape (n_rows, L) over the northern half grid; layout in the module docstring.
    Compared by identity (``eq=False``) so it can key caches.
    """

    L: int
    theta: np.ndarray
    phi: np.ndarray
    weights: np.ndarray
    legendre: np.ndarray

    @property
    def n_theta(self) -> int:
        return self.theta.size

    @property
    def n_phi(self) -> int:
        return self.phi.size


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def build_basis(L: int) -> ShBasis:
    """Grid, quadrature weights and the half-grid Legendre table for degrees l < L."""
    L = int(L)
    if not 1 <= L <= MAX_L:
        raise ValueError(f"sh_basis: band limit L={L} outside 1..{MAX_L}")
    theta = grid_theta(L)
    return ShBasis(
        L=L,
        theta=_readonly(theta),
        phi=_readonly(grid_phi(L)),
        weights=_readonly(quadrature_weights(L)),
        legendre=_readonly(_legendre_table(L, theta[:L])),
    )


def basis_metadata(b: ShBasis) -> dict[str, str]:
    """String metadata stored beside the tensors (safetensors header)."""
    return {
        "format": FORMAT,
        "L": str(b.L),
        "n_theta": str(b.n_theta),
        "n_phi": str(b.n_phi),
        "grid": "equiangular theta_t=(2t+1)pi/(4L) t<2L (Fejer-1, no poles); phi_k=2pi k/n_phi",
        "weights": "Fejer-1 theta weights x 2pi/n_phi (sum 4pi); exact for cos-poly deg<=2L-1",
        "normalization": "orthonormal on the unit sphere (integral Y^2 = 1)",
        "condon_shortley": "not in table; real Y_lm = sqrt2 (-1)^m Re/Im scipy sph_harm_y",
        "real_index": "l*l + l + m, m=-l..l; m>0 cos(m phi), m<0 sin(|m| phi)",
        "layout": (
            "legendre[row, t], t<L north half (south: (-1)^(l+m)); rows = blocks m0:m1:J in "
            "order, each C-order (m-m0, p, j) with l=m+p+2j, zero where l>=L"
        ),
        "m_blocks": basis_metadata_blocks(b.L),
        "dtype": "float64",
    }


def basis_tensors(b: ShBasis) -> dict[str, np.ndarray]:
    """Arrays for safetensors (contiguous float64)."""
    return {
        "theta": np.ascontiguousarray(b.theta, dtype=np.float64),
        "phi": np.ascontiguousarray(b.phi, dtype=np.float64),
        "weights": np.ascontiguousarray(b.weights, dtype=np.float64),
        "legendre": np.ascontiguousarray(b.legendre, dtype=np.float64),
    }


def basis_from_tensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> ShBasis:
    """Rebuild an ShBasis from safetensors content, validating format, shapes and dtype."""
    if metadata.get("format") != FORMAT:
        raise ValueError(f"sh_basis: metadata format {metadata.get('format')!r} != {FORMAT!r}")
    L = int(metadata["L"])
    n_rows = legendre_row_lm(L)[0].size
    expected = {
        "theta": (2 * L,),
        "phi": (n_phi_for(L),),
        "weights": (2 * L,),
        "legendre": (n_rows, L),
    }
    arrays = {}
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"sh_basis L={L}: missing tensor {name!r}")
        a = np.asarray(tensors[name])
        if a.dtype != np.float64 or a.shape != shape:
            raise ValueError(
                f"sh_basis L={L}: tensor {name!r} has {a.dtype}{a.shape}, expected float64{shape}"
            )
        arrays[name] = _readonly(a)
    if metadata.get("m_blocks") != basis_metadata_blocks(L):
        raise ValueError(f"sh_basis L={L}: m_blocks {metadata.get('m_blocks')!r} do not match")
    return ShBasis(L=L, **arrays)


def basis_metadata_blocks(L: int) -> str:
    return ",".join(f"{m0}:{m1}:{J}" for m0, m1, J in m_blocks(L))


# ---------------------------------------------------------------------------------------------
# real <-> complex coefficients


def real_index(l, m):
    """Flat index of real Y_{l,m}."""
    return l * l + l + m


def real_to_complex(coeffs: np.ndarray, L: int) -> np.ndarray:
    """Real c[..., L*L] -> complex a[..., L, L] indexed [l, m >= 0] (healpy/scipy convention)."""
    coeffs = np.asarray(coeffs)
    ll, mm = np.tril_indices(L)  # m <= l
    a = np.zeros(coeffs.shape[:-1] + (L, L), dtype=np.complex128)
    cp = coeffs[..., real_index(ll, mm)]
    cm = coeffs[..., real_index(ll, -mm)]
    sign = np.where(mm % 2 == 0, 1.0, -1.0)
    val = np.where(mm == 0, cp, sign * (cp - 1j * cm) / math.sqrt(2))
    a[..., ll, mm] = val
    return a


def complex_to_real(alm: np.ndarray, L: int) -> np.ndarray:
    """Inverse of real_to_complex for a real field: a[..., l, m >= 0] -> c[..., L*L]."""
    alm = np.asarray(alm)
    ll, mm = np.tril_indices(L)
    a = alm[..., ll, mm]
    sign = np.where(mm % 2 == 0, 1.0, -1.0)
    c = np.zeros(alm.shape[:-2] + (L * L,))
    c[..., real_index(ll, mm)] = np.where(mm == 0, a.real, math.sqrt(2) * sign * a.real)
    pos = mm > 0
    c[..., real_index(ll[pos], -mm[pos])] = -math.sqrt(2) * sign[pos] * a[..., pos].imag
    return c


# ---------------------------------------------------------------------------------------------
# point evaluation and grid cells


def evaluate(L: int, theta, phi) -> np.ndarray:
    """Real Y_{l,m}(theta_n, phi_n) as [N, L*L] float64 (numpy), stable for L up to MAX_L."""
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    if theta.shape != phi.shape:
        raise ValueError(f"evaluate: theta {theta.shape} and phi {phi.shape} differ")
    m = np.arange(L)
    cos_m = math.sqrt(2) * np.cos(np.outer(m, phi))  # [m, N]
    sin_m = math.sqrt(2) * np.sin(np.outer(m, phi))
    cos_m[0] = 1.0
    out = np.empty((theta.size, L * L))
    for k, lam in _legendre_by_step(L, theta):
        mk = m[: L - k]
        l = mk + k
        out[:, real_index(l, mk)] = (lam * cos_m[: L - k]).T
        out[:, real_index(l[1:], -mk[1:])] = (lam[1:] * sin_m[1 : L - k]).T
    return out


def grid_cell(b: ShBasis, theta, phi):
    """Nearest grid node (it, ip) of points: theta cells [t, t+1) pi/(2L), phi cells centred on phi_k.

    Works on numpy arrays (returns numpy int64) and on JAX arrays / tracers (returns jnp int32).
    """
    xp = jnp if isinstance(theta, jax.Array) or isinstance(phi, jax.Array) else np
    n_theta, n_phi = b.n_theta, b.n_phi
    it = xp.clip(xp.floor(xp.asarray(theta) * (n_theta / np.pi)), 0, n_theta - 1).astype(int)
    ip = xp.floor(xp.asarray(phi) * (n_phi / (2 * np.pi)) + 0.5).astype(int) % n_phi
    return it, ip


# ---------------------------------------------------------------------------------------------
# JAX transforms


@jax.tree_util.register_pytree_node_class
class ShtPlan:
    """Device-side tables for synthesis/analysis; a pytree (L and block shapes are static)."""

    def __init__(self, L, blocks, tables, weights_half, gather, scatter):
        self.L = L
        self.blocks = blocks
        self.tables = tables  # tuple of (S, 2, J, L) arrays
        self.weights_half = weights_half  # (L,) north weights (= south, mirrored)
        self.gather = gather  # flat coeff index (L*L = zero slot) for every block slot * (cos, sin)
        self.scatter = scatter  # (L*L,) position of each real coeff in the flat block output

    @property
    def dtype(self):
        return self.tables[0].dtype

    def tree_flatten(self):
        return (self.tables, self.weights_half, self.gather, self.scatter), (self.L, self.blocks)

    @classmethod
    def tree_unflatten(cls, aux, children):
        L, blocks = aux
        tables, weights_half, gather, scatter = children
        return cls(L, blocks, tables, weights_half, gather, scatter)


def _check_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype == np.float64 and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
        raise RuntimeError(
            "sht: float64 transforms need JAX x64; call jax.config.update('jax_enable_x64', True)"
            " (the JAX device resource does this) or ask for dtype=float32"
        )
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"sht: dtype must be float32 or float64, got {dtype}")
    return dtype


def _plan_indices(L: int, blocks) -> tuple[np.ndarray, np.ndarray]:
    parts = _block_row_lm(L, blocks)
    row_l = np.concatenate([lr.reshape(-1) for lr, _ in parts])
    row_m = np.concatenate([mr.reshape(-1) for _, mr in parts])
    pad = row_l < 0
    cos_idx = np.where(pad, L * L, real_index(row_l, row_m))
    sin_idx = np.where(pad | (row_m == 0), L * L, real_index(row_l, -row_m))
    gather = np.stack([cos_idx, sin_idx], axis=-1).reshape(-1)  # slot-major, (cos, sin) minor
    scatter = np.empty(L * L, dtype=np.int64)
    slots = np.arange(gather.size)
    real = gather < L * L
    scatter[gather[real]] = slots[real]
    return gather.astype(np.int32), scatter.astype(np.int32)


def sht_plan(b: ShBasis, dtype=np.float64, device=None) -> ShtPlan:
    """Put the basis tables on a device (default: JAX default device) as an ShtPlan pytree."""
    dtype = _check_dtype(dtype)
    L = b.L
    blocks = m_blocks(L)
    tables, row = [], 0
    for m0, m1, J in blocks:
        n = (m1 - m0) * 2 * J
        block = b.legendre[row : row + n].reshape(m1 - m0, 2, J, L).astype(dtype)
        tables.append(jax.device_put(block, device))
        row += n
    gather, scatter = _plan_indices(L, blocks)
    return ShtPlan(
        L,
        blocks,
        tuple(tables),
        jax.device_put(b.weights[:L].astype(dtype), device),
        jax.device_put(gather, device),
        jax.device_put(scatter, device),
    )


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _as_plan(b, dtype=np.float64) -> ShtPlan:
    if isinstance(b, ShtPlan):
        return b
    if not isinstance(b, ShBasis):
        raise TypeError(f"sht: expected ShBasis or ShtPlan, got {type(b).__name__}")
    dtype = _check_dtype(dtype)
    per_basis = _PLANS.setdefault(b, {})
    if dtype not in per_basis:
        per_basis[dtype] = sht_plan(b, dtype)
    return per_basis[dtype]


def _m_scale(L: int, dtype) -> jnp.ndarray:
    """sqrt(2) for m > 0 (real harmonics), 1 for m = 0."""
    return jnp.where(jnp.arange(L) == 0, 1.0, math.sqrt(2)).astype(dtype)


@jax.jit
def _synthesis(plan: ShtPlan, coeffs: jax.Array) -> jax.Array:
    L, dtype = plan.L, plan.dtype
    n_theta, n_phi = 2 * L, n_phi_for(L)
    batch = coeffs.shape[:-1]
    c = coeffs.reshape(-1, L * L).astype(dtype)
    B = c.shape[0]
    c = jnp.concatenate([c, jnp.zeros((B, 1), dtype)], axis=1)
    slots = jnp.take(c, plan.gather, axis=1)  # [B, slots*2]
    outs, off = [], 0
    for (m0, m1, J), table in zip(plan.blocks, plan.tables, strict=True):
        size = (m1 - m0) * 2 * J * 2
        cb = slots[:, off : off + size].reshape(B, m1 - m0, 2, J, 2)
        outs.append(jnp.einsum("mpjt,bmpjc->bmptc", table, cb))
        off += size
    o = jnp.concatenate(outs, axis=1)  # [B, m, parity, t_north, (cos, sin)]
    even, odd = o[:, :, 0], o[:, :, 1]
    g = jnp.concatenate([even + odd, (even - odd)[:, :, ::-1]], axis=2)  # [B, m, theta, c]
    # f = sum_m sqrt2 (G_c cos + G_s sin) = Re sum_m sqrt2 (G_c - i G_s) e^{i m phi}; irfft
    # computes (1/n)(X_0 + 2 Re sum_{0<m<n/2} X_m e^{...}), hence X_m = n/2 * sqrt2 (G_c - i G_s)
    scale = _m_scale(L, dtype) * jnp.where(jnp.arange(L) == 0, n_phi, n_phi / 2).astype(dtype)
    spec = (g[..., 0] - 1j * g[..., 1]) * scale[None, :, None]
    spec = jnp.swapaxes(spec, 1, 2)  # [B, theta, m]
    spec = jnp.pad(spec, ((0, 0), (0, 0), (0, n_phi // 2 + 1 - L)))
    grid = jnp.fft.irfft(spec, n=n_phi, axis=-1)
    return grid.reshape(batch + (n_theta, n_phi))


@jax.jit
def _analysis(plan: ShtPlan, grid: jax.Array) -> jax.Array:
    L, dtype = plan.L, plan.dtype
    n_theta, n_phi = 2 * L, n_phi_for(L)
    batch = grid.shape[:-2]
    f = grid.reshape((-1, n_theta, n_phi)).astype(dtype)
    B = f.shape[0]
    spec = jnp.fft.rfft(f, axis=-1)[:, :, :L]  # [B, theta, m]: sum_k f e^{-i m phi_k}
    north, south = spec[:, :L], spec[:, L:][:, ::-1]
    w = plan.weights_half[None, None, :, None]
    x = jnp.stack([north + south, north - south], axis=1) * w  # [B, parity, t, m]
    # c_{l,m} = sum w lam sqrt2 Re R_m, c_{l,-m} = sum w lam sqrt2 (-Im R_m)
    scale = _m_scale(L, dtype)
    x = jnp.stack([x.real, -x.imag], axis=-1) * scale[None, None, None, :, None]
    x = jnp.transpose(x, (0, 3, 1, 2, 4))  # [B, m, parity, t, c]
    outs = []
    for (m0, m1, _J), table in zip(plan.blocks, plan.tables, strict=True):
        ob = jnp.einsum("mpjt,bmptc->bmpjc", table, x[:, m0:m1])
        outs.append(ob.reshape(B, -1))
    flat = jnp.concatenate(outs, axis=1)
    coeffs = jnp.take(flat, plan.scatter, axis=1)
    return coeffs.reshape(batch + (L * L,))


def synthesis(b: ShBasis | ShtPlan, coeffs) -> jax.Array:
    """Real SH coefficients [..., L*L] -> grid values [..., 2L, n_phi] (JAX, jit-compiled)."""
    plan = _as_plan(b)
    if coeffs.shape[-1] != plan.L * plan.L:
        raise ValueError(f"synthesis: coeffs last dim {coeffs.shape[-1]} != L*L={plan.L**2}")
    return _synthesis(plan, jnp.asarray(coeffs))


def analysis(b: ShBasis | ShtPlan, grid) -> jax.Array:
    """Grid values [..., 2L, n_phi] -> real SH coefficients [..., L*L]; exact inverse of
    synthesis for band-limited signals (quadrature with the cached weights)."""
    plan = _as_plan(b)
    L = plan.L
    if tuple(grid.shape[-2:]) != (2 * L, n_phi_for(L)):
        raise ValueError(f"analysis: grid shape {grid.shape} does not end in {(2 * L, 2 * L)}")
    return _analysis(plan, jnp.asarray(grid))


def _start_constants(L: int) -> np.ndarray:
    """prod_{i<=m} sqrt((2i+1)/(2i)) / sqrt(4 pi) for m < L: a running product, no factorials."""
    m = np.arange(L)
    ratio = np.sqrt((2 * m[1:] + 1) / (2 * m[1:]))
    return np.concatenate([[1.0], np.cumprod(ratio)]) / math.sqrt(4 * math.pi)


@partial(jax.jit, static_argnums=(0, 3))
def _evaluate_jax(L: int, theta: jax.Array, phi: jax.Array, dtype) -> jax.Array:
    f64 = dtype == np.float64
    bits = _RESCALE_BITS if f64 else 64  # float32 overflows at 2**128
    limit = 2.0**bits
    theta, phi = jnp.clip(theta.astype(dtype), 0.0, np.pi), phi.astype(dtype)
    south = theta > np.pi / 2
    folded = jnp.where(south, np.pi - theta, theta)  # see _reflect
    s, x = jnp.sin(folded), jnp.cos(folded)[None, :]
    u = (2 * jnp.sin(folded / 2) ** 2)[None, :]
    m_int = jnp.arange(L, dtype=jnp.int32)[:, None]
    m = m_int.astype(dtype)
    s_mant, s_exp = jnp.frexp(s)
    const = jnp.asarray(_start_constants(L), dtype)[:, None]
    if f64:  # 0.5**m stays a normal float64 for m < 1024; integer powers, not exp(m log)
        mant, e = jnp.frexp(const * jax.lax.pow(s_mant[None, :], m_int))
    else:  # float32 would underflow at m > 126: split m log2(s_mant) into int + fraction
        log2 = m * jnp.log2(jnp.where(s == 0, 1.0, s_mant))[None, :]  # poles: masked below
        whole = jnp.floor(log2)
        mant, e = jnp.frexp(const * jnp.exp2(log2 - whole))
        e = e + whole.astype(jnp.int32)
    e = e.astype(jnp.int32) + m_int * s_exp[None, :].astype(jnp.int32)
    pole = (s == 0)[None, :] & (m_int > 0)
    p0, e = jnp.where(pole, 0.0, mant).astype(dtype), jnp.where(pole, 0, e)
    p1 = jnp.sqrt(2 * m + 3) * x * p0

    def step(carry, k):
        p_prev, p_cur, e = carry
        kf = k.astype(dtype)
        ll = m + kf
        a = jnp.sqrt((4 * ll * ll - 1) / (kf * (2 * m + kf)))
        b_inv = jnp.sqrt(((kf - 1) * (2 * m + kf - 1)) / (4 * (ll - 1) ** 2 - 1))
        p_new = a * ((p_cur - b_inv * p_prev) - u * p_cur)
        big = jnp.abs(p_new) > limit
        p_new = jnp.where(big, jnp.ldexp(p_new, -bits), p_new)
        p_cur = jnp.where(big, jnp.ldexp(p_cur, -bits), p_cur)
        e = e + jnp.where(big, bits, 0)
        return (p_cur, p_new, e), jnp.ldexp(p_new, e)

    first = jnp.stack([jnp.ldexp(p0, e), jnp.ldexp(p1, e)])[: min(L, 2)]
    if L > 2:
        _, rest = jax.lax.scan(step, (p0, p1, e), jnp.arange(2, L, dtype=jnp.int32))
        first = jnp.concatenate([first, rest])  # [k, m, N]: lam_{m+k, m}
    ll, mm = _real_lm(L)
    am = np.abs(mm)
    odd = jnp.asarray((ll - am) % 2 == 1)[:, None]
    lam = first[ll - am, am]  # [L*L, N]
    lam = jnp.where(odd & south[None, :], -lam, lam)  # lam(pi - theta) = (-1)^(l-m) lam(theta)
    ang = jnp.asarray(am, dtype)[:, None] * phi[None, :]
    trig = jnp.where(
        (mm == 0)[:, None],
        1.0,
        math.sqrt(2) * jnp.where((mm > 0)[:, None], jnp.cos(ang), jnp.sin(ang)),
    )
    return (lam * trig).T


def _real_lm(L: int) -> tuple[np.ndarray, np.ndarray]:
    """(l, m) for every flat real index l*l + l + m."""
    ll = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
    return ll, np.arange(L * L) - ll * ll - ll


def evaluate_jax(L: int, theta, phi, dtype=np.float64) -> jax.Array:
    """JAX version of ``evaluate`` (jit-compiled per L and dtype; traceable inside your jit).

    float64 needs x64 (RuntimeError otherwise); float32 start values carry ~m*6e-8 relative
    error.
    """
    dtype = _check_dtype(dtype)
    theta = jnp.reshape(jnp.asarray(theta), (-1,))
    phi = jnp.reshape(jnp.asarray(phi), (-1,))
    if theta.shape != phi.shape:
        raise ValueError(f"evaluate_jax: theta {theta.shape} and phi {phi.shape} differ")
    if not 1 <= L <= MAX_L:
        raise ValueError(f"evaluate_jax: band limit L={L} outside 1..{MAX_L}")
    return _evaluate_jax(int(L), theta, phi, dtype)


# ---------------------------------------------------------------------------------------------
# diagnostics (used by tests and the sh_basis asset check)


def basis_diagnostics(b: ShBasis) -> dict[str, float | int]:
    """Health of a basis from its own tables.

    * ``max_gram_error``: max |G - I| of the Gram matrix sum_{grid} w Y Y^T.  Rows of different
      m or cos/sin are orthogonal exactly by the DFT (|m|+|m'| < n_phi) and rows of different
      parity of l-m by the mirror symmetry, so G is block diagonal with blocks
      ``G_m = 2 n_phi sum_{t<L} w_t lam_lm(theta_t) lam_l'm(theta_t)`` per parity: compared here.
    * ``max_addition_error``: max over l, t of |sum_m Y_lm^2 / ((2l+1)/4pi) - 1| (addition theorem,
      relative).
    * ``n_nonfinite``: NaN/inf entries in any array; ``n_zero_columns``: (l, m) rows of the
      table that are identically zero on the grid (the research code's underflow failure).
    """
    L = b.L
    row_l, row_m = legendre_row_lm(L)
    valid = row_l >= 0
    table = b.legendre
    n_nonfinite = int(
        sum(np.count_nonzero(~np.isfinite(a)) for a in (b.theta, b.phi, b.weights, table))
    )
    n_zero_columns = int(np.count_nonzero(np.all(table[valid] == 0.0, axis=1)))
    w = b.weights[:L]
    gram_err, row = 0.0, 0
    for m0, m1, J in m_blocks(L):
        n = (m1 - m0) * 2 * J
        blk = table[row : row + n].reshape(m1 - m0, 2, J, L)
        # plain einsum (no BLAS): OpenBLAS threads stall badly on a busy 2-core machine
        gram = 2 * b.n_phi * np.einsum("spjt,spkt->spjk", blk * w, blk)
        ok = (row_l[row : row + n] >= 0).reshape(m1 - m0, 2, J)
        target = np.eye(J) * ok[..., None]  # padding rows are zero rows
        gram_err = max(gram_err, float(np.max(np.abs(gram - target))))
        row += n
    order = np.argsort(row_l[valid], kind="stable")  # rows grouped by l, for reduceat
    rows_by_l = np.nonzero(valid)[0][order]
    weight = np.where(row_m[rows_by_l] == 0, 1.0, 2.0)[:, None]  # cos^2 + sin^2 for m > 0
    starts = np.searchsorted(row_l[rows_by_l], np.arange(L))
    per_l = np.add.reduceat(weight * table[rows_by_l] ** 2, starts, axis=0)
    expected = (2 * np.arange(L) + 1)[:, None] / (4 * np.pi)
    return {
        "max_gram_error": gram_err,
        "max_addition_error": float(np.max(np.abs(per_l / expected - 1.0))),
        "n_nonfinite": n_nonfinite,
        "n_zero_columns": n_zero_columns,
    }
