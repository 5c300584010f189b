"""`bonrl report`: what best-of-n and RL bought, measured by the gold reward, at the same KL.

    bonrl report --experiment cpu-demo --output runs/cpu-demo/report
    bonrl report --results runs/results.sqlite --methods bon,ppo --scale unit --fit-kl-max 2

Reads the shared results table (only `bonrl report` draws; every other command writes rows) and
writes one self-contained directory, replaced atomically so a failed report never leaves half a one:

    report.md, report.html   the same content; the HTML embeds its figures (opens offline)
    reward_vs_kl.png         gold (top) and proxy (bottom) against sqrt(KL), one column per proxy RM
    proxy_vs_gold.png        gold against proxy: how much of the proxy's gain is real
    kl_vs_proxy.png          KL spent per unit of proxy (RL drifts further than BoN at equal proxy?)
    length_vs_kl.png         completion length against KL (length exploitation is the commonest hack)
    points.csv               every selected row with its relative/unit gold
    fits.csv, comparison.csv, matched_kl.csv, (fit_check.csv)

Vocabulary (Gao, Schulman & Hilton 2022):
- A *curve* is one optimization run against one proxy: best-of-n over its n grid (a point per n), or
  one RL run (a point per evaluation step); an RL curve is named by its method and β.
- d = sqrt(KL(π || π_init)). Gold is shown relative to the initial policy, i.e. minus the curve's value
  at KL 0 (BoN n = 1, RL step 0), so curves are comparable (§3); with --scale unit it is also divided by
  the initial policy's gold standard deviation, the unit-variance gold of §2.2.
- Fits: BoN R(d) = d(α − β d), RL R(d) = d(α − β log d) (eq. 1-2), by `fits.fit_gold_vs_kl`. On the
  figures a fit is solid over the measured range of d and dashed where it only extrapolates.
- A comparison pairs two curves on the same policy, proxy and gold: gold at matched KL (the largest
  KL both reached, interpolated), the KL each needs to reach a gold level, gold at matched proxy, the
  measured peak, and the tokens spent to get there. Interpolation follows each curve in its own order
  (n or step) and takes the first point where it reaches the target, linearly between measurements.
"""

from __future__ import annotations

import base64
import html
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl import console, files, fits
from bon_vs_rl.config import ConfigError, ReportConfig, to_dict

FILTERS = ("experiment", "policy", "proxy", "gold")


# ----------------------------------------------------------------------------------------------
# 1. The selection: rows of the results table, or a plain ConfigError saying why there are none.


def select_rows(cfg: ReportConfig) -> pd.DataFrame:
    from bon_vs_rl import results

    path = results.resolve_results_path(cfg.results)
    if not Path(path).is_file():
        raise ConfigError(f"results: {path} does not exist; run an experiment first or pass --results PATH")
    table = results.load(path)
    if table.empty:
        raise ConfigError(f"results: {path} holds no rows yet; run bonrl sample / ppo / experiment first")

    wanted = {name: getattr(cfg, name) for name in FILTERS if getattr(cfg, name) is not None}
    rows = table
    for name, value in wanted.items():
        rows = rows[rows[name].astype(str) == str(value)] if name in rows else rows.iloc[0:0]
    if cfg.run_id:
        unknown = sorted(set(cfg.run_id) - set(table["run_id"].astype(str)))
        if unknown:
            raise ConfigError(f"run_id: {', '.join(unknown)} not in {path}; list runs with `bonrl results`")
        rows = rows[rows["run_id"].astype(str).isin(cfg.run_id)]
    if rows.empty:
        given = ", ".join(f"{k}={v!r}" for k, v in {**wanted, **({"run_id": cfg.run_id} if cfg.run_id else {})}.items())
        held = "; ".join(f"{k}s in the table: {_values(table, k)}" for k in wanted if k in table)
        raise ConfigError(f"selection: no rows match {given} in {path}" + (f" ({held})" if held else ""))

    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    curves = rows[rows["method"] != "rm"]
    if methods:
        missing = [m for m in methods if m not in set(curves["method"])]
        if missing:
            raise ConfigError(f"methods: no {', '.join(missing)} rows in the selection "
                              f"(it holds {_values(curves, 'method') or 'no best-of-n or RL rows'})")
        curves = curves[curves["method"].isin(methods)]
    if curves.empty:
        raise ConfigError(f"selection: the {len(rows)} matching row(s) hold no best-of-n or RL results "
                          f"(only {_values(rows, 'method')}); run bonrl sample or bonrl ppo first")
    return pd.concat([curves, rows[rows["method"] == "rm"]], ignore_index=True)


def _values(frame: pd.DataFrame, column: str) -> str:
    return ", ".join(sorted({str(v) for v in frame[column].dropna()}))


# ----------------------------------------------------------------------------------------------
# 2. Curves: one per (panel, run); gold relative to the initial policy, optionally unit-variance.


@dataclass
class Curve:
    panel: tuple[str, str, str]  # (policy, proxy, gold): only curves in one panel are compared
    method: str
    run_id: str
    label: str
    points: pd.DataFrame  # in the curve's own order (n or step); columns below
    form: str  # functional form of Gao et al. eq. 1 (bon) or eq. 2 (rl)
    initial_note: str = ""  # set when the curve has no KL-0 point
    scale_note: str = ""  # unit scale: where the std came from, or why there is none
    initial_std: float = math.nan  # gold standard deviation of the initial policy's samples, if recorded
    scale_missing: bool = False  # unit scale asked for, and no std to divide by
    fit: fits.Fit | None = None
    fit_note: str = ""
    check: dict | None = None  # fit on KL ≤ k, predict the rest
    check_fit: fits.Fit | None = None
    check_note: str = ""

    @property
    def is_bon(self) -> bool:
        return self.method == "bon"


def column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column, NaN where absent (stages record slightly different metrics)."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def build_curves(rows: pd.DataFrame, scale: str) -> tuple[list[Curve], list[str]]:
    notes: list[str] = []
    rm_rows = rows[rows["method"] == "rm"]
    curves: list[Curve] = []
    data = rows[rows["method"] != "rm"].copy()
    for name in ("policy", "proxy", "gold"):
        data[name] = data[name].fillna("?").astype(str) if name in data else "?"
    bad_kl = ~np.isfinite(column(data, "kl"))
    if bad_kl.any():
        notes.append(f"{int(bad_kl.sum())} row(s) without a KL value were left out.")
        data = data[~bad_kl]
    for (policy, proxy, gold, method, run_id), group in data.groupby(
            ["policy", "proxy", "gold", "method", "run_id"], sort=True):
        order = "n" if method == "bon" else "step"
        group = group.sort_values([c for c in (order, "kl") if c in group]).reset_index(drop=True)
        curve = Curve(panel=(policy, proxy, gold), method=method, run_id=str(run_id), label=method,
                      points=pd.DataFrame(), form="bon" if method == "bon" else "rl")
        curve.points = curve_points(group, curve)
        status = str(group["run_status"].iloc[0]) if "run_status" in group else "finished"
        if status != "finished":
            notes.append(f"{method} run {run_id} is {status}: its curve may stop early.")
        curves.append(curve)
    name_curves(curves)
    if scale == "unit":
        unit_scale(curves, rm_rows)
    curves.sort(key=lambda c: (c.panel, not c.is_bon, c.method, c.label))
    return curves, notes


def curve_points(group: pd.DataFrame, curve: Curve) -> pd.DataFrame:
    kl = column(group, "kl")
    p = pd.DataFrame({
        "run_id": curve.run_id, "method": curve.method, "n": column(group, "n"), "step": column(group, "step"),
        "beta": column(group, "beta"), "seed": column(group, "seed"), "kl": kl, "kl_se": column(group, "kl_se"),
        # d = sqrt(KL); an estimate a hair below 0 (RL's sampled KL at step 0) is drawn at d = 0.
        "d": np.sqrt(np.clip(kl, 0, None)),
        "proxy_mean": column(group, "proxy_mean"), "proxy_se": column(group, "proxy_se"),
        "gold_mean": column(group, "gold_mean"), "gold_se": column(group, "gold_se"),
        "length_mean": column(group, "length_mean"), "generated_tokens": column(group, "generated_tokens"),
        "trained_tokens": column(group, "trained_tokens"), "gold_std": column(group, "gold_std"),
    })
    if curve.is_bon:
        # The stage drew N samples per prompt once to estimate every n; doing best-of-n costs n of them.
        N = column(group, "samples_per_prompt")
        p["generated_tokens"] = np.where(N > 0, p["generated_tokens"] * p["n"] / N, p["generated_tokens"])
    # The initial policy: best-of-1 is a plain sample, RL step 0 is the untrained policy (KL 0).
    initial = (p["n"] == 1) if curve.is_bon else (p["step"] == 0)
    if not initial.any():
        initial = p["kl"] == p["kl"].min()
        curve.initial_note = (f"{curve.method} run {curve.run_id} has no KL-0 point; its gold is relative to "
                              f"its smallest-KL point (KL {p['kl'].min():.3g}).")
    gold0 = float(p.loc[initial, "gold_mean"].mean())
    p["gold_rel"] = p["gold_mean"] - gold0
    p["gold_rel_se"] = p["gold_se"]
    p["scaled"], p["scaled_se"] = p["gold_rel"], p["gold_rel_se"]
    curve.initial_std = float(p.loc[initial, "gold_std"].mean())
    return p


def unit_scale(curves: list[Curve], rm_rows: pd.DataFrame) -> None:
    """Divide relative gold by the initial policy's gold std (Gao et al. §2.2: unit-variance gold).

    BoN and RL on one policy share their initial policy, so a curve that recorded no std borrows one
    measured on the same policy and gold: another curve's initial point (RL's step-0 evaluation), else
    a proxy's held-out evaluation (samples of the initial policy scored by the gold).
    """
    for c in curves:
        std0, source = c.initial_std, ""
        if not (math.isfinite(std0) and std0 > 0):
            shared = [o.initial_std for o in curves if o.panel[0] == c.panel[0] and o.panel[2] == c.panel[2]
                      and math.isfinite(o.initial_std) and o.initial_std > 0]
            same = rm_rows[(rm_rows["policy"].astype(str) == c.panel[0]) & (rm_rows["gold"].astype(str) == c.panel[2])]
            from_rm = column(same, "gold_std")
            from_rm = from_rm[np.isfinite(from_rm) & (from_rm > 0)]
            if shared:
                std0, source = float(np.mean(shared)), "another curve's initial policy (same policy and gold)"
            elif len(from_rm):
                std0, source = float(from_rm.mean()), "the proxy RM's held-out samples (same policy and gold)"
        if math.isfinite(std0) and std0 > 0:
            c.points["scaled"] = fits.unit_variance_scale(c.points["gold_rel"], std0)
            c.points["scaled_se"] = c.points["gold_rel_se"] / std0
            if source:
                c.scale_note = f"{c.label} on {c.panel[1]}: gold std {std0:.3g} taken from {source}."
        else:
            c.scale_note = (f"unit-variance scale unavailable for {c.label} on {c.panel[1]}: no gold_std was "
                            "recorded for its initial policy; its gold is shown relative only.")
            c.scale_missing = True


def name_curves(curves: list[Curve]) -> None:
    """BoN, or method β=…; a run id is added only where two runs in a panel would share a name."""
    for c in curves:
        beta = c.points["beta"].dropna()
        c.label = "BoN" if c.is_bon else (f"{c.method} β={beta.iloc[0]:g}" if len(beta) else c.method)
    for _, group in itertools.groupby(sorted(curves, key=lambda c: (c.panel, c.label)), key=lambda c: (c.panel, c.label)):
        group = list(group)
        if len(group) > 1:
            for c in group:
                c.label = f"{c.label} ({c.run_id[:8]})"


# ----------------------------------------------------------------------------------------------
# 3. Fits (Gao et al. eq. 1-2) and the fit-on-KL≤k, predict-the-rest check.


def fit_curves(curves: list[Curve], fit_kl_max: float) -> None:
    for c in curves:
        p = c.points
        se = p["scaled_se"].to_numpy() if np.all(p["scaled_se"].to_numpy() > 0) else None
        try:
            c.fit = fits.fit_gold_vs_kl(p["kl"], p["scaled"], c.form, gold_se=se)
        except fits.FitRefused as refusal:
            c.fit_note = f"{c.label} on {c.panel[1]}: no {c.form} fit — {refusal.reason}."
        if fit_kl_max > 0:
            try:
                c.check_fit, c.check = fits.fit_and_predict(p["kl"], p["scaled"], c.form, fit_kl_max, gold_se=se)
            except fits.FitRefused as refusal:
                c.check_note = f"{c.label} on {c.panel[1]}: no fit on KL ≤ {fit_kl_max:g} — {refusal.reason}."


def fits_table(curves: list[Curve]) -> pd.DataFrame:
    rows = []
    for c in curves:
        if c.fit is None:
            continue
        f = c.fit
        rows.append({
            "policy": c.panel[0], "proxy": c.panel[1], "gold": c.panel[2], "curve": c.label, "run_id": c.run_id,
            "form": f.form, "alpha": f.alpha, "alpha_se": f.alpha_se, "beta": f.beta, "beta_se": f.beta_se,
            "rmse": f.rmse, "points": f.n_points, "d_min": f.d_min, "d_max": f.d_max,
            "peak_kl": f.peak_kl, "peak_gold": f.peak_reward, "peak_in_range": f.peak_in_range,
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


# ----------------------------------------------------------------------------------------------
# 4. Comparisons between the curves of one panel.


def along(p: pd.DataFrame, key: str, level: float, value: str) -> float:
    """`value` where `key` first reaches `level` along the curve, linear between measurements; NaN if never."""
    x, y = p[key].to_numpy(dtype=float), p[value].to_numpy(dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if not len(x) or not math.isfinite(level):
        return math.nan
    if x[0] >= level:  # already there at the start: only an exact hit counts (no reaching from below)
        return float(y[0]) if math.isclose(x[0], level, rel_tol=1e-9, abs_tol=1e-12) else math.nan
    for i in range(1, len(x)):
        if x[i] >= level:
            t = (level - x[i - 1]) / (x[i] - x[i - 1])
            return float(y[i - 1] + t * (y[i] - y[i - 1]))
    return math.nan


def peak(p: pd.DataFrame) -> pd.Series:
    return p.loc[p["scaled"].idxmax()] if p["scaled"].notna().any() else pd.Series(dtype=float)


def compare(a: Curve, b: Curve, gold_level: float | None) -> dict:
    pa, pb = a.points, b.points
    # Matched KL: the largest KL both curves reached (every KL below it is covered by both).
    kl_match = min(pa["kl"].max(), pb["kl"].max())
    covered = kl_match >= max(pa["kl"].min(), pb["kl"].min())
    peak_a, peak_b = peak(pa), peak(pb)
    # Gold level: half the smaller measured peak gain, unless given; both curves reach it.
    level = gold_level
    if level is None and len(peak_a) and len(peak_b):
        smaller = min(peak_a["scaled"], peak_b["scaled"])
        level = smaller / 2 if smaller > 0 else math.nan
    proxy_match = min(pa["proxy_mean"].max(), pb["proxy_mean"].max())
    if not proxy_match >= max(pa["proxy_mean"].min(), pb["proxy_mean"].min()):
        proxy_match = math.nan
    row = {
        "policy": a.panel[0], "proxy": a.panel[1], "gold": a.panel[2], "a": a.label, "b": b.label,
        "matched_kl": kl_match if covered else math.nan,
    }
    for tag, c in (("a", a), ("b", b)):
        p = c.points
        row[f"gold_{tag}_at_kl"] = along(p, "kl", kl_match, "scaled") if covered else math.nan
        row[f"gold_se_{tag}_at_kl"] = along(p, "kl", kl_match, "scaled_se") if covered else math.nan
    row["gold_level"] = level if level is not None else math.nan
    for tag, c in (("a", a), ("b", b)):
        row[f"kl_{tag}_to_level"] = along(c.points, "scaled", row["gold_level"], "kl")
    row["matched_proxy"] = proxy_match
    for tag, c in (("a", a), ("b", b)):
        row[f"gold_{tag}_at_proxy"] = along(c.points, "proxy_mean", proxy_match, "scaled")
    for tag, pk in (("a", peak_a), ("b", peak_b)):
        row[f"peak_gold_{tag}"] = pk.get("scaled", math.nan)
        row[f"peak_kl_{tag}"] = pk.get("kl", math.nan)
        row[f"generated_tokens_{tag}"] = pk.get("generated_tokens", math.nan)
        row[f"trained_tokens_{tag}"] = pk.get("trained_tokens", math.nan)
    return row


def pair_table(r: pd.Series) -> pd.DataFrame:
    """One comparison as rows of quantities with a column per curve: readable where 20 columns are not."""
    rows = [
        (f"gold at matched KL {fmt(r['matched_kl'])}", r["gold_a_at_kl"], r["gold_b_at_kl"]),
        (f"KL to reach gold {fmt(r['gold_level'])}", r["kl_a_to_level"], r["kl_b_to_level"]),
        (f"gold at matched proxy {fmt(r['matched_proxy'])}", r["gold_a_at_proxy"], r["gold_b_at_proxy"]),
        ("peak gold (measured)", r["peak_gold_a"], r["peak_gold_b"]),
        ("KL at the peak", r["peak_kl_a"], r["peak_kl_b"]),
        ("generated tokens to the peak", r["generated_tokens_a"], r["generated_tokens_b"]),
        ("trained tokens to the peak", r["trained_tokens_a"], r["trained_tokens_b"]),
    ]
    return pd.DataFrame(rows, columns=["quantity", r["a"], r["b"]])


def matched_kl_grid(a: Curve, b: Curve) -> pd.DataFrame:
    """Gold of both curves at every KL either measured inside the range both cover."""
    lo = max(a.points["kl"].min(), b.points["kl"].min())
    hi = min(a.points["kl"].max(), b.points["kl"].max())
    kls = sorted({k for k in np.concatenate([a.points["kl"], b.points["kl"]]) if lo <= k <= hi})
    return pd.DataFrame([{"proxy": a.panel[1], "a": a.label, "b": b.label, "kl": k,
                          "gold_a": along(a.points, "kl", k, "scaled"), "gold_b": along(b.points, "kl", k, "scaled")}
                         for k in kls])


def pairs(curves: list[Curve]) -> list[tuple[Curve, Curve]]:
    out = []
    for _, group in itertools.groupby(curves, key=lambda c: c.panel):
        out.extend(itertools.combinations(list(group), 2))
    return out


# ----------------------------------------------------------------------------------------------
# 5. The plain-words summary, generated from the numbers above.


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}g}"
    return str(x)


def summary(curves: list[Curve], comparisons: pd.DataFrame, scale_words: str) -> list[str]:
    lines = []
    for panel, group in itertools.groupby(curves, key=lambda c: c.panel):
        group = list(group)
        where = f"policy {panel[0]}, proxy {panel[1]}, gold {panel[2]}"
        lines.append(f"**{where}** — {len(group)} curve(s): " + ", ".join(c.label for c in group) + ".")
        for c in group:
            p = c.points
            pk = peak(p)
            rise = p["proxy_mean"].iloc[-1] - p["proxy_mean"].iloc[0]
            text = (f"{c.label}: proxy {'rose' if rise > 0 else 'fell'} by {fmt(abs(rise))} up to KL "
                    f"{fmt(p['kl'].max())} nats; gold peaked at {fmt(pk.get('scaled'), 3)} at KL "
                    f"{fmt(pk.get('kl'))}, and ended at {fmt(p['scaled'].iloc[-1])}.")
            if c.fit is not None and c.fit.peak_kl is not None:
                text += (f" The {c.form} form puts its peak at KL {fmt(c.fit.peak_kl)}"
                         f"{'' if c.fit.peak_in_range else ' (an extrapolation beyond the measured range)'}.")
            elif c.fit is not None:
                text += f" The {c.form} form has no peak: gold is still rising."
            lines.append(text)
        here = comparisons[comparisons["proxy"] == panel[1]] if len(comparisons) else comparisons
        here = here[(here["policy"] == panel[0]) & (here["gold"] == panel[2])] if len(here) else here
        for _, r in here.iterrows():
            if not math.isfinite(r["matched_kl"]):
                lines.append(f"{r['a']} and {r['b']} cover no common KL range, so they are not compared at matched KL.")
                continue
            diff = r["gold_a_at_kl"] - r["gold_b_at_kl"]
            noise = 2 * math.hypot(r["gold_se_a_at_kl"], r["gold_se_b_at_kl"])
            verdict = ("within two standard errors of each other" if math.isfinite(noise) and abs(diff) <= noise
                       else f"{r['a'] if diff > 0 else r['b']} is ahead by {fmt(abs(diff))}")
            lines.append(f"At KL {fmt(r['matched_kl'])} nats (the largest KL both reach), {r['a']}'s gold is "
                         f"{fmt(r['gold_a_at_kl'])} and {r['b']}'s is {fmt(r['gold_b_at_kl'])} ({scale_words}): "
                         f"{verdict}.")
            if math.isfinite(r["matched_proxy"]):
                lines.append(f"At equal proxy score {fmt(r['matched_proxy'])}, {r['a']}'s gold is "
                             f"{fmt(r['gold_a_at_proxy'])} and {r['b']}'s is {fmt(r['gold_b_at_proxy'])}.")
    return lines


# ----------------------------------------------------------------------------------------------
# 6. Figures (matplotlib, Agg backend; imported here so the rest of bonrl never pays for it).


def colours(curves: list[Curve]) -> dict[str, str]:
    """One colour per curve name, the same in every figure; BoN first."""
    names = list(dict.fromkeys(c.label for c in sorted(curves, key=lambda c: (not c.is_bon, c.method, c.label))))
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def panel_title(panel: tuple[str, str, str], panels: list[tuple[str, str, str]]) -> str:
    parts = [f"proxy {panel[1]}"]
    if len({p[0] for p in panels}) > 1:
        parts.append(f"policy {panel[0]}")
    if len({p[2] for p in panels}) > 1:
        parts.append(f"gold {panel[2]}")
    return "\n".join(parts)


def draw_fit(ax, colour: str, d_right: float, fit: fits.Fit, style_in: str, style_out: str, peak: bool) -> None:
    """A fit over d ∈ [0, d_right]: `style_in` over the measured range, `style_out` where it extrapolates."""
    d_in = np.linspace(fit.d_min, fit.d_max, 100)
    ax.plot(d_in, fit.predict(d_in), style_in, color=colour, lw=1, alpha=0.8)
    if d_right > fit.d_max:
        d_out = np.linspace(fit.d_max, d_right, 50)
        ax.plot(d_out, fit.predict(d_out), style_out, color=colour, lw=1, alpha=0.8)
    if peak and fit.peak_d is not None and fit.peak_d <= d_right:
        ax.plot([fit.peak_d], [fit.peak_reward], "*", color=colour, ms=10,
                mfc=colour if fit.peak_in_range else "white")


def style_legend(fit_kl_max: float) -> list:
    """Grey stand-ins explaining the line styles (the colours name the curves)."""
    from matplotlib.lines import Line2D

    grey = "0.4"
    handles = [Line2D([], [], color=grey, marker="o", ms=3.5, lw=1.4, label="measured (band: ±1 SE)"),
               Line2D([], [], color=grey, lw=1, label="fit, measured range"),
               Line2D([], [], color=grey, lw=1, ls="--", label="fit, extrapolated"),
               Line2D([], [], color=grey, marker="*", ms=9, lw=0, label="fitted peak (hollow: extrapolated)")]
    if fit_kl_max > 0:
        handles.append(Line2D([], [], color=grey, lw=1, ls=":", label=f"fit on KL ≤ {fit_kl_max:g} only"))
    return handles


def figures(curves: list[Curve], out: Path, gold_label: str, fit_kl_max: float) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = colours(curves)
    panels = list(dict.fromkeys(c.panel for c in curves))
    by_panel = {p: [c for c in curves if c.panel == p] for p in panels}
    made = []

    def grid(rows: int, sharey: bool | str = False):
        width = max(7.0, 4.6 * len(panels))  # wide enough for the legend below the panels
        fig, axes = plt.subplots(rows, len(panels), figsize=(width, 3.4 * rows), squeeze=False,
                                 sharex="col", sharey=sharey)
        return fig, axes

    def save(fig, name: str, caption: str, extra: list | None = None):
        handles = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        for h in extra or []:
            handles[h.get_label()] = h
        columns = max(1, min(len(handles), int(fig.get_figwidth() // 2.3)))
        legend_rows = -(-len(handles) // columns)
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                       ncol=columns, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, min(0.4, 0.2 * legend_rows / fig.get_figheight()), 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, caption))

    # Gold and proxy against sqrt(KL), fits drawn: solid where measured, dashed where extrapolated.
    fig, axes = grid(2)
    for j, panel in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        d_right = 1.25 * max(c.points["d"].max() for c in by_panel[panel])
        low, high = [], []  # the y range of what was measured: extrapolations may leave the frame
        for c in by_panel[panel]:
            p, col = c.points, colour[c.label]
            top.plot(p["d"], p["scaled"], "o-", color=col, ms=3.5, lw=1.4, label=c.label)
            top.fill_between(p["d"], p["scaled"] - p["scaled_se"], p["scaled"] + p["scaled_se"], color=col, alpha=0.2)
            bottom.plot(p["d"], p["proxy_mean"], "o-", color=col, ms=3.5, lw=1.4, label=c.label)
            bottom.fill_between(p["d"], p["proxy_mean"] - p["proxy_se"], p["proxy_mean"] + p["proxy_se"],
                                color=col, alpha=0.2)
            low.append(np.nanmin(p["scaled"] - p["scaled_se"].fillna(0)))
            high.append(np.nanmax(p["scaled"] + p["scaled_se"].fillna(0)))
            if c.fit is not None:
                draw_fit(top, col, d_right, c.fit, "-", "--", peak=True)
                if c.fit.peak_reward is not None and c.fit.peak_d <= d_right:
                    high.append(c.fit.peak_reward)
            if c.check_fit is not None:
                draw_fit(top, col, d_right, c.check_fit, ":", ":", peak=False)
        span = max(high) - min(low) or 1.0
        top.set_ylim(min(low) - 0.15 * span, max(high) + 0.15 * span)
        if fit_kl_max > 0:
            top.axvline(math.sqrt(fit_kl_max), color="grey", ls=":", lw=0.8)
        top.axhline(0, color="grey", lw=0.5)
        top.set_title(panel_title(panel, panels), fontsize=9)
        top.set_ylabel(gold_label)
        bottom.set_ylabel("proxy reward")
        bottom.set_xlabel("sqrt(KL) from the initial policy, sqrt(nats)")
    save(fig, "reward_vs_kl.png",
         "Gold (top, relative to the initial policy) and proxy (bottom) reward against sqrt(KL), ±1 SE bands. "
         "Thin lines: Gao et al. functional-form fits, solid over the measured range, dashed where extrapolated; "
         "stars: fitted peaks (hollow when outside the measured range).", style_legend(fit_kl_max))

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            ax.plot(c.points["proxy_mean"], c.points["scaled"], "o-", color=colour[c.label], ms=3.5, label=c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy reward")
        ax.set_ylabel(gold_label)
    save(fig, "proxy_vs_gold.png", "Gold against proxy reward: where the curves bend over, proxy gains stop being real.")

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            ax.plot(c.points["proxy_mean"], c.points["kl"], "o-", color=colour[c.label], ms=3.5, label=c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy reward")
        ax.set_ylabel("KL from the initial policy, nats")
    save(fig, "kl_vs_proxy.png", "KL spent against proxy reward: the higher curve drifts further from the initial "
         "policy for the same proxy score.")

    if any(c.points["length_mean"].notna().any() for c in curves):
        fig, axes = grid(1)
        for j, panel in enumerate(panels):
            ax = axes[0, j]
            for c in by_panel[panel]:
                ax.plot(c.points["d"], c.points["length_mean"], "o-", color=colour[c.label], ms=3.5, label=c.label)
            ax.set_title(panel_title(panel, panels), fontsize=9)
            ax.set_xlabel("sqrt(KL), sqrt(nats)")
            ax.set_ylabel("completion length, tokens")
        save(fig, "length_vs_kl.png", "Mean completion length against sqrt(KL): a proxy that pays for length shows "
             "up here first.")
    return made


# ----------------------------------------------------------------------------------------------
# 7. Writing: the report is a list of blocks rendered twice, as Markdown and as self-contained HTML.


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return fmt(v, 4).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def html_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v, 4))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def inline(text: str) -> str:
    """The one bit of Markdown the summary uses (**bold**), as HTML."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"# {rest[0]}")
        elif kind == "h2":
            out.append(f"## {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {line}" for line in rest[0]))
        elif kind == "table":
            out.append(markdown_table(rest[0]))
        elif kind == "figure":
            out.append(f"![{rest[1]}]({rest[0]})\n\n*{rest[1]}*")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], directory: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"<h1>{html.escape(rest[0])}</h1>")
        elif kind == "h2":
            out.append(f"<h2>{html.escape(rest[0])}</h2>")
        elif kind == "p":
            out.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(line)}</li>" for line in rest[0]) + "</ul>")
        elif kind == "table":
            out.append(html_table(rest[0], rest[1]))
        elif kind == "figure":
            data = base64.b64encode((directory / rest[0]).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}img{max-width:100%}figcaption{font-size:13px;color:#444}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>bonrl report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


POINT_COLUMNS = ["run_id", "method", "policy", "proxy", "gold", "n", "step", "beta", "kl", "kl_se", "proxy_mean",
                 "proxy_se", "gold_mean", "gold_se", "gold_rel", "length_mean", "generated_tokens", "trained_tokens"]


def points_table(curves: list[Curve]) -> pd.DataFrame:
    frames = []
    for c in curves:
        p = c.points.copy()
        p["policy"], p["proxy"], p["gold"] = c.panel
        frames.append(p)
    table = pd.concat(frames, ignore_index=True)
    return table[[col for col in POINT_COLUMNS if col in table and (col in POINT_COLUMNS[:7] or table[col].notna().any())]]


def rm_table(rows: pd.DataFrame) -> pd.DataFrame:
    rm = rows[rows["method"] == "rm"]
    keep = [c for c in ("run_id", "proxy", "backbone", "pairs", "label_noise", "ensemble", "accuracy", "pearson",
                        "spearman", "trained_tokens") if c in rm]
    return rm[keep].reset_index(drop=True)


def report(cfg: ReportConfig) -> Path:
    """Selected rows -> curves, fits, comparisons -> report directory (returned, and printed on stdout)."""
    rows = select_rows(cfg)  # bad or empty selection: ConfigError before anything is written
    curves, notes = build_curves(rows, cfg.scale)
    fit_curves(curves, cfg.fit_kl_max)
    comparisons = pd.DataFrame([compare(a, b, cfg.gold_level) for a, b in pairs(curves)])
    grids = [matched_kl_grid(a, b) for a, b in pairs(curves)]
    matched = pd.concat(grids, ignore_index=True) if grids else pd.DataFrame()
    unit = cfg.scale == "unit" and not any(c.scale_missing for c in curves)
    scale_words = ("relative to the initial policy, in units of its gold standard deviation" if unit
                   else "relative to the initial policy")
    gold_label = "gold − initial, unit variance" if unit else "gold − initial"
    notes += [c.initial_note for c in curves if c.initial_note] + [c.scale_note for c in curves if c.scale_note]
    if cfg.scale == "unit" and not unit:
        notes.append("Unit scale was asked for but is not available for every curve; all gold is shown relative to "
                     "the initial policy instead, so the curves stay on one scale.")
        for c in curves:
            c.points["scaled"], c.points["scaled_se"] = c.points["gold_rel"], c.points["gold_rel_se"]
        fit_curves(curves, cfg.fit_kl_max)
    notes = list(dict.fromkeys(notes))
    refusals = [c.fit_note for c in curves if c.fit_note] + [c.check_note for c in curves if c.check_note]

    points = points_table(curves)
    fit_frame, check_frame, rms = fits_table(curves), check_table(curves), rm_table(rows)
    out = Path(cfg.output)
    with files.atomic_directory(out) as tmp:
        made = figures(curves, tmp, gold_label, cfg.fit_kl_max)
        blocks: list[tuple] = [("h1", "bonrl report: best-of-n against RL, measured by the gold reward")]
        selection = {k: getattr(cfg, k) for k in (*FILTERS, "methods") if getattr(cfg, k)}
        blocks.append(("p", f"{len(points)} measured points in {len(curves)} curve(s) from {points['run_id'].nunique()} "
                       f"run(s); selection: {selection or 'the whole table'}; gold is {scale_words}."))
        blocks += [("h2", "Summary"), ("list", summary(curves, comparisons, scale_words))]
        if notes or refusals:
            blocks += [("h2", "Notes"), ("list", notes + refusals)]
        blocks.append(("h2", "Figures"))
        blocks += [("figure", name, caption) for name, caption in made]
        if len(comparisons):
            blocks += [("h2", "Comparison"),
                       ("p", "For each pair of curves on the same policy, proxy and gold: gold at the largest KL both "
                        "reach (interpolated), the KL each needs to reach gold_level (default: half the smaller "
                        "measured peak), gold at the largest proxy score both reach, the measured peak and the "
                        "tokens generated / trained up to it (best-of-n: the tokens of n samples per eval prompt; "
                        "RL: every token generated or trained on up to that step, evaluations included). Gold "
                        + scale_words + "."),
                       ("p", "All pairs in one table: comparison.csv.")]
            for i, (_, r) in enumerate(comparisons.iterrows()):
                blocks += [("p", f"**{r['a']} vs {r['b']}** — proxy {r['proxy']}, policy {r['policy']}, gold {r['gold']}"),
                           ("table", pair_table(r), f"comparison-{i}")]
        if len(matched):
            blocks += [("h2", "Gold at matched KL"), ("table", matched, "matched_kl")]
        blocks.append(("h2", "Functional-form fits (Gao et al. 2022, eq. 1-2)"))
        blocks.append(("p", "BoN: R(d) = d(α − β d); RL: R(d) = d(α − β log d); d = sqrt(KL), R = gold "
                       + scale_words + ". Peak: BoN d* = α/2β, RL d* = exp(α/β − 1)."))
        if len(fit_frame):
            blocks.append(("table", fit_frame, "fits"))
        if refusals:
            blocks.append(("list", refusals))
        if cfg.fit_kl_max > 0:
            blocks += [("h2", f"Fit on KL ≤ {cfg.fit_kl_max:g}, predict the rest"),
                       ("p", "Each form fitted only to the points with KL ≤ k, then scored on the larger-KL points "
                        "it never saw (the check of Gao et al. §3).")]
            blocks.append(("table", check_frame, "fit_check") if len(check_frame) else ("p", "No curve could be fitted."))
        if len(rms):
            blocks += [("h2", "Proxy reward models"), ("table", rms, "reward_models")]
        blocks += [("h2", "Measured points"), ("p", "Every selected row of the results table."),
                   ("table", points, "points")]
        blocks += [("h2", "Settings"), ("p", f"`bonrl report` with {to_dict(cfg)}")]

        points.to_csv(tmp / "points.csv", index=False)
        fit_frame.to_csv(tmp / "fits.csv", index=False)
        comparisons.to_csv(tmp / "comparison.csv", index=False)
        matched.to_csv(tmp / "matched_kl.csv", index=False)
        if cfg.fit_kl_max > 0:
            check_frame.to_csv(tmp / "fit_check.csv", index=False)
        if len(rms):
            rms.to_csv(tmp / "reward_models.csv", index=False)
        files.write_json(tmp / "resolved_config.json", to_dict(cfg))
        files.write_text(tmp / "report.md", render_markdown(blocks))
        files.write_text(tmp / "report.html", render_html(blocks, tmp))

    for line in summary(curves, comparisons, scale_words):
        console.note(line.replace("**", ""), cfg.quiet)
    for line in notes + refusals:
        console.note("note: " + line, cfg.quiet)
    print(out)
    return out
