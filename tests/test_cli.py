"""The command line: --help imports no ML stack, --version, help on every option, precedence and exit codes."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from bon_vs_rl import __version__, cli
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import config_fields

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


# What makes `bonrl --help` slow is importing the ML stack (torch alone is seconds on a cold disk), so the
# test checks what `--help` imports, not how long it takes on whatever machine runs the test.
HELP = """
import json, sys
from bon_vs_rl.cli import app
try:
    app(sys.argv[1:], prog_name="bonrl")
except SystemExit as exc:
    code = exc.code
heavy = [m for m in ("torch", "transformers", "trl", "accelerate", "datasets", "pandas", "matplotlib")
         if m in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [[], ["sample"], ["ppo"], ["experiment"], ["report"]])
def test_help_imports_no_torch_or_transformers(command):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", HELP, *command, "--help"], capture_output=True, text=True,
                         env=env, check=True)
    assert json.loads(out.stderr.strip().splitlines()[-1]) == {"code": 0, "heavy": []}
    assert "Usage: bonrl" in out.stdout and "--help" in out.stdout


def test_version():
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize(
    ("command", "config_class"),
    [("train-rm", C.TrainRMConfig), ("sample", C.SampleConfig), ("ppo", C.PPOConfig),
     ("rl", C.RLConfig), ("report", C.ReportConfig), ("lab", C.LabConfig)],
)
def test_every_config_field_is_an_option_with_help(command, config_class):
    click_command = typer.main.get_command(cli.app).commands[command]
    options = {p.name: p for p in click_command.params}
    for field in config_fields(config_class):
        if field.type in ("dict", dict):
            continue
        assert field.name in options, f"{command}: --{field.name} missing"
        assert options[field.name].help and field.metadata["help"] in options[field.name].help


def _capture_stage(monkeypatch):
    seen = {}

    def fake_run_stage(runner_name, cfg):
        seen["cfg"] = cfg

    monkeypatch.setattr(cli, "run_stage", fake_run_stage)
    return seen


def test_cli_flag_beats_yaml_beats_default(tmp_path, monkeypatch):
    seen = _capture_stage(monkeypatch)
    preset = tmp_path / "p.yaml"
    preset.write_text("seed: 3\nmax_new_tokens: 9\nproxy: [rm:a]\n")
    result = runner.invoke(cli.app, ["sample", "--config", str(preset), "--seed", "5", "--proxy", "rm:b"])
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.seed, cfg.max_new_tokens, cfg.proxy, cfg.top_k) == (5, 9, ["rm:b"], 0)


def test_bool_flags_can_switch_a_yaml_true_off(tmp_path, monkeypatch):
    seen = _capture_stage(monkeypatch)
    preset = tmp_path / "p.yaml"
    preset.write_text("quiet: true\nproxy: rm:a\n")
    assert runner.invoke(cli.app, ["sample", "--config", str(preset), "--no-quiet"]).exit_code == 0
    assert seen["cfg"].quiet is False


def test_bad_input_exits_2_with_one_line(monkeypatch):
    seen = _capture_stage(monkeypatch)
    result = runner.invoke(cli.app, ["sample", "--proxy", "rm:x", "--n", "0,4"])
    assert result.exit_code == 2
    assert "cfg" not in seen
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["bonrl: error: n: 0 is not positive; every n must be ≥ 1, e.g. --n 1,2,4"]


def test_failure_during_work_exits_1_with_its_first_line(monkeypatch, capsys):
    def broken(cfg):
        raise RuntimeError("disk on fire\nsecond line")

    module = type(sys)("fake_stage")
    module.go = broken
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    monkeypatch.delenv("BONRL_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as info:  # typer.Exit carries only the code; the message is on stderr
        cli.run_stage("fake_stage:go", None)
    assert info.value.exit_code == 1
    assert capsys.readouterr().err.splitlines() == [
        "bonrl: error: RuntimeError: disk on fire (set BONRL_DEBUG=1 for the traceback)"]


def readme_launch_commands() -> list[list[str]]:
    """The multi-process commands of the README, split as a shell would."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    return [shlex.split(line) for line in readme.splitlines() if line.startswith(("torchrun ", "accelerate launch "))]


def test_readme_multi_process_commands_parse_as_written(monkeypatch, capsys):
    """Each README launch command goes through its launcher's own parser, then through bonrl's (which
    resolves the config: every option exists and every value is valid). Regression: torchrun refused
    `-m bon_vs_rl.cli sample --n 1,4` ("ambiguous option: --n"); the `--` before bonrl's arguments fixes it."""
    from accelerate.commands.launch import launch_command_parser
    from torch.distributed.run import get_args_parser

    seen = _capture_stage(monkeypatch)
    commands = readme_launch_commands()
    assert {argv[argv.index("--") + 1] for argv in commands} == {"sample", "train-rm", "ppo"}
    for argv in commands:
        if argv[0] == "torchrun":
            launch = get_args_parser().parse_args(argv[1:])
        else:
            launch = launch_command_parser().parse_args(argv[2:])
        assert launch.module and launch.training_script == "bon_vs_rl.cli"
        seen.clear()
        result = runner.invoke(cli.app, launch.training_script_args)
        assert result.exit_code == 0 and "cfg" in seen, (argv, result.output)
        if "--n" in argv:
            assert seen["cfg"].ns == [1, 2, 4, 8, 16, 32, 64]

    torchrun_sample = next(argv for argv in commands if argv[0] == "torchrun" and "--n" in argv)
    without_separator = [a for a in torchrun_sample[1:] if a != "--"]
    with pytest.raises(SystemExit):  # argparse's abbreviation matching: --nnodes, --nproc_per_node, ...
        get_args_parser().parse_args(without_separator)
    assert "ambiguous option: --n could match" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Bad paths and values are found before any work: exit 2, one line naming the flag, nothing written.

TOY_REWARD = "python:tests/toy_rewards.py:vowel_fraction"
COMMANDS = {
    "train-rm": ["train-rm", "--policy", "tiny", "--backbone", "tiny"],
    "sample": ["sample", "--policy", "tiny", "--proxy", TOY_REWARD],
    "ppo": ["ppo", "--policy", "tiny", "--proxy", TOY_REWARD],
    "rl": ["rl", "--policy", "tiny", "--proxy", TOY_REWARD],
    "dpo": ["dpo", "--policy", "tiny", "--proxy", TOY_REWARD],
    "distill": ["distill", "--policy", "tiny", "--proxy", TOY_REWARD],
    "lab": ["lab", "--outcomes", "100"],
    "report": ["report"],
}


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_output_under_a_file_fails_before_any_work(command, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(cli.app, [*COMMANDS[command], "--output", str(tmp_path / "notes.txt" / "out")])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("bonrl: error: output:") and "is a file" in line and line.endswith("--output")
    assert not (tmp_path / "results.sqlite").exists()  # no run row, failed or otherwise


@pytest.mark.parametrize("command", [*COMMANDS, "results"])
@pytest.mark.parametrize("bad", ["not-sqlite", "under-a-file"])
def test_a_results_path_that_is_not_a_results_file_fails_with_one_line(command, bad, tmp_path):
    (tmp_path / "notes.txt").write_text("these are my notes, not a database\n" * 20)
    path = tmp_path / "notes.txt" if bad == "not-sqlite" else tmp_path / "notes.txt" / "results.sqlite"
    args = COMMANDS.get(command, [command])
    result = runner.invoke(cli.app, [*args, "--results", str(path), "--output", str(tmp_path / "out")]
                           if command != "results" else [command, "--results", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("bonrl: error: results:") and "--results" in line
    assert (tmp_path / "notes.txt").read_text().startswith("these are my notes")
    assert not (tmp_path / "out").exists()


def test_a_non_finite_learning_rate_fails_before_models_load(monkeypatch):
    seen = _capture_stage(monkeypatch)
    result = runner.invoke(cli.app, ["ppo", "--proxy", "rm:x", "--learning-rate", "nan"])
    assert result.exit_code == 2 and "cfg" not in seen
    assert error_lines(result) == ["bonrl: error: learning_rate: nan is not a finite number; give e.g. "
                                   "--learning-rate 1e-05"]


@pytest.mark.skipif(__import__("torch").backends.mps.is_available(), reason="checks a machine without MPS")
@pytest.mark.parametrize("command", ["sample", "ppo", "rl", "train-rm", "dpo", "distill"])
def test_mps_asked_for_without_mps_exits_2_before_models_load(command, tmp_path):
    result = runner.invoke(cli.app, [*COMMANDS[command], "--device", "mps", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("bonrl: error: device: 'mps' asked for but this machine has no MPS")
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()


def test_results_lists_only_the_runs_of_the_method_asked_for(tmp_path):
    from bon_vs_rl.record import results as R

    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        ids = {}
        for command, method in (("sample", "bon"), ("ppo", "ppo"), ("train-rm", "rm")):
            ids[method] = store.start_run(command, {}, 0, experiment="demo" if method != "rm" else None)
            store.add_rows(ids[method], [{"method": method, "step": 0}])
            store.finish_run(ids[method])
    listed = runner.invoke(cli.app, ["results", "--results", str(path), "--method", "bon"])
    assert listed.exit_code == 0, listed.output
    assert ids["bon"] in listed.output and ids["ppo"] not in listed.output and ids["rm"] not in listed.output
    both = runner.invoke(cli.app, ["results", "--results", str(path), "--experiment", "demo"]).output
    assert ids["bon"] in both and ids["ppo"] in both and ids["rm"] not in both
    none = runner.invoke(cli.app, ["results", "--results", str(path), "--method", "grpo"]).output
    assert none.strip() == "no runs"


# ----------------------------------------------------------------------------------------------
# The edges of issue 24: help text, conflicting options, read-only commands, one flag per message.


@pytest.mark.parametrize(("command", "shown"), [("ppo", "[default: 0.05]"), ("sample", "[default: '1,2,4,8,16,32,64']"),
                                                ("train-rm", "pip install 'bonrl[tracking]'")])
def test_help_shows_each_default_and_square_brackets_as_written(command, shown):
    result = runner.invoke(cli.app, [command, "--help"], terminal_width=400)
    assert result.exit_code == 0 and shown in result.output


def test_help_says_the_n_grid_is_sorted_and_deduplicated(monkeypatch):
    seen = _capture_stage(monkeypatch)
    assert runner.invoke(cli.app, ["sample", "--proxy", TOY_REWARD, "--n", "8,1,8,2"]).exit_code == 0
    assert seen["cfg"].ns == [1, 2, 8]
    help_text = " ".join(runner.invoke(cli.app, ["sample", "--help"], terminal_width=400).output.split())
    assert "in any order; a repeated n counts once" in help_text


def test_a_yaml_file_that_is_not_utf8_is_one_line_exit_2(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_bytes(b"seed: 1\nproxy: caf\xe9\n")
    result = runner.invoke(cli.app, ["sample", "--config", str(preset)])
    assert result.exit_code == 2
    assert error_lines(result) == [f"bonrl: error: config: {preset} is not UTF-8 text (byte 0xe9 at position 18); "
                                   "save it as UTF-8 and pass it to --config again"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_asked_for_without_cuda_is_refused_before_an_experiment_writes_anything(tmp_path):
    result = runner.invoke(cli.app, ["experiment", str(REPO / "configs" / "smoke.yaml"), "--device", "cuda",
                                     "--output", str(tmp_path / "study")])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("bonrl: error: ") and "device: 'cuda' asked for but CUDA is not available" in line
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("name", ["notes.pdf", "prompts.json", "prompts.parquet"])
def test_a_prompt_file_of_an_unsupported_type_is_refused_by_its_extension(name, tmp_path, monkeypatch):
    from bon_vs_rl.measurement import models

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_policy", no_models)
    (tmp_path / name).write_text("\n".join(f"prompt {i}" for i in range(20)))
    result = runner.invoke(cli.app, ["sample", "--policy", "tiny", "--prompts", str(tmp_path / name),
                                     "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    suffix = Path(name).suffix
    assert line == (f"bonrl: error: prompts: {tmp_path / name} is a {suffix} file; --prompts reads .txt (one prompt "
                    "per line), .jsonl or .csv files, builtin or hf:DATASET:COLUMN")


CONFLICTS = {
    "resume-overwrite": (["ppo", "--proxy", TOY_REWARD, "--resume", "--overwrite"],
                         "resume: --resume continues the run in --output and --overwrite replaces it; pass one"),
    "lora-top-layers": (["ppo", "--proxy", TOY_REWARD, "--lora-rank", "8", "--train-top-layers", "2"],
                        "train_top_layers: --lora-rank already chooses what trains (adapters on every layer); "
                        "pass --lora-rank or --train-top-layers, not both"),
    "distill-resume-overwrite": (["distill", "--proxy", TOY_REWARD, "--resume", "--overwrite"],
                                 "resume: --resume continues the run in --output and --overwrite replaces it; "
                                 "pass one"),
    "beta-without-proxy": (["sample", "--beta", "0.5"],
                           "beta: the KL-regularized optimum tilts by a proxy's scores and none is given; pass "
                           "--proxy SPEC, or drop --beta"),
}


@pytest.mark.parametrize("case", list(CONFLICTS))
def test_conflicting_options_are_refused_naming_the_flag(case, monkeypatch):
    seen = _capture_stage(monkeypatch)
    args, message = CONFLICTS[case]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [f"bonrl: error: {message}"] and "cfg" not in seen


def test_rescoring_with_a_sampling_option_the_samples_file_does_not_have_is_refused(tmp_path):
    """--from-samples takes the file's prompts and sampling settings: a different --temperature (or any other
    sampling option) would be silently ignored, so it is refused; the file's own value is accepted."""
    from bon_vs_rl.methods import best_of_n

    path = tmp_path / "samples.parquet"
    frame = pd.DataFrame({"prompt_id": [0, 0], "prompt": ["p", "p"], "completion": ["a", "b"], "tokens": [1, 1],
                          "logprob": [-1.0, -2.0], "ended": [True, True], "vader": [0.1, 0.2]})
    drawn = {name: getattr(C.SampleConfig(), name) for name in best_of_n.SAMPLING_SETTINGS}  # the defaults
    best_of_n.write_samples(path, frame, {"format": best_of_n.SAMPLES_FORMAT, "policy": "tiny", "samples_per_prompt": 2,
                                          "seed": 0, **drawn})
    base = ["sample", "--policy", "tiny", "--from-samples", str(path), "--proxy", "vader", "--n", "1,2",
            "--output", str(tmp_path / "out"), "--quiet"]
    refused = runner.invoke(cli.app, [*base, "--temperature", "0.7"])
    assert refused.exit_code == 2, refused.output
    assert error_lines(refused) == [f"bonrl: error: temperature: --temperature 0.7 differs from the 1.0 the samples in "
                                    f"{path} were drawn with; drop --temperature when rescoring (--from-samples)"]
    assert runner.invoke(cli.app, [*base, "--temperature", "1.0"]).exit_code == 0


def test_more_eval_prompts_than_held_out_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from bon_vs_rl.measurement import models

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_policy", no_models)
    result = runner.invoke(cli.app, ["sample", "--policy", "tiny", "--eval-prompts", "1000",
                                     "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert error_lines(result) == ["bonrl: error: eval_prompts: 1000 is more than the 76 held-out prompts of "
                                   "'builtin'; pass --eval-prompts 76 or fewer (0 = all of them)"]


@pytest.mark.parametrize(("args", "flag"), [
    (["train-rm", "--epochs", "0"], "epochs"), (["train-rm", "--max-length", "0"], "max_length"),
    (["ppo", "--proxy", TOY_REWARD, "--gamma", "2"], "gamma"),
    (["ppo", "--proxy", TOY_REWARD, "--clip-range-value", "0"], "clip_range_value"),
    (["ppo", "--proxy", TOY_REWARD, "--keep-checkpoints", "0"], "keep_checkpoints"),
    (["rl", "--proxy", TOY_REWARD, "--learning-rate", "-1"], "learning_rate"),
    (["dpo", "--proxy", TOY_REWARD, "--train-batch-size", "0"], "train_batch_size"),
    (["distill", "--proxy", TOY_REWARD, "--max-grad-norm", "0"], "max_grad_norm"),
])
def test_each_message_names_the_one_bad_flag(args, flag, monkeypatch):
    _capture_stage(monkeypatch)
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"bonrl: error: {flag}: ") and "--" + flag.replace("_", "-") in line
    others = {f.name for cls in (C.TrainRMConfig, C.PPOConfig, C.RLConfig, C.DPOConfig, C.DistillConfig)
              for f in config_fields(cls)} - {flag}
    assert not [name for name in others if f"--{name.replace('_', '-')} " in line + " "]


def test_read_only_commands_never_write_the_results_file_or_create_folders(tmp_path):
    """`bonrl results` and `bonrl report` read; neither migrates an older file, switches its journal mode,
    nor creates a folder other than the report's own output."""
    import hashlib
    import sqlite3

    from test_report import bon_run

    from bon_vs_rl.record import results as R

    path = tmp_path / "old.sqlite"
    bon_run(path, tmp_path, "rm:a", seed=1)
    with sqlite3.connect(path) as conn:  # as an older bonrl left it: schema version 1, rollback journal
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    listed = runner.invoke(cli.app, ["results", "--results", str(path)])
    assert listed.exit_code == 0, listed.output
    reported = runner.invoke(cli.app, ["report", "--results", str(path), "--output", str(tmp_path / "rep"),
                                       "--quiet", "--bootstrap", "200"])
    assert reported.exit_code == 0, reported.output
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bon", "old.sqlite", "rep"]
    assert R.load(path)["n"].notna().all()  # and the older file still reads


def test_export_refuses_to_replace_a_file_without_overwrite(tmp_path):
    from bon_vs_rl.record import results as R

    path = tmp_path / "r.sqlite"
    with R.ResultsStore(path) as store:
        run = store.start_run("sample", {}, 0)
        store.add_rows(run, [{"method": "bon", "n": 1}])
    (tmp_path / "mine.csv").write_text("my own table\n")
    refused = runner.invoke(cli.app, ["results", "--results", str(path), "--export", str(tmp_path / "mine.csv")])
    assert refused.exit_code == 2
    assert error_lines(refused) == [f"bonrl: error: export: {tmp_path / 'mine.csv'} exists; pass --overwrite to "
                                    "replace it, or another --export path"]
    assert (tmp_path / "mine.csv").read_text() == "my own table\n"
    replaced = runner.invoke(cli.app, ["results", "--results", str(path), "--export", str(tmp_path / "mine.csv"),
                                       "--overwrite"])
    assert replaced.exit_code == 0 and pd.read_csv(tmp_path / "mine.csv")["n"].tolist() == [1]


def test_the_n_1_gain_is_exactly_zero():
    """Best-of-1 is the initial policy: its gain, KL and their intervals are 0 by construction, not 1e-17."""
    import numpy as np

    from bon_vs_rl.methods import best_of_n

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"prompt_id": np.repeat(np.arange(7), 16), "prompt": "p", "completion": "a text",
                          "tokens": rng.integers(1, 9, 112),
                          "logprob": -rng.uniform(1, 9, 112), "proxy": rng.normal(size=112),
                          "gold": rng.normal(size=112) / 3.0})
    first = best_of_n.bon_rows(frame, "proxy", "gold", [1, 4], 16, 200, 0)[0]
    for name in ("proxy_gain", "proxy_gain_lo", "proxy_gain_hi", "gold_gain", "gold_gain_lo", "gold_gain_hi", "kl"):
        assert first[name] == 0.0, (name, first[name])


def test_train_rm_with_an_unknown_gold_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    from bon_vs_rl.measurement import models

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("load_policy", "resolve_model_path"):
        monkeypatch.setattr(models, name, no_models)
    result = runner.invoke(cli.app, ["train-rm", "--gold", "bogus", "--output", str(tmp_path / "rm")])
    assert result.exit_code == 2, result.output
    assert error_lines(result) == ["bonrl: error: gold: unknown scorer 'bogus'; use vader, vader-fluent, hf:ID-OR-PATH, "
                                   "rm:PATH or python:MODULE:FUNCTION (fix --gold)"]
    assert not (tmp_path / "rm").exists() and not (tmp_path / "results.sqlite").exists()
