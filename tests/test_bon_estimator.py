"""The best-of-n estimator and the best-of-n KL formulas against independent oracles: enumeration of
every n-subset, big-integer binomials, the bivariate-normal best-of-n curve, and closed forms."""

import itertools
import math
import subprocess
import sys
from fractions import Fraction

import mpmath as mp  # 60-digit reference values; in the dev extra
import numpy as np
import pytest
from scipy import integrate, stats

from bon_vs_rl.measurement import bon_estimator as be
from bon_vs_rl.measurement.bon_estimator import (
    best_of_n_expectation,
    best_of_n_per_prompt,
    best_of_n_table,
    best_of_n_weights,
    kl_bon_analytic,
    kl_bon_beirami,
    kl_bon_beirami_from_logprob,
    kl_bon_exact,
    kl_bon_exact_empirical,
    kl_bon_tie_aware,
)

# --------------------------------------------------------------------------------------------------
# Oracles
# --------------------------------------------------------------------------------------------------


def brute_force_weights(proxy, n):
    """P(sample j is selected): every size-n subset equally likely, a tied maximum shared equally."""
    N = len(proxy)
    weights = [Fraction(0)] * N
    subsets = list(itertools.combinations(range(N), n))
    for subset in subsets:
        top = max(proxy[j] for j in subset)
        winners = [j for j in subset if proxy[j] == top]
        for j in winners:
            weights[j] += Fraction(1, len(winners) * len(subsets))
    return np.array([float(w) for w in weights])


def expected_max_std_normal(n):
    """E[max of n iid N(0, 1)] = ∫ x n φ(x) Φ(x)^(n-1) dx."""
    value, _ = integrate.quad(lambda x: x * n * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1), -np.inf, np.inf)
    return value


PROXIES_N7 = {
    "distinct": [0.3, -1.2, 2.5, 0.9, -0.4, 1.7, 0.0],
    "ties": [1.0, 3.0, 3.0, 0.0, 3.0, 1.0, 2.0],
    "tied bottom": [0.0, 0.0, 0.0, 5.0, 1.0, 2.0, 4.0],
    "all equal": [2.0] * 7,
}


# --------------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PROXIES_N7)
def test_weights_equal_enumeration_of_all_subsets(case):
    proxy = np.array(PROXIES_N7[case])
    for n in range(1, len(proxy) + 1):
        expected = brute_force_weights(list(proxy), n)
        got = best_of_n_weights(proxy, n)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=f"{case}, n={n}")
        assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_expectation_is_the_enumerated_mean_over_subsets():
    proxy = np.array(PROXIES_N7["ties"])
    gold = np.array([0.5, -2.0, 7.0, 1.0, 3.0, -1.0, 4.0])
    for n in range(1, 8):
        expected = float(brute_force_weights(list(proxy), n) @ gold)
        assert best_of_n_expectation(proxy, gold, n) == pytest.approx(expected, abs=1e-12)
    assert best_of_n_expectation(proxy, gold, 1) == pytest.approx(gold.mean(), abs=1e-12)


def test_weights_match_big_integer_binomials():
    # eq. (1) in exact arithmetic, N large enough for the log-gamma differences to matter
    N = 1000
    proxy = np.random.default_rng(1).permutation(N).astype(float)  # ranks in a shuffled order
    for n in (2, 37, 500, 999):
        total = math.comb(N, n)
        exact = np.array([float(Fraction(math.comb(int(r), n - 1), total)) for r in proxy])  # rank i-1 = r
        got = best_of_n_weights(proxy, n)
        big = exact > 1e-300
        np.testing.assert_allclose(got[big], exact[big], rtol=1e-9, atol=0, err_msg=f"n={n}")
        assert np.all(got[~big] < 1e-290)


def test_no_overflow_or_underflow_at_65536_samples():
    N = 65536
    proxy = np.random.default_rng(2).standard_normal(N)
    top = int(np.argmax(proxy))
    ranks = np.empty(N, dtype=int)
    ranks[np.argsort(proxy)] = np.arange(1, N + 1)
    for n in (1, 2, 64, N // 2, N - 1, N):
        w = best_of_n_weights(proxy, n)
        assert np.all(np.isfinite(w)) and np.all(w >= 0.0), n
        assert w.sum() == pytest.approx(1.0, abs=1e-12), n
        assert np.all(w[ranks < n] == 0.0), n  # ranks below n are never the best of n
    assert best_of_n_weights(proxy, N)[top] == 1.0
    np.testing.assert_allclose(best_of_n_weights(proxy, 1), 1.0 / N, rtol=1e-12)
    w2 = best_of_n_weights(proxy, 2)
    assert w2[top] == pytest.approx(2.0 / N, rel=1e-9)  # C(N-1, 1) / C(N, 2)
    assert w2[ranks == 2][0] == pytest.approx(1.0 / math.comb(N, 2), rel=1e-9)  # ~4.7e-10
    assert best_of_n_weights(proxy, N - 1)[top] == pytest.approx((N - 1) / N, rel=1e-12)


def tied_data(P, N, seed):
    """Proxy with ties in some prompts only, and two value columns."""
    rng = np.random.default_rng(seed)
    proxy = rng.standard_normal((P, N))
    proxy[::3] = np.round(proxy[::3] * 2) / 2  # every third prompt: a coarse, tied proxy
    proxy[min(1, P - 1), :] = 1.0  # one prompt all tied
    gold = 0.6 * proxy + rng.standard_normal((P, N))
    tokens = rng.integers(1, 50, size=(P, N)).astype(float)
    return proxy, {"gold": gold, "tokens": tokens}


@pytest.mark.parametrize("chunk_elements", [be._CHUNK_ELEMENTS, 20])  # 20: two prompts per chunk
def test_batch_matches_the_single_prompt_estimator(monkeypatch, chunk_elements):
    monkeypatch.setattr(be, "_CHUNK_ELEMENTS", chunk_elements)
    P, N = 11, 9
    proxy, columns = tied_data(P, N, seed=3)
    ns = list(range(1, N + 1))
    per_prompt = best_of_n_per_prompt(proxy, columns, ns)
    assert set(per_prompt) == {"proxy", "gold", "tokens"}
    for name, values in [("proxy", proxy), *columns.items()]:
        assert per_prompt[name].shape == (P, len(ns))
        for p in range(P):
            expected = [best_of_n_expectation(proxy[p], values[p], n) for n in ns]
            np.testing.assert_allclose(per_prompt[name][p], expected, rtol=1e-12, atol=1e-12, err_msg=f"{name} {p}")
    # the caller's arrays are not modified
    np.testing.assert_array_equal(columns["gold"], tied_data(P, N, seed=3)[1]["gold"])


def test_table_summarises_prompts():
    P, N = 30, 16
    proxy, columns = tied_data(P, N, seed=4)
    table = best_of_n_table(proxy, columns)  # default ns: powers of two up to N
    np.testing.assert_array_equal(table["n"], [1, 2, 4, 8, 16])
    np.testing.assert_allclose(table["kl_analytic"], [kl_bon_analytic(n) for n in (1, 2, 4, 8, 16)])
    per_prompt = best_of_n_per_prompt(proxy, columns)
    for name in ("proxy", "gold", "tokens"):
        np.testing.assert_allclose(table[f"{name}_mean"], per_prompt[name].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(table[f"{name}_se"], per_prompt[name].std(axis=0, ddof=1) / np.sqrt(P), rtol=1e-12)
        assert f"{name}_lo" not in table
    assert table["gold_mean"][0] == pytest.approx(columns["gold"].mean(), rel=1e-12)  # n = 1: the policy
    assert np.all(np.diff(table["proxy_mean"]) > 0)  # more samples, higher proxy


def test_table_bootstrap_is_seeded_and_brackets_the_mean():
    proxy, columns = tied_data(40, 16, seed=5)
    a = best_of_n_table(proxy, columns, [1, 4, 16], bootstrap=500, rng=0)
    b = best_of_n_table(proxy, columns, [1, 4, 16], bootstrap=500, rng=np.random.default_rng(0))
    c = best_of_n_table(proxy, columns, [1, 4, 16], bootstrap=500, rng=1)
    for name in ("proxy", "gold", "tokens"):
        np.testing.assert_array_equal(a[f"{name}_lo"], b[f"{name}_lo"])
        assert not np.array_equal(a[f"{name}_hi"], c[f"{name}_hi"])
        assert np.all(a[f"{name}_lo"] < a[f"{name}_mean"]) and np.all(a[f"{name}_mean"] < a[f"{name}_hi"])
        # a percentile interval of a mean of 40 prompts is about ±1.96 standard errors
        width = (a[f"{name}_hi"] - a[f"{name}_lo"]) / (2 * 1.96 * a[f"{name}_se"])
        assert np.all((width > 0.7) & (width < 1.3)), (name, width)


def test_a_bootstrap_resample_draws_exactly_p_prompts():
    """Each resample is P prompts drawn with replacement: a count row sums to P, so a column that is the same
    for every prompt has a resampled mean equal to that value in every resample (interval of zero width), in
    best-of-n's table and in the tilted optimum's rows that share its resamples."""
    from bon_vs_rl.analysis import statistics
    from bon_vs_rl.methods import tilted

    counts = statistics.resample_weights(37, 300, 0)
    assert np.all(counts.sum(axis=1) == 37) and np.all(counts >= 0) and np.all(counts == np.round(counts))
    assert counts.mean() == pytest.approx(1.0) and counts.std() > 0.5  # each prompt drawn once on average
    proxy = np.random.default_rng(2).normal(size=(37, 8))
    constant = {"gold": np.full((37, 8), 0.7)}
    table = best_of_n_table(proxy, constant, [1, 2, 8], bootstrap=300, rng=0)
    np.testing.assert_allclose(table["gold_lo"], 0.7, rtol=1e-12)
    np.testing.assert_allclose(table["gold_hi"], 0.7, rtol=1e-12)
    (row,) = tilted.tilted_rows(proxy, constant, [1.0], bootstrap=300, seed=0)
    assert (row["gold_lo"], row["gold_hi"]) == (pytest.approx(0.7, rel=1e-12), pytest.approx(0.7, rel=1e-12))


def test_table_single_prompt_has_nan_standard_error():
    proxy, columns = tied_data(1, 8, seed=6)
    table = best_of_n_table(proxy, columns, [1, 8])
    assert np.all(np.isnan(table["gold_se"]))
    assert np.all(np.isfinite(table["gold_mean"]))


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_bivariate_normal_best_of_n_gold_is_rho_times_expected_max(rho):
    # proxy, gold ~ N(0, [[1, ρ], [ρ, 1]]): E[gold | proxy] = ρ proxy, so best-of-n by proxy has
    # E[gold] = ρ E[max of n standard normals] and E[proxy] = E[max of n standard normals].
    P, N = 400, 64
    rng = np.random.default_rng(int(rho * 10) + 7)
    proxy = rng.standard_normal((P, N))
    gold = rho * proxy + math.sqrt(1 - rho**2) * rng.standard_normal((P, N))
    ns = [1, 2, 8, 32, 64]
    table = best_of_n_table(proxy, {"gold": gold}, ns)
    for k, n in enumerate(ns):
        e_max = expected_max_std_normal(n)
        for name, target in (("gold", rho * e_max), ("proxy", e_max)):
            mean, se = table[f"{name}_mean"][k], table[f"{name}_se"][k]
            assert se < 0.06, (name, n, se)  # tight enough to catch a biased estimator
            assert abs(mean - target) < 4 * se, (rho, n, name, mean, target, se)


def test_with_replacement_plugin_would_fail_the_oracle():
    # The oracle above has power: the plug-in F^n (n draws *with* replacement from the N samples) is
    # biased low at n = N and lands many standard errors from the truth.
    P, N, n = 400, 16, 16
    rng = np.random.default_rng(8)
    proxy = rng.standard_normal((P, N))
    ranks = np.arange(1, N + 1)
    plugin = (ranks / N) ** n - ((ranks - 1) / N) ** n
    est = np.sort(proxy, axis=1) @ plugin
    table = best_of_n_table(proxy, None, [n])
    e_max = expected_max_std_normal(n)
    assert abs(est.mean() - e_max) > 8 * est.std(ddof=1) / np.sqrt(P)
    assert abs(table["proxy_mean"][0] - e_max) < 4 * table["proxy_se"][0]


# --------------------------------------------------------------------------------------------------
# KL of best-of-n from the policy
# --------------------------------------------------------------------------------------------------


def test_kl_analytic():
    assert kl_bon_analytic(1) == 0.0
    assert kl_bon_analytic(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert kl_bon_analytic(64) == pytest.approx(3.1745, abs=1e-4)
    np.testing.assert_allclose(kl_bon_analytic(np.array([4, 16])), [math.log(4) - 0.75, math.log(16) - 15 / 16])


def test_kl_exact_uniform_reference_at_64():
    # π uniform over L outcomes, n = 64; values from 50-digit mpmath. (2.2934512 is 2.293 to three
    # decimals, and within 1e-3 of 2.294.)
    assert kl_bon_exact(np.full(2, 0.5), 64) == pytest.approx(0.6931471805599453, abs=1e-12)
    assert kl_bon_exact(np.full(10, 0.1), 64) == pytest.approx(2.2934512018617444, abs=1e-12)
    assert kl_bon_analytic(64) == pytest.approx(3.175, abs=1e-3)  # the analytic value overstates both


def test_kl_exact_equals_enumeration_of_n_tuples():
    # π_bon by brute force: every ordered n-tuple of iid draws, keep the highest outcome.
    p = np.array([0.1, 0.45, 0.05, 0.4])
    for n in (1, 2, 3, 5):
        bon = np.zeros(len(p))
        for tup in itertools.product(range(len(p)), repeat=n):
            bon[max(tup)] += np.prod(p[list(tup)])
        expected = float(np.sum(bon * np.log(bon / p)))
        assert kl_bon_exact(p, n) == pytest.approx(expected, abs=1e-12), n


def test_kl_exact_bounds_and_zero_mass_outcomes():
    rng = np.random.default_rng(9)
    for _ in range(20):
        p = rng.dirichlet(np.ones(rng.integers(2, 30)))
        for n in (1, 3, 64, 65536):
            kl = kl_bon_exact(p, n)
            assert 0.0 <= kl <= kl_bon_analytic(n) + 1e-12
            assert kl <= -math.log(p[-1]) + 1e-9  # π_bon -> point mass on the top outcome
        assert kl_bon_exact(p, 1) == pytest.approx(0.0, abs=1e-14)
    assert kl_bon_exact([0.5, 0.0, 0.5, 0.0], 7) == pytest.approx(kl_bon_exact([0.5, 0.5], 7), abs=1e-15)
    assert kl_bon_exact([1.0], 1000) == 0.0


def test_kl_exact_empirical_tends_to_analytic_without_ties():
    n, analytic = 16, kl_bon_analytic(16)
    gaps = []
    for N in (100, 1000, 10_000, 100_000):
        samples = np.random.default_rng(N).standard_normal(N)
        kl = kl_bon_exact_empirical(samples, n)
        assert kl == pytest.approx(kl_bon_exact(np.full(N, 1.0 / N), n), abs=1e-12)  # only the ranks matter
        gaps.append(analytic - kl)
    assert all(g > 0 for g in gaps) and gaps == sorted(gaps, reverse=True)
    assert gaps[0] > 1e-4 and gaps[-1] < 1e-8  # finite N is visibly below the analytic value


def test_kl_exact_empirical_merges_ties():
    proxy = np.array([0.2, 0.7, 0.2, 0.7, 0.2, 0.9])  # outcomes 0.2, 0.7, 0.9 with mass 3/6, 2/6, 1/6
    for n in (1, 2, 8, 100):  # n > N is allowed: n iid draws from the empirical distribution
        assert kl_bon_exact_empirical(proxy, n) == pytest.approx(kl_bon_exact([0.5, 1 / 3, 1 / 6], n), abs=1e-14)
    assert kl_bon_exact_empirical(proxy, 10_000) == pytest.approx(math.log(6), abs=1e-12)
    assert kl_bon_exact_empirical(np.ones(50), 64) == 0.0


def test_kl_tie_aware_is_the_analytic_value_without_ties_and_zero_when_all_tie():
    samples = np.random.default_rng(1).standard_normal(40)
    for n in (1, 2, 16, 64, 65536):
        assert kl_bon_tie_aware(samples, n) == kl_bon_analytic(n)
        assert kl_bon_tie_aware(np.full(40, 0.25), n) == 0.0


def test_kl_tie_aware_equals_exact_kl_when_every_outcome_is_an_atom():
    proxy = np.repeat([0.1, 0.4, 0.9], [4, 2, 6])  # every score repeated: a purely discrete reference
    for n in (1, 3, 50, 10_000):
        assert kl_bon_tie_aware(proxy, n) == pytest.approx(kl_bon_exact(np.array([4, 2, 6]) / 12, n), abs=1e-13)


@pytest.mark.parametrize("atom_at_top", [False, True])
def test_kl_tie_aware_converges_to_quadrature_for_an_atom_plus_continuous_reward(atom_at_top):
    """Reference reward: an atom of mass a (one repeated completion) and a continuous part. The exact
    KL of best-of-n is the atom's q log(q/a) plus the integral of the continuous log density ratio over
    the continuous part's CDF range, computed here by quadrature, independent of the estimator."""
    a, N = 0.3, 400_000
    rng = np.random.default_rng(7)
    is_atom = rng.random(N) < a
    continuous = rng.random(N)
    samples = np.where(is_atom, 5.0 if atom_at_top else -5.0, continuous)
    for n in (2, 8, 64):
        def log_ratio(u, n=n):
            return n * u ** (n - 1) * math.log(n * u ** (n - 1))
        if atom_at_top:  # continuous on F in (0, 1-a], atom on (1-a, 1]
            q = 1 - (1 - a) ** n
            exact = integrate.quad(log_ratio, 0, 1 - a)[0] + q * math.log(q / a)
        else:  # atom on (0, a], continuous on (a, 1]
            q = a**n
            exact = q * math.log(q / a) + integrate.quad(log_ratio, a, 1)[0]
        estimate = kl_bon_tie_aware(samples, n)
        assert estimate == pytest.approx(exact, rel=3e-3, abs=1e-4)
        assert estimate <= kl_bon_analytic(n) + 1e-12  # ties only ever lower the KL


EPS_GRID = np.concatenate([np.logspace(-300, -1, 300), np.linspace(0.1, 1.0, 91)])
N_GRID = [1, 2, 3, 7, 64, 1000, 65536, 10**9]


def test_kl_beirami_lies_between_zero_and_analytic():
    for n in N_GRID:
        raw = kl_bon_beirami(EPS_GRID, n, clip=False)
        analytic = kl_bon_analytic(n)
        assert np.all(np.isfinite(raw))
        # the clipped excursions are rounding only
        assert raw.min() > -1e-13 and raw.max() < analytic + 1e-13, n
        clipped = kl_bon_beirami(EPS_GRID, n)
        assert np.all((clipped >= 0.0) & (clipped <= analytic)), n
        assert np.all(np.diff(clipped) <= 1e-12), n  # a likelier selected completion, a smaller KL


def test_kl_beirami_limits():
    for n in N_GRID:
        analytic = kl_bon_analytic(n)
        assert kl_bon_beirami(1.0, n) == 0.0
        assert kl_bon_beirami(0.0, n) == analytic
        assert kl_bon_beirami(1e-300, n) == pytest.approx(analytic, abs=1e-12)
        assert kl_bon_beirami_from_logprob(-800.0, n) == pytest.approx(analytic, abs=1e-12)
        assert kl_bon_beirami_from_logprob(-np.inf, n) == analytic
        # the gap to the analytic value closes like n ε
        gaps = [analytic - kl_bon_beirami(eps, n) for eps in (1e-4 / n, 1e-6 / n, 1e-8 / n)]
        assert gaps[0] >= gaps[1] - 1e-14 >= gaps[2] - 2e-14 and abs(gaps[2]) < 1e-6
    assert kl_bon_beirami(np.array([0.3, 1e-9]), 1).tolist() == [0.0, 0.0]  # best-of-1 is the policy


def test_kl_beirami_matches_high_precision_arithmetic():
    def reference(eps, n):
        with mp.workdps(60):
            eps, q = mp.mpf(eps), (1 - mp.mpf(eps)) ** n
            return q * (mp.log(n) + (n - 1) * mp.log(1 - eps) - mp.mpf(n - 1) / n) + (1 - q) * mp.log((1 - q) / eps)

    for n in (2, 64, 65536):
        for eps in (1e-20, 1e-15, 1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.5, 0.99, 1 - 1e-9):
            expected = float(reference(eps, n))
            assert kl_bon_beirami(eps, n) == pytest.approx(expected, rel=1e-12, abs=1e-14), (eps, n)
            assert kl_bon_beirami_from_logprob(math.log(eps), n) == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_kl_beirami_matches_the_naive_formula_where_it_is_accurate():
    eps = np.linspace(1e-3, 0.999, 200)
    for n in (2, 7, 64):
        q = (1 - eps) ** n
        naive = q * (np.log(n) + (n - 1) * np.log(1 - eps) - (n - 1) / n) + (1 - q) * np.log((1 - q) / eps)
        np.testing.assert_allclose(kl_bon_beirami(eps, n), naive, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(kl_bon_beirami_from_logprob(np.log(eps), n), naive, rtol=1e-10, atol=1e-13)
        # Beirami's estimate is the exact KL for a two-outcome reference [1-ε, ε] plus (1-ε)^n log n - (n-1)/n
        for e in (0.01, 0.3, 0.9):
            two_outcome = kl_bon_exact([1 - e, e], n) + (1 - e) ** n * kl_bon_analytic(n)
            assert kl_bon_beirami(e, n) == pytest.approx(two_outcome, abs=1e-12)


def test_kl_beirami_shapes_and_broadcasting():
    eps = np.full((3, 4), 0.01)
    assert kl_bon_beirami(eps, 8).shape == (3, 4)
    assert kl_bon_beirami_from_logprob(np.log(eps), 8).shape == (3, 4)
    assert isinstance(kl_bon_beirami(0.01, 8), float)
    by_n = kl_bon_beirami(0.01, np.array([1, 8, 64]))
    np.testing.assert_allclose(by_n, [kl_bon_beirami(0.01, n) for n in (1, 8, 64)])


# --------------------------------------------------------------------------------------------------
# Bad inputs, and a fast import
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: best_of_n_weights(np.arange(5.0), 0), "needs n >= 1, got n=0"),
        (lambda: best_of_n_weights(np.arange(5.0), 6), "n=6 needs at least n samples per prompt, got N=5"),
        (lambda: best_of_n_weights(np.arange(5.0), 2.5), "needs an integer n, got 2.5"),
        (lambda: best_of_n_weights(np.arange(5.0), True), "needs an integer n, got True"),
        (lambda: best_of_n_weights(np.zeros((2, 3)), 1), r"proxy_scores must have shape \[N\]"),
        (lambda: best_of_n_weights(np.array([]), 1), "proxy_scores is empty"),
        (lambda: best_of_n_weights(np.array([1.0, np.nan]), 1), "proxy_scores has a NaN or inf value"),
        (lambda: best_of_n_expectation(np.arange(5.0), np.arange(4.0), 2), r"values has shape \(4,\), proxy_scores"),
        (lambda: best_of_n_table(np.arange(5.0), None, [1]), r"proxy must have shape \[P, N\]"),
        (lambda: best_of_n_table(np.zeros((2, 5)), {"gold": np.zeros((2, 4))}, [1]), r"column 'gold' has shape \(2, 4\)"),
        (lambda: best_of_n_table(np.zeros((2, 5)), None, [0]), "needs n >= 1, got n=0"),
        (lambda: best_of_n_table(np.zeros((2, 5)), None, [6]), "n=6 needs at least n samples per prompt"),
        (lambda: best_of_n_table(np.zeros((2, 5)), None, []), "ns is empty"),
        (lambda: best_of_n_table(np.zeros((2, 5)), None, [1], bootstrap=-1), "bootstrap must be >= 0 resamples"),
        (lambda: best_of_n_table(np.array([[0.0, np.inf]]), None, [1]), r"proxy has a NaN or inf value \(prompt 0"),
        (lambda: best_of_n_table(np.zeros((1, 2)), {"gold": np.array([[0.0, np.nan]])}, [1]),
         r"column 'gold' has a NaN or inf value \(prompt 0"),
        (lambda: kl_bon_analytic(0), "needs n >= 1, got 0"),
        (lambda: kl_bon_beirami(1.5, 4), r"eps must be a probability in \[0, 1\]"),
        (lambda: kl_bon_beirami(-0.1, 4), r"eps must be a probability in \[0, 1\]"),
        (lambda: kl_bon_beirami(0.5, 0), "needs n >= 1, got 0"),
        (lambda: kl_bon_beirami_from_logprob(0.1, 4), "logp must be a log-probability"),
        (lambda: kl_bon_beirami_from_logprob(np.nan, 4), "logp must be a log-probability"),
        (lambda: kl_bon_exact([0.5, 0.6], 4), "reference_probs must sum to 1"),
        (lambda: kl_bon_exact([1.5, -0.5], 4), "reference_probs must be finite and non-negative"),
        (lambda: kl_bon_exact([], 4), "reference_probs must be a non-empty 1-D array"),
        (lambda: kl_bon_exact([1.0], 0), "needs n >= 1, got n=0"),
        (lambda: kl_bon_exact_empirical(np.array([1.0, np.inf]), 2), "proxy_scores has a NaN or inf value"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_import_is_light():
    code = (
        "import sys, bon_vs_rl.measurement.bon_estimator; "
        "heavy = [m for m in ('torch', 'scipy', 'pandas') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
