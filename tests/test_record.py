"""The record cannot lie: a results row always describes the files it points at, and every run, resume and
experiment is what it says (issue 24).

- A row is bound to its files by a content digest taken when the row is written; `bonrl report` and
  `bonrl results` verify it and leave out, with one note per run, a row whose file changed or vanished.
  `--overwrite` marks the replaced run superseded in the transaction that records the new run.
- Seeds pool only runs that are the same but for the seed, the proxy's own content included.
- `--resume` continues the same run or refuses, naming each option that differs (more --steps is allowed).
- One `bonrl experiment` per output folder at a time (an advisory lock the OS drops with the process).
- SIGINT stops a stage at once, also one started with SIGINT ignored (as a script's `cmd &` starts it).
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_experiment import STUDY, fake_stages  # noqa: F401
from test_ppo import cli_args, tiny_args
from test_report import bon_run, page, report, rl_run
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve
from bon_vs_rl.measurement import evaluate
from bon_vs_rl.record import results as R

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def runs_of(path) -> pd.DataFrame:
    with R.ResultsStore(path) as store:
        return store.runs().set_index("run_id")


def notes_naming(out: Path, run_id: str) -> list[str]:
    return [item for item in page(out).items if run_id in item]


# ----------------------------------------------------------------------------------------------
# 1. A row is bound to its files.


def test_overwrite_supersedes_the_replaced_run_and_the_report_never_reads_its_rows_from_the_new_files(tmp_path):
    """`ppo --output p` at β 0.05, then β 1 `--overwrite` into p: the first run's rows pointed at p's eval
    samples, which now hold the second run's. The first run is marked superseded (by the second) and is
    neither reported nor measured from the second run's files."""
    args = {**tiny_args(tmp_path), "steps": 2, "beta": 0.05}
    assert runner.invoke(cli.app, cli_args(args)).exit_code == 0
    second = runner.invoke(cli.app, cli_args({**args, "beta": 1.0, "overwrite": True}))
    assert second.exit_code == 0, second.output
    runs = runs_of(args["results"])
    first_id, second_id = runs.index.tolist()
    assert runs.loc[first_id, "superseded_by"] == second_id and pd.isna(runs.loc[second_id, "superseded_by"])

    out = report(Path(args["results"]))
    points = pd.read_csv(out / "points.csv")
    assert set(points["run_id"]) == {second_id} and set(points["beta"]) == {1.0}
    (note,) = notes_naming(out, first_id)
    assert "superseded by run " + second_id in note
    listed = runner.invoke(cli.app, ["results", "--results", args["results"]])
    (line,) = [line for line in listed.output.splitlines() if line.startswith(first_id)]
    assert "superseded" in line


def test_rows_whose_files_changed_or_vanished_are_left_out_with_one_note_per_run(tmp_path):
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    changed_run = rl_run(path, tmp_path, "rm:a", 0.05, seed=0, output="ppo-a")
    vanished_run = rl_run(path, tmp_path, "rm:a", 0.2, seed=0, output="ppo-b", kl_per_step=0.05)
    rows = R.load(path)
    changed = rows[(rows["run_id"] == changed_run) & (rows["step"].isin([10, 20]))]["samples_path"]
    for file in changed:  # rewritten by someone else: other numbers under the same name
        frame = pd.read_parquet(file)
        frame["gold"] += 1.0
        frame.to_parquet(file, index=False)
    Path(rows[(rows["run_id"] == vanished_run) & (rows["step"] == 15)]["samples_path"].item()).unlink()

    out = report(path)
    points = pd.read_csv(out / "points.csv")
    kept = {(r, s) for r, s in zip(points["run_id"], points["step"]) if r != "nan"}
    assert (changed_run, 10) not in kept and (changed_run, 20) not in kept and (vanished_run, 15) not in kept
    assert (changed_run, 5) in kept and (vanished_run, 20) in kept  # the rest of each run stays, with intervals
    assert points.loc[points["run_id"] == changed_run, "gold_gain_lo"].notna().all()
    (note,) = notes_naming(out, changed_run)
    assert "2 row(s)" in note and "changed since the row was written" in note
    (note,) = notes_naming(out, vanished_run)
    assert "1 row(s)" in note and "is gone" in note

    exported = runner.invoke(cli.app, ["results", "--results", str(path), "--export", str(tmp_path / "all.csv")])
    assert exported.exit_code == 0, exported.output
    assert len(pd.read_csv(tmp_path / "all.csv")) == len(rows) - 3
    assert changed_run in exported.stderr and vanished_run in exported.stderr


def test_a_row_is_written_with_the_digest_of_the_file_it_points_at(tmp_path):
    path = tmp_path / "r.sqlite"
    run = bon_run(path, tmp_path, "rm:a", seed=1)
    rows = R.load(path, run_id=run)
    import hashlib

    file = rows["samples_path"].iloc[0]
    assert set(rows["samples_digest"]) == {hashlib.sha256(Path(file).read_bytes()).hexdigest()}


# ----------------------------------------------------------------------------------------------
# 2. Seeds pool only runs that are the same but for the seed.


def test_two_seed_0_runs_of_one_setting_are_two_curves_not_two_seeds(tmp_path):
    path = tmp_path / "r.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    ids = [rl_run(path, tmp_path, "rm:a", 0.05, seed=0, output=f"ppo-{k}", setting="same") for k in (0, 1)]
    out = report(path)
    points = pd.read_csv(out / "points.csv")
    ppo = points[points["method"] == "ppo"]
    assert set(ppo["run_id"]) == set(ids) and ppo["curve"].nunique() == 2
    assert not ppo["curve"].str.contains("seeds").any()


def test_the_setting_holds_the_proxys_own_fingerprint(tmp_path):
    """Two runs against `rm:runs/rm-0` before and after rm-0 was retrained, or against a python: scorer whose
    file was edited, optimized different proxies: their settings differ, so they never pool as seeds."""
    rm = tmp_path / "rm-0"
    rm.mkdir()
    (rm / "bonrl_rm.json").write_text(json.dumps({"members": ["."], "run_id": "train-rm-1"}))
    scorer = tmp_path / "reward.py"
    scorer.write_text("def score(prompts, completions):\n    return [0.0] * len(completions)\n")
    settings = {}
    for proxy in (f"rm:{rm}", f"python:{scorer}:score"):
        cfg = resolve(C.PPOConfig, {}, {"proxy": proxy, "policy": "tiny", "output": str(tmp_path / "p")})
        before = evaluate.setting_id(cfg)
        assert evaluate.setting_id(cfg) == before  # a fingerprint, not a fresh draw
        settings[proxy] = before
    (rm / "bonrl_rm.json").write_text(json.dumps({"members": ["."], "run_id": "train-rm-2"}))  # retrained
    scorer.write_text("def score(prompts, completions):\n    return [1.0] * len(completions)\n")  # edited
    for proxy, before in settings.items():
        cfg = resolve(C.PPOConfig, {}, {"proxy": proxy, "policy": "tiny", "output": str(tmp_path / "p")})
        assert evaluate.setting_id(cfg) != before, proxy


# ----------------------------------------------------------------------------------------------
# 3. --resume continues the same run or refuses.


def test_resume_with_a_changed_option_exits_2_naming_each_option(tmp_path):
    args = {**tiny_args(tmp_path), "steps": 2}
    assert runner.invoke(cli.app, cli_args(args)).exit_code == 0
    saved = (Path(args["output"]) / "resolved_config.json").read_text()
    result = runner.invoke(cli.app, cli_args({**args, "resume": True, "beta": 0.7, "eval_every": 2}))
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("bonrl: error: resume:") and "--beta 0.7 (the run has 0.0)" in line
    assert "--eval-every 2 (the run has 1)" in line and "--steps" not in line
    assert (Path(args["output"]) / "resolved_config.json").read_text() == saved


def test_resume_with_more_steps_continues_the_run_and_records_its_new_length(tmp_path):
    args = {**tiny_args(tmp_path), "steps": 2}
    assert runner.invoke(cli.app, cli_args(args)).exit_code == 0
    resumed = runner.invoke(cli.app, cli_args({**args, "resume": True, "steps": 3, "quiet": False}))
    assert resumed.exit_code == 0, resumed.output
    assert "no checkpoint" not in resumed.output and "resuming run" in resumed.output
    rows = R.load(args["results"]).sort_values("step")
    assert rows["step"].tolist() == [0, 1, 2, 3] and rows["run_id"].nunique() == 1
    assert rows["setting"].nunique() == 1  # one run, one setting: its rows before the resume were restamped
    run_id = rows["run_id"].iloc[0]
    assert json.loads(runs_of(args["results"]).loc[run_id, "config_json"])["steps"] == 3
    assert json.loads((Path(args["output"]) / "resolved_config.json").read_text())["steps"] == 3
    points = pd.read_csv(report(Path(args["results"])) / "points.csv")
    assert points["step"].tolist() == [0, 1, 2, 3] and points["curve"].nunique() == 1


TOY = f"python:{REPO / 'tests' / 'toy_rewards.py'}:good_fraction"


@pytest.mark.parametrize("command", ["ppo", "rl", "dpo", "distill"])
def test_resume_with_nothing_to_resume_exits_2_before_any_work(command, tmp_path):
    cheap = {"ppo": ["--steps", "1", "--rollout-batch-size", "4", "--minibatch-size", "4"],
             "rl": ["--steps", "1", "--rollout-batch-size", "4", "--generations-per-prompt", "2"],
             "dpo": ["--pairs", "8", "--eval-pairs", "4", "--train-batch-size", "4"],
             "distill": ["--steps", "1", "--prompts-per-step", "2"]}[command]
    result = runner.invoke(cli.app, [command, "--policy", "tiny", "--proxy", TOY, "--gold", TOY, "--device", "cpu",
                                     "--output", str(tmp_path / "out"), "--resume", "--quiet", "--max-new-tokens", "2",
                                     "--eval-prompts", "2", "--eval-samples-per-prompt", "1", *cheap])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert line.startswith("bonrl: error: resume:") and "nothing to resume" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()


def test_rl_resume_of_a_finished_run_without_checkpoints_exits_2_and_keeps_it(toy_policy, tmp_path, one_torch_thread):
    from test_trl_rl import rl_args

    args = rl_args("rloo", toy_policy, tmp_path / "out", "--steps", "1")
    assert runner.invoke(cli.app, args).exit_code == 0
    before = R.load(tmp_path / "results.sqlite")
    result = runner.invoke(cli.app, [*args, "--resume"])
    assert result.exit_code == 2, result.output
    assert "nothing to resume" in result.output and "--checkpoint-every" in result.output
    after = R.load(tmp_path / "results.sqlite")
    assert after["run_id"].tolist() == before["run_id"].tolist() and set(after["run_status"]) == {"finished"}


# ----------------------------------------------------------------------------------------------
# 4. One experiment per folder at a time.

HOLDS_A_STAGE = """
import sys
from bon_vs_rl import cli, experiment

def blocking_stage(cfg):
    print("running", flush=True)
    sys.stdin.read()  # until killed

experiment.STAGES["rm"] = (experiment.STAGES["rm"][0], "__main__:blocking_stage")
cli.app(sys.argv[1:], prog_name="bonrl")
"""


def test_a_second_experiment_on_a_busy_folder_exits_2_naming_the_pid_and_a_killed_one_frees_it(fake_stages,  # noqa: F811
                                                                                                tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    with open(tmp_path / "child.txt", "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", HOLDS_A_STAGE, "experiment", str(study), "--quiet"],
                                 cwd=tmp_path, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert child.stdout.readline() == b"running\n", (tmp_path / "child.txt").read_text()
            second = runner.invoke(cli.app, ["experiment", str(study), "--quiet"])
            assert second.exit_code == 2, second.output
            (line,) = [line for line in second.output.splitlines() if line.strip()]
            assert line.startswith("bonrl: error: output:") and f"pid {child.pid}" in line
            assert fake_stages == []  # nothing ran
        finally:
            child.kill()
            child.communicate()
    third = runner.invoke(cli.app, ["experiment", str(study), "--quiet"])  # the OS dropped the dead one's lock
    assert third.exit_code == 0, third.output
    assert fake_stages[:2] == ["rm-0", "rm-1"]


# ----------------------------------------------------------------------------------------------
# 5. SIGINT stops a stage at once.

TELLS_EACH_STEP = """
import sys
from transformers import TrainerCallback
from bon_vs_rl import cli
from bon_vs_rl.methods import reward_model

class Tell(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        print(f"step {state.global_step}/{state.max_steps}", flush=True)

train_member = reward_model.train_member

def telling(*args, **kwargs):
    args = list(args)
    if len(args) >= 10:
        args[9] = (*args[9], Tell())
    else:
        kwargs["callbacks"] = (*kwargs.get("callbacks", ()), Tell())
    return train_member(*args, **kwargs)

reward_model.train_member = telling
cli.app(sys.argv[1:], prog_name="bonrl")
"""


WORKS_IN_A_STAGE = """
import sys
from bon_vs_rl import cli, experiment

def working_stage(cfg):
    print("running", flush=True)
    total = 0
    for i in range(10**8):  # seconds of work, interruptible at any point
        total += i
    print("finished", flush=True)
    raise SystemExit(3)

experiment.STAGES["rm"] = (experiment.STAGES["rm"][0], "__main__:working_stage")
cli.app(sys.argv[1:], prog_name="bonrl")
"""


def test_sigint_stops_an_experiment_started_with_sigint_ignored_and_it_resumes(fake_stages, tmp_path):  # noqa: F811
    """A script's `bonrl experiment ... &` starts it with SIGINT ignored; SIGINT stops it all the same, in the
    middle of a stage's work: exit 130, the one 'interrupted' line, no marker; the next run starts there."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        child = subprocess.Popen([sys.executable, "-c", WORKS_IN_A_STAGE, "experiment", str(study), "--quiet"],
                                 cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=stderr,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        assert child.stdout.readline() == b"running\n", (tmp_path / "stderr.txt").read_text()
        child.send_signal(signal.SIGINT)
        rest = child.stdout.read()
        child.wait()
    assert child.returncode == 130 and rest == b""
    lines = (tmp_path / "stderr.txt").read_text().strip().splitlines()
    assert lines[-2:] == ["stage rm-0 was interrupted; the stages before it are kept: run the same command again to "
                          "resume from it", "bonrl: error: interrupted"]
    assert not (tmp_path / "out" / "rm-0" / ".bonrl-stage.json").exists()
    resumed = runner.invoke(cli.app, ["experiment", str(study), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert fake_stages[0] == "rm-0" and (tmp_path / "out" / "rm-0" / ".bonrl-stage.json").is_file()


@pytest.mark.slow  # 30-60 s on the shared 2-core machine: a real experiment process, its RM training, and a rerun
def test_sigint_during_reward_model_training_stops_the_experiment_at_once_and_it_resumes(tmp_path):
    """Started the way a script's `bonrl experiment ... &` starts it (SIGINT ignored on entry), interrupted
    at RM training step 2 of 40: exit 130 with the one 'interrupted' line, no step after the signal, no
    reward model nor temporary directory left, the run recorded as failed; the same command then completes."""
    study = {"name": "sigint", "output": "out", "device": "cpu", "eval_prompts": 4,
             "common": {"policy": "tiny", "gold": "vader", "max_prompt_tokens": 16, "max_new_tokens": 4},
             "train_rm": [{"backbone": "tiny", "pairs": 80, "eval_pairs": 8, "train_batch_size": 2,
                           "max_length": 24, "learning_rate": 1.0e-3}],
             "sample": {"n": "1,2"}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    command = [sys.executable, "-c", TELLS_EACH_STEP, "experiment", "study.yaml", "--quiet"]
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        child = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=stderr,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        first = [child.stdout.readline().decode().strip() for _ in range(2)]
        child.send_signal(signal.SIGINT)
        after = child.stdout.read().decode().split()
        child.wait()
    assert first == ["step 1/40", "step 2/40"], (tmp_path / "stderr.txt").read_text()[-2000:]
    assert child.returncode == 130 and after == []
    lines = (tmp_path / "stderr.txt").read_text().strip().splitlines()
    assert lines[-1] == "bonrl: error: interrupted"
    rm = tmp_path / "out" / "rm-0"
    assert not rm.exists() and not list((tmp_path / "out").glob(".rm-0*"))
    runs = runs_of(tmp_path / "out" / "results.sqlite")
    assert runs["status"].tolist() == ["failed"] and runs["error"].tolist() == ["KeyboardInterrupt"]

    resumed = runner.invoke(cli.app, ["experiment", str(tmp_path / "study.yaml"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert (rm / "bonrl_rm.json").is_file() and (rm / ".bonrl-stage.json").is_file()


def test_the_scaling_view_never_describes_a_proxy_by_a_checkpoint_retrained_after_its_curves(tmp_path):
    """Best-of-n rows record which proxy model they were measured with (proxy_fingerprint). Retrained into the
    same directory, rm-0 is another model: the scaling view no longer takes its size and accuracy from it."""
    from bon_vs_rl.measurement import scorers
    from bon_vs_rl.report import scaling

    rm = tmp_path / "rm-0"
    rm.mkdir()
    metadata = {"members": ["."], "train_pairs": 500, "backbone": "minilm", "config": {"pairs": 500},
                "parameters": {"total": 1000, "non_embedding": 800}, "evaluation": {"accuracy": 0.6},
                "run_id": "train-rm-1"}
    (rm / scorers.RM_METADATA).write_text(json.dumps(metadata))
    spec = f"rm:{rm}"
    rows = pd.DataFrame({"method": ["bon"], "proxy": [spec], "proxy_fingerprint": [scorers.spec_fingerprint(spec)]})
    recorded = scaling.recorded_fingerprints(rows, spec)
    assert scaling.describe(spec, rows.iloc[0:0], recorded).pairs == 500
    (rm / scorers.RM_METADATA).write_text(json.dumps({**metadata, "train_pairs": 125, "run_id": "train-rm-2"}))
    retrained = scaling.describe(spec, rows.iloc[0:0], recorded)
    assert not retrained.sized and "changed after the curves were measured" in retrained.source
