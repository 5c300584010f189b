"""The report's view of gold-free warning signs: the signals along every curve, and which of them warn near
the gold's measured peak (analysis/onset.py), with a table (onset.csv, onset_runs.csv, signals.csv) and two
figures (signals.png, onset.png).

Every best-of-n and RL curve that the report analysed (the KL-regularized optimum is left out: it is an
estimate, not a run a practitioner watches) gets its signals recomputed from its per-sample records by
measurement/hacking_signals.py, the code that wrote them into its rows (so runs older than those columns get
them too): for RL, each evaluation against the run's step 0; for best-of-n, each n under its selection,
agreement against the first other proxy scored on the same samples. Replicate seeds are averaged point by
point. The marginal gain per nat and the KL rate come from consecutive points (signals.curve_signals), the
curve's KL and peak from the report's analysis on the panel's shared prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl.analysis import onset, signals
from bon_vs_rl.report.selection import Curve, column


@dataclass
class View:
    runs: list[onset.Run] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    per_run: list[dict] = field(default_factory=list)
    ranked: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # signals.csv
    notes: list[str] = field(default_factory=list)


def with_second_proxy(frame, metadata: dict, proxy: str, partners: dict[str, str]):
    """The samples frame and the proxy its agreement is measured against: another proxy of the same file, else
    of another best-of-n curve's file holding the very same samples (`bonrl experiment` rescores one draw once
    per proxy, each into its own file), its column added; None when there is none."""
    from bon_vs_rl.methods import best_of_n

    second = best_of_n.second_proxy(proxy, [p for p in metadata.get("proxies", []) if p in frame])
    if second is not None:
        return frame, second
    for other, path in sorted(partners.items()):
        if best_of_n.second_proxy(proxy, [other]) is None:
            continue
        theirs = best_of_n.read_samples(path)[0]
        same = len(theirs) == len(frame) and other in theirs and all(
            (theirs[k].to_numpy() == frame[k].to_numpy()).all() for k in ("prompt_id", "completion", "tokens"))
        if same:
            return frame.assign(**{other: theirs[other].to_numpy()}), other
    return frame, None


def run_signals(c: Curve, run: pd.DataFrame, partners: dict[str, str]) -> list[dict]:
    """One run's level signals at each of its points (rows in curve order), from its per-sample files.
    `partners`: proxy -> samples file of every best-of-n curve of the report (for the agreement signal)."""
    from bon_vs_rl.measurement import evaluate, hacking_signals

    if c.is_bon:
        from bon_vs_rl.methods import best_of_n

        frame, metadata = best_of_n.read_samples(run["samples_path"].iloc[0])
        proxy = str(run["proxy"].iloc[0])
        frame, second = with_second_proxy(frame, metadata, proxy, partners)
        return hacking_signals.bon_signals(frame, proxy, [int(n) for n in run["n"]],
                                           int(metadata["samples_per_prompt"]), second)
    if column(run, "step")[0] != 0:
        raise ValueError("its first evaluation is not step 0")
    frames = [pd.read_parquet(path) for path in run["samples_path"]]
    reference = hacking_signals.reference(frames[0])
    return [hacking_signals.evaluation_signals(frame, reference,  # with --second-proxy's scores where the run had one
                                              second_column=evaluate.SECOND if evaluate.SECOND in frame else None)
            for frame in frames]


def curve_run(c: Curve, peak: dict, partners: dict[str, str]) -> tuple[onset.Run | None, str]:
    """The curve as an onset.Run (seeds averaged point by point), or None and why."""
    per_seed = []
    for run in c.runs:
        try:
            per_seed.append(pd.DataFrame(run_signals(c, run, partners)))
        except Exception as exc:  # a moved or unreadable file: that curve has no signals, the report goes on
            return None, f"{c.label} on {c.panel[1]}: no warning signs ({type(exc).__name__}: {str(exc)[:100]})"
    values = sum(per_seed[1:], per_seed[0]) / len(per_seed) if len(per_seed) > 1 else per_seed[0]
    kl = c.points["kl"].to_numpy(dtype=float)
    step = np.full(len(kl), np.nan) if c.is_bon else column(c.runs[0], "step")
    curve = signals.curve_signals(kl, values["proxy_z"].to_numpy(dtype=float), None if c.is_bon else step)
    found = {name: values[name].to_numpy(dtype=float) for name in values if name in signals.SIGNALS}
    found.update(kl=kl, gain_per_nat=curve["gain_per_nat"], **({} if c.is_bon else {"kl_rate": curve["kl_rate"]}))
    label = f"{c.label} · {c.panel[1]}"
    return onset.Run(label, kl, step, c.points["gold_gain"].to_numpy(dtype=float), found,
                     int(peak["best_point"]) if peak.get("resolved") else None), ""


def measure(panels: list) -> View:
    """Every analysed best-of-n and RL curve's signals, then onset's leave-one-run-out scoring."""
    view = View()
    frames = []
    partners = {c.panel[1]: str(c.runs[0]["samples_path"].iloc[0]) for panel in panels for c in panel.curves
                if c.is_bon and c.in_analysis and len(c.runs) == 1}
    for panel in panels:
        if panel.analysis is None:
            continue
        for c in panel.curves:
            if not c.in_analysis or c.method == "tilted" or len(c.points) < 3:
                continue
            run, why = curve_run(c, panel.analysis.peaks.get(c.label, {}),
                                 {p: f for p, f in partners.items() if p != c.panel[1]})
            if run is None:
                view.notes.append(why)
                continue
            view.runs.append(run)
            frame = pd.DataFrame({"curve": run.label, "method": c.method, "point": np.arange(len(run.kl)),
                                  "n_or_step": column(c.runs[0], c.order), "kl": run.kl, "gold_gain": run.gold,
                                  "gold_peak": [k == run.peak for k in range(len(run.kl))],
                                  **{name: values for name, values in run.signals.items() if name != "kl"}})
            frames.append(frame)
    view.points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if view.runs:
        view.table, view.per_run = onset.score(view.runs)
        view.ranked = onset.rank(view.runs, view.table)
    view.lines = onset.summary(view.runs, view.table, view.ranked)
    return view


def readable(view: View) -> pd.DataFrame:
    """onset.csv for the page: each signal's rule, runs, lead with its interval, false alarms."""
    from bon_vs_rl.report.words import span

    rows = []
    for r in view.table:
        rows.append({
            "signal": r["signal"], "rule (all runs with a peak)": r["rule"] or "—",
            "warned / scored": f"{r['warned']} / {r['scored']}",
            "lead, nats (t interval)": span(r["lead_nats"], r["lead_nats_lo"], r["lead_nats_hi"]),
            "lead, steps": span(r["lead_steps"], r["lead_steps_lo"], r["lead_steps_hi"]),
            "mean distance to the peak, nats": r["abs_error_nats"],
            "false alarms (Wilson)": (f"{r['false_alarms']} / {r['runs_without_peak']}: "
                                      + span(r["false_alarm_rate"], r["false_alarm_rate_lo"], r["false_alarm_rate_hi"])
                                      if r["rule"] and r["runs_without_peak"] else "—"),
        })
    return pd.DataFrame(rows)


def figures(view: View, out: Path) -> list[tuple[str, str]]:
    """signals.png: each signal against sqrt(KL), one line per curve, its gold peak ringed; onset.png: each
    signal's held-out leads (nats) with their mean and t interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if not view.runs:
        return made
    names = [s for s in signals.SIGNALS if s != "kl" and any(np.isfinite(r.signals.get(s, [])).any() for r in view.runs)]
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, names):
        for i, run in enumerate(view.runs):
            values = run.signals.get(name)
            if values is None or not np.isfinite(values).any():
                continue
            d = np.sqrt(np.clip(run.kl, 0, None))
            ax.plot(d, values, "-o", ms=2.5, lw=1, color=colours[i % len(colours)], label=run.label)
            if run.peak is not None and np.isfinite(values[run.peak]):
                ax.plot(d[run.peak], values[run.peak], "o", ms=9, mfc="none", color=colours[i % len(colours)])
        ax.set_title(signals.WORDS[name], fontsize=8)
        ax.set_xlabel("sqrt(KL)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * math.ceil(len(labels) / 4), 1, 1))
    fig.savefig(out / "signals.png", dpi=110)
    plt.close(fig)
    made.append(("signals.png", "Gold-free warning signs along each curve against sqrt(KL); a ring marks a curve's "
                                "resolved gold peak (the largest measured gold gain, the fall after it resolved)."))

    scored = [r for r in view.table if r["warned"]]
    if scored:
        fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(scored) + 1.2))
        for y, row in enumerate(scored):
            leads = [o["lead_nats"] for o in view.per_run
                     if o["signal"] == row["signal"] and o["role"] == "held out" and o["fired"]]
            ax.plot(leads, [y] * len(leads), "o", ms=4, alpha=0.6, color="tab:blue")
            if math.isfinite(row["lead_nats_lo"]):
                ax.plot([row["lead_nats_lo"], row["lead_nats_hi"]], [y, y], "-", lw=2, color="black")
            ax.plot([row["lead_nats"]], [y], "|", ms=14, color="black")
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(range(len(scored)), [r["signal"] for r in scored], fontsize=8)
        ax.set_xlabel("lead over the gold peak (nats; > 0: warned before it), held-out runs", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "onset.png", dpi=110)
        plt.close(fig)
        made.append(("onset.png", "Each signal's warning on runs left out of choosing its threshold: KL at the gold "
                                  "peak minus KL where it first fired (dots: runs; bar: mean and t interval over "
                                  "runs)."))
    return made


def blocks(view: View, made: list[tuple[str, str]]) -> list[tuple]:
    """The report's section on warning signs."""
    if not view.runs and not view.notes:
        return []
    out = [("h2", "When does hacking begin? Gold-free warning signs"),
           ("p", "Signals a practitioner has without a gold (marginal proxy gain per nat, KL and its rate, ensemble "
                 "disagreement, agreement with a second proxy, length and distinct-2 drift, the reference's log-prob "
                 "per token of the samples, the share of samples above the reference's largest proxy), computed at "
                 "every evaluation and every n from the per-sample records. Each signal's rule is one threshold in "
                 "the direction hacking moves it, chosen on all but one run with a resolved gold peak (least mean "
                 "distance in nats between its first warning and the peak) and scored on the run left out; false "
                 "alarms are warnings on runs whose gold did not measurably fall. Intervals are over runs (t for "
                 "the mean lead, Wilson for the false-alarm rate). Tables: onset.csv, onset_runs.csv, signals.csv."),
           ("list", view.lines + view.notes)]
    out += [("figure", name, caption) for name, caption in made]
    if any(r["rule"] for r in view.table):  # some signal has a threshold: some run has a peak
        out.append(("table", readable(view), "onset"))
    return out


def write_tables(view: View, out: Path) -> None:
    if view.table:
        pd.DataFrame(view.table).to_csv(out / "onset.csv", index=False)
        pd.DataFrame(view.per_run).to_csv(out / "onset_runs.csv", index=False)
    if len(view.points):
        view.points.to_csv(out / "signals.csv", index=False)
