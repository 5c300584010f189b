"""The command line: --help imports no ML stack, --version, help on every option, precedence and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bon_vs_rl import __version__, cli
from bon_vs_rl import config as C

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
     ("rl", C.RLConfig), ("report", C.ReportConfig)],
)
def test_every_config_field_is_an_option_with_help(command, config_class):
    click_command = typer.main.get_command(cli.app).commands[command]
    options = {p.name: p for p in click_command.params}
    for field in C.config_fields(config_class):
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
