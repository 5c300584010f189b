"""The KL-regularized (tilted) optimum estimated from reference samples (bon_vs_rl/methods/tilted.py), and
`bonrl sample --beta` end to end.

Checked against independent computations: the Gaussian closed forms by Monte Carlo, a discrete
reference whose optimum is enumerated by hand, and the rows recomputed from the saved samples file
weight by weight.
"""

import math

import numpy as np
import pandas as pd
import pytest
import toy_scorers
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import parse_float_list, resolve
from bon_vs_rl.methods import best_of_n, tilted
from bon_vs_rl.record import results as R

runner = CliRunner()
TIED = f"python:{toy_scorers.__file__}:tied_proxy"
HASHED = f"python:{toy_scorers.__file__}:hashed_proxy"
GOLD = f"python:{toy_scorers.__file__}:length_gold"


# ----------------------------------------------------------------------------------------------
# The estimator.


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_gaussian_tilt_has_the_closed_form_kl_proxy_and_gold(beta):
    """Gold V ~ N(0,1), proxy U = V + X, X ~ N(0, s²): tilting U ~ N(0, σ²) by exp(u/β) gives N(σ²/β, σ²), so
    KL = σ²/(2β²), E[U] = σ²/β and E[V] = E[E[V|U]] = E[U]/σ² = 1/β. 100 prompts x 20,000 samples: the
    per-prompt estimates' mean is within 4 standard errors (across prompts) of each closed form."""
    rng = np.random.default_rng(0)
    prompts, samples, s = 100, 20_000, 1.0
    gold = rng.standard_normal((prompts, samples))
    proxy = gold + s * rng.standard_normal((prompts, samples))
    estimate = tilted.tilted_per_prompt(proxy, {"gold": gold}, [beta])
    variance = 1 + s**2
    for name, truth in (("kl", variance / (2 * beta**2)), ("proxy", variance / beta), ("gold", 1 / beta)):
        values = estimate[name][:, 0]
        se = values.std(ddof=1) / math.sqrt(prompts)
        assert se < 0.01  # small enough that the check means something
        assert abs(values.mean() - truth) < 4 * se, (name, values.mean(), truth, se)


def test_reweighted_samples_of_a_discrete_reference_give_its_exact_optimum():
    """A reference over four outcomes with probabilities 0.1..0.4, written as 10 samples in those
    proportions (shuffled): the self-normalized estimate is then the optimum itself, enumerated here as
    π_β(y) = p(y) e^{r(y)/β} / Σ p e^{r/β}, KL = Σ π_β log(π_β / p)."""
    p = np.array([0.1, 0.2, 0.3, 0.4])
    reward = np.array([2.0, -1.0, 0.5, 0.0])
    gold = np.array([1.0, 3.0, -2.0, 0.25])
    counts = (p * 10).astype(int)
    rng = np.random.default_rng(3)
    order = rng.permutation(10)
    samples_reward = np.repeat(reward, counts)[order]
    samples_gold = np.repeat(gold, counts)[order]
    betas = [0.3, 1.0, 5.0]
    estimate = tilted.tilted_per_prompt(np.stack([samples_reward, samples_reward[::-1]]),
                                        {"gold": np.stack([samples_gold, samples_gold[::-1]])}, betas)
    for k, beta in enumerate(betas):
        optimum = p * np.exp(reward / beta)
        optimum /= optimum.sum()
        for prompt in range(2):  # the same multiset in two orders: the same answer
            assert estimate["kl"][prompt, k] == pytest.approx(float(optimum @ np.log(optimum / p)), abs=1e-12)
            assert estimate["proxy"][prompt, k] == pytest.approx(float(optimum @ reward), abs=1e-12)
            assert estimate["gold"][prompt, k] == pytest.approx(float(optimum @ gold), abs=1e-12)
            # Kish ESS over the 10 samples: each outcome's weight is shared by its count of samples.
            assert estimate["ess"][prompt, k] == pytest.approx(1 / float(optimum**2 @ (1 / counts)), rel=1e-12)
        # The formula of the issue, computed naively (no overflow at these values).
        naive = (optimum @ reward) / beta - math.log(np.mean(np.exp(samples_reward / beta)))
        assert estimate["kl"][0, k] == pytest.approx(naive, abs=1e-12)


def test_small_beta_against_large_scores_neither_overflows_nor_loses_the_top_sample():
    """exp(1000/0.001) overflows any float: the log-sum-exp form gives the β → 0 limit, all weight on the top
    sample (KL log N, ESS 1), and with two tied top samples half on each (KL log(N/2), ESS 2)."""
    proxy = np.array([[1000.0, 999.0, 10.0, -500.0], [7.0, 1000.0, 1000.0, 3.0]])
    gold = np.array([[5.0, 1.0, 0.0, 0.0], [0.0, 2.0, 4.0, 9.0]])
    out = tilted.tilted_per_prompt(proxy, {"gold": gold}, [1e-3])
    assert np.all(np.isfinite(out["kl"]))
    assert out["kl"][:, 0] == pytest.approx([math.log(4), math.log(2)], abs=1e-12)
    assert out["ess"][:, 0] == pytest.approx([1.0, 2.0], abs=1e-12)
    assert out["gold"][:, 0] == pytest.approx([5.0, 3.0], abs=1e-12)


def test_each_prompt_is_shifted_by_its_own_maximum_so_prompts_on_other_scales_stay_finite():
    """Regression (issue 25, item 1): one exponent shift shared by all prompts underflows every weight of a
    prompt whose proxy sits far below another's — [[1000, 999, 10], [0, 1, 2]] at β = 0.01 gave prompt 2
    proxy NaN, KL inf, ESS 0. The weights are invariant to a constant per prompt, so adding one changes
    nothing, and a prompt alone gives what it gives in a batch."""
    proxy = np.array([[1000.0, 999.0, 10.0], [0.0, 1.0, 2.0]])
    gold = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    betas = [0.01, 1.0, 30.0]
    batch = tilted.tilted_per_prompt(proxy, {"gold": gold}, betas)
    for name in ("kl", "ess", "gold"):
        assert np.all(np.isfinite(batch[name])), name
    # β = 0.01: all weight on each prompt's top sample (1000 and 2): gold 1 and 6, KL log 3, ESS 1.
    assert batch["gold"][:, 0] == pytest.approx([1.0, 6.0], abs=1e-12)
    assert batch["kl"][:, 0] == pytest.approx([math.log(3)] * 2, abs=1e-12)
    for p in range(2):
        alone = tilted.tilted_per_prompt(proxy[p:p + 1], {"gold": gold[p:p + 1]}, betas)
        for name in ("kl", "ess", "gold"):
            np.testing.assert_allclose(batch[name][p], alone[name][0], rtol=1e-12, atol=1e-12, err_msg=name)
    shifted = tilted.tilted_per_prompt(proxy + np.array([[-3000.0], [5000.0]]), {"gold": gold}, betas)
    for name in ("kl", "ess", "gold"):
        np.testing.assert_allclose(shifted[name], batch[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_ess_is_n_for_equal_scores_or_a_huge_beta_and_lies_in_1_to_n():
    rng = np.random.default_rng(4)
    equal = np.full((2, 8), 0.3)
    out = tilted.tilted_per_prompt(equal, None, [0.01, 1.0])
    assert np.all(out["ess"] == pytest.approx(8.0)) and np.all(out["kl"] == 0.0)
    proxy = rng.normal(size=(5, 50))
    out = tilted.tilted_per_prompt(proxy, None, [1e9, 1.0, 0.05])
    assert out["ess"][:, 0] == pytest.approx(np.full(5, 50.0), rel=1e-9) and np.all(out["kl"][:, 0] < 1e-12)
    assert np.all((out["ess"] >= 1 - 1e-12) & (out["ess"] <= 50 + 1e-9))
    assert np.all((out["kl"] >= 0) & (out["kl"] <= math.log(50) + 1e-12))
    assert np.all(np.diff(out["ess"], axis=1) < 0) and np.all(np.diff(out["kl"], axis=1) > 0)  # β down: KL up


def test_rows_average_prompts_flag_low_ess_and_share_best_of_ns_bootstrap_resamples():
    rng = np.random.default_rng(5)
    proxy, gold = rng.normal(size=(12, 40)), rng.normal(size=(12, 40))
    length = rng.integers(1, 20, size=(12, 40)).astype(float)
    betas = [0.1, 1.0, 10.0]
    rows = tilted.tilted_rows(proxy, {"gold": gold, "length": length}, betas, bootstrap=200, seed=9)
    per_prompt = tilted.tilted_per_prompt(proxy, {"gold": gold, "length": length}, betas)
    counts = np.random.default_rng(9).multinomial(12, np.full(12, 1 / 12), size=200)  # as best_of_n_table draws
    for k, row in enumerate(rows):
        assert row["beta"] == betas[k]
        assert row["kl"] == pytest.approx(per_prompt["kl"][:, k].mean())
        assert row["gold_se"] == pytest.approx(per_prompt["gold"][:, k].std(ddof=1) / math.sqrt(12))
        assert row["length_mean"] == pytest.approx(per_prompt["length"][:, k].mean())
        assert row["ess"] == pytest.approx(per_prompt["ess"][:, k].mean())
        assert row["ess_min"] == pytest.approx(per_prompt["ess"][:, k].min())
        assert row["low_ess"] == int(row["ess"] < tilted.LOW_ESS)
        means = counts @ per_prompt["gold"][:, k] / 12
        assert (row["gold_lo"], row["gold_hi"]) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert [r["low_ess"] for r in rows] == [1, 1, 0]  # ESS at β = 0.1, 1, 10: ~1, ~15, ~40 of 40
    # The flag follows the mean ESS (LOW_ESS was measured on it): one prompt collapsing onto its top sample
    # (ESS 1) among eleven with equal scores (ESS 40) leaves the mean at 36.75, not flagged.
    mixed = np.zeros((12, 40))
    mixed[0] = np.linspace(0.0, 100.0, 40)
    (row,) = tilted.tilted_rows(mixed, {"gold": gold}, [0.1])
    assert row["ess_min"] == pytest.approx(1.0, abs=1e-6) and row["ess"] == pytest.approx(36.75, abs=1e-6)
    assert row["low_ess"] == 0


@pytest.mark.parametrize("args, message", [
    ((np.zeros((2, 3)), None, [0.0]), "β must be a positive"),
    ((np.zeros((2, 3)), None, [-1.0]), "β must be a positive"),
    ((np.zeros((2, 3)), None, [float("inf")]), "β must be a positive"),
    ((np.zeros((2, 3)), None, []), "betas is empty"),
    ((np.array([[0.0, np.nan]]), None, [1.0]), "NaN or inf"),
    ((np.zeros(3), None, [1.0]), r"shape \[P, N\]"),
    ((np.zeros((2, 3)), {"gold": np.zeros((3, 2))}, [1.0]), "column 'gold' has shape"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        tilted.tilted_per_prompt(*args)


# ----------------------------------------------------------------------------------------------
# `bonrl sample --beta`.


def invoke(*args: str):
    result = runner.invoke(cli.app, ["sample", "--quiet", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def sample_args(*extra: str) -> list[str]:
    return ["--policy", "tiny", "--gold", GOLD, "--n", "1,2,4", "--eval-prompts", "3", "--max-new-tokens", "6",
            "--batch-size", "16", "--samples-per-prompt", "8", "--output", "bon", "--proxy", HASHED,
            "--proxy", TIED, *extra]


def assert_tilted_rows_match_samples(rows: pd.DataFrame, frame: pd.DataFrame) -> None:
    """Every tilted row recomputed prompt by prompt from the samples file, with the weights written out."""
    groups = [g for _, g in frame.groupby("prompt_id")]
    for row in rows.itertuples():
        kl, gold, length, ess = [], [], [], []
        for g in groups:
            r = g[row.proxy].to_numpy()
            w = np.exp((r - r.max()) / row.beta)
            w /= w.sum()
            kl.append(float(w @ r) / row.beta - (r.max() / row.beta + math.log(np.mean(np.exp((r - r.max()) / row.beta)))))
            gold.append(float(w @ g[GOLD].to_numpy()))
            length.append(float(w @ g["tokens"].to_numpy()))
            ess.append(1 / float(w @ w))
        assert row.kl == pytest.approx(np.mean(kl), abs=1e-12)
        assert row.gold_mean == pytest.approx(np.mean(gold), rel=1e-12, abs=1e-12)
        assert row.gold_se == pytest.approx(np.std(gold, ddof=1) / math.sqrt(len(groups)), rel=1e-9, abs=1e-12)
        assert row.length_mean == pytest.approx(np.mean(length), rel=1e-12)
        assert row.ess == pytest.approx(np.mean(ess), rel=1e-12) and row.low_ess == int(np.mean(ess) < tilted.LOW_ESS)


def test_sample_with_beta_writes_one_tilted_row_per_proxy_and_beta_beside_the_bon_rows(tmp_path):
    result = invoke(*sample_args("--beta", "2,0.5,1"))
    assert result.exit_code == 0, result.output
    rows = R.load()
    assert sorted(rows["method"].value_counts().items()) == [("bon", 6), ("tilted", 6)]
    assert rows["run_id"].nunique() == 1  # one run, one transaction
    optimum = rows[rows["method"] == "tilted"].sort_values(["proxy", "beta"])
    assert optimum["beta"].tolist() == [0.5, 1.0, 2.0] * 2 and set(optimum["proxy"]) == {HASHED, TIED}
    assert optimum["n"].isna().all() and optimum["step"].isna().all()
    frame, _ = best_of_n.read_samples(best_of_n.Path(result.stdout.strip().splitlines()[-1]))
    assert_tilted_rows_match_samples(optimum, frame)
    assert (optimum["policy"] == "tiny").all() and (optimum["gold"] == GOLD).all()

    # Rescoring the same samples with --beta reproduces the rows exactly.
    samples = result.stdout.strip().splitlines()[-1]
    again = invoke("--policy", "tiny", "--from-samples", samples, "--proxy", HASHED, "--gold", GOLD, "--n", "1,2",
                   "--beta", "1", "--output", "bon2")
    assert again.exit_code == 0, again.output
    rescored = R.load(method="tilted")
    rescored = rescored[rescored["run_id"] != optimum["run_id"].iloc[0]]
    original = optimum[(optimum["proxy"] == HASHED) & (optimum["beta"] == 1.0)]
    assert len(rescored) == 1
    for column in ("kl", "proxy_mean", "gold_mean", "gold_se", "length_mean", "ess"):
        assert rescored[column].iloc[0] == original[column].iloc[0]


@pytest.mark.parametrize("value, message", [
    ("0", "beta: '0' is not a positive finite number"),
    ("1,-2", "beta: '-2' is not a positive finite number"),
    ("abc", "beta: 'abc' is not a number"),
    ("nan", "beta: 'nan' is not a positive finite number"),
    ("inf", "beta: 'inf' is not a positive finite number"),
])
def test_bad_beta_exits_2_naming_the_flag_before_any_work(value, message, tmp_path):
    result = invoke(*sample_args("--beta", value))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonrl: error: {message}")
    assert not (tmp_path / "results.sqlite").exists() and not (tmp_path / "bon").exists()


def test_parse_float_list_sorts_dedupes_and_accepts_yaml_numbers():
    assert parse_float_list("2, 0.5,1,0.5", "beta") == [0.5, 1.0, 2.0]
    assert parse_float_list(0.25, "beta") == [0.25] and parse_float_list("", "beta") == []
    assert resolve(C.SampleConfig, {"beta": 0.5, "proxy": [TIED]}, {}).betas == [0.5]
