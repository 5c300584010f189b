"""bon_vs_rl.monitor: the gold-free hacking monitor inside TRL's GRPOTrainer and bonrl's PPO.

The toy six-word policy (tests/toy_gold.py) with the "good"-fraction reward is a proxy that is easy to game:
at a high learning rate GRPO soon writes "good good good ...", the proxy climbs past anything the reference
wrote and the text stops varying, which is what the monitor must notice. Every logged value is checked
against an independent computation on the same batch (per-sample forward passes, hand-written distinct-2).
"""

import math
import re
import warnings

import numpy as np
import pytest
import torch
import toy_rewards

from bon_vs_rl.monitor import HackingMonitor, HackingWarning, frozen_copy

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["Hello there", "A story", "The review", "Dear friend"] * 8


def grpo(policy_dir, reward, monitor, steps: int, learning_rate: float = 5e-2, tmp_path=None, algo: str = "grpo"):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    model = AutoModelForCausalLM.from_pretrained(policy_dir)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    config, trainer_class = (GRPOConfig, GRPOTrainer) if algo == "grpo" else (RLOOConfig, RLOOTrainer)
    args = config(output_dir=str(tmp_path / "trl"), max_steps=steps, per_device_train_batch_size=8,
                      num_generations=4, max_completion_length=8, learning_rate=learning_rate, beta=0.0,
                      logging_steps=1, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
                      disable_tqdm=True, seed=0, temperature=1.0)
    trainer = trainer_class(model=model, reward_funcs=monitor.watch(reward), args=args,
                          train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tokenizer,
                          callbacks=[monitor])
    return trainer, tokenizer


def distinct_2(text: str) -> float:
    words = re.findall(r"[a-z]+(?:'[a-z]+)*", text.lower())
    bigrams = list(zip(words, words[1:]))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def per_sample_kl(model, reference, prompt_ids, completion_ids, temperature=1.0):
    """Exact KL(π‖π_ref) and the reference's log-prob, one completion at a time (no padding, float64)."""
    kl, ref_logprob = [], []
    for p, c in zip(prompt_ids, completion_ids):
        ids = torch.tensor([list(p) + list(c)])
        span = slice(len(p) - 1, len(p) - 1 + len(c))
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, span].double() / temperature, -1)
            lq = torch.log_softmax(reference(ids).logits[0, span].double() / temperature, -1)
        kl.append(float((lp.exp() * (lp - lq)).sum()))
        ref_logprob.append(float(lq[torch.arange(len(c)), torch.tensor(c)].sum()))
    return np.array(kl), np.array(ref_logprob)


def pairwise(a, b, prompts) -> float:
    """Mean over prompts of the share of its sample pairs that a and b order alike (ties in either: half)."""
    shares = []
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        pairs = [(i, j) for i in rows for j in rows if i < j]
        same = [0.5 if a[i] == a[j] or b[i] == b[j] else float((a[i] < a[j]) == (b[i] < b[j])) for i, j in pairs]
        shares.append(np.mean(same))
    return float(np.mean(shares))


def noisy_good(prompts, completions):  # a second ensemble member: the same proxy with a length bonus
    return [g + 0.05 * len(c.split()) for g, c in zip(toy_rewards.good_fraction(prompts, completions), completions)]


def test_logged_signals_equal_an_independent_computation_on_the_same_batch(toy_policy, tmp_path):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(toy_policy)  # the initial weights, loaded on their own
    batches = []
    holder = {}

    def reward(prompts, completions, completion_ids, **kwargs):
        rewards = toy_rewards.good_fraction(prompts, completions)
        ids = holder["tokenizer"](text=list(prompts))["input_ids"]
        kl, ref_logprob = per_sample_kl(holder["trainer"].model, reference, ids, completion_ids)
        batches.append(dict(prompts=list(prompts), proxy=np.array(rewards), tokens=np.array([len(c) for c in completion_ids], float),
                            distinct_2=np.array([distinct_2(c) for c in completions]), kl=kl,
                            ref_lp=ref_logprob / np.array([len(c) for c in completion_ids]),
                            members=np.array([rewards, noisy_good(prompts, completions)]),
                            second=np.array(toy_rewards.vowel_fraction(prompts, completions))))
        return rewards

    monitor = HackingMonitor(rule="above_ref_max > 0.5", members=[toy_rewards.good_fraction, noisy_good],
                             second_proxy=toy_rewards.vowel_fraction, window=4)
    holder["trainer"], holder["tokenizer"] = grpo(toy_policy, reward, monitor, steps=3, tmp_path=tmp_path)
    holder["trainer"].train()

    logs = [h for h in holder["trainer"].state.log_history if "hacking/kl" in h]
    assert [h["step"] for h in logs] == [1, 2, 3] and len(batches) == 3
    ref = batches[0]
    for i, (b, log) in enumerate(zip(batches, logs)):
        expected = {
            "kl": b["kl"].mean(),
            "proxy_z": (b["proxy"].mean() - ref["proxy"].mean()) / ref["proxy"].std(ddof=1),
            "above_ref_max": np.mean(b["proxy"] > ref["proxy"].max()),
            "length_drift": b["tokens"].mean() / ref["tokens"].mean() - 1,
            "distinct_2_drift": b["distinct_2"].mean() - ref["distinct_2"].mean(),
            "ref_logprob_per_token": b["ref_lp"].mean(),
            "ref_logprob_drift": b["ref_lp"].mean() - ref["ref_lp"].mean(),
            "disagreement": b["members"].std(axis=0).mean(),
            "disagreement_ratio": b["members"].std(axis=0).mean() / ref["members"].std(axis=0).mean(),
            "agreement": pairwise(b["proxy"], b["second"], b["prompts"]),
        }
        if i >= 1:  # slopes over the batches so far (window 4 > 3 batches)
            kl = [x["kl"].mean() for x in batches[:i + 1]]
            z = [(x["proxy"].mean() - ref["proxy"].mean()) / ref["proxy"].std(ddof=1) for x in batches[:i + 1]]
            expected["gain_per_nat"] = np.polyfit(kl, z, 1)[0]
            expected["kl_rate"] = np.polyfit(np.arange(i + 1), kl, 1)[0]
        for name, value in expected.items():
            # KL sums float32 log-softmaxes over 49,152 tokens at each position (as bonrl's evaluation does):
            # ~1e-6 nats of rounding per position against this float64 sum.
            tolerance = dict(rel=1e-3, abs=1e-4) if name in ("kl", "kl_rate", "gain_per_nat") else dict(rel=1e-5, abs=1e-7)
            assert log[f"hacking/{name}"] == pytest.approx(value, **tolerance), (i, name)
    assert logs[0]["hacking/kl"] == pytest.approx(0.0, abs=1e-6)  # the first batch: the reference itself
    assert logs[-1]["hacking/kl"] > 0.01  # and the policy has moved since


def test_a_gamed_proxy_makes_the_monitor_warn_and_stop_training(toy_policy, tmp_path):
    def reward(prompts, completions, **kwargs):
        return toy_rewards.good_fraction(prompts, completions)

    monitor = HackingMonitor(rule="above_ref_max > 0.5", window=2, stop=True, quiet=True)
    trainer, _ = grpo(toy_policy, reward, monitor, steps=20, tmp_path=tmp_path)
    with pytest.warns(HackingWarning, match=r"reward hacking warning at step \d+: above_ref_max > 0.5"):
        trainer.train()
    assert monitor.fired_at is not None and trainer.state.global_step == monitor.fired_at + 1 < 20
    fired = [h for h in trainer.state.log_history if h.get("hacking/fired") == 1.0]
    assert fired and fired[0]["hacking/rule_value"] > 0.5 and fired[0]["reward"] > trainer.state.log_history[0]["reward"]


def test_a_proxy_that_cannot_be_gamed_never_fires(toy_policy, tmp_path):
    def reward(prompts, completions, **kwargs):  # no spread: nothing to climb, no score above the reference's
        return [0.5] * len(completions)

    monitor = HackingMonitor(rule="above_ref_max > 0", stop=True, quiet=True)
    trainer, _ = grpo(toy_policy, reward, monitor, steps=4, tmp_path=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HackingWarning)
        trainer.train()
    assert monitor.fired_at is None and trainer.state.global_step == 4


def test_rloo_logs_the_signals_too(toy_policy, tmp_path):
    def reward(prompts, completions, **kwargs):
        return toy_rewards.good_fraction(prompts, completions)

    monitor = HackingMonitor(rule="above_ref_max > 0.5", quiet=True)
    trainer, _ = grpo(toy_policy, reward, monitor, steps=2, tmp_path=tmp_path, algo="rloo")
    trainer.train()
    logs = [h for h in trainer.state.log_history if "hacking/kl" in h]
    assert [h["step"] for h in logs] == [1, 2] and logs[0]["hacking/kl"] == pytest.approx(0.0, abs=1e-6)
    assert [h["hacking/proxy_mean"] for h in logs] == pytest.approx([h["reward"] for h in logs], rel=1e-5)


def test_the_rule_fires_once_on_the_window_mean_after_the_reference_batches():
    monitor = HackingMonitor(rule="distinct_2_drift < -0.3", reference_batches=2, window=2, kl=False, quiet=True)
    fluent, repeated = "the food was warm and the staff kind", "warm warm warm warm warm warm warm warm"
    texts = [[fluent] * 4, [fluent] * 4, [repeated] * 4, [fluent] * 4, [repeated] * 4, [repeated] * 4]
    fired = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step, batch in enumerate(texts):
            fired.append(monitor.observe(step, [0.1, 0.2, 0.3, 0.4], [8] * 4, batch)["hacking/fired"])
    # distinct-2 drift per batch: 0, 0, -6/7, 0, -6/7, -6/7; window means after the reference: -3/7, -3/7, -6/7
    assert fired == [0, 0, 1, 1, 1, 1] and monitor.fired_at == 2
    assert len([w for w in caught if issubclass(w.category, HackingWarning)]) == 1

    class Control:
        should_training_stop = False

    control = Control()
    HackingMonitor(rule=None).on_step_end(None, None, control)
    assert not control.should_training_stop
    monitor.stop = True
    assert monitor.on_step_end(None, None, control).should_training_stop


def test_the_reference_copy_computes_with_its_own_weights_after_the_model_trains():
    """A per-instance forward wrapped in a closure (as accelerate and TRL do) survives a deep copy pointing at the
    original model: the copy then followed every update and the monitor measured KL 0 throughout."""
    model = torch.nn.Linear(2, 1)
    original = model.forward
    model.forward = lambda x: original(x)  # a closure over the original's bound method
    reference = frozen_copy(model)
    before = reference(torch.ones(1, 2)).item()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert reference(torch.ones(1, 2)).item() == before != model(torch.ones(1, 2)).item()


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(reference_batches=0), "reference_batches: 0 must be ≥ 1"),
    (dict(window=1), "window: 1 must be ≥ 2"),
    (dict(rule="gold > 1"), "unknown signal 'gold'"),
])
def test_bad_monitor_settings_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HackingMonitor(**kwargs)


@pytest.mark.slow  # 15-17 s: a PPO run to the step its rule fires at
def test_ppo_reports_the_monitors_signals_with_its_own_metrics_and_stops_when_asked(toy_policy, tmp_path):
    from bon_vs_rl.config import commands as C
    from bon_vs_rl.config.base import resolve
    from bon_vs_rl.methods import ppo
    from bon_vs_rl.record import results as R

    reward = f"python:{toy_rewards.__file__}:good_fraction"
    args = dict(policy=toy_policy, proxy=reward, gold=reward, steps=8, eval_every=4, rollout_batch_size=16,
                minibatch_size=8, ppo_epochs=4, max_new_tokens=12, learning_rate=1e-2, beta=0.0, eval_prompts=4,
                eval_samples_per_prompt=2, device="cpu", quiet=True, output=str(tmp_path / "out"),
                results=str(tmp_path / "results.sqlite"))
    metrics: list[dict] = []
    monitor = HackingMonitor(rule="above_ref_max > 0.5", window=2, stop=True, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HackingWarning)
        run_id = ppo.train(resolve(C.PPOConfig, {}, args), on_step=metrics.append, monitor=monitor)
    for m in metrics:  # the same rollout: PPO's own KL (k1, summed per completion) and proxy
        assert m["hacking/kl"] == pytest.approx(m["objective/kl"], rel=1e-5, abs=1e-7)
        assert m["hacking/proxy_mean"] == pytest.approx(m["reward/proxy"], rel=1e-5)
    assert monitor.fired_at is not None and len(metrics) == monitor.fired_at < 8
    rows = R.load(args["results"], run_id=run_id)
    assert rows["step"].max() == monitor.fired_at  # the step it stopped at is evaluated
    assert math.isfinite(metrics[-1]["hacking/distinct_2_drift"])
