"""The `bonrl` command line: one subcommand per stage of the Gao et al. (2022) study.

    bonrl train-rm     gold-labelled comparisons -> proxy reward model
    bonrl sample       best-of-n against the proxy, unbiased estimates for every n
    bonrl ppo          PPO with a KL penalty to the reference policy
    bonrl rl           TRL's RLOO / GRPO, evaluated on the same axes
    bonrl lab          the exact Goodhart lab: BoN, the KL-regularized optimum and PPO, no language model
    bonrl dpo          DPO on the comparisons a proxy RM is trained on, evaluated on the same axes
    bonrl distill      best-of-n distilled into the policy (SFT on picks, or vBoN), evaluated on the same axes
    bonrl report       figures, fits and comparison tables from the results table
    bonrl experiment   the whole study from one YAML file
    bonrl results      list runs, export the results table

Every option of a stage command comes from that stage's dataclass in `config/commands.py` (default and help
text alike), so --help, YAML presets and the code cannot disagree. Heavy libraries (torch,
transformers, trl) are imported inside the stage modules, so `bonrl --help` stays fast.

Exit codes: 0 success, 2 bad input (detected before any work), 1 a failure during the work, 130 interrupted
(SIGINT, also for a process started with SIGINT ignored, as a script's `bonrl ... &` starts it).

Help is plain text (rich_markup_mode=None): rich's markup would read `[default: 0.05]` and the `[tracking]` of
`pip install 'bonrl[tracking]'` as tags and drop them.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Any, Optional

import typer

from bon_vs_rl import __version__
from bon_vs_rl.config import commands as C
from bon_vs_rl.config.base import config_fields, load_yaml, resolve
from bon_vs_rl.errors import ConfigError

app = typer.Typer(
    help="Best-of-n versus KL-constrained RL against a proxy reward model, measured by a gold reward.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help as written: square brackets are text, not markup (module docstring)
)


def fail(message: str, code: int) -> typer.Exit:
    """One line on stderr, then the exit code (2 = bad input, 1 = failure during the work)."""
    typer.echo(f"bonrl: error: {message}", err=True)
    return typer.Exit(code)


def run_stage(runner: str, cfg: Any) -> Any:
    """Import `module:function` lazily and run it, mapping errors to the documented exit codes."""
    module_name, function_name = runner.split(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return function(cfg)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    except KeyboardInterrupt:
        raise fail("interrupted", 130) from None
    except Exception as exc:  # a failure during the work: one line, the traceback only on request
        if os.environ.get("BONRL_DEBUG"):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise fail(f"{type(exc).__name__}: {first_line} (set BONRL_DEBUG=1 for the traceback)", 1) from None


def _cli_type(annotation: Any) -> Any:
    """The click-facing type of a config field: every option defaults to None (= not given)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is list or annotation is list:
        return Optional[list[str]]
    if args and origin is not None:  # X | None
        return Optional[args[0]]
    return Optional[annotation]


def stage_command(name: str, config_class: type, runner: str, help: str) -> None:
    """Register `bonrl NAME` with one option per field of `config_class`, plus --config FILE."""
    hints = typing.get_type_hints(config_class)
    parameters = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help="YAML preset; CLI flags override its values."),
            annotation=Optional[Path],
        )
    ]
    for f in config_fields(config_class):
        if hints[f.name] is dict:
            continue  # nested mappings live in YAML only
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            flag = f"{flag}/--no-{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        parameters.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(None, flag, help=f"{f.metadata['help']} [default: {default!r}]",
                                     show_default=False),
                annotation=_cli_type(hints[f.name]),
            )
        )

    def command(**values: Any) -> None:
        config_file = values.pop("config")
        try:
            yaml_values = load_yaml(config_file) if config_file else {}
            cfg = resolve(config_class, yaml_values, values)
        except ConfigError as exc:
            raise fail(str(exc), 2) from None
        run_stage(runner, cfg)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__doc__ = help + _defaults_epilog(config_class)
    app.command(name, help=command.__doc__)(command)


def _defaults_epilog(config_class: type) -> str:
    return "\n\nDefaults come from bon_vs_rl/config/commands.py:" + config_class.__name__ + "."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bonrl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """bonrl: what do best-of-n and KL-constrained RL buy you, measured by gold, at the same KL?"""
    # Python turns SIGINT into KeyboardInterrupt only when it starts with SIGINT's default action; a
    # process started in the background by a shell script inherits SIGINT ignored and would never stop on
    # it. Every stage stops on KeyboardInterrupt (temporary files removed, its run marked failed; exit 130).
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except ValueError:  # not the main thread (an embedding program's worker): leave its signals alone
        pass


stage_command(
    "train-rm", C.TrainRMConfig, "bon_vs_rl.methods.reward_model:train_rm",
    "Label comparisons with the gold scorer, train a proxy reward model, report held-out accuracy.",
)
stage_command(
    "sample", C.SampleConfig, "bon_vs_rl.methods.best_of_n:sample",
    "Best-of-n: sample N per prompt, score with proxy and gold, unbiased estimates for every n.",
)
stage_command(
    "ppo", C.PPOConfig, "bon_vs_rl.methods.ppo:train",
    "PPO with a KL penalty to the reference policy; proxy, gold and KL at every evaluation.",
)
stage_command(
    "rl", C.RLConfig, "bon_vs_rl.methods.trl_rl:train",
    "TRL's RLOO or GRPO trainer against the proxy, evaluated on the same axes as BoN and PPO.",
)
stage_command(
    "lab", C.LabConfig, "bon_vs_rl.methods.lab:lab",
    "The Goodhart lab: best-of-n, the KL-regularized optimum and PPO, exact over a synthetic population.",
)
stage_command(
    "dpo", C.DPOConfig, "bon_vs_rl.methods.dpo:train",
    "DPO on the gold-labelled comparisons a proxy RM is trained on (same data, same cache), evaluated on the same "
    "axes as BoN and RL; --proxy is only measured.",
)
stage_command(
    "distill", C.DistillConfig, "bon_vs_rl.methods.distill:train",
    "Fine-tune the policy toward best-of-n against the proxy: SFT on best-of-n picks, or vBoN's reverse KL; "
    "evaluated on the same axes as BoN and RL.",
)
stage_command(
    "report", C.ReportConfig, "bon_vs_rl.report.write:report",
    "Figures, Gao et al. functional-form fits and comparison tables from the results table.",
)


@app.command("experiment")
def experiment(
    config: Path = typer.Argument(..., help="Experiment YAML file (see configs/)."),
    force: list[str] = typer.Option([], "--force", help=(
        "Rerun this stage even if complete (repeatable): a stage (rm-0, samples, ppo-1), a kind (rm, bon, ppo, ...) "
        "or all; STAGE+ also reruns every stage that reads it, directly or not (e.g. rm-0+).")),
    quiet: bool | None = typer.Option(None, "--quiet/--no-quiet", help="No progress bars."),
    device: str | None = typer.Option(None, "--device", help="Override the experiment's device."),
    results: str | None = typer.Option(None, "--results", help="Override the results table path."),
    output: str | None = typer.Option(None, "--output", help="Override the experiment's output directory."),
) -> None:
    """Run a whole study from one YAML file: RM(s) -> best-of-n -> RL -> report; complete stages are skipped."""
    try:
        yaml_values = load_yaml(config)
        cfg = resolve(C.ExperimentConfig, yaml_values,
                        {"quiet": quiet, "device": device, "results": results, "output": output})
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    run_stage("bon_vs_rl.experiment:run", (cfg, list(force)))


@app.command("results")
def results_command(
    results: str | None = typer.Option(None, "--results", help="Results table; default $BONRL_RESULTS."),
    export: Path | None = typer.Option(None, "--export", help="Write the results to a .csv or .parquet file (the rows "
                                       "that still describe their files; the others are named on stderr)."),
    experiment: str | None = typer.Option(None, "--experiment", help="Only this experiment."),
    method: str | None = typer.Option(None, "--method", help="Only this method (bon, ppo, rm, ...)."),
    overwrite: bool = typer.Option(False, "--overwrite/--no-overwrite", help="Let --export replace an existing file."),
) -> None:
    """List the runs in the results table, or export its rows. Reads only: the file is never written."""
    from bon_vs_rl.record import console, files
    from bon_vs_rl.record import results as R

    path = R.resolve_results_path(results)
    filters = {k: v for k, v in {"experiment": experiment, "method": method}.items() if v is not None}
    try:
        R.check_results_file(path)
        if not path.exists():
            raise ConfigError(f"results: {path} does not exist; run a command first or pass --results PATH")
        if export is not None:
            if export.suffix not in (".csv", ".parquet"):
                raise ConfigError(f"export: {export} must end in .csv or .parquet")
            files.check_directory(export.parent, "export")
            R.export(path, export, overwrite=overwrite, **filters)
            typer.echo(str(export))
            return
        with R.ResultsStore(path, read_only=True) as store:
            runs = store.runs()
        rows = R.load(path, **filters)
        if filters:  # a run is listed when it has result rows matching every filter
            keep = runs["run_id"].isin(set(rows["run_id"]))
            if experiment is not None and method is None:
                keep |= runs["experiment"] == experiment  # also a run of it that failed before writing a row
            runs = runs[keep]
        _, notes = R.check_rows(rows[rows["run_id"].isin(set(runs["run_id"]))])
    except ConfigError as exc:  # a missing, foreign or newer-format results file: bad input
        raise fail(str(exc), 2) from None
    runs = runs.copy()
    replaced = runs["superseded_by"].notna()
    runs.loc[replaced, "status"] = "superseded by " + runs.loc[replaced, "superseded_by"].astype(str)
    columns = [c for c in ("run_id", "experiment", "command", "status", "started_at", "ended_at") if c in runs]
    typer.echo(runs[columns].to_string(index=False) if len(runs) else "no runs")
    for note in notes:
        if "superseded" not in note:  # already in the status column
            console.note("note: " + note)


def _entry() -> None:  # pragma: no cover - `python -m bon_vs_rl`
    app(prog_name="bonrl")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_entry())
