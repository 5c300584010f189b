"""Reward scorers: the gold reward (the 'human' of Gao et al. 2022) and proxy reward models.

A scorer maps a batch of (prompt, completion) pairs to one float each. The same specs serve as
`--gold` and `--proxy`; the gold is only ever used to label comparisons and to measure, never
optimized against.

    vader                       VADER compound sentiment of the completion alone, in [-1, 1]
                                (Hutto & Gilbert 2014; a human-rated lexicon: transparent and offline)
    vader-fluent                VADER's sentiment counted only in fluent, non-repetitive, finished English:
                                fluency · (1 + compound) − 1, in [-1, 1] (`vader_fluent`: the formula, why)
    hf:<id-or-path>             a sequence-classification reward model with one output (its logit)
    rm:<path>[@agg]             a reward model (or ensemble) trained by `bonrl train-rm`; an ensemble
                                scores with @mean (default), @min (worst case), @mean-<λ>std
                                (uncertainty-weighted; Coste et al. 2023) or @member-<k> (one member)
    python:<module>:<function>  a user function (prompts, completions) -> list of floats; <module> may
                                be an importable name or a path to a .py file

Every scorer's output goes through `check_finite`: a NaN or inf stops the run, naming the prompt and
completion that produced it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bon_vs_rl.errors import ConfigError

RM_METADATA = "bonrl_rm.json"  # written by `bonrl train-rm` beside the weights
HELDOUT_SCORES = "heldout_scores.json"  # every member's scores on the held-out samples, and the held-out pairs


class ScorerError(ConfigError):
    """A scorer that cannot load, or returned a non-finite value: bad input, exit code 2."""


def rm_text(prompt: str, completion: str) -> str:
    """What a reward model reads: the prompt followed by the completion (training and scoring alike)."""
    return prompt + completion


@dataclass
class Scorer:
    spec: str
    score_batch: Callable[[list[str], list[str]], Sequence[float]]
    batch_size: int = 64
    # An rm: spec: its member models as scorers, and how their scores [members, batch] become this one's.
    parts: list[Scorer] = field(default_factory=list)
    combine: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions must have the same length")
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            p = list(prompts[start:start + self.batch_size])
            c = list(completions[start:start + self.batch_size])
            batch = np.asarray(self.score_batch(p, c), dtype=np.float64).reshape(-1)
            if batch.shape[0] != len(p):
                raise ScorerError(f"scorer {self.spec}: returned {batch.shape[0]} scores for {len(p)} inputs")
            check_finite(self.spec, batch, p, c)
            scores.append(batch)
        return np.concatenate(scores) if scores else np.zeros(0)


def check_finite(spec: str, scores: np.ndarray, prompts: Sequence[str], completions: Sequence[str]) -> None:
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        i = int(bad[0])
        raise ScorerError(
            f"scorer {spec}: returned {scores[i]} for prompt {prompts[i][:60]!r} and completion "
            f"{completions[i][:60]!r}; a reward must be finite — fix the scorer"
        )


# ----------------------------------------------------------------------------------------------
# The kinds.


def vader_scorer(spec: str) -> Scorer:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        # Only the completion is scored: the prompt is fixed, so its sentiment is not the policy's doing.
        return [analyzer.polarity_scores(c)["compound"] for c in completions]

    return Scorer(spec, score, batch_size=1024)


# vader-fluent: VADER's sentiment, counted only in fluent English. VADER alone is fooled by the text an
# optimizer finds first: "our food warm warm warm food warm warm ..." scores 0.95, because a lexicon adds up
# the words it knows and reads nothing else. A human rater (Gao et al.'s gold is a reward model of human
# judgements) would score it near the bottom. So the gold multiplies three fluency factors in [0, 1], each
# 1 on ordinary text (thresholds set on the reference policy's own samples, not on optimized ones) and
# falling to 0 on text no rater would accept:
#
#   repetition   ramp(distinct-1 of the content words, 0.5, 0.8) · ramp(distinct-2 of the words, 0.6, 0.9)
#                (distinct-n = distinct n-grams / n-grams, Li et al. 2016; content words: all but function
#                words such as "the", "was", which repeat in any fluent sentence): a word or phrase repeated
#                over and over takes it to 0;
#   non-words    ramp(1 − share of words in no English dictionary, 0.5, 0.9) (text_stats.nonword_share:
#                pyspellchecker's English list and VADER's lexicon): the odd name or typo costs nothing,
#                token soup everything;
#   finish       1 if the completion ends a sentence (. ! ? …), else UNFINISHED (0.9): a rater prefers a
#                finished thought, mildly — most 16-token reference completions are cut off;
#   empty        a completion with no word at all has fluency 0.
#
# where ramp(x, lo, hi) = clip((x − lo) / (hi − lo), 0, 1). The gold interpolates between VADER and the
# bottom of its range:   gold = fluency · (1 + compound) − 1   (in [−1, 1]).
# Multiplying the compound itself by the fluency (compound · fluency) would reward degenerate *negative*
# text (−0.9 · 0.1 = −0.09 beats a fluent −0.5); pulling towards −1 keeps "disfluent is worst" for every
# sentiment. On fluent text (fluency 1) the gold is exactly VADER.
VADER_FLUENT_VERSION = "1"  # change with the formula: comparison data labelled by it are cached by this
DISTINCT_1 = (0.5, 0.8)
DISTINCT_2 = (0.6, 0.9)
WORD_SHARE = (0.5, 0.9)
UNFINISHED = 0.9


def ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below lo, 1 at or above hi, linear between."""
    return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))


def fluency_factors(completion: str) -> dict[str, float]:
    """The vader-fluent gold's factors for one completion (each in [0, 1]) and their product `fluency`."""
    from bon_vs_rl.measurement import text_stats

    tokens = text_stats.words(completion)
    repetition = (ramp(text_stats.distinct_n(text_stats.content_words(tokens), 1), *DISTINCT_1)
                  * ramp(text_stats.distinct_n(tokens, 2), *DISTINCT_2))
    nonwords = ramp(1.0 - text_stats.nonword_share(tokens), *WORD_SHARE)
    finish = 1.0 if text_stats.finished(completion) else UNFINISHED
    fluency = repetition * nonwords * finish if tokens else 0.0
    return {"repetition": repetition, "nonwords": nonwords, "finish": finish, "fluency": fluency}


def vader_fluent(compound: float, fluency: float) -> float:
    """gold = fluency · (1 + compound) − 1: VADER on fluent text, −1 (the worst) on text with no fluency."""
    return fluency * (1.0 + compound) - 1.0


def vader_fluent_scorer(spec: str) -> Scorer:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        return [vader_fluent(analyzer.polarity_scores(c)["compound"], fluency_factors(c)["fluency"])
                for c in completions]

    return Scorer(spec, score, batch_size=1024)


class SequenceClassifierReward:
    """One reward model: the single logit of an AutoModelForSequenceClassification."""

    def __init__(self, path: str, device, max_length: int = 512):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Keep the end of long texts: the completion is what is being judged.
        self.tokenizer.truncation_side = "left"
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.model.config.num_labels != 1:
            raise ScorerError(f"reward model {path}: has {self.model.config.num_labels} outputs; need 1")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        texts = [rm_text(p, c) for p, c in zip(prompts, completions)]
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with self.torch.inference_mode():
            logits = self.model(**batch).logits[:, 0]
        return logits.float().cpu().numpy()


def hf_scorer(spec: str, target: str, device, cache_dir: str | None = None, role: str = "gold") -> Scorer:
    from bon_vs_rl.measurement.models import _load_error, resolve_model_path

    path = resolve_model_path(target, cache_dir, role)
    try:
        reward = SequenceClassifierReward(path, device)
    except ConfigError:
        raise
    except Exception as exc:
        raise _load_error(target, exc, role) from None
    return Scorer(spec, reward, batch_size=32)


AGGREGATIONS = "@mean, @min, @mean-<λ>std (e.g. @mean-0.5std) or @member-<k> (e.g. @member-0)"


def parse_aggregation(agg: str, role: str = "proxy") -> tuple[str, float]:
    """'mean' | 'min' | 'mean-0.5std' | 'member-2' -> (kind, λ or the member's index)."""
    if agg in ("mean", "min"):
        return agg, 0.0
    match = re.fullmatch(r"mean-([0-9]+(?:\.[0-9]*)?|\.[0-9]+)std", agg)
    if match:
        return "mean-std", float(match.group(1))
    match = re.fullmatch(r"member-([0-9]+)", agg)
    if match:
        return "member", float(match.group(1))
    raise ScorerError(f"{role}: aggregation {agg!r} unknown; use {AGGREGATIONS}")


def aggregate(scores: np.ndarray, kind: str, value: float = 0.0) -> np.ndarray:
    """One proxy score per sample from an ensemble's member scores [members, samples] (Coste et al. 2023):

        mean        the average member                         (@mean; a single model: itself)
        min         the worst case over members                (@min: "worst-case optimization")
        mean-std    mean − λ·std, std over members (ddof 0)    (@mean-<λ>std: uncertainty-weighted)
        member      member number `value` alone                (@member-<k>: to draw it beside the ensemble)

    Scoring (rm_scorer), the held-out accuracy of any aggregation (describe_rm) and the tests all call this."""
    scores = np.asarray(scores, dtype=np.float64)
    if kind == "mean":
        return scores.mean(axis=0)
    if kind == "min":
        return scores.min(axis=0)
    if kind == "mean-std":
        return scores.mean(axis=0) - value * scores.std(axis=0)
    if kind == "member":
        return scores[int(value)].copy()
    raise ValueError(f"unknown aggregation {kind!r}")


def split_rm_target(target: str, role: str = "proxy") -> tuple[Path, str, float, dict]:
    """'DIR@min' -> (DIR, kind, λ or index, DIR's bonrl_rm.json), with the aggregation checked against DIR's members."""
    path_text, _, agg = target.partition("@")
    kind, value = parse_aggregation(agg or "mean", role)
    path = Path(path_text).expanduser()
    metadata_file = path / RM_METADATA
    if not metadata_file.exists():
        raise ScorerError(f"{role}: {path} is not a bonrl reward model (no {RM_METADATA}); train one with "
                          f"bonrl train-rm, or fix --{role}")
    metadata = json.loads(metadata_file.read_text())
    members = metadata.get("members", ["."])
    if len(members) == 1 and kind != "mean":
        raise ScorerError(f"{role}: {path} is a single model; @{agg} needs an ensemble (train with --ensemble K)")
    if kind == "member" and int(value) >= len(members):
        raise ScorerError(f"{role}: {path} has {len(members)} members (member-0 to member-{len(members) - 1}); "
                          f"@{agg} is not one of them")
    return path, kind, value, metadata


def rm_scorer(spec: str, target: str, device, role: str = "proxy", shared: dict | None = None) -> Scorer:
    """A `bonrl train-rm` checkpoint: one model directory, or an ensemble of member directories.

    `shared` (member directory -> loaded model): specs of one ensemble loaded into one run (@mean, @min,
    @member-0, ...) share its member models instead of loading them once each. The scorer's `parts` are
    its members as scorers of their own and `combine` the aggregation, so a caller scoring many specs of
    one ensemble can score each member once (best_of_n.score_all)."""
    path, kind, value, metadata = split_rm_target(target, role)
    member_dirs = [path / m for m in metadata.get("members", ["."])]
    if kind == "member":  # one member alone: load only that one
        member_dirs = [member_dirs[int(value)]]
        kind, value = "mean", 0.0
    shared = {} if shared is None else shared
    parts = []
    for directory in member_dirs:
        key = str(directory.resolve())
        if key not in shared:
            shared[key] = SequenceClassifierReward(str(directory), device, metadata.get("max_length", 512))
        parts.append(Scorer(f"rm:{directory}", shared[key], batch_size=32))

    def combine(scores: np.ndarray) -> np.ndarray:
        return aggregate(scores, kind, value)

    def score(prompts: list[str], completions: list[str]) -> np.ndarray:
        return combine(np.stack([part.score_batch(prompts, completions) for part in parts]))

    return Scorer(spec, score, batch_size=32, parts=parts, combine=combine)


def pair_scores(proxy_chosen: np.ndarray, proxy_rejected: np.ndarray) -> np.ndarray:
    """Each pair's contribution to the accuracy: 1 when the proxy orders it as the gold does, 0.5 a proxy tie, 0."""
    proxy_chosen, proxy_rejected = np.asarray(proxy_chosen), np.asarray(proxy_rejected)
    return (proxy_chosen > proxy_rejected) + 0.5 * (proxy_chosen == proxy_rejected)


def pairwise_accuracy(proxy_chosen: np.ndarray, proxy_rejected: np.ndarray) -> float:
    """Fraction of pairs the proxy orders as the gold does; a proxy tie counts one half."""
    if len(proxy_chosen) == 0:
        return float("nan")
    return float(np.mean(pair_scores(proxy_chosen, proxy_rejected)))


def accuracy_with_interval(proxy_chosen: np.ndarray, proxy_rejected: np.ndarray, prompts) -> dict:
    """accuracy, accuracy_lo, accuracy_hi: the held-out accuracy with its 95% interval from resampling the
    held-out prompts (statistics.accuracy_interval, 2,000 resamples, seed 0: the same scores always give the
    same interval). Without the pairs' prompts (a checkpoint from before they were saved) the interval is NaN."""
    from bon_vs_rl.analysis import statistics

    accuracy = pairwise_accuracy(proxy_chosen, proxy_rejected)
    if prompts is None:
        return {"accuracy": accuracy, "accuracy_lo": math.nan, "accuracy_hi": math.nan}
    lo, hi = statistics.accuracy_interval(pair_scores(proxy_chosen, proxy_rejected), prompts)
    return {"accuracy": accuracy, "accuracy_lo": lo, "accuracy_hi": hi}


def describe_rm(target: str, role: str = "proxy") -> dict:
    """What the scaling view needs to know of an `rm:` proxy, from its checkpoint directory alone (no model
    is loaded): the pairs it was trained on (label_noise: the share flipped), its backbone and parameter
    counts (models.parameter_count), members, and the held-out accuracy of exactly this aggregation,
    recomputed from the member scores train-rm saved (HELDOUT_SCORES) with `aggregate`, with its interval over
    resampled held-out prompts where the checkpoint saved each pair's prompt (accuracy_with_interval). A value
    that the checkpoint does not hold is None (an interval it cannot give: NaN)."""
    path, kind, value, metadata = split_rm_target(target, role)
    config = metadata.get("config", {})
    members = metadata.get("members", ["."])
    evaluation = metadata.get("evaluation", {})
    accuracy = evaluation.get("accuracy") if kind == "mean" else None
    bounds = (evaluation.get("accuracy_lo"), evaluation.get("accuracy_hi")) if kind == "mean" else (None, None)
    if kind == "member" and len(evaluation.get("member_accuracy", [])) > int(value):
        accuracy = evaluation["member_accuracy"][int(value)]
    heldout_file = path / HELDOUT_SCORES
    if heldout_file.exists():
        heldout = json.loads(heldout_file.read_text())
        scores = aggregate(np.asarray(heldout["members"], dtype=np.float64), kind, value)
        pairs = np.asarray(heldout["pairs"], dtype=np.int64).reshape(-1, 2)
        measured = accuracy_with_interval(scores[pairs[:, 0]], scores[pairs[:, 1]], heldout.get("pair_prompts"))
        accuracy, bounds = measured["accuracy"], (measured["accuracy_lo"], measured["accuracy_hi"])
    parameters = metadata.get("parameters")
    if parameters is None:  # a checkpoint from before parameters were recorded: count them from its files
        from bon_vs_rl.measurement.models import parameter_count

        parameters = parameter_count(path / members[int(value) if kind == "member" else 0])
    return {
        "directory": str(path), "aggregation": kind, "member": int(value) if kind == "member" else None,
        "lambda": value if kind == "mean-std" else None, "members": len(members),
        "pairs": metadata.get("train_pairs", config.get("pairs")), "label_noise": config.get("label_noise"),
        "backbone": metadata.get("backbone", config.get("backbone")),
        "parameters": None if parameters is None else parameters.get("total"),
        "parameters_non_embedding": None if parameters is None else parameters.get("non_embedding"),
        "accuracy": accuracy, "accuracy_lo": bounds[0], "accuracy_hi": bounds[1],
    }


def python_scorer(spec: str, target: str, role: str = "gold") -> Scorer:
    module_name, _, function_name = target.rpartition(":")
    flag = f"--{role}"
    if not module_name or not function_name:
        raise ScorerError(f"{role}: {spec!r} must look like python:MODULE:FUNCTION or python:file.py:FUNCTION "
                          f"(fix {flag})")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise ScorerError(f"{role}: file {module_name} not found; fix the path in {flag} {spec}")
            module_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ScorerError(f"{role}: cannot import {module_name!r} ({exc}); check {flag} {spec}") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ScorerError(f"{role}: {module_name} has no function {function_name!r}; check {flag} {spec}")
    return Scorer(spec, function, batch_size=1024)


UNKNOWN = "use vader, vader-fluent, hf:ID-OR-PATH, rm:PATH or python:MODULE:FUNCTION"


def check_spec(spec: str, role: str = "gold", exists: bool = True) -> None:
    """A spec's bad input, found before any model loads (what load_scorer would refuse later): an unknown
    kind, a malformed python: or rm: spec, an unknown aggregation, and with `exists` a python: file or an
    rm: directory that is not there (or an aggregation its members do not allow)."""
    if not spec:
        raise ScorerError(f"{role}: empty scorer spec; {UNKNOWN} (fix --{role})")
    kind, _, target = spec.partition(":")
    if kind in ("vader", "vader-fluent") and not target or kind == "hf" and target:
        return
    if kind == "python":
        module, _, function = target.rpartition(":")
        if not module or not function:
            raise ScorerError(f"{role}: {spec!r} must look like python:MODULE:FUNCTION or python:file.py:FUNCTION "
                              f"(fix --{role})")
        if exists and module.endswith(".py") and not Path(module).is_file():
            raise ScorerError(f"{role}: file {module} not found; fix the path in --{role} {spec}")
        return
    if kind == "rm" and target:
        if exists:
            split_rm_target(target, role)
        else:
            parse_aggregation(target.partition("@")[2] or "mean", role)
        return
    raise ScorerError(f"{role}: unknown scorer {spec!r}; {UNKNOWN} (fix --{role})")


def spec_fingerprint(spec: str) -> str | None:
    """What identifies the thing a policy, proxy or gold spec names, beyond its text: the content of a
    `python:` scorer's file, the files of a local model, `rm:` or `hf:` directory (files.fingerprint; an rm:
    directory's metadata names the train-rm run that wrote it, so a retrained proxy never fingerprints like
    the one before). None when the spec names nothing local (vader, an alias, a hub id): its text is then
    the identity."""
    from bon_vs_rl.record import files

    kind, _, target = spec.partition(":")
    if spec == "vader-fluent":  # a formula in this package: its version names it (labels change with it)
        return f"vader-fluent-v{VADER_FLUENT_VERSION}"
    if kind == "python":
        module = target.rpartition(":")[0]
        if module.endswith(".py"):
            return files.fingerprint(Path(module))
        try:  # an importable module: the file it would be imported from
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        return files.fingerprint(Path(found.origin)) if found and found.origin else None
    if kind in ("rm", "hf"):
        return files.fingerprint(Path(target.partition("@")[0]).expanduser())
    return files.fingerprint(Path(spec).expanduser())  # a policy given as a local directory


def load_scorer(spec: str, device=None, cache_dir: str | None = None, role: str = "gold",
                shared: dict | None = None) -> Scorer:
    """Build the scorer a spec names. `role` ('gold' or 'proxy': the option it came from) words the errors;
    `shared`: loaded rm: member models to reuse (rm_scorer)."""
    if not spec:
        raise ScorerError(f"{role}: empty scorer spec; use vader, vader-fluent, hf:ID, rm:PATH or python:MODULE:FUNCTION")
    kind, _, target = spec.partition(":")
    if kind == "vader" and not target:
        return vader_scorer(spec)
    if kind == "vader-fluent" and not target:
        return vader_fluent_scorer(spec)
    if kind == "python":
        return python_scorer(spec, target, role)
    if device is None:
        from bon_vs_rl.measurement.models import resolve_device

        device = resolve_device("auto")
    if kind == "hf" and target:
        return hf_scorer(spec, target, device, cache_dir, role)
    if kind == "rm" and target:
        return rm_scorer(spec, target, device, role, shared)
    raise ScorerError(f"{role}: unknown scorer {spec!r}; {UNKNOWN} (fix --{role})")
