"""Gold and proxy scorers: each kind, batching, and the non-finite guard."""

import json

import numpy as np
import pytest
import torch

from bon_vs_rl.measurement import scorers


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

    from bon_vs_rl.measurement.models import smollm2_tokenizer_dir

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


# ----------------------------------------------------------------------------------------------
# Ensemble combiners (Coste et al. 2023), against hand computations.

MEMBER_SCORES = np.array([[1.0, 4.0, -2.0],  # member 0, three samples
                          [3.0, 0.0, -2.0],  # member 1
                          [2.0, 2.0, 1.0]])  # member 2


@pytest.mark.parametrize("agg, expected", [
    ("mean", [2.0, 2.0, -1.0]),
    ("min", [1.0, 0.0, -2.0]),
    # Population std over members: sqrt(2/3), sqrt(8/3), sqrt(2) for the three samples.
    ("mean-1std", [2.0 - (2 / 3) ** 0.5, 2.0 - (8 / 3) ** 0.5, -1.0 - 2 ** 0.5]),
    ("mean-0.5std", [2.0 - 0.5 * (2 / 3) ** 0.5, 2.0 - 0.5 * (8 / 3) ** 0.5, -1.0 - 0.5 * 2 ** 0.5]),
    ("member-2", [2.0, 2.0, 1.0]),
])
def test_ensemble_combiners_match_hand_computations(agg, expected):
    kind, value = scorers.parse_aggregation(agg)
    np.testing.assert_allclose(scorers.aggregate(MEMBER_SCORES, kind, value), expected, rtol=1e-12)


@pytest.mark.parametrize("agg", ["max", "mean-std", "mean-xstd", "member-", "member-a", "mean-1var"])
def test_unknown_aggregations_are_refused_naming_the_choices(agg):
    with pytest.raises(scorers.ScorerError, match=r"^proxy: aggregation .* unknown; use @mean, @min, @mean-<λ>std "
                                                  r"\(e.g. @mean-0.5std\) or @member-<k> \(e.g. @member-0\)$"):
        scorers.parse_aggregation(agg)


def _ensemble_checkpoint(root, metadata: dict, heldout: dict | None):
    root.mkdir()
    (root / scorers.RM_METADATA).write_text(json.dumps(metadata))
    if heldout is not None:
        (root / scorers.HELDOUT_SCORES).write_text(json.dumps(heldout))
    return root


def test_describe_rm_recomputes_each_aggregations_held_out_accuracy_from_the_saved_member_scores(tmp_path):
    # Four held-out pairs over the three samples above: (chosen, rejected) positions.
    pairs = [[0, 1], [1, 2], [2, 0], [0, 2]]
    root = _ensemble_checkpoint(tmp_path / "ens", {
        "members": ["member-0", "member-1", "member-2"], "backbone": "minilm", "train_pairs": 500,
        "config": {"pairs": 500, "label_noise": 0.25}, "parameters": {"total": 22_000_000, "non_embedding": 11_000_000},
        "evaluation": {"accuracy": 0.5, "member_accuracy": [0.75, 0.5, 0.25]}}, {"members": MEMBER_SCORES.tolist(),
                                                                                 "gold": [0, 0, 0], "pairs": pairs})
    # By hand: mean [2, 2, -1]: pair (0,1) tie 1/2, (1,2) 2 > -1 right, (2,0) -1 < 2 wrong, (0,2) right -> 2.5/4.
    # min [1, 0, -2]: right, right, wrong, right -> 3/4. member-1 [3, 0, -2]: right, right, wrong, right -> 3/4.
    # mean-1std [1.18, 0.37, -2.41]: right, right, wrong, right -> 3/4.
    expected = {"mean": 2.5 / 4, "min": 3 / 4, "member-1": 3 / 4, "mean-1std": 3 / 4}
    for agg, accuracy in expected.items():
        info = scorers.describe_rm(f"{root}@{agg}")
        assert info["accuracy"] == pytest.approx(accuracy), agg
        assert (info["pairs"], info["label_noise"], info["members"], info["backbone"]) == (500, 0.25, 3, "minilm")
        assert (info["parameters"], info["parameters_non_embedding"]) == (22_000_000, 11_000_000)
    assert scorers.describe_rm(f"{root}@member-1")["member"] == 1 and scorers.describe_rm(f"{root}")["member"] is None
    # Without the saved scores (a checkpoint from before they were kept): the recorded mean and members only.
    old = _ensemble_checkpoint(tmp_path / "old", {**json.loads((root / scorers.RM_METADATA).read_text())}, None)
    assert scorers.describe_rm(f"{old}@mean")["accuracy"] == 0.5
    assert scorers.describe_rm(f"{old}@member-2")["accuracy"] == 0.25
    assert scorers.describe_rm(f"{old}@min")["accuracy"] is None
    with pytest.raises(scorers.ScorerError, match=r"has 3 members \(member-0 to member-2\); @member-3 is not one"):
        scorers.describe_rm(f"{root}@member-3")


def test_parameter_counts_read_from_the_files_match_the_loaded_model(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from bon_vs_rl.measurement import models

    _tiny_reward_model(tmp_path / "m", seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    counted = models.parameter_count(tmp_path / "m")
    assert counted["total"] == sum(p.numel() for p in model.parameters())
    assert counted["non_embedding"] == sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    assert 0 < counted["non_embedding"] < counted["total"]
    assert models.parameter_count(tmp_path) is None  # no safetensors file: unknown
