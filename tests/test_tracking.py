"""--log-with: each tracker, offline, writes the metrics it is given where its own tools read them.

The end-to-end tests of the commands (test_ppo, test_trl_rl, test_best_of_n, test_reward_model) check
that each command's metrics reach a tracker; these check the trackers themselves, including that a
resumed bonrl run continues its tracker run rather than starting another.
"""

import importlib.util

import pytest
import tracker_files

from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.record import tracking

RUN_ID = "ppo-20260101T000000-abc123"


@pytest.fixture(autouse=True)
def offline_trackers(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network; `wandb sync` would upload later
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def log_two_steps(kind: str, output, run_id: str = RUN_ID, first_step: int = 1) -> None:
    tracker = tracking.start(kind, output, run_id, {"beta": 0.1, "nested": {"n": [1, 2]}}, "ppo", quiet=True)
    tracker.log({"reward/proxy": 0.5, "bon/rm:runs/rm/gold_mean": 0.25, "note": "text", "nan": float("nan")},
                first_step)
    tracker.log({"reward/proxy": 0.75}, first_step + 1)
    tracker.finish()


def test_tensorboard_writes_scalars_at_their_steps(tmp_path):
    log_two_steps("tensorboard", tmp_path)
    scalars = tracker_files.tensorboard_scalars(tmp_path / "tensorboard" / RUN_ID)
    assert scalars["reward/proxy"] == [(1, 0.5), (2, 0.75)]
    assert scalars["bon/rm:runs/rm/gold_mean"] == [(1, 0.25)]
    assert "note" not in scalars and "nan" not in scalars  # text and non-finite values are not scalars


def test_wandb_offline_run_holds_the_history(tmp_path):
    log_two_steps("wandb", tmp_path)
    history = tracker_files.wandb_history(tmp_path / "wandb")
    assert [(row["_step"], row["reward/proxy"]) for row in history] == [(1, 0.5), (2, 0.75)]
    assert history[0]["bon/rm:runs/rm/gold_mean"] == 0.25


@pytest.mark.slow  # ~7 s: twenty wandb runs, each starting and stopping wandb's service
def test_every_wandb_run_is_on_disk_when_finish_returns(tmp_path):
    """Regression: run.finish() alone returned before wandb's service had written the last records — 2 of 25
    runs in one process had an empty history (and CI failed on it once); the tracker now waits for it."""
    for i in range(20):
        log_two_steps("wandb", tmp_path / str(i), run_id=f"{RUN_ID}-{i}")
        history = tracker_files.wandb_history(tmp_path / str(i) / "wandb")
        assert [(row["_step"], row["reward/proxy"]) for row in history] == [(1, 0.5), (2, 0.75)], i


def test_mlflow_file_store_holds_metrics_and_a_resumed_run_continues_it(tmp_path):
    log_two_steps("mlflow", tmp_path)
    log_two_steps("mlflow", tmp_path, first_step=3)  # the same bonrl run, resumed
    metrics = tracker_files.mlflow_metrics(tmp_path)
    assert metrics["reward/proxy"] == [(1, 0.5), (2, 0.75), (3, 0.5), (4, 0.75)]  # one MLflow run
    assert metrics["bon/rm_runs/rm/gold_mean"] == [(1, 0.25), (3, 0.25)]  # ':' is not allowed in MLflow names
    runs = [p for p in (tmp_path / "mlruns").glob("*/*") if (p / "tags" / "bonrl_run_id").exists()]
    assert len(runs) == 1 and (runs[0] / "tags" / "bonrl_run_id").read_text() == RUN_ID
    assert (runs[0] / "params" / "nested.n").read_text() == "[1, 2]"


def test_unknown_or_missing_tracker_is_bad_input(monkeypatch):
    with pytest.raises(ConfigError, match="^log_with: 'comet' is not a tracker"):
        tracking.check("comet")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"log_with: wandb is not installed; pip install 'bonrl\[tracking\]'"):
        tracking.check("wandb")
    with pytest.raises(ConfigError, match="log_with: wandb is not installed"):
        resolve(C.PPOConfig, {}, {"proxy": "rm:x", "log_with": "wandb"})  # found before any work
