"""How far the tilted-optimum estimate falls short of the truth at a given effective sample size.

Run from the repository root (about a minute on one core):

    .venv/bin/python scripts/tilted_ess_bias.py

The Gaussian case has a closed form: gold V ~ N(0, 1), proxy U = V + X with X ~ N(0, 1), so under the
optimum π_β ∝ exp(U/β) the KL from the reference is var(U)/(2β²) = 1/β² and E_β[V] = 1/β. For N reference
samples per prompt (many prompts), the script finds the β at which the mean per-prompt ESS
(tilted.tilted_per_prompt) equals 10, 30 and 50, and prints the estimated KL and gold as fractions of the
truth there. The shortfall is a bias shared by every prompt (the tilt's mass beyond the largest of N
samples is missing), not noise: a standard error across prompts does not cover it. This is what
tilted.LOW_ESS is chosen from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bon_vs_rl.methods.tilted import tilted_per_prompt  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(2)
    variance = 2.0  # var(U) = 1 + error scale²
    print("target ESS      N      β   true KL   est/true KL   est/true gold")
    for target in (10, 30, 50):
        for N in (64, 256, 1024, 4096):
            prompts = max(200, 400_000 // N)
            gold = rng.normal(size=(prompts, N))
            proxy = gold + rng.normal(size=(prompts, N))
            lo, hi = np.log(0.05), np.log(50.0)  # bisection on log β: the ESS grows with β
            for _ in range(30):
                mid = (lo + hi) / 2
                ess = tilted_per_prompt(proxy, {"gold": gold}, [np.exp(mid)])["ess"].mean()
                lo, hi = (mid, hi) if ess < target else (lo, mid)
            beta = float(np.exp(hi))
            est = tilted_per_prompt(proxy, {"gold": gold}, [beta])
            kl_true = variance / (2 * beta**2)
            print(f"{target:10d} {N:6d} {beta:6.2f} {kl_true:9.2f} {est['kl'].mean() / kl_true:13.3f} "
                  f"{est['gold'].mean() * beta:15.3f}")


if __name__ == "__main__":
    main()
