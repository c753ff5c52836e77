"""Plots of a study (PNG, written to ``plots/`` in the study directory): learning curves, a metric against
digit length per cell, and a heatmap of two keys.

Each ``*_figure`` function returns a matplotlib Figure (built without pyplot, so no GUI backend and no global
state: the Agg canvas renders it) that tests can inspect; ``write_plots`` saves them. Reads the Parquet tables
only.
"""
from __future__ import annotations

import io
import math
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless everywhere: clusters and CI have no display

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .report import Study, default_keys, fmt, levels, lower_is_better, resolve_keys, resolve_value

PLOTS_DIR = "plots"
LEARNING_CURVES = "learning_curves.png"
VS_DIGITS = "metric_vs_digits.png"
HEATMAP = "heatmap.png"


def _palette(values: list) -> dict:
    cmap = matplotlib.colormaps["tab10" if len(values) <= 10 else "viridis"]
    n = max(len(values) - 1, 1)
    return {v: cmap(i if len(values) <= 10 else i / n) for i, v in enumerate(values)}


def color_key(study: Study, requested: Optional[str] = None) -> Optional[str]:
    """The key that colours learning curves: the user's, else ``cell`` if swept, else the first swept key."""
    if requested:
        resolve_keys(study.trials, [requested], "--color-by")
        return requested
    keys = default_keys(study)
    return "cell" if "cell" in keys else (keys[0] if keys else None)


def learning_curves_figure(study: Study, color_by: Optional[str] = None) -> Figure:
    """Training loss and exact accuracy against iteration, one line per trial, coloured by ``color_by``."""
    m, t = study.metrics, study.trials
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    groups = levels(t[color_by]) if color_by else pd.Series(["all"] * len(t), index=t.index)
    group_of = dict(zip(t["trial_id"], groups))
    order = sorted(pd.unique(groups), key=_sort_key)
    colors = _palette(order)
    log_loss = log_loss_axis(m)
    if study.has_replicates:  # one mean line per configuration, its 95% interval over seeds as a band
        config_of = dict(zip(t["trial_id"], t["config_id"]))
        for cid, trial_ids in t.groupby("config_id")["trial_id"]:
            c = colors[group_of.get(trial_ids.iloc[0], order[0])]
            for ax, metric in ((ax_loss, "loss"), (ax_acc, "exact_acc")):
                mean, lo, hi = replicate_band(m[m["trial_id"].map(config_of) == cid], metric,
                                              log=log_loss and metric == "loss")
                ax.plot(mean.index, mean.values, color=c, alpha=0.9, lw=1.6)
                ax.fill_between(mean.index, lo.values, hi.values, color=c, alpha=0.15, lw=0)
    else:
        _trial_lines(m, group_of, colors, order[0], ax_loss, ax_acc)
    if log_loss:
        ax_loss.set_yscale("log")
    ylabel = "cross-entropy loss (mean since last report)"
    if study.has_replicates and log_loss:
        ylabel = "cross-entropy loss (geometric mean over seeds)"
    ax_loss.set(title="Training loss", xlabel="iteration", ylabel=ylabel)
    ax_acc.set(title="Exact accuracy on the evaluation set", xlabel="iteration", ylabel="exact_acc", ylim=(-0.02, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    if color_by:
        handles = [Line2D([], [], color=colors[v], lw=2, label=fmt(v)) for v in order]
        ax_acc.legend(handles=handles, title=color_by, loc="best", fontsize="small")
    what = (f"mean ± 95% CI over seeds of {t['config_id'].nunique()} configurations ({len(t)} trials)"
            if study.has_replicates else f"{t['trial_id'].nunique()} trials")
    fig.suptitle(f"{study.name}: learning curves, {what}" + (f", coloured by {color_by}" if color_by else ""))
    return fig


def _trial_lines(m: pd.DataFrame, group_of: dict, colors: dict, first, ax_loss, ax_acc) -> None:
    """One line per trial on both panels, drawn as one LineCollection per panel: a 10,000-trial study's 20,000
    separate lines took matplotlib 27 s; the collection draws them in a second or two."""
    from matplotlib.collections import LineCollection

    m = m.sort_values(["trial_id", "iter"])
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "exact_acc")):
        segments, shades = [], []
        for trial_id, g in m.groupby("trial_id", sort=True):
            segments.append(np.column_stack([g["iter"].to_numpy(float), g[metric].to_numpy(float)]))
            shades.append(colors[group_of.get(trial_id, first)])
        ax.add_collection(LineCollection(segments, colors=shades, alpha=0.8, linewidths=1.4))
        ax.autoscale_view()


def replicate_band(m: pd.DataFrame, metric: str, log: bool = False) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Mean and 95% t interval over the trials in ``m`` of ``metric`` at each iteration. A trial that stopped
    (solved) keeps its last value at later iterations, so the mean is over every seed at every point.

    ``log``: for a panel on a log axis (the loss): mean and interval of log(metric), returned as exp -- the
    geometric mean, with a band that stays positive. An arithmetic interval of a quantity spread over decades
    (seeds at 0.09 and 0.01) reaches below zero, which a log axis draws as a stripe down to its bottom.
    An accuracy's band is cut at 0 and 1."""
    from .stats import t975

    wide = m.pivot_table(index="iter", columns="trial_id", values=metric).sort_index().ffill()
    if log:
        wide = np.log(wide)
    mean = wide.mean(axis=1)
    n = wide.notna().sum(axis=1)
    half = (wide.std(axis=1, ddof=1) / np.sqrt(n.clip(lower=1))) * n.map(lambda k: t975(int(k) - 1) if k > 1 else 0)
    half = half.fillna(0)
    if log:
        return np.exp(mean), np.exp(mean - half), np.exp(mean + half)
    lo, hi = mean - half, mean + half
    if "acc" in metric:  # an accuracy's interval ends at 0 and 1
        lo, hi = lo.clip(lower=0.0), hi.clip(upper=1.0)
    return mean, lo, hi


def log_loss_axis(m: pd.DataFrame) -> bool:
    """The loss panels use a log axis when every reported loss is positive (it spans decades)."""
    return bool(len(m)) and bool(m["loss"].dropna().gt(0).all())


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else (1, 0, str(v))


def vs_digits_figure(study: Study, line_by: str = "cell", agg: str = "median") -> Optional[Figure]:
    """Best exact accuracy and iterations-to-solve against digit length, one line per ``line_by`` value.
    None unless digits takes at least two values. Trials that differ in other keys are aggregated with ``agg``."""
    t = study.trials
    if "digits" not in t or t["digits"].nunique() < 2:
        return None
    if line_by not in t or t[line_by].nunique() < 1:
        line_by = None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    panels = (("best_exact_acc", "best exact_acc"), ("iters_to_solve", "iterations to solve (unsolved omitted)"))
    groups = sorted(t[line_by].dropna().unique(), key=_sort_key) if line_by else ["all"]
    colors = _palette(groups)
    for ax, (col, label) in zip(axes, panels):
        for gv in groups:
            sub = t[t[line_by] == gv] if line_by else t
            s = sub.groupby("digits")[col].agg(agg).sort_index()
            ax.plot(s.index, s.values, marker="o", color=colors[gv], lw=1.8, label=fmt(gv))
        several = len(t) > len(groups) * t["digits"].nunique()  # other keys vary too: cells aggregate trials
        ax.set(xlabel="digits per operand", ylabel=f"{agg} {label}" if several else label,
               title=label[0].upper() + label[1:])
        digits = sorted(t["digits"].unique())
        ax.set_xticks(digits)
        ax.set_xlim(digits[0] - 0.5, digits[-1] + 0.5)
        ax.grid(alpha=0.3)
        if t[col].isna().all():
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no trial reached the target", transform=ax.transAxes, ha="center", va="center",
                    fontsize=12, color="gray")
        elif line_by:
            ax.legend(title=line_by, fontsize="small")
    axes[0].set_ylim(-0.02, 1.02)
    fig.suptitle(f"{study.name}: metric against digit length" + (f", one line per {line_by}" if line_by else ""))
    return fig


def heatmap_figure(study: Study, x: str, y: str, value: Optional[str] = None, agg: str = "median") -> Figure:
    """``agg`` of ``value`` for every (y, x) pair of two keys, annotated with the numbers."""
    t = study.trials.copy()
    resolve_keys(t, [x, y], "--heatmap")
    if x == y:
        from ..errors import UserError

        raise UserError(f"--heatmap {x},{y}: give two different keys")
    col = resolve_value(t, value or study.spec.metric)
    t[x], t[y] = levels(t[x]), levels(t[y])
    grid = t.pivot_table(index=y, columns=x, values=col, aggfunc=agg, observed=True, dropna=False)
    grid = grid.reindex(index=sorted(grid.index, key=_sort_key), columns=sorted(grid.columns, key=_sort_key))
    data = grid.to_numpy(dtype=float)
    fig = Figure(figsize=(max(5.0, 1.1 * data.shape[1] + 3), max(3.5, 0.7 * data.shape[0] + 2)), layout="constrained")
    ax = fig.subplots()
    cmap = "viridis_r" if lower_is_better(col) else "viridis"
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax, label=f"{agg} {col}")
    ax.set_xticks(range(data.shape[1]), [fmt(v) for v in grid.columns])
    ax.set_yticks(range(data.shape[0]), [fmt(v) for v in grid.index])
    ax.set(xlabel=x, ylabel=y, title=f"{study.name}: {agg} {col} by {y} and {x}")
    finite = data[np.isfinite(data)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            v = data[i, j]
            text = "-" if math.isnan(v) else fmt(float(v))
            dark = not math.isnan(v) and ((v < mid) != (cmap == "viridis_r"))
            ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=10)
    return fig


def heatmap_keys(study: Study, requested: Optional[list[str]] = None) -> Optional[tuple[str, str]]:
    """Two keys for the heatmap: the user's, else the first two swept keys (None if fewer are swept)."""
    if requested:
        if len(requested) != 2:
            from ..errors import UserError

            raise UserError(f"--heatmap {','.join(requested)}: give exactly two keys, e.g. --heatmap lr,digits")
        return requested[0], requested[1]
    keys = [k for k in study.swept if study.trials[k].nunique() > 1]
    if len(keys) < 2:
        return None
    # digits reads best along x; a second key such as lr or cell along y
    x = "digits" if "digits" in keys[:2] else keys[1]
    y = keys[0] if keys[0] != x else keys[1]
    return x, y


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_plots(study: Study, *, color_by: Optional[str] = None, heatmap: Optional[list[str]] = None,
                value: Optional[str] = None, agg: str = "median") -> list[str]:
    """Save every plot that applies to ``plots/`` in the study directory; returns paths relative to it."""
    figures: list[tuple[str, Figure]] = []
    if len(study.metrics):
        figures.append((LEARNING_CURVES, learning_curves_figure(study, color_key(study, color_by))))
    vs = vs_digits_figure(study, agg=agg)
    if vs is not None:
        figures.append((VS_DIGITS, vs))
    keys = heatmap_keys(study, heatmap)
    if keys is not None:
        figures.append((HEATMAP, heatmap_figure(study, keys[0], keys[1], value, agg)))
    storage = study.storage
    out = []
    for filename, fig in figures:
        path = storage.join(study.name, PLOTS_DIR, filename)
        data = png_bytes(fig)
        if storage.is_local:
            from ..studydir.records import write_atomic

            write_atomic(path, data)
        else:
            with storage.fs.open_output_stream(path) as f:
                f.write(data)
        out.append(f"{PLOTS_DIR}/{filename}")
    return out
