"""`bonrl report` over synthetic results tables written with ResultsStore, as the stages write them.

Gold is generated from the Gao et al. (2022) forms with known α, β plus noise, so the fits the report
draws must recover them; the HTML must parse and hold every selected row; a curve with two points
must be refused with a note; an empty or mismatched selection must stop with exit code 2.
"""

import base64
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bon_vs_rl import cli, fits
from bon_vs_rl import results as R

runner = CliRunner()
BON = dict(alpha=1.0, beta=0.3)  # peak at d* ≈ 1.67, inside d ∈ [0, 2.4]
RL = dict(alpha=0.8, beta=0.4)  # peak at d* = e ≈ 2.7, inside d ∈ [0, 3.2]
GOLD0, GOLD_STD = 0.2, 0.5  # the initial policy's gold mean and standard deviation
NOISE = 0.01


def bon_rows(proxy: str, ns, rng, gold_std: bool = True) -> list[dict]:
    rows = []
    for n in ns:
        kl = math.log(n) - (n - 1) / n  # the analytic best-of-n KL
        d = math.sqrt(kl)
        rows.append({
            "method": "bon", "n": n, "kl": kl, "proxy": proxy, "policy": "tiny", "gold": "vader",
            "proxy_mean": 0.1 + 0.8 * d, "proxy_se": 0.02,
            "gold_mean": GOLD0 + GOLD_STD * d * (BON["alpha"] - BON["beta"] * d) + rng.normal(0, NOISE),
            "gold_se": NOISE, "length_mean": 12 + d, "sample_count": 64 * n, "prompt_count": 64,
            "generated_tokens": 12 * 64 * 256, "samples_per_prompt": 256, "trained_tokens": 0, "seed": 0,
            **({"gold_std": GOLD_STD} if gold_std else {}),
        })
    return rows


def rl_rows(proxy: str, beta: float, steps, rng, gold_std: bool = True) -> list[dict]:
    rows = []
    for step in steps:
        kl = (0.1 / beta) * step / 10  # smaller β drifts further per step
        d = math.sqrt(kl)
        rl = d * (RL["alpha"] - RL["beta"] * math.log(d)) if d > 0 else 0.0
        rows.append({
            "method": "ppo", "step": step, "kl": kl, "kl_se": 0.01, "beta": beta, "proxy": proxy,
            "policy": "tiny", "gold": "vader", "proxy_mean": 0.1 + 0.9 * d, "proxy_se": 0.02,
            "gold_mean": GOLD0 + GOLD_STD * rl + rng.normal(0, NOISE), "gold_se": NOISE,
            "length_mean": 12 + 2 * d, "sample_count": 64, "prompt_count": 32,
            "generated_tokens": 1000 * (step + 1), "trained_tokens": 800 * step, "seed": 0,
            **({"gold_std": GOLD_STD} if gold_std and step == 0 else {}),
        })
    return rows


def add_run(path: Path, command: str, rows: list[dict], experiment: str) -> str:
    with R.ResultsStore(path) as store, R.run_context(store, command, {"synthetic": True}, 0, experiment) as run_id:
        store.add_rows(run_id, rows)
    return run_id


@pytest.fixture
def table(tmp_path):
    """Experiment 'synth': BoN on two proxies and PPO at two β on proxy A, plus an unrelated experiment."""
    rng = np.random.default_rng(0)
    path = tmp_path / "results.sqlite"
    ns = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    runs = {
        # Like the sample stage, BoN records no gold std; PPO's step-0 evaluation does.
        "bon": add_run(path, "sample", bon_rows("rm:a", ns, rng, gold_std=False)
                       + bon_rows("rm:b", ns[:2], rng, gold_std=False), "synth"),
        "ppo-0.05": add_run(path, "ppo", rl_rows("rm:a", 0.05, range(0, 55, 5), rng), "synth"),
        "ppo-0.2": add_run(path, "ppo", rl_rows("rm:a", 0.2, range(0, 55, 5), rng), "synth"),
        "other": add_run(path, "sample", bon_rows("rm:z", ns[:4], rng), "other"),
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


def test_report_holds_every_selected_row_and_embeds_its_figures(table, tmp_path):
    path, runs = table
    result = invoke("--results", str(path), "--experiment", "synth", "--output", "rep", "--quiet")
    assert result.exit_code == 0, result.output
    out = tmp_path / "rep"
    assert result.stdout.strip() == "rep"
    assert {"report.md", "report.html", "points.csv", "fits.csv", "comparison.csv", "reward_vs_kl.png",
            "proxy_vs_gold.png", "kl_vs_proxy.png", "length_vs_kl.png"} <= {p.name for p in out.iterdir()}

    html = page(out)
    # Self-contained: every figure is an embedded PNG, none is a link to a file.
    assert len(html.images) == 4
    for src in html.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"

    # The points table holds exactly the experiment's rows (not the other experiment's).
    stored = R.load(path)
    stored = stored[stored["experiment"] == "synth"]
    points = html.frame("points")
    assert sorted(map(row_key, points.to_dict("records"))) == sorted(map(row_key, stored.to_dict("records")))
    assert set(points["run_id"]) == {runs["bon"], runs["ppo-0.05"], runs["ppo-0.2"]}
    csv = pd.read_csv(out / "points.csv")
    assert len(csv) == len(stored)
    # Gold relative to the initial policy: zero at n = 1 and at step 0.
    initial = csv[(csv["n"] == 1) | (csv["step"] == 0)]
    assert np.allclose(initial["gold_rel"], 0)

    # The same content in Markdown, pointing at the PNGs beside it.
    md = (out / "report.md").read_text()
    assert "![" in md and "(reward_vs_kl.png)" in md and runs["ppo-0.2"] in md


def test_report_fits_recover_the_forms_and_match_fits_module(table, tmp_path):
    path, runs = table
    result = invoke("--results", str(path), "--experiment", "synth", "--output", "rep", "--quiet")
    assert result.exit_code == 0, result.output
    fitted = pd.read_csv(tmp_path / "rep" / "fits.csv")
    # gold relative to the initial policy is GOLD_STD · R(d): α and β come back times GOLD_STD.
    bon = fitted[(fitted["curve"] == "BoN") & (fitted["proxy"] == "rm:a")].iloc[0]
    assert bon["form"] == "bon"
    assert bon["alpha"] == pytest.approx(GOLD_STD * BON["alpha"], rel=0.1)
    assert bon["beta"] == pytest.approx(GOLD_STD * BON["beta"], rel=0.15)
    ppo = fitted[fitted["curve"] == "ppo β=0.05"].iloc[0]
    assert ppo["form"] == "rl"
    assert ppo["alpha"] == pytest.approx(GOLD_STD * RL["alpha"], rel=0.1)
    assert ppo["beta"] == pytest.approx(GOLD_STD * RL["beta"], rel=0.15)
    # It is fits.fit_gold_vs_kl on the relative gold, weighted by the standard errors, not a rewrite.
    rows = R.load(path)
    rows = rows[(rows["run_id"] == runs["ppo-0.05"])].sort_values("step")
    expected = fits.fit_gold_vs_kl(rows["kl"], rows["gold_mean"] - rows["gold_mean"].iloc[0], "rl",
                                   gold_se=rows["gold_se"])
    assert ppo["alpha"] == pytest.approx(expected.alpha, rel=1e-9)
    assert ppo["peak_kl"] == pytest.approx(expected.peak_kl, rel=1e-9)

    # The BoN curve on proxy B has two points: refused, and said so in the report.
    assert not (fitted["proxy"] == "rm:b").any()
    notes = " ".join(page(tmp_path / "rep").items)
    assert "rm:b" in notes and "needs at least 3" in notes


def test_comparison_interpolates_at_matched_kl_and_summary_quotes_it(table, tmp_path):
    path, _ = table
    result = invoke("--results", str(path), "--experiment", "synth", "--proxy", "rm:a", "--output", "rep",
                    "--quiet", "--methods", "bon,ppo")
    assert result.exit_code == 0, result.output
    comparison = pd.read_csv(tmp_path / "rep" / "comparison.csv")
    assert len(comparison) == 3  # BoN, ppo β=0.05, ppo β=0.2: three pairs
    row = comparison[(comparison["a"] == "BoN") & (comparison["b"] == "ppo β=0.2")].iloc[0]
    points = pd.read_csv(tmp_path / "rep" / "points.csv")
    bon = points[points["method"] == "bon"].sort_values("n")
    ppo = points[(points["method"] == "ppo") & (points["beta"] == 0.2)].sort_values("step")
    # The largest KL both reach, and each curve's gold there by linear interpolation.
    assert row["matched_kl"] == pytest.approx(min(bon["kl"].max(), ppo["kl"].max()))
    assert row["gold_a_at_kl"] == pytest.approx(np.interp(row["matched_kl"], bon["kl"], bon["gold_rel"]))
    assert row["gold_b_at_kl"] == pytest.approx(np.interp(row["matched_kl"], ppo["kl"], ppo["gold_rel"]))
    # The KL each needs to reach the gold level: on each curve, gold there equals the level.
    level = row["gold_level"]
    assert level > 0
    assert np.interp(row["kl_a_to_level"], bon["kl"], bon["gold_rel"]) == pytest.approx(level)
    assert row["peak_gold_b"] == pytest.approx(ppo["gold_rel"].max())
    assert row["trained_tokens_b"] == ppo.loc[ppo["gold_rel"].idxmax(), "trained_tokens"]
    # Best-of-n at n costs n of the N = 256 samples per prompt the stage drew (12 tokens, 64 prompts).
    assert row["generated_tokens_a"] == pytest.approx(12 * 64 * bon.loc[bon["gold_rel"].idxmax(), "n"])

    summary = " ".join(page(tmp_path / "rep").items)
    assert f"At KL {row['matched_kl']:.3g} nats" in summary
    assert f"BoN's gold is {row['gold_a_at_kl']:.3g}" in summary


def test_unit_scale_divides_by_the_initial_gold_std_or_says_it_cannot(table, tmp_path):
    path, _ = table
    result = invoke("--results", str(path), "--experiment", "synth", "--output", "unit", "--scale", "unit",
                    "--quiet")
    assert result.exit_code == 0, result.output
    points = pd.read_csv(tmp_path / "unit" / "points.csv")
    fitted = pd.read_csv(tmp_path / "unit" / "fits.csv")
    bon = fitted[(fitted["curve"] == "BoN") & (fitted["proxy"] == "rm:a")].iloc[0]
    assert bon["alpha"] == pytest.approx(BON["alpha"], rel=0.1)  # unit variance: the generating α itself
    ppo = fitted[fitted["curve"] == "ppo β=0.05"].iloc[0]
    assert ppo["alpha"] == pytest.approx(RL["alpha"], rel=0.1)
    # BoN borrowed the std PPO measured on the same initial policy, and the report says so.
    assert "BoN on rm:a: gold std 0.5 taken from another curve's initial policy" in " ".join(page(tmp_path / "unit").items)
    assert "in units of its gold standard deviation" in (tmp_path / "unit" / "report.md").read_text()
    assert np.isfinite(points["gold_rel"]).all()

    rng = np.random.default_rng(1)
    bare = tmp_path / "bare.sqlite"
    add_run(bare, "sample", bon_rows("rm:a", [1, 2, 4, 8], rng, gold_std=False), "bare")
    result = invoke("--results", str(bare), "--output", "bare", "--scale", "unit", "--quiet")
    assert result.exit_code == 0, result.output
    notes = " ".join(page(tmp_path / "bare").items)
    assert "unit-variance scale unavailable" in notes


def test_fit_on_small_kl_predicts_the_rest(table, tmp_path):
    path, _ = table
    result = invoke("--results", str(path), "--experiment", "synth", "--proxy", "rm:a", "--output", "rep",
                    "--quiet", "--fit-kl-max", "2")
    assert result.exit_code == 0, result.output
    check = pd.read_csv(tmp_path / "rep" / "fit_check.csv")
    bon = check[check["curve"] == "BoN"].iloc[0]
    assert bon["kl_max"] == 2 and bon["held_out_points"] > 0 and bon["fit_points"] >= 3
    # Noise 0.01 on data drawn from the form itself: the held-out points are predicted closely.
    assert bon["rmse_held_out"] < 0.1
    assert "fit_check" in page(tmp_path / "rep").tables


def test_a_second_report_replaces_the_first(table, tmp_path):
    path, _ = table
    assert invoke("--results", str(path), "--experiment", "synth", "--output", "rep", "--quiet").exit_code == 0
    (tmp_path / "rep" / "stale.txt").write_text("from before")
    assert invoke("--results", str(path), "--experiment", "other", "--output", "rep", "--quiet").exit_code == 0
    assert not (tmp_path / "rep" / "stale.txt").exists()
    assert set(pd.read_csv(tmp_path / "rep" / "points.csv")["proxy"]) == {"rm:z"}


@pytest.mark.parametrize("case", ["missing-table", "empty-table", "experiment", "policy", "run-id", "method", "only-rm"])
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
    }[case]
    expected = {"missing-table": "does not exist", "empty-table": "no rows", "experiment": "no rows match",
                "policy": "no rows match", "run-id": "not-a-run", "method": "no grpo rows",
                "only-rm": "no best-of-n or RL"}[case]
    if case == "empty-table":
        with R.ResultsStore(tmp_path / "empty.sqlite") as store:
            store.start_run("sample", {}, 0, "synth")
    if case == "only-rm":
        add_run(tmp_path / "rm-only.sqlite", "train-rm", [{"method": "rm", "proxy": "rm:a", "accuracy": 0.7}], "x")
    result = invoke(*args, "--output", "rep")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bonrl: error:") and expected in lines[0], lines
    assert not (tmp_path / "rep").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]
