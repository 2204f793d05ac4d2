"""Spherical-harmonic basis and transforms vs independent references (scipy, mpmath, ducc0,
brute-force sums over the grid)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import eval_legendre, sph_harm_y, sph_harm_y_all

from sphere_assets.lib.sphere import sht

jax.config.update("jax_enable_x64", True)

RNG = np.random.default_rng(20240604)


def legendre_lm(L: int, theta) -> np.ndarray:
    """Dense lam[l, m, n] (zeros for m > l) at colatitudes theta; for checks and small L."""
    theta = np.asarray(theta, dtype=np.float64).reshape(-1)
    out = np.zeros((L, L, theta.size))
    m = np.arange(L)
    for k, lam in sht._legendre_by_step(L, theta):
        out[m[: L - k] + k, m[: L - k]] = lam
    return out


def scipy_real_sh(L: int, theta, phi) -> np.ndarray:
    """Real Y_lm [N, L*L] from scipy's complex harmonics with the documented combination."""
    z = sph_harm_y_all(L - 1, L - 1, theta, phi)  # [l, m (negative m wrap around), N]
    ll = np.repeat(np.arange(L), 2 * np.arange(L) + 1)
    mm = np.arange(L * L) - ll * ll - ll
    zp = z[ll, np.abs(mm)]
    sign = np.where(np.abs(mm) % 2 == 0, 1.0, -1.0)[:, None]
    pos = (mm > 0)[:, None]
    real = np.where(pos, math.sqrt(2) * sign * zp.real, math.sqrt(2) * sign * zp.imag)
    return np.where((mm == 0)[:, None], zp.real, real).T


def grid_points(b: sht.ShBasis):
    return np.repeat(b.theta, b.n_phi), np.tile(b.phi, b.n_theta)


@pytest.fixture(scope="module")
def basis32():
    return sht.build_basis(32)


# --- grid and quadrature ----------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 4, 16, 33])
def test_quadrature_integrates_legendre_polynomials_exactly_up_to_2L_minus_1(L):
    b = sht.build_basis(L)
    x = np.cos(b.theta)
    for n in range(2 * L):
        integral = b.n_phi * np.sum(b.weights * eval_legendre(n, x))  # over the sphere
        assert integral == pytest.approx(4 * np.pi if n == 0 else 0.0, abs=1e-13), n
    # and it is sharp: degree 2L (even) is no longer integrated exactly
    assert abs(b.n_phi * np.sum(b.weights * eval_legendre(2 * L, x))) > 1e-6


def test_weights_match_the_cosine_series_form_of_fejer_one():
    L = 24
    b = sht.build_basis(L)
    n = 2 * L
    j = np.arange(1, n // 2 + 1)
    fejer = (2 / n) * (1 - 2 * np.cos(2 * np.outer(b.theta, j)) @ (1 / (4 * j * j - 1)))
    np.testing.assert_allclose(b.weights, fejer * 2 * np.pi / b.n_phi, rtol=0, atol=1e-15)
    assert np.sum(b.weights) * b.n_phi == pytest.approx(4 * np.pi, abs=1e-13)
    np.testing.assert_allclose(b.theta, (2 * np.arange(n) + 1) * np.pi / (4 * L))
    np.testing.assert_allclose(b.theta[::-1], np.pi - b.theta, atol=1e-15)  # equatorial symmetry
    assert b.n_phi >= 2 * L - 1 and np.all(np.diff(b.phi) > 0) and b.phi[-1] < 2 * np.pi


# --- Legendre values and point evaluation ------------------------------------------------------


def test_evaluate_matches_scipy_pointwise_for_all_lm_up_to_64():
    L = 64
    theta = np.concatenate([RNG.uniform(0, np.pi, 40), [0.0, np.pi, 1e-3, np.pi - 1e-3, np.pi / 2]])
    phi = RNG.uniform(0, 2 * np.pi, theta.size)
    ours = sht.evaluate(L, theta, phi)
    ref = scipy_real_sh(L, theta, phi)
    assert ours.shape == (theta.size, L * L)
    assert np.max(np.abs(ours - ref)) <= 1e-12
    # a few straight sph_harm_y calls, so the vectorised reference is itself checked
    for l, m in [(0, 0), (1, -1), (5, 3), (40, -17), (63, 63), (63, -1)]:
        z = sph_harm_y(l, abs(m), theta, phi)
        part = z.real if m >= 0 else z.imag
        expect = part if m == 0 else math.sqrt(2) * (-1) ** m * part
        np.testing.assert_allclose(ours[:, l * l + l + m], expect, rtol=0, atol=1e-12)


def test_evaluate_spot_checks_against_scipy_up_to_L_512():
    L = 512
    theta = np.array([0.2, 0.7, 1.1, np.pi / 2, 2.0, 2.9])  # scipy loses digits nearer the poles
    phi = np.array([0.3, 1.7, 4.0, 2.2, 5.9, 0.01])
    ours = sht.evaluate(L, theta, phi)
    ref = scipy_real_sh(L, theta, phi)
    assert np.max(np.abs(ours - ref)) <= 1e-12
    assert np.all(np.isfinite(ours))


def test_legendre_near_the_poles_against_mpmath_at_L_512():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    L = 512
    theta0 = np.pi / (4 * L)  # first grid ring at L=512 (where cos-based recursions lose ~1e-11)
    cases = [
        (511, 0, theta0),
        (511, 0, np.pi - theta0),
        (511, 1, theta0),
        (300, 0, 0.01),
        (511, 7, 0.01),
        (200, 150, 1.2),
        (511, 480, 1.4),
    ]
    lam = legendre_lm(L, [th for _, _, th in cases])
    for n, (l, m, th) in enumerate(cases):
        x = mpmath.cos(mpmath.mpf(th))
        norm = mpmath.sqrt(
            mpmath.mpf(2 * l + 1)
            / (4 * mpmath.pi)
            * mpmath.factorial(l - m)
            / mpmath.factorial(l + m)
        )
        exact = float(norm * mpmath.legenp(l, m, x, type=2) * (-1) ** m)  # without CS phase
        assert lam[l, m, n] == pytest.approx(exact, rel=1e-12), (l, m, th)


def test_no_nan_or_zero_columns_at_L_512():
    L = 512
    theta = np.array([0.05, 0.6, 1.2, 1.5, 1.9, 3.0])
    phi = np.array([0.37, 1.1, 2.3, 4.4, 5.2, 6.0])
    Y = sht.evaluate(L, theta, phi)
    assert np.all(np.isfinite(Y))
    assert np.all(np.max(np.abs(Y), axis=0) > 1e-6)  # every (l, m) alive somewhere


def test_addition_theorem():
    L = 96
    theta = RNG.uniform(0, np.pi, 30)
    phi = RNG.uniform(0, 2 * np.pi, 30)
    Y = sht.evaluate(L, theta, phi)
    for l in range(L):
        total = np.sum(Y[:, l * l : (l + 1) ** 2] ** 2, axis=1)
        np.testing.assert_allclose(total, (2 * l + 1) / (4 * np.pi), rtol=1e-13)


def test_evaluate_jax_matches_numpy_and_traces():
    L = 48
    theta = np.concatenate([RNG.uniform(0, np.pi, 20), [0.0, np.pi, 1e-4]])
    phi = RNG.uniform(0, 2 * np.pi, theta.size)
    ref = sht.evaluate(L, theta, phi)
    got = jax.jit(lambda t, p: sht.evaluate_jax(L, t, p))(theta, phi)
    np.testing.assert_allclose(np.asarray(got), ref, rtol=0, atol=1e-13)
    f32 = sht.evaluate_jax(L, theta, phi, dtype=np.float32)
    assert f32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(f32), ref, rtol=0, atol=1e-4)


def test_table_layout_holds_lambda_lm_on_the_north_half_grid():
    L = 20
    b = sht.build_basis(L)
    row_l, row_m = sht.legendre_row_lm(L)
    assert b.legendre.shape == (row_l.size, L) and b.legendre.dtype == np.float64
    dense = legendre_lm(L, b.theta[:L])
    valid = row_l >= 0
    np.testing.assert_array_equal(b.legendre[valid], dense[row_l[valid], row_m[valid]])
    assert np.all(b.legendre[~valid] == 0)
    # every (l, m) with m <= l appears exactly once
    pairs = set(zip(row_l[valid].tolist(), row_m[valid].tolist(), strict=True))
    assert pairs == {(l, m) for l in range(L) for m in range(l + 1)}
    assert valid.sum() == L * (L + 1) // 2
    # south half from the mirror rule matches a direct evaluation there
    south = legendre_lm(L, b.theta[L:][::-1])
    parity = (-1.0) ** (np.arange(L)[:, None] + np.arange(L)[None, :])
    np.testing.assert_allclose(south, parity[..., None] * dense, rtol=0, atol=1e-14)


# --- basis health -----------------------------------------------------------------------------


def test_gram_matrix_on_the_grid_is_identity(basis32):
    b = basis32
    Y = sht.evaluate(b.L, *grid_points(b))  # brute force, independent of the table
    w = np.repeat(b.weights, b.n_phi)
    gram = Y.T @ (w[:, None] * Y)
    assert np.max(np.abs(gram - np.eye(b.L**2))) <= 1e-12


@pytest.mark.parametrize("L", [16, 64, 128])
def test_basis_diagnostics_are_clean(L):
    d = sht.basis_diagnostics(sht.build_basis(L))
    assert d["max_gram_error"] <= 1e-12
    assert d["max_addition_error"] <= 1e-12
    assert d["n_nonfinite"] == 0 and d["n_zero_columns"] == 0


def test_diagnostics_catch_a_zeroed_column(basis32):
    broken = np.array(basis32.legendre)
    row_l, row_m = sht.legendre_row_lm(32)
    broken[np.nonzero((row_l == 31) & (row_m == 30))[0][0]] = 0.0
    b = sht.ShBasis(32, basis32.theta, basis32.phi, basis32.weights, broken)
    d = sht.basis_diagnostics(b)
    assert d["n_zero_columns"] == 1 and d["max_gram_error"] > 0.5


# --- transforms -------------------------------------------------------------------------------


def random_coeffs(L, *batch):
    return RNG.standard_normal(batch + (L * L,))


def test_synthesis_and_analysis_equal_brute_force_sums(basis32):
    b = basis32
    Y = sht.evaluate(b.L, *grid_points(b))
    c = random_coeffs(b.L, 3)
    grid = np.asarray(sht.synthesis(b, c))
    assert grid.shape == (3, 2 * b.L, b.n_phi)
    np.testing.assert_allclose(grid.reshape(3, -1), c @ Y.T, rtol=0, atol=1e-12)
    f = RNG.standard_normal((2 * b.L, b.n_phi))  # not band limited: analysis is the quadrature
    w = np.repeat(b.weights, b.n_phi)
    np.testing.assert_allclose(
        np.asarray(sht.analysis(b, f)), Y.T @ (w * f.reshape(-1)), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    "L",
    [32, 64, pytest.param(128, marks=pytest.mark.slow), pytest.param(256, marks=pytest.mark.slow)],
)
def test_round_trip_is_exact_for_band_limited_signals(L):
    b = sht.build_basis(L)
    c = random_coeffs(L, 2)
    back = np.asarray(sht.analysis(b, sht.synthesis(b, c)))
    rel = np.linalg.norm(back - c) / np.linalg.norm(c)
    assert rel <= 1e-12
    assert np.max(np.abs(back - c)) <= 1e-12 * np.max(np.abs(c)) * 10


def test_batched_leading_dims_match_one_at_a_time(basis32):
    b = basis32
    Y = sht.evaluate(b.L, *grid_points(b))
    c = random_coeffs(32, 2, 3)
    grid = np.asarray(sht.synthesis(b, c))
    assert grid.shape == (2, 3, 64, 64)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(grid[i, j].reshape(-1), Y @ c[i, j], rtol=0, atol=1e-12)
    coeffs = np.asarray(sht.analysis(b, grid))
    assert coeffs.shape == (2, 3, 32 * 32)
    np.testing.assert_allclose(coeffs, c, rtol=0, atol=1e-12)


def test_plan_is_a_pytree_usable_inside_jit_and_while_loop(basis32):
    plan = sht.sht_plan(basis32)
    c = jnp.asarray(random_coeffs(32, 4))

    @jax.jit
    def smooth_until_small(plan, c):
        l = jnp.floor(jnp.sqrt(jnp.arange(32 * 32)))
        taper = jnp.exp(-((l / 8.0) ** 2))

        def body(state):
            i, x = state
            return i + 1, sht.synthesis(plan, sht.analysis(plan, x) * taper)

        def cond(state):
            return (state[0] < 3) & (jnp.max(jnp.abs(state[1])) > 0)

        return jax.lax.while_loop(cond, body, (0, sht.synthesis(plan, c)))

    n, grid = smooth_until_small(plan, c)
    l = np.floor(np.sqrt(np.arange(32 * 32)))
    expect = np.asarray(c) * np.exp(-((l / 8.0) ** 2)) ** 3
    assert int(n) == 3
    np.testing.assert_allclose(np.asarray(sht.analysis(plan, grid)), expect, atol=1e-12)
    # closing over the basis works too (tables become constants of the jitted function)
    closed = jax.jit(lambda c: sht.analysis(basis32, sht.synthesis(basis32, c)))
    np.testing.assert_allclose(np.asarray(closed(c)), np.asarray(c), atol=1e-12)


def test_float32_plan_round_trip():
    b = sht.build_basis(64)
    plan = sht.sht_plan(b, dtype=np.float32)
    c = random_coeffs(64, 2).astype(np.float32)
    grid = sht.synthesis(plan, c)
    assert grid.dtype == jnp.float32
    back = np.asarray(sht.analysis(plan, grid))
    assert np.linalg.norm(back - c) / np.linalg.norm(c) < 1e-5


def test_float64_without_x64_is_a_clear_error(basis32):
    with jax.enable_x64(False):
        with pytest.raises(RuntimeError, match="jax_enable_x64"):
            sht.sht_plan(basis32)
        sht.sht_plan(basis32, dtype=np.float32)  # float32 is fine without x64


def test_shape_errors_name_the_problem(basis32):
    with pytest.raises(ValueError, match="L\\*L"):
        sht.synthesis(basis32, np.zeros(31 * 31))
    with pytest.raises(ValueError, match="grid shape"):
        sht.analysis(basis32, np.zeros((64, 63)))
    with pytest.raises(ValueError, match="band limit"):
        sht.build_basis(0)


# --- conventions ------------------------------------------------------------------------------


def test_real_to_complex_matches_scipy_complex_expansion():
    L = 12
    c = random_coeffs(L)
    a = sht.real_to_complex(c, L)
    theta = RNG.uniform(0, np.pi, 25)
    phi = RNG.uniform(0, 2 * np.pi, 25)
    total = np.zeros(theta.size, complex)
    for l in range(L):
        for m in range(-l, l + 1):
            alm = a[l, m] if m >= 0 else (-1) ** m * np.conj(a[l, -m])
            total += alm * sph_harm_y(l, m, theta, phi)
    np.testing.assert_allclose(total.imag, 0, atol=1e-12)
    np.testing.assert_allclose(total.real, sht.evaluate(L, theta, phi) @ c, atol=1e-12)
    np.testing.assert_allclose(sht.complex_to_real(a, L), c, atol=1e-15)


def test_synthesis_matches_ducc0_through_the_healpy_mapping(basis32):
    ducc0 = pytest.importorskip("ducc0")
    L = 32
    c = random_coeffs(L)
    a = sht.real_to_complex(c, L)
    ll, mm = np.tril_indices(L)
    order = np.lexsort((ll, mm))  # healpy packing: m-major, then l
    alm = a[ll[order], mm[order]][None, :]
    ref = ducc0.sht.synthesis_2d(
        alm=alm, spin=0, lmax=L - 1, geometry="F1", ntheta=2 * L, nphi=2 * L
    )[0]
    np.testing.assert_allclose(np.asarray(sht.synthesis(basis32, c)), ref, atol=1e-12)


# --- grid cells and storage -------------------------------------------------------------------


def test_grid_cell_maps_nodes_and_neighbourhoods(basis32):
    b = basis32
    it = RNG.integers(0, b.n_theta, 200)
    ip = RNG.integers(0, b.n_phi, 200)
    dt, dp = np.pi / b.n_theta, 2 * np.pi / b.n_phi
    theta = b.theta[it] + RNG.uniform(-0.49, 0.49, 200) * dt
    phi = np.mod(b.phi[ip] + RNG.uniform(-0.49, 0.49, 200) * dp, 2 * np.pi)
    got_t, got_p = sht.grid_cell(b, theta, phi)
    np.testing.assert_array_equal(got_t, it)
    np.testing.assert_array_equal(got_p, ip)
    jt, jp = jax.jit(lambda t, p: sht.grid_cell(b, t, p))(jnp.asarray(theta), jnp.asarray(phi))
    np.testing.assert_array_equal(np.asarray(jt), it)
    np.testing.assert_array_equal(np.asarray(jp), ip)
    edge_t, edge_p = sht.grid_cell(b, np.array([0.0, np.pi]), np.array([2 * np.pi - 1e-9, 0.0]))
    assert edge_t.tolist() == [0, b.n_theta - 1] and edge_p.tolist() == [0, 0]


def test_safetensors_round_trip_preserves_the_basis(basis32, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "basis.safetensors"
    save_file(sht.basis_tensors(basis32), str(path), metadata=sht.basis_metadata(basis32))
    from safetensors import safe_open

    with safe_open(str(path), "np") as fh:
        metadata = fh.metadata()
    back = sht.basis_from_tensors(load_file(str(path)), metadata)
    for name in ("theta", "phi", "weights", "legendre"):
        np.testing.assert_array_equal(getattr(back, name), getattr(basis32, name))
    assert back.L == 32
    assert metadata["L"] == "32" and metadata["dtype"] == "float64"
    c = random_coeffs(32)
    np.testing.assert_array_equal(
        np.asarray(sht.synthesis(back, c)), np.asarray(sht.synthesis(basis32, c))
    )
    with pytest.raises(ValueError, match="legendre"):
        bad = dict(sht.basis_tensors(basis32), legendre=np.zeros((3, 32)))
        sht.basis_from_tensors(bad, metadata)
