"""The KL-regularized optimum ("tilted" policy), estimated from each prompt's N reference samples.

`bonrl ppo` maximizes E_π[proxy] − β·KL(π‖π_ref). Over all policies that objective has one maximizer,
the reference tilted by the exponentiated proxy (Ziegler et al. 2019; Korbak, Perez & Buckley 2022, "RL
with KL penalties is better viewed as Bayesian inference"; Rafailov et al. 2023, eq. 4):

    π_β(y) = π_ref(y) exp(proxy(y)/β) / Z_β,        Z_β = E_ref[exp(proxy/β)].

So every β has a curve point that no RL run with that β can beat on the proxy-minus-penalty objective,
and the distance from an RL run to it is optimization shortfall, not a limit of RL. We estimate it with no
training from the same N samples per prompt that best-of-n uses: self-normalized importance weights

    w_j = exp(proxy_j/β) / Σ_k exp(proxy_k/β)          (sample j of the prompt; Σ_j w_j = 1)

give the optimum's expectation of any per-sample value (gold, proxy, length) as Σ_j w_j value_j, and

    KL(π_β‖π_ref) = E_β[proxy]/β − log Z_β  ≈  Σ_j w_j proxy_j/β − log mean_j exp(proxy_j/β),

computed with a log-sum-exp so β small against the proxy's spread neither overflows nor underflows. The
estimate is Σ_j w_j log(N w_j), the KL of the reweighted samples from the uniform one: it lies in
[0, log N], so like best-of-n on N samples it cannot show more than log N nats. How far to trust a
point is what the effective sample size says (Kish 1965): ess = 1/Σ_j w_j², from N (β → ∞, every
sample equal) down to 1 (β → 0, all weight on the top sample). `tilted_rows` flags points whose ESS is
too small (LOW_ESS, with the reason there).

Two functions: `tilted_per_prompt` (the per-prompt estimates, any columns, many β at once) and
`tilted_rows` (one results-table row per β, the per-prompt estimates averaged over prompts, with their
standard errors and, on request, the same bootstrap resamples of prompts that best-of-n uses).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

# A point is flagged `low_ess` when the mean per-prompt ESS is below this. Why 30: measured where the
# answer is known (scripts/tilted_ess_bias.py: gold ~ N(0,1), proxy = gold + N(0,1), so KL = 1/β² and
# E_β[gold] = 1/β; N = 64 to 4,096 samples per prompt). At mean ESS 30 the estimate gives 88-95% of the
# true KL and 93-97% of the true gold; at ESS 10 only 69-78% and 82-86%. The shortfall is a bias shared
# by every prompt (the tilt's mass beyond the largest of the N samples is missing), so the standard
# error across prompts does not cover it: below 30 a point says more about N than about the optimum.
LOW_ESS = 30.0


def _check_betas(betas: Sequence[float]) -> list[float]:
    out = [float(b) for b in betas]
    if not out:
        raise ValueError("betas is empty; give at least one β > 0")
    for beta in out:
        if not math.isfinite(beta) or beta <= 0.0:
            raise ValueError(f"β must be a positive finite number (the KL coefficient), got {beta!r}")
    return out


def tilted_per_prompt(
    proxy: np.ndarray,
    columns: Mapping[str, np.ndarray] | None,
    betas: Sequence[float],
) -> dict[str, np.ndarray]:
    """Per-prompt estimates of the tilted optimum π_β ∝ π_ref exp(proxy/β), for every β.

    proxy: [P, N], N reference samples for each of P prompts. columns: name -> [P, N] per-sample values
    (e.g. {"gold": gold}). Returns name -> [P, len(betas)]: every column's (and "proxy"'s, unless
    columns has that key) self-normalized expectation under π_β, plus "kl" (KL(π_β‖π_ref), in [0, log N])
    and "ess" (Kish's effective sample size 1/Σ w², in [1, N]).
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    if proxy.ndim != 2 or proxy.size == 0:
        raise ValueError(f"proxy must have shape [P, N] (prompts x samples), got shape {proxy.shape}")
    if not np.all(np.isfinite(proxy)):
        bad = int(np.flatnonzero(~np.isfinite(proxy).all(axis=1))[0])
        raise ValueError(f"proxy has a NaN or inf value (prompt {bad}); the tilted optimum needs finite scores")
    betas = _check_betas(betas)
    P, N = proxy.shape
    cols = {"proxy": proxy} if columns is None or "proxy" not in columns else {}
    for name, col in (columns or {}).items():
        col = np.asarray(col, dtype=np.float64)
        if col.shape != proxy.shape:
            raise ValueError(f"column {name!r} has shape {col.shape}, proxy has shape {proxy.shape}; they must match")
        if not np.all(np.isfinite(col)):
            raise ValueError(f"column {name!r} has a NaN or inf value")
        cols[name] = col

    out = {name: np.empty((P, len(betas))) for name in (*cols, "kl", "ess")}
    # Shifting by each prompt's max changes no weight and keeps every exponent <= 0 (no overflow).
    centred = proxy - proxy.max(axis=1, keepdims=True)
    for k, beta in enumerate(betas):
        scaled = centred / beta
        log_z = np.log(np.exp(scaled).sum(axis=1, keepdims=True))  # the max term is exp(0) = 1: log_z >= 0
        log_w = scaled - log_z  # log of the normalized weights, finite even where w underflows to 0
        w = np.exp(log_w)
        for name, col in cols.items():
            out[name][:, k] = np.einsum("pn,pn->p", w, col)
        # KL = Σ w log(N w) (module docstring); >= 0 up to rounding.
        out["kl"][:, k] = np.maximum(np.einsum("pn,pn->p", w, log_w) + math.log(N), 0.0)
        out["ess"][:, k] = 1.0 / np.einsum("pn,pn->p", w, w)
    return out


def tilted_rows(
    proxy: np.ndarray,
    columns: Mapping[str, np.ndarray],
    betas: Sequence[float],
    bootstrap: int = 0,
    seed: int = 0,
) -> list[dict]:
    """The tilted-optimum curve of one proxy: one dict per β (no provenance fields), like bon_rows.

    Keys: beta, kl, kl_se, and for "proxy" and every column c: c_mean, c_se (across prompts; NaN for one
    prompt) and, with bootstrap > 0, c_lo/c_hi (percentile 95% interval over prompts resampled with the
    generator `np.random.default_rng(seed)`, drawn as best_of_n_table draws them, so a run's BoN and
    tilted intervals use the same resamples); ess (mean per-prompt ESS), ess_min, low_ess (1 when the
    mean ESS is below LOW_ESS: the point is an estimate not to be drawn as measured).
    """
    betas = _check_betas(betas)
    per_prompt = tilted_per_prompt(proxy, columns, betas)
    P = np.asarray(proxy).shape[0]
    if bootstrap:
        counts = np.random.default_rng(seed).multinomial(P, np.full(P, 1.0 / P), size=bootstrap).astype(np.float64)
    rows = []
    for k, beta in enumerate(betas):
        ess = per_prompt["ess"][:, k]
        row = {"beta": beta, "ess": float(ess.mean()), "ess_min": float(ess.min()),
               "low_ess": int(ess.mean() < LOW_ESS)}
        for name, values in per_prompt.items():
            if name == "ess":
                continue
            v = values[:, k]
            key = "kl" if name == "kl" else f"{name}_mean"
            row[key] = float(v.mean())
            row["kl_se" if name == "kl" else f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan")
            if bootstrap and name != "kl":
                means = counts @ v / P
                row[f"{name}_lo"], row[f"{name}_hi"] = (float(q) for q in np.quantile(means, [0.025, 0.975]))
        rows.append(row)
    return rows
