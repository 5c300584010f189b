"""Measuring the selected curves: every curve of a panel on the panel's shared prompts, paired against one
measurement of the initial policy, through `findings.analyse`; then the point fits for drawing, and the
fits and comparison tables. Every statistic comes from analysis/."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bon_vs_rl.analysis import findings, fits
from bon_vs_rl.config.commands import ReportConfig
from bon_vs_rl.report.selection import Curve, Records, column, load_records
from bon_vs_rl.report.words import QUANTITY_WORDS, fmt, span

# ----------------------------------------------------------------------------------------------
# 4. Measuring: every curve of a panel on the panel's shared prompts, through findings.analyse.


@dataclass
class Panel:
    key: tuple[str, str, str]
    curves: list[Curve]
    prompt_ids: np.ndarray | None = None  # the shared prompts the analysis used (None: no analysis)
    baseline_source: str = ""
    gold_std: float = math.nan  # the initial policy's per-sample gold std (the unit scale)
    comparisons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analysis: object = None  # the findings.Analysis of its analysed curves (the scaling view reads it)


def shared_prompts(records: list[Records]) -> np.ndarray:
    """Prompt ids every run measured; ids whose text differs between runs are dropped (another prompt set,
    template or truncation: not the same prompt)."""
    ids = set.intersection(*(set(r.prompt_ids.tolist()) for r in records))
    texts: dict[int, str] = {}
    for r in records:
        for pid, text in zip(r.prompt_ids.tolist(), r.prompt_texts):
            if pid in ids and texts.setdefault(pid, text) != text:
                ids.discard(pid)
    return np.asarray(sorted(ids), dtype=int)


def pick_baseline(curves: list[Curve]) -> tuple[Curve | None, str]:
    """The initial policy measured once: the best-of-n samples with the most samples per prompt (all N of
    them, the most precise measurement), else an RL curve's step-0 evaluations (pooled over its seeds)."""
    candidates = [c for c in curves if c.records and all(r.initial_gold is not None for r in c.records)]
    if not candidates:
        return None, ""
    best = max(candidates, key=lambda c: (c.is_bon, sum(r.samples_per_prompt for r in c.records)))
    per_prompt = sum(r.samples_per_prompt for r in best.records)
    what = "the best-of-n samples" if best.is_bon else f"the step-0 evaluations of {best.label}"
    return best, f"the initial policy measured once ({what}, {per_prompt} samples per prompt)"


def restrict(records: Records, ids: np.ndarray) -> Records:
    rows = np.searchsorted(records.prompt_ids, ids)
    pick = lambda a: None if a is None else a[rows]  # noqa: E731
    return Records(records.run_id, ids, [records.prompt_texts[i] for i in rows], records.x, records.kl[rows],
                   records.proxy[rows], records.gold[rows], pick(records.initial_proxy), pick(records.initial_gold),
                   records.initial_gold_std, records.samples_per_prompt)


def measure(curves: list[Curve], cfg: ReportConfig) -> list[Panel]:
    """Per panel: records -> shared prompts -> baseline -> findings.analyse -> points, fits, comparisons."""
    from bon_vs_rl.analysis import statistics

    panels = []
    for key, group in itertools.groupby(curves, key=lambda c: c.panel):
        panel = Panel(key, list(group))
        for c in panel.curves:
            loaded = [load_records(c.method, run) for run in c.runs]
            missing = [why for records, why in loaded if records is None]
            if missing:
                c.records_note = f"{c.label} on {key[1]}: no intervals, {missing[0]}."
            else:
                c.records = [records for records, _ in loaded]
        analysed = [c for c in panel.curves if c.records]
        if analysed:
            ids = shared_prompts([r for c in analysed for r in c.records])
            base_curve, source = pick_baseline(analysed)
            if base_curve is None:
                panel.notes.append(f"panel {key[1]}: no measurement of the initial policy (no best-of-n samples, "
                                   "no RL step 0), so no paired intervals.")
            elif len(ids) < 2:
                panel.notes.append(f"panel {key[1]}: the curves share {len(ids)} prompt(s); paired intervals need "
                                   "at least 2 (evaluate every method on the same prompts: experiment eval_prompts).")
            else:
                analyse_panel(panel, analysed, ids, base_curve, source, cfg, statistics)
        for c in panel.curves:
            if not c.in_analysis:
                c.points = row_points(c)
        panels.append(panel)
    return panels


def analyse_panel(panel: Panel, analysed: list[Curve], ids: np.ndarray, base_curve: Curve, source: str,
                  cfg: ReportConfig, statistics) -> None:
    counts = {c.label: sum(len(r.prompt_ids) for r in c.records) // len(c.records) for c in analysed}
    if any(n != len(ids) for n in counts.values()):
        panel.notes.append(f"panel {panel.key[1]}: compared on the {len(ids)} prompts every curve measured "
                           f"(curves had {', '.join(f'{k}: {v}' for k, v in counts.items())}).")
    for c in analysed:
        c.records = [restrict(r, ids) for r in c.records]
    base = base_curve.records
    panel.prompt_ids, panel.baseline_source = ids, source
    panel.gold_std = float(np.nanmean([r.initial_gold_std for r in base]))
    # The unit scale (Gao et al. §2.2) divides gold by the initial policy's per-sample std before any
    # statistic, so fits, peaks, targets and comparisons all come out on the report's scale.
    scale = panel.gold_std if cfg.scale == "unit" and panel.gold_std > 0 else 1.0
    baseline = statistics.Baseline(proxy=np.mean([r.initial_proxy for r in base], axis=0),
                                   gold=np.mean([r.initial_gold for r in base], axis=0) / scale)
    samples = [statistics.CurveSamples(c.label, c.form, np.stack([r.kl for r in c.records]),
                                       np.stack([r.proxy for r in c.records]),
                                       np.stack([r.gold for r in c.records]) / scale,
                                       trusted=trusted_mask(extras(c)),
                                       from_reference=c.method == "tilted")
               for c in analysed]
    # analyse draws its prompt resamples from the seed and the prompt count alone, so panels of several proxies
    # measured on the same prompts get the same ones and the scaling view can pair them (it checks: prompt_w).
    result = findings.analyse(samples, baseline, B=cfg.bootstrap, seed=cfg.seed, gold_target=cfg.gold_level,
                                kl_target=cfg.kl_target, proxy_target=cfg.proxy_target)
    panel.analysis = result
    for c, s in zip(analysed, samples):
        c.in_analysis = True
        c.points = analysed_points(c, result.points[c.label], scale)
        c.seed_points = [analysed_points(c, statistics.curve_estimate(
            statistics.CurveSamples(c.label, c.form, s.kl[i:i + 1], s.proxy[i:i + 1], s.gold[i:i + 1]), baseline),
            scale) for i in range(s.seeds)] if s.seeds > 1 else []
        c.fit_interval = result.fits[c.label]
    rows = list(result.comparisons)
    # A policy distilled from best-of-n (bonrl distill) against best-of-n itself at the same n: how much of
    # best-of-n's gold the trained policy keeps, and at what KL.
    bon = next((c for c in analysed if c.is_bon), None)
    for c in analysed:
        n = column(c.runs[0], "n")
        if c.method != "distill" or bon is None or not np.isfinite(n).any() or float(n[0]) not in bon.runs[0]["n"].tolist():
            continue
        kb = bon.runs[0]["n"].tolist().index(float(n[0]))
        for row in findings.compare_points(result, c.label, len(c.points) - 1, bon.label, kb):
            rows.append({**row, "target": float(n[0])})
    panel.comparisons = [{"policy": panel.key[0], "proxy": panel.key[1], "gold": panel.key[2], "prompts": len(ids),
                          **row} for row in rows]


POINT_EXTRAS = ("length_mean", "generated_tokens", "trained_tokens", "ess", "low_ess", "n", "step", "beta")


def extras(c: Curve) -> pd.DataFrame:
    """Per-point columns that are not estimated from per-prompt records: length, token counts, ESS (the
    mean over seeds of each run's row values)."""
    frames = [pd.DataFrame({name: column(r, name) for name in POINT_EXTRAS}) for r in c.runs]
    out = sum(frames[1:], frames[0]) / len(frames) if len(frames) > 1 else frames[0]
    if c.is_bon:  # the stage drew N samples per prompt once for every n; best-of-n itself costs n of them
        N = column(c.runs[0], "samples_per_prompt")
        out["generated_tokens"] = np.where(N > 0, out["generated_tokens"] * out["n"] / N, out["generated_tokens"])
    out["low_ess"] = out["low_ess"].fillna(0) > 0
    return out


def analysed_points(c: Curve, point: dict, scale: float) -> pd.DataFrame:
    """The analysis' points (gold on the report's scale: `scaled`), with gold also back in raw units."""
    p = extras(c)
    for name in ("kl", "proxy", "gold", "proxy_gain", "gold_gain"):
        for suffix in ("", "_lo", "_hi"):
            if name + suffix in point:
                p[name + suffix] = np.asarray(point[name + suffix], dtype=float)
    for suffix in ("", "_lo", "_hi"):
        p["scaled" + suffix] = p.get("gold_gain" + suffix, np.nan)
        for name in ("gold", "gold_gain"):
            if name + suffix in p:
                p[name + suffix] = p[name + suffix] * scale
    p["d"] = np.sqrt(np.clip(p["kl"], 0, None))
    return p


def row_points(c: Curve) -> pd.DataFrame:
    """A curve without per-prompt records (old rows, a moved file, the exact lab): its rows' own values.
    Gains are relative to the curve's own initial point and carry the rows' intervals where recorded."""
    run = c.runs[0]
    p = extras(c)
    for name in ("kl", "kl_lo", "kl_hi"):
        p[name] = column(run, name)
    initial = (p["n"] == 1) if c.is_bon else (p["step"] == 0) if c.order == "step" else p["kl"] == p["kl"].min()
    if not initial.any():
        initial = p["kl"] == p["kl"].min()
    for name in ("proxy", "gold"):
        mean = column(run, f"{name}_mean")
        recorded = column(run, f"{name}_gain")
        p[name] = mean
        p[f"{name}_gain"] = np.where(np.isfinite(recorded), recorded, mean - np.nanmean(mean[initial.to_numpy()]))
        p[f"{name}_gain_lo"], p[f"{name}_gain_hi"] = column(run, f"{name}_gain_lo"), column(run, f"{name}_gain_hi")
    for suffix in ("", "_lo", "_hi"):
        p["scaled" + suffix] = p["gold_gain" + suffix]
    p["d"] = np.sqrt(np.clip(p["kl"], 0, None))
    return p


# ----------------------------------------------------------------------------------------------
# Fits (Gao et al. eq. 1-2): the point fit for drawing; its intervals came from findings.analyse.


def trusted_mask(p: pd.DataFrame) -> np.ndarray:
    """Which points are measurements: not a tilted optimum estimated from too few effective samples."""
    return ~p["low_ess"].to_numpy(dtype=bool) if "low_ess" in p else np.ones(len(p), bool)


def trusted_points(p: pd.DataFrame) -> pd.DataFrame:
    return p[trusted_mask(p)]


def fit_curves(curves: list[Curve], fit_kl_max: float) -> None:
    for c in curves:
        p = trusted_points(c.points)
        try:
            c.fit = fits.fit_gold_vs_kl(p["kl"], p["scaled"], c.form)
        except fits.FitRefused as refusal:
            c.fit_note = f"{c.label} on {c.panel[1]}: no {c.form} fit — {refusal.reason}."
        if fit_kl_max > 0:
            try:
                c.check_fit, c.check = fits.fit_and_predict(p["kl"], p["scaled"], c.form, fit_kl_max)
            except fits.FitRefused as refusal:
                c.check_note = f"{c.label} on {c.panel[1]}: no fit on KL ≤ {fit_kl_max:g} — {refusal.reason}."


def fits_table(curves: list[Curve]) -> pd.DataFrame:
    rows = []
    for c in curves:
        if c.fit is None:
            continue
        f, i = c.fit, c.fit_interval
        rows.append({
            "policy": c.panel[0], "proxy": c.panel[1], "gold": c.panel[2], "curve": c.label,
            "run_id": ",".join(c.run_ids), "form": f.form,
            "alpha": f.alpha, "alpha_lo": i.get("alpha_lo", math.nan), "alpha_hi": i.get("alpha_hi", math.nan),
            "beta": f.beta, "beta_lo": i.get("beta_lo", math.nan), "beta_hi": i.get("beta_hi", math.nan),
            "rmse": f.rmse, "points": f.n_points, "d_min": f.d_min, "d_max": f.d_max,
            "peak_kl": f.peak_kl, "peak_kl_lo": i.get("peak_kl_lo", math.nan), "peak_kl_hi": i.get("peak_kl_hi", math.nan),
            "peak_gold": f.peak_reward, "peak_in_range": f.peak_in_range,
            "no_peak_share": i.get("no_peak", math.nan), "failed_share": i.get("failed", math.nan),
            "overflow_share": i.get("overflow", math.nan),
            "r2": i.get("r2", math.nan), "rmse_over_se": i.get("se_ratio", math.nan),
        })
    return pd.DataFrame(rows)


def check_table(curves: list[Curve]) -> pd.DataFrame:
    rows = []
    for c in curves:
        if c.check is None:
            continue
        rows.append({"proxy": c.panel[1], "curve": c.label, "kl_max": c.check["kl_max"],
                     "fit_points": c.check["n_train"], "held_out_points": c.check["n_held_out"],
                     "alpha": c.check_fit.alpha, "beta": c.check_fit.beta,
                     "rmse_held_out": c.check["rmse_held_out"], "max_abs_error_held_out": c.check["max_abs_error_held_out"]})
    return pd.DataFrame(rows)


def comparison_table(panels: list[Panel]) -> pd.DataFrame:
    rows = [r for p in panels for r in p.comparisons]
    return pd.DataFrame(rows)


def pair_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One pair's comparisons as a readable table: quantity, each curve with its interval, the difference."""
    return pd.DataFrame([{
        "quantity": QUANTITY_WORDS[r["quantity"]].format(target=fmt(r["target"])),
        r["curve_a"]: span(r["a"], r["a_lo"], r["a_hi"]), r["curve_b"]: span(r["b"], r["b_lo"], r["b_hi"]),
        "difference (a − b)": span(r["diff"], r["diff_lo"], r["diff_hi"]),
        "verdict": verdict_words(r),
    } for _, r in frame.iterrows()])


def verdict_words(r) -> str:
    if r["verdict"] == "unresolved":
        more = r["prompts_needed"]
        if math.isfinite(more) and more > 100 * r["prompts"]:
            return f"not resolved (> {100 * int(r['prompts'])} prompts would be needed)"
        return f"not resolved (~{int(more)} prompts would)" if math.isfinite(more) else "not resolved"
    winner = r["curve_a"] if r["verdict"] == "ahead" else r["curve_b"]
    return f"{winner} ahead"
