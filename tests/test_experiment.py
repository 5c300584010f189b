"""`bonrl experiment`: planning and validation up front, resuming from stage markers, --force, and the
`smoke` preset end to end (interrupted after the proxy stage, then resumed without retraining it).

The resume/force logic is tested with stand-in stage functions that write plausible rows in
milliseconds; the smoke test runs the real stages on `tiny` models.
"""

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import yaml
from test_report import Page, row_key
from typer.testing import CliRunner

from bon_vs_rl import cli, experiment
from bon_vs_rl import config as C
from bon_vs_rl import results as R

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
            R.run_context(store, command, C.to_dict(cfg), cfg.seed, cfg.experiment) as run_id:
        store.add_rows(run_id, rows)
    return run_id


def fake_train_rm(cfg):
    run_id = _record(cfg, "train-rm", [{"method": "rm", "proxy": f"rm:{cfg.output}", "policy": cfg.policy,
                                        "gold": cfg.gold, "accuracy": 0.7, "pairs": cfg.pairs}])
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output) / "bonrl_rm.json").write_text(json.dumps({"members": ["."], "run_id": run_id}))
    return Path(cfg.output)


def fake_sample(cfg):
    rows = []
    for proxy in cfg.proxy:
        for n in cfg.ns:
            kl = math.log(n) - (n - 1) / n
            rows.append({"method": "bon", "n": n, "kl": kl, "proxy": proxy, "policy": cfg.policy, "gold": cfg.gold,
                         "proxy_mean": kl, "proxy_se": 0.01, "gold_mean": kl - kl**2 / 4, "gold_se": 0.01})
    return _record(cfg, "sample", rows)


def fake_ppo(cfg, method="ppo"):
    if getattr(cfg, "resume", False):
        RESUMED.append(Path(cfg.output).name)
    rows = [{"method": method, "step": s, "kl": s / 2, "beta": cfg.beta, "proxy": cfg.proxy, "policy": cfg.policy,
             "gold": cfg.gold, "proxy_mean": s / 2, "proxy_se": 0.01, "gold_mean": s / 3, "gold_se": 0.01,
             "trained_tokens": 100 * s} for s in range(cfg.steps + 1)]
    return _record(cfg, method, rows)


def fake_rl(cfg):
    return fake_ppo(cfg, method=cfg.algo)


@pytest.fixture
def fake_stages(monkeypatch):
    here = fake_train_rm.__module__
    for kind, function in (("rm", "fake_train_rm"), ("bon", "fake_sample"), ("ppo", "fake_ppo"), ("rl", "fake_rl")):
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
ALL = ["rm-0", "rm-1", "bon", "ppo-0", "ppo-1", "rl-0"]


def write(tmp_path: Path, study: dict, name: str = "study.yaml") -> str:
    (tmp_path / name).write_text(yaml.safe_dump(study))
    return str(tmp_path / name)


def report_runs(tmp_path: Path) -> set[str]:
    import pandas as pd

    return set(pd.read_csv(tmp_path / "out" / "report" / "points.csv")["run_id"])


def test_stages_run_in_order_with_the_proxies_wired(fake_stages, tmp_path):
    result = invoke(write(tmp_path, STUDY), "--quiet")
    assert result.exit_code == 0, result.output
    assert fake_stages == ALL
    config = json.loads((tmp_path / "out" / "resolved_config.json").read_text())["stages"]
    rm0, rm1 = f"rm:{Path('out') / 'rm-0'}", f"rm:{Path('out') / 'rm-1'}"
    assert config["bon"]["config"]["proxy"] == [rm0, rm1]  # BoN against every proxy
    assert config["ppo-0"]["config"]["proxy"] == rm0 and config["ppo-1"]["config"]["proxy"] == rm1
    assert config["ppo-1"]["needs"] == ["rm-1"] and config["bon"]["needs"] == ["rm-0", "rm-1"]
    # common reaches every stage that has the option; the entry wins; the experiment tags every row.
    assert config["rm-1"]["config"]["pairs"] == 100 and config["ppo-0"]["config"]["max_new_tokens"] == 8
    rows = R.load(tmp_path / "results.sqlite")
    assert set(rows["experiment"]) == {"study"} and len(set(rows["run_id"])) == 6
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


def test_changing_one_proxy_reruns_it_and_the_stages_that_read_it(fake_stages, tmp_path):
    assert invoke(write(tmp_path, STUDY), "--quiet").exit_code == 0
    fake_stages.clear()
    changed = {**STUDY, "train_rm": [{"pairs": 50}, {"pairs": 120}]}
    assert invoke(write(tmp_path, changed), "--quiet").exit_code == 0
    assert fake_stages == ["rm-1", "bon", "ppo-1"]  # ppo-0 and rl-0 optimize rm-0, unchanged


def test_a_failed_stage_leaves_no_marker_and_the_next_run_starts_there(fake_stages, tmp_path):
    path = write(tmp_path, STUDY)
    (tmp_path / "out" / "ppo-1").mkdir(parents=True)
    (tmp_path / "out" / "ppo-1" / "fail").write_text("")
    result = invoke(path, "--quiet")
    assert result.exit_code == 1 and "stage failed on purpose" in result.stderr
    assert fake_stages == ["rm-0", "rm-1", "bon", "ppo-0", "ppo-1"]
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


@pytest.mark.parametrize("case", ["stage-key", "stage-value", "common-key", "reserved", "proxy", "force",
                                  "report-key", "no-rm"])
def test_a_bad_setting_anywhere_stops_before_the_first_stage(case, fake_stages, tmp_path):
    study = json.loads(json.dumps(STUDY))
    force = []
    expected = {
        "stage-key": "ppo[1] (stage ppo-1): config: unknown key 'bogus'",
        "stage-value": "ppo[1] (stage ppo-1): beta",
        "common-key": "common: unknown key 'max_new_tokenz'",
        "reserved": "train_rm[0]: 'output' is set by the experiment",
        "proxy": "rl[0]: proxy 'rm-7' is not a stage",
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


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_preset_plans_and_validates(preset):
    cfg = C.resolve(C.ExperimentConfig, C.load_yaml(REPO / "configs" / preset))
    stages, report_cfg = experiment.plan(cfg)
    names = [s.name for s in stages]
    assert names[0] == "rm-0" and "bon" in names
    assert len({s.hash for s in stages}) == len(stages)
    assert all(Path(s.cfg.output).parent == Path(cfg.output) for s in stages)
    assert report_cfg.experiment == cfg.name == preset.removesuffix(".yaml")


# ----------------------------------------------------------------------------------------------
# The smoke preset, end to end on tiny models.


def test_smoke_experiment_resumes_after_the_proxy_stage_without_retraining_it(tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) as best-of-n starts, then rerun: the proxy is reused, the report is complete."""
    preset = REPO / "configs" / "smoke.yaml"
    shutil.copy(preset, tmp_path / "smoke.yaml")
    real_run_stage = experiment.run_stage

    def interrupted(stage):
        if stage.kind == "bon":
            raise KeyboardInterrupt
        return real_run_stage(stage)

    start = time.perf_counter()
    monkeypatch.setattr(experiment, "run_stage", interrupted)
    result = invoke("smoke.yaml", "--output", "smoke")
    assert result.exit_code == 130, result.output
    rm_dir = tmp_path / "smoke" / "rm-0"
    marker, checkpoint = rm_dir / experiment.MARKER, rm_dir / "bonrl_rm.json"
    assert marker.is_file() and checkpoint.is_file()
    assert not (tmp_path / "smoke" / "bon" / experiment.MARKER).exists()
    stamps = (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns)

    monkeypatch.setattr(experiment, "run_stage", real_run_stage)
    result = invoke("smoke.yaml", "--output", "smoke")
    assert result.exit_code == 0, result.output
    seconds = time.perf_counter() - start
    assert "stage rm-0: complete" in result.stderr
    assert (marker.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == stamps
    with R.ResultsStore(tmp_path / "results.sqlite") as store:
        runs = store.runs()
    assert (runs["command"] == "train-rm").sum() == 1  # trained once

    rows = R.load(tmp_path / "results.sqlite")
    curves = rows[(rows["experiment"] == "smoke") & (rows["method"] != "rm")]
    assert set(curves["method"]) == {"bon", "ppo", "dpo", "distill"}
    page = Page((tmp_path / "smoke" / "report" / "report.html").read_text(encoding="utf-8"))
    points = page.frame("points")
    assert sorted(map(row_key, points.to_dict("records"))) == sorted(map(row_key, curves.to_dict("records")))
    assert len(points) == len(curves) > 5
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    print(f"smoke experiment: {seconds:.0f} s including the interrupted first run")
