"""`bonrl sample` end to end on tiny models: rows, samples file, rescoring, determinism, bad input.

The policy is `tiny`; proxies are a tiny reward model built here (rm:, tie-free scores) and toy Python
scorers (tests/toy_scorers.py: one with ties by construction); the gold is the completion's length.
The estimator math has its own tests (test_bon_estimator.py); here every row is recomputed from the
saved samples file with the one-prompt functions, so a misaligned column or a wrong reshape shows.
"""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_gold
import toy_scorers
import tracker_files
from typer.testing import CliRunner

from bon_vs_rl import best_of_n, cli, scorers
from bon_vs_rl import bon_estimator as bon
from bon_vs_rl import results as R

runner = CliRunner()
TOYS = Path(toy_scorers.__file__)
TIED = f"python:{TOYS}:tied_proxy"
HASHED = f"python:{TOYS}:hashed_proxy"
GOLD = f"python:{TOYS}:length_gold"
NS = [1, 2, 4, 8]
ESTIMATES = ["n", "kl", "sqrt_kl", "kl_beirami", "kl_beirami_se", "kl_exact", "tied_prompts", "proxy_mean",
             "proxy_se", "gold_mean", "gold_se", "length_mean", "length_se", "sample_count", "prompt_count",
             "generated_tokens", "samples_per_prompt", "policy", "proxy", "gold", "seed"]


@pytest.fixture(scope="module")
def rm_proxy(tmp_path_factory):
    """A tiny bonrl reward-model checkpoint (random weights: continuous scores, no ties)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bon_vs_rl.models import smollm2_tokenizer_dir

    path = tmp_path_factory.mktemp("rm")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / scorers.RM_METADATA).write_text(json.dumps({"members": ["."], "max_length": 128}))
    return f"rm:{path}"


def invoke(*args: str):
    result = runner.invoke(cli.app, ["sample", "--quiet", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def sample_args(*proxies: str, n: str = "1,2,4,8", extra: tuple = ()) -> list[str]:
    args = ["--policy", "tiny", "--gold", GOLD, "--n", n, "--eval-prompts", "3", "--max-new-tokens", "6",
            "--batch-size", "16", "--output", "bon", *extra]  # a later --output or --results wins
    for proxy in proxies:
        args += ["--proxy", proxy]
    return args


def rows_of(result, results=None) -> pd.DataFrame:
    assert result.exit_code == 0, result.output
    rows = R.load(results, method="bon")
    return rows.sort_values(["proxy", "n"]).reset_index(drop=True)


def samples_path_of(result) -> Path:
    return Path(result.stdout.strip().splitlines()[-1])


def assert_rows_match_samples(rows: pd.DataFrame, frame: pd.DataFrame) -> None:
    """Every estimate of every row, recomputed prompt by prompt from the samples file."""
    groups = [g for _, g in frame.groupby("prompt_id")]
    for row in rows.itertuples():
        n = row.n
        assert row.kl == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
        assert row.sqrt_kl == pytest.approx(math.sqrt(row.kl))
        weights = [bon.best_of_n_weights(g[row.proxy].to_numpy(), n) for g in groups]
        for column, name in ((row.proxy, "proxy_mean"), (GOLD, "gold_mean"), ("tokens", "length_mean")):
            expected = np.mean([w @ g[column].to_numpy() for w, g in zip(weights, groups, strict=True)])
            assert getattr(row, name) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        gold_per_prompt = [w @ g[GOLD].to_numpy() for w, g in zip(weights, groups, strict=True)]
        se = np.std(gold_per_prompt, ddof=1) / math.sqrt(len(groups))
        assert row.gold_se == pytest.approx(se, rel=1e-9, abs=1e-12)
        beirami = np.mean([w @ bon.kl_bon_beirami_from_logprob(g["logprob"].to_numpy(), n)
                           for w, g in zip(weights, groups, strict=True)])
        assert row.kl_beirami == pytest.approx(beirami, rel=1e-9, abs=1e-12)
        assert -1e-12 <= row.kl_beirami <= row.kl + 1e-12
        if row.tied_prompts:
            exact = np.mean([bon.kl_bon_exact_empirical(g[row.proxy].to_numpy(), n) for g in groups])
            assert row.kl_exact == pytest.approx(exact, rel=1e-9, abs=1e-12) and row.kl_exact <= row.kl + 1e-12
        else:
            assert math.isnan(row.kl_exact)


@pytest.fixture(scope="module")
def first_run(rm_proxy, tmp_path_factory):
    """One run with two proxies (the RM and the tied toy), its rows and its samples file."""
    root = tmp_path_factory.mktemp("first")
    results = root / "results.sqlite"
    result = invoke(*sample_args(rm_proxy, TIED, extra=("--bootstrap", "50", "--output", str(root / "bon"),
                                                         "--results", str(results))))
    rows = rows_of(result, results)
    frame, metadata = best_of_n.read_samples(samples_path_of(result))
    return result, rows, frame, metadata


def test_rows_match_the_estimator_recomputed_from_the_samples_file(first_run, rm_proxy):
    result, rows, frame, metadata = first_run
    assert len(rows) == 2 * len(NS) and set(rows["proxy"]) == {rm_proxy, TIED}
    assert metadata["policy"] == "tiny" and metadata["samples_per_prompt"] == 8 and metadata["max_new_tokens"] == 6
    assert list(frame.columns[:5]) == ["prompt_id", "prompt", "completion", "tokens", "logprob"]
    assert {rm_proxy, TIED, GOLD} <= set(frame.columns)
    groups = [g for _, g in frame.groupby("prompt_id")]
    assert len(groups) == 3 and all(len(g) == 8 for g in groups)

    assert_rows_match_samples(rows, frame)
    for row in rows.itertuples():
        assert row.gold_lo <= row.gold_mean <= row.gold_hi and row.proxy_lo <= row.proxy_mean <= row.proxy_hi
        assert row.prompt_count == 3 and row.sample_count == 24 and row.samples_per_prompt == 8
        assert row.generated_tokens == frame["tokens"].sum() and row.policy == "tiny" and row.gold == GOLD
        assert Path(row.samples_path) == samples_path_of(result)

    # {0, 1, 2, 3}-valued scores on 8 samples always tie; the random RM's never do.
    assert (rows.loc[rows["proxy"] == TIED, "tied_prompts"] == 3).all()
    assert (rows.loc[rows["proxy"] == rm_proxy, "tied_prompts"] == 0).all()
    # n = 1 keeps a uniformly random sample, whichever proxy: the same gold for both.
    at_one = rows[rows["n"] == 1]
    assert at_one["gold_mean"].iloc[0] == pytest.approx(at_one["gold_mean"].iloc[1])
    assert (samples_path_of(result).parent / "resolved_config.json").is_file()


def test_same_seed_gives_identical_rows_and_samples(first_run, rm_proxy):
    _, rows, frame, _ = first_run
    again = invoke(*sample_args(rm_proxy, TIED, extra=("--bootstrap", "50")))
    rows_again = rows_of(again)
    pd.testing.assert_frame_equal(rows[ESTIMATES + ["gold_lo", "gold_hi"]],
                                  rows_again[ESTIMATES + ["gold_lo", "gold_hi"]])
    pd.testing.assert_frame_equal(frame, best_of_n.read_samples(samples_path_of(again))[0])
    other = invoke(*sample_args(TIED, extra=("--seed", "1")))
    assert other.exit_code == 0
    other_frame = best_of_n.read_samples(samples_path_of(other))[0]
    assert not frame["completion"].equals(other_frame["completion"])


def test_rescoring_the_samples_file_reproduces_rows_and_adds_a_proxy(first_run, rm_proxy):
    first, rows, frame, _ = first_run
    path = samples_path_of(first)
    # --seed differs on purpose: the samples' own seed is the one that counts when rescoring.
    result = invoke("--policy", "tiny", "--gold", GOLD, "--n", "1,2,4,8", "--from-samples", str(path),
                    "--proxy", rm_proxy, "--proxy", TIED, "--proxy", HASHED, "--bootstrap", "50", "--seed", "5")
    rescored = rows_of(result)
    same = rescored[rescored["proxy"] != HASHED].reset_index(drop=True)
    pd.testing.assert_frame_equal(rows[ESTIMATES + ["gold_lo", "gold_hi"]], same[ESTIMATES + ["gold_lo", "gold_hi"]])
    assert (same["from_samples"] == str(path)).all()

    new_frame, metadata = best_of_n.read_samples(samples_path_of(result))
    assert samples_path_of(result) != path  # a new file in this run's directory; the old one is untouched
    assert metadata["generated_by"] == rows["run_id"].iloc[0]
    pd.testing.assert_frame_equal(new_frame[frame.columns], frame)
    hashed = rescored[rescored["proxy"] == HASHED]
    assert len(hashed) == 4 and (hashed["generated_tokens"] == frame["tokens"].sum()).all()


def test_a_low_entropy_policy_has_beirami_kl_well_below_the_formula(tmp_path):
    """The fixed policy writes ' good' (p ~ 0.7) or stops (p ~ 0.26): completions have probabilities far
    from 0 and repeat, so the formula overstates the KL and both tighter figures must show it."""
    from bon_vs_rl.models import smollm2_tokenizer_dir

    toy_scorers.build_fixed_policy(tmp_path / "policy", smollm2_tokenizer_dir(), {" good": 16.0, " bad": 13.0}, 15.0)
    result = invoke("--policy", str(tmp_path / "policy"), "--proxy", HASHED, "--gold", GOLD, "--n", "1,2,4,8,16",
                    "--eval-prompts", "4", "--max-new-tokens", "3")
    rows = rows_of(result)
    frame = best_of_n.read_samples(samples_path_of(result))[0]
    assert_rows_match_samples(rows, frame)
    at_16 = rows[rows["n"] == 16].iloc[0]
    assert at_16["tied_prompts"] == 4  # identical completions get identical proxy scores
    assert at_16["kl_beirami"] < 0.9 * at_16["kl"] and at_16["kl_exact"] < 0.9 * at_16["kl"]


def test_a_proxy_that_fails_while_scoring_fails_the_run_with_no_rows(tmp_path):
    result = invoke(*sample_args(f"python:{Path(toy_gold.__file__)}:nan_gold", n="1,2"))
    assert result.exit_code == 2 and "finite" in result.output
    with R.ResultsStore() as store:
        runs = store.runs()
    assert runs["status"].tolist() == ["failed"]
    assert len(R.load(method="bon")) == 0


def test_the_curve_reaches_the_tracker_and_the_log_reads_plainly(monkeypatch):
    """--log-with mlflow (a local file store): every n's estimates, n as the step. stderr here is not a
    terminal, as in a log file: no carriage-return frames, and the table's numbers are not cut."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(cli.app, ["sample", *sample_args(TIED, n="1,2,4"), "--log-with", "mlflow"])
    rows = rows_of(result)
    metrics = tracker_files.mlflow_metrics(samples_path_of(result).parent)
    assert metrics["bon/gold_mean"] == [(n, pytest.approx(g)) for n, g in zip(rows["n"], rows["gold_mean"])]
    assert [step for step, _ in metrics["bon/kl"]] == [1, 2, 4]
    assert "\r" not in result.stderr and "…" not in result.stderr
    assert f"{rows['gold_mean'].iloc[-1]:.4g}" in result.stderr


@pytest.fixture(scope="module")
def saved_samples(tmp_path_factory):
    """A samples file of `tiny` with N = 4."""
    root = tmp_path_factory.mktemp("saved")
    result = invoke(*sample_args(TIED, n="1,4", extra=("--output", str(root / "bon"),
                                                       "--results", str(root / "results.sqlite"))))
    assert result.exit_code == 0, result.output
    return samples_path_of(result)


def bad_inputs(saved_samples, corrupt_rm):
    few_prompts = Path("four.txt")
    few_prompts.write_text("one\ntwo\nthree\nfour\n")  # an eval split needs a fifth prompt
    return {
        "n = 0": sample_args(TIED, n="0,2"),
        "n > N": sample_args(TIED, extra=("--samples-per-prompt", "4")),
        "empty prompt set": sample_args(TIED, extra=("--prompts", str(few_prompts))),
        "missing rm proxy": sample_args("rm:no/such/dir"),
        "broken python proxy": sample_args(f"python:{TOYS}:no_such_function"),
        "corrupt rm proxy": sample_args(f"rm:{corrupt_rm}"),
        "no proxy": ["--policy", "tiny", "--gold", GOLD, "--n", "1,2"],
        "samples of another policy": ["--policy", "smollm2-135m", "--from-samples", str(saved_samples),
                                      "--proxy", TIED, "--gold", GOLD, "--n", "1,2"],
        "n > N of the samples file": ["--policy", "tiny", "--from-samples", str(saved_samples), "--proxy", TIED,
                                      "--gold", GOLD, "--n", "1,8"],
        "missing samples file": ["--policy", "tiny", "--from-samples", "nope.parquet", "--proxy", TIED,
                                 "--gold", GOLD],
        "not a samples file": ["--policy", "tiny", "--from-samples", str(few_prompts), "--proxy", TIED,
                               "--gold", GOLD],
    }


@pytest.fixture(scope="module")
def corrupt_rm(rm_proxy):
    """The tiny RM directory with its weights file truncated: bonrl_rm.json is there, loading fails."""
    import shutil

    source = Path(rm_proxy.removeprefix("rm:"))
    target = Path(str(source) + "-corrupt")
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return target


@pytest.mark.parametrize("case", ["n = 0", "n > N", "empty prompt set", "missing rm proxy", "broken python proxy",
                                  "corrupt rm proxy", "no proxy", "samples of another policy",
                                  "n > N of the samples file", "missing samples file", "not a samples file"])
def test_bad_input_exits_2_before_any_work(case, saved_samples, corrupt_rm, tmp_path):
    result = invoke(*bad_inputs(saved_samples, corrupt_rm)[case])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("bonrl: error:") and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "results.sqlite").exists()  # no run started, no rows
    assert not (tmp_path / "bon").exists()
