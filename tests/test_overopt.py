"""The cpu-overopt preset's shape, and the report's overoptimization view (peaks' power, the 30-nats row)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bon_vs_rl import experiment
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import load_yaml, resolve
from bon_vs_rl.report import overopt as overopt_view

REPO = Path(__file__).resolve().parent.parent


def test_overopt_preset_has_three_nested_proxies_a_watcher_dense_rl_evaluations_and_a_kl_frontier():
    cfg = resolve(C.ExperimentConfig, load_yaml(REPO / "configs" / "cpu-overopt.yaml"))
    stages, _ = experiment.plan(cfg)
    by_kind = {}
    for s in stages:
        by_kind.setdefault(s.kind, []).append(s)
    assert all(s.cfg.gold == "vader-fluent" for s in stages if hasattr(s.cfg, "gold"))
    assert all(s.cfg.policy == "smollm2-135m" for s in stages if hasattr(s.cfg, "policy"))
    rms = {s.name: s.cfg for s in by_kind["rm"]}
    optimized = [rms[name] for name in ("rm-0", "rm-1", "rm-2")]
    pairs = [c.pairs for c in optimized]
    assert pairs == sorted(pairs) and {c.data_pairs for c in optimized} == {max(pairs)}  # nested subsets of one draw
    watcher = rms["rm-3"]  # trained on a labelled draw of its own
    assert watcher.data_seed != optimized[0].data_seed and watcher.pairs == watcher.data_pairs
    ppo = [s.cfg for s in by_kind["ppo"]]
    unpenalized = [p for p in ppo if p.beta == 0]
    # β = 0 against the weak, the middle and the strongest proxy, 60 steps (the pilot against rm-1 passed 30 nats
    # by step 40), an evaluation every 5 steps; every run watched by rm-3
    assert sorted(Path(p.proxy.removeprefix("rm:")).name for p in unpenalized) == ["rm-0", "rm-1", "rm-2"]
    assert all(p.steps >= 60 and p.eval_every <= 5 for p in unpenalized)
    assert {Path(p.second_proxy.removeprefix("rm:")).name for p in ppo} == {"rm-3"}
    assert len({p.beta for p in ppo if p.beta > 0}) >= 2  # the KL-penalty frontier
    sample = by_kind["samples"][0].cfg
    assert max(int(n) for n in str(sample.n).split(",")) >= 128 and sample.eval_prompts == 40
    assert {p.eval_prompts for p in ppo} == {40}  # RL and best-of-n on the same prompts


def test_bon_kl_at_e31_is_30_nats():
    assert overopt_view.bon_kl(31.0) == pytest.approx(30.0, abs=1e-12)
    assert overopt_view.bon_kl(math.log(8)) == pytest.approx(math.log(8) - 7 / 8)


def test_fall_power_is_the_share_of_studies_that_resolve_a_planted_fall_computed_the_long_way():
    """The power read off the plateau studies' thresholds equals the share of studies resolving a world with the
    fall planted in it (findings.peak_power(fall=δ), same seed: same studies), for the analysed curve."""
    from bon_vs_rl.analysis import findings

    rng = np.random.default_rng(3)
    P, K = 40, 6
    gain = np.linspace(0, 0.3, K) + rng.normal(0, 0.4, size=(P, K))  # rising: per-prompt gains at K points
    kl = np.linspace(0, 10, K)

    class Analysis:  # what fall_power reads of a panel's analysis
        def peak_power(self, label, **kwargs):
            return findings.peak_power(gain, kl, **kwargs)

    for fall in (0.05, 0.15, 0.3):
        power = overopt_view.fall_power(Analysis(), "ppo", fall)
        planted = findings.peak_power(gain, kl, fall=fall)
        assert power["power"] == pytest.approx(planted["false_peak"], abs=1e-12)
        assert power["prompts_for_80pct"] == pytest.approx(P * (power["fall_80"] / fall) ** 2)
    assert 0 < overopt_view.fall_power(Analysis(), "ppo", 0.05)["power"] < overopt_view.fall_power(
        Analysis(), "ppo", 0.3)["power"]
    assert math.isnan(overopt_view.fall_power(Analysis(), "ppo", -0.1)["power"])


def test_gaussian_joint_is_the_within_prompt_correlation():
    rng = np.random.default_rng(0)
    P, N = 50, 20
    shift = rng.normal(0, 5, size=(P, 1))  # prompt effects, which must not count
    u = rng.normal(size=(P, N))
    v = 0.6 * u + 0.8 * rng.normal(size=(P, N))
    frame = pd.DataFrame({"prompt_id": np.repeat(np.arange(P), N), "p": (u + shift).ravel(),
                          "g": (v + 2 * shift).ravel()})
    joint = overopt_view.gaussian_joint(frame, "p", "g")
    cu, cv = u - u.mean(1, keepdims=True), v - v.mean(1, keepdims=True)
    assert joint["rho"] == pytest.approx(np.corrcoef(cu.ravel(), cv.ravel())[0, 1])
    assert joint["sigma_gold"] == pytest.approx(cv.std())


def test_a_gold_constant_within_prompts_has_no_correlation_and_no_warning():
    import warnings

    frame = pd.DataFrame({"prompt_id": [0, 0, 1, 1], "p": [0.1, 0.3, 0.2, 0.5], "g": [1.0, 1.0, 2.0, 2.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        joint = overopt_view.gaussian_joint(frame, "p", "g")
    assert math.isnan(joint["rho"]) and joint["sigma_gold"] == 0.0


def test_gaussian_best_of_n_gold_matches_simulation():
    # independent computation: best of 16 by proxy among bivariate normal draws, gold averaged
    rng = np.random.default_rng(1)
    rho, sigma = 0.5, 0.3
    u = rng.normal(size=(200_000, 16))
    v = sigma * (rho * u + math.sqrt(1 - rho**2) * rng.normal(size=u.shape))
    simulated = v[np.arange(len(u)), u.argmax(1)].mean()
    bon_gold, optimum_gold = overopt_view.gaussian_gold({"rho": rho, "sigma_gold": sigma}, math.log(16), 2.0)
    assert bon_gold == pytest.approx(simulated, abs=3e-3)
    assert optimum_gold == pytest.approx(rho * sigma * 2.0)  # sqrt(2 · 2 nats)


def tiny_overopt(tmp_path: Path) -> Path:
    """configs/cpu-overopt.yaml with the smoke preset's tiny models and budgets, its shape kept: three nested
    proxies and a watcher, one best-of-n draw rescored by each nested proxy with the optimum, PPO at β 0 against
    each, PPO at two β > 0, every PPO run watched by the fourth proxy."""
    import yaml

    study = yaml.safe_load((REPO / "configs" / "cpu-overopt.yaml").read_text())
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    study.update(output=str(tmp_path / "overopt"), eval_prompts=6)
    study["common"].update(policy="tiny", max_prompt_tokens=24, max_new_tokens=10, precision="fp32")
    tiny_rm = {k: v for k, v in smoke["train_rm"][0].items() if k not in ("pairs", "data_pairs")}
    study["train_rm"] = [{**tiny_rm, "pairs": p, "data_pairs": 48} for p in (16, 32, 48)]
    study["train_rm"].append({**tiny_rm, "pairs": 16, "data_pairs": 16, "data_seed": 1})  # rm-3, the watcher
    study["sample"]["n"] = "1,2,4,8"
    for entry in study["ppo"]:
        entry.update(steps=4, eval_every=2, rollout_batch_size=4, minibatch_size=2, ppo_epochs=1, train_top_layers=0)
    (tmp_path / "overopt.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / "overopt.yaml"


@pytest.mark.slow  # five tiny PPO runs, three proxies and a report: ~1 min on an idle 2-core machine
def test_overopt_preset_on_tiny_models_reports_peaks_30_nats_text_and_samples(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bon_vs_rl import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, ["experiment", str(tiny_overopt(tmp_path)), "--quiet"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "overopt" / "report"
    peaks = pd.read_csv(report / "peaks.csv")
    # every curve of every proxy: best-of-n, the optimum and the β = 0 run on rm-0, rm-1, rm-2; both β > 0 on rm-1
    assert len(set(peaks["proxy"])) == 3 and len(peaks) == 3 * 3 + 2
    thirty = pd.read_csv(report / "thirty_nats.csv")
    assert set(thirty["proxy"]) == set(peaks["proxy"])
    assert np.isfinite(thirty["gaussian_bon_gold"]).all() and np.allclose(thirty["kl"], 30.0)
    text = pd.read_csv(report / "text.csv")
    assert {"tokens", "distinct_1", "distinct_2", "nonword_share", "ref_logprob_per_token"} <= set(text.columns)
    rl = text[text["curve"].str.startswith("ppo")]
    assert np.isfinite(rl["logprob_per_token"]).all() and np.isfinite(rl["ref_logprob_per_token"]).all()
    # step 0 of an RL run is the reference itself: its log-probs per token are the reference's
    first = rl[rl["step"] == 0]
    assert np.allclose(first["logprob_per_token"], first["ref_logprob_per_token"], atol=1e-4)
    samples = pd.read_csv(report / "samples.csv")
    assert {"best-of-n"} <= set(samples["method"]) and samples["completion"].notna().all()
    assert "30 nats" in (report / "report.md").read_text(encoding="utf-8")
    # the rows carry the text statistics too (for gold-free signals computed from the table alone)
    from bon_vs_rl.record import results as R

    rows = R.load(tmp_path / "results.sqlite")  # conftest points BONRL_RESULTS here
    assert rows.loc[rows["method"].isin(["bon", "tilted", "ppo"]), "text_distinct_2"].notna().all()
    assert rows.loc[rows["method"] == "ppo", "signal_agreement"].notna().all()  # the watcher scored every evaluation
    assert {"power", "fall_50", "fall_80", "prompts_for_80pct"} <= set(peaks.columns)


def test_power_reads_as_a_whole_percent_and_saturates_at_99():
    assert overopt_view.percent(0.662) == "66%"
    assert overopt_view.percent(0.9999) == "> 99%" and overopt_view.percent(0.001) == "< 1%"
