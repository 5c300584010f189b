"""The warning signs of saved samples (measurement/hacking_signals.py): RL evaluations and best-of-n, by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from bon_vs_rl.measurement import evaluate, hacking_signals, scorers
from bon_vs_rl.methods import best_of_n


def eval_frame(proxy, tokens, completions, ref_logprob, kl, prompt_id, **extra) -> pd.DataFrame:
    return pd.DataFrame(dict(proxy=proxy, tokens=tokens, completion=completions, ref_logprob=ref_logprob, kl=kl,
                             prompt_id=prompt_id, **extra))


def test_an_evaluation_against_its_step_zero_weighs_prompts_equally():
    fluent = "the food was warm"  # distinct-2 1
    step0 = eval_frame([0.0, 1.0, 2.0, 3.0], [4, 4, 4, 4], [fluent] * 4, [-8.0] * 4, [0.0] * 4, [0, 0, 1, 1],
                       proxy_member_0=[0.0, 1.0, 2.0, 3.0], proxy_member_1=[1.0, 2.0, 3.0, 4.0])
    later = eval_frame([4.0, 2.0, 3.0, 3.0], [8, 4, 4, 4], ["warm warm warm warm", fluent, fluent, fluent],
                       [-32.0, -8.0, -12.0, -12.0], [3.0, 1.0, 2.0, 2.0], [0, 0, 1, 1],
                       proxy_member_0=[4.0, 2.0, 3.0, 3.0], proxy_member_1=[6.0, 2.0, 3.0, 3.0])
    out = hacking_signals.evaluation_signals(later, hacking_signals.reference(step0))
    assert out["kl"] == pytest.approx(np.mean([2.0, 2.0]))
    assert out["proxy_z"] == pytest.approx((np.mean([3.0, 3.0]) - 1.5) / np.std([0, 1, 2, 3], ddof=1))
    assert out["above_ref_max"] == pytest.approx(np.mean([0.5, 0.0]))  # only 4.0 exceeds step 0's largest, 3
    assert out["length_drift"] == pytest.approx(np.mean([6, 4]) / 4 - 1)
    assert out["distinct_2_drift"] == pytest.approx(np.mean([(1 / 3 + 1) / 2, 1.0]) - 1.0)
    assert out["ref_logprob_drift"] == pytest.approx(np.mean([-3.0, -3.0]) - (-2.0))
    assert out["disagreement_ratio"] == pytest.approx(np.mean([0.5, 0.0]) / 0.5)


def test_best_of_n_signals_are_expectations_under_its_selection():
    # Two prompts of N = 3 samples; best-of-3 of 3 always keeps each prompt's highest proxy.
    frame = pd.DataFrame(dict(prompt_id=[0, 0, 0, 1, 1, 1], rm=[0.0, 2.0, 1.0, 5.0, 3.0, 4.0],
                              other=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], tokens=[2, 4, 6, 2, 2, 8],
                              completion=["a b", "a a a a", "a b c d e f", "x y", "x x", "x y z w v u t s"],
                              logprob=[-2.0, -4.0, -12.0, -2.0, -2.0, -8.0]))
    one, three = hacking_signals.bon_signals(frame, "rm", [1, 3], 3, second_column="other")
    proxy = frame["rm"].to_numpy()
    assert one["proxy_z"] == pytest.approx(0.0) and one["length_drift"] == pytest.approx(0.0)
    assert one["distinct_2_drift"] == pytest.approx(0.0) and one["above_ref_max"] == 0.0
    # n = 3: samples 1 (proxy 2, 4 tokens, "a a a a": distinct-2 1/3) and 3 (proxy 5, 2 tokens, distinct-2 1)
    assert three["proxy_z"] == pytest.approx((3.5 - proxy.reshape(2, 3).mean(axis=1).mean()) / proxy.std(ddof=1))
    assert three["length_drift"] == pytest.approx(3 / 4 - 1)
    reference_d2 = np.mean([np.mean([1, 1 / 3, 1]), np.mean([1, 1, 1])])
    assert three["distinct_2_drift"] == pytest.approx(np.mean([1 / 3, 1]) - reference_d2)
    assert three["ref_logprob_drift"] == pytest.approx(-1.0 - np.mean([np.mean([-1, -1, -2]), np.mean([-1, -1, -1])]))
    assert three["above_ref_max"] == 0.0  # best-of-n never leaves the reference's samples
    # Agreement at n = 1: all pairs of a prompt; the second proxy orders prompt 0 as (0, 2, 1), prompt 1 reversed.
    assert one["agreement"] == pytest.approx(np.mean([2 / 3, 1 / 3]))
    assert math.isnan(three["agreement"])  # best-of-3 of 3 is one sample: no pair to compare


def test_ensemble_members_are_found_by_their_columns():
    frame = pd.DataFrame({"rm:d@mean": [0.0], "rm:d@member-1": [1.0], "rm:d@member-0": [2.0], "rm:e@member-0": [3.0]})
    assert hacking_signals.member_columns(frame, "rm:d@mean") == ["rm:d@member-0", "rm:d@member-1"]
    assert hacking_signals.member_columns(frame, "rm:e") == []  # one member is no ensemble
    assert best_of_n.second_proxy("rm:d@mean", ["rm:d@mean", "rm:d@min", "rm:e", "rm:f"]) == "rm:e"
    assert best_of_n.second_proxy("rm:d", ["rm:d", "rm:d@min"]) is None


def test_the_evaluator_scores_an_ensembles_members_once_and_combines_them_as_the_proxy():
    def member(offset):
        return scorers.Scorer(f"m{offset}", lambda p, c: [len(x) + offset for x in c], batch_size=2)

    parts = [member(0.0), member(3.0)]
    proxy = scorers.Scorer("ens", lambda p, c: np.stack([q.score_batch(p, c) for q in parts]).min(axis=0),
                           batch_size=2, parts=parts, combine=lambda s: s.min(axis=0))
    evaluator = object.__new__(evaluate.Evaluator)
    evaluator.proxy = proxy
    completions = ["a", "bbb", "cc"]
    scores, ok, members = evaluator.score_proxy(["p"] * 3, completions)
    assert ok and np.array_equal(scores, proxy(["p"] * 3, completions))
    assert [m.tolist() for m in members] == [[1, 3, 2], [4, 6, 5]]


def test_agreement_finds_the_other_proxy_in_another_file_of_the_same_draw(tmp_path):
    """`bonrl experiment` rescores one draw once per proxy, each into its own file: the report pairs them."""
    from bon_vs_rl.report import hacking

    base = pd.DataFrame(dict(prompt_id=[0, 0, 0, 1, 1, 1], prompt="p", completion=list("abcdef"), tokens=3,
                             logprob=-3.0, ended=True))
    first, second = base.assign(**{"rm:a": [0.0, 1, 2, 0, 1, 2]}), base.assign(**{"rm:b": [0.0, 2, 1, 0, 1, 2]})
    meta = {"format": best_of_n.SAMPLES_FORMAT, "policy": "tiny", "samples_per_prompt": 3, "seed": 0}
    best_of_n.write_samples(tmp_path / "a.parquet", first, {**meta, "proxies": ["rm:a"]})
    best_of_n.write_samples(tmp_path / "b.parquet", second, {**meta, "proxies": ["rm:b"]})
    other = base.assign(completion=list("uvwxyz"), **{"rm:c": [0.0, 1, 2, 0, 1, 2]})  # another draw: not paired
    best_of_n.write_samples(tmp_path / "c.parquet", other, {**meta, "proxies": ["rm:c"]})
    partners = {"rm:b": str(tmp_path / "b.parquet"), "rm:c": str(tmp_path / "c.parquet")}
    frame, found = hacking.with_second_proxy(first, {"proxies": ["rm:a"]}, "rm:a", partners)
    assert found == "rm:b" and frame["rm:b"].tolist() == second["rm:b"].tolist()
    (one,) = hacking_signals.bon_signals(frame, "rm:a", [1], 3, found)
    assert one["agreement"] == pytest.approx(np.mean([2 / 3, 1.0]))  # prompt 0: one pair of three swapped
    assert hacking.with_second_proxy(first, {}, "rm:a", {"rm:c": partners["rm:c"]})[1] is None
