"""Warning signs of reward hacking that need no gold: what a practitioner can watch while optimizing a proxy.

Gao, Schulman & Hilton (2022) measure overoptimization with a gold reward; a practitioner has only the proxy,
the policy and the reference. These are the signals they *do* have, each a number per evaluation (an RL
evaluation, a best-of-n n, or one training batch in `bon_vs_rl.monitor`), each measured against the
reference policy's own samples (the "reference": RL's step-0 evaluation, best-of-n's N samples per prompt,
the monitor's first batches):

    gain_per_nat        marginal proxy gain per nat: d proxy_z / d KL between consecutive points, the proxy in
                        units of the reference samples' proxy std (so proxies of any scale compare). Gao et al.'s
                        proxy curves bend as the gold turns; a falling marginal gain is the proxy's own bend
    kl, kl_rate         KL(π‖π_ref) in nats, and its rate per step (d KL / d step; RL only)
    disagreement        the ensemble members' standard deviation (ddof 0, as @mean-λstd uses), averaged over
                        samples; disagreement_ratio is it over the reference's (Coste et al. 2023: members
                        disagree where the policy has left their training distribution)
    agreement           how often a second, independently trained proxy orders two samples of one prompt as
                        the proxy does (pairs of the same prompt; a tie counts half): the pairwise accuracy of
                        one proxy against the other's preferences. Proxies that agree on the reference's text
                        part ways on text that games one of them (best-of-n: pairs drawn from its selection)
    length_drift        mean length (tokens) over the reference's, minus 1 (length is the commonest hack)
    distinct_2_drift    mean distinct-2 (distinct word bigrams / bigrams per completion, text_stats) minus the
                        reference's: repetition ("warm warm warm") drives it down
    ref_logprob_per_token, ref_logprob_drift
                        the reference policy's log-prob per token of the policy's samples (nats), and minus
                        the reference samples' own: how unlikely the text has become to the starting model
    above_ref_max       share of samples whose proxy exceeds the largest proxy among all reference samples:
                        scores the reference never reached. Best-of-n only reweights reference samples, so
                        its share is 0 by construction

Every mean weighs prompts equally (the mean over prompts of each prompt's mean), as every other estimate
here. A *rule* is one signal against a threshold in the direction hacking moves it ("distinct_2_drift <
-0.1", "above_ref_max > 0.5", "|length_drift| > 0.5"); `onset.py` chooses thresholds against the gold and
scores them on other runs. numpy only: the text statistics themselves (distinct-2) come in as arrays.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# Each signal's direction under hacking: "up" (fires above the threshold), "down" (below), "abs" (|value| above).
SIGNALS = {
    "gain_per_nat": "down",
    "kl": "up",
    "kl_rate": "up",
    "disagreement_ratio": "up",
    "agreement": "down",
    "length_drift": "abs",
    "distinct_2_drift": "down",
    "ref_logprob_drift": "down",
    "above_ref_max": "up",
}
WORDS = {
    "gain_per_nat": "marginal proxy gain per nat (proxy in reference stds)",
    "kl": "KL (nats)",
    "kl_rate": "KL per step (nats)",
    "disagreement_ratio": "ensemble disagreement / reference's",
    "agreement": "pairwise agreement with a second proxy",
    "length_drift": "length / reference's − 1",
    "distinct_2_drift": "distinct-2 − reference's",
    "ref_logprob_drift": "reference log-prob per token − reference samples'",
    "above_ref_max": "share above the reference's largest proxy",
}
# What a curve's points store (results columns signal_<name>), besides what rows already hold (kl, text_*).
STORED = ("proxy_z", "above_ref_max", "disagreement", "disagreement_ratio", "agreement")
PREFIX = "signal_"


# ----------------------------------------------------------------------------------------------
# 1. Per-sample pieces.


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..S, ties given their average rank (as Spearman's correlation needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranked = np.empty(len(x))
    ranked[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    if len(values) < len(x):  # average the ranks within each group of ties
        ranked = (np.bincount(inverse, weights=ranked) / np.bincount(inverse))[inverse]
    return ranked


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on the (tie-averaged) ranks; NaN if either is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denominator if denominator > 0 else math.nan


def pairwise_agreement(a, b, prompt_index=None, weights=None) -> float:
    """Share of same-prompt sample pairs (i ≠ j) that a and b order the same way, a tie in either counting half;
    a pair weighs w_i·w_j (`weights`: each sample's probability under the policy, e.g. best-of-n's selection;
    default equal). Mean over prompts with at least two samples; NaN if none has."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    w = np.ones(len(a)) if weights is None else np.asarray(weights, dtype=np.float64)
    index = np.zeros(len(a), dtype=int) if prompt_index is None else np.asarray(prompt_index)
    per_prompt = []
    for p in np.unique(index):
        rows = np.flatnonzero(index == p)
        if len(rows) < 2:
            continue
        da, db = np.sign(a[rows, None] - a[None, rows]), np.sign(b[rows, None] - b[None, rows])
        same = np.where((da == 0) | (db == 0), 0.5, (da == db).astype(np.float64))
        pair = w[rows, None] * w[None, rows]
        np.fill_diagonal(pair, 0.0)
        if pair.sum() > 0:
            per_prompt.append(float((pair * same).sum() / pair.sum()))
    return float(np.mean(per_prompt)) if per_prompt else math.nan


def member_std(members: np.ndarray) -> np.ndarray:
    """[S] the ensemble members' standard deviation per sample, from their scores [M, S] (ddof 0)."""
    return np.asarray(members, dtype=np.float64).std(axis=0)


def prompt_mean(values: np.ndarray, prompt_index: np.ndarray | None = None) -> float:
    """Mean over prompts of each prompt's mean (a plain mean without prompt ids); NaN values skipped."""
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan
    if prompt_index is None:
        return float(values[ok].mean())
    index = np.asarray(prompt_index)[ok]
    _, inverse = np.unique(index, return_inverse=True)
    return float(np.mean(np.bincount(inverse, weights=values[ok]) / np.bincount(inverse)))


# ----------------------------------------------------------------------------------------------
# 2. One evaluation against the reference.


@dataclass
class Reference:
    """The reference policy's samples, summarized: what every later evaluation's signals are measured against."""

    proxy_mean: float
    proxy_std: float  # per-sample (ddof 1): the unit of proxy_z
    proxy_max: float
    length: float
    distinct_2: float = math.nan
    ref_logprob_per_token: float = math.nan
    disagreement: float = math.nan


def reference_summary(proxy, tokens, distinct_2=None, ref_logprob=None, members=None,
                      prompt_index=None) -> Reference:
    """Summarize reference samples (arrays [S]; members [M, S]), means over prompts as everywhere."""
    proxy = np.asarray(proxy, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    return Reference(
        proxy_mean=prompt_mean(proxy, prompt_index),
        proxy_std=float(proxy.std(ddof=1)) if len(proxy) > 1 else math.nan,
        proxy_max=float(proxy.max()),
        length=prompt_mean(tokens, prompt_index),
        distinct_2=math.nan if distinct_2 is None else prompt_mean(distinct_2, prompt_index),
        ref_logprob_per_token=math.nan if ref_logprob is None else prompt_mean(per_token(ref_logprob, tokens),
                                                                             prompt_index),
        disagreement=math.nan if members is None else prompt_mean(member_std(members), prompt_index),
    )


def per_token(summed, tokens) -> np.ndarray:
    """Log-probs summed over a completion, per token (NaN for an empty completion)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    return np.asarray(summed, dtype=np.float64) / np.where(tokens > 0, tokens, np.nan)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def batch_signals(reference: Reference, proxy, tokens, *, kl=None, distinct_2=None, ref_logprob=None,
                  members=None, second=None, prompt_index=None) -> dict[str, float]:
    """The level signals of one evaluation's samples (arrays [S]; members [M, S]) against `reference`.

    Keys: proxy_z, above_ref_max, length_drift, and where their inputs are given kl, distinct_2_drift,
    ref_logprob_per_token, ref_logprob_drift, disagreement, disagreement_ratio, agreement (module docstring).
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.float64)
    mean = lambda values: prompt_mean(values, prompt_index)  # noqa: E731
    out = {
        "proxy_z": (mean(proxy) - reference.proxy_mean) / reference.proxy_std if reference.proxy_std > 0 else math.nan,
        "above_ref_max": mean((proxy > reference.proxy_max).astype(np.float64)),
        "length_drift": _ratio(mean(tokens), reference.length) - 1.0,
    }
    if kl is not None:
        out["kl"] = mean(kl)
    if distinct_2 is not None:
        out["distinct_2_drift"] = mean(distinct_2) - reference.distinct_2
    if ref_logprob is not None:
        out["ref_logprob_per_token"] = mean(per_token(ref_logprob, tokens))
        out["ref_logprob_drift"] = out["ref_logprob_per_token"] - reference.ref_logprob_per_token
    if members is not None and np.shape(members)[0] > 1:
        out["disagreement"] = mean(member_std(members))
        out["disagreement_ratio"] = _ratio(out["disagreement"], reference.disagreement)
    if second is not None:
        out["agreement"] = pairwise_agreement(proxy, second, prompt_index)
    return out


# ----------------------------------------------------------------------------------------------
# 3. Along a curve: marginal proxy gain per nat and KL's rate.


def slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x (two points: the difference quotient); NaN if x does not vary."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return math.nan
    dx = x - x.mean()
    spread = float(dx @ dx)
    return float(dx @ (y - y.mean())) / spread if spread > 0 else math.nan


def curve_signals(kl, proxy_z, step=None, window: int = 2) -> dict[str, np.ndarray]:
    """[K] per point k ≥ window − 1: gain_per_nat = slope of proxy_z on KL and kl_rate = slope of KL on step
    over points k − window + 1 .. k (window 2: between consecutive points). NaN before that and where KL or
    the step does not move. A curve's points are evaluations (each already an average); the monitor's are
    noisy batches, so it uses a wider window."""
    kl, proxy_z = np.asarray(kl, dtype=np.float64), np.asarray(proxy_z, dtype=np.float64)
    K = len(kl)
    gain, rate = np.full(K, np.nan), np.full(K, np.nan)
    for k in range(window - 1, K):
        part = slice(k - window + 1, k + 1)
        gain[k] = slope(kl[part], proxy_z[part])
        if step is not None:
            rate[k] = slope(np.asarray(step, dtype=np.float64)[part], kl[part])
    return {"gain_per_nat": gain, "kl_rate": rate}


# ----------------------------------------------------------------------------------------------
# 4. Rules: one signal against a threshold, in the direction hacking moves it.


RULE = re.compile(r"^\s*(\|?)\s*([a-z_0-9]+)\s*(\|?)\s*([<>])\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Rule:
    signal: str
    threshold: float

    @property
    def direction(self) -> str:
        return SIGNALS[self.signal]

    def fires(self, value: float) -> bool:
        """Whether one value crosses the threshold (NaN never does)."""
        if not math.isfinite(value):
            return False
        if self.direction == "up":
            return value > self.threshold
        if self.direction == "down":
            return value < self.threshold
        return abs(value) > self.threshold

    def __str__(self) -> str:
        if self.direction == "abs":
            return f"|{self.signal}| > {self.threshold:g}"
        return f"{self.signal} {'>' if self.direction == 'up' else '<'} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Rule:
        """'above_ref_max > 0.5', 'distinct_2_drift < -0.1', '|length_drift| > 0.5'; the comparison must be the
        signal's direction under hacking (SIGNALS), so a rule cannot silently watch the wrong way."""
        match = RULE.match(text)
        if not match:
            raise ValueError(f"rule {text!r}: write SIGNAL > X, SIGNAL < X or |SIGNAL| > X "
                             f"(signals: {', '.join(SIGNALS)})")
        bar_open, signal, bar_close, op, number = match.groups()
        if signal not in SIGNALS:
            raise ValueError(f"rule {text!r}: unknown signal {signal!r}; use one of {', '.join(SIGNALS)}")
        try:
            threshold = float(number)
        except ValueError:
            raise ValueError(f"rule {text!r}: {number!r} is not a number") from None
        want = {"up": ("", ">"), "down": ("", "<"), "abs": ("|", ">")}[SIGNALS[signal]]
        if (bar_open, op) != want or bar_open != bar_close:
            moves = {"up": "rises", "down": "falls", "abs": "moves either way"}[SIGNALS[signal]]
            raise ValueError(f"rule {text!r}: {signal} signals hacking when it {moves}; write "
                             f"{want[0]}{signal}{want[0]} {want[1]} {threshold:g}")
        return cls(signal, threshold)


def first_firing(values, rule: Rule, start: int = 1) -> int | None:
    """Index of the first point k ≥ start whose value fires the rule (start 1: the reference point itself,
    k = 0, cannot warn), or None."""
    for k, value in enumerate(np.asarray(values, dtype=np.float64)):
        if k >= start and rule.fires(float(value)):
            return k
    return None
