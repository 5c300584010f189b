"""`bonrl sample`: best-of-n against a proxy reward model, with unbiased estimates for every n.

    bonrl sample --policy tiny --proxy rm:runs/rm --gold vader --n 1,2,4,8,16 --eval-prompts 20
    bonrl sample --policy tiny --from-samples runs/bon/RUN/samples.parquet --proxy rm:runs/rm-2

Best-of-n (BoN) draws n completions from the policy and keeps the one the proxy scores highest.
Following Gao et al. (2022, sec. 2.2 and appendix) we do not draw n fresh completions for every n: we
draw N >= max n once per eval prompt, score each with every proxy and the gold, and average over all
size-n subsets with the unbiased estimator of `bon_estimator.py`. This module is the plumbing around
that math, in five steps:

1. Check everything (the n grid, prompts, proxies, gold, policy or samples file) before any work: bad
   input is a ConfigError (exit code 2) and nothing is written.
2. Sample N completions per eval prompt with the shared sampler (`sampling.py`), recording each one's
   token count and log-probability under the policy.
3. Score every completion with every proxy and the gold, and save the samples (Parquet; the policy spec
   and sampling settings ride in the file's metadata) so that `--from-samples` rescores them with
   another proxy without generating again.
4. For each proxy and each n: proxy and gold reward of the selected sample (mean over prompts and its
   standard error across prompts), its expected length in tokens, the gains over the initial policy
   (proxy_gain, gold_gain: the mean over prompts of each prompt's best-of-n estimate minus the mean of
   all its N samples, i.e. paired by prompt) with 95% intervals from resampling prompts, and three KL
   figures:
      kl           the KL of best-of-n from the policy, per prompt: log n - (n-1)/n where the prompt's
                   N proxy scores are distinct (Stiennon et al. 2020, app. G.3: exact for a continuous
                   reward), the tie-aware estimate `bon_estimator.kl_bon_tie_aware` where some repeat
                   (identical completions: the analytic value is then only an upper bound, Beirami et
                   al. 2024); averaged over prompts, with kl_lo / kl_hi from the same prompt resamples
      kl_analytic  log n - (n-1)/n itself; `tied_prompts` counts the prompts where it is not used
      kl_beirami   Beirami et al. (2024)'s estimate from ε = π(selected completion), taken in expectation
                   under the best-of-n selection weights and averaged over prompts
   With --beta, the same samples also give the KL-regularized optimum π_β ∝ π_ref exp(proxy/β) for
   each β, by self-normalized weights (tilted.py): its proxy, gold, length, KL and effective sample size,
   with the same paired gains and intervals.
5. One row per (proxy, n), method `bon`, and per (proxy, β), method `tilted`, in the shared results
   table, in one transaction; the same numbers as tables on stderr; the samples file's path on stdout.

Files: OUTPUT/RUN_ID/samples.parquet and OUTPUT/RUN_ID/resolved_config.json, one directory per run, so
the samples_path of earlier rows never points at a file a later run replaced.

Several processes (`torchrun --nproc_per_node K -m bon_vs_rl.cli -- sample ...`, or accelerate launch on
GPUs): the eval prompts are split into whole sampler batches, dealt round-robin (`sampling.shard`); each
process samples and scores its share, and the main process gathers every share, writes the one samples
file and the one set of rows. Each batch's random stream is seeded by (seed, its first prompt), so the
samples, hence every estimate, are those of a one-process run with the same seed and batch size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import numpy as np

from bon_vs_rl.config.base import to_dict
from bon_vs_rl.config.commands import SampleConfig
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import bon_estimator as bon
from bon_vs_rl.measurement import hacking_signals, models, scorers, text_stats
from bon_vs_rl.measurement import prompts as prompt_sets
from bon_vs_rl.methods import tilted
from bon_vs_rl.record import console, files

SAMPLES_FORMAT = 1  # bump when the saved-samples layout changes
METADATA_KEY = b"bonrl"  # the Parquet schema-metadata key holding the samples' provenance
SAMPLING_SETTINGS = ("prompts", "max_prompt_tokens", "chat_template", "max_new_tokens", "temperature", "top_k",
                     "top_p", "batch_size")
BASE_COLUMNS = ("prompt_id", "prompt", "completion", "tokens", "logprob")


# ----------------------------------------------------------------------------------------------
# 1. The samples file: Parquet, with where the samples came from in the file's own metadata.


def write_samples(path: Path, frame, metadata: dict) -> None:
    """All or nothing (files.atomic_file); the metadata travels inside the file, not in a sidecar."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    with files.atomic_file(path) as tmp:
        pq.write_table(table, tmp)


def read_samples(path: str | Path):
    """(frame, metadata) of a samples file written by `bonrl sample`, rows grouped by prompt in draw order.

    Anything else is bad input (ConfigError): a missing or unreadable file, a Parquet file without our
    metadata, missing columns, a prompt with a number of samples other than N, a non-finite log-prob.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"from_samples: {path} not found; pass a samples.parquet written by bonrl sample")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # not Parquet, truncated, ...: all bad input
        raise ConfigError(f"from_samples: {path} is not a readable Parquet file ({type(exc).__name__})") from None
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    metadata = json.loads(raw) if raw else None
    if not isinstance(metadata, dict) or metadata.get("format") != SAMPLES_FORMAT:
        raise ConfigError(f"from_samples: {path} has no bonrl samples metadata (format {SAMPLES_FORMAT}); "
                          "pass a samples.parquet written by bonrl sample")
    frame = table.to_pandas()
    missing = [c for c in BASE_COLUMNS if c not in frame]
    if missing:
        raise ConfigError(f"from_samples: {path} lacks the columns {missing}; it is not a bonrl samples file")
    frame = frame.sort_values("prompt_id", kind="stable").reset_index(drop=True)
    N = int(metadata["samples_per_prompt"])
    counts = frame.groupby("prompt_id").size()
    if len(counts) == 0 or (counts != N).any():
        raise ConfigError(f"from_samples: {path} should hold {N} samples for every prompt; it holds "
                          f"{sorted(set(counts.tolist()))}: the file was edited, regenerate it")
    logprob = frame["logprob"].to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(logprob)) or np.any(logprob > 0):
        raise ConfigError(f"from_samples: {path} has a log-prob that is not finite and <= 0; regenerate it")
    return frame, metadata


def same_policy(a: str, b: str) -> bool:
    """Two policy specs name the same model: equal strings, or two paths to the same directory."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


# ----------------------------------------------------------------------------------------------
# 2. Checks and loading: every bad input surfaces here, before a single token is generated.


def proxy_specs(cfg: SampleConfig) -> list[str]:
    """--proxy may repeat; the same spec twice is one proxy (one column, one set of rows)."""
    return list(dict.fromkeys(cfg.proxy))


def load_scorer(spec: str, role: str, device, cache_dir: str | None, shared: dict | None = None) -> scorers.Scorer:
    """scorers.load_scorer, with any failure to load (corrupt weights, a broken module) as bad input; `shared`:
    the run's loaded rm: member models, so several specs of one ensemble load each member once."""
    try:
        return scorers.load_scorer(spec, device, cache_dir, role=role, shared=shared)
    except ConfigError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"{role}: cannot load {spec!r} ({type(exc).__name__}: {first}); check the spec") from None


def check_samples_file(cfg: SampleConfig, metadata: dict, path: str) -> None:
    N, ns = int(metadata["samples_per_prompt"]), cfg.ns
    if not same_policy(str(metadata.get("policy")), cfg.policy):
        raise ConfigError(f"from_samples: {path} holds samples of policy {metadata.get('policy')!r}, not "
                          f"--policy {cfg.policy!r}; pass --policy {metadata.get('policy')} or sample again")
    if max(ns) > N:
        raise ConfigError(f"n: {max(ns)} exceeds the {N} samples per prompt in {path}; drop the larger n "
                          "or sample again with a larger --samples-per-prompt")
    if cfg.samples_per_prompt and cfg.samples_per_prompt != N:
        raise ConfigError(f"samples_per_prompt: {cfg.samples_per_prompt} differs from the {N} samples per "
                          f"prompt in {path}; drop --samples-per-prompt when rescoring")
    # A rescore takes the file's prompts and sampling settings: an option that says otherwise would be ignored
    # in silence, so it is refused (one left at its default, or equal to the file's, is fine). --seed is the
    # documented exception: the file's seed seeds the intervals, so a rescore reproduces the draw's rows.
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in (*SAMPLING_SETTINGS, "eval_prompts"):
        given = getattr(cfg, name)
        if name in metadata and given != defaults[name] and given != metadata[name]:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{name}: {flag} {given} differs from the {metadata[name]} the samples in {path} were "
                              f"drawn with; drop {flag} when rescoring (--from-samples)")


def quiet_transformers(quiet: bool) -> None:
    """Per-load 'Loading weights' bars would drown ours; warnings only with --quiet off."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if quiet:
        transformers.logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------
# 3. Sampling and scoring.


def score_frame(frame, scorer: scorers.Scorer, role: str, quiet: bool) -> np.ndarray:
    """Every completion's score, in chunks of whole scorer batches (so the batches, hence the padding
    and the floats, are the same as one call would give) with a progress bar."""
    prompts, completions = frame["prompt"].tolist(), frame["completion"].tolist()
    chunk = scorer.batch_size * 16
    out = []
    with console.progress(len(prompts), f"scoring: {role} {scorer.spec}", unit="sample", quiet=quiet) as progress:
        for start in range(0, len(prompts), chunk):
            out.append(scorer(prompts[start:start + chunk], completions[start:start + chunk]))
            progress.update(len(out[-1]))
    return np.concatenate(out) if out else np.zeros(0)


def score_all(frame, loaded: dict[str, scorers.Scorer], roles: dict[str, str], quiet: bool) -> None:
    """One column per spec. An rm: spec is its members' scores combined (scorers.aggregate), and each member
    model is run once however many specs share it: rm:DIR@mean, @min, @mean-1std and @member-0 of one
    ensemble cost one pass of each member over the samples, not four."""
    member_scores: dict[str, np.ndarray] = {}
    for spec, scorer in loaded.items():
        if not scorer.parts:
            frame[spec] = score_frame(frame, scorer, roles[spec], quiet)
            continue
        for part in scorer.parts:
            if part.spec not in member_scores:
                member_scores[part.spec] = score_frame(frame, part, roles[spec], quiet)
        frame[spec] = scorer.combine(np.stack([member_scores[part.spec] for part in scorer.parts]))


# ----------------------------------------------------------------------------------------------
# 4. Estimates: one row per n for one proxy.


def as_matrix(frame, column: str, N: int) -> np.ndarray:
    """[P, N]: row p holds prompt p's samples (the frame is grouped by prompt, N rows each)."""
    return frame[column].to_numpy(dtype=np.float64).reshape(-1, N)


def per_prompt_beirami(proxy: np.ndarray, logprob: np.ndarray, n: int) -> np.ndarray:
    """[P]: each prompt's Beirami et al. (2024) KL estimate in expectation under the selection weights.

    The estimate depends on n, so it is one column per n, each weighted with its own n.
    """
    estimate = bon.kl_bon_beirami_from_logprob(logprob, n)  # [P, N]: KL̂(ε_j) were sample j the one kept
    return bon.best_of_n_per_prompt(proxy, {"kl_beirami": estimate}, [n])["kl_beirami"][:, 0]


def has_ties(proxy: np.ndarray) -> np.ndarray:
    """[P] bool: some two of the prompt's N proxy scores are equal."""
    ordered = np.sort(proxy, axis=1)
    return (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)


def per_prompt_kl(proxy: np.ndarray, ns: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """([P, K] KL of best-of-n per prompt, [P] tied): log n - (n-1)/n where the prompt's proxy scores are all
    distinct, the tie-aware estimate (`bon.kl_bon_tie_aware`) where some repeat."""
    tied = has_ties(proxy)
    kl = np.tile(np.asarray(bon.kl_bon_analytic(np.asarray(ns)), dtype=np.float64), (proxy.shape[0], 1))
    for p in np.flatnonzero(tied):
        kl[p] = [bon.kl_bon_tie_aware(proxy[p], n) for n in ns]
    return kl, tied


def bon_per_prompt(frame, proxy_column: str, gold_column: str, ns: list[int], N: int) -> dict[str, np.ndarray]:
    """Each prompt's best-of-n estimates, [P, K] per quantity, and its initial-policy means, [P].

    proxy, gold, length: the unbiased best-of-n expectations (eq. 1 of bon_estimator); kl: per_prompt_kl;
    kl_beirami: Beirami et al.'s estimate under the selection weights; proxy_initial, gold_initial: the mean
    of all N samples of the prompt — the initial policy measured on the same prompts and samples, which
    is what every best-of-n gain is paired against (n = 1 has the same expectation).
    """
    proxy = as_matrix(frame, proxy_column, N)
    logprob = as_matrix(frame, "logprob", N)
    gold = as_matrix(frame, gold_column, N)
    out = bon.best_of_n_per_prompt(proxy, {"proxy": proxy, "gold": gold, "length": as_matrix(frame, "tokens", N)}, ns)
    out.update(text_per_prompt(frame, proxy, N, lambda values: bon.best_of_n_per_prompt(proxy, values, ns)))
    out["kl"], out["tied"] = per_prompt_kl(proxy, ns)
    out["kl_beirami"] = np.column_stack([per_prompt_beirami(proxy, logprob, n) for n in ns])
    out["proxy_initial"], out["gold_initial"] = proxy.mean(axis=1), gold.mean(axis=1)
    # Best-of-1 is the initial policy itself: its estimates are the plain means, so its gains (and their
    # intervals) are exactly 0, not the 1e-17 of summing the same numbers with other weights.
    for k in [k for k, n in enumerate(ns) if n == 1]:
        out["proxy"][:, k], out["gold"][:, k] = out["proxy_initial"], out["gold_initial"]
        out["length"][:, k] = as_matrix(frame, "tokens", N).mean(axis=1)
        out["kl"][:, k] = 0.0
    return out


def text_per_prompt(frame, proxy: np.ndarray, N: int, expect) -> dict[str, np.ndarray]:
    """What the chosen text looks like, [P, K] per statistic (text_stats, keyed text_<name>): `expect` (values
    {name: [P, N]} -> {name: [P, K]}) takes each sample's statistic in expectation under the method's selection
    (best-of-n's weights, or the optimum's tilt), as for proxy and gold. The samples are the reference's, so
    the policy's log-prob per token is the reference's too: best-of-n's own is not estimated."""
    statistics = text_stats.frame_statistics(frame)
    statistics.pop("logprob_per_token", None)
    values = {text_stats.PREFIX + name: np.nan_to_num(v.reshape(-1, N), nan=0.0) for name, v in statistics.items()}
    return {name: v for name, v in expect(values).items() if name in values}


def text_means(per_prompt: dict[str, np.ndarray], k: int) -> dict[str, float]:
    """Point k's text statistics (text_per_prompt), each a mean over prompts."""
    return {name: float(np.mean(v[:, k])) for name, v in per_prompt.items() if name.startswith(text_stats.PREFIX)}


def interval_columns(per_prompt: dict[str, np.ndarray], bootstrap: int, seed: int) -> list[dict]:
    """For each point k of a curve measured on P prompts: proxy_gain and gold_gain over the initial policy,
    paired by prompt, with 95% percentile intervals from `bootstrap` prompt resamples, and kl_lo / kl_hi.

    One seed for every column and every proxy, so all of a run's intervals come from the same resamples.
    Shared by best-of-n and the tilted optimum (`tilted.py`); RL rows get the same from evaluate.Evaluator.
    """
    from bon_vs_rl.analysis import statistics

    columns: dict[str, np.ndarray] = {}
    for name in ("proxy", "gold"):
        est = statistics.paired_gain_interval(per_prompt[name], per_prompt[f"{name}_initial"], B=bootstrap, rng=seed)
        columns.update({f"{name}_gain": est["gain"], f"{name}_gain_lo": est["gain_lo"],
                        f"{name}_gain_hi": est["gain_hi"], f"{name}_lo": est["mean_lo"], f"{name}_hi": est["mean_hi"]})
    est = statistics.paired_gain_interval(per_prompt["kl"], np.zeros(per_prompt["kl"].shape[0]), B=bootstrap, rng=seed)
    columns.update({"kl_lo": est["mean_lo"], "kl_hi": est["mean_hi"]})
    K = per_prompt["kl"].shape[1]
    return [{name: float(np.asarray(values).reshape(K)[k]) for name, values in columns.items()} for k in range(K)]


def mean_and_se(per_prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over prompts and its standard error across prompts (NaN for one prompt: no spread known)."""
    P = per_prompt.shape[0]
    se = per_prompt.std(axis=0, ddof=1) / np.sqrt(P) if P > 1 else np.full(per_prompt.shape[1], np.nan)
    return per_prompt.mean(axis=0), se


def bon_rows(frame, proxy_column: str, gold_column: str, ns: list[int], N: int, bootstrap: int,
             seed: int, second_column: str | None = None) -> list[dict]:
    """The best-of-n curve of one proxy: one dict per n with the estimates (no provenance fields), and the
    gold-free warning signs of hacking at each n (hacking_signals; agreement with `second_column`'s proxy)."""
    per = bon_per_prompt(frame, proxy_column, gold_column, ns, N)
    warning = hacking_signals.bon_signals(frame, proxy_column, ns, N, second_column)
    intervals = interval_columns(per, bootstrap, seed)
    analytic = np.asarray(bon.kl_bon_analytic(np.asarray(ns)), dtype=np.float64)
    rows = []
    for k, n in enumerate(ns):
        row = {"n": int(n), "kl_analytic": float(analytic[k]), "tied_prompts": int(per["tied"].sum())}
        for name in ("kl", "kl_beirami", "proxy", "gold", "length"):
            mean, se = mean_and_se(per[name][:, k:k + 1])
            key = name if name.startswith("kl") else f"{name}_mean"
            row[key], row[f"{name}_se"] = float(mean[0]), float(se[0])
        second = {"signal_second_proxy": second_column} if second_column else {}
        rows.append({**row, **intervals[k], **text_means(per, k), **hacking_signals.stored(warning[k]), **second})
    return rows


def second_proxy(spec: str, proxies: list[str]) -> str | None:
    """The proxy a curve's agreement signal compares with: the first other proxy scored on the same samples
    that is not a reading of the same ensemble (rm:DIR@min and rm:DIR@member-0 share DIR's members)."""
    base = spec.split("@")[0]
    return next((p for p in proxies if p.split("@")[0] != base), None)


def prompt_set_id(frame) -> str:
    """The evaluation prompts' fingerprint, as evaluate.prompt_set_id computes it for RL runs."""
    from bon_vs_rl.measurement.evaluate import prompt_set_id as fingerprint

    return fingerprint(frame.groupby("prompt_id", sort=True)["prompt"].first().tolist())


def setting_id(cfg: SampleConfig) -> str:
    from bon_vs_rl.measurement.evaluate import setting_id as fingerprint

    return fingerprint(cfg)


def optimum_per_prompt(frame, proxy_column: str, gold_column: str, betas: list[float], N: int) -> dict[str, np.ndarray]:
    """Each prompt's estimate of the KL-regularized optimum (tilted.py), [P, len(betas)] per quantity (proxy,
    gold, length, kl, ess), and the initial-policy means its gains are paired against, as bon_per_prompt."""
    proxy, gold = as_matrix(frame, proxy_column, N), as_matrix(frame, gold_column, N)
    out = tilted.tilted_per_prompt(proxy, {"proxy": proxy, "gold": gold, "length": as_matrix(frame, "tokens", N)},
                                   betas)
    out.update(text_per_prompt(frame, proxy, N, lambda values: tilted.tilted_per_prompt(proxy, values, betas)))
    out["proxy_initial"], out["gold_initial"] = proxy.mean(axis=1), gold.mean(axis=1)
    return out


def optimum_rows(frame, proxy_column: str, gold_column: str, betas: list[float], N: int, bootstrap: int,
                 seed: int) -> list[dict]:
    """The KL-regularized optimum of one proxy from the same samples, one dict per β: means and standard
    errors over prompts, the effective sample size (low_ess: not to be drawn as measured, tilted.LOW_ESS),
    and the same paired gains and intervals as best-of-n's rows (the same resamples: the same seed)."""
    per = optimum_per_prompt(frame, proxy_column, gold_column, betas, N)
    intervals = interval_columns(per, bootstrap, seed)
    rows = []
    for k, beta in enumerate(betas):
        ess = per["ess"][:, k]
        row = {"beta": float(beta), "ess": float(ess.mean()), "ess_min": float(ess.min()),
               "low_ess": int(ess.mean() < tilted.LOW_ESS)}
        for name in ("kl", "proxy", "gold", "length"):
            mean, se = mean_and_se(per[name][:, k:k + 1])
            key = name if name == "kl" else f"{name}_mean"
            row[key], row[f"{name}_se"] = float(mean[0]), float(se[0])
        rows.append({**row, **intervals[k], **text_means(per, k)})
    return rows


def summary_table(rows: list[dict]):
    """The printed table of one proxy: one line per n, gains over n = 1 with their paired 95% intervals."""
    import pandas as pd

    def span(r, name):
        return f"[{r[name + '_lo']:.3g}, {r[name + '_hi']:.3g}]"

    return pd.DataFrame([{
        "n": r["n"], "KL": r["kl"], "KL Beirami": r["kl_beirami"], "proxy": r["proxy_mean"],
        "proxy gain": r["proxy_gain"], "95% CI": span(r, "proxy_gain"), "gold": r["gold_mean"],
        "gold gain": r["gold_gain"], "95% CI ": span(r, "gold_gain"), "tokens": r["length_mean"],
    } for r in rows])


def log_curve(cfg: SampleConfig, run_dir: Path, run_id: str, config: dict, rows: list[dict]) -> None:
    """--log-with: every proxy's best-of-n curve in the tracker, with n as the step (files in the run's directory)."""
    from bon_vs_rl.record import tracking

    if cfg.log_with == "none":
        return
    tracker = tracking.start(cfg.log_with, run_dir, run_id, config, "sample", cfg.experiment, cfg.quiet)
    try:
        for n in sorted({r["n"] for r in rows}):
            metrics = {}
            for r in (r for r in rows if r["n"] == n):
                name = "bon" if len(proxy_specs(cfg)) == 1 else f"bon/{r['proxy']}"
                metrics.update({f"{name}/{k}": r.get(k) for k in ("kl", "kl_beirami", "proxy_mean", "proxy_se",
                                                              "gold_mean", "gold_se", "length_mean")})
            tracker.log(metrics, n)
    finally:
        tracker.finish()


def tilted_table(rows: list[dict]):
    """The printed table of the optimum: one line per β, gains with their paired 95% intervals; '*' marks a
    point whose effective sample size is too small to trust."""
    import pandas as pd

    def span(r, name):
        return f"[{r[name + '_lo']:.3g}, {r[name + '_hi']:.3g}]"

    return pd.DataFrame([{
        "β": r["beta"], "KL": r["kl"], "proxy gain": r["proxy_gain"], "95% CI": span(r, "proxy_gain"),
        "gold gain": r["gold_gain"], "95% CI ": span(r, "gold_gain"), "tokens": r["length_mean"], "ESS": r["ess"],
        "low ESS": "*" if r["low_ess"] else "",
    } for r in rows])


# ----------------------------------------------------------------------------------------------
# 5. The command.


def sample(cfg: SampleConfig) -> str:
    """Best-of-n for every n in cfg.n against every proxy; returns the run id ("" on processes other
    than the main one, under torchrun or accelerate launch: they sample and score, and write nothing)."""
    from bon_vs_rl.measurement import sampling, vllm_engine
    from bon_vs_rl.record import results

    # -- 1. Check and load everything before any work.
    ns, proxies = cfg.ns, proxy_specs(cfg)
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} is a file; choose a directory for the samples")
    rank, world, device = sampling.process_group(cfg.device)
    main = rank == 0
    quiet = cfg.quiet or not main  # one set of progress bars and tables: the main process's
    needs_transformers = not cfg.from_samples or any(s.startswith(("hf:", "rm:")) for s in [*proxies, cfg.gold])
    if needs_transformers:
        quiet_transformers(quiet)

    if cfg.from_samples:
        saved, source = read_samples(cfg.from_samples)
        check_samples_file(cfg, source, cfg.from_samples)
        N = int(source["samples_per_prompt"])
        prompt_count = len(saved) // N
    else:
        N = cfg.samples_per_prompt or max(ns)
        prompts = prompt_sets.load_prompts(cfg.prompts, "eval", cfg.eval_prompts)
        prompt_count = len(prompts)
    scorer_roles = {spec: "proxy" for spec in proxies}
    scorer_roles.setdefault(cfg.gold, "gold")  # a gold that is also a proxy is loaded and scored once
    for spec, role in scorer_roles.items():  # every bad spec before the first model loads
        scorers.check_spec(spec, role)
    shared: dict = {}  # rm: member models, loaded once for every spec of their ensemble
    loaded = {spec: load_scorer(spec, role, device, cfg.cache_dir, shared) for spec, role in scorer_roles.items()}
    if not cfg.from_samples:
        policy, tokenizer = models.load_policy(cfg.policy, device, cfg.cache_dir)
        prompts = prompt_sets.apply_chat_template(tokenizer, prompts, cfg.chat_template)
        # Where the samples come from: the policy, the sampling settings and the seed (they set the draws).
        source = {"format": SAMPLES_FORMAT, "policy": cfg.policy, "samples_per_prompt": N, "seed": cfg.seed,
                  "eval_prompts": cfg.eval_prompts, "prompt_count": len(prompts),
                  **{name: getattr(cfg, name) for name in SAMPLING_SETTINGS}}
        # The engine (--engine): hf is this process's sampler; vllm starts an engine over the policy's weights.
        sample = vllm_engine.sampler(cfg, models.resolve_model_path(cfg.policy, cfg.cache_dir), device,
                                     cfg.precision, quiet=quiet)
        source["engine"] = cfg.engine  # the draws depend on it (the distribution does not)
    # This process's prompts: all of them, or its share of whole sampler batches under torchrun.
    ids = sampling.shard(prompt_count, N, cfg.batch_size, rank, world)

    def share():
        # -- 2. Sample (unless rescoring a samples file); -- 3. score with every proxy and the gold.
        # Each process scores what it sampled: no scorer input crosses processes. A rescore keeps the
        # file's other score columns.
        if cfg.from_samples:
            local = saved[saved["prompt_id"].isin(ids)].reset_index(drop=True)
        else:
            # fp32 weights under models.autocast: the initial policy exactly as RL's reference computes it.
            with models.autocast(device, cfg.precision):
                local = sampling.generate_share(policy, tokenizer, prompts, ids, N, cfg, cfg.seed, quiet,
                                                f"best-of-n: sampling {N} per prompt", sample)
        score_all(local, loaded, scorer_roles, quiet)
        return local

    config = to_dict(cfg)
    with contextlib.ExitStack() as run:
        if not cfg.from_samples:
            run.callback(vllm_engine.close, sample)
        if main:  # the main process alone opens the results table, saves the samples and writes the rows
            store = run.enter_context(results.ResultsStore(results.resolve_results_path(cfg.results)))
            run_id = run.enter_context(results.run_context(store, "sample", config, cfg.seed, cfg.experiment))
        frame = sampling.gather_shares(share, world)  # on the main process: every prompt once, in one process's order
        if not main:
            return ""
        if not cfg.from_samples:
            source["generated_by"] = run_id
        run_dir = output / run_id
        samples_path = (run_dir / "samples.parquet").resolve()
        metadata = {**source, "gold": cfg.gold, "proxies": proxies,
                    "score_columns": [c for c in frame.columns if c not in (*BASE_COLUMNS, "ended")]}
        write_samples(samples_path, frame, metadata)
        files.write_json(run_dir / "resolved_config.json", config)

        # -- 4. Estimates; the samples' seed (not --seed, when rescoring) seeds the bootstrap, so that
        # rescoring a file with the same proxy reproduces its rows exactly.
        seed = int(source["seed"])
        provenance = {
            "method": "bon", "policy": source["policy"], "gold": cfg.gold, "seed": seed,
            "samples_path": str(samples_path), "samples_per_prompt": N, "prompt_count": len(frame) // N,
            # What the samples cost to generate, also when this run only rescored them.
            "sample_count": len(frame), "generated_tokens": int(frame["tokens"].sum()),
            "bootstrap": cfg.bootstrap, "from_samples": cfg.from_samples,
            "setting": setting_id(cfg), "prompt_set": prompt_set_id(frame),
            **{name: source[name] for name in SAMPLING_SETTINGS},
        }
        rows = []
        for spec in proxies:
            which = {"proxy": spec, "proxy_fingerprint": scorers.spec_fingerprint(spec)}  # which proxy model
            for row in bon_rows(frame, spec, cfg.gold, ns, N, cfg.bootstrap, seed, second_proxy(spec, proxies)):
                rows.append({**provenance, **which, **row})
            for row in optimum_rows(frame, spec, cfg.gold, cfg.betas, N, cfg.bootstrap, seed) if cfg.betas else []:
                rows.append({**provenance, "method": "tilted", **which, **row})
        # -- 5. One transaction: every row lands, or none.
        store.add_rows(run_id, rows)
        log_curve(cfg, run_dir, run_id, config, rows)

    for spec in proxies:
        title = (f"best-of-n against {spec}: {source['policy']}, {len(frame) // N} eval prompts, N={N}, "
                 f"gold {cfg.gold}")
        console.print_table(summary_table([r for r in rows if r["proxy"] == spec and r["method"] == "bon"]),
                            title=title, quiet=quiet)
        if cfg.betas:
            console.print_table(tilted_table([r for r in rows if r["proxy"] == spec and r["method"] == "tilted"]),
                                title=f"KL-regularized optimum against {spec}, estimated from the same samples",
                                quiet=quiet)
    if not proxies:
        console.note(f"sampled {len(frame) // N} prompts × {N} and scored the gold; no proxy was given, so no "
                     f"estimates yet: bonrl sample --from-samples {samples_path} --proxy SPEC", quiet)
    print(samples_path)  # stdout stays machine-readable: the file to pass to --from-samples
    return run_id
