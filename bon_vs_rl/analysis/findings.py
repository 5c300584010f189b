"""What the report states, built on statistics.py: one panel analysed from one prompt resampling, its peaks,
and the comparisons across proxies and between points.

    analyse                             every curve of a panel: points, fits, matched comparisons (`Analysis`)
    measured_peak, fitted_peak_status   the largest measured gold gain and the fall after it; a fit's peak
    peak_shares, open_reason            why a fitted peak's interval is open (failed / no peak / overflow)
    peak_power                          the fall `measured_peak` would resolve at this sample size (simulated)
    trend                               a coefficient against log data size across proxies, two intervals
    compare_proxies                     one proxy's curve against another's (or its members' average), paired
    compare_points                      one curve's point against another's (distilled policy vs BoN at n)

The resampling, the intervals and their coverage, and the verdict rule are statistics.py's (its docstring).
numpy only (scipy's t quantile is imported inside `trend`): importing it is fast.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from bon_vs_rl.analysis.statistics import (
    COMPARISONS,
    LEVEL,
    QUANTITIES,
    Baseline,
    CurveSamples,
    _check_paired,
    _compare,
    along,
    along_axes,
    curve_estimate,
    curve_replicates,
    fit_quality,
    fit_replicates,
    interval,
    resample_weights,
    seed_weights,
    verdict,
)

# --------------------------------------------------------------------------------------------------
# 8. One panel: every curve's points and fit, every pair's matched comparisons, from one resampling.
# --------------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    """Everything `analyse` measured for one panel (curves on one policy, proxy, gold and prompt set).

    points:      label -> {quantity: [K], quantity_lo, quantity_hi} for QUANTITIES
    fits:        label -> {alpha, beta, peak_kl, peak_gold (point estimates, from the unweighted fit of
                 gold_gain against KL), each with _lo/_hi, no_peak (share of replicates with β ≤ 0),
                 failed (share of replicates where the fit was not possible), overflow (share whose RL
                 peak is too far out for a float): `peak_shares`; rmse, r2, se_ratio, fit_points:
                 statistics.fit_quality}
    comparisons: one row per pair and quantity (COMPARISONS): curve_a, curve_b (labels), quantity,
                 target, a/a_lo/a_hi, b/b_lo/b_hi, diff/diff_lo/diff_hi (a - b), verdict (of a against
                 b), prompts_needed, better ("higher" or "lower": which way of the quantity is ahead)
    replicates:  label -> {quantity: [B, K]} (e.g. for bands on a figure)
    pair_replicates: (label a, label b) -> {comparison_a/_b/_diff: [B]} (see `compare_curves`)
    fit_replicates: label -> {alpha, beta, peak_kl, peak_gold: [B]} (the refits behind `fits`' intervals)
    peaks:       label -> `measured_peak` of the curve: its largest measured gold gain and the fall after it
    walks:       label -> (estimate, replicates) as comparisons walk the curve (CurveSamples.for_comparison)
    prompt_w:    [B, P] the prompt resamples every statistic here was computed on
    inputs, baseline: the CurveSamples (label -> curve) and Baseline analysed (e.g. for `peak_power`)
    """

    level: float
    prompts: int
    B: int
    points: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)
    replicates: dict = field(default_factory=dict)
    pair_replicates: dict = field(default_factory=dict)
    fit_replicates: dict = field(default_factory=dict)
    peaks: dict = field(default_factory=dict)
    walks: dict = field(default_factory=dict)
    prompt_w: np.ndarray | None = None
    inputs: dict = field(default_factory=dict)
    baseline: Baseline | None = None

    powers: dict = field(default_factory=dict)  # peak_power's results, kept: several report parts ask for them

    def peak_power(self, label: str, **kwargs) -> dict:
        """`peak_power` of one curve: its seed-averaged per-prompt gold gains at its trusted points."""
        key = (label, tuple(sorted(kwargs.items())))
        if key not in self.powers:
            curve = self.inputs[label]
            gain = curve.gold.mean(axis=0) - self.baseline.gold[:, None]
            self.powers[key] = peak_power(gain[:, curve.trusted], curve.kl.mean(axis=(0, 1))[curve.trusted], **kwargs)
        return self.powers[key]


def _largest_reached(candidates: np.ndarray, est: list[dict], reps: list[dict], x: str, need: float) -> float:
    """The largest candidate level that every curve's point estimate reaches along x and that its
    replicates reach in at least a share `need` (so `interval` can bound the statistic there)."""
    # Only positive levels: a comparison "at KL 0" or "at proxy gain 0" compares the initial policy with itself.
    candidates = np.unique(candidates[np.isfinite(candidates) & (candidates > 0)])[::-1]
    if not candidates.size:
        return math.nan
    reached = np.ones(candidates.size, dtype=bool)
    for e, r in zip(est, reps):
        reached &= np.isfinite(along(e[x], e[x], candidates))
        share = np.isfinite(along(r[x][None], r[x][None], candidates[:, None])).mean(axis=1)
        reached &= share >= need
    return float(candidates[np.argmax(reached)]) if reached.any() else math.nan


def analyse(curves: list[CurveSamples], baseline: Baseline, *, B: int = 2000, seed: int = 0,
            level: float = LEVEL, kl_target: float | None = None, proxy_target: float | None = None,
            gold_target: float | None = None, widen: str = "t", prompt_w: np.ndarray | None = None) -> Analysis:
    """Points, fits and pairwise matched comparisons of one panel, with `level` intervals and verdicts.

    One set of B prompt resamples is shared by the baseline and every curve (gains and differences are
    paired); each curve gets its own seed weights (its seeds are separate training runs). `prompt_w` ([B, P]
    prompt counts) gives the resamples instead: panels of several proxies measured on the same prompts
    analysed with the same ones are paired with each other too (`compare_proxies`, `trend`). The seed's
    own draw of prompt resamples is made either way, so every seed weight is the same as without it.

    Targets (the same for every pair when given):
      kl_target:    default, per pair, the largest positive KL among both curves' measured (point-estimate) KLs
                    that both point estimates reach and both curves' replicates reach in at least
                    1 - (1 - level)/2 of resamples, so the interval at it is defined.
      proxy_target: default, per pair, the same rule on the proxy gain.
      gold_target:  default, per pair, half the smaller point-estimate peak (largest measured) gold
                    gain; NaN when that is not positive. It is a fixed number taken from the point
                    estimates, not re-chosen in each resample: the interval is for "the KL to reach this
                    gold gain", not for the choice of level.
    """
    if not curves:
        raise ValueError("analyse needs at least one curve")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    labels = [c.label for c in curves]
    if len(set(labels)) != len(labels):
        raise ValueError(f"curve labels must be unique, got {labels}")
    for c in curves:
        _check_paired(c, baseline)
    P = baseline.proxy.size
    gen = np.random.default_rng(seed)
    drawn = resample_weights(P, B, gen)
    if prompt_w is None:
        prompt_w = drawn
    elif np.shape(prompt_w) != (B, P):
        raise ValueError(f"prompt_w must have shape [B, P] = [{B}, {P}], got {np.shape(prompt_w)}")
    result = Analysis(level=level, prompts=P, B=B, prompt_w=np.asarray(prompt_w, dtype=np.float64),
                      inputs={c.label: c for c in curves}, baseline=baseline)
    est, reps = {}, {}
    for c in curves:
        est[c.label] = curve_estimate(c, baseline)
        reps[c.label] = curve_replicates(c, baseline, prompt_w, seed_weights(c.seeds, B, gen, widen=widen))
        point = dict(est[c.label])
        for q in QUANTITIES:
            point[f"{q}_lo"], point[f"{q}_hi"] = interval(reps[c.label][q], level)
        result.points[c.label] = point
        result.replicates[c.label] = reps[c.label]

        # Fits from the trusted points only (CurveSamples.trusted); targets and comparisons from them too,
        # walked from the reference where the curve starts there (CurveSamples.from_reference).
        trusted_est, trusted_reps = c.only_trusted(est[c.label]), c.only_trusted(reps[c.label])
        est[c.label], reps[c.label] = c.for_comparison(est[c.label]), c.for_comparison(reps[c.label])
        fit = {k: float(v) for k, v in fit_replicates(trusted_est["kl"], trusted_est["gold_gain"], c.form).items()}
        fit_reps = fit_replicates(trusted_reps["kl"], trusted_reps["gold_gain"], c.form)
        for k, r in fit_reps.items():
            fit[f"{k}_lo"], fit[f"{k}_hi"] = (float(v) for v in interval(r, level))
        fit.update(peak_shares(fit_reps))  # no_peak, failed, overflow: why a peak interval may be open
        fit.update(fit_quality(trusted_est["kl"], trusted_est["gold_gain"], trusted_reps["gold_gain"], c.form,
                               fit["alpha"], fit["beta"]))
        result.fits[c.label] = {"form": c.form, **fit}
        result.fit_replicates[c.label] = fit_reps
        result.peaks[c.label] = measured_peak(trusted_est, trusted_reps, level)
        result.walks[c.label] = (est[c.label], reps[c.label])

    need = 1.0 - (1.0 - level) / 2.0
    for a, b in itertools.combinations(curves, 2):
        e, r = [est[a.label], est[b.label]], [reps[a.label], reps[b.label]]
        targets = {
            "kl_target": kl_target if kl_target is not None
            else _largest_reached(np.concatenate([x["kl"] for x in e]), e, r, "kl", need),
            "proxy_target": proxy_target if proxy_target is not None
            else _largest_reached(np.concatenate([x["proxy_gain"] for x in e]), e, r, "proxy_gain", need),
            "gold_target": gold_target if gold_target is not None else _half_smaller_peak(e),
        }
        pair = _compare(e[0], r[0], e[1], r[1], targets)
        result.pair_replicates[(a.label, b.label)] = pair["replicates"]
        for name, (_, _, key, higher, nan_reads) in COMPARISONS.items():
            row = {"curve_a": a.label, "curve_b": b.label, "quantity": name, "target": float(targets[key])}
            for part in ("a", "b", "diff"):
                reps_part = pair["replicates"][f"{name}_{part}"]
                row[part] = pair["estimate"][f"{name}_{part}"]
                lo, hi = interval(reps_part, level, nan=nan_reads if part != "diff" else "unknown")
                row[f"{part}_lo"], row[f"{part}_hi"] = float(lo), float(hi)
            row["verdict"], row["prompts_needed"] = verdict(row["diff"], row["diff_lo"], row["diff_hi"], P, level,
                                                            higher_is_better=higher)
            row["better"] = "higher" if higher else "lower"
            result.comparisons.append(row)
    return result


def _half_smaller_peak(est: list[dict]) -> float:
    """Half the smaller of the curves' largest measured gold gains (NaN if a curve has no measured point)."""
    peaks = [float(np.nanmax(e["gold_gain"])) if np.isfinite(e["gold_gain"]).any() else math.nan for e in est]
    smaller = math.nan if any(math.isnan(p) for p in peaks) else min(peaks)
    return smaller / 2 if smaller > 0 else math.nan


# --------------------------------------------------------------------------------------------------
# 9. A peak a reader can see: the largest measured gold gain, and how far gold falls after it.
# --------------------------------------------------------------------------------------------------


def measured_peak(est: dict[str, np.ndarray], reps: dict[str, np.ndarray], level: float = LEVEL) -> dict:
    """The curve's largest measured gold gain, and how far below its best earlier point the last point lies.

    est: [K] and reps: [B, K] per quantity (trusted points; non-finite points are skipped). No functional
    form: `best` = max_k gold_gain[k] (at `best_kl`, point `best_point`), with the percentile interval of each
    replicate's own maximum (a maximum of noisy points leans high: descriptive, not a test); and
        fall = max over the earlier points k of (gold_gain[k] − gold_gain[last])
    (last: the largest n, the last step; negative when the last point is the highest). A maximum over
    points picks up noise, so a curve that rises to a plateau would look as if it fell whenever one of its
    tied points came out high: a plain percentile interval called 16% of such plateaus "falling" (independent
    noise at every point, 40 prompts). `fall`'s interval is therefore simultaneous over the earlier
    points (max-type bootstrap): with D*_k the replicate's fall from point k minus the estimate's,
    fall_lo = fall − q(1 − a; max_k D*_k) and fall_hi = fall + q(1 − a; max_k −D*_k), a = (1 − level)/2,
    which holds for every earlier point at once and so for their maximum. `resolved` (gold really fell after
    its peak) when fall_lo > 0. Measured on best-of-n as it is drawn (tests/test_statistics.py, slow tier:
    400 studies of one draw of 256 samples on each of 76 prompts, every n estimated from that draw, so the
    estimates are correlated across n and the last point's SE, ~0.05, is ~20 times n = 2's): 1.5% of plateaus
    called resolved; a true fall of 0.12 found in 54% of studies and of 0.27 in 99%; the fall's interval
    covers the true fall 96-98.5% of the time (simultaneous: conservative) and best's the true best 92-94%.
    How large a fall a given curve could resolve: `peak_power`.
    best_replicates, fall_replicates: the [B] replicates (fall's uncentered, for comparisons).
    """
    gold, kl = np.asarray(est["gold_gain"], dtype=np.float64), np.asarray(est["kl"], dtype=np.float64)
    ok = np.isfinite(gold) & np.isfinite(kl)
    B = np.shape(reps["gold_gain"])[0]
    out = {"best": math.nan, "best_kl": math.nan, "best_point": -1, "last_kl": math.nan, "fall": math.nan}
    for name in ("best", "fall"):
        out[f"{name}_lo"] = out[f"{name}_hi"] = math.nan
        out[f"{name}_replicates"] = np.full(B, np.nan)
    out["resolved"] = False
    if not ok.any():
        return out
    points = np.flatnonzero(ok)
    best_point, last = int(points[np.argmax(gold[points])]), int(points[-1])
    rep_gold = np.asarray(reps["gold_gain"], dtype=np.float64)[:, points]
    with np.errstate(invalid="ignore"):
        rep_best = np.nanmax(np.where(np.isfinite(rep_gold), rep_gold, -np.inf), axis=1)
    out.update(best=float(gold[best_point]), best_kl=float(kl[best_point]), best_point=best_point,
               last_kl=float(kl[last]))
    out["best_replicates"] = np.where(np.isfinite(rep_best), rep_best, np.nan)
    out["best_lo"], out["best_hi"] = (float(v) for v in interval(out["best_replicates"], level))
    earlier = points[:-1]
    if earlier.size:
        falls = gold[earlier] - gold[last]  # [k]
        rep_falls = reps["gold_gain"][:, earlier] - reps["gold_gain"][:, [last]]  # [B, k]
        centred = rep_falls - falls
        a = (1.0 - level) / 2.0
        with np.errstate(invalid="ignore"):
            above = np.quantile(np.max(centred, axis=1), 1 - a) if np.isfinite(centred).all() else math.nan
            below = np.quantile(np.max(-centred, axis=1), 1 - a) if np.isfinite(centred).all() else math.nan
        fall = float(falls.max())
        out.update(fall=fall, fall_lo=float(fall - above), fall_hi=float(fall + below),
                   fall_replicates=np.max(rep_falls, axis=1))
        out["resolved"] = bool(out["fall_lo"] > 0)
    return out


def peak_power(gain: ArrayLike, kl: ArrayLike, *, studies: int = 400, B: int = 500, seed: int = 0,
               level: float = LEVEL, fall: float = 0.0) -> dict:
    """How large a fall after the peak `measured_peak` would resolve at this curve's own sample size: the power
    of "no resolved peak", simulated from the curve's own per-prompt estimates.

    gain: [P, K] per-prompt gold gains (over the paired baseline) at the curve's K trusted points; kl: [K].
    Best-of-n's per-prompt estimates at every n come from one draw, so they are correlated across n and their
    spread grows many-fold with n; resampling whole prompts (rows of `gain`) keeps both. The simulated world
    is this curve with its last point moved to the highest earlier mean (no fall: a plateau at the top), and
    a fall of δ lowers that last point by δ. Each of `studies` studies draws P prompts with replacement from
    that world and runs `measured_peak` on them with B prompt resamples. Lowering the last point by δ adds δ
    to the fall from every earlier point, in the estimate and in every resample alike, so it adds exactly δ to
    the simultaneous lower bound: a study resolves a fall of δ when δ > −fall_lo of its plateau, and one set
    of plateau studies gives the whole power curve (`resolved_above`: those thresholds, sorted).
    Returns fall_50 and fall_80 (the true falls resolved in half and four in five of the studies),
    false_peak (the plateau's own share called resolved: should stay below (1 − level)/2), studies, prompts.
    `fall` plants that fall in the world instead of none (the thresholds then drop by exactly `fall`, and
    false_peak is the share of studies that resolve it: the power at that fall, computed the long way).
    Seeds: pass a seed-averaged `gain`; the seed spread is then left out (the power is optimistic for RL
    settings of several seeds). NaN values with fewer than two finite points.
    """
    gain, kl = np.asarray(gain, dtype=np.float64), np.asarray(kl, dtype=np.float64)
    if gain.ndim != 2 or gain.shape[1] != kl.size:
        raise ValueError(f"peak_power needs gain [P, K] and kl [K]; got {gain.shape} and {kl.shape}")
    ok = np.isfinite(kl) & np.all(np.isfinite(gain), axis=0)
    gain, kl = gain[:, ok], kl[ok]
    P, K = gain.shape
    out = {"fall_50": math.nan, "fall_80": math.nan, "false_peak": math.nan, "studies": studies, "prompts": P,
           "resolved_above": np.full(studies, np.nan)}
    if K < 2 or P < 2:
        return out
    world = gain.copy()
    means = world.mean(axis=0)
    world[:, -1] += means[:-1].max() - means[-1] - fall  # the last point `fall` below the highest earlier mean
    gen = np.random.default_rng(seed)
    # One set of inner resample counts serves every study: it is drawn independently of the data, so reusing
    # it correlates the studies' Monte Carlo error a little but biases nothing, and saves a multinomial each.
    inner = resample_weights(P, B, gen) / P
    thresholds = np.empty(studies)
    for s in range(studies):
        x = world[gen.integers(0, P, P)]
        est, reps = {"kl": kl, "gold_gain": x.mean(axis=0)}, {"gold_gain": inner @ x}
        thresholds[s] = -measured_peak(est, reps, level)["fall_lo"]
    thresholds.sort()
    out.update(fall_50=float(np.quantile(thresholds, 0.5)), fall_80=float(np.quantile(thresholds, 0.8)),
               false_peak=float(np.mean(thresholds < 0)), resolved_above=thresholds)
    return out


def fitted_peak_status(fit: dict, kl_max: float) -> str:
    """Where a fitted peak (Gao et al.'s form, `analyse`'s fits) stands against the measured range [0, kl_max]:
    "at the start" — its interval is [0, 0]: every resample's gold falls from the initial policy on (α ≤ 0 < β);
    "inside" — its 95% interval is bounded and lies within the measured KL; "extrapolated" — bounded, but
    (partly) beyond it; "open" — the interval has no finite upper end (`open_reason` says why)."""
    lo, hi = fit.get("peak_kl_lo", math.nan), fit.get("peak_kl_hi", math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "open"
    if hi == 0:
        return "at the start"
    return "inside" if hi <= kl_max else "extrapolated"


def peak_shares(fit_reps: dict) -> dict[str, float]:
    """Why refitted peaks are not finite numbers, as shares of the replicates of `fit_replicates`: failed (the
    fit was not possible: NaN), no_peak (β ≤ 0: gold still rising), overflow (β > 0, but the RL peak
    exp(α/β − 1) is too far out for a float: inf)."""
    beta, peak_kl = np.asarray(fit_reps["beta"], dtype=np.float64), np.asarray(fit_reps["peak_kl"], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return {"failed": float(np.mean(np.isnan(beta))), "no_peak": float(np.mean(beta <= 0)),
                "overflow": float(np.mean((beta > 0) & np.isinf(peak_kl)))}


def open_reason(fit: dict) -> str:
    """Words for why a fitted peak's interval is open above, from `peak_shares`' keys in `fit` (largest first)."""
    words = {"failed": "the refit failed", "no_peak": "no peak (β ≤ 0, gold still rising)",
             "overflow": "a peak too far out to compute (exp(α/β − 1) overflows)"}
    parts = sorted(((fit.get(k, 0.0), k) for k in words if fit.get(k, 0.0) > 0), key=lambda x: -x[0])
    if not parts:
        return "the resamples' peaks are unbounded"
    text = [f"{words[k]} in {share:.0%}" + (" of resamples" if i == 0 else "") for i, (share, k) in enumerate(parts)]
    return "; ".join(text)


# --------------------------------------------------------------------------------------------------
# 10. Across proxies: a coefficient against log data size, and one proxy's curve against another's.
# --------------------------------------------------------------------------------------------------


def _slopes(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and intercept of y [..., J] on x [J] along the last axis (NaN where y is)."""
    xc = x - x.mean()
    slope = (y * xc).sum(axis=-1) / (xc * xc).sum()
    return slope, y.mean(axis=-1) - slope * x.mean()


def trend(x: ArrayLike, values: ArrayLike, replicates: ArrayLike, level: float = LEVEL) -> dict:
    """The line values ≈ intercept + slope·x across J proxies (Gao et al. 2022 fig. 3-4: a coefficient of the
    gold-vs-KL form against log RM data size), with two intervals for the slope.

    x: [J] (e.g. log pairs); values: [J] the proxies' point estimates; replicates: [B, J] the same proxies
    refitted on each of B prompt resamples, shared by all of them (analyse(prompt_w=...)), so the slope's
    replicate b is the slope through the J coefficients of resample b:
      slope_lo, slope_hi      its percentile interval: how precisely these J trained proxies were measured on
                              these prompts, each proxy held fixed. A proxy is one training run; another seed or
                              data order would land it elsewhere, which no resampling of prompts can see.
      slope_t_lo, slope_t_hi  the t interval from the proxies' own scatter about the line, on J − 2 degrees
                              of freedom (and measurement noise, once more); NaN with J ≤ 2, where the line goes
                              through every point. It counts training luck only as far as that luck is
                              independent from proxy to proxy: proxies trained on nested subsets of one labelled
                              draw share it, and shared luck partly looks like slope.
    Neither interval covers redrawing the labelled pairs (a new draw of comparisons to train every proxy on).
    Coverage of both, by simulation (tests/test_statistics.py, 400 studies of 5 proxies on 40 prompts,
    `python -m pytest -s tests/test_statistics.py -k "training_scatter or training_luck"` prints it): with every
    proxy on the line the percentile interval covers the true slope 94% of the time (the t interval 94%); when
    each proxy also lands off the line by its own independent training luck (sd 0.06, about the prompt SE of
    one α) the percentile interval covers 85% and the t interval 95%. With luck shared through nested subsets
    of one draw (sd 0.25 at 125 pairs, shrinking as 1/sqrt(pairs)) the t interval covers 77-86% (four runs of
    400 studies; the percentile 43-52%); the same sds drawn independently, 93-95% (49-52%). Report both; a
    trend across proxies is resolved when both are.
    `verdict` / `verdict_t`: "rises" | "falls" | "unresolved" by each interval.
    """
    x = np.asarray(x, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    reps = np.asarray(replicates, dtype=np.float64)
    J = x.size
    if values.shape != (J,) or reps.ndim != 2 or reps.shape[1] != J:
        raise ValueError(f"trend needs x [J], values [J] and replicates [B, J]; got {x.shape}, {values.shape}, "
                         f"{reps.shape}")
    if J < 2 or np.ptp(x) == 0:
        raise ValueError(f"a trend needs at least two distinct x values, got {x.tolist()}")
    slope, intercept = (float(v) for v in _slopes(x, values))
    rep_slope = _slopes(x, np.where(np.isfinite(reps), reps, np.nan))[0]
    lo, hi = (float(v) for v in interval(rep_slope, level))
    out = {"slope": slope, "intercept": intercept, "slope_lo": lo, "slope_hi": hi, "proxies": J,
           "slope_t_lo": math.nan, "slope_t_hi": math.nan, "residual_sd": math.nan}
    if J > 2 and np.all(np.isfinite(values)):
        from scipy import stats  # only here: the rest of this module is numpy alone

        residual = values - (intercept + slope * x)
        sd = math.sqrt(float(residual @ residual) / (J - 2))
        half = float(stats.t.ppf(1 - (1 - level) / 2, J - 2)) * sd / math.sqrt(float(((x - x.mean()) ** 2).sum()))
        out.update(slope_t_lo=slope - half, slope_t_hi=slope + half, residual_sd=sd)
    for key, (a, b) in (("verdict", (lo, hi)), ("verdict_t", (out["slope_t_lo"], out["slope_t_hi"]))):
        out[key] = "rises" if a > 0 else "falls" if b < 0 else "unresolved"
    return out


PROXY_COMPARISONS = {
    # name: (how a NaN replicate of one curve reads, whether more is better) -- gold only: proxies' scales differ
    "gold_at_kl": ("unknown", True),  # gold gain at a matched KL: past the peak, the overoptimized gold
    "kl_to_gold": ("high", False),  # KL spent to reach a gold gain
}


def compare_proxies(a: tuple[Analysis, str], b: list[tuple[Analysis, str]], *, kl_target: float | None = None,
                    gold_target: float | None = None) -> list[dict]:
    """One proxy's curve against another's, or against the average of several (an ensemble's members), on the
    gold alone — each proxy has its own scale, so proxy gains do not compare — paired by prompt: every
    analysis must come from the same prompt resamples (analyse(prompt_w=...)) on the same prompts.

    a: (analysis, curve label); b: one or more of them, averaged replicate by replicate (b's value in
    resample r is the mean of its curves' values in resample r: "the average member"). Rows like
    `Analysis.comparisons`, for
        gold_at_kl   gold gain at KL kl_target (default: the largest KL that every curve's estimate reaches
                     and its replicates reach in ≥ 97.5% of resamples; interpolated in sqrt(KL))
        kl_to_gold   KL to reach gold gain gold_target (default: half the smaller of a's and b's largest
                     measured gold gain)
    """
    curves = [a, *b]
    if not b:
        raise ValueError("compare_proxies needs at least one curve to compare against")
    first = curves[0][0]
    for analysis, label in curves:
        if label not in analysis.walks:
            raise ValueError(f"curve {label!r} is not in its analysis")
        if analysis.prompt_w is None or analysis.prompt_w.shape != first.prompt_w.shape or \
                not np.array_equal(analysis.prompt_w, first.prompt_w):
            raise ValueError("compare_proxies needs analyses made from the same prompt resamples (analyse(prompt_w=...))")
    level, P = first.level, first.prompts
    walks = [analysis.walks[label] for analysis, label in curves]
    peaks = [analysis.peaks[label] for analysis, label in curves]
    need = 1.0 - (1.0 - level) / 2.0
    if kl_target is None:
        kl_target = _largest_reached(np.concatenate([w[0]["kl"] for w in walks]), [w[0] for w in walks],
                                     [w[1] for w in walks], "kl", need)
    if gold_target is None:
        smaller = min(peaks[0]["best"], float(np.mean([p["best"] for p in peaks[1:]])))
        gold_target = smaller / 2 if smaller > 0 else math.nan
    targets = {"gold_at_kl": kl_target, "kl_to_gold": gold_target}
    values = {}
    for name in PROXY_COMPARISONS:
        per_curve = []
        for est, reps in walks:
            if name == "gold_at_kl":
                per_curve.append((float(along_axes(est["kl"], est["gold_gain"], kl_target, "kl", "gold_gain")),
                                  along_axes(reps["kl"], reps["gold_gain"], kl_target, "kl", "gold_gain")))
            else:
                per_curve.append((float(along_axes(est["gold_gain"], est["kl"], gold_target, "gold_gain", "kl")),
                                  along_axes(reps["gold_gain"], reps["kl"], gold_target, "gold_gain", "kl")))
        est_b = float(np.mean([v for v, _ in per_curve[1:]]))
        rep_b = np.mean(np.stack([r for _, r in per_curve[1:]]), axis=0)  # NaN if any member's is
        values[name] = (per_curve[0], (est_b, rep_b))
    rows = []
    for name, ((est_a, rep_a), (est_b, rep_b)) in values.items():
        nan_reads, higher = PROXY_COMPARISONS[name]
        row = {"curve_a": a[1], "curve_b": " + ".join(label for _, label in b) if len(b) > 1 else b[0][1],
               "quantity": name, "target": float(targets[name]), "average_of": len(b)}
        for part, value, reps in (("a", est_a, rep_a), ("b", est_b, rep_b), ("diff", est_a - est_b, rep_a - rep_b)):
            row[part] = float(value)
            row[f"{part}_lo"], row[f"{part}_hi"] = (float(v) for v in interval(
                reps, level, nan=nan_reads if part != "diff" else "unknown"))
        row["verdict"], row["prompts_needed"] = verdict(row["diff"], row["diff_lo"], row["diff_hi"], P, level,
                                                        higher_is_better=higher)
        row["better"] = "higher" if higher else "lower"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# 11. One point of a curve against one point of another: a distilled policy against best-of-n at its n.
# --------------------------------------------------------------------------------------------------


def compare_points(result: Analysis, a: str, ka: int, b: str, kb: int) -> list[dict]:
    """Curve a at its point ka against curve b at its point kb, from `analyse`'s replicates (the same prompt
    resamples for both, so the difference is paired): rows like `Analysis.comparisons` for
        gold_at_point   the gold gain of each (higher is better), and `share` = a / b with its interval:
                        e.g. how much of best-of-n's gold a policy distilled from it keeps
        kl_at_point     the KL of each (lower is better: the same gold for less KL)
    """
    level, P = result.level, result.prompts
    est_a, est_b = result.points[a], result.points[b]
    rep_a, rep_b = result.replicates[a], result.replicates[b]
    rows = []
    for name, quantity, higher in (("gold_at_point", "gold_gain", True), ("kl_at_point", "kl", False)):
        row = {"curve_a": a, "curve_b": b, "quantity": name, "target": math.nan, "point_a": ka, "point_b": kb}
        ra, rb = rep_a[quantity][:, ka], rep_b[quantity][:, kb]
        for part, value, reps in (("a", est_a[quantity][ka], ra), ("b", est_b[quantity][kb], rb),
                                  ("diff", est_a[quantity][ka] - est_b[quantity][kb], ra - rb)):
            row[part] = float(value)
            row[f"{part}_lo"], row[f"{part}_hi"] = (float(v) for v in interval(reps, level))
        if name == "gold_at_point":
            with np.errstate(divide="ignore", invalid="ignore"):
                row["share"] = row["a"] / row["b"] if row["b"] else math.nan
                # A ratio's replicates are only meaningful where the denominator's sign is settled.
                settled = interval(rb, level)[0] > 0
                row["share_lo"], row["share_hi"] = ((float(v) for v in interval(ra / rb, level)) if settled
                                                    else (math.nan, math.nan))
        row["verdict"], row["prompts_needed"] = verdict(row["diff"], row["diff_lo"], row["diff_hi"], P, level,
                                                        higher_is_better=higher)
        row["better"] = "higher" if higher else "lower"
        rows.append(row)
    return rows
