"""hopaudit.theory against mpmath at 50 digits, closed forms and docs/theory.md's known values."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from hopaudit import theory

mp.mp.dps = 50


def ref_log_p(a: float, x: float) -> float:
    """log P(a, x) by mpmath; via the upper function when P is near 1, where 1 - Q at 50
    digits would lose everything below 1e-50."""
    a, x = mp.mpf(a), mp.mpf(x)
    if x <= a:  # P is the smaller one (mpmath's series for P stalls far above a, so branch)
        p = mp.gammainc(a, 0, x, regularized=True)
        if p < 0.5:
            return float(mp.log(p))
    q = mp.gammainc(a, x, mp.inf, regularized=True)
    if q < 0.5:
        return float(mp.log1p(-q))
    return float(mp.log(mp.gammainc(a, 0, x, regularized=True)))


def assert_rel(got, want, rel=1e-9, tiny=1e-300):
    """Relative error <= rel; values too small for a double compare in absolute terms."""
    got = np.asarray(got, dtype=float)
    want = np.asarray(want, dtype=float)
    assert got.shape == want.shape
    err = np.abs(got - want)
    ok = np.where(np.abs(want) > tiny, err <= rel * np.abs(want), err <= tiny)
    bad = np.flatnonzero(~ok.ravel())
    assert bad.size == 0, [(got.ravel()[i], want.ravel()[i]) for i in bad[:5]]


# ---------------------------------------------------------------- log P(a, x)


def test_log_p_grid_against_mpmath():
    a = np.geomspace(0.5, 600, 25)
    x = np.geomspace(1e-3, 2000, 40)
    A, X = (g.ravel() for g in np.meshgrid(a, x))
    want = np.array([ref_log_p(ai, xi) for ai, xi in zip(A, X, strict=True)])
    assert np.min(want) < -700  # the grid reaches values where P itself underflows a double
    assert_rel(theory.log_lower_gamma_regularized(A, X), want)


def test_log_p_at_the_branch_switch_and_the_stirling_threshold():
    # x = a + 1 is where the series hands over to the continued fraction; a = 15 is where the
    # prefactor switches to Stirling's form. Both sides of each switch must agree with mpmath.
    pts = []
    for a in (0.5, 3.0, 14.999, 15.0, 15.001, 40.0, 288.0, 512.0, 600.0):
        for x in (a + 1 - 1e-7, a + 1, a + 1 + 1e-7, a, 0.9 * a, 1.1 * a + 1):
            pts.append((a, x))
    A, X = np.array(pts).T
    want = np.array([ref_log_p(ai, xi) for ai, xi in pts])
    assert_rel(theory.log_lower_gamma_regularized(A, X), want)


def test_log_p_large_a_keeps_full_precision():
    # hidden sizes up to ~2e4 mean a up to ~1e4, where a log x - x - lgamma(a + 1) cancels
    pts = [(a, f * a) for a in (2048.0, 1e4, 1e5) for f in (0.5, 0.97, 1.0, 1.0001, 1.03, 1.2)]
    A, X = np.array(pts).T
    want = np.array([ref_log_p(ai, xi) for ai, xi in pts])
    assert_rel(theory.log_lower_gamma_regularized(A, X), want, rel=1e-12)


def test_log_p_table_values():
    f = theory.log_lower_gamma_regularized
    assert f(512, 59.96) == pytest.approx(-649.93, abs=5e-3)
    assert f(288, 100) == pytest.approx(-119.97059, abs=5e-6)
    assert f(288, 288) == pytest.approx(-0.67760, abs=5e-6)
    assert f(0.5, 4) == pytest.approx(-0.0046887, abs=5e-8)
    assert f(2, 1) == pytest.approx(-1.33089, abs=5e-6)


def test_log_p_closed_forms():
    # P(1, x) = 1 - e^-x and P(1/2, x) = erf(sqrt x) = 1 - erfc(sqrt x)
    x = np.array([1e-8, 1e-3, 0.3, 1.0, 7.0, 30.0])
    want = np.where(x < 1, np.log(-np.expm1(-x)), np.log1p(-np.exp(-x)))
    assert_rel(theory.log_lower_gamma_regularized(1.0, x), want, rel=1e-12)
    want = [
        math.log(math.erf(math.sqrt(v))) if v < 1 else math.log1p(-math.erfc(math.sqrt(v)))
        for v in x
    ]
    assert_rel(theory.log_lower_gamma_regularized(0.5, x), want, rel=1e-12)


def test_log_p_edges_and_validation():
    f = theory.log_lower_gamma_regularized
    assert f(3.0, 0.0) == -math.inf
    assert f(3.0, math.inf) == 0.0
    assert isinstance(f(3.0, 1.0), float)
    for a, x in ((0.0, 1.0), (-1.0, 1.0), (math.inf, 1.0), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="a must be"):
            f(a, x)
    for x in (-1e-9, math.nan, [1.0, -2.0]):
        with pytest.raises(ValueError, match="x must be"):
            f(2.0, x)


def test_broadcasting_matches_scalar_calls():
    a = np.array([[0.5], [10.0], [300.0]])
    x = np.array([0.0, 0.2, 9.0, 299.0, 1e4])
    grid = theory.log_lower_gamma_regularized(a, x)
    assert grid.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            assert grid[i, j] == theory.log_lower_gamma_regularized(a[i, 0], x[j])


# ---------------------------------------------------------------- radii, volumes, masses


def test_r_star_table():
    got = theory.r_star(np.array([384, 576, 768, 1024]))
    np.testing.assert_allclose(got, [4.7416, 5.8073, 6.7057, 7.7431], atol=5e-5)
    assert theory.r_star(576) == pytest.approx(math.sqrt(576 / (2 * math.pi * math.e)))
    with pytest.raises(ValueError):
        theory.r_star(0)


def test_log_ball_volume_against_closed_forms_and_mpmath():
    r = np.array([0.1, 1.0, 2.5, 40.0])
    assert_rel(theory.log_ball_volume(2, r), np.log(math.pi * r**2), rel=1e-13)
    assert_rel(theory.log_ball_volume(3, r), np.log(4 / 3 * math.pi * r**3), rel=1e-13)
    for n in (1, 7, 576, 1024, 4096):
        for rr in (0.7, 3.0, 9.0):
            want = mp.mpf(n) / 2 * mp.log(mp.pi) + n * mp.log(rr) - mp.loggamma(mp.mpf(n) / 2 + 1)
            assert_rel(theory.log_ball_volume(n, rr), float(want), rel=1e-12)
    assert theory.log_ball_volume(10, 0.0) == -math.inf
    assert theory.log_ball_volume(576, theory.r_star(576)) == pytest.approx(-3.7507, abs=5e-5)
    assert theory.log_ball_volume(1024, theory.r_star(1024)) == pytest.approx(-4.0383, abs=5e-5)


def test_gaussian_ball_mass_table_and_n1():
    assert theory.log_gaussian_ball_mass(576, theory.r_star(576)) == pytest.approx(
        -37.3514, abs=5e-5
    )
    assert theory.log_gaussian_ball_mass(1024, theory.r_star(1024)) == pytest.approx(
        -63.8690, abs=5e-5
    )
    # n = 1: the integral of exp(-y^2) over [-r, r] is sqrt(pi) erf(r)
    r = np.array([1e-3, 0.1, 0.5, 1.0, 2.0, 4.0])
    want = [float(mp.log(mp.sqrt(mp.pi) * mp.erf(v))) for v in r]
    assert_rel(theory.log_gaussian_ball_mass(1, r), want, rel=1e-12)
    assert theory.log_gaussian_ball_mass(5, 0.0) == -math.inf
    assert theory.log_gaussian_ball_mass(4, math.inf) == pytest.approx(2 * math.log(math.pi))


def test_gaussian_ball_mass_against_mpmath_at_large_n():
    for n in (2, 64, 576, 1024, 2048):
        for r in (0.5, 5.0, 10.0, 30.0):
            a = mp.mpf(n) / 2
            want = a * mp.log(mp.pi) + mp.log(mp.gammainc(a, 0, mp.mpf(r) ** 2, regularized=True))
            assert_rel(theory.log_gaussian_ball_mass(n, r), float(want), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 576, 1024])
def test_lemma5_bounds(n):
    # exp(-r^2) V_n(r) <= I_n(r) <= V_n(r): exp(-|y|^2) lies between exp(-r^2) and 1 on the ball
    r = np.geomspace(1e-2, 60, 50)
    log_i = theory.log_gaussian_ball_mass(n, r)
    log_v = theory.log_ball_volume(n, r)
    assert np.all(log_i <= log_v + 1e-9 * np.abs(log_v) + 1e-12)
    assert np.all(log_i >= log_v - r**2 - 1e-9 * np.abs(log_v - r**2) - 1e-12)
    # small balls: exp(-|y|^2) ~ 1, so I_n(r) ~ V_n(r)
    assert theory.log_gaussian_ball_mass(n, 1e-4) == pytest.approx(
        theory.log_ball_volume(n, 1e-4), abs=1e-7
    )


# ---------------------------------------------------------------- partition function


def test_log_partition_against_mpmath_sum():
    rng = np.random.default_rng(3)
    for n in (1, 16, 576, 1024):
        radii = rng.uniform(0.2, 1.3, size=40) * theory.r_star(n)
        radii[:3] = 0.0
        a = mp.mpf(n) / 2
        total = mp.fsum(
            mp.pi**a * mp.gammainc(a, 0, mp.mpf(float(r)) ** 2, regularized=True) for r in radii
        )
        assert_rel(theory.log_partition(radii, n), float(mp.log(total)), rel=1e-9)


def test_log_partition_edges_and_axes():
    assert theory.log_partition(np.zeros(5), 576) == -math.inf
    assert theory.log_partition(np.array([]), 576) == -math.inf
    # one ball: log Z = log I_n(r)
    assert theory.log_partition([3.0], 50) == pytest.approx(theory.log_gaussian_ball_mass(50, 3.0))
    # d identical balls: log Z = log d + log I_n(r)
    assert theory.log_partition(np.full(1000, 6.0), 576) == pytest.approx(
        math.log(1000) + theory.log_gaussian_ball_mass(576, 6.0), rel=1e-12
    )
    # the sum runs over the last axis, one layer per row
    radii = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    got = theory.log_partition(radii, 10)
    assert got.shape == (2,)
    assert got[0] == pytest.approx(theory.log_partition(radii[0], 10))
    assert got[1] == -math.inf
    with pytest.raises(ValueError):
        theory.log_partition([1.0, math.nan], 10)


def test_log_partition_volume():
    n, d, r = 576, 80_000, 6.5
    want = math.log(d) + n / 2 * math.log(math.pi) + n * math.log(r) - math.lgamma(n / 2 + 1)
    assert theory.log_partition_volume(r, n, d) == pytest.approx(want, rel=1e-13)
    assert theory.log_partition_volume(0.0, n, d) == -math.inf
    with pytest.raises(ValueError):
        theory.log_partition_volume(1.0, n, 0)


# ---------------------------------------------------------------- floor, radius, Chinchilla


def test_loss_floor_values_minimum_and_overflow():
    log_z = np.linspace(-50, 50, 2001)
    f = theory.loss_floor(log_z)
    want = [float(mp.mpf(v) + mp.exp(-mp.mpf(v))) for v in log_z]
    assert_rel(f, want, rel=1e-12)
    assert np.all(f >= 1.0)
    assert theory.loss_floor(0.0) == 1.0
    assert np.all(f[log_z != 0] > 1.0)
    # 1/Z overflows below log Z ~ -709.78: +inf, never a clipped finite number
    assert math.isfinite(theory.loss_floor(-709.0))
    assert theory.loss_floor(-709.0) == pytest.approx(math.exp(709.0), rel=1e-12)
    assert theory.loss_floor(-710.0) == math.inf
    assert theory.loss_floor(-math.inf) == math.inf
    assert theory.loss_floor(math.inf) == math.inf


def test_floor_band():
    low, high = theory.floor_band(np.array([-1.0, 0.0, 2.0]), 24)
    np.testing.assert_allclose(low, [-1 + math.e, 1.0, 2 + math.exp(-2)], rtol=1e-14)
    np.testing.assert_allclose(high - low, math.log(24), rtol=1e-14)
    assert theory.floor_band(0.0, 1) == (1.0, 1.0)
    with pytest.raises(ValueError, match="n_blocks"):
        theory.floor_band(0.0, 0)


def test_critical_radius_table_and_definition():
    assert theory.critical_radius(1024, 80_000) == pytest.approx(7.68842, abs=5e-6)
    assert theory.critical_radius(576, 800) == pytest.approx(5.77779, abs=5e-6)
    for n, d in ((1, 10), (64, 1000), (576, 800), (1024, 80_000)):
        rc = mp.mpf(theory.critical_radius(n, d))
        # d V_n(r_c) = 1
        vol = d * mp.pi ** (mp.mpf(n) / 2) * rc**n / mp.gamma(mp.mpf(n) / 2 + 1)
        assert float(vol) == pytest.approx(1.0, rel=1e-10)
    # the asymptotic form r_star (n pi)^(1/(2n)) d^(-1/n)
    n, d = 4096, 10**6
    approx = theory.r_star(n) * (n * math.pi) ** (1 / (2 * n)) * d ** (-1 / n)
    assert theory.critical_radius(n, d) == pytest.approx(approx, rel=1e-4)


def test_chinchilla_loss():
    n, d = 70e9, 1.4e12
    want = 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28
    assert theory.chinchilla_loss(n, d) == pytest.approx(want, rel=1e-14)
    got = theory.chinchilla_loss(np.array([1e6, 1e9]), 1e10)
    assert got.shape == (2,)
    assert got[0] > got[1] > 1.69
    with pytest.raises(ValueError):
        theory.chinchilla_loss(0, 1e9)


def test_floor_words_say_what_an_infinite_or_astronomical_floor_means():
    from hopaudit.theory import floor_words

    # F = log Z + 1/Z computed independently in numpy: Z = e^-300 gives ~1.9e130 nats
    huge = float(-300 + np.exp(np.float64(300)))
    assert huge > 1e100
    assert floor_words(huge) == "> 1e100 nats: Z < 1e-100 (over-packed)"
    assert floor_words(float("inf")) == "no finite floor: Z < 1e-308 (over-packed)"
    assert floor_words(float(-50 + np.exp(np.float64(50)))) == "5.185e+21"  # finite: digits
    assert floor_words(1.2345678) == "1.235"
    assert floor_words(float("nan")) == "nan"
