"""The shared sampler: exact recorded log-probs, EOS stopping, truncation, determinism.

Two policies: `tiny` (a random 2-layer Llama: the next-token distribution depends on the context, so a
wrong position id, mask or cache shows up in the log-probs) and a 'fixed' policy built here whose
next-token distribution is the same known categorical in every context, so the sampled frequencies,
the EOS stopping and the truncation can be checked against exact numbers.
"""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import toy_scorers

from bon_vs_rl.config.base import SamplingConfig
from bon_vs_rl.measurement import models, sampling

CPU = torch.device("cpu")
PROMPTS = ["Hi", "The old lighthouse keeper wrote in his diary that the storm had", "Dear Sir,"]


@pytest.fixture(scope="module")
def tiny():
    return models.load_policy("tiny", CPU)


def fixed_policy(path, logits_by_word: dict[str, float], eos_logit: float):
    """toy_scorers.build_fixed_policy loaded on the CPU, with its exact next-token log-probs (float64)."""
    tokens = toy_scorers.build_fixed_policy(path, models.smollm2_tokenizer_dir(), logits_by_word, eos_logit)
    model, tokenizer = models.load_policy(str(path), CPU)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([[1]])).logits[0, -1].double(), -1)
    return model, tokenizer, tokens, log_probs


def recomputed_logprob(model, prompt_ids, completion_ids, temperature):
    """Sum of log π(token | prefix) over the completion, from one forward pass with no padding or cache."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature
    log_probs = torch.log_softmax(logits, -1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(completion_ids) - 1)
    return float(sum(log_probs[p, t] for p, t in zip(positions, completion_ids, strict=True)))


@pytest.mark.parametrize("batch_size", [9, 2])  # 9: three prompts of different lengths share a padded batch;
def test_recorded_logprob_equals_a_full_forward_pass(tiny, batch_size):  # 2: several rounds per prompt
    model, tokenizer = tiny
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.7, batch_size=batch_size)
    samples = sampling.generate(model, tokenizer, PROMPTS, 3, cfg, seed=1, quiet=True)
    encoded = sampling.encode_prompts(tokenizer, PROMPTS, cfg.max_prompt_tokens)
    assert len({len(e) for e in encoded}) == 3  # the prompts really do need left padding
    assert samples.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for i in range(len(samples)):
        ids = samples.completion_ids[i]
        assert samples.token_count[i] == len(ids)
        expected = recomputed_logprob(model, encoded[samples.prompt_index[i]], ids, cfg.temperature)
        assert samples.logprob[i] == pytest.approx(expected, abs=1e-5)
        assert samples.completions[i] == tokenizer.decode(ids, skip_special_tokens=True)


def test_sampling_records_no_graph_even_where_gradients_are_on(tiny, monkeypatch):
    """PPO samples its rollouts from a policy in training mode with gradients on: no forward pass of the sampler
    may record an autograd graph (an edit once moved the decode loop's inference_mode onto the function above
    it; the loop then recorded one and its log-probs refused .numpy())."""
    model, tokenizer = tiny
    assert any(p.requires_grad for p in model.parameters())
    grad_modes = []
    forward = model.forward

    def spy(*args, **kwargs):
        grad_modes.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spy)
    cfg = SamplingConfig(max_new_tokens=4, batch_size=4)
    with torch.enable_grad():
        samples = sampling.generate(model, tokenizer, PROMPTS, 2, cfg, seed=3, quiet=True)
    assert len(grad_modes) > 1 and not any(grad_modes)  # the prefill and every decode step
    assert np.isfinite(samples.logprob).all()


def test_same_seed_same_samples_other_seed_other_samples(tiny):
    model, tokenizer = tiny
    cfg = SamplingConfig(max_new_tokens=5, batch_size=4)
    a = sampling.generate(model, tokenizer, PROMPTS, 3, cfg, seed=7, quiet=True)
    b = sampling.generate(model, tokenizer, PROMPTS, 3, cfg, seed=7, quiet=True)
    c = sampling.generate(model, tokenizer, PROMPTS, 3, cfg, seed=8, quiet=True)
    assert a.completion_ids == b.completion_ids and np.array_equal(a.logprob, b.logprob)
    assert a.completion_ids != c.completion_ids


def test_sequences_stop_at_eos_and_logprob_counts_tokens_up_to_it(tmp_path):
    # EOS has probability ~0.27 per step: over 6 steps most sequences end early, some do not.
    model, tokenizer, _, log_probs = fixed_policy(tmp_path / "p", {" good": 12.0, " bad": 12.0}, eos_logit=12.0)
    cfg = SamplingConfig(max_new_tokens=6, batch_size=32)
    samples = sampling.generate(model, tokenizer, ["A", "Another prompt"], 40, cfg, seed=0, quiet=True)
    eos = tokenizer.eos_token_id
    assert 0 < samples.ended.sum() < len(samples)
    for ids, count, ended, logprob in zip(samples.completion_ids, samples.token_count, samples.ended,
                                          samples.logprob, strict=True):
        assert count == len(ids) and eos not in ids[:-1]  # nothing is kept after the first EOS
        assert ended == (ids[-1] == eos) and (ended or count == cfg.max_new_tokens)
        assert logprob == pytest.approx(float(log_probs[ids].sum()), abs=1e-5)
    # P(a sequence ends within 6 steps) = 1 - (1 - p_eos)^6.
    p_end = 1 - (1 - math.exp(float(log_probs[eos]))) ** 6
    se = math.sqrt(p_end * (1 - p_end) / len(samples))
    assert abs(samples.ended.mean() - p_end) < 4 * se


def test_recorded_logprob_is_exact_when_most_logits_are_equal(tmp_path):
    """Regression: a float32 log_softmax recorded log π 1.5e-4 too low per token here, because the
    normaliser summed 49k equal small terms in float32; the normaliser is now summed in float64."""
    model, tokenizer, tokens, log_probs = fixed_policy(tmp_path / "p", {" good": 1.0}, eos_logit=-30.0)
    cfg = SamplingConfig(max_new_tokens=8, batch_size=8)
    samples = sampling.generate(model, tokenizer, ["x"], 8, cfg, seed=0, quiet=True)
    for ids, logprob in zip(samples.completion_ids, samples.logprob, strict=True):
        assert logprob == pytest.approx(float(log_probs[ids].sum()), abs=1e-6 * len(ids))


def test_top_k_and_top_p_keep_only_the_head_of_the_distribution(tmp_path):
    words = {" one": 20.0, " two": 19.5, " three": 19.0, " four": 18.0, " five": 17.0}
    model, tokenizer, tokens, log_probs = fixed_policy(tmp_path / "p", words, eos_logit=-10.0)
    order = [tokens[w] for w in words]
    probs = log_probs.exp()

    cfg = SamplingConfig(max_new_tokens=8, top_k=2, batch_size=64)
    samples = sampling.generate(model, tokenizer, ["x"], 64, cfg, seed=0, quiet=True)
    drawn = np.concatenate([np.asarray(ids) for ids in samples.completion_ids])
    assert set(drawn.tolist()) <= set(order[:2])
    share = float(probs[order[0]] / (probs[order[0]] + probs[order[1]]))  # renormalised over the top 2
    assert abs((drawn == order[0]).mean() - share) < 4 * math.sqrt(share * (1 - share) / drawn.size)
    # The recorded log-prob is the untruncated policy's (documented), not the renormalised one.
    first = samples.completion_ids[0]
    assert samples.logprob[0] == pytest.approx(float(log_probs[first].sum()), abs=1e-5)

    head = float(probs[order[:3]].sum())  # a nucleus that holds exactly the three likeliest words
    cfg = SamplingConfig(max_new_tokens=8, top_p=head - 0.01, batch_size=64)
    samples = sampling.generate(model, tokenizer, ["x"], 64, cfg, seed=0, quiet=True)
    drawn = np.concatenate([np.asarray(ids) for ids in samples.completion_ids])
    assert set(drawn.tolist()) == set(order[:3])


def test_inverse_cdf_sampler_matches_the_weights_and_never_draws_a_zero():
    weights = torch.tensor([[0.0, 1.0, 2.0, 0.0, 7.0, 0.0]] * 4000)
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([sampling.sample_tokens(weights, generator)[0] for _ in range(5)]).numpy()
    assert torch.equal(sampling.sample_tokens(weights, generator)[1], torch.full((4000,), 10.0, dtype=torch.float64))
    counts = np.bincount(draws, minlength=6)
    assert counts[[0, 3, 5]].sum() == 0
    expected = np.array([0, 1, 2, 0, 7, 0]) / 10 * draws.size
    se = np.sqrt(expected * (1 - expected / draws.size))
    assert np.all(np.abs(counts - expected)[[1, 2, 4]] < 4 * se[[1, 2, 4]])
    # Only the first or only the last token has weight: always drawn, never a neighbour.
    edge = torch.zeros(3, 5)
    edge[0, 0] = edge[1, 4] = 1e-30
    edge[2, 4] = 3.0
    assert sampling.sample_tokens(edge, generator)[0].tolist() == [0, 4, 4]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_gives_every_prompt_to_exactly_one_process_in_whole_batches(world):
    for prompt_count in range(0, 23):
        for samples_per_prompt, batch_size in [(1, 4), (3, 8), (4, 4), (8, 4), (2, 32)]:
            size = sampling.prompts_per_batch(samples_per_prompt, batch_size)
            shares = [sampling.shard(prompt_count, samples_per_prompt, batch_size, r, world) for r in range(world)]
            assert sorted(i for share in shares for i in share) == list(range(prompt_count))
            for share in shares:  # a process holds a batch whole or not at all, in increasing order
                assert share == sorted(share)
                batches = {i // size for i in share}
                assert share == [i for i in range(prompt_count) if i // size in batches]
            # Round-robin: no process holds two batches more than another.
            counts = [len({i // size for i in share}) for share in shares]
            assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("samples_per_prompt, batch_size", [(3, 6), (5, 2)])  # 2 prompts a batch; 3 rounds a prompt
def test_processes_sampling_their_shards_draw_what_one_process_draws(tiny, samples_per_prompt, batch_size):
    """The property that makes best-of-n and comparison data independent of the number of processes."""
    model, tokenizer = tiny
    prompts = [*PROMPTS, "Once upon a time", "The menu said"]
    cfg = SamplingConfig(max_new_tokens=5, batch_size=batch_size)
    one = sampling.generate_share(model, tokenizer, prompts, list(range(len(prompts))), samples_per_prompt, cfg,
                                  seed=3)
    for world in (2, 3):
        shares = [sampling.generate_share(model, tokenizer, prompts,
                                          sampling.shard(len(prompts), samples_per_prompt, batch_size, rank, world),
                                          samples_per_prompt, cfg, seed=3) for rank in range(world)]
        merged = pd.concat(shares, ignore_index=True).sort_values("prompt_id", kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(merged, one, check_exact=True)
    # Each batch has a stream of its own: the same prompt in two batches gets other completions.
    twice = sampling.generate_share(model, tokenizer, ["Hi", "Hi"], [0, 1], 4, SamplingConfig(max_new_tokens=5,
                                    batch_size=4), seed=3)
    assert twice["completion"][:4].tolist() != twice["completion"][4:].tolist()
    other = sampling.generate_share(model, tokenizer, prompts, list(range(len(prompts))), samples_per_prompt, cfg,
                                    seed=4)
    assert not other["completion"].equals(one["completion"])


def test_an_empty_share_is_an_empty_frame(tiny):
    model, tokenizer = tiny
    frame = sampling.generate_share(model, tokenizer, PROMPTS, [], 4, SamplingConfig(max_new_tokens=3), seed=0)
    assert len(frame) == 0 and list(frame.columns) == ["prompt_id", "prompt", "completion", "tokens", "logprob",
                                                       "ended"]
