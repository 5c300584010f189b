"""Uncertainty for every number the report prints: prompts resampled through the whole pipeline.

The unit of sampling in a bonrl experiment is the evaluation prompt (and, for RL, the training seed).
Every method is measured on one shared prompt set, and the initial policy once on the same prompts,
so each statistic here is a function of per-prompt means, and its uncertainty comes from resampling
prompts with replacement (Efron's bootstrap; counts per prompt, as in `bon_estimator.best_of_n_table`)
and recomputing the statistic end to end:

    per-prompt means -> curve means -> gains over the initial policy -> fits -> matched comparisons

One set of prompt weights is shared by the baseline and every curve of a panel, so gains are paired
(a replicate's gain is sum_p w_p (x[p,k] - base[p]) / sum_p w_p, the prompt's own offset cancels) and
so are differences between methods. Intervals are percentile intervals of the replicates (`interval`).

Replicate seeds (RL runs of one setting with different training seeds) form one curve, [S, P, K].
Seeds are resampled as well, hierarchically: each replicate weights the seeds (`seed_weights`), then
the prompts, which all seeds share. A plain bootstrap of S seeds is too narrow for small S (its
variance is (S-1)/S of the usual one, and it cannot know that a spread measured from 3 seeds is itself
uncertain). The default `widen="t"` therefore replaces the seed bootstrap by its small-sample
counterpart: seed weights that put each replicate's seed component at mean + (sample covariance / S)^½
· T with T multivariate Student t on S-1 degrees of freedom — the t interval when seeds dominate.
Coverage of a nominal 95% interval for a curve mean, measured by simulation
(`scripts/coverage_seeds.py`: 400 repetitions, B = 500, 100 prompts, x = prompt effect N(0, 1) + seed
effect N(0, σ_u²) + noise N(0, 1), so the prompt part of the SE is ~0.12; tests/test_statistics.py
checks S = 3), as coverage / mean width:

    σ_u   S    widen="t" (default)   "rescale" (√(S/(S-1)))   "none" (plain bootstrap)
    0.05  2      1.000 / 2.05           0.975 / 0.63             0.963 / 0.56
    0.05  3      0.998 / 0.81           0.963 / 0.56             0.978 / 0.53
    0.05  5      0.985 / 0.56           0.963 / 0.50             0.980 / 0.48
    0.15  2      1.000 / 2.95           0.948 / 0.72             0.935 / 0.60
    0.15  3      0.985 / 1.02           0.965 / 0.62             0.945 / 0.58
    0.15  5      0.983 / 0.65           0.948 / 0.56             0.948 / 0.53
    0.50  2      0.988 / 7.11           0.792 / 1.21             0.738 / 0.92
    0.50  3      0.968 / 2.31           0.840 / 1.11             0.845 / 0.95
    0.50  5      0.948 / 1.26           0.917 / 0.94             0.863 / 0.88

So with a real seed effect and S ≤ 3 only "t" covers; its price is width, above all at S = 2, where the t
quantile on one degree of freedom is 12.7: two seeds say almost nothing about the seed spread, and
the interval says so. When seeds barely differ it over-covers, because a seed's deviation also holds
its own sampling noise, which the prompt resampling already counts. With S = 1 there is no seed
variation to measure; the interval covers prompt sampling only.

Functions (B replicates, P prompts, K points along a curve):

    resample_weights, seed_weights      the resampling: [B, P] prompt counts, [B, S] seed weights
    curve_estimate, curve_replicates    kl, proxy, gold and the paired gains, [K] and [B, K]
    interval                            percentile interval, with a stated rule for NaN replicates
    paired_gain_interval                a results row's gain over the initial policy with its interval
    accuracy_interval                   a reward model's held-out accuracy, prompts resampled
    fit_replicates                      Gao et al. eq. 1-2 refitted on every replicate at once
    fit_quality                         a fit's goodness of fit: rmse, R², rmse against the points' own SE
    along                               value where a curve first reaches a level (vectorised)
    compare_curves                      matched comparisons between two curves, paired
    verdict                             "ahead" / "behind" / "unresolved" (+ prompts that would resolve it)

Built on them, in findings.py: `analyse` (all of the above for one panel of curves), `compare_points`,
`measured_peak`, `fitted_peak_status`, `trend` and `compare_proxies`.

numpy only: importing it is fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from bon_vs_rl.analysis.fits import FORMS  # "bon", "rl": Gao et al. eq. 1 and eq. 2

LEVEL = 0.95
WIDEN = ("t", "rescale", "none")  # how seed_weights treats few seeds (module docstring)
QUANTITIES = ("kl", "proxy", "gold", "proxy_gain", "gold_gain")


# --------------------------------------------------------------------------------------------------
# 1. The data: per-prompt means of each curve and of the initial policy, on one shared prompt set.
# --------------------------------------------------------------------------------------------------


def _as_array(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has a NaN or inf value; every prompt must be measured at every point")
    return arr


@dataclass
class CurveSamples:
    """Per-prompt measurements of one curve on one shared prompt set.

    Arrays are [S, P, K]: S replicate seeds (1 for best-of-n), P prompts (the same prompt order for
    every curve and the baseline), K points along the curve (n for BoN, step for RL, beta for the
    tilted optimum). Entry [s, p, k] is prompt p's mean over its samples at point k of seed s (for BoN:
    the per-prompt unbiased BoN expectation; KL: that prompt's KL estimate). Points are in the curve's
    own order, the order `along` walks them.
    """

    label: str
    form: str  # "bon" or "rl": which Gao et al. functional form fits it
    kl: np.ndarray  # [S, P, K]
    proxy: np.ndarray  # [S, P, K]
    gold: np.ndarray  # [S, P, K]
    # [K] bool, default all: points to trust as measurements. The others (a tilted optimum estimated from
    # too few effective samples, whose KL and gold fall short of the truth: tilted.py) get points and
    # intervals like any other, but no fit, comparison or target is computed from them.
    trusted: np.ndarray | None = None
    # The curve starts at the initial policy without measuring it there: the KL-regularized optimum tends
    # to π_ref as β → ∞, so (KL 0, gains 0) is exact. Comparisons then walk from that origin; without it a
    # level below the first measured point (the largest β) could never be "reached".
    from_reference: bool = False

    def __post_init__(self):
        if self.form not in FORMS:
            raise ValueError(f"curve {self.label!r}: form must be one of {FORMS}, got {self.form!r}")
        for name in ("kl", "proxy", "gold"):
            setattr(self, name, _as_array(getattr(self, name), f"curve {self.label!r} {name}", 3))
        if not self.kl.shape == self.proxy.shape == self.gold.shape:
            raise ValueError(f"curve {self.label!r}: kl, proxy and gold differ in shape: "
                             f"{self.kl.shape}, {self.proxy.shape}, {self.gold.shape}")
        K = self.kl.shape[2]
        self.trusted = np.ones(K, dtype=bool) if self.trusted is None else np.asarray(self.trusted, dtype=bool)
        if self.trusted.shape != (K,):
            raise ValueError(f"curve {self.label!r}: trusted must have shape [{K}], got {self.trusted.shape}")

    def only_trusted(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`values` ([..., K] each) with the untrusted points set to NaN: `along` and `fit_replicates` skip
        non-finite points as if never measured."""
        return {name: np.where(self.trusted, v, np.nan) for name, v in values.items()}

    def for_comparison(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The trusted points, preceded by the origin (KL 0, gains 0; other quantities unknown) when the
        curve starts at the reference (`from_reference`)."""
        values = self.only_trusted(values)
        if not self.from_reference:
            return values
        out = {}
        for name, v in values.items():
            first = 0.0 if name in ("kl", "proxy_gain", "gold_gain") else np.nan
            out[name] = np.concatenate([np.full(v.shape[:-1] + (1,), first), v], axis=-1)
        return out

    @property
    def seeds(self) -> int:
        return self.kl.shape[0]

    @property
    def prompts(self) -> int:
        return self.kl.shape[1]


@dataclass
class Baseline:
    """The initial policy measured once on the same prompts: per-prompt means [P]."""

    proxy: np.ndarray
    gold: np.ndarray

    def __post_init__(self):
        self.proxy = _as_array(self.proxy, "baseline proxy", 1)
        self.gold = _as_array(self.gold, "baseline gold", 1)
        if self.proxy.shape != self.gold.shape:
            raise ValueError(f"baseline proxy and gold differ in length: {self.proxy.size} vs {self.gold.size}")


def _check_paired(curve: CurveSamples, baseline: Baseline) -> None:
    if curve.prompts != baseline.proxy.size:
        raise ValueError(f"curve {curve.label!r} has {curve.prompts} prompts and the baseline "
                         f"{baseline.proxy.size}: gains are paired, so both must be measured on the same prompts")


# --------------------------------------------------------------------------------------------------
# 2. Resampling weights: prompts with replacement, seeds with a small-sample widening.
# --------------------------------------------------------------------------------------------------


def _generator(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def resample_weights(P: int, B: int, rng) -> np.ndarray:
    """[B, P] bootstrap counts: how often each of P prompts appears in each of B resamples of size P.

    A count vector is the same resample as P indices drawn with replacement, and a resampled mean is
    one matrix product, counts @ x / P, for every replicate at once. rng: a Generator or a seed.
    """
    if P < 1 or B < 1:
        raise ValueError(f"need at least one prompt and one replicate, got P={P}, B={B}")
    return _generator(rng).multinomial(P, np.full(P, 1.0 / P), size=B).astype(np.float64)


def seed_weights(S: int, B: int, rng, *, widen: str = "t") -> np.ndarray:
    """[B, S] seed weights, each row summing to S; a replicate averages seeds as sum_s v_s x_s / S.

    widen="none":    bootstrap counts (seeds with replacement).
    widen="rescale": counts with the deviations from 1 scaled by √(S/(S-1)), so the replicate variance
                     is the unbiased s²/S instead of (S-1)/S · s²/S.
    widen="t" (default): v = 1 + S(λ - mean λ), λ_s = g_s · sqrt((S-1)/χ²_{S-1}) / sqrt(S(S-1)), g_s iid
                     N(0, 1). Then sum_s v_s x_s / S = x̄ + sum_s λ_s (x_s - x̄), which is exactly x̄ +
                     (sample covariance / S)^½ · T with T ~ multivariate t on S-1 dof (a normal with the
                     sample covariance, divided by an independent sqrt(χ²/dof)). Weights can be
                     negative: a replicate may lie beyond the most extreme seed, as the t interval does.
    With S = 1 every weight is 1 (one seed carries no information about seed-to-seed spread).
    Measured coverage of each choice: module docstring.
    """
    if widen not in WIDEN:
        raise ValueError(f"widen must be one of {WIDEN}, got {widen!r}")
    if S < 1 or B < 1:
        raise ValueError(f"need at least one seed and one replicate, got S={S}, B={B}")
    if S == 1:
        return np.ones((B, 1))
    gen = _generator(rng)
    if widen in ("none", "rescale"):
        counts = gen.multinomial(S, np.full(S, 1.0 / S), size=B).astype(np.float64)
        scale = 1.0 if widen == "none" else math.sqrt(S / (S - 1))
        return 1.0 + scale * (counts - 1.0)
    g = gen.standard_normal((B, S))
    lam = g * np.sqrt((S - 1) / gen.chisquare(S - 1, size=(B, 1))) / math.sqrt(S * (S - 1))
    return 1.0 + S * (lam - lam.mean(axis=1, keepdims=True))


# --------------------------------------------------------------------------------------------------
# 3. A curve's means and paired gains: the point estimate and every replicate.
# --------------------------------------------------------------------------------------------------


def curve_estimate(curve: CurveSamples, baseline: Baseline) -> dict[str, np.ndarray]:
    """Point estimates [K]: mean over seeds and prompts of kl, proxy, gold, and the paired gains
    proxy_gain = mean_p (proxy[p] - baseline.proxy[p]) (likewise gold_gain)."""
    _check_paired(curve, baseline)
    out = {name: getattr(curve, name).mean(axis=(0, 1)) for name in ("kl", "proxy", "gold")}
    out["proxy_gain"] = out["proxy"] - baseline.proxy.mean()
    out["gold_gain"] = out["gold"] - baseline.gold.mean()
    return out


def curve_replicates(curve: CurveSamples, baseline: Baseline, prompt_w: np.ndarray,
                     seed_w: np.ndarray) -> dict[str, np.ndarray]:
    """Replicates [B, K] of `curve_estimate`: replicate b is sum_s v_bs sum_p w_bp x[s, p, k] / (sum v · sum w).

    The baseline gets the same prompt weights (paired gains). With all weights 1 this is exactly
    `curve_estimate`.
    """
    _check_paired(curve, baseline)
    prompt_w, seed_w = np.asarray(prompt_w, dtype=np.float64), np.asarray(seed_w, dtype=np.float64)
    S, P, K = curve.kl.shape
    B = prompt_w.shape[0]
    if prompt_w.shape != (B, P):
        raise ValueError(f"prompt weights must have shape [B, {P}], got {prompt_w.shape}")
    if seed_w.shape != (B, S):
        raise ValueError(f"curve {curve.label!r} has {S} seed(s): seed weights must have shape [{B}, {S}], "
                         f"got {seed_w.shape}")
    w = prompt_w / prompt_w.sum(axis=1, keepdims=True)
    v = seed_w / seed_w.sum(axis=1, keepdims=True)
    out = {}
    for name in ("kl", "proxy", "gold"):
        x = getattr(curve, name)  # [S, P, K] -> one matrix product over prompts for all seeds and points
        per_seed = (w @ x.transpose(1, 0, 2).reshape(P, S * K)).reshape(B, S, K)
        out[name] = np.einsum("bs,bsk->bk", v, per_seed)
    out["proxy_gain"] = out["proxy"] - (w @ baseline.proxy)[:, None]
    out["gold_gain"] = out["gold"] - (w @ baseline.gold)[:, None]
    return out


# --------------------------------------------------------------------------------------------------
# 4. Percentile intervals, and what a NaN replicate means.
# --------------------------------------------------------------------------------------------------


def _quantile_sorted(v: np.ndarray, count: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantile (numpy's default) of the first `count` entries of each sorted column.

    v: [B, M] sorted along axis 0 (may hold ±inf); count, q: [M]. NaN where q is outside [0, 1] or
    count is 0. Interpolating towards an infinite neighbour gives that infinity.
    """
    bad = ~((q >= 0) & (q <= 1) & (count > 0))
    q, count = np.where(bad, 0.0, q), np.maximum(count, 1)
    h = q * (count - 1)
    i0 = np.floor(h).astype(np.int64)
    i1 = np.minimum(i0 + 1, count - 1)
    t = h - i0
    cols = np.arange(v.shape[1])
    v0, v1 = v[i0, cols], v[i1, cols]
    with np.errstate(invalid="ignore"):
        out = v0 + t * (v1 - v0)
    out = np.where((t == 0) | (v0 == v1), v0, out)
    out = np.where(np.isneginf(v0) & ~np.isposinf(v1), -np.inf, out)
    out = np.where(np.isposinf(v1) & ~np.isneginf(v0), np.inf, out)
    return np.where(bad, np.nan, out)


def interval(replicates: ArrayLike, level: float = LEVEL, *, nan: str = "unknown") -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 of `replicates` [B, ...]: (lo, hi), each of shape [...].

    A replicate is NaN when the statistic does not exist for that resample (a resampled curve never
    reaches a target, a fit is singular). With a the tail mass (1 - level)/2 and f the NaN fraction:
      nan="unknown" (default): a NaN could lie on either side. Each bound is the worst case over where
          the NaNs lie: lo is the (a - f)/(1 - f) quantile of the other replicates, hi the
          (1 - a)/(1 - f) quantile; both are NaN (not resolvable) when f > a.
      nan="high": a NaN lies above every value (e.g. "KL to reach a gold level" for a resample that
          never reaches it): lo is the a/(1 - f) quantile, NaN when f > 1 - a; hi the (1 - a)/(1 - f)
          quantile, NaN when f > a.
      nan="low": the mirror image.
    With no NaN all three are numpy's quantiles at a and 1 - a. Infinite replicates (a peak that does
    not exist, β ≤ 0, is at KL inf) are ordinary values: a bound may be inf.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if nan not in ("unknown", "high", "low"):
        raise ValueError(f"nan must be 'unknown', 'high' or 'low', got {nan!r}")
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.ndim == 0 or reps.shape[0] == 0:
        raise ValueError(f"replicates must have a replicate axis 0 with at least one entry, got shape {reps.shape}")
    shape = reps.shape[1:]
    flat = np.sort(reps.reshape(reps.shape[0], -1), axis=0)  # NaN sort last
    B = flat.shape[0]
    count = np.sum(~np.isnan(flat), axis=0)
    f = 1.0 - count / B
    a = (1.0 - level) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = 1.0 - f  # the share of replicates that are numbers
        if nan == "unknown":
            q_lo, q_hi = (a - f) / keep, (1.0 - a) / keep
        elif nan == "high":
            q_lo, q_hi = a / keep, (1.0 - a) / keep
        else:
            q_lo, q_hi = (a - f) / keep, (1.0 - a - f) / keep
    lo = _quantile_sorted(flat, count, q_lo).reshape(shape)
    hi = _quantile_sorted(flat, count, q_hi).reshape(shape)
    return lo, hi


def paired_gain_interval(values: ArrayLike, baseline: ArrayLike | None, B: int = 2000, rng=0,
                         level: float = LEVEL) -> dict:
    """A results row's mean and its gain over the initial policy on the same prompts, with intervals.

    values: [P] or [P, K] per-prompt means (one evaluation, or BoN's K values of n); baseline: [P] the
    initial policy's per-prompt means on the same prompts, or None for a quantity with no gain (KL).
    Returns mean, mean_lo, mean_hi and (with a baseline) gain, gain_lo, gain_hi: floats for [P], [K]
    arrays for [P, K]. The gain interval is paired: one set of prompt weights for values and baseline,
    so each prompt's own difficulty cancels out of the gain (issue 10: at n = 2 the absolute-gold SE
    the report used to show was ~10x the paired one).
    """
    x = np.asarray(values, dtype=np.float64)
    scalar = x.ndim == 1
    x = _as_array(x[:, None] if scalar else x, "values", 2)
    P = x.shape[0]
    w = resample_weights(P, B, rng)
    w /= w.sum(axis=1, keepdims=True)
    out = {"mean": x.mean(axis=0)}
    reps = {"mean": w @ x}
    if baseline is not None:
        base = _as_array(baseline, "baseline", 1)
        if base.size != P:
            raise ValueError(f"values cover {P} prompts and the baseline {base.size}; a paired gain needs the same prompts")
        out["gain"] = (x - base[:, None]).mean(axis=0)
        reps["gain"] = w @ (x - base[:, None])
    for name in list(out):
        out[f"{name}_lo"], out[f"{name}_hi"] = interval(reps[name], level)
    if scalar:
        out = {name: float(value[0]) for name, value in out.items()}
    return out


def accuracy_interval(correct: ArrayLike, prompts: ArrayLike, B: int = 2000, rng=0,
                      level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of a reward model's held-out pairwise accuracy, resampling prompts.

    correct: [pairs] each pair's score (1 ordered as the gold does, 0.5 a proxy tie, 0 wrong); prompts: [pairs]
    the prompt each pair was drawn from. Pairs of one prompt share its completions and its difficulty, so the
    prompt is the unit resampled (as everywhere in this module): a replicate weights each prompt by its
    bootstrap count, accuracy_b = Σ_g c_bg·(correct pairs of g) / Σ_g c_bg·(pairs of g). With one pair per
    prompt this is the plain bootstrap of pairs. (NaN, NaN) for no pairs.
    """
    correct = np.asarray(correct, dtype=np.float64).ravel()
    groups = np.asarray(prompts).ravel()
    if correct.shape != groups.shape:
        raise ValueError(f"correct and prompts differ in length: {correct.size} vs {groups.size}")
    if not correct.size:
        return math.nan, math.nan
    _, index = np.unique(groups, return_inverse=True)
    sums, sizes = np.bincount(index, weights=correct), np.bincount(index).astype(np.float64)
    counts = resample_weights(sums.size, B, rng)
    lo, hi = interval((counts @ sums) / (counts @ sizes), level)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# 5. Gao et al. eq. 1-2 refitted on every replicate at once.
# --------------------------------------------------------------------------------------------------


def fit_replicates(kl: ArrayLike, gain: ArrayLike, form: str, *, weights: ArrayLike | None = None,
                   min_points: int = 3) -> dict[str, np.ndarray]:
    """Least-squares fits of R(d) = d(α - β d) (bon) or d(α - β log d) (rl), d = sqrt(KL), per replicate.

    kl, gain: [..., K] (replicates of a curve's mean KL and gold gain). Returns alpha, beta, peak_kl,
    peak_gold, each [...]. The same least squares as `fits.fit_gold_vs_kl`, unweighted unless `weights`
    ([K], fixed across replicates) is given: points with a non-finite value or a negative KL are
    dropped, and a replicate is NaN where fits.py would refuse (fewer than `min_points` usable points,
    fewer than 2 with KL > 0, or columns that cannot separate α from β). A d = 0 point is a zero row of
    the design, so it changes nothing here; it only used to count as a residual degree of freedom in
    fits.py's standard errors, which these refits replace. peak_kl = d*² with d* = α/2β (bon) or
    exp(α/β - 1) (rl); inf where β ≤ 0 (no peak: gold still rising) or where exp overflows;
    peak_gold = α²/4β (bon) or β d* (rl), inf where β ≤ 0. A bon fit with α ≤ 0 < β falls from the start:
    its maximum on d ≥ 0 is the initial policy, peak_kl = peak_gold = 0 (fits._peak).
    """
    if form not in FORMS:
        raise ValueError(f"unknown functional form {form!r}; expected one of {FORMS}")
    kl, y = np.broadcast_arrays(np.asarray(kl, dtype=np.float64), np.asarray(gain, dtype=np.float64))
    ok = np.isfinite(kl) & np.isfinite(y) & (kl >= 0)
    d = np.sqrt(np.where(ok, kl, 0.0))
    y = np.where(ok, y, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = d * d if form == "bon" else np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    x1, x2 = d, -g  # zero rows where not ok (d = 0 there), so dropped points add nothing to the sums
    w = np.ones(kl.shape[-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    s11, s22, s12 = (np.sum(w * a * b, axis=-1) for a, b in ((x1, x1), (x2, x2), (x1, x2)))
    t1, t2 = np.sum(w * x1 * y, axis=-1), np.sum(w * x2 * y, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # Collinearity test on the column-normalized Gram matrix [[1, c], [c, 1]], whose determinant is
        # 1 - c². fits.py's SVD refuses only near exact collinearity (1 - |c| below ~1e-20); the normal
        # equations solved here lose about half the digits, so they refuse from 1 - c² < 1e-12 on: KLs
        # that nearly collinear cannot separate α from β in any case.
        separable = (s11 > 0) & (s22 > 0) & (1.0 - s12 * s12 / (s11 * s22) > 1e-12)
        det = s11 * s22 - s12 * s12
        alpha = (s22 * t1 - s12 * t2) / det
        beta = (s11 * t2 - s12 * t1) / det
    usable = (ok.sum(axis=-1) >= min_points) & ((ok & (d > 0)).sum(axis=-1) >= 2) & separable
    alpha, beta = np.where(usable, alpha, np.nan), np.where(usable, beta, np.nan)
    peak_kl, peak_gold = _peaks(form, alpha, beta)
    return {"alpha": alpha, "beta": beta, "peak_kl": peak_kl, "peak_gold": peak_gold}


def fit_quality(kl: ArrayLike, gain: ArrayLike, gain_reps: ArrayLike, form: str, alpha: float, beta: float) -> dict:
    """How well R(d) = d(α − β d) (bon) or d(α − β log d) (rl) fits one curve's points, over those with KL > 0
    (a d = 0 point lies on every curve): rmse of the residuals; r2 = 1 − Σ residual² / Σ (gain − mean gain)²;
    se_ratio = rmse / sqrt(mean SE²), with each point's SE the standard deviation of its prompt-resample
    replicates (gain_reps [B, K]). se_ratio near 1: the form misses the points by about their own noise; well
    above 1: by more, a shape the form does not have. Descriptive, not a test: points of one curve share
    prompts (and, for best-of-n, one draw), so their residuals are correlated."""
    kl, gain = np.asarray(kl, dtype=np.float64), np.asarray(gain, dtype=np.float64)
    reps = np.asarray(gain_reps, dtype=np.float64)
    ok = np.isfinite(kl) & np.isfinite(gain) & (kl > 0) & np.all(np.isfinite(reps), axis=0)
    out = {"rmse": math.nan, "r2": math.nan, "se_ratio": math.nan, "fit_points": int(ok.sum())}
    if not ok.any() or not (math.isfinite(alpha) and math.isfinite(beta)):
        return out
    d = np.sqrt(kl[ok])
    predicted = d * (alpha - beta * (d if form == "bon" else np.log(d)))
    resid = gain[ok] - predicted
    rmse = float(np.sqrt(np.mean(resid**2)))
    spread = float(np.sum((gain[ok] - gain[ok].mean()) ** 2))
    se = float(np.sqrt(np.mean(reps[:, ok].var(axis=0, ddof=1)))) if reps.shape[0] > 1 else math.nan
    out.update(rmse=rmse, r2=1.0 - float(resid @ resid) / spread if spread > 0 else math.nan,
               se_ratio=rmse / se if se > 0 else math.nan)
    return out


def _peaks(form: str, alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KL and gold at the fitted maximum (fits._peak, vectorised); inf where β ≤ 0, NaN where α, β are."""
    rising = beta <= 0
    safe_beta = np.where(rising | np.isnan(beta), 1.0, beta)
    with np.errstate(over="ignore", invalid="ignore"):
        if form == "bon":  # a vertex at d ≤ 0 (α ≤ 0) is outside d ≥ 0: the maximum there is d = 0, gold 0
            d_star = np.maximum(alpha / (2 * safe_beta), 0.0)
            peak_gold = np.where(alpha > 0, alpha * alpha / (4 * safe_beta), 0.0)
        else:
            d_star = np.exp(alpha / safe_beta - 1)  # overflows to inf for a peak astronomically far out
            peak_gold = safe_beta * d_star
        peak_kl = d_star * d_star
    peak_kl, peak_gold = np.where(rising, np.inf, peak_kl), np.where(rising, np.inf, peak_gold)
    return np.where(np.isnan(beta), np.nan, peak_kl), np.where(np.isnan(beta), np.nan, peak_gold)


# --------------------------------------------------------------------------------------------------
# 6. Matched comparisons: one curve's value where another quantity first reaches a target.
# --------------------------------------------------------------------------------------------------


def along(x: ArrayLike, y: ArrayLike, level: ArrayLike) -> np.ndarray:
    """y where x FIRST reaches `level` along the curve, linear between points; NaN if never (report.along).

    x, y: [..., K] in the curve's own order (n or step); level: a scalar or [...] (broadcast against the
    leading axes). Points where x or y is not finite are skipped, as if never measured. Walking from
    the first point: if it is already at or beyond the level, only an exact hit counts (relative
    tolerance 1e-9, absolute 1e-12) — a curve that starts above a level never "reaches" it; otherwise
    the first point with x >= level (within the same tolerance) and the point before it are interpolated
    linearly.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    level = np.asarray(level, dtype=np.float64)
    lead = np.broadcast_shapes(x.shape[:-1], y.shape[:-1], level.shape)
    x, y = np.broadcast_to(x, lead + x.shape[-1:]), np.broadcast_to(y, lead + y.shape[-1:])
    level = np.broadcast_to(level, lead)[..., None]
    ok = np.isfinite(x) & np.isfinite(y)
    # Move the usable points to the front of each curve, keeping their order, so "the point before"
    # is the previous usable one; the rest become NaN, which never compares >= level.
    order = np.argsort(~ok, axis=-1, kind="stable")
    x = np.where(np.take_along_axis(ok, order, -1), np.take_along_axis(x, order, -1), np.nan)
    y = np.take_along_axis(y, order, -1)
    # A point within rounding of the level reaches it: a resampled mean of per-prompt KLs that are all exactly
    # log n − (n−1)/n comes out an ulp either side of the level, and must not miss its own curve's end.
    tolerance = np.maximum(1e-9 * np.abs(level), 1e-12)
    with np.errstate(invalid="ignore"):
        reached = x >= level - tolerance
    first = np.argmax(reached, axis=-1)[..., None]
    any_reached = reached.any(axis=-1)
    x1, y1 = np.take_along_axis(x, first, -1)[..., 0], np.take_along_axis(y, first, -1)[..., 0]
    prev = np.maximum(first - 1, 0)
    x0, y0 = np.take_along_axis(x, prev, -1)[..., 0], np.take_along_axis(y, prev, -1)[..., 0]
    lev = level[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.clip((lev - x0) / (x1 - x0), 0.0, 1.0)
        between = y0 + t * (y1 - y0)
        exact = np.abs(x[..., 0] - lev) <= np.maximum(1e-9 * np.maximum(np.abs(x[..., 0]), np.abs(lev)), 1e-12)
    at_start = first[..., 0] == 0
    out = np.where(at_start, np.where(exact, y[..., 0], np.nan), between)
    return np.where(any_reached & np.isfinite(lev), out, np.nan)


COMPARISONS = {
    # name: (x, y, target keyword, whether more of y is better, how a NaN replicate of a or b reads)
    "gold_at_kl": ("kl", "gold_gain", "kl_target", True, "unknown"),  # gold gain at a matched KL
    "kl_at_proxy": ("proxy_gain", "kl", "proxy_target", False, "high"),  # KL spent for a proxy gain
    # gold gain where the proxy gain first reaches the target: how much of a matched proxy gain is real
    "gold_at_proxy": ("proxy_gain", "gold_gain", "proxy_target", True, "unknown"),
    "kl_to_gold": ("gold_gain", "kl", "gold_target", False, "high"),  # KL spent to reach a gold gain
}


def to_axis(values, name: str):
    """Where a curve is interpolated: KL on d = sqrt(KL), the axis of Gao et al.'s figures and forms (both
    R(d) = d(α − β d) and d(α − β log d) start out linear in d), every other quantity as it is. Linear in
    KL itself would bend every curve's first segment: between best-of-1 (KL 0) and best-of-2 (KL 0.19) a
    gain that grows like sqrt(KL) would be read as growing like KL, half of it at a tenth of the KL."""
    values = np.asarray(values, dtype=np.float64)
    return np.sqrt(np.clip(values, 0.0, None)) if name == "kl" else values


def from_axis(values, name: str):
    values = np.asarray(values, dtype=np.float64)
    return values**2 if name == "kl" else values


def along_axes(x_values, y_values, level, x: str, y: str) -> np.ndarray:
    """`along` with KL on its interpolation axis (to_axis) as x, as y, or both."""
    return from_axis(along(to_axis(x_values, x), to_axis(y_values, y), to_axis(level, x)), y)


def _compare(est_a: dict, rep_a: dict, est_b: dict, rep_b: dict, targets: dict) -> dict:
    out: dict = {"estimate": {}, "replicates": {}}
    for name, (x, y, key, _, _) in COMPARISONS.items():
        target = targets.get(key)
        target = math.nan if target is None else float(target)
        for tag, est, rep in (("a", est_a, rep_a), ("b", est_b, rep_b)):
            out["estimate"][f"{name}_{tag}"] = float(along_axes(est[x], est[y], target, x, y))
            out["replicates"][f"{name}_{tag}"] = along_axes(rep[x], rep[y], target, x, y)
        for part in ("estimate", "replicates"):
            out[part][f"{name}_diff"] = out[part][f"{name}_a"] - out[part][f"{name}_b"]  # NaN if either is
    return out


def compare_curves(a: CurveSamples, b: CurveSamples, baseline: Baseline, prompt_w: np.ndarray,
                   seed_w_a: np.ndarray, seed_w_b: np.ndarray, *, kl_target: float | None,
                   proxy_target: float | None, gold_target: float | None) -> dict:
    """Matched comparisons of curve a against curve b, paired: both curves use the same prompt weights.

    Returns {"estimate": {name: float}, "replicates": {name: [B]}} for
        gold_at_kl_a, _b, _diff     gold gain at KL kl_target (interpolated along each curve)
        kl_at_proxy_a, _b, _diff    KL where the proxy gain first reaches proxy_target
        gold_at_proxy_a, _b, _diff  gold gain where the proxy gain first reaches proxy_target
        kl_to_gold_a, _b, _diff     KL where the gold gain first reaches gold_target
    with diff = a - b (NaN where either is). Each replicate resamples KL together with gold and proxy,
    so an RL curve's KL uncertainty is inside every interval; seed weights bring in the seed spread.
    A target of None gives NaN.
    """
    rep_a = curve_replicates(a, baseline, prompt_w, seed_w_a)
    rep_b = curve_replicates(b, baseline, prompt_w, seed_w_b)
    targets = {"kl_target": kl_target, "proxy_target": proxy_target, "gold_target": gold_target}
    return _compare(a.for_comparison(curve_estimate(a, baseline)), a.for_comparison(rep_a),
                    b.for_comparison(curve_estimate(b, baseline)), b.for_comparison(rep_b), targets)


# --------------------------------------------------------------------------------------------------
# 7. Verdicts: a difference is a finding only when its interval excludes 0.
# --------------------------------------------------------------------------------------------------


def verdict(diff: float, lo: float, hi: float, prompts: int, level: float = LEVEL, *,
            higher_is_better: bool = True) -> tuple[str, float]:
    """("ahead" | "behind" | "unresolved", prompts_needed) for a difference a - b with interval [lo, hi].

    "ahead" when the interval lies above 0 (below 0 when higher_is_better=False, e.g. KL spent for the
    same gain), "behind" when on the other side, "unresolved" when it contains 0 or a bound is NaN.
    prompts_needed (NaN once resolved): interval widths shrink as 1/sqrt(prompts), so the half-width
    (hi - lo)/2 falls to |diff| at prompts · (half-width / |diff|)², rounded up — the total prompt count
    at which this difference would sit at the edge of a `level` interval (about an even chance to
    resolve; twice as many give roughly 80%). inf when diff == 0, NaN when a bound is not finite.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if prompts < 1:
        raise ValueError(f"prompts must be >= 1, got {prompts}")
    if math.isnan(diff) or math.isnan(lo) or math.isnan(hi):
        return "unresolved", math.nan
    if lo > 0 or hi < 0:
        return ("ahead" if (lo > 0) == higher_is_better else "behind"), math.nan
    if math.isinf(lo) or math.isinf(hi):
        return "unresolved", math.nan
    if diff == 0:
        return "unresolved", math.inf
    return "unresolved", float(math.ceil(prompts * ((hi - lo) / 2 / abs(diff)) ** 2 - 1e-9))
