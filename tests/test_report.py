"""`bonrl report` over synthetic studies whose truth is known, written the way the stages write them:
a results table whose rows link to per-sample records (a best-of-n samples file, RL eval-samples files).

The evaluation prompts carry fixed per-prompt offsets shared by every method, as real prompts do.
Best-of-n: gold = offset + GOLD_STD·z, proxy = z + x with x ~ N(0, S²) per sample, so the gold gain of
best-of-n at n is GOLD_STD·E[max of n]/sqrt(1 + S²) (Gao et al.'s regressional Goodhart). RL: each
step's per-prompt gold follows Gao et al.'s RL form GOLD_STD·d(α − β log d) plus noise, at a known KL.
The report must re-measure every curve from those records on the shared prompts, pair every gain
against one initial-policy measurement, and attach intervals that contain the truth.
"""

import base64
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.methods import best_of_n
from bon_vs_rl.record import results as R

runner = CliRunner()
P, N = 48, 64  # evaluation prompts, best-of-n samples per prompt
NS = [1, 2, 4, 8, 16, 32, 64]
S = 0.6  # proxy error scale (per sample)
RL = dict(alpha=0.8, beta=0.4)  # peak at d* = e^(α/β - 1) = e ≈ 2.7 (KL 7.4)
GOLD0, GOLD_STD = 0.2, 0.5  # the initial policy's gold mean and its per-sample standard deviation
OFFSETS = np.random.default_rng(123).normal(0, 0.7, P)  # each prompt's own gold level, shared by every method
PROMPTS = [f"Write about thing number {p}." for p in range(P)]


def expected_max(n: int) -> float:
    """E[max of n standard normals], by quadrature (independent of bonrl's code)."""
    return integrate.quad(lambda x: x * n * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1), -12, 12)[0]


def add_run(path: Path, command: str, rows: list[dict], experiment: str, output: str) -> str:
    with R.ResultsStore(path) as store, R.run_context(store, command, {"output": output}, 0, experiment) as run_id:
        store.add_rows(run_id, rows)
    return run_id


def bon_run(path: Path, root: Path, proxy: str, seed: int, experiment: str = "synth", output: str = "bon",
            ns=NS, prompts: int = P, betas=()) -> str:
    """A best-of-n run: its samples file, and its rows from best_of_n.bon_rows as `bonrl sample` writes them."""
    rng = np.random.default_rng(seed)
    z, x = rng.standard_normal((prompts, N)), rng.normal(0, S, (prompts, N))
    frame = pd.DataFrame({
        "prompt_id": np.repeat(np.arange(prompts), N), "prompt": np.repeat(PROMPTS[:prompts], N),
        "completion": "text", "tokens": 12, "logprob": -rng.uniform(1, 30, prompts * N), "ended": True,
        proxy: (z + x + 0.5 * OFFSETS[:prompts, None]).ravel(),
        "vader": (GOLD0 + OFFSETS[:prompts, None] + GOLD_STD * z).ravel(),
    })
    samples = root / output / f"{seed}-samples.parquet"
    best_of_n.write_samples(samples, frame, {"format": best_of_n.SAMPLES_FORMAT, "policy": "tiny",
                                             "samples_per_prompt": N, "seed": seed})
    rows = [{**row, "method": "bon", "policy": "tiny", "proxy": proxy, "gold": "vader", "seed": seed,
             "samples_path": str(samples), "samples_per_prompt": N, "prompt_count": prompts,
             "generated_tokens": 12 * prompts * N, "setting": f"bon-{output}-{seed}"}
            for row in best_of_n.bon_rows(frame, proxy, "vader", ns, N, 200, seed)]
    rows += [{**rows[0], "n": None, "method": "tilted", **row}  # `bonrl sample --beta`: the optimum, same samples
             for row in best_of_n.optimum_rows(frame, proxy, "vader", list(betas), N, 200, seed)] if betas else []
    return add_run(path, "sample", rows, experiment, output)


def rl_gain(d: float, alpha: float = RL["alpha"], beta: float = RL["beta"]) -> float:
    return GOLD_STD * d * (alpha - beta * math.log(d)) if d > 0 else 0.0


def rl_run(path: Path, root: Path, proxy: str, beta: float, seed: int, *, experiment: str = "synth",
           output: str = "ppo", steps=range(0, 55, 5), kl_per_step: float = 0.2, gain=rl_gain,
           seed_effect: float = 0.0, setting: str | None = None, noise: float = 0.3, method: str = "ppo",
           extra: dict | None = None) -> str:
    """An RL run: one eval-samples file per evaluation (4 samples per prompt), and its rows."""
    rng = np.random.default_rng(1000 + seed)
    shift = rng.normal(0, seed_effect) if seed_effect else 0.0  # this training seed's own luck
    rows = []
    for step in steps:
        kl = kl_per_step * step
        d = math.sqrt(kl)
        g = gain(d) + (shift * d if step else 0.0)
        ids = np.repeat(np.arange(P), 4)
        frame = pd.DataFrame({
            "step": step, "prompt_id": ids, "prompt": [PROMPTS[i] for i in ids], "completion": "text", "tokens": 12,
            "logprob": -5.0, "ended": True,
            "proxy": 0.1 + 0.9 * d + 0.5 * OFFSETS[ids] + rng.normal(0, noise, ids.size),
            "gold": GOLD0 + OFFSETS[ids] + g + rng.normal(0, GOLD_STD, ids.size),
            "kl": kl * rng.uniform(0.5, 1.5, ids.size) if step else 0.0, "kl_sampled": 0.0,
        })
        file = root / output / f"seed{seed}" / f"step-{step:06d}.parquet"
        file.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(file, index=False)
        rows.append({**(extra or {}), "method": method, "step": step, "beta": beta, "kl": frame["kl"].mean(), "policy": "tiny",
                     "proxy": proxy, "gold": "vader", "proxy_mean": frame["proxy"].mean(),
                     "gold_mean": frame["gold"].mean(), "samples_path": str(file), "seed": seed,
                     "setting": setting or f"{output}-{beta}", "length_mean": 12.0,
                     "generated_tokens": 1000 * (step + 1), "trained_tokens": 800 * step})
    return add_run(path, method, rows, experiment, output)


@pytest.fixture
def table(tmp_path):
    """Experiment 'synth': BoN on proxies A and B; PPO at β 0.05 (travels far, rises then falls) and β 0.2 on
    proxy A; plus an unrelated experiment."""
    path = tmp_path / "results.sqlite"
    runs = {
        "bon": bon_run(path, tmp_path, "rm:a", seed=1),
        "bon-b": bon_run(path, tmp_path, "rm:b", seed=2, output="bon-b", ns=[1, 2]),
        "ppo-0.05": rl_run(path, tmp_path, "rm:a", 0.05, seed=0, output="ppo-0"),
        "ppo-0.2": rl_run(path, tmp_path, "rm:a", 0.2, seed=0, output="ppo-1", kl_per_step=0.05),
        "other": bon_run(path, tmp_path, "rm:z", seed=3, experiment="other", output="other", ns=[1, 2, 4, 8]),
    }
    return path, runs


def invoke(*args: str):
    result = runner.invoke(cli.app, ["report", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


class Page(HTMLParser):
    """The tables (by id), list items and images of report.html; raises on unbalanced tags."""

    VOID = {"img", "meta", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.tables, self.items, self.images = [], {}, [], []
        self._table = self._row = self._cell = None
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id"), [])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "li":
            self.items.append("")
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th"):
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._table.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if "li" in self.stack:
            self.items[-1] += data

    def frame(self, table_id: str) -> pd.DataFrame:
        head, *body = self.tables[table_id]
        return pd.DataFrame(body, columns=head)


def page(out: Path) -> Page:
    return Page((out / "report.html").read_text(encoding="utf-8"))


def g4(x: float) -> str:
    return f"{x:.4g}"


def row_key(r: dict) -> tuple:
    """A results row as the report prints it: run, method, proxy, n (BoN) or step (RL), gold to 4 digits."""
    x = r["n"] if r["method"] == "bon" else r["step"]
    return str(r["run_id"]), r["method"], str(r["proxy"]), g4(float(x)), g4(float(r["gold_mean"]))


def report(path: Path, *args: str, out: str = "rep") -> Path:
    result = invoke("--results", str(path), "--output", out, "--quiet", "--bootstrap", "1000", *args)
    assert result.exit_code == 0, result.output
    return Path(out).resolve()


def test_report_holds_every_selected_row_and_embeds_its_figures(table, tmp_path):
    path, runs = table
    out = report(path, "--experiment", "synth")
    assert {"report.md", "report.html", "points.csv", "fits.csv", "comparison.csv", "reward_vs_kl.png",
            "proxy_vs_gold.png", "kl_vs_proxy.png", "length_vs_kl.png", "signals.png", "text_vs_kl.png",
            "signals.csv"} <= {p.name for p in out.iterdir()}
    html = page(out)
    assert len(html.images) == 6  # the four figures, the warning signs along each curve, the text statistics
    for src in html.images:  # self-contained: every figure an embedded PNG
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # The points are exactly the experiment's rows, their means re-measured from the records.
    stored = R.load(path)
    stored = stored[stored["experiment"] == "synth"]
    points = html.frame("points")
    assert sorted(map(row_key, points.to_dict("records"))) == sorted(map(row_key, stored.to_dict("records")))
    assert len(pd.read_csv(out / "points.csv")) == len(stored)
    md = (out / "report.md").read_text()
    assert "![" in md and "(reward_vs_kl.png)" in md and "ppo β=0.05" in md


def test_gains_are_paired_against_one_initial_measurement_and_cover_the_truth(table, tmp_path):
    path, _ = table
    points = pd.read_csv(report(path, "--experiment", "synth", "--proxy", "rm:a") / "points.csv")
    frame = best_of_n.read_samples(R.load(path, method="bon", proxy="rm:a")["samples_path"].iloc[0])[0]
    baseline = frame.groupby("prompt_id")["vader"].mean()  # all N samples of each prompt: the initial policy
    bon = points[points["method"] == "bon"].set_index("n")
    assert bon.loc[1, "gold_gain"] == pytest.approx(0, abs=1e-12) and bon.loc[1, "gold_gain_hi"] == pytest.approx(0)
    for n, p in bon.iterrows():  # regressional Goodhart: GOLD_STD·E[max n]/sqrt(1 + S²), inside the interval
        truth = GOLD_STD * expected_max(int(n)) / math.sqrt(1 + S**2)
        assert p["gold_gain_lo"] - 1e-12 <= truth <= p["gold_gain_hi"] + 1e-12, (n, truth, p["gold_gain_lo"])
    # The RL curve's gain is paired against the same baseline, prompt by prompt, not against its own step 0.
    ppo = points[(points["method"] == "ppo") & (points["beta"] == 0.05)].set_index("step")
    rows = R.load(path, method="ppo", beta=0.05).set_index("step")
    for step in (0, 25, 50):
        per_prompt = pd.read_parquet(rows.loc[step, "samples_path"]).groupby("prompt_id")["gold"].mean()
        assert ppo.loc[step, "gold_gain"] == pytest.approx((per_prompt - baseline).mean(), rel=1e-9, abs=1e-12)
        truth = rl_gain(math.sqrt(0.2 * step))
        assert ppo.loc[step, "gold_gain_lo"] <= truth <= ppo.loc[step, "gold_gain_hi"]
        # Paired: narrower than the interval of a difference of two independent means would be.
        unpaired = 2 * 1.96 * math.hypot(per_prompt.std(ddof=1), baseline.std(ddof=1)) / math.sqrt(P)
        assert ppo.loc[step, "gold_gain_hi"] - ppo.loc[step, "gold_gain_lo"] < 0.6 * unpaired
        # KL carries its own interval (the eval samples' KL varies prompt to prompt).
        if step:
            assert ppo.loc[step, "kl_lo"] < ppo.loc[step, "kl"] < ppo.loc[step, "kl_hi"]


def test_fits_recover_the_rl_form_with_intervals_that_cover_it(table, tmp_path):
    path, _ = table
    fitted = pd.read_csv(report(path, "--experiment", "synth") / "fits.csv")
    ppo = fitted[fitted["curve"] == "ppo β=0.05"].iloc[0]
    assert ppo["form"] == "rl"
    for name in ("alpha", "beta"):
        truth = GOLD_STD * RL[name]
        assert ppo[f"{name}_lo"] <= truth <= ppo[f"{name}_hi"], (name, ppo[f"{name}_lo"], ppo[f"{name}_hi"])
        assert ppo[name] == pytest.approx(truth, rel=0.2)
    peak_kl = math.exp(2 * (RL["alpha"] / RL["beta"] - 1))  # d* = exp(α/β − 1)
    assert ppo["peak_kl_lo"] <= peak_kl <= ppo["peak_kl_hi"]
    # The points lie on the RL form with noise: the fit misses them by about their own SE, and says so.
    assert 0.3 < ppo["rmse_over_se"] < 2 and 0.5 < ppo["r2"] <= 1
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Every fit is unweighted least squares" in md
    assert f"{ppo['rmse_over_se']:.2g}× their own SE" in md
    # A curve of two points is refused, and the report says so.
    assert not (fitted["proxy"] == "rm:b").any()
    assert "needs at least 3" in " ".join(page(tmp_path / "rep").items)


def test_matched_kl_comparison_interpolates_both_curves_and_calls_a_resolved_winner(table, tmp_path):
    path, _ = table
    out = report(path, "--experiment", "synth", "--proxy", "rm:a")
    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 3 * 4  # three pairs of curves, four quantities each
    row = comparison[(comparison["curve_a"] == "BoN") & (comparison["curve_b"] == "ppo β=0.2")
                     & (comparison["quantity"] == "gold_at_kl")].iloc[0]
    points = pd.read_csv(out / "points.csv")
    bon = points[points["method"] == "bon"].sort_values("n")
    ppo = points[(points["method"] == "ppo") & (points["beta"] == 0.2)].sort_values("step")
    k = row["target"]
    assert 0 < k <= min(bon["kl"].max(), ppo["kl"].max())
    # Each curve's gold gain at the matched KL, linear in d = sqrt(KL) between its own points.
    assert row["a"] == pytest.approx(np.interp(np.sqrt(k), np.sqrt(bon["kl"]), bon["gold_gain"]))
    assert row["b"] == pytest.approx(np.interp(np.sqrt(k), np.sqrt(ppo["kl"]), ppo["gold_gain"]))
    assert row["diff"] == pytest.approx(row["a"] - row["b"])
    # Best-of-n's truth is far above the RL form's at the KL both reach: resolved, and said with the interval.
    assert row["verdict"] == "ahead" and row["diff_lo"] > 0
    summary = " ".join(page(out).items)
    assert "BoN is ahead of ppo β=0.2" in summary and f"{row['diff']:.3g} [{row['diff_lo']:.3g}" in summary
    # Twelve comparisons of one panel, each a 95% interval with no multiplicity correction: the report counts
    # the ones it prints (a row with no common range prints none) and says what that many mean together.
    shown = comparison[np.isfinite(comparison["diff_lo"]) | np.isfinite(comparison["diff_hi"])]
    resolved = int((shown["verdict"] != "unresolved").sum())
    assert 0 < resolved < len(shown) <= 12
    assert (f"Panel policy tiny, proxy rm:a, gold vader prints {len(shown)} difference interval(s) at 95% "
            f"({resolved} resolved), each with no correction for multiplicity: were no difference real, about "
            f"{len(shown) / 20:.1f} of them would still exclude 0 by chance") in summary


def test_gold_at_a_matched_proxy_gain_is_the_regressional_share_for_best_of_n(table, tmp_path):
    """Best-of-n by a proxy z + x (x ~ N(0, S²)) against gold GOLD_STD·z: at every n the gold gain is
    GOLD_STD/(1 + S²) times the proxy gain (regressional Goodhart), so interpolating gold at a matched proxy
    gain must land on that line, and its interval must cover it."""
    path, _ = table
    out = report(path, "--experiment", "synth", "--proxy", "rm:a", "--proxy-target", "0.8")
    rows = pd.read_csv(out / "comparison.csv").query("quantity == 'gold_at_proxy' and curve_a == 'BoN'")
    assert len(rows) == 2 and (rows["target"] == 0.8).all()
    points = pd.read_csv(out / "points.csv")
    bon = points[points["method"] == "bon"].sort_values("n")
    for _, row in rows.iterrows():
        assert row["a"] == pytest.approx(np.interp(0.8, bon["proxy_gain"], bon["gold_gain"]))
        assert row["a_lo"] <= GOLD_STD * 0.8 / (1 + S**2) <= row["a_hi"]
    assert "Gold gain at proxy gain 0.8" in " ".join(page(out).items)


def test_an_unresolved_difference_says_so_and_how_many_prompts_would_resolve_it(tmp_path):
    """Two RL settings with the same truth: their difference must not be called, and the report says how many
    prompts would resolve a difference of the size seen."""
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    rl_run(path, tmp_path, "rm:a", 0.05, seed=0, output="ppo-0")
    rl_run(path, tmp_path, "rm:a", 0.06, seed=1, output="ppo-1")
    out = report(path, "--methods", "ppo")
    row = pd.read_csv(out / "comparison.csv").query("quantity == 'gold_at_kl'").iloc[0]
    assert row["verdict"] == "unresolved" and row["diff_lo"] < 0 < row["diff_hi"]
    needed = math.ceil(P * ((row["diff_hi"] - row["diff_lo"]) / 2 / abs(row["diff"])) ** 2)
    assert row["prompts_needed"] == pytest.approx(needed, abs=1)
    assert "not resolved at this sample size" in " ".join(page(out).items)


def test_kl_to_reach_a_gold_level_takes_the_first_crossing_of_a_rising_then_falling_curve(table, tmp_path):
    path, _ = table
    level = 0.3  # the β 0.05 curve rises through 0.3 near KL 1.4 and falls back through it far later
    out = report(path, "--experiment", "synth", "--methods", "ppo", "--gold-level", str(level))
    points = pd.read_csv(out / "points.csv")
    ppo = points[points["beta"] == 0.05].sort_values("step").reset_index(drop=True)
    first = int(np.argmax(ppo["gold_gain"].to_numpy() >= level))
    assert first > 0 and ppo["gold_gain"].iloc[-1] < ppo["gold_gain"].max()  # rises, peaks, falls
    lo, hi = ppo.iloc[first - 1], ppo.iloc[first]
    d_lo, d_hi = math.sqrt(lo["kl"]), math.sqrt(hi["kl"])  # KL is interpolated on d = sqrt(KL)
    expected = (d_lo + (level - lo["gold_gain"]) / (hi["gold_gain"] - lo["gold_gain"]) * (d_hi - d_lo)) ** 2
    row = pd.read_csv(out / "comparison.csv").query("quantity == 'kl_to_gold'").iloc[0]
    assert row["target"] == level
    assert row["a" if row["curve_a"] == "ppo β=0.05" else "b"] == pytest.approx(expected)


def test_replicate_seeds_pool_into_one_curve_whose_interval_holds_the_seed_spread(tmp_path):
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    ids = [rl_run(path, tmp_path, "rm:a", 0.05, seed=s, output=f"ppo-seed{s}", setting="same", seed_effect=0.3)
           for s in (0, 1, 2)]
    out = report(path)
    points = pd.read_csv(out / "points.csv")
    pooled = points[points["method"] == "ppo"]
    assert set(pooled["curve"]) == {"ppo β=0.05 (3 seeds)"} and len(pooled) == 11
    single = pd.read_csv(report(path, "--run-id", ids[0], out="one") / "points.csv")
    last, last_single = pooled.iloc[-1], single[single["method"] == "ppo"].iloc[-1]
    assert (last["gold_gain_hi"] - last["gold_gain_lo"]) > 1.5 * (last_single["gold_gain_hi"] - last_single["gold_gain_lo"])
    # The summary names each seed's own final gold gain: recomputed here from its last evaluation's samples,
    # paired against best-of-n's draw (every sample of a prompt: the initial policy) on the same prompts.
    frame = best_of_n.read_samples(R.load(path, method="bon")["samples_path"].iloc[0])[0]
    baseline = frame.groupby("prompt_id")["vader"].mean()
    rows = R.load(path, method="ppo")
    finals = []
    for run_id in ids:
        last_file = rows[rows["run_id"] == run_id].sort_values("step")["samples_path"].iloc[-1]
        finals.append(float((pd.read_parquet(last_file).groupby("prompt_id")["gold"].mean() - baseline).mean()))
    assert len({round(v, 3) for v in finals}) == 3  # three seeds, three different ends
    said = re.search(r"Its 3 seeds end at gold gains ([-\d., ]+) \(", " ".join(page(out).items))
    assert said and sorted(said.group(1).split(", ")) == sorted(f"{v:.3g}" for v in finals), (said, finals)


def test_a_distilled_policy_is_compared_with_best_of_n_at_its_n(tmp_path):
    """bonrl distill's rows carry n: the report puts its final policy beside best-of-n at that n, paired, with
    the share of best-of-n's gold gain it keeps. Here the distilled policy ends at half of best-of-4's gain."""
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    bon4 = GOLD_STD * expected_max(4) / math.sqrt(1 + S**2)
    rl_run(path, tmp_path, "rm:a", math.nan, seed=0, output="distill", method="distill", steps=range(0, 25, 5),
           kl_per_step=0.02, gain=lambda d: 0.5 * bon4 * min(d / math.sqrt(0.4), 1.0), noise=0.1,
           extra={"n": 4, "objective": "sft"})
    out = report(path)
    comparison = pd.read_csv(out / "comparison.csv")
    gold = comparison[comparison["quantity"] == "gold_at_point"].iloc[0]
    kl = comparison[comparison["quantity"] == "kl_at_point"].iloc[0]
    assert gold["curve_a"] == "distill sft n=4" and gold["curve_b"] == "BoN" and gold["target"] == 4
    points = pd.read_csv(out / "points.csv")
    bon = points[points["method"] == "bon"].set_index("n")
    distill = points[points["method"] == "distill"].sort_values("step")
    assert gold["b"] == pytest.approx(bon.loc[4, "gold_gain"]) and gold["a"] == pytest.approx(distill["gold_gain"].iloc[-1])
    assert kl["b"] == pytest.approx(bon.loc[4, "kl"]) and kl["a"] == pytest.approx(distill["kl"].iloc[-1])
    assert gold["share"] == pytest.approx(gold["a"] / gold["b"])
    assert gold["share_lo"] <= 0.5 <= gold["share_hi"] and gold["verdict"] == "behind"  # BoN keeps more gold
    assert (f"The distilled policy keeps {gold['share']:.3g} [{gold['share_lo']:.3g}, {gold['share_hi']:.3g}] of "
            "best-of-n's gold gain") in " ".join(page(out).items)


def test_the_optimum_is_drawn_beside_best_of_n_and_its_low_ess_points_are_not_measurements(tmp_path):
    """`bonrl sample --beta`: the optimum's curve shares best-of-n's prompts and baseline, gets compared with
    best-of-n and RL, and its points resting on fewer than tilted.LOW_ESS effective samples (small β) keep
    their row but enter no fit and no comparison, and the summary says so."""
    path = tmp_path / "results.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1, betas=[0.25, 3.0, 5.0, 10.0])  # ESS ≈ 64·exp(−1.4/β²): 0.25 is low
    rl_run(path, tmp_path, "rm:a", 0.05, seed=0, output="ppo-0")
    out = report(path)
    points = pd.read_csv(out / "points.csv")
    optimum = points[points["method"] == "tilted"].sort_values("beta")
    assert len(optimum) == 4 and optimum["low_ess"].tolist() == [True, False, False, False]
    assert (optimum["gold_gain"] > 0).all() and optimum["gold_gain_lo"].notna().all()  # paired, with intervals
    fits = pd.read_csv(out / "fits.csv").set_index("curve")
    assert fits.loc["optimum (tilted)", "points"] == 3  # the low-ESS point is not fitted
    comparisons = pd.read_csv(out / "comparison.csv")
    pairs = {frozenset((a, b)) for a, b in zip(comparisons["curve_a"], comparisons["curve_b"])}
    assert frozenset(("BoN", "optimum (tilted)")) in pairs
    assert any("optimum (tilted)" in pair and any(label.startswith("ppo") for label in pair) for pair in pairs)
    # The default matched KL is one both curves reach on trusted points: below the low-ESS point's KL.
    trusted_max = optimum.loc[~optimum["low_ess"], "kl"].max()
    at_kl = comparisons[(comparisons["quantity"] == "gold_at_kl")
                        & comparisons["curve_a"].eq("BoN") & comparisons["curve_b"].eq("optimum (tilted)")]
    assert len(at_kl) == 1 and at_kl["target"].iloc[0] <= trusted_max + 1e-12
    text = (out / "report.md").read_text()
    assert "1 further point(s) rest on too few effective samples" in text


def test_two_runs_of_one_kind_get_labels_that_tell_them_apart(tmp_path):
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1, output="bon-first")
    bon_run(path, tmp_path, "rm:a", seed=2, output="bon-second")
    points = pd.read_csv(report(path) / "points.csv")
    assert set(points["curve"]) == {"BoN [bon-first]", "BoN [bon-second]"}


def test_unit_scale_divides_by_the_initial_policys_gold_std(table, tmp_path):
    path, _ = table
    relative = pd.read_csv(report(path, "--experiment", "synth", out="rel") / "points.csv")
    unit = pd.read_csv(report(path, "--experiment", "synth", "--scale", "unit", out="unit") / "points.csv")
    frame = best_of_n.read_samples(R.load(path, method="bon", proxy="rm:a")["samples_path"].iloc[0])[0]
    std = frame["vader"].std(ddof=1)
    a = relative[relative["proxy"] == "rm:a"].reset_index(drop=True)
    b = unit[unit["proxy"] == "rm:a"].reset_index(drop=True)
    assert np.allclose(b["scaled"], a["gold_gain"] / std) and np.allclose(b["scaled_hi"], a["gold_gain_hi"] / std)
    assert np.allclose(b["gold_gain"], a["gold_gain"])  # raw gains stay raw beside the scaled ones
    fit_rel = pd.read_csv(tmp_path / "rel" / "fits.csv").set_index("curve")
    fit_unit = pd.read_csv(tmp_path / "unit" / "fits.csv").set_index("curve")
    for name in ("alpha", "alpha_lo", "beta_hi"):  # α and β scale with the gold; the peak's KL does not
        assert fit_unit.loc["ppo β=0.05", name] == pytest.approx(fit_rel.loc["ppo β=0.05", name] / std, rel=1e-6)
    assert fit_unit.loc["ppo β=0.05", "peak_kl_lo"] == pytest.approx(fit_rel.loc["ppo β=0.05", "peak_kl_lo"], rel=1e-6)
    assert "in units of its gold standard deviation" in (tmp_path / "unit" / "report.md").read_text()


def test_a_row_whose_records_are_gone_is_left_out_and_its_curve_keeps_its_intervals(table, tmp_path):
    """A row is a claim about its samples file: with the file gone the row is left out (one note naming the
    run), and the rest of its curve is measured as before, from files that are still its own."""
    path, runs = table
    gone = R.load(path, method="ppo", beta=0.2).sort_values("step")["samples_path"].iloc[3]
    Path(gone).unlink()
    out = report(path, "--experiment", "synth", "--proxy", "rm:a")
    (note,) = [item for item in page(out).items if runs["ppo-0.2"] in item]
    assert "1 row(s) left out, their samples file is gone" in note and gone in note
    points = pd.read_csv(out / "points.csv")
    ppo = points[points["beta"] == 0.2].sort_values("step")
    assert ppo["step"].tolist() == [s for s in range(0, 55, 5) if s != 15]
    assert ppo["gold_gain_lo"].notna().all()


def test_a_curve_without_per_sample_records_is_reported_without_intervals(table, tmp_path):
    """Rows that link to no samples file (an older run that saved none) still draw their curve, from the rows'
    own means against its own step 0, without intervals, and the report says so."""
    path, runs = table
    with R.ResultsStore(path) as store:
        store.conn.execute("UPDATE results SET samples_path = NULL WHERE run_id = ?", (runs["ppo-0.2"],))
    out = report(path, "--experiment", "synth", "--proxy", "rm:a")
    notes = " ".join(page(out).items)
    assert "ppo β=0.2 on rm:a: no intervals, it saved no per-sample records" in notes
    points = pd.read_csv(out / "points.csv")
    ppo = points[points["beta"] == 0.2].sort_values("step")
    rows = R.load(path, method="ppo", beta=0.2).sort_values("step")
    assert np.allclose(ppo["gold_gain"], rows["gold_mean"] - rows["gold_mean"].iloc[0])  # its own step 0
    assert ppo["gold_gain_lo"].isna().all()


def test_fit_on_small_kl_predicts_the_rest(table, tmp_path):
    path, _ = table
    out = report(path, "--experiment", "synth", "--proxy", "rm:a", "--fit-kl-max", "4")
    check = pd.read_csv(out / "fit_check.csv")
    ppo = check[check["curve"] == "ppo β=0.05"].iloc[0]
    assert ppo["kl_max"] == 4 and ppo["held_out_points"] > 0 and ppo["fit_points"] >= 3
    assert ppo["rmse_held_out"] < 0.1  # data drawn from the form itself: the held-out points are predicted
    assert "fit_check" in page(out).tables


def test_a_second_report_replaces_the_first(table, tmp_path):
    path, _ = table
    report(path, "--experiment", "synth")
    (tmp_path / "rep" / "stale.txt").write_text("from before")
    report(path, "--experiment", "other")
    assert not (tmp_path / "rep" / "stale.txt").exists()
    assert set(pd.read_csv(tmp_path / "rep" / "points.csv")["proxy"]) == {"rm:z"}


@pytest.mark.parametrize("case", ["missing-table", "empty-table", "experiment", "policy", "run-id", "method", "only-rm",
                                  "bootstrap", "kl-target"])
def test_empty_or_mismatched_selection_exits_2_and_writes_nothing(case, table, tmp_path):
    path, runs = table
    args = {
        "missing-table": ["--results", str(tmp_path / "nope.sqlite")],
        "empty-table": ["--results", str(tmp_path / "empty.sqlite")],
        "experiment": ["--results", str(path), "--experiment", "no-such-experiment"],
        "policy": ["--results", str(path), "--experiment", "synth", "--policy", "smollm2-135m"],
        "run-id": ["--results", str(path), "--run-id", "not-a-run"],
        "method": ["--results", str(path), "--experiment", "synth", "--methods", "grpo"],
        "only-rm": ["--results", str(tmp_path / "rm-only.sqlite")],
        "bootstrap": ["--results", str(path), "--bootstrap", "10"],
        "kl-target": ["--results", str(path), "--kl-target", "-1"],
    }[case]
    expected = {"missing-table": "does not exist", "empty-table": "no rows", "experiment": "no rows match",
                "policy": "no rows match", "run-id": "not-a-run", "method": "no grpo rows",
                "only-rm": "no best-of-n or RL", "bootstrap": "bootstrap: 10 prompt resamples are too few",
                "kl-target": "kl_target: -1.0 must be a positive number"}[case]
    if case == "empty-table":
        with R.ResultsStore(tmp_path / "empty.sqlite") as store:
            store.start_run("sample", {}, 0, "synth")
    if case == "only-rm":
        add_run(tmp_path / "rm-only.sqlite", "train-rm", [{"method": "rm", "proxy": "rm:a", "accuracy": 0.7}], "x", "rm")
    result = invoke(*args, "--output", "rep")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bonrl: error:") and expected in lines[0], lines
    assert not (tmp_path / "rep").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]


def peaked_run(path: Path, root: Path, name: str, peak: int | None, kl_per_step: float) -> str:
    """An RL run (its own proxy, so its own panel) whose gold rises to a resolved peak at step `peak` and falls,
    and whose completions turn repetitive exactly there; `peak` None: gold keeps rising, text unchanged."""
    rng = np.random.default_rng(list(name.encode()))  # a seed from the name, the same in every process
    rows = []
    for step in range(0, 35, 5):
        top = peak if peak is not None else 100
        g = 2.0 * step / top if step <= top else 2.0 - 0.2 * (step - top)
        ids = np.repeat(np.arange(P), 4)
        text = "warm warm warm warm" if peak is not None and step >= peak else "the food was warm and the staff kind"
        frame = pd.DataFrame({
            "step": step, "prompt_id": ids, "prompt": [PROMPTS[i] for i in ids], "completion": text, "tokens": 8,
            "logprob": -5.0, "ref_logprob": -16.0 - step, "ended": True,
            "proxy": 0.1 * step + 0.5 * OFFSETS[ids] + rng.normal(0, 0.3, ids.size),
            "gold": GOLD0 + OFFSETS[ids] + g + rng.normal(0, GOLD_STD, ids.size),
            "kl": kl_per_step * step * rng.uniform(0.5, 1.5, ids.size), "kl_sampled": 0.0,
        })
        file = root / name / f"step-{step:06d}.parquet"
        file.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(file, index=False)
        rows.append({"method": "ppo", "step": step, "beta": 0.0, "kl": frame["kl"].mean(), "policy": "tiny",
                     "proxy": f"rm:{name}", "gold": "vader", "proxy_mean": frame["proxy"].mean(),
                     "gold_mean": frame["gold"].mean(), "samples_path": str(file), "seed": 0, "setting": name})
    return add_run(path, "ppo", rows, "onset", name)


def test_warning_signs_are_scored_against_the_measured_gold_peak_leaving_one_run_out(tmp_path):
    path = tmp_path / "results.sqlite"
    for name, peak, rate in (("r1", 15, 0.2), ("r2", 20, 0.3), ("r3", 15, 0.5), ("r4", 10, 0.4), ("calm", None, 0.2)):
        peaked_run(path, tmp_path, name, peak, rate)
    out = report(path, "--experiment", "onset")
    table = pd.read_csv(out / "onset.csv").set_index("signal")
    drift = table.loc["distinct_2_drift"]
    # The text turns repetitive exactly at each gold peak: a threshold chosen on three runs warns there on the fourth.
    assert (drift["runs_with_peak"], drift["scored"], drift["warned"]) == (4, 4, 4)
    assert drift["lead_nats"] == 0.0 and drift["lead_steps"] == 0.0 and drift["abs_error_nats"] == 0.0
    assert (drift["false_alarms"], drift["runs_without_peak"]) == (0, 1)  # the calm run's text never changes
    runs = pd.read_csv(out / "onset_runs.csv")
    held = runs[(runs["signal"] == "distinct_2_drift") & (runs["role"] == "held out")]
    assert held["fire_kl"].tolist() == held["peak_kl"].tolist()
    points = pd.read_csv(out / "signals.csv")
    assert len(points) == 5 * 7 and points["gold_peak"].sum() == 4
    peaks = points[points["gold_peak"]].set_index("curve")["n_or_step"].to_dict()
    assert sorted(peaks.values()) == [10, 15, 15, 20]
    md = (out / "report.md").read_text()
    assert "When does hacking begin?" in md and "4 of 5 curves have a resolved gold peak" in md
    assert "(onset.png)" in md and "(signals.png)" in md
