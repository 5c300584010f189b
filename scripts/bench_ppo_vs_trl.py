"""Time one step of bonrl's PPO against one step of TRL's RLOOTrainer, per generated token, and peak memory.

Run from the repository root (HF_HUB_OFFLINE=1; offline model aliases only):

    .venv/bin/python scripts/bench_ppo_vs_trl.py                      # tiny policy, 16 completions x 24 tokens
    .venv/bin/python scripts/bench_ppo_vs_trl.py --model smollm2-135m --steps 3

Same model, same train prompts, same number of completions per step (--batch), same completion length
(--max-new-tokens), same reward (the VADER scorer, cheap and identical for both), β = 0.05, one reference
model each. Three set-ups, each in its own subprocess so their memory peaks do not mix:

    ppo-1x1     bonrl ppo with ppo_epochs=1 and one minibatch of the whole batch: the same number of
                gradient passes as RLOO's one update per generation batch (the like-for-like comparison)
    ppo-4x2     bonrl ppo with its defaults (4 epochs over minibatches of 8): more optimization per sample
    trl-rloo    TRL's RLOOTrainer (num_iterations=1; --batch completions = batch / 4 prompts x 4)

A step is everything between two optimizer updates: sampling, scoring, reference and policy forward
passes, backward and optimizer step; evaluations and checkpoints are outside it (PPO's `time/step_s`;
for TRL, on_step_begin -> on_step_end). The first --warmup steps are not timed. Reported: median seconds
per step, generated completion tokens per step (each sequence up to and including its EOS), milliseconds
per generated token, and the peak resident memory of the process (ru_maxrss: weights, optimizer state,
activations and the Python/torch runtime). Each set-up runs --repeats times, alternating; medians over
repeats. The machine may be shared: look at the spread, not one number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

SETUPS = ("ppo-1x1", "ppo-4x2", "trl-rloo")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child_ppo(args, workdir: Path, epochs: int, minibatch: int) -> dict:
    from bon_vs_rl.config import commands as C
    from bon_vs_rl.config.base import resolve
    from bon_vs_rl.methods import ppo

    cfg = resolve(C.PPOConfig, {}, dict(
        policy=args.model, proxy="vader", gold="vader", steps=args.warmup + args.steps,
        eval_every=10**6, eval_prompts=1, eval_samples_per_prompt=1, rollout_batch_size=args.batch,
        minibatch_size=minibatch, ppo_epochs=epochs, max_new_tokens=args.max_new_tokens, beta=0.05,
        learning_rate=1e-5, device=args.device, quiet=True, output=str(workdir / "out"),
        results=str(workdir / "results.sqlite"), seed=args.seed))
    steps: list[dict] = []
    ppo.train(cfg, on_step=steps.append)
    timed = steps[args.warmup:]
    return {"seconds": [m["time/step_s"] for m in timed], "tokens": [m["rollout/tokens"] for m in timed]}


def child_rloo(args, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOTrainer

    from bon_vs_rl.config import commands as C
    from bon_vs_rl.config.base import resolve
    from bon_vs_rl.measurement import models, scorers
    from bon_vs_rl.measurement import prompts as prompt_sets
    from bon_vs_rl.methods import trl_rl

    cfg = resolve(C.RLConfig, {}, dict(
        algo="rloo", policy=args.model, proxy="vader", gold="vader", steps=args.warmup + args.steps,
        rollout_batch_size=args.batch, generations_per_prompt=4, max_new_tokens=args.max_new_tokens, beta=0.05,
        learning_rate=1e-5, device=args.device, quiet=True, output=str(workdir / "out"), seed=args.seed))
    use_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = models.resolve_device(args.device)
    policy, tokenizer = models.load_policy(cfg.policy, device, dtype=torch.float32)
    prompts = trl_rl.truncate_prompts(tokenizer, prompt_sets.load_prompts(cfg.prompts, "train"), cfg.max_prompt_tokens)
    counter = trl_rl.TokenCounter()
    reward = trl_rl.make_reward_function(scorers.load_scorer("vader"), counter, workdir)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.tokens, self.start, self.before = [], [], 0.0, 0

        def on_step_begin(self, args_, state, control, **kwargs):
            self.start, self.before = time.perf_counter(), counter.tokens

        def on_step_end(self, args_, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)
            self.tokens.append(counter.tokens - self.before)

    timer = StepTimer()
    bf16 = use_cuda and torch.cuda.is_bf16_supported()
    trainer = RLOOTrainer(model=policy, reward_funcs=reward, args=trl_rl.trl_arguments(cfg, 1, use_cuda, bf16),
                          train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tokenizer,
                          callbacks=[timer])
    trainer.train()
    return {"seconds": timer.seconds[args.warmup:], "tokens": timer.tokens[args.warmup:]}


def run_child(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.child == "trl-rloo":
            out = child_rloo(args, workdir)
        else:
            epochs, minibatch = (1, args.batch) if args.child == "ppo-1x1" else (4, 8)
            out = child_ppo(args, workdir, epochs, minibatch)
    out["peak_rss_mib"] = peak_rss_mib()
    if torch.cuda.is_available():
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny (default) or smollm2-135m (or a path)")
    parser.add_argument("--batch", type=int, default=16, help="completions per step (a multiple of 8)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each set-up, alternating")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated subset of " + ", ".join(SETUPS))
    parser.add_argument("--child", choices=SETUPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    setups = [s for s in args.setups.split(",") if s]
    passed = [a for a in sys.argv[1:]]
    runs: dict[str, list[dict]] = {s: [] for s in setups}
    for repeat in range(args.repeats):
        for setup in setups:
            proc = subprocess.run([sys.executable, __file__, *passed, "--child", setup], cwd=ROOT,
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{setup} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            runs[setup].append(json.loads(lines[-1][len("RESULT "):]))
            print(f"repeat {repeat + 1}/{args.repeats} {setup}: done", file=sys.stderr, flush=True)

    print(f"model={args.model} batch={args.batch} max_new_tokens={args.max_new_tokens} steps={args.steps} "
          f"(+{args.warmup} warm-up) repeats={args.repeats} threads={args.threads or 'default'} device={args.device}")
    print(f"{'set-up':10} {'s/step':>8} {'tokens/step':>12} {'ms/token':>9} {'peak RSS MiB':>13}  per-repeat ms/token")
    per_token = {}
    for setup, results in runs.items():
        seconds = [statistics.median(r["seconds"]) for r in results]
        tokens = [statistics.median(r["tokens"]) for r in results]
        ms = [1000 * sum(r["seconds"]) / sum(r["tokens"]) for r in results]
        per_token[setup] = statistics.median(ms)
        peak = statistics.median(r["peak_rss_mib"] for r in results)
        print(f"{setup:10} {statistics.median(seconds):8.3f} {statistics.median(tokens):12.0f} "
              f"{per_token[setup]:9.3f} {peak:13.0f}  {', '.join(f'{m:.3f}' for m in ms)}")
    if "ppo-1x1" in per_token and "trl-rloo" in per_token:
        ratio = per_token["ppo-1x1"] / per_token["trl-rloo"]
        verdict = "no slower" if ratio <= 1.0 else "SLOWER"
        print(f"bonrl ppo (1 epoch, 1 minibatch) / TRL RLOO, time per generated token: {ratio:.2f} -> {verdict}")


if __name__ == "__main__":
    main()
