r"""SH-smoothed angular density of points per shell on the equiangular grid (pure JAX).

One field for both placement methods: the lateral search of ``waterfill`` and the density
repulsion of ``thrml_langevin``.

* Histogram of each shell's points on the grid of the cached SH basis (cell = nearest node,
  ``sht.grid_cell``), divided by the cell areas (quadrature weights).
* ``sht.analysis`` -> Gaussian low-pass ``g_l = exp(-(l / l_smooth)^2 / 2)`` -> ``sht.synthesis``.
* Relative density ``rho_s = 4 pi f_s / max(m_s, 1)`` (1 = uniform; m_s = points of shell s).

Off the grid the field is read by bilinear interpolation in (theta, phi); its tangential
gradient comes from grid differences (:func:`density_gradient`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from sphere_assets.lib.sphere import sht


@dataclass(frozen=True)
class GridShape:
    """The static part of an ShBasis that ``sht.grid_cell`` needs (hashable jit argument)."""

    n_theta: int
    n_phi: int


def lowpass_taper(L: int, l_smooth: float) -> np.ndarray:
    """g_l = exp(-(l / l_smooth)^2 / 2) per flat real coefficient l*l + l + m: float32 [L*L]."""
    degree = np.floor(np.sqrt(np.arange(L * L))).astype(np.float64)
    return np.exp(-0.5 * (degree / l_smooth) ** 2).astype(np.float32)


def unit_angles(unit):
    """(theta in [0, pi], phi in [0, 2 pi)) of unit vectors [..., 3] (JAX)."""
    theta = jnp.arccos(jnp.clip(unit[..., 2], -1.0, 1.0))
    phi = jnp.mod(jnp.arctan2(unit[..., 1], unit[..., 0]), 2 * jnp.pi)
    return theta, phi


def cell_index(grid: GridShape, theta, phi):
    """Flat grid cell it * n_phi + ip (nearest node) of angles: int32, same shape as theta."""
    it, ip = sht.grid_cell(grid, theta, phi)
    return (it * grid.n_phi + ip).astype(jnp.int32)


def shell_density(plan, grid: GridShape, shell, cell, weight, counts, taper, area, n_shells):
    """Relative SH-smoothed density per shell on the grid: [S, n_theta, n_phi] (1 = uniform).

    ``shell`` [N] (rows in a padding shell S are dropped), ``cell`` [N] flat cells,
    ``weight`` [N] the rows' histogram weights, ``counts`` [S] points per shell, ``taper``
    [L*L], ``area`` [n_theta] cell areas. Histogram / area -> analysis -> taper -> synthesis.
    """
    n_cells = grid.n_theta * grid.n_phi
    hist = jax.ops.segment_sum(
        weight, shell * n_cells + cell, num_segments=(n_shells + 1) * n_cells
    )
    hist = hist[: n_shells * n_cells].reshape(n_shells, grid.n_theta, grid.n_phi)
    coeffs = sht.analysis(plan, hist / area[None, :, None]) * taper[None, :]
    smooth = sht.synthesis(plan, coeffs).astype(jnp.float32)
    return smooth * (4 * jnp.pi / jnp.maximum(counts, 1.0))[:, None, None]


def _corners(grid: GridShape, theta, phi):
    """Bilinear corner offsets and weights of (theta, phi) on the grid."""
    n_t, n_p = grid.n_theta, grid.n_phi
    ft = theta * (n_t / jnp.pi) - 0.5  # node t sits at (t + 1/2) pi / n_theta
    t0 = jnp.clip(jnp.floor(ft), 0, n_t - 2).astype(jnp.int32)
    a = jnp.clip(ft - t0, 0.0, 1.0)
    fp = phi * (n_p / (2 * jnp.pi))
    p0f = jnp.floor(fp)
    b = fp - p0f
    p0 = p0f.astype(jnp.int32) % n_p
    p1 = (p0 + 1) % n_p
    offs = (t0 * n_p + p0, t0 * n_p + p1, (t0 + 1) * n_p + p0, (t0 + 1) * n_p + p1)
    weights = ((1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b)
    return offs, weights


def interpolate(field_, grid: GridShape, shell, theta, phi):
    """Bilinear interpolation of per-shell grid fields [S, T, P, ...] at (theta, phi)."""
    flat = field_.reshape((-1,) + field_.shape[3:])
    base = shell * (grid.n_theta * grid.n_phi)
    offs, weights = _corners(grid, theta, phi)
    out = 0.0
    for o, w in zip(offs, weights, strict=True):
        v = flat[base + o]
        out = out + (w[:, None] * v if v.ndim > 1 else w * v)
    return out


def with_gradient(field_, grid: GridShape):
    """Stack [S, T, P, 3]: the field, d/dtheta and (1/sin theta) d/dphi (grid differences)."""
    theta = (jnp.arange(grid.n_theta, dtype=jnp.float32) + 0.5) * (jnp.pi / grid.n_theta)
    d_t = jnp.pi / grid.n_theta
    d_p = 2 * jnp.pi / grid.n_phi
    f_t = jnp.gradient(field_, d_t, axis=1)  # one-sided at the first/last ring
    f_p = (jnp.roll(field_, -1, axis=2) - jnp.roll(field_, 1, axis=2)) / (2 * d_p)
    f_p = f_p / jnp.sin(theta)[None, :, None]
    return jnp.stack([field_, f_t, f_p], axis=-1)


def density_gradient(field_, grid: GridShape, shell, unit, theta, phi):
    """Tangential gradient (Cartesian) [N, 3] of the interpolated field at unit vectors."""
    vals = interpolate(with_gradient(field_, grid), grid, shell, theta, phi)  # [N, 3]
    z = jnp.clip(unit[:, 2], -1.0, 1.0)
    rho_xy = jnp.sqrt(jnp.maximum(unit[:, 0] ** 2 + unit[:, 1] ** 2, 1e-12))
    cp, sp = unit[:, 0] / rho_xy, unit[:, 1] / rho_xy
    e_theta = jnp.stack([z * cp, z * sp, -rho_xy], axis=1)
    e_phi = jnp.stack([-sp, cp, jnp.zeros_like(cp)], axis=1)
    return vals[:, 1:2] * e_theta + vals[:, 2:3] * e_phi
