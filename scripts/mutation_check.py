"""Plant realistic bugs one at a time and see whether the fast-tier tests catch them.

    python scripts/mutation_check.py                  # every mutant, its targeted fast-tier tests (~15 min idle)
    python scripts/mutation_check.py --list           # the mutants, no run
    python scripts/mutation_check.py --only ppo-done-mask,tilted-global-max
    python scripts/mutation_check.py --wide           # each mutant against whole test files, not -k selections
    python scripts/mutation_check.py --baseline       # first check the unmutated code passes every selection

Each mutant is one exact search/replace edit of one file of bon_vs_rl/ (the search text must occur exactly
once: a mutant whose text moved is reported STALE, not silently skipped). The package is copied to a temporary
directory, the edit applied there, and pytest runs the mutant's test selection (never the slow tier: `-m "not
slow"`) with PYTHONPATH pointing at the copy, so the working tree is never touched and subprocesses the tests
start import the mutant too. A mutant is CAUGHT when pytest exits non-zero (a failure or an error), MISSED when
the selection passes. Selections are the tests written for the behaviour (`-k`), which keeps the whole run to
minutes on two shared cores; --wide runs the whole files instead.

The list: the bugs named in issue 25 (a mutation run there planted 49; this file is a reconstruction, not that
list) plus others worth planting across statistics, findings, fits, tilted, bon_estimator, ppo, trl_rl,
scaling, lab, reward_model and scorers. Exit status 1 when any mutant is missed or stale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    name: str
    file: str  # relative to bon_vs_rl/
    search: str
    replace: str
    tests: tuple[str, ...]  # test files (tests/...), each optionally "file::-k expression"
    why: str = ""


def m(name, file, search, replace, *tests, why=""):
    return Mutant(name, file, search, replace, tuple(tests), why)


MUTANTS = [
    # ---- tilted.py: the KL-regularized optimum from reference samples
    m("tilted-global-max", "methods/tilted.py", "centred = proxy - proxy.max(axis=1, keepdims=True)",
      "centred = proxy - proxy.max()", "test_tilted.py::each_prompt or small_beta", why="issue 25 item 1"),
    m("tilted-kl-no-log-n", "methods/tilted.py", "+ math.log(N), 0.0)", ", 0.0)", "test_tilted.py::closed_form or discrete"),
    m("tilted-ess-sum-w", "methods/tilted.py", '1.0 / np.einsum("pn,pn->p", w, w)', '1.0 / w.max(axis=1)',
      "test_tilted.py::ess or discrete"),
    m("tilted-low-ess-flag", "methods/tilted.py", '"low_ess": int(ess.mean() < LOW_ESS)', '"low_ess": int(ess.min() < LOW_ESS)',
      "test_tilted.py::low_ess"),
    # ---- analysis/fits.py: Gao et al.'s forms
    m("fits-bon-vertex", "analysis/fits.py", "        if alpha <= 0:  # the vertex", "        if alpha < -1e9:  # the vertex",
      "test_fits.py::falls_from", why="issue 25 item 2"),
    m("fits-dof-counts-kl0", "analysis/fits.py", "    dof = n_pos - 2", "    dof = n - 2",
      "test_fits.py::degrees_of_freedom or curve_fit"),
    m("fits-rl-peak", "analysis/fits.py", "    exponent = alpha / beta - 1", "    exponent = alpha / beta + 1",
      "test_fits.py::rl_"),
    m("fits-relative-to-max-kl", "analysis/fits.py", "at_min = ok & (kl == kl[ok].min())", "at_min = ok & (kl == kl[ok].max())",
      "test_fits.py::relative_to_initial"),
    # ---- analysis/statistics.py: resampling, intervals, refits, matched comparisons
    m("stats-peaks-vertex", "analysis/statistics.py", "d_star = np.maximum(alpha / (2 * safe_beta), 0.0)",
      "d_star = alpha / (2 * safe_beta)", "test_statistics.py::falling_from", why="issue 25 item 2"),
    m("stats-resample-p-minus-1", "analysis/statistics.py",
      "return _generator(rng).multinomial(P, np.full(P, 1.0 / P), size=B)",
      "return _generator(rng).multinomial(P - 1, np.full(P, 1.0 / P), size=B)",
      "test_bon_estimator.py::exactly_p_prompts", "test_statistics.py::accuracy_interval or paired", why="item 13"),
    m("stats-interval-tail", "analysis/statistics.py", "    a = (1.0 - level) / 2.0\n    with np.errstate(divide",
      "    a = (1.0 - level) / 4.0\n    with np.errstate(divide", "test_statistics.py::numpy_and_nan"),
    m("stats-seed-t-dof", "analysis/statistics.py", "gen.chisquare(S - 1, size=(B, 1))", "gen.chisquare(S, size=(B, 1))",
      "test_statistics.py::seed"),
    m("stats-unpaired-baseline", "analysis/statistics.py", 'out["gold_gain"] = out["gold"] - (w @ baseline.gold)[:, None]',
      'out["gold_gain"] = out["gold"] - baseline.gold.mean()', "test_statistics.py::paired or unit_weights"),
    m("stats-along-strict", "analysis/statistics.py", "reached = x >= level - tolerance", "reached = x > level + tolerance",
      "test_statistics.py::along or rounding"),
    m("stats-verdict-direction", "analysis/statistics.py",
      'return ("ahead" if (lo > 0) == higher_is_better else "behind"), math.nan',
      'return ("ahead" if lo > 0 else "behind"), math.nan', "test_statistics.py::verdict"),
    m("stats-accuracy-pairs", "analysis/statistics.py", "_, index = np.unique(groups, return_inverse=True)",
      "index = np.arange(groups.size)", "test_statistics.py::accuracy_interval", why="item 8"),
    m("stats-fit-quality-se", "analysis/statistics.py", "se_ratio=rmse / se if se > 0 else math.nan",
      "se_ratio=rmse / se**2 if se > 0 else math.nan", "test_statistics.py::goodness", why="item 7"),
    m("stats-kl-not-on-sqrt-axis", "analysis/statistics.py",
      'return np.sqrt(np.clip(values, 0.0, None)) if name == "kl" else values', "return values",
      "test_statistics.py::sqrt_kl"),
    # ---- analysis/findings.py: panels, peaks, trends, proxies
    m("findings-fall-pointwise", "analysis/findings.py",
      "above = np.quantile(np.max(centred, axis=1), 1 - a) if np.isfinite(centred).all() else math.nan",
      "above = np.quantile(centred[:, int(np.argmax(falls))], 1 - a) if np.isfinite(centred).all() else math.nan",
      "test_statistics.py::really_falls or measured_peak", why="item 5: a plain percentile interval"),
    m("findings-fall-sign", "analysis/findings.py", "falls = gold[earlier] - gold[last]  # [k]",
      "falls = gold[last] - gold[earlier]  # [k]", "test_statistics.py::measured_peak or really_falls"),
    m("findings-trend-t-dof", "analysis/findings.py", "stats.t.ppf(1 - (1 - level) / 2, J - 2)",
      "stats.t.ppf(1 - (1 - level) / 2, J - 1)", "test_statistics.py::linregress", why="item 11"),
    m("findings-trend-uncentred", "analysis/findings.py", "slope = (y * xc).sum(axis=-1) / (xc * xc).sum()",
      "slope = (y * xc).sum(axis=-1) / (x * x).sum()", "test_statistics.py::linregress or trend"),
    m("findings-peak-status-lo", "analysis/findings.py", 'return "inside" if hi <= kl_max else "extrapolated"',
      'return "inside" if lo <= kl_max else "extrapolated"', "test_statistics.py::measured_peak_by_hand"),
    m("findings-power-plant-sign", "analysis/findings.py", "means[:-1].max() - means[-1] - fall",
      "means[:-1].max() - means[-1] + fall", "test_statistics.py::peak_power", why="item 5"),
    m("findings-members-first-only", "analysis/findings.py",
      "rep_b = np.mean(np.stack([r for _, r in per_curve[1:]]), axis=0)", "rep_b = per_curve[1][1]",
      "test_statistics.py::compare_proxies"),
    m("findings-target-includes-zero", "analysis/findings.py",
      "candidates = np.unique(candidates[np.isfinite(candidates) & (candidates > 0)])[::-1]",
      "candidates = np.unique(candidates[np.isfinite(candidates)])[::-1]", "test_statistics.py::default_targets",
      why="item 14"),
    m("findings-open-shares", "analysis/findings.py", '"no_peak": float(np.mean(beta <= 0))',
      '"no_peak": float(np.mean(beta < 0))', "test_statistics.py::says_why", why="item 2"),
    # ---- measurement/bon_estimator.py
    m("bon-kl-analytic", "measurement/bon_estimator.py", "kl = np.log(arr) - (arr - 1.0) / arr", "kl = np.log(arr) - 1.0 / arr",
      "test_bon_estimator.py::kl"),
    m("bon-rank-weights-off-by-one", "measurement/bon_estimator.py", "i = np.arange(n, N + 1, dtype=np.float64)",
      "i = np.arange(n + 1, N + 2, dtype=np.float64)", "test_bon_estimator.py::weights or brute"),
    m("bon-table-se-ddof", "measurement/bon_estimator.py", "E.std(axis=0, ddof=1) / math.sqrt(P)",
      "E.std(axis=0, ddof=0) / math.sqrt(P)", "test_bon_estimator.py::table"),
    m("bon-table-resample-p-minus-1", "measurement/bon_estimator.py",
      "counts = gen.multinomial(P, np.full(P, 1.0 / P), size=bootstrap)",
      "counts = gen.multinomial(P - 1, np.full(P, 1.0 / P), size=bootstrap)", "test_bon_estimator.py::exactly_p_prompts",
      why="item 13"),
    # ---- methods/ppo.py
    m("ppo-done-mask", "methods/ppo.py", "old_values.append(values.float() * part.completion_mask)",
      "old_values.append(values.float())", "test_ppo.py::gives_gae", why="item 9"),
    m("ppo-kl-penalty-sign", "methods/ppo.py", "    rewards = -beta * kl_tokens", "    rewards = beta * kl_tokens",
      "test_ppo.py::gives_gae or kl_penalty_rewards", why="item 9"),
    m("ppo-kl-tokens-reversed", "methods/ppo.py", "kl_tokens = (old_logprobs - ref_logprobs) * mask",
      "kl_tokens = (ref_logprobs - old_logprobs) * mask", "test_ppo.py::gives_gae", why="item 9"),
    m("ppo-approx-kl-k1", "methods/ppo.py", "masked_mean((pg.ratio - 1) - pg.log_ratio, part_mask)",
      "masked_mean(-pg.log_ratio, part_mask)", "test_ppo.py::k3_estimate", why="item 11"),
    m("ppo-beta-raw-whitening", "methods/ppo.py", "state.score_scale = gain / (state.scores.std + 1e-8)",
      "state.score_scale = gain * (state.scores.std + 1e-8)", "test_ppo.py::records_its_raw_beta", why="item 11"),
    m("ppo-gae-no-gamma", "methods/ppo.py", "delta = rewards[:, t] + gamma * next_value - values[:, t]",
      "delta = rewards[:, t] + next_value - values[:, t]", "test_ppo.py::gae"),
    m("ppo-clip-min", "methods/ppo.py", "loss = masked_mean(torch.max(pg_unclipped, pg_clipped), mask)",
      "loss = masked_mean(torch.min(pg_unclipped, pg_clipped), mask)", "test_ppo.py::clipped_policy_loss"),
    m("ppo-kl-controller-sign", "methods/ppo.py", "error = float(np.clip(kl / self.target - 1.0, -0.2, 0.2))",
      "error = float(np.clip(1.0 - kl / self.target, -0.2, 0.2))", "test_ppo.py::adaptive_kl"),
    m("ppo-normalization-bias", "methods/ppo.py", "return 1.0 / std, -float(scores.mean()) / std",
      "return 1.0 / std, float(scores.mean()) / std", "test_ppo.py::normalization"),
    # ---- methods/trl_rl.py
    m("trl-beta-dropped", "methods/trl_rl.py", "top_k=cfg.top_k, top_p=cfg.top_p, beta=cfg.beta,",
      "top_k=cfg.top_k, top_p=cfg.top_p, beta=0.0,", "test_trl_rl.py::shared_evaluation and rloo", why="item 10"),
    m("trl-reward-negated", "methods/trl_rl.py", "        return [float(s) for s in scores]",
      "        return [-float(s) for s in scores]", "test_trl_rl.py::reward_is_the_proxy", why="item 10"),
    # ---- report/scaling.py
    m("scaling-per-doubling", "report/scaling.py", "    return value * math.log(2)", "    return value / math.log(2)",
      "test_scaling.py::recovers_a_slope", why="item 11"),
    m("scaling-two-proxy-trend", "report/scaling.py", "MIN_TREND_PROXIES = 3", "MIN_TREND_PROXIES = 2",
      "test_scaling.py::convex", why="item 4"),
    m("scaling-power-when-resolved", "report/scaling.py",
      'power = panel.analysis.peak_power(c.label) if not peak["resolved"] else {}',
      'power = panel.analysis.peak_power(c.label) if peak["resolved"] else {}', "test_scaling.py::recovers_a_slope",
      why="item 5"),
    # ---- methods/lab.py
    m("lab-gold-gap-sign", "methods/lab.py", '"gold_gap": optimum["gold"] - point["gold"]}',
      '"gold_gap": point["gold"] - optimum["gold"]}', "test_lab.py::gold_gap", why="item 12"),
    m("lab-optimum-limit", "methods/lab.py",
      'optimum_gold_limit=math.sqrt(2 * limit["kl"]) / math.sqrt(1 + scale**2))',
      'optimum_gold_limit=math.sqrt(2 * limit["kl"]) / (1 + scale**2))', "test_lab.py::gold_gap", why="item 12"),
    m("lab-tilted-limit-kl", "methods/lab.py", 'return {"kl": variance / (2 * beta**2), "proxy": variance / beta',
      'return {"kl": variance / beta**2, "proxy": variance / beta', "test_lab.py::closed_forms"),
    # ---- methods/reward_model.py and measurement/scorers.py
    m("rm-flips-follow-training-seed", "methods/reward_model.py",
      "np.random.default_rng(_seed(data_seed(cfg), 20_000)))", "np.random.default_rng(_seed(cfg.seed, 20_000)))",
      "test_reward_model.py::nested_subsets", why="item 13"),
    m("rm-subsets-not-nested", "methods/reward_model.py", "np.random.default_rng(_seed(data_seed(cfg), 30_000))",
      "np.random.default_rng(_seed(data_seed(cfg), 30_000 + cfg.pairs))", "test_reward_model.py::nested_subsets"),
    m("scorers-tie-counts-one", "measurement/scorers.py",
      "return (proxy_chosen > proxy_rejected) + 0.5 * (proxy_chosen == proxy_rejected)",
      "return (proxy_chosen >= proxy_rejected) + 0.0 * (proxy_chosen == proxy_rejected)",
      "test_scaling.py::ensemble_reads"),
    m("scorers-mean-std-sign", "measurement/scorers.py", "return scores.mean(axis=0) - value * scores.std(axis=0)",
      "return scores.mean(axis=0) + value * scores.std(axis=0)", "test_scorers.py::aggregat"),
    m("scorers-accuracy-no-interval", "measurement/scorers.py",
      'lo, hi = statistics.accuracy_interval(pair_scores(proxy_chosen, proxy_rejected), prompts)',
      'lo, hi = statistics.accuracy_interval(pair_scores(proxy_chosen, proxy_rejected), range(len(proxy_chosen)))',
      "test_scaling.py::ensemble_reads", why="item 8"),
    m("rm-accuracy-pairs-as-prompts", "methods/reward_model.py", 'prompts = pairs["prompt_id"].to_numpy()',
      "prompts = np.arange(len(pairs))", "test_reward_model.py::learns_the_toy", why="item 8"),
    m("scaling-row-accuracy-bounds", "report/scaling.py",
      '"accuracy_lo": row.get("accuracy_lo") if not aggregation',
      '"accuracy_lo": row.get("accuracy") if not aggregation', "test_scaling.py::ensemble_reads", why="item 8"),
    m("stats-fit-quality-r2", "analysis/statistics.py", "spread = float(np.sum((gain[ok] - gain[ok].mean()) ** 2))",
      "spread = float(np.sum(gain[ok] ** 2))", "test_statistics.py::goodness", why="item 7"),
    m("findings-power-quantile", "analysis/findings.py", "fall_80=float(np.quantile(thresholds, 0.8))",
      "fall_80=float(np.quantile(thresholds, 0.2))", "test_statistics.py::peak_power", why="item 5"),
    m("words-multiplicity-rate", "report/words.py", "about {count / 20:.1f} of them", "about {count / 40:.1f} of them",
      "test_report.py::matched_kl_comparison", why="item 6"),
    m("scaling-noisy-vs-noisy", "report/scaling.py", "for clean in (s for s in singles if s.label_noise == 0 and",
      "for clean in (s for s in singles if s.label_noise >= 0 and", "test_scaling.py::ensemble_reads or noise"),
]


def selection(tests: tuple[str, ...], wide: bool) -> list[list[str]]:
    """pytest argument lists, one per test file of the mutant (each run until its first failure)."""
    out = []
    for spec in tests:
        file, _, expression = spec.partition("::")
        args = [str(REPO / "tests" / file)]
        if expression and not wide:
            args += ["-k", expression]
        out.append(args)
    return out


def run_pytest(package_root: Path, args: list[str], timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
               "-m", "not slow", *args]
    try:
        # cwd is the package's root: `python -m` puts the working directory first on sys.path, so run from
        # the repository it would import the unmutated package.
        done = subprocess.run(command, cwd=package_root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode, lines[-1] if lines else ""


def check(mutant: Mutant, wide: bool, timeout: float) -> tuple[str, str]:
    source = REPO / "bon_vs_rl" / mutant.file
    text = source.read_text()
    if text.count(mutant.search) != 1:
        return "STALE", f"search text found {text.count(mutant.search)} times in {mutant.file}"
    with tempfile.TemporaryDirectory(prefix="bonrl-mutant-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "bon_vs_rl", root / "bon_vs_rl", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "bon_vs_rl" / mutant.file).write_text(text.replace(mutant.search, mutant.replace))
        for args in selection(mutant.tests, wide):
            code, last = run_pytest(root, args, timeout)
            if code == 5:
                return "EMPTY", f"no test selected by {args[-1]!r}"
            if code != 0:
                return "CAUGHT", last
    return "MISSED", last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--wide", action="store_true", help="whole test files instead of -k selections")
    parser.add_argument("--baseline", action="store_true", help="first run every selection on the unmutated code")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run (a timeout counts as caught)")
    args = parser.parse_args()
    mutants = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {x.name for x in MUTANTS}
        if unknown:
            parser.error(f"--only: unknown mutant(s) {', '.join(sorted(unknown))}; see --list")
        mutants = [x for x in MUTANTS if x.name in wanted]
    if args.list:
        for x in mutants:
            print(f"{x.name:32s} {x.file:30s} {' | '.join(x.tests)}" + (f"   [{x.why}]" if x.why else ""))
        return 0
    if args.baseline:
        for spec in dict.fromkeys(t for x in mutants for t in x.tests):
            for pytest_args in selection((spec,), args.wide):
                code, last = run_pytest(REPO, pytest_args, args.timeout)
                print(f"baseline {spec}: {'ok' if code == 0 else f'FAILS ({last})'}", flush=True)
                if code != 0:
                    return 2
    counts: dict[str, int] = {}
    start = time.perf_counter()
    for i, mutant in enumerate(mutants, 1):
        t0 = time.perf_counter()
        verdict, detail = check(mutant, args.wide, args.timeout)
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"[{i:2d}/{len(mutants)}] {verdict:6s} {mutant.name:32s} {time.perf_counter() - t0:5.0f} s  {detail}",
              flush=True)
    total = time.perf_counter() - start
    print(f"\n{counts.get('CAUGHT', 0)} of {len(mutants)} mutants caught"
          + "".join(f", {counts[k]} {k.lower()}" for k in ("MISSED", "STALE", "EMPTY") if counts.get(k))
          + f" ({total / 60:.1f} min)")
    return 0 if counts.get("CAUGHT", 0) == len(mutants) else 1


if __name__ == "__main__":
    sys.exit(main())
