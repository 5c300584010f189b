"""The command line: fast --help, --version, help on every option, precedence and exit codes."""

import subprocess
import sys
import time

import pytest
import typer
from typer.testing import CliRunner

from bon_vs_rl import __version__, cli
from bon_vs_rl import config as C

runner = CliRunner()


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, time; t=time.time(); from bon_vs_rl.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bon_vs_rl.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 5  # generous for a loaded CI machine; typically ~0.3 s


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


def test_failure_during_work_exits_1(monkeypatch):
    def broken(cfg):
        raise RuntimeError("disk on fire\nsecond line")

    module = type(sys)("fake_stage")
    module.go = broken
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    with pytest.raises(typer.Exit) as info:
        cli.run_stage("fake_stage:go", None)
    assert info.value.exit_code == 1
