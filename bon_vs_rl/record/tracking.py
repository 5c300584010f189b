"""Experiment trackers for the long commands: `--log-with none | tensorboard | wandb | mlflow`.

The results table is the record every report reads; a tracker is an optional live view of the same
numbers while a run goes (train-rm's loss, PPO/RLOO/GRPO's per-step metrics, every evaluation's proxy,
gold and KL, best-of-n's curve with n as the step). One tracker run per bonrl run, named by its run id,
with the resolved config attached; files go under --output so that a run's logs sit beside its data
(for train-rm in OUTPUT-logs beside the reward model, whose directory is only written whole at the end):

    tensorboard   OUTPUT/tensorboard/RUN_ID/        (torch.utils.tensorboard; `tensorboard --logdir OUTPUT`)
    wandb         OUTPUT/wandb/                     (project = --experiment or "bonrl"; WANDB_MODE=offline
                                                     keeps it on disk, `wandb sync` uploads it later)
    mlflow        $MLFLOW_TRACKING_URI, else the file store OUTPUT/mlruns (experiment = --experiment or
                                                     "bonrl"; MLflow 3 wants MLFLOW_ALLOW_FILE_STORE=true for
                                                     a file store, which is set for it)

A resumed run (`--resume`) logs into the same tracker run where the tracker can continue one (wandb
by id, mlflow by the run's bonrl_run_id tag; tensorboard simply appends events to the same directory).
Only the main process of a multi-process run opens a tracker. A tracker that is not installed is bad
input, found before any work (`check`, called by the configs' validate()).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path

from bon_vs_rl.errors import ConfigError

KINDS = ("none", "tensorboard", "wandb", "mlflow")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check(log_with: str) -> None:
    """ConfigError unless `log_with` is a known tracker whose package is installed."""
    if log_with not in KINDS:
        raise ConfigError(f"log_with: {log_with!r} is not a tracker; use {', '.join(KINDS)}")
    package = PACKAGES.get(log_with)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"log_with: {log_with} is not installed; pip install 'bonrl[tracking]' (or {package}), "
                          "or use --log-with none")


def numeric(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics dict (trackers take scalars; NaN would break some plots)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "item"):
            continue
        value = float(value)
        if math.isfinite(value):
            out[str(key)] = value
    return out


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config as flat 'key.sub' -> text, for trackers whose parameters are strings (mlflow)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        elif value is not None:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


class NoTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class TensorBoardTracker:
    def __init__(self, output: Path, run_id: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output / "tensorboard" / run_id))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```")

    def log(self, metrics: dict, step: int) -> None:
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, output: Path, run_id: str, config: dict, command: str, experiment: str | None,
                 quiet: bool):
        import wandb

        output.mkdir(parents=True, exist_ok=True)
        # The bonrl run id is the wandb id, so a resumed run continues the same wandb run.
        self.run = wandb.init(project=experiment or "bonrl", name=run_id, id=re.sub(r"[^\w-]", "-", run_id),
                              dir=str(output), config=config, job_type=command, resume="allow",
                              reinit="finish_previous", settings=wandb.Settings(quiet=quiet, silent=quiet))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(numeric(metrics), step=step)

    def finish(self) -> None:
        import wandb

        self.run.finish()
        # run.finish() can return before wandb's service has written the run's last records: measured, 2
        # of 25 offline runs in one process had an empty history file right after it. teardown() waits
        # for the service to write everything and stops it (a later run starts a new one, ~1 s).
        wandb.teardown()


class MlflowTracker:
    # MLflow metric names allow letters, digits and _ - . / space; a proxy spec such as rm:runs/rm has more.
    BAD_CHARACTERS = re.compile(r"[^\w\-. /]")

    def __init__(self, output: Path, run_id: str, config: dict, command: str, experiment: str | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # A local file store needs no server and no database driver (mlflow-skinny has none); MLflow 3
            # keeps it in maintenance mode and refuses it unless this opt-in is set.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (output / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = experiment or "bonrl"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        previous = self.client.search_runs([experiment_id], filter_string=f"tags.bonrl_run_id = '{run_id}'")
        if previous:  # a resumed bonrl run continues its MLflow run
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            run = self.client.create_run(experiment_id, run_name=run_id,
                                         tags={"bonrl_run_id": run_id, "bonrl_command": command})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(config).items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(self.BAD_CHARACTERS.sub("_", k), v, now, step) for k, v in numeric(metrics).items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


def start(log_with: str, output: str | os.PathLike, run_id: str, config: dict, command: str,
          experiment: str | None = None, quiet: bool = False):
    """The tracker `log_with` names, opened for this run: `.log(metrics, step)` and `.finish()`."""
    check(log_with)
    output = Path(output)
    if log_with == "tensorboard":
        return TensorBoardTracker(output, run_id, config)
    if log_with == "wandb":
        return WandbTracker(output, run_id, config, command, experiment, quiet)
    if log_with == "mlflow":
        return MlflowTracker(output, run_id, config, command, experiment)
    return NoTracker()


def trainer_callback(tracker, prefix: str = "train/", step_offset: int = 0, main: bool = True):
    """A transformers TrainerCallback forwarding the Trainer's log dicts (loss, rewards, KL, ...) to
    `tracker` at the Trainer's global step (+ step_offset: an ensemble's members train one after another)."""
    from transformers import TrainerCallback

    class ForwardLogs(TrainerCallback):
        steps = 0  # the Trainer's last global step, once training ends

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and main and state.is_world_process_zero:
                tracker.log({prefix + key: value for key, value in logs.items()}, step_offset + state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            self.steps = state.global_step

    return ForwardLogs()


def eval_metrics(row: dict) -> dict[str, float]:
    """The shared evaluation's row (evaluate.Evaluator) as tracker metrics: eval/kl, eval/gold_mean, ..."""
    keys = ("kl", "kl_se", "proxy_mean", "proxy_se", "gold_mean", "gold_se", "length_mean")
    # ... and the gold-free warning signs of hacking (signal_*: measurement/hacking_signals.py), where finite.
    signs = {f"eval/{k}": float(v) for k, v in row.items() if k.startswith("signal_") and isinstance(v, float)
             and math.isfinite(v)}
    return {**{f"eval/{k}": row[k] for k in keys if row.get(k) is not None}, **signs}
