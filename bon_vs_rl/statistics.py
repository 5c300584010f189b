"""INTERIM (replaced by the stats branch at merge): paired prompt-bootstrap intervals for results rows."""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def paired_gain_interval(values, baseline, B=2000, rng=0, level=LEVEL) -> dict:
    values = np.asarray(values, dtype=np.float64)
    scalar = values.ndim == 1
    values = values[:, None] if scalar else values
    baseline = np.asarray(baseline, dtype=np.float64)
    P = values.shape[0]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    w = gen.multinomial(P, np.full(P, 1.0 / P), size=B).astype(np.float64)
    diff = values - baseline[:, None]
    a = (1 - level) / 2
    out = {"gain": diff.mean(0), "mean": values.mean(0)}
    out["gain_lo"], out["gain_hi"] = np.quantile(w @ diff / P, [a, 1 - a], axis=0)
    out["mean_lo"], out["mean_hi"] = np.quantile(w @ values / P, [a, 1 - a], axis=0)
    return {k: (float(v[0]) if scalar else v) for k, v in out.items()}
