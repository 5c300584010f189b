"""`bonrl lab`: the Goodhart lab — best-of-n, the KL-regularized optimum and PPO, exactly, with no language model.

    bonrl lab                                             # Gaussian error, best-of-n to n = e^31, six β
    bonrl lab --error student-t --df 3 --n 1,10,1000,e^31 --beta 0.5,1,2
    bonrl lab --config configs/goodhart-lab.yaml          # with PPO at β = 1 (about a minute)

The reference policy π_ref is uniform over a population of K outcomes (--outcomes), drawn once with
--seed and then held fixed. Each outcome has a gold reward V ~ N(0, 1) and a proxy reward U = V + X, the
proxy's error X chosen by --error (Gao et al. 2022's set-up with the language model taken out):

    normal       X = s·Z. Regressional Goodhart: E[V | U] = U/(1 + s²), so picking by the proxy still
                 raises gold, by a factor 1/(1 + s²) of the proxy's gain.
    student-t    X = s·c·T_df, a polynomial tail (df = 3 by default).
    lognormal    X = s·c·(e^Z − 1), a right tail heavier than any Gaussian's.
    hack         X = s·Z + s·P·1{V < Φ⁻¹(0.01)}, P ~ Pareto(df): the worst 1% of outcomes by gold carry a
                 heavy-tailed proxy bonus, so the proxy's far tail is made of them — an extremal case
                 where proxy and gold part ways (a reward hack available only to bad outcomes).

c scales each kind to the interquartile range of s·N(0,1) (for hack the bulk is s·N(0,1)), so kinds
differ in their tails, not in their typical error. With heavy tails E[V | U = u] → 0 as u → ∞ and
E_ref[exp(X/β)] = ∞: the KL-regularized optimum no longer protects gold (Kwa, Thomas & Garriga-Alonso
2024, "Catastrophic Goodhart"); on a finite population that shows as the optimum collapsing onto the
few outcomes with the largest error.

What is exact (no sampling beyond the population's one draw), every point over the whole population:
- best-of-n for any n, e.g. n = e^31: π_n(y_i) = F_i^n − F_{i−1}^n over the outcomes sorted by proxy, in
  log space (bon_estimator.bon_log_probs); its proxy, gold and exact KL, beside log n − (n−1)/n, which
  for a population of K outcomes is only an upper bound: no policy is more than log K nats from π_ref
  (Beirami et al. 2024), so best-of-e^31 on 10^6 outcomes is the top outcome, at log 10^6 = 13.8 nats;
- the tilted optimum π_β ∝ π_ref exp(U/β) for each --beta (tilted.tilted_per_prompt with the population
  as one prompt's samples: with uniform π_ref its self-normalized weights are the optimum itself), its
  KL, proxy, gold and ESS (how many outcomes carry it);
- for every best-of-n point, the optimum at the same KL (β found by root finding), hence the gold
  best-of-n leaves on the table at equal KL (Yang et al. 2024 and Gui et al. 2024 show it is small);
- with --error normal, the K → ∞ limit in closed form: best-of-n has KL log n − (n−1)/n, proxy
  σ·E[max of n N(0,1)] and gold E[max of n]/σ (σ² = 1 + s², E[max] by quadrature); the optimum has
  KL σ²/(2β²), proxy σ²/β and gold 1/β.

What is sampled: PPO (--rl-steps S, one run per --rl-beta). The policy is a softmax over the K outcomes
(one logit each, all 0 at the start: π_θ = π_ref); each step samples --rl-batch-size outcomes from it and
runs `bonrl ppo`'s objective on them: rewards U − β (log π_old − log π_ref) (ppo.kl_penalty_rewards on
one-token episodes), advantages by ppo.gae from a scalar value (one state), whitened (ppo.masked_whiten),
the clipped surrogate (ppo.clipped_policy_loss) and clipped value loss (ppo.clipped_value_loss), Adam
with the learning rate annealed linearly to 0 (CleanRL's anneal_lr). The objective E_π[U] − β KL(π‖π_ref)
equals β log Z_β − β KL(π‖π_β), so its maximizer is the tilted optimum; each evaluation is exact (the
policy is explicit) and records KL(π_θ‖π_β), which PPO drives toward 0 (tests/test_lab.py).

Rows (the shared results table; policy "lab:<error>", proxy "lab:V+X, …", gold "lab:V~N(0,1)"):
method bon (one per n), tilted (one per β) in one run; method ppo (one per evaluated step) in one run
per PPO β, so `bonrl report` draws each PPO β as its own curve, as it does for `bonrl ppo` runs. There
are no standard errors: the numbers are exact for the population, so every row's gains over π_ref
(gold_gain, proxy_gain) have intervals of zero width, and kl_lo = kl_hi = kl. Tables on stderr; run ids on stdout.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bon_vs_rl.config.base import to_dict
from bon_vs_rl.config.commands import LabConfig
from bon_vs_rl.errors import ConfigError
from bon_vs_rl.measurement import bon_estimator as bon
from bon_vs_rl.methods import tilted
from bon_vs_rl.record import console, files

HACK_FRACTION = 0.01  # the share of outcomes, by lowest gold, that carry the hack's Pareto bonus
GOLD_NAME = "lab:V~N(0,1)"


# ----------------------------------------------------------------------------------------------
# 1. The population: K outcomes, gold V ~ N(0, 1), proxy U = V + X.


def error_name(cfg: LabConfig) -> str:
    tail = f"(df={cfg.df:g})" if cfg.error in ("student-t", "hack") else ""
    return f"{cfg.error}{tail}"


def proxy_name(cfg: LabConfig) -> str:
    return f"lab:V+X, X~{error_name(cfg)}, s={cfg.error_scale:g}"


def draw_population(outcomes: int, error: str, scale: float, df: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(proxy U, gold V), each [K], float64. The error kinds are those of the module docstring."""
    from scipy import stats

    rng = np.random.default_rng(seed)
    gold = rng.standard_normal(outcomes)
    quartile = stats.norm.ppf(0.75)  # N(0,1)'s interquartile range is 2 × this
    if error == "normal":
        x = rng.standard_normal(outcomes)
    elif error == "student-t":
        x = rng.standard_t(df, outcomes) * quartile / stats.t.ppf(0.75, df)
    elif error == "lognormal":
        # e^Z has quartiles e^{±q}: centred at its median 1 and scaled to N(0,1)'s interquartile range.
        x = np.expm1(rng.standard_normal(outcomes)) * 2 * quartile / (np.exp(quartile) - np.exp(-quartile))
    elif error == "hack":
        x = rng.standard_normal(outcomes)
        hacked = gold < stats.norm.ppf(HACK_FRACTION)
        x[hacked] += rng.pareto(df, int(hacked.sum()))  # numpy's pareto is Lomax: ≥ 0, tail index df
    else:  # LabConfig.validate names the kinds; this is a programming error
        raise ValueError(f"unknown error kind {error!r}")
    return gold + scale * x, gold


# ----------------------------------------------------------------------------------------------
# 2. Exact best-of-n and the exact optimum over the population.


class Population:
    """The population, ready for exact best-of-n and the exact optimum.

    For best-of-n the outcomes are sorted by proxy with ties merged (a tie is not an improvement, so
    best-of-n cannot move mass within one): p [L] reference probabilities, proxy [L], gold [L] (the
    tie's mean). The optimum weighs each outcome by exp(U/β) whether tied or not, so it uses them as drawn."""

    def __init__(self, proxy: np.ndarray, gold: np.ndarray):
        self.size = len(proxy)
        self.raw_proxy, self.raw_gold = proxy, gold
        order = np.argsort(proxy, kind="stable")
        values, starts, counts = np.unique(proxy[order], return_index=True, return_counts=True)
        self.p = counts / len(proxy)
        self.proxy = values
        self.gold = np.add.reduceat(gold[order], starts) / counts

    def best_of_n(self, n: int) -> dict:
        """Exact best-of-n: KL(π_n‖π_ref), E_n[proxy], E_n[gold]."""
        if n == 1:  # π_1 = π_ref exactly (the log-space formula would leave a KL of ~1e-13)
            return {"kl": 0.0, "proxy": float(self.p @ self.proxy), "gold": float(self.p @ self.gold)}
        log_bon = bon.bon_log_probs(self.p, n)
        pi = np.exp(log_bon)
        with np.errstate(invalid="ignore"):
            kl = float(np.sum(np.where(pi > 0, pi * (log_bon - np.log(self.p)), 0.0)))
        return {"kl": max(kl, 0.0), "proxy": float(pi @ self.proxy), "gold": float(pi @ self.gold)}

    def tilted(self, betas: list[float]) -> dict[str, np.ndarray]:
        """The exact optimum for each β: kl, proxy, gold, ess (in outcomes), each [len(betas)].

        tilted.tilted_per_prompt with the population as one prompt's K samples: π_ref is uniform over
        them, so the self-normalized weights are π_β itself and nothing is estimated."""
        out = tilted.tilted_per_prompt(self.raw_proxy[None], {"gold": self.raw_gold[None]}, betas)
        return {name: values[0] for name, values in out.items()}

    def optimum_at_kl(self, kl: float) -> dict:
        """The tilted optimum whose KL from π_ref equals `kl`: β by root finding on log β (the optimum's
        KL falls monotonically as β grows: dKL/dβ = −Var_β(U)/β³). KL 0 is β = ∞ (the reference); a KL
        at the population's ceiling (every outcome but the top one negligible) is β → 0 (the top outcome)."""
        from scipy.optimize import brentq

        if kl <= 1e-12:
            return {"beta": math.inf, "proxy": float(self.p @ self.proxy), "gold": float(self.p @ self.gold)}
        spread = float(self.proxy[-1] - self.proxy[0]) or 1.0

        def excess(log_beta: float) -> float:
            return float(self.tilted([math.exp(log_beta)])["kl"][0]) - kl

        lo, hi = math.log(spread * 1e-9), math.log(spread * 1e9)
        if excess(lo) <= 0:  # no optimum reaches this KL before collapsing on the top outcome
            return {"beta": 0.0, "proxy": float(self.proxy[-1]), "gold": float(self.gold[-1])}
        log_beta = brentq(excess, lo, hi, xtol=1e-12, rtol=1e-12)
        point = self.tilted([math.exp(log_beta)])
        return {"beta": math.exp(log_beta), "proxy": float(point["proxy"][0]), "gold": float(point["gold"][0])}


# ----------------------------------------------------------------------------------------------
# 3. The K → ∞ limit for Gaussian error, in closed form.


def expected_max_normal(n: int) -> float:
    """E[max of n iid N(0,1)] = ∫_0^∞ (1 − Φ(z)^n) dz − ∫_{−∞}^0 Φ(z)^n dz, by quadrature; Φ^n in log
    space (log_ndtr), so n = e^31 loses nothing. The integrand steps from 1 to 0 near sqrt(2 log n),
    where the range is split so the quadrature sees the step."""
    from scipy.integrate import quad
    from scipy.special import log_ndtr

    if n == 1:
        return 0.0
    centre = math.sqrt(2.0 * math.log(n))
    above = lambda z: -math.expm1(n * log_ndtr(z))  # noqa: E731 - 1 − Φ(z)^n
    below = lambda z: math.exp(n * log_ndtr(z))  # noqa: E731 - Φ(z)^n
    parts = [quad(above, a, b, limit=200, epsabs=1e-13)[0] for a, b in ((0.0, centre), (centre, centre + 40.0))]
    return sum(parts) - quad(below, -40.0, 0.0, limit=200, epsabs=1e-13)[0]


def gaussian_limit_bon(n: int, scale: float) -> dict:
    """Best-of-n with K → ∞ and X ~ N(0, s²): U ~ N(0, σ²), σ² = 1 + s², E[V | U] = U/σ²."""
    sigma = math.sqrt(1.0 + scale**2)
    top = expected_max_normal(n)
    return {"kl": float(bon.kl_bon_analytic(n)), "proxy": sigma * top, "gold": top / sigma}


def gaussian_limit_tilted(beta: float, scale: float) -> dict:
    """The optimum with K → ∞ and X ~ N(0, s²): tilting N(0, σ²) by exp(u/β) gives N(σ²/β, σ²), so
    KL = σ²/(2β²), E[U] = σ²/β and E[V] = E[U]/σ² = 1/β."""
    variance = 1.0 + scale**2
    return {"kl": variance / (2 * beta**2), "proxy": variance / beta, "gold": 1.0 / beta}


# ----------------------------------------------------------------------------------------------
# 4. PPO on the one-step policy: a softmax over the outcomes, trained with bonrl ppo's objective.


def exact_policy_point(log_pi, proxy, gold, log_ref: float, beta: float) -> dict:
    """KL(π‖π_ref), E_π[U], E_π[V] and the objective E_π[U] − β KL of an explicit policy (torch tensors)."""
    pi = log_pi.exp()
    kl = float((pi * (log_pi - log_ref)).sum())
    proxy_mean, gold_mean = float(pi @ proxy), float(pi @ gold)
    return {"kl": max(kl, 0.0), "proxy_mean": proxy_mean, "gold_mean": gold_mean, "objective": proxy_mean - beta * kl}


def ppo_on_population(proxy: np.ndarray, gold: np.ndarray, beta: float, cfg: LabConfig, seed: int,
                      description: str = "lab ppo") -> list[dict]:
    """PPO at one β on the softmax policy over the outcomes (module docstring); one dict per evaluation
    (steps 0, every rl_eval_every and the last), each with the exact KL(π_θ‖π_β) to the optimum."""
    import torch

    from bon_vs_rl.measurement import models
    from bon_vs_rl.methods import ppo

    device = models.resolve_device(cfg.device)
    K, B, M = len(proxy), cfg.rl_batch_size, cfg.rl_minibatch_size
    u = torch.as_tensor(proxy, dtype=torch.float64, device=device)
    v = torch.as_tensor(gold, dtype=torch.float64, device=device)
    log_ref = -math.log(K)
    # The optimum of this β, for the distance KL(π_θ‖π_β) = (J* − J(π_θ))/β; J* = β log E_ref[exp(U/β)].
    log_optimum = torch.log_softmax(u / beta, dim=0)
    optimum_objective = beta * (float(torch.logsumexp(u / beta, dim=0)) + log_ref)

    if cfg.rl_policy == "tabular":  # one logit per outcome
        theta = torch.zeros(K, dtype=torch.float64, device=device, requires_grad=True)

        def policy_logits():
            return theta
    else:  # log-linear in what the outcome is made of, (V, X): the optimum is θ = (1/β, 1/β)
        features = torch.stack([v, u - v], dim=1)
        theta = torch.zeros(2, dtype=torch.float64, device=device, requires_grad=True)

        def policy_logits():
            return features @ theta
    value = torch.zeros(1, dtype=torch.float64, device=device, requires_grad=True)  # one state: one value
    optimizer = torch.optim.Adam([theta, value], lr=cfg.rl_learning_rate, eps=1e-5)  # θ = 0: π_θ = π_ref
    generator = torch.Generator(device=device).manual_seed(seed)
    ones = torch.ones(B, 1, dtype=torch.float64, device=device)  # every episode is one token long
    last = torch.zeros(B, dtype=torch.long, device=device)

    def evaluate(step: int, stats: dict) -> dict:
        with torch.no_grad():
            log_pi = torch.log_softmax(policy_logits(), dim=0)
            point = exact_policy_point(log_pi, u, v, log_ref, beta)
            kl_to_optimum = float((log_pi.exp() * (log_pi - log_optimum)).sum())
        return {"step": step, "beta": beta, **point, "optimum_objective": optimum_objective,
                "kl_to_optimum": max(kl_to_optimum, 0.0), "rollouts": step * B, **stats}

    rows = [evaluate(0, {})]
    bar = console.progress(cfg.rl_steps, description, unit="step", quiet=cfg.quiet)  # plain lines in a log
    for step in range(1, cfg.rl_steps + 1):
        bar.update(1)
        for group in optimizer.param_groups:  # linear annealing to 0 (CleanRL's anneal_lr)
            group["lr"] = cfg.rl_learning_rate * (1.0 - (step - 1) / cfg.rl_steps)
        # Rollout and rewards with the policy before this step's updates (π_old).
        with torch.no_grad():
            old_log_pi = torch.log_softmax(policy_logits(), dim=0)
            outcome = torch.multinomial(old_log_pi.exp(), B, replacement=True, generator=generator)
            old_logprobs = old_log_pi[outcome][:, None]  # [B, 1]
            rewards = ppo.kl_penalty_rewards(u[outcome], old_logprobs - log_ref, last, beta)
            old_values = value.detach().expand(B)[:, None]
            advantages, returns = ppo.gae(rewards, old_values, ones, gamma=1.0, lam=1.0)
            advantages = ppo.masked_whiten(None, advantages, ones)
        stats = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": []}
        for _ in range(cfg.rl_epochs):
            order = torch.randperm(B, generator=generator, device=device)
            for start in range(0, B, M):
                part = order[start:start + M]
                new_logprobs = torch.log_softmax(policy_logits(), dim=0)[outcome[part]][:, None]
                pg = ppo.clipped_policy_loss(new_logprobs, old_logprobs[part], advantages[part],
                                             ones[part], cfg.clip_range)
                value_loss, _ = ppo.clipped_value_loss(value.expand(len(part))[:, None], old_values[part],
                                                       returns[part], ones[part], cfg.clip_range)
                optimizer.zero_grad(set_to_none=True)
                # No value coefficient: the value shares no parameter with the policy, and Adam scales each
                # parameter's step on its own. The value clip is the ratio clip (no separate flag).
                (pg.loss + value_loss).backward()
                optimizer.step()
                with torch.no_grad():
                    stats["policy_loss"].append(pg.loss.item())
                    stats["value_loss"].append(value_loss.item())
                    stats["clipfrac"].append(float(pg.clipped.mean()))
                    stats["approx_kl"].append(float(((pg.ratio - 1) - pg.log_ratio).mean()))  # k3, as bonrl ppo
        if step % cfg.rl_eval_every == 0 or step == cfg.rl_steps:
            rows.append(evaluate(step, {f"train_{k}": float(np.mean(x)) for k, x in stats.items()}))
    bar.close()
    return rows


# ----------------------------------------------------------------------------------------------
# 5. The command.


def bon_rows(population: Population, ns: list[int], scale: float, gaussian: bool) -> list[dict]:
    rows = []
    for n in ns:
        point = population.best_of_n(n)
        optimum = population.optimum_at_kl(point["kl"])
        row = {"n": n, "log_n": math.log(n), "kl": point["kl"], "kl_analytic": float(bon.kl_bon_analytic(n)),
               "proxy_mean": point["proxy"], "gold_mean": point["gold"], "optimum_beta": optimum["beta"],
               "optimum_proxy": optimum["proxy"], "optimum_gold": optimum["gold"],
               "gold_gap": optimum["gold"] - point["gold"]}
        if gaussian:
            limit = gaussian_limit_bon(n, scale)
            row.update(kl_limit=limit["kl"], proxy_limit=limit["proxy"], gold_limit=limit["gold"],
                       optimum_gold_limit=math.sqrt(2 * limit["kl"]) / math.sqrt(1 + scale**2))
        rows.append(row)
    return rows


def tilted_rows(population: Population, betas: list[float], scale: float, gaussian: bool) -> list[dict]:
    point = population.tilted(betas)
    rows = []
    for k, beta in enumerate(betas):
        row = {"beta": beta, "kl": float(point["kl"][k]), "proxy_mean": float(point["proxy"][k]),
               "gold_mean": float(point["gold"][k]), "ess": float(point["ess"][k]),
               "ess_fraction": float(point["ess"][k]) / population.size,
               "low_ess": int(point["ess"][k] < tilted.LOW_ESS)}
        if gaussian:
            limit = gaussian_limit_tilted(beta, scale)
            row.update(kl_limit=limit["kl"], proxy_limit=limit["proxy"], gold_limit=limit["gold"])
        rows.append(row)
    return rows


def print_tables(bon_part: list[dict], tilted_part: list[dict], title: str, quiet: bool) -> None:
    """Three tables on stderr: best-of-n, best-of-n against the optimum at equal KL, the optimum per β;
    with the K → ∞ limit beside them for Gaussian error."""
    import pandas as pd

    limit = "gold_limit" in (bon_part or tilted_part or [{}])[0]

    def n_text(r: dict) -> str:
        return f"e^{r['log_n']:.4g}" if r["n"] > 10**6 else str(r["n"])

    shown = pd.DataFrame([{
        "n": n_text(r), "KL": r["kl"], "log n−(n−1)/n": r["kl_analytic"], "proxy": r["proxy_mean"],
        "gold": r["gold_mean"], **({"proxy K→∞": r["proxy_limit"], "gold K→∞": r["gold_limit"]} if limit else {}),
    } for r in bon_part])
    console.print_table(shown, title=f"best-of-n, exact: {title}", quiet=quiet)
    shown = pd.DataFrame([{
        "n": n_text(r), "KL": r["kl"], "BoN gold": r["gold_mean"], "opt. β": r["optimum_beta"],
        "opt. gold": r["optimum_gold"], "gap": r["gold_gap"],
        **({"BoN K→∞": r["gold_limit"], "opt. K→∞": r["optimum_gold_limit"]} if limit else {}),
    } for r in bon_part])
    console.print_table(shown, title="best-of-n against the optimum at the same KL (gap = optimum − BoN gold)",
                        quiet=quiet)
    shown = pd.DataFrame([{
        "β": r["beta"], "KL": r["kl"], "proxy": r["proxy_mean"], "gold": r["gold_mean"], "ESS": r["ess"],
        **({"KL K→∞": r["kl_limit"], "gold K→∞": r["gold_limit"]} if limit else {}),
    } for r in tilted_part])
    console.print_table(shown, title="the optimum π_β ∝ π_ref·exp(proxy/β), exact", quiet=quiet)


def exact_gains(rows: list[dict], population: Population) -> list[dict]:
    """Each row with the gain columns every results row has, relative to π_ref (the population's means).

    Exact, so each 95% interval is the point itself (lo = hi); without them `bonrl report` would measure a
    curve from its own smallest-KL point, which for the optimum is its largest β, not π_ref."""
    reference = {"proxy": float(population.raw_proxy.mean()), "gold": float(population.raw_gold.mean())}
    out = []
    for row in rows:
        gains = {"kl_lo": row["kl"], "kl_hi": row["kl"]}
        for name in ("proxy", "gold"):
            gain = row[f"{name}_mean"] - reference[name]
            gains.update({f"{name}_gain": gain, f"{name}_gain_lo": gain, f"{name}_gain_hi": gain})
        out.append({**row, **gains})
    return out


def lab(cfg: LabConfig) -> str:
    """The exact study of the module docstring; returns the run id of the best-of-n/optimum run."""
    from bon_vs_rl.record import results

    output = Path(cfg.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output: {output} is a file; choose a directory for the lab's resolved configs")
    if cfg.rl_steps:
        from bon_vs_rl.measurement import models

        models.resolve_device(cfg.device)  # ConfigError (exit 2) for CUDA without CUDA, before any work

    proxy, gold = draw_population(cfg.outcomes, cfg.error, cfg.error_scale, cfg.df, cfg.seed)
    population = Population(proxy, gold)
    gaussian = cfg.error == "normal"
    provenance = {"policy": f"lab:{cfg.error}", "proxy": proxy_name(cfg), "gold": GOLD_NAME, "seed": cfg.seed,
                  "outcomes": cfg.outcomes, "error": cfg.error, "error_scale": cfg.error_scale, "df": cfg.df,
                  "max_kl": math.log(cfg.outcomes)}
    config = to_dict(cfg)
    run_ids = []
    with results.ResultsStore(results.resolve_results_path(cfg.results)) as store:
        with results.run_context(store, "lab", config, cfg.seed, cfg.experiment) as run_id:
            files.write_json(output / run_id / "resolved_config.json", config)
            bon_part = bon_rows(population, cfg.ns, cfg.error_scale, gaussian)
            tilted_part = tilted_rows(population, cfg.betas, cfg.error_scale, gaussian)
            store.add_rows(run_id, [{**provenance, "method": "bon", **r} for r in exact_gains(bon_part, population)]
                           + [{**provenance, "method": "tilted", **r} for r in exact_gains(tilted_part, population)])
        run_ids.append(run_id)
        print_tables(bon_part, tilted_part, f"{provenance['proxy']}, K={cfg.outcomes:,}", cfg.quiet)

        for k, beta in enumerate(cfg.rl_betas if cfg.rl_steps else []):
            ppo_config = {**config, "rl_beta_of_run": beta}
            with results.run_context(store, "lab", ppo_config, cfg.seed, cfg.experiment) as ppo_run:
                files.write_json(output / ppo_run / "resolved_config.json", ppo_config)
                seed = int(np.random.SeedSequence([cfg.seed, k, 7]).generate_state(1)[0])
                part = ppo_on_population(proxy, gold, beta, cfg, seed, description=f"lab ppo β={beta:g}")
                store.add_rows(ppo_run, [{**provenance, "method": "ppo", **r} for r in exact_gains(part, population)])
            run_ids.append(ppo_run)
            optimum = population.tilted([beta])
            end = part[-1]
            console.note(f"ppo β={beta:g} after {end['step']} steps: KL {end['kl']:.4g} (optimum "
                         f"{optimum['kl'][0]:.4g}), proxy {end['proxy_mean']:.4g} ({optimum['proxy'][0]:.4g}), gold "
                         f"{end['gold_mean']:.4g} ({optimum['gold'][0]:.4g}), KL to the optimum "
                         f"{end['kl_to_optimum']:.3g}", cfg.quiet)
    for run in run_ids:
        print(run)  # stdout stays machine-readable: the run ids, for bonrl report --run-id
    return run_ids[0]
