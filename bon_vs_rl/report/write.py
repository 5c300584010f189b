"""`bonrl report`: what best-of-n and RL bought, measured by the gold reward, at the same KL — with intervals.

    bonrl report --experiment cpu-demo --output runs/cpu-demo/report
    bonrl report --results runs/results.sqlite --methods bon,ppo --scale unit --fit-kl-max 2

Reads the shared results table (only `bonrl report` draws; every other command writes rows) and the
per-sample records every row links to, and writes one self-contained directory, replaced atomically
so a failed report never leaves half a one:

    report.md, report.html   the same content; the HTML embeds its figures (opens offline)
    reward_vs_kl.png         gold (top) and proxy (bottom) gain against sqrt(KL), one column per proxy RM
    proxy_vs_gold.png        gold gain against proxy gain: how much of the proxy's gain is real
    kl_vs_proxy.png          KL spent per unit of proxy gain
    length_vs_kl.png         completion length against KL (length exploitation is the commonest hack)
    points.csv, fits.csv, comparison.csv, (fit_check.csv, reward_models.csv)
    signals.png, onset.png, signals.csv, onset.csv, onset_runs.csv
                             gold-free warning signs of hacking along every curve, and which of them warn
                             near the gold's measured peak (hacking.py, analysis/onset.py)
    scaling.png, scaling_curves.png, scaling.csv, scaling_trends.csv, proxy_comparisons.csv
                             the scaling view, where a policy and gold have several proxies (scaling.py)

Vocabulary (Gao, Schulman & Hilton 2022):
- A *panel* is one (policy, proxy, gold); a *curve* one optimization setting against that proxy:
  best-of-n over its n grid, the KL-regularized optimum over its β grid, or an RL setting over its
  steps — replicate seeds of one RL setting (same `setting` fingerprint) pooled into one curve.
- Every curve of a panel is re-measured from its per-prompt records on the prompts all of them share,
  and every gain is paired, prompt by prompt, against one measurement of the initial policy on those
  prompts (best-of-n's N samples per prompt when there are any, else an RL run's step 0).
- d = sqrt(KL(π || π_init)); gold is shown as that paired gain (with --scale unit, divided by the initial
  policy's per-sample gold standard deviation, the unit-variance gold of §2.2).
- Uncertainty: `findings.analyse` resamples prompts (and seeds) through the whole pipeline — per-prompt
  estimates, gains, fits, interpolated comparisons — so every number printed here carries a 95% interval,
  and a comparison is called only when the interval of the difference excludes 0.
- Fits: BoN R(d) = d(α − β d), RL R(d) = d(α − β log d) (eq. 1-2), drawn solid over the measured range of d
  and dashed where they only extrapolate.

The report selects (selection.py, measure.py), draws (figures.py, scaling.py) and writes (this module);
every statistic comes from analysis/ (statistics.py, findings.py).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from bon_vs_rl.config.base import to_dict
from bon_vs_rl.config.commands import ReportConfig
from bon_vs_rl.record import console, files
from bon_vs_rl.report import hacking, overopt, scaling
from bon_vs_rl.report.figures import colours, figures
from bon_vs_rl.report.measure import (
    Panel,
    check_table,
    comparison_table,
    fit_curves,
    fits_table,
    measure,
    pair_table,
    trusted_points,
)
from bon_vs_rl.report.selection import FILTERS, Curve, group_curves, name_curves, run_outputs, select_rows
from bon_vs_rl.report.words import QUANTITY_WORDS, fmt, multiplicity_note, sentence_case, span


def verdict_sentence(r: pd.Series) -> str:
    what = sentence_case(QUANTITY_WORDS[r["quantity"]].format(target=fmt(r["target"])))
    both = (f"{r['curve_a']} {span(r['a'], r['a_lo'], r['a_hi'])}, {r['curve_b']} {span(r['b'], r['b_lo'], r['b_hi'])}; "
            f"difference {span(r['diff'], r['diff_lo'], r['diff_hi'])}")
    if not math.isfinite(r["target"]):
        return f"{what}: no common range to compare {r['curve_a']} and {r['curve_b']} on."
    short = [r[f"curve_{t}"] for t in ("a", "b") if not math.isfinite(r[t])]
    if short:
        return f"{what}: {' and '.join(short)} never reach{'es' if len(short) == 1 else ''} it on the measured points."
    if r["verdict"] == "unresolved":
        more, prompts = r["prompts_needed"], int(r["prompts"])
        hint = ("" if not math.isfinite(more) else
                f" (a difference this size would need more than {100 * prompts} prompts: it is small against its "
                "uncertainty)" if more > 100 * prompts else
                f" (roughly {int(more)} prompts instead of {prompts} would resolve a difference this size)")
        kept = (f" The distilled policy keeps {span(r['share'], r['share_lo'], r['share_hi'])} of best-of-n's gold "
                "gain." if r["quantity"] == "gold_at_point" and math.isfinite(r.get("share", math.nan)) else "")
        return f"{what}: {both} — not resolved at this sample size{hint}.{kept}"
    winner, loser = (r["curve_a"], r["curve_b"]) if r["verdict"] == "ahead" else (r["curve_b"], r["curve_a"])
    kept = (f" The distilled policy keeps {span(r['share'], r['share_lo'], r['share_hi'])} of best-of-n's gold gain."
            if r["quantity"] == "gold_at_point" and math.isfinite(r.get("share", math.nan)) else "")
    return (f"{what}: {both} — **{winner} is ahead of {loser}** (the 95% interval of the difference "
            f"excludes 0).{kept}")


def summary(panels: list[Panel]) -> list[str]:
    lines = []
    for panel in panels:
        where = f"policy {panel.key[0]}, proxy {panel.key[1]}, gold {panel.key[2]}"
        lines.append(f"**{where}** — {len(panel.curves)} curve(s): " + ", ".join(c.label for c in panel.curves)
                     + (f"; measured on {len(panel.prompt_ids)} shared prompts, gains paired against "
                        f"{panel.baseline_source}." if panel.prompt_ids is not None else "."))
        for c in panel.curves:
            p = c.points
            if not len(p):
                continue
            shaky = int(p["low_ess"].sum()) if "low_ess" in p else 0
            p = trusted_points(p)
            if not len(p):
                lines.append(f"{c.label}: every point rests on too few effective samples to be a measurement.")
                continue
            last = p.iloc[-1]
            best = p.loc[p["scaled"].idxmax()] if p["scaled"].notna().any() else last
            text = (f"{c.label}: up to KL {span(last['kl'], last['kl_lo'], last['kl_hi'])} nats the proxy gain is "
                    f"{span(last['proxy_gain'], last['proxy_gain_lo'], last['proxy_gain_hi'])} and the gold gain "
                    f"{span(last['scaled'], last['scaled_lo'], last['scaled_hi'])}; the largest measured gold gain is "
                    f"{span(best['scaled'], best['scaled_lo'], best['scaled_hi'])} at KL {fmt(best['kl'])}.")
            if c.fit is not None and c.fit.peak_kl == 0:
                text += f" The {c.form} form's maximum is the initial policy: gold falls from the start (α ≤ 0)."
            elif c.fit is not None and c.fit.peak_kl is not None:
                f = c.fit_interval
                text += (f" The {c.form} form puts its peak at KL "
                         f"{span(c.fit.peak_kl, f.get('peak_kl_lo', math.nan), f.get('peak_kl_hi', math.nan))}"
                         f"{'' if c.fit.peak_in_range else ' (beyond the measured range: an extrapolation)'}.")
            elif c.fit is not None:
                text += f" The {c.form} form has no peak: gold is still rising."
            quality = (c.fit_interval or {}).get("se_ratio", math.nan)
            if c.fit is not None and math.isfinite(quality):
                text += (f" The form's fit (unweighted) misses the points by rmse {fmt(c.fit_interval['rmse'])}, "
                         f"{fmt(quality, 2)}× their own SE (R² {fmt(c.fit_interval['r2'], 2)}).")
            if shaky:
                text += (f" ({shaky} further point(s) rest on too few effective samples: drawn hollow, left out of "
                         "fits and comparisons.)")
            if len(c.runs) > 1:
                finals = [sp["scaled"].iloc[-1] for sp in c.seed_points if len(sp)]
                if finals:
                    text += (f" Its {len(c.runs)} seeds end at gold gains {', '.join(fmt(v) for v in finals)} "
                             "(the interval includes this spread).")
            lines.append(text)
        for r in panel.comparisons:
            lines.append(verdict_sentence(pd.Series(r)))
    return lines


# ----------------------------------------------------------------------------------------------
# 7. Writing: the report is a list of blocks rendered twice, as Markdown and as self-contained HTML.


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return fmt(v, 4).replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def html_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v, 4))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def inline(text: str) -> str:
    """The one bit of Markdown the summary uses (**bold**), as HTML."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def render_markdown(blocks: list[tuple]) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"# {rest[0]}")
        elif kind == "h2":
            out.append(f"## {rest[0]}")
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {line}" for line in rest[0]))
        elif kind == "table":
            out.append(markdown_table(rest[0]))
        elif kind == "figure":
            out.append(f"![{rest[1]}]({rest[0]})\n\n*{rest[1]}*")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[tuple], directory: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind == "h1":
            out.append(f"<h1>{html.escape(rest[0])}</h1>")
        elif kind == "h2":
            out.append(f"<h2>{html.escape(rest[0])}</h2>")
        elif kind == "p":
            out.append(f"<p>{inline(rest[0])}</p>")
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(line)}</li>" for line in rest[0]) + "</ul>")
        elif kind == "table":
            out.append(html_table(rest[0], rest[1]))
        elif kind == "figure":
            data = base64.b64encode((directory / rest[0]).read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(rest[0])}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(rest[1])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;line-height:1.4}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:right}img{max-width:100%}figcaption{font-size:13px;color:#444}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>bonrl report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


POINT_COLUMNS = ["run_id", "method", "curve", "policy", "proxy", "gold", "n", "step", "beta", "kl", "kl_lo", "kl_hi",
                 "proxy_mean", "proxy_gain", "proxy_gain_lo", "proxy_gain_hi", "gold_mean", "gold_gain",
                 "gold_gain_lo", "gold_gain_hi", "scaled", "scaled_lo", "scaled_hi", "ess", "low_ess", "length_mean",
                 "generated_tokens", "trained_tokens"]


def points_table(curves: list[Curve]) -> pd.DataFrame:
    frames = []
    for c in curves:
        p = c.points.rename(columns={"proxy": "proxy_mean", "gold": "gold_mean"})
        p["run_id"], p["method"], p["curve"] = ",".join(c.run_ids), c.method, c.label
        p["policy"], p["proxy"], p["gold"] = c.panel
        frames.append(p)
    table = pd.concat(frames, ignore_index=True)
    return table[[col for col in POINT_COLUMNS if col in table and (col in POINT_COLUMNS[:6] or table[col].notna().any())]]


def rm_table(rows: pd.DataFrame) -> pd.DataFrame:
    rm = rows[rows["method"] == "rm"]
    keep = [c for c in ("run_id", "proxy", "backbone", "pairs", "data_pairs", "label_noise", "ensemble",
                        "parameters_non_embedding", "accuracy", "accuracy_lo", "accuracy_hi", "pearson", "spearman",
                        "trained_tokens") if c in rm]
    return rm[keep].reset_index(drop=True)


def report(cfg: ReportConfig) -> Path:
    """Selected rows -> per-prompt records -> curves -> statistics -> report directory (returned and printed)."""
    from bon_vs_rl.record import results

    rows, checked = select_rows(cfg)  # bad or empty selection: ConfigError before anything is written
    curves, notes = group_curves(rows)
    notes = checked + notes
    name_curves(curves, run_outputs(rows, results.resolve_results_path(cfg.results)))
    curves.sort(key=lambda c: (c.panel, not c.is_bon, c.method != "tilted", c.method, c.label))
    families = scaling.plan(curves, rows, cfg)  # --scaling on that cannot be honoured: ConfigError, nothing written
    panels = measure(curves, cfg)
    for family in families:
        scaling.measure(family, panels, cfg)
    unit = cfg.scale == "unit" and all(p.prompt_ids is not None and p.gold_std > 0 for p in panels)
    if cfg.scale == "unit" and not unit:
        notes.append("Unit scale was asked for but some panel has no measured initial gold std (no per-prompt "
                     "records); all gold is shown relative to the initial policy instead.")
        for c in curves:
            for suffix in ("", "_lo", "_hi"):
                c.points["scaled" + suffix] = c.points["gold_gain" + suffix]
    fit_curves(curves, cfg.fit_kl_max)
    warning = hacking.measure(panels)  # gold-free warning signs and when they fire relative to the gold's peak
    scale_words = ("gain over the initial policy on the same prompts, in units of its gold standard deviation"
                   if unit else "gain over the initial policy on the same prompts")
    gold_label = "gold − initial (unit variance)" if unit else "gold − initial"
    notes += [c.records_note for c in curves if c.records_note] + [n for p in panels for n in p.notes]
    notes += [n for f in families for n in f.notes]
    notes = list(dict.fromkeys(notes))
    refusals = [c.fit_note for c in curves if c.fit_note] + [c.check_note for c in curves if c.check_note]

    points = points_table(curves)
    fit_frame, check_frame, rms = fits_table(curves), check_table(curves), rm_table(rows)
    comparisons = comparison_table(panels)
    lines = summary(panels)
    lines += [f"{f.lines[0]} See \"Scaling across proxies\"." for f in families if f.measured]
    out = Path(cfg.output)
    with files.atomic_directory(out) as tmp:
        made = figures(curves, tmp, gold_label, cfg.fit_kl_max)
        scaled = scaling.figures(families, tmp)
        warned = hacking.figures(warning, tmp)
        blocks: list[tuple] = [("h1", "bonrl report: best-of-n against RL, measured by the gold reward")]
        selection = {k: getattr(cfg, k) for k in (*FILTERS, "methods") if getattr(cfg, k)}
        blocks.append(("p", f"{len(points)} measured points in {len(curves)} curve(s) from "
                       f"{len({r for c in curves for r in c.run_ids})} run(s); selection: {selection or 'the whole table'}; "
                       f"gold is shown as the {scale_words}. Every interval is a 95% percentile interval from "
                       f"{cfg.bootstrap} resamples of the evaluation prompts (and of the seeds, where a setting has "
                       "several), taken through the whole pipeline: per-prompt estimates, gains, fits and "
                       "interpolations."))
        blocks += [("h2", "Summary"), ("list", lines)]
        if notes or refusals:
            blocks += [("h2", "Notes"), ("list", notes + refusals)]
        blocks.append(("h2", "Figures"))
        blocks += [("figure", name, caption) for name, caption in made]
        if len(comparisons):
            blocks += [("h2", "Comparisons"),
                       ("p", "For each pair of curves on the same policy, proxy, gold and prompts: the gold gain at a "
                        "matched KL (by default the largest KL both curves reach in at least 97.5% of resamples), "
                        "the KL each spends to reach a proxy gain (the largest both reach likewise) and its gold "
                        "gain there, and the KL each needs to reach a gold gain (by default half the smaller "
                        "measured peak, a fixed target). Curves are interpolated linearly in sqrt(KL) between "
                        "measured points; optimum points with too few effective samples are left out. "
                        "A curve is called ahead only where the 95% interval of the difference excludes 0. "
                        "All rows: comparison.csv.")]
            blocks.append(("list", [multiplicity_note(frame, f"Panel policy {k[0]}, proxy {k[1]}, gold {k[2]}")
                                    for k, frame in comparisons.groupby(["policy", "proxy", "gold"], sort=False)]))
            for i, ((a, b), frame) in enumerate(comparisons.groupby(["curve_a", "curve_b"], sort=False)):
                first = frame.iloc[0]
                blocks += [("p", f"**{a} vs {b}** — proxy {first['proxy']}, policy {first['policy']}, gold "
                                 f"{first['gold']}, {int(first['prompts'])} prompts"),
                           ("table", pair_table(frame), f"comparison-{i}")]
        overopt_blocks, overopt_tables = overopt.blocks(panels, tmp, colours(curves))
        blocks += overopt_blocks
        blocks.append(("h2", "Functional-form fits (Gao et al. 2022, eq. 1-2)"))
        blocks.append(("p", "BoN: R(d) = d(α − β d); RL: R(d) = d(α − β log d); d = sqrt(KL), R = gold "
                       + scale_words + ". Peak: BoN d* = α/2β (the initial policy when α ≤ 0), RL d* = exp(α/β − 1). "
                       "Intervals from refitting every prompt resample (a d = 0 point adds no degree of freedom); "
                       "a peak interval is open above where some resamples have no peak (no_peak_share: β ≤ 0), a "
                       "failed refit (failed_share) or an RL peak too far out to compute (overflow_share). Every fit "
                       "is unweighted least squares: the points of one curve share prompts (best-of-n's all come from "
                       "one draw), so weights 1/SE² would not make them independent, and since a best-of-n point's SE "
                       "grows many-fold from small to large n they would let the first few n set the curve and mute the "
                       "large-KL points where overoptimization shows; refitting every prompt resample counts the "
                       "correlation whatever the weights. Goodness of fit over the points with KL > 0: rmse, r2, and "
                       "rmse_over_se, the rmse against the points' own prompt-resample SE (near 1: the form misses by "
                       "about the points' noise; well above 1: the curve has a shape the form lacks)."))
        if len(fit_frame):
            blocks.append(("table", fit_frame, "fits"))
        if refusals:
            blocks.append(("list", refusals))
        blocks += scaling.blocks(families, scaled)
        blocks += hacking.blocks(warning, warned)
        if cfg.fit_kl_max > 0:
            blocks += [("h2", f"Fit on KL ≤ {cfg.fit_kl_max:g}, predict the rest"),
                       ("p", "Each form fitted only to the points with KL ≤ k, then scored on the larger-KL points "
                        "it never saw (the check of Gao et al. §3).")]
            blocks.append(("table", check_frame, "fit_check") if len(check_frame) else ("p", "No curve could be fitted."))
        if len(rms):
            blocks += [("h2", "Proxy reward models"), ("table", rms, "reward_models")]
        blocks += [("h2", "Measured points"), ("p", "Every point of every curve, with its 95% intervals."),
                   ("table", points, "points")]
        blocks += [("h2", "Settings"), ("p", f"`bonrl report` with {to_dict(cfg)}")]

        points.to_csv(tmp / "points.csv", index=False)
        fit_frame.to_csv(tmp / "fits.csv", index=False)
        comparisons.to_csv(tmp / "comparison.csv", index=False)
        if cfg.fit_kl_max > 0:
            check_frame.to_csv(tmp / "fit_check.csv", index=False)
        if len(rms):
            rms.to_csv(tmp / "reward_models.csv", index=False)
        if any(f.measured for f in families):
            for name, table in scaling.tables(families).items():
                table.to_csv(tmp / name, index=False)
        hacking.write_tables(warning, tmp)
        for name, table in overopt_tables.items():
            table.to_csv(tmp / name, index=False)
        files.write_json(tmp / "resolved_config.json", to_dict(cfg))
        files.write_text(tmp / "report.md", render_markdown(blocks))
        files.write_text(tmp / "report.html", render_html(blocks, tmp))

    for line in lines + [line for f in families for line in f.lines[1:]]:
        console.note(line.replace("**", ""), cfg.quiet)
    for line in warning.lines:
        console.note("warning signs: " + line, cfg.quiet)
    for line in notes + refusals:
        console.note("note: " + line, cfg.quiet)
    print(out)
    return out
