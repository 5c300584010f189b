"""Onset analysis (analysis/onset.py) on synthetic runs whose signals fire at known points, and its intervals."""

import math

import numpy as np
import pytest

from bon_vs_rl.analysis import onset


def synthetic(label, peak, K, nats, fires_at=None, rises_at=None):
    """A run of K points, KL = nats·k, step = 10·k, gold peaking at `peak` (None: no resolved peak).
    distinct_2_drift falls by 0.1 per point from the peak on (-0.05 one point before it); above_ref_max
    jumps from 0 to 1 at `fires_at`; kl is just KL."""
    k = np.arange(K, dtype=float)
    gold = -np.abs(k - (peak if peak is not None else K)) if peak is not None else k
    drift = np.zeros(K) if peak is None else -0.05 * np.maximum(0, k - peak + 2)
    jump = (k >= fires_at).astype(float) if fires_at is not None else np.zeros(K)
    if rises_at is not None:
        drift = -0.05 * np.maximum(0, k - rises_at + 2)
    return onset.Run(label, kl=nats * k, step=10 * k, gold=gold, peak=peak,
                     signals={"distinct_2_drift": drift, "above_ref_max": jump, "kl": nats * k})


PEAKED = [synthetic("a", 4, 10, 1.0, fires_at=2), synthetic("b", 5, 11, 2.0, fires_at=3),
          synthetic("c", 3, 9, 0.5, fires_at=1), synthetic("d", 6, 12, 1.5, fires_at=4)]
QUIET = [synthetic("e", None, 8, 1.0, fires_at=3), synthetic("f", None, 8, 1.0),
         synthetic("g", None, 8, 1.0, rises_at=5), synthetic("h", None, 8, 1.0)]


def test_a_signal_that_turns_at_the_peak_warns_exactly_there_on_every_held_out_run():
    table, per_run = onset.score(PEAKED + QUIET, ["distinct_2_drift", "above_ref_max"])
    drift = next(r for r in table if r["signal"] == "distinct_2_drift")
    held = [o for o in per_run if o["signal"] == "distinct_2_drift" and o["role"] == "held out"]
    # Every threshold chosen on three runs lies between -0.05 and -0.1: the rule fires at the peak itself.
    assert all(-0.1 < o["threshold"] < -0.05 and o["fired"] for o in held)
    assert [o["lead_nats"] for o in held] == [0.0] * 4 and [o["lead_steps"] for o in held] == [0.0] * 4
    assert (drift["warned"], drift["missed"], drift["lead_nats"], drift["abs_error_nats"]) == (4, 0, 0.0, 0.0)
    assert drift["rule"] == "distinct_2_drift < -0.075"
    # On runs without a peak it fires once (run g's drift falls from point 4 on): 1 false alarm in 4.
    assert (drift["false_alarms"], drift["runs_without_peak"], drift["false_alarm_rate"]) == (1, 4, 0.25)
    assert drift["false_alarm_rate_lo"] < 0.25 < drift["false_alarm_rate_hi"]


def test_a_signal_that_jumps_two_points_early_leads_by_two_points():
    table, per_run = onset.score(PEAKED + QUIET, ["above_ref_max"])
    held = [o for o in per_run if o["role"] == "held out"]
    assert all(o["fired"] for o in held)
    leads = [o["lead_nats"] for o in held]
    assert leads == [2 * r.kl[1] for r in PEAKED]  # two points of each run's KL step
    assert [o["lead_steps"] for o in held] == [20.0] * 4 and [o["gold_lost"] for o in held] == [2.0] * 4
    row = table[0]
    mean, lo, hi = onset.t_interval(leads)
    assert (row["lead_nats"], row["lead_nats_lo"], row["lead_nats_hi"]) == (mean, lo, hi)
    assert row["false_alarms"] == 1  # run e jumps


def test_ranking_needs_three_runs_with_a_peak_and_says_so():
    table, _ = onset.score(PEAKED + QUIET, ["distinct_2_drift", "above_ref_max"])
    ranked = onset.rank(PEAKED + QUIET, table)
    assert [(r["best"], r["other"]) for r in ranked] == [("distinct_2_drift", "above_ref_max")]
    assert ranked[0]["diff_nats"] == pytest.approx(np.mean([2 * r.kl[1] for r in PEAKED])) and ranked[0]["resolved"]
    assert "4 of 8 curves have a resolved gold peak" in onset.summary(PEAKED + QUIET, table, ranked)[0]

    two = PEAKED[:2] + QUIET
    table, _ = onset.score(two, ["distinct_2_drift", "above_ref_max"])
    assert onset.rank(two, table) == []
    assert "too few runs to rank the signals" in onset.summary(two, table, [])[0]
    one = PEAKED[:1] + QUIET
    assert "leave-one-run-out needs two" in onset.summary(one, *onset.score(one)[:1], [])[0]
    assert "None of the 4 curves has a resolved gold peak" in onset.summary(QUIET, onset.score(QUIET)[0], [])[0]


def test_a_signal_never_crossing_anything_on_training_runs_is_not_scored():
    runs = [onset.Run(f"r{i}", np.arange(5.0), np.arange(5.0), np.zeros(5), {"kl": np.arange(5.0)}, peak=2)
            for i in range(3)]
    table, _ = onset.score(runs, ["agreement"])
    assert table[0]["scored"] == 0 and math.isnan(table[0]["lead_nats"])


def test_the_t_interval_over_runs_covers_the_mean_lead_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = [lo <= 1.0 <= hi for lo, hi in (onset.t_interval(rng.normal(1.0, 2.0, 5))[1:] for _ in range(4000))]
    assert 0.94 <= np.mean(covered) <= 0.96


def test_the_wilson_interval_covers_the_false_alarm_rate_about_95_percent_of_the_time():
    """Exact coverage over the binomial distribution of k false alarms in m = 20 runs, for rates 0.05-0.95:
    Wilson's coverage oscillates with the rate, near 95% on average (Brown, Cai & DasGupta 2001)."""
    from scipy import stats

    m = 20
    bounds = [onset.wilson(k, m)[1:] for k in range(m + 1)]
    coverage = [sum(stats.binom.pmf(k, m, p) for k, (lo, hi) in enumerate(bounds) if lo <= p <= hi)
                for p in np.linspace(0.05, 0.95, 91)]
    assert 0.94 <= np.mean(coverage) <= 0.96 and min(coverage) >= 0.85
    assert onset.wilson(0, 10)[1] == 0.0 and onset.wilson(10, 10)[2] == pytest.approx(1.0)
