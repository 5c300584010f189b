"""`bonrl dpo`: DPO's loss against its formula, the same comparison data as train-rm, and a run on the toy task.

The toy policy (tests/toy_gold.py) writes from six words; the gold counts " good" and labels the
comparisons; the proxy (measured only) is the fraction of words that are "good".
"""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import toy_gold
import toy_rewards
from test_experiment import RESUMED, _record, fake_checkpoint, fake_stages, invoke, write  # noqa: F401  (fake_stages: a fixture)
from typer.testing import CliRunner

from bon_vs_rl import cli, experiment
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import models
from bon_vs_rl.methods import dpo, reward_model
from bon_vs_rl.record import results as R

runner = CliRunner()
GOLD = f"python:{Path(toy_gold.__file__)}:count_good"
PROXY = f"python:{Path(toy_rewards.__file__)}:good_fraction"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dpo_args(policy: str, output: Path, *extra: str) -> list[str]:
    """32 pairs, 16 per step: 2 optimizer steps, evaluated at steps 0, 1, 2 on 4 eval prompts."""
    return ["dpo", "--policy", policy, "--gold", GOLD, "--proxy", PROXY, "--pairs", "32", "--eval-pairs", "4",
            "--max-new-tokens", "8", "--train-batch-size", "16", "--learning-rate", "1e-2", "--beta", "0.1",
            "--eval-every", "1", "--eval-prompts", "4", "--eval-samples-per-prompt", "2", "--device", "cpu",
            "--output", str(output), "--quiet", *extra]


# ----------------------------------------------------------------------------------------------
# The loss and the data.


def sequence_logprob(model, prompt_ids: list[int], completion: list[int]) -> float:
    """log π(completion | prompt) by one plain forward pass and a log-softmax: independent of TRL."""
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)  # position t predicts token t + 1
    return float(sum(logprobs[len(prompt_ids) - 1 + i, token] for i, token in enumerate(completion)))


def test_dpo_loss_on_a_hand_built_pair_matches_the_formula(toy_policy, tmp_path):
    policy, tokenizer = models.load_policy(toy_policy, torch.device("cpu"), dtype=torch.float32)
    reference, _ = models.load_policy(toy_policy, torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():  # a policy that differs from its reference, so both log-ratios are non-zero
        generator = torch.Generator().manual_seed(0)
        policy.lm_head.weight.add_(0.3 * torch.randn(policy.lm_head.weight.shape, generator=generator))
    pairs = pd.DataFrame({"prompt": ["The film was"], "chosen": [" good good fine"], "rejected": [" bad the"],
                          "chosen_sample": [0], "rejected_sample": [1]})
    samples = pd.DataFrame({"ended": [True, False]})  # the chosen sample emitted EOS, the rejected one did not
    dataset = dpo.preference_dataset(pairs, samples, tokenizer, max_prompt_tokens=64)
    example = dataset[0]
    assert example["chosen_ids"][-1] == tokenizer.eos_token_id and example["rejected_ids"][-1] != tokenizer.eos_token_id
    assert example["prompt_ids"] == tokenizer("The film was").input_ids

    beta = 0.3
    cfg = resolve(C.DPOConfig, {}, {"policy": toy_policy, "proxy": PROXY, "beta": beta, "device": "cpu",
                                      "output": str(tmp_path / "out")})
    trainer = dpo.trainer_class()(model=policy, ref_model=reference, args=dpo.dpo_arguments(cfg, 1, False, False),
                                  train_dataset=dataset, processing_class=tokenizer)
    batch = trainer.data_collator([example])
    trl_loss = float(trainer.compute_loss(trainer.model, batch).detach())

    prompt, chosen, rejected = example["prompt_ids"], example["chosen_ids"], example["rejected_ids"]
    margin = ((sequence_logprob(policy, prompt, chosen) - sequence_logprob(reference, prompt, chosen))
              - (sequence_logprob(policy, prompt, rejected) - sequence_logprob(reference, prompt, rejected)))
    assert abs(margin) > 0.1  # the pair really tests the formula
    expected = -math.log(1.0 / (1.0 + math.exp(-beta * margin)))  # −log σ(β·margin)
    assert trl_loss == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_dpo_reads_the_comparison_data_train_rm_would_train_on():
    common = {"policy": "tiny", "gold": "vader", "pairs": 300, "completions_per_prompt": 3, "label_noise": 0.25,
              "max_new_tokens": 12, "seed": 4}
    rm = resolve(C.TrainRMConfig, {}, common)
    dpo_cfg = resolve(C.DPOConfig, {}, {**common, "proxy": "vader", "beta": 0.5, "learning_rate": 1e-3})
    train, held_out = ["a", "b"], ["c"]

    def key(cfg):
        return reward_model.settings_hash(reward_model.data_settings(cfg, train, held_out))

    assert key(dpo.comparison_settings(dpo_cfg)) == key(rm)
    # Another training seed with the RM's data seed: the same pairs; without it, other pairs.
    reseeded = resolve(C.DPOConfig, {}, {**common, "proxy": "vader", "seed": 9})
    assert key(dpo.comparison_settings(reseeded)) != key(rm)
    pinned = resolve(C.DPOConfig, {}, {**common, "proxy": "vader", "seed": 9, "data_seed": 4})
    assert key(dpo.comparison_settings(pinned)) == key(rm)


# ----------------------------------------------------------------------------------------------
# End to end on the toy task.


@pytest.fixture(scope="module")
def dpo_run(toy_policy, tmp_path_factory):
    """One DPO run and one best-of-n run on the same eval prompts, in one results table."""
    import warnings

    import transformers

    root = tmp_path_factory.mktemp("dpo")
    results = root / "results.sqlite"
    # The libraries' noise back on, as in a fresh process (an earlier test may have switched it off): the
    # run's --quiet must silence it itself.
    transformers.utils.logging.enable_progress_bar()
    transformers.logging.set_verbosity_warning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(cli.app, dpo_args(toy_policy, root / "out", "--results", str(results),
                                                 "--cache-dir", str(root / "cache"), "--log-with", "tensorboard"))
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and [str(w.message) for w in caught] == []  # --quiet: nothing at all
    bon = runner.invoke(cli.app, ["sample", "--policy", toy_policy, "--proxy", PROXY, "--gold", GOLD, "--n", "1,2,4",
                                  "--eval-prompts", "4", "--max-new-tokens", "8", "--device", "cpu", "--quiet",
                                  "--output", str(root / "bon"), "--results", str(results)])
    assert bon.exit_code == 0, bon.output
    return dict(root=root, rows=R.load(results), stdout=result.stdout)


def test_dpo_moves_the_policy_and_its_rows_share_the_evaluation_prompts_of_best_of_n(dpo_run):
    rows = dpo_run["rows"]
    runs = rows[rows["method"] == "dpo"].sort_values("step").reset_index(drop=True)
    assert runs["step"].tolist() == [0, 1, 2] and set(runs["run_status"]) == {"finished"}
    assert runs["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)  # step 0: the reference itself
    assert runs["kl"].iloc[-1] > 0 and runs["kl_lo"].iloc[-1] > 0  # the policy moved
    assert (runs["beta"] == 0.1).all() and (runs["pairs"] == 32).all() and (runs["proxy"] == PROXY).all()
    assert np.isfinite(runs["train_loss"].iloc[1:]).all() and runs["trained_tokens"].is_monotonic_increasing
    bon = rows[rows["method"] == "bon"]
    assert set(runs["prompt_set"]) == set(bon["prompt_set"]) and runs["prompt_count"].iloc[0] == 4
    frame = pd.read_parquet(runs["samples_path"].iloc[-1])
    assert sorted(frame["prompt_id"].unique()) == [0, 1, 2, 3] and {"proxy", "gold", "kl"} <= set(frame)
    assert (dpo_run["root"] / "out" / "policy" / "config.json").exists()
    assert dpo_run["stdout"] == ""  # --quiet, and TRL's logs never reach stdout


def test_dpo_logs_its_losses_and_every_evaluation_to_the_tracker(dpo_run):
    import tracker_files

    runs = dpo_run["rows"][dpo_run["rows"]["method"] == "dpo"].sort_values("step")
    scalars = tracker_files.tensorboard_scalars(dpo_run["root"] / "out" / "tensorboard" / runs["run_id"].iloc[0])
    assert scalars["eval/kl"] == [(int(s), pytest.approx(k)) for s, k in zip(runs["step"], runs["kl"])]
    assert scalars["eval/gold_mean"] == [(int(s), pytest.approx(g)) for s, g in zip(runs["step"], runs["gold_mean"])]
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(runs["train_loss"].iloc[1:].tolist())


@pytest.mark.slow  # 6-10 s on an idle 2-core machine: keeps `make test` well under 3 minutes
def test_resumed_dpo_continues_the_same_run_without_duplicate_rows(toy_policy, tmp_path, monkeypatch):
    """Stopped during the step-2 evaluation after the step-1 checkpoint, then resumed: one finished run, 0-1-2."""
    from bon_vs_rl.measurement import evaluate

    args = dpo_args(toy_policy, tmp_path / "out", "--checkpoint-every", "1", "--cache-dir", str(tmp_path / "cache"))
    real = evaluate.Evaluator.evaluate

    def stop_at_step_two(self, policy, step, *rest, **kwargs):
        if step == 2:
            raise KeyboardInterrupt
        return real(self, policy, step, *rest, **kwargs)

    monkeypatch.setattr(evaluate.Evaluator, "evaluate", stop_at_step_two)
    assert runner.invoke(cli.app, args).exit_code == 130
    assert [p.name for p in dpo.complete_checkpoints(tmp_path / "out")] == ["checkpoint-1"]
    monkeypatch.setattr(evaluate.Evaluator, "evaluate", real)
    result = runner.invoke(cli.app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    rows = R.load(tmp_path / "results.sqlite").sort_values("step")
    assert rows["step"].tolist() == [0, 1, 2] and rows["run_id"].nunique() == 1
    assert rows["trained_tokens"].is_monotonic_increasing and rows["generated_tokens"].is_monotonic_increasing
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.runs()["status"].tolist() == ["finished"]


@pytest.mark.parametrize("flags, message", [
    (["--beta", "0"], "beta: 0.0 must be > 0 (at β = 0 the DPO loss is log 2"),
    (["--proxy", ""], "proxy: no proxy given; DPO only measures it"),
    (["--proxy", "rm:/nonexistent/rm"], "proxy: /nonexistent/rm is not a bonrl reward model"),
    (["--top-k", "5"], "top_k/top_p: RL samples and measures the untruncated policy"),
    (["--pairs", "0"], "pairs: 0 must be ≥ 1, e.g. --pairs 2000"),
    (["--data-seed", "-1"], "data_seed: -1 must be a non-negative integer"),
    (["--labels", "coin"], "labels: 'coin'; use deterministic or bradley-terry"),
])
def test_bad_input_exits_2_before_any_work(flags, message, toy_policy, tmp_path):
    result = runner.invoke(cli.app, dpo_args(toy_policy, tmp_path / "out") + flags)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"bonrl: error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()


# ----------------------------------------------------------------------------------------------
# As an experiment stage: the comparisons of an RM stage.


STUDY = {
    "name": "study", "output": "out", "device": "cpu", "eval_prompts": 12,
    "common": {"policy": "tiny", "gold": "vader", "max_new_tokens": 8},
    "train_rm": [{"pairs": 50}, {"pairs": 100, "label_noise": 0.25, "seed": 3}],
    "dpo": [{"beta": 0.1}, {"beta": 0.3, "proxy": "rm-1", "seeds": [5, 6]}, {"comparisons": "rm-1"}],
    "distill": [{"n": 4}, {"n": 8, "objective": "vbon", "proxy": "rm-1"}],
}


def plan(study: dict):
    return experiment.plan(resolve(C.ExperimentConfig, json.loads(json.dumps(study))))[0]


def test_experiment_dpo_trains_on_the_comparisons_of_its_rm_stage():
    stages = {s.name: s for s in plan(STUDY)}
    assert [n for n in stages if n.startswith(("dpo", "distill"))] == [
        "dpo-0", "dpo-1-seed5", "dpo-1-seed6", "dpo-2", "distill-0", "distill-1"]

    def data_key(cfg):
        settings = dpo.comparison_settings(cfg) if isinstance(cfg, C.DPOConfig) else cfg
        return reward_model.settings_hash(reward_model.data_settings(settings, ["a"], ["b"]))

    rm0, rm1 = stages["rm-0"].cfg, stages["rm-1"].cfg
    assert data_key(stages["dpo-0"].cfg) == data_key(rm0) != data_key(rm1)
    for name in ("dpo-1-seed5", "dpo-1-seed6", "dpo-2"):  # replicate seeds keep the RM's labels
        assert data_key(stages[name].cfg) == data_key(rm1) and stages[name].cfg.data_seed == 3
    assert [stages["dpo-1-seed5"].cfg.seed, stages["dpo-1-seed6"].cfg.seed] == [5, 6]
    assert stages["dpo-0"].cfg.proxy == f"rm:{rm0.output}" and stages["dpo-1-seed5"].cfg.proxy == f"rm:{rm1.output}"
    assert stages["dpo-2"].cfg.proxy == f"rm:{rm1.output}" and stages["dpo-2"].needs == ["rm-1"]
    assert stages["distill-1"].cfg.proxy == f"rm:{rm1.output}" and stages["distill-1"].cfg.objective == "vbon"
    assert {s.cfg.eval_prompts for n, s in stages.items() if n != "rm-0" and n != "rm-1"} == {12}


@pytest.mark.parametrize("entry, message", [
    ({"pairs": 400}, "dpo[0]: 'pairs' is set by comparisons: rm-0"),
    ({"data_seed": 1}, "dpo[0]: 'data_seed' is set by comparisons: rm-0"),
    ({"comparisons": "rm-7"}, "rm-7"),
    ({"eval_prompts": 4}, "dpo[0]: 'eval_prompts' is set by the experiment"),
])
def test_a_dpo_entry_cannot_set_its_own_comparison_data(entry, message):
    study = {**STUDY, "dpo": [entry], "distill": []}
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan(study)


def fake_dpo(cfg):
    """A stand-in DPO/distill stage (test_experiment's contract): rows in milliseconds, the resume flag noted."""
    if cfg.resume:
        RESUMED.append(Path(cfg.output).name)
    method = "dpo" if isinstance(cfg, C.DPOConfig) else "distill"
    fake_checkpoint(cfg, method)
    return _record(cfg, method, [{"method": method, "step": s, "kl": s / 2, "proxy": cfg.proxy, "policy": cfg.policy,
                                  "gold": cfg.gold, "proxy_mean": s, "proxy_se": 0.1, "gold_mean": s, "gold_se": 0.1}
                                 for s in range(3)])


def test_interrupted_dpo_and_distill_stages_resume_and_complete_ones_are_skipped(fake_stages, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    for kind in ("dpo", "distill"):
        monkeypatch.setitem(experiment.STAGES, kind, (experiment.STAGES[kind][0], f"{__name__}:fake_dpo"))
    study = {**STUDY, "dpo": [{"beta": 0.1}], "distill": [{"n": 4}]}
    path = write(tmp_path, study)
    for name in ("dpo-0", "distill-0"):
        (tmp_path / "out" / name).mkdir(parents=True)
        (tmp_path / "out" / name / "fail").write_text("")
    assert invoke(path, "--quiet").exit_code == 1
    (tmp_path / "out" / "dpo-0" / "fail").unlink()
    assert invoke(path, "--quiet").exit_code == 1  # dpo-0 resumes and completes; distill-0 starts, fails
    (tmp_path / "out" / "distill-0" / "fail").unlink()
    fake_stages.clear()
    result = invoke(path, "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_stages == ["distill-0"] and RESUMED == ["dpo-0", "distill-0"]
    fake_stages.clear()
    assert invoke(path, "--quiet", "--force", "dpo").exit_code == 0
    assert fake_stages == ["dpo-0"] and RESUMED == ["dpo-0", "distill-0"]  # forced: started afresh
