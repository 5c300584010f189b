"""The gold-reward-vs-KL fits (Gao et al. 2022, sec. 3, eq. 1-2) against synthetic data with known α, β,
scipy's curve_fit as an independent oracle for the standard errors, and the closed-form peaks."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.optimize import curve_fit

from bon_vs_rl.analysis.fits import (
    Fit,
    FitRefused,
    fit_and_predict,
    fit_gold_vs_kl,
    relative_to_initial,
    unit_variance_scale,
)

# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------

BON = dict(alpha=1.0, beta=0.3)  # peak at d* = 1/0.6 ≈ 1.67, inside d ∈ [0, 3]
RL = dict(alpha=0.8, beta=0.2)  # peak at d* = e³ ≈ 20, far outside d ∈ (0, 8]
NOISE = 0.02


def r_bon(d, alpha, beta):
    return d * (alpha - beta * d)


def r_rl(d, alpha, beta):
    d = np.asarray(d, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1.0))), 0.0)


def bon_points(n=40, noise=NOISE, seed=0, **params):
    params = params or BON
    d = np.linspace(0.0, 3.0, n)
    gold = r_bon(d, **params) + np.random.default_rng(seed).normal(0.0, noise, n)
    return d**2, gold


def rl_points(n=40, noise=NOISE, seed=0, **params):
    params = params or RL
    d = np.linspace(0.0, 8.0, n + 1)[1:]  # d ∈ (0, 8]
    gold = r_rl(d, **params) + np.random.default_rng(seed).normal(0.0, noise, n)
    return d**2, gold


def assert_recovered(fit, alpha, beta, n_se=4.0, atol=0.05):
    """Within a few standard errors *and* an absolute tolerance (so a huge SE cannot hide a bad fit)."""
    for name, true, est, se in [
        ("alpha", alpha, fit.alpha, fit.alpha_se),
        ("beta", beta, fit.beta, fit.beta_se),
    ]:
        assert abs(est - true) < n_se * se, f"{name}: {est} vs {true}, se {se}"
        assert abs(est - true) < atol, f"{name}: {est} vs {true}"


# --------------------------------------------------------------------------------------------------
# Recovery of known parameters
# --------------------------------------------------------------------------------------------------


def test_bon_recovers_alpha_beta_rmse_and_peak():
    kl, gold = bon_points()
    fit = fit_gold_vs_kl(kl, gold, "bon")
    assert isinstance(fit, Fit) and fit.form == "bon"
    assert_recovered(fit, **BON)
    assert 0.7 * NOISE < fit.rmse < 1.3 * NOISE
    assert fit.n_points == 40 and fit.n_dropped == 0 and not fit.weighted
    assert fit.d_min == 0.0 and fit.d_max == pytest.approx(3.0)
    # Peak: the closed form from the fitted α, β, and close to the true one.
    assert fit.peak_d == pytest.approx(fit.alpha / (2 * fit.beta), rel=1e-12)
    assert fit.peak_reward == pytest.approx(fit.alpha**2 / (4 * fit.beta), rel=1e-12)
    assert fit.peak_d == pytest.approx(1.0 / 0.6, abs=0.05)
    assert fit.peak_reward == pytest.approx(1.0 / 1.2, abs=0.02)
    assert fit.peak_in_range and fit.peak_kl == pytest.approx(fit.peak_d**2)
    # The peak really is the maximum of predict().
    grid = np.linspace(0, 3, 30001)
    assert grid[np.argmax(fit.predict(grid))] == pytest.approx(fit.peak_d, abs=1e-3)


def test_rl_recovers_alpha_beta_rmse_and_extrapolated_peak():
    kl, gold = rl_points()
    fit = fit_gold_vs_kl(kl, gold, "rl")
    assert_recovered(fit, **RL)
    assert 0.7 * NOISE < fit.rmse < 1.3 * NOISE
    assert fit.peak_d == pytest.approx(math.exp(fit.alpha / fit.beta - 1), rel=1e-12)
    assert fit.peak_reward == pytest.approx(fit.beta * fit.peak_d, rel=1e-12)
    assert fit.peak_d == pytest.approx(math.exp(3.0), rel=0.2)
    assert not fit.peak_in_range  # d* ≈ 20 lies beyond the measured d ≤ 8: an extrapolation


def test_rl_peak_inside_range_is_the_maximum():
    kl, gold = rl_points(alpha=0.5, beta=0.3)  # d* = exp(0.5/0.3 - 1) ≈ 1.95
    fit = fit_gold_vs_kl(kl, gold, "rl")
    assert_recovered(fit, 0.5, 0.3)
    assert fit.peak_in_range
    grid = np.linspace(1e-6, 8, 80001)
    assert grid[np.argmax(fit.predict(grid))] == pytest.approx(fit.peak_d, abs=1e-3)
    assert fit.predict(np.array([fit.peak_d]))[0] == pytest.approx(fit.peak_reward, rel=1e-12)


@pytest.mark.parametrize("form, points, params", [("bon", bon_points, BON), ("rl", rl_points, RL)])
def test_noiseless_fit_is_exact(form, points, params):
    kl, gold = points(noise=0.0)
    fit = fit_gold_vs_kl(kl, gold, form)
    assert fit.alpha == pytest.approx(params["alpha"], abs=1e-10)
    assert fit.beta == pytest.approx(params["beta"], abs=1e-10)
    assert fit.rmse < 1e-10 and fit.alpha_se < 1e-9 and fit.beta_se < 1e-9


@pytest.mark.parametrize("form, points, params", [("bon", bon_points, BON), ("rl", rl_points, RL)])
def test_no_peak_when_beta_not_positive(form, points, params):
    kl, gold = points(noise=0.0, alpha=0.5, beta=-0.1)  # reward still rising, faster than linear
    fit = fit_gold_vs_kl(kl, gold, form)
    assert fit.beta == pytest.approx(-0.1, abs=1e-10)
    assert fit.peak_d is None and fit.peak_reward is None and fit.peak_kl is None
    assert not fit.peak_in_range
    assert "no peak" in fit.summary()


def test_a_bon_curve_that_falls_from_the_start_peaks_at_the_initial_policy():
    """Regression (issue 25, item 2): with α < 0 < β the vertex α/2β of R = d(α − β d) lies at d < 0, outside
    d = sqrt(KL) ≥ 0; fits.py reported "peak at d = −1 (KL 1), R = 0.05", inside the range. On d ≥ 0 the
    maximum is d = 0: KL 0, gold 0. n = 1..256 of best-of-n, gain = d(−0.1 − 0.05 d)."""
    n = np.arange(1, 257)
    kl = np.log(n) - (n - 1) / n
    d = np.sqrt(kl)
    fit = fit_gold_vs_kl(kl, d * (-0.1 - 0.05 * d), "bon")
    assert fit.alpha == pytest.approx(-0.1, abs=1e-9) and fit.beta == pytest.approx(-0.05 * -1, abs=1e-9)
    assert (fit.peak_d, fit.peak_kl, fit.peak_reward) == (0.0, 0.0, 0.0)
    assert fit.predict(np.array([fit.peak_d])) == pytest.approx([0.0]) and np.all(fit.predict(d[1:]) < 0)
    assert "d=-1" not in fit.summary() and "falls from the initial policy" in fit.summary()
    # A vertex at d > 0 is untouched: α = 0.1 gives d* = 1, R* = 0.05.
    rising = fit_gold_vs_kl(kl, d * (0.1 - 0.05 * d), "bon")
    assert (rising.peak_d, rising.peak_reward) == (pytest.approx(1.0), pytest.approx(0.05))


# --------------------------------------------------------------------------------------------------
# Standard errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_standard_errors_match_curve_fit(form):
    """σ²(XᵀWX)⁻¹ with σ² on n₊-2 dof is what curve_fit(absolute_sigma=False) reports on the d > 0 points,
    weighted or not (bon_points includes a d = 0 point, which the oracle never sees)."""
    kl, gold = bon_points() if form == "bon" else rl_points()
    d = np.sqrt(kl)
    model = r_bon if form == "bon" else r_rl
    se = np.random.default_rng(1).uniform(0.01, 0.05, d.size)
    pos = d > 0
    for gold_se in (None, se):
        fit = fit_gold_vs_kl(kl, gold, form, gold_se=gold_se)
        popt, pcov = curve_fit(model, d[pos], gold[pos], p0=[0.5, 0.1],
                               sigma=None if gold_se is None else gold_se[pos], absolute_sigma=False)
        assert fit.weighted == (gold_se is not None)
        np.testing.assert_allclose([fit.alpha, fit.beta], popt, rtol=1e-6)
        np.testing.assert_allclose([fit.alpha_se, fit.beta_se], np.sqrt(np.diag(pcov)), rtol=1e-4)


def test_standard_errors_are_calibrated():
    """Over repeated noise draws, the spread of α̂, β̂ matches the reported standard errors."""
    fits = [fit_gold_vs_kl(*bon_points(seed=s), "bon") for s in range(400)]
    alphas, betas = np.array([f.alpha for f in fits]), np.array([f.beta for f in fits])
    assert np.std(alphas) == pytest.approx(np.mean([f.alpha_se for f in fits]), rel=0.15)
    assert np.std(betas) == pytest.approx(np.mean([f.beta_se for f in fits]), rel=0.15)
    covered = np.mean([abs(f.alpha - BON["alpha"]) < 2 * f.alpha_se for f in fits])
    assert 0.88 < covered < 0.99  # ≈ 95% for a 2-SE interval


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_kl_zero_points_are_not_degrees_of_freedom(form):
    """A d = 0 point lies on every curve of eq. 1-2: adding such points must not shrink the standard errors
    (they used to count as residual degrees of freedom, with a zero residual)."""
    kl, gold = bon_points(n=6) if form == "bon" else rl_points(n=5)
    kl, gold = kl[kl > 0], gold[kl > 0]
    plain = fit_gold_vs_kl(kl, gold, form)
    padded = fit_gold_vs_kl(np.concatenate([np.zeros(4), kl]), np.concatenate([np.zeros(4), gold]), form)
    assert padded.n_points == plain.n_points + 4
    assert (padded.alpha, padded.beta) == pytest.approx((plain.alpha, plain.beta), rel=1e-12)
    assert (padded.alpha_se, padded.beta_se) == pytest.approx((plain.alpha_se, plain.beta_se), rel=1e-12)
    # Independent check: σ² = RSS / (n₊ - 2) from the residuals of the d > 0 points, (XᵀX)⁻¹ by hand.
    d = np.sqrt(kl)
    X = np.column_stack([d, -(d * d if form == "bon" else d * np.log(d))])
    resid = gold - X @ np.array([plain.alpha, plain.beta])
    cov = resid @ resid / (d.size - 2) * np.linalg.inv(X.T @ X)
    np.testing.assert_allclose([padded.alpha_se, padded.beta_se], np.sqrt(np.diag(cov)), rtol=1e-9)


def test_two_points_beyond_kl_zero_have_no_standard_error():
    fit = fit_gold_vs_kl([0.0, 0.0, 1.0, 4.0], [0.0, 0.0, 0.5, 0.8], "bon")
    assert fit.n_points == 4 and math.isnan(fit.alpha_se) and math.isnan(fit.beta_se)


def test_weights_downweight_noisy_points():
    kl, gold = bon_points(noise=0.0)
    gold = gold.copy()
    gold[20] += 5.0  # an outlier ...
    se = np.full(kl.size, 0.01)
    se[20] = 1e6  # ... whose standard error says to ignore it
    fit = fit_gold_vs_kl(kl, gold, "bon", gold_se=se)
    assert fit.weighted
    assert fit.alpha == pytest.approx(1.0, abs=1e-6) and fit.beta == pytest.approx(0.3, abs=1e-6)
    unweighted = fit_gold_vs_kl(kl, gold, "bon")
    assert abs(unweighted.alpha - 1.0) > 0.01


def test_zero_standard_error_falls_back_to_unweighted():
    kl, gold = bon_points()
    se = np.full(kl.size, 0.02)
    se[0] = 0.0  # the KL-0 point has no spread across seeds: 1/se² is undefined
    fit = fit_gold_vs_kl(kl, gold, "bon", gold_se=se)
    plain = fit_gold_vs_kl(kl, gold, "bon")
    assert not fit.weighted
    assert (fit.alpha, fit.beta, fit.alpha_se) == pytest.approx((plain.alpha, plain.beta, plain.alpha_se))


# --------------------------------------------------------------------------------------------------
# Refusals and bad points
# --------------------------------------------------------------------------------------------------


def test_two_points_refused_with_readable_message():
    with pytest.raises(FitRefused, match=r"only 2 usable point\(s\); a bon fit needs at least 3") as info:
        fit_gold_vs_kl([1.0, 4.0], [0.5, 0.8], "bon")
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)


def test_refused_when_too_few_points_beyond_kl_zero():
    with pytest.raises(FitRefused, match=r"only 1 point\(s\) with KL > 0"):
        fit_gold_vs_kl([0.0, 0.0, 0.0, 2.0], [0.0, 0.01, -0.01, 0.4], "rl")


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_refused_when_singular(form):
    # Every point at one KL: α·d - β·g(d) fixes one combination of α and β, not both.
    with pytest.raises(FitRefused, match="singular"):
        fit_gold_vs_kl([2.0, 2.0, 2.0, 0.0], [0.5, 0.6, 0.55, 0.0], form)


def test_rl_refused_when_only_d_equal_one():
    # d log d is zero at d = 0 and d = 1: the β column vanishes.
    with pytest.raises(FitRefused, match="singular"):
        fit_gold_vs_kl([0.0, 1.0, 1.0], [0.0, 0.5, 0.6], "rl")


def test_refusal_counts_dropped_points():
    with pytest.raises(FitRefused, match=r"only 2 usable point\(s\) \(2 dropped"):
        fit_gold_vs_kl([1.0, 4.0, np.nan, -1.0], [0.5, 0.8, 0.1, 0.2], "bon")


def test_unknown_form_and_length_mismatch():
    with pytest.raises(ValueError, match="unknown functional form"):
        fit_gold_vs_kl([0, 1, 4], [0, 1, 2], "ppo")
    with pytest.raises(ValueError, match="differ in length"):
        fit_gold_vs_kl([0, 1, 4], [0, 1], "bon")


def test_non_finite_points_are_dropped():
    kl, gold = bon_points()
    clean = fit_gold_vs_kl(kl, gold, "bon")
    kl_bad = np.concatenate([kl, [np.nan, np.inf, 2.0, 3.0]])
    gold_bad = np.concatenate([gold, [0.5, 0.5, np.nan, -np.inf]])
    fit = fit_gold_vs_kl(kl_bad, gold_bad, "bon")
    assert fit.n_points == clean.n_points and fit.n_dropped == 4
    assert (fit.alpha, fit.beta, fit.rmse, fit.alpha_se) == pytest.approx(
        (clean.alpha, clean.beta, clean.rmse, clean.alpha_se), rel=1e-12
    )
    # A NaN standard error drops its point too.
    se = np.full(kl.size, 0.02)
    se[5] = np.nan
    assert fit_gold_vs_kl(kl, gold, "bon", gold_se=se).n_points == kl.size - 1


def test_rl_at_kl_zero_has_no_nan():
    kl, gold = rl_points(noise=0.0)
    fit = fit_gold_vs_kl(np.concatenate([[0.0], kl]), np.concatenate([[0.0], gold]), "rl")
    assert np.isfinite([fit.alpha, fit.beta, fit.alpha_se, fit.beta_se, fit.rmse]).all()
    assert fit.d_min == 0.0 and fit.n_points == kl.size + 1
    assert fit.predict(np.array([0.0]))[0] == 0.0
    assert fit.predict(np.zeros((2, 3))).shape == (2, 3)
    assert np.isnan(fit.predict(np.array([-1.0]))[0])


# --------------------------------------------------------------------------------------------------
# Prediction of held-out points, and the wrong form
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form, points", [("bon", bon_points), ("rl", rl_points)])
def test_fit_and_predict_noiseless_extrapolates(form, points):
    kl, gold = points(noise=0.0)
    kl_max = np.median(kl)
    fit, held = fit_and_predict(kl, gold, form, kl_max=kl_max)
    assert fit.d_max <= math.sqrt(kl_max)
    assert held["n_held_out"] == int(np.sum(kl > kl_max)) > 0
    assert held["n_train"] == fit.n_points == int(np.sum(kl <= kl_max))
    assert held["rmse_held_out"] < 1e-9 and held["max_abs_error_held_out"] < 1e-9


def test_fit_and_predict_with_noise_and_wrong_form():
    kl, gold = bon_points(n=80)
    _, right = fit_and_predict(kl, gold, "bon", kl_max=4.0)  # fit d ≤ 2, predict d ∈ (2, 3]
    _, wrong = fit_and_predict(kl, gold, "rl", kl_max=4.0)
    assert right["rmse_held_out"] < 3 * NOISE
    assert wrong["rmse_held_out"] > 2 * right["rmse_held_out"]


def test_fit_and_predict_nothing_held_out():
    kl, gold = bon_points()
    _, held = fit_and_predict(kl, gold, "bon", kl_max=100.0)
    assert (
        held["n_held_out"] == 0 and held["rmse_held_out"] is None and held["max_abs_error_held_out"] is None
    )


def test_fit_and_predict_refuses_with_too_little_training_data():
    kl, gold = bon_points()
    with pytest.raises(FitRefused, match="usable point"):
        fit_and_predict(kl, gold, "bon", kl_max=kl[1])


def test_wrong_form_fits_worse():
    kl_b, gold_b = bon_points()
    kl_r, gold_r = rl_points()
    assert fit_gold_vs_kl(kl_b, gold_b, "rl").rmse > 2 * fit_gold_vs_kl(kl_b, gold_b, "bon").rmse
    assert fit_gold_vs_kl(kl_r, gold_r, "bon").rmse > 2 * fit_gold_vs_kl(kl_r, gold_r, "rl").rmse


# --------------------------------------------------------------------------------------------------
# Units, serialization, import cost
# --------------------------------------------------------------------------------------------------


def test_relative_to_initial():
    kl = np.array([4.0, 0.0, 1.0, 0.0, np.nan])
    gold = np.array([1.5, 0.2, 0.9, 0.4, 7.0])
    rel = relative_to_initial(kl, gold)
    np.testing.assert_allclose(rel[:4], [1.2, -0.1, 0.6, 0.1])  # mean of the two KL-0 points is 0.3
    assert rel[4] == pytest.approx(6.7)
    with pytest.raises(ValueError, match="no finite \\(kl, gold\\) point"):
        relative_to_initial([np.nan], [1.0])


def test_unit_variance_scale():
    np.testing.assert_allclose(unit_variance_scale([0.0, 1.0, -2.0], 0.5), [0.0, 2.0, -4.0])
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="gold_std_initial must be finite and > 0"):
            unit_variance_scale([1.0], bad)


def test_to_dict_is_plain_and_json_serializable():
    fit = fit_gold_vs_kl(*bon_points(), "bon")
    out = fit.to_dict()
    json.dumps(out)
    for key in (
        "form",
        "alpha",
        "beta",
        "alpha_se",
        "beta_se",
        "rmse",
        "n_points",
        "d_min",
        "d_max",
        "peak_d",
        "peak_reward",
        "peak_kl",
        "peak_in_range",
    ):
        assert key in out
    assert type(out["alpha"]) is float and type(out["n_points"]) is int
    assert out["peak_kl"] == pytest.approx(fit.peak_d**2)
    assert "bon: R = d(" in fit.summary() and "peak at d=" in fit.summary()


def test_import_is_light():
    code = (
        "import sys, bon_vs_rl.analysis.fits; print(any(m in sys.modules for m in ('torch', 'transformers', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
