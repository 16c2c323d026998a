"""Fits the polynomials of host_math::normal_cdf (csrc/common/host_math.h) and measures the float
evaluation, emulated in numpy float32, against scipy's float64 special functions.

Three pieces in t = |x| / sqrt(2):
  * t < 1:       erf(t) = t * P(t^2)                      (no cancellation near 0)
  * 1 <= t < 2:  erfc(t) = exp(-t^2) * Q(t - 1.5)
  * t >= 2:      erfc(t) = exp(-t^2) / t * R(1 / t^2)
so that Phi(x) = (1 + erf(x / sqrt 2)) / 2 keeps its relative accuracy in the lower tail too (there it is
erfc(t) / 2, never 1 - (1 - small)). Each fit is a weighted least-squares fit on Chebyshev nodes of the
relative error; the printed coefficients are pasted into host_math.h, highest degree first.

Run: python scripts/fit_normal_cdf.py
"""

from __future__ import annotations

import numpy as np
from scipy import special

DEGREES = {"P": 6, "Q": 11, "R": 8}


def chebyshev_nodes(lo: float, hi: float, n: int = 4000) -> np.ndarray:
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def fit(variable: np.ndarray, target: np.ndarray, degree: int) -> np.ndarray:
    """Coefficients c[0..degree] (lowest first) minimising the relative error of sum c_k v^k."""
    design = np.vander(variable, degree + 1, increasing=True) / target[:, None]
    coefficients, *_ = np.linalg.lstsq(design, np.ones_like(target), rcond=None)
    return coefficients


def horner32(coefficients: np.ndarray, v: np.ndarray) -> np.ndarray:
    c = coefficients.astype(np.float32)
    p = np.full_like(v, c[-1])
    for k in range(len(c) - 2, -1, -1):
        p = p * v + c[k]
    return p


def main() -> None:
    t = chebyshev_nodes(0.0, 1.0)
    p = fit(t * t, special.erf(t) / t, DEGREES["P"])
    t = chebyshev_nodes(1.0, 2.0)
    q = fit(t - 1.5, special.erfcx(t), DEGREES["Q"])
    t = chebyshev_nodes(2.0, 9.5)
    r = fit(1 / (t * t), t * special.erfcx(t), DEGREES["R"])
    for name, c in (("P", p), ("Q", q), ("R", r)):
        print(f"{name}: {{" + ", ".join(f"{v:.9e}f" for v in c[::-1]) + "}")

    # The pieces in float32 against float64, on every 7th float in [0, 9.5].
    t64 = np.arange(0, 9.5, 9.5 / 3_000_000)
    t32 = t64.astype(np.float32)
    exact_t = t32.astype(np.float64)
    with np.errstate(all="ignore"):  # each piece is judged on its own interval only
        err_p = horner32(p, t32 * t32) * t32 / special.erf(exact_t) - 1
        err_q = horner32(q, t32 - np.float32(1.5)) / special.erfcx(exact_t) - 1
        err_r = horner32(r, np.float32(1) / (t32 * t32)) / (exact_t * special.erfcx(exact_t)) - 1
    small, middle, large = (t32 > 0) & (t32 < 1), (t32 >= 1) & (t32 < 2), t32 >= 2
    print(
        f"max relative error, float32 evaluation: erf (t<1) {np.abs(err_p[small]).max():.2e}, "
        f"erfcx (1<=t<2) {np.abs(err_q[middle]).max():.2e}, t*erfcx (t>=2) {np.abs(err_r[large]).max():.2e}"
    )


if __name__ == "__main__":
    main()
