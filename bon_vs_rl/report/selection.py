"""What the report reads: rows of the results table (or a plain ConfigError saying why there are none),
each run's per-prompt records read back from its saved samples, and the curves they form on each panel
(replicate seeds of one setting pooled into one curve)."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl.analysis import fits
from bon_vs_rl.config.commands import ReportConfig
from bon_vs_rl.errors import ConfigError

FILTERS = ("experiment", "policy", "proxy", "gold")


# ----------------------------------------------------------------------------------------------
# 1. The selection: rows of the results table, or a plain ConfigError saying why there are none.


def select_rows(cfg: ReportConfig) -> tuple[pd.DataFrame, list[str]]:
    """The selected rows that still describe their files (results.check_rows), and the notes on those left out
    (a superseded run; a samples file that changed or vanished): no curve is measured from another run's file."""
    from bon_vs_rl.record import results

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

    matching = len(rows)
    rows, notes = results.check_rows(rows)
    if rows.empty:
        raise ConfigError(f"selection: all {matching} matching row(s) were left out: " + " ".join(notes))

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
    return pd.concat([curves, rows[rows["method"] == "rm"]], ignore_index=True), notes


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
    from bon_vs_rl.methods import best_of_n

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
    from bon_vs_rl.methods import best_of_n

    ns = [int(n) for n in group["n"]]
    return samples_records(group, np.asarray(ns, float),
                           lambda frame, proxy, gold, N: best_of_n.bon_per_prompt(frame, proxy, gold, ns, N))


def tilted_records(group: pd.DataFrame) -> Records:
    """The KL-regularized optimum of one proxy, for the rows' β (best_of_n.optimum_per_prompt)."""
    from bon_vs_rl.methods import best_of_n

    betas = [float(b) for b in group["beta"]]
    return samples_records(group, np.asarray(betas),
                           lambda frame, proxy, gold, N: best_of_n.optimum_per_prompt(frame, proxy, gold, betas, N))


def rl_records(group: pd.DataFrame) -> Records:
    """An RL run: one eval-samples file per row (step), each reduced to per-prompt means."""
    from bon_vs_rl.measurement.evaluate import per_prompt_means

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
    from bon_vs_rl.record import results

    with results.ResultsStore(results_path, read_only=True) as store:
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
    # A run is one curve whatever its rows say: a run resumed with more steps by an older bonrl holds rows of
    # two settings, and its last one is the run's.
    setting = data["setting"] if "setting" in data else pd.Series(np.nan, index=data.index)
    last = setting.groupby(data["run_id"]).agg(lambda s: s.dropna().iloc[-1] if s.notna().any() else np.nan)
    setting = data["run_id"].map(last)
    data["curve_key"] = setting.where(setting.notna(), data["run_id"]).astype(str)
    # Seeds pool only runs that differ in their seed alone: two runs of one setting with the same seed are two
    # runs (a rerun, or a proxy retrained under the same name by an older bonrl), drawn apart, never "2 seeds".
    if "seed" in data:
        for _, group in data[setting.notna()].groupby("curve_key"):
            seeds = group.groupby("run_id", sort=True)["seed"].first()
            repeated = seeds[seeds.duplicated(keep=False)]
            if len(repeated):
                data.loc[group.index, "curve_key"] = group["run_id"].astype(str)
                notes.append(f"runs {', '.join(repeated.index)} have the same setting and the same seed "
                             f"({', '.join(str(v) for v in dict.fromkeys(repeated))}): drawn as separate runs, "
                             "not pooled as seeds.")
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
