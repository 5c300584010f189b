"""`bonrl ppo`: PPO against the proxy with a KL penalty to the reference policy, in one file.

The RL half of Gao, Schulman & Hilton (2022): the policy maximizes the proxy reward minus β·KL(π‖π_ref),
and the shared evaluation (`evaluate.py`) measures proxy, gold and KL on held-out prompts at step 0,
every `--eval-every` steps and at the last step, so PPO's points land on best-of-n's axes.

    bonrl ppo --policy smollm2-135m --proxy rm:runs/rm --beta 0.05 --steps 100 --output runs/ppo
    bonrl ppo ... --lora-rank 8            # or --train-top-layers 2: cheaper CPU runs
    bonrl ppo ... --resume                 # continue from the last checkpoint in --output
    bonrl ppo ... --log-with tensorboard   # or wandb, mlflow: per-step metrics and evaluations, live
    accelerate launch bonrl ppo ...        # several GPUs (or CPU processes)

TRL 1.x ships no PPO trainer, so the whole update is written here, CleanRL-style, following Ziegler et
al. 2019 ("Fine-tuning language models from human preferences"), Stiennon et al. 2020 ("Learning to
summarize from human feedback") and Huang et al. 2024 ("The N+ implementation details of RLHF with
PPO"). One step:

1. Rollout. `rollout_batch_size` train prompts (a fresh permutation each pass over the set), one
   completion each, from the shared sampler with the same SamplingConfig as best-of-n and evaluation:
   left padding, each completion stopped at its first EOS (Huang et al. details on padding and
   truncation). Token masks come from the sampler's token counts, never from pad ids (SmolLM2's pad
   id *is* its EOS id).
2. Log-probs at the sampling temperature (logits / T, Huang et al.'s "temperature" detail) of the
   sampled tokens under the policy (with values) and under the frozen reference, by a forward pass
   of the whole batch; the sampler's incremental log-probs are not reused, so old and new log-probs
   of the PPO ratio come from the same computation.
3. Reward (Ziegler et al. eq. 2; Stiennon et al. eq. 1): per token r_t = −β (log π(y_t) − log π_ref(y_t)),
   and the score added at the completion's last token. The score is the proxy normalized once, before
   step 1 (`--normalize-proxy`, on by default): g·proxy + b with gain g = 1/std and bias b = −mean/std of
   the proxy on `--normalize-samples` reference samples of train prompts (population std), so the score
   has mean 0 and std 1 under the initial policy — what Ziegler et al. 2019 and lm-human-preferences do to
   their reward model before RL. β, the value clip and the learning rate then act on a unit-scale reward
   whatever the proxy's units; rows record g and b (proxy_gain_norm, proxy_bias_norm; proxy_gain is
   another thing, the gain over the initial policy) and β in raw proxy units, beta_raw = β/g, the β that
   best-of-n's tilted optimum π_ref·exp(proxy/β) compares with. Rows' proxy_mean stays the raw proxy.
   Optionally the score is also whitened with running mean/std over all rollouts so far
   (`--whiten-rewards`: not a one-off affine map but one that drifts as the policy improves; the
   normalization is then moot, and beta_raw = β·std of the raw proxy so far), and a completion that
   never emitted EOS loses `--missing-eos-penalty` (Huang et al.'s "EOS trick"), in units of the score.
   β is fixed, or adapted by Ziegler et al.'s proportional controller toward `--target-kl`:
       e = clip(KL / target − 1, −0.2, 0.2),   β ← β (1 + e · rollout_batch_size / horizon).
4. GAE(γ, λ) (Schulman et al. 2016) over completion tokens, the value after the last token being 0;
   returns = advantages + values; advantages whitened over the batch's tokens.
5. `ppo_epochs` passes over shuffled minibatches: clipped surrogate (Schulman et al. 2017 eq. 7),
   clipped value loss (Huang et al. detail "value function loss clipping"),
   loss = policy loss + value_coef · value loss, gradient accumulation over
   `gradient_accumulation_steps` minibatches, gradient clipping to `max_grad_norm`, AdamW (ε = 1e-5).
   The learning rate is constant, or (`--lr-schedule linear`) decays linearly to 0 over the run: step s
   uses lr·(1 − (s−1)/steps), as lm-human-preferences and CleanRL anneal it.
   Dropout is off everywhere (the policy and reference are in eval mode with dropout p = 0), so the
   rollout's log-probs and the first epoch's are equal and the first ratio is exactly 1.

Value model: a scalar head on the policy's last hidden state (one linear layer, initialised to zero),
as in Ziegler et al.'s lm-human-preferences, rather than a separate value network (Stiennon et al.,
Huang et al.). Why: one forward and backward pass per minibatch gives log-probs and values together,
and no second 135M-parameter network is held in memory and optimizer state — what makes CPU runs
affordable and keeps our step no slower per generated token than TRL's critic-free RLOO. The cost
Stiennon et al. name — value gradients disturbing the policy's features early in training — is bounded
by value_coef (0.1 by default, lm-human-preferences' vf_coef) and by the zero initialisation (no value
error is back-propagated through a random head). With `--lora-rank` or `--train-top-layers` the head
reads the adapted trunk and is always trained.

Cheaper training: `--lora-rank r` trains LoRA adapters (peft; all linear layers of the trunk, α = 2r,
no adapter dropout) and freezes the rest; `--train-top-layers k` trains only the top k decoder blocks
and the final norm (embeddings and the tied LM head stay frozen).

Multi-process (`accelerate launch`): every process rolls out rollout_batch_size / processes prompts
(and minibatches of minibatch_size / processes); gradients are averaged by DDP through accelerate;
advantage whitening, reward statistics, the KL controller and the metrics use values gathered from all
processes; only the main process writes results rows, checkpoints and samples.

Determinism and resume. Every random draw derives from (seed, step, process): the prompt order, the
sampler's seed and the minibatch shuffles. Checkpoints (every `--checkpoint-every` steps and at the
end, written whole or not at all, the last `--keep-checkpoints` kept) hold the policy, the value head,
the optimizer, the learning-rate schedule, the KL controller, the proxy's normalization (gain and
bias), the running reward statistics, the RNG states, the step, the token counters and the run id.
`--resume` reloads the last one and re-opens the same run in the results table; rows are keyed by
(run, method, proxy, n, step), so evaluations after the checkpoint are written again with the same
values and the table ends exactly as after an uninterrupted run. `--resume` refuses (exit 2, before any
work) when there is no checkpoint and when an option differs from the run's saved config
(config.base.check_resume); a larger --steps continues the run to the new length, restamped into its config
and rows. An --output holds one run (its id in OUTPUT/bonrl_run.json): a second run into it is refused
(exit 2) unless it resumes that run (--resume) or replaces its files (--overwrite, which marks the replaced
run superseded in the table), so no results row points at another run's samples.

Failures. A NaN or inf in a reward, a KL or a loss stops the run (exit 1) and writes the offending batch
(prompts, completions, rewards, KL) to OUTPUT/nonfinite-*.parquet, naming the file. Bad input (negative
β, a batch that does not split into minibatches, a proxy or policy that cannot load, a missing tracker
package) stops before any work, with exit 2 and nothing written.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bon_vs_rl.config.base import check_checkpoint, check_resume, to_dict
from bon_vs_rl.config.commands import PPOConfig
from bon_vs_rl.errors import ConfigError, NonFiniteError
from bon_vs_rl.measurement import models, sampling, scorers
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.measurement.evaluate import (
    Evaluator,
    Packed,
    check_inputs,
    completion_logits,
    gather_logprobs,
    pack_completions,
    save_bad_batch,
    score_or_stop,
    token_logprobs,
)
from bon_vs_rl.record import console, files

CHECKPOINTS = "checkpoints"
# What a run writes into --output; an --overwrite run deletes these (and nothing else) first.
RUN_FILES = (CHECKPOINTS, "eval_samples", "resolved_config.json", "nonfinite-*.parquet", "tensorboard", "wandb",
             "mlruns")
SHOWN = ("objective/kl", "reward/proxy", "reward/gold", "ppo/clipfrac", "ppo/approx_kl", "value/loss", "ppo/beta")


# ----------------------------------------------------------------------------------------------
# The pieces: the policy with its value head, the KL controller, running reward statistics.


class PolicyWithValueHead(nn.Module):
    """The policy LM and a scalar value head on its last hidden state (why shared: module docstring)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.value_head = nn.Linear(lm.config.get_text_config().hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, completion_ids, temperature: float):
        """Logits (/ temperature) predicting each completion token and the value V(x, y_<t) before it."""
        batch = Packed(input_ids, attention_mask, position_ids, completion_ids, None, 0)
        out, logits = completion_logits(self.lm, batch, temperature, output_hidden_states=True)
        hidden = out.hidden_states[-1][:, -(completion_ids.shape[1] + 1):-1]
        return logits, self.value_head(hidden.float()).squeeze(-1)


@dataclass
class KLController:
    """Fixed β, or Ziegler et al. (2019) §2.2's proportional controller toward a target KL."""

    beta: float
    adaptive: bool
    target: float
    horizon: int

    def update(self, kl: float, episodes: int) -> None:
        if self.adaptive:
            error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))
            self.beta *= 1.0 + error * episodes / self.horizon


@dataclass
class RunningMoments:
    """Mean and variance of every proxy score seen so far (Chan et al.'s parallel update), float64."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: np.ndarray) -> None:
        n, mean, m2 = len(x), float(np.mean(x)), float(np.sum((x - np.mean(x)) ** 2))
        delta, total = mean - self.mean, self.count + n
        self.mean += delta * n / total
        self.m2 += m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / max(self.count - 1, 1.0)))


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs (state.json)."""

    step: int
    run_id: str | None
    kl: KLController
    scores: RunningMoments
    generated_tokens: int = 0
    trained_tokens: int = 0
    # The proxy's normalization, fixed before step 1 (identity when off): score = gain · proxy + bias.
    proxy_gain_norm: float = 1.0
    proxy_bias_norm: float = 0.0
    # d score / d proxy at the last step (gain, or gain / running std when whitening; None before step 1
    # then): β / score_scale is β in raw proxy units.
    score_scale: float | None = 1.0

    def beta_raw(self) -> float | None:
        return None if self.score_scale is None else self.kl.beta / self.score_scale

    def row_fields(self) -> dict:
        """What every results row records about the reward's scale (module docstring, step 3)."""
        return {"proxy_gain_norm": self.proxy_gain_norm, "proxy_bias_norm": self.proxy_bias_norm,
                "beta_raw": self.beta_raw()}


# ----------------------------------------------------------------------------------------------
# Small numeric helpers (Huang et al. 2024 implement the same ones as masked_mean / masked_whiten).


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def global_mean(accelerator, x: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Mean over every process's elements (weighted by the mask); accelerator None: this process only."""
    mask = torch.ones_like(x) if mask is None else mask
    totals = torch.stack([(x * mask).sum(), mask.sum()]).double()
    if accelerator is not None:
        totals = accelerator.reduce(totals, reduction="sum")
    return float(totals[0] / totals[1].clamp(min=1.0))


def masked_whiten(accelerator, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over the valid tokens of the whole (all-process) batch; 0 outside the mask."""
    mean = global_mean(accelerator, x, mask)
    var = global_mean(accelerator, (x - mean) ** 2, mask)
    return (x - mean) * (var + 1e-8) ** -0.5 * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over completion tokens.

    values are 0 past each completion's end, so the value after the last token is 0 (terminal)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # the clipped surrogate, negated for minimization, masked token mean
    ratio: torch.Tensor  # π_new / π_old per token (1 outside the mask)
    log_ratio: torch.Tensor  # log π_new − log π_old per token (0 outside the mask)
    clipped: torch.Tensor  # 1.0 where the clipped term was the one taken


def clipped_policy_loss(new_logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_range: float) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss averaged over the valid tokens:

        L = mean_t max(−A_t r_t, −A_t clip(r_t, 1 − ε, 1 + ε)),   r_t = π(y_t) / π_old(y_t),

    i.e. −min(r A, clip(r) A): a step that would move the ratio past 1 ± ε in the advantage's direction
    gains nothing, so one rollout batch can be reused for several epochs."""
    log_ratio = (new_logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.max(pg_unclipped, pg_clipped), mask)
    return PolicyLoss(loss, ratio, log_ratio, (pg_clipped > pg_unclipped).float())


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (Huang et al. 2024, "value function loss clipping"; the PPO2 baselines):

        L_V = ½ mean_t max((V − R)², (V_old + clip(V − V_old, −c, c) − R)²),

    the new value may move at most c from the rollout's before the loss stops rewarding it.
    Returns (loss, clipped): clipped is 1.0 where the clipped error was the larger."""
    value_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    unclipped_error, clipped_error = (values - returns) ** 2, (value_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    return loss, (clipped_error > unclipped_error).float()


def kl_penalty_rewards(score: torch.Tensor, kl_tokens: torch.Tensor, last: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards (Ziegler et al. 2019 eq. 2; Stiennon et al. 2020 eq. 1): −β·KL_t at every token,
    the sequence's score added at its last token (`last[i]` = index of sequence i's last token).

    Summed over a sequence this is score − β·KL(sequence), the objective whose maximizer is the reference
    tilted by exp(score / β) (see tilted.py)."""
    rewards = -beta * kl_tokens
    rewards[torch.arange(len(score), device=rewards.device), last] += score
    return rewards


def seed_for(*parts: int) -> int:
    """A 63-bit seed from (seed, step, process, purpose): the same step draws the same numbers on resume."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def prompts_for_step(n_prompts: int, step: int, batch: int, seed: int) -> list[int]:
    """Prompt indices of rollout `step` (1-based): consecutive slices of a fresh permutation per pass."""
    out = []
    for position in range((step - 1) * batch, step * batch):
        epoch, offset = divmod(position, n_prompts)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n_prompts)[offset]))
    return out


def normalization(scores: np.ndarray) -> tuple[float, float]:
    """Gain and bias that map the reference's proxy scores to mean 0 and (population) std 1: g = 1/std,
    b = −mean/std (Ziegler et al. 2019, §2; lm-human-preferences normalizes its reward model the same way)."""
    scores = np.asarray(scores, dtype=np.float64)
    std = float(scores.std())
    if not std > 0:
        raise ConfigError(f"normalize_proxy: the proxy gives all {len(scores)} reference samples the same score "
                          f"({scores[0]:.6g}), so it has no scale to normalize; use --no-normalize-proxy")
    return 1.0 / std, -float(scores.mean()) / std


def normalize_proxy(cfg: PPOConfig, accelerator, reference, tokenizer, proxy, train_prompts: list[str],
                    device) -> tuple[float, float]:
    """Sample the reference once on `normalize_samples` train prompts (a seeded permutation, the same on
    every process), score them with the proxy and return (gain, bias). Each process samples its share."""
    rank, world = accelerator.process_index, accelerator.num_processes
    local = cfg.normalize_samples // world
    indices = prompts_for_step(len(train_prompts), 1, cfg.normalize_samples, seed_for(cfg.seed, 3))
    prompts = [train_prompts[i] for i in indices[rank * local:(rank + 1) * local]]
    with models.autocast(device, cfg.precision):  # the reference exactly as the rollouts' log-probs compute it
        samples = sampling.generate(reference, tokenizer, prompts, 1, cfg, seed=seed_for(cfg.seed, 0, rank, 3),
                                    quiet=cfg.quiet or rank != 0, description="ppo: proxy normalization")
    scores = np.asarray(proxy(prompts, samples.completions), dtype=np.float64)
    gathered = accelerator.gather(torch.as_tensor(scores, dtype=torch.float64, device=device)).cpu().numpy()
    if not np.isfinite(gathered).all():
        raise NonFiniteError(f"the proxy gave a non-finite score to {int((~np.isfinite(gathered)).sum())} of the "
                             f"{len(gathered)} reference samples that normalize it; fix the proxy "
                             "(or pass --no-normalize-proxy)")
    return normalization(gathered)


# ----------------------------------------------------------------------------------------------
# What is trained: full weights, LoRA adapters, or the top k decoder blocks.


def decoder_layers(lm) -> nn.ModuleList:
    count = lm.config.get_text_config().num_hidden_layers
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if not lists:
        raise ConfigError("train_top_layers: cannot find this model's decoder layers; use --lora-rank instead")
    return lists[0]


def train_only_top_layers(lm, k: int) -> None:
    layers = decoder_layers(lm)
    if k > len(layers):
        raise ConfigError(f"train_top_layers: {k} exceeds the model's {len(layers)} layers; pick k ≤ {len(layers)}")
    lm.requires_grad_(False)
    for layer in list(layers)[-k:]:
        layer.requires_grad_(True)
    # The final norm reads the top block's output; embeddings and a tied LM head belong to the bottom.
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else lm
    for name in ("norm", "final_layernorm", "ln_f"):
        if isinstance(getattr(decoder, name, None), nn.Module):
            getattr(decoder, name).requires_grad_(True)


def add_lora(lm, rank: int):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    return get_peft_model(lm, config)


def lr_scheduler(cfg: PPOConfig, optimizer):
    """None (constant), or linear decay: the k-th scheduler step (k PPO steps done) sets lr·(1 − k/steps),
    so step s trains at lr·(1 − (s−1)/steps) and the rate would reach 0 after the last step (CleanRL's
    `frac = 1 − (iteration − 1) / num_iterations`)."""
    if cfg.lr_schedule != "linear":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 - k / cfg.steps)


# ----------------------------------------------------------------------------------------------
# Checkpoints: OUTPUT/checkpoints/step-NNNNNN/{policy/, trainer.pt, state.json}, each written whole.


def checkpoint_dirs(output: Path) -> list[Path]:
    root = output / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d{6}", p.name) and (p / "state.json").exists()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(output: Path, keep: int, model: PolicyWithValueHead, tokenizer, optimizer,
                    state: TrainState, cfg: PPOConfig, scheduler=None) -> Path:
    path = output / CHECKPOINTS / f"step-{state.step:06d}"
    with files.atomic_directory(path) as tmp:
        model.lm.save_pretrained(tmp / "policy")  # LoRA: the adapter only; else a full model directory
        tokenizer.save_pretrained(tmp / "policy")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"value_head": model.value_head.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None}, tmp / "trainer.pt")
        files.write_json(tmp / "state.json", {**asdict(state), "config": to_dict(cfg)})  # last: marks it complete
    for old in checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_state(path: Path) -> TrainState:
    data = json.loads((path / "state.json").read_text())
    # Checkpoints written before the proxy was normalized hold no gain and bias: the identity.
    return TrainState(step=data["step"], run_id=data["run_id"], kl=KLController(**data["kl"]),
                      scores=RunningMoments(**data["scores"]), generated_tokens=data["generated_tokens"],
                      trained_tokens=data["trained_tokens"], proxy_gain_norm=data.get("proxy_gain_norm", 1.0),
                      proxy_bias_norm=data.get("proxy_bias_norm", 0.0), score_scale=data.get("score_scale", 1.0))


def restore_trainer(path: Path, model: PolicyWithValueHead, optimizer, scheduler=None) -> None:
    saved = torch.load(path / "trainer.pt", weights_only=False)
    model.value_head.load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])  # its learning rate too: where the schedule had reached
    if scheduler is not None and saved.get("scheduler") is not None:
        scheduler.load_state_dict(saved["scheduler"])
    random.setstate(saved["rng"]["python"])
    np.random.set_state(saved["rng"]["numpy"])
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])


# ----------------------------------------------------------------------------------------------
# Training.


def train(cfg: PPOConfig, on_step: Callable[[dict], None] | None = None, monitor=None) -> str:
    """Run PPO; returns the run id. `on_step(metrics)` is called after every step (benchmarks, tests).
    `monitor`: a `bon_vs_rl.monitor.HackingMonitor`, given every rollout: its gold-free signals join the step's
    metrics (hacking/*), and with its stop=True the run ends after the step its rule fires at."""
    from accelerate import Accelerator

    from bon_vs_rl.record import results, tracking

    console.quiet_libraries(cfg.quiet)
    # 1. Everything that can be bad input, before any work or any file (exit 2).
    use_cuda = models.resolve_device(cfg.device).type == "cuda"  # ConfigError if CUDA is asked for but absent
    # No mixed precision in accelerate: every forward pass runs under models.autocast(device, --precision),
    # the context best-of-n samples under (fp32 weights, bf16 autocast where --precision asks for it).
    accelerator = Accelerator(cpu=not use_cuda, device_placement=False)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if cfg.rollout_batch_size % world or cfg.minibatch_size % world:
        raise ConfigError(f"rollout_batch_size and minibatch_size must be multiples of the {world} processes")
    if cfg.normalize_proxy and cfg.normalize_samples % world:
        raise ConfigError(f"normalize_samples: {cfg.normalize_samples} is not a multiple of the {world} processes")
    device = accelerator.device if world > 1 or cfg.device == "auto" else models.resolve_device(cfg.device)
    output = Path(cfg.output)
    # One run per output directory, refused rather than given a subdirectory per run (as `bonrl sample`
    # does): --output is the handle --resume and the experiment's stages find a run by, so it names one.
    owner = files.output_owner(output, RUN_FILES)
    if owner and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"output: {output} already holds {owner}; pass --resume to continue it, "
                          "--overwrite to replace its files, or a new --output")
    checkpoint = checkpoint_dirs(output)[-1] if cfg.resume and checkpoint_dirs(output) else None
    if checkpoint is not None:  # the checkpoint's weights must fit the model this run builds
        saved = json.loads((checkpoint / "state.json").read_text())["config"]
        # Older checkpoints predate the proxy normalization and the schedule: they ran without them.
        saved = {"normalize_proxy": False, "lr_schedule": "constant", **saved}
        check_checkpoint(cfg, checkpoint, saved, ("policy", "lora_rank", "train_top_layers", "normalize_proxy",
                                                   "lr_schedule"))
        if cfg.lr_schedule == "linear" and saved.get("steps") != cfg.steps:
            raise ConfigError(f"resume: {checkpoint}'s learning rate decays to 0 over steps={saved.get('steps')}; "
                              f"pass --steps {saved.get('steps')} (or start a new run)")
    saved_config = check_resume(cfg, checkpoint is not None, owner, "ppo saves one every --checkpoint-every steps "
                                "and after the last") if cfg.resume else {}
    replaced = files.replaced_runs(output, continuing=checkpoint is not None)
    check_inputs(cfg)  # proxy, gold and --eval-prompts, before any model loads
    accelerator.wait_for_everyone()  # every process has looked before the main one claims the directory
    train_prompts = prompt_sets.load_prompts(cfg.prompts, "train")
    proxy = scorers.load_scorer(cfg.proxy, device, cfg.cache_dir, role="proxy")
    gold = scorers.load_scorer(cfg.gold, device, cfg.cache_dir, role="gold")

    # Policy (fp32 weights: the optimizer needs them) and the frozen reference, also fp32: under the same
    # autocast as best-of-n's policy (--precision; models.autocast), so both are one initial policy.
    if checkpoint is not None and not cfg.lora_rank:
        lm, tokenizer = models.load_policy(str(checkpoint / "policy"), device, cfg.cache_dir, dtype=torch.float32)
    else:
        lm, tokenizer = models.load_policy(cfg.policy, device, cfg.cache_dir, dtype=torch.float32)
    reference, _ = models.load_policy(cfg.policy, device, cfg.cache_dir, dtype=torch.float32)
    reference.requires_grad_(False)
    models.disable_dropout(lm)
    models.disable_dropout(reference)
    if cfg.lora_rank:
        if checkpoint is not None:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(lm, checkpoint / "policy", is_trainable=True)
        else:
            lm = add_lora(lm, cfg.lora_rank)
    elif cfg.train_top_layers:
        train_only_top_layers(lm, cfg.train_top_layers)
    train_prompts = prompt_sets.apply_chat_template(tokenizer, train_prompts, cfg.chat_template)
    evaluator = Evaluator(cfg, "ppo", tokenizer, reference, proxy, gold, output, accelerator,
                          autocast=lambda: models.autocast(device, cfg.precision))

    # 2. The model, its optimizer, the run's state.
    model = PolicyWithValueHead(lm).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  eps=1e-5, weight_decay=0.0)
    scheduler = lr_scheduler(cfg, optimizer)  # stepped once per PPO step, by us: not accelerate's per-process count
    state = TrainState(step=0, run_id=None, kl=KLController(cfg.beta, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon),
                       scores=RunningMoments())
    if checkpoint is not None:
        state = load_state(checkpoint)
        restore_trainer(checkpoint, model, optimizer, scheduler)
        console.note(f"resuming run {state.run_id} from {checkpoint} (step {state.step})", cfg.quiet or not main)
    elif cfg.normalize_proxy:  # before any file is written: a proxy with no spread is bad input (exit 2)
        state.proxy_gain_norm, state.proxy_bias_norm = normalize_proxy(cfg, accelerator, reference, tokenizer, proxy,
                                                                       train_prompts, device)
        console.note(f"proxy normalized on {cfg.normalize_samples} reference samples: score = "
                     f"{state.proxy_gain_norm:.4g}·proxy + {state.proxy_bias_norm:.4g} (β = {cfg.beta:g} is "
                     f"{cfg.beta / state.proxy_gain_norm:.4g} in raw proxy units)", cfg.quiet or not main)
    if checkpoint is None:
        state.score_scale = None if cfg.whiten_rewards else state.proxy_gain_norm
    model, optimizer = accelerator.prepare(model, optimizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    local_batch, local_minibatch = cfg.rollout_batch_size // world, cfg.minibatch_size // world
    config = to_dict(cfg)

    store_context = results.ResultsStore(results.resolve_results_path(cfg.results)) if main else contextlib.nullcontext()
    with store_context as store, (results.run_context(store, "ppo", config, cfg.seed, cfg.experiment,
                                                      run_id=state.run_id, supersedes=replaced)
                                  if main else contextlib.nullcontext()) as run_id, \
            contextlib.ExitStack() as on_exit:
        if main:
            state.run_id = run_id
            if checkpoint is None:  # a new run in this directory (--overwrite): the old run's files go first
                files.clear_outputs(output, RUN_FILES)
            elif saved_config.get("steps", cfg.steps) != cfg.steps:  # resumed to a new length: one run, one setting
                store.restamp(run_id, config, {"setting": evaluator.setting})
            files.claim_output(output, "ppo", run_id)
            files.write_json(output / "resolved_config.json", config)
        evaluator.store, evaluator.run_id = store, run_id
        tracker = tracking.start(cfg.log_with, output, run_id, config, "ppo", cfg.experiment, cfg.quiet) if main \
            else tracking.NoTracker()
        on_exit.callback(tracker.finish)

        def evaluate(step: int, extra: dict | None = None) -> None:
            row = evaluator.evaluate(accelerator.unwrap_model(model).lm, step, state.generated_tokens,
                                     state.trained_tokens, state.kl.beta, {**state.row_fields(), **(extra or {})})
            state.generated_tokens += evaluator.tokens_used
            if row:
                tracker.log(tracking.eval_metrics(row), step)

        if state.step == 0:
            evaluate(0)
        for step in range(state.step + 1, cfg.steps + 1):
            started = time.perf_counter()
            metrics = ppo_step(cfg, step, accelerator, model, optimizer, tokenizer, reference, proxy, gold, state,
                               train_prompts, local_batch, local_minibatch, pad_id, device, output, monitor)
            state.step = step
            if scheduler is not None:
                scheduler.step()
            metrics["time/step_s"] = time.perf_counter() - started
            if main:
                console.note(f"ppo step {step}/{cfg.steps} " + " ".join(
                    f"{k}={metrics[k]:.4g}" for k in SHOWN if k in metrics), cfg.quiet)
            tracker.log(metrics, step)
            if on_step is not None:
                on_step(metrics)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                evaluate(step, {"train_" + k.replace("/", "_"): v for k, v in metrics.items()
                                if k in ("objective/kl", "reward/proxy", "reward/gold")})
            stopping = monitor is not None and monitor.stop and monitor.fired_at is not None
            if stopping and step % cfg.eval_every and step != cfg.steps:
                evaluate(step)  # the run ends here: its last point is measured like any last step
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps or stopping:
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(output, cfg.keep_checkpoints, accelerator.unwrap_model(model), tokenizer,
                                    optimizer, state, cfg, scheduler)
                accelerator.wait_for_everyone()
            if stopping:
                console.note(f"ppo: stopped at step {step}: the hacking monitor's rule fired", cfg.quiet or not main)
                break
    return state.run_id or ""


def ppo_step(cfg: PPOConfig, step: int, accelerator, model, optimizer, tokenizer, reference, proxy, gold,
             state: TrainState, train_prompts: list[str], local_batch: int, local_minibatch: int, pad_id: int,
             device, output: Path, monitor=None) -> dict:
    """One rollout batch and its PPO updates; returns the step's metrics (averaged over processes, except the
    monitor's hacking/* signals: this process's rollout)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    beta = state.kl.beta

    def autocast():  # --precision: the same context as best-of-n's sampling (models.autocast)
        return models.autocast(device, cfg.precision)

    # 1. Rollout: this process's share of the step's prompts, one completion each.
    indices = prompts_for_step(len(train_prompts), step, cfg.rollout_batch_size, cfg.seed)
    prompts = [train_prompts[i] for i in indices[rank * local_batch:(rank + 1) * local_batch]]
    policy = accelerator.unwrap_model(model)
    rollout_start = time.perf_counter()
    with autocast():  # bf16 under --precision bf16 (auto: on GPUs), as in the log-prob passes below
        samples = sampling.generate(policy.lm, tokenizer, prompts, 1, cfg, seed=seed_for(cfg.seed, step, rank, 1),
                                    quiet=cfg.quiet or rank != 0, description=f"ppo rollout {step}")
    rollout_seconds = time.perf_counter() - rollout_start
    encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    batch = pack_completions([encoded[i] for i in samples.prompt_index], samples.completion_ids,
                             samples.token_count, pad_id, device)
    mask = batch.completion_mask
    last = torch.as_tensor(samples.token_count, device=device) - 1  # index of each completion's last token

    # 2. Scores: the proxy is optimized; the gold is only logged.
    scores, scores_ok = score_or_stop(proxy, prompts, samples.completions)
    gold_scores, gold_ok = score_or_stop(gold, prompts, samples.completions)

    # 3. Log-probs at the sampling temperature and values, before any update; the reference's too.
    with torch.no_grad():
        old_logprobs, old_values, entropy = [], [], []
        for start in range(0, local_batch, local_minibatch):
            part = batch[slice(start, start + local_minibatch)]
            with autocast():
                logits, values = policy(part.input_ids, part.attention_mask, part.position_ids, part.completion_ids,
                                        cfg.temperature)
            old_logprobs.append(gather_logprobs(logits, part.completion_ids, part.completion_mask))
            old_values.append(values.float() * part.completion_mask)
            probs = torch.softmax(logits, -1)
            entropy.append(-(probs * torch.log_softmax(logits, -1)).sum(-1) * part.completion_mask)
        old_logprobs, old_values, entropy = torch.cat(old_logprobs), torch.cat(old_values), torch.cat(entropy)
        ref_logprobs = token_logprobs(reference, batch, cfg.temperature, local_minibatch, autocast)

    # 4. Rewards: −β·KL per token, the (whitened, EOS-penalised) proxy score at the last token.
    kl_tokens = (old_logprobs - ref_logprobs) * mask  # k1: log π − log π_ref of the sampled token
    sequence_kl = kl_tokens.sum(1)
    finite = scores_ok and gold_ok and bool(torch.isfinite(sequence_kl).all())
    if accelerator.reduce(torch.tensor(float(not finite), device=device), reduction="sum").item() > 0:
        what = "reward" if not scores_ok else "gold" if not gold_ok else "KL"
        stop(output, f"non-finite {what}", step, rank, world, prompts, samples.completions,
             {"proxy": scores, "gold": gold_scores, "kl": sequence_kl.cpu().numpy()})
    # The proxy's normalization (identity when off), then optional running whitening; score_scale is
    # d score / d proxy, so β / score_scale is the step's β in raw proxy units.
    gain, bias = state.proxy_gain_norm, state.proxy_bias_norm
    all_scores = gain * accelerator.gather(torch.as_tensor(scores, device=device)).cpu().numpy() + bias
    score = gain * torch.as_tensor(scores, dtype=torch.float32, device=device) + bias
    state.score_scale = gain
    if cfg.whiten_rewards:
        state.scores.update(all_scores)
        score = (score - state.scores.mean) / (state.scores.std + 1e-8)
        state.score_scale = gain / (state.scores.std + 1e-8)
    if cfg.missing_eos_penalty is not None:
        score = score - cfg.missing_eos_penalty * torch.as_tensor(~samples.ended, dtype=torch.float32, device=device)
    rewards = kl_penalty_rewards(score, kl_tokens, last, beta)

    # 5. Advantages and returns.
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(accelerator, advantages, mask)

    # 6. PPO epochs over shuffled minibatches, with gradient accumulation.
    update_start = time.perf_counter()
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac",
                                                     "approx_kl", "ratio", "grad_norm")}
    generator = torch.Generator().manual_seed(seed_for(cfg.seed, step, rank, 2))
    trainable = [p for p in model.parameters() if p.requires_grad]
    accumulate = cfg.gradient_accumulation_steps
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(local_batch, generator=generator).to(device)
        for k, start in enumerate(range(0, local_batch, local_minibatch)):
            rows = order[start:start + local_minibatch]
            part, part_mask = batch[rows], mask[rows]
            sync = (k + 1) % accumulate == 0
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                with autocast():
                    logits, values = model(part.input_ids, part.attention_mask, part.position_ids,
                                           part.completion_ids, cfg.temperature)
                new_logprobs = gather_logprobs(logits, part.completion_ids, part_mask)
                pg = clipped_policy_loss(new_logprobs, old_logprobs[rows], advantages[rows], part_mask,
                                         cfg.clip_range)
                value_loss, value_clipped = clipped_value_loss(values.float(), old_values[rows], returns[rows],
                                                               part_mask, cfg.clip_range_value)
                loss = pg.loss + cfg.value_coef * value_loss
                bad_loss = accelerator.reduce(torch.tensor(float(not torch.isfinite(loss)), device=device),
                                              reduction="sum").item() > 0
                if bad_loss:
                    stop(output, "non-finite loss", step, rank, world, prompts, samples.completions,
                         {"proxy": scores, "gold": gold_scores, "kl": sequence_kl.cpu().numpy()})
                accelerator.backward(loss / accumulate)
            if sync:
                grad_norm = accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                stats["grad_norm"].append(float(grad_norm))
            with torch.no_grad():
                stats["policy_loss"].append(pg.loss.item())
                stats["value_loss"].append(value_loss.item())
                stats["clipfrac"].append(masked_mean(pg.clipped, part_mask).item())
                stats["value_clipfrac"].append(masked_mean(value_clipped, part_mask).item())
                # k3 estimator of KL(π_old‖π_new) (Schulman 2020), as CleanRL logs it.
                stats["approx_kl"].append(masked_mean((pg.ratio - 1) - pg.log_ratio, part_mask).item())
                stats["ratio"].append(masked_mean(pg.ratio, part_mask).item())
    update_seconds = time.perf_counter() - update_start

    # 7. Bookkeeping: the KL controller sees the batch's KL; token counters; metrics from all processes.
    kl_mean = global_mean(accelerator, sequence_kl)
    state.kl.update(kl_mean, cfg.rollout_batch_size)
    tokens = int(accelerator.reduce(torch.tensor(int(samples.token_count.sum()), device=device), "sum").item())
    state.generated_tokens += tokens
    state.trained_tokens += tokens
    score_raw = torch.as_tensor(scores, dtype=torch.float32, device=device)
    metrics = {
        "objective/kl": kl_mean,
        "objective/entropy": global_mean(accelerator, entropy, mask),
        "objective/non_score_reward": -beta * kl_mean,
        "objective/rlhf_reward": global_mean(accelerator, score_raw) - beta * kl_mean,
        "reward/proxy": global_mean(accelerator, score_raw),
        "reward/proxy_used": global_mean(accelerator, score),
        "reward/gold": global_mean(accelerator, torch.as_tensor(gold_scores, dtype=torch.float32, device=device)),
        "ppo/beta": beta,
        "ppo/beta_next": state.kl.beta,
        "ppo/beta_raw": beta / state.score_scale,
        "ppo/learning_rate": optimizer.param_groups[0]["lr"],
        "rollout/length": global_mean(accelerator, mask.sum(1)),
        "rollout/ended_frac": global_mean(accelerator, torch.as_tensor(samples.ended, dtype=torch.float32,
                                                                       device=device)),
        "rollout/tokens": tokens,
        "time/rollout_s": rollout_seconds,
        "time/update_s": update_seconds,
    }
    for key, values in stats.items():
        local = torch.tensor(float(np.mean(values)) if values else float("nan"), device=device)
        metrics[("value/" if key.startswith("value") else "ppo/") + key.replace("value_", "")] = float(
            accelerator.reduce(local, "mean"))
    if monitor is not None:  # the rollout before its update, as TRL's reward functions see theirs
        metrics.update(monitor.observe(step, scores, samples.token_count, samples.completions,
                                       kl=sequence_kl.double().cpu().numpy(),
                                       ref_logprob=ref_logprobs.sum(1).double().cpu().numpy()))
    return metrics


def stop(output: Path, what: str, step: int, rank: int, world: int, prompts, completions, columns: dict) -> None:
    """Save the batch that produced a NaN/inf and stop the run (exit 1)."""
    name = f"nonfinite-step-{step:06d}" + (f"-rank{rank}" if world > 1 else "")
    path = save_bad_batch(output, name, {"prompt": prompts, "completion": completions, **columns})
    print(f"bonrl ppo: {what} at step {step}; the batch is saved in {path}", file=sys.stderr, flush=True)
    raise NonFiniteError(f"{what} at step {step}; the batch (prompts, completions, rewards, KL) is saved in {path}")
