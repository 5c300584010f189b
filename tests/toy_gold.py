"""A synthetic task whose gold is a known function, for testing `bonrl train-rm` in seconds.

The `tiny` policy is a random network: it samples near-uniformly from SmolLM2's 49,152 tokens, so any
gold defined on the text (characters, letters) depends on which of ~49k rarely-seen tokens were drawn,
and a reward model cannot generalize it from a few hundred pairs (measured: ~0.5 held-out accuracy on
character count with 1,500 pairs). The toy policy below writes from a six-word vocabulary instead,
independently at every position, with an occasional EOS, so the gold — how often " good" occurs — is
a count over a few frequent tokens: something a tiny reward model can learn from few comparisons, and
whose held-out accuracy is therefore a real test of the training path.

    python:tests/toy_gold.py:count_good   the gold: occurrences of the word "good" in the completion
    python:tests/toy_gold.py:nan_gold     a broken gold: NaN for every completion
"""

from __future__ import annotations

from pathlib import Path

WORDS = [" good", " bad", " the", " and", " very", " fine"]


def count_good(prompts: list[str], completions: list[str]) -> list[float]:
    return [float(c.split().count("good")) for c in completions]


def nan_gold(prompts: list[str], completions: list[str]) -> list[float]:
    return [float("nan")] * len(completions)


def build_toy_policy(out_dir: Path, tokenizer_dir: Path) -> Path:
    """A 1-layer Llama with SmolLM2's tokenizer that samples WORDS ~95% of the time, EOS ~1%.

    The attention and MLP outputs are zero, so the final hidden state is the normalized token
    embedding; every embedding shares a large first coordinate, so after RMSNorm that coordinate is
    ~sqrt(hidden) whatever the token, and lm_head row t = logit_t / sqrt(hidden) on it gives token t
    the same logit in every context.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    hidden = 16
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        embed.normal_(0.0, 0.01)
        embed[:, 0] = 1.0
        head = model.lm_head.weight
        head.zero_()
        scale = hidden ** 0.5  # the first coordinate after RMSNorm
        for word in WORDS:
            (token,) = tokenizer(word, add_special_tokens=False).input_ids
            head[token, 0] = 12.0 / scale  # 6·e^12 against 49k·e^0: ~95% of the mass on the words
        head[tokenizer.eos_token_id, 0] = 7.5 / scale  # ~0.2% per step: a few completions end early
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
