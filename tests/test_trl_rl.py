"""`bonrl rl --algo rloo|grpo`: TRL's trainers with the proxy as reward, evaluated like PPO and best-of-n.

Smoke runs on the toy six-word policy (tests/toy_gold.py) with the "good"-fraction reward: two optimizer
steps each must write the shared evaluation's rows (steps 0, 1, 2) and samples, and save the policy.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import toy_rewards
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl import results as R

runner = CliRunner()
REWARD = f"python:{Path(toy_rewards.__file__)}:good_fraction"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rl_args(algo: str, policy: str, output: Path, *extra: str) -> list[str]:
    return ["rl", "--algo", algo, "--policy", policy, "--proxy", REWARD, "--gold", REWARD, "--steps", "2",
            "--eval-every", "1", "--rollout-batch-size", "8", "--generations-per-prompt", "4", "--max-new-tokens", "8",
            "--learning-rate", "1e-2", "--beta", "0.1", "--eval-prompts", "4", "--eval-samples-per-prompt", "2",
            "--device", "cpu", "--output", str(output), "--quiet", *extra]


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_trl_trainer_writes_the_shared_evaluation_rows(algo, toy_policy, tmp_path, loading_bars_on):
    result = runner.invoke(cli.app, rl_args(algo, toy_policy, tmp_path / "out"))
    assert result.exit_code == 0, result.output
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
