"""The evaluation shared by every RL method (our PPO, TRL's RLOO and GRPO): proxy, gold and KL.

Gao, Schulman & Hilton (2022) plot gold and proxy reward against d = sqrt(KL(π‖π_ref)) for best-of-n
and for RL alike, so an RL run is measured exactly the way `bonrl sample` measures best-of-n: at step 0,
every `eval_every` steps and at the last step,

1. sample `eval_samples_per_prompt` completions for each held-out eval prompt (`prompts.load_prompts(...,
   "eval")`) with the one shared sampler (`sampling.generate`) and the same `SamplingConfig` as BoN
   (temperature, top-k/top-p, max_new_tokens, max_prompt_tokens, chat template). The sampler's seed is
   the same at every evaluation (common random numbers: the step-to-step differences of a curve are
   then less sampling noise);
2. score every sample with the proxy and the gold;
3. estimate KL(π‖π_ref) two ways from the same forward passes of policy and reference, both at the
   sampling temperature over the same padded batch (so at step 0 — policy = reference — both are 0):
     kl          the exact per-token KL, sum over the vocabulary of π log(π/π_ref) at every position of
                 each sampled completion, summed along it. By the chain rule its mean over completions
                 y ~ π is unbiased for KL(π‖π_ref) over whole completions, and it has far less variance
                 than the sampled log-ratio because each position's KL is computed, not sampled.
     kl_sampled  the sampled "k1" estimate, the summed log π(y_t) − log π_ref(y_t) of the sampled tokens
                 (Schulman 2020, "Approximating KL divergence"), kept beside it as a check.
   RL runs refuse top-k/top-p truncation (their ratios and KL assume the untruncated policy), so the
   full softmax is the distribution sampled. A single k1 estimate can be negative by chance; one more
   than 3 standard errors below 0 cannot be, since KL ≥ 0 — it means policy and reference disagree on
   how log-probs are computed. It is recorded as is, flagged by `kl_negative = 1`, and announced.
   Standard errors are taken over prompts (the standard deviation of per-prompt means / sqrt(prompts)),
   because samples of one prompt are correlated;
4. gains over the initial policy, paired by prompt: the first evaluation of a run (step 0, the
   untrained policy) is its initial-policy measurement, and every row records proxy_gain and gold_gain —
   the mean over prompts of (prompt's mean now − its mean at step 0) — with 95% intervals from resampling
   prompts (`statistics.paired_gain_interval`), and kl_lo / kl_hi likewise. Pairing removes the
   prompt-to-prompt variation that an unpaired difference of two means would carry;
5. write one row to the shared results table (method ppo / rloo / grpo), with what the text looks like
   (text_stats: text_tokens, text_words, text_distinct_1/2, text_nonword_share, text_finished,
   text_logprob_per_token and text_ref_logprob_per_token, each a mean over prompts), the gold-free warning
   signs of hacking against the step-0 samples (hacking_signals: signal_proxy_z, signal_above_ref_max,
   signal_length_drift, signal_distinct_2_drift, signal_ref_logprob_drift, ...; an ensemble proxy's members
   are scored one by one for signal_disagreement and kept as proxy_member_<k> columns), and the samples, in
   best-of-n's saved-samples format (`Samples.to_frame`) plus step, completion_ids, ref_logprob, kl and
   kl_sampled columns, to OUTPUT/eval_samples/step-NNNNNN.parquet (the row's samples_path is absolute, so it does
   not depend on the working directory).

Under `accelerate launch` every process samples its share of the eval prompts; the per-sample numbers
are gathered and the main process alone writes the row and the file.

The packing helpers at the end (`pack_completions`, `token_logprobs`) turn prompts and sampled
completions into one left-padded batch with a completion mask built from the sampler's token counts —
never from pad ids, which for SmolLM2 equal the EOS id. PPO uses the same helpers for its rollouts.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bon_vs_rl.errors import ConfigError, NonFiniteError
from bon_vs_rl.measurement import hacking_signals, sampling, scorers, text_stats
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.record import console, files

SECOND = "second_proxy"  # eval-samples column: --second-proxy's score of each sample
NEGATIVE_KL_SIGMAS = 3.0  # an estimate this many standard errors below 0 is impossible by chance alone


def check_inputs(cfg: Any) -> None:
    """Bad input of a method measured by the shared evaluation, before any model loads (exit 2): the proxy and
    gold specs, and no more --eval-prompts than the prompt set holds out."""
    scorers.check_spec(cfg.proxy, "proxy")
    scorers.check_spec(cfg.gold, "gold")
    if cfg.second_proxy:
        scorers.check_spec(cfg.second_proxy, "second-proxy")
        if cfg.second_proxy == cfg.proxy:
            raise ConfigError("second_proxy: it is the proxy itself, whose agreement with itself is 1; pass another, "
                              "independently trained proxy (e.g. --second-proxy rm:runs/rm-b), or drop the flag")
    prompt_sets.load_prompts(cfg.prompts, "eval", cfg.eval_prompts)


@dataclass
class Packed:
    """Prompts (left-padded) followed by completions (right-padded), ready for one forward pass."""

    input_ids: torch.Tensor  # [B, P + T]
    attention_mask: torch.Tensor  # [B, P + T]
    position_ids: torch.Tensor  # [B, P + T]
    completion_ids: torch.Tensor  # [B, T]
    completion_mask: torch.Tensor  # [B, T] float, 1 for t < token_count
    prompt_width: int

    def __getitem__(self, rows) -> Packed:
        return Packed(self.input_ids[rows], self.attention_mask[rows], self.position_ids[rows],
                      self.completion_ids[rows], self.completion_mask[rows], self.prompt_width)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]], token_count, pad_id: int,
                     device) -> Packed:
    """One batch; the completion mask comes from the sampler's token counts (pad == EOS for SmolLM2)."""
    counts = torch.as_tensor(np.asarray(token_count), dtype=torch.long)
    width = max(1, int(counts.max()))
    prompts, prompt_mask = sampling.left_pad(prompt_ids, pad_id, "cpu")
    completions = torch.full((len(completion_ids), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(completion_ids):
        completions[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    completion_mask = (torch.arange(width)[None, :] < counts[:, None]).long()
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at each prompt
    return Packed(torch.cat([prompts, completions], dim=1).to(device), attention_mask.to(device),
                  position_ids.to(device), completions.to(device), completion_mask.float().to(device),
                  prompt_width=prompts.shape[1])


def completion_logits(model, batch: Packed, temperature: float, **kwargs):
    """Model output whose `logits[:, t]` (already / temperature) predict completion token t."""
    width = batch.completion_ids.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=width + 1, use_cache=False, **kwargs)
    # The logit at position P-1+t predicts completion token t; the last position predicts nothing we sampled.
    return out, out.logits[:, :-1].float() / temperature


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[id] per token, 0 where the mask is 0."""
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[..., None]).squeeze(-1) * mask


@torch.no_grad()
def token_logprobs(model, batch: Packed, temperature: float, chunk: int, autocast=None) -> torch.Tensor:
    """Per-token log π(y_t | x, y_<t) at the sampling temperature, [B, T], 0 past each completion's end."""
    out = []
    for start in range(0, len(batch), chunk):
        part = batch[slice(start, start + chunk)]
        with autocast() if autocast else contextlib.nullcontext():
            _, logits = completion_logits(model, part, temperature)
        out.append(gather_logprobs(logits, part.completion_ids, part.completion_mask))
    return torch.cat(out)


@torch.no_grad()
def logprobs_and_exact_kl(policy, reference, batch: Packed, temperature: float, chunk: int, autocast=None):
    """Per-token log π and log π_ref of the sampled tokens and the exact per-token KL, each [B, T].

    KL_t = sum over the vocabulary of π(v | x, y_<t) log(π(v | x, y_<t) / π_ref(v | x, y_<t)), at the
    sampling temperature; 0 past each completion's end. Policy and reference run on the same chunk so
    only one chunk's [chunk, T, vocab] distributions are held at a time.
    """
    logprob, ref_logprob, kl = [], [], []
    for start in range(0, len(batch), chunk):
        part = batch[slice(start, start + chunk)]
        with autocast() if autocast else contextlib.nullcontext():
            _, logits = completion_logits(policy, part, temperature)
            _, ref_logits = completion_logits(reference, part, temperature)
        log_p, log_q = torch.log_softmax(logits, dim=-1), torch.log_softmax(ref_logits, dim=-1)
        ids, mask = part.completion_ids[..., None], part.completion_mask
        logprob.append(log_p.gather(-1, ids).squeeze(-1) * mask)
        ref_logprob.append(log_q.gather(-1, ids).squeeze(-1) * mask)
        kl.append((log_p.exp() * (log_p - log_q)).sum(-1).clamp(min=0.0) * mask)  # clamp: rounding only
    return torch.cat(logprob), torch.cat(ref_logprob), torch.cat(kl)


def per_prompt_means(values, prompt_index) -> tuple[np.ndarray, np.ndarray]:
    """(prompt ids ascending, each prompt's mean of `values`): the unit of sampling is the prompt."""
    values, prompt_index = np.asarray(values, dtype=np.float64), np.asarray(prompt_index)
    ids, inverse = np.unique(prompt_index, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    return ids, sums / np.bincount(inverse, minlength=len(ids))


def clustered_mean_se(values: np.ndarray, prompt_index: np.ndarray) -> tuple[float, float]:
    """Mean over samples, and its standard error over prompts (samples of one prompt are correlated)."""
    values = np.asarray(values, dtype=np.float64)
    per_prompt = np.array([values[prompt_index == p].mean() for p in np.unique(prompt_index)])
    se = per_prompt.std(ddof=1) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else float("nan")
    return float(values.mean()), float(se)


def score_or_stop(scorer: scorers.Scorer, prompts: list[str], completions: list[str]) -> tuple[np.ndarray, bool]:
    """Scores and whether all are finite. A scorer's non-finite output is a failure of the run (exit 1,
    the batch saved by the caller), not bad input: the scorer raises ScorerError, we keep the raw values."""
    try:
        return scorer(prompts, completions), True
    except scorers.ScorerError:
        raw = np.asarray(scorer.score_batch(list(prompts), list(completions)), dtype=np.float64).reshape(-1)
        return raw, False


def save_bad_batch(output: Path, name: str, columns: dict[str, Any]) -> Path:
    """Write the offending batch (prompts, completions, rewards, ...) where the user can look at it."""
    import pandas as pd

    path = Path(output) / f"{name}.parquet"
    files.write_parquet(path, pd.DataFrame({k: list(v) for k, v in columns.items()}))
    return path


class Evaluator:
    """Measures a policy on the held-out eval prompts and records one results row per evaluation."""

    def __init__(self, cfg, method: str, tokenizer, reference, proxy: scorers.Scorer, gold: scorers.Scorer,
                 output: Path, accelerator=None, store=None, run_id: str | None = None, autocast=None):
        """`autocast`: a context factory for every forward pass (PPO's models.autocast at --precision);
        default: the accelerator's, or none."""
        self.cfg, self.method, self.tokenizer, self.reference = cfg, method, tokenizer, reference
        self.autocast = autocast or (accelerator.autocast if accelerator else None)
        self.proxy, self.gold, self.output = proxy, gold, Path(output)
        self.accelerator, self.store, self.run_id = accelerator, store, run_id
        prompts = prompt_sets.load_prompts(cfg.prompts, "eval", cfg.eval_prompts)  # ConfigError if bad
        self.prompts = prompt_sets.apply_chat_template(tokenizer, prompts, cfg.chat_template)
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        # Every process evaluates its share of the prompts, with its own fixed seed.
        self.local = list(range(self.rank, len(self.prompts), self.world))
        self.seed = int(np.random.SeedSequence([cfg.seed, 7, self.rank]).generate_state(1)[0])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.tokens_used = 0  # tokens generated by the last evaluation, summed over processes
        # The initial policy on these prompts: per-prompt proxy and gold means of the run's first
        # evaluation (step 0), the baseline every later row's gains are paired against.
        self.baseline: dict[str, np.ndarray] | None = None
        self.signal_reference = None  # the step-0 samples, summarized: what the warning signs are measured against
        self.setting = setting_id(cfg)
        self.prompt_set = prompt_set_id(self.prompts)
        self.proxy_fingerprint = scorers.spec_fingerprint(cfg.proxy)  # which proxy model, for the report to check
        # --engine: hf samples the policy itself; vllm starts one engine for the run, at its first evaluation,
        # and reloads the policy's weights into it before each (sync_weights).
        self.sample = None if cfg.engine != "hf" else sampling.generate
        self.second_proxy: scorers.Scorer | None = None  # --second-proxy, loaded at the first evaluation

    def sampler(self, policy):
        if self.sample is None:
            from bon_vs_rl.measurement import models, vllm_engine

            device = next(policy.parameters()).device
            self.sample = vllm_engine.sampler(self.cfg, models.resolve_model_path(self.cfg.policy, self.cfg.cache_dir),
                                              device, getattr(self.cfg, "precision", "auto"), sync_weights=True,
                                              quiet=self.cfg.quiet or self.rank != 0)
        return self.sample

    def close(self) -> None:
        """Stop the vLLM engine, if this run started one."""
        from bon_vs_rl.measurement import vllm_engine

        vllm_engine.close(self.sample)

    def _gather(self, items: list) -> list:
        if self.world == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)

    def evaluate(self, policy, step: int, generated_tokens: int, trained_tokens: int, beta: float,
                 extra: dict | None = None) -> dict | None:
        """Sample, score and measure KL; returns the row (on the main process; None elsewhere).

        `generated_tokens` counts the tokens generated before this evaluation; the row's count adds
        this evaluation's own."""
        start = time.perf_counter()
        cfg = self.cfg
        autocast = self.autocast
        was_training = policy.training
        policy.eval()
        local_prompts = [self.prompts[i] for i in self.local]
        with autocast() if autocast else contextlib.nullcontext():
            samples = self.sampler(policy)(policy, self.tokenizer, local_prompts, cfg.eval_samples_per_prompt, cfg,
                                           seed=self.seed, quiet=cfg.quiet or self.rank != 0,
                                           description=f"{self.method} eval step {step}")
        device = next(policy.parameters()).device
        encoded = sampling.encode_prompts(self.tokenizer, local_prompts, cfg.max_prompt_tokens)
        batch = pack_completions([encoded[i] for i in samples.prompt_index], samples.completion_ids,
                                 samples.token_count, self.pad_id, device)
        token_lp, token_ref_lp, token_kl = logprobs_and_exact_kl(policy, self.reference, batch, cfg.temperature,
                                                                 cfg.batch_size, autocast)
        logprob, ref_logprob = token_lp.sum(1).double().cpu(), token_ref_lp.sum(1).double().cpu()
        kl_exact = token_kl.sum(1).double().cpu().numpy()
        if was_training:
            policy.train()
        sample_prompts = [local_prompts[i] for i in samples.prompt_index]
        proxy, proxy_ok, members = self.score_proxy(sample_prompts, samples.completions)
        gold, gold_ok = score_or_stop(self.gold, sample_prompts, samples.completions)
        second, second_ok = {}, True
        if cfg.second_proxy:  # a warning sign only: never optimized against, never in a gain
            if self.second_proxy is None:
                self.second_proxy = scorers.load_scorer(cfg.second_proxy, device, cfg.cache_dir, role="second-proxy")
            scores, second_ok = score_or_stop(self.second_proxy, sample_prompts, samples.completions)
            second = {SECOND: scores.tolist()}
        kl_sampled = (logprob - ref_logprob).numpy()

        local = {
            "prompt_id": [self.local[i] for i in samples.prompt_index], "prompt": sample_prompts,
            "completion": samples.completions, "tokens": samples.token_count.tolist(),
            "completion_ids": [[int(t) for t in ids] for ids in samples.completion_ids],
            "sampler_logprob": samples.logprob.tolist(), "logprob": logprob.tolist(),
            "ref_logprob": ref_logprob.tolist(), "ended": samples.ended.tolist(),
            "proxy": proxy.tolist(), "gold": gold.tolist(), "kl": kl_exact.tolist(),
            "kl_sampled": kl_sampled.tolist(),
            **{f"{hacking_signals.MEMBER}{k}": m.tolist() for k, m in enumerate(members)}, **second,
        }
        merged = {key: self._gather(values) for key, values in local.items()}
        bad = [name for name, ok in (("proxy", proxy_ok), ("gold", gold_ok), ("second proxy", second_ok)) if not ok]
        bad_everywhere = self._gather(bad)
        kl_all = np.asarray(merged["kl"], dtype=np.float64)
        kl_sampled_all = np.asarray(merged["kl_sampled"], dtype=np.float64)
        if bad_everywhere or not (np.isfinite(kl_all).all() and np.isfinite(kl_sampled_all).all()):
            what = ", ".join(sorted(set(bad_everywhere))) or "KL"
            path = Path(self.output) / f"nonfinite-eval-step-{step:06d}.parquet"
            if self.rank == 0:  # every process holds the gathered batch; one writes it
                save_bad_batch(self.output, path.stem, merged)
            raise NonFiniteError(f"non-finite {what} in the evaluation at step {step}; the batch is saved in {path}")
        self.tokens_used = int(np.sum(merged["tokens"]))  # known on every process, for its token counters
        if self.rank != 0:
            return None

        prompt_index = np.asarray(merged["prompt_id"])
        tokens = np.asarray(merged["tokens"], dtype=np.int64)
        kl_mean, kl_se = clustered_mean_se(kl_all, prompt_index)
        sampled_mean, sampled_se = clustered_mean_se(kl_sampled_all, prompt_index)
        proxy_mean, proxy_se = clustered_mean_se(merged["proxy"], prompt_index)
        gold_mean, gold_se = clustered_mean_se(merged["gold"], prompt_index)
        negative = bool(np.isfinite(sampled_se) and sampled_mean < -NEGATIVE_KL_SIGMAS * max(sampled_se, 1e-12))
        if negative:
            sigmas = -sampled_mean / max(sampled_se, 1e-12)
            message = (f"{self.method} step {step}: sampled KL estimate {sampled_mean:.4g} is {sigmas:.1f} standard errors "
                       "below 0 — impossible for a true KL; policy and reference log-probs disagree (temperature, "
                       "dtype or padding). Recorded unclipped with kl_negative=1.")
            warnings.warn(message, stacklevel=2)
            console.note(f"WARNING: {message}", quiet=False)

        if self.world == 1:
            frame = samples.to_frame({"proxy": proxy, "gold": gold})
        else:  # the same columns, from what every process gathered (its Samples hold only its share)
            import pandas as pd

            frame = pd.DataFrame({k: merged[k] for k in ("prompt_id", "prompt", "completion", "tokens",
                                                         "sampler_logprob", "ended", "proxy", "gold")})
            frame = frame.rename(columns={"sampler_logprob": "logprob"})
        frame.insert(0, "step", step)
        # The sampled token ids themselves: decoded text does not always re-tokenize to the same ids, so
        # anything recomputed from this file (log-probs, KL) starts from these.
        frame["completion_ids"] = merged["completion_ids"]
        frame["ref_logprob"] = merged["ref_logprob"]
        frame["policy_logprob"] = merged["logprob"]
        frame["kl"] = kl_all
        frame["kl_sampled"] = kl_sampled_all
        for key in (k for k in merged if k.startswith(hacking_signals.MEMBER) or k == SECOND):  # members, --second-proxy
            frame[key] = merged[key]
        samples_path = (self.output / "eval_samples" / f"step-{step:06d}.parquet").resolve()
        files.write_parquet(samples_path, frame)
        intervals = self.paired_intervals(prompt_index, merged["proxy"], merged["gold"], kl_all, step)
        # What the text looks like (length, distinct-n, non-words, log-prob per token of policy and reference):
        # mean over prompts of each prompt's mean, as the report recomputes it from this file.
        statistics = text_stats.frame_statistics(frame)
        text = text_stats.row_means({name: per_prompt_means(values, prompt_index)[1]
                                     for name, values in statistics.items()})
        # Gold-free warning signs of hacking against the step-0 samples (hacking_signals; signal_* columns).
        if self.signal_reference is None:
            self.signal_reference = hacking_signals.reference(frame if step == 0 else self.step_zero_frame())
        warning = hacking_signals.stored(hacking_signals.evaluation_signals(
            frame, self.signal_reference, second_column=SECOND if SECOND in frame else None))

        row = {
            # sqrt_kl is filled in by the results table (sqrt of max(KL, 0)); kl itself is kept unclipped.
            "method": self.method, "n": None, "step": step, "kl": kl_mean, "kl_se": kl_se,
            "kl_sampled": sampled_mean, "kl_sampled_se": sampled_se, **intervals,
            "proxy_mean": proxy_mean, "proxy_se": proxy_se, "gold_mean": gold_mean, "gold_se": gold_se,
            "proxy_std": float(np.std(merged["proxy"], ddof=1)) if len(tokens) > 1 else float("nan"),
            "gold_std": float(np.std(merged["gold"], ddof=1)) if len(tokens) > 1 else float("nan"),
            "length_mean": float(tokens.mean()), "ended_frac": float(np.mean(merged["ended"])),
            "sample_count": int(len(tokens)), "prompt_count": int(len(np.unique(prompt_index))),
            "generated_tokens": int(generated_tokens + tokens.sum()), "trained_tokens": int(trained_tokens),
            "beta": float(beta), "policy": cfg.policy, "proxy": cfg.proxy, "gold": cfg.gold, "seed": cfg.seed,
            "samples_path": str(samples_path), "kl_negative": int(negative),
            "setting": self.setting, "prompt_set": self.prompt_set, "bootstrap": cfg.bootstrap,
            "proxy_fingerprint": self.proxy_fingerprint,
            "eval_seconds": time.perf_counter() - start, **text, **warning, **(extra or {}),
        }
        if self.store is not None:
            self.store.add_rows(self.run_id, [row])
        console.note(f"{self.method} eval step {step}: KL {kl_mean:.4g} ± {kl_se:.2g}, proxy {proxy_mean:.4g} "
                     f"± {proxy_se:.2g}, gold {gold_mean:.4g} ± {gold_se:.2g}, length {tokens.mean():.1f}", cfg.quiet)
        return row

    def score_proxy(self, prompts: list[str], completions: list[str]) -> tuple[np.ndarray, bool, list[np.ndarray]]:
        """The proxy's scores, whether all are finite, and an ensemble's members' own scores (for the members'
        disagreement; [] for one model). The members are scored once and combined as the proxy combines them."""
        parts = self.proxy.parts
        if len(parts) < 2:
            return (*score_or_stop(self.proxy, prompts, completions), [])
        scored = [score_or_stop(part, prompts, completions) for part in parts]
        members = np.stack([values for values, _ in scored])
        return self.proxy.combine(members), all(ok for _, ok in scored), list(members)

    def step_zero_frame(self):
        """A resumed run's step-0 eval samples (its reference for the warning signs)."""
        import pandas as pd

        return pd.read_parquet(self.output / "eval_samples" / f"step-{0:06d}.parquet")

    def paired_intervals(self, prompt_index, proxy, gold, kl, step: int) -> dict:
        """Gains over this run's initial policy, paired by prompt, and their 95% intervals (see 4. above)."""
        from bon_vs_rl.analysis import statistics

        ids, proxy_means = per_prompt_means(proxy, prompt_index)
        gold_means, kl_means = per_prompt_means(gold, prompt_index)[1], per_prompt_means(kl, prompt_index)[1]
        if self.baseline is None:
            self.baseline = self.load_baseline(step, ids, proxy_means, gold_means)
        if not np.array_equal(self.baseline["prompt_id"], ids):  # cannot happen with a fixed prompt list
            raise RuntimeError(f"{self.method} step {step}: evaluated prompts differ from the initial evaluation's")
        seed = int(np.random.SeedSequence([self.cfg.seed, 11, step]).generate_state(1)[0])
        B = self.cfg.bootstrap
        out = {}
        for name, values in (("proxy", proxy_means), ("gold", gold_means)):
            est = statistics.paired_gain_interval(values, self.baseline[name], B=B, rng=seed)
            out.update({f"{name}_gain": float(est["gain"]), f"{name}_gain_lo": float(est["gain_lo"]),
                        f"{name}_gain_hi": float(est["gain_hi"])})
        est = statistics.paired_gain_interval(kl_means, np.zeros_like(kl_means), B=B, rng=seed)
        out.update({"kl_lo": float(est["mean_lo"]), "kl_hi": float(est["mean_hi"])})
        return out

    def load_baseline(self, step: int, ids, proxy_means, gold_means) -> dict[str, np.ndarray]:
        """The run's step-0 per-prompt means: this evaluation's at step 0, else (a resumed run) its saved file."""
        if step != 0:
            import pandas as pd

            path = self.output / "eval_samples" / f"step-{0:06d}.parquet"
            if not path.is_file():
                raise RuntimeError(f"{self.method}: no step-0 evaluation in {path.parent}; the gains over the initial "
                                   "policy need it (was the run's output directory changed?)")
            frame = pd.read_parquet(path)
            ids, proxy_means = per_prompt_means(frame["proxy"], frame["prompt_id"])
            gold_means = per_prompt_means(frame["gold"], frame["prompt_id"])[1]
        return {"prompt_id": ids, "proxy": proxy_means, "gold": gold_means}


SETTING_SKIPS = ("seed", "output", "results", "experiment", "quiet", "device", "cache_dir", "resume", "overwrite",
                 "log_with",  # where and how a run goes, not what it computes
                 "second_proxy",  # a warning sign scored beside the run, not part of what it optimizes or measures
                 # the engine and vLLM's parallelism change which samples are drawn, not what is measured:
                 # replicate seeds run on hf and on vllm are one setting
                 "engine", "vllm_tensor_parallel_size", "vllm_pipeline_parallel_size", "vllm_executor",
                 "vllm_gpu_memory_utilization")


def setting_id(cfg) -> str:
    """What a run computes, minus its seed and where it writes: replicate seeds of one setting share it,
    so the report can pool them into one curve. It holds what the policy, proxy and gold specs name, not
    only their text (scorers.spec_fingerprint): two runs against `rm:runs/rm-0` before and after rm-0 was
    retrained, or against an edited python: scorer, optimized different things and never pool as seeds."""
    import hashlib
    import json

    from bon_vs_rl.config.base import to_dict

    config = {k: v for k, v in to_dict(cfg).items() if k not in SETTING_SKIPS}
    specs = [getattr(cfg, name, None) for name in ("policy", "proxy", "gold")]
    specs = [s for spec in specs for s in (spec if isinstance(spec, list) else [spec]) if s]
    config["fingerprints"] = {spec: scorers.spec_fingerprint(str(spec)) for spec in specs}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompt_set_id(prompts: list[str]) -> str:
    """A fingerprint of the evaluation prompts (text and order): curves compared by prompt must share it."""
    import hashlib

    return hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()[:12]
