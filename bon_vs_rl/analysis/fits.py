"""Functional forms for gold reward against KL, fitted by least squares (Gao et al. 2022, sec. 3).

Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model Overoptimization", sec. 3, eq. 1-2)
find that the gold reward R of a policy optimized against a proxy reward model, measured relative to
the initial policy (R(0) = 0), is well described as a function of d = sqrt(KL(π || π_init)) by

    best-of-n:  R_bon(d) = d (α_bon - β_bon d)                                                 (1)
    RL (PPO):   R_rl(d)  = d (α_rl  - β_rl log d)                                              (2)

Both are linear in (α, β), so a fit is one linear least-squares solve with the design matrix
[d, -d²] or [d, -d log d]; no iterative optimizer, no starting point, no local minima. Standard
errors come from σ² (XᵀWX)⁻¹ with σ² the residual variance of the points with d > 0 on n₊ - 2
degrees of freedom (a d = 0 point lies on every curve of either form and says nothing about α, β).
These standard errors treat the points as independent; points of one curve that share samples or
prompts are not, and `statistics.fit_replicates` (refits on resampled prompts) gives honest intervals.

The fitted maximum (the point where optimizing the proxy harder starts to cost gold reward):

    best-of-n:  d* = α / (2β),          R* = α² / (4β)                          (β > 0, α > 0)
    RL:         d* = exp(α/β - 1),      R* = β d*                               (β > 0)

With β ≤ 0 there is no maximum: the gold reward is still rising. A best-of-n fit with α ≤ 0 < β has its
vertex at d ≤ 0, outside d = sqrt(KL) ≥ 0: there gold falls from the start and the maximum on d ≥ 0 is the
initial policy, d* = 0, R* = 0. A peak outside [d_min, d_max] is an
extrapolation, and the RL peak in particular (exponential in α/β) is often far outside the data.

`fit_and_predict` refits on the points with KL ≤ kl_max and scores the held-out larger-KL points:
the check Gao et al. use to argue the forms have predictive power, not just enough flexibility.

numpy only (no scipy, no torch): importing this module is fast.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

FORMS = ("bon", "rl")

# Relative size of the smallest singular value of the (column-normalized) design matrix below which
# the two columns are treated as collinear: α and β are then not separately determined by the data.
_SINGULAR_RTOL = 1e-10


class FitRefused(ValueError):
    """The data cannot support a fit; `reason` says why in plain words (the report prints it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# The two forms
# --------------------------------------------------------------------------------------------------


def _check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"unknown functional form {form!r}; expected one of {FORMS}")
    return form


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d·log d, with its limit 0 at d = 0 (no NaN from 0·(-inf))."""
    out = np.zeros_like(d, dtype=float)
    pos = d > 0
    out[pos] = d[pos] * np.log(d[pos])
    out[d < 0] = np.nan  # d = sqrt(KL) is never negative
    return out


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Columns multiplying (α, β): R = α·d - β·g(d), with g(d) = d² for BoN, d·log d for RL."""
    second = d * d if form == "bon" else _d_log_d(d)
    return np.column_stack([d, -second])


def _peak(form: str, alpha: float, beta: float) -> tuple[float | None, float | None]:
    """The fitted maximum (d*, R*), or (None, None) when β ≤ 0 (eq. 1-2 then have no maximum)."""
    if not beta > 0:
        return None, None
    if form == "bon":
        if alpha <= 0:  # the vertex α/2β is at d ≤ 0; on d = sqrt(KL) ≥ 0 gold only falls: the maximum is d = 0
            return 0.0, 0.0
        # dR/dd = α - 2βd = 0
        return alpha / (2 * beta), alpha * alpha / (4 * beta)
    # dR/dd = α - β(log d + 1) = 0, and R(d*) = d*(α - β(α/β - 1)) = β d*
    exponent = alpha / beta - 1
    if exponent > 700:  # exp overflows float64; the peak is astronomically far out of range anyway
        return math.inf, math.inf
    d_star = math.exp(exponent)
    return d_star, beta * d_star


# --------------------------------------------------------------------------------------------------
# The fit result
# --------------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """A least-squares fit of eq. 1 (form="bon") or eq. 2 (form="rl") to gold reward against d = sqrt(KL)."""

    form: str
    alpha: float
    beta: float
    alpha_se: float  # NaN when there are no residual degrees of freedom (2 points with KL > 0)
    beta_se: float
    rmse: float  # root-mean-square residual over the fitted points, in reward units (unweighted)
    n_points: int  # points used in the fit
    d_min: float  # measured range of d: anything outside it is extrapolation
    d_max: float
    peak_d: float | None  # fitted maximum on d ≥ 0; None when β ≤ 0 (no peak: reward still rising); 0 when gold only falls
    peak_reward: float | None
    n_dropped: int = 0  # points dropped for non-finite values or negative KL
    weighted: bool = False  # True when weighted by 1/gold_se²

    def predict(self, d: ArrayLike) -> np.ndarray:
        """Gold reward (relative to the initial policy) at d = sqrt(KL); NaN for d < 0."""
        d = np.asarray(d, dtype=float)
        flat = _design(d.ravel(), self.form) @ np.array([self.alpha, self.beta])
        return flat.reshape(d.shape)

    @property
    def peak_kl(self) -> float | None:
        """KL at the fitted maximum (d*²)."""
        return None if self.peak_d is None else self.peak_d**2

    @property
    def peak_in_range(self) -> bool:
        """Whether the fitted maximum lies inside the measured range of d (otherwise it is extrapolated)."""
        return self.peak_d is not None and self.d_min <= self.peak_d <= self.d_max

    def to_dict(self) -> dict:
        """Plain Python values (JSON-serializable apart from NaN/inf), with the derived peak fields."""
        out = asdict(self)
        out["peak_kl"] = self.peak_kl
        out["peak_in_range"] = self.peak_in_range
        return out

    def summary(self) -> str:
        """One line for a report, e.g. 'bon: R = d(1.002±0.011 - 0.301±0.004·d), ...'."""
        g = "d" if self.form == "bon" else "log d"
        text = (
            f"{self.form}: R = d({self.alpha:.4g}±{self.alpha_se:.2g} - {self.beta:.4g}±{self.beta_se:.2g}·{g}), "
            f"rmse {self.rmse:.3g} on {self.n_points} points, d in [{self.d_min:.3g}, {self.d_max:.3g}]"
        )
        if self.peak_d is None:
            return text + "; no peak (reward still rising)"
        if self.peak_d == 0:
            return text + "; peak at d=0: gold falls from the initial policy on (α ≤ 0)"
        where = "" if self.peak_in_range else ", extrapolated"
        return (
            text + f"; peak at d={self.peak_d:.3g} (KL {self.peak_kl:.3g}), R={self.peak_reward:.3g}{where}"
        )


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def fit_gold_vs_kl(
    kl: ArrayLike,
    gold: ArrayLike,
    form: str,
    gold_se: ArrayLike | None = None,
    min_points: int = 3,
) -> Fit:
    """Fit eq. 1 or eq. 2 of Gao et al. (2022) to gold reward against KL by linear least squares.

    `gold` must already be relative to the initial policy (see `relative_to_initial`): both forms
    pass through R(0) = 0 and have no intercept. Points with a non-finite KL, gold (or gold_se) or a
    negative KL are dropped. With `gold_se` given and positive for every used point, point i is
    weighted by 1/gold_se[i]²; otherwise all points weigh the same.

    Raises FitRefused when fewer than `min_points` points are usable, fewer than 2 have KL > 0, or
    the data cannot separate α from β (singular design matrix).
    """
    _check_form(form)
    kl = np.asarray(kl, dtype=float).ravel()
    gold = np.asarray(gold, dtype=float).ravel()
    if kl.shape != gold.shape:
        raise ValueError(f"kl and gold differ in length: {kl.size} vs {gold.size}")
    se = None
    if gold_se is not None:
        se = np.asarray(gold_se, dtype=float).ravel()
        if se.shape != kl.shape:
            raise ValueError(f"gold_se and kl differ in length: {se.size} vs {kl.size}")

    keep = np.isfinite(kl) & np.isfinite(gold) & (kl >= 0)
    if se is not None:
        keep &= np.isfinite(se)
    n_dropped = int(kl.size - keep.sum())
    d, y = np.sqrt(kl[keep]), gold[keep]
    n = int(d.size)
    dropped = f" ({n_dropped} dropped for non-finite values or negative KL)" if n_dropped else ""
    if n < min_points:
        raise FitRefused(f"only {n} usable point(s){dropped}; a {form} fit needs at least {min_points}")
    n_pos = int(np.count_nonzero(d > 0))
    if n_pos < 2:
        raise FitRefused(
            f"only {n_pos} point(s) with KL > 0{dropped}; a {form} fit needs at least 2 to separate α from β"
        )

    # Weighted least squares = ordinary least squares on rows scaled by sqrt(w).
    weighted = se is not None and bool(np.all(se[keep] > 0))
    w = 1.0 / se[keep] ** 2 if weighted else np.ones(n)
    sw = np.sqrt(w)
    X = _design(d, form) * sw[:, None]
    yw = y * sw

    # Normalize the columns before the SVD so the singularity test does not depend on the units of KL.
    norms = np.linalg.norm(X, axis=0)
    if not np.all(norms > 0):
        raise FitRefused(f"the {form} design matrix is singular: one of its columns is all zero")
    U, s, Vt = np.linalg.svd(X / norms, full_matrices=False)
    if s[-1] < _SINGULAR_RTOL * s[0]:
        raise FitRefused(
            f"the {form} design matrix is singular: the KL values cannot separate α from β "
            f"(e.g. all points at the same KL)"
        )
    theta = (Vt.T @ ((U.T @ yw) / s)) / norms
    alpha, beta = float(theta[0]), float(theta[1])

    resid = y - _design(d, form) @ theta
    rmse = float(np.sqrt(np.mean(resid**2)))
    # Both forms pass through R(0) = 0 with no intercept, so a d = 0 row of the design is all zeros: it
    # carries no information about α, β and its residual is whatever the caller's gold is there (0 by
    # construction when gold is relative to the initial policy). Counting it as a degree of freedom
    # would shrink σ² and the standard errors, so σ² uses only the points with d > 0.
    pos = d > 0
    dof = n_pos - 2
    if dof > 0:
        # residual variance, as curve_fit(absolute_sigma=False) on the d > 0 points
        sigma2 = float(np.sum(w[pos] * resid[pos] ** 2) / dof)
        cov = sigma2 * (Vt.T / s**2) @ Vt / np.outer(norms, norms)  # σ² (XᵀWX)⁻¹
        alpha_se, beta_se = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
    else:
        alpha_se = beta_se = math.nan  # an exact fit through 2 points says nothing about the noise

    peak_d, peak_reward = _peak(form, alpha, beta)
    return Fit(
        form=form,
        alpha=alpha,
        beta=beta,
        alpha_se=alpha_se,
        beta_se=beta_se,
        rmse=rmse,
        n_points=n,
        d_min=float(d.min()),
        d_max=float(d.max()),
        peak_d=peak_d,
        peak_reward=peak_reward,
        n_dropped=n_dropped,
        weighted=weighted,
    )


def fit_and_predict(
    kl: ArrayLike,
    gold: ArrayLike,
    form: str,
    kl_max: float,
    gold_se: ArrayLike | None = None,
    min_points: int = 3,
) -> tuple[Fit, dict]:
    """Fit on the points with KL ≤ kl_max, then score the fit on the held-out points with KL > kl_max.

    This is the extrapolation check of Gao et al. (2022, sec. 3): a form that is right, not merely
    flexible, predicts the larger-KL points it never saw. Returns the fit and a dict with
    n_train, n_held_out, rmse_held_out and max_abs_error_held_out (None when nothing is held out).
    """
    kl = np.asarray(kl, dtype=float).ravel()
    gold = np.asarray(gold, dtype=float).ravel()
    if kl.shape != gold.shape:
        raise ValueError(f"kl and gold differ in length: {kl.size} vs {gold.size}")
    train = kl <= kl_max  # NaN KL compares False on both sides and is in neither set
    se_train = None if gold_se is None else np.asarray(gold_se, dtype=float).ravel()[train]
    fit = fit_gold_vs_kl(kl[train], gold[train], form, gold_se=se_train, min_points=min_points)

    held = (kl > kl_max) & np.isfinite(kl) & np.isfinite(gold)
    err = fit.predict(np.sqrt(kl[held])) - gold[held]
    n_held = int(held.sum())
    report = {
        "kl_max": float(kl_max),
        "n_train": fit.n_points,
        "n_held_out": n_held,
        "rmse_held_out": float(np.sqrt(np.mean(err**2))) if n_held else None,
        "max_abs_error_held_out": float(np.max(np.abs(err))) if n_held else None,
    }
    return fit, report


# --------------------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------------------


def relative_to_initial(kl: ArrayLike, gold: ArrayLike) -> np.ndarray:
    """Gold reward minus the gold reward at the smallest KL (the initial policy, KL 0), so R(0) = 0.

    Eq. 1-2 have no intercept; the paper plots gold reward relative to the initial policy. When several
    points share the smallest KL (e.g. seeds), their mean is subtracted. Non-finite points are ignored
    when finding the reference and passed through.
    """
    kl = np.asarray(kl, dtype=float)
    gold = np.asarray(gold, dtype=float)
    ok = np.isfinite(kl) & np.isfinite(gold)
    if not ok.any():
        raise ValueError("no finite (kl, gold) point to use as the initial policy")
    at_min = ok & (kl == kl[ok].min())
    return gold - gold[at_min].mean()


def unit_variance_scale(gold_rel: ArrayLike, gold_std_initial: float) -> np.ndarray:
    """Divide by the initial policy's gold standard deviation (Gao et al. 2022, sec. 2.2: the gold RM
    is normalized to unit variance on the initial policy's samples), so α, β compare across set-ups."""
    if not (math.isfinite(gold_std_initial) and gold_std_initial > 0):
        raise ValueError(f"gold_std_initial must be finite and > 0, got {gold_std_initial!r}")
    return np.asarray(gold_rel, dtype=float) / gold_std_initial
