"""`bonrl train-rm`: gold-labelled comparisons, then a proxy reward model trained on them.

The first half of Gao, Schulman & Hilton (2022): a fixed *gold* reward plays the human labeller and a
*proxy* reward model (RM) learns from its comparisons. Best-of-n and RL later optimize the proxy; its
errors are what overoptimization exploits, so it is trained on train prompts and measured on held-out ones.

    bonrl train-rm --policy smollm2-135m --gold vader --backbone minilm --pairs 2000 --output runs/rm
    bonrl train-rm ... --ensemble 4      # then score with --proxy rm:runs/rm@min (Coste et al. 2023)

1. Comparison data. k completions per train prompt from the initial policy (the sampler and
   SamplingConfig that best-of-n and RL use), scored by the gold; the k(k-1)/2 pairs among a prompt's
   completions are comparisons (Ouyang et al. 2022 §3.5 also label every pair of K ranked samples).
   Prompts are consumed in order until `data_pairs` (default: `pairs`) comparisons exist, so
   ~data_pairs / (k(k-1)/2) prompts are needed; when the prompt set runs out it is cycled with new
   samples. Held-out pairs come the same way from the eval prompts. Labels:
       deterministic   the completion with the higher gold wins; exact ties carry no preference and
                       are dropped (an integer- or lexicon-valued gold such as VADER ties often)
       bradley-terry   a noisy labeller: P(a ≻ b) = σ((gold_a − gold_b) / T); ties are kept as coin flips
   The proxy trains on `pairs` of the drawn pairs (`training_pairs`): a random subset, the same for every
   run with the same data seed, nested (the 500-pair subset holds the 250-pair one), so a data-size
   sweep (Gao et al. 2022 §3.4) labels once and its proxies differ in how much they saw, not in what was
   drawn; then exactly round(label_noise · pairs) of them, chosen at random, are flipped (Coste et al.
   2023 flip 25%). Held-out labels are never noised or sampled: accuracy is measured against the gold,
   on the same held-out pairs for every proxy of one draw.
   The data is cached under a hash of every setting that shapes it (`comparisons/<hash>/` in the cache
   directory: pairs.parquet, samples.parquet, settings.json, written atomically) and reused when the
   same settings ask again; "reusing comparison data" is printed and `data_reused` recorded. The hash
   covers what the policy and gold specs name, not only their text (`scorers.spec_fingerprint`): an edited
   `python:` gold file or a retrained local model directory is new data. The subset and the label noise
   are applied after the cache, so a noisy proxy and a clean one share the draw.
2. Training. AutoModelForSequenceClassification with one output on the backbone, Bradley–Terry loss
   −log σ(r_chosen − r_rejected) (Ouyang et al. 2022 eq. 1), with TRL's RewardTrainer.
3. Evaluation. On held-out pairs from held-out prompts: accuracy against the gold labels (a proxy tie
   counts one half), with its 95% interval over resampled held-out prompts (accuracy_lo, accuracy_hi; 400
   pairs put its SE near 0.025); on every held-out sample: Pearson and Spearman correlation of proxy with gold.
   One row, method `rm`, goes to the results table; the same numbers are printed as a table.
4. Output. `--output` becomes a checkpoint directory loadable as `rm:<dir>` (and, for one model, by
   `AutoModelForSequenceClassification.from_pretrained(dir)`): weights, tokenizer, `bonrl_rm.json`
   (members, max_length, backbone, parameter counts, the resolved config, the evaluation, the data
   hash), `heldout_scores.json` (every member's score on every held-out sample, the held-out pairs and
   each pair's prompt, so the accuracy (and its interval) of any aggregation, @min or @mean-<λ>std, is recomputed without loading a model:
   scorers.describe_rm) and `resolved_config.json`. An ensemble keeps its members in `member-0`, `member-1`, ... trained with
   seeds seed, seed+1, ... on the same data. The directory is filled in a temporary sibling and renamed
   into place only after evaluation succeeds, so a crash never leaves a directory that looks complete.
   An --output that already holds a reward model is refused unless --overwrite: other runs may be
   scoring with it as rm:OUTPUT. With --log-with, the tracker's files go to OUTPUT-logs beside it.

Several processes (`torchrun --nproc_per_node K -m bon_vs_rl.cli -- train-rm ...`): each process samples
and gold-scores its share of every round of prompts (whole sampler batches, `sampling.shard`, each
seeded by its first prompt, so the data is what one process would draw); all of them label the gathered
round alike; the main process alone caches the data. RewardTrainer then trains with DDP, each process
taking train_batch_size / K pairs of every step; the main process alone evaluates and writes the
checkpoint, its metadata and the one results row.

Why RewardTrainer is given pre-tokenized pairs: it would tokenize prompt+completion itself, append EOS
and *drop* pairs longer than max_length, while the scorer that later reads this RM
(`scorers.SequenceClassifierReward`) truncates from the left and appends nothing. Training must read
exactly what scoring reads, so we tokenize `scorers.rm_text(prompt, completion)` with left truncation
here and hand TRL `chosen_ids`/`rejected_ids`, which it uses as they are. Its progress printing is
replaced by one progress bar on stderr (console.progress) with the loss and running pairwise accuracy.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bon_vs_rl.config.base import to_dict
from bon_vs_rl.config.commands import TrainRMConfig
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import models, scorers
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.record import console, files

if TYPE_CHECKING:
    import pandas as pd

DATA_FORMAT = 3  # bump when the saved layout, the pairing rule or the sampler's random streams change: old caches
# are then unused (2: each sampler batch seeded by its first prompt, so that torchrun draws what one process does;
# 3: labels cached clean, the --pairs subset and the label noise applied after loading: training_pairs)
SPLIT_CODE = {"train": 0, "eval": 1}


@dataclass
class ComparisonData:
    # split, prompt_id, prompt, chosen, rejected, chosen_gold, rejected_gold, flipped, and chosen_sample /
    # rejected_sample: the row numbers of the two completions in `samples`
    pairs: pd.DataFrame
    samples: pd.DataFrame  # the saved-samples format (sampling.Samples.to_frame) plus split and gold
    key: str  # hash of the settings that shaped the data
    path: Path
    reused: bool
    seconds: float  # wall time of this run's data stage (generation, or loading when reused)
    generation_seconds: float  # wall time of the run that generated it


# ----------------------------------------------------------------------------------------------
# 1. Comparison data.


def data_settings(cfg: TrainRMConfig, train_prompts: list[str], eval_prompts: list[str], device=None) -> dict:
    """Every setting that changes the comparison data; its hash names the cached copy. `device`: where the
    policy samples (default: --device resolved), which with --precision says the arithmetic it samples in."""
    prompt_digest = hashlib.sha256(json.dumps([train_prompts, eval_prompts]).encode()).hexdigest()
    device = models.resolve_device(cfg.device) if device is None else device
    return {
        "format": DATA_FORMAT,
        "policy": cfg.policy,
        "gold": cfg.gold,
        # The same spec can name new content: an edited python: gold function, a retrained rm: directory,
        # a policy directory overwritten by a later run. Stale labels must then not be reused.
        "policy_fingerprint": scorers.spec_fingerprint(cfg.policy),
        "gold_fingerprint": scorers.spec_fingerprint(cfg.gold),
        "prompts": cfg.prompts,
        "prompt_texts_sha256": prompt_digest,  # an edited prompt file is new data even under the same name
        # batch_size is included because it changes how the random stream is consumed, hence the samples.
        "sampling": {name: getattr(cfg, name) for name in (
            "max_prompt_tokens", "chat_template", "max_new_tokens", "temperature", "top_k", "top_p", "batch_size")},
        # bf16 autocast samples another distribution than fp32 (0.011 nats of KL per sequence measured), and
        # --precision auto means bf16 on a GPU, fp32 on a CPU: the arithmetic itself is part of the data.
        "arithmetic": "bf16" if models.uses_bf16(device, cfg.precision) else "fp32",
        # vLLM draws other samples than the hf sampler (one distribution, other random streams); the key
        # holds the engine only when it is not hf, so that data cached before engines existed is reused.
        **({"engine": cfg.engine} if cfg.engine != "hf" else {}),
        "pairs": drawn_pairs(cfg),
        "eval_pairs": cfg.eval_pairs,
        "completions_per_prompt": cfg.completions_per_prompt,
        "labels": cfg.labels,
        "label_temperature": cfg.label_temperature if cfg.labels == "bradley-terry" else None,
        # label_noise is not here: the flips are applied after loading (training_pairs), to the subset trained on.
        "seed": data_seed(cfg),
    }


def drawn_pairs(cfg: TrainRMConfig) -> int:
    """How many training pairs the comparison data holds: --data-pairs, else --pairs."""
    return cfg.data_pairs or cfg.pairs


def data_seed(cfg: TrainRMConfig) -> int:
    """The seed of the comparison data (its samples, labels, subset and flips): --data-seed, else --seed."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _seed(*parts: int) -> int:
    """A seed for one stream (e.g. run seed, split, round), statistically independent of the others."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def label_pair(gold_a: float, gold_b: float, labels: str, temperature: float, rng) -> bool | None:
    """True if a is preferred, False if b is, None for a deterministic tie (no preference: dropped)."""
    gold_a, gold_b = float(gold_a), float(gold_b)
    if labels == "bradley-terry":
        p_a = 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))  # σ((g_a − g_b)/T)
        return bool(rng.random() < p_a)
    if gold_a == gold_b:
        return None
    return gold_a > gold_b


def gold_scored_share(policy, tokenizer, gold, prompts: list[str], ids: list[int], k: int, cfg: TrainRMConfig,
                      seed: int, quiet: bool, description: str, sample=None):
    """This process's share of a round: k completions of prompts[i] for each i in `ids`, with their gold.
    `sample`: the sampling engine (`vllm_engine.sampler`; default the hf sampler)."""
    from bon_vs_rl.measurement import sampling

    frame = sampling.generate_share(policy, tokenizer, prompts, ids, k, cfg, seed, quiet, description,
                                    sample or sampling.generate)
    frame["gold"] = gold(frame["prompt"].tolist(), frame["completion"].tolist())
    return frame


def sample_comparisons(policy, tokenizer, gold, prompts: list[str], n_pairs: int, cfg: TrainRMConfig,
                       split: str, labels: str, quiet: bool, rank: int = 0, world: int = 1, sample=None):
    """k completions per prompt, prompts taken in order (cycled), until `n_pairs` labelled pairs exist.

    Returns (pairs, samples): one row per labelled pair, and one row per sampled completion with its gold.
    Under torchrun each process samples and scores its share of every round (`sampling.shard`), and every
    process labels the gathered round alike, so all of them hold the same data, that of one process.
    """
    import pandas as pd

    from bon_vs_rl.measurement import sampling

    k = cfg.completions_per_prompt
    per_prompt = k * (k - 1) // 2
    label_rng = np.random.default_rng(_seed(data_seed(cfg), SPLIT_CODE[split], 10_000))
    pairs: list[dict] = []
    frames = []
    used = 0  # prompts drawn so far from the cycled stream prompts[0], prompts[1], ..., prompts[0], ...
    while len(pairs) < n_pairs:
        # Enough prompts for the pairs still missing at the rate seen so far (ties lower it below k(k-1)/2),
        # with a 10% margin after the first round so that one more round usually suffices.
        rate = len(pairs) / used if used else per_prompt
        n_prompts = math.ceil((n_pairs - len(pairs)) / max(rate, 0.05 * per_prompt) * (1.1 if used else 1.0))
        if used < len(prompts) < used + n_prompts:
            console.note(f"{split} prompts: {len(prompts)} prompts give at most {len(prompts) * per_prompt} pairs "
                         f"with k={k}; cycling through them again, with new samples, to reach {n_pairs}", quiet)
        batch = [prompts[(used + p) % len(prompts)] for p in range(n_prompts)]
        # Each round has its own seed, so a prompt met again on a later pass gets new completions.
        share = functools.partial(gold_scored_share, policy, tokenizer, gold, batch,
                                  sampling.shard(n_prompts, k, cfg.batch_size, rank, world), k, cfg,
                                  _seed(data_seed(cfg), SPLIT_CODE[split], len(frames)), quiet,
                                  f"{split} comparisons: sampling", sample)
        # Every process holds the whole round, grouped by prompt: a prompt's k samples are contiguous.
        frame = sampling.gather_shares(share, world, everywhere=True)
        gold_scores = frame["gold"].to_numpy()
        offset = sum(len(f) for f in frames)  # row number of this round's first sample in the saved samples
        frame["prompt_id"] += used
        frame.insert(0, "split", split)
        frames.append(frame)

        found = 0
        for p in range(n_prompts):
            for i, j in itertools.combinations(range(p * k, (p + 1) * k), 2):  # a prompt's samples are contiguous
                a_wins = label_pair(gold_scores[i], gold_scores[j], labels, cfg.label_temperature, label_rng)
                if a_wins is None or len(pairs) == n_pairs:
                    continue
                chosen, rejected = (i, j) if a_wins else (j, i)
                pairs.append({"split": split, "prompt_id": used + p, "prompt": batch[p],
                              "chosen_sample": offset + chosen, "rejected_sample": offset + rejected,
                              "chosen_gold": float(gold_scores[chosen]), "rejected_gold": float(gold_scores[rejected]),
                              "flipped": False})
                found += 1
        if found == 0 and n_prompts >= 10:
            raise ConfigError(
                f"gold: {cfg.gold} gave all {k} completions of each of {n_prompts} {split} prompts the same "
                "score, so there is no preference to learn; use a gold that varies, or --labels bradley-terry")
        used += n_prompts
    samples_frame = pd.concat(frames, ignore_index=True)
    pairs_frame = pd.DataFrame(pairs)
    completions = samples_frame["completion"].to_numpy()
    pairs_frame["chosen"] = completions[pairs_frame["chosen_sample"].to_numpy()]
    pairs_frame["rejected"] = completions[pairs_frame["rejected_sample"].to_numpy()]
    return pairs_frame, samples_frame


def flip_labels(pairs, fraction: float, rng):
    """Swap chosen and rejected on exactly round(fraction · len) random pairs (Coste et al. 2023)."""
    flip = np.zeros(len(pairs), dtype=bool)
    flip[rng.choice(len(pairs), size=round(fraction * len(pairs)), replace=False)] = True
    pairs = pairs.copy()
    for a, b in (("chosen", "rejected"), ("chosen_gold", "rejected_gold"), ("chosen_sample", "rejected_sample")):
        pairs.loc[flip, [a, b]] = pairs.loc[flip, [b, a]].to_numpy()
    pairs["flipped"] = flip
    return pairs


def training_pairs(data: ComparisonData, cfg: TrainRMConfig) -> pd.DataFrame:
    """The train pairs a proxy (or `bonrl dpo`) trains on: `cfg.pairs` of the drawn ones, then the label noise.

    The subset is the first `pairs` of one random order of the drawn pairs, seeded by the data seed, kept
    in the data's own order: runs with one draw get nested subsets, and `pairs` = all of it is the whole
    draw as it was sampled. Then exactly round(label_noise · pairs) of the subset are flipped (flip_labels),
    with a generator seeded by the data seed alone: the same pairs flip for every run of one draw."""
    train = data.pairs[data.pairs["split"] == "train"].reset_index(drop=True)
    if cfg.pairs > len(train):
        raise ConfigError(f"pairs: {cfg.pairs} exceeds the {len(train)} train pairs of comparison data {data.key}; "
                          "raise --data-pairs")
    order = np.random.default_rng(_seed(data_seed(cfg), 30_000)).permutation(len(train))
    subset = train.iloc[np.sort(order[:cfg.pairs])].reset_index(drop=True)
    return flip_labels(subset, cfg.label_noise, np.random.default_rng(_seed(data_seed(cfg), 20_000)))


def comparison_data(cfg: TrainRMConfig, device, train_prompts: list[str], eval_prompts: list[str], rank: int = 0,
                    world: int = 1) -> ComparisonData:
    """Load the comparisons these settings describe from the cache, or sample, label and cache them.

    Under torchrun every process samples its share and ends with all the data; the main one caches it."""
    import pandas as pd

    from bon_vs_rl.measurement import vllm_engine

    start = time.perf_counter()
    quiet = cfg.quiet or rank != 0
    settings = data_settings(cfg, train_prompts, eval_prompts, device)
    key = settings_hash(settings)
    path = models.cache_root(cfg.cache_dir) / "comparisons" / key
    cached = (path / "settings.json").exists()  # written last inside an atomic directory: the data is complete
    if world > 1:  # all processes take the same branch: the other one gathers samples from every process
        from accelerate.utils import gather_object

        cached = all(gather_object([cached]))
    if cached:
        saved = json.loads((path / "settings.json").read_text())
        console.note(f"reusing comparison data {path} (hash {key}, generated in "
                     f"{saved.get('generation_seconds', float('nan')):.0f} s)", quiet)
        return ComparisonData(pd.read_parquet(path / "pairs.parquet"), pd.read_parquet(path / "samples.parquet"),
                              key, path, True, time.perf_counter() - start, saved.get("generation_seconds", 0.0))

    # Bad input is found before any sampling: the gold and the policy load first.
    gold = scorers.load_scorer(cfg.gold, device, cfg.cache_dir, role="gold")
    policy, tokenizer = models.load_policy(cfg.policy, device, cfg.cache_dir)
    train_texts = prompt_sets.apply_chat_template(tokenizer, train_prompts, cfg.chat_template)
    eval_texts = prompt_sets.apply_chat_template(tokenizer, eval_prompts, cfg.chat_template)
    sample = vllm_engine.sampler(cfg, models.resolve_model_path(cfg.policy, cfg.cache_dir), device, cfg.precision,
                                 quiet=quiet)  # --engine: hf, or a vLLM engine over the policy's weights

    try:
        with models.autocast(device, cfg.precision):  # the policy as best-of-n and RL sample it
            train_pairs, train_samples = sample_comparisons(policy, tokenizer, gold, train_texts, drawn_pairs(cfg),
                                                            cfg, "train", cfg.labels, quiet, rank, world, sample)
            # Held-out pairs are labelled by the gold itself, without noise: accuracy is measured against it.
            eval_pairs, eval_samples = sample_comparisons(policy, tokenizer, gold, eval_texts, cfg.eval_pairs, cfg,
                                                          "eval", "deterministic", quiet, rank, world, sample)
    finally:
        vllm_engine.close(sample)
    del policy
    eval_pairs[["chosen_sample", "rejected_sample"]] += len(train_samples)
    samples = pd.concat([train_samples, eval_samples], ignore_index=True)
    pairs = pd.concat([train_pairs, eval_pairs], ignore_index=True)
    pairs = pairs[["split", "prompt_id", "prompt", "chosen", "rejected", "chosen_gold", "rejected_gold", "flipped",
                   "chosen_sample", "rejected_sample"]]
    seconds = time.perf_counter() - start

    if rank == 0:  # one writer: two processes renaming their copies into one place would collide
        with files.atomic_directory(path) as tmp:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
            samples.to_parquet(tmp / "samples.parquet", index=False)
            files.write_json(tmp / "settings.json", {"key": key, "settings": settings, "generation_seconds": seconds,
                                                     "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                                                     "samples": len(samples)})
    console.note(f"comparison data: {len(train_pairs)} train pairs, "
                 f"{len(eval_pairs)} held-out pairs, {len(samples)} samples in {seconds:.0f} s -> {path}", quiet)
    return ComparisonData(pairs, samples, key, path, False, seconds, seconds)


# ----------------------------------------------------------------------------------------------
# 2. Training.


def load_backbone(cfg: TrainRMConfig):
    """The backbone's path and tokenizer, checked before any work: it must have both and a scalar head."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    path = models.resolve_model_path(cfg.backbone, cfg.cache_dir, "backbone")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # offline hub id, unreadable config: all bad input
        raise models._load_error(cfg.backbone, exc, "backbone") from None
    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(f"backbone: {cfg.backbone!r} ({config.model_type}) has no sequence-classification head "
                          "in transformers; use tiny, minilm, smollm2-135m or another encoder or decoder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ConfigError(f"backbone: {cfg.backbone!r} has no tokenizer that loads ({type(exc).__name__}); "
                          "point --backbone at a model directory that includes its tokenizer files") from None
    if tokenizer.pad_token is None:  # a sequence classifier finds the last real token by the pad id
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ConfigError(f"backbone: {cfg.backbone!r}'s tokenizer has no pad, eos or unk token to pad with")
    tokenizer.truncation_side = "left"  # keep the completion, which is what is judged (as the scorer does)
    return path, tokenizer


def effective_max_length(tokenizer, max_length: int) -> int:
    """The scorer's rule (scorers.SequenceClassifierReward): never past the backbone's own limit."""
    return min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)


def tokenize_pairs(tokenizer, pairs, max_length: int):
    """A `datasets.Dataset` of chosen_ids / rejected_ids, tokenized exactly as the scorer will read them."""
    import datasets

    def encode(completions) -> list[list[int]]:
        texts = [scorers.rm_text(p, c) for p, c in zip(pairs["prompt"], completions, strict=True)]
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    return datasets.Dataset.from_dict({"chosen_ids": encode(pairs["chosen"]), "rejected_ids": encode(pairs["rejected"])})


def progress_callback(description: str, quiet: bool, accuracy_key: str = "accuracy"):
    """A progress bar on stderr (console.progress: a bar on a terminal, plain lines in a log) showing the
    loss and pairwise accuracy (the log entry `accuracy_key`) over the last 50 steps. Bradley–Terry for
    train-rm; `bonrl dpo` shows DPO's loss and its implicit-reward accuracy with it."""
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        def __init__(self):
            self.bar = None
            self.loss: deque = deque(maxlen=50)
            self.accuracy: deque = deque(maxlen=50)

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = console.progress(state.max_steps, description, unit="step", quiet=quiet)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss.append(logs["loss"])
                self.accuracy.append(logs.get(accuracy_key, float("nan")))
                self.bar.set_postfix(loss=f"{np.mean(self.loss):.3f}", acc=f"{np.mean(self.accuracy):.3f}",
                                     refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return ProgressBar()


def trainer_arguments(cfg: TrainRMConfig, seed: int, device, output_dir: str, world: int = 1):
    """TRL's RewardConfig for one member, on `device` (cuda:N included). Under torchrun each of `world`
    processes takes train_batch_size / world pairs of every optimizer step (DDP averages them)."""
    import torch
    from trl import RewardConfig

    args = RewardConfig(
        output_dir=output_dir, seed=seed, data_seed=seed,
        num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.train_batch_size // world,
        learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0,
        max_length=None,  # pairs are already truncated (from the left) by tokenize_pairs
        **models.no_activation_checkpointing(),  # small backbones: memory is not the limit, speed is
        bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),  # TRL's default bf16 is slow on CPU
        use_cpu=device.type == "cpu", dataloader_pin_memory=False,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        disable_dropout=True,  # TRL's default, stated here: the RM trains as it will score, without dropout
    )
    if device.type == "cuda" and device.index is not None:
        # One process on CUDA, transformers takes cuda:0 and wraps the model in DataParallel over every
        # visible GPU, whatever --device said. Pin the GPU asked for: TrainingArguments' cached device, one
        # GPU, and the current CUDA device (accelerate's default "cuda" inside the Trainer).
        torch.cuda.set_device(device)
        args.__dict__["_setup_devices"] = device  # the functools.cached_property behind args.device
        args._n_gpu = 1
    return args


def train_member(backbone_path: str, tokenizer, dataset, cfg: TrainRMConfig, seed: int, device, out_dir: Path | None,
                 description: str, world: int = 1, callbacks: tuple = ()) -> int:
    """Train one reward model with TRL's RewardTrainer and save it (weights, config, tokenizer); returns tokens.

    Under torchrun every process calls this: RewardTrainer trains with DDP (see trainer_arguments);
    processes other than the main one pass out_dir=None and save and show nothing."""
    from transformers import PrinterCallback
    from trl import RewardTrainer

    with tempfile.TemporaryDirectory(prefix="bonrl-rm-trainer-") as scratch:  # TRL wants an output_dir; we save
        args = trainer_arguments(cfg, seed, device, scratch, world)
        trainer = RewardTrainer(model=backbone_path, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # it would print every log dict to stdout
        trainer.add_callback(progress_callback(description, cfg.quiet or out_dir is None))
        for callback in callbacks:
            trainer.add_callback(callback)
        trainer.train()
        if out_dir is not None:
            trainer.model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
        tokens = getattr(trainer, "_total_train_tokens", None)
        if tokens is None:  # TRL's private counter; fall back to counting the pairs' tokens
            tokens = cfg.epochs * sum(len(ids) for side in ("chosen_ids", "rejected_ids") for ids in dataset[side])
    return int(tokens)


# ----------------------------------------------------------------------------------------------
# 3. Evaluation.


pairwise_accuracy = scorers.pairwise_accuracy  # the rule every accuracy here is measured by


def correlations(proxy: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """Pearson and Spearman correlation; NaN when either side is constant (no ordering to agree with)."""
    from scipy import stats

    if len(proxy) < 2 or np.ptp(proxy) == 0 or np.ptp(gold) == 0:
        return float("nan"), float("nan")
    return float(stats.pearsonr(proxy, gold)[0]), float(stats.spearmanr(proxy, gold)[0])


def evaluate(checkpoint: Path, members: list[str], max_length: int, data: ComparisonData, device,
             batch_size: int) -> dict:
    """Held-out accuracy of the ensemble mean (scorers.rm_scorer's @mean) and of each member; correlations."""
    samples = data.samples
    held_out = samples[samples["split"] == "eval"]
    pairs = data.pairs[data.pairs["split"] == "eval"]
    member_scores = []
    for member in members:
        reward = scorers.SequenceClassifierReward(str(checkpoint / member), device, max_length)
        scorer = scorers.Scorer(f"rm:{checkpoint / member}", reward, batch_size=batch_size)
        member_scores.append(scorer(held_out["prompt"].tolist(), held_out["completion"].tolist()))
    scores = np.stack(member_scores)  # [members, held-out samples]
    proxy = np.full((len(members) + 1, len(samples)), np.nan)  # row 0: ensemble mean; 1..: members
    proxy[0, held_out.index] = scores.mean(axis=0)
    proxy[1:, held_out.index] = scores
    chosen, rejected = pairs["chosen_sample"].to_numpy(), pairs["rejected_sample"].to_numpy()
    accuracy = [pairwise_accuracy(p[chosen], p[rejected]) for p in proxy]
    # 400 held-out pairs put the accuracy's SE near 0.025: it gets an interval over resampled held-out prompts.
    prompts = pairs["prompt_id"].to_numpy()
    measured = scorers.accuracy_with_interval(proxy[0][chosen], proxy[0][rejected], prompts)
    pearson, spearman = correlations(proxy[0, held_out.index], held_out["gold"].to_numpy())
    position = {sample: i for i, sample in enumerate(held_out.index)}  # held-out sample -> its column in `scores`
    heldout_scores = {"members": scores.tolist(), "gold": held_out["gold"].tolist(),
                      "pairs": [[position[c], position[r]] for c, r in zip(chosen.tolist(), rejected.tolist())],
                      "pair_prompts": prompts.tolist()}
    return {
        "accuracy": accuracy[0], "accuracy_lo": measured["accuracy_lo"], "accuracy_hi": measured["accuracy_hi"],
        "pearson": pearson, "spearman": spearman, "heldout_scores": heldout_scores,
        "member_accuracy": accuracy[1:] if len(members) > 1 else [],
        "eval_pairs": len(pairs), "eval_samples": len(held_out), "eval_prompts": int(held_out["prompt_id"].nunique()),
        "proxy_mean": float(proxy[0, held_out.index].mean()), "proxy_std": float(proxy[0, held_out.index].std()),
        "gold_mean": float(held_out["gold"].mean()), "gold_std": float(held_out["gold"].std()),
    }


# ----------------------------------------------------------------------------------------------
# 4. The command.


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace a directory that is not a bonrl reward model (it may hold someone's work), and
    a reward model unless --overwrite: other runs may score with it as rm:OUTPUT, and their rows would
    then name a proxy that is no longer the one they used. A refusal rather than a subdirectory per run
    (as `bonrl sample` does), because rm:OUTPUT is the handle other commands are given."""
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / scorers.RM_METADATA).exists())):
        raise ConfigError(f"output: {output} exists and is not a bonrl reward model; choose a new --output "
                          "(an existing reward model there would be replaced)")
    if (output / scorers.RM_METADATA).exists() and not overwrite:
        try:
            run = json.loads((output / scorers.RM_METADATA).read_text()).get("run_id") or "an earlier run"
        except (OSError, ValueError, AttributeError):
            run = "an earlier run"
        raise ConfigError(f"output: {output} already holds the reward model of run {run}, which other runs may "
                          f"use as rm:{output}; pass a new --output, or --overwrite to replace it")


def describe_owner(output: Path) -> str | None:
    """The run id of the reward model in `output` (its metadata), or None."""
    try:
        return json.loads((output / scorers.RM_METADATA).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def train_rm(cfg: TrainRMConfig) -> Path:
    """Comparisons -> proxy reward model -> held-out evaluation; returns the checkpoint directory."""
    from bon_vs_rl.measurement import sampling
    from bon_vs_rl.record import results, tracking

    output = Path(cfg.output)
    check_output(output, cfg.overwrite)
    scorers.check_spec(cfg.gold, "gold")  # a bad --gold is found now, not after the policy has loaded
    # The reward model an --overwrite replaces: its run is marked superseded with this one's row.
    replaced = [run for run in [describe_owner(output)] if run]
    rank, world, device = sampling.process_group(cfg.device)  # resolves --device (cuda:N) too
    if cfg.train_batch_size % world:
        raise ConfigError(f"train_batch_size: {cfg.train_batch_size} pairs per step do not split over {world} "
                          f"processes; pass a multiple of {world}")
    console.quiet_libraries(cfg.quiet or rank != 0)
    backbone_path, tokenizer = load_backbone(cfg)
    max_length = effective_max_length(tokenizer, cfg.max_length)
    train_prompts = prompt_sets.load_prompts(cfg.prompts, "train")
    eval_prompts = prompt_sets.load_prompts(cfg.prompts, "eval")

    data = comparison_data(cfg, device, train_prompts, eval_prompts, rank, world)
    train_pairs = training_pairs(data, cfg)
    dataset = tokenize_pairs(tokenizer, train_pairs, max_length)

    members = ["."] if cfg.ensemble == 1 else [f"member-{i}" for i in range(cfg.ensemble)]
    if rank != 0:  # under torchrun: train alongside the main process (DDP); it alone evaluates and writes
        for i in range(len(members)):
            train_member(backbone_path, tokenizer, dataset, cfg, cfg.seed + i, device, None, "", world)
        return output
    config = to_dict(cfg)
    with results.ResultsStore(results.resolve_results_path(cfg.results)) as store, \
            results.run_context(store, "train-rm", config, cfg.seed, cfg.experiment) as run_id, \
            contextlib.ExitStack() as on_exit:
        # Tracker files go beside the reward model, in OUTPUT-logs: the model directory itself is written whole
        # at the end (files.atomic_directory), while a tracker writes as training goes.
        tracker = tracking.start(cfg.log_with, output.parent / f"{output.name}-logs", run_id, config, "train-rm",
                                 cfg.experiment, cfg.quiet)
        on_exit.callback(tracker.finish)
        with files.atomic_directory(output) as tmp:
            start = time.perf_counter()
            trained_tokens, step_offset = 0, 0
            for i, member in enumerate(members):
                description = "training reward model" + (f" {i + 1}/{len(members)}" if len(members) > 1 else "")
                # Members train one after another; their steps continue one axis (a tracker's step must grow).
                logs = tracking.trainer_callback(tracker, "train/" if len(members) == 1 else f"train/member-{i}/",
                                                 step_offset)
                trained_tokens += train_member(backbone_path, tokenizer, dataset, cfg, cfg.seed + i, device,
                                               tmp / member, description, world, (logs,))
                step_offset += logs.steps
            train_seconds = time.perf_counter() - start

            start = time.perf_counter()
            evaluation = evaluate(tmp, members, cfg.max_length, data, device, cfg.batch_size)
            heldout_scores = evaluation.pop("heldout_scores")
            eval_seconds = time.perf_counter() - start
            parameters = models.parameter_count(tmp / members[0])  # one member's (all members are one architecture)
            tracker.log({f"eval/{k}": evaluation[k] for k in ("accuracy", "pearson", "spearman")}, step_offset)
            metadata = {
                "members": members, "max_length": cfg.max_length, "backbone": cfg.backbone,
                "member_seeds": [cfg.seed + i for i in range(len(members))], "config": config,
                "evaluation": evaluation, "data_hash": data.key, "data_path": str(data.path),
                "data_reused": data.reused, "train_pairs": len(train_pairs), "data_pairs": drawn_pairs(cfg),
                "data_seed": data_seed(cfg), "parameters": parameters,
                "flipped_pairs": int(train_pairs["flipped"].sum()), "trained_tokens": trained_tokens,
                "seconds": {"data": data.seconds, "data_generation": data.generation_seconds,
                            "train": train_seconds, "eval": eval_seconds},
                "run_id": run_id,
            }
            files.write_json(tmp / "resolved_config.json", config)
            files.write_json(tmp / scorers.HELDOUT_SCORES, heldout_scores)
            files.write_json(tmp / scorers.RM_METADATA, metadata)  # last: it is what makes a directory an RM

        row = {
            "method": "rm", "policy": cfg.policy, "gold": cfg.gold, "proxy": f"rm:{cfg.output}", "seed": cfg.seed,
            "accuracy": evaluation["accuracy"], "accuracy_lo": evaluation["accuracy_lo"],
            "accuracy_hi": evaluation["accuracy_hi"], "pearson": evaluation["pearson"], "spearman": evaluation["spearman"],
            "pairs": len(train_pairs), "data_pairs": drawn_pairs(cfg), "eval_pairs": evaluation["eval_pairs"],
            "label_noise": cfg.label_noise,
            "parameters": (parameters or {}).get("total"),
            "parameters_non_embedding": (parameters or {}).get("non_embedding"),
            "labels": cfg.labels, "backbone": cfg.backbone, "ensemble": cfg.ensemble,
            "train_seconds": train_seconds, "data_seconds": data.seconds, "eval_seconds": eval_seconds,
            "data_reused": data.reused, "data_hash": data.key, "trained_tokens": trained_tokens,
            "sample_count": evaluation["eval_samples"], "prompt_count": evaluation["eval_prompts"],
        }
        store.add_rows(run_id, [row], supersedes=replaced)  # the new model is in place: the old one's run is replaced

    if evaluation["member_accuracy"]:
        console.note("member accuracies: " + ", ".join(f"{a:.3f}" for a in evaluation["member_accuracy"]), cfg.quiet)
    import pandas as pd

    shown = {"backbone": "backbone", "pairs": "pairs", "label_noise": "noise", "accuracy": "accuracy",
             "pearson": "pearson", "spearman": "spearman", "data_seconds": "data s", "train_seconds": "train s",
             "eval_seconds": "eval s"}
    table = pd.DataFrame([row])[list(shown)].rename(columns=shown)
    console.print_table(table, title=f"rm:{cfg.output} on {evaluation['eval_pairs']} held-out pairs"
                        + (" (comparison data reused)" if data.reused else ""), quiet=cfg.quiet)
    print(f"rm:{cfg.output}")  # stdout stays machine-readable: the proxy spec to pass on
    return output

