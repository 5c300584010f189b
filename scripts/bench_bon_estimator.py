"""Time the vectorised best-of-n table against the one-prompt-one-n estimator.

Run from the repository root:

    .venv/bin/python scripts/bench_bon_estimator.py                      # 1,000 prompts x 65,536 samples
    .venv/bin/python scripts/bench_bon_estimator.py --prompts 100 --samples 4096   # a quick run

The big run times `best_of_n_table` (proxy and gold columns, every n = 1, 2, 4, ... up to the number
of samples) on synthetic bivariate-normal scores (ρ = 0.5); it needs about 1.5 GB of memory for the two
float64 arrays and working space. For comparison, both methods then run on a small problem
(--small-prompts x --small-samples): the table, and a Python loop calling `best_of_n_weights` per
prompt and per n, which is how one would write the estimator straight from the formula. The loop's
time for the big problem is extrapolated from its cost per (prompt, n) scaled by N: it would take too
long to run.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from bon_vs_rl.measurement.bon_estimator import best_of_n_table, best_of_n_weights  # noqa: E402


def powers_of_two(num_samples: int) -> list[int]:
    return [1 << k for k in range(num_samples.bit_length()) if (1 << k) <= num_samples]


def synthetic_scores(prompts: int, samples: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Proxy and gold ~ N(0, [[1, ρ], [ρ, 1]]), built in place to hold only two [P, N] arrays."""
    rng = np.random.default_rng(seed)
    proxy = rng.standard_normal((prompts, samples))
    gold = rng.standard_normal((prompts, samples))
    gold *= math.sqrt(1.0 - rho**2)
    gold += rho * proxy
    return proxy, gold


def time_table(proxy: np.ndarray, gold: np.ndarray, ns: list[int], repeats: int) -> tuple[float, float, dict]:
    """Best wall-clock and CPU seconds over `repeats` runs (CPU time is the steadier on a shared machine)."""
    best_wall, best_cpu, table = math.inf, math.inf, {}
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        table = best_of_n_table(proxy, {"gold": gold}, ns)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, table


def time_loop(proxy: np.ndarray, gold: np.ndarray, ns: list[int]) -> tuple[float, float, np.ndarray]:
    wall, cpu = time.perf_counter(), time.process_time()
    per_prompt = np.array([[best_of_n_weights(proxy[p], n) @ gold[p] for n in ns] for p in range(proxy.shape[0])])
    return time.perf_counter() - wall, time.process_time() - cpu, per_prompt.mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=65536, help="samples per prompt, N")
    parser.add_argument("--small-prompts", type=int, default=100)
    parser.add_argument("--small-samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many timings of the big table")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []  # (label, prompts, samples, number of n, wall seconds, CPU seconds)

    # The small problem: both methods, and a check that they agree.
    ns_small = powers_of_two(args.small_samples)
    proxy, gold = synthetic_scores(args.small_prompts, args.small_samples, 0.5, args.seed)
    t_table_small, c_table_small, table = time_table(proxy, gold, ns_small, repeats=3)
    t_loop_small, c_loop_small, loop_gold = time_loop(proxy, gold, ns_small)
    gap = float(np.max(np.abs(table["gold_mean"] - loop_gold)))
    small = (args.small_prompts, args.small_samples, len(ns_small))
    rows.append(("table (vectorised)", *small, t_table_small, c_table_small))
    rows.append(("loop of best_of_n_weights", *small, t_loop_small, c_loop_small))

    # The big problem: the table only.
    ns = powers_of_two(args.samples)
    t0 = time.perf_counter()
    proxy, gold = synthetic_scores(args.prompts, args.samples, 0.5, args.seed)
    t_data = time.perf_counter() - t0
    t_table, c_table, table = time_table(proxy, gold, ns, repeats=args.repeats)
    big = (args.prompts, args.samples, len(ns))
    rows.append(("table (vectorised)", *big, t_table, c_table))
    scale = (args.prompts * len(ns) * args.samples) / (args.small_prompts * len(ns_small) * args.small_samples)
    t_loop_est = t_loop_small * scale  # linear in prompts x n x N (the sort's log N ignored)
    rows.append(("loop, extrapolated", *big, t_loop_est, c_loop_small * scale))

    print(f"{'method':<28} {'prompts':>8} {'N':>7} {'#n':>4} {'wall s':>9} {'CPU s':>9} {'µs per prompt·n':>16}")
    for label, p, n_samples, k, wall, cpu in rows:
        print(f"{label:<28} {p:>8} {n_samples:>7} {k:>4} {wall:>9.3f} {cpu:>9.3f} {1e6 * wall / (p * k):>16.1f}")
    print(f"\nsmall problem: loop / table = {t_loop_small / t_table_small:.1f}x  (max |Δ gold mean| = {gap:.1e})")
    print(f"big problem:   extrapolated loop / table = {t_loop_est / t_table:.1f}x")
    print(f"(generating the big synthetic data took {t_data:.2f} s, not counted)")
    print("\nbest-of-n on the big problem (ρ = 0.5): n, KL, proxy, gold")
    for k in range(0, len(ns), max(1, len(ns) // 6)):
        print(
            f"  n={table['n'][k]:<6} KL={table['kl_analytic'][k]:6.3f}  "
            f"proxy={table['proxy_mean'][k]:6.3f} ± {table['proxy_se'][k]:.3f}  "
            f"gold={table['gold_mean'][k]:6.3f} ± {table['gold_se'][k]:.3f}"
        )


if __name__ == "__main__":
    main()
