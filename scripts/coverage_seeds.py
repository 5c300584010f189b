"""Coverage of the seed-resampling choices in bon_vs_rl/analysis/statistics.py, for few replicate seeds.

Run from the repository root (about a minute on one core):

    OMP_NUM_THREADS=1 .venv/bin/python scripts/coverage_seeds.py
    OMP_NUM_THREADS=1 .venv/bin/python scripts/coverage_seeds.py --repeats 1000 --seeds 2,3,5,10

Simulation: one curve point measured by S training seeds on P shared prompts,
x[s, p] = a_p + u_s + e_sp with a_p ~ N(0, 1) (prompt difficulty), u_s ~ N(0, σ_u²) (the seed's
effect) and e_sp ~ N(0, 1) (that seed's sampling noise on that prompt); the true mean is 0. Each
repetition draws fresh data, resamples it B times with `resample_weights` and `seed_weights` through
`curve_replicates`, and asks whether the 95% percentile interval of the gain over a zero baseline
covers 0. Prints the coverage and mean width for each σ_u, S and `widen` choice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bon_vs_rl.analysis import statistics as st  # noqa: E402


def coverage(S: int, sigma_u: float, widen: str, repeats: int, B: int, P: int, rng) -> tuple[float, float]:
    hits, widths = 0, []
    baseline = st.Baseline(proxy=np.zeros(P), gold=np.zeros(P))
    for _ in range(repeats):
        x = rng.standard_normal(P)[None] + sigma_u * rng.standard_normal(S)[:, None] + rng.standard_normal((S, P))
        curve = st.CurveSamples("x", "rl", kl=x[..., None], proxy=x[..., None], gold=x[..., None])
        reps = st.curve_replicates(curve, baseline, st.resample_weights(P, B, rng),
                                   st.seed_weights(S, B, rng, widen=widen))
        lo, hi = st.interval(reps["gold_gain"][:, 0])
        hits += lo <= 0 <= hi
        widths.append(hi - lo)
    return hits / repeats, float(np.mean(widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--replicates", type=int, default=500)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", default="2,3,5")
    parser.add_argument("--sigma-u", default="0.05,0.15,0.5")
    parser.add_argument("--rng", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.rng)
    print("sigma_u  S  " + "  ".join(f"{w:>16}" for w in st.WIDEN) + "   (coverage / mean width)")
    for sigma_u in (float(v) for v in args.sigma_u.split(",")):
        for S in (int(v) for v in args.seeds.split(",")):
            cells = [coverage(S, sigma_u, w, args.repeats, args.replicates, args.prompts, rng) for w in st.WIDEN]
            print(f"{sigma_u:7.2f} {S:2d}  " + "  ".join(f"{c:7.3f} / {w:6.3f}" for c, w in cells), flush=True)


if __name__ == "__main__":
    main()
