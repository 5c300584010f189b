"""Gold and proxy scorers: each kind, batching, and the non-finite guard."""

import json

import numpy as np
import pytest
import torch

from bon_vs_rl import scorers


def test_vader_scores_sentiment_of_the_completion_in_range():
    gold = scorers.load_scorer("vader")
    scores = gold(["The film was"] * 3, [" wonderful, I loved it!", " terrible and boring.", " on Tuesday."])
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert np.all((scores >= -1) & (scores <= 1))


def test_python_scorer_from_a_file_and_nan_guard(tmp_path):
    module = tmp_path / "my_gold.py"
    module.write_text(
        "def length(prompts, completions):\n    return [len(c) for c in completions]\n"
        "def broken(prompts, completions):\n    return [float('nan') if 'x' in c else 1.0 for c in completions]\n"
    )
    length = scorers.load_scorer(f"python:{module}:length")
    assert length(["p", "q"], ["ab", "abcd"]).tolist() == [2.0, 4.0]
    broken = scorers.load_scorer(f"python:{module}:broken")
    with pytest.raises(scorers.ScorerError, match="nan") as info:
        broken(["p1", "p2"], ["fine", "has x"])
    assert "'p2'" in str(info.value) and "'has x'" in str(info.value)


@pytest.mark.parametrize("spec, message", [
    ("", "empty scorer spec"),
    ("vader:x", "unknown scorer 'vader:x'"),
    ("nope", "unknown scorer 'nope'"),
    ("python:missing_module_xyz:f", "cannot import 'missing_module_xyz'"),
    ("rm:", "unknown scorer 'rm:'"),
    ("python:os:nothing_here", "os has no function 'nothing_here'"),
])
def test_bad_specs_are_config_errors_naming_the_spec(spec, message):
    with pytest.raises(scorers.ScorerError, match=message):
        scorers.load_scorer(spec, device=torch.device("cpu"))


def _tiny_reward_model(path, seed):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bon_vs_rl.models import smollm2_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.mark.slow  # 4-6 s each: with the others marked so, `make test` keeps a 2x margin on 3 min
def test_rm_ensemble_aggregations_and_hf_single_model(tmp_path):
    root = tmp_path / "rm"
    for i in range(3):
        _tiny_reward_model(root / f"member-{i}", seed=i)
    (root / scorers.RM_METADATA).write_text(json.dumps({"members": ["member-0", "member-1", "member-2"],
                                                        "max_length": 64}))
    prompts, completions = ["Dear friend,"] * 4, [" hello", " a long day", " yes!", " no"]
    cpu = torch.device("cpu")
    members = np.stack([scorers.load_scorer(f"hf:{root / f'member-{i}'}", cpu)(prompts, completions)
                        for i in range(3)])
    mean = scorers.load_scorer(f"rm:{root}", cpu)(prompts, completions)
    worst = scorers.load_scorer(f"rm:{root}@min", cpu)(prompts, completions)
    cautious = scorers.load_scorer(f"rm:{root}@mean-0.5std", cpu)(prompts, completions)
    np.testing.assert_allclose(mean, members.mean(0), rtol=1e-5)
    np.testing.assert_allclose(worst, members.min(0), rtol=1e-5)
    np.testing.assert_allclose(cautious, members.mean(0) - 0.5 * members.std(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(scorers.ScorerError, match="@mean, @min"):
        scorers.load_scorer(f"rm:{root}@max", cpu)


def test_rm_spec_requires_a_bonrl_checkpoint(tmp_path):
    with pytest.raises(scorers.ScorerError, match="not a bonrl reward model"):
        scorers.load_scorer(f"rm:{tmp_path}", torch.device("cpu"))


def test_scores_do_not_depend_on_batching(tmp_path):
    _tiny_reward_model(tmp_path / "m", seed=0)
    scorer = scorers.load_scorer(f"hf:{tmp_path / 'm'}", torch.device("cpu"))
    prompts = ["A", "The hotel room", "My dear"] * 3
    completions = [" x", " was clean and bright", " friend, thank you so much"] * 3
    together = scorer(prompts, completions)
    scorer.batch_size = 2
    np.testing.assert_allclose(scorer(prompts, completions), together, rtol=1e-4, atol=1e-5)


def test_scorer_errors_name_the_flag_not_an_internal_field(tmp_path):
    with pytest.raises(scorers.ScorerError, match=r"^gold: file .*missing.py not found; fix the path in --gold"):
        scorers.load_scorer(f"python:{tmp_path / 'missing.py'}:f", role="gold")
    (tmp_path / "mine.py").write_text("x = 1\n")
    with pytest.raises(scorers.ScorerError, match=r"^proxy: .*mine.py has no function 'f'; check --proxy"):
        scorers.load_scorer(f"python:{tmp_path / 'mine.py'}:f", role="proxy")
    with pytest.raises(scorers.ScorerError, match=r"^gold: .* is not a bonrl reward model .* or fix --gold$"):
        scorers.load_scorer(f"rm:{tmp_path}", role="gold")
    with pytest.raises(scorers.ConfigError, match=r"^proxy: directory .* does not exist; check the path given to --proxy$"):
        scorers.load_scorer(f"hf:{tmp_path / 'no-rm'}", role="proxy")
