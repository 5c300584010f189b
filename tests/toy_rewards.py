"""Known rewards for testing the RL commands in seconds on the `tiny` random policy.

`tiny` samples near-uniformly from SmolLM2's 49,152 tokens, so a reward on one target token would
almost never be seen. A character-level reward varies from token to token instead, so every rollout
carries a signal, and PPO can raise it by moving mass to the vowel-rich tokens it has sampled.

    python:tests/toy_rewards.py:vowel_fraction     the reward: fraction of the completion's letters that are vowels
    python:tests/toy_rewards.py:nan_after_first    finite on its first call (the step-0 evaluation), NaN afterwards
    python:tests/toy_rewards.py:constant_half      0.5 whatever the completion (a proxy with no spread)
"""

from __future__ import annotations

VOWELS = set("aeiouAEIOU")


def vowel_fraction(prompts: list[str], completions: list[str]) -> list[float]:
    out = []
    for completion in completions:
        letters = [c for c in completion if c.isalpha()]
        out.append(sum(c in VOWELS for c in letters) / len(letters) if letters else 0.0)
    return out


_calls = {"n": 0}


def nan_after_first(prompts: list[str], completions: list[str]) -> list[float]:
    """A reward model that breaks during training: the step-0 evaluation passes, the first rollout gets NaN."""
    _calls["n"] += 1
    if _calls["n"] == 1:
        return vowel_fraction(prompts, completions)
    return [float("nan")] * len(completions)


def good_fraction(prompts: list[str], completions: list[str]) -> list[float]:
    """Fraction of the completion's words that are "good" (the toy six-word policy's target token)."""
    out = []
    for completion in completions:
        words = completion.split()
        out.append(words.count("good") / len(words) if words else 0.0)
    return out


def constant_half(prompts: list[str], completions: list[str]) -> list[float]:
    """A proxy with no spread: nothing to normalize."""
    return [0.5] * len(completions)
