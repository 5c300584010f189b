"""The scaling view of `bonrl report` on a synthetic family of proxies whose truth is known.

One samples file (best-of-n's draw) is rescored by several proxies, as `bonrl sample --from-samples` does:
gold = offset + GOLD_STD·z per sample, and proxy j = z + S_j·x_j, so proxy j's correlation with the gold
within a prompt is c_j = 1/sqrt(1 + S_j²) and its best-of-n gold gain is exactly c_j·GOLD_STD·E[max of n
standard normals]. Gao et al.'s BoN fit is linear in the curve, so the fitted α of proxy j is c_j times the
fit of GOLD_STD·E[max of n] against best-of-n's KL (quadrature and an independent least squares here). With
c_j linear in log(pairs_j), α is linear in log(pairs) with a slope known in closed form, which the view must
recover within its interval. An ensemble (two members, read @mean, @min and one member alone) has its
checkpoint on disk, so its sizes and accuracies come from `scorers.describe_rm`; the single proxies have only
their train-rm rows (as when the checkpoints moved), so those are read too.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import GOLD_STD, OFFSETS, PROMPTS, add_run, expected_max, invoke, page

from bon_vs_rl.measurement import scorers
from bon_vs_rl.measurement.bon_estimator import kl_bon_analytic
from bon_vs_rl.methods import best_of_n

P, N = 48, 64
NS = [1, 2, 4, 8, 16, 32, 64]
PAIRS = [125, 250, 500, 1000]
CORRELATION = [0.35 + 0.1 * math.log2(p / 125) for p in PAIRS]  # c_j: 0.35, 0.45, 0.55, 0.65
PARAMETERS = {"parameters": 22_713_216, "parameters_non_embedding": 10_794_624}


def unit_alpha() -> float:
    """Gao et al.'s BoN form d(α − β d) fitted to GOLD_STD·E[max of n] against d = sqrt(log n − (n−1)/n): the α
    of a proxy whose correlation with the gold is 1. Least squares by numpy's lstsq, not bonrl's fit."""
    d = np.sqrt(np.asarray(kl_bon_analytic(np.array(NS))))
    gain = np.array([GOLD_STD * expected_max(n) for n in NS])
    (alpha, _), *_ = np.linalg.lstsq(np.column_stack([d, -d * d]), gain, rcond=None)
    return float(alpha)


def family_table(tmp_path: Path) -> tuple[Path, list[str], Path]:
    """A results table with one best-of-n draw rescored by four single proxies and an ensemble's three specs."""
    path, rng = tmp_path / "results.sqlite", np.random.default_rng(7)
    z = rng.standard_normal((P, N))
    singles = [f"rm:{tmp_path / 'gone' / f'rm-{i}'}" for i in range(len(PAIRS))]  # no checkpoint: rows only
    frame = pd.DataFrame({"prompt_id": np.repeat(np.arange(P), N), "prompt": np.repeat(PROMPTS[:P], N),
                          "completion": "text", "tokens": 12, "logprob": -rng.uniform(1, 30, P * N), "ended": True,
                          "vader": (0.2 + OFFSETS[:P, None] + GOLD_STD * z).ravel()})
    for spec, c in zip(singles, CORRELATION):
        frame[spec] = (z + math.sqrt(1 / c**2 - 1) * rng.standard_normal((P, N))).ravel()
    noisy = f"rm:{tmp_path / 'gone' / 'rm-noisy'}"  # rm-2's 500 pairs with a quarter of the labels flipped
    frame[noisy] = (z + math.sqrt(1 / 0.3**2 - 1) * rng.standard_normal((P, N))).ravel()
    ensemble = tmp_path / "ens"
    members = np.stack([(z + 1.5 * rng.standard_normal((P, N))).ravel() for _ in range(2)])
    ensemble_specs = [f"rm:{ensemble}@mean", f"rm:{ensemble}@min", f"rm:{ensemble}@member-0"]
    for spec, (kind, value) in zip(ensemble_specs, [("mean", 0), ("min", 0), ("member", 0)]):
        frame[spec] = scorers.aggregate(members, kind, value)
    ensemble.mkdir()
    (ensemble / scorers.RM_METADATA).write_text(json.dumps({
        "members": ["member-0", "member-1"], "train_pairs": 500, "backbone": "minilm",
        "config": {"pairs": 500, "label_noise": 0.0}, "parameters": {"total": PARAMETERS["parameters"],
                                                                     "non_embedding": PARAMETERS["parameters_non_embedding"]},
        "evaluation": {"accuracy": 0.6, "member_accuracy": [0.58, 0.57]}}))
    (ensemble / scorers.HELDOUT_SCORES).write_text(json.dumps({
        "members": [[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]], "gold": [0, 0, 0], "pairs": [[0, 1], [2, 1], [0, 2]],
        "pair_prompts": [0, 0, 1]}))
    samples = tmp_path / "bon" / "samples.parquet"
    best_of_n.write_samples(samples, frame, {"format": best_of_n.SAMPLES_FORMAT, "policy": "tiny",
                                             "samples_per_prompt": N, "seed": 0})
    for i, (spec, pairs) in enumerate(zip(singles, PAIRS)):
        add_run(path, "train-rm", [{"method": "rm", "policy": "tiny", "gold": "vader", "proxy": spec, "pairs": pairs,
                                    "label_noise": 0.0, "backbone": "minilm", "ensemble": 1, "accuracy": 0.5 + 0.05 * i,
                                    # rm-3's row is from before train-rm recorded the accuracy's interval
                                    **({"accuracy_lo": 0.45 + 0.05 * i, "accuracy_hi": 0.55 + 0.05 * i} if i < 3 else {}),
                                    **PARAMETERS}], "family", f"rm-{i}")
    add_run(path, "train-rm", [{"method": "rm", "policy": "tiny", "gold": "vader", "proxy": noisy, "pairs": 500,
                                "label_noise": 0.25, "backbone": "minilm", "ensemble": 1, "accuracy": 0.52,
                                **PARAMETERS}], "family", "rm-noisy")
    for spec in singles + [noisy] + ensemble_specs:
        rows = [{**row, "method": "bon", "policy": "tiny", "proxy": spec, "gold": "vader", "seed": 0,
                 "samples_path": str(samples), "samples_per_prompt": N, "prompt_count": P, "setting": f"bon-{spec}"}
                for row in best_of_n.bon_rows(frame, spec, "vader", NS, N, 200, 0)]
        add_run(path, "sample", rows, "family", "bon")
    return path, singles, ensemble


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    path, singles, ensemble = family_table(root)
    out = root / "report"
    result = invoke("--results", str(path), "--output", str(out), "--quiet", "--bootstrap", "1000")
    assert result.exit_code == 0, result.output
    return out, singles, ensemble


def test_the_scaling_view_recovers_a_slope_of_alpha_in_log_pairs_within_its_interval(family):
    out, singles, _ = family
    trends = pd.read_csv(out / "scaling_trends.csv")
    alpha = trends[(trends["coefficient"] == "alpha") & (trends["against"] == "log pairs")].iloc[0]
    truth = unit_alpha() * 0.1 / math.log(2)  # α_j = unit α · c_j, c_j = 0.35 + 0.1 · log2(pairs_j / 125)
    assert alpha["slope_lo"] < truth < alpha["slope_hi"], (truth, alpha.to_dict())
    assert alpha["slope"] == pytest.approx(truth, rel=0.35) and alpha["verdict"] == "rises"
    assert alpha["proxies"] == 4 and alpha["held_fixed"] == "backbone minilm, label noise 0"
    # The report states the slope per doubling of the pairs: slope · ln 2, with both intervals, from this row.
    doubling = {k: alpha[k] * math.log(2) for k in ("slope", "slope_lo", "slope_hi", "slope_t_lo", "slope_t_hi")}
    said = (f"slope {doubling['slope']:.3g} [{doubling['slope_lo']:.3g}, {doubling['slope_hi']:.3g}] per doubling of "
            f"pairs (prompt resamples; t interval across the 4 proxies {doubling['slope']:.3g} "
            f"[{doubling['slope_t_lo']:.3g}, {doubling['slope_t_hi']:.3g}])")
    assert said in " ".join(page(out).items), said
    scaled = pd.read_csv(out / "scaling.csv")
    bon = scaled[scaled["proxy"].isin(singles)].set_index("proxy").loc[singles]
    np.testing.assert_allclose(bon["pairs"], PAIRS)
    np.testing.assert_allclose(bon["accuracy"], [0.5, 0.55, 0.6, 0.65])
    # Each proxy's α interval holds its own truth, unit α · c_j.
    for (_, row), c in zip(bon.iterrows(), CORRELATION):
        assert row["alpha_lo"] < unit_alpha() * c < row["alpha_hi"], (row["name"], unit_alpha() * c)
    # Regressional Goodhart only (no proxy error in the tail): gold never falls, so no peak is resolved, and
    # each such row says how large a fall its own prompts could have resolved (peak_power).
    assert not scaled["peak_resolved"].any()
    assert (0 < scaled["power_fall_50"]).all() and (scaled["power_fall_50"] < scaled["power_fall_80"]).all()
    items = " ".join(page(out).items)
    r = scaled[scaled["proxy"] == singles[0]].iloc[0]
    assert (f"(power at these {P} prompts: a true fall of {r['power_fall_50']:.2g} from the best point to the last "
            f"would be resolved half the time, {r['power_fall_80']:.2g} four times in five)") in items


def test_the_ensemble_reads_its_checkpoint_and_is_compared_with_its_members_paired(family):
    out, _, ensemble = family
    scaled = pd.read_csv(out / "scaling.csv").set_index("name")
    assert scaled.loc["ens@min", "kind"] == "ensemble" and scaled.loc["ens@member-0", "kind"] == "member"
    assert scaled.loc["ens@mean", "pairs"] == 500
    assert scaled.loc["ens@mean", "parameters_non_embedding"] == PARAMETERS["parameters_non_embedding"]
    # Held-out accuracy of each reading, recomputed from the saved member scores: mean [0.75, 0.5, 1.0] orders
    # pairs (0,1) right, (2,1) right, (0,2) wrong: 2/3; min [0.5, 0, 0] right, right, tie: 2.5/3; member 0: 2/3.
    assert scaled.loc["ens@mean", "accuracy"] == pytest.approx(2 / 3)
    assert scaled.loc["ens@min", "accuracy"] == pytest.approx(2.5 / 3)
    assert scaled.loc["ens@member-0", "accuracy"] == pytest.approx(2 / 3)
    # Its interval resamples the held-out prompts: @min's pairs score [1, 0.5, 1] on prompts [0, 0, 1], so a
    # resample with counts (c0, c1) has accuracy (1.5 c0 + c1) / (2 c0 + c1) (2,000 resamples, seed 0).
    counts = np.random.default_rng(0).multinomial(2, [0.5, 0.5], size=2000).astype(float)
    lo, hi = np.quantile((1.5 * counts[:, 0] + counts[:, 1]) / (2 * counts[:, 0] + counts[:, 1]), [0.025, 0.975])
    assert (scaled.loc["ens@min", "accuracy_lo"], scaled.loc["ens@min", "accuracy_hi"]) == (pytest.approx(lo),
                                                                                            pytest.approx(hi))
    # A train-rm row's interval is carried over; an old row without one shows the point value alone.
    assert scaled.loc["rm-1", ["accuracy_lo", "accuracy_hi"]].tolist() == [pytest.approx(0.5), pytest.approx(0.6)]
    assert np.isnan(scaled.loc["rm-3", "accuracy_lo"])
    table = page(out).frame("scaling-0").drop_duplicates("proxy").set_index("proxy")["accuracy"]
    assert table["rm-1"] == "0.55 [0.5, 0.6]" and table["rm-3"] == "0.65"
    comparisons = pd.read_csv(out / "proxy_comparisons.csv")
    # Each reading against its members' average, and against the single proxy trained on the same 500 pairs.
    assert set(comparisons["comparison"]) == {"ens@mean vs the average of its 1 member(s)",
                                              "ens@min vs the average of its 1 member(s)",
                                              "ens@mean vs rm-2, one model on the same 500 pairs",
                                              "ens@min vs rm-2, one model on the same 500 pairs",
                                              "rm-noisy (25% of labels flipped) vs rm-2 (clean, same 500 pairs)"}
    at_kl = comparisons[(comparisons["curve_a"] == "ens@min") & (comparisons["quantity"] == "gold_at_kl")].iloc[0]
    assert at_kl["target"] == pytest.approx(float(kl_bon_analytic(np.array([64]))[0]))
    # The same draw, rescored: the difference at n = 64 is the paired one, recomputed from points.csv.
    points = pd.read_csv(out / "points.csv")
    last = points[points["n"] == 64].set_index("proxy")["gold_gain"]
    assert at_kl["diff"] == pytest.approx(last[f"rm:{ensemble}@min"] - last[f"rm:{ensemble}@member-0"])
    assert at_kl["diff_lo"] <= at_kl["diff"] <= at_kl["diff_hi"]
    # The noisy proxy against the clean one of its data size (not against itself or another noisy one): paired
    # at n = 64, and its weaker correlation with the gold (0.3 against 0.55) shows as a resolved loss.
    noise = comparisons[comparisons["comparison"].str.startswith("rm-noisy")]
    noise_at_kl = noise[noise["quantity"] == "gold_at_kl"].iloc[0]
    assert (noise_at_kl["curve_a"], noise_at_kl["curve_b"]) == ("rm-noisy", "rm-2")
    assert noise_at_kl["diff"] == pytest.approx(last[[s for s in last.index if s.endswith("rm-noisy")][0]]
                                                - last[[s for s in last.index if s.endswith("/rm-2")][0]])
    assert noise_at_kl["verdict"] == "behind" and noise_at_kl["diff_hi"] < 0
    # How many such intervals the view prints (no multiplicity correction): said beside the table.
    shown = comparisons[np.isfinite(comparisons["diff_lo"]) | np.isfinite(comparisons["diff_hi"])]
    assert len(shown) == 10
    assert "The proxy comparisons of policy tiny, gold vader prints 10 difference interval(s) at 95%" in \
        (out / "report.md").read_text()


def test_the_scaling_section_and_figures_are_in_the_report(family):
    out, _, _ = family
    assert {"scaling.png", "scaling_curves.png", "scaling.csv", "scaling_trends.csv",
            "proxy_comparisons.csv"} <= {p.name for p in out.iterdir()}
    html = page(out)
    assert "scaling-0" in html.tables and "scaling-trends-0" in html.tables and "proxy-comparisons-0" in html.tables
    assert any("BoN α against log pairs" in item and "per doubling of pairs" in item for item in html.items)
    text = (out / "report.md").read_text()
    assert "## Scaling across proxies (Gao et al. 2022 §3.4)" in text and "scaling_curves.png" in text


def test_scaling_on_refuses_what_it_cannot_show_before_writing(tmp_path):
    path, singles, _ = family_table(tmp_path)
    one = invoke("--results", str(path), "--output", str(tmp_path / "one"), "--proxy", singles[0], "--scaling", "on")
    assert one.exit_code == 2
    assert one.stderr.strip() == (
        f"bonrl: error: scaling: the selection holds one proxy per policy and gold ({singles[0]} (policy tiny, gold "
        "vader)); a scaling view needs at least two proxies of one policy and gold: train more with bonrl train-rm and "
        "rescore the same samples with bonrl sample --from-samples, or pass --scaling auto")
    assert not (tmp_path / "one").exists()
    # A proxy whose size nothing records: a python: scorer beside the family.
    # Its rescoring writes a samples file of its own (the family's rows are bound to theirs, which stays as it is).
    frame, metadata = best_of_n.read_samples(tmp_path / "bon" / "samples.parquet")
    frame["python:mine.py:score"] = frame[singles[0]]
    best_of_n.write_samples(tmp_path / "bon-mine" / "samples.parquet", frame, metadata)
    rows = [{**row, "method": "bon", "policy": "tiny", "proxy": "python:mine.py:score", "gold": "vader", "seed": 0,
             "samples_path": str(tmp_path / "bon-mine" / "samples.parquet"), "samples_per_prompt": N}
            for row in best_of_n.bon_rows(frame, "python:mine.py:score", "vader", NS, N, 200, 0)]
    add_run(path, "sample", rows, "family", "bon")
    unsized = invoke("--results", str(path), "--output", str(tmp_path / "unsized"), "--scaling", "on")
    assert unsized.exit_code == 2
    assert unsized.stderr.strip() == (
        "bonrl: error: scaling: the training pairs or parameter count of python:mine.py:score (not a bonrl reward "
        "model: size unknown) are unknown; train proxies with bonrl train-rm (its checkpoint and row record both), "
        "keep their directories, or pass --scaling auto to show them outside the trends")
    assert not (tmp_path / "unsized").exists()
    auto = invoke("--results", str(path), "--output", str(tmp_path / "auto"), "--quiet", "--bootstrap", "200")
    assert auto.exit_code == 0, auto.output
    notes = page(tmp_path / "auto").items
    assert any("the size of python:mine.py:score is unknown; shown, but in no trend" in item for item in notes)
    assert pd.read_csv(tmp_path / "auto" / "scaling_trends.csv")["proxies"].max() == 4
    bad = invoke("--results", str(path), "--output", str(tmp_path / "bad"), "--scaling", "maybe")
    assert bad.exit_code == 2 and bad.stderr.strip() == "bonrl: error: scaling: 'maybe'; use auto, on or off, e.g. " \
                                                        "--scaling on"


def fake_family(curve: str, form: str, betas: list[float], alphas: list[float]):
    """A family of single proxies at 125, 250, ... pairs whose `curve` has the given fitted α and β, with
    replicates scattered about them: just what `scaling.trends` reads."""
    from types import SimpleNamespace

    from bon_vs_rl.report import scaling

    rng = np.random.default_rng(0)
    proxies, panels = {}, []
    for i, (alpha, beta) in enumerate(zip(alphas, betas)):
        spec = f"rm:rm-{i}"
        proxies[spec] = scaling.Proxy(spec, f"rm-{i}", "single", pairs=125 * 2**i, label_noise=0.0, backbone="minilm",
                                      parameters=2e7, parameters_non_embedding=1e7)
        fits = {curve: {"form": form, "alpha": alpha, "beta": beta}}
        reps = {curve: {"alpha": alpha + 0.01 * rng.standard_normal(200), "beta": beta + 0.01 * rng.standard_normal(200)}}
        panels.append(SimpleNamespace(key=("tiny", spec, "vader"), analysis=SimpleNamespace(fits=fits, fit_replicates=reps)))
    family = scaling.Family(("tiny", "vader"), proxies, panels=panels, rows=[{"curve": curve}])
    return family


def test_no_trend_from_two_proxies_or_from_convex_rl_fits():
    """Regression (issue 25, item 4): the report stated PPO's α trend from two proxies with one seed each (no
    scatter about the line, so no t interval) whose RL fits had β < 0 (convex: α is not Gao et al.'s coefficient
    there). A trend now needs three proxies, and an RL curve a positive β for each of them; a note says why not."""
    from bon_vs_rl.report import scaling

    two = fake_family("PPO β 0", "rl", [0.1, 0.1], [0.2, 0.3])
    assert scaling.trends(two) == []
    assert any("from 2 proxies (rm-0, rm-1): a trend needs at least 3" in n for n in two.notes), two.notes
    convex = fake_family("PPO β 0", "rl", [0.1, -0.05, 0.1], [0.2, 0.3, 0.4])
    assert scaling.trends(convex) == []
    assert any("the RL fit of rm-1 has β ≤ 0" in n for n in convex.notes), convex.notes
    peaked = fake_family("PPO β 0", "rl", [0.1, 0.1, 0.1], [0.2, 0.3, 0.4])
    assert [(t["coefficient"], t["proxies"]) for t in scaling.trends(peaked)] == [("alpha", 3), ("beta", 3)]
    bon = fake_family("BoN", "bon", [-0.05, 0.1, 0.1], [0.2, 0.3, 0.4])  # the gate on β is for the RL form only
    assert len(scaling.trends(bon)) == 2 and not bon.notes
