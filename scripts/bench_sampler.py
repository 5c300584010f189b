"""Time bonrl's sampler against a plain transformers `generate` loop, then the best-of-n estimator.

Run from the repository root (HF_HUB_OFFLINE=1; the models are the offline aliases):

    .venv/bin/python scripts/bench_sampler.py                          # tiny and smollm2-135m, then the estimator
    .venv/bin/python scripts/bench_sampler.py --models tiny --no-estimator    # a quick run

For each model, on the same eval prompts, the same N and the same max_new_tokens, it times
  bonrl      `sampling.generate` (one prefill per prompt shared by its samples, log-probs recorded), and
  plain HF   a loop over prompts of `model.generate(do_sample=True, num_return_sequences=N, top_k=0,
             top_p=1, temperature=1)`: the policy's own distribution, the same one bonrl samples;
and reports generated tokens per second, counting each sequence's tokens up to and including its EOS
(all max_new_tokens when it has none) for both. Both run with batches of N sequences by default (one
prompt's samples per forward pass), so the comparison is the sampler and not the batch size;
--batch-size lets bonrl batch several prompts' samples together, as `bonrl sample` does. Each method
runs --repeats times, alternating, after one untimed warm-up; the median is reported (the machine may
be shared).

The estimator part runs scripts/bench_bon_estimator.py (1,000 prompts x N = 65,536, every n = 2^k,
against the formula-by-formula loop on a small problem) and prints its output.

On a shared machine, pin one thread per library (`--threads 1` and OPENBLAS_NUM_THREADS=1): with a core
taken by someone else, two torch or OpenBLAS threads wait on each other, and a 2-second estimator run
was measured at 94 s (62 s of CPU spent spinning).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def count_tokens(new_tokens, eos_ids: set[int]) -> int:
    """Tokens up to and including the first EOS of each row; the whole row when it has none."""
    total = 0
    for row in new_tokens.tolist():
        total += next((j + 1 for j, token in enumerate(row) if token in eos_ids), len(row))
    return total


def time_bonrl(model, tokenizer, prompts, n, cfg, seed) -> tuple[int, float]:
    from bon_vs_rl.measurement import sampling

    start = time.perf_counter()
    samples = sampling.generate(model, tokenizer, prompts, n, cfg, seed=seed, quiet=True)
    return int(samples.token_count.sum()), time.perf_counter() - start


def time_plain(model, tokenizer, prompts, n, cfg, seed) -> tuple[int, float]:
    """The plain loop: one `generate` call per prompt with num_return_sequences=N, the same prompt tokens."""
    import torch

    from bon_vs_rl.measurement import sampling

    device = next(model.parameters()).device
    eos = sampling.eos_token_ids(model, tokenizer)
    encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    torch.manual_seed(seed)
    tokens = 0
    start = time.perf_counter()
    for ids in encoded:
        input_ids = torch.tensor([ids], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
                num_return_sequences=n, max_new_tokens=cfg.max_new_tokens, top_k=0, top_p=1.0, temperature=1.0,
                eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
            )
        tokens += count_tokens(out[:, input_ids.shape[1]:], set(eos))
    return tokens, time.perf_counter() - start


def bench_model(spec: str, args) -> list[dict]:
    import torch

    from bon_vs_rl.config.base import SamplingConfig
    from bon_vs_rl.measurement import models
    from bon_vs_rl.measurement import prompts as prompt_sets

    model, tokenizer = models.load_policy(spec, torch.device("cpu"), args.cache_dir)
    prompts = prompt_sets.load_prompts("builtin", "eval", args.prompts)
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size or args.samples)
    cfg.validate()
    warm = prompts[:1]
    time_bonrl(model, tokenizer, warm, args.samples, cfg, args.seed)
    time_plain(model, tokenizer, warm, args.samples, cfg, args.seed)

    runs: dict[str, list[tuple[int, float]]] = {"bonrl": [], "plain HF": []}
    for r in range(args.repeats):
        runs["bonrl"].append(time_bonrl(model, tokenizer, prompts, args.samples, cfg, args.seed + r))
        runs["plain HF"].append(time_plain(model, tokenizer, prompts, args.samples, cfg, args.seed + r))
    rows = []
    for method, results in runs.items():
        rates = [tokens / seconds for tokens, seconds in results]
        rows.append({
            "model": spec, "method": method, "prompts": len(prompts), "N": args.samples,
            "batch": cfg.batch_size if method == "bonrl" else args.samples,
            "tokens": statistics.median(t for t, _ in results),
            "seconds": statistics.median(s for _, s in results), "tokens_per_s": statistics.median(rates),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,smollm2-135m", help="comma-separated model specs")
    parser.add_argument("--prompts", type=int, default=8, help="eval prompts")
    parser.add_argument("--samples", type=int, default=16, help="samples per prompt, N")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=0, help="bonrl's sequences per forward pass (0 = N)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--cache-dir", default=None, help="converted-model cache (default $BONRL_CACHE)")
    parser.add_argument("--no-estimator", action="store_true", help="skip the best-of-n estimator benchmark")
    parser.add_argument("--estimator-prompts", type=int, default=1000)
    parser.add_argument("--estimator-samples", type=int, default=65536)
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for spec in [s for s in args.models.split(",") if s]:
        rows.extend(bench_model(spec, args))

    print(f"sampler: max_new_tokens={args.max_new_tokens}, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeats}")
    print(f"{'model':<14} {'method':<9} {'prompts':>7} {'N':>5} {'batch':>5} {'tokens':>7} {'seconds':>8} "
          f"{'tokens/s':>9} {'ratio':>6}")
    for row in rows:
        plain = next(r for r in rows if r["model"] == row["model"] and r["method"] == "plain HF")
        ratio = row["tokens_per_s"] / plain["tokens_per_s"]
        print(f"{row['model']:<14} {row['method']:<9} {row['prompts']:>7} {row['N']:>5} {row['batch']:>5} "
              f"{row['tokens']:>7.0f} {row['seconds']:>8.2f} {row['tokens_per_s']:>9.0f} {ratio:>6.2f}")
    sys.stdout.flush()

    if not args.no_estimator:
        print("\nbest-of-n estimator (scripts/bench_bon_estimator.py):", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_bon_estimator.py"), "--prompts",
                        str(args.estimator_prompts), "--samples", str(args.estimator_samples)], check=True)


if __name__ == "__main__":
    main()
