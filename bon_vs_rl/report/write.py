"""`bonrl report`: what best-of-n and RL bought, measured by the gold reward, at the same KL — with intervals.

    bonrl report --experiment cpu-demo --output runs/cpu-demo/report
    bonrl report --results runs/results.sqlite --methods bon,ppo --scale unit --fit-kl-max 2

Reads the shared results table (only `bonrl report` draws; every other command writes rows) and the
per-sample records every row links to, and writes one self-contained directory, replaced atomically
so a failed report never leaves half a one:

    report.md, report.html   the same content; the HTML embeds its figures (opens offline)
    reward_vs_kl.png         gold (top) and proxy (bottom) gain against sqrt(KL), one column per proxy RM
    proxy_vs_gold.png        gold gain against proxy gain: how much of the proxy's gain is real
    kl_vs_proxy.png          KL spent per unit of proxy gain
    length_vs_kl.png         completion length against KL (length exploitation is the commonest hack)
    points.csv, fits.csv, comparison.csv, (fit_check.csv, reward_models.csv)
    scaling.png, scaling_curves.png, scaling.csv, scaling_trends.csv, proxy_comparisons.csv
                             the scaling view, where a policy and gold have several proxies (scaling.py)

Vocabulary (Gao, Schulman & Hilton 2022):
- A *panel* is one (policy, proxy, gold); a *curve* one optimization setting against that proxy:
  best-of-n over its n grid, the KL-regularized optimum over its β grid, or an RL setting over its
  steps — replicate seeds of one RL setting (same `setting` fingerprint) pooled into one curve.
- Every curve of a panel is re-measured from its per-prompt records on the prompts all of them share,
  and every gain is paired, prompt by prompt, against one measurement of the initial policy on those
  prompts (best-of-n's N samples per prompt when there are any, else an RL run's step 0).
- d = sqrt(KL(π || π_init)); gold is shown as that paired gain (with --scale unit, divided by the initial
  policy's per-sample gold standard deviation, the unit-variance gold of §2.2).
- Uncertainty: `statistics.analyse` resamples prompts (and seeds) through the whole pipeline — per-prompt
  estimates, gains, fits, interpolated comparisons — so every number printed here carries a 95% interval,
  and a comparison is called only when the interval of the difference excludes 0.
- Fits: BoN R(d) = d(α − β d), RL R(d) = d(α − β log d) (eq. 1-2), drawn solid over the measured range of d
  and dashed where they only extrapolate.

This module selects, draws and writes; every statistic comes from `statistics.py`.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl import console, files, fits, scaling
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
# 2. Per-prompt records: what each run measured on each prompt, read back from its saved samples.


@dataclass
class Records:
    """One run's measurements of one curve, prompt by prompt: arrays [P, K] (prompts × points).

    For best-of-n, point k is n = x[k] and entry [p, k] the prompt's unbiased best-of-n estimate; for an
    RL run, point k is step x[k] and the entry the prompt's mean over its eval samples at that step. The
    initial policy on the same prompts is [P]: the mean of all N samples (best-of-n) or step 0 (RL).
    """

    run_id: str
    prompt_ids: np.ndarray  # [P] ints, ascending
    prompt_texts: list[str]
    x: np.ndarray  # [K]
    kl: np.ndarray
    proxy: np.ndarray
    gold: np.ndarray
    initial_proxy: np.ndarray | None = None
    initial_gold: np.ndarray | None = None
    initial_gold_std: float = math.nan  # per-sample gold std of the initial policy (unit scale)
    samples_per_prompt: int = 0  # how many samples the initial policy's per-prompt means average


def samples_records(group: pd.DataFrame, x: np.ndarray, per_prompt) -> Records:
    """A curve estimated from one samples file of reference samples (`bonrl sample`): best-of-n or the
    KL-regularized optimum, re-estimated for the rows' points by the same function that wrote the rows."""
    from bon_vs_rl import best_of_n

    frame, metadata = best_of_n.read_samples(group["samples_path"].iloc[0])
    N = int(metadata["samples_per_prompt"])
    gold_spec = str(group["gold"].iloc[0])
    per = per_prompt(frame, str(group["proxy"].iloc[0]), gold_spec, N)
    firsts = frame.groupby("prompt_id", sort=True)["prompt"].first()
    return Records(str(group["run_id"].iloc[0]), firsts.index.to_numpy(), firsts.tolist(), x,
                   per["kl"], per["proxy"], per["gold"], per["proxy_initial"], per["gold_initial"],
                   float(frame[gold_spec].std(ddof=1)), N)


def bon_records(group: pd.DataFrame) -> Records:
    """Best-of-n of one proxy, for the rows' n (best_of_n.bon_per_prompt)."""
    from bon_vs_rl import best_of_n

    ns = [int(n) for n in group["n"]]
    return samples_records(group, np.asarray(ns, float),
                           lambda frame, proxy, gold, N: best_of_n.bon_per_prompt(frame, proxy, gold, ns, N))


def tilted_records(group: pd.DataFrame) -> Records:
    """The KL-regularized optimum of one proxy, for the rows' β (best_of_n.optimum_per_prompt)."""
    from bon_vs_rl import best_of_n

    betas = [float(b) for b in group["beta"]]
    return samples_records(group, np.asarray(betas),
                           lambda frame, proxy, gold, N: best_of_n.optimum_per_prompt(frame, proxy, gold, betas, N))


def rl_records(group: pd.DataFrame) -> Records:
    """An RL run: one eval-samples file per row (step), each reduced to per-prompt means."""
    from bon_vs_rl.evaluate import per_prompt_means

    ids, texts, columns, initial = None, None, {"kl": [], "proxy": [], "gold": []}, None
    for _, row in group.iterrows():
        frame = pd.read_parquet(row["samples_path"])
        step_ids = np.unique(frame["prompt_id"].to_numpy())
        if ids is None:
            ids = step_ids
            texts = frame.groupby("prompt_id", sort=True)["prompt"].first().tolist()
        elif not np.array_equal(ids, step_ids):
            raise ValueError(f"run {row['run_id']}: step {row['step']} was evaluated on other prompts than step "
                             f"{group['step'].iloc[0]}")
        for name in columns:
            columns[name].append(per_prompt_means(frame[name], frame["prompt_id"])[1])
        if row["step"] == 0:
            initial = (columns["proxy"][-1], columns["gold"][-1], float(frame["gold"].std(ddof=1)),
                       int(len(frame) // len(step_ids)))
    stacked = {name: np.column_stack(values) for name, values in columns.items()}
    records = Records(str(group["run_id"].iloc[0]), ids, texts, group["step"].to_numpy(dtype=float),
                      stacked["kl"], stacked["proxy"], stacked["gold"])
    if initial is not None:
        records.initial_proxy, records.initial_gold, records.initial_gold_std, records.samples_per_prompt = initial
    return records


# Methods whose per-prompt records are re-estimated from one samples file; every other method (ppo, rloo,
# grpo, ...) is an RL-style run with one eval-samples file per row.
RECORDS = {"bon": bon_records, "tilted": tilted_records}


def load_records(method: str, group: pd.DataFrame) -> tuple[Records | None, str]:
    """The run's per-prompt records, or None and why (rows without files: the curve gets no intervals)."""
    paths = group["samples_path"] if "samples_path" in group else pd.Series(dtype=object)
    if paths.isna().any() or not len(paths):
        return None, "it saved no per-sample records"
    missing = [p for p in dict.fromkeys(paths) if not Path(str(p)).is_file()]
    if missing:
        return None, f"its samples file {missing[0]} is gone"
    try:
        return RECORDS.get(method, rl_records)(group), ""
    except Exception as exc:  # an unreadable or edited file: report without intervals rather than fail
        return None, f"its samples could not be read ({type(exc).__name__}: {str(exc)[:120]})"


# ----------------------------------------------------------------------------------------------
# 3. Curves: the runs of one setting (replicate seeds pooled) on one panel.


ORDER = {"bon": "n", "tilted": "beta"}  # the coordinate along a curve; RL methods go by step
FORMS = {"bon": "bon", "tilted": "bon"}  # Gao et al.'s form for each method (eq. 1 for BoN, eq. 2 for RL)


@dataclass
class Curve:
    panel: tuple[str, str, str]  # (policy, proxy, gold): only curves in one panel are compared
    method: str
    label: str
    form: str
    run_ids: list[str]  # one per replicate seed
    seeds: list
    runs: list[pd.DataFrame]  # each run's rows, in curve order, restricted to the points all runs share
    records: list[Records] | None = None  # per run, when every run has them
    records_note: str = ""
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # the pooled curve (filled by `measure`)
    seed_points: list[pd.DataFrame] = field(default_factory=list)  # each seed's own curve (spread)
    fit: fits.Fit | None = None
    fit_interval: dict = field(default_factory=dict)
    fit_note: str = ""
    check: dict | None = None
    check_fit: fits.Fit | None = None
    check_note: str = ""
    in_analysis: bool = False  # measured on the panel's shared prompts, with intervals

    @property
    def is_bon(self) -> bool:
        return self.method == "bon"

    @property
    def order(self) -> str:
        return ORDER.get(self.method, "step")


def column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column, NaN where absent (stages record slightly different metrics)."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def run_outputs(rows: pd.DataFrame, results_path: Path) -> dict[str, str]:
    """run id -> the run's output directory name (ppo-0, sample, ...), to tell apart runs whose labels match."""
    from bon_vs_rl import results

    with results.ResultsStore(results_path) as store:
        runs = store.runs()
    out = {}
    for _, run in runs[runs["run_id"].isin(set(rows["run_id"]))].iterrows():
        try:
            out[str(run["run_id"])] = Path(json.loads(run["config_json"]).get("output") or "").name
        except (TypeError, ValueError):
            pass
    return out


def group_curves(rows: pd.DataFrame) -> tuple[list[Curve], list[str]]:
    """One curve per (panel, method, setting): replicate seeds of one setting pooled; no setting, one per run."""
    notes: list[str] = []
    data = rows[rows["method"] != "rm"].copy()
    for name in ("policy", "proxy", "gold"):
        data[name] = data[name].fillna("?").astype(str) if name in data else "?"
    bad_kl = ~np.isfinite(column(data, "kl"))
    if bad_kl.any():
        notes.append(f"{int(bad_kl.sum())} row(s) without a KL value were left out.")
        data = data[~bad_kl]
    setting = data["setting"] if "setting" in data else pd.Series(np.nan, index=data.index)
    data["curve_key"] = setting.where(setting.notna(), data["run_id"]).astype(str)
    curves = []
    for (policy, proxy, gold, method, _), group in data.groupby(["policy", "proxy", "gold", "method", "curve_key"],
                                                                sort=True):
        order = ORDER.get(method, "step")
        runs = [g.sort_values(order, ascending=order != "beta").reset_index(drop=True)
                for _, g in group.groupby("run_id", sort=True)]
        # Replicates that stopped early: pool only the points every seed reached.
        shared = set.intersection(*(set(column(r, order)) for r in runs))
        runs = [r[np.isin(column(r, order), list(shared))].reset_index(drop=True) for r in runs]
        for r in runs:
            status = str(r["run_status"].iloc[0]) if "run_status" in r and len(r) else "finished"
            if status != "finished":
                notes.append(f"{method} run {r['run_id'].iloc[0]} is {status}: its curve may stop early.")
        seeds = [r["seed"].iloc[0] if "seed" in r else None for r in runs]
        curves.append(Curve(panel=(policy, proxy, gold), method=method, label=method, form=FORMS.get(method, "rl"),
                            run_ids=[str(r["run_id"].iloc[0]) for r in runs], seeds=seeds, runs=runs))
    return curves, notes


def name_curves(curves: list[Curve], outputs: dict[str, str]) -> None:
    """BoN, optimum (tilted), or method β=…, with the seed count; where two curves of a panel would still
    read the same, each gets its output directory (or, failing that, its whole run id) so they never do."""
    for c in curves:
        beta = column(c.runs[0], "beta")
        beta = beta[np.isfinite(beta)]
        if c.is_bon:
            c.label = "BoN"
        elif c.method == "tilted":
            c.label = "optimum (tilted)"
        elif c.method == "distill":
            n, objective = column(c.runs[0], "n"), c.runs[0].get("objective", pd.Series([""])).iloc[0]
            c.label = f"distill {objective or ''} n={n[0]:g}".replace("  ", " ") if np.isfinite(n).any() else "distill"
        else:
            c.label = f"{c.method} β={beta[0]:g}" if len(beta) else c.method
        if len(c.runs) > 1:
            c.label += f" ({len(c.runs)} seeds)"
    key = lambda c: (c.panel, c.label)  # noqa: E731
    for _, group in itertools.groupby(sorted(curves, key=key), key=key):
        group = list(group)
        if len(group) > 1:
            names = [",".join(dict.fromkeys(outputs.get(r, "") for r in c.run_ids)) for c in group]
            unique = all(names) and len(set(names)) == len(names)
            for c, name in zip(group, names):
                c.label = f"{c.label} [{name if unique else ','.join(c.run_ids)}]"


# ----------------------------------------------------------------------------------------------
# 4. Measuring: every curve of a panel on the panel's shared prompts, through statistics.analyse.


@dataclass
class Panel:
    key: tuple[str, str, str]
    curves: list[Curve]
    prompt_ids: np.ndarray | None = None  # the shared prompts the analysis used (None: no analysis)
    baseline_source: str = ""
    gold_std: float = math.nan  # the initial policy's per-sample gold std (the unit scale)
    comparisons: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analysis: object = None  # the statistics.Analysis of its analysed curves (the scaling view reads it)


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
    """Per panel: records -> shared prompts -> baseline -> statistics.analyse -> points, fits, comparisons."""
    from bon_vs_rl import statistics

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
    result = statistics.analyse(samples, baseline, B=cfg.bootstrap, seed=cfg.seed, gold_target=cfg.gold_level,
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
        for row in statistics.compare_points(result, c.label, len(c.points) - 1, bon.label, kb):
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
# Fits (Gao et al. eq. 1-2): the point fit for drawing; its intervals came from statistics.analyse.


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
            "no_peak_share": i.get("no_peak", math.nan),
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


# ----------------------------------------------------------------------------------------------
# 5. The plain-words summary, generated from the numbers above; every figure with its interval.


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (float, np.floating)):
        return f"{x:.{digits}g}"
    return str(x)


def span(value, lo, hi, digits: int = 3) -> str:
    """'0.31 [0.27, 0.35]': a value with its 95% interval (an open side reads '?'; an exact value, alone)."""
    exact = lambda v: isinstance(v, (float, np.floating)) and math.isclose(v, value, rel_tol=1e-9, abs_tol=1e-12)  # noqa: E731
    if exact(lo) and exact(hi):
        return fmt(value, digits)
    if not (isinstance(lo, (float, np.floating)) and isinstance(hi, (float, np.floating))) or \
            (not math.isfinite(lo) and not math.isfinite(hi)):
        return fmt(value, digits)
    side = lambda v: fmt(v, digits) if math.isfinite(v) else ("∞" if v == math.inf else "?")  # noqa: E731
    return f"{fmt(value, digits)} [{side(lo)}, {side(hi)}]"


QUANTITY_WORDS = {
    "gold_at_point": "gold gain of the final distilled policy against best-of-{target}",
    "kl_at_point": "KL (nats) of the final distilled policy against best-of-{target}",
    "gold_at_kl": "gold gain at KL {target} nats",
    "kl_at_proxy": "KL (nats) to reach proxy gain {target}",
    "gold_at_proxy": "gold gain at proxy gain {target}",
    "kl_to_gold": "KL (nats) to reach gold gain {target}",
}


def sentence_case(text: str) -> str:
    return text[:1].upper() + text[1:]


def verdict_sentence(r: pd.Series) -> str:
    what = sentence_case(QUANTITY_WORDS[r["quantity"]].format(target=fmt(r["target"])))
    both = (f"{r['curve_a']} {span(r['a'], r['a_lo'], r['a_hi'])}, {r['curve_b']} {span(r['b'], r['b_lo'], r['b_hi'])}; "
            f"difference {span(r['diff'], r['diff_lo'], r['diff_hi'])}")
    if not math.isfinite(r["target"]):
        return f"{what}: no common range to compare {r['curve_a']} and {r['curve_b']} on."
    short = [r[f"curve_{t}"] for t in ("a", "b") if not math.isfinite(r[t])]
    if short:
        return f"{what}: {' and '.join(short)} never reach{'es' if len(short) == 1 else ''} it on the measured points."
    if r["verdict"] == "unresolved":
        more, prompts = r["prompts_needed"], int(r["prompts"])
        hint = ("" if not math.isfinite(more) else
                f" (a difference this size would need more than {100 * prompts} prompts: it is small against its "
                "uncertainty)" if more > 100 * prompts else
                f" (roughly {int(more)} prompts instead of {prompts} would resolve a difference this size)")
        kept = (f" The distilled policy keeps {span(r['share'], r['share_lo'], r['share_hi'])} of best-of-n's gold "
                "gain." if r["quantity"] == "gold_at_point" and math.isfinite(r.get("share", math.nan)) else "")
        return f"{what}: {both} — not resolved at this sample size{hint}.{kept}"
    winner, loser = (r["curve_a"], r["curve_b"]) if r["verdict"] == "ahead" else (r["curve_b"], r["curve_a"])
    kept = (f" The distilled policy keeps {span(r['share'], r['share_lo'], r['share_hi'])} of best-of-n's gold gain."
            if r["quantity"] == "gold_at_point" and math.isfinite(r.get("share", math.nan)) else "")
    return (f"{what}: {both} — **{winner} is ahead of {loser}** (the 95% interval of the difference "
            f"excludes 0).{kept}")


def summary(panels: list[Panel]) -> list[str]:
    lines = []
    for panel in panels:
        where = f"policy {panel.key[0]}, proxy {panel.key[1]}, gold {panel.key[2]}"
        lines.append(f"**{where}** — {len(panel.curves)} curve(s): " + ", ".join(c.label for c in panel.curves)
                     + (f"; measured on {len(panel.prompt_ids)} shared prompts, gains paired against "
                        f"{panel.baseline_source}." if panel.prompt_ids is not None else "."))
        for c in panel.curves:
            p = c.points
            if not len(p):
                continue
            shaky = int(p["low_ess"].sum()) if "low_ess" in p else 0
            p = trusted_points(p)
            if not len(p):
                lines.append(f"{c.label}: every point rests on too few effective samples to be a measurement.")
                continue
            last = p.iloc[-1]
            best = p.loc[p["scaled"].idxmax()] if p["scaled"].notna().any() else last
            text = (f"{c.label}: up to KL {span(last['kl'], last['kl_lo'], last['kl_hi'])} nats the proxy gain is "
                    f"{span(last['proxy_gain'], last['proxy_gain_lo'], last['proxy_gain_hi'])} and the gold gain "
                    f"{span(last['scaled'], last['scaled_lo'], last['scaled_hi'])}; the largest measured gold gain is "
                    f"{span(best['scaled'], best['scaled_lo'], best['scaled_hi'])} at KL {fmt(best['kl'])}.")
            if c.fit is not None and c.fit.peak_kl is not None:
                f = c.fit_interval
                text += (f" The {c.form} form puts its peak at KL "
                         f"{span(c.fit.peak_kl, f.get('peak_kl_lo', math.nan), f.get('peak_kl_hi', math.nan))}"
                         f"{'' if c.fit.peak_in_range else ' (beyond the measured range: an extrapolation)'}.")
            elif c.fit is not None:
                text += f" The {c.form} form has no peak: gold is still rising."
            if shaky:
                text += (f" ({shaky} further point(s) rest on too few effective samples: drawn hollow, left out of "
                         "fits and comparisons.)")
            if len(c.runs) > 1:
                finals = [sp["scaled"].iloc[-1] for sp in c.seed_points if len(sp)]
                if finals:
                    text += (f" Its {len(c.runs)} seeds end at gold gains {', '.join(fmt(v) for v in finals)} "
                             "(the interval includes this spread).")
            lines.append(text)
        for r in panel.comparisons:
            lines.append(verdict_sentence(pd.Series(r)))
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


def style_legend(fit_kl_max: float, seeds: bool, low_ess: bool) -> list:
    """Grey stand-ins explaining the line styles (the colours name the curves)."""
    from matplotlib.lines import Line2D

    grey = "0.4"
    handles = [Line2D([], [], color=grey, marker="o", ms=3.5, lw=1.4, label="measured (band: 95% interval)"),
               Line2D([], [], color=grey, lw=1, label="fit, measured range"),
               Line2D([], [], color=grey, lw=1, ls="--", label="fit, extrapolated"),
               Line2D([], [], color=grey, marker="*", ms=9, lw=0, label="fitted peak (hollow: extrapolated)")]
    if seeds:
        handles.append(Line2D([], [], color=grey, lw=0.7, alpha=0.5, label="one seed"))
    if low_ess:
        handles.append(Line2D([], [], color=grey, marker="o", mfc="white", lw=0, label="too few effective samples"))
    if fit_kl_max > 0:
        handles.append(Line2D([], [], color=grey, lw=1, ls=":", label=f"fit on KL ≤ {fit_kl_max:g} only"))
    return handles


def draw_line(ax, p: pd.DataFrame, x: str, y: str, colour: str, label: str, lw: float | None = None) -> None:
    """y against x along a curve; points resting on too few effective samples hollow and off the line."""
    trusted = trusted_mask(p)
    ax.plot(p[x][trusted], p[y][trusted], "o-", color=colour, ms=3.5, lw=lw, label=label)
    if (~trusted).any():
        ax.plot(p[x][~trusted], p[y][~trusted], "o", color=colour, mfc="white", ms=4)


def draw_measured(ax, p: pd.DataFrame, y: str, colour: str, label: str, seed_points: list[pd.DataFrame]) -> None:
    """Points with their 95% band (and horizontal KL interval bars); points too uncertain to trust (a tilted
    optimum with too few effective samples) hollow and off the line: not drawn as measured."""
    draw_line(ax, p, "d", y, colour, label, lw=1.4)
    p = trusted_points(p)  # bands and bars only where the points are measurements
    lo, hi = p.get(f"{y}_lo"), p.get(f"{y}_hi")
    if lo is not None and np.isfinite(lo).any():
        ax.fill_between(p["d"], lo, hi, color=colour, alpha=0.18, lw=0)
    if "kl_lo" in p and np.isfinite(p["kl_lo"]).any() and (p["kl_hi"] > p["kl_lo"]).any():
        d_lo, d_hi = np.sqrt(np.clip(p["kl_lo"], 0, None)), np.sqrt(np.clip(p["kl_hi"], 0, None))
        ax.errorbar(p["d"], p[y], xerr=[np.clip(p["d"] - d_lo, 0, None), np.clip(d_hi - p["d"], 0, None)],
                    fmt="none", ecolor=colour, elinewidth=0.7, alpha=0.6)
    for sp in seed_points:
        ax.plot(sp["d"], sp[y], "-", color=colour, lw=0.7, alpha=0.45)


PANELS_PER_ROW = 4


def figures(curves: list[Curve], out: Path, gold_label: str, fit_kl_max: float) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = colours(curves)
    panels = list(dict.fromkeys(c.panel for c in curves))
    by_panel = {p: [c for c in curves if c.panel == p] for p in panels}
    made = []

    def grid(rows: int):
        """One column per panel, at most PANELS_PER_ROW side by side (a sweep of a dozen proxies wraps onto
        further rows); each panel's `rows` axes stacked and sharing x. axes[r, j]: row r of panel j."""
        columns = min(len(panels), PANELS_PER_ROW)
        blocks = -(-len(panels) // columns)
        width = max(7.0, 4.6 * columns)  # wide enough for the legend below the panels
        fig, grid_axes = plt.subplots(rows * blocks, columns, figsize=(width, 3.4 * rows * blocks), squeeze=False)
        axes = np.empty((rows, len(panels)), dtype=object)
        for j in range(len(panels)):
            for r in range(rows):
                axes[r, j] = grid_axes[(j // columns) * rows + r, j % columns]
                if r:
                    axes[r, j].sharex(axes[0, j])
        for j in range(len(panels), blocks * columns):  # the unused places of the last row of panels
            for r in range(rows):
                grid_axes[(j // columns) * rows + r, j % columns].set_visible(False)
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

    # Gold and proxy gains against sqrt(KL), fits drawn: solid where measured, dashed where extrapolated.
    fig, axes = grid(2)
    for j, panel in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        d_right = 1.25 * max(np.nanmax(c.points["d"]) for c in by_panel[panel])
        low, high = [], []  # the y range of what was measured: extrapolations may leave the frame
        for c in by_panel[panel]:
            p, col = c.points, colour[c.label]
            draw_measured(top, p, "scaled", col, c.label, c.seed_points)
            draw_measured(bottom, p, "proxy_gain", col, c.label, c.seed_points)
            low.append(np.nanmin(p["scaled_lo"].fillna(p["scaled"])))
            high.append(np.nanmax(p["scaled_hi"].fillna(p["scaled"])))
            if c.fit is not None:
                draw_fit(top, col, d_right, c.fit, "-", "--", peak=True)
                if c.fit.peak_reward is not None and c.fit.peak_d <= d_right:
                    high.append(c.fit.peak_reward)
            if c.check_fit is not None:
                draw_fit(top, col, d_right, c.check_fit, ":", ":", peak=False)
        lo_y, hi_y = np.nanmin(low), np.nanmax(high)
        gap = (hi_y - lo_y) or 1.0
        top.set_ylim(lo_y - 0.15 * gap, hi_y + 0.15 * gap)
        if fit_kl_max > 0:
            top.axvline(math.sqrt(fit_kl_max), color="grey", ls=":", lw=0.8)
        top.axhline(0, color="grey", lw=0.5)
        bottom.axhline(0, color="grey", lw=0.5)
        top.set_title(panel_title(panel, panels), fontsize=9)
        top.set_ylabel(gold_label)
        bottom.set_ylabel("proxy − initial")
        bottom.set_xlabel("sqrt(KL) from the initial policy, sqrt(nats)")
    seeds = any(c.seed_points for c in curves)
    low_ess = any(bool(c.points.get("low_ess", pd.Series(dtype=bool)).any()) for c in curves)
    save(fig, "reward_vs_kl.png",
         "Gold (top) and proxy (bottom) gain over the initial policy on the same prompts, against sqrt(KL); bands "
         "and bars: 95% intervals from resampling prompts (and seeds). Thin lines: Gao et al. functional-form fits, "
         "solid over the measured range, dashed where extrapolated; stars: fitted peaks (hollow when outside the "
         "measured range).", style_legend(fit_kl_max, seeds, low_ess))

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            draw_line(ax, c.points, "proxy_gain", "scaled", colour[c.label], c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy − initial")
        ax.set_ylabel(gold_label)
    save(fig, "proxy_vs_gold.png", "Gold against proxy gain: where the curves bend over, proxy gains stop being real.")

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            draw_line(ax, c.points, "proxy_gain", "kl", colour[c.label], c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy − initial")
        ax.set_ylabel("KL from the initial policy, nats")
    save(fig, "kl_vs_proxy.png", "KL spent against proxy gain: the higher curve drifts further from the initial "
         "policy for the same proxy gain.")

    if any(c.points["length_mean"].notna().any() for c in curves):
        fig, axes = grid(1)
        for j, panel in enumerate(panels):
            ax = axes[0, j]
            for c in by_panel[panel]:
                draw_line(ax, c.points, "d", "length_mean", colour[c.label], c.label)
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


POINT_COLUMNS = ["run_id", "method", "curve", "policy", "proxy", "gold", "n", "step", "beta", "kl", "kl_lo", "kl_hi",
                 "proxy_mean", "proxy_gain", "proxy_gain_lo", "proxy_gain_hi", "gold_mean", "gold_gain",
                 "gold_gain_lo", "gold_gain_hi", "scaled", "scaled_lo", "scaled_hi", "ess", "low_ess", "length_mean",
                 "generated_tokens", "trained_tokens"]


def points_table(curves: list[Curve]) -> pd.DataFrame:
    frames = []
    for c in curves:
        p = c.points.rename(columns={"proxy": "proxy_mean", "gold": "gold_mean"})
        p["run_id"], p["method"], p["curve"] = ",".join(c.run_ids), c.method, c.label
        p["policy"], p["proxy"], p["gold"] = c.panel
        frames.append(p)
    table = pd.concat(frames, ignore_index=True)
    return table[[col for col in POINT_COLUMNS if col in table and (col in POINT_COLUMNS[:6] or table[col].notna().any())]]


def rm_table(rows: pd.DataFrame) -> pd.DataFrame:
    rm = rows[rows["method"] == "rm"]
    keep = [c for c in ("run_id", "proxy", "backbone", "pairs", "data_pairs", "label_noise", "ensemble",
                        "parameters_non_embedding", "accuracy", "pearson", "spearman", "trained_tokens") if c in rm]
    return rm[keep].reset_index(drop=True)


def report(cfg: ReportConfig) -> Path:
    """Selected rows -> per-prompt records -> curves -> statistics -> report directory (returned and printed)."""
    from bon_vs_rl import results

    rows = select_rows(cfg)  # bad or empty selection: ConfigError before anything is written
    curves, notes = group_curves(rows)
    name_curves(curves, run_outputs(rows, results.resolve_results_path(cfg.results)))
    curves.sort(key=lambda c: (c.panel, not c.is_bon, c.method != "tilted", c.method, c.label))
    families = scaling.plan(curves, rows, cfg)  # --scaling on that cannot be honoured: ConfigError, nothing written
    panels = measure(curves, cfg)
    for family in families:
        scaling.measure(family, panels, cfg)
    unit = cfg.scale == "unit" and all(p.prompt_ids is not None and p.gold_std > 0 for p in panels)
    if cfg.scale == "unit" and not unit:
        notes.append("Unit scale was asked for but some panel has no measured initial gold std (no per-prompt "
                     "records); all gold is shown relative to the initial policy instead.")
        for c in curves:
            for suffix in ("", "_lo", "_hi"):
                c.points["scaled" + suffix] = c.points["gold_gain" + suffix]
    fit_curves(curves, cfg.fit_kl_max)
    scale_words = ("gain over the initial policy on the same prompts, in units of its gold standard deviation"
                   if unit else "gain over the initial policy on the same prompts")
    gold_label = "gold − initial (unit variance)" if unit else "gold − initial"
    notes += [c.records_note for c in curves if c.records_note] + [n for p in panels for n in p.notes]
    notes += [n for f in families for n in f.notes]
    notes = list(dict.fromkeys(notes))
    refusals = [c.fit_note for c in curves if c.fit_note] + [c.check_note for c in curves if c.check_note]

    points = points_table(curves)
    fit_frame, check_frame, rms = fits_table(curves), check_table(curves), rm_table(rows)
    comparisons = comparison_table(panels)
    lines = summary(panels)
    lines += [f"{f.lines[0]} See \"Scaling across proxies\"." for f in families if f.measured]
    out = Path(cfg.output)
    with files.atomic_directory(out) as tmp:
        made = figures(curves, tmp, gold_label, cfg.fit_kl_max)
        scaled = scaling.figures(families, tmp)
        blocks: list[tuple] = [("h1", "bonrl report: best-of-n against RL, measured by the gold reward")]
        selection = {k: getattr(cfg, k) for k in (*FILTERS, "methods") if getattr(cfg, k)}
        blocks.append(("p", f"{len(points)} measured points in {len(curves)} curve(s) from "
                       f"{len({r for c in curves for r in c.run_ids})} run(s); selection: {selection or 'the whole table'}; "
                       f"gold is shown as the {scale_words}. Every interval is a 95% percentile interval from "
                       f"{cfg.bootstrap} resamples of the evaluation prompts (and of the seeds, where a setting has "
                       "several), taken through the whole pipeline: per-prompt estimates, gains, fits and "
                       "interpolations."))
        blocks += [("h2", "Summary"), ("list", lines)]
        if notes or refusals:
            blocks += [("h2", "Notes"), ("list", notes + refusals)]
        blocks.append(("h2", "Figures"))
        blocks += [("figure", name, caption) for name, caption in made]
        if len(comparisons):
            blocks += [("h2", "Comparisons"),
                       ("p", "For each pair of curves on the same policy, proxy, gold and prompts: the gold gain at a "
                        "matched KL (by default the largest KL both curves reach in at least 97.5% of resamples), "
                        "the KL each spends to reach a proxy gain (the largest both reach likewise) and its gold "
                        "gain there, and the KL each needs to reach a gold gain (by default half the smaller "
                        "measured peak, a fixed target). Curves are interpolated linearly in sqrt(KL) between "
                        "measured points; optimum points with too few effective samples are left out. "
                        "A curve is called ahead only where the 95% interval of the difference excludes 0. "
                        "All rows: comparison.csv.")]
            for i, ((a, b), frame) in enumerate(comparisons.groupby(["curve_a", "curve_b"], sort=False)):
                first = frame.iloc[0]
                blocks += [("p", f"**{a} vs {b}** — proxy {first['proxy']}, policy {first['policy']}, gold "
                                 f"{first['gold']}, {int(first['prompts'])} prompts"),
                           ("table", pair_table(frame), f"comparison-{i}")]
        blocks.append(("h2", "Functional-form fits (Gao et al. 2022, eq. 1-2)"))
        blocks.append(("p", "BoN: R(d) = d(α − β d); RL: R(d) = d(α − β log d); d = sqrt(KL), R = gold "
                       + scale_words + ". Peak: BoN d* = α/2β, RL d* = exp(α/β − 1). Intervals from refitting "
                       "every prompt resample (a d = 0 point adds no degree of freedom); no_peak_share is the "
                       "share of resamples with β ≤ 0 (no peak), which is why a peak interval may be open above."))
        if len(fit_frame):
            blocks.append(("table", fit_frame, "fits"))
        if refusals:
            blocks.append(("list", refusals))
        blocks += scaling.blocks(families, scaled)
        if cfg.fit_kl_max > 0:
            blocks += [("h2", f"Fit on KL ≤ {cfg.fit_kl_max:g}, predict the rest"),
                       ("p", "Each form fitted only to the points with KL ≤ k, then scored on the larger-KL points "
                        "it never saw (the check of Gao et al. §3).")]
            blocks.append(("table", check_frame, "fit_check") if len(check_frame) else ("p", "No curve could be fitted."))
        if len(rms):
            blocks += [("h2", "Proxy reward models"), ("table", rms, "reward_models")]
        blocks += [("h2", "Measured points"), ("p", "Every point of every curve, with its 95% intervals."),
                   ("table", points, "points")]
        blocks += [("h2", "Settings"), ("p", f"`bonrl report` with {to_dict(cfg)}")]

        points.to_csv(tmp / "points.csv", index=False)
        fit_frame.to_csv(tmp / "fits.csv", index=False)
        comparisons.to_csv(tmp / "comparison.csv", index=False)
        if cfg.fit_kl_max > 0:
            check_frame.to_csv(tmp / "fit_check.csv", index=False)
        if len(rms):
            rms.to_csv(tmp / "reward_models.csv", index=False)
        if any(f.measured for f in families):
            for name, table in scaling.tables(families).items():
                table.to_csv(tmp / name, index=False)
        files.write_json(tmp / "resolved_config.json", to_dict(cfg))
        files.write_text(tmp / "report.md", render_markdown(blocks))
        files.write_text(tmp / "report.html", render_html(blocks, tmp))

    for line in lines + [line for f in families for line in f.lines[1:]]:
        console.note(line.replace("**", ""), cfg.quiet)
    for line in notes + refusals:
        console.note("note: " + line, cfg.quiet)
    print(out)
    return out
