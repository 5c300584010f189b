"""Gold-free warning signs (analysis/signals.py): each against an independent computation, and the rules."""

import math

import numpy as np
import pytest
from scipy import stats

from bon_vs_rl.analysis import signals


def test_spearman_with_ties_equals_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.normal(0, 2, 40)
    assert signals.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(signals.spearman(np.ones(5), np.arange(5.0)))


def test_prompt_mean_weighs_prompts_equally():
    values = np.array([1.0, 1.0, 1.0, 4.0])  # prompt 0 has three samples, prompt 1 one
    assert signals.prompt_mean(values, np.array([0, 0, 0, 1])) == pytest.approx(2.5)
    assert signals.prompt_mean(values) == pytest.approx(1.75)


def test_batch_signals_against_a_hand_computed_example():
    # Reference: proxies 0, 1, 2, 3 (mean 1.5, std 1.2910, max 3), lengths 4, 4, 8, 8, distinct-2 1, 1, 1, 0.5,
    # reference log-probs summed -8, -8, -16, -16 (-2 per token), members std 0.5 on every sample.
    ref = signals.reference_summary([0, 1, 2, 3], [4, 4, 8, 8], distinct_2=[1, 1, 1, 0.5],
                                    ref_logprob=[-8, -8, -16, -16], members=[[0, 1, 2, 3], [1, 2, 3, 4]])
    assert (ref.proxy_mean, ref.proxy_max, ref.length, ref.distinct_2) == (1.5, 3.0, 6.0, 0.875)
    assert ref.proxy_std == pytest.approx(np.std([0, 1, 2, 3], ddof=1))
    assert (ref.ref_logprob_per_token, ref.disagreement) == (-2.0, 0.5)
    out = signals.batch_signals(ref, [2, 4, 5, 3], [6, 6, 12, 12], kl=[1, 2, 3, 6], distinct_2=[0.5, 0.5, 0.25, 0.25],
                                ref_logprob=[-18, -18, -36, -36], members=[[2, 4, 5, 3], [4, 6, 7, 5]],
                                second=[1, 2, 4, 3], prompt_index=[0, 0, 1, 1])
    assert out["proxy_z"] == pytest.approx((3.5 - 1.5) / np.std([0, 1, 2, 3], ddof=1))
    assert out["above_ref_max"] == 0.5  # 4 and 5 exceed 3; 3 itself does not
    assert out["length_drift"] == pytest.approx(9 / 6 - 1)
    assert out["kl"] == 3.0
    assert out["distinct_2_drift"] == pytest.approx(0.375 - 0.875)
    assert (out["ref_logprob_per_token"], out["ref_logprob_drift"]) == (-3.0, -1.0)
    assert (out["disagreement"], out["disagreement_ratio"]) == (1.0, 2.0)
    assert out["agreement"] == 1.0  # both prompts' pairs ordered alike (2 < 4 and 1 < 2; 5 > 3 and 4 > 3)
    assert signals.pairwise_agreement([2, 4, 5, 3], [1, 2, 4, 3]) == pytest.approx(5 / 6)  # one pool: 5 of 6 pairs


def test_pairwise_agreement_counts_ties_half_and_weighs_pairs():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0])
    # pairs (1,2): tie in b -> 1/2; (1,3): a up, b down -> 0; (2,3): a up, b down -> 0
    assert signals.pairwise_agreement(a, b) == pytest.approx(0.5 / 3)
    w = np.array([0.0, 0.5, 0.5])  # only the pair (2, 3) has weight
    assert signals.pairwise_agreement(a, b, weights=w) == 0.0
    assert math.isnan(signals.pairwise_agreement(a, b, prompt_index=[0, 1, 2]))  # no prompt has a pair


def test_curve_signals_are_least_squares_slopes_over_the_window():
    rng = np.random.default_rng(1)
    kl, z, step = np.cumsum(rng.uniform(0.1, 1, 8)), rng.normal(size=8), np.arange(0, 80, 10)
    pair = signals.curve_signals(kl, z, step)  # window 2: consecutive difference quotients
    assert np.isnan(pair["gain_per_nat"][0]) and np.isnan(pair["kl_rate"][0])
    assert np.allclose(pair["gain_per_nat"][1:], np.diff(z) / np.diff(kl))
    assert np.allclose(pair["kl_rate"][1:], np.diff(kl) / 10)
    wide = signals.curve_signals(kl, z, step, window=4)
    assert np.allclose(wide["gain_per_nat"][3:], [np.polyfit(kl[k - 3:k + 1], z[k - 3:k + 1], 1)[0] for k in range(3, 8)])
    assert np.isnan(wide["gain_per_nat"][:3]).all()
    assert np.isnan(signals.curve_signals([1.0, 1.0], [0.0, 1.0])["gain_per_nat"][1])  # KL did not move


@pytest.mark.parametrize(("text", "value", "fires"), [
    ("above_ref_max > 0.5", 0.6, True), ("above_ref_max > 0.5", 0.5, False),
    ("distinct_2_drift < -0.1", -0.2, True), ("distinct_2_drift < -0.1", 0.0, False),
    ("|length_drift| > 0.5", -0.6, True), ("| length_drift | > 0.5", 0.4, False),
    ("kl > 1", math.nan, False),
])
def test_a_rule_fires_in_its_signals_direction(text, value, fires):
    assert signals.Rule.parse(text).fires(value) is fires


@pytest.mark.parametrize(("text", "message"), [
    ("above_ref_max < 0.5", "above_ref_max signals hacking when it rises; write above_ref_max > 0.5"),
    ("length_drift > 0.5", "length_drift signals hacking when it moves either way; write |length_drift| > 0.5"),
    ("gold > 1", "unknown signal 'gold'"),
    ("kl is big", "write SIGNAL > X, SIGNAL < X or |SIGNAL| > X"),
])
def test_a_rule_watching_the_wrong_way_or_an_unknown_signal_is_refused(text, message):
    with pytest.raises(ValueError, match=message.replace("|", r"\|")):
        signals.Rule.parse(text)


def test_first_firing_skips_the_reference_point():
    rule = signals.Rule.parse("kl > 1")
    assert signals.first_firing([5.0, 0.5, 2.0, 3.0], rule) == 2
    assert signals.first_firing([5.0, 0.5], rule) is None
    assert str(rule) == "kl > 1" and str(signals.Rule.parse("|length_drift|>0.25")) == "|length_drift| > 0.25"
