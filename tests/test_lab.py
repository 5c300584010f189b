"""`bonrl lab` (bon_vs_rl/methods/lab.py): every exact quantity against an independent computation, PPO against
the tilted optimum it must reach, and the command end to end.

Independent computations: closed forms (E[max of 2, 3, 5 normals]; the Gaussian tilt), a second
quadrature of E[max of n] from the density of the maximum, brute-force enumeration of best-of-n on a
tiny population, and, for the finite population against the K → ∞ limit, the spread over six
populations (seeds) as the yardstick: the population is one random draw, so its exact numbers scatter
around the limit, and the test asks that they do so within 4 standard errors of it.
"""

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import load_yaml, resolve
from bon_vs_rl.measurement import bon_estimator as bon
from bon_vs_rl.methods import lab
from bon_vs_rl.record import results as R

runner = CliRunner()


def lab_config(**values) -> C.LabConfig:
    return resolve(C.LabConfig, {}, {"quiet": True, **values})


# ----------------------------------------------------------------------------------------------
# The K → ∞ limit.


def test_expected_max_of_normals_matches_closed_forms_and_the_density_of_the_maximum():
    root_pi = math.sqrt(math.pi)
    assert lab.expected_max_normal(1) == 0.0
    assert lab.expected_max_normal(2) == pytest.approx(1 / root_pi, abs=1e-10)
    assert lab.expected_max_normal(3) == pytest.approx(3 / (2 * root_pi), abs=1e-10)
    assert lab.expected_max_normal(5) == pytest.approx(5 / (4 * root_pi) * (1 + 6 / math.pi * math.asin(1 / 3)), abs=1e-10)
    for log_n in (math.log(1000), 12.0, 31.0):
        n = round(math.exp(log_n))
        # E[max] = ∫ z · n φ(z) Φ(z)^(n−1) dz, the density of the maximum integrated directly, around its mode.
        density = lambda z, n=n: z * math.exp(math.log(n) + stats.norm.logpdf(z) + (n - 1) * stats.norm.logcdf(z))  # noqa: E731
        mode = math.sqrt(2 * log_n)
        direct = integrate.quad(density, mode - 6, mode + 6, limit=400, epsabs=1e-12)[0]
        assert lab.expected_max_normal(n) == pytest.approx(direct, abs=1e-8)


def test_gaussian_limits_are_the_closed_forms():
    bon_point = lab.gaussian_limit_bon(1000, scale=0.5)
    sigma = math.sqrt(1.25)
    assert bon_point["kl"] == pytest.approx(math.log(1000) - 999 / 1000)
    assert bon_point["gold"] == pytest.approx(lab.expected_max_normal(1000) / sigma)
    assert bon_point["proxy"] == pytest.approx(lab.expected_max_normal(1000) * sigma)
    tilt = lab.gaussian_limit_tilted(0.5, scale=0.5)
    assert (tilt["kl"], tilt["proxy"], tilt["gold"]) == pytest.approx((1.25 / 0.5, 1.25 / 0.5, 2.0))


# ----------------------------------------------------------------------------------------------
# Exact over the population.


@pytest.fixture(scope="module")
def gaussian_populations():
    """Six populations of 200,000 outcomes with Gaussian error s = 1 (seeds 0-5)."""
    return [lab.Population(*lab.draw_population(200_000, "normal", 1.0, 3.0, seed)) for seed in range(6)]


def within_4_se(values: list[float], truth: float, largest_se: float) -> None:
    values = np.asarray(values)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert se < largest_se  # the yardstick is fine enough for the check to mean something
    assert abs(values.mean() - truth) < 4 * se, (values.mean(), truth, se)


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_best_of_n_on_a_large_population_has_gold_e_max_over_sigma(n, gaussian_populations):
    """BoN gold = E[max of n] / sqrt(1 + s²), proxy = E[max of n] · sqrt(1 + s²) (regressional Goodhart)."""
    top = lab.expected_max_normal(n)
    points = [population.best_of_n(n) for population in gaussian_populations]
    within_4_se([p["gold"] for p in points], top / math.sqrt(2), largest_se=0.02)
    within_4_se([p["proxy"] for p in points], top * math.sqrt(2), largest_se=0.02)
    for p in points:  # a population of 200,000 holds n ≤ 1000 without saturating: the KL is the formula's
        assert p["kl"] == pytest.approx(math.log(n) - (n - 1) / n, abs=5e-3)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_optimum_on_a_large_population_has_the_gaussian_closed_forms(beta, gaussian_populations):
    points = [population.tilted([beta]) for population in gaussian_populations]
    within_4_se([p["kl"][0] for p in points], 2 / (2 * beta**2), largest_se=0.01)
    within_4_se([p["proxy"][0] for p in points], 2 / beta, largest_se=0.01)
    within_4_se([p["gold"][0] for p in points], 1 / beta, largest_se=0.01)


def test_best_of_n_on_a_tiny_population_matches_enumerating_every_draw():
    """Five outcomes, two of them tied on the proxy (a tie is broken uniformly at random): enumerate all
    5^n ordered draws of n, keep the best (ties shared equally), and compare KL, proxy and gold."""
    proxy = np.array([0.3, 1.2, -0.5, 1.2, 2.0])
    gold = np.array([1.0, -2.0, 0.5, 4.0, 0.0])
    population = lab.Population(proxy, gold)
    for n in (1, 2, 3, 4):
        mass = np.zeros(5)
        for draw in itertools.product(range(5), repeat=n):
            best = max(proxy[list(draw)])
            winners = sorted({i for i in draw if proxy[i] == best})
            mass[winners] += 1 / len(winners) / 5**n
        # The tied pair is one outcome of the reference (probability 2/5): best-of-n cannot tell them apart.
        merged = {0.3: mass[0], 1.2: mass[1] + mass[3], -0.5: mass[2], 2.0: mass[4]}
        reference = {0.3: 0.2, 1.2: 0.4, -0.5: 0.2, 2.0: 0.2}
        kl = sum(m * math.log(m / reference[u]) for u, m in merged.items() if m > 0)
        point = population.best_of_n(n)
        assert point["kl"] == pytest.approx(kl, abs=1e-12)
        assert point["proxy"] == pytest.approx(float(mass @ proxy), abs=1e-12)
        assert point["gold"] == pytest.approx(float(mass @ gold), abs=1e-12)


def test_exact_kl_stays_below_the_analytic_bound_and_n_e30_is_the_top_outcome():
    """log n − (n−1)/n bounds best-of-n's KL (Beirami et al. 2024); on K outcomes no policy exceeds log K, so
    at n = e^30 ≫ K best-of-n is the top outcome: KL log K, its proxy and gold — finite, no overflow."""
    proxy, gold = lab.draw_population(5000, "student-t", 1.0, 3.0, seed=1)
    population = lab.Population(proxy, gold)
    previous = -1.0
    for n in (1, 2, 10, 100, 1000, 10**4, 10**6, round(math.exp(30))):
        point = population.best_of_n(n)
        assert all(math.isfinite(v) for v in point.values())
        assert previous <= point["kl"] <= min(bon.kl_bon_analytic(n), math.log(5000)) + 1e-12
        previous = point["kl"]
    top = int(np.argmax(proxy))
    assert point["kl"] == pytest.approx(math.log(5000), abs=1e-12)
    assert (point["proxy"], point["gold"]) == (pytest.approx(proxy[top]), pytest.approx(gold[top]))
    assert bon.kl_bon_exact(population.p, 100) == pytest.approx(population.best_of_n(100)["kl"], abs=1e-12)


def test_bon_rows_gold_gap_is_the_optimums_gold_minus_best_of_ns_at_equal_kl(gaussian_populations):
    """A bon row's gold_gap = the optimum's gold − best-of-n's gold at best-of-n's KL, with the optimum found here
    by bisection on β over plain softmax weights (not lab.optimum_at_kl); and optimum_gold_limit is the Gaussian
    K → ∞ optimum at the limit's KL: KL = σ²/(2β²) gives β = σ/sqrt(2 KL) and gold 1/β (gaussian_limit_tilted,
    whose closed form tests above check), which the 200,000-outcome populations approach."""
    population = gaussian_populations[0]
    u, v = population.raw_proxy, population.raw_gold

    def optimum(beta):
        w = np.exp((u - u.max()) / beta)
        w /= w.sum()
        return float(np.sum(w * np.log(np.maximum(w * len(u), 1e-300)))), float(w @ v)

    rows = lab.bon_rows(population, [1, 4, 64], scale=1.0, gaussian=True)
    for row in rows[1:]:
        lo, hi = math.log(1e-3), math.log(1e3)  # KL falls as β grows
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if optimum(math.exp(mid))[0] > row["kl"] else (lo, mid)
        kl, gold = optimum(math.exp((lo + hi) / 2))
        assert kl == pytest.approx(row["kl"], rel=1e-6)
        assert row["optimum_gold"] == pytest.approx(gold, rel=1e-6)
        assert row["gold_gap"] == pytest.approx(gold - row["gold_mean"], rel=1e-6, abs=1e-9)
        assert row["gold_gap"] > 0  # the optimum keeps more gold than best-of-n at equal KL
        beta = math.sqrt(2.0) / math.sqrt(2 * row["kl_limit"])
        limit = lab.gaussian_limit_tilted(beta, 1.0)
        assert limit["kl"] == pytest.approx(row["kl_limit"], rel=1e-12)
        assert row["optimum_gold_limit"] == pytest.approx(limit["gold"], rel=1e-12)
    assert rows[0]["gold_gap"] == pytest.approx(0.0, abs=1e-12) and rows[0]["optimum_gold_limit"] == 0.0
    within_4_se([lab.bon_rows(p, [64], 1.0, True)[0]["optimum_gold"] for p in gaussian_populations],
                rows[-1]["optimum_gold_limit"], largest_se=0.02)


@pytest.mark.parametrize("error", ["normal", "student-t", "lognormal", "hack"])
def test_the_optimum_at_best_of_ns_kl_has_that_kl_and_at_least_its_proxy(error):
    """π_β maximizes E[proxy] − β KL, so at the KL of best-of-n it has at least best-of-n's proxy (for
    every error kind); the β found must give exactly that KL."""
    population = lab.Population(*lab.draw_population(20_000, error, 1.0, 3.0, seed=2))
    for n in (2, 16, 300):
        point = population.best_of_n(n)
        optimum = population.optimum_at_kl(point["kl"])
        if optimum["beta"] > 0:
            assert population.tilted([optimum["beta"]])["kl"][0] == pytest.approx(point["kl"], abs=1e-9)
        assert optimum["proxy"] >= point["proxy"] - 1e-9


def test_errors_share_the_normal_interquartile_range_and_hack_pushes_only_the_worst_gold():
    for error in ("normal", "student-t", "lognormal"):
        proxy, gold = lab.draw_population(400_000, error, 1.0, 3.0, seed=3)
        q1, q3 = np.quantile(proxy - gold, [0.25, 0.75])
        assert q3 - q1 == pytest.approx(2 * stats.norm.ppf(0.75), rel=0.02), error
    proxy, gold = lab.draw_population(400_000, "hack", 1.0, 3.0, seed=3)
    clean, _ = lab.draw_population(400_000, "normal", 1.0, 3.0, seed=3)
    pushed = (proxy - clean) > 0
    assert pushed.mean() == pytest.approx(0.01, rel=0.1) and np.all(gold[pushed] < stats.norm.ppf(0.01))
    # The proxy's far tail is made of hacks: the top two outcomes here (measured: the top 2 to 7 for seeds 0-4).
    assert gold[np.argsort(proxy)[-2:]].max() < stats.norm.ppf(0.01)


# ----------------------------------------------------------------------------------------------
# PPO ends at the tilted optimum.


@pytest.mark.parametrize("policy, outcomes, steps, seed", [("tabular", 16, 100, 0), ("tabular", 16, 100, 1),
                                                           ("linear", 3000, 60, 0)])
def test_ppo_ends_at_the_tilted_optimum_of_its_beta(policy, outcomes, steps, seed):
    """bonrl ppo's objective on the softmax policy over the outcomes. The distance KL(π_θ‖π_β) is exact (the
    policy is explicit); it starts at KL(π_ref‖π_β) and must end below 2e-3. Measured over seeds: 2e-5 to
    5e-5 for these settings (tabular), 5e-4 (linear at 10^6 outcomes). The tolerance tells β apart: the
    optimum of β × 1.1 is further than it from the optimum of β."""
    beta = 1.0
    proxy, gold = lab.draw_population(outcomes, "normal", 1.0, 3.0, seed=4)
    cfg = lab_config(outcomes=outcomes, rl_steps=steps, rl_policy=policy, rl_batch_size=128, rl_minibatch_size=32,
                     rl_learning_rate=0.1, rl_eval_every=steps // 2)
    rows = lab.ppo_on_population(proxy, gold, beta, cfg, seed)
    assert [r["step"] for r in rows] == [0, steps // 2, steps]
    start, end = rows[0]["kl_to_optimum"], rows[-1]["kl_to_optimum"]
    tolerance = 2e-3
    assert start > 0.3 and end < tolerance
    optimum = lab.Population(proxy, gold).tilted([beta])
    assert end == pytest.approx((rows[-1]["optimum_objective"] - rows[-1]["objective"]) / beta, abs=1e-9)
    assert rows[-1]["kl"] == pytest.approx(optimum["kl"][0], abs=0.05)
    assert rows[-1]["gold_mean"] == pytest.approx(optimum["gold"][0], abs=0.05)
    log_opt = proxy / beta - np.logaddexp.reduce(proxy / beta)
    log_wrong = proxy / (1.1 * beta) - np.logaddexp.reduce(proxy / (1.1 * beta))
    assert float(np.exp(log_opt) @ (log_opt - log_wrong)) > 2 * tolerance


# ----------------------------------------------------------------------------------------------
# The command.


def invoke(*args: str):
    result = runner.invoke(cli.app, ["lab", "--quiet", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_lab_writes_bon_tilted_and_one_ppo_run_per_beta(tmp_path):
    result = invoke("--outcomes", "3000", "--n", "1,4,e^30", "--beta", "0.5,1", "--rl-steps", "4",
                    "--rl-beta", "1,2", "--rl-eval-every", "2", "--rl-batch-size", "64", "--rl-minibatch-size", "32",
                    "--output", "lab")
    assert result.exit_code == 0, result.output
    run_ids = result.stdout.split()
    assert len(run_ids) == 3
    rows = R.load()
    main = rows[rows["run_id"] == run_ids[0]]
    assert sorted(main["method"]) == ["bon"] * 3 + ["tilted"] * 2
    assert set(rows["policy"]) == {"lab:normal"} and set(rows["gold"]) == {"lab:V~N(0,1)"}
    assert set(rows["proxy"]) == {"lab:V+X, X~normal, s=1"}
    bon_rows = main[main["method"] == "bon"].sort_values("n")
    assert bon_rows["n"].tolist() == [1, 4, round(math.exp(30))]
    assert bon_rows["kl_analytic"].iloc[-1] == pytest.approx(29.0, abs=1e-12)
    assert bon_rows["kl"].iloc[-1] == pytest.approx(math.log(3000), abs=1e-9)  # the population's ceiling
    assert bon_rows["gold_limit"].iloc[1] == pytest.approx(lab.expected_max_normal(4) / math.sqrt(2))
    assert main.loc[main["method"] == "tilted", "beta"].sort_values().tolist() == [0.5, 1.0]
    for run_id, beta in zip(run_ids[1:], (1.0, 2.0)):
        ppo_rows = rows[rows["run_id"] == run_id].sort_values("step")
        assert ppo_rows["step"].tolist() == [0, 2, 4] and (ppo_rows["method"] == "ppo").all()
        assert (ppo_rows["beta"] == beta).all() and ppo_rows["kl"].iloc[0] == 0.0
        assert ppo_rows["kl_to_optimum"].iloc[-1] < ppo_rows["kl_to_optimum"].iloc[0]  # it moved toward π_β
        saved = json.loads((Path("lab") / run_id / "resolved_config.json").read_text())
        assert saved["rl_beta_of_run"] == beta and saved["outcomes"] == 3000
    runs = R.ResultsStore(R.resolve_results_path()).runs()
    assert set(runs["command"]) == {"lab"} and set(runs["status"]) == {"finished"}


def test_report_measures_every_lab_curve_from_the_reference_policy(tmp_path):
    """Regression: the report once took the optimum's smallest-KL point (its largest β) as its initial
    policy, so the lab's optimum gains came out short by that point's gain. Every lab row now records its
    exact gain over π_ref; the report's points must equal gold/proxy minus the population's means."""
    import pandas as pd

    result = invoke("--outcomes", "2000", "--n", "1,4,16", "--beta", "0.5,1,4", "--rl-steps", "2",
                    "--rl-beta", "1", "--rl-eval-every", "1", "--rl-batch-size", "32", "--rl-minibatch-size", "32",
                    "--output", "lab")
    assert result.exit_code == 0, result.output
    proxy, gold = lab.draw_population(2000, "normal", 1.0, 3.0, 0)
    rows = R.load()
    for name, values in (("gold", gold), ("proxy", proxy)):
        assert np.allclose(rows[f"{name}_gain"], rows[f"{name}_mean"] - values.mean(), rtol=0, atol=1e-12)
        assert (rows[f"{name}_gain_lo"] == rows[f"{name}_gain"]).all() and (rows[f"{name}_gain_hi"] == rows[f"{name}_gain"]).all()
    assert (rows["kl_lo"] == rows["kl"]).all() and (rows["kl_hi"] == rows["kl"]).all()
    report = runner.invoke(cli.app, ["report", "--quiet", "--output", "report"])
    assert report.exit_code == 0, report.output
    points = pd.read_csv(Path("report") / "points.csv")
    tilted = points[points["method"] == "tilted"]
    assert len(tilted) == 3 and tilted["gold_gain"].min() > 0.2  # β = 4 moves gold by ~1/4: not a zero point
    for _, point in points.iterrows():
        assert point["gold_gain"] == pytest.approx(point["gold_mean"] - gold.mean(), abs=1e-9), point["curve"]
        assert point["proxy_gain"] == pytest.approx(point["proxy_mean"] - proxy.mean(), abs=1e-9), point["curve"]


def test_the_goodhart_lab_preset_validates_as_a_lab_config():
    preset = Path(__file__).resolve().parent.parent / "configs" / "goodhart-lab.yaml"
    cfg = resolve(C.LabConfig, load_yaml(preset))
    assert cfg.outcomes == 10**6 and cfg.rl_steps > 0 and cfg.rl_betas == [0.5, 1.0]
    assert cfg.ns[-1] == round(math.exp(31)) and cfg.experiment == "goodhart-lab"


@pytest.mark.parametrize("flags, message", [
    (["--outcomes", "1"], "outcomes: 1 must be ≥ 2"),
    (["--error", "cauchy"], "error: 'cauchy' is not an error kind"),
    (["--error-scale", "-1"], "error_scale: -1.0 must be ≥ 0"),
    (["--df", "0"], "df: 0.0 must be > 0"),
    (["--n", "0,4"], "n: '0' is not ≥ 1"),
    (["--n", "e^50"], "n: 'e^50' is above e^43"),
    (["--n", "2.5"], "n: '2.5' is not an integer"),
    (["--beta", "1,-1"], "beta: '-1' is not a positive finite number"),
    (["--rl-beta", "x"], "rl_beta: 'x' is not a number"),
    (["--rl-policy", "mlp"], "rl_policy: 'mlp'"),
    (["--rl-batch-size", "64", "--rl-minibatch-size", "48"], "rl_minibatch_size: 48 must be ≥ 1 and divide"),
    (["--rl-learning-rate", "0"], "rl_learning_rate: 0.0 must be > 0"),
    (["--n", "1,,10"], "n: '1,,10' has an empty entry"),
    (["--beta", "0.5,1,"], "beta: '0.5,1,' has an empty entry"),
    (["--log-with", "tensorboard"], "log_with: the lab logs to no tracker"),
])
def test_bad_flags_exit_2_naming_the_flag_before_any_work(flags, message, tmp_path):
    result = invoke("--outcomes", "100", *flags) if flags[0] != "--outcomes" else invoke(*flags)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonrl: error: {message}"), lines
    assert not (tmp_path / "results.sqlite").exists() and not (tmp_path / "runs").exists()
