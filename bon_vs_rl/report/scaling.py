"""The scaling view of `bonrl report`: a family of proxies of one policy and gold, side by side.

    bonrl experiment configs/cpu-scaling.yaml                        # its report holds this view
    bonrl report --experiment cpu-scaling --scaling on --output runs/cpu-scaling/report

Gao, Schulman & Hilton (2022, §3.4, fig. 1-4) fit gold reward against d = sqrt(KL) for proxies that
differ in training data and in size, and show how the coefficients of their forms (BoN R = d(α − β d),
RL R = d(α − β log d)) and the gold peak move as the proxy gets better; Coste et al. (2023) add ensembles
of proxies (mean, worst case, uncertainty-weighted) and label noise. A *family* is the report's panels of
one (policy, gold), one proxy each, all measured on the same prompts (one draw rescored by every proxy:
`bonrl sample --from-samples`, an experiment's bon-rm-K stages) and analysed on the same prompt resamples,
so every number here is paired across proxies:

- per proxy and curve (best-of-n; each RL setting): α and β with their intervals, the fitted peak's KL and
  gold (open where unresolved), the largest measured gold gain and the fall after it
  (`findings.measured_peak`: the peak a reader can see), beside the proxy's training pairs, its
  non-embedding parameters (Gao et al.'s size axis) and its held-out accuracy: scaling.csv, scaling.png,
  scaling_curves.png;
- per curve, α and β against log(pairs) among single proxies of one backbone and label noise (and against
  log(parameters) among those of one data size), with the prompt-resample interval and the t interval across
  proxies (`findings.trend`): scaling_trends.csv;
- an ensemble's aggregations against the average of its members and against the single proxy trained on the
  same pairs, a noisy-label proxy against the clean one (`findings.compare_proxies`): proxy_comparisons.csv.

What a proxy is comes from its checkpoint (`scorers.describe_rm`) or, where the directory is gone, from its
train-rm row in the results table. A proxy of unknown size (an hf: or python: scorer, a moved checkpoint
without a row) is shown but enters no trend; `--scaling on` refuses it, and a selection with no family of
two proxies, with a message naming the fix.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl.errors import ConfigError

SCALED_METHODS = ("bon", "ppo", "rloo", "grpo")  # the methods that optimize the proxy itself
# A trend needs at least this many proxies: with two the line goes through both points, so there is no scatter
# about it and no t interval, and the prompt-resample interval alone cannot see a proxy's own training luck.
MIN_TREND_PROXIES = 3
COEFFICIENTS = ("alpha", "beta")
MARKERS = {"single": "o", "mean": "s", "min": "D", "mean-std": "P", "member": "^", "noisy": "X"}


@dataclass
class Proxy:
    """One proxy of a family: what it was trained on and how it is read."""

    spec: str
    name: str  # short: the checkpoint directory's name and the aggregation, e.g. rm-5@min
    kind: str  # single | ensemble | member
    directory: str | None = None
    aggregation: str = "mean"  # mean | min | mean-std | member (scorers.aggregate)
    member: int | None = None
    members: int = 1
    pairs: float = math.nan
    label_noise: float = math.nan
    backbone: str | None = None
    parameters: float = math.nan
    parameters_non_embedding: float = math.nan
    accuracy: float = math.nan
    accuracy_lo: float = math.nan  # its 95% interval over resampled held-out prompts (NaN: not recorded)
    accuracy_hi: float = math.nan
    source: str = ""  # where the description came from

    @property
    def sized(self) -> bool:
        return math.isfinite(self.pairs) and math.isfinite(self.parameters_non_embedding)

    @property
    def marker(self) -> str:
        if self.kind == "member":
            return MARKERS["member"]
        if self.kind == "ensemble":
            return MARKERS[self.aggregation]
        return MARKERS["noisy" if self.label_noise > 0 else "single"]


@dataclass
class Family:
    """The panels of one (policy, gold) that the scaling view compares."""

    key: tuple[str, str]
    proxies: dict[str, Proxy]  # proxy spec -> its description, in the panels' order
    panels: list = field(default_factory=list)  # measure.Panel, one per proxy (filled by `measure`)
    rows: list[dict] = field(default_factory=list)  # scaling.csv
    trends: list[dict] = field(default_factory=list)  # scaling_trends.csv
    comparisons: list[dict] = field(default_factory=list)  # proxy_comparisons.csv
    notes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    measured: bool = False  # analysed on shared prompts: the view can be drawn


# ----------------------------------------------------------------------------------------------
# 1. Which proxies: their descriptions, checked before anything is measured.


def number(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def describe(spec: str, rm_rows: pd.DataFrame, recorded: set[str] = frozenset()) -> Proxy:
    """A proxy spec's description: from its checkpoint when it is on disk and is the model the curves' rows
    were measured with (`recorded`: their proxy_fingerprint; rows from before it was recorded have none), else
    from its train-rm row."""
    from bon_vs_rl.measurement import scorers

    kind, _, target = spec.partition(":")
    if kind != "rm" or not target:
        return Proxy(spec, spec, "single", source="not a bonrl reward model: size unknown")
    directory, _, aggregation = target.partition("@")
    name = Path(directory).name + (f"@{aggregation}" if aggregation else "")
    if recorded and scorers.spec_fingerprint(spec) not in recorded:  # retrained since: another model is there now
        return Proxy(spec, name, "single", directory=directory,
                     source="its checkpoint changed after the curves were measured: size unknown")
    try:
        info = scorers.describe_rm(target)
        source = "checkpoint"
    except (ConfigError, OSError, ValueError):
        info, source = None, ""
    if info is None:  # the checkpoint moved or is gone: its train-rm row, for the whole model only
        base = rm_rows[rm_rows["proxy"].astype(str) == f"rm:{directory}"] if len(rm_rows) else rm_rows
        if not len(base):
            return Proxy(spec, name, "single", directory=directory, source="checkpoint and train-rm row not found")
        row = base.iloc[-1]
        ensemble = number(row.get("ensemble"))
        members = int(ensemble) if ensemble >= 1 else 1  # NaN (no column) compares False: one model
        info = {"aggregation": "mean" if not aggregation else aggregation.split("-")[0], "member": None,
                "members": members, "pairs": row.get("pairs"), "label_noise": row.get("label_noise"),
                "backbone": row.get("backbone"), "parameters": row.get("parameters"),
                "parameters_non_embedding": row.get("parameters_non_embedding"),
                "accuracy": row.get("accuracy") if not aggregation or aggregation == "mean" else None,
                "accuracy_lo": row.get("accuracy_lo") if not aggregation or aggregation == "mean" else None,
                "accuracy_hi": row.get("accuracy_hi") if not aggregation or aggregation == "mean" else None}
        source = "train-rm row"
    members = int(info.get("members") or 1)
    agg = info.get("aggregation") or "mean"
    proxy_kind = "member" if agg == "member" else "ensemble" if members > 1 else "single"
    return Proxy(spec, name, proxy_kind, directory=directory, aggregation=agg, member=info.get("member"),
                 members=members, pairs=number(info.get("pairs")), label_noise=number(info.get("label_noise")),
                 backbone=None if info.get("backbone") is None else str(info.get("backbone")),
                 parameters=number(info.get("parameters")),
                 parameters_non_embedding=number(info.get("parameters_non_embedding")),
                 accuracy=number(info.get("accuracy")), accuracy_lo=number(info.get("accuracy_lo")),
                 accuracy_hi=number(info.get("accuracy_hi")), source=source)


def recorded_fingerprints(rows: pd.DataFrame, spec: str) -> set[str]:
    """The proxy fingerprints the rows measured against `spec` recorded (none from an older bonrl)."""
    if "proxy_fingerprint" not in rows or "proxy" not in rows:
        return set()
    return {str(v) for v in rows.loc[rows["proxy"].astype(str) == spec, "proxy_fingerprint"].dropna()}


def plan(curves: list, rows: pd.DataFrame, cfg) -> list[Family]:
    """The families of the selection (one per policy and gold with at least two proxies whose curves optimize
    them), with their proxies described. --scaling on: a ConfigError, before any work, where there is no such
    family or a proxy's size is unknown."""
    if cfg.scaling == "off":
        return []
    rm_rows = rows[rows["method"] == "rm"] if "method" in rows else rows.iloc[0:0]
    keys = {}
    for c in curves:
        if c.method in SCALED_METHODS:
            keys.setdefault((c.panel[0], c.panel[2]), []).append(c.panel[1])
    families = []
    for (policy, gold), proxies in keys.items():
        proxies = list(dict.fromkeys(proxies))
        if len(proxies) < 2:
            continue
        described = {spec: describe(spec, rm_rows, recorded_fingerprints(rows, spec)) for spec in proxies}
        names = [p.name for p in described.values()]
        if len(set(names)) < len(names):  # two checkpoints of one name in different places: the whole spec
            for p in described.values():
                p.name = p.spec.removeprefix("rm:")
        families.append(Family((policy, gold), described))
    if cfg.scaling == "on":
        if not families:
            held = sorted({f"{c.panel[1]} (policy {c.panel[0]}, gold {c.panel[2]})" for c in curves})
            raise ConfigError("scaling: the selection holds one proxy per policy and gold "
                              f"({'; '.join(held) or 'none'}); a scaling view needs at least two proxies of one policy "
                              "and gold: train more with bonrl train-rm and rescore the same samples with bonrl sample "
                              "--from-samples, or pass --scaling auto")
        unknown = [p for f in families for p in f.proxies.values() if not p.sized]
        if unknown:
            raise ConfigError(
                "scaling: the training pairs or parameter count of " + ", ".join(f"{p.spec} ({p.source})" for p in unknown)
                + " are unknown; train proxies with bonrl train-rm (its checkpoint and row record both), keep their "
                "directories, or pass --scaling auto to show them outside the trends")
    return families


# ----------------------------------------------------------------------------------------------
# 2. Measuring: per proxy and curve, from the panels' analyses; trends and comparisons across proxies.


def measure(family: Family, panels: list, cfg) -> None:
    """Fill the family from the report's analysed panels: scaling rows, trends, comparisons, lines."""
    by_key = {p.key: p for p in panels}
    policy, gold = family.key
    family.panels = [by_key[(policy, spec, gold)] for spec in family.proxies if (policy, spec, gold) in by_key]
    analysed = [p for p in family.panels if p.analysis is not None]
    left_out = [p.key[1] for p in family.panels if p.analysis is None]
    if left_out:
        family.notes.append(f"scaling ({policy}, {gold}): {', '.join(left_out)} had no paired measurement and are left "
                            "out of the scaling view.")
    if len(analysed) < 2:
        family.notes.append(f"scaling ({policy}, {gold}): fewer than two proxies were measured with intervals; no "
                            "scaling view.")
        return
    reference = analysed[0]
    unpaired = [p.key[1] for p in analysed[1:] if not np.array_equal(p.prompt_ids, reference.prompt_ids)
                or not np.array_equal(p.analysis.prompt_w, reference.analysis.prompt_w)]
    if unpaired:
        family.notes.append(f"scaling ({policy}, {gold}): the proxies were not measured on the same prompts "
                            f"({', '.join(unpaired)} differ from {reference.key[1]}), so nothing across them can be "
                            "paired; measure every proxy on the same samples (bonrl sample --from-samples) for a "
                            "scaling view.")
        return
    family.panels = analysed
    unsized = [p.spec for p in family.proxies.values() if not p.sized]
    if len(family.proxies) - len(unsized) < 2:
        family.notes.append(f"scaling ({policy}, {gold}): the training pairs and parameters of "
                            f"{', '.join(unsized)} are unknown (no bonrl train-rm checkpoint or row), so there is "
                            "nothing to scale against; no scaling view.")
        return
    family.measured = True
    if unsized:
        family.notes.append(f"scaling ({policy}, {gold}): the size of {', '.join(unsized)} is unknown; shown, but in no "
                            "trend.")
    for panel in analysed:
        proxy = family.proxies[panel.key[1]]
        for c in panel.curves:
            if c.in_analysis and c.method in SCALED_METHODS:
                family.rows.append(proxy_row(proxy, panel, c))
    sizes = {p.parameters_non_embedding for p in family.proxies.values() if p.sized}
    if len(sizes) == 1:
        family.notes.append(f"scaling ({policy}, {gold}): every proxy has {sizes.pop():,.0f} non-embedding parameters "
                            "(one backbone), so there is no model-size axis; train proxies on other backbones "
                            "(bonrl train-rm --backbone) for one.")
    family.trends = trends(family)
    family.comparisons = comparisons(family, cfg)
    family.lines = summary(family)


def proxy_row(proxy: Proxy, panel, c) -> dict:
    from bon_vs_rl.analysis import findings

    fit, peak = panel.analysis.fits[c.label], panel.analysis.peaks[c.label]
    trusted = c.points[~c.points["low_ess"].to_numpy(dtype=bool)] if "low_ess" in c.points else c.points
    kl_max = float(np.nanmax(trusted["kl"])) if len(trusted) else math.nan
    best = c.points.iloc[peak["best_point"]] if peak["best_point"] >= 0 else None
    row = {"policy": panel.key[0], "gold": panel.key[2], "proxy": proxy.spec, "name": proxy.name, "kind": proxy.kind,
           "aggregation": proxy.aggregation, "member": proxy.member, "members": proxy.members, "pairs": proxy.pairs,
           "label_noise": proxy.label_noise, "backbone": proxy.backbone, "parameters": proxy.parameters,
           "parameters_non_embedding": proxy.parameters_non_embedding, "accuracy": proxy.accuracy,
           "accuracy_lo": proxy.accuracy_lo, "accuracy_hi": proxy.accuracy_hi,
           "curve": c.label, "method": c.method, "form": c.form, "prompts": len(panel.prompt_ids), "kl_max": kl_max}
    for name in ("alpha", "beta", "peak_kl", "peak_gold"):
        row.update({name: fit.get(name, math.nan), f"{name}_lo": fit.get(f"{name}_lo", math.nan),
                    f"{name}_hi": fit.get(f"{name}_hi", math.nan)})
    row["peak_status"] = findings.fitted_peak_status(fit, kl_max)
    row["peak_open_reason"] = findings.open_reason(fit) if row["peak_status"] == "open" else ""
    row["no_peak_share"] = fit.get("no_peak", math.nan)
    row.update({"fit_rmse": fit.get("rmse", math.nan), "fit_r2": fit.get("r2", math.nan),
                "fit_rmse_over_se": fit.get("se_ratio", math.nan)})
    row["failed_share"], row["overflow_share"] = fit.get("failed", math.nan), fit.get("overflow", math.nan)
    row.update({"best_gold": peak["best"], "best_gold_lo": peak["best_lo"], "best_gold_hi": peak["best_hi"],
                "best_kl": peak["best_kl"], "best_at": None if best is None else best.get(c.order),
                "fall": peak["fall"], "fall_lo": peak["fall_lo"], "fall_hi": peak["fall_hi"],
                "peak_resolved": peak["resolved"]})
    # No resolved peak says little without the fall it could have found: simulated from this curve's own prompts.
    power = panel.analysis.peak_power(c.label) if not peak["resolved"] else {}
    row.update({"power_fall_50": power.get("fall_50", math.nan), "power_fall_80": power.get("fall_80", math.nan)})
    return row


def trends(family: Family) -> list[dict]:
    """α and β against log(pairs) among the single proxies of one backbone and label noise, and against
    log(non-embedding parameters) among those of one data size and noise; one trend per curve. None (a note
    instead) from fewer than MIN_TREND_PROXIES proxies, or for an RL curve where some proxy's fitted β ≤ 0: its
    curve d(α − β log d) is then convex, outside Gao et al.'s peaked regime, and α is not their coefficient."""
    from bon_vs_rl.analysis import findings

    analyses = {p.key[1]: p.analysis for p in family.panels}
    out = []
    singles = [p for p in family.proxies.values() if p.kind == "single" and p.sized and p.spec in analyses]
    axes = (("pairs", lambda p: (p.backbone, p.label_noise), "pairs"),
            ("parameters_non_embedding", lambda p: (p.pairs, p.label_noise), "parameters"))
    for curve in dict.fromkeys(r["curve"] for r in family.rows):
        for x_name, group_key, x_word in axes:
            for _group, members in itertools.groupby(sorted(singles, key=lambda p: str(group_key(p))),
                                                    key=lambda p: str(group_key(p))):
                members = [p for p in members if curve in analyses[p.spec].fits]
                xs = np.log([getattr(p, x_name) for p in members])
                if len(members) < 2 or np.ptp(xs) == 0:
                    continue
                names = ", ".join(p.name for p in members)
                if len(members) < MIN_TREND_PROXIES:
                    family.notes.append(f"scaling ({family.key[0]}, {family.key[1]}): no {curve} trend against log "
                                        f"{x_word} from {len(members)} proxies ({names}): a trend needs at least "
                                        f"{MIN_TREND_PROXIES}, so that their scatter about the line gives a t interval.")
                    continue
                convex = [p.name for p in members if analyses[p.spec].fits[curve]["form"] == "rl"
                          and not analyses[p.spec].fits[curve]["beta"] > 0]
                if convex:
                    family.notes.append(f"scaling ({family.key[0]}, {family.key[1]}): no {curve} trend against log "
                                        f"{x_word}: the RL fit of {', '.join(convex)} has β ≤ 0 (a convex curve, outside "
                                        "Gao et al.'s peaked regime), where α is not their coefficient.")
                    continue
                for coefficient in COEFFICIENTS:
                    values = np.array([analyses[p.spec].fits[curve][coefficient] for p in members])
                    reps = np.stack([analyses[p.spec].fit_replicates[curve][coefficient] for p in members], axis=1)
                    if not np.all(np.isfinite(values)):
                        continue
                    t = findings.trend(xs, values, reps)
                    first = members[0]
                    held = (f"backbone {first.backbone}, label noise {first.label_noise:g}" if x_word == "pairs"
                            else f"{first.pairs:g} pairs, label noise {first.label_noise:g}")
                    out.append({"policy": family.key[0], "gold": family.key[1], "curve": curve,
                                "coefficient": coefficient, "against": f"log {x_word}", "held_fixed": held,
                                "proxy_names": names,
                                "x_min": float(np.exp(xs.min())), "x_max": float(np.exp(xs.max())), **t})
    return out


def comparisons(family: Family, cfg) -> list[dict]:
    """Paired gold comparisons across proxies: each ensemble aggregation against the average of its members
    and against the single proxy of the same pairs and backbone; each noisy proxy against the clean one."""
    from bon_vs_rl.analysis import findings

    analyses = {p.key[1]: p.analysis for p in family.panels}
    proxies = [p for p in family.proxies.values() if p.spec in analyses]
    singles = [p for p in proxies if p.kind == "single"]
    pairs_to_compare = []  # (what, proxy a, [proxies b])
    for _directory, group in itertools.groupby(sorted((p for p in proxies if p.kind != "single"),
                                                     key=lambda p: str(p.directory)), key=lambda p: str(p.directory)):
        group = list(group)
        members = sorted((p for p in group if p.kind == "member"), key=lambda p: p.member)
        for agg in (p for p in group if p.kind == "ensemble"):
            if members:
                pairs_to_compare.append((f"{agg.name} vs the average of its {len(members)} member(s)", agg, members))
            same_data = [s for s in singles if s.pairs == agg.pairs and s.backbone == agg.backbone
                         and s.label_noise == agg.label_noise]
            for single in same_data:
                pairs_to_compare.append((f"{agg.name} vs {single.name}, one model on the same {agg.pairs:g} pairs",
                                         agg, [single]))
    for noisy in (p for p in singles if p.label_noise > 0):
        for clean in (s for s in singles if s.label_noise == 0 and s.pairs == noisy.pairs and s.backbone == noisy.backbone):
            pairs_to_compare.append((f"{noisy.name} ({noisy.label_noise:.0%} of labels flipped) vs {clean.name} (clean, "
                                     f"same {noisy.pairs:g} pairs)", noisy, [clean]))
    out = []
    for what, a, bs in pairs_to_compare:
        for curve in dict.fromkeys(r["curve"] for r in family.rows):
            if curve not in analyses[a.spec].walks or any(curve not in analyses[b.spec].walks for b in bs):
                continue
            rows = findings.compare_proxies((analyses[a.spec], curve), [(analyses[b.spec], curve) for b in bs],
                                              kl_target=cfg.kl_target, gold_target=cfg.gold_level)
            for r in rows:
                out.append({"policy": family.key[0], "gold": family.key[1], "comparison": what, "curve": curve,
                            **r, "curve_a": a.name, "curve_b": " + ".join(b.name for b in bs),
                            "prompts": len(family.panels[0].prompt_ids)})
    return out


# ----------------------------------------------------------------------------------------------
# 3. Words: every number with its interval; what the intervals do not resolve is said so.


def per_doubling(value: float) -> float:
    """A slope per e-fold of the x axis (a natural-log fit) as the change per doubling."""
    return value * math.log(2)


def summary(family: Family) -> list[str]:
    from bon_vs_rl.report.words import fmt, span

    policy, gold = family.key
    proxies = [family.proxies[p.key[1]] for p in family.panels]
    sizes = sorted({p.pairs for p in proxies if p.kind == "single" and math.isfinite(p.pairs)})
    lines = [f"**Scaling, policy {policy}, gold {gold}** — {len(proxies)} proxies on {len(family.panels[0].prompt_ids)} "
             "shared prompts, paired across proxies" + (f"; single proxies at {', '.join(fmt(s) for s in sizes)} pairs"
                                                       if sizes else "") + "."]
    for t in family.trends:
        slope = span(per_doubling(t["slope"]), per_doubling(t["slope_lo"]), per_doubling(t["slope_hi"]))
        t_span = span(per_doubling(t["slope"]), per_doubling(t["slope_t_lo"]), per_doubling(t["slope_t_hi"]))
        x = t["against"].removeprefix("log ")
        word = {"rises": "rises", "falls": "falls", "unresolved": "does not move resolvably"}
        if t["verdict"] != "unresolved" and t["verdict_t"] == t["verdict"]:
            settled = f"**{word[t['verdict']]}** with {x}, resolved by both intervals"
        elif t["verdict"] != "unresolved":
            settled = (f"{word[t['verdict']]} with {x} for these proxies on these prompts, but the t interval from "
                       "their scatter does not resolve it (a proxy trained again could land elsewhere)")
        else:
            settled = f"is not resolved to move with {x} at this sample size"
        lines.append(f"{t['curve']} {('α' if t['coefficient'] == 'alpha' else 'β')} against log {x} ({t['held_fixed']}; "
                     f"{t['proxy_names']}): slope {slope} per doubling of {x} (prompt resamples; t interval across the "
                     f"{t['proxies']} proxies {t_span}) — it {settled}.")
    for r in family.rows:
        where = f"{r['name']} ({fmt(r['pairs'])} pairs" + (
            f", held-out accuracy {span(r['accuracy'], r['accuracy_lo'], r['accuracy_hi'])}"
            if math.isfinite(r['accuracy']) else "") + ")"
        at = "" if r["best_at"] is None or not math.isfinite(number(r["best_at"])) else \
            (f" (n = {int(r['best_at'])})" if r["method"] == "bon" else f" (step {int(r['best_at'])})")
        best = (f"its largest gold gain is {span(r['best_gold'], r['best_gold_lo'], r['best_gold_hi'])} at KL "
                f"{fmt(r['best_kl'])}{at}")
        power = (f" (power at these {r['prompts']} prompts: a true fall of {fmt(r['power_fall_50'], 2)} from the best "
                 f"point to the last would be resolved half the time, {fmt(r['power_fall_80'], 2)} four times in five)"
                 if math.isfinite(r.get("power_fall_50", math.nan)) else "")
        if r["peak_resolved"]:
            fall = (f"then gold falls by {span(r['fall'], r['fall_lo'], r['fall_hi'])} to KL {fmt(r['kl_max'])}: **a "
                    "resolved gold peak**")
        elif math.isfinite(r["fall"]) and r["fall"] <= 0:
            fall = f"its last point (KL {fmt(r['kl_max'])}) is its highest: no peak yet{power}"
        else:
            fall = (f"the fall after it, {span(r['fall'], r['fall_lo'], r['fall_hi'])}, is not resolved (no peak "
                    f"shown){power}")
        fitted = {"inside": "inside the measured range", "extrapolated": "beyond the measured range",
                  "at the start": "at the initial policy: gold falls from the start (α ≤ 0)",
                  "open": f"open above: {r['peak_open_reason']}"}[r["peak_status"]]
        lines.append(f"{where}, {r['curve']}: {best}; {fall}. The {r['form']} form's peak: KL "
                     f"{span(r['peak_kl'], r['peak_kl_lo'], r['peak_kl_hi'])} ({fitted}); α "
                     f"{span(r['alpha'], r['alpha_lo'], r['alpha_hi'])}, β {span(r['beta'], r['beta_lo'], r['beta_hi'])}; "
                     f"fit rmse {fmt(r['fit_rmse'])}, {fmt(r['fit_rmse_over_se'], 2)}× the points' SE.")
    for r in family.comparisons:
        what = ("gold gain at KL " + fmt(r["target"]) if r["quantity"] == "gold_at_kl"
                else f"KL to reach gold gain {fmt(r['target'])}")
        if not math.isfinite(r["target"]):
            lines.append(f"{r['comparison']}, {r['curve']}: no common range for the {what.split(' at')[0]}.")
            continue
        both = (f"{r['curve_a']} {span(r['a'], r['a_lo'], r['a_hi'])}, {r['curve_b']} {span(r['b'], r['b_lo'], r['b_hi'])}"
                f"; difference {span(r['diff'], r['diff_lo'], r['diff_hi'])}")
        if r["verdict"] == "unresolved":
            verdict = "not resolved at this sample size"
        else:
            ahead = r["verdict"] == "ahead"
            verdict = f"**{r['curve_a'] if ahead else r['curve_b']} ahead** (the interval of the difference excludes 0)"
        lines.append(f"{r['comparison']}, {r['curve']}, {what}: {both} — {verdict}.")
    return lines


# ----------------------------------------------------------------------------------------------
# 4. Figures and tables.


CURVE_COLOURS = ["C0", "C1", "C2", "C3", "C4", "C5"]


def fmt_size(value: float) -> str:
    """A tick label for a count: 125, 2k, 12.5k, 10.8M."""
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4 or (value >= 1e3 and value % 1e3 == 0):
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}"


def figures(families: list[Family], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    made = []
    for i, family in enumerate(f for f in families if f.measured):
        suffix = "" if i == 0 else f"-{i}"
        frame = pd.DataFrame(family.rows)
        curves = list(dict.fromkeys(frame["curve"]))
        colour = {c: CURVE_COLOURS[k % len(CURVE_COLOURS)] for k, c in enumerate(curves)}

        # (a) coefficients and peaks against pairs, parameters and accuracy.
        xs = [("pairs", "training pairs", True), ("parameters_non_embedding", "non-embedding parameters", True),
              ("accuracy", "held-out accuracy", False)]
        # An axis on which every proxy sits at one value (one backbone: one size) would be a column of points.
        xs = [x for x in xs if pd.to_numeric(frame[x[0]], errors="coerce").dropna().nunique() >= 2]
        if not xs:
            continue
        ys = [("alpha", "α", False), ("beta", "β", False), ("peak_kl", "fitted peak KL (nats)", True),
              ("fall", "gold fall after its best point", False)]
        fig, axes = plt.subplots(len(xs), len(ys), figsize=(4.2 * len(ys), 3.2 * len(xs)), squeeze=False)
        for r, (x, x_label, x_log) in enumerate(xs):
            for k, (y, y_label, y_log) in enumerate(ys):
                ax = axes[r, k]
                for _, row in frame.iterrows():
                    value, lo, hi = row[y], row[f"{y}_lo"], row[f"{y}_hi"]
                    if not (math.isfinite(number(row[x])) and math.isfinite(number(value))):
                        continue
                    proxy = family.proxies[row["proxy"]]
                    open_above = not math.isfinite(number(hi))
                    top = value if open_above else hi
                    bottom = value if not math.isfinite(number(lo)) else lo
                    ax.errorbar([row[x]], [value], yerr=[[max(value - bottom, 0)], [max(top - value, 0)]],
                                fmt=proxy.marker, color=colour[row["curve"]], ms=6 if proxy.kind != "member" else 4,
                                mfc="white" if proxy.kind == "member" else colour[row["curve"]], capsize=2, lw=0.8)
                    if open_above:  # an interval open above: the arrow says so
                        ax.annotate("", xy=(row[x], value), xytext=(0, 14), textcoords="offset points",
                                    arrowprops={"arrowstyle": "<-", "color": colour[row["curve"]], "lw": 0.8})
                for t in family.trends:
                    if t["coefficient"] == y and t["against"] == f"log {x.split('_')[0]}" and r < 2:
                        grid = np.geomspace(t["x_min"], t["x_max"], 50)
                        ax.plot(grid, t["intercept"] + t["slope"] * np.log(grid), "--", color=colour[t["curve"]], lw=1)
                if y == "fall":
                    ax.axhline(0, color="grey", lw=0.5)
                if x_log:  # ticks at the proxies' own sizes, written out (125, 250, ...), not 10^k minor labels
                    ax.set_xscale("log")
                    sizes = sorted(pd.to_numeric(frame[x], errors="coerce").dropna().unique())
                    ax.set_xticks(sizes, [fmt_size(v) for v in sizes])
                    ax.xaxis.set_minor_formatter(NullFormatter())
                if y_log:
                    ax.set_yscale("log")
                ax.set_xlabel(x_label, fontsize=8)
                ax.set_ylabel(y_label, fontsize=8)
                ax.tick_params(labelsize=7)
        handles = [Line2D([], [], color=colour[c], marker="o", lw=0, label=c) for c in curves]
        handles += [Line2D([], [], color="0.4", marker=m, lw=0, mfc="white" if kind == "member" else "0.4",
                           label=words) for kind, m, words in (
            ("single", MARKERS["single"], "one proxy"), ("mean", MARKERS["mean"], "ensemble @mean"),
            ("min", MARKERS["min"], "ensemble @min"), ("mean-std", MARKERS["mean-std"], "ensemble @mean-λstd"),
            ("member", MARKERS["member"], "ensemble member"), ("noisy", MARKERS["noisy"], "label noise"))]
        handles.append(Line2D([], [], color="0.4", ls="--", label="trend across single proxies"))
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
        fig.suptitle(f"policy {family.key[0]}, gold {family.key[1]}", fontsize=9)
        fig.tight_layout(rect=(0, 0.06, 1, 0.97))
        name = f"scaling{suffix}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        against = ", ".join(label for _, label, _ in xs)
        made.append((name, "Each proxy's fitted α and β (Gao et al.'s forms), fitted peak KL and the measured fall of "
                     f"gold after its best point, against its {against}; bars: 95% intervals from prompt resamples shared by every proxy (an arrow: "
                     "open above); dashed: the trend in log pairs (or parameters) across single proxies."))

        # (b) every proxy's gold curve on one axis per curve kind: the peaks a reader can see.
        fig, axes = plt.subplots(1, len(curves), figsize=(max(6.5, 5.5 * len(curves)), 4.2), squeeze=False)
        sizes = [p.pairs for p in family.proxies.values() if p.kind == "single" and math.isfinite(p.pairs)]
        cmap = plt.get_cmap("viridis")
        lo_size, hi_size = (math.log(min(sizes)), math.log(max(sizes))) if sizes else (0.0, 1.0)
        for k, curve in enumerate(curves):
            ax = axes[0, k]
            for panel in family.panels:
                proxy = family.proxies[panel.key[1]]
                c = next((c for c in panel.curves if c.label == curve and c.in_analysis), None)
                if c is None:
                    continue
                p = c.points[~c.points["low_ess"].to_numpy(dtype=bool)] if "low_ess" in c.points else c.points
                if proxy.kind == "single" and math.isfinite(proxy.pairs) and not proxy.label_noise > 0:
                    shade = (math.log(proxy.pairs) - lo_size) / ((hi_size - lo_size) or 1.0)
                    style = {"color": cmap(0.1 + 0.8 * shade), "lw": 1.6, "ls": "-"}
                elif proxy.kind == "member":
                    style = {"color": "0.55", "lw": 0.8, "ls": ":"}
                elif proxy.kind == "ensemble":
                    style = {"color": {"mean": "black", "min": "C3", "mean-std": "C1"}[proxy.aggregation], "lw": 1.4,
                             "ls": "--"}
                else:
                    style = {"color": "C3", "lw": 1.2, "ls": "-."}
                ax.plot(p["d"], p["scaled"], marker=proxy.marker, ms=3.5, label=proxy.name, **style)
                if proxy.kind == "single" and "scaled_lo" in p:
                    ax.fill_between(p["d"], p["scaled_lo"], p["scaled_hi"], color=style["color"], alpha=0.08, lw=0)
                peak = panel.analysis.peaks[c.label]
                if peak["resolved"]:
                    best = c.points.iloc[peak["best_point"]]
                    ax.plot([best["d"]], [best["scaled"]], "*", color=style["color"], ms=12, mec="black", mew=0.5)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(curve, fontsize=9)
            ax.set_xlabel("sqrt(KL) from the initial policy, sqrt(nats)", fontsize=8)
            ax.set_ylabel("gold − initial", fontsize=8)
            ax.legend(fontsize=6, ncol=2, frameon=False)
        fig.suptitle(f"policy {family.key[0]}, gold {family.key[1]}: every proxy's gold", fontsize=9)
        fig.tight_layout()
        name = f"scaling_curves{suffix}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        made.append((name, "Gold gain over the initial policy against sqrt(KL), one line per proxy: single proxies "
                     "coloured by their training pairs (dark: fewest), with 95% bands; ensembles dashed (black @mean, "
                     "red @min, orange @mean-λstd), their members dotted grey, label noise dash-dotted red. A star marks "
                     "the best point of a curve whose gold then falls by a resolved amount."))
    return made


TABLE_COLUMNS = ["name", "curve", "pairs", "label_noise", "parameters_non_embedding", "accuracy", "alpha", "beta",
                 "peak_kl", "best_gold", "fall", "peak_resolved"]


def tables(families: list[Family]) -> dict[str, pd.DataFrame]:
    measured = [f for f in families if f.measured]
    return {"scaling.csv": pd.DataFrame([r for f in measured for r in f.rows]),
            "scaling_trends.csv": pd.DataFrame([t for f in measured for t in f.trends]),
            "proxy_comparisons.csv": pd.DataFrame([c for f in measured for c in f.comparisons])}


def readable(family: Family) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three tables as the report shows them: every number with its interval in one cell."""
    from bon_vs_rl.report.words import fmt, span

    rows = pd.DataFrame([{
        "proxy": r["name"], "curve": r["curve"], "pairs": fmt(r["pairs"]), "noise": fmt(r["label_noise"]),
        "params (non-emb.)": fmt(r["parameters_non_embedding"]),
        "accuracy": span(r["accuracy"], r["accuracy_lo"], r["accuracy_hi"]),
        "α": span(r["alpha"], r["alpha_lo"], r["alpha_hi"]), "β": span(r["beta"], r["beta_lo"], r["beta_hi"]),
        "fitted peak KL": span(r["peak_kl"], r["peak_kl_lo"], r["peak_kl_hi"]),
        "best gold": span(r["best_gold"], r["best_gold_lo"], r["best_gold_hi"]), "at KL": fmt(r["best_kl"]),
        "fall after it": span(r["fall"], r["fall_lo"], r["fall_hi"]),
        "peak": "resolved" if r["peak_resolved"] else f"not resolved; 80% power from a fall of {fmt(r['power_fall_80'], 2)}",
    } for r in family.rows])
    trend_rows = pd.DataFrame([{
        "curve": t["curve"], "coefficient": t["coefficient"], "against": t["against"], "held fixed": t["held_fixed"],
        "proxies": t["proxy_names"], "slope per doubling": span(per_doubling(t["slope"]), per_doubling(t["slope_lo"]),
                                                            per_doubling(t["slope_hi"])),
        "t interval across proxies": span(per_doubling(t["slope"]), per_doubling(t["slope_t_lo"]),
                                          per_doubling(t["slope_t_hi"])),
        "verdict": t["verdict"] if t["verdict"] == t["verdict_t"] else f"{t['verdict']} (t: {t['verdict_t']})",
    } for t in family.trends])
    comparison_rows = pd.DataFrame([{
        "comparison": r["comparison"], "curve": r["curve"],
        "quantity": "gold gain at KL " + fmt(r["target"]) if r["quantity"] == "gold_at_kl"
        else "KL to reach gold " + fmt(r["target"]),
        "a": span(r["a"], r["a_lo"], r["a_hi"]), "b": span(r["b"], r["b_lo"], r["b_hi"]),
        "a − b": span(r["diff"], r["diff_lo"], r["diff_hi"]),
        "verdict": "not resolved" if r["verdict"] == "unresolved" else
        f"{r['curve_a'] if r['verdict'] == 'ahead' else r['curve_b']} ahead",
    } for r in family.comparisons])
    return rows, trend_rows, comparison_rows


def blocks(families: list[Family], made: list[tuple[str, str]]) -> list[tuple]:
    """The report's section for the scaling view (write.render_markdown / render_html blocks)."""
    from bon_vs_rl.report.words import multiplicity_note

    measured = [f for f in families if f.measured]
    if not measured:
        return []
    out: list[tuple] = [("h2", "Scaling across proxies (Gao et al. 2022 §3.4)"),
                        ("p", "Every proxy of one policy and gold, measured on the same prompts and samples and analysed "
                         "on the same prompt resamples, so differences between proxies are paired. Best gold and the "
                         "fall after it are read off the measured points (the fall's interval is simultaneous over the "
                         "earlier points: a plateau is not called a peak); α, β and the fitted peak come from Gao et "
                         "al.'s forms. A trend's slope is given per doubling, with two intervals: prompt resamples (these "
                         "trained proxies, each held fixed, measured on these prompts) and the t interval from the "
                         "proxies' scatter about the line, which adds each proxy's own training luck only as far as that "
                         "luck is independent across proxies (proxies trained on nested subsets of one labelled draw share "
                         "it, and the t interval can then be too narrow). Neither covers redrawing the labelled pairs. A "
                         f"trend needs at least {MIN_TREND_PROXIES} proxies. Tables: scaling.csv, scaling_trends.csv, "
                         "proxy_comparisons.csv.")]
    for i, family in enumerate(measured):
        rows, trend_rows, comparison_rows = readable(family)
        out.append(("list", family.lines))
        out += [("figure", name, caption) for name, caption in made
                if name in (f"scaling{'' if i == 0 else f'-{i}'}.png", f"scaling_curves{'' if i == 0 else f'-{i}'}.png")]
        out.append(("table", rows, f"scaling-{i}"))
        if len(trend_rows):
            out.append(("table", trend_rows, f"scaling-trends-{i}"))
        if len(comparison_rows):
            out.append(("p", multiplicity_note(pd.DataFrame(family.comparisons),
                                               f"The proxy comparisons of policy {family.key[0]}, gold {family.key[1]}")))
            out.append(("table", comparison_rows, f"proxy-comparisons-{i}"))
    return out
