"""Does the vader-fluent gold agree with VADER on ordinary text, and part from it on degenerate text?

    python scripts/gold_agreement.py SAMPLES.parquet [SAMPLES.parquet ...]

Each file is a saved samples file (`bonrl sample`'s samples.parquet: the reference policy's own samples, or an
RL run's eval_samples/step-NNNNNN.parquet). For each, both golds are computed from the completions: VADER's
compound and vader-fluent (bon_vs_rl/measurement/scorers.py), and printed: their Pearson and Spearman
correlations with 95% intervals from resampling prompts (2,000 resamples), the mean of each, the share of
samples where vader-fluent is below VADER by more than 0.5, and the three samples where they differ most.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from bon_vs_rl.measurement import scorers

B = 2000


def weighted_corr(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    cov = np.average((x - mx) * (y - my), weights=w)
    return float(cov / np.sqrt(np.average((x - mx) ** 2, weights=w) * np.average((y - my) ** 2, weights=w)))


def agreement(frame: pd.DataFrame, rng: np.random.Generator) -> dict:
    analyzer = SentimentIntensityAnalyzer()
    vader = np.array([analyzer.polarity_scores(c)["compound"] for c in frame["completion"]])
    fluent = np.asarray(scorers.load_scorer("vader-fluent")(["" ] * len(frame), frame["completion"].tolist()))
    ids, inverse = np.unique(frame["prompt_id"].to_numpy(), return_inverse=True)
    ranks = rankdata(vader), rankdata(fluent)
    out = {"samples": len(frame), "prompts": len(ids), "vader_mean": vader.mean(), "fluent_mean": fluent.mean(),
           "share_below_by_0.5": float(np.mean(fluent < vader - 0.5))}
    for name, (x, y) in {"pearson": (vader, fluent), "spearman": ranks}.items():
        out[name] = weighted_corr(x, y, np.ones(len(x)))
        draws = []
        for _ in range(B):
            counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)))
            w = counts[inverse].astype(float)
            draws.append(weighted_corr(x, y, w) if np.ptp(x[w > 0]) > 0 and np.ptp(y[w > 0]) > 0 else np.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = np.nanquantile(draws, [0.025, 0.975])
    gap = vader - fluent
    out["most_apart"] = [(frame["completion"].iloc[i].strip(), round(vader[i], 3), round(fluent[i], 3))
                         for i in np.argsort(-gap)[:3]]
    return out


def main(paths: list[str]) -> None:
    rng = np.random.default_rng(0)
    for path in paths:
        a = agreement(pd.read_parquet(path), rng)
        print(f"{path}: {a['samples']} samples, {a['prompts']} prompts")
        print(f"  Pearson {a['pearson']:.3f} [{a['pearson_lo']:.3f}, {a['pearson_hi']:.3f}], Spearman "
              f"{a['spearman']:.3f} [{a['spearman_lo']:.3f}, {a['spearman_hi']:.3f}]; mean VADER "
              f"{a['vader_mean']:.3f}, vader-fluent {a['fluent_mean']:.3f}; vader-fluent below VADER by > 0.5: "
              f"{100 * a['share_below_by_0.5']:.1f}%")
        for text, v, f in a["most_apart"]:
            print(f"    VADER {v:+.3f}  vader-fluent {f:+.3f}  {text[:90]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
