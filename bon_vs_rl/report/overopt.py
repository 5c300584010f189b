"""Overoptimization, seen: where gold peaks and falls, what "30 nats" would buy, and how the text was lost.

The report's part for a study whose gold rises and falls (Gao, Schulman & Hilton 2022, fig. 1; the
`cpu-overopt` preset). It reads what `measure` already computed (each panel's `statistics.Analysis`) and
the runs' saved samples, and adds:

1. gold peaks     for every analysed curve, its largest measured gold gain and how far gold falls after it
                  (`statistics.measured_peak`: the fall's interval is simultaneous over the earlier points, so
                  a plateau is not called a peak), whether the fall is resolved, and the power of this many
                  prompts against a fall of the size measured, simulated (`findings.peak_power`: studies of
                  prompts redrawn from the curve's own per-prompt gains with its last point moved up to a
                  plateau; the power at a fall δ is the share of them that resolve δ), with the prompts a fall
                  this size would need for 80% power, P · (fall_80 / fall)² (the resolvable fall shrinks as
                  1/√P);
2. "30 nats"      RL's measured gold gain at KL 30 (interpolated in sqrt(KL), with its prompt-resample
                  interval) beside best-of-n's fitted form R(d) = d(α − β d) extrapolated to n = e^31 (KL =
                  31 − (1 − e^−31) ≈ 30 nats: an extrapolation far beyond the measured n), and the closed form
                  for a Gaussian proxy (the Goodhart lab's K → ∞ limit) fitted to the reference samples'
                  within-prompt (proxy, gold) joint: best-of-n's gold gain ρ σ_gold E[max of n N(0, 1)] and the
                  KL-regularized optimum's ρ σ_gold sqrt(2 KL) — what gold would do were the proxy's error
                  Gaussian and independent of the gold, i.e. if nothing could be hacked;
3. text           what the text looks like at every point (text_stats: length, distinct-n, non-words,
                  finished, log-prob per token of the policy and of the reference), each a mean over the
                  panel's prompts: for best-of-n and the optimum in expectation under the selection, for RL
                  over the evaluation's samples;
4. samples        a few prompts' completions side by side: best-of-n's pick (the highest-proxy of the first
                  n samples) and the RL policy's sample at a matched KL, then RL at its gold peak and at its
                  last evaluation, with proxy and gold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl.analysis import statistics
from bon_vs_rl.measurement import bon_estimator, text_stats
from bon_vs_rl.measurement.evaluate import per_prompt_means
from bon_vs_rl.methods import best_of_n, tilted
from bon_vs_rl.report.words import fmt, span

KL_30 = 30.0
LOG_N_30 = 31.0  # n = e^31: KL = log n − (n − 1)/n = 31 − (1 − e^−31) ≈ 30 nats


def bon_kl(log_n: float) -> float:
    """KL of best-of-n from the reference, log n − (n − 1)/n, for n = e^log_n."""
    return log_n - (1.0 - math.exp(-log_n))


# ----------------------------------------------------------------------------------------------
# 1. Gold peaks and the power to resolve their fall.


def fall_power(analysis, label: str, fall: float) -> dict:
    """power: the share of the curve's simulated plateau studies (analysis.peak_power, findings.peak_power) that
    resolve a true fall of `fall`; fall_50 / fall_80: the falls resolved half the time and four times in five;
    prompts_for_80pct: P · (fall_80 / fall)². NaN power when the fall is not positive."""
    power = analysis.peak_power(label)
    thresholds = np.asarray(power["resolved_above"], dtype=np.float64)
    out = {"power": math.nan, "fall_50": power["fall_50"], "fall_80": power["fall_80"],
           "prompts_for_80pct": math.nan}
    if math.isfinite(fall) and fall > 0 and np.isfinite(thresholds).all():
        out["power"] = float(np.mean(thresholds < fall))
        out["prompts_for_80pct"] = float(power["prompts"] * (power["fall_80"] / fall) ** 2)
    return out


def peaks_table(panels) -> pd.DataFrame:
    rows = []
    for panel in panels:
        if panel.analysis is None:
            continue
        for c in panel.curves:
            peak = panel.analysis.peaks.get(c.label)
            if peak is None:
                continue
            rows.append({"proxy": panel.key[1], "curve": c.label, "best_gold_gain": peak["best"],
                         "best_lo": peak["best_lo"], "best_hi": peak["best_hi"], "best_kl": peak["best_kl"],
                         "last_kl": peak["last_kl"], "fall": peak["fall"], "fall_lo": peak["fall_lo"],
                         "fall_hi": peak["fall_hi"], "resolved": peak["resolved"],
                         **fall_power(panel.analysis, c.label, peak["fall"]), "prompts": panel.analysis.prompts})
    return pd.DataFrame(rows)


def short(proxy: str) -> str:
    """rm:runs/x/rm-1 -> rm-1: the proxy's directory, enough to tell a preset's proxies apart in a sentence."""
    kind, _, target = str(proxy).partition(":")
    return Path(target).name or proxy if kind == "rm" else str(proxy)


def percent(share: float) -> str:
    """0.662 -> '66%'; the ends read '> 99%' and '< 1%' (400 simulated studies claim no more)."""
    return "> 99%" if share > 0.99 else "< 1%" if share < 0.01 else f"{100 * share:.0f}%"


def peak_sentence(r: pd.Series) -> str:
    if not math.isfinite(r["best_gold_gain"]):
        return f"{r['curve']} on {short(r['proxy'])}: no trusted point (too few effective samples)."
    best = f"{r['curve']} on {short(r['proxy'])}: largest gold gain {span(r['best_gold_gain'], r['best_lo'], r['best_hi'])} " \
           f"at KL {fmt(r['best_kl'])}"
    detect = (f"; a fall of {fmt(r['fall_80'], 2)} after its best point would be resolved four times in five on these "
              f"{int(r['prompts'])} prompts" if math.isfinite(r["fall_80"]) else "")
    if not math.isfinite(r["fall"]) or r["best_kl"] == r["last_kl"]:
        return best + f", at its last point: gold has not turned{detect}."
    fall = f"falls by {span(r['fall'], r['fall_lo'], r['fall_hi'])} to KL {fmt(r['last_kl'])}"
    if r["resolved"]:
        return f"{best}; gold then {fall} — **a resolved rise and fall** (the fall's simultaneous 95% interval " \
               f"excludes 0; power {percent(r['power'])} for a fall this size on {int(r['prompts'])} prompts)."
    need = r["prompts_for_80pct"]
    hint = f"; ~{int(math.ceil(need))} prompts would give 80% power" if math.isfinite(need) else ""
    power = f"power {percent(r['power'])} for a fall this size" if math.isfinite(r["power"]) else "no power"
    return f"{best}; gold then {fall} — not resolved ({power} on {int(r['prompts'])} prompts{hint}{detect})."


# ----------------------------------------------------------------------------------------------
# 2. "30 nats of RL versus best-of-exp(30)".


def gaussian_joint(frame: pd.DataFrame, proxy: str, gold: str, weights: np.ndarray | None = None) -> dict:
    """ρ, σ_proxy, σ_gold of the reference samples' (proxy, gold) within prompts: each prompt's samples
    centred on its own means (best-of-n and the optimum choose among one prompt's samples), then pooled;
    `weights` [P]: a prompt resample's counts."""
    ids, inverse = np.unique(frame["prompt_id"].to_numpy(), return_inverse=True)
    u, v = frame[proxy].to_numpy(np.float64), frame[gold].to_numpy(np.float64)
    counts = np.bincount(inverse)
    u = u - (np.bincount(inverse, u) / counts)[inverse]
    v = v - (np.bincount(inverse, v) / counts)[inverse]
    w = np.ones(len(ids)) if weights is None else np.asarray(weights, np.float64)
    w = w[inverse]
    suu, svv, suv = (w * u * u).sum(), (w * v * v).sum(), (w * u * v).sum()
    total = w.sum()
    # A proxy or gold constant within every prompt has no correlation (NaN, not a division warning).
    return {"rho": suv / math.sqrt(suu * svv) if suu * svv > 0 else math.nan, "sigma_proxy": math.sqrt(suu / total),
            "sigma_gold": math.sqrt(svv / total)}


def gaussian_gold(joint: dict, log_n: float, kl: float) -> tuple[float, float]:
    """(best-of-e^log_n's gold gain, the optimum's at `kl`) for a Gaussian proxy with the joint's ρ, σ_gold:
    E[V | pick] − E[V] = ρ σ_V E[max of n N(0,1)] (regression of gold on proxy), and tilting N(0, σ_U²) by
    exp(u/β) moves U by σ_U sqrt(2 KL), so gold by ρ σ_V sqrt(2 KL)."""
    from bon_vs_rl.methods.lab import expected_max_normal

    top = expected_max_normal(int(round(math.exp(log_n))))
    scale = joint["rho"] * joint["sigma_gold"]
    return scale * top, scale * math.sqrt(2.0 * kl)


def thirty_nats(panels, level: float = 0.95) -> pd.DataFrame:
    """One row per panel with a best-of-n curve or an RL curve: the "30 nats" comparison (module docstring)."""
    a = (1 - level) / 2
    rows = []
    for panel in panels:
        result = panel.analysis
        if result is None:
            continue
        bon = next((c for c in panel.curves if c.is_bon and c.in_analysis), None)
        row = {"proxy": panel.key[1], "kl": bon_kl(LOG_N_30)}
        if bon is not None:
            fit, reps = result.fits[bon.label], result.fit_replicates[bon.label]
            d = math.sqrt(row["kl"])
            row["bon_fit_gold"] = d * (fit["alpha"] - fit["beta"] * d)
            predicted = d * (reps["alpha"] - reps["beta"] * d)
            row["bon_fit_lo"], row["bon_fit_hi"] = (float(x) for x in statistics.interval(predicted, level))
            row["bon_measured_kl"] = float(np.nanmax(bon.points["kl"]))
            frame, _ = best_of_n.read_samples(bon.runs[0]["samples_path"].iloc[0])
            frame = frame[frame["prompt_id"].isin(panel.prompt_ids)]
            proxy_column, gold_column = panel.key[1], panel.key[2]
            joint = gaussian_joint(frame, proxy_column, gold_column)
            row.update(rho=joint["rho"], sigma_gold=joint["sigma_gold"])
            row["gaussian_bon_gold"], row["gaussian_optimum_gold"] = gaussian_gold(joint, LOG_N_30, row["kl"])
            draws = [gaussian_gold(gaussian_joint(frame, proxy_column, gold_column, w), LOG_N_30, row["kl"])
                     for w in result.prompt_w[:200]]
            for k, name in enumerate(("gaussian_bon", "gaussian_optimum")):
                row[f"{name}_lo"], row[f"{name}_hi"] = np.quantile([x[k] for x in draws], [a, 1 - a]).tolist()
        rls = [c for c in panel.curves if not c.is_bon and c.method != "tilted" and c.in_analysis]
        # the RL curve that travels furthest (PPO at β = 0): the one the "30 nats" question is about
        for c in sorted(rls, key=lambda c: -float(np.nanmax(c.points["kl"])))[:1]:
            reps = result.replicates[c.label]
            est = result.points[c.label]
            at = statistics.along_axes(est["kl"], est["gold_gain"], KL_30, "kl", "gold_gain")
            rep_at = statistics.along_axes(reps["kl"], reps["gold_gain"], KL_30, "kl", "gold_gain")
            lo, hi = statistics.interval(rep_at, level)
            rows.append({**row, "rl_curve": c.label, "rl_max_kl": float(np.nanmax(est["kl"])),
                         "rl_gold": float(at), "rl_gold_lo": float(lo), "rl_gold_hi": float(hi),
                         "rl_reached_share": float(np.isfinite(rep_at).mean())})
        if not any(r.get("proxy") == panel.key[1] for r in rows):
            rows.append(row)
    return pd.DataFrame(rows)


def thirty_nats_lines(frame: pd.DataFrame) -> list[str]:
    lines = []
    for _, r in frame.iterrows():
        parts = [f"proxy {short(r['proxy'])}, KL {fmt(r['kl'])} nats"]
        if isinstance(r.get("rl_curve"), str):
            if math.isfinite(r["rl_gold"]):
                parts.append(f"{r['rl_curve']} measured {span(r['rl_gold'], r['rl_gold_lo'], r['rl_gold_hi'])}")
            else:
                parts.append(f"{r['rl_curve']} stops at KL {fmt(r['rl_max_kl'])} (never reaches {fmt(r['kl'])})")
        if math.isfinite(r.get("bon_fit_gold", math.nan)):
            parts.append(f"best-of-e^31 by the fitted BoN form {span(r['bon_fit_gold'], r['bon_fit_lo'], r['bon_fit_hi'])} "
                         f"(an extrapolation from KL ≤ {fmt(r['bon_measured_kl'])})")
            parts.append(f"Gaussian closed form (ρ = {fmt(r['rho'])}, σ_gold = {fmt(r['sigma_gold'])} within prompts): "
                         f"best-of-e^31 {span(r['gaussian_bon_gold'], r['gaussian_bon_lo'], r['gaussian_bon_hi'])}, "
                         f"the optimum {span(r['gaussian_optimum_gold'], r['gaussian_optimum_lo'], r['gaussian_optimum_hi'])}")
        lines.append("; ".join(parts) + ".")
    return lines


# ----------------------------------------------------------------------------------------------
# 3. What the text looks like at every point.


def curve_text(c) -> dict[str, np.ndarray] | None:
    """{statistic: [P, K]} for one curve's first run, with its prompt ids [P] under "prompt_id"; None without
    records."""
    run = c.runs[0]
    paths = run["samples_path"] if "samples_path" in run else None
    if paths is None or paths.isna().any() or not all(Path(str(p)).is_file() for p in paths):
        return None
    if c.method in ("bon", "tilted"):
        frame, metadata = best_of_n.read_samples(paths.iloc[0])
        N = int(metadata["samples_per_prompt"])
        proxy = best_of_n.as_matrix(frame, c.panel[1], N)
        if c.method == "bon":
            ns = [int(n) for n in run["n"]]
            expect = lambda values: bon_estimator.best_of_n_per_prompt(proxy, values, ns)  # noqa: E731
        else:
            betas = [float(b) for b in run["beta"]]
            expect = lambda values: tilted.tilted_per_prompt(proxy, values, betas)  # noqa: E731
        per = best_of_n.text_per_prompt(frame, proxy, N, expect)
        out = {name[len(text_stats.PREFIX):]: v for name, v in per.items()}
        out["prompt_id"] = np.sort(frame["prompt_id"].unique())
        return out
    columns: dict[str, list] = {}
    ids = None
    for path in paths:
        frame = pd.read_parquet(path)
        for name, values in text_stats.frame_statistics(frame).items():
            ids, means = per_prompt_means(values, frame["prompt_id"])
            columns.setdefault(name, []).append(means)
    out = {name: np.column_stack(v) for name, v in columns.items()}
    out["prompt_id"] = ids
    return out


def text_table(panels) -> pd.DataFrame:
    """Every point of every curve with records: its KL and gold gain (the analysis') and text statistics,
    each a mean over the panel's shared prompts."""
    rows = []
    for panel in panels:
        for c in panel.curves:
            text = curve_text(c) if c.in_analysis else None
            if text is None:
                continue
            keep = np.isin(text["prompt_id"], panel.prompt_ids)
            for k in range(len(c.points)):
                point = c.points.iloc[k]
                row = {"proxy": panel.key[1], "curve": c.label, "n": point.get("n"), "step": point.get("step"),
                       "beta": point.get("beta"), "kl": point["kl"], "gold_gain": point.get("gold_gain"),
                       "proxy_gain": point.get("proxy_gain")}
                for name in text_stats.STATISTICS:
                    if name in text:
                        values = text[name][keep, k]
                        row[name] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


TEXT_AXES = {"tokens": "completion length, tokens", "distinct_1": "distinct-1 (words)",
             "distinct_2": "distinct-2 (word bigrams)", "nonword_share": "share of non-words",
             "finished": "share ending a sentence", "ref_logprob_per_token": "reference log-prob per token",
             "logprob_per_token": "policy log-prob per token"}


def text_figure(table: pd.DataFrame, out: Path, colour: dict[str, str]) -> tuple[str, str] | None:
    """Each text statistic against sqrt(KL), one column per proxy, one line per curve."""
    if not len(table):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [s for s in TEXT_AXES if s in table and table[s].notna().any()]
    proxies = list(dict.fromkeys(table["proxy"]))
    fig, axes = plt.subplots(len(stats), len(proxies), figsize=(4.2 * len(proxies), 2.2 * len(stats)),
                             squeeze=False, sharex="col")
    for j, proxy in enumerate(proxies):
        part = table[table["proxy"] == proxy]
        for i, stat in enumerate(stats):
            ax = axes[i, j]
            for label, curve in part.groupby("curve", sort=False):
                ax.plot(np.sqrt(curve["kl"].clip(lower=0)), curve[stat], "-o", ms=2.5, lw=1,
                        color=colour.get(label, "k"), label=label)
            if j == 0:
                ax.set_ylabel(TEXT_AXES[stat], fontsize=8)
            if i == 0:
                ax.set_title(f"proxy {proxy}", fontsize=9)
        axes[-1, j].set_xlabel("sqrt(KL), sqrt(nats)")
    handles = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(4, len(handles)),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "text_vs_kl.png", dpi=100)
    plt.close(fig)
    return ("text_vs_kl.png", "What the text looks like against sqrt(KL): length, distinct-1 and distinct-2 of the "
            "words, share of non-words, share ending a sentence, and log-prob per token under the reference (and, "
            "for RL, the policy); means over the shared prompts (best-of-n and the optimum: in expectation under "
            "their selection of the reference samples).")


# ----------------------------------------------------------------------------------------------
# 4. Samples side by side.


def nearest(values: np.ndarray, target: float) -> int:
    values = np.asarray(values, dtype=np.float64)
    return int(np.nanargmin(np.abs(np.sqrt(np.clip(values, 0, None)) - math.sqrt(max(target, 0.0)))))


def samples_table(panels, prompts: int = 3) -> pd.DataFrame:
    """Per panel and RL curve: for `prompts` of the shared prompts, best-of-n's pick at the n whose KL is
    closest to RL's at its evaluation nearest best-of-n's largest KL, RL's sample there, RL's at its gold
    peak and at its last evaluation."""
    rows = []
    for panel in panels:
        bon = next((c for c in panel.curves if c.is_bon and c.in_analysis), None)
        rls = [c for c in panel.curves if not c.is_bon and c.method != "tilted" and c.in_analysis]
        if panel.prompt_ids is None or not rls:
            continue
        chosen = panel.prompt_ids[:: max(1, len(panel.prompt_ids) // prompts)][:prompts]
        frame = None
        if bon is not None:
            frame, metadata = best_of_n.read_samples(bon.runs[0]["samples_path"].iloc[0])
        for rl in rls[:1] if bon is not None else rls:
            points = rl.points
            picks = []
            if bon is not None:
                k_rl = nearest(points["kl"], float(np.nanmax(bon.points["kl"])))
                k_bon = nearest(bon.points["kl"], float(points["kl"].iloc[k_rl]))
                picks.append(("best-of-n", bon, k_bon))
                picks.append((rl.label, rl, k_rl))
            picks.append((f"{rl.label} at its gold peak", rl, int(np.nanargmax(points["gold_gain"]))))
            picks.append((f"{rl.label} last", rl, len(points) - 1))
            for what, c, k in picks:
                point = c.points.iloc[k]
                if c.is_bon:
                    n = int(point["n"])
                    where = f"n = {n}"
                else:
                    step = int(point["step"])
                    where = f"step {step}"
                    samples = pd.read_parquet(c.runs[0]["samples_path"].iloc[k])
                for pid in chosen:
                    if c.is_bon:
                        own = frame[frame["prompt_id"] == pid].iloc[:n]
                        sample = own.loc[own[panel.key[1]].idxmax()]
                        proxy, gold = sample[panel.key[1]], sample[panel.key[2]]
                    else:
                        sample = samples[samples["prompt_id"] == pid].iloc[0]
                        proxy, gold = sample["proxy"], sample["gold"]
                    rows.append({"proxy": panel.key[1], "method": what, "at": where, "kl": float(point["kl"]),
                                 "prompt": str(sample["prompt"]).strip()[-60:],
                                 "completion": str(sample["completion"]).strip(), "proxy_score": float(proxy),
                                 "gold_score": float(gold)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# The report's blocks.


def blocks(panels, out: Path, colour: dict[str, str]) -> tuple[list[tuple], dict[str, pd.DataFrame]]:
    """The report's section ('h2', 'p', 'list', 'table', 'figure' blocks) and its CSV tables by file name."""
    peaks, thirty = peaks_table(panels), thirty_nats(panels)
    text, samples = text_table(panels), samples_table(panels)
    if not (len(peaks) or len(text)):
        return [], {}
    section: list[tuple] = [("h2", "Overoptimization: gold peaks, 30 nats, and how the text was lost")]
    if len(peaks):
        section += [("p", "Each curve's largest measured gold gain and the fall from its best earlier point to its "
                     "last (the fall's interval is simultaneous over the earlier points; resolved when it excludes "
                     "0). Power: simulated, 400 studies of the panel's prompts redrawn from the curve's own per-prompt gains "
                     "with its last point moved up to a plateau (findings.peak_power). Table: peaks.csv."),
                    ("list", [peak_sentence(r) for _, r in peaks.iterrows()])]
    if len(thirty):
        section += [("p", "**30 nats** of RL against best-of-e^31 (KL = 31 − (1 − e^−31) ≈ 30 nats): RL's measured "
                     "gold gain at KL 30 (interpolated in sqrt(KL)); best-of-n's fitted form R(d) = d(α − β d) at "
                     "d = sqrt(30), an extrapolation; and the Goodhart lab's closed form for a Gaussian proxy with "
                     "the reference samples' within-prompt correlation ρ and gold std σ_gold (best-of-n: ρ σ_gold "
                     "E[max of n N(0,1)]; the optimum: ρ σ_gold sqrt(2 KL)) — what gold would do if the proxy's "
                     "error were Gaussian noise. Table: thirty_nats.csv."),
                    ("list", thirty_nats_lines(thirty))]
    if len(text):
        figure = text_figure(text, out, colour)
        section += [("p", "What the text looks like at every point (means over the shared prompts). Table: text.csv.")]
        if figure:
            section.append(("figure", *figure))
        section.append(("table", text.round(4), "text"))
    if len(samples):
        section += [("p", "Samples side by side: best-of-n's pick and the RL policy's sample at about the same KL, "
                     "then RL at its gold peak and at its last evaluation (the same prompts throughout; the "
                     "prompt's last 60 characters). Table: samples.csv."),
                    ("table", samples.round(3), "samples")]
    tables = {"peaks.csv": peaks, "thirty_nats.csv": thirty, "text.csv": text, "samples.csv": samples}
    return section, {k: v for k, v in tables.items() if len(v)}
