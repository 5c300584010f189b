"""The report's figures of gold and proxy against sqrt(KL), one column per proxy (matplotlib, Agg backend;
imported inside `figures`, so the rest of bonrl never pays for it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bon_vs_rl.analysis import fits
from bon_vs_rl.report.measure import trusted_mask, trusted_points
from bon_vs_rl.report.selection import Curve

# ----------------------------------------------------------------------------------------------
# 6. Figures (matplotlib, Agg backend; imported here so the rest of bonrl never pays for it).


def colours(curves: list[Curve]) -> dict[str, str]:
    """One colour per curve name, the same in every figure; BoN first."""
    names = list(dict.fromkeys(c.label for c in sorted(curves, key=lambda c: (not c.is_bon, c.method, c.label))))
    palette = [f"C{i}" for i in range(10)]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def panel_title(panel: tuple[str, str, str], panels: list[tuple[str, str, str]]) -> str:
    parts = [f"proxy {panel[1]}"]
    if len({p[0] for p in panels}) > 1:
        parts.append(f"policy {panel[0]}")
    if len({p[2] for p in panels}) > 1:
        parts.append(f"gold {panel[2]}")
    return "\n".join(parts)


def draw_fit(ax, colour: str, d_right: float, fit: fits.Fit, style_in: str, style_out: str, peak: bool) -> None:
    """A fit over d ∈ [0, d_right]: `style_in` over the measured range, `style_out` where it extrapolates."""
    d_in = np.linspace(fit.d_min, fit.d_max, 100)
    ax.plot(d_in, fit.predict(d_in), style_in, color=colour, lw=1, alpha=0.8)
    if d_right > fit.d_max:
        d_out = np.linspace(fit.d_max, d_right, 50)
        ax.plot(d_out, fit.predict(d_out), style_out, color=colour, lw=1, alpha=0.8)
    if peak and fit.peak_d is not None and fit.peak_d <= d_right:
        ax.plot([fit.peak_d], [fit.peak_reward], "*", color=colour, ms=10,
                mfc=colour if fit.peak_in_range else "white")


def style_legend(fit_kl_max: float, seeds: bool, low_ess: bool) -> list:
    """Grey stand-ins explaining the line styles (the colours name the curves)."""
    from matplotlib.lines import Line2D

    grey = "0.4"
    handles = [Line2D([], [], color=grey, marker="o", ms=3.5, lw=1.4, label="measured (band: 95% interval)"),
               Line2D([], [], color=grey, lw=1, label="fit, measured range"),
               Line2D([], [], color=grey, lw=1, ls="--", label="fit, extrapolated"),
               Line2D([], [], color=grey, marker="*", ms=9, lw=0, label="fitted peak (hollow: extrapolated)")]
    if seeds:
        handles.append(Line2D([], [], color=grey, lw=0.7, alpha=0.5, label="one seed"))
    if low_ess:
        handles.append(Line2D([], [], color=grey, marker="o", mfc="white", lw=0, label="too few effective samples"))
    if fit_kl_max > 0:
        handles.append(Line2D([], [], color=grey, lw=1, ls=":", label=f"fit on KL ≤ {fit_kl_max:g} only"))
    return handles


def draw_line(ax, p: pd.DataFrame, x: str, y: str, colour: str, label: str, lw: float | None = None) -> None:
    """y against x along a curve; points resting on too few effective samples hollow and off the line."""
    trusted = trusted_mask(p)
    ax.plot(p[x][trusted], p[y][trusted], "o-", color=colour, ms=3.5, lw=lw, label=label)
    if (~trusted).any():
        ax.plot(p[x][~trusted], p[y][~trusted], "o", color=colour, mfc="white", ms=4)


def draw_measured(ax, p: pd.DataFrame, y: str, colour: str, label: str, seed_points: list[pd.DataFrame]) -> None:
    """Points with their 95% band (and horizontal KL interval bars); points too uncertain to trust (a tilted
    optimum with too few effective samples) hollow and off the line: not drawn as measured."""
    draw_line(ax, p, "d", y, colour, label, lw=1.4)
    p = trusted_points(p)  # bands and bars only where the points are measurements
    lo, hi = p.get(f"{y}_lo"), p.get(f"{y}_hi")
    if lo is not None and np.isfinite(lo).any():
        ax.fill_between(p["d"], lo, hi, color=colour, alpha=0.18, lw=0)
    if "kl_lo" in p and np.isfinite(p["kl_lo"]).any() and (p["kl_hi"] > p["kl_lo"]).any():
        d_lo, d_hi = np.sqrt(np.clip(p["kl_lo"], 0, None)), np.sqrt(np.clip(p["kl_hi"], 0, None))
        ax.errorbar(p["d"], p[y], xerr=[np.clip(p["d"] - d_lo, 0, None), np.clip(d_hi - p["d"], 0, None)],
                    fmt="none", ecolor=colour, elinewidth=0.7, alpha=0.6)
    for sp in seed_points:
        ax.plot(sp["d"], sp[y], "-", color=colour, lw=0.7, alpha=0.45)


PANELS_PER_ROW = 4


def figures(curves: list[Curve], out: Path, gold_label: str, fit_kl_max: float) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = colours(curves)
    panels = list(dict.fromkeys(c.panel for c in curves))
    by_panel = {p: [c for c in curves if c.panel == p] for p in panels}
    made = []

    def grid(rows: int):
        """One column per panel, at most PANELS_PER_ROW side by side (a sweep of a dozen proxies wraps onto
        further rows); each panel's `rows` axes stacked and sharing x. axes[r, j]: row r of panel j."""
        columns = min(len(panels), PANELS_PER_ROW)
        blocks = -(-len(panels) // columns)
        width = max(7.0, 4.6 * columns)  # wide enough for the legend below the panels
        fig, grid_axes = plt.subplots(rows * blocks, columns, figsize=(width, 3.4 * rows * blocks), squeeze=False)
        axes = np.empty((rows, len(panels)), dtype=object)
        for j in range(len(panels)):
            for r in range(rows):
                axes[r, j] = grid_axes[(j // columns) * rows + r, j % columns]
                if r:
                    axes[r, j].sharex(axes[0, j])
        for j in range(len(panels), blocks * columns):  # the unused places of the last row of panels
            for r in range(rows):
                grid_axes[(j // columns) * rows + r, j % columns].set_visible(False)
        return fig, axes

    def save(fig, name: str, caption: str, extra: list | None = None):
        handles = {}
        for ax in fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, h)
        for h in extra or []:
            handles[h.get_label()] = h
        columns = max(1, min(len(handles), int(fig.get_figwidth() // 2.3)))
        legend_rows = -(-len(handles) // columns)
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                       ncol=columns, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, min(0.4, 0.2 * legend_rows / fig.get_figheight()), 1, 1))
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, caption))

    # Gold and proxy gains against sqrt(KL), fits drawn: solid where measured, dashed where extrapolated.
    fig, axes = grid(2)
    for j, panel in enumerate(panels):
        top, bottom = axes[0, j], axes[1, j]
        d_right = 1.25 * max(np.nanmax(c.points["d"]) for c in by_panel[panel])
        low, high = [], []  # the y range of what was measured: extrapolations may leave the frame
        for c in by_panel[panel]:
            p, col = c.points, colour[c.label]
            draw_measured(top, p, "scaled", col, c.label, c.seed_points)
            draw_measured(bottom, p, "proxy_gain", col, c.label, c.seed_points)
            low.append(np.nanmin(p["scaled_lo"].fillna(p["scaled"])))
            high.append(np.nanmax(p["scaled_hi"].fillna(p["scaled"])))
            if c.fit is not None:
                draw_fit(top, col, d_right, c.fit, "-", "--", peak=True)
                if c.fit.peak_reward is not None and c.fit.peak_d <= d_right:
                    high.append(c.fit.peak_reward)
            if c.check_fit is not None:
                draw_fit(top, col, d_right, c.check_fit, ":", ":", peak=False)
        lo_y, hi_y = np.nanmin(low), np.nanmax(high)
        gap = (hi_y - lo_y) or 1.0
        top.set_ylim(lo_y - 0.15 * gap, hi_y + 0.15 * gap)
        if fit_kl_max > 0:
            top.axvline(math.sqrt(fit_kl_max), color="grey", ls=":", lw=0.8)
        top.axhline(0, color="grey", lw=0.5)
        bottom.axhline(0, color="grey", lw=0.5)
        top.set_title(panel_title(panel, panels), fontsize=9)
        top.set_ylabel(gold_label)
        bottom.set_ylabel("proxy − initial")
        bottom.set_xlabel("sqrt(KL) from the initial policy, sqrt(nats)")
    seeds = any(c.seed_points for c in curves)
    low_ess = any(bool(c.points.get("low_ess", pd.Series(dtype=bool)).any()) for c in curves)
    save(fig, "reward_vs_kl.png",
         "Gold (top) and proxy (bottom) gain over the initial policy on the same prompts, against sqrt(KL); bands "
         "and bars: 95% intervals from resampling prompts (and seeds). Thin lines: Gao et al. functional-form fits, "
         "solid over the measured range, dashed where extrapolated; stars: fitted peaks (hollow when outside the "
         "measured range).", style_legend(fit_kl_max, seeds, low_ess))

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            draw_line(ax, c.points, "proxy_gain", "scaled", colour[c.label], c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy − initial")
        ax.set_ylabel(gold_label)
    save(fig, "proxy_vs_gold.png", "Gold against proxy gain: where the curves bend over, proxy gains stop being real.")

    fig, axes = grid(1)
    for j, panel in enumerate(panels):
        ax = axes[0, j]
        for c in by_panel[panel]:
            draw_line(ax, c.points, "proxy_gain", "kl", colour[c.label], c.label)
        ax.set_title(panel_title(panel, panels), fontsize=9)
        ax.set_xlabel("proxy − initial")
        ax.set_ylabel("KL from the initial policy, nats")
    save(fig, "kl_vs_proxy.png", "KL spent against proxy gain: the higher curve drifts further from the initial "
         "policy for the same proxy gain.")

    if any(c.points["length_mean"].notna().any() for c in curves):
        fig, axes = grid(1)
        for j, panel in enumerate(panels):
            ax = axes[0, j]
            for c in by_panel[panel]:
                draw_line(ax, c.points, "d", "length_mean", colour[c.label], c.label)
            ax.set_title(panel_title(panel, panels), fontsize=9)
            ax.set_xlabel("sqrt(KL), sqrt(nats)")
            ax.set_ylabel("completion length, tokens")
        save(fig, "length_vs_kl.png", "Mean completion length against sqrt(KL): a proxy that pays for length shows "
             "up here first.")
    return made
