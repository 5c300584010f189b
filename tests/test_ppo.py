"""`bonrl ppo` end to end on a toy task whose reward is known, plus the PPO pieces on their own.

The toy policy (tests/toy_gold.py) writes from six words, one of them " good"; the proxy (and gold) is the
fraction of words that are "good" (tests/toy_rewards.py), ~0.15 under the initial policy. Why not the
`tiny` random LM here: it spreads its mass evenly over 49,152 tokens, so PPO's trust region can only grow
the few tokens it happened to sample by ~20% a step — measured: a vowel-fraction reward did not rise in 6
steps at temperature 0.1-1. The toy policy's " good" is one logit shared by every context, so the same
code path raises the reward in a handful of steps. The LoRA / top-layers tests use `tiny` (2 layers).
"""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import toy_rewards
from safetensors.torch import load_file
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import evaluate, models, scorers
from bon_vs_rl.methods import ppo
from bon_vs_rl.record import results as R

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
REWARD = f"python:{Path(toy_rewards.__file__)}:good_fraction"
NAN_AFTER_FIRST = f"python:{Path(toy_rewards.__file__)}:nan_after_first"
VOWELS = f"python:{Path(toy_rewards.__file__)}:vowel_fraction"  # a second proxy, for the agreement sign
# Compared between an uninterrupted and a resumed run: everything but ids, paths and timings.
ROW_VALUES = ["step", "kl", "kl_se", "sqrt_kl", "proxy_mean", "proxy_se", "gold_mean", "gold_se", "length_mean",
              "sample_count", "prompt_count", "generated_tokens", "trained_tokens", "beta", "kl_negative",
              "train_objective_kl", "train_reward_proxy", "proxy_gain_norm", "proxy_bias_norm", "beta_raw"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ppo_args(policy: str, output: Path, results: Path, **overrides) -> dict:
    """Settings of the toy task: a few seconds per run on one CPU thread."""
    args = dict(policy=policy, proxy=REWARD, gold=REWARD, steps=6, eval_every=3, rollout_batch_size=16,
                minibatch_size=8, ppo_epochs=4, max_new_tokens=12, learning_rate=1e-2, beta=0.0, eval_prompts=8,
                eval_samples_per_prompt=2, device="cpu", quiet=True, output=str(output), results=str(results))
    args.update(overrides)
    return args


def run_ppo(**args) -> tuple[str, pd.DataFrame, list[dict]]:
    metrics: list[dict] = []
    run_id = ppo.train(resolve(C.PPOConfig, {}, args), on_step=metrics.append)
    return run_id, R.load(args["results"], run_id=run_id).sort_values("step").reset_index(drop=True), metrics


def cli_args(args: dict) -> list[str]:
    out = ["ppo"]
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    return out


@pytest.fixture(scope="module")
def beta0(toy_policy, tmp_path_factory):
    """One uninterrupted β = 0 run, shared by several tests."""
    root = tmp_path_factory.mktemp("beta0")
    args = ppo_args(toy_policy, root / "out", root / "results.sqlite", second_proxy=VOWELS)
    run_id, rows, metrics = run_ppo(**args)
    return dict(args=args, run_id=run_id, rows=rows, metrics=metrics, root=root)


def test_reward_rises_within_a_few_steps(beta0):
    rows, metrics = beta0["rows"], beta0["metrics"]
    assert rows["step"].tolist() == [0, 3, 6]
    first, last = rows.iloc[0], rows.iloc[-1]
    # Measured 0.13 -> 0.59; the assertion leaves a wide margin.
    assert last["proxy_mean"] - first["proxy_mean"] > 0.15
    assert last["proxy_mean"] - first["proxy_mean"] > 4 * np.hypot(first["proxy_se"], last["proxy_se"])
    assert np.mean([m["reward/proxy"] for m in metrics[-2:]]) > metrics[0]["reward/proxy"] + 0.1
    assert last["kl"] > 1.0  # β = 0: nothing holds the policy near the reference
    for key in ("objective/kl", "objective/entropy", "reward/proxy", "reward/gold", "ppo/clipfrac", "ppo/approx_kl",
                "ppo/policy_loss", "value/loss", "value/clipfrac", "ppo/beta"):
        assert all(np.isfinite(m[key]) for m in metrics), key


def test_rows_and_samples_have_the_shared_evaluation_format(beta0):
    rows = beta0["rows"]
    assert set(rows["method"]) == {"ppo"} and set(rows["run_status"]) == {"finished"}
    assert (rows["sample_count"] == 16).all() and (rows["prompt_count"] == 8).all()
    assert rows["generated_tokens"].is_monotonic_increasing and rows["trained_tokens"].iloc[0] == 0
    # generated = eval tokens (16 samples) at each of 3 evaluations + 6 rollouts of 16, at most 12 tokens each
    assert rows["generated_tokens"].iloc[-1] <= (3 * 16 + 6 * 16) * 12
    assert rows["trained_tokens"].iloc[-1] == sum(m["rollout/tokens"] for m in beta0["metrics"])
    frame = pd.read_parquet(rows["samples_path"].iloc[-1])
    for column in ("prompt_id", "prompt", "completion", "completion_ids", "tokens", "logprob", "ended", "proxy",
                   "gold", "kl", "kl_sampled", "ref_logprob", "step"):
        assert column in frame, column
    assert len(frame) == 16 and (frame["step"] == 6).all()
    assert np.allclose(frame["kl_sampled"], frame["policy_logprob"] - frame["ref_logprob"])
    assert (frame["kl"] >= 0).all()  # the exact per-token KL is a sum of KLs
    assert json.loads((Path(beta0["args"]["output"]) / "resolved_config.json").read_text())["beta"] == 0.0


def test_every_evaluation_row_is_recomputed_from_its_eval_samples_file(beta0):
    """KL (exact and sampled), proxy and gold means with their per-prompt standard errors, gold_std, length,
    counts, and the gains paired by prompt against step 0: all from the saved samples, prompt by prompt."""
    rows = beta0["rows"]
    first = pd.read_parquet(rows["samples_path"].iloc[0])
    initial = first.groupby("prompt_id")[["proxy", "gold"]].mean()
    for _, row in rows.iterrows():
        assert Path(row["samples_path"]).is_absolute()
        frame = pd.read_parquet(row["samples_path"])
        by_prompt = frame.groupby("prompt_id")
        for column, name in (("kl", "kl"), ("kl_sampled", "kl_sampled"), ("proxy", "proxy_mean"), ("gold", "gold_mean")):
            assert row[name] == pytest.approx(frame[column].mean(), rel=1e-9, abs=1e-12), name
            means = by_prompt[column].mean()
            se_name = "kl_se" if name == "kl" else "kl_sampled_se" if name == "kl_sampled" else name.replace("mean", "se")
            assert row[se_name] == pytest.approx(means.std(ddof=1) / np.sqrt(len(means)), rel=1e-9, abs=1e-12)
        assert row["gold_std"] == pytest.approx(frame["gold"].std(ddof=1), rel=1e-9)
        assert row["length_mean"] == pytest.approx(frame["tokens"].mean())
        assert row["ended_frac"] == pytest.approx(frame["ended"].mean())
        assert row["sample_count"] == len(frame) and row["prompt_count"] == frame["prompt_id"].nunique()
        for name in ("proxy", "gold"):
            gains = by_prompt[name].mean() - initial[name]
            assert row[f"{name}_gain"] == pytest.approx(gains.mean(), rel=1e-9, abs=1e-12)
            assert gains.min() - 1e-12 <= row[f"{name}_gain_lo"] <= row[f"{name}_gain"] + 1e-12
            assert row[f"{name}_gain"] - 1e-12 <= row[f"{name}_gain_hi"] <= gains.max() + 1e-12
        assert row["kl_lo"] <= row["kl"] + 1e-12 <= row["kl_hi"] + 2e-12
    assert rows["setting"].nunique() == 1 and rows["prompt_set"].nunique() == 1


def test_every_row_carries_the_warning_signs_recomputed_from_its_file_against_step_zero(beta0):
    """signal_* columns (hacking_signals): per-prompt means of each sample's value, against step 0's samples."""
    rows = beta0["rows"]
    first = pd.read_parquet(rows["samples_path"].iloc[0])

    def by_prompt(frame, values):
        return pd.Series(np.asarray(values, dtype=float)).groupby(frame["prompt_id"].to_numpy()).mean().mean()

    def distinct_2(text):
        words = text.lower().split()
        return len(set(zip(words, words[1:]))) / max(len(words) - 1, 1) if len(words) > 1 else 1.0

    ref_tokens = by_prompt(first, first["tokens"])
    ref_d2 = by_prompt(first, [distinct_2(c) for c in first["completion"]])
    ref_lp = by_prompt(first, first["ref_logprob"] / first["tokens"])
    for _, row in rows.iterrows():
        frame = pd.read_parquet(row["samples_path"])
        assert row["signal_proxy_z"] == pytest.approx(
            (by_prompt(frame, frame["proxy"]) - by_prompt(first, first["proxy"])) / first["proxy"].std(ddof=1))
        assert row["signal_above_ref_max"] == pytest.approx(by_prompt(frame, frame["proxy"] > first["proxy"].max()))
        assert row["signal_length_drift"] == pytest.approx(by_prompt(frame, frame["tokens"]) / ref_tokens - 1)
        assert row["signal_distinct_2_drift"] == pytest.approx(
            by_prompt(frame, [distinct_2(c) for c in frame["completion"]]) - ref_d2, abs=1e-12)
        assert row["signal_ref_logprob_drift"] == pytest.approx(by_prompt(frame, frame["ref_logprob"] / frame["tokens"])
                                                               - ref_lp, abs=1e-12)
    assert rows["signal_proxy_z"].iloc[0] == 0.0 and rows["signal_proxy_z"].iloc[-1] > 1  # the reward rose


def test_the_second_proxy_is_scored_on_every_evaluation_and_its_agreement_recomputed_by_hand(beta0):
    """--second-proxy: scored beside the run (never in its reward or gains); signal_agreement is the share of
    a prompt's sample pairs that proxy and second proxy order alike (a tie in either counts half), averaged
    over prompts — here two samples a prompt, so one pair each."""
    rows = beta0["rows"]
    for _, row in rows.iterrows():
        frame = pd.read_parquet(row["samples_path"])
        assert frame["second_proxy"].tolist() == pytest.approx(
            toy_rewards.vowel_fraction(frame["prompt"].tolist(), frame["completion"].tolist()))
        shares = []
        for _, group in frame.groupby("prompt_id"):
            (a0, a1), (b0, b1) = group["proxy"].tolist(), group["second_proxy"].tolist()
            shares.append(0.5 if a0 == a1 or b0 == b1 else float((a0 > a1) == (b0 > b1)))
        assert row["signal_agreement"] == pytest.approx(np.mean(shares))
    assert rows["proxy_mean"].tolist() != pytest.approx(rows["signal_agreement"].tolist())  # not the proxy itself


def test_exact_kl_matches_a_direct_per_token_sum_over_the_vocabulary(beta0, toy_policy):
    """The last evaluation's exact KL recomputed without the batching code: each completion alone, unpadded,
    KL_t = sum_v p log(p/q) from the final checkpoint's policy and the reference (the initial policy).

    It starts from the saved token ids, not the text: a decoded completion can re-tokenize into other ids of
    the same length (an earlier version of this test did that, and failed on a sample that did)."""
    checkpoint = sorted((Path(beta0["args"]["output"]) / "checkpoints").iterdir())[-1] / "policy"
    policy, tokenizer = models.load_policy(str(checkpoint), torch.device("cpu"), dtype=torch.float32)
    reference, _ = models.load_policy(toy_policy, torch.device("cpu"), dtype=torch.float32)
    frame = pd.read_parquet(beta0["rows"]["samples_path"].iloc[-1]).head(6)
    from bon_vs_rl.measurement import sampling

    for _, sample in frame.iterrows():
        prompt = sampling.encode_prompts(tokenizer, [sample["prompt"]], beta0["args"].get("max_prompt_tokens", 64))[0]
        completion = [int(t) for t in sample["completion_ids"]]
        assert len(completion) == sample["tokens"]
        assert tokenizer.decode(completion, skip_special_tokens=True) == sample["completion"]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(policy(ids).logits[0].double(), -1)
            logq = torch.log_softmax(reference(ids).logits[0].double(), -1)
        positions = range(len(prompt) - 1, len(prompt) - 1 + len(completion))
        exact = sum(float((logp[t].exp() * (logp[t] - logq[t])).sum()) for t in positions)
        sampled = sum(float(logp[t, ids[0, t + 1]] - logq[t, ids[0, t + 1]]) for t in positions)
        assert sample["kl"] == pytest.approx(exact, rel=1e-3, abs=1e-5)  # float32 softmax against float64
        assert sample["kl_sampled"] == pytest.approx(sampled, rel=1e-3, abs=1e-5)
    assert frame["kl"].max() > 1.0  # a KL far from 0, to get wrong


def test_kl_at_step_zero_is_zero_within_its_standard_error(beta0):
    first = beta0["rows"].iloc[0]
    assert abs(first["kl"]) <= 3 * first["kl_se"] + 1e-9 and first["kl_negative"] == 0
    # Policy and reference log-probs come from the same computation, so every log-ratio is 0 at step 0 ...
    assert np.abs(pd.read_parquet(first["samples_path"])[["kl", "kl_sampled"]].to_numpy()).max() < 1e-6
    # ... and the sampler's incremental log-probs agree with that forward pass.
    frame = pd.read_parquet(first["samples_path"])
    assert np.allclose(frame["logprob"], frame["policy_logprob"], atol=1e-3)


@pytest.mark.slow  # 4-6 s each: with the others marked so, `make test` keeps a 2x margin on 3 min
def test_large_beta_keeps_kl_far_below_beta_zero(beta0, tmp_path):
    args = {**beta0["args"], "beta": 1.0, "output": str(tmp_path / "out"), "results": str(tmp_path / "r.sqlite")}
    _, rows, metrics = run_ppo(**args)
    kl_beta0, kl_beta1 = beta0["rows"]["kl"].iloc[-1], rows["kl"].iloc[-1]
    assert kl_beta1 < 0.2 * kl_beta0, (kl_beta1, kl_beta0)  # measured 0.03 against 4.5-6
    assert all(m["ppo/beta"] == 1.0 for m in metrics)


# `bonrl ppo` in a child process that, once its step-2 checkpoint is written, says so on stdout and then
# holds still until it is killed: the kill lands exactly after the first checkpoint, whatever the machine.
KILLED_AFTER_FIRST_CHECKPOINT = """
import sys
from bon_vs_rl import cli
from bon_vs_rl.methods import ppo

save = ppo.save_checkpoint

def save_and_signal(*args):
    path = save(*args)
    print(path, flush=True)
    sys.stdin.read()  # wait to be killed
    return path

ppo.save_checkpoint = save_and_signal
cli.app(sys.argv[1:], prog_name="bonrl")
"""


@pytest.mark.slow  # 9 s on an idle 2-core machine, 23 s when it is shared: a PPO run in a child process, resumed
def test_resume_after_kill_writes_the_same_rows_as_an_uninterrupted_run(beta0, tmp_path):
    """Kill a run after its first checkpoint, resume it: same steps, no duplicates, same values."""
    results = tmp_path / "results.sqlite"
    args = {**beta0["args"], "output": str(tmp_path / "out"), "results": str(results), "checkpoint_every": 2,
            "keep_checkpoints": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # one thread, like this process: same arithmetic
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(tmp_path / "stderr.txt", "wb") as stderr:  # a file: a full stderr pipe would block the child
        child = subprocess.Popen([sys.executable, "-c", KILLED_AFTER_FIRST_CHECKPOINT, *cli_args(args)],
                                 cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        saved = child.stdout.readline().decode().strip()  # once the checkpoint is written (or "" if the child died)
        child.kill()
        child.communicate()
    assert saved == str(tmp_path / "out" / "checkpoints" / "step-000002"), (tmp_path / "stderr.txt").read_text()[-2000:]
    assert (Path(saved) / "state.json").is_file() and child.returncode == -signal.SIGKILL
    killed = R.load(results)
    assert killed["step"].tolist() == [0]  # killed after step 2, before the step-3 evaluation

    resumed = runner.invoke(cli.app, cli_args({**args, "resume": True}))
    assert resumed.exit_code == 0, resumed.output
    rows = R.load(results).sort_values("step").reset_index(drop=True)
    assert rows["run_id"].nunique() == 1 and rows["run_id"].iloc[0] == killed["run_id"].iloc[0]
    assert rows["step"].tolist() == [0, 3, 6]  # no gaps, no duplicates
    with R.ResultsStore(results) as store:
        assert store.runs()["status"].tolist() == ["finished"]
    # Every random draw derives from (seed, step), and the checkpoint restores weights, Adam moments, the
    # KL controller and reward statistics exactly, so the values are equal, not merely close.
    pd.testing.assert_frame_equal(rows[ROW_VALUES], beta0["rows"][ROW_VALUES], check_exact=True)
    assert [p.name for p in ppo.checkpoint_dirs(tmp_path / "out")] == ["step-000006"]  # keep-last rotation


def test_a_second_run_into_the_same_output_is_refused(beta0):
    """Rows of the first run point at OUTPUT/eval_samples; a second run there must not replace them."""
    samples = {p: p.read_bytes() for p in (Path(beta0["args"]["output"]) / "eval_samples").iterdir()}
    result = runner.invoke(cli.app, cli_args(beta0["args"]))
    assert result.exit_code == 2
    assert result.output.strip() == (f"bonrl: error: output: {beta0['args']['output']} already holds run "
                                     f"{beta0['run_id']}; pass --resume to continue it, --overwrite to replace its "
                                     "files, or a new --output")
    assert {p: p.read_bytes() for p in samples} == samples
    with R.ResultsStore(beta0["args"]["results"]) as store:
        assert store.runs()["run_id"].tolist() == [beta0["run_id"]]


def test_quiet_means_only_errors_on_stderr(tmp_path, capfd, loud_libraries):
    """Loading and saving weights draw transformers' bars; --quiet silences them and library warnings."""
    result = runner.invoke(cli.app, cli_args(tiny_args(tmp_path)))
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""
    assert capfd.readouterr().err == ""  # nor through handlers bound to the real stderr (logging)
    assert [str(w.message) for w in loud_libraries] == []


def test_overwrite_replaces_the_earlier_run_and_metrics_reach_tensorboard(tmp_path):
    import tracker_files

    first, _, _ = run_ppo(**tiny_args(tmp_path))
    stale = tmp_path / "out" / "nonfinite-step-000009.parquet"
    stale.write_text("an earlier run's file")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    second, rows, metrics = run_ppo(**tiny_args(tmp_path, overwrite=True, log_with="tensorboard"))
    assert second != first and json.loads((tmp_path / "out" / "bonrl_run.json").read_text())["run_id"] == second
    assert not stale.exists() and (tmp_path / "out" / "notes.txt").read_text() == "mine"  # ours only
    scalars = tracker_files.tensorboard_scalars(tmp_path / "out" / "tensorboard" / second)
    assert scalars["reward/proxy"] == [(1, pytest.approx(metrics[0]["reward/proxy"]))]
    assert scalars["eval/gold_mean"] == [(0, pytest.approx(rows["gold_mean"].iloc[0])),
                                         (1, pytest.approx(rows["gold_mean"].iloc[1]))]
    assert scalars["eval/signal_length_drift"] == [(0, 0.0), (1, pytest.approx(rows["signal_length_drift"].iloc[1]))]
    assert [p.name for p in (tmp_path / "out" / "tensorboard").iterdir()] == [second]


@pytest.mark.slow  # 8 s on an idle 2-core machine, far more when it is shared: two torchrun processes
def test_two_processes_gather_into_one_run(toy_policy, tmp_path):
    """`torchrun`/`accelerate launch` with 2 CPU processes (gloo): one run, rows over all eval prompts."""
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=2, eval_every=2,
                    checkpoint_every=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "bon_vs_rl.cli", *cli_args(args)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    rows = R.load(tmp_path / "results.sqlite").sort_values("step")
    assert rows["run_id"].nunique() == 1 and rows["step"].tolist() == [0, 2]
    assert (rows["prompt_count"] == 8).all() and (rows["sample_count"] == 16).all()
    assert 0 < rows["trained_tokens"].iloc[-1] <= 2 * 16 * 12  # both processes' rollouts, counted once
    frame = pd.read_parquet(rows["samples_path"].iloc[-1])
    assert sorted(set(frame["prompt_id"])) == list(range(8)) and len(frame) == 16
    assert [p.name for p in ppo.checkpoint_dirs(tmp_path / "out")] == ["step-000001", "step-000002"]


@pytest.mark.parametrize("flags, message", [
    (["--beta", "-0.1"], "beta: -0.1 is negative; the KL coefficient must be ≥ 0"),
    (["--rollout-batch-size", "16", "--minibatch-size", "5"], "minibatch_size: 5 does not divide rollout_batch_size=16"),
    (["--proxy", "rm:/nonexistent/rm"], "proxy: /nonexistent/rm is not a bonrl reward model"),
    (["--policy", "/nonexistent/policy"], "policy: directory '/nonexistent/policy' does not exist"),
    # Found only once the weights are loaded: --quiet must keep transformers' loading bar off the error's line.
    (["--train-top-layers", "5"], "train_top_layers: 5 exceeds the model's 1 layers"),
    (["--second-proxy", REWARD], "second_proxy: it is the proxy itself, whose agreement with itself is 1"),
    (["--second-proxy", "rm:/nonexistent/rm"], "second-proxy: /nonexistent/rm is not a bonrl reward model"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(flags, message, toy_policy, tmp_path, loading_bars_on):
    base = ["ppo", "--policy", toy_policy, "--proxy", REWARD, "--gold", REWARD, "--steps", "2", "--device", "cpu",
            "--output", str(tmp_path / "out"), "--quiet"]
    result = runner.invoke(cli.app, base + flags)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonrl: error: {message}"), lines
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "results.sqlite").exists()


def test_non_finite_reward_stops_the_run_and_saves_the_batch(toy_policy, tmp_path):
    # No normalization: its reference samples would take the proxy's one finite call.
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", proxy=NAN_AFTER_FIRST, steps=3,
                    normalize_proxy=False)
    result = runner.invoke(cli.app, cli_args(args))
    assert result.exit_code == 1, result.output
    saved = tmp_path / "out" / "nonfinite-step-000001.parquet"
    assert str(saved) in result.output
    batch = pd.read_parquet(saved)
    assert len(batch) == 16 and batch["proxy"].isna().all() and batch["completion"].map(len).gt(0).any()
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.runs()["status"].tolist() == ["failed"]
    assert R.load(tmp_path / "results.sqlite")["step"].tolist() == [0]  # the step-0 evaluation was recorded


def tiny_args(tmp_path: Path, **overrides) -> dict:
    return ppo_args("tiny", tmp_path / "out", tmp_path / "results.sqlite", steps=1, eval_every=1, eval_prompts=2,
                    eval_samples_per_prompt=1, rollout_batch_size=4, minibatch_size=4, ppo_epochs=1,
                    max_new_tokens=4, learning_rate=1e-2, proxy=f"python:{Path(toy_rewards.__file__)}:vowel_fraction",
                    gold=f"python:{Path(toy_rewards.__file__)}:vowel_fraction", **overrides)


def test_train_top_layers_changes_only_the_top_blocks(tmp_path):
    # Also the optional reward shaping: whitened scores, the missing-EOS penalty, the adaptive β.
    _, _, metrics = run_ppo(**tiny_args(tmp_path, train_top_layers=1, whiten_rewards=True, missing_eos_penalty=1.0,
                                        adaptive_kl=True, target_kl=0.5, beta=0.1))
    (step,) = metrics
    # Whitened scores have mean 0 over the (first) batch; each completion without EOS then loses 1.
    assert step["reward/proxy_used"] == pytest.approx(-(1 - step["rollout/ended_frac"]), abs=1e-5)
    assert step["ppo/beta"] == 0.1 and step["ppo/beta_next"] < 0.1  # the first rollout's KL is 0 < target
    before = load_file(Path(models.resolve_model_path("tiny")) / "model.safetensors")
    after = load_file(tmp_path / "out" / "checkpoints" / "step-000001" / "policy" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed), changed
    assert any(name.startswith("model.layers.1.self_attn") for name in changed)
    assert not any(name.startswith(("model.layers.0.", "model.embed_tokens")) for name in changed)


def test_lora_trains_the_adapters_and_value_head_only(tmp_path):
    run_ppo(**tiny_args(tmp_path, lora_rank=4))
    checkpoint = tmp_path / "out" / "checkpoints" / "step-000001"
    adapter = load_file(checkpoint / "policy" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)  # initialised to zero, moved by training
    saved = torch.load(checkpoint / "trainer.pt", weights_only=False)
    trained = sum(len(group["params"]) for group in saved["optimizer"]["param_groups"])
    assert trained == len(adapter) + 2  # LoRA A and B of every adapted layer, and the value head's weight and bias
    assert saved["value_head"]["weight"].abs().max() > 0


def test_ppo_step_gives_gae_score_minus_beta_kl_and_no_value_past_a_completions_end(toy_policy, tmp_path,
                                                                                     monkeypatch):
    """How ppo_step builds GAE's inputs, checked against a computation of its own at step 2 (after one update,
    so π ≠ π_ref): each completion's rewards sum to score − β·Σ_t (log π(y_t) − log π_ref(y_t)), with both
    log-probs recomputed here by a plain forward pass and the score by the proxy function itself, and the
    values GAE bootstraps from are 0 past each completion's end (otherwise the last token would borrow the
    value of padding)."""
    seen: dict = {}
    step_fn, pack_fn, gae_fn, score_fn = ppo.ppo_step, ppo.pack_completions, ppo.gae, ppo.score_or_stop

    def ppo_step(cfg, step, accelerator, model, optimizer, tokenizer, reference, *args, **kwargs):
        seen.update(cfg=cfg, step=step, model=model, reference=reference, completions=None)
        return step_fn(cfg, step, accelerator, model, optimizer, tokenizer, reference, *args, **kwargs)

    def pack(*args, **kwargs):
        seen["batch"] = pack_fn(*args, **kwargs)
        return seen["batch"]

    def score(scorer, prompts, completions):
        if seen.get("completions") is None:  # the proxy is scored first
            seen["prompts"], seen["completions"] = list(prompts), list(completions)
        return score_fn(scorer, prompts, completions)

    def gae(rewards, values, mask, gamma, lam):
        if seen["step"] == 2:  # before this step's update: the model is the rollout's policy
            batch, temperature = seen["batch"], seen["cfg"].temperature
            lm = getattr(seen["model"], "module", seen["model"]).lm
            width = batch.completion_ids.shape[1]

            def logprobs(model):
                with torch.no_grad():
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids).logits.double()
                logits = logits[:, batch.prompt_width - 1:batch.prompt_width - 1 + width] / temperature
                picked = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids[..., None]).squeeze(-1)
                return picked * batch.completion_mask

            kl = (logprobs(lm) - logprobs(seen["reference"])).sum(1)
            proxy = torch.tensor(toy_rewards.good_fraction(seen["prompts"], seen["completions"]), dtype=torch.float64)
            seen.update(rewards=rewards.clone(), values=values.clone(), mask=mask.clone(), kl=kl, proxy=proxy)
        return gae_fn(rewards, values, mask, gamma, lam)

    # The toy policy with EOS made likelier (~4% a token instead of ~0.2%): a third of the completions end early.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy, tokenizer = AutoModelForCausalLM.from_pretrained(toy_policy), AutoTokenizer.from_pretrained(toy_policy)
    with torch.no_grad():
        policy.lm_head.weight[tokenizer.eos_token_id, 0] = 10.5 / policy.config.hidden_size**0.5
    policy.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    for name, fn in (("ppo_step", ppo_step), ("pack_completions", pack), ("score_or_stop", score), ("gae", gae)):
        monkeypatch.setattr(ppo, name, fn)
    beta = 0.5
    run_ppo(**ppo_args(str(tmp_path / "policy"), tmp_path / "out", tmp_path / "results.sqlite", steps=2, eval_every=2,
                       beta=beta,
                       normalize_proxy=False, ppo_epochs=1, eval_prompts=2, eval_samples_per_prompt=1))
    mask = seen["mask"]
    assert (mask.sum(1) < mask.shape[1]).any()  # some completions end early: there is a past-the-end to check
    assert seen["kl"].abs().max() > 0.05  # the policy moved: the sign of the KL penalty matters here
    expected = seen["proxy"] - beta * seen["kl"]
    np.testing.assert_allclose(seen["rewards"].double().sum(1).numpy(), expected.numpy(), atol=1e-3)
    assert torch.all(seen["values"][mask == 0] == 0) and torch.all(seen["rewards"][mask == 0] == 0)
    assert seen["values"][mask == 1].abs().max() > 0  # the value head was trained at step 1


def test_approx_kl_is_the_k3_estimate_over_each_minibatchs_tokens(toy_policy, tmp_path, monkeypatch):
    """ppo/approx_kl is documented as k3 = mean_t (r_t − 1) − log r_t, r_t = π_new/π_old per token (Schulman
    2020; CleanRL), averaged over minibatches: recomputed here from every minibatch's log-probs. Two epochs of
    two minibatches, so every minibatch after the first meets a moved policy (r ≠ 1)."""
    calls = []
    loss_fn = ppo.clipped_policy_loss

    def recording(new_logprobs, old_logprobs, advantages, mask, clip_range):
        calls.append((new_logprobs.detach().double(), old_logprobs.detach().double(), mask.double()))
        return loss_fn(new_logprobs, old_logprobs, advantages, mask, clip_range)

    monkeypatch.setattr(ppo, "clipped_policy_loss", recording)
    _, _, (step,) = run_ppo(**ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=1,
                                       eval_every=1, ppo_epochs=2, eval_prompts=2, eval_samples_per_prompt=1))
    assert len(calls) == 4
    k3, k1 = [], []
    for new, old, mask in calls:
        log_r = (new - old) * mask
        k3.append(float(((torch.exp(log_r) - 1 - log_r) * mask).sum() / mask.sum()))
        k1.append(float((-log_r * mask).sum() / mask.sum()))
    assert max(k3) > 1e-4  # the policy moved within the step: the estimators differ
    assert step["ppo/approx_kl"] == pytest.approx(np.mean(k3), rel=1e-4)
    assert step["ppo/approx_kl"] != pytest.approx(np.mean(k1), rel=1e-2)


def test_pack_completions_masks_by_token_count_not_pad_id():
    """SmolLM2's pad id is its EOS id: a completion's own EOS must stay in the mask."""
    eos = pad = 2
    batch = evaluate.pack_completions([[11, 12, 13], [14]], [[7, eos], [9, 8, eos]], [2, 3], pad, "cpu")
    assert batch.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.input_ids.tolist() == [[11, 12, 13, 7, eos, pad], [pad, pad, 14, 9, 8, eos]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.position_ids[1, 2:].tolist() == [0, 1, 2, 3]  # left padding: positions start at the prompt


def test_gae_reduces_to_returns_and_td_errors():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.0], [0.4, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # λ = 1: advantage = return-to-go − value; the value after the last token is 0.
    assert torch.allclose(returns, torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.5, 2.0, 0.0, 0.0]]))
    assert torch.allclose(advantages, returns - values * mask)
    td, _ = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert torch.allclose(td[0], torch.tensor([0.1, 0.1, 0.7, 0.0]))  # δ_t = r_t + V_{t+1} − V_t


def test_gae_at_gamma_and_lambda_below_one_is_the_discounted_sum_of_td_errors():
    """Schulman et al. 2016 eq. 16: A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V_{t+1} − V_t, V = 0 after the end;
    computed here term by term from the definition, for sequences of different lengths."""
    gamma, lam = 0.9, 0.7
    rng = np.random.default_rng(0)
    lengths = [5, 3, 1]
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=torch.float64)
    rewards = torch.tensor(rng.normal(size=(3, width))) * mask
    values = torch.tensor(rng.normal(size=(3, width))) * mask  # the caller zeroes values past the end
    advantages, returns = ppo.gae(rewards, values, mask, gamma, lam)
    for i, n in enumerate(lengths):
        r, v = rewards[i, :n].numpy(), np.append(values[i, :n].numpy(), 0.0)
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        expected = [sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) for t in range(n)]
        assert advantages[i, :n].numpy() == pytest.approx(expected, abs=1e-12)
        assert returns[i, :n].numpy() == pytest.approx(np.array(expected) + v[:n], abs=1e-12)
        assert advantages[i, n:].abs().sum() == 0 and returns[i, n:].abs().sum() == 0


def test_clipped_policy_loss_matches_a_hand_computed_example():
    """ε = 0.2. Tokens (advantage, ratio): (+2, 1.5) clipped to 1.2 → −2.4; (+2, 0.5) unclipped → −1.0;
    (−1, 1.5) unclipped (the pessimistic term) → +1.5; (−1, 0.5) clipped to 0.8 → +0.8; (+3, 1.1) → −3.3;
    a sixth token is masked out (its huge ratio must not count). Loss = mean of the five = −3.4/5."""
    ratio = torch.tensor([[1.5, 0.5, 1.5], [0.5, 1.1, 50.0]], dtype=torch.float64)
    old = torch.log(torch.tensor([[0.2, 0.4, 0.1], [0.3, 0.5, 0.01]], dtype=torch.float64))
    new = old + torch.log(ratio)
    advantages = torch.tensor([[2.0, 2.0, -1.0], [-1.0, 3.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]], dtype=torch.float64)
    pg = ppo.clipped_policy_loss(new, old, advantages, mask, clip_range=0.2)
    assert pg.loss.item() == pytest.approx((-2.4 - 1.0 + 1.5 + 0.8 - 3.3) / 5, abs=1e-12)
    assert (pg.clipped * mask).tolist() == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    assert pg.ratio[0].tolist() == pytest.approx([1.5, 0.5, 1.5])
    assert pg.ratio[1, 2].item() == 1.0 and pg.log_ratio[1, 2].item() == 0.0  # masked: ratio 1
    # The gradient flows only through unclipped tokens: d loss / d log π_new = −A r / 5 there, 0 where clipped.
    new.requires_grad_(True)
    ppo.clipped_policy_loss(new, old, advantages, mask, clip_range=0.2).loss.backward()
    expected = torch.tensor([[0.0, -2.0 * 0.5, 1.0 * 1.5], [0.0, -3.0 * 1.1, 0.0]], dtype=torch.float64) / 5
    assert torch.allclose(new.grad, expected, atol=1e-12)


def test_clipped_value_loss_matches_a_hand_computed_example():
    """c = 0.2. (V, V_old, R): (1.0, 0.5, 1.0): clipped V 0.7, errors 0 and 0.09 → 0.09 (clipped larger);
    (0.6, 0.5, 1.0): inside the clip, 0.16 both; (0.0, 0.5, 1.0): clipped V 0.3, errors 1.0 and 0.49 → 1.0;
    a masked token. Loss = ½ mean(0.09, 0.16, 1.0)."""
    values = torch.tensor([[1.0, 0.6], [0.0, 9.0]], dtype=torch.float64)
    old_values = torch.tensor([[0.5, 0.5], [0.5, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    loss, clipped = ppo.clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.09 + 0.16 + 1.0) / 3, abs=1e-12)
    assert (clipped * mask).tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_kl_penalty_rewards_put_the_score_on_the_last_token_and_minus_beta_kl_everywhere():
    kl_tokens = torch.tensor([[0.1, 0.2, 0.3, 0.0], [0.5, -0.4, 0.0, 0.0]])
    score, last, beta = torch.tensor([2.0, -1.0]), torch.tensor([2, 1]), 0.5
    rewards = ppo.kl_penalty_rewards(score, kl_tokens, last, beta)
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 2.0, 0.0], [-0.25, 0.2 - 1.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected, atol=1e-6)
    # Summed over a sequence: score − β·KL(sequence), the objective PPO maximizes.
    assert rewards.sum(1).tolist() == pytest.approx((score - beta * kl_tokens.sum(1)).tolist())


def test_masked_whiten_matches_numpy_on_the_masked_entries():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=(4, 6))
    mask = (rng.random((4, 6)) < 0.6).astype(float)
    out = ppo.masked_whiten(None, torch.tensor(x), torch.tensor(mask)).numpy()
    valid = x[mask == 1]
    expected = (valid - valid.mean()) / np.sqrt(valid.var() + 1e-8)  # population variance, as in the code
    assert out[mask == 1] == pytest.approx(expected, abs=1e-10)
    assert np.all(out[mask == 0] == 0)
    assert out[mask == 1].mean() == pytest.approx(0.0, abs=1e-12) and out[mask == 1].std() == pytest.approx(1.0, abs=1e-6)


def test_prompts_for_step_covers_every_prompt_exactly_once_per_pass():
    n_prompts, batch, seed = 7, 3, 11
    drawn = [i for step in range(1, 8) for i in ppo.prompts_for_step(n_prompts, step, batch, seed)]  # 3 passes
    passes = [drawn[k:k + n_prompts] for k in range(0, len(drawn), n_prompts)]
    assert all(sorted(p) == list(range(n_prompts)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1  # a fresh permutation per pass, not one order repeated
    assert ppo.prompts_for_step(n_prompts, 5, batch, seed) == drawn[12:15]  # the same step draws the same prompts


def test_adaptive_kl_controller_raises_beta_above_the_target_lowers_it_below_and_settles():
    """Ziegler et al. (2019) §2.2: β grows while KL > target, shrinks while KL < target, each update moves
    β by at most 20% × episodes/horizon; in a closed loop where the policy answers β with KL = c/β (a
    larger penalty, a smaller KL), β settles where KL hits the target, from above and from below."""
    target, horizon, episodes = 6.0, 1000, 100

    def after(kl: float) -> float:
        controller = ppo.KLController(beta=0.1, adaptive=True, target=target, horizon=horizon)
        controller.update(kl, episodes)
        return controller.beta

    assert after(9.0) > 0.1 > after(3.0) and after(6.0) == 0.1
    bound = 0.2 * episodes / horizon
    for kl in (1e-6, 0.1, 5.0, 7.0, 60.0, 1e6):
        assert abs(after(kl) / 0.1 - 1) <= bound + 1e-15
    assert after(1e6) == pytest.approx(0.1 * (1 + bound)) and after(0.0) == pytest.approx(0.1 * (1 - bound))
    c = 0.6  # KL = c / β: the target is met at β* = c / target = 0.1
    for start in (0.01, 1.0):
        controller = ppo.KLController(beta=start, adaptive=True, target=target, horizon=horizon)
        for _ in range(2000):
            controller.update(c / controller.beta, episodes)
        assert c / controller.beta == pytest.approx(target, rel=0.01)
    fixed = ppo.KLController(beta=0.1, adaptive=False, target=target, horizon=horizon)
    fixed.update(kl=100.0, episodes=1000)
    assert fixed.beta == 0.1


def test_running_moments_match_numpy():
    moments, data = ppo.RunningMoments(), np.random.default_rng(0).normal(3.0, 2.0, size=300)
    for chunk in np.split(data, [7, 100, 101]):
        moments.update(chunk)
    assert moments.mean == pytest.approx(data.mean()) and moments.std == pytest.approx(data.std(ddof=1))


def test_negative_kl_estimate_is_reported_loudly_not_clipped(tmp_path):
    """A reference that puts all its mass on the tokens actually sampled gives log π_ref = 0 > log π."""
    device = torch.device("cpu")
    policy, tokenizer = models.load_policy("tiny", device)

    class Oracle(torch.nn.Module):
        def forward(self, input_ids, logits_to_keep, **kwargs):
            logits = torch.full((*input_ids.shape, policy.config.vocab_size), -50.0)
            logits[:, :-1].scatter_(-1, input_ids[:, 1:, None], 50.0)  # position i predicts token i + 1
            return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()

    cfg = resolve(C.PPOConfig, {}, dict(proxy=REWARD, gold=REWARD, policy="tiny", eval_prompts=4,
                                          eval_samples_per_prompt=2, max_new_tokens=4, quiet=True))
    scorer = scorers.load_scorer(REWARD)
    with R.ResultsStore(tmp_path / "r.sqlite") as store:
        run_id = store.start_run("ppo", {}, 0)
        evaluator = evaluate.Evaluator(cfg, "ppo", tokenizer, Oracle(), scorer, scorer, tmp_path, store=store,
                                       run_id=run_id)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = evaluator.evaluate(policy, 0, 0, 0, 0.0)
    assert any("standard errors below 0" in str(w.message) for w in caught)
    assert row["kl_sampled"] < -10 and row["kl_negative"] == 1  # recorded as measured, flagged
    assert row["kl"] > 10  # the exact KL sees the oracle's point masses: it is large and positive, as it must be
    stored = R.load(tmp_path / "r.sqlite").iloc[0]
    assert stored["kl_sampled"] == pytest.approx(row["kl_sampled"]) and stored["kl_negative"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CUDA-less machine gives")
def test_cuda_asked_for_without_cuda_exits_2(tmp_path):
    result = runner.invoke(cli.app, ["ppo", "--policy", "tiny", "--proxy", REWARD, "--device", "cuda",
                                     "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--device cpu" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# The proxy's normalization, the learning-rate schedule, and one precision for best-of-n and RL.


def test_normalization_maps_scores_to_mean_zero_and_unit_population_std():
    scores = np.random.default_rng(3).normal(5.0, 0.3, size=50)
    gain, bias = ppo.normalization(scores)
    assert gain == pytest.approx(1 / np.sqrt(np.mean((scores - scores.mean()) ** 2)), rel=1e-12)
    assert bias == pytest.approx(-scores.mean() * gain, rel=1e-12)
    normalized = gain * scores + bias
    assert normalized.mean() == pytest.approx(0.0, abs=1e-12) and normalized.std() == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ConfigError, match=r"^normalize_proxy: the proxy gives all 4 reference samples the same "
                                            r"score \(0\.5\), .*; use --no-normalize-proxy$"):
        ppo.normalization(np.full(4, 0.5))


@pytest.fixture
def proxy_calls(monkeypatch):
    """Every (prompts, completions, scores) the proxy of a PPO run is asked for, in order (the gold is not
    recorded: load_scorer is wrapped for role='proxy' only)."""
    calls: list[tuple[list[str], list[str], np.ndarray]] = []
    load = scorers.load_scorer

    def load_recording(spec, *args, role=None, **kwargs):
        scorer = load(spec, *args, role=role, **kwargs)
        if role != "proxy":
            return scorer
        score_batch = scorer.score_batch

        def recording(prompts, completions):
            scores = score_batch(prompts, completions)
            calls.append((list(prompts), list(completions), np.asarray(scores, dtype=np.float64)))
            return scores

        scorer.score_batch = recording
        return scorer

    monkeypatch.setattr(scorers, "load_scorer", load_recording)
    return calls


def test_proxy_is_normalized_on_reference_samples_and_rows_carry_gain_bias_and_raw_beta(toy_policy, tmp_path,
                                                                                         proxy_calls):
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=1, eval_every=1, beta=0.3,
                    normalize_samples=24)
    _, rows, metrics = run_ppo(**args)
    # The first proxy call scores the normalization samples: one completion for each of 24 distinct train prompts.
    prompts, completions, scores = proxy_calls[0]
    from bon_vs_rl.measurement import prompts as prompt_sets

    train = prompt_sets.load_prompts("builtin", "train")
    assert len(completions) == 24 and len(set(prompts)) == 24 and set(prompts) <= set(train)
    gain, bias = 1 / scores.std(), -scores.mean() / scores.std()  # numpy's std: the population std
    for _, row in rows.iterrows():  # step 0 and step 1
        assert row["proxy_gain_norm"] == pytest.approx(gain, rel=1e-9)
        assert row["proxy_bias_norm"] == pytest.approx(bias, rel=1e-9)
        assert row["beta"] == 0.3 and row["beta_raw"] == pytest.approx(0.3 / gain, rel=1e-9)
    # The rollout's score is g·proxy + b; proxy_mean (rows) and reward/proxy (metrics) stay raw.
    (step,) = metrics
    assert step["reward/proxy_used"] == pytest.approx(gain * step["reward/proxy"] + bias, rel=1e-5)
    assert step["ppo/beta_raw"] == pytest.approx(0.3 / gain, rel=1e-9)
    frame = pd.read_parquet(rows["samples_path"].iloc[-1])
    assert rows["proxy_mean"].iloc[-1] == pytest.approx(frame["proxy"].mean()) and 0 <= frame["proxy"].min()
    state = json.loads((tmp_path / "out" / "checkpoints" / "step-000001" / "state.json").read_text())
    assert state["proxy_gain_norm"] == pytest.approx(gain, rel=1e-9)


def test_without_normalization_the_score_is_the_raw_proxy_and_whitening_records_its_raw_beta(toy_policy, tmp_path,
                                                                                              proxy_calls):
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=1, eval_every=1, beta=0.3,
                    normalize_proxy=False, whiten_rewards=True)
    _, rows, (step,) = run_ppo(**args)
    assert rows["proxy_gain_norm"].tolist() == [1.0, 1.0] and rows["proxy_bias_norm"].tolist() == [0.0, 0.0]
    # Whitening divides the score by the running std of the proxy (here: of the first rollout, the one proxy
    # call on train prompts; sample std, ddof 1), so β acts on the raw proxy as β·std. Before any rollout
    # there is no std: the step-0 row has no raw β.
    from bon_vs_rl.measurement import prompts as prompt_sets

    train = set(prompt_sets.load_prompts("builtin", "train"))
    (rollout,) = [scores for prompts, _, scores in proxy_calls if set(prompts) <= train]
    assert len(rollout) == 16 and rollout.std() > 0
    assert pd.isna(rows["beta_raw"].iloc[0])
    assert step["ppo/beta_raw"] == pytest.approx(0.3 * rollout.std(ddof=1), rel=1e-6)
    assert rows["beta_raw"].iloc[1] == pytest.approx(0.3 * rollout.std(ddof=1), rel=1e-6)
    assert step["reward/proxy_used"] == pytest.approx(0.0, abs=1e-5)  # whitened over this one batch


def test_a_proxy_with_no_spread_on_reference_samples_exits_2_before_any_file(toy_policy, tmp_path):
    constant = f"python:{Path(toy_rewards.__file__)}:constant_half"
    base = ["ppo", "--policy", toy_policy, "--proxy", constant, "--gold", REWARD, "--steps", "1", "--device", "cpu",
            "--normalize-samples", "8", "--output", str(tmp_path / "out"), "--results", str(tmp_path / "r.sqlite"),
            "--quiet"]
    result = runner.invoke(cli.app, base)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("bonrl: error: normalize_proxy: the proxy gives all 8 reference samples the same "
                                     "score (0.5), so it has no scale to normalize; use --no-normalize-proxy")
    assert not (tmp_path / "out").exists() and not (tmp_path / "r.sqlite").exists()


@pytest.mark.slow  # 6-10 s on an idle 2-core machine: keeps `make test` well under 3 minutes
def test_linear_lr_decay_follows_the_schedule_and_resume_continues_it_and_keeps_the_normalization(
        toy_policy, tmp_path, monkeypatch):
    """Step s trains at lr·(1 − (s−1)/steps). A run resumed from its step-2 checkpoint (the later one removed,
    as if killed) repeats steps 3-4 exactly — the schedule, the Adam moments and the proxy's gain and bias
    come back from the checkpoint rather than being recomputed."""
    lr, steps = 1e-2, 4
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=steps, eval_every=2,
                    learning_rate=lr, lr_schedule="linear", checkpoint_every=2, normalize_samples=16)
    run_id, rows, metrics = run_ppo(**args)
    expected = [lr * (1 - (s - 1) / steps) for s in range(1, steps + 1)]
    assert [m["ppo/learning_rate"] for m in metrics] == pytest.approx(expected, rel=1e-12)
    constant = run_ppo(**{**args, "lr_schedule": "constant", "output": str(tmp_path / "constant")})[2]
    assert [m["ppo/learning_rate"] for m in constant] == [lr] * steps

    import shutil

    shutil.rmtree(tmp_path / "out" / "checkpoints" / "step-000004")

    def recompute(*_, **__):
        raise AssertionError("a resumed run must keep its checkpoint's normalization, not recompute it")

    monkeypatch.setattr(ppo, "normalize_proxy", recompute)
    resumed_id, resumed_rows, resumed = run_ppo(**{**args, "resume": True})
    assert resumed_id == run_id
    assert [m["ppo/learning_rate"] for m in resumed] == pytest.approx(expected[2:], rel=1e-12)
    for key in ("reward/proxy", "objective/kl", "ppo/policy_loss", "ppo/beta_raw"):
        assert [m[key] for m in resumed] == [m[key] for m in metrics[2:]], key
    pd.testing.assert_frame_equal(resumed_rows[ROW_VALUES], rows[ROW_VALUES], check_exact=True)
    # A resumed linear schedule needs the run's own length.
    result = runner.invoke(cli.app, cli_args({**args, "resume": True, "steps": 8}))
    assert result.exit_code == 2
    assert "learning rate decays to 0 over steps=4; pass --steps 4" in result.output


def test_resume_refuses_a_change_of_normalization(toy_policy, tmp_path):
    args = ppo_args(toy_policy, tmp_path / "out", tmp_path / "results.sqlite", steps=1, normalize_samples=8)
    run_ppo(**args)
    result = runner.invoke(cli.app, cli_args({**args, "resume": True, "steps": 2, "normalize_proxy": False}))
    assert result.exit_code == 2
    assert "was trained with normalize_proxy=True, not False; pass the same value or drop --resume" in result.output


@pytest.mark.parametrize("precision, autocast", [("auto", False), ("bf16", True)])
def test_best_of_n_and_ppo_sample_one_initial_policy_at_one_precision(precision, autocast, tmp_path, monkeypatch):
    """Best-of-n's policy and RL's reference (and RL's initial policy) load fp32 weights and sample under the
    same autocast, so best-of-n and RL start from one distribution. On CPU, auto means plain fp32."""
    from bon_vs_rl.measurement import sampling

    loads, draws = [], []
    load_policy, generate = models.load_policy, sampling.generate

    def recording_load(spec, device, cache_dir=None, dtype=None, name="policy"):
        model, tokenizer = load_policy(spec, device, cache_dir, dtype, name)
        loads.append(next(model.parameters()).dtype)
        return model, tokenizer

    def recording_generate(model, *args, **kwargs):
        draws.append((next(model.parameters()).dtype, torch.is_autocast_enabled("cpu"),
                       torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
        return generate(model, *args, **kwargs)

    monkeypatch.setattr(models, "load_policy", recording_load)
    monkeypatch.setattr(sampling, "generate", recording_generate)
    result = runner.invoke(cli.app, ["sample", "--policy", "tiny", "--proxy", REWARD, "--gold", REWARD, "--n", "1,2",
                                     "--eval-prompts", "2", "--max-new-tokens", "3", "--device", "cpu", "--precision",
                                     precision, "--output", str(tmp_path / "bon"), "--quiet"])
    assert result.exit_code == 0, result.output
    bon_loads, bon_draws = loads[:], draws[:]
    loads.clear(), draws.clear()
    run_ppo(**tiny_args(tmp_path, precision=precision, normalize_samples=4))
    expected = (torch.float32, autocast, torch.bfloat16 if autocast else None)
    assert bon_loads == [torch.float32] and loads == [torch.float32, torch.float32]  # PPO: policy and reference
    assert set(bon_draws) == {expected}
    assert set(draws) == {expected}  # normalization (the reference), rollout and evaluations (the policy)
    assert len(draws) >= 3
