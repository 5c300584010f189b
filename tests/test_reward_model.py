"""`bonrl train-rm` end to end on a synthetic task whose gold is known.

The toy policy (tests/toy_gold.py) writes from six words; the gold counts " good". A `tiny` backbone must
learn it from 200 comparisons (held-out accuracy well above chance), must not learn it when half the
labels are flipped, and every bad input must stop with exit code 2 before anything is written.
"""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import toy_gold
from typer.testing import CliRunner

from bon_vs_rl import cli
from bon_vs_rl.analysis import statistics
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import models, scorers
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.methods import reward_model
from bon_vs_rl.record import results as R

runner = CliRunner()
TOY_GOLD = f"python:{Path(toy_gold.__file__)}:count_good"
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy policy, and a cache of its own (so comparison data starts fresh) sharing the converted tiny model."""
    root = tmp_path_factory.mktemp("toy")
    policy = toy_gold.build_toy_policy(root / "policy", models.smollm2_tokenizer_dir())
    cache = root / "cache"
    cache.mkdir()
    models.resolve_model_path("tiny")  # built once in the shared test cache
    for name in (models.TINY_DIR, "smollm2-tokenizer"):
        (cache / name).symlink_to(models.cache_root() / name)
    return SimpleNamespace(policy=str(policy), cache=str(cache), root=root)


def train_rm_args(toy, output, *extra: str, quiet: bool = True) -> list[str]:
    """The synthetic task's settings: a few seconds on two CPU cores."""
    return ["train-rm", "--policy", toy.policy, "--gold", TOY_GOLD, "--backbone", "tiny", "--pairs", "200",
            "--eval-pairs", "150", "--max-new-tokens", "12", "--epochs", "2", "--learning-rate", "2e-3",
            "--train-batch-size", "16", "--cache-dir", toy.cache, "--output", str(output),
            "--quiet" if quiet else "--no-quiet", *extra]


def invoke(args: list[str]):
    result = runner.invoke(cli.app, args)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def metadata(output: Path) -> dict:
    return json.loads((output / scorers.RM_METADATA).read_text())


@pytest.fixture(scope="module")
def trained(toy):
    """One reward model trained on fresh comparison data, with its own results table."""
    output, results = toy.root / "rm", toy.root / "results.sqlite"
    result = invoke(train_rm_args(toy, output, "--results", str(results)))
    assert result.exit_code == 0, result.output
    return SimpleNamespace(output=output, results=results, meta=metadata(output), result=result)


def test_tiny_backbone_learns_the_toy_gold_on_held_out_prompts(trained):
    evaluation = trained.meta["evaluation"]
    # Measured 0.92–0.96 over seeds 0–3; chance is 0.5 (and noisy labels reach 0.29–0.58, see below).
    assert evaluation["accuracy"] > 0.75
    assert evaluation["pearson"] > 0.5 and evaluation["spearman"] > 0.5
    assert trained.meta["data_reused"] is False
    assert trained.result.stdout.strip().splitlines() == [f"rm:{trained.output}"]  # stdout: the proxy spec only
    assert trained.result.stderr == ""  # --quiet: no progress bars, notes or tables

    rows = R.load(trained.results, method="rm")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row["accuracy"] == pytest.approx(evaluation["accuracy"])
    assert row["proxy"] == f"rm:{trained.output}" and row["backbone"] == "tiny" and row["gold"] == TOY_GOLD
    assert row["pairs"] == 200 and row["eval_pairs"] == 150 and row["label_noise"] == 0
    # The row's timings are the checkpoint's (each stage timed once, recorded twice), not some other clock.
    seconds = trained.meta["seconds"]
    assert (row["data_seconds"], row["train_seconds"], row["eval_seconds"]) == (
        pytest.approx(seconds["data"]), pytest.approx(seconds["train"]), pytest.approx(seconds["eval"]))
    assert row["trained_tokens"] == trained.meta["trained_tokens"] > 0
    # The accuracy's interval resamples the held-out prompts: recomputed from the saved scores, with each pair's
    # prompt read from the comparison data itself.
    heldout = json.loads((trained.output / scorers.HELDOUT_SCORES).read_text())
    scores, index = np.asarray(heldout["members"][0]), np.asarray(heldout["pairs"])
    correct = (scores[index[:, 0]] > scores[index[:, 1]]) + 0.5 * (scores[index[:, 0]] == scores[index[:, 1]])
    assert correct.mean() == pytest.approx(row["accuracy"])
    pairs = pd.read_parquet(Path(trained.meta["data_path"]) / "pairs.parquet")
    prompts = pairs[pairs.split == "eval"]["prompt_id"].to_numpy()
    assert len(set(prompts)) < len(prompts)  # several pairs per prompt: resampling prompts is not resampling pairs
    lo, hi = statistics.accuracy_interval(correct, prompts, B=2000, rng=0)
    assert (row["accuracy_lo"], row["accuracy_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert row["accuracy_lo"] < row["accuracy"] < row["accuracy_hi"]
    assert (evaluation["accuracy_lo"], evaluation["accuracy_hi"]) == (pytest.approx(lo), pytest.approx(hi))


def test_comparison_data_is_saved_with_gold_labels_and_held_out_prompts(trained):
    path = Path(trained.meta["data_path"])
    pairs = pd.read_parquet(path / "pairs.parquet")
    samples = pd.read_parquet(path / "samples.parquet")
    for column in ("prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "flipped", "split"):
        assert column in pairs
    train, held_out = pairs[pairs.split == "train"], pairs[pairs.split == "eval"]
    assert len(train) == 200 and len(held_out) == 150
    # Deterministic labels, no noise: the higher gold always wins and ties are dropped.
    assert (pairs.chosen_gold > pairs.rejected_gold).all() and not pairs.flipped.any()
    gold = np.asarray(toy_gold.count_good(None, pairs.chosen.tolist()))
    np.testing.assert_array_equal(gold, pairs.chosen_gold)
    # Held-out pairs come from eval prompts only.
    assert set(held_out.prompt).isdisjoint(set(train.prompt))
    assert set(samples.split) == {"train", "eval"}


def test_checkpoint_loads_as_rm_spec_and_with_plain_transformers(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = trained.output
    assert trained.meta["members"] == ["."] and trained.meta["backbone"] == "tiny"
    assert trained.meta["config"]["pairs"] == 200
    assert json.loads((out / "resolved_config.json").read_text())["gold"] == TOY_GOLD
    pairs = pd.read_parquet(Path(trained.meta["data_path"]) / "pairs.parquet")
    held_out = pairs[pairs.split == "eval"]

    proxy = scorers.load_scorer(f"rm:{out}", CPU, role="proxy")
    chosen = proxy(held_out.prompt.tolist(), held_out.chosen.tolist())
    rejected = proxy(held_out.prompt.tolist(), held_out.rejected.tolist())
    accuracy = np.mean((chosen > rejected) + 0.5 * (chosen == rejected))
    assert accuracy == pytest.approx(trained.meta["evaluation"]["accuracy"])

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    texts = [scorers.rm_text(p, c) for p, c in zip(held_out.prompt[:4], held_out.chosen[:4], strict=True)]
    with torch.no_grad():
        logits = model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0].numpy()
    np.testing.assert_allclose(logits, chosen[:4], rtol=1e-4, atol=1e-4)


def test_second_run_with_the_same_settings_reuses_the_comparison_data(trained, toy, tmp_path):
    result = invoke(train_rm_args(toy, tmp_path / "again", quiet=False))  # the note is shown when not quiet
    assert result.exit_code == 0, result.output
    assert "reusing comparison data" in result.stderr
    again = metadata(tmp_path / "again")
    assert again["data_reused"] is True and again["data_hash"] == trained.meta["data_hash"]
    assert R.load(tmp_path / "results.sqlite", method="rm").iloc[0]["data_reused"] in (True, 1)
    # Same data and seed: the same model.
    assert again["evaluation"]["accuracy"] == pytest.approx(trained.meta["evaluation"]["accuracy"])


@pytest.mark.slow  # 4-6 s each: with the others marked so, `make test` keeps a 2x margin on 3 min
def test_ensemble_members_differ_and_score_with_mean_and_min(trained, toy, tmp_path):
    out = tmp_path / "ensemble"
    result = invoke(train_rm_args(toy, out, "--ensemble", "2"))
    assert result.exit_code == 0, result.output
    meta = metadata(out)
    assert meta["members"] == ["member-0", "member-1"] and meta["member_seeds"] == [0, 1]
    assert len(meta["evaluation"]["member_accuracy"]) == 2 and meta["data_reused"] is True
    prompts, completions = ["Dear friend,"] * 3, [" good good good", " bad bad", " the and very"]
    members = np.stack([scorers.load_scorer(f"hf:{out / m}", CPU)(prompts, completions) for m in meta["members"]])
    assert not np.allclose(members[0], members[1])  # different seeds, different heads and data order
    np.testing.assert_allclose(scorers.load_scorer(f"rm:{out}@mean", CPU)(prompts, completions), members.mean(0),
                               rtol=1e-5)
    np.testing.assert_allclose(scorers.load_scorer(f"rm:{out}@min", CPU)(prompts, completions), members.min(0),
                               rtol=1e-5)
    row = R.load(tmp_path / "results.sqlite", method="rm").iloc[0]
    assert row["ensemble"] == 2 and row["accuracy"] == pytest.approx(meta["evaluation"]["accuracy"])


def test_a_second_train_rm_into_the_same_output_is_refused(trained, toy):
    """Other runs may score with rm:OUTPUT: replacing it silently would change what their rows mean."""
    before = (trained.output / scorers.RM_METADATA).read_bytes()
    with R.ResultsStore(trained.results) as store:
        runs_before = len(store.runs())
    result = invoke(train_rm_args(toy, trained.output, "--results", str(trained.results)))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"bonrl: error: output: {trained.output} already holds the reward model of run "
                    f"{trained.meta['run_id']}, which other runs may use as rm:{trained.output}; pass a new "
                    "--output, or --overwrite to replace it")
    assert (trained.output / scorers.RM_METADATA).read_bytes() == before
    with R.ResultsStore(trained.results) as store:
        assert len(store.runs()) == runs_before  # refused before the run started: no row of any status


def test_training_curves_and_accuracy_reach_tensorboard(trained, toy, tmp_path):
    """--log-with tensorboard; the files go beside the model, in OUTPUT-logs (the model directory is
    only written whole at the end). The comparison data is reused from the `trained` run."""
    import tracker_files

    output = tmp_path / "rm"
    result = invoke(train_rm_args(toy, output, "--log-with", "tensorboard"))
    assert result.exit_code == 0, result.output
    meta = metadata(output)
    assert meta["data_reused"] is True
    scalars = tracker_files.tensorboard_scalars(tmp_path / "rm-logs" / "tensorboard" / meta["run_id"])
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # one point per optimizer step
    assert scalars["eval/accuracy"] == [(steps[-1], pytest.approx(meta["evaluation"]["accuracy"]))]
    assert not (output / "tensorboard").exists()


@pytest.mark.slow  # 6-10 s on an idle 2-core machine: keeps `make test` well under 3 minutes
def test_half_the_labels_flipped_stays_near_chance(toy, tmp_path):
    # With half the labels flipped the data says nothing about the gold, but a run's held-out accuracy
    # spreads more than the binomial sd (0.04 with 150 pairs): the RM still fits *some* direction of
    # the word counts, at random. Measured over 16 seeds: 0.29–0.58, sd 0.08. So each run is held to
    # ±0.25 and the mean of three seeds to ±0.15 (about 3 sd of a 3-run mean).
    accuracies = []
    for seed in (0, 1, 2):
        result = invoke(train_rm_args(toy, tmp_path / f"noisy-{seed}", "--label-noise", "0.5", "--seed", str(seed)))
        assert result.exit_code == 0, result.output
        meta = metadata(tmp_path / f"noisy-{seed}")
        assert meta["flipped_pairs"] == 100
        accuracies.append(meta["evaluation"]["accuracy"])
    assert all(abs(a - 0.5) < 0.25 for a in accuracies), accuracies
    assert abs(np.mean(accuracies) - 0.5) < 0.15, accuracies


@pytest.mark.parametrize("bad", ["pairs", "data-pairs", "data-seed", "policy", "gold-nan", "backbone-no-tokenizer",
                                 "output-not-an-rm"])
def test_bad_input_exits_2_and_writes_nothing(bad, toy, tmp_path):
    output = tmp_path / "rm"
    extra, message = {
        "pairs": (["--pairs", "0"], "pairs: 0 must be ≥ 1"),
        "data-pairs": (["--data-pairs", "100"], "data_pairs: 100 must be 0 (= --pairs) or at least --pairs 200: it is "
                       "the labelled draw the training pairs are taken from"),
        "data-seed": (["--data-seed", "-1"], "data_seed: -1 must be a non-negative integer (or unset: --seed)"),
        "policy": (["--policy", str(tmp_path / "no-such-policy")],
                   f"policy: directory '{tmp_path / 'no-such-policy'}' does not exist"),
        "gold-nan": (["--gold", f"python:{Path(toy_gold.__file__)}:nan_gold", "--pairs", "12"],
                     f"scorer python:{Path(toy_gold.__file__)}:nan_gold: returned nan for prompt"),
        "backbone-no-tokenizer": (["--backbone", str(_model_without_tokenizer(tmp_path))],
                                  f"backbone: '{tmp_path / 'bare-backbone'}' has no tokenizer that loads"),
        "output-not-an-rm": ([], f"output: {output} exists and is not a bonrl reward model"),
    }[bad]
    if bad == "output-not-an-rm":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    result = invoke([*train_rm_args(toy, output), *extra])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bonrl: error: {message}"), lines
    assert not (tmp_path / "results.sqlite").exists()
    if bad == "output-not-an-rm":
        assert sorted(p.name for p in output.iterdir()) == ["notes.txt"]
    else:
        assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rm")] == []


def _model_without_tokenizer(tmp_path: Path) -> Path:
    tiny = Path(models.resolve_model_path("tiny"))
    bare = tmp_path / "bare-backbone"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).symlink_to(tiny / name)
    return bare


def test_failed_training_leaves_no_complete_looking_output(trained, toy, tmp_path, monkeypatch):
    output = tmp_path / "rm"
    seen = {}
    real_train_member = reward_model.train_member

    def train_then_fail(*args, **kwargs):
        real_train_member(*args, **kwargs)
        # A kill at this moment leaves what is on disk now: the weights exist only in a temporary sibling.
        weights = Path(args[6])  # the member directory: the temporary sibling itself for one model
        seen["weights_in_temporary_sibling"] = (weights / "config.json").exists() and weights.name.startswith(".rm.")
        seen["output_during_training"] = output.exists()
        raise RuntimeError("simulated crash after training")

    monkeypatch.setattr(reward_model, "train_member", train_then_fail)
    result = invoke(train_rm_args(toy, output))
    assert result.exit_code == 1 and "simulated crash" in result.stderr
    assert seen == {"weights_in_temporary_sibling": True, "output_during_training": False}
    assert not output.exists() and list(tmp_path.glob(".rm*")) == []
    assert len(R.load(tmp_path / "results.sqlite", method="rm")) == 0

    # A failure over an existing reward model leaves the old one in place, untouched.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / scorers.RM_METADATA).write_text('{"members": ["."], "old": true}')
    result = invoke(train_rm_args(toy, previous, "--overwrite"))
    assert result.exit_code == 1 and "simulated crash" in result.stderr
    assert json.loads((previous / scorers.RM_METADATA).read_text())["old"] is True


def test_small_prompt_set_is_cycled_with_new_samples(toy, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Opening number {i} of the story:" for i in range(10)) + "\n")  # 8 train, 2 eval
    cfg = resolve(C.TrainRMConfig, {}, {
        "policy": toy.policy, "gold": TOY_GOLD, "prompts": str(prompts), "pairs": 60, "eval_pairs": 10,
        "max_new_tokens": 8, "completions_per_prompt": 3, "cache_dir": str(tmp_path / "cache"), "quiet": True,
    })
    data = reward_model.comparison_data(cfg, CPU, prompt_sets.load_prompts(cfg.prompts, "train"),
                                        prompt_sets.load_prompts(cfg.prompts, "eval"))
    train = data.pairs[data.pairs.split == "train"]
    assert len(train) == 60  # 8 prompts give at most 24 pairs with k=3: the prompts were cycled
    samples = data.samples[data.samples.split == "train"]
    first = samples[samples.prompt == samples.prompt.iloc[0]]
    assert first.prompt_id.nunique() > 1  # the same prompt met again on a later pass ...
    assert first.groupby("prompt_id").completion.apply(tuple).nunique() > 1  # ... with new completions


def test_data_hash_covers_every_setting_that_shapes_the_data():
    base = C.TrainRMConfig()
    key = reward_model.settings_hash(reward_model.data_settings(base, ["a"], ["b"]))
    changed = {"policy": "tiny", "gold": "python:x.py:f", "prompts": "p.txt", "max_new_tokens": 5, "temperature": 0.7,
               "top_k": 3, "top_p": 0.9, "chat_template": True, "pairs": 7, "eval_pairs": 9,
               "completions_per_prompt": 3, "labels": "bradley-terry", "seed": 1, "data_seed": 5, "data_pairs": 4000}
    for name, value in changed.items():
        cfg = C.TrainRMConfig(**{name: value})
        assert reward_model.settings_hash(reward_model.data_settings(cfg, ["a"], ["b"])) != key, name
    assert reward_model.settings_hash(reward_model.data_settings(base, ["a", "c"], ["b"])) != key  # prompt texts
    # T only matters for bradley-terry; the label noise and the subset trained on apply after the cache.
    for name, value in {"backbone": "tiny", "epochs": 3.0, "learning_rate": 1e-3, "ensemble": 2,
                        "output": "elsewhere", "label_temperature": 2.0, "label_noise": 0.25}.items():
        cfg = C.TrainRMConfig(**{name: value})
        assert reward_model.settings_hash(reward_model.data_settings(cfg, ["a"], ["b"])) == key, name
    # One draw of 2,000 pairs serves every proxy of a data-size sweep, and one data seed every training seed.
    sweep = {reward_model.settings_hash(reward_model.data_settings(C.TrainRMConfig(pairs=n, data_pairs=2000), ["a"],
                                                                   ["b"])) for n in (100, 500, 2000)}
    assert sweep == {key}
    reseeded = C.TrainRMConfig(seed=7, data_seed=0)
    assert reward_model.settings_hash(reward_model.data_settings(reseeded, ["a"], ["b"])) == key


def test_data_hash_follows_the_arithmetic_the_policy_samples_in():
    """bf16 autocast samples another distribution: cached fp32 comparisons must not serve a bf16 run. The key
    holds the arithmetic, not the word: --precision auto is fp32 on a CPU and bf16 on a GPU that has it."""
    import torch

    def key(precision, device):
        cfg = C.TrainRMConfig(precision=precision)
        return reward_model.settings_hash(reward_model.data_settings(cfg, ["a"], ["b"], torch.device(device)))

    assert key("bf16", "cpu") != key("fp32", "cpu")
    assert key("auto", "cpu") == key("fp32", "cpu")
    # The experiment copies it from an RM stage into a DPO entry, which samples its comparisons the same way.
    assert "precision" in C.COMPARISON_DATA_FIELDS and C.DPOConfig().precision == "auto"


def test_comparison_cache_key_follows_what_the_specs_name_not_their_text(tmp_path):
    """Editing a python: gold function (or retraining an rm: directory) under the same spec is new data."""
    gold = tmp_path / "gold.py"
    gold.write_text("def gold(prompts, completions):\n    return [len(c) for c in completions]\n")
    cfg = C.TrainRMConfig(gold=f"python:{gold}:gold")

    def key() -> str:
        return reward_model.settings_hash(reward_model.data_settings(cfg, ["a"], ["b"]))

    first = key()
    gold.write_text("def gold(prompts, completions):\n    return [-len(c) for c in completions]\n")
    assert key() != first
    gold.write_text("def gold(prompts, completions):\n    return [len(c) for c in completions]\n")
    assert key() == first  # the same code again: the cached labels are right again

    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / scorers.RM_METADATA).write_text('{"run_id": "train-rm-1"}')
    cfg = C.TrainRMConfig(gold=f"rm:{rm}@mean")
    first = key()
    (rm / scorers.RM_METADATA).write_text('{"run_id": "train-rm-2"}')  # retrained in place
    assert key() != first


def test_a_cuda_index_reaches_the_trainer_arguments(monkeypatch, tmp_path):
    """transformers alone would train a one-process run on cuda:0 (and DataParallel over every GPU)."""
    pinned = []
    monkeypatch.setattr(torch.cuda, "set_device", pinned.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    args = reward_model.trainer_arguments(C.TrainRMConfig(), 0, torch.device("cuda", 1), str(tmp_path))
    assert args.device == torch.device("cuda", 1) and args.n_gpu == 1 and not args.use_cpu
    assert pinned == [torch.device("cuda", 1)]
    cpu = reward_model.trainer_arguments(C.TrainRMConfig(), 0, CPU, str(tmp_path))
    assert cpu.device == CPU and cpu.use_cpu


def synthetic_comparisons(count: int) -> reward_model.ComparisonData:
    pairs = pd.DataFrame({"split": "train", "prompt_id": np.arange(count) // 6, "prompt": "p",
                          "chosen": [f"c{i}" for i in range(count)], "rejected": [f"r{i}" for i in range(count)],
                          "chosen_gold": 1.0, "rejected_gold": 0.0, "flipped": False,
                          "chosen_sample": 2 * np.arange(count), "rejected_sample": 2 * np.arange(count) + 1})
    held_out = pairs.iloc[:5].assign(split="eval")
    return reward_model.ComparisonData(pd.concat([pairs, held_out], ignore_index=True), pd.DataFrame(), "key",
                                       Path("."), True, 0.0, 0.0)


def test_a_data_size_sweep_trains_on_nested_subsets_of_one_draw_with_exact_noise():
    data = synthetic_comparisons(2000)
    subsets = {n: reward_model.training_pairs(data, C.TrainRMConfig(pairs=n, data_pairs=2000)) for n in (100, 500, 2000)}
    chosen = {n: set(frame["chosen"]) for n, frame in subsets.items()}
    assert [len(chosen[n]) for n in (100, 500, 2000)] == [100, 500, 2000]
    assert chosen[100] < chosen[500] < chosen[2000]  # nested
    assert subsets[2000]["chosen"].tolist() == [f"c{i}" for i in range(2000)]  # all of it: the draw as sampled
    assert subsets[100]["prompt_id"].nunique() > 50  # a random subset, not the first 17 prompts' pairs
    assert not subsets[500]["flipped"].any()  # no label noise asked for: the labels as the gold gave them
    # Another training seed, the same data seed: the same subset, and with label noise the same pairs flipped
    # (the flips follow the data seed alone, so proxies of one draw differ only in what they were told to).
    again = reward_model.training_pairs(data, C.TrainRMConfig(pairs=500, data_pairs=2000, seed=3, data_seed=0))
    assert set(again["chosen"]) == chosen[500]
    flips = [set(reward_model.training_pairs(data, C.TrainRMConfig(pairs=500, data_pairs=2000, seed=seed, data_seed=0,
                                                                   label_noise=0.25)).query("flipped")["chosen"].str[1:])
             for seed in (0, 3, 11)]
    assert len(flips[0]) == 125 and flips[0] == flips[1] == flips[2]
    other_draw = reward_model.training_pairs(data, C.TrainRMConfig(pairs=500, data_pairs=2000, data_seed=1,
                                                                   label_noise=0.25))
    assert set(other_draw.query("flipped")["chosen"].str[1:]) != flips[0]
    # Label noise flips exactly round(0.25 · pairs) of the subset trained on, and only their labels.
    noisy = reward_model.training_pairs(data, C.TrainRMConfig(pairs=500, data_pairs=2000, label_noise=0.25))
    assert int(noisy["flipped"].sum()) == 125
    flipped = noisy[noisy["flipped"]]
    assert flipped["chosen"].str.startswith("r").all() and flipped["chosen_gold"].eq(0.0).all()
    assert set(noisy["chosen"].str[1:]) == {c[1:] for c in chosen[500]}  # the same pairs, some turned round
    with pytest.raises(ConfigError, match=r"^pairs: 3000 exceeds the 2000 train pairs of comparison data key; "
                                            r"raise --data-pairs$"):
        reward_model.training_pairs(data, C.TrainRMConfig(pairs=3000))


def test_labels_deterministic_drop_ties_and_bradley_terry_follow_the_sigmoid():
    rng = np.random.default_rng(0)
    assert reward_model.label_pair(2.0, 1.0, "deterministic", 1.0, rng) is True
    assert reward_model.label_pair(1.0, 2.0, "deterministic", 1.0, rng) is False
    assert reward_model.label_pair(1.0, 1.0, "deterministic", 1.0, rng) is None
    wins = np.mean([reward_model.label_pair(1.0, 0.0, "bradley-terry", 0.5, rng) for _ in range(4000)])
    assert wins == pytest.approx(1 / (1 + np.exp(-2.0)), abs=0.03)  # σ((1 − 0)/0.5) = 0.881
    ties = np.mean([reward_model.label_pair(0.3, 0.3, "bradley-terry", 1.0, rng) for _ in range(4000)])
    assert ties == pytest.approx(0.5, abs=0.03)


def test_label_noise_flips_exactly_that_fraction():
    pairs = pd.DataFrame({"chosen": list("abcdefgh"), "rejected": list("ABCDEFGH"), "chosen_gold": np.arange(8.0) + 1,
                          "rejected_gold": np.arange(8.0), "chosen_sample": np.arange(8),
                          "rejected_sample": np.arange(8) + 8, "flipped": False})
    flipped = reward_model.flip_labels(pairs, 0.25, np.random.default_rng(0))
    assert flipped.flipped.sum() == 2
    swapped = flipped[flipped.flipped]
    assert (swapped.chosen.str.isupper()).all() and (swapped.chosen_gold < swapped.rejected_gold).all()
    kept = flipped[~flipped.flipped]
    assert (kept.chosen.str.islower()).all() and (kept.chosen_sample < 8).all()


def test_train_batch_size_must_split_over_the_processes(toy, tmp_path, monkeypatch):
    from bon_vs_rl.measurement import sampling

    monkeypatch.setattr(sampling, "process_group", lambda device: (0, 3, CPU))  # as under torchrun with 3
    result = invoke(train_rm_args(toy, tmp_path / "rm", "--results", str(tmp_path / "results.sqlite")))
    assert result.exit_code == 2 and "train_batch_size: 16" in result.output and "multiple of 3" in result.output
    assert not (tmp_path / "rm").exists() and not (tmp_path / "results.sqlite").exists()


@pytest.mark.slow  # ~40 s: two processes each load torch, transformers and TRL
def test_two_processes_train_one_reward_model_on_the_data_of_one_process(trained, toy, tmp_path):
    """`torchrun --nproc_per_node 2 -m bon_vs_rl.cli -- train-rm ...` on an empty cache: the processes split
    the comparison sampling, train with DDP, and the main process alone writes the cache, the checkpoint and
    the row (before, both wrote the checkpoint and one crashed on the other's temporary directory)."""
    cache = tmp_path / "cache"  # empty: `tiny` is built under torchrun too (by the main process; see models)
    args = train_rm_args(toy, tmp_path / "rm", "--results", str(tmp_path / "results.sqlite"))
    args[args.index("--cache-dir") + 1] = str(cache)
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}  # one thread, as in this process: same arithmetic
    child = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            "-m", "bon_vs_rl.cli", "--", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.strip().splitlines() == [f"rm:{tmp_path / 'rm'}"]  # printed by the main process only

    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.runs()["status"].tolist() == ["finished"]
    assert len(R.load(tmp_path / "results.sqlite", method="rm")) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary siblings
    meta = metadata(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").is_file() and (cache / models.TINY_DIR / "model.safetensors").is_file()
    assert meta["data_reused"] is False and meta["evaluation"]["accuracy"] > 0.75  # one process: 0.92-0.96

    # The same settings in one process (the `trained` fixture): the same comparison data, to the bit.
    (data,) = (cache / "comparisons").iterdir()
    assert data.name == trained.meta["data_hash"]
    for name in ("pairs.parquet", "samples.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(data / name),
                                      pd.read_parquet(Path(trained.meta["data_path"]) / name), check_exact=True)
