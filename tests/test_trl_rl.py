"""`bonrl rl --algo rloo|grpo`: TRL's trainers with the proxy as reward, evaluated like PPO and best-of-n.

Smoke runs on the toy six-word policy (tests/toy_gold.py) with the "good"-fraction reward: two optimizer
steps each must write the shared evaluation's rows (steps 0, 1, 2) and samples, and save the policy.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_rewards
import tracker_files
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.methods import trl_rl
from bon_vs_rl.record import results as R

runner = CliRunner()
REWARD = f"python:{Path(toy_rewards.__file__)}:good_fraction"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rl_args(algo: str, policy: str, output: Path, *extra: str) -> list[str]:
    return ["rl", "--algo", algo, "--policy", policy, "--proxy", REWARD, "--gold", REWARD, "--steps", "2",
            "--eval-every", "1", "--rollout-batch-size", "8", "--generations-per-prompt", "4", "--max-new-tokens", "8",
            "--learning-rate", "1e-2", "--beta", "0.1", "--eval-prompts", "4", "--eval-samples-per-prompt", "2",
            "--device", "cpu", "--output", str(output), "--quiet", *extra]


@pytest.fixture(autouse=True)
def offline_trackers(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def trainers(monkeypatch):
    """Every TRL trainer a run builds, recorded (its β is what TRL's loss uses)."""
    import trl

    built = []
    for name in ("RLOOTrainer", "GRPOTrainer"):
        base = getattr(trl, name)
        recording = type(name, (base,), {"__init__": lambda self, *a, _base=base, **k: (_base.__init__(self, *a, **k),
                                                                                         built.append(self))[0]})
        monkeypatch.setattr(trl, name, recording)
    return built


@pytest.mark.parametrize(("algo", "tracker"), [("rloo", "wandb"), ("grpo", "mlflow")])
def test_trl_trainer_writes_the_shared_evaluation_rows(algo, tracker, toy_policy, tmp_path, loading_bars_on, trainers):
    result = runner.invoke(cli.app, rl_args(algo, toy_policy, tmp_path / "out", "--log-with", tracker))
    assert result.exit_code == 0, result.output
    # --beta reaches TRL's trainer (its KL coefficient), not only our rows.
    (trainer,) = trainers
    assert type(trainer).__name__ == ("RLOOTrainer" if algo == "rloo" else "GRPOTrainer")
    assert trainer.args.beta == 0.1 and trainer.beta == 0.1
    assert "Loading weights" not in result.output  # --quiet: no per-load bars from transformers
    rows = R.load(tmp_path / "results.sqlite").sort_values("step").reset_index(drop=True)
    assert rows["method"].tolist() == [algo] * 3 and rows["step"].tolist() == [0, 1, 2]
    assert set(rows["run_status"]) == {"finished"} and (rows["beta"] == 0.1).all()
    assert abs(rows["kl"].iloc[0]) <= 3 * rows["kl_se"].iloc[0] + 1e-9  # step 0: the reference itself
    assert rows["kl"].iloc[-1] > 0 and np.isfinite(rows[["proxy_mean", "gold_mean", "kl_se"]].to_numpy()).all()
    assert rows["trained_tokens"].tolist()[0] == 0 and rows["trained_tokens"].iloc[-1] > 0
    assert rows["generated_tokens"].is_monotonic_increasing
    # 2 steps of 8 completions of at most 8 tokens were trained on, and 3 evaluations of 8 samples generated
    assert rows["trained_tokens"].iloc[-1] <= 2 * 8 * 8
    assert rows["generated_tokens"].iloc[-1] == rows["trained_tokens"].iloc[-1] + rows["length_mean"].mul(8).sum()
    frame = pd.read_parquet(rows["samples_path"].iloc[-1])
    assert len(frame) == 8 and {"proxy", "gold", "kl", "completion"} <= set(frame)
    assert (tmp_path / "out" / "policy" / "config.json").exists()
    assert "{'loss'" not in result.output  # --quiet: TRL's log dicts are not printed

    # --log-with: TRL's per-step logs and every evaluation reach the tracker, at their steps.
    if tracker == "wandb":
        history = tracker_files.wandb_history(tmp_path / "out" / "wandb")
        logged = {(row["_step"], key): value for row in history for key, value in row.items()}
    else:
        logged = {(step, key): value for key, points in tracker_files.mlflow_metrics(tmp_path / "out").items()
                  for step, value in points}
    for step in (0, 1, 2):
        assert logged[(step, "eval/gold_mean")] == pytest.approx(rows["gold_mean"].iloc[step])
    assert {(1, "train/loss"), (2, "train/loss")} <= set(logged)


def test_trls_reward_is_the_proxy_itself_in_order(tmp_path):
    """TRL maximizes what the reward function returns: the proxy's scores, unchanged (a sign flip here would
    train the policy away from the proxy), and the completion tokens counted."""
    from bon_vs_rl.measurement import scorers

    proxy = scorers.load_scorer(REWARD, "cpu", role="proxy")
    counter = trl_rl.TokenCounter()
    reward = trl_rl.make_reward_function(proxy, counter, tmp_path)
    completions = [" good good bad", " bad", " good the"]
    assert reward(["p"] * 3, completions, completion_ids=[[1, 2, 3], [4], [5, 6]]) == pytest.approx(
        toy_rewards.good_fraction(None, completions))
    assert toy_rewards.good_fraction(None, completions) == pytest.approx([2 / 3, 0.0, 0.5])
    assert counter.tokens == 6 and counter.batches == 1


@pytest.mark.slow  # ~20-35 s: six RLOO steps of 16 completions on the toy policy
def test_rloo_raises_the_proxy_on_the_toy_task(toy_policy, tmp_path):
    """The end-to-end check of the reward's sign: RLOO against the "good" fraction must raise it (0.16 at step 0,
    0.34 at step 6 at this seed; a negated reward drives it towards 0)."""
    args = rl_args("rloo", toy_policy, tmp_path / "out", "--steps", "6", "--eval-every", "6", "--beta", "0",
                   "--rollout-batch-size", "16", "--learning-rate", "2e-2", "--eval-prompts", "8",
                   "--eval-samples-per-prompt", "4")
    assert runner.invoke(cli.app, args).exit_code == 0
    rows = R.load(tmp_path / "results.sqlite").sort_values("step")
    start, end = rows.iloc[0], rows.iloc[-1]
    assert end["proxy_mean"] - start["proxy_mean"] > 2 * np.hypot(start["proxy_se"], end["proxy_se"]), rows


@pytest.mark.slow  # 4-6 s each: with the others marked so, `make test` keeps a 2x margin on 3 min
def test_rl_resumes_from_its_last_checkpoint_into_the_same_run(toy_policy, tmp_path, monkeypatch):
    """A run that dies after its step-2 checkpoint continues there with --resume: one run, every step once."""
    args = rl_args("rloo", toy_policy, tmp_path / "out", "--steps", "4", "--checkpoint-every", "2")
    evaluated = []

    class DiesAtStep3(trl_rl.Evaluator):
        def evaluate(self, policy, step, *rest, **kwargs):
            evaluated.append(step)
            if step == 3 and len(evaluated) == 4:  # the first time only: the run dies mid-way
                raise RuntimeError("killed")
            return super().evaluate(policy, step, *rest, **kwargs)

    monkeypatch.setattr(trl_rl, "Evaluator", DiesAtStep3)
    died = runner.invoke(cli.app, args)
    assert died.exit_code == 1 and "killed" in died.output
    refused = runner.invoke(cli.app, args)  # neither --resume nor --overwrite: the first run's files stay
    assert refused.exit_code == 2 and "already holds run" in refused.output and "--resume" in refused.output

    resumed = runner.invoke(cli.app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert evaluated == [0, 1, 2, 3, 3, 4]  # after the restart, only the steps past the checkpoint
    rows = R.load(tmp_path / "results.sqlite").sort_values("step")
    assert rows["step"].tolist() == [0, 1, 2, 3, 4] and rows["run_id"].nunique() == 1
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.runs()["status"].tolist() == ["finished"]
    # The token counters came back from the checkpoint: trained tokens grow by one step's worth at most.
    trained = rows["trained_tokens"].tolist()
    assert trained[0] == 0 and all(0 < b - a <= 8 * 8 for a, b in zip(trained, trained[1:]))


@pytest.mark.slow
def test_a_resumed_rl_run_ends_as_an_uninterrupted_one(toy_policy, tmp_path, monkeypatch):
    """TRL's checkpoint restores weights, optimizer, scheduler and RNG states, and ours the token counters:
    the rows are equal, not merely close (~20 s: three runs)."""
    args = rl_args("rloo", toy_policy, tmp_path / "full", "--steps", "4", "--checkpoint-every", "2")
    assert runner.invoke(cli.app, [*args, "--results", str(tmp_path / "full.sqlite")]).exit_code == 0
    args = rl_args("rloo", toy_policy, tmp_path / "out", "--steps", "4", "--checkpoint-every", "2")

    class DiesAtStep3(trl_rl.Evaluator):
        def evaluate(self, policy, step, *rest, **kwargs):
            if step == 3:
                raise RuntimeError("killed")
            return super().evaluate(policy, step, *rest, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(trl_rl, "Evaluator", DiesAtStep3)
        assert runner.invoke(cli.app, args).exit_code == 1
    assert runner.invoke(cli.app, [*args, "--resume"]).exit_code == 0
    columns = ["step", "kl", "kl_se", "proxy_mean", "gold_mean", "length_mean", "generated_tokens", "trained_tokens"]
    full = R.load(tmp_path / "full.sqlite").sort_values("step").reset_index(drop=True)
    resumed = R.load(tmp_path / "results.sqlite").sort_values("step").reset_index(drop=True)
    pd.testing.assert_frame_equal(resumed[columns], full[columns], check_exact=True)


def test_quiet_rl_prints_nothing_but_errors(toy_policy, tmp_path, capfd, loud_libraries):
    """TRL's trainer set-up warns (FutureWarning) and transformers draws load/save bars; --quiet hides them."""
    result = runner.invoke(cli.app, rl_args("rloo", toy_policy, tmp_path / "out", "--steps", "1"))
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and result.stdout == ""
    assert capfd.readouterr().err == ""
    assert [str(w.message) for w in loud_libraries] == []


@pytest.mark.parametrize("flags, message", [
    (["--algo", "ppo"], "algo: 'ppo'; use rloo or grpo"),
    (["--generations-per-prompt", "1"], "generations_per_prompt: must be ≥ 2"),
    (["--rollout-batch-size", "6"], "rollout_batch_size: must be a multiple of generations_per_prompt"),
    (["--beta", "-1"], "beta: -1.0 is negative; the KL coefficient must be ≥ 0"),
    (["--proxy", "rm:/nonexistent/rm"], "proxy: /nonexistent/rm is not a bonrl reward model"),
])
def test_bad_input_exits_2_with_one_line_before_any_work(flags, message, toy_policy, tmp_path):
    result = runner.invoke(cli.app, rl_args("rloo", toy_policy, tmp_path / "out") + flags)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonrl: error: {message}"), lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()
