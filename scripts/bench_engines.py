"""Tokens per second of the two sampling engines, --engine hf and --engine vllm, as a ratio in one run.

Run from the repository root in the vLLM venv (`make setup-vllm`; `make bench-engines` runs this):

    .venv-vllm/bin/python scripts/bench_engines.py                    # tiny and smollm2-135m, bf16 autocast
    .venv-vllm/bin/python scripts/bench_engines.py --models tiny --repeats 1

For each model, on the same eval prompts, the same N and the same max_new_tokens, both at one --precision
(default bf16: transformers under bf16 autocast with fp32 weights, vLLM with bf16 weights), it times
  hf           `sampling.generate`, bonrl's sampler (log-probs recorded as it samples);
  vllm         `vllm_engine.VLLMSampler` as every stage calls it: vLLM proposes the tokens, then the
               transformers model re-scores them (one forward pass over prompt + completion, under the
               same autocast), so the records are the hf sampler's;
  vllm engine  vLLM's proposal alone (what the engine itself does; the re-scoring is the difference),
and reports generated tokens per second (each sequence's tokens up to and including its EOS) and the ratio
to hf. The engine's start (once per stage in bonrl) is reported apart, and so is the reload of the
policy's weights into the engine (what an RL step sampling through vLLM would add to each rollout). Each method runs --repeats times,
alternating, after a small untimed warm-up; the median is reported.

The machine may be shared: both engines run with --threads threads (torch threads here, OMP threads in
vLLM's worker process, which is not pinned to cores; see vllm_engine.py), and alternating the methods
spreads a neighbour's load over both. Results on a 2-core machine shared with other jobs vary by ±30%
from run to run; the ratio within one run is the number to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--prompts", type=int, default=16, help="eval prompts")
    parser.add_argument("--n", type=int, default=64, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64, help="hf sampler: sequences per forward pass")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # vLLM's worker process inherits it

    import torch

    from bon_vs_rl.config.base import SamplingConfig
    from bon_vs_rl.measurement import prompts as prompt_sets

    torch.set_num_threads(args.threads)
    prompts = prompt_sets.load_prompts("builtin", "eval", args.prompts)
    cfg = SamplingConfig(engine="vllm", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"{len(prompts)} prompts x N={args.n} x {args.max_new_tokens} new tokens, {args.precision}, "
          f"{args.threads} thread(s) each; {os.cpu_count()} CPU cores (shared: see the docstring)", flush=True)
    print(f"{'model':<14} {'method':<12} {'tokens':>7} {'tok/s':>8} {'vs hf':>6}  runs (tok/s)", flush=True)
    for spec in args.models.split(","):
        bench_model(spec, args, prompts, cfg)


def bench_model(spec: str, args, prompts: list[str], cfg) -> None:
    import torch

    from bon_vs_rl.measurement import models, sampling, vllm_engine

    cpu = torch.device("cpu")
    model, tokenizer = models.load_policy(spec, cpu)
    start = time.perf_counter()
    engine = vllm_engine.VLLMSampler(models.resolve_model_path(spec), cfg, cpu, args.precision, quiet=True)
    started = time.perf_counter() - start
    encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    eos = sampling.eos_token_ids(model, tokenizer)

    def hf(seed, k=len(prompts), n=args.n):
        with models.autocast(cpu, args.precision):
            samples = sampling.generate(model, tokenizer, prompts[:k], n, cfg, seed=seed, quiet=True)
        return int(samples.token_count.sum())

    def vllm(seed, k=len(prompts), n=args.n):
        with models.autocast(cpu, args.precision):
            samples = engine(model, tokenizer, prompts[:k], n, cfg, seed=seed, quiet=True)
        return int(samples.token_count.sum())

    def proposal(seed, k=len(prompts), n=args.n):
        ids, _ = engine.propose(encoded[:k], n, cfg, [seed + 7919 * i for i in range(k)], eos)
        return sum(len(c) for rows in ids for c in rows)

    methods = {"hf": hf, "vllm": vllm, "vllm engine": proposal}
    for method in methods.values():  # warm-up (2 prompts x 8): first calls allocate caches and pick kernels
        method(10_000, 2, 8)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    tokens: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, method in methods.items():
            start = time.perf_counter()
            tokens[name] = method(repeat)
            rates[name].append(tokens[name] / (time.perf_counter() - start))
    syncs = []  # RL through vLLM would reload the policy's weights into the engine after every update
    for _ in range(args.repeats):
        start = time.perf_counter()
        engine.sync_weights(model)
        syncs.append(time.perf_counter() - start)
    engine.close()
    base = statistics.median(rates["hf"])
    for name in methods:
        rate = statistics.median(rates[name])
        runs = " ".join(f"{r:.0f}" for r in rates[name])
        print(f"{spec:<14} {name:<12} {tokens[name]:>7} {rate:>8.0f} {rate / base:>5.2f}x  {runs}", flush=True)
    print(f"{spec:<14} vllm engine start: {started:.0f} s (once per stage)", flush=True)
    # An RL rollout (PPO's default: 16 prompts x 1 sample x 24 tokens) through vLLM costs a weight reload
    # plus the sampling; through hf, the sampling alone (rates at this run's batch size: an upper bound
    # for vLLM, whose rate falls with 16 sequences instead of N x prompts).
    sync, rollout = statistics.median(syncs), 16 * 24
    print(f"{spec:<14} weight reload {sync:.2f} s; a 16 x 24-token rollout: hf {rollout / base:.2f} s, "
          f"vllm >= {sync + rollout / statistics.median(rates['vllm']):.2f} s", flush=True)

if __name__ == "__main__":  # vLLM starts worker processes
    main()
