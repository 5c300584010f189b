"""When does hacking begin? Which gold-free warning sign (signals.py) fires near the gold's measured peak.

Gao, Schulman & Hilton (2022) see the gold rise, peak and fall while the proxy keeps rising. A practitioner
without a gold wants to stop near that peak; bonrl knows the gold, so it can score the signals they do have.
For every signal the rule is one threshold in its hacking direction (signals.SIGNALS), and a run's warning is
the first evaluation after the start at which the signal crosses it (signals.first_firing).

Runs. A *run* here is one curve of the report (an RL setting with its seeds pooled, or best-of-n against one
proxy), with the signal at each of its points and the measured gold peak of `findings.measured_peak`. A run
*has a peak* when that peak's fall is resolved (the simultaneous interval of the fall after the best point
excludes 0); its peak is the best point.

Threshold, chosen on some runs and scored on others (leave one run out). For each run with a peak, the
threshold is chosen on the *other* runs with a peak: among every cut between two observed values of the
signal (and one above all of them: never warn), the one with the smallest mean distance in nats between
where the rule first fires and the gold peak (a run where it never fires counts at its last point); ties go
to the cut that warns least. Then it is applied to the held-out run:

    lead (nats)   KL at the peak − KL where the rule first fires: > 0 warned before the peak, < 0 after it
    lead (steps)  the same in optimizer steps (RL runs)
    gold lost     gold gain at the peak − gold gain where it fires (what stopping at the warning costs)
    missed        the rule never fired on the held-out run

False alarms: the threshold chosen on all runs with a peak, applied to the runs without one; a false alarm
is any warning on a run whose gold did not measurably fall (it may still be overoptimizing, unresolved).

Intervals are over runs, not prompts: a Student-t interval for the mean lead over the runs it warned on
(the held-out leads are treated as independent, though their thresholds share training runs), and a Wilson
interval for the false-alarm rate; both coverages are checked by simulation in tests/test_onset.py. With
fewer than MIN_RUNS runs with a peak the signals are not ranked (`summary` says so); ranked, the signal with
the smallest mean |lead| is compared with each other, paired by run (t interval of the difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bon_vs_rl.analysis.signals import SIGNALS, Rule, first_firing

LEVEL = 0.95
MIN_RUNS = 3  # runs with a resolved peak needed before signals are ranked


@dataclass
class Run:
    """One curve: its points' KL, step (NaN for best-of-n), gold gain, signals, and its gold peak."""

    label: str
    kl: np.ndarray  # [K]
    step: np.ndarray  # [K]
    gold: np.ndarray  # [K] gold gain
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [K]
    peak: int | None = None  # the measured peak's point when its fall is resolved


def hazard(values, signal: str) -> np.ndarray:
    """The signal turned so that hacking raises it (a rule fires where hazard > cut)."""
    values = np.asarray(values, dtype=np.float64)
    direction = SIGNALS[signal]
    return values if direction == "up" else -values if direction == "down" else np.abs(values)


def rule_for(signal: str, cut: float) -> Rule:
    return Rule(signal, -cut if SIGNALS[signal] == "down" else cut)


def fire_point(run: Run, rule: Rule) -> int | None:
    return first_firing(run.signals.get(rule.signal, np.full(len(run.kl), np.nan)), rule)


def distance(run: Run, rule: Rule) -> float:
    """|KL where the rule first fires − KL at the peak| (never fires: from the last point)."""
    k = fire_point(run, rule)
    return abs(float(run.kl[len(run.kl) - 1 if k is None else k]) - float(run.kl[run.peak]))


def choose(signal: str, runs: list[Run]) -> Rule | None:
    """The rule of least mean distance to the peak over `runs` (all with a peak); None without any value."""
    values = np.concatenate([hazard(r.signals.get(signal, []), signal)[1:] for r in runs]) if runs else np.zeros(0)
    values = np.unique(values[np.isfinite(values)])
    if not len(values):
        return None
    cuts = np.concatenate([(values[:-1] + values[1:]) / 2, [values[0] - 1.0, values[-1] + 1.0]])
    best, best_loss = None, math.inf
    for cut in sorted(cuts, reverse=True):  # warn-least first: ties keep it
        rule = rule_for(signal, float(cut))
        loss = float(np.mean([distance(r, rule) for r in runs]))
        if loss < best_loss - 1e-12:
            best, best_loss = rule, loss
    return best


def outcome(run: Run, rule: Rule | None) -> dict:
    """The held-out run under a rule: where it fires and the lead over the gold peak."""
    k = None if rule is None else fire_point(run, rule)
    out = {"run": run.label, "threshold": math.nan if rule is None else rule.threshold, "fired": k is not None,
           "fire_point": -1 if k is None else k, "fire_kl": math.nan, "lead_nats": math.nan,
           "lead_steps": math.nan, "gold_lost": math.nan, "peak_kl": math.nan}
    if run.peak is not None:
        out["peak_kl"] = float(run.kl[run.peak])
    if k is not None:
        out["fire_kl"] = float(run.kl[k])
        if run.peak is not None:
            out["lead_nats"] = float(run.kl[run.peak] - run.kl[k])
            out["lead_steps"] = float(run.step[run.peak] - run.step[k])
            out["gold_lost"] = float(run.gold[run.peak] - run.gold[k])
    return out


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval over independent values (NaN interval with fewer than two)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def wilson(k: int, m: int, level: float = LEVEL) -> tuple[float, float, float]:
    """Share k/m and its Wilson score interval (Wilson 1927); NaN for m = 0."""
    from scipy import stats

    if m == 0:
        return math.nan, math.nan, math.nan
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = k / m
    centre = (p + z * z / (2 * m)) / (1 + z * z / m)
    half = z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def score(runs: list[Run], names: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(table: one row per signal, per_run: one row per signal and run). See the module docstring."""
    peaked = [r for r in runs if r.peak is not None]
    quiet = [r for r in runs if r.peak is None]
    names = names or [s for s in SIGNALS if any(np.isfinite(r.signals.get(s, [])).any() for r in runs)]
    table, per_run = [], []
    for signal in names:
        held_out = []
        for i, run in enumerate(peaked):
            others = peaked[:i] + peaked[i + 1:]
            rule = choose(signal, others) if others else None
            held_out.append({"signal": signal, "role": "held out", **outcome(run, rule)})
        final = choose(signal, peaked)
        alarms = [{"signal": signal, "role": "no peak", **outcome(run, final)} for run in quiet]
        per_run += held_out + alarms
        scored = [o for o in held_out if math.isfinite(o["threshold"])]
        warned = [o for o in scored if o["fired"]]
        lead, lead_lo, lead_hi = t_interval([o["lead_nats"] for o in warned])
        steps, steps_lo, steps_hi = t_interval([o["lead_steps"] for o in warned])
        false_alarms = sum(o["fired"] for o in alarms)
        # No threshold (no run with a peak): nothing to raise an alarm with, so no rate either.
        rate, rate_lo, rate_hi = wilson(false_alarms, len(alarms)) if final else (math.nan,) * 3
        table.append({
            "signal": signal, "rule": str(final) if final else "", "runs_with_peak": len(peaked),
            "scored": len(scored), "warned": len(warned), "missed": len(scored) - len(warned),
            "lead_nats": lead, "lead_nats_lo": lead_lo, "lead_nats_hi": lead_hi,
            "lead_steps": steps, "lead_steps_lo": steps_lo, "lead_steps_hi": steps_hi,
            "abs_error_nats": float(np.mean([abs(d) for d in errors(peaked, held_out)])) if scored else math.nan,
            "gold_lost": float(np.mean([o["gold_lost"] for o in warned])) if warned else math.nan,
            "runs_without_peak": len(alarms), "false_alarms": false_alarms,
            "false_alarm_rate": rate, "false_alarm_rate_lo": rate_lo, "false_alarm_rate_hi": rate_hi,
        })
    return table, per_run


def errors(peaked: list[Run], held_out: list[dict]) -> list[float]:
    """Per held-out run, |KL where its rule fired (or its last point) − KL at its peak|, NaN if not scored."""
    out = []
    for run, o in zip(peaked, held_out):
        if not math.isfinite(o["threshold"]):
            out.append(math.nan)
            continue
        k = o["fire_point"] if o["fired"] else len(run.kl) - 1
        out.append(abs(float(run.kl[k]) - float(run.kl[run.peak])))
    return [e for e in out if math.isfinite(e)]


def rank(runs: list[Run], table: list[dict]) -> list[dict]:
    """With MIN_RUNS runs with a peak or more: the signal of least mean |lead error| against each other signal,
    paired by run (difference of per-run errors, t interval); [] with fewer (too few to rank)."""
    peaked = [r for r in runs if r.peak is not None]
    scored = [row for row in table if row["scored"] == len(peaked) and math.isfinite(row["abs_error_nats"])]
    if len(peaked) < MIN_RUNS or len(scored) < 2:
        return []
    per_signal = {}
    for row in scored:
        held_out = []
        for i, run in enumerate(peaked):
            rule = choose(row["signal"], peaked[:i] + peaked[i + 1:])
            held_out.append(outcome(run, rule))
        per_signal[row["signal"]] = np.array(errors(peaked, held_out))
    best = min(per_signal, key=lambda s: float(per_signal[s].mean()))
    out = []
    for signal, error in per_signal.items():
        if signal == best:
            continue
        diff, lo, hi = t_interval(error - per_signal[best])
        out.append({"best": best, "other": signal, "diff_nats": diff, "diff_lo": lo, "diff_hi": hi,
                    "resolved": bool(math.isfinite(lo) and lo > 0)})
    return out


def summary(runs: list[Run], table: list[dict], ranked: list[dict]) -> list[str]:
    """Sentences for the report, honest about how few runs there are."""
    peaked = [r for r in runs if r.peak is not None]
    if not runs:
        return ["No curve has gold-free signals to score (no per-sample records)."]
    if not peaked:
        return [f"None of the {len(runs)} curves has a resolved gold peak, so no warning sign can be scored "
                "against one yet: signals.csv and signals.png show the signals along each curve."]
    if len(peaked) == 1:
        return [f"Only one of {len(runs)} curves ({peaked[0].label}) has a resolved gold peak: a threshold chosen on "
                "other runs cannot be scored on it (leave-one-run-out needs two), so no signal is validated; "
                "signals.png shows where each signal moves relative to its peak."]
    lines = []
    if len(peaked) < MIN_RUNS:
        lines.append(f"Only {len(peaked)} of {len(runs)} curves have a resolved gold peak: each signal's "
                     "leave-one-run-out lead is shown per run, but that is too few runs to rank the signals.")
    else:
        lines.append(f"{len(peaked)} of {len(runs)} curves have a resolved gold peak; thresholds chosen on the "
                     "others, each scored on the one left out.")
        for r in ranked:
            verdict = "closer to the peak, resolved" if r["resolved"] else "not resolved at this number of runs"
            lines.append(f"{r['best']} against {r['other']}: mean |lead| smaller by {r['diff_nats']:.3g} nats "
                         f"[{r['diff_lo']:.3g}, {r['diff_hi']:.3g}] ({verdict}).")
    return lines
