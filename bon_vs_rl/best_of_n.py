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
4. For each proxy and each n: proxy and gold reward of the selected sample (mean over prompts, its
   standard error across prompts, a bootstrap 95% interval on request), its expected length in tokens,
   and three KL figures:
      kl          log n - (n-1)/n (Stiennon et al. 2020, app. G.3): exact for tie-free proxy scores,
                  otherwise an upper bound (Beirami et al. 2024)
      kl_beirami  Beirami et al. (2024)'s estimate from ε = π(selected completion), taken in expectation
                  under the best-of-n selection weights and averaged over prompts
      kl_exact    the exact KL of the empirical best-of-n distribution (each prompt's N samples as the
                  reference distribution), recorded only when the proxy has ties on some prompt; NaN
                  otherwise: with N distinct scores `kl` is already exact, and the empirical figure would
                  only measure that N is finite (it is the KL for a uniform reference over N outcomes)
   With --beta, the same samples also give the KL-regularized optimum π_β ∝ π_ref exp(proxy/β) for
   each β, by self-normalized weights (tilted.py): its proxy, gold, length, KL and effective sample size.
5. One row per (proxy, n), method `bon`, and per (proxy, β), method `tilted`, in the shared results
   table, in one transaction; the same numbers as tables on stderr; the samples file's path on stdout.

Files: OUTPUT/RUN_ID/samples.parquet and OUTPUT/RUN_ID/resolved_config.json, one directory per run, so
the samples_path of earlier rows never points at a file a later run replaced.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from bon_vs_rl import bon_estimator as bon
from bon_vs_rl import console, files, models, scorers, tilted
from bon_vs_rl import prompts as prompt_sets
from bon_vs_rl.config import ConfigError, SampleConfig, to_dict

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


def load_scorer(spec: str, role: str, device, cache_dir: str | None) -> scorers.Scorer:
    """scorers.load_scorer, with any failure to load (corrupt weights, a broken module) as bad input."""
    try:
        return scorers.load_scorer(spec, device, cache_dir, role=role)
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


def quiet_transformers(quiet: bool) -> None:
    """Per-load 'Loading weights' bars would drown ours; warnings only with --quiet off."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if quiet:
        transformers.logging.set_verbosity_error()


# ----------------------------------------------------------------------------------------------
# 3. Sampling and scoring.


def generate_samples(cfg: SampleConfig, policy, tokenizer, prompts: list[str], N: int):
    """N completions per prompt, as the saved-samples frame (without scores yet)."""
    from bon_vs_rl import sampling

    samples = sampling.generate(policy, tokenizer, prompts, N, cfg, seed=cfg.seed, quiet=cfg.quiet,
                                description=f"best-of-n: sampling {N} per prompt")
    return samples.to_frame()


def score_frame(frame, scorer: scorers.Scorer, role: str, quiet: bool) -> np.ndarray:
    """Every completion's score, in chunks of whole scorer batches (so the batches, hence the padding
    and the floats, are the same as one call would give) with a progress bar."""
    from tqdm.auto import tqdm

    prompts, completions = frame["prompt"].tolist(), frame["completion"].tolist()
    chunk = scorer.batch_size * 16
    out = []
    with tqdm(total=len(prompts), desc=f"scoring: {role} {scorer.spec}", unit="sample", disable=quiet,
              file=sys.stderr, leave=False) as progress:
        for start in range(0, len(prompts), chunk):
            out.append(scorer(prompts[start:start + chunk], completions[start:start + chunk]))
            progress.update(len(out[-1]))
    return np.concatenate(out)


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


def bon_rows(frame, proxy_column: str, gold_column: str, ns: list[int], N: int, bootstrap: int,
             seed: int) -> list[dict]:
    """The best-of-n curve of one proxy: one dict per n with the estimates (no provenance fields)."""
    proxy = as_matrix(frame, proxy_column, N)
    logprob = as_matrix(frame, "logprob", N)
    columns = {"gold": as_matrix(frame, gold_column, N), "length": as_matrix(frame, "tokens", N)}
    # The same bootstrap resamples of prompts for every proxy: differences between proxies are paired.
    table = bon.best_of_n_table(proxy, columns, ns, bootstrap=bootstrap, rng=seed)
    tied = has_ties(proxy)
    P = proxy.shape[0]
    if tied.any():
        # Each prompt's empirical reference distribution over distinct proxy scores, as in
        # bon.kl_bon_exact_empirical, found once rather than once per n.
        reference = [np.unique(proxy[p], return_counts=True)[1] / N for p in range(P)]
    rows = []
    for k, n in enumerate(ns):
        beirami = per_prompt_beirami(proxy, logprob, n)
        kl_exact = float(np.mean([bon.kl_bon_exact(r, n) for r in reference])) if tied.any() else float("nan")
        row = {
            "n": int(n), "kl": float(table["kl_analytic"][k]),
            "kl_beirami": float(beirami.mean()),
            "kl_beirami_se": float(beirami.std(ddof=1) / np.sqrt(P)) if P > 1 else float("nan"),
            "kl_exact": kl_exact, "tied_prompts": int(tied.sum()),
        }
        for name in ("proxy", "gold", "length"):
            row[f"{name}_mean"] = float(table[f"{name}_mean"][k])
            row[f"{name}_se"] = float(table[f"{name}_se"][k])
            if bootstrap:
                row[f"{name}_lo"] = float(table[f"{name}_lo"][k])
                row[f"{name}_hi"] = float(table[f"{name}_hi"][k])
        rows.append(row)
    return rows


def optimum_rows(frame, proxy_column: str, gold_column: str, betas: list[float], N: int, bootstrap: int,
                 seed: int) -> list[dict]:
    """The KL-regularized optimum of one proxy from the same samples, one dict per β (tilted.py)."""
    columns = {"gold": as_matrix(frame, gold_column, N), "length": as_matrix(frame, "tokens", N)}
    return tilted.tilted_rows(as_matrix(frame, proxy_column, N), columns, betas, bootstrap, seed)


def summary_table(rows: list[dict]):
    """The printed table of one proxy: one line per n."""
    import pandas as pd

    shown = pd.DataFrame([{
        "n": r["n"], "KL": r["kl"], "KL Beirami": r["kl_beirami"], "KL exact": r["kl_exact"],
        "proxy": r["proxy_mean"], "± se": r["proxy_se"], "gold": r["gold_mean"], "± se ": r["gold_se"],
        "tokens": r["length_mean"],
    } for r in rows])
    return shown.drop(columns=["KL exact"]) if shown["KL exact"].isna().all() else shown


def tilted_table(rows: list[dict]):
    """The printed table of the optimum: one line per β; '*' marks a point whose ESS is too small."""
    import pandas as pd

    return pd.DataFrame([{
        "β": r["beta"], "KL": r["kl"], "proxy": r["proxy_mean"], "± se": r["proxy_se"], "gold": r["gold_mean"],
        "± se ": r["gold_se"], "tokens": r["length_mean"], "ESS": r["ess"], "low ESS": "*" if r["low_ess"] else "",
    } for r in rows])


# ----------------------------------------------------------------------------------------------
# 5. The command.


def sample(cfg: SampleConfig) -> str:
    """Best-of-n for every n in cfg.n against every proxy; returns the run id."""
    from bon_vs_rl import results

    # -- 1. Check and load everything before any work.
    ns, proxies = cfg.ns, proxy_specs(cfg)
    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} is a file; choose a directory for the samples")
    needs_transformers = not cfg.from_samples or any(s.startswith(("hf:", "rm:")) for s in [*proxies, cfg.gold])
    if needs_transformers:
        quiet_transformers(cfg.quiet)
    device = models.resolve_device(cfg.device)

    if cfg.from_samples:
        frame, source = read_samples(cfg.from_samples)
        check_samples_file(cfg, source, cfg.from_samples)
        N = int(source["samples_per_prompt"])
    else:
        N = cfg.samples_per_prompt or max(ns)
        prompts = prompt_sets.load_prompts(cfg.prompts, "eval", cfg.eval_prompts)
    scorer_roles = {spec: "proxy" for spec in proxies}
    scorer_roles.setdefault(cfg.gold, "gold")  # a gold that is also a proxy is loaded and scored once
    loaded = {spec: load_scorer(spec, role, device, cfg.cache_dir) for spec, role in scorer_roles.items()}
    if not cfg.from_samples:
        policy, tokenizer = models.load_policy(cfg.policy, device, cfg.cache_dir)
        prompts = prompt_sets.apply_chat_template(tokenizer, prompts, cfg.chat_template)
        # Where the samples come from: the policy, the sampling settings and the seed (they set the draws).
        source = {"format": SAMPLES_FORMAT, "policy": cfg.policy, "samples_per_prompt": N, "seed": cfg.seed,
                  "eval_prompts": cfg.eval_prompts, "prompt_count": len(prompts),
                  **{name: getattr(cfg, name) for name in SAMPLING_SETTINGS}}

    config = to_dict(cfg)
    with results.ResultsStore(results.resolve_results_path(cfg.results)) as store, \
            results.run_context(store, "sample", config, cfg.seed, cfg.experiment) as run_id:
        # -- 2. Sample (unless rescoring a samples file).
        if not cfg.from_samples:
            frame = generate_samples(cfg, policy, tokenizer, prompts, N)
            source["generated_by"] = run_id

        # -- 3. Score with every proxy and the gold; save. A rescore keeps the file's other score columns.
        for spec, scorer in loaded.items():
            frame[spec] = score_frame(frame, scorer, scorer_roles[spec], cfg.quiet)
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
            **{name: source[name] for name in SAMPLING_SETTINGS},
        }
        rows = []
        for spec in proxies:
            for row in bon_rows(frame, spec, cfg.gold, ns, N, cfg.bootstrap, seed):
                rows.append({**provenance, "proxy": spec, **row})
            for row in optimum_rows(frame, spec, cfg.gold, cfg.betas, N, cfg.bootstrap, seed) if cfg.betas else []:
                rows.append({**provenance, "method": "tilted", "proxy": spec, **row})
        # -- 5. One transaction: every row lands, or none.
        store.add_rows(run_id, rows)

    for spec in proxies:
        title = (f"best-of-n against {spec}: {source['policy']}, {len(frame) // N} eval prompts, N={N}, "
                 f"gold {cfg.gold}")
        console.print_table(summary_table([r for r in rows if r["proxy"] == spec and r["method"] == "bon"]),
                            title=title, quiet=cfg.quiet)
        if cfg.betas:
            console.print_table(tilted_table([r for r in rows if r["proxy"] == spec and r["method"] == "tilted"]),
                                title=f"KL-regularized optimum against {spec}, estimated from the same samples",
                                quiet=cfg.quiet)
    print(samples_path)  # stdout stays machine-readable: the file to pass to --from-samples
    return run_id
