"""--engine hf|vllm|auto without vLLM: what `make test` can check of the engine choice (config/base.py).

The vLLM engine itself is tested in tests/test_vllm_engine.py, in a tier of its own (`make test-vllm`,
marker `vllm`), in the venv that `make setup-vllm` builds. Here vLLM is made absent (`vllm_installed` -> False)
whether or not it is installed, so these tests mean the same in both venvs.
"""

import pytest
import torch
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.config import base
from bon_vs_rl.config.base import resolve
from bon_vs_rl.config.commands import SampleConfig, TrainRMConfig
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.methods import reward_model

runner = CliRunner()

# One command line per stage that samples; each is otherwise valid, so only the engine can stop it.
STAGES = {
    "sample": ["sample", "--policy", "tiny", "--gold", "vader", "--n", "1,2", "--eval-prompts", "2"],
    "train-rm": ["train-rm", "--policy", "tiny", "--gold", "vader", "--backbone", "tiny", "--pairs", "8"],
    "ppo": ["ppo", "--policy", "tiny", "--proxy", "vader", "--gold", "vader", "--steps", "1"],
    "rl": ["rl", "--policy", "tiny", "--proxy", "vader", "--gold", "vader", "--steps", "1"],
    "dpo": ["dpo", "--policy", "tiny", "--proxy", "vader", "--gold", "vader", "--pairs", "8"],
    "distill": ["distill", "--policy", "tiny", "--proxy", "vader", "--gold", "vader", "--steps", "1"],
}


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setattr(base, "vllm_installed", lambda: False)


@pytest.mark.parametrize("stage", list(STAGES))
def test_engine_vllm_without_vllm_exits_2_naming_the_install_command(stage, no_vllm, tmp_path):
    result = runner.invoke(cli.app, [*STAGES[stage], "--engine", "vllm", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bonrl: error: engine: vllm is not installed; install it with `make setup-vllm`")
    assert "--engine hf" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()  # before any work


def test_auto_engine_is_vllm_where_installed_and_hf_elsewhere(monkeypatch):
    monkeypatch.setattr(base, "vllm_installed", lambda: False)
    assert resolve(SampleConfig, {"engine": "auto"}).engine == "hf"
    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    assert resolve(SampleConfig, {"engine": "auto"}).engine == "vllm"  # the stored config says what ran
    assert resolve(SampleConfig, {}).engine == "hf"  # the default stays the transformers sampler


@pytest.mark.parametrize("values, message", [
    ({"engine": "sglang"}, "engine: 'sglang'; use hf, vllm or auto"),
    ({"vllm_tensor_parallel_size": 2}, "vllm_*: vLLM's parallelism options need --engine vllm"),
    ({"engine": "vllm", "vllm_executor": "slurm"}, "vllm_executor: 'slurm'; use mp (one node) or ray"),
    ({"engine": "vllm", "vllm_gpu_memory_utilization": 1.5}, "vllm_gpu_memory_utilization: 1.5 must be in (0, 1]"),
])
def test_bad_engine_options_are_refused_naming_the_flag(values, message, monkeypatch):
    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        resolve(SampleConfig, values)


def test_vllm_under_a_launcher_is_refused(monkeypatch):
    """Several bonrl processes would each start an engine; vLLM scales itself (tensor parallel, Ray)."""
    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="engine: vllm under torchrun/accelerate launch is not supported"):
        resolve(SampleConfig, {"engine": "vllm"})


def test_comparison_data_of_the_hf_engine_keeps_its_cache_key_and_vllm_data_gets_another(monkeypatch):
    """Data cached before engines existed is still found (hf); vLLM's draws are other data (vllm)."""
    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    prompts = (["a", "b"], ["c"])
    hf = reward_model.data_settings(resolve(TrainRMConfig, {"policy": "tiny"}), *prompts, device=torch.device("cpu"))
    vllm = reward_model.data_settings(resolve(TrainRMConfig, {"policy": "tiny", "engine": "vllm"}), *prompts,
                                      device=torch.device("cpu"))
    assert "engine" not in hf and vllm["engine"] == "vllm"
    assert reward_model.settings_hash(hf) != reward_model.settings_hash(vllm)


def test_replicates_on_either_engine_are_one_setting(monkeypatch):
    """The report pools replicate seeds by setting: the engine changes the draws, not what is measured."""
    from bon_vs_rl.measurement.evaluate import setting_id

    monkeypatch.setattr(base, "vllm_installed", lambda: True)
    hf, vllm = resolve(SampleConfig, {"seed": 1}), resolve(SampleConfig, {"seed": 2, "engine": "vllm"})
    assert setting_id(hf) == setting_id(vllm)
    assert setting_id(hf) != setting_id(resolve(SampleConfig, {"max_new_tokens": 7}))
