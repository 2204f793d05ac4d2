"""SH density field on the grid: the smoothed histogram vs the addition theorem, bilinear
interpolation and the tangential gradient on a known field."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from scipy.special import eval_legendre

from sphere_assets.lib.sphere import density, sht
from sphere_assets.lib.sphere.features import angles_of


def test_shell_density_matches_legendre_kernel_sum():
    L, l_smooth = 8, 3.0
    basis = sht.build_basis(L)
    grid = density.GridShape(basis.n_theta, basis.n_phi)
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((40, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    theta, phi = angles_of(pts)
    it, ip = sht.grid_cell(basis, theta, phi)
    cell = (it * basis.n_phi + ip).astype(np.int32)
    shell = np.zeros(40, np.int32)
    shell[30:] = 1  # second shell: 10 points
    counts = np.array([30.0, 10.0], np.float32)
    rho = density.shell_density(
        sht.sht_plan(basis, dtype=np.float32),
        grid,
        jnp.asarray(shell),
        jnp.asarray(cell),
        jnp.ones(40, jnp.float32),
        jnp.asarray(counts),
        jnp.asarray(density.lowpass_taper(L, l_smooth)),
        jnp.asarray(basis.weights.astype(np.float32)),
        2,
    )
    rho = np.asarray(rho).reshape(2, basis.n_theta, basis.n_phi)
    # reference: rho_s(x) = 4pi/m_s sum_{i in s} sum_l g_l (2l+1)/(4pi) P_l(x . c_i)
    tt, pp = np.meshgrid(basis.theta, basis.phi, indexing="ij")
    nodes = np.stack([np.sin(tt) * np.cos(pp), np.sin(tt) * np.sin(pp), np.cos(tt)], -1)
    centres = nodes[it, ip]
    for s, rows in [(0, slice(0, 30)), (1, slice(30, 40))]:
        cos = np.clip(nodes.reshape(-1, 3) @ centres[rows].T, -1, 1)
        ref = sum(
            math.exp(-0.5 * (l / l_smooth) ** 2) * (2 * l + 1) / (4 * np.pi) * eval_legendre(l, cos)
            for l in range(L)
        ).sum(1) * (4 * np.pi / counts[s])
        np.testing.assert_allclose(rho[s].reshape(-1), ref, atol=2e-4 * np.abs(ref).max())


def test_interpolation_and_gradient_on_a_known_field():
    grid = density.GridShape(32, 32)
    theta_nodes = (np.arange(32) + 0.5) * np.pi / 32
    phi_nodes = 2 * np.pi * np.arange(32) / 32
    tt, pp = np.meshgrid(theta_nodes, phi_nodes, indexing="ij")
    # f = cos(theta) + 0.5 sin(theta) cos(phi) = z + x/2; grad_S f = P (x/2, 0, 1)
    f = (np.cos(tt) + 0.5 * np.sin(tt) * np.cos(pp)).astype(np.float32)[None]
    shell = jnp.zeros(3, jnp.int32)
    # at the grid nodes interpolation returns the node values
    th = jnp.asarray(theta_nodes[[3, 10, 20]], jnp.float32)
    ph = jnp.asarray(phi_nodes[[0, 7, 31]], jnp.float32)
    got = density.interpolate(jnp.asarray(f), grid, shell, th, ph)
    np.testing.assert_allclose(got, f[0, [3, 10, 20], [0, 7, 31]], atol=1e-6)
    rng = np.random.default_rng(0)
    n = rng.standard_normal((200, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    n = n[np.abs(n[:, 2]) < 0.95].astype(np.float32)  # away from the pole rings
    th, ph = density.unit_angles(jnp.asarray(n))
    s = jnp.zeros(len(n), jnp.int32)
    g = np.asarray(density.density_gradient(jnp.asarray(f), grid, s, jnp.asarray(n), th, ph))
    c = np.array([0.5, 0.0, 1.0])
    ref = c - (n @ c)[:, None] * n
    np.testing.assert_allclose(g, ref, atol=0.02)
    np.testing.assert_allclose(np.sum(g * n, axis=1), 0.0, atol=1e-5)  # tangential
