"""`bonrl sample` end to end on tiny models: rows, samples file, rescoring, determinism, bad input.

The policy is `tiny`; proxies are a tiny reward model built here (rm:, tie-free scores) and toy Python
scorers (tests/toy_scorers.py: one with ties by construction); the gold is the completion's length.
The estimator math has its own tests (test_bon_estimator.py); here every row is recomputed from the
saved samples file with the one-prompt functions, so a misaligned column or a wrong reshape shows.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_gold
import toy_scorers
import tracker_files
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.measurement import bon_estimator as bon
from bon_vs_rl.measurement import scorers
from bon_vs_rl.methods import best_of_n
from bon_vs_rl.record import results as R

runner = CliRunner()
TOYS = Path(toy_scorers.__file__)
TIED = f"python:{TOYS}:tied_proxy"
HASHED = f"python:{TOYS}:hashed_proxy"
GOLD = f"python:{TOYS}:length_gold"
NS = [1, 2, 4, 8]
ESTIMATES = ["n", "kl", "sqrt_kl", "kl_analytic", "kl_lo", "kl_hi", "kl_beirami", "kl_beirami_se", "tied_prompts",
             "proxy_mean", "proxy_se", "gold_mean", "gold_se", "length_mean", "length_se", "proxy_gain",
             "proxy_gain_lo", "proxy_gain_hi", "gold_gain", "gold_gain_lo", "gold_gain_hi", "sample_count",
             "prompt_count", "generated_tokens", "samples_per_prompt", "policy", "proxy", "gold", "seed", "prompt_set"]


@pytest.fixture(scope="module")
def rm_proxy(tmp_path_factory):
    """A tiny bonrl reward-model checkpoint (random weights: continuous scores, no ties)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bon_vs_rl.measurement.models import smollm2_tokenizer_dir

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
    """Every estimate of every row, recomputed prompt by prompt from the samples file with the one-prompt
    functions (weights, tie-aware KL), and every gain as a per-prompt difference from the prompt's mean."""
    groups = [g for _, g in frame.groupby("prompt_id")]
    for row in rows.itertuples():
        n = row.n
        assert row.kl_analytic == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
        per_prompt_kl = [bon.kl_bon_tie_aware(g[row.proxy].to_numpy(), n) for g in groups]
        assert row.kl == pytest.approx(np.mean(per_prompt_kl), rel=1e-12, abs=1e-12)
        assert row.kl <= row.kl_analytic + 1e-12 and row.kl_lo <= row.kl + 1e-12 <= row.kl_hi + 2e-12
        assert row.sqrt_kl == pytest.approx(math.sqrt(row.kl))
        weights = [bon.best_of_n_weights(g[row.proxy].to_numpy(), n) for g in groups]
        for column, name in ((row.proxy, "proxy"), (GOLD, "gold"), ("tokens", "length")):
            per_prompt = [w @ g[column].to_numpy() for w, g in zip(weights, groups, strict=True)]
            assert getattr(row, f"{name}_mean") == pytest.approx(np.mean(per_prompt), rel=1e-9, abs=1e-12)
            se = np.std(per_prompt, ddof=1) / math.sqrt(len(groups))
            assert getattr(row, f"{name}_se") == pytest.approx(se, rel=1e-9, abs=1e-12)
            if name != "length":  # the gain is paired: each prompt against the mean of its own N samples
                gains = [b - g[column].mean() for b, g in zip(per_prompt, groups, strict=True)]
                gain, lo, hi = (getattr(row, f"{name}_gain{s}") for s in ("", "_lo", "_hi"))
                assert gain == pytest.approx(np.mean(gains), rel=1e-9, abs=1e-12)
                assert min(gains) - 1e-12 <= lo <= gain + 1e-12 <= hi + 2e-12 <= max(gains) + 3e-12
        beirami = np.mean([w @ bon.kl_bon_beirami_from_logprob(g["logprob"].to_numpy(), n)
                           for w, g in zip(weights, groups, strict=True)])
        assert row.kl_beirami == pytest.approx(beirami, rel=1e-9, abs=1e-12)
        assert -1e-12 <= row.kl_beirami <= row.kl_analytic + 1e-12


@pytest.fixture(scope="module")
def first_run(rm_proxy, tmp_path_factory):
    """One run with two proxies (the RM and the tied toy), its rows and its samples file."""
    root = tmp_path_factory.mktemp("first")
    results = root / "results.sqlite"
    result = invoke(*sample_args(rm_proxy, TIED, extra=("--bootstrap", "200", "--output", str(root / "bon"),
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
    # n = 1 keeps a uniformly random sample, whichever proxy: the same gold for both, and no gain at all.
    at_one = rows[rows["n"] == 1]
    assert at_one["gold_mean"].iloc[0] == pytest.approx(at_one["gold_mean"].iloc[1])
    for name in ("gold_gain", "gold_gain_lo", "gold_gain_hi", "proxy_gain", "kl", "kl_hi"):
        assert np.allclose(at_one[name], 0.0, atol=1e-12), name
    # The tied toy proxy has repeated scores on every prompt: its KL is below the analytic value.
    tied_rows = rows[(rows["proxy"] == TIED) & (rows["n"] > 1)]
    assert (tied_rows["kl"] < tied_rows["kl_analytic"]).all()
    assert (samples_path_of(result).parent / "resolved_config.json").is_file()


def test_same_seed_gives_identical_rows_and_samples(first_run, rm_proxy):
    _, rows, frame, _ = first_run
    again = invoke(*sample_args(rm_proxy, TIED, extra=("--bootstrap", "200")))
    rows_again = rows_of(again)
    pd.testing.assert_frame_equal(rows[ESTIMATES + ["gold_lo", "gold_hi"]],
                                  rows_again[ESTIMATES + ["gold_lo", "gold_hi"]])
    assert rows["setting"].nunique() == 1 and (rows["setting"] == rows_again["setting"]).all()
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
                    "--proxy", rm_proxy, "--proxy", TIED, "--proxy", HASHED, "--bootstrap", "200", "--seed", "5")
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


@pytest.fixture(scope="module")
def rm_ensemble(tmp_path_factory):
    """A two-member bonrl ensemble of tiny random reward models."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bon_vs_rl.measurement.models import smollm2_tokenizer_dir

    path = tmp_path_factory.mktemp("ensemble")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    for i in range(2):
        torch.manual_seed(10 + i)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                             pad_token_id=tokenizer.pad_token_id)
        LlamaForSequenceClassification(config).save_pretrained(path / f"member-{i}")
        tokenizer.save_pretrained(path / f"member-{i}")
    (path / scorers.RM_METADATA).write_text(json.dumps({"members": ["member-0", "member-1"], "max_length": 128}))
    return path


def test_one_draw_without_a_proxy_is_rescored_by_an_ensembles_specs_running_each_member_once(rm_ensemble, tmp_path,
                                                                                           monkeypatch):
    results = tmp_path / "results.sqlite"
    draw = invoke(*sample_args(extra=("--results", str(results), "--output", str(tmp_path / "draw"))))
    assert draw.exit_code == 0, draw.output
    frame, metadata = best_of_n.read_samples(samples_path_of(draw))
    assert metadata["proxies"] == [] and GOLD in frame and len(frame) == 3 * 8
    assert not results.exists() or R.load(results).empty  # a draw writes no estimates

    calls = []
    real_call = scorers.SequenceClassifierReward.__call__

    def counted(self, prompts, completions):
        calls.append((id(self), len(prompts)))
        return real_call(self, prompts, completions)

    monkeypatch.setattr(scorers.SequenceClassifierReward, "__call__", counted)
    specs = [f"rm:{rm_ensemble}@mean", f"rm:{rm_ensemble}@min", f"rm:{rm_ensemble}@mean-0.5std",
             f"rm:{rm_ensemble}@member-1"]
    args = ["--policy", "tiny", "--gold", GOLD, "--n", "1,2,4,8", "--from-samples", str(samples_path_of(draw)),
            "--results", str(results), "--output", str(tmp_path / "rescored")]
    result = invoke(*args, *(a for spec in specs for a in ("--proxy", spec)))
    rows = rows_of(result, results)
    assert sorted(set(rows["proxy"])) == sorted(specs) and len(rows) == 4 * len(specs)
    # Two member models, each run once over the 24 samples, for all four specs.
    assert len({model for model, _ in calls}) == 2 and sum(count for _, count in calls) == 2 * len(frame)
    monkeypatch.setattr(scorers.SequenceClassifierReward, "__call__", real_call)
    rescored = best_of_n.read_samples(samples_path_of(result))[0]
    prompts, completions = rescored["prompt"].tolist(), rescored["completion"].tolist()
    members = np.stack([scorers.load_scorer(f"hf:{rm_ensemble / f'member-{i}'}")(prompts, completions)
                        for i in range(2)])
    np.testing.assert_allclose(rescored[specs[0]], (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rescored[specs[1]], np.minimum(members[0], members[1]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rescored[specs[2]], (members[0] + members[1]) / 2 - 0.5 * np.abs(members[0] - members[1]) / 2,
                               rtol=1e-5, atol=1e-6)  # the std of two values is half their distance
    np.testing.assert_allclose(rescored[specs[3]], members[1], rtol=1e-5, atol=1e-6)
    assert_rows_match_samples(rows, rescored)


def test_a_low_entropy_policy_has_beirami_kl_well_below_the_formula(tmp_path):
    """The fixed policy writes ' good' (p ~ 0.7) or stops (p ~ 0.26): completions have probabilities far
    from 0 and repeat, so the formula overstates the KL and both tighter figures must show it."""
    from bon_vs_rl.measurement.models import smollm2_tokenizer_dir

    toy_scorers.build_fixed_policy(tmp_path / "policy", smollm2_tokenizer_dir(), {" good": 16.0, " bad": 13.0}, 15.0)
    result = invoke("--policy", str(tmp_path / "policy"), "--proxy", HASHED, "--gold", GOLD, "--n", "1,2,4,8,16",
                    "--eval-prompts", "4", "--max-new-tokens", "3")
    rows = rows_of(result)
    frame = best_of_n.read_samples(samples_path_of(result))[0]
    assert_rows_match_samples(rows, frame)
    at_16 = rows[rows["n"] == 16].iloc[0]
    assert at_16["tied_prompts"] == 4  # identical completions get identical proxy scores
    assert at_16["kl_beirami"] < 0.9 * at_16["kl_analytic"] and at_16["kl"] < 0.9 * at_16["kl_analytic"]


def test_a_proxy_that_fails_while_scoring_fails_the_run_with_no_rows(tmp_path):
    result = invoke(*sample_args(f"python:{Path(toy_gold.__file__)}:nan_gold", n="1,2"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"bonrl: error: scorer python:{Path(toy_gold.__file__)}:nan_gold: returned nan "
                                    "for prompt"), result.output
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
        "rescoring with no proxy": ["--policy", "tiny", "--from-samples", str(saved_samples), "--gold", GOLD,
                                    "--n", "1,2"],
        "member of a single model": sample_args(f"rm:{corrupt_rm}@member-0"),
        "too few resamples": sample_args(TIED, extra=("--bootstrap", "20")),
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
                                  "corrupt rm proxy", "rescoring with no proxy", "member of a single model",
                                  "too few resamples", "samples of another policy",
                                  "n > N of the samples file", "missing samples file", "not a samples file"])
def test_bad_input_exits_2_before_any_work(case, saved_samples, corrupt_rm, tmp_path):
    expected = {  # the one line must name this case's problem, so a case failing for another reason fails
        "n = 0": "bonrl: error: n: 0 is not positive; every n must be ≥ 1",
        "too few resamples": "bonrl: error: bootstrap: 20 prompt resamples are too few for a 95% interval",
        "n > N": "bonrl: error: n: 8 exceeds samples_per_prompt=4; raise --samples-per-prompt",
        "empty prompt set": "bonrl: error: prompts: the eval split of 'four.txt' is empty; give at least 5 prompts",
        "missing rm proxy": "bonrl: error: proxy: no/such/dir is not a bonrl reward model (no bonrl_rm.json)",
        "broken python proxy": f"bonrl: error: proxy: {TOYS} has no function 'no_such_function'; check --proxy",
        "corrupt rm proxy": f"bonrl: error: proxy: cannot load 'rm:{corrupt_rm}'",
        "rescoring with no proxy": "bonrl: error: proxy: no proxy reward model given to rescore the samples with; "
                                   "pass --proxy rm:PATH (from bonrl train-rm)",
        "member of a single model": f"bonrl: error: proxy: {corrupt_rm} is a single model; @member-0 needs an "
                                    "ensemble (train with --ensemble K)",
        "samples of another policy": f"bonrl: error: from_samples: {saved_samples} holds samples of policy 'tiny', "
                                     "not --policy 'smollm2-135m'",
        "n > N of the samples file": "bonrl: error: n: 8 exceeds the 4 samples per prompt in",
        "missing samples file": "bonrl: error: from_samples: nope.parquet not found",
        "not a samples file": "bonrl: error: from_samples: four.txt is not a readable Parquet file",
    }[case]
    result = invoke(*bad_inputs(saved_samples, corrupt_rm)[case])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bonrl: error:") and expected in lines[0], lines
    assert not (tmp_path / "results.sqlite").exists()  # no run started, no rows
    assert not (tmp_path / "bon").exists()


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m bon_vs_rl.cli -- ARGS`, as the README writes it: two gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, like the one-process runs here: same arithmetic
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "bon_vs_rl.cli", "--", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow  # 6-10 s on an idle 2-core machine: keeps `make test` well under 3 minutes
def test_two_processes_write_one_run_with_the_samples_and_rows_of_one_process(one_torch_thread, tmp_path):
    """5 eval prompts in batches of 2 (N = 8, batch size 16): one process samples prompts 0, 1 and 4, the
    other 2 and 3; the main process gathers them and writes one samples file and one set of rows."""
    args = ["sample", *sample_args(TIED, HASHED, extra=("--eval-prompts", "5", "--quiet"))]
    one = invoke(*args[1:], "--output", str(tmp_path / "one"), "--results", str(tmp_path / "one.sqlite"))
    one_rows = rows_of(one, tmp_path / "one.sqlite")

    two = torchrun(*args, "--output", str(tmp_path / "two"), "--results", str(tmp_path / "two.sqlite"), cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    (run_dir,) = (tmp_path / "two").iterdir()  # one run directory, written by the main process alone
    assert sorted(p.name for p in run_dir.iterdir()) == ["resolved_config.json", "samples.parquet"]
    assert two.stdout.strip().splitlines() == [str(run_dir / "samples.parquet")]
    with R.ResultsStore(tmp_path / "two.sqlite") as store:
        assert store.runs()["status"].tolist() == ["finished"]
    two_rows = R.load(tmp_path / "two.sqlite", method="bon").sort_values(["proxy", "n"]).reset_index(drop=True)
    assert len(two_rows) == 2 * len(NS)

    frame = best_of_n.read_samples(run_dir / "samples.parquet")[0]
    assert frame.groupby("prompt_id").size().to_dict() == {p: 8 for p in range(5)}  # every prompt exactly once
    pd.testing.assert_frame_equal(frame, best_of_n.read_samples(samples_path_of(one))[0], check_exact=True)
    pd.testing.assert_frame_equal(two_rows[ESTIMATES], one_rows[ESTIMATES], check_exact=True)


@pytest.mark.slow  # 6-10 s on an idle 2-core machine: keeps `make test` well under 3 minutes
def test_a_scorer_failing_in_the_second_process_fails_the_run_on_the_main_one(tmp_path):
    """The main process's own share scores fine; it learns of the other process's error in the gather,
    marks the run failed with that error and writes no rows, instead of waiting to be killed."""
    gold = tmp_path / "second_process_nan.py"
    gold.write_text("import os\n\n\ndef gold(prompts, completions):\n"
                    "    return [float('nan') if os.environ['RANK'] == '1' else 1.0 for _ in completions]\n")
    args = ["sample", *sample_args(TIED, n="1,8", extra=("--gold", f"python:{gold}:gold", "--eval-prompts", "5",
                                                         "--quiet"))]
    two = torchrun(*args, "--results", str(tmp_path / "r.sqlite"), cwd=tmp_path)
    assert two.returncode != 0  # torchrun's own status; each process exits 2 (bad input), as one would
    assert "exitcode  : 2" in two.stderr and "bonrl: error: process 1 failed: ScorerError" in two.stderr
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        runs = store.runs()
    assert runs["status"].tolist() == ["failed"] and "process 1 failed" in runs["error"].iloc[0]
    assert len(R.load(tmp_path / "r.sqlite")) == 0 and not (tmp_path / "bon").exists()
