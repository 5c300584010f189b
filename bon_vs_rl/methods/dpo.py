"""`bonrl dpo`: direct preference optimization on the comparisons a proxy RM is trained on, on BoN's axes.

    bonrl train-rm --policy smollm2-135m --gold vader --pairs 2000 --output runs/rm
    bonrl dpo --policy smollm2-135m --gold vader --pairs 2000 --proxy rm:runs/rm --beta 0.1 --output runs/dpo
    bonrl dpo ... --checkpoint-every 50 --resume       # continue from the last checkpoint in --output

"RM + RL" spends gold labels twice removed: the labels train a proxy, the policy optimizes the proxy. DPO
(Rafailov et al. 2023) trains the policy on the labels themselves, with the loss (their eq. 7)

    L(π) = −E log σ( β [ (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)) ] )

over pairs (x, y_w ≻ y_l); β plays the role of the KL coefficient (the implicit reward is β log π/π_ref).
Rafailov et al. (2024, "Scaling laws for reward model overoptimization in direct alignment algorithms")
find that it over-optimizes in the pattern of Gao et al., often within one epoch: its gold rises, then
falls as KL(π‖π_ref) grows. So it is measured here exactly like RL:

1. Comparison data: `reward_model.comparison_data` with this run's data options (the same flags as `bonrl
   train-rm`: --pairs, --completions-per-prompt, --labels, --label-noise, ... and the sampling settings).
   The data is cached under the hash of those settings, so a DPO run with the settings of a proxy RM —
   the same policy, gold, prompts, sampling and data seed (`--data-seed`, default --seed) — reads the
   very pairs and labels that RM was trained on: "RM + RL" and "DPO" spend the same labels. `bonrl
   experiment` wires this itself (`comparisons: rm-K`). Only the train split's pairs are used, and of
   them the RM's own subset with its flipped labels (`reward_model.training_pairs`: --pairs of
   --data-pairs, then --label-noise).
2. Pairs as token ids. The prompt is encoded exactly as the sampler encoded it (`sampling.encode_prompts`,
   so the context is the one the completion was drawn in); the completion is re-tokenized from its text
   (the cache keeps text, not ids) and EOS is appended only where the sampled completion emitted one.
   TRL's own preprocessing would append EOS to every completion — also to those cut at max_new_tokens,
   teaching the policy to stop where it did not — so we hand it token ids and skip that step
   (`PretokenizedDPOTrainer`).
3. Training: TRL 1.16's DPOTrainer, loss "sigmoid" (the formula above), AdamW at a constant learning
   rate, dropout off, log-probs of whole completions at temperature 1 (π itself), the reference a
   separately loaded frozen copy of the initial policy — the same one the evaluation measures KL from.
4. Evaluation: the one every method shares (`evaluate.Evaluator`, method `dpo`), from a TrainerCallback at
   step 0, every --eval-every optimizer steps and after the last: proxy, gold, exact KL on the shared
   held-out prompts at the sampling settings. DPO optimizes no proxy; --proxy is only measured, so the
   rows sit in one panel with best-of-n and RL against that proxy (give the RM trained on these pairs).
   Rows carry β (DPO's), the number of pairs, the data hash, the epoch and TRL's last training loss and
   implicit-reward accuracy. generated_tokens counts evaluation samples only (the comparison data is the
   labels' cost, as for the proxy RM); trained_tokens counts TRL's tokens of the pairs trained on.
5. Resume: with --checkpoint-every k, TRL saves a checkpoint every k optimizer steps (weights, optimizer,
   scheduler, RNG, data position) under OUTPUT/trl/checkpoint-N; we add bonrl.json (run id and token
   counters) after TRL has written the rest, which marks the checkpoint complete. --resume continues from
   the last complete one in the same results-table run; rows after it are written again under the same
   keys, so nothing is duplicated. The trained policy is saved to OUTPUT/policy at the end.

`accelerate launch bonrl dpo ...` spreads the batch over processes through TRL's own accelerate
integration; every process evaluates its share of the prompts and the main process writes.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from pathlib import Path

from bon_vs_rl.config.base import check_checkpoint, check_resume, to_dict
from bon_vs_rl.config.commands import COMPARISON_DATA_FIELDS, DPOConfig, TrainRMConfig
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import models, sampling, scorers
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.methods import reward_model
from bon_vs_rl.record import console, files

CHECKPOINT_MARKER = "bonrl.json"


def comparison_settings(cfg: DPOConfig) -> TrainRMConfig:
    """The `bonrl train-rm` settings whose comparison data this run trains on (same fields, same hash)."""
    shared = (*COMPARISON_DATA_FIELDS, "device", "cache_dir", "quiet", "vllm_tensor_parallel_size",
              "vllm_pipeline_parallel_size", "vllm_executor", "vllm_gpu_memory_utilization")
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    return TrainRMConfig(**{name: getattr(cfg, name) for name in shared}, seed=seed, data_seed=seed)


def completion_ids(tokenizer, text: str, ended: bool) -> list[int]:
    """A sampled completion as token ids: its text re-tokenized, plus EOS only if the sample emitted one."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id] if ended else ids


def preference_dataset(pairs, samples, tokenizer, max_prompt_tokens: int):
    """A `datasets.Dataset` of prompt_ids / chosen_ids / rejected_ids for DPOTrainer (see 2. above)."""
    import datasets

    ended = samples["ended"].to_numpy(dtype=bool)
    prompt_ids = sampling.encode_prompts(tokenizer, pairs["prompt"].tolist(), max_prompt_tokens)
    chosen = [completion_ids(tokenizer, text, bool(ended[i]))
              for text, i in zip(pairs["chosen"], pairs["chosen_sample"], strict=True)]
    rejected = [completion_ids(tokenizer, text, bool(ended[i]))
                for text, i in zip(pairs["rejected"], pairs["rejected_sample"], strict=True)]
    return datasets.Dataset.from_dict({"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected})


def trainer_class():
    """TRL's DPOTrainer, fed token ids as they are (its text preprocessing would append EOS everywhere)."""
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PretokenizedDPOTrainer


def dpo_arguments(cfg: DPOConfig, world: int, use_cuda: bool, bf16: bool):
    from trl import DPOConfig as TRLDPOConfig

    return TRLDPOConfig(
        output_dir=str(Path(cfg.output) / "trl"), num_train_epochs=cfg.epochs, seed=cfg.seed, data_seed=cfg.seed,
        per_device_train_batch_size=max(1, cfg.train_batch_size // world), gradient_accumulation_steps=1,
        learning_rate=cfg.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        beta=cfg.beta, loss_type=["sigmoid"], max_length=None,  # prompts and completions are already bounded
        disable_dropout=True, use_cpu=not use_cuda, bf16=bf16, **models.no_activation_checkpointing(),
        # Our own progress (reward_model.progress_callback): the Trainer's tqdm would write \r frames into a
        # log file, and with it disabled the Trainer's printer writes every log dict.
        logging_steps=1, report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, eval_strategy="no",
        save_strategy="steps" if cfg.checkpoint_every else "no", save_steps=cfg.checkpoint_every or 500,
        save_total_limit=cfg.keep_checkpoints, save_only_model=False,
    )


# What a run writes into --output; an --overwrite run deletes these (and nothing else) first.
RUN_FILES = ("trl", "eval_samples", "resolved_config.json", "nonfinite-*.parquet")


def complete_checkpoints(output: Path) -> list[Path]:
    """TRL checkpoints that bonrl.json marks complete, oldest first."""
    root = output / "trl"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name) and (p / CHECKPOINT_MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def train(cfg: DPOConfig) -> str:
    """Comparisons -> DPO with the shared evaluation; returns the run id."""
    import torch
    from accelerate import PartialState
    from transformers import TrainerCallback

    from bon_vs_rl.measurement.evaluate import Evaluator, check_inputs
    from bon_vs_rl.record import results, tracking

    # 1. Bad input, before any work or file (exit 2).
    console.quiet_libraries(cfg.quiet)  # transformers' load bars off; with --quiet, library warnings too
    asked = models.resolve_device(cfg.device)  # ConfigError if CUDA is asked for but absent
    use_cuda = asked.type == "cuda"
    # --precision as for train-rm, sample and ppo: the comparisons are sampled in it (their cache key holds
    # it), and the policy trains and is evaluated under it.
    bf16 = models.uses_bf16(asked, cfg.precision)
    state = PartialState(cpu=not use_cuda)
    world, main = state.num_processes, state.is_main_process
    if cfg.train_batch_size % world:
        raise ConfigError(f"train_batch_size: {cfg.train_batch_size} is not a multiple of the {world} processes")
    device = state.device if world > 1 or cfg.device == "auto" else asked
    output = Path(cfg.output)
    # One run per output directory, as for ppo/rl (files.output_owner): rows point at its eval samples.
    owner = files.output_owner(output, RUN_FILES)
    if owner and not (cfg.resume or cfg.overwrite):
        raise ConfigError(f"output: {output} already holds {owner}; pass --resume to continue it, "
                          "--overwrite to replace its files, or a new --output")
    checkpoint = complete_checkpoints(output)[-1] if cfg.resume and complete_checkpoints(output) else None
    saved = json.loads((checkpoint / CHECKPOINT_MARKER).read_text()) if checkpoint else {}
    if checkpoint:  # must continue this run
        check_checkpoint(cfg, checkpoint, saved["config"], ("policy", "beta", "train_batch_size", "epochs"))
    if cfg.resume:
        check_resume(cfg, checkpoint is not None, owner, "dpo saves one every --checkpoint-every steps, none with "
                     "--checkpoint-every 0")
    replaced = files.replaced_runs(output, continuing=checkpoint is not None)
    check_inputs(cfg)  # proxy, gold and --eval-prompts, before any model loads
    proxy = scorers.load_scorer(cfg.proxy, device, cfg.cache_dir, role="proxy")
    gold = scorers.load_scorer(cfg.gold, device, cfg.cache_dir, role="gold")
    policy, tokenizer = models.load_policy(cfg.policy, device, cfg.cache_dir, dtype=torch.float32)
    reference, _ = models.load_policy(cfg.policy, device, cfg.cache_dir, dtype=torch.float32)
    reference.requires_grad_(False)
    models.disable_dropout(reference)

    # 2. The comparisons (sampled, labelled and cached once; see 1. above) as token ids.
    data = reward_model.comparison_data(comparison_settings(cfg), device, prompt_sets.load_prompts(cfg.prompts, "train"),
                                        prompt_sets.load_prompts(cfg.prompts, "eval"), state.process_index, world)
    if checkpoint is not None and saved.get("data_hash") != data.key:
        raise ConfigError(f"resume: {checkpoint} was trained on comparison data {saved.get('data_hash')}, not "
                          f"{data.key}; pass the same data options (and --data-seed) or drop --resume")
    train_pairs = reward_model.training_pairs(data, comparison_settings(cfg))  # the proxy's very pairs and labels
    dataset = preference_dataset(train_pairs, data.samples, tokenizer, cfg.max_prompt_tokens)
    console.note(f"dpo: {len(train_pairs)} training pairs from {data.path}", cfg.quiet or not main)
    args = dpo_arguments(cfg, world, use_cuda, bf16)
    config = to_dict(cfg)

    class EvaluationCallback(TrainerCallback):
        """The shared evaluation at step 0, every eval_every optimizer steps and at the last step; the token
        counters and run id saved beside each TRL checkpoint."""

        def __init__(self):
            self.trainer, self.evaluator, self.tracker = None, None, tracking.NoTracker()
            self.eval_tokens = int(saved.get("eval_tokens", 0))
            self.trained_before = int(saved.get("trained_tokens", 0))  # tokens trained before a resume
            self.last_logs: dict = {}

        def trained_tokens(self) -> int:
            return self.trained_before + int(getattr(self.trainer, "_total_train_tokens", 0))

        def evaluate(self, step: int, model, epoch: float) -> None:
            accelerator = self.trainer.accelerator
            extra = {"pairs": len(train_pairs), "data_hash": data.key, "epoch": float(epoch or 0.0),
                     "train_loss": self.last_logs.get("loss", float("nan")),
                     "train_reward_accuracy": self.last_logs.get("rewards/accuracies", float("nan"))}
            row = self.evaluator.evaluate(accelerator.unwrap_model(model), step, self.eval_tokens,
                                          self.trained_tokens(), cfg.beta, extra)
            if row is not None:  # the main process's row
                self.tracker.log(tracking.eval_metrics(row), step)
            self.eval_tokens += self.evaluator.tokens_used

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 0:
                self.evaluate(0, model, 0.0)

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            # Every step is logged (logging_steps=1), after its update and before any checkpoint of it:
            # evaluating here puts the step's own loss in the row and the evaluation in the checkpoint.
            if logs and "loss" in logs:
                self.last_logs = dict(logs)
                if state.global_step % cfg.eval_every == 0 or state.global_step == state.max_steps:
                    self.evaluate(state.global_step, model, state.epoch)

        def on_save(self, args, state, control, **kwargs):
            if main:  # written after TRL's files: it marks the checkpoint complete
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_MARKER
                files.write_json(path, {"run_id": self.evaluator.run_id, "eval_tokens": self.eval_tokens,
                                        "trained_tokens": self.trained_tokens(), "data_hash": data.key,
                                        "config": config})

    callback = EvaluationCallback()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs; our stdout stays machine-readable
        trainer = trainer_class()(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=[callback, reward_model.progress_callback(
                                      "dpo", cfg.quiet or not main, accuracy_key="rewards/accuracies")])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # with tqdm disabled it would print every log dict
    callback.trainer = trainer
    reference.to(trainer.accelerator.device)
    callback.evaluator = evaluator = Evaluator(cfg, "dpo", tokenizer, reference, proxy, gold, output,
                                               trainer.accelerator)

    store_context = results.ResultsStore(results.resolve_results_path(cfg.results)) if main else contextlib.nullcontext()
    with store_context as store, (results.run_context(store, "dpo", config, cfg.seed, cfg.experiment,
                                                      run_id=saved.get("run_id"), supersedes=replaced) if main
                                  else contextlib.nullcontext()) as run_id, contextlib.ExitStack() as on_exit:
        if main:
            if checkpoint is None:  # a new run in this directory (--overwrite): the old run's files go first
                files.clear_outputs(output, RUN_FILES)
            files.claim_output(output, "dpo", run_id)
            files.write_json(output / "resolved_config.json", config)
            # --log-with: the Trainer's log dicts (DPO loss, implicit rewards) and every evaluation row.
            callback.tracker = tracking.start(cfg.log_with, output, run_id, config, "dpo", cfg.experiment, cfg.quiet)
            on_exit.callback(callback.tracker.finish)
            trainer.add_callback(tracking.trainer_callback(callback.tracker))
        if checkpoint is not None:
            console.note(f"resuming run {run_id} from {checkpoint}", cfg.quiet or not main)
        evaluator.store, evaluator.run_id = store, run_id
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            # TRL 1.16 asks transformers 5 about gradient checkpointing by its deprecated name at every step.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            trainer.save_model(str(output / "policy"))
        if main:
            console.note(f"dpo: {trainer.state.global_step} steps done; policy saved in {output / 'policy'}", cfg.quiet)
    return run_id or ""

