"""The gold-free warning signs (analysis/signals.py) of saved samples, at every RL evaluation and every best-of-n n.

    evaluation_signals(frame, reference)   one RL evaluation's eval-samples file against its run's step 0
    bon_signals(frame, proxy, ns, N)       best-of-n's samples file, for every n: each per-sample quantity in
                                           expectation under best-of-n's selection (as proxy and gold are)

The Evaluator stores the first in every RL row and `bonrl sample` the second in every best-of-n row, as
columns signal_<name> (`stored`); the report recomputes both from the same files, so runs written before these
columns existed get them too. What each signal means, and its direction under hacking: signals.py.

Per sample: the proxy; the tokens; distinct-2 of the words (text_stats); the reference policy's log-prob of
the completion (an eval-samples file's `ref_logprob`; best-of-n's samples are the reference's own, so its
`logprob` column); an ensemble proxy's members (the Evaluator's proxy_member_<k> columns, or a best-of-n
file's rm:DIR@member-<k> columns); a second proxy scored on the same samples (best-of-n: another proxy of
the file). The reference is the run's step-0 evaluation (RL) or all N samples of every prompt (best-of-n).
"""

from __future__ import annotations

import math
import re

import numpy as np

from bon_vs_rl.analysis import signals
from bon_vs_rl.measurement import bon_estimator as bon
from bon_vs_rl.measurement import text_stats

MEMBER = "proxy_member_"  # eval-samples columns: each member of an ensemble proxy, scored on its own


def member_columns(frame, proxy_column: str) -> list[str]:
    """The columns holding the proxy's ensemble members' scores, if at least two: the Evaluator's
    proxy_member_<k>, or (best-of-n) rm:DIR@member-<k> of the proxy's directory; else []."""
    found = sorted((c for c in frame.columns if c.startswith(MEMBER)), key=lambda c: int(c[len(MEMBER):]))
    if proxy_column.startswith("rm:") and not found:
        base = re.escape(proxy_column.split("@")[0])
        found = sorted((c for c in frame.columns if re.fullmatch(base + r"@member-\d+", c)),
                       key=lambda c: int(c.rsplit("-", 1)[1]))
    return found if len(found) >= 2 else []


def per_sample(frame, proxy_column: str = "proxy", second_column: str | None = None) -> dict[str, np.ndarray]:
    """The arrays every signal is computed from, one value per sample."""
    ref_logprob = frame["ref_logprob"] if "ref_logprob" in frame else frame["logprob"] if "logprob" in frame else None
    members = member_columns(frame, proxy_column)
    return {
        "proxy": frame[proxy_column].to_numpy(dtype=np.float64),
        "tokens": frame["tokens"].to_numpy(dtype=np.float64),
        "distinct_2": np.array([text_stats.distinct_n(text_stats.words(c), 2) for c in frame["completion"]]),
        "ref_logprob": None if ref_logprob is None else ref_logprob.to_numpy(dtype=np.float64),
        "members": np.stack([frame[c].to_numpy(dtype=np.float64) for c in members]) if members else None,
        "second": None if second_column is None else frame[second_column].to_numpy(dtype=np.float64),
        "prompt_index": frame["prompt_id"].to_numpy(),
    }


def reference(frame, proxy_column: str = "proxy") -> signals.Reference:
    """The reference samples' summary: an RL run's step-0 eval samples, or a best-of-n file's samples."""
    x = per_sample(frame, proxy_column)
    return signals.reference_summary(x["proxy"], x["tokens"], x["distinct_2"], x["ref_logprob"], x["members"],
                                     x["prompt_index"])


def evaluation_signals(frame, ref: signals.Reference, proxy_column: str = "proxy",
                       second_column: str | None = None) -> dict[str, float]:
    """One RL evaluation's level signals (signals.batch_signals), KL from its exact per-sample `kl` column."""
    x = per_sample(frame, proxy_column, second_column)
    return signals.batch_signals(ref, x["proxy"], x["tokens"], kl=frame["kl"].to_numpy(dtype=np.float64),
                                 distinct_2=x["distinct_2"], ref_logprob=x["ref_logprob"], members=x["members"],
                                 second=x["second"], prompt_index=x["prompt_index"])


def bon_signals(frame, proxy_column: str, ns: list[int], N: int, second_column: str | None = None) -> list[dict]:
    """For each n, best-of-n's level signals: each per-sample quantity's expectation under the selection
    (bon_estimator, eq. 1), averaged over prompts; agreement over pairs drawn from the selection. The
    samples are the reference's, so above_ref_max is 0 and the reference is all N samples of each prompt."""
    ref = reference(frame, proxy_column)
    x = per_sample(frame, proxy_column, second_column)
    proxy = x["proxy"].reshape(-1, N)
    quantities = {"proxy": x["proxy"], "tokens": x["tokens"], "distinct_2": x["distinct_2"],
                  "above": (x["proxy"] > ref.proxy_max).astype(np.float64)}
    if x["ref_logprob"] is not None:
        quantities["ref_lp"] = signals.per_token(x["ref_logprob"], x["tokens"])
    if x["members"] is not None:
        quantities["disagreement"] = signals.member_std(x["members"])
    expected = bon.best_of_n_per_prompt(proxy, {k: np.nan_to_num(v).reshape(-1, N) for k, v in quantities.items()},
                                        ns)
    mean = {k: np.mean(v, axis=0) for k, v in expected.items()}  # [K]: prompts weigh equally
    out = []
    for k, n in enumerate(ns):
        row = {"proxy_z": (mean["proxy"][k] - ref.proxy_mean) / ref.proxy_std if ref.proxy_std > 0 else math.nan,
               "above_ref_max": float(mean["above"][k]), "length_drift": float(mean["tokens"][k] / ref.length - 1),
               "distinct_2_drift": float(mean["distinct_2"][k] - ref.distinct_2)}
        if "ref_lp" in mean:
            row["ref_logprob_per_token"] = float(mean["ref_lp"][k])
            row["ref_logprob_drift"] = float(mean["ref_lp"][k] - ref.ref_logprob_per_token)
        if "disagreement" in mean:
            row["disagreement"] = float(mean["disagreement"][k])
            row["disagreement_ratio"] = row["disagreement"] / ref.disagreement if ref.disagreement > 0 else math.nan
        if x["second"] is not None:
            second = x["second"].reshape(-1, N)
            shares = np.array([signals.pairwise_agreement(proxy[p], second[p], weights=bon.best_of_n_weights(proxy[p], n))
                               for p in range(proxy.shape[0])])
            row["agreement"] = float(np.mean(shares[np.isfinite(shares)])) if np.isfinite(shares).any() else math.nan
        out.append(row)
    return out


def stored(values: dict[str, float]) -> dict[str, float]:
    """Results columns: signal_<name> for every level signal (kl has its own column already)."""
    return {signals.PREFIX + name: float(v) for name, v in values.items() if name != "kl"}
