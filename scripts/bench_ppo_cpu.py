"""What makes `bonrl ppo` faster on this CPU, measured against the current path in one run.

Run from the repository root (HF_HUB_OFFLINE=1; the first load of smollm2-135m converts it, ~20 s):

    .venv/bin/python scripts/bench_ppo_cpu.py                    # ~6 min on 2 idle cores, far more if shared
    .venv/bin/python scripts/bench_ppo_cpu.py --model tiny --repeats 1   # seconds: checks the script runs

One process, one model load; every variant is timed --repeats times, the variants interleaved (so a
neighbour's load spreads over all of them), the medians reported as a RATIO against the baseline measured
in the same run: speed-up = baseline's ms per token / variant's ms per token (> 1 is faster). The baseline
is the current path of configs/cpu-demo.yaml: fp32 weights and arithmetic, the top 4 decoder blocks
trained, rollout batch 16, minibatch 8, prompts of ≤ 32 tokens, 16 new tokens.

The three pieces of a PPO step (bon_vs_rl/methods/ppo.py), timed separately on the same sampled batch:
    sample     the rollout: sampling.generate, per generated token
    logprob    a no-grad forward pass of the whole batch (done twice per step: policy and reference),
               per completion token
    train      one minibatch update: forward with values, clipped policy + value loss, backward, gradient
               clipping, AdamW step; per completion token
and a modelled whole step, sample + 2 logprob + epochs × (rollout/minibatch) train, as PPO runs them.

Variants: precision (fp32; bf16 autocast over fp32 weights — what --precision bf16 does; bf16 weights,
sampling and log-probs only: the optimizer needs fp32 weights), what is trained (top k = 2, 4, 8 blocks;
LoRA rank 8, 16 on every linear layer), and batch sizes (sampling 8 / 16 / 32 sequences per pass;
minibatch 4 / 8 / 16). Each variant changes one thing from the baseline.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def sample_timer(model, tokenizer, prompts, cfg, autocast, seed):
    """ms per generated token of one rollout."""
    from bon_vs_rl.measurement import sampling

    def run(repeat: int) -> float:
        start = time.perf_counter()
        with autocast():
            out = sampling.generate(model, tokenizer, prompts, 1, cfg, seed=seed + repeat, quiet=True)
        return 1000 * (time.perf_counter() - start) / max(int(out.token_count.sum()), 1)

    return run


def logprob_timer(model, batch, cfg, autocast):
    """ms per completion token of one no-grad log-prob pass over the batch (PPO does two per step)."""
    from bon_vs_rl.measurement.evaluate import token_logprobs

    tokens = float(batch.completion_mask.sum())

    def run(repeat: int) -> float:
        start = time.perf_counter()
        token_logprobs(model, batch, cfg.temperature, len(batch.input_ids), autocast)
        return 1000 * (time.perf_counter() - start) / tokens

    return run


def train_timer(lm, batch, minibatch: int, cfg, autocast, top_layers: int = 0, lora_rank: int = 0):
    """ms per completion token of one PPO minibatch update (forward, losses, backward, clip, AdamW step)."""
    import torch

    from bon_vs_rl.measurement.evaluate import gather_logprobs
    from bon_vs_rl.methods import ppo

    lm = copy.deepcopy(lm)
    if lora_rank:
        lm = ppo.add_lora(lm, lora_rank)
    else:
        ppo.train_only_top_layers(lm, min(top_layers, len(ppo.decoder_layers(lm))))  # tiny has 2 blocks
    model = ppo.PolicyWithValueHead(lm)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6, eps=1e-5)
    part = batch[slice(0, minibatch)]
    mask = part.completion_mask
    generator = torch.Generator().manual_seed(0)
    advantages = torch.randn(mask.shape, generator=generator) * mask
    returns = torch.randn(mask.shape, generator=generator) * mask
    with torch.no_grad(), autocast():
        logits, values = model(part.input_ids, part.attention_mask, part.position_ids, part.completion_ids, 1.0)
        old_logprobs = gather_logprobs(logits, part.completion_ids, mask)
        old_values = values.float() * mask
    tokens = float(mask.sum())

    def run(repeat: int) -> float:
        start = time.perf_counter()
        with autocast():
            logits, values = model(part.input_ids, part.attention_mask, part.position_ids, part.completion_ids, 1.0)
        new_logprobs = gather_logprobs(logits, part.completion_ids, mask)
        pg = ppo.clipped_policy_loss(new_logprobs, old_logprobs, advantages, mask, 0.2)
        value_loss, _ = ppo.clipped_value_loss(values.float(), old_values, returns, mask, 0.2)
        (pg.loss + 0.1 * value_loss).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return 1000 * (time.perf_counter() - start) / tokens

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rollout", type=int, default=16, help="rollout batch (sequences), as cpu-demo")
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="PPO epochs, for the modelled whole step")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--max-prompt-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import contextlib
    import warnings

    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)

    from bon_vs_rl.config.base import SamplingConfig
    from bon_vs_rl.measurement import models, sampling
    from bon_vs_rl.measurement import prompts as prompt_sets
    from bon_vs_rl.measurement.evaluate import pack_completions

    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    cpu = torch.device("cpu")
    lm, tokenizer = models.load_policy(args.model, cpu)  # fp32 weights, eval mode
    models.disable_dropout(lm)
    bf16_lm = copy.deepcopy(lm).to(torch.bfloat16)
    prompts = prompt_sets.load_prompts("builtin", "train")[: max(32, args.rollout)]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                         batch_size=args.rollout)
    fp32 = contextlib.nullcontext
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731 -- what --precision bf16 does

    # One rollout, packed as PPO packs it: the batch every log-prob and train timing uses.
    rollout = sampling.generate(lm, tokenizer, prompts[: args.rollout], 1, cfg, seed=args.seed, quiet=True)
    encoded = sampling.encode_prompts(tokenizer, prompts[: args.rollout], cfg.max_prompt_tokens)
    batch = pack_completions([encoded[i] for i in rollout.prompt_index], rollout.completion_ids,
                             rollout.token_count, tokenizer.pad_token_id, cpu)

    def sample_at(batch_size: int, model=lm, autocast=fp32):
        n = max(batch_size, args.rollout)
        return sample_timer(model, tokenizer, prompts[:n], SamplingConfig(
            max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens, batch_size=batch_size),
            autocast, args.seed)

    timers = {  # (piece, variant): ms per token; the baseline of each piece is its first entry
        ("sample", "fp32 (baseline)"): sample_at(args.rollout),
        ("sample", "bf16 autocast"): sample_at(args.rollout, autocast=bf16),
        ("sample", "bf16 weights"): sample_at(args.rollout, model=bf16_lm),
        ("sample", "batch 8"): sample_at(8),
        ("sample", "batch 32"): sample_at(32),
        ("logprob", "fp32 (baseline)"): logprob_timer(lm, batch, cfg, fp32),
        ("logprob", "bf16 autocast"): logprob_timer(lm, batch, cfg, bf16),
        ("logprob", "bf16 weights"): logprob_timer(bf16_lm, batch, cfg, fp32),
        ("train", "top-4 fp32 (baseline)"): train_timer(lm, batch, args.minibatch, cfg, fp32, top_layers=4),
        ("train", "top-4 bf16 autocast"): train_timer(lm, batch, args.minibatch, cfg, bf16, top_layers=4),
        ("train", "top-2"): train_timer(lm, batch, args.minibatch, cfg, fp32, top_layers=2),
        ("train", "top-8"): train_timer(lm, batch, args.minibatch, cfg, fp32, top_layers=8),
        ("train", "LoRA r=8"): train_timer(lm, batch, args.minibatch, cfg, fp32, lora_rank=8),
        ("train", "LoRA r=16"): train_timer(lm, batch, args.minibatch, cfg, fp32, lora_rank=16),
        ("train", f"minibatch {args.minibatch // 2}"): train_timer(lm, batch, args.minibatch // 2, cfg, fp32,
                                                                   top_layers=4),
        ("train", f"minibatch {args.minibatch * 2}"): train_timer(lm, batch, min(args.minibatch * 2, args.rollout),
                                                                  cfg, fp32, top_layers=4),
    }
    times: dict[tuple[str, str], list[float]] = {key: [] for key in timers}
    load_before = os.getloadavg()[0]
    for repeat in [args.repeats, *range(args.repeats)]:  # a warm-up pass (first-call allocations), then timed
        for key, run in timers.items():  # interleaved
            value = run(repeat)
            if repeat < args.repeats:
                times[key].append(value)
        print(f"  pass {'warm-up' if repeat == args.repeats else repeat + 1} done at "
              f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    ms = {key: statistics.median(values) for key, values in times.items()}
    best = {key: min(values) for key, values in times.items()}

    print(f"bench_ppo_cpu: {args.model}, {torch.get_num_threads()} torch threads, rollout {args.rollout} x ≤ "
          f"{args.max_new_tokens} new tokens ({int(rollout.token_count.sum())} generated), minibatch "
          f"{args.minibatch}, median of {args.repeats}, 1-min load average {load_before:.2f} before the timed "
          f"passes and {os.getloadavg()[0]:.2f} after, {time.perf_counter() - began:.0f} s in all")
    # speed-up: baseline / variant of the medians; of the fastest repeats too (less sensitive to neighbours).
    print(f"{'piece':<8} {'variant':<24} {'ms/token':>9} {'min-max':>15} {'speed-up':>9} {'(of mins)':>9}")
    baselines: dict[str, tuple[float, float]] = {}
    for (piece, variant), value in ms.items():
        base, base_best = baselines.setdefault(piece, (value, best[(piece, variant)]))
        spread = f"{min(times[(piece, variant)]):.2f}-{max(times[(piece, variant)]):.2f}"
        print(f"{piece:<8} {variant:<24} {value:>9.2f} {spread:>15} {base / value:>9.2f} "
              f"{base_best / best[(piece, variant)]:>9.2f}")

    # A whole step as PPO runs it: one rollout, two log-prob passes, epochs × rollout/minibatch updates
    # (all per token of the same batch, so the pieces add).
    updates = args.epochs * args.rollout // args.minibatch

    def step(sample: str, logprob: str, train: str) -> float:  # every rollout token is trained once per epoch
        return ms[("sample", sample)] + 2 * ms[("logprob", logprob)] + args.epochs * ms[("train", train)]

    whole = {
        "fp32, top-4 (baseline)": step("fp32 (baseline)", "fp32 (baseline)", "top-4 fp32 (baseline)"),
        "bf16 autocast, top-4": step("bf16 autocast", "bf16 autocast", "top-4 bf16 autocast"),
        "fp32, top-2": step("fp32 (baseline)", "fp32 (baseline)", "top-2"),
        "fp32, top-8": step("fp32 (baseline)", "fp32 (baseline)", "top-8"),
        "fp32, LoRA r=8": step("fp32 (baseline)", "fp32 (baseline)", "LoRA r=8"),
        "fp32, LoRA r=16": step("fp32 (baseline)", "fp32 (baseline)", "LoRA r=16"),
    }
    print(f"\nmodelled PPO step ({updates} minibatch updates), ms per rollout token:")
    base = whole["fp32, top-4 (baseline)"]
    for name, value in whole.items():
        print(f"  {name:<24} {value:>9.2f} {base / value:>9.2f}")


if __name__ == "__main__":
    main()
