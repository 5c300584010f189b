"""`bonrl distill`: fine-tune the policy toward best-of-n against the proxy, measured like BoN and RL.

    bonrl distill --policy smollm2-135m --proxy rm:runs/rm --gold vader --n 8 --objective sft --steps 100
    bonrl distill ... --objective vbon --reference-samples 64
    bonrl distill ... --checkpoint-every 20 --resume

Best-of-n buys gold at n samples per prompt; a distilled policy tries to buy it at one. The question the
report asks of a run: at the same n, how much of best-of-n's gold survives distillation, and at what KL
(best-of-n itself sits at KL ≈ log n − (n−1)/n). Two objectives, both targeting π_BoN, the distribution
of best-of-n of the *reference* (the initial policy) under the proxy r:

sft   Maximum likelihood on best-of-n picks — rejection-sampling fine-tuning (RAFT, Dong et al. 2023; the
      "filtering" side of the seed debate, made into a trained policy). Each step draws n candidates for
      each of --prompts-per-step train prompts, keeps the one the proxy scores highest (ties broken
      uniformly at random, as `bon_estimator` assumes), and takes one gradient step on
          L(θ) = −mean over picks of log π_θ(y_pick | x)      (summed over the pick's tokens, EOS included),
      always on fresh samples. With candidates from the reference (--sample-from reference, the default)
      the picks are draws from π_BoN, so L is the forward KL(π_BoN ‖ π_θ) up to a constant. With
      --sample-from policy the candidates come from the current policy: expert iteration (Anthony et
      al. 2017), whose target moves with it (best-of-n of best-of-n of ...), so its KL keeps growing.

vbon  Variational best-of-n (Amini et al. 2024, "Variational Best-of-N Alignment"): minimize the reverse
      KL(π_θ ‖ π_BoN). Their derivation of the best-of-n distribution gives, for a completion y of
      reward level r(y) with F(r) = P_{y'~π_ref}(r(y') ≤ r) and F⁻(r) = P(r(y') < r),
          π_BoN(y|x) = π_ref(y|x) · g_n(F⁻, F),   g_n(a, b) = (bⁿ − aⁿ) / (b − a)   (= n·a^(n−1) at a = b),
      i.e. Σ_{i=1..n} C(n,i) F⁻^(n−i) π_ref(y)^i for a reward without ties between strings, whose i = 1
      term is the closed form log π_BoN ≈ log π_ref(y) + log n + (n−1)·log F(r(y)). (The ratio form is
      the same distribution for a reward level shared by several strings, ties broken at random.) So
          KL(π_θ ‖ π_BoN) = E_{y~π_θ}[ log π_θ(y) − log π_ref(y) − log g_n(F⁻(r(y)), F(r(y))) ],
      the KL-regularized RL objective with reward log g_n and β = 1 (≈ reward log F, β = 1/(n−1): their
      vBoN bound). F and F⁻ are estimated per prompt from --reference-samples fresh reference samples
      plus y itself (the empirical CDF of those M+1 draws, as in Amini et al.'s code: never 0, and the
      ratio g_n is exact for that empirical distribution). The gradient of the reverse KL is
      E[∇log π_θ(y)·(f(y) − b)] with f = log π_θ − log π_ref − log g_n and any baseline b; we take the
      leave-one-out mean of f over the prompt's --generations-per-prompt policy samples (RLOO, Ahmadian
      et al. 2024) and one on-policy gradient step per batch. (Amini et al. optimize with PPO; the
      objective is theirs, the optimizer is the plainest unbiased one.)

Log-probabilities are at the sampling temperature (logits / T), the policy every evaluation measures.
Evaluation is the one every method shares (`evaluate.Evaluator`, method `distill`) at step 0, every
--eval-every steps and at the last step, each row carrying n, the objective and sample_from (the report
compares the run with best-of-n at the same n), β = NaN (no KL coefficient is set), and the step's
training loss. generated_tokens counts every sampled token (candidates, reference samples, policy
samples, evaluations); trained_tokens the tokens the gradient steps were taken on.

Determinism and resume. Every random draw derives from (seed, step): the step's prompts (a fresh
permutation per pass over the train split), each sampler's seed, the tie-breaking. Checkpoints (every
--checkpoint-every steps and at the end, written whole or not at all, the last --keep-checkpoints kept)
hold the policy, the optimizer, the step, the token counters and the run id; --resume continues from
the last one in the same results-table run, and rows after it are rewritten under the same keys, so the
table ends as after an uninterrupted run. One process (no accelerate launch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bon_vs_rl.config.base import check_checkpoint, check_resume, to_dict
from bon_vs_rl.config.commands import DistillConfig
from bon_vs_rl.errors import ConfigError, NonFiniteError
from bon_vs_rl.measurement import models, sampling, scorers
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.measurement.evaluate import (
    Evaluator,
    check_inputs,
    completion_logits,
    gather_logprobs,
    pack_completions,
    save_bad_batch,
    score_or_stop,
    token_logprobs,
)
from bon_vs_rl.methods.ppo import checkpoint_dirs, prompts_for_step, seed_for, train_only_top_layers
from bon_vs_rl.record import console, files

CHECKPOINTS = "checkpoints"
# What a run writes into --output; an --overwrite run deletes these (and nothing else) first.
RUN_FILES = (CHECKPOINTS, "eval_samples", "resolved_config.json", "nonfinite-*.parquet")


# ----------------------------------------------------------------------------------------------
# The math: best-of-n picks, vBoN's target log-probability and the two losses.


def best_of_n_picks(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[P] index of each row's highest score in [P, n]; ties broken uniformly at random."""
    scores = np.asarray(scores, dtype=np.float64)
    best = scores == scores.max(axis=1, keepdims=True)
    return np.array([rng.choice(np.flatnonzero(row)) for row in best])


def empirical_cdf(scores: np.ndarray, reference_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F̂⁻ and F̂ of each score in [P, k] under its prompt's reference scores [P, M], the score itself
    counted as one of the M + 1 draws: F̂⁻ = #{r_j < r} / (M+1), F̂ = (#{r_j ≤ r} + 1) / (M+1)."""
    scores, reference_scores = np.asarray(scores, np.float64), np.asarray(reference_scores, np.float64)
    M = reference_scores.shape[1]
    below = (reference_scores[:, None, :] < scores[..., None]).sum(-1)
    at_or_below = (reference_scores[:, None, :] <= scores[..., None]).sum(-1) + 1
    return below / (M + 1), at_or_below / (M + 1)


def log_bon_ratio(below: np.ndarray, at_or_below: np.ndarray, n: int) -> np.ndarray:
    """log g_n(a, b) = log((bⁿ − aⁿ) / (b − a)) = log π_BoN(y) − log π_ref(y), for 0 ≤ a < b ≤ 1.

    Written as n·log b + log1p(−(a/b)ⁿ) − log(b − a) so that bⁿ does not underflow for large n."""
    a, b = np.asarray(below, np.float64), np.asarray(at_or_below, np.float64)
    return n * np.log(b) + np.log1p(-((a / b) ** n)) - np.log(b - a)


def vbon_target(ref_logprob: np.ndarray, scores: np.ndarray, reference_scores: np.ndarray, n: int) -> np.ndarray:
    """[P, k] log π_BoN(y|x) of each policy sample: log π_ref(y|x) + log g_n(F̂⁻(r(y)), F̂(r(y)))."""
    return np.asarray(ref_logprob, np.float64) + log_bon_ratio(*empirical_cdf(scores, reference_scores), n)


def vbon_loss(logprob: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrogate whose gradient is an unbiased estimate of ∇ KL(π_θ ‖ π_BoN), and that KL's estimate.

    logprob [P, k]: log π_θ(y) of k samples per prompt drawn from π_θ (with gradient); target [P, k]:
    log π_BoN(y). f = log π_θ − target (no gradient); baseline: the mean of f over the prompt's other
    k − 1 samples; surrogate = mean of (f − baseline)·log π_θ. Returns (surrogate, mean f)."""
    f = (logprob - target).detach()
    k = f.shape[1]
    baseline = (f.sum(1, keepdim=True) - f) / (k - 1)
    return ((f - baseline) * logprob).mean(), f.mean()


def sft_loss(token_logprob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """−mean over sequences of Σ_t log π_θ(y_t | x, y_<t): the negative log-likelihood of whole picks."""
    return -(token_logprob * mask).sum(1).mean()


# ----------------------------------------------------------------------------------------------
# Checkpoints: OUTPUT/checkpoints/step-NNNNNN/{policy/, optimizer.pt, state.json}, each written whole.


@dataclass
class TrainState:
    step: int
    run_id: str | None
    generated_tokens: int = 0
    trained_tokens: int = 0


def save_checkpoint(output: Path, keep: int, policy, tokenizer, optimizer, state: TrainState, cfg) -> None:
    with files.atomic_directory(output / CHECKPOINTS / f"step-{state.step:06d}") as tmp:
        policy.save_pretrained(tmp / "policy")
        tokenizer.save_pretrained(tmp / "policy")
        torch.save({"optimizer": optimizer.state_dict()}, tmp / "optimizer.pt")
        files.write_json(tmp / "state.json", {**asdict(state), "config": to_dict(cfg)})  # last: marks it complete
    for old in checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Training.


def train(cfg: DistillConfig) -> str:
    """Distil best-of-n into the policy with the shared evaluation; returns the run id."""
    from bon_vs_rl.record import results, tracking

    # 1. Everything that can be bad input, before any work or any file (exit 2).
    console.quiet_libraries(cfg.quiet)  # transformers' load bars off; with --quiet, library warnings too
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("distill runs in one process; start it without accelerate launch / torchrun")
    device = models.resolve_device(cfg.device)
    output = Path(cfg.output)
    # One run per output directory, as for ppo/rl (files.output_owner): rows point at its eval samples.
    owner = files.output_owner(output, RUN_FILES)
    if owner and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"output: {output} already holds {owner}; pass --resume to continue it, "
                          "--overwrite to replace its files, or a new --output")
    checkpoint = checkpoint_dirs(output)[-1] if cfg.resume and checkpoint_dirs(output) else None
    if checkpoint is not None:  # the checkpoint must continue this very run
        saved = json.loads((checkpoint / "state.json").read_text())["config"]
        check_checkpoint(cfg, checkpoint, saved, ("policy", "objective", "n", "sample_from", "train_top_layers"))
    saved_config = check_resume(cfg, checkpoint is not None, owner, "distill saves one every --checkpoint-every "
                                "steps and after the last") if cfg.resume else {}
    replaced = files.replaced_runs(output, continuing=checkpoint is not None)
    check_inputs(cfg)  # proxy, gold and --eval-prompts, before any model loads
    train_prompts = prompt_sets.load_prompts(cfg.prompts, "train")
    proxy = scorers.load_scorer(cfg.proxy, device, cfg.cache_dir, role="proxy")
    gold = scorers.load_scorer(cfg.gold, device, cfg.cache_dir, role="gold")
    policy, tokenizer = models.load_policy(str(checkpoint / "policy") if checkpoint else cfg.policy, device,
                                           cfg.cache_dir, dtype=torch.float32)
    reference, _ = models.load_policy(cfg.policy, device, cfg.cache_dir, dtype=torch.float32)
    reference.requires_grad_(False)
    models.disable_dropout(policy)
    models.disable_dropout(reference)
    if cfg.train_top_layers:
        train_only_top_layers(policy, cfg.train_top_layers)
    train_prompts = prompt_sets.apply_chat_template(tokenizer, train_prompts, cfg.chat_template)
    evaluator = Evaluator(cfg, "distill", tokenizer, reference, proxy, gold, output)

    # 2. The optimizer and the run's state.
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=0.0)
    state = TrainState(step=0, run_id=None)
    if checkpoint is not None:
        saved = json.loads((checkpoint / "state.json").read_text())
        state = TrainState(**{k: saved[k] for k in ("step", "run_id", "generated_tokens", "trained_tokens")})
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False)["optimizer"])
        console.note(f"resuming run {state.run_id} from {checkpoint} (step {state.step})", cfg.quiet)
    config = to_dict(cfg)
    described = {"n": cfg.n, "objective": cfg.objective, "sample_from": cfg.sample_from}

    with results.ResultsStore(results.resolve_results_path(cfg.results)) as store, \
            results.run_context(store, "distill", config, cfg.seed, cfg.experiment, run_id=state.run_id,
                                supersedes=replaced) as run_id, \
            contextlib.ExitStack() as on_exit:
        state.run_id = run_id
        if checkpoint is None:  # a new run in this directory (--overwrite): the old run's files go first
            files.clear_outputs(output, RUN_FILES)
        elif saved_config.get("steps", cfg.steps) != cfg.steps:  # resumed to a new length: one run, one setting
            store.restamp(run_id, config, {"setting": evaluator.setting})
        files.claim_output(output, "distill", run_id)
        files.write_json(output / "resolved_config.json", config)
        evaluator.store, evaluator.run_id = store, run_id
        tracker = tracking.start(cfg.log_with, output, run_id, config, "distill", cfg.experiment, cfg.quiet)
        on_exit.callback(tracker.finish)

        def evaluate(step: int, extra: dict) -> None:
            row = evaluator.evaluate(policy, step, state.generated_tokens, state.trained_tokens, float("nan"),
                                     {**described, **extra})
            tracker.log(tracking.eval_metrics(row), step)
            state.generated_tokens += evaluator.tokens_used

        if state.step == 0:
            evaluate(0, {})
        for step in range(state.step + 1, cfg.steps + 1):
            started = time.perf_counter()
            metrics = distill_step(cfg, step, policy, reference, tokenizer, proxy, optimizer, train_prompts, state,
                                   device, output)
            state.step = step
            tracker.log({f"train/{k}": v for k, v in metrics.items()}, step)
            console.note(f"distill ({cfg.objective}, n={cfg.n}) step {step}/{cfg.steps} " + " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items()) + f" ({time.perf_counter() - started:.1f} s)", cfg.quiet)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evaluate(step, {f"train_{k}": v for k, v in metrics.items()})
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
                save_checkpoint(output, cfg.keep_checkpoints, policy, tokenizer, optimizer, state, cfg)
        console.note(f"distill: {cfg.steps} steps done; policy in {checkpoint_dirs(output)[-1] / 'policy'}", cfg.quiet)
    return run_id


def distill_step(cfg: DistillConfig, step: int, policy, reference, tokenizer, proxy, optimizer, train_prompts,
                 state: TrainState, device, output: Path) -> dict:
    """One batch of fresh samples and one gradient step; returns the step's metrics."""
    prompts = [train_prompts[i] for i in prompts_for_step(len(train_prompts), step, cfg.prompts_per_step, cfg.seed)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    P = len(prompts)

    def draw(model, count: int, purpose: int, what: str):
        """`count` samples per prompt and their proxy scores [P, count]; a non-finite score stops the run."""
        samples = sampling.generate(model, tokenizer, prompts, count, cfg, seed=seed_for(cfg.seed, step, 0, purpose),
                                    quiet=cfg.quiet, description=f"distill step {step}: {what}")
        state.generated_tokens += int(samples.token_count.sum())
        sample_prompts = [prompts[i] for i in samples.prompt_index]
        scores, finite = score_or_stop(proxy, sample_prompts, samples.completions)
        if not finite:
            path = save_bad_batch(output, f"nonfinite-step-{step:06d}",
                                  {"prompt": sample_prompts, "completion": samples.completions, "proxy": scores})
            raise NonFiniteError(f"non-finite proxy score at step {step}; the batch is saved in {path}")
        return samples, scores.reshape(P, count)

    def pack(samples, rows):
        return pack_completions([encoded[samples.prompt_index[i]] for i in rows],
                                [samples.completion_ids[i] for i in rows], samples.token_count[rows], pad_id, device)

    # Dropout is off (models.load_policy, disable_dropout): eval mode samples and trains the same network.
    if cfg.objective == "sft":
        sampler = reference if cfg.sample_from == "reference" else policy
        samples, scores = draw(sampler, cfg.n, 1, f"best of {cfg.n} from the {cfg.sample_from}")
        picks = best_of_n_picks(scores, np.random.default_rng(seed_for(cfg.seed, step, 0, 3)))
        batch = pack(samples, np.arange(P) * cfg.n + picks)
        _, logits = completion_logits(policy, batch, cfg.temperature)
        loss = sft_loss(gather_logprobs(logits, batch.completion_ids, batch.completion_mask), batch.completion_mask)
        metrics = {"loss": loss.item(), "proxy_pick": float(scores[np.arange(P), picks].mean()),
                   "proxy_candidates": float(scores.mean())}
    else:
        _, reference_scores = draw(reference, cfg.reference_samples, 2, f"{cfg.reference_samples} reference samples")
        k = cfg.generations_per_prompt
        samples, scores = draw(policy, k, 1, f"{k} policy samples")
        batch = pack(samples, np.arange(P * k))
        ref_logprob = token_logprobs(reference, batch, cfg.temperature, cfg.batch_size).sum(1).reshape(P, k)
        target = vbon_target(ref_logprob.double().cpu().numpy(), scores, reference_scores, cfg.n)
        _, logits = completion_logits(policy, batch, cfg.temperature)
        logprob = gather_logprobs(logits, batch.completion_ids, batch.completion_mask).sum(1).reshape(P, k)
        loss, kl_to_bon = vbon_loss(logprob, torch.as_tensor(target, dtype=logprob.dtype, device=device))
        metrics = {"loss": loss.item(), "kl_to_bon": kl_to_bon.item(), "proxy_policy": float(scores.mean()),
                   "kl": float((logprob.detach() - ref_logprob).mean())}
    if not math.isfinite(loss.item()):
        path = save_bad_batch(output, f"nonfinite-loss-step-{step:06d}", {"prompt": prompts})
        raise NonFiniteError(f"non-finite loss at step {step}; the step's prompts are saved in {path}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
        [p for p in policy.parameters() if p.requires_grad], cfg.max_grad_norm))
    optimizer.step()
    state.trained_tokens += int(batch.completion_mask.sum().item())
    return metrics
