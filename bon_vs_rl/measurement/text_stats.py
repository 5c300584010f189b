"""What optimized text looks like: per-completion statistics of the words, shared by the `vader-fluent` gold,
the per-evaluation text statistics and the report (and by gold-free warning signs of hacking).

Overoptimization is first visible in the text: completions grow or shrink, repeat themselves ("our food warm
warm warm food warm ..."), or drift to strings the reference policy finds unlikely. Each function here takes
plain strings, so it applies the same way to best-of-n picks, RL samples and reference samples:

    words(text)                 lower-cased word tokens: letters with inner apostrophes ("don't", "family's")
    distinct_n(tokens, n)       distinct n-grams / n-grams (Li et al. 2016's distinct-n, per completion);
                                1.0 for a completion with no n-gram (nothing is repeated)
    nonword_share(tokens)       share of word tokens in no English dictionary (pyspellchecker's English word
                                list, 160k words with frequencies, shipped in its wheel) nor VADER's lexicon
    finished(text)              the completion ends a sentence: its last non-space character is . ! ? or a
                                closing quote/bracket after one
    text_statistics(...)        per-sample columns for a frame of completions: words, distinct-1/2, non-word
                                share, finished, and log-probs per token where the frame has them

`per_prompt_statistics` averages them per prompt, the unit every interval resamples.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# English function words (closed-class: articles, pronouns, prepositions, conjunctions, auxiliaries, common
# adverbs), which repeat in any fluent sentence ("the food and the service"). Repetition of the *other*
# words, and a text made of content words alone ("family food supply loving family"), is what a reader
# notices.
FUNCTION_WORDS = frozenset("""
a an the this that these those some any no every each all both either neither such
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his himself she her
hers herself it its itself they them their theirs themselves one who whom whose which what whatever
and or but nor so yet if then than because as while although though since unless until when where why how
of in on at by for with about against between into through during before after above below to from up down
out off over under again further there here once
is am are was were be been being have has had having do does did doing will would shall should can could
may might must let
not very too also just only more most much many few less least other another own same
s t don't i'm it's that's there's you're we're they're i've we've i'll we'll you'll isn't aren't wasn't
weren't didn't doesn't won't can't couldn't wouldn't shouldn't let's
""".split())
WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# A sentence end, possibly followed by closing quotes or brackets: 'He said "yes."' and '(done!)' are finished.
FINISHED = re.compile(r"[.!?…][\"'”’)\]]*$")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: runs of letters, with inner apostrophes kept ("don't", "family's")."""
    return WORD.findall(text.lower().replace("’", "'"))


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams over n-grams of one completion (Li et al. 2016); 1.0 when it has no n-gram."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@lru_cache(maxsize=1)
def dictionary() -> frozenset[str]:
    """English words: pyspellchecker's English frequency list (in its wheel, read offline) and VADER's lexicon
    (slang and emoticon-free sentiment words such as 'lol' that a spelling list may lack)."""
    from spellchecker import SpellChecker
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    known = set(SpellChecker(language="en").word_frequency.dictionary)
    known.update(w for w in SentimentIntensityAnalyzer().lexicon if WORD.fullmatch(w))
    return frozenset(known)


def is_word(token: str) -> bool:
    """In the dictionary as written, or as the stem before a possessive/contraction ("smith's" -> "smith")."""
    known = dictionary()
    return token in known or token.split("'")[0] in known


def content_words(tokens: Sequence[str]) -> list[str]:
    """The tokens that are not function words (FUNCTION_WORDS)."""
    return [t for t in tokens if t not in FUNCTION_WORDS]


def function_word_share(tokens: Sequence[str]) -> float:
    """Share of tokens that are function words; 0.0 for a completion with no words."""
    return sum(t in FUNCTION_WORDS for t in tokens) / len(tokens) if tokens else 0.0


def nonword_share(tokens: Sequence[str]) -> float:
    """Share of word tokens that are in no English dictionary; 0.0 for a completion with no words."""
    if not tokens:
        return 0.0
    return sum(not is_word(t) for t in tokens) / len(tokens)


def finished(text: str) -> bool:
    """The completion ends a sentence (. ! ? …, possibly inside closing quotes or brackets)."""
    return bool(FINISHED.search(text.rstrip()))


def text_statistics(completions: Sequence[str], tokens=None, logprob=None, ref_logprob=None) -> dict[str, np.ndarray]:
    """Per-sample statistics of completions, as arrays of one value per completion.

    words, distinct_1, distinct_2, nonword_share, finished (0/1); with `tokens` (tokens per completion) also
    `tokens`, and with log-probs summed over each completion (`logprob`: the sampling policy's, `ref_logprob`:
    the reference policy's) their per-token values `logprob_per_token` and `ref_logprob_per_token` (NaN for an
    empty completion). The reference's log-prob per token is how unlikely the text has become to the starting
    model: it falls as the policy drifts to strings the reference would not write."""
    split = [words(c) for c in completions]
    out = {
        "words": np.array([len(w) for w in split], dtype=np.float64),
        "distinct_1": np.array([distinct_n(w, 1) for w in split]),
        "distinct_2": np.array([distinct_n(w, 2) for w in split]),
        "nonword_share": np.array([nonword_share(w) for w in split]),
        "finished": np.array([float(finished(c)) for c in completions]),
    }
    if tokens is not None:
        count = np.asarray(tokens, dtype=np.float64)
        out["tokens"] = count
        safe = np.where(count > 0, count, np.nan)
        if logprob is not None:
            out["logprob_per_token"] = np.asarray(logprob, dtype=np.float64) / safe
        if ref_logprob is not None:
            out["ref_logprob_per_token"] = np.asarray(ref_logprob, dtype=np.float64) / safe
    return out


# What each statistic is called in results rows and report tables (a prefix keeps them apart from proxy/gold).
STATISTICS = ("tokens", "words", "distinct_1", "distinct_2", "nonword_share", "finished", "logprob_per_token",
              "ref_logprob_per_token")
PREFIX = "text_"


def frame_statistics(frame) -> dict[str, np.ndarray]:
    """Per-sample statistics of a saved samples frame: best-of-n's samples file (reference samples: its
    `logprob` column is the reference policy's log-prob of each, so it is both log-prob columns) or an RL
    evaluation's eval-samples file (`policy_logprob`: the evaluated policy's, `ref_logprob`: the reference's)."""
    if "ref_logprob" in frame:
        policy = frame["policy_logprob"] if "policy_logprob" in frame else frame["logprob"]
        reference = frame["ref_logprob"]
    else:
        policy = reference = frame["logprob"] if "logprob" in frame else None
    return text_statistics(frame["completion"].tolist(), frame["tokens"].to_numpy(),
                           None if policy is None else policy.to_numpy(),
                           None if reference is None else reference.to_numpy())


def row_means(per_prompt: dict[str, np.ndarray]) -> dict[str, float]:
    """{text_<statistic>: mean over prompts} of per-prompt values [P] (prompts weigh equally, as in every
    other estimate; NaN prompts skipped)."""
    out = {}
    for name, values in per_prompt.items():
        values = np.asarray(values, dtype=np.float64)
        out[PREFIX + name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out
