"""Typed configuration for every bonrl command: the single source of defaults, YAML keys and --help.

Each command has one dataclass below, combining the shared setting groups of base.py. A field's `help`
metadata is its --help text; its default is the built-in default. Precedence, lowest to highest (as in
lm-evaluation-harness):

    built-in default  <  YAML file given with --config  <  command-line flag

`base.resolve(ConfigClass, yaml_path, cli_values)` applies that order, rejects unknown YAML keys, and calls
the config's `validate()`, which raises `ConfigError` naming the field and the fix. The CLI turns a
ConfigError into one line on stderr and exit code 2, before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bon_vs_rl.config.base import (
    EVAL_PROMPTS,
    CommonConfig,
    ComparisonDataConfig,
    PrecisionConfig,
    RLEvalConfig,
    SamplingConfig,
    check_bootstrap,
    check_untruncated,
    option,
    parse_float_list,
    parse_int_list,
    require,
    split_list,
)
from bon_vs_rl.errors import ConfigError


@dataclass
class TrainRMConfig(ComparisonDataConfig, PrecisionConfig, SamplingConfig, CommonConfig):
    """`bonrl train-rm`: gold-labelled comparisons, then a proxy reward model trained on them."""

    output: str = option("runs/rm", "Checkpoint directory of the trained proxy (use it as --proxy rm:DIR).")
    policy: str = option("smollm2-135m", "Policy that writes the completions to compare (model spec).")
    gold: str = option("vader", "Gold scorer that labels the comparisons (scorer spec).")
    backbone: str = option("minilm", "Reward-model backbone: tiny, minilm, smollm2-135m, hub id or path.")
    # One epoch, as in Stiennon et al. (2020) and Ouyang et al. (2022): reward models overfit quickly.
    epochs: float = option(1.0, "Training epochs over the comparison pairs.")
    learning_rate: float = option(5e-5, "Reward-model learning rate (AdamW, linear decay).")
    train_batch_size: int = option(16, "Comparison pairs per optimizer step.")
    max_length: int = option(128, "Longest prompt+completion seen by the reward model, in tokens.")
    ensemble: int = option(1, "Train K members with different seeds and save them as one ensemble.")
    overwrite: bool = option(False, "Replace the reward model already in --output. Without it a second train-rm into "
                             "the same --output is refused: other runs may be using that proxy.")

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        PrecisionConfig.validate(self)
        ComparisonDataConfig.validate(self)
        require(self, "> 0", "epochs", "learning_rate", "train_batch_size", "max_length")
        if self.ensemble < 1:
            raise ConfigError(f"ensemble: {self.ensemble} must be ≥ 1")


@dataclass
class SampleConfig(PrecisionConfig, SamplingConfig, CommonConfig):
    """`bonrl sample`: best-of-n with unbiased estimates for every n."""

    output: str = option("runs/bon", "Directory for the samples file (Parquet) and the resolved config.")
    policy: str = option("smollm2-135m", "Policy to sample from (model spec).")
    proxy: list[str] = option(
        [], "Proxy reward model(s) to select by (scorer spec); repeat for several. None: only sample and score the "
        "gold, and rescore the samples file later with --from-samples FILE --proxy SPEC (one draw for many proxies)."
    )
    gold: str = option("vader", "Gold scorer, used only to measure (scorer spec).")
    n: str = option("1,2,4,8,16,32,64", "Comma-separated best-of-n sizes to estimate, e.g. 1,2,4,8 (in any order; a "
                    "repeated n counts once).", comma_list=True)
    samples_per_prompt: int = option(0, "Samples drawn per prompt (N); 0 means the largest n.")
    eval_prompts: int = option(EVAL_PROMPTS, "How many held-out eval prompts to use (0 = all of the eval split; more "
                               "than it has is refused, except this default, which then takes them all).")
    bootstrap: int = option(
        2000, "Prompt resamples for the 95% intervals of every row (paired gains over n=1, KL); at least 100."
    )
    from_samples: str | None = option(
        None,
        "Rescore a samples.parquet from an earlier bonrl sample instead of generating: its prompts, sampling "
        "settings and seed are used (--policy must name its policy; every n must be <= its N; a sampling option "
        "or --eval-prompts that differs from the file's is refused; --seed is ignored).",
    )
    beta: str = option(
        "",
        "Comma-separated KL coefficients β (as in bonrl ppo), e.g. 0.5,1,2: also estimate the KL-regularized "
        "optimum π_β ∝ π_ref·exp(proxy/β) from the same samples (method 'tilted'); empty = off.",
        comma_list=True,
    )

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        PrecisionConfig.validate(self)
        ns = parse_int_list(self.n, "n")
        if self.samples_per_prompt < 0:
            raise ConfigError(f"samples_per_prompt: {self.samples_per_prompt} must be ≥ 0 (0 = largest n)")
        if self.samples_per_prompt and max(ns) > self.samples_per_prompt:
            raise ConfigError(
                f"n: {max(ns)} exceeds samples_per_prompt={self.samples_per_prompt}; "
                "raise --samples-per-prompt or drop the larger n"
            )
        if self.eval_prompts < 0:
            raise ConfigError(f"eval_prompts: {self.eval_prompts} must be ≥ 0 (0 = all)")
        check_bootstrap(self.bootstrap)
        if not self.proxy and self.from_samples:
            raise ConfigError("proxy: no proxy reward model given to rescore the samples with; pass --proxy rm:PATH "
                              "(from bonrl train-rm)")
        if parse_float_list(self.beta, "beta") and not self.proxy:
            raise ConfigError("beta: the KL-regularized optimum tilts by a proxy's scores and none is given; pass "
                              "--proxy SPEC, or drop --beta")

    @property
    def ns(self) -> list[int]:
        return parse_int_list(self.n, "n")

    @property
    def betas(self) -> list[float]:
        return parse_float_list(self.beta, "beta")


@dataclass
class PPOConfig(RLEvalConfig, PrecisionConfig, SamplingConfig, CommonConfig):
    """`bonrl ppo`: PPO with a KL penalty to the reference policy (Ziegler et al. 2019; Huang et al. 2024)."""

    output: str = option("runs/ppo", "Directory for checkpoints, eval samples and the resolved config.")
    policy: str = option("smollm2-135m", "Initial policy, also the frozen reference (model spec).")
    proxy: str = option("", "Proxy reward model optimized against (scorer spec, e.g. rm:runs/rm).")
    gold: str = option("vader", "Gold scorer, used only to measure (scorer spec).")
    steps: int = option(100, "PPO steps (one rollout batch and its updates per step).")
    rollout_batch_size: int = option(32, "Prompts (one completion each) per rollout batch.")
    minibatch_size: int = option(8, "Sequences per PPO minibatch; must divide rollout_batch_size.")
    gradient_accumulation_steps: int = option(1, "Minibatches accumulated per optimizer step.")
    ppo_epochs: int = option(4, "Passes over each rollout batch.")
    learning_rate: float = option(1e-5, "Policy (and value) learning rate, AdamW.")
    lr_schedule: str = option(
        "constant", "constant, or linear: the learning rate decays linearly to 0 over --steps (step s uses "
        "lr·(1 − (s−1)/steps), as lm-human-preferences and CleanRL anneal it)."
    )
    beta: float = option(0.05, "KL penalty coefficient β (initial value when adaptive), in units of the score: "
                         "the normalized proxy with --normalize-proxy (rows record β in raw proxy units as beta_raw).")
    normalize_proxy: bool = option(
        True, "Before step 1, score --normalize-samples reference samples of train prompts and use g·proxy + b "
        "(gain g = 1/std, bias b = −mean/std) as the score: unit scale, so β and the value clip mean the same "
        "for any proxy (Ziegler et al. 2019). g and b are recorded in every row; proxy_mean stays raw."
    )
    normalize_samples: int = option(64, "Reference samples (one per train prompt) that set the proxy's gain and bias.")
    adaptive_kl: bool = option(False, "Adapt β toward target_kl (Ziegler et al. 2019 controller).")
    target_kl: float = option(6.0, "Adaptive β: target KL per sequence, in nats.")
    kl_horizon: int = option(10000, "Adaptive β: horizon of the proportional controller, in episodes.")
    gamma: float = option(1.0, "GAE discount γ.")
    lam: float = option(0.95, "GAE λ.")
    clip_range: float = option(0.2, "PPO ratio clip ε.")
    clip_range_value: float = option(0.2, "Value-function clip.")
    value_coef: float = option(0.1, "Value loss coefficient.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    whiten_rewards: bool = option(False, "Whiten proxy scores with running mean/std of all rollouts so far, before the "
                                  "KL penalty (makes --normalize-proxy's scale moot; β in raw units is beta_raw).")
    missing_eos_penalty: float | None = option(None, "Subtracted from the score of a completion with no EOS.")
    lora_rank: int = option(0, "LoRA rank (peft); 0 trains full weights.")
    train_top_layers: int = option(0, "Train only the top k transformer layers (0 = all).")
    checkpoint_every: int = option(0, "Save a checkpoint every k steps (0 = only at the end).")
    keep_checkpoints: int = option(2, "Keep at most this many checkpoints (oldest removed first).")
    resume: bool = option(False, "Continue from the last complete checkpoint in --output.")
    overwrite: bool = option(False, "Replace the run already in --output (its files are deleted first). Without it "
                             "a second run into the same --output is refused, so no earlier run's files change.")

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        RLEvalConfig.validate(self)
        PrecisionConfig.validate(self)
        check_untruncated(self)
        if not self.proxy:
            raise ConfigError("proxy: no proxy reward model given; pass --proxy rm:PATH (from bonrl train-rm)")
        if self.lr_schedule not in ("constant", "linear"):
            raise ConfigError(f"lr_schedule: {self.lr_schedule!r}; use constant or linear")
        if self.normalize_proxy and self.normalize_samples < 2:
            raise ConfigError(f"normalize_samples: {self.normalize_samples} cannot give a standard deviation; use at "
                              "least 2, e.g. --normalize-samples 64 (or --no-normalize-proxy)")
        if self.steps <= 0:
            raise ConfigError(f"steps: {self.steps} must be ≥ 1")
        if self.beta < 0:
            raise ConfigError(f"beta: {self.beta} is negative; the KL coefficient must be ≥ 0")
        require(self, "≥ 1", "rollout_batch_size", "minibatch_size")
        if self.rollout_batch_size % self.minibatch_size:
            raise ConfigError(
                f"minibatch_size: {self.minibatch_size} does not divide rollout_batch_size="
                f"{self.rollout_batch_size}; pick a divisor"
            )
        if (self.rollout_batch_size // self.minibatch_size) % self.gradient_accumulation_steps:
            raise ConfigError(
                "gradient_accumulation_steps: must divide the number of minibatches "
                f"({self.rollout_batch_size // self.minibatch_size})"
            )
        require(self, "> 0", "ppo_epochs", "learning_rate")
        require(self, "in [0, 1]", "gamma", "lam")
        require(self, "> 0", "clip_range", "clip_range_value", "target_kl", "kl_horizon")
        require(self, "≥ 0", "lora_rank", "train_top_layers")
        if self.lora_rank and self.train_top_layers:
            raise ConfigError("train_top_layers: --lora-rank already chooses what trains (adapters on every layer); "
                              "pass --lora-rank or --train-top-layers, not both")
        check_checkpoints(self)
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ConfigError(
                f"missing_eos_penalty: {self.missing_eos_penalty} is negative; it is subtracted, so give a value ≥ 0"
            )
        require(self, "> 0", "max_grad_norm")
        require(self, "≥ 0", "value_coef")


@dataclass
class RLConfig(RLEvalConfig, SamplingConfig, CommonConfig):
    """`bonrl rl --algo rloo|grpo`: TRL's trainers with the proxy as reward and β as KL coefficient."""

    output: str = option("runs/rl", "Directory for TRL's checkpoints, eval samples and the resolved config.")
    algo: str = option("rloo", "TRL algorithm: rloo or grpo.")
    policy: str = option("smollm2-135m", "Initial policy, also the reference (model spec).")
    proxy: str = option("", "Proxy reward model optimized against (scorer spec).")
    gold: str = option("vader", "Gold scorer, used only to measure (scorer spec).")
    steps: int = option(100, "Optimizer steps.")
    rollout_batch_size: int = option(32, "Completions per step (prompts × generations_per_prompt).")
    generations_per_prompt: int = option(4, "Completions per prompt (the RLOO/GRPO group size).")
    learning_rate: float = option(1e-5, "Learning rate.")
    beta: float = option(0.05, "KL coefficient β.")
    checkpoint_every: int = option(0, "Save a TRL checkpoint every k steps (0 = none; --resume needs some).")
    keep_checkpoints: int = option(2, "Keep at most this many checkpoints (oldest removed first).")
    resume: bool = option(False, "Continue from the last complete TRL checkpoint in --output.")
    overwrite: bool = option(False, "Replace the run already in --output (its files are deleted first). Without it "
                             "a second run into the same --output is refused, so no earlier run's files change.")

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        RLEvalConfig.validate(self)
        check_untruncated(self)
        if self.rollout_batch_size <= 0:
            raise ConfigError(f"rollout_batch_size: {self.rollout_batch_size} must be ≥ 1")
        check_checkpoints(self)
        if self.algo not in ("rloo", "grpo"):
            raise ConfigError(f"algo: {self.algo!r}; use rloo or grpo")
        if not self.proxy:
            raise ConfigError("proxy: no proxy reward model given; pass --proxy rm:PATH (from bonrl train-rm)")
        require(self, "> 0", "steps", "learning_rate")
        if self.beta < 0:
            raise ConfigError(f"beta: {self.beta} is negative; the KL coefficient must be ≥ 0")
        if self.generations_per_prompt < 2:
            raise ConfigError("generations_per_prompt: must be ≥ 2 (RLOO and GRPO need a group)")
        if self.rollout_batch_size % self.generations_per_prompt:
            raise ConfigError("rollout_batch_size: must be a multiple of generations_per_prompt")


# ----------------------------------------------------------------------------------------------
# The Goodhart lab: no language model, everything exact over a finite population.

LAB_ERRORS = ("normal", "student-t", "lognormal", "hack")
LAB_MAX_LOG_N = 43.0  # n = e^43 ~ 4.7e18 still fits the results table's 64-bit integer n


def parse_lab_ns(value: str | list | int, name: str = "n") -> list[int]:
    """'1,10,1e6,e^31' -> [1, 10, 1000000, 29048849665247]: integers, scientific notation, or e^X for
    exp(X) rounded to an integer (best-of-n sizes far beyond any sample, for the exact lab)."""
    if isinstance(value, str):
        items = split_list(value, name, "1,10,1000,e^31")
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        text = str(item).strip().lower()
        exponent = text.startswith("e^")
        try:
            number = float(text[2:] if exponent else text)
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not a number; give integers or e^X, e.g. --{name} 1,10,1000,e^31") from None
        log_n = number if exponent else math.log(number) if number > 0 else -math.inf
        if not log_n >= 0:  # also NaN
            raise ConfigError(f"{name}: {item!r} is not ≥ 1; every n must be ≥ 1, e.g. --{name} 1,10,1000,e^31")
        if log_n > LAB_MAX_LOG_N:
            raise ConfigError(f"{name}: {item!r} is above e^{LAB_MAX_LOG_N:g}; give a smaller n (e^43 at most)")
        n = round(math.exp(log_n)) if exponent else number
        if not float(n).is_integer():
            raise ConfigError(f"{name}: {item!r} is not an integer; give integers or e^X (rounded), e.g. e^31")
        out.append(int(n))
    if not out:
        raise ConfigError(f"{name}: empty list; give best-of-n sizes like 1,10,1000,e^31")
    return sorted(set(out))


@dataclass
class LabConfig(CommonConfig):
    """`bonrl lab`: best-of-n, the KL-regularized optimum and PPO, exactly, over a synthetic population."""

    output: str = option("runs/lab", "Directory for each run's resolved config (the lab writes no other files).")
    outcomes: int = option(1_000_000, "Outcomes K of the reference population (π_ref uniform over them); "
                                      "no policy can move more than log K nats from it.")
    error: str = option("normal", "Proxy error X in proxy U = gold V + X: normal, student-t, lognormal, or hack "
                                  "(the worst 1% of outcomes by gold get a Pareto(df) proxy bonus).")
    error_scale: float = option(1.0, "Error size s: every kind of X is scaled to the interquartile range of s·N(0,1).")
    df: float = option(3.0, "Tail index: student-t's degrees of freedom, hack's Pareto exponent (smaller = heavier).")
    n: str = option("1,2,4,8,16,32,64,128,256,512,1000,1e4,1e5,e^31",
                    "Comma-separated best-of-n sizes; e^X is exp(X) rounded (e^31: log n − (n−1)/n = 30 nats).",
                    comma_list=True)
    beta: str = option("0.125,0.25,0.5,1,2,4", "Comma-separated β of the KL-regularized optimum π_β ∝ π_ref·exp(U/β).",
                       comma_list=True)
    rl_steps: int = option(0, "PPO steps on a softmax policy over the outcomes (0 = no PPO).")
    rl_policy: str = option("linear", "PPO's policy: linear (logits θ·(V, X), two parameters, any K) or tabular "
                                      "(one logit per outcome: needs many rollouts per outcome, so small K).")
    rl_beta: str = option("", "Comma-separated β of the PPO runs (one run each); empty = every --beta.",
                          comma_list=True)
    rl_batch_size: int = option(512, "Rollouts (outcomes sampled from the policy) per PPO step.")
    rl_minibatch_size: int = option(128, "Rollouts per PPO minibatch; must divide rl_batch_size.")
    rl_epochs: int = option(4, "PPO passes over each rollout batch.")
    rl_learning_rate: float = option(0.1, "Adam learning rate of the policy's logits, annealed linearly to 0.")
    clip_range: float = option(0.2, "PPO ratio clip ε (as bonrl ppo).")
    rl_eval_every: int = option(10, "Evaluate the PPO policy (exactly) every this many steps, and at 0 and the end.")

    def validate(self) -> None:
        CommonConfig.validate(self)
        if self.log_with != "none":  # exact rows written at once: nothing to watch while it runs
            raise ConfigError(f"log_with: the lab logs to no tracker (its rows are exact and written at once); "
                              f"drop --log-with {self.log_with}")
        if self.outcomes < 2:
            raise ConfigError(f"outcomes: {self.outcomes} must be ≥ 2, e.g. --outcomes 1000000")
        if self.outcomes > 50_000_000:
            raise ConfigError(f"outcomes: {self.outcomes} needs too much memory; use at most 50000000")
        if self.error not in LAB_ERRORS:
            raise ConfigError(f"error: {self.error!r} is not an error kind; use one of {', '.join(LAB_ERRORS)}")
        if not math.isfinite(self.error_scale) or self.error_scale < 0:
            raise ConfigError(f"error_scale: {self.error_scale} must be ≥ 0 (0 makes the proxy the gold)")
        if not math.isfinite(self.df) or self.df <= 0:
            raise ConfigError(f"df: {self.df} must be > 0, e.g. --df 3")
        parse_lab_ns(self.n, "n")
        if not parse_float_list(self.beta, "beta"):
            raise ConfigError("beta: empty list; give the optimum's β like --beta 0.25,0.5,1,2")
        parse_float_list(self.rl_beta, "rl_beta")
        if self.rl_policy not in ("linear", "tabular"):
            raise ConfigError(f"rl_policy: {self.rl_policy!r}; use linear or tabular")
        if self.rl_steps < 0:
            raise ConfigError(f"rl_steps: {self.rl_steps} must be ≥ 0 (0 = no PPO)")
        if self.rl_batch_size <= 0 or self.rl_minibatch_size <= 0 or self.rl_batch_size % self.rl_minibatch_size:
            raise ConfigError(f"rl_minibatch_size: {self.rl_minibatch_size} must be ≥ 1 and divide "
                              f"rl_batch_size={self.rl_batch_size}; pick a divisor")
        if self.rl_epochs <= 0:
            raise ConfigError(f"rl_epochs: {self.rl_epochs} must be ≥ 1")
        if not self.rl_learning_rate > 0:
            raise ConfigError(f"rl_learning_rate: {self.rl_learning_rate} must be > 0, e.g. 0.1")
        if not self.clip_range > 0:
            raise ConfigError(f"clip_range: {self.clip_range} must be > 0, e.g. 0.2")
        if self.rl_eval_every <= 0:
            raise ConfigError(f"rl_eval_every: {self.rl_eval_every} must be ≥ 1")

    @property
    def ns(self) -> list[int]:
        return parse_lab_ns(self.n, "n")

    @property
    def betas(self) -> list[float]:
        return parse_float_list(self.beta, "beta")

    @property
    def rl_betas(self) -> list[float]:
        return parse_float_list(self.rl_beta, "rl_beta") or self.betas


# ----------------------------------------------------------------------------------------------
# Other ways to spend KL, measured by the same evaluation: DPO and best-of-n distillation.


def check_checkpoints(cfg) -> None:
    """Checkpoint options of the commands that resume (ppo, rl, dpo, distill)."""
    require(cfg, "≥ 0", "checkpoint_every")
    require(cfg, "≥ 1", "keep_checkpoints")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("resume: --resume continues the run in --output and --overwrite replaces it; pass one")


# What makes a DPO run's comparison data that of a train-rm run (reward_model.data_settings reads these,
# with data_seed as train-rm's seed): `bonrl experiment` copies them from the RM stage a DPO entry names.
COMPARISON_DATA_FIELDS = ("policy", "gold", "prompts", "max_prompt_tokens", "chat_template", "max_new_tokens",
                          "temperature", "top_k", "top_p", "batch_size", "pairs", "data_pairs", "eval_pairs",
                          "completions_per_prompt", "labels", "label_temperature", "label_noise", "precision",
                          "engine")  # the engine sets the draws (vllm_engine.py): DPO reads the proxy's own pairs


@dataclass
class DPOConfig(ComparisonDataConfig, RLEvalConfig, PrecisionConfig, SamplingConfig, CommonConfig):
    """`bonrl dpo`: DPO (Rafailov et al. 2023) on the comparisons a proxy RM would be trained on."""

    output: str = option("runs/dpo", "Directory for TRL's checkpoints, eval samples and the resolved config.")
    policy: str = option("smollm2-135m", "Initial policy, also the frozen reference; it wrote the comparisons.")
    gold: str = option("vader", "Gold scorer: labels the comparisons (as in train-rm) and measures (scorer spec).")
    proxy: str = option(
        "", "Proxy reward model, measured only: DPO optimizes no proxy, but every row records the proxy's score so "
        "the run sits in one panel with best-of-n and RL against that proxy; give the RM trained on these "
        "comparisons (e.g. rm:runs/rm)."
    )
    beta: float = option(0.1, "DPO's β: the KL strength of the implicit reward β·log(π/π_ref) (Rafailov et al.).")
    epochs: float = option(1.0, "Passes over the training pairs (Rafailov et al. 2024 see over-optimization within one).")
    train_batch_size: int = option(16, "Comparison pairs per optimizer step.")
    learning_rate: float = option(1e-6, "Learning rate (AdamW, constant; Rafailov et al. 2023 use 1e-6).")
    checkpoint_every: int = option(0, "Save a TRL checkpoint every k optimizer steps (0 = none).")
    keep_checkpoints: int = option(2, "Keep at most this many checkpoints (oldest removed first).")
    resume: bool = option(False, "Continue from the last complete checkpoint in --output.")
    overwrite: bool = option(False, "Replace an earlier run's files in --output (without it a second run there is "
                             "refused: that run's rows point at its eval samples).")

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        RLEvalConfig.validate(self)
        ComparisonDataConfig.validate(self)
        check_untruncated(self)
        check_checkpoints(self)
        if not self.proxy:
            raise ConfigError("proxy: no proxy given; DPO only measures it, but its rows need one to share a panel "
                              "with best-of-n and RL: pass --proxy rm:PATH (the RM trained on the same comparisons)")
        if not self.beta > 0:
            raise ConfigError(f"beta: {self.beta} must be > 0 (at β = 0 the DPO loss is log 2 whatever the policy)")
        require(self, "> 0", "epochs", "learning_rate", "train_batch_size")


@dataclass
class DistillConfig(RLEvalConfig, SamplingConfig, CommonConfig):
    """`bonrl distill`: fine-tune the policy toward best-of-n against the proxy (SFT on picks, or vBoN)."""

    output: str = option("runs/distill", "Directory for checkpoints, eval samples and the resolved config.")
    policy: str = option("smollm2-135m", "Initial policy, also the frozen reference whose best-of-n is the target.")
    proxy: str = option("", "Proxy reward model that picks the best of n (scorer spec, e.g. rm:runs/rm).")
    gold: str = option("vader", "Gold scorer, used only to measure (scorer spec).")
    n: int = option(4, "The n of the best-of-n distribution distilled (compare with bonrl sample at this n).")
    objective: str = option(
        "sft", "sft: maximum likelihood on each prompt's best-of-n pick (rejection-sampling fine-tuning); vbon: "
        "reverse KL to the best-of-n distribution (Amini et al. 2024)."
    )
    sample_from: str = option(
        "reference", "sft: draw the n candidates from the reference (distils best-of-n of the initial policy) or from "
        "the current policy (expert iteration: best-of-n of best-of-n ...)."
    )
    steps: int = option(100, "Optimizer steps, each on fresh samples.")
    prompts_per_step: int = option(8, "Train prompts per step.")
    generations_per_prompt: int = option(4, "vbon: policy samples per prompt (the leave-one-out baseline's group).")
    reference_samples: int = option(
        32, "vbon: reference samples per prompt that estimate the proxy's CDF F under π_ref (want several per 1/n)."
    )
    learning_rate: float = option(1e-5, "Learning rate, AdamW.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    train_top_layers: int = option(0, "Train only the top k transformer layers (0 = all).")
    checkpoint_every: int = option(0, "Save a checkpoint every k steps (0 = only at the end).")
    keep_checkpoints: int = option(2, "Keep at most this many checkpoints (oldest removed first).")
    resume: bool = option(False, "Continue from the last complete checkpoint in --output.")
    overwrite: bool = option(False, "Replace an earlier run's files in --output (without it a second run there is "
                             "refused: that run's rows point at its eval samples).")

    def validate(self) -> None:
        CommonConfig.validate(self)
        SamplingConfig.validate(self)
        RLEvalConfig.validate(self)
        check_untruncated(self)
        check_checkpoints(self)
        if not self.proxy:
            raise ConfigError("proxy: no proxy reward model given; pass --proxy rm:PATH (from bonrl train-rm)")
        if self.n < 2:
            raise ConfigError(f"n: {self.n} must be ≥ 2 (best-of-1 is the initial policy itself)")
        if self.objective not in ("sft", "vbon"):
            raise ConfigError(f"objective: {self.objective!r}; use sft or vbon")
        if self.sample_from not in ("reference", "policy"):
            raise ConfigError(f"sample_from: {self.sample_from!r}; use reference or policy")
        if self.objective == "vbon" and self.sample_from != "reference":
            raise ConfigError("sample_from: vbon's target is best-of-n of the reference; drop --sample-from policy")
        require(self, "≥ 1", "steps", "prompts_per_step")
        if self.generations_per_prompt < 2:
            raise ConfigError("generations_per_prompt: must be ≥ 2 (vbon's leave-one-out baseline needs a group)")
        if self.reference_samples < self.n:
            raise ConfigError(f"reference_samples: {self.reference_samples} < n={self.n}; the CDF estimate needs at "
                              f"least n samples, e.g. --reference-samples {8 * self.n}")
        require(self, "> 0", "learning_rate", "max_grad_norm")
        require(self, "≥ 0", "train_top_layers")


# ----------------------------------------------------------------------------------------------
# Reading results: report, results, experiment.


@dataclass
class ReportConfig:
    """`bonrl report`: figures, fits and comparison tables from the shared results table."""

    results: str | None = option(
        None, "Results table (SQLite). Default: $BONRL_RESULTS, else ./bonrl-results.sqlite."
    )
    output: str = option("report", "Directory to write report.md, report.html, figures and CSV tables.")
    experiment: str | None = option(None, "Only rows of this experiment.")
    run_id: list[str] = option([], "Only rows of these runs; repeat for several.")
    policy: str | None = option(None, "Only rows with this policy spec.")
    proxy: str | None = option(None, "Only rows with this proxy spec.")
    gold: str | None = option(None, "Only rows with this gold spec.")
    methods: str = option("", "Comma-separated methods to include (e.g. bon,ppo); empty = all.", comma_list=True)
    scale: str = option("relative", "Gold scale: relative (minus KL-0 value) or unit (also ÷ initial std).")
    fit_kl_max: float = option(0.0, "If > 0, also fit on KL ≤ this and report prediction error beyond it.")
    gold_level: float | None = option(
        None, "Gold gain (on the report's scale) for 'KL needed to reach it'; default: half the smaller peak."
    )
    kl_target: float | None = option(
        None, "KL (nats) at which to compare gold gains; default: the largest KL both curves reliably reach."
    )
    proxy_target: float | None = option(
        None, "Proxy gain at which to compare KL spent and gold gained; default: the largest proxy gain both "
        "curves reliably reach."
    )
    bootstrap: int = option(2000, "Prompt (and seed) resamples behind every 95% interval; at least 100.")
    seed: int = option(0, "Seed of the resampling, so a report is reproducible.")
    scaling: str = option(
        "auto", "The scaling view across proxies of one policy and gold (coefficients and gold peaks against data "
        "size, model size and accuracy): auto (wherever there are several proxies), on (required: an error "
        "where it cannot be made), off."
    )
    quiet: bool = option(False, "No progress output.")

    def validate(self) -> None:
        check_bootstrap(self.bootstrap)
        if self.scaling not in ("auto", "on", "off"):
            raise ConfigError(f"scaling: {self.scaling!r}; use auto, on or off, e.g. --scaling on")
        if self.kl_target is not None and not (math.isfinite(self.kl_target) and self.kl_target > 0):
            raise ConfigError(f"kl_target: {self.kl_target} must be a positive number of nats, e.g. --kl-target 2")
        if self.proxy_target is not None and not (math.isfinite(self.proxy_target) and self.proxy_target > 0):
            raise ConfigError(f"proxy_target: {self.proxy_target} must be a positive proxy gain, e.g. --proxy-target 0.5")
        if self.scale not in ("relative", "unit"):
            raise ConfigError(f"scale: {self.scale!r}; use relative or unit")
        if self.fit_kl_max < 0:
            raise ConfigError(f"fit_kl_max: {self.fit_kl_max} must be ≥ 0")
        if self.gold_level is not None:
            try:
                self.gold_level = float(self.gold_level)
            except (TypeError, ValueError):
                raise ConfigError(f"gold_level: {self.gold_level!r} is not a number; e.g. gold_level: 0.2") from None
        if isinstance(self.run_id, str):
            self.run_id = [self.run_id]
        from bon_vs_rl.record import files, results

        files.check_directory(self.output, "output")
        results.check_results_file(results.resolve_results_path(self.results))
        if self.methods and not isinstance(self.methods, str):
            self.methods = ",".join(str(m) for m in self.methods)  # YAML may give a list


@dataclass
class ExperimentConfig:
    """`bonrl experiment CONFIG`: the whole study from one YAML file (see configs/*.yaml).

    Stages, in order, each writing under OUTPUT/<stage>/: rm-0, rm-1, ... (one per `train_rm` entry),
    bon, ppo-0, ppo-1, ... (one per `ppo` entry), rl-0, ... (one per `rl` entry), dpo-0, ... (one per
    `dpo` entry), distill-0, ... (one per `distill` entry), report. A stage's config is `common` merged
    with its own entry (the entry wins), then seed/device/cache_dir/quiet/experiment/results/output from
    here. `proxy` in a bon/ppo/rl/dpo/distill entry may name an RM stage (rm-1); the default is every RM
    for bon and rm-0 for the others. A dpo entry's comparison data is that of an RM stage.
    """

    name: str = option("experiment", "Experiment name; tags every result row.")
    output: str = option("runs", "Directory for every stage's files.")
    results: str | None = option(None, "Results table; default $BONRL_RESULTS, else OUTPUT/results.sqlite.")
    seed: int = option(0, "Seed shared by every stage unless a stage sets its own.")
    device: str = option("auto", "Device for every stage.")
    cache_dir: str | None = option(None, "Converted-model cache directory.")
    quiet: bool = option(False, "No progress bars.")
    eval_prompts: int = option(
        EVAL_PROMPTS, "The shared evaluation set: the first this many held-out prompts, for best-of-n and every RL "
        "run (0 = the whole eval split; more than it has is refused, except this default, which then takes them "
        "all). Every method is measured and compared on exactly these prompts."
    )
    common: dict = option({}, "Settings given to every stage (e.g. policy, gold, prompts, max_new_tokens).")
    # The lists of mappings default to None (= empty) so the generic type coercion leaves their
    # mappings alone; validate() turns None into [] and checks every entry is a mapping.
    train_rm: list | None = option(None, "One mapping of train-rm settings per proxy RM (data-size/backbone sweeps).")
    sample: dict = option({}, "best-of-n settings (n grid, samples_per_prompt, ...).")
    ppo: list | None = option(
        None, "One mapping of PPO settings per run (e.g. one per β); `seeds: [0, 1, 2]` in an entry runs one "
        "replicate per seed (stages ppo-K-seedS), pooled into one curve by the report."
    )
    rl: list | None = option(None, "Optional TRL runs: mappings with algo: rloo|grpo and their settings (seeds too).")
    dpo: list | None = option(
        None, "Optional DPO runs (e.g. one per β). Each trains on the comparisons of an RM stage (`comparisons: rm-K`, "
        "default: its proxy's stage, else rm-0) — same pairs, same labels — and is measured against that proxy."
    )
    distill: list | None = option(
        None, "Optional best-of-n distillation runs: mappings with n, objective: sft|vbon and their settings (seeds too)."
    )
    report: dict = option({}, "Report settings.")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("name: empty; give the experiment a name")
        if self.eval_prompts < 0:
            raise ConfigError(f"eval_prompts: {self.eval_prompts} must be ≥ 0 (0 = the whole eval split)")
        if self.seed < 0:
            raise ConfigError(f"seed: {self.seed} is negative; use a non-negative integer")
        for key in ("common", "sample", "report"):
            value = getattr(self, key)
            if value is None:
                setattr(self, key, {})
            elif not isinstance(value, dict):
                raise ConfigError(f"{key}: must be a mapping of option: value, got {type(value).__name__}")
        for key in ("train_rm", "ppo", "rl", "dpo", "distill"):
            value = getattr(self, key)
            if value is None:
                value = []
            if isinstance(value, dict):
                value = [value]  # one entry may be given without the list
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{key}: must be a list of mappings, e.g. {key}: [{{beta: 0.05}}]")
            setattr(self, key, [dict(v or {}) for v in value])
        if not self.train_rm:
            raise ConfigError("train_rm: at least one proxy reward model is needed")
