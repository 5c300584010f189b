"""`bonrl experiment`: one shared evaluation set for every method, and replicate seeds of an RL setting.

Uses the stand-in stages of test_experiment.py (plausible rows in milliseconds, no models)."""

import json

from test_experiment import STUDY, fake_stages, invoke, write  # noqa: F401  (fake_stages: the fixture)

from bon_vs_rl import experiment
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import resolve


def plan(study: dict):
    return experiment.plan(resolve(C.ExperimentConfig, json.loads(json.dumps(study))))[0]


def test_every_method_is_evaluated_on_the_experiments_prompts():
    study = {**STUDY, "eval_prompts": 24}
    stages = plan(study)
    evaluated = {s.name: s.cfg.eval_prompts for s in stages if hasattr(s.cfg, "eval_prompts")}
    assert set(evaluated) == {"samples", "bon-rm-0", "bon-rm-1", "ppo-0", "ppo-1", "rl-0"}
    assert set(evaluated.values()) == {24}


def test_a_stage_cannot_set_its_own_evaluation_prompts(fake_stages, tmp_path):  # noqa: F811
    study = json.loads(json.dumps(STUDY))
    study["ppo"][0]["eval_prompts"] = 16
    result = invoke(write(tmp_path, study))
    assert result.exit_code == 2
    assert "ppo[0]: 'eval_prompts' is set by the experiment for every stage" in result.stderr
    assert fake_stages == []


def test_seeds_expand_into_one_stage_per_replicate_with_the_same_setting(fake_stages, tmp_path):  # noqa: F811
    study = json.loads(json.dumps(STUDY))
    study["ppo"][0]["seeds"] = [0, 1, 2]
    stages = plan(study)
    names = [s.name for s in stages]
    assert names == ["rm-0", "rm-1", "samples", "bon-rm-0", "bon-rm-1", "ppo-0-seed0", "ppo-0-seed1", "ppo-0-seed2",
                     "ppo-1", "rl-0"]
    replicates = [s for s in stages if s.name.startswith("ppo-0-")]
    assert [s.cfg.seed for s in replicates] == [0, 1, 2] and len({s.hash for s in replicates}) == 3
    from bon_vs_rl.measurement.evaluate import setting_id

    assert len({setting_id(s.cfg) for s in replicates}) == 1  # the report pools them into one curve
    assert setting_id(replicates[0].cfg) != setting_id(stages[names.index("ppo-1")].cfg)

    result = invoke(write(tmp_path, study), "--quiet")
    assert result.exit_code == 0, result.output
    assert [c for c in fake_stages if c.startswith("ppo")] == ["ppo-0-seed0", "ppo-0-seed1", "ppo-0-seed2", "ppo-1"]
    fake_stages.clear()
    assert invoke(write(tmp_path, study), "--quiet", "--force", "ppo-0").exit_code == 0
    assert fake_stages == ["ppo-0-seed0", "ppo-0-seed1", "ppo-0-seed2"]  # the entry's name forces every seed


def test_bad_seeds_are_refused_before_any_stage(fake_stages, tmp_path):  # noqa: F811
    for seeds, expected in (([0, 0], "repeat a seed"), ([], "non-empty list"), (["a"], "non-empty list")):
        study = json.loads(json.dumps(STUDY))
        study["rl"][0]["seeds"] = seeds
        result = invoke(write(tmp_path, study))
        assert result.exit_code == 2 and "rl[0]: seeds" in result.stderr and expected in result.stderr, result.stderr
    study = json.loads(json.dumps(STUDY))
    study["ppo"][0].update(seeds=[1, 2], seed=3)
    result = invoke(write(tmp_path, study))
    assert result.exit_code == 2 and "give either seed or seeds" in result.stderr
    assert fake_stages == []
