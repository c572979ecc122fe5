"""docs/theory.md §3 as pure functions of numbers, all in log space.

The quantities of the associative-memory account of transformer loss (Niu et al. 2024):
ball volumes, the Gaussian mass of a ball, the layer partition function Z_t, the loss floor
F(Z) = log Z + 1/Z, the critical radius and Chinchilla's reference fit. For hidden sizes in
the hundreds these numbers underflow double precision (log P(512, 59.96) = -649.93), so every
function works with logarithms. log Gamma and logsumexp come from scipy.special; the
regularized lower incomplete gamma function is implemented here in log space, because no
released scipy has it in log space yet (scipy.special.gammainc returns P itself, which
underflows to 0 for these arguments).

Every function accepts numpy arrays wherever a number is accepted (broadcasting) and returns a
Python float for scalar input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "CHINCHILLA_A",
    "CHINCHILLA_ALPHA",
    "CHINCHILLA_B",
    "CHINCHILLA_BETA",
    "CHINCHILLA_E",
    "chinchilla_loss",
    "critical_radius",
    "floor_band",
    "floor_words",
    "log_ball_volume",
    "log_gaussian_ball_mass",
    "log_lower_gamma_regularized",
    "log_partition",
    "log_partition_volume",
    "loss_floor",
    "r_star",
]

# Chinchilla's parametric fit L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022).
CHINCHILLA_E = 1.69
CHINCHILLA_A = 406.4
CHINCHILLA_B = 410.7
CHINCHILLA_ALPHA = 0.34
CHINCHILLA_BETA = 0.28

_LOG_PI = math.log(math.pi)
_EPS = np.finfo(np.float64).eps
_TINY = 1e-300  # Lentz's guard against division by zero


#: Floors at or above this are written as what they mean (:func:`floor_words`), not as digits.
ASTRONOMICAL_FLOOR = 1e100


def floor_words(floor: float, digits: int = 4) -> str:
    """A loss floor F (nats) as text: its digits, or what an infinite or astronomically large
    floor means. F = log Z + 1/Z exceeds 1e100 only when Z < 1e-100 (the patterns packed far
    tighter than r_c), and overflows float64 when Z < 1e-308."""
    f = float(floor)
    if math.isnan(f):
        return "nan"
    if f == math.inf:
        return "no finite floor: Z < 1e-308 (over-packed)"
    if f >= ASTRONOMICAL_FLOOR:
        return "> 1e100 nats: Z < 1e-100 (over-packed)"
    return f"{f:.{digits}g}"


def _gammaln(x: Any) -> Any:
    """scipy.special.gammaln, imported on first use (scipy.special takes ~0.3 s to import)."""
    from scipy.special import gammaln as f

    return f(x)


def _logsumexp(a: Any, axis: int | None = None) -> Any:
    """scipy.special.logsumexp, imported on first use."""
    from scipy.special import logsumexp as f

    return f(a, axis=axis)


def _result(values: np.ndarray) -> float | np.ndarray:
    """A Python float for 0-d results, the array otherwise."""
    values = np.asarray(values, dtype=np.float64)
    return float(values) if values.ndim == 0 else values


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    good = np.isfinite(arr) & (arr > 0)
    if not np.all(good):
        raise ValueError(f"{name} must be finite and > 0, got {_show(arr, good)}")
    return arr


def _nonnegative(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    good = arr >= 0  # False for NaN
    if not np.all(good):
        raise ValueError(f"{name} must be >= 0 (inf allowed, NaN not), got {_show(arr, good)}")
    return arr


def _show(arr: np.ndarray, good: np.ndarray) -> str:
    if arr.ndim == 0:
        return repr(float(arr))
    return f"an array of shape {arr.shape} containing {arr[~good][:3].tolist()}"


# ---------------------------------------------------------------- radii and volumes


def r_star(n: ArrayLike) -> float | np.ndarray:
    """sqrt(n / (2 pi e)): the radius at which the unit-scale n-ball has volume O(1)."""
    n = _positive("n", n)
    return _result(np.sqrt(n / (2.0 * math.pi * math.e)))


def log_ball_volume(n: ArrayLike, r: ArrayLike) -> float | np.ndarray:
    """log V_n(r) = (n/2) log pi + n log r - lgamma(n/2 + 1); -inf at r = 0."""
    n = _positive("n", n)
    r = _nonnegative("r", r)
    n, r = np.broadcast_arrays(n, r)
    with np.errstate(divide="ignore"):
        out = 0.5 * n * _LOG_PI + n * np.log(r) - _gammaln(0.5 * n + 1.0)
    return _result(out)


# ---------------------------------------------------------------- incomplete gamma


def _max_iterations(a: np.ndarray) -> int:
    # Both the series (near x = a + 1) and the continued fraction need O(sqrt(a)) terms;
    # 10 sqrt(a) is the measured worst case for double precision, this leaves a wide margin.
    return int(200 + 40 * math.sqrt(float(np.max(a, initial=1.0))))


# Stirling's series for lgamma(a + 1) - [(a + 1/2) log a - a + log(2 pi) / 2], a >= _STIRLING_MIN.
_STIRLING = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360)
_STIRLING_MIN = 15.0


def _t_minus_log1p_t(t: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    """t - log(1 + t) with full relative precision near t = 0 (ratio = 1 + t, given exactly).

    Near 0 it uses u = t / (2 + t): t - log1p(t) = 2u^2/(1-u) - 2 sum_{k>=1} u^(2k+1)/(2k+1).
    """
    out = np.empty_like(t)
    near = np.abs(t) < 0.5
    far = ~near
    out[far] = t[far] - np.log(ratio[far])
    u = t[near] / (2.0 + t[near])
    u2 = u * u
    acc = np.zeros_like(u)
    power = u * u2
    for k in range(1, 25):  # |u| < 0.2: 25 terms are far below double precision
        acc += power / (2 * k + 1)
        power = power * u2
    out[near] = 2.0 * u2 / (1.0 - u) - 2.0 * acc
    return out


def _log_prefactor(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log(x^a e^-x / Gamma(a + 1)), without the cancellation of a log x - x - lgamma(a + 1).

    For large a the three terms are each ~a log a while their sum is O(log a) near x = a, so
    the direct form loses about log10(a log a) digits; Temme's form -a (t - log1p t) -
    log(2 pi a) / 2 - stirling(a), with t = (x - a)/a, keeps them all.
    """
    out = np.empty_like(x)
    big = a >= _STIRLING_MIN
    small = ~big
    if np.any(small):
        out[small] = a[small] * np.log(x[small]) - x[small] - _gammaln(a[small] + 1.0)
    if np.any(big):
        ab, xb = a[big], x[big]
        inv = 1.0 / ab
        inv2 = inv * inv
        series = np.zeros_like(ab)
        for coef in reversed(_STIRLING):
            series = series * inv2 + coef
        series *= inv
        tail = _t_minus_log1p_t((xb - ab) / ab, xb / ab)
        out[big] = -ab * tail - 0.5 * np.log(2.0 * math.pi * ab) - series
    return out


def _log_p_series(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log P(a, x) for 0 < x < a + 1 by the power series of gamma(a, x).

    P(a, x) = x^a e^-x / Gamma(a + 1) * sum_k x^k / ((a+1)...(a+k)); every ratio x / (a+k)
    is below one, so the terms fall monotonically and the sum never overflows.
    """
    result = np.empty_like(x)
    idx = np.arange(x.size)
    xs, denom = x.copy(), a.copy()
    term = np.ones_like(x)
    total = np.ones_like(x)
    for _ in range(_max_iterations(a)):
        denom += 1.0
        term *= xs / denom
        total += term
        done = term <= 0.5 * _EPS * total
        if done.any():  # store the converged sums, keep iterating on the rest only
            result[idx[done]] = total[done]
            keep = ~done
            idx, xs, denom, term, total = idx[keep], xs[keep], denom[keep], term[keep], total[keep]
            if idx.size == 0:
                break
    else:  # pragma: no cover - the bound above is never reached in double precision
        raise RuntimeError("the incomplete gamma series did not converge")
    return _log_prefactor(a, x) + np.log(result)


def _log_q_continued_fraction(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log Q(a, x) for x >= a + 1 by the continued fraction of Gamma(a, x) (modified Lentz).

    Q(a, x) = x^a e^-x / Gamma(a) * 1/(x+1-a- 1(1-a)/(x+3-a- 2(2-a)/(x+5-a- ...))),
    evaluated as a log so that Q never underflows, whatever the size of x.
    """
    result = np.empty_like(x)
    idx = np.arange(x.size)
    aa = a.copy()
    b = x + 1.0 - a  # >= 2 in this branch
    c = np.full_like(x, 1.0 / _TINY)
    d = 1.0 / b
    h = d.copy()
    for i in range(1, _max_iterations(a) + 1):
        an = -i * (i - aa)
        b += 2.0
        d = an * d + b
        d[np.abs(d) < _TINY] = _TINY
        c = b + an / c
        c[np.abs(c) < _TINY] = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        done = np.abs(delta - 1.0) < _EPS
        if done.any():
            result[idx[done]] = h[done]
            keep = ~done
            idx, aa, b, c, d, h = idx[keep], aa[keep], b[keep], c[keep], d[keep], h[keep]
            if idx.size == 0:
                break
    else:  # pragma: no cover
        raise RuntimeError("the incomplete gamma continued fraction did not converge")
    return _log_prefactor(a, x) + np.log(a) + np.log(result)  # Gamma(a+1) = a Gamma(a)


def log_lower_gamma_regularized(a: ArrayLike, x: ArrayLike) -> float | np.ndarray:
    """log P(a, x), the regularized lower incomplete gamma function, without underflow.

    Series for x < a + 1; otherwise log1p(-Q) with log Q from a continued fraction.
    P(a, 0) = 0 gives -inf, P(a, inf) = 1 gives 0. Needs a > 0 (finite) and x >= 0.
    """
    a = _positive("a", a)
    x = _nonnegative("x", x)
    a, x = np.broadcast_arrays(a, x)
    out = np.empty(a.shape, dtype=np.float64)
    out[x == 0] = -np.inf
    out[np.isinf(x)] = 0.0
    inside = (x > 0) & np.isfinite(x)
    series = inside & (x < a + 1.0)
    fraction = inside & ~series
    if np.any(series):
        out[series] = _log_p_series(a[series], x[series])
    if np.any(fraction):
        log_q = _log_q_continued_fraction(a[fraction], x[fraction])
        out[fraction] = np.log1p(-np.exp(log_q))
    return _result(out)


# ---------------------------------------------------------------- partition function


def log_gaussian_ball_mass(n: ArrayLike, r: ArrayLike) -> float | np.ndarray:
    """log I_n(r), I_n(r) = integral over the r-ball of exp(-|y|^2) = pi^(n/2) P(n/2, r^2)."""
    n = _positive("n", n)
    r = _nonnegative("r", r)
    return _result(0.5 * n * _LOG_PI + np.asarray(log_lower_gamma_regularized(0.5 * n, r * r)))


def log_partition(radii: ArrayLike, n: ArrayLike) -> float | np.ndarray:
    """log Z_t in the exact Gaussian-ball form: log sum_i I_n(r_i).

    = (n/2) log pi + logsumexp_i log P(n/2, r_i^2). The sum runs over the last axis of
    `radii` (one radius per stored pattern); radii of 0 add nothing, and a layer whose
    radii are all 0 (or that has none) has Z = 0, log Z = -inf.
    """
    radii = _nonnegative("radii", radii)
    n = _positive("n", n)
    if radii.ndim == 0:
        radii = radii[None]
    if radii.shape[-1] == 0:
        return _result(np.broadcast_to(-np.inf, np.broadcast_shapes(n.shape, radii.shape[:-1])))
    log_p = np.asarray(log_lower_gamma_regularized(0.5 * n[..., None], radii * radii))
    return _result(0.5 * n * _LOG_PI + _logsumexp(log_p, axis=-1))


def log_partition_volume(r: ArrayLike, n: ArrayLike, d: ArrayLike) -> float | np.ndarray:
    """log Z_t in the paper's volume form (its Eq. 13): log d + log V_n(r); -inf at r = 0."""
    d = _positive("d", d)
    return _result(np.log(d) + np.asarray(log_ball_volume(n, r)))


# ---------------------------------------------------------------- loss floor


def loss_floor(log_z: ArrayLike) -> float | np.ndarray:
    """F(Z) = log Z + 1/Z computed from log Z; >= 1, with equality only at Z = 1.

    Where 1/Z overflows double precision (log Z below about -709.78, or -inf) the floor is
    reported as +inf: honest, never clipped to a finite number.
    """
    log_z = np.asarray(log_z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        out = log_z + np.exp(-log_z)
    out = np.where(np.isneginf(log_z), np.inf, out)
    return _result(out)


def floor_band(log_z: ArrayLike, n_blocks: ArrayLike) -> tuple[float | np.ndarray, ...]:
    """Proposition 4's band for the loss: (F(Z), F(Z) + log l) with l transformer blocks."""
    n_blocks = np.asarray(n_blocks)
    if not np.all(np.isfinite(n_blocks.astype(np.float64)) & (n_blocks >= 1)):
        raise ValueError(f"n_blocks must be >= 1, got {n_blocks.tolist()}")
    low = np.asarray(loss_floor(log_z))
    high = low + np.log(n_blocks.astype(np.float64))
    return _result(low), _result(high)


def critical_radius(n: ArrayLike, d: ArrayLike) -> float | np.ndarray:
    """r_c with d V_n(r_c) = 1, where the volume form gives Z = 1 and F = 1.

    log r_c = (lgamma(n/2 + 1) - (n/2) log pi - log d) / n.
    """
    n = _positive("n", n)
    d = _positive("d", d)
    n, d = np.broadcast_arrays(n, d)
    log_rc = (_gammaln(0.5 * n + 1.0) - 0.5 * n * _LOG_PI - np.log(d)) / n
    return _result(np.exp(log_rc))


def chinchilla_loss(N: ArrayLike, D: ArrayLike) -> float | np.ndarray:
    """Chinchilla's fit E + A / N^alpha + B / D^beta (nats per token; another corpus and
    tokenizer, so a reference line, never a verdict). N parameters, D training tokens."""
    N = _positive("N", N)
    D = _positive("D", D)
    return _result(
        CHINCHILLA_E + CHINCHILLA_A / N**CHINCHILLA_ALPHA + CHINCHILLA_B / D**CHINCHILLA_BETA
    )
