"""Toy scorers and a toy policy for `bonrl sample` tests.

Scorers, used as `python:tests/toy_scorers.py:NAME` (any path to this file):

    tied_proxy     an integer in {0, 1, 2, 3} from the completion's text: with N > 4 samples a prompt
                   always has ties, which exercises the tie paths (averaged ranks, exact empirical KL)
    hashed_proxy   a deterministic pseudo-random float in [0, 1) per completion (CRC-32 of its text, so
                   the same in every process, unlike hash()): distinct completions never tie
    length_gold    the completion's length in characters: a gold that differs between completions

`build_fixed_policy` writes a policy whose next-token distribution is one known categorical in every
context: exact frequencies to test the sampler against, and a low-entropy policy (completions with
probabilities far from 0) on which Beirami et al.'s KL estimate differs from log n - (n-1)/n.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path


def tied_proxy(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(zlib.crc32(c.encode()) % 4) for c in completions]


def hashed_proxy(prompts: list[str], completions: list[str]) -> list[float]:
    return [zlib.crc32((p + "\x00" + c).encode()) / 2**32 for p, c in zip(prompts, completions, strict=True)]


def length_gold(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


def build_fixed_policy(out_dir: Path, tokenizer_dir: Path, logits_by_word: dict[str, float],
                       eos_logit: float, hidden: int = 8) -> dict[str, int]:
    """A 1-layer Llama whose next-token logits are `logits_by_word` (each word one token), `eos_logit` for
    EOS and 0 for every other token, whatever the context. Returns word -> token id.

    Attention and MLP outputs are zero, so the last hidden state is the RMS-normalised embedding of the
    input token; every embedding is (1, 0, ..., 0), so that state is ~(sqrt(hidden), 0, ...) and lm_head
    row t = (logit_t / sqrt(hidden), 0, ...) gives token t its logit. `hidden` = 64 gives 2 heads of size 32,
    which vLLM's CPU attention runs (it has no head size 4).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    tokens = {}
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.zero_()
        for word, logit in logits_by_word.items():
            (token,) = tokenizer(word, add_special_tokens=False).input_ids
            tokens[word] = token
            model.lm_head.weight[token, 0] = logit / math.sqrt(hidden)
        model.lm_head.weight[tokenizer.eos_token_id, 0] = eos_logit / math.sqrt(hidden)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokens
