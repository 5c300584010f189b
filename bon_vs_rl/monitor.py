"""Warning signs of reward hacking during your own training, without a gold: a callback for TRL's GRPO and RLOO
trainers (and a hook for bonrl's PPO) that logs the signals of `analysis/signals.py` and warns, or stops, when
a rule fires.

    from bon_vs_rl.monitor import HackingMonitor

    monitor = HackingMonitor(rule="distinct_2_drift < -0.2")          # stop=True: also stop training
    trainer = GRPOTrainer(model=model, reward_funcs=monitor.watch(my_reward_model), args=GRPOConfig(...),
                          train_dataset=dataset, callbacks=[monitor])
    trainer.train()    # logs hacking/kl, hacking/distinct_2_drift, ... wherever the trainer logs (report_to)

`watch(reward)` wraps the reward function the policy is optimized against (the proxy): TRL calls it once per
generation batch with the prompts, the sampled completions and their token ids, before the policy is updated
on them. The wrapper returns the reward unchanged and, on the same batch,
  - the reference policy's and the policy's log-probs of the completions (a frozen copy of the model taken
    when training begins is the reference), giving the exact KL(π‖π_ref) summed over each completion's
    tokens (Σ_v π log π/π_ref at every position, as bonrl's evaluation computes it: evaluate.py) and the
    reference's log-prob per token;
  - distinct-2 and length of the completions (text_stats), ensemble disagreement (`members=`: the ensemble's
    members as reward functions) and rank agreement with a second proxy (`second_proxy=`);
and hands each signal to TRL's `log_metric` as `hacking/<signal>`, so it lands in the trainer's log history and
every logger TRL reports to, averaged like TRL's own metrics. The first `reference_batches` batches (the
untrained policy: the reference's own samples) are the reference every drift is measured against.

A rule ("SIGNAL > X", "SIGNAL < X", "|SIGNAL| > X"; signals.Rule) is checked on each batch's signal averaged
over the last `window` batches after the reference ones (gain_per_nat and kl_rate: slopes over the last
`window` batches). When it fires, the monitor warns once (a `HackingWarning`, and a line on stderr) and, with
`stop=True`, asks the trainer to stop after the step. `hacking/rule_value` and `hacking/fired` are logged too.

Which rule and threshold to trust is what `bonrl report`'s onset analysis measures on runs whose gold is
known (README "When does hacking begin?"). On the cpu-overopt run (four runs with a resolved gold peak) no
signal's lead over the peak is resolved; the two-proxy agreement fell closest to it. The default below is
therefore not a validated choice: a conservative rule that there fired after the gold peak or not at all.
Under several processes each process measures its own share of the batch, and TRL averages the values across
processes.

bonrl's PPO: `ppo.train(cfg, monitor=HackingMonitor(...))` calls `observe` with every rollout (its KL is the
sampled k1 estimate PPO's penalty uses) and adds the signals to its per-step metrics (`--log-with`).
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from transformers import TrainerCallback

from bon_vs_rl.analysis import signals
from bon_vs_rl.measurement import text_stats

DEFAULT_RULE = "distinct_2_drift < -0.2"  # not validated: on cpu-overopt it fired after the peak or never
KEY = "hacking/"


class HackingWarning(UserWarning):
    """A rule of the HackingMonitor fired: a gold-free sign that the proxy is being gamed."""


def frozen_copy(model):
    """A frozen copy of the model's weights that computes with its own weights. Libraries wrap a model's forward
    per instance (accelerate's autocast, TRL's wrappers) in closures over the *original* model's bound method,
    which a deep copy shares: the copy would then run the trained weights. Dropping the per-instance forward
    restores the class's own, bound to the copy."""
    reference = copy.deepcopy(model)
    for module in reference.modules():
        module.__dict__.pop("forward", None)
    return reference.eval().requires_grad_(False)


class HackingMonitor(TrainerCallback):
    """Gold-free warning signs of reward hacking for TRL's GRPOTrainer / RLOOTrainer (and bonrl's PPO)."""

    def __init__(self, rule: str | None = DEFAULT_RULE, stop: bool = False, reference_batches: int = 1,
                 window: int = 4, members: Sequence[Callable] | None = None, second_proxy: Callable | None = None,
                 reference_model=None, kl: bool = True, chunk: int = 16, quiet: bool = False):
        """rule: a signals.Rule string, or None to only log; stop: also stop training when it fires;
        reference_batches: how many first batches are the reference; window: batches averaged for the rule;
        members: reward functions (prompts, completions) -> scores of an ensemble's members; second_proxy: an
        independently trained proxy, same form; reference_model: the reference policy (default: a frozen copy
        of the model when training begins); kl: measure KL and the reference's log-prob (two forward passes
        per batch); chunk: completions per forward pass."""
        if reference_batches < 1:
            raise ValueError(f"reference_batches: {reference_batches} must be ≥ 1 (the first batch is the reference)")
        if window < 2:
            raise ValueError(f"window: {window} must be ≥ 2 (a slope needs two batches)")
        self.rule = signals.Rule.parse(rule) if rule else None
        self.stop, self.reference_batches, self.window = stop, reference_batches, window
        self.members, self.second_proxy = list(members or []), second_proxy
        self.reference_model, self.kl, self.chunk, self.quiet = reference_model, kl, chunk, quiet
        self.model = self.tokenizer = None
        self.temperature = 1.0
        self.collected: dict[str, list] = {}  # the reference batches' arrays, until the reference is complete
        self.reference: signals.Reference | None = None
        self.history: list[dict] = []  # one dict per observed batch: step and its signals
        self.fired_at: int | None = None  # the step at which the rule first fired

    # -- TRL / transformers events ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.model, self.tokenizer = model, processing_class
        self.temperature = float(getattr(args, "temperature", 1.0) or 1.0)
        if self.kl and self.reference_model is None and model is not None:
            # The policy before its first update *is* the reference (the KL every RL objective penalizes).
            self.reference_model = frozen_copy(model)

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop and self.fired_at is not None:
            control.should_training_stop = True
        return control

    def watch(self, reward_function: Callable) -> Callable:
        """The reward function, measured: same rewards, and the signals of each batch logged via TRL's
        `log_metric` (TRL ≥ 1.x passes it to every reward function)."""

        def watched(prompts, completions, completion_ids=None, **kwargs):
            rewards = reward_function(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                      **kwargs)
            state = kwargs.get("trainer_state")
            measured = self.observe_trl(prompts, completions, completion_ids, rewards,
                                        step=int(state.global_step) if state is not None else len(self.history))
            log = kwargs.get("log_metric")
            if log is not None:
                for name, value in measured.items():
                    if math.isfinite(value):
                        log(name, value)
            return rewards

        watched.__name__ = getattr(reward_function, "__name__", "reward")  # TRL logs rewards/<name>/mean
        return watched

    # -- measuring one batch ------------------------------------------------------------------------------

    def observe_trl(self, prompts, completions, completion_ids, rewards, step: int) -> dict[str, float]:
        """One TRL generation batch: text prompts or conversations, completions as text or messages."""
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        proxy = np.array([math.nan if r is None else float(r) for r in rewards], dtype=np.float64)
        ids = [list(map(int, c)) for c in completion_ids] if completion_ids is not None else None
        kl = ref_logprob = None
        if self.kl and self.model is not None and ids is not None:
            kl, ref_logprob = self.kl_and_ref_logprob(self.prompt_ids(prompts), ids)
        tokens = [len(c) for c in ids] if ids is not None else [len(t.split()) for t in texts]
        plain = [p if isinstance(p, str) else " ".join(m["content"] for m in p) for p in prompts]
        members = np.stack([np.asarray(f(plain, texts), dtype=np.float64) for f in self.members]) \
            if self.members else None
        second = np.asarray(self.second_proxy(plain, texts), dtype=np.float64) if self.second_proxy else None
        groups = np.unique([str(p) for p in prompts], return_inverse=True)[1]  # GRPO/RLOO: samples of one prompt
        return self.observe(step, proxy, tokens, texts, kl=kl, ref_logprob=ref_logprob, members=members,
                            second=second, prompt_index=groups)

    def prompt_ids(self, prompts) -> list[list[int]]:
        """The prompts' token ids as TRL's GRPO/RLOO tokenize them (a chat template for conversations)."""
        if prompts and not isinstance(prompts[0], str):
            out = self.tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                                     return_dict=True)
            return [list(ids) for ids in out["input_ids"]]
        return [list(ids) for ids in self.tokenizer(text=list(prompts))["input_ids"]]

    def kl_and_ref_logprob(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]):
        """[S] exact KL(π‖π_ref) summed over each completion's tokens, and the reference's summed log-prob, at
        the sampling temperature (evaluate.logprobs_and_exact_kl: the same computation as bonrl's evaluation)."""
        import torch

        from bon_vs_rl.measurement.evaluate import logprobs_and_exact_kl, pack_completions

        model = self.model
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        counts = np.array([len(c) for c in completion_ids])
        batch = pack_completions(prompt_ids, completion_ids, counts, pad, device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                _, token_ref, token_kl = logprobs_and_exact_kl(model, self.reference_model.to(device), batch,
                                                               self.temperature, self.chunk)
        finally:
            model.train(was_training)
        return token_kl.sum(1).double().cpu().numpy(), token_ref.sum(1).double().cpu().numpy()

    def observe(self, step: int, proxy, tokens, completions: Sequence[str], *, kl=None, ref_logprob=None,
                members=None, second=None, prompt_index=None) -> dict[str, float]:
        """One batch's signals as {"hacking/<signal>": value}; records them, checks the rule, warns once.
        `prompt_index`: which samples share a prompt (agreement compares pairs within a prompt; means weigh
        prompts equally)."""
        proxy = np.asarray(proxy, dtype=np.float64)
        tokens = np.asarray(tokens, dtype=np.float64)
        distinct_2 = np.array([text_stats.distinct_n(text_stats.words(c), 2) for c in completions])
        arrays = {"proxy": proxy, "tokens": tokens, "distinct_2": distinct_2, "ref_logprob": ref_logprob,
                  "members": None if members is None else np.atleast_2d(members)}
        in_reference = len(self.history) < self.reference_batches
        if in_reference:  # the reference so far: these batches' own signals are measured against it
            for name, values in arrays.items():
                if values is not None:
                    self.collected.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
            joined = {name: np.concatenate(v, axis=-1) for name, v in self.collected.items()}
            self.reference = signals.reference_summary(joined["proxy"], joined["tokens"], joined["distinct_2"],
                                                       joined.get("ref_logprob"), joined.get("members"))
        level = signals.batch_signals(self.reference, proxy, tokens, kl=kl, distinct_2=distinct_2,
                                      ref_logprob=ref_logprob, members=arrays["members"], second=second,
                                      prompt_index=prompt_index)
        level["proxy_mean"] = float(np.nanmean(proxy))
        self.history.append({"step": step, **level})
        if kl is not None:
            recent = self.history[-self.window:]
            slopes = signals.curve_signals([h.get("kl", math.nan) for h in recent],
                                           [h["proxy_z"] for h in recent], [h["step"] for h in recent],
                                           window=len(recent))
            level["gain_per_nat"], level["kl_rate"] = (float(slopes[name][-1]) for name in ("gain_per_nat", "kl_rate"))
            self.history[-1].update(gain_per_nat=level["gain_per_nat"], kl_rate=level["kl_rate"])
        out = {KEY + name: float(value) for name, value in level.items()}
        if self.rule is not None:
            value = self.rule_value()
            out[KEY + "rule_value"] = value
            if not in_reference and self.fired_at is None and self.rule.fires(value):
                self.fired_at = step
                self.warn(step, value)
            out[KEY + "fired"] = float(self.fired_at is not None)
        return out

    def rule_value(self) -> float:
        """The rule's signal on the latest batch: its mean over the last `window` batches after the reference
        ones (slopes are already windowed); NaN while the reference is being collected."""
        name = self.rule.signal
        after = self.history[self.reference_batches:]
        if not after:
            return math.nan
        if name in ("gain_per_nat", "kl_rate"):
            return float(after[-1].get(name, math.nan))
        values = np.array([h.get(name, math.nan) for h in after[-self.window:]], dtype=np.float64)
        return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan

    def warn(self, step: int, value: float) -> None:
        message = (f"reward hacking warning at step {step}: {self.rule} (now {value:.4g}, mean of the last "
                   f"{self.window} batches){'; stopping training' if self.stop else ''}")
        warnings.warn(message, HackingWarning, stacklevel=3)
        if not self.quiet:
            print(f"bonrl monitor: {message}", file=sys.stderr, flush=True)
