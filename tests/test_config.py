"""Config precedence (CLI > YAML > default) and validation with one-line, field-naming errors."""

import re

import pytest

from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import load_yaml, resolve
from bon_vs_rl.errors import ConfigError


def test_defaults_come_from_the_dataclass():
    cfg = resolve(C.SampleConfig, {}, {"proxy": ["rm:x"]})
    assert cfg.n == "1,2,4,8,16,32,64"
    assert cfg.ns == [1, 2, 4, 8, 16, 32, 64]
    assert cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0


def test_yaml_overrides_default_and_cli_overrides_yaml():
    yaml_values = {"max_new_tokens": 10, "seed": 3, "n": "1,2"}
    cfg = resolve(C.SampleConfig, yaml_values, {"proxy": ["rm:x"], "seed": 7, "max_new_tokens": None})
    assert cfg.max_new_tokens == 10  # YAML beats default; a CLI None means "not given"
    assert cfg.seed == 7  # CLI beats YAML
    assert cfg.ns == [1, 2]


def test_yaml_keys_may_use_dashes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max-new-tokens: 5\nproxy: rm:abc\n")
    cfg = resolve(C.SampleConfig, load_yaml(path), {})
    assert cfg.max_new_tokens == 5 and cfg.proxy == ["rm:abc"]


def test_unknown_yaml_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'max_new_token'.*max_new_tokens"):
        resolve(C.SampleConfig, {"max_new_token": 3}, {"proxy": ["x"]})


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"n": "0,2"}, "n:"),
        ({"n": "a"}, "n:"),
        ({"n": "64", "samples_per_prompt": 8}, "n:"),
        ({"temperature": 0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"seed": -1}, "seed"),
        ({"device": "gpu"}, "device"),
        ({"max_new_tokens": "many"}, "max_new_tokens"),
    ],
)
def test_invalid_values_name_the_field(values, field):
    with pytest.raises(ConfigError, match=f"^{re.escape(field)}") as info:
        resolve(C.SampleConfig, values, {"proxy": ["x"]})
    assert "\n" not in str(info.value)


def test_yaml_strings_are_coerced_to_the_field_type():
    cfg = resolve(C.PPOConfig, {"beta": "0.1", "steps": "5", "adaptive_kl": "yes"}, {"proxy": "rm:x"})
    assert cfg.beta == 0.1 and cfg.steps == 5 and cfg.adaptive_kl is True


def test_ppo_rejects_negative_beta_and_indivisible_minibatches():
    with pytest.raises(ConfigError, match="^beta"):
        resolve(C.PPOConfig, {}, {"proxy": "rm:x", "beta": -0.1})
    with pytest.raises(ConfigError, match="^minibatch_size"):
        resolve(C.PPOConfig, {}, {"proxy": "rm:x", "rollout_batch_size": 10, "minibatch_size": 4})


def test_missing_yaml_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="^config: file"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)


def test_list_defaults_are_not_shared_between_instances():
    a, b = C.SampleConfig(), C.SampleConfig()
    a.proxy.append("x")
    assert b.proxy == []


def test_list_fields_keep_mappings_and_stringify_specs():
    cfg = resolve(C.SampleConfig, {"proxy": ["rm:a", 3]}, {})
    assert cfg.proxy == ["rm:a", "3"]
    stages = [{"backbone": "tiny", "pairs": 8}]
    experiment = resolve(C.ExperimentConfig, {"train_rm": stages}, {})
    assert experiment.train_rm == stages


@pytest.mark.parametrize("n", ["1,,2", "1,2,", ",4"])
def test_an_empty_entry_in_the_n_grid_is_rejected(n):
    with pytest.raises(ConfigError, match=r"^n: .* has an empty entry; give a comma-separated list like --n 1,2,4$"):
        resolve(C.SampleConfig, {}, {"proxy": ["x"], "n": n})


def test_a_yaml_list_of_ints_is_an_n_grid(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n: [1, 2, 8]\nproxy: rm:abc\n")
    assert resolve(C.SampleConfig, load_yaml(path), {}).ns == [1, 2, 8]
    assert resolve(C.ReportConfig, {"methods": ["bon", "ppo"]}, {}).methods == "bon,ppo"
    with pytest.raises(ConfigError, match=r"^n: '2.5' is not an integer"):
        resolve(C.SampleConfig, {"n": [1, 2.5]}, {"proxy": ["x"]})
    with pytest.raises(ConfigError, match=r"^policy: \['a', 'b'\] is a list; give e.g. --policy smollm2-135m$"):
        resolve(C.SampleConfig, {"policy": ["a", "b"]}, {"proxy": ["x"]})  # one value, not a comma list


def test_every_comma_list_takes_a_yaml_list_and_refuses_an_empty_entry():
    """YAML lists mean the comma list they spell, for every list-valued option; '0.5,,1' is a typo."""
    sample = resolve(C.SampleConfig, {"n": [1, 4], "beta": [0.5, 1]}, {"proxy": ["x"]})
    assert sample.ns == [1, 4] and sample.betas == [0.5, 1.0]
    lab = resolve(C.LabConfig, {"n": [1, 10, "e^3"], "beta": [0.5, 2], "rl_beta": [1]}, {})
    assert lab.ns == [1, 10, 20] and lab.betas == [0.5, 2.0] and lab.rl_betas == [1.0]
    for cls, name, value, extra in ((C.SampleConfig, "beta", "0.5,,1", {"proxy": ["x"]}),
                                    (C.SampleConfig, "n", "1,2,", {"proxy": ["x"]}),
                                    (C.LabConfig, "n", "1,,10", {}), (C.LabConfig, "rl_beta", ",1", {})):
        with pytest.raises(ConfigError, match=rf"^{name}: '{value}' has an empty entry; give a comma-separated list"):
            resolve(cls, {}, {**extra, name: value})


@pytest.mark.parametrize(("cls", "name"), [(C.PPOConfig, "learning_rate"), (C.PPOConfig, "beta"),
                                           (C.PPOConfig, "missing_eos_penalty"), (C.RLConfig, "learning_rate"),
                                           (C.TrainRMConfig, "label_noise"), (C.SampleConfig, "temperature")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan"])
def test_non_finite_floats_are_rejected_up_front(cls, name, value):
    proxy = {C.SampleConfig: {"proxy": ["rm:x"]}, C.TrainRMConfig: {}}.get(cls, {"proxy": "rm:x"})
    with pytest.raises(ConfigError, match=rf"^{name}: -?(nan|inf) is not a finite number; give (e.g. --{name.replace('_', '-')} "
                                            r"|one float value$)"):
        resolve(cls, {}, {**proxy, name: value})
