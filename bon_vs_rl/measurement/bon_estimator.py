"""Best-of-n by the numbers: the unbiased best-of-n estimator and the KL of best-of-n from the policy.

Best-of-n (BoN) sampling draws n completions from the policy π for a prompt and keeps the one the
proxy reward model scores highest. Gao, Schulman & Hilton (2022, "Scaling Laws for Reward Model
Overoptimization", sec. 2.2 and appendix) do not draw n fresh samples for every n: they draw N ≥ n
samples per prompt once, score them with the proxy and the gold reward, and for every n average over
all C(N, n) subsets of size n -- the unbiased estimator of Nakano et al. (2021, WebGPT, appendix).
With the N samples sorted by proxy score, ascending, the sample of rank i (1-based) is the best of a
uniformly random n-subset exactly when the subset holds it and n-1 of the i-1 samples below it:

    P(rank i is selected) = C(i-1, n-1) / C(N, n)                                              (1)

so the BoN expectation of any per-sample quantity (gold score, proxy score, token count) is a
weighted sum over the samples, unbiased for the expectation under n fresh draws from π. Drawing the
n-subsets *with* replacement instead (the plug-in estimate F^n) is biased when n is not << N.

Ties in the proxy are broken uniformly at random: samples with equal proxy score share equally the
total probability of their tied block of ranks.

The KL of the best-of-n policy from π is the x-axis of every plot in the paper:

    kl_bon_analytic          log n - (n-1)/n (Stiennon et al. 2020, app. G.3): exact for a continuous
                             reward without ties, otherwise an upper bound (Beirami et al. 2024).
    kl_bon_beirami           Beirami et al. (2024)'s tighter estimate from ε, the policy's
                             probability of the selected completion (or its log-probability).
    kl_bon_exact             exact KL(π_bon || π) for a discrete reference distribution.
    kl_bon_exact_empirical   the same, with one prompt's N samples as the reference distribution.

numpy only (scipy.special is imported lazily where a log-gamma is needed): importing this module is
fast and needs no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

# A prompt chunk of the batch estimator holds about this many samples per array (8 MiB in float64):
# big enough for BLAS and the sort to run at full speed, small enough that the sorted copies of the
# columns stay out of the way of the caller's [P, N] arrays. Measured with
# scripts/bench_bon_estimator.py (1,000 x 65,536, 2 cores): 2^18-2^20 run in ~1.4 s, 2^22 in ~1.75 s.
_CHUNK_ELEMENTS = 1 << 20


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_n(n: int, num_samples: int | None = None) -> int:
    """n must be a positive integer, and at most N when choosing n of N samples without replacement."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        if isinstance(n, (float, np.floating)) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"best-of-n needs an integer n, got {n!r}")
    n = int(n)
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got n={n}")
    if num_samples is not None and n > num_samples:
        raise ValueError(
            f"best-of-n with n={n} needs at least n samples per prompt, got N={num_samples} "
            "(the estimator draws n of the N samples without replacement)"
        )
    return n


def _check_n_array(n: ArrayLike) -> np.ndarray:
    """Vectorised _check_n for the KL formulas, which broadcast over n."""
    arr = np.asarray(n)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"best-of-n needs integer n, got {n!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise ValueError(f"best-of-n needs integer n, got {n!r}")
    if np.any(arr < 1):
        raise ValueError(f"best-of-n needs n >= 1, got {n!r}")
    return arr.astype(np.float64)


def _check_scores(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        shape = "[N] (one prompt's samples)" if ndim == 1 else "[P, N] (prompts x samples)"
        raise ValueError(f"{name} must have shape {shape}, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has a NaN or inf value; best-of-n needs finite scores")
    return arr


# --------------------------------------------------------------------------------------------------
# The best-of-n estimator: which sample does best-of-n select, and with what probability
# --------------------------------------------------------------------------------------------------


def _rank_weights(num_samples: int, n: int) -> np.ndarray:
    """Equation (1) for ranks i = 1..N (ascending proxy), assuming no ties: [N] weights summing to 1.

    C(i-1, n-1) / C(N, n) overflows as integers and underflows as a ratio of floats long before
    N = 65,536, so it is computed in log space with log-gamma:
        log C(a, b) = lgamma(a+1) - lgamma(b+1) - lgamma(a-b+1).
    The log-gammas reach ~7e5 at N = 65,536, so log-weights carry an absolute error of ~1e-10 (a
    relative error of ~1e-10 in each weight); weights below ~1e-308 are 0 in float64. The weights are
    renormalised so they sum to 1 to rounding.
    """
    from scipy.special import gammaln  # lazy: keeps `import bon_vs_rl.measurement.bon_estimator` fast

    N = num_samples
    weights = np.zeros(N)
    i = np.arange(n, N + 1, dtype=np.float64)  # ranks below n are never the max of n samples
    log_choose_all = gammaln(N + 1) - gammaln(n + 1) - gammaln(N - n + 1)  # log C(N, n)
    log_w = gammaln(i) - gammaln(n) - gammaln(i - n + 1) - log_choose_all  # log C(i-1, n-1) - log C(N, n)
    weights[n - 1 :] = np.exp(log_w)
    weights /= weights.sum()  # hockey-stick identity: sum_i C(i-1, n-1) = C(N, n), so only rounding
    return weights


def _tie_blocks(sorted_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Start index and length of each run of equal scores in a sorted 1-D array; None if no ties."""
    new_block = np.empty(sorted_scores.shape[0], dtype=bool)
    new_block[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_block[1:])
    if new_block.all():
        return None
    starts = np.flatnonzero(new_block)
    sizes = np.diff(np.append(starts, sorted_scores.shape[0]))
    return starts, sizes


def best_of_n_weights(proxy_scores: ArrayLike, n: int) -> np.ndarray:
    """Probability that each of one prompt's N samples is the one best-of-n selects.

    Best-of-n here draws n of the N samples uniformly without replacement and keeps the highest proxy
    score (eq. 1, Nakano et al. 2021; Gao et al. 2022), ties broken uniformly at random. Returns [N]
    weights in the original sample order, summing to 1; sum(weights * gold) is the unbiased best-of-n
    estimate of the gold reward.
    """
    proxy = _check_scores(proxy_scores, "proxy_scores", ndim=1)
    N = proxy.shape[0]
    n = _check_n(n, N)
    order = np.argsort(proxy)  # ascending; the order within a tie block does not matter (see below)
    w_sorted = _rank_weights(N, n)
    blocks = _tie_blocks(proxy[order])
    if blocks is not None:
        # Breaking ties uniformly at random puts each tied sample at each rank of its block with
        # equal probability, so each gets the mean of the block's rank weights.
        starts, sizes = blocks
        w_sorted = np.repeat(np.add.reduceat(w_sorted, starts) / sizes, sizes)
    weights = np.empty(N)
    weights[order] = w_sorted
    return weights


def best_of_n_expectation(proxy_scores: ArrayLike, values: ArrayLike, n: int) -> float:
    """Expected `values` (gold score, proxy score, token count, ...) of the best-of-n-selected sample.

    The unbiased best-of-n estimate for one prompt: sum_j P(sample j is selected) * values[j].
    """
    proxy = _check_scores(proxy_scores, "proxy_scores", ndim=1)
    vals = _check_scores(values, "values", ndim=1)
    if vals.shape != proxy.shape:
        raise ValueError(f"values has shape {vals.shape}, proxy_scores has shape {proxy.shape}; they must match")
    return float(best_of_n_weights(proxy, n) @ vals)


def _resolve_ns(ns: Sequence[int] | None, num_samples: int) -> list[int]:
    if ns is None:  # the paper's grid: powers of two up to N
        return [1 << k for k in range(num_samples.bit_length()) if (1 << k) <= num_samples]
    ns = [_check_n(n, num_samples) for n in ns]
    if not ns:
        raise ValueError("ns is empty; give at least one n")
    return ns


def best_of_n_per_prompt(
    proxy: ArrayLike,
    columns: Mapping[str, ArrayLike] | None = None,
    ns: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-prompt best-of-n expectations for many prompts and many n at once.

    proxy: [P, N] proxy scores, N samples for each of P prompts. columns: name -> [P, N] per-sample
    values (e.g. {"gold": gold}); the proxy itself is always included as "proxy" unless `columns`
    has that key. ns: the n to evaluate (default 1, 2, 4, ... up to N), each 1 <= n <= N.
    Returns name -> [P, len(ns)] array, entry [p, k] = best_of_n_expectation(proxy[p], column[p], ns[k]).

    Each prompt is sorted once. Without ties the weights of eq. (1) depend on rank only, not on the
    prompt, so they are computed once per n as an [N, len(ns)] matrix W and every prompt's expectation
    is one matrix product (sorted values) @ W. Ties are handled on the values rather than the weights:
    giving each tied sample the block mean of the rank weights gives the same sum as giving each tied
    sample the block mean of the values, sum_b mean_b(w) * sum_b(v) = sum_b w * mean_b(v); so only the
    prompts that have ties get extra work. Memory: W is N * len(ns) float64 plus ~8 MiB per column of
    working space; the caller's [P, N] arrays are read in chunks of prompts and never copied whole.
    """
    proxy = np.asarray(proxy)
    if proxy.ndim != 2 or proxy.size == 0:
        raise ValueError(f"proxy must have shape [P, N] (prompts x samples), got shape {proxy.shape}")
    P, N = proxy.shape
    ns = _resolve_ns(ns, N)
    cols: dict[str, np.ndarray] = {}
    if columns is None or "proxy" not in columns:
        cols["proxy"] = proxy
    for name, col in (columns or {}).items():
        col = np.asarray(col)
        if col.shape != proxy.shape:
            raise ValueError(f"column {name!r} has shape {col.shape}, proxy has shape {proxy.shape}; they must match")
        cols[name] = col

    W = np.stack([_rank_weights(N, n) for n in ns], axis=1)  # [N, K]: rank weights, one column per n
    out = {name: np.empty((P, len(ns))) for name in cols}
    chunk = max(1, _CHUNK_ELEMENTS // N)
    for start in range(0, P, chunk):
        stop = min(P, start + chunk)
        scores = np.asarray(proxy[start:stop], dtype=np.float64)
        if not np.all(np.isfinite(scores)):
            bad = start + int(np.flatnonzero(~np.isfinite(scores).all(axis=1))[0])
            raise ValueError(f"proxy has a NaN or inf value (prompt {bad}); best-of-n needs finite scores")
        order = np.argsort(scores, axis=1)  # ascending; quicksort: order within a tie block is irrelevant
        sorted_proxy = np.take_along_axis(scores, order, axis=1)

        tied = sorted_proxy[:, 1:] == sorted_proxy[:, :-1]  # [c, N-1]
        tied_rows = np.flatnonzero(tied.any(axis=1))
        if tied_rows.size:
            # Flatten the tied prompts into one array whose blocks never cross a prompt boundary (every
            # row starts a block), so one reduceat averages every tie block of the chunk.
            new_block = np.ones((tied_rows.size, N), dtype=bool)
            new_block[:, 1:] = ~tied[tied_rows]
            starts = np.flatnonzero(new_block)
            sizes = np.diff(np.append(starts, new_block.size))

        for name, col in cols.items():
            if col is proxy:
                sorted_vals = sorted_proxy  # constant on tie blocks already
            else:
                vals = np.asarray(col[start:stop], dtype=np.float64)
                if not np.all(np.isfinite(vals)):
                    bad = start + int(np.flatnonzero(~np.isfinite(vals).all(axis=1))[0])
                    raise ValueError(f"column {name!r} has a NaN or inf value (prompt {bad})")
                sorted_vals = np.take_along_axis(vals, order, axis=1)
                if tied_rows.size:
                    block_means = np.add.reduceat(sorted_vals[tied_rows].ravel(), starts) / sizes
                    sorted_vals[tied_rows] = np.repeat(block_means, sizes).reshape(tied_rows.size, N)
            out[name][start:stop] = sorted_vals @ W
    return out


def best_of_n_table(
    proxy: ArrayLike,
    columns: Mapping[str, ArrayLike] | None = None,
    ns: Sequence[int] | None = None,
    *,
    bootstrap: int = 0,
    rng: np.random.Generator | int | None = None,
    ci: float = 0.95,
) -> dict[str, np.ndarray]:
    """Best-of-n curve over prompts: for each n, the mean over prompts of each column's BoN expectation.

    Arguments as for `best_of_n_per_prompt`. Returns a dict of equal-length 1-D arrays, one row per n
    (so `pandas.DataFrame(table)` is the table):
        n             the n evaluated
        kl_analytic   log n - (n-1)/n, the KL of best-of-n from the policy (an upper bound with ties)
        <col>_mean    mean over the P prompts of the per-prompt best-of-n expectation
        <col>_se      its standard error across prompts, std(ddof=1) / sqrt(P); NaN when P == 1
        <col>_lo/_hi  with bootstrap > 0: the percentile bootstrap `ci` interval of <col>_mean,
                      resampling prompts with replacement `bootstrap` times (the same resamples for
                      every column and n); rng seeds it (a Generator or a seed)
    The uncertainty is over prompts only: each prompt's expectation is exact for its N samples.
    """
    bootstrap = int(bootstrap)
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    proxy = np.asarray(proxy)
    per_prompt = best_of_n_per_prompt(proxy, columns, ns)
    P, N = proxy.shape
    ns = _resolve_ns(ns, N)
    table: dict[str, np.ndarray] = {
        "n": np.asarray(ns, dtype=np.int64),
        "kl_analytic": np.asarray(kl_bon_analytic(np.asarray(ns)), dtype=np.float64),
    }
    if bootstrap:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        # A resample of prompts is a count per prompt: mean = counts @ E / P, one matrix product for
        # all resamples and all n, instead of materialising [B, P, K] resampled arrays.
        counts = gen.multinomial(P, np.full(P, 1.0 / P), size=bootstrap).astype(np.float64)  # [B, P]
        alpha = (1.0 - ci) / 2.0
    for name, E in per_prompt.items():  # E: [P, K]
        table[f"{name}_mean"] = E.mean(axis=0)
        # NaN rather than 0 for a single prompt: there is no estimate of the spread, not a zero spread.
        table[f"{name}_se"] = E.std(axis=0, ddof=1) / math.sqrt(P) if P > 1 else np.full(len(ns), np.nan)
        if bootstrap:
            means = counts @ E / P  # [B, K]
            table[f"{name}_lo"], table[f"{name}_hi"] = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return table


# --------------------------------------------------------------------------------------------------
# KL(π_bon || π): how far best-of-n moves from the policy
# --------------------------------------------------------------------------------------------------


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Mächler 2012, "Accurately computing log(1-exp(-|a|))")."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > -math.log(2.0), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def kl_bon_analytic(n: int | ArrayLike) -> float | np.ndarray:
    """KL(π_bon || π) = log n - (n-1)/n (Stiennon et al. 2020, app. G.3; Gao et al. 2022, eq. 1).

    Exact when the reward has a continuous distribution under π (no ties); for a discrete one it is
    an upper bound (Beirami et al. 2024). A float for scalar n, an array for array n.
    """
    arr = _check_n_array(n)
    kl = np.log(arr) - (arr - 1.0) / arr
    return float(kl) if kl.ndim == 0 else kl


def kl_bon_beirami_from_logprob(logp: ArrayLike, n: int | ArrayLike, *, clip: bool = True) -> float | np.ndarray:
    """Beirami et al. (2024)'s estimate of KL(π_bon || π) from logp = log ε, ε the policy's probability
    of the selected completion. Broadcasts over logp and n; a float when both are scalars.

        KL(ε) = (1-ε)^n [log n + (n-1) log(1-ε) - (n-1)/n] + (1 - (1-ε)^n) log[(1 - (1-ε)^n) / ε]

    A completion's probability is a product over tokens and underflows float64 for a few hundred
    tokens (ε = e^-800), so ε is never formed: with u = -n log(1-ε), from log1p/expm1 of logp,
    (1-ε)^n = e^-u and (n-1) log(1-ε) = -(n-1) u / n, so

        KL(ε) = e^-u [log n - (n-1)/n - (n-1) u / n] + (1 - e^-u) [log(1 - e^-u) - log ε]

    and log ε enters only as logp. Where ε underflows, u = 0 and the result is the analytic value; the
    true difference is O(n ε), below rounding. The estimate lies in [0, log n - (n-1)/n]; clip=True
    clips rounding excursions outside it (~1e-15). logp = 0 (ε = 1) gives 0; logp = -inf (the limit
    ε -> 0) gives the analytic value.
    """
    lp = np.asarray(logp, dtype=np.float64)
    if np.any(np.isnan(lp)) or np.any(lp > 0.0):
        raise ValueError("logp must be a log-probability in [-inf, 0]")
    nn = _check_n_array(n)
    lp, nn = np.broadcast_arrays(lp, nn)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        u = -nn * _log1mexp(lp)  # -n log(1-ε) >= 0; inf at ε = 1
        one_minus_q = -np.expm1(-u)  # 1 - (1-ε)^n, ~ n ε for small ε without cancellation
        analytic = np.log(nn) - (nn - 1.0) / nn
        first = np.where(np.isinf(u), 0.0, np.exp(-u) * (analytic - (nn - 1.0) / nn * u))  # ε=1: 0·inf
        second = np.where(one_minus_q > 0.0, one_minus_q * (np.log(one_minus_q) - lp), 0.0)  # ε->0: 0·log(0/0)
        kl = first + second
    if clip:
        kl = np.clip(kl, 0.0, analytic)
    return float(kl) if kl.ndim == 0 else kl


def kl_bon_beirami(eps: ArrayLike, n: int | ArrayLike, *, clip: bool = True) -> float | np.ndarray:
    """Beirami et al. (2024)'s estimate of KL(π_bon || π) from ε in [0, 1], the policy's probability
    of the selected completion; see `kl_bon_beirami_from_logprob`, which this calls with log ε (pass
    log-probabilities there directly when ε may underflow). Same shape as eps (broadcast with n).
    """
    e = np.asarray(eps, dtype=np.float64)
    if np.any(np.isnan(e)) or np.any(e < 0.0) or np.any(e > 1.0):
        raise ValueError("eps must be a probability in [0, 1]")
    with np.errstate(divide="ignore"):
        lp = np.log(e)  # log(0) = -inf: the ε -> 0 limit
    return kl_bon_beirami_from_logprob(lp, n, clip=clip)


def bon_log_probs(reference_probs: ArrayLike, n: int) -> np.ndarray:
    """log π_bon(y_i) of best-of-n over a discrete reference π, outcomes listed in ascending proxy order.

    reference_probs: [L] probabilities of L outcomes, ordered by proxy reward ascending, with tied
    rewards already merged into one outcome. With CDF F, best-of-n (n iid draws from π, keep the best)
    puts mass π_bon(y_i) = F(y_i)^n - F(y_{i-1})^n on y_i. Computed in log space:
    log π_bon(y_i) = n log F_i + log(1 - (1 - p_i/F_i)^n), with log F_i taken from the upper tail where
    F_i is near 1, so any n that fits an integer (n = e^30 included) loses nothing. Returns [L], -inf
    where π_bon underflows and where p_i = 0 (an outcome π never produces, best-of-n never picks).
    """
    p = np.asarray(reference_probs, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"reference_probs must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0.0):
        raise ValueError("reference_probs must be finite and non-negative")
    total = p.sum()
    if abs(total - 1.0) > 1e-8:
        raise ValueError(f"reference_probs must sum to 1, got {total!r}")
    n = _check_n(n)
    keep = p > 0.0
    q = p[keep] / total
    cdf = np.cumsum(q)
    upper = np.append(np.cumsum(q[::-1])[::-1][1:], 0.0)  # 1 - F_i, summed from the top
    with np.errstate(divide="ignore", invalid="ignore"):
        log_cdf = np.where(cdf < 0.5, np.log(cdf), np.log1p(-upper))
        # F_{i-1}^n / F_i^n = (1 - p_i/F_i)^n, so F_i^n - F_{i-1}^n = F_i^n (1 - (1 - p_i/F_i)^n)
        log_step = n * np.log1p(-np.minimum(q / cdf, 1.0))
        out = np.full(p.shape, -np.inf)
        out[keep] = n * log_cdf + _log1mexp(log_step)
    return out


def kl_bon_exact(reference_probs: ArrayLike, n: int) -> float:
    """Exact KL(π_bon || π) for a discrete reference π over outcomes listed in ascending proxy order.

    reference_probs as for `bon_log_probs`, which gives log π_bon; KL = sum_i π_bon(y_i) log(π_bon(y_i) / π(y_i)).
    """
    log_bon = bon_log_probs(reference_probs, n)
    p = np.asarray(reference_probs, dtype=np.float64)
    keep = p > 0.0  # outcomes π never produces carry no mass under π_bon either
    log_bon, p = log_bon[keep], p[keep] / p.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        bon = np.exp(log_bon)
        terms = np.where(bon > 0.0, bon * (log_bon - np.log(p)), 0.0)
    return max(float(terms.sum()), 0.0)  # KL >= 0; n = 1 gives 0 up to rounding


def kl_bon_exact_empirical(proxy_scores: ArrayLike, n: int) -> float:
    """Exact KL(π_bon || π̂) with π̂ the empirical distribution of one prompt's N samples.

    Samples with equal proxy score are one outcome of π̂ (a tie is not an improvement, so best-of-n
    cannot move mass between them); each distinct score has probability count/N. This is the KL to
    report when the proxy has ties, where log n - (n-1)/n overstates it.

    Two caveats. (i) This is best-of-n over n iid draws from π̂ (F^n), the same distribution for any
    n >= 1, including n > N; the estimator weights (eq. 1) draw without replacement, which agrees
    only for n << N. (ii) With N distinct scores it is not log n - (n-1)/n but the KL for a uniform π̂
    over N outcomes, which is below the analytic value and tends to it as N -> infinity at fixed n
    (and never exceeds log N).
    """
    proxy = _check_scores(proxy_scores, "proxy_scores", ndim=1)
    _, counts = np.unique(proxy, return_counts=True)  # ascending, ties merged
    return kl_bon_exact(counts / proxy.shape[0], n)


def _log_G(log_u: np.ndarray, n: int) -> np.ndarray:
    """∫_0^u n t^(n-1) log(n t^(n-1)) dt = u^n [log n + (n-1) log u - (n-1)/n], for u = exp(log_u) in [0, 1].

    The integrand is the log density ratio of best-of-n in CDF space (a continuous reward: the kept
    sample's CDF value has density n t^(n-1)), so G(1) = log n - (n-1)/n, the analytic KL.
    Differentiate u^n log(n u^(n-1)) to check: n u^(n-1) log(n u^(n-1)) + (n-1) u^(n-1).
    """
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        bracket = math.log(n) + (n - 1) * log_u - (n - 1) / n
        return np.where(np.isneginf(log_u), 0.0, np.exp(n * log_u) * bracket)


def kl_bon_tie_aware(proxy_scores: ArrayLike, n: int) -> float:
    """KL(π_bon || π) estimated from one prompt's N samples, honest when samples tie or repeat.

    A sample whose proxy score no other sample shares is taken as a draw from a continuous part of the
    reward distribution: over its slice (F_{i-1}, F_i] of the empirical CDF it contributes the integral of
    the continuous log density ratio, G(F_i) - G(F_{i-1}) (see _log_G). A block of c >= 2 equal scores
    (identical completions, an RM that saturates) is an atom of mass p = c/N, which best-of-n can only
    take or leave whole: it contributes q log(q/p) with q = F_i^n - F_{i-1}^n (Beirami et al. 2024's
    point that log n - (n-1)/n over-states the KL of a discrete reward).

    Without ties the sum telescopes to G(1) = log n - (n-1)/n exactly, the analytic value; with every
    sample tied it is 0 (best-of-n cannot move the policy). Unlike `kl_bon_exact_empirical` it does not
    shrink toward the KL of a uniform distribution over N outcomes when there are no ties: only the
    observed atoms are treated as atoms. As N grows it converges to the exact KL of a reference whose
    reward distribution mixes atoms (masses well above 1/N) with a continuous part.
    """
    proxy = _check_scores(proxy_scores, "proxy_scores", ndim=1)
    n = _check_n(n)
    N = proxy.shape[0]
    _, counts = np.unique(proxy, return_counts=True)  # ascending blocks of equal scores
    if len(counts) == N:
        return float(kl_bon_analytic(n))
    upper_count = np.cumsum(counts)  # N·F_i
    lower_count = upper_count - counts  # N·F_{i-1}
    with np.errstate(divide="ignore"):
        log_upper = np.log(upper_count / N)
        log_lower = np.log(lower_count / N)  # -inf for the first block
    atom = counts >= 2
    continuous = _log_G(log_upper[~atom], n) - _log_G(log_lower[~atom], n)
    # Atoms: q = F_i^n (1 - (F_{i-1}/F_i)^n), in log space so that large n loses nothing.
    log_q = n * log_upper[atom] + _log1mexp(n * (log_lower[atom] - log_upper[atom]))
    q = np.exp(log_q)
    p = counts[atom] / N
    with np.errstate(divide="ignore", invalid="ignore"):
        atoms = np.where(q > 0.0, q * (log_q - np.log(p)), 0.0)
    return max(float(continuous.sum() + atoms.sum()), 0.0)
