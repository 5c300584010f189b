"""`bonrl experiment CONFIG.yaml`: a whole Gao et al. (2022) study from one file, resumable.

    bonrl experiment configs/smoke.yaml              # tiny models, ~2 minutes on a laptop CPU
    bonrl experiment configs/cpu-demo.yaml           # `make demo`: smollm2-135m, VADER gold
    bonrl experiment configs/cpu-demo.yaml --force ppo-1 --force report

The stages, in order, each writing under OUTPUT/<stage>/ and tagging every result row with the
experiment's name:

    rm-0, rm-1, ...    `bonrl train-rm`, one per `train_rm` entry: gold-labelled comparisons -> proxy RM
                       (OUTPUT/rm-K is the checkpoint, used as the proxy spec rm:OUTPUT/rm-K)
    samples            `bonrl sample` without a proxy: N completions per shared evaluation prompt, drawn
                       once and scored by the gold, for every proxy of the experiment
    bon-rm-0, ...      `bonrl sample --from-samples`: that one draw rescored by one RM stage's proxy specs
                       (`sample.proxy`: every RM by default; rm-K@min, rm-K@mean-1std, rm-K@member-0 name an
                       ensemble's aggregations and members), best-of-n over the n grid for each
    ppo-0, ppo-1, ...  `bonrl ppo`, one per `ppo` entry (e.g. one per β), against rm-0 unless it names one
    rl-0, ...          `bonrl rl`, one per `rl` entry (algo: rloo | grpo)
    dpo-0, ...         `bonrl dpo`, one per `dpo` entry, on the comparisons of an RM stage (below)
    distill-0, ...     `bonrl distill`, one per `distill` entry (n, objective: sft | vbon), against rm-0
                       unless it names another proxy
    report             `bonrl report` over exactly the runs of the stages above (OUTPUT/report)

Best-of-n for many proxies from one sampling (Gao et al. 2022 use one set of samples per policy for all
their proxies): the `samples` stage does not depend on any RM, and each bon-rm-K stage depends only on
it and on rm-K, so a sweep of k proxies costs k RM trainings and k rescorings (seconds), one sampling,
and adding a proxy to a finished sweep runs only its RM and its rescoring. The stages of one ensemble
(@mean, @min, members) are one rescoring, which runs each member model once over the samples.

One shared evaluation set: the experiment's `eval_prompts` (the first that many held-out prompts) is
given to best-of-n and to every RL stage, and no stage may set its own, so every method is measured on
the same prompts and the report can pair their gains prompt by prompt (issue: compare like with like).
Replicate seeds: an RL entry with `seeds: [0, 1, 2]` becomes one stage per seed (ppo-0-seed0,
ppo-0-seed1, ...; `--force ppo-0` reruns them all); the report pools them into one curve whose interval
includes the seed-to-seed spread.
Same labels for DPO: a `dpo` entry trains on the comparisons of one RM stage — `comparisons: rm-K`, by
default the stage of its proxy (rm-0 unless it names another) — whose data settings (policy, gold,
prompts, sampling, pairs, labels, noise and data seed) are copied into it, so it reads the very
pairs that proxy was trained on from the comparison cache; an entry may not set them itself.

A stage's config is built the way the stage's own command builds it (`config.base.resolve`): built-in
defaults < `common` (the keys that stage has) < the stage's entry < what the experiment fixes (seed
unless the entry sets one, device, cache_dir, quiet, experiment, results, output). All of them are
built and validated before the first stage starts, so a typo in the last stage stops the run at once
(exit 2) instead of after an hour of training.

Resuming. After a stage succeeds, OUTPUT/<stage>/.bonrl-stage.json records the hash of its config (and
of the configs of the stages it reads, e.g. the RM a PPO run optimizes) and its run id. A later run
skips a stage whose marker has the same hash and whose run finished in the results table, so an
interrupted experiment resumes where it stopped, and editing one stage reruns that stage and those
that depend on it. The marker is removed before a stage starts and written only after it succeeds. An interrupted
PPO, RL, DPO or distill stage with an unchanged config and a complete checkpoint continues from it (set
`checkpoint_every` in its entry to have some); other stages start over, replacing their earlier run
(`overwrite`: the stage directory belongs to the experiment), which is marked superseded in the table.
`--force NAME` reruns a stage regardless: a stage name (rm-0, samples, bon-rm-0, ppo-1, ...), a kind (rm,
bon, ppo, rl: all of them) or `all`; forcing a stage does not force the stages after it (their configs did not
change) unless it is written NAME+ (rm-0+: rm-0 and every stage that reads it, directly or not). The report
is always rewritten (it only reads the table).

One process per folder: `run` holds an advisory lock on OUTPUT/.bonrl-experiment.lock (flock, with the
holder's pid in it) for the whole run, so a second `bonrl experiment` on the folder exits 2 naming that pid
instead of taking the first one's live stages for interrupted ones. The OS drops the lock with the process,
however it ends, so a killed experiment resumes with no lock to clear.

Results go to `results` if given, else $BONRL_RESULTS, else OUTPUT/results.sqlite.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import config_fields, resolve, to_dict
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.record import console, files

MARKER = ".bonrl-stage.json"
STARTED = ".bonrl-stage-started.json"  # checkpointed kinds: which config last started here, for --resume

# kind -> (config class, "module:function" that runs it). The report is handled apart: it always runs.
STAGES = {
    "rm": (C.TrainRMConfig, "bon_vs_rl.methods.reward_model:train_rm"),
    "samples": (C.SampleConfig, "bon_vs_rl.methods.best_of_n:sample"),  # no proxy: draw and gold-score, no rows
    "bon": (C.SampleConfig, "bon_vs_rl.methods.best_of_n:sample"),  # --from-samples: the draw rescored by some proxies
    "ppo": (C.PPOConfig, "bon_vs_rl.methods.ppo:train"),
    "rl": (C.RLConfig, "bon_vs_rl.methods.trl_rl:train"),
    "dpo": (C.DPOConfig, "bon_vs_rl.methods.dpo:train"),
    "distill": (C.DistillConfig, "bon_vs_rl.methods.distill:train"),
}
CHECKPOINTED = ("ppo", "rl", "dpo", "distill")  # kinds that resume an interrupted stage from a checkpoint
FIXED = ("output", "results", "experiment", "device", "cache_dir", "quiet", "eval_prompts")  # set by the experiment only
UNHASHED = ("quiet", "device", "cache_dir", "resume", "overwrite", "log_with")  # how a stage runs, not what it computes
RM_STAGE = re.compile(r"(rm-\d+)(@[^@]+)?")  # rm-3, or rm-3@min: an RM stage and an aggregation of it


@dataclass
class Stage:
    name: str  # rm-0, bon, ppo-1, ...
    kind: str  # rm, bon, ppo, rl
    cfg: Any  # the validated config of the stage's command
    needs: list[str] = field(default_factory=list)  # stages whose output it reads
    hash: str = ""
    samples_from: str | None = None  # a rescoring stage: the stage whose samples file it rescores (set at run time)

    @property
    def marker(self) -> Path:
        return Path(self.cfg.output) / MARKER


# ----------------------------------------------------------------------------------------------
# 1. Planning: every stage's config, validated before anything runs.


def results_path(cfg: C.ExperimentConfig) -> str:
    return cfg.results or os.environ.get("BONRL_RESULTS") or str(Path(cfg.output) / "results.sqlite")


def fields_of(cls: type) -> set[str]:
    return {f.name for f in config_fields(cls)}


def check_reserved(where: str, entry: dict) -> None:
    for key in entry:
        if key.replace("-", "_") in FIXED:
            raise ConfigError(f"{where}: {key!r} is set by the experiment for every stage; "
                                f"set it at the top level of the experiment file instead")


def proxy_spec(value: str, rm_specs: dict[str, str], where: str) -> tuple[str, str | None]:
    """(scorer spec, RM stage it reads or None): rm-K names the experiment's K-th proxy and rm-K@min (@mean,
    @mean-<λ>std, @member-<k>) an aggregation of it; anything else is a scorer spec used as it is."""
    match = RM_STAGE.fullmatch(value)
    if match:
        stage, aggregation = match.group(1), match.group(2) or ""
        if stage not in rm_specs:
            raise ConfigError(f"{where}: proxy {value!r} is not a stage of this experiment "
                                f"(it has {', '.join(rm_specs)})")
        if aggregation:
            from bon_vs_rl.measurement import scorers

            try:
                scorers.parse_aggregation(aggregation[1:], "proxy")
            except ConfigError as exc:
                raise ConfigError(f"{where}: {value!r}: {str(exc).removeprefix('proxy: ')}") from None
        return rm_specs[stage] + aggregation, stage
    return value, None


def stage_config(cfg: C.ExperimentConfig, kind: str, name: str, entry: dict, where: str, results: str) -> Any:
    cls = STAGES[kind][0]
    check_reserved(where, entry)
    values = {"seed": cfg.seed}
    values.update({k: v for k, v in cfg.common.items() if k.replace("-", "_") in fields_of(cls)})
    values.update(entry)
    values.update(output=str(Path(cfg.output) / name), results=results, experiment=cfg.name,
                  device=cfg.device, cache_dir=cfg.cache_dir, quiet=cfg.quiet)
    if "eval_prompts" in fields_of(cls):  # the shared evaluation set (train-rm's held-out pairs are its own)
        values["eval_prompts"] = cfg.eval_prompts
    if "overwrite" in fields_of(cls):
        # A stage that runs again (its config changed, or --force) replaces its own earlier run: the
        # experiment owns OUTPUT/<stage>, reruns the stages that read it, and reports only this invocation's runs.
        # It also decides when a stage resumes (resume_interrupted): an entry's own resume has no say.
        values["overwrite"] = True
    if "resume" in fields_of(cls):
        values["resume"] = False
    try:
        return resolve(cls, values)
    except ConfigError as exc:
        raise ConfigError(f"{where} (stage {name}): {exc}") from None


def plan(cfg: C.ExperimentConfig) -> tuple[list[Stage], C.ReportConfig]:
    """The stages in run order and the report's config; raises ConfigError on any bad setting."""
    results = results_path(cfg)
    check_reserved("common", cfg.common)
    known = set().union(*(fields_of(cls) for cls, _ in STAGES.values()))
    for key in cfg.common:
        if key.replace("-", "_") not in known:
            raise ConfigError(f"common: unknown key {key!r}; it is not an option of any stage "
                                "(see bonrl train-rm/sample/ppo/rl --help)")

    stages = []
    for i, entry in enumerate(cfg.train_rm):
        stages.append(Stage(f"rm-{i}", "rm", stage_config(cfg, "rm", f"rm-{i}", entry, f"train_rm[{i}]", results)))
    rm_specs = {s.name: f"rm:{s.cfg.output}" for s in stages}
    rm_stages = {s.name: s for s in stages if s.kind == "rm"}

    def wire(entry: dict, where: str, default: list[str]) -> tuple[dict, list[str], list[str | None]]:
        """The entry with its proxy specs resolved, the RM stages they read, and each spec's RM stage."""
        entry = dict(entry)
        given = entry.get("proxy", cfg.common.get("proxy", default))
        wired = [proxy_spec(str(v), rm_specs, where) for v in (given if isinstance(given, list) else [given])]
        entry["proxy"] = [spec for spec, _ in wired]
        reads = [stage for _, stage in wired]
        return entry, list(dict.fromkeys(s for s in reads if s)), reads

    # Best-of-n: one draw (`samples`), rescored per RM stage (bon-rm-K) by the specs that name it.
    entry, _, reads = wire(cfg.sample, "sample", list(rm_specs))
    if not entry["proxy"]:
        raise ConfigError("sample: proxy is an empty list; name RM stages (e.g. proxy: [rm-0, rm-1]) or leave "
                            "it out for every RM")
    groups: dict[str, list[str]] = {}
    for i, (spec, stage) in enumerate(zip(entry["proxy"], reads)):
        groups.setdefault(f"bon-{stage}" if stage else f"bon-x{i}", []).append(spec)
    rescorings = {name: stage_config(cfg, "bon", name, {**entry, "proxy": specs}, "sample", results)
                  for name, specs in groups.items()}
    # The draw is shaped by the sampling settings and N alone: the n grid below N, β and the bootstrap only
    # change the estimates, so they are left at their defaults here and editing them reruns only the rescorings.
    first = next(iter(rescorings.values()))
    N = first.samples_per_prompt or max(first.ns)
    samples = Stage("samples", "samples", stage_config(cfg, "samples", "samples", {
        **entry, "proxy": [], "n": str(N), "samples_per_prompt": N, "beta": "",
        "bootstrap": C.SampleConfig.__dataclass_fields__["bootstrap"].default}, "sample", results))
    stages.append(samples)
    for name, stage_cfg in rescorings.items():
        needs = [samples.name] + list(dict.fromkeys(
            r for s, r in zip(entry["proxy"], reads) if s in stage_cfg.proxy and r))
        stages.append(Stage(name, "bon", stage_cfg, needs, samples_from=samples.name))
    for kind, entries in (("ppo", cfg.ppo), ("rl", cfg.rl), ("dpo", cfg.dpo), ("distill", cfg.distill)):
        for i, raw in enumerate(entries):
            raw = dict(raw)
            source = raw.pop("comparisons", None) if kind == "dpo" else None
            entry, needs, _ = wire(raw, f"{kind}[{i}]", [str(source or "rm-0")])
            if len(entry["proxy"]) != 1:
                raise ConfigError(f"{kind}[{i}]: proxy must be one RM (e.g. rm-1), not a list; "
                                    f"add one {kind} entry per proxy")
            entry["proxy"] = entry["proxy"][0]
            if entry.get("second_proxy"):  # may name an RM stage too (rm-2), which then runs first
                entry["second_proxy"], stage = proxy_spec(str(entry["second_proxy"]), rm_specs, f"{kind}[{i}]")
                needs = needs + [stage] if stage and stage not in needs else needs
            if kind == "dpo":
                entry, needs = use_comparisons(entry, needs, source, rm_stages, f"{kind}[{i}]")
            seeds = replicate_seeds(entry.pop("seeds", None), f"{kind}[{i}]")
            if seeds is None:
                name = f"{kind}-{i}"
                stages.append(Stage(name, kind, stage_config(cfg, kind, name, entry, f"{kind}[{i}]", results), needs))
                continue
            if "seed" in entry:
                raise ConfigError(f"{kind}[{i}]: give either seed or seeds, not both")
            for seed in seeds:
                name = f"{kind}-{i}-seed{seed}"
                stages.append(Stage(name, kind, stage_config(cfg, kind, name, {**entry, "seed": seed}, f"{kind}[{i}]",
                                                             results), needs))

    check_inputs(stages, {s.cfg.output for s in stages if s.kind == "rm"})
    by_name = {s.name: s for s in stages}
    for s in stages:  # in run order, so every stage's needs are hashed before it
        config = {k: v for k, v in to_dict(s.cfg).items() if k not in UNHASHED}
        blob = json.dumps({"kind": s.kind, "config": config, "needs": [by_name[n].hash for n in s.needs]},
                          sort_keys=True, default=str)
        s.hash = hashlib.sha256(blob.encode()).hexdigest()[:16]

    report_entry = dict(cfg.report)
    check_reserved("report", report_entry)
    for key in ("run_id",):
        if key in report_entry:
            raise ConfigError(f"report: {key!r} is set by the experiment (the runs of its stages)")
    report_entry.update(output=str(Path(cfg.output) / "report"), results=results, experiment=cfg.name,
                        quiet=cfg.quiet)
    try:
        report_cfg = resolve(C.ReportConfig, report_entry)
    except ConfigError as exc:
        raise ConfigError(f"report: {exc}") from None
    return stages, report_cfg


def check_inputs(stages: list[Stage], made_here: set[str]) -> None:
    """What each stage will read, checked before the first stage runs: its scorer specs (an rm: proxy that an RM
    stage of this experiment will write is checked for its form only) and the shared evaluation set against
    the prompts' held-out split."""
    from bon_vs_rl.measurement import prompts, scorers

    checked: set[tuple] = set()
    for stage in stages:
        proxies = getattr(stage.cfg, "proxy", [])
        proxies = proxies if isinstance(proxies, list) else [proxies] if proxies else []
        count = getattr(stage.cfg, "eval_prompts", 0)
        try:
            second = [("second-proxy", stage.cfg.second_proxy)] if getattr(stage.cfg, "second_proxy", "") else []
            for role, spec in [("gold", stage.cfg.gold), *(("proxy", p) for p in proxies), *second]:
                later = spec.startswith("rm:") and spec[3:].partition("@")[0] in made_here  # an RM stage writes it
                if (role, spec) not in checked:
                    scorers.check_spec(spec, role, exists=not later)
                    checked.add((role, spec))
            if count and not stage.cfg.prompts.startswith("hf:") and (stage.cfg.prompts, count) not in checked:
                prompts.load_prompts(stage.cfg.prompts, "eval", count)
                checked.add((stage.cfg.prompts, count))
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name}: {exc}") from None


def use_comparisons(entry: dict, needs: list[str], source, rm_stages: dict[str, Stage],
                    where: str) -> tuple[dict, list[str]]:
    """A DPO entry trains on one RM stage's comparisons: that stage's data settings are copied into it (and
    its seed becomes the DPO run's data_seed), so both read the same cached pairs and labels."""
    source = str(source) if source is not None else (needs[0] if needs else "rm-0")
    if source not in rm_stages:
        raise ConfigError(f"{where}: comparisons {source!r} is not an RM stage of this experiment "
                            f"(it has {', '.join(rm_stages)})")
    clash = [k for k in entry if k.replace("-", "_") in (*C.COMPARISON_DATA_FIELDS, "data_seed")]
    if clash:
        raise ConfigError(f"{where}: {clash[0]!r} is set by comparisons: {source} (DPO trains on that RM's "
                            "pairs); change it in that train_rm entry, or name another RM stage")
    rm = rm_stages[source].cfg
    entry = {**entry, **{name: getattr(rm, name) for name in C.COMPARISON_DATA_FIELDS},
             "data_seed": rm.seed if rm.data_seed is None else rm.data_seed}
    return entry, list(dict.fromkeys([*needs, source]))


def replicate_seeds(value, where: str) -> list[int] | None:
    """`seeds: [0, 1, 2]` (or `seeds: 3` for 0, 1, 2) -> the list; None when the entry has no seeds key."""
    if value is None:
        return None
    seeds = list(range(value)) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of non-negative integers, e.g. seeds: [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds {seeds} repeat a seed; replicates need distinct seeds")
    return seeds


def forced(stages: list[Stage], force: list[str]) -> set[str]:
    """--force names: a stage (rm-0), a kind (rm, ppo, ...), `report` or `all`; NAME+ adds every stage that
    reads NAME's output, directly or through another stage (rm-0+: rm-0, its rescoring, the RL runs against it).
    A forced stage alone does not rerun its readers: its config, hence their hashes, did not change."""
    names = {s.name for s in stages}
    out: set[str] = set()
    for item in force:
        base, downstream = (item[:-1], True) if item.endswith("+") else (item, False)
        if base == "all":
            picked = set(names)
        elif base in names:
            picked = {base}
        elif any(n.startswith(f"{base}-seed") for n in names):  # an entry with seeds: all its replicates
            picked = {n for n in names if n.startswith(f"{base}-seed")}
        elif base in STAGES and any(s.kind == base for s in stages):
            picked = {s.name for s in stages if s.kind == base}
        elif base == "report":  # the report always runs
            picked = set()
        else:
            raise ConfigError(f"force: no stage {base!r} in this experiment; stages are "
                              f"{', '.join(s.name for s in stages)}, report (or a kind: {', '.join(STAGES)}; or all), "
                              "each optionally with + for the stages that read it")
        if downstream:
            for stage in stages:  # in run order: a stage's needs come before it
                if picked & set(stage.needs):
                    picked.add(stage.name)
        out |= picked
    return out


# ----------------------------------------------------------------------------------------------
# 2. Resuming: a stage is complete when its marker has the same hash and its run finished.


def read_marker(stage: Stage) -> dict | None:
    try:
        return json.loads(stage.marker.read_text())
    except (OSError, ValueError):
        return None


def finished_runs(results: str) -> set[str]:
    from bon_vs_rl.record import results as R

    if not Path(results).is_file():
        return set()
    with R.ResultsStore(results) as store:
        runs = store.runs()
    if "status" in runs:
        runs = runs[runs["status"].astype(str) == "finished"]
    return set(runs["run_id"].astype(str))


def is_complete(stage: Stage, finished: set[str]) -> dict | None:
    marker = read_marker(stage)
    if marker and marker.get("hash") == stage.hash and str(marker.get("run_id")) in finished:
        return marker
    return None


# Where each checkpointed kind keeps its complete checkpoints: "module:function" of OUTPUT -> list.
CHECKPOINTS = {"ppo": "bon_vs_rl.methods.ppo:checkpoint_dirs", "distill": "bon_vs_rl.methods.ppo:checkpoint_dirs",
               "rl": "bon_vs_rl.methods.trl_rl:complete_checkpoints", "dpo": "bon_vs_rl.methods.dpo:complete_checkpoints"}


def has_checkpoint(stage: Stage) -> bool:
    module, function = CHECKPOINTS[stage.kind].split(":")
    return bool(getattr(importlib.import_module(module), function)(Path(stage.cfg.output)))


def resume_interrupted(stage: Stage, fresh: bool, quiet: bool) -> None:
    """An interrupted PPO, RL, DPO or distill stage with the same config and a complete checkpoint continues from
    it (`--resume`, which refuses when there is nothing to resume); a forced, changed or finished one, or one
    interrupted before its first checkpoint, starts afresh (`--overwrite`: its earlier run is superseded)."""
    started = Path(stage.cfg.output) / STARTED
    try:
        same = json.loads(started.read_text()).get("hash") == stage.hash
    except (OSError, ValueError):
        same = False
    if same and not fresh and has_checkpoint(stage):
        stage.cfg.resume, stage.cfg.overwrite = True, False
        console.note(f"stage {stage.name}: was interrupted; resuming from its last checkpoint", quiet)
    files.write_json(started, {"stage": stage.name, "hash": stage.hash})


LOCK = ".bonrl-experiment.lock"


@contextlib.contextmanager
def hold(root: Path) -> Iterator[None]:
    """One `bonrl experiment` per output folder at a time: an advisory lock (flock) on OUTPUT/.bonrl-experiment.lock,
    which holds the holder's pid. The OS drops it when the process ends, however it ends, so a killed run
    leaves nothing to clean up and the next one resumes. A second process is refused (exit 2) naming the pid."""
    import fcntl

    path = root / LOCK
    handle = open(path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise ConfigError(f"output: {root} is in use by another bonrl experiment (pid {pid}); wait for it to "
                              f"finish, or stop it (kill -INT {pid}) and run this again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def supersede(old: str, new: str, results: str) -> None:
    """A stage that ran again replaces its earlier run (a changed config, --force): mark it so in the table."""
    from bon_vs_rl.record import results as R

    with R.ResultsStore(results) as store:
        store.supersede([old], new)


def stage_named(stages: list[Stage], name: str) -> Stage:
    return next(s for s in stages if s.name == name)


def samples_file(stage: Stage, run_id: str) -> Path:
    """The samples file a `samples` stage's run wrote (bonrl sample: OUTPUT/RUN_ID/samples.parquet)."""
    path = (Path(stage.cfg.output) / run_id / "samples.parquet").resolve()
    if not path.is_file():
        raise ConfigError(f"stage {stage.name}: its samples file {path} is gone; rerun it with --force {stage.name}")
    return path


def run_stage(stage: Stage) -> str:
    """Run one stage's command; returns its run id."""
    module, function = STAGES[stage.kind][1].split(":")
    out = getattr(importlib.import_module(module), function)(stage.cfg)
    if stage.kind == "rm":  # train_rm returns its checkpoint; the run id is in the RM's metadata
        from bon_vs_rl.measurement import scorers

        return str(json.loads((Path(out) / scorers.RM_METADATA).read_text())["run_id"])
    return str(out)


# ----------------------------------------------------------------------------------------------
# 3. The command.


def run(args: tuple[C.ExperimentConfig, list[str]]) -> Path:
    """Plan and validate every stage, take the folder's lock, run the stages not yet complete, then write the
    report."""
    from bon_vs_rl.measurement import models

    cfg, force = args
    stages, report_cfg = plan(cfg)
    rerun = forced(stages, force)
    if cfg.device not in ("auto", "cpu"):  # a device this machine lacks: refused before anything is written
        models.resolve_device(cfg.device)
    root = Path(cfg.output)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output: {root} is a file; choose a directory for the experiment")
    root.mkdir(parents=True, exist_ok=True)
    with hold(root):
        return run_stages(cfg, stages, report_cfg, rerun)


def run_stages(cfg: C.ExperimentConfig, stages: list[Stage], report_cfg: C.ReportConfig, rerun: set[str]) -> Path:
    root = Path(cfg.output)
    files.write_json(root / "resolved_config.json",
                     {"experiment": to_dict(cfg), "results": results_path(cfg),
                      "stages": {s.name: {"hash": s.hash, "needs": s.needs, "config": to_dict(s.cfg)} for s in stages},
                      "report": to_dict(report_cfg)})

    finished = finished_runs(results_path(cfg))
    run_ids, ran = [], {}  # report's runs; stage name -> its run id (this invocation's, or a complete earlier one)
    for stage in stages:
        marker = None if stage.name in rerun else is_complete(stage, finished)
        if marker:
            console.note(f"stage {stage.name}: complete (config {stage.hash}, run {marker['run_id']}), skipped",
                         cfg.quiet)
            ran[stage.name] = str(marker["run_id"])
            if stage.kind != "samples":  # the draw itself writes no result rows: its rescorings do
                run_ids.append(str(marker["run_id"]))
            continue
        if stage.samples_from:
            stage.cfg.from_samples = str(samples_file(stage_named(stages, stage.samples_from), ran[stage.samples_from]))
        # A stage that completed before (same config) but whose rows are gone must run from scratch.
        previous = read_marker(stage)
        finished_before = bool(previous and previous.get("hash") == stage.hash)
        stage.marker.unlink(missing_ok=True)  # a stage that fails half-way must not look complete
        if stage.kind in CHECKPOINTED:
            resume_interrupted(stage, fresh=stage.name in rerun or finished_before, quiet=cfg.quiet)
        console.note(f"stage {stage.name}: running ({stage.cfg.output})", cfg.quiet)
        start = time.perf_counter()
        try:
            run_id = run_stage(stage)
        except BaseException as exc:
            what = "was interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            console.note(f"stage {stage.name} {what}; the stages before it are kept: run the same command "
                         "again to resume from it", quiet=False)
            raise
        if previous and previous.get("run_id") and str(previous["run_id"]) != run_id:
            supersede(str(previous["run_id"]), run_id, results_path(cfg))  # this stage's earlier run is replaced
        seconds = time.perf_counter() - start
        files.write_json(stage.marker, {"stage": stage.name, "hash": stage.hash, "run_id": run_id,
                                        "seconds": seconds, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "config": to_dict(stage.cfg)})
        console.note(f"stage {stage.name}: done in {seconds:.0f} s (run {run_id})", cfg.quiet)
        ran[stage.name] = run_id
        if stage.kind != "samples":
            run_ids.append(run_id)

    from bon_vs_rl.report import write

    report_cfg.run_id = run_ids
    console.note("stage report: writing", cfg.quiet)
    return write.report(report_cfg)
