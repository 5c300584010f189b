"""`bonrl experiment`: planning and validation up front, resuming from stage markers, --force, what a
stage's hash covers (which edits rerun which stages), and the `smoke` preset end to end (interrupted after
the proxy stage, resumed without retraining it, rerun with other run flags and then another PPO seed).

The resume/force/hash logic is tested with stand-in stage functions that write plausible rows in
milliseconds; the smoke test runs the real stages on `tiny` models.
"""

import json
import math
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_report import Page, row_key
from typer.testing import CliRunner

from bon_vs_rl import cli, experiment
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import load_yaml, resolve, to_dict
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.record import results as R

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
CALLS: list[str] = []  # stage outputs, in the order the stand-ins ran
RESUMED: list[str] = []  # PPO stages started with resume=True


def invoke(*args: str):
    result = runner.invoke(cli.app, ["experiment", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


# ----------------------------------------------------------------------------------------------
# Stand-in stages: the contracts of train_rm / sample / ppo.train / trl_rl.train, without models.


def _record(cfg, command: str, rows: list[dict]) -> str:
    CALLS.append(Path(cfg.output).name)
    if (Path(cfg.output) / "fail").exists():
        raise RuntimeError("stage failed on purpose")
    with R.ResultsStore(R.resolve_results_path(cfg.results)) as store, \
            R.run_context(store, command, to_dict(cfg), cfg.seed, cfg.experiment) as run_id:
        store.add_rows(run_id, rows)
    return run_id


def fake_train_rm(cfg):
    run_id = _record(cfg, "train-rm", [{"method": "rm", "proxy": f"rm:{cfg.output}", "policy": cfg.policy,
                                        "gold": cfg.gold, "accuracy": 0.7, "pairs": cfg.pairs}])
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output) / "bonrl_rm.json").write_text(json.dumps({"members": ["."], "run_id": run_id}))
    return Path(cfg.output)


def fake_sample(cfg):
    if not cfg.proxy:  # the experiment's `samples` stage: one draw, no rows; its file is what bon-rm-K rescore
        run_id = _record(cfg, "sample", [])
        (Path(cfg.output) / run_id).mkdir(parents=True)
        (Path(cfg.output) / run_id / "samples.parquet").write_text("samples")
        return run_id
    assert Path(cfg.from_samples).read_text() == "samples"  # a rescoring stage reads the draw
    rows = []
    for proxy in cfg.proxy:
        for n in cfg.ns:
            kl = math.log(n) - (n - 1) / n
            rows.append({"method": "bon", "n": n, "kl": kl, "proxy": proxy, "policy": cfg.policy, "gold": cfg.gold,
                         "proxy_mean": kl, "proxy_se": 0.01, "gold_mean": kl - kl**2 / 4, "gold_se": 0.01})
    return _record(cfg, "sample", rows)


def fake_checkpoint(cfg, kind: str) -> None:
    """A complete checkpoint where the real command keeps one, written before the stand-in can fail, as the real
    command writes one before it can be interrupted: the experiment resumes a stage only when there is one."""
    from bon_vs_rl.methods import dpo, trl_rl

    output = Path(cfg.output)
    path = {"ppo": output / "checkpoints" / "step-000001" / "state.json",
            "distill": output / "checkpoints" / "step-000001" / "state.json",
            "rl": output / "trl" / "checkpoint-1" / trl_rl.STATE_FILE.format(rank=0),
            "dpo": output / "trl" / "checkpoint-1" / dpo.CHECKPOINT_MARKER}[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")


def fake_ppo(cfg, method="ppo"):
    if getattr(cfg, "resume", False):
        RESUMED.append(Path(cfg.output).name)
    fake_checkpoint(cfg, "ppo" if method == "ppo" else "rl")
    rows = [{"method": method, "step": s, "kl": s / 2, "beta": cfg.beta, "proxy": cfg.proxy, "policy": cfg.policy,
             "gold": cfg.gold, "proxy_mean": s / 2, "proxy_se": 0.01, "gold_mean": s / 3, "gold_se": 0.01,
             "trained_tokens": 100 * s} for s in range(cfg.steps + 1)]
    return _record(cfg, method, rows)


def fake_rl(cfg):
    return fake_ppo(cfg, method=cfg.algo)


@pytest.fixture
def fake_stages(monkeypatch):
    here = fake_train_rm.__module__
    for kind, function in (("rm", "fake_train_rm"), ("samples", "fake_sample"), ("bon", "fake_sample"),
                           ("ppo", "fake_ppo"), ("rl", "fake_rl")):
        monkeypatch.setitem(experiment.STAGES, kind, (experiment.STAGES[kind][0], f"{here}:{function}"))
    CALLS.clear()
    RESUMED.clear()
    return CALLS


STUDY = {
    "name": "study", "output": "out", "device": "cpu",
    "common": {"policy": "tiny", "gold": "vader", "max_new_tokens": 8},
    "train_rm": [{"pairs": 50}, {"pairs": 100}],
    "sample": {"n": "1,2,4,8"},
    "ppo": [{"beta": 0.1, "steps": 4}, {"beta": 0.01, "steps": 4, "proxy": "rm-1"}],
    "rl": [{"algo": "rloo", "steps": 3}],
}
ALL = ["rm-0", "rm-1", "samples", "bon-rm-0", "bon-rm-1", "ppo-0", "ppo-1", "rl-0"]


def write(tmp_path: Path, study: dict, name: str = "study.yaml") -> str:
    (tmp_path / name).write_text(yaml.safe_dump(study))
    return str(tmp_path / name)


def report_runs(tmp_path: Path) -> set[str]:
    return set(pd.read_csv(tmp_path / "out" / "report" / "points.csv")["run_id"])


def test_stages_run_in_order_with_the_proxies_wired(fake_stages, tmp_path):
    result = invoke(write(tmp_path, STUDY), "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_stages == ALL
    config = json.loads((tmp_path / "out" / "resolved_config.json").read_text())["stages"]
    rm0, rm1 = f"rm:{Path('out') / 'rm-0'}", f"rm:{Path('out') / 'rm-1'}"
    # BoN against every proxy: one draw (no proxy), rescored once per proxy.
    assert config["samples"]["config"]["proxy"] == [] and config["samples"]["needs"] == []
    assert config["bon-rm-0"]["config"]["proxy"] == [rm0] and config["bon-rm-1"]["config"]["proxy"] == [rm1]
    assert config["bon-rm-0"]["needs"] == ["samples", "rm-0"] and config["bon-rm-1"]["needs"] == ["samples", "rm-1"]
    samples = json.loads((tmp_path / "out" / "samples" / experiment.MARKER).read_text())["run_id"]
    rescored = json.loads((tmp_path / "out" / "bon-rm-1" / experiment.MARKER).read_text())["config"]["from_samples"]
    assert rescored == str((tmp_path / "out" / "samples" / samples / "samples.parquet").resolve())
    assert config["ppo-0"]["config"]["proxy"] == rm0 and config["ppo-1"]["config"]["proxy"] == rm1
    assert config["ppo-1"]["needs"] == ["rm-1"]
    # common reaches every stage that has the option; the entry wins; the experiment tags every row.
    assert config["rm-1"]["config"]["pairs"] == 100 and config["ppo-0"]["config"]["max_new_tokens"] == 8
    rows = R.load(tmp_path / "results.sqlite")
    assert set(rows["experiment"]) == {"study"} and len(set(rows["run_id"])) == 7  # the draw has no rows
    assert set(rows["method"]) == {"rm", "bon", "ppo", "rloo"}
    for name in ALL:
        assert json.loads((tmp_path / "out" / name / experiment.MARKER).read_text())["stage"] == name
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert result.stdout.strip().splitlines()[-1] == str(Path("out") / "report")


def test_second_run_skips_complete_stages_and_force_reruns_one(fake_stages, tmp_path):
    path = write(tmp_path, STUDY)
    assert invoke(path, "--quiet").exit_code == 0
    first_runs = report_runs(tmp_path)

    fake_stages.clear()
    result = invoke(path)
    assert result.exit_code == 0, result.output
    assert fake_stages == []
    for name in ALL:
        assert f"stage {name}: complete" in result.stderr
    assert report_runs(tmp_path) == first_runs

    fake_stages.clear()
    result = invoke(path, "--quiet", "--force", "ppo-0")
    assert result.exit_code == 0, result.output
    assert fake_stages == ["ppo-0"]
    # The report shows the new ppo-0 run only; the old one stays in the table but not in the report.
    new = report_runs(tmp_path)
    assert len(new) == len(first_runs) and len(new - first_runs) == 1

    fake_stages.clear()
    assert invoke(path, "--quiet", "--force", "rm").exit_code == 0
    assert fake_stages == ["rm-0", "rm-1"]


def test_force_stage_plus_reruns_it_and_every_stage_that_reads_it(fake_stages, tmp_path):
    """`--force rm-1+`: rm-1 and what depends on it (its rescoring, the PPO run against it), not the rest."""
    path = write(tmp_path, STUDY)
    assert invoke(path, "--quiet").exit_code == 0
    fake_stages.clear()
    result = invoke(path, "--quiet", "--force", "rm-1+")
    assert result.exit_code == 0, result.output
    assert fake_stages == ["rm-1", "bon-rm-1", "ppo-1"]
    fake_stages.clear()
    assert invoke(path, "--quiet", "--force", "samples+").exit_code == 0
    assert fake_stages == ["samples", "bon-rm-0", "bon-rm-1"]
    help_text = " ".join(runner.invoke(cli.app, ["experiment", "--help"], terminal_width=400).output.split())
    assert "STAGE+ also reruns every stage that reads it" in help_text


def test_changing_one_proxy_reruns_it_and_the_stages_that_read_it(fake_stages, tmp_path):
    assert invoke(write(tmp_path, STUDY), "--quiet").exit_code == 0
    fake_stages.clear()
    changed = {**STUDY, "train_rm": [{"pairs": 50}, {"pairs": 120}]}
    assert invoke(write(tmp_path, changed), "--quiet").exit_code == 0
    # ppo-0 and rl-0 optimize rm-0, unchanged; best-of-n is not sampled again, only rescored by the new rm-1.
    assert fake_stages == ["rm-1", "bon-rm-1", "ppo-1"]


def test_an_ensembles_aggregations_and_members_are_one_rescoring_of_the_draw(fake_stages, tmp_path):
    study = {**STUDY, "sample": {"n": "1,2,4,8", "proxy": ["rm-0", "rm-1@mean", "rm-1@min", "rm-1@mean-1std",
                                                            "rm-1@member-0"]}}
    stages = {s.name: s for s in experiment.plan(resolve(C.ExperimentConfig, study))[0]}
    rm1 = f"rm:{Path('out') / 'rm-1'}"
    assert stages["bon-rm-1"].cfg.proxy == [f"{rm1}@mean", f"{rm1}@min", f"{rm1}@mean-1std", f"{rm1}@member-0"]
    assert stages["bon-rm-1"].needs == ["samples", "rm-1"] and stages["bon-rm-0"].cfg.proxy == [f"rm:{Path('out') / 'rm-0'}"]
    assert [name for name in stages if name.startswith("bon")] == ["bon-rm-0", "bon-rm-1"]


def test_a_second_proxy_may_name_an_rm_stage_which_then_runs_before_the_rl_stage():
    study = json.loads(json.dumps(STUDY))
    study["ppo"][0]["second_proxy"] = "rm-1"  # ppo-0 trains against rm-0 and watches rm-1's agreement with it
    stages = {s.name: s for s in experiment.plan(resolve(C.ExperimentConfig, study))[0]}
    assert stages["ppo-0"].cfg.proxy == f"rm:{Path('out') / 'rm-0'}"
    assert stages["ppo-0"].cfg.second_proxy == f"rm:{Path('out') / 'rm-1'}"
    assert stages["ppo-0"].needs == ["rm-0", "rm-1"] and stages["ppo-1"].cfg.second_proxy == ""
    study["ppo"][0]["second_proxy"] = "rm-7"
    with pytest.raises(ConfigError, match=r"^ppo\[0\]: proxy 'rm-7' is not a stage"):
        experiment.plan(resolve(C.ExperimentConfig, study))


def test_adding_a_proxy_to_a_sweep_trains_and_rescores_only_it(fake_stages, tmp_path):
    assert invoke(write(tmp_path, STUDY), "--quiet").exit_code == 0
    fake_stages.clear()
    grown = {**STUDY, "train_rm": [*STUDY["train_rm"], {"pairs": 200}]}
    assert invoke(write(tmp_path, grown), "--quiet").exit_code == 0
    assert fake_stages == ["rm-2", "bon-rm-2"]
    assert len(report_runs(tmp_path)) == 6  # every proxy's best-of-n (3), PPO (2) and RL (1)


def test_a_failed_stage_leaves_no_marker_and_the_next_run_starts_there(fake_stages, tmp_path):
    path = write(tmp_path, STUDY)
    (tmp_path / "out" / "ppo-1").mkdir(parents=True)
    (tmp_path / "out" / "ppo-1" / "fail").write_text("")
    result = invoke(path, "--quiet")
    assert result.exit_code == 1 and "stage failed on purpose" in result.stderr
    assert fake_stages == ["rm-0", "rm-1", "samples", "bon-rm-0", "bon-rm-1", "ppo-0", "ppo-1"]
    assert not (tmp_path / "out" / "ppo-1" / experiment.MARKER).exists()
    assert not (tmp_path / "out" / "report").exists()

    (tmp_path / "out" / "ppo-1" / "fail").unlink()
    fake_stages.clear()
    result = invoke(path, "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_stages == ["ppo-1", "rl-0"]
    assert RESUMED == ["ppo-1"]  # the interrupted PPO run continues from its checkpoint (bonrl ppo --resume)

    fake_stages.clear()
    assert invoke(path, "--quiet", "--force", "ppo").exit_code == 0
    assert fake_stages == ["ppo-0", "ppo-1"] and RESUMED == ["ppo-1"]  # forced: started afresh


def test_a_marker_whose_run_is_gone_from_the_table_does_not_count(fake_stages, tmp_path):
    path = write(tmp_path, STUDY)
    assert invoke(path, "--quiet").exit_code == 0
    (tmp_path / "results.sqlite").unlink()  # e.g. a fresh results table: the rows must be produced again
    fake_stages.clear()
    assert invoke(path, "--quiet").exit_code == 0
    assert fake_stages == ALL
    assert RESUMED == []  # they finished before: rerun from scratch, not resumed from a final checkpoint


# ----------------------------------------------------------------------------------------------
# What a stage's hash covers. How a stage runs (device, quiet, cache_dir, resume) reruns nothing; a
# seed or a `common` key reruns exactly the stages that take it (an entry's own value wins over
# `common` and the top-level seed) and every stage that reads their output: bon-rm-K reads the samples
# and rm-K, ppo-0 and rl-0 read rm-0, ppo-1 reads rm-1. Checked on the plan's hashes and by which stages run.

# STUDY with the seed pinned (to the top-level value, 0) in the entries of rm-1 and ppo-1.
PINNED = {**STUDY, "train_rm": [{"pairs": 50}, {"pairs": 100, "seed": 0}],
          "ppo": [{"beta": 0.1, "steps": 4}, {"beta": 0.01, "steps": 4, "proxy": "rm-1", "seed": 0}]}
READS_RM0 = {"rm-0", "bon-rm-0", "ppo-0", "rl-0"}
READS_RM1 = {"rm-1", "bon-rm-1", "ppo-1"}
BON = {"bon-rm-0", "bon-rm-1"}
EDITS = {  # case: (edit of PINNED, extra flags of the second run, the stages that must rerun)
    "device": (lambda s: s.update(device="auto"), [], set()),
    "device flag": (lambda s: None, ["--device", "auto"], set()),
    "quiet": (lambda s: s.update(quiet=True), [], set()),
    "cache_dir": (lambda s: s.update(cache_dir="elsewhere"), [], set()),
    "resume": (lambda s: s["ppo"][0].update(resume=True), [], set()),
    # rm-1 and ppo-1 pin theirs; the samples are drawn anew, so every rescoring reruns
    "seed": (lambda s: s.update(seed=1), [], READS_RM0 | {"samples"} | BON),
    "rm-1's seed": (lambda s: s["train_rm"][1].update(seed=1), [], READS_RM1),
    "ppo-0's seed": (lambda s: s["ppo"][0].update(seed=1), [], {"ppo-0"}),
    "common key of every stage": (lambda s: s["common"].update(max_new_tokens=9), [], set(ALL)),
    "common key of ppo and rl": (lambda s: s["common"].update(eval_every=5), [], {"ppo-0", "ppo-1", "rl-0"}),
    "common key of bon only": (lambda s: s["common"].update(samples_per_prompt=16), [], {"samples"} | BON),
    # The n grid below N and the bootstrap shape the estimates, not the draw: only the rescorings rerun.
    "n grid below N": (lambda s: s["sample"].update(n="1,2,8"), [], BON),
    "bootstrap": (lambda s: s["sample"].update(bootstrap=500), [], BON),
    "common key both rm entries set": (lambda s: s["common"].update(pairs=80), [], set()),
    # β is also best-of-n's: the KL-regularized optimum's β grid (the same KL coefficient), so the
    # rescorings rerun; the draw does not depend on it.
    "common key the ppo entries set": (lambda s: s["common"].update(beta=0.5), [], BON | {"rl-0"}),
    "rm-0's entry": (lambda s: s["train_rm"][0].update(pairs=60), [], READS_RM0),
}


def edited(case: str) -> dict:
    study = json.loads(json.dumps(PINNED))
    EDITS[case][0](study)
    return study


def hashes(study: dict) -> dict[str, str]:
    stages, _ = experiment.plan(resolve(C.ExperimentConfig, study))
    return {s.name: s.hash for s in stages}


@pytest.fixture
def reported(monkeypatch):
    """The report stage replaced by a recorder of the run ids it is given (drawing is not tested here)."""
    from bon_vs_rl.report import write

    runs: list[list[str]] = []

    def record(cfg):
        runs.append(list(cfg.run_id))
        return Path(cfg.output)

    monkeypatch.setattr(write, "report", record)
    return runs


def test_pinning_a_seed_to_the_top_level_value_changes_no_hash():
    assert hashes(PINNED) == hashes(STUDY)


@pytest.mark.parametrize("case", list(EDITS))
def test_a_change_reruns_exactly_the_stages_it_affects(case, fake_stages, reported, tmp_path):
    _, flags, expected = EDITS[case]
    before = hashes(PINNED)
    if not flags:  # the plan's view: which stage hashes the edit changes
        after = hashes(edited(case))
        assert {name for name in ALL if after[name] != before[name]} == expected

    # End to end: run the study, then the edited one; the second run must run exactly `expected`,
    # in run order, and hand the report the old run of every other stage. (The second run is
    # always --quiet: quiet is how a stage runs, not what it computes.)
    assert invoke(write(tmp_path, PINNED, "before.yaml")).exit_code == 0
    rows = [name for name in ALL if name != "samples"]  # the report is given the runs that wrote rows
    first = dict(zip(rows, reported[-1], strict=True))
    fake_stages.clear()
    result = invoke(write(tmp_path, edited(case), "after.yaml"), "--quiet", *flags)
    assert result.exit_code == 0, result.output
    assert fake_stages == [name for name in ALL if name in expected]
    second = dict(zip(rows, reported[-1], strict=True))
    assert {name for name in rows if second[name] != first[name]} == expected - {"samples"}
    for name in rows:
        marker = json.loads((tmp_path / "out" / name / experiment.MARKER).read_text())
        assert marker["run_id"] == second[name]


@pytest.mark.parametrize("case", ["stage-key", "stage-value", "common-key", "reserved", "proxy", "aggregation",
                                  "no-proxy", "force", "report-key", "no-rm"])
def test_a_bad_setting_anywhere_stops_before_the_first_stage(case, fake_stages, tmp_path):
    study = json.loads(json.dumps(STUDY))
    force = []
    expected = {
        "stage-key": "ppo[1] (stage ppo-1): config: unknown key 'bogus'",
        "stage-value": "ppo[1] (stage ppo-1): beta",
        "common-key": "common: unknown key 'max_new_tokenz'",
        "reserved": "train_rm[0]: 'output' is set by the experiment",
        "proxy": "rl[0]: proxy 'rm-7' is not a stage",
        "aggregation": "sample: 'rm-1@max': aggregation 'max' unknown; use @mean, @min, @mean-<λ>std (e.g. "
                       "@mean-0.5std) or @member-<k> (e.g. @member-0)",
        "no-proxy": "sample: proxy is an empty list; name RM stages (e.g. proxy: [rm-0, rm-1]) or leave it out for "
                    "every RM",
        "force": "force: no stage 'ppo-9'",
        "report-key": "report: config: unknown key 'colour'",
        "no-rm": "train_rm: at least one",
    }[case]
    if case == "stage-key":
        study["ppo"][1]["bogus"] = 1
    elif case == "stage-value":
        study["ppo"][1]["beta"] = -1
    elif case == "common-key":
        study["common"]["max_new_tokenz"] = 8
    elif case == "reserved":
        study["train_rm"][0]["output"] = "elsewhere"
    elif case == "proxy":
        study["rl"][0]["proxy"] = "rm-7"
    elif case == "aggregation":
        study["sample"]["proxy"] = ["rm-0", "rm-1@max"]
    elif case == "no-proxy":
        study["sample"]["proxy"] = []
    elif case == "force":
        force = ["--force", "ppo-9"]
    elif case == "report-key":
        study["report"] = {"colour": "red"}
    elif case == "no-rm":
        study["train_rm"] = []
    result = invoke(write(tmp_path, study), *force)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bonrl: error:") and expected in lines[0], lines
    assert fake_stages == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "results.sqlite").exists()


# `bonrl lab --config` presets, not experiments (tests/test_lab.py validates them).
LAB_PRESETS = {"goodhart-lab.yaml"}


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name not in LAB_PRESETS))
def test_every_preset_plans_and_validates(preset):
    cfg = resolve(C.ExperimentConfig, load_yaml(REPO / "configs" / preset))
    stages, report_cfg = experiment.plan(cfg)
    names = [s.name for s in stages]
    assert names[0] == "rm-0" and "samples" in names and any(name.startswith("bon-rm-") for name in names)
    assert len({s.hash for s in stages}) == len(stages)
    assert all(Path(s.cfg.output).parent == Path(cfg.output) for s in stages)
    assert report_cfg.experiment == cfg.name == preset.removesuffix(".yaml")


# ----------------------------------------------------------------------------------------------
# The smoke preset, end to end on tiny models.


@pytest.mark.slow  # 10 s on an idle 2-core machine, 30 s when it is shared: four real stage runs and reports
def test_smoke_experiment_resumes_and_reruns_only_what_changed(tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) as best-of-n's draw starts, then rerun: the proxy is reused, the report is complete.
    Rerun with --device auto --quiet: nothing trains. Rerun with another PPO seed: PPO alone trains."""
    preset = REPO / "configs" / "smoke.yaml"
    shutil.copy(preset, tmp_path / "smoke.yaml")
    real_run_stage = experiment.run_stage

    def interrupted(stage):
        if stage.kind == "samples":
            raise KeyboardInterrupt
        return real_run_stage(stage)

    start = time.perf_counter()
    monkeypatch.setattr(experiment, "run_stage", interrupted)
    result = invoke("smoke.yaml", "--output", "smoke")
    assert result.exit_code == 130, result.output
    rm_dir = tmp_path / "smoke" / "rm-0"
    marker, checkpoint = rm_dir / experiment.MARKER, rm_dir / "bonrl_rm.json"
    assert marker.is_file() and checkpoint.is_file()
    assert not (tmp_path / "smoke" / "samples" / experiment.MARKER).exists()
    stamps = (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)

    monkeypatch.setattr(experiment, "run_stage", real_run_stage)
    result = invoke("smoke.yaml", "--output", "smoke")
    assert result.exit_code == 0, result.output
    seconds = time.perf_counter() - start
    assert "stage rm-0: complete" in result.stderr
    assert (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == stamps
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        runs = store.runs()
    assert (runs["command"] == "train-rm").sum() == 3  # each of rm-0, rm-1, rm-2 trained once

    rows = R.load(tmp_path / "results.sqlite")
    curves = rows[(rows["experiment"] == "smoke") & (rows["method"] != "rm")]
    assert set(curves["method"]) == {"bon", "ppo", "dpo", "distill"}
    page = Page((tmp_path / "smoke" / "report" / "report.html").read_text(encoding="utf-8"))
    points = page.frame("points")
    assert sorted(map(row_key, points.to_dict("records"))) == sorted(map(row_key, curves.to_dict("records")))
    assert len(points) == len(curves) > 5
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    # The family of three proxies gets the scaling view: one row per proxy reading on the shared prompts.
    scaling = pd.read_csv(tmp_path / "smoke" / "report" / "scaling.csv")
    readings = yaml.safe_load(preset.read_text())["sample"]["proxy"]
    assert sorted(scaling.loc[scaling["method"] == "bon", "name"]) == sorted(readings)
    assert scaling.loc[scaling["method"] == "ppo", "name"].tolist() == ["rm-0"]
    print(f"smoke experiment: {seconds:.0f} s including the interrupted first run")

    # How the stages run (device, quiet) is not what they compute: a third run trains nothing.
    stage_markers = {name: tmp_path / "smoke" / name / experiment.MARKER
                     for name in ("rm-0", "samples", "bon-rm-0", "ppo-0")}
    stamps = {name: path.stat().st_mtime_ns for name, path in stage_markers.items()}
    result = invoke("smoke.yaml", "--output", "smoke", "--device", "auto", "--quiet")
    assert result.exit_code == 0, result.output
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        assert store.runs()["run_id"].tolist() == runs["run_id"].tolist()
    assert {name: path.stat().st_mtime_ns for name, path in stage_markers.items()} == stamps

    # A new PPO seed reruns PPO alone, and the report shows the new PPO run instead of the old one.
    study = yaml.safe_load((tmp_path / "smoke.yaml").read_text())
    study["ppo"][0]["seed"] = 1
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(study))
    result = invoke("smoke.yaml", "--output", "smoke", "--quiet")
    assert result.exit_code == 0, result.output
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        after = store.runs()
    new = after[~after["run_id"].isin(runs["run_id"])]
    assert new["command"].tolist() == ["ppo"] and new["status"].tolist() == ["finished"]
    assert {name: stage_markers[name].stat().st_mtime_ns for name in ("rm-0", "samples", "bon-rm-0")} == \
        {name: stamps[name] for name in ("rm-0", "samples", "bon-rm-0")}
    reported = set(pd.read_csv(tmp_path / "smoke" / "report" / "points.csv")["run_id"])
    old_ppo = runs.loc[runs["command"] == "ppo", "run_id"].item()
    assert new["run_id"].item() in reported and old_ppo not in reported

def test_a_stage_that_runs_again_replaces_its_own_earlier_run(tmp_path):
    """train-rm, ppo and rl refuse a second run into one --output unless told; the experiment owns its
    stage directories and reruns a changed or forced stage there, so it tells them (and resumes RL too)."""
    cfg = resolve(C.ExperimentConfig, {"output": str(tmp_path / "study"), "common": {"policy": "tiny"},
                                         "train_rm": [{"backbone": "tiny"}], "ppo": [{"beta": 0.1}],
                                         "rl": [{"algo": "rloo"}]}, {})
    stages, _ = experiment.plan(cfg)
    assert {s.name: getattr(s.cfg, "overwrite", None) for s in stages} == {
        "rm-0": True, "samples": None, "bon-rm-0": None, "ppo-0": True, "rl-0": True}
    rl = next(s for s in stages if s.kind == "rl")
    experiment.resume_interrupted(rl, fresh=False, quiet=True)  # first start: nothing to resume yet
    assert rl.cfg.resume is False
    experiment.resume_interrupted(rl, fresh=False, quiet=True)  # started here before, but saved no checkpoint:
    assert (rl.cfg.resume, rl.cfg.overwrite) == (False, True)  # it starts again, replacing its earlier run
    fake_checkpoint(rl.cfg, "rl")
    experiment.resume_interrupted(rl, fresh=False, quiet=True)  # started here before, with a checkpoint
    assert (rl.cfg.resume, rl.cfg.overwrite) == (True, False)
