"""The study page: ``report.html``, one self-contained file next to the tables that opens from disk with no network
(plotly.js is embedded once; every figure is a plotly div).

What it shows, top to bottom:
1. a summary line -- trials by state and outcome, compute in core-seconds, the best configuration;
2. parallel coordinates of the swept keys against the ranking value, one line per trial (drag on an axis to
   filter);
3. learning curves (loss, exact accuracy), hover naming the trial and its configuration, coloured by a key chosen
   in the figure's menu; with replicates, each configuration's mean over its seeds with a 95% band;
4. the ranking value against each swept key: a log axis for log-sampled keys, box plots for categorical ones;
5. the pivot as a heatmap, with the replicate intervals written in its cells;
6. hyperparameter importance with its bootstrap interval (results/importance.py), or why it is not shown;
7. edge-of-range warnings, errored trials with the first line of their error, and the study record: every
   sweep / extend / resume with its command line, time, versions, code commit and the generation it ran.

``render`` builds the page from a Study (tables as pandas); ``write`` writes it atomically. The sweep driver
rewrites it while trials run (orchestrator/tune/callbacks.py: LivePage), from the results it holds in memory.
"""
from __future__ import annotations

import html
import json
import math
from typing import Optional

import numpy as np
import pandas as pd

from ..spec.space import Dist
from .report import Pivot, Study, fmt, make_pivot, rank_trials, summarize

PAGE = "report.html"
MAX_CURVES = 400  # per-trial lines drawn; a larger study shows its best trials' curves
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
FIGURES = ("summary", "parallel", "curves", "vs-keys", "pivot", "importance")


def is_log_key(study: Study, key: str) -> bool:
    """Log-sampled, or a positive numeric key spanning more than two decades (learning rates)."""
    d = study.spec.space.get(key)
    if isinstance(d, Dist) and d.kind == "loguniform":
        return True
    v = study.trials[key] if key in study.trials else pd.Series(dtype=float)
    if pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v) and len(v.dropna()) and \
            (v.dropna() > 0).all():
        return float(v.max()) / float(v.min()) > 100
    return False


def _categorical(s: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s) or s.nunique() <= 1


def _keys(study: Study) -> list[str]:
    return [k for k in study.swept if k != "seed" and k in study.trials]


def _config_text(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={fmt(row[k]) if not isinstance(row[k], str) else row[k]}" for k in keys + ["seed"]
                    if k in row.index)


def _colors(values: list) -> dict:
    ordered = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered)}


def _div(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


# -- figures ------------------------------------------------------------------------------------------------------
def parallel_figure(study: Study, value: str):
    import plotly.graph_objects as go

    t = study.trials.dropna(subset=[value]) if value != "iters_to_solve" else study.trials
    y = t[value].astype(float)
    if value == "iters_to_solve":
        y = y.fillna(t["iters"].astype(float))  # never solved: at its budget
    dims = []
    for k in _keys(study):
        s = t[k]
        if _categorical(s):
            cats = sorted(s.astype(str).unique())
            codes = s.astype(str).map({c: i for i, c in enumerate(cats)})
            dims.append(dict(label=k, values=codes, tickvals=list(range(len(cats))), ticktext=cats))
        elif is_log_key(study, k):
            lv = np.log10(s.astype(float))
            ticks = np.arange(math.floor(lv.min()), math.ceil(lv.max()) + 1)
            dims.append(dict(label=f"{k} (log)", values=lv, tickvals=list(ticks),
                             ticktext=[f"1e{int(x)}" for x in ticks]))
        else:
            dims.append(dict(label=k, values=s.astype(float)))
    dims.append(dict(label=value + (" (unsolved at budget)" if value == "iters_to_solve" else ""), values=y))
    reverse = value == "iters_to_solve" or "loss" in value
    fig = go.Figure(go.Parcoords(line=dict(color=y, colorscale="Viridis", reversescale=reverse, showscale=True,
                                           colorbar=dict(title=value)), dimensions=dims))
    fig.update_layout(title=f"Parallel coordinates: one line per trial ({len(t)}), coloured by {value}; drag on an "
                            "axis to filter", height=460, margin=dict(l=60, r=60, t=70, b=30))
    return fig


def curves_figure(study: Study, color_by: Optional[str] = None):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots import log_loss_axis, replicate_band

    t, m = study.trials, study.metrics
    keys = _keys(study)
    choices = [k for k in keys if t[k].nunique() <= 12 or _continuous(t[k])] or keys[:1]
    color_by = color_by if color_by in choices else (("cell" if "cell" in choices else choices[0]) if choices else None)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Training loss", "Exact accuracy on the evaluation set"))
    traces_keys = []  # the row of each trace, for recolouring by another key
    ranked, _, _ = rank_trials(study)
    shown = ranked["trial_id"].tolist()[:MAX_CURVES] if len(t) > MAX_CURVES else t["trial_id"].tolist()
    log_loss = log_loss_axis(m)
    if study.has_replicates:
        groups = t[t["trial_id"].isin(shown)].groupby("config_id")
        for cid, g in groups:
            row = g.iloc[0]
            label = _config_text(row, keys).rsplit(" seed=", 1)[0]
            sub = m[m["trial_id"].isin(g["trial_id"])]
            for col, metric in ((1, "loss"), (2, "exact_acc")):
                geometric = log_loss and metric == "loss"
                mean, lo, hi = replicate_band(sub, metric, log=geometric)
                x = list(mean.index)
                fig.add_trace(go.Scatter(x=x + x[::-1], y=list(hi.values) + list(lo.values[::-1]), fill="toself",
                                         line=dict(width=0), opacity=0.18, hoverinfo="skip", showlegend=False),
                              row=1, col=col)
                traces_keys.append(row)
                fig.add_trace(go.Scatter(x=x, y=list(mean.values), mode="lines", line=dict(width=2),
                                         name=label, showlegend=False,
                                         hovertemplate=f"{html.escape(label)}<br>{'geometric ' if geometric else ''}"
                                                       f"mean of {len(g)} seeds<br>"
                                                       f"iter %{{x}}: {metric} %{{y:.4g}}<extra></extra>"),
                              row=1, col=col)
                traces_keys.append(row)
    else:
        for trial_id in shown:
            row = t[t["trial_id"] == trial_id].iloc[0]
            sub = m[m["trial_id"] == trial_id].sort_values("iter")
            label = _config_text(row, keys)
            for col, metric in ((1, "loss"), (2, "exact_acc")):
                fig.add_trace(go.Scatter(x=sub["iter"], y=sub[metric], mode="lines", line=dict(width=1.5),
                                         opacity=0.85, name=trial_id, showlegend=False,
                                         hovertemplate=f"trial {trial_id}<br>{html.escape(label)}<br>"
                                                       f"iter %{{x}}: {metric} %{{y:.4g}}<extra></extra>"),
                              row=1, col=col)
                traces_keys.append(row)

    if color_by:
        _colour_traces(fig, study, traces_keys, color_by, choices)
    if log_loss:
        fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="iteration")
    fig.update_yaxes(range=[-0.02, 1.02], row=1, col=2)
    what = "one line per trial"
    if study.has_replicates:
        what = "mean ± 95% CI over seeds per configuration" + (" (loss: geometric)" if log_loss else "")
    more = f" (the {MAX_CURVES} best of {len(t)} trials)" if len(t) > MAX_CURVES else ""
    fig.update_layout(title=f"Learning curves: {what}{more}; hover names the trial", height=480,
                      margin=dict(t=110))
    return fig


def _continuous(s: pd.Series) -> bool:
    """A numeric key with too many values for a legend (a sampled lr): coloured on a scale instead."""
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s) and s.nunique() > 12


def _colour_traces(fig, study: Study, rows: list, color_by: str, choices: list[str]) -> None:
    """Colour the curves by ``color_by``, with a menu to colour them by another of ``choices``. A categorical key
    gets a legend of its values; a continuous one a colour scale (logarithmic for a log-sampled key) with a
    colour bar of rounded ticks -- a legend of its raw values would list hundreds of floats."""
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale

    n_lines = len(fig.data)
    bars = {}  # continuous key -> index of the invisible trace that carries its colour bar
    schemes = {}
    for k in choices:
        values = [r[k] for r in rows]
        if _continuous(study.trials[k]):
            log = is_log_key(study, k)
            pos = np.log10(np.asarray(values, dtype=float)) if log else np.asarray(values, dtype=float)
            lo, hi = float(np.nanmin(pos)), float(np.nanmax(pos))
            frac = (pos - lo) / (hi - lo) if hi > lo else np.full(len(pos), 0.5)
            colours = sample_colorscale("Viridis", [float(f) for f in np.nan_to_num(frac, nan=0.5)])
            bars[k] = len(fig.data)
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
                                     marker=dict(colorscale="Viridis", cmin=lo, cmax=hi, color=[lo], showscale=False,
                                                 colorbar=_colour_bar(k, lo, hi, log))))
            schemes[k] = (colours, None)
        else:
            cmap = _colors(values)
            legend = " ".join(f"<span style='color:{c}'>■</span> {html.escape(str(v))}" for v, c in cmap.items())
            schemes[k] = ([cmap[v] for v in values], dict(text=f"{k}: {legend}", x=1, y=1.16, xref="paper",
                                                          yref="paper", showarrow=False, xanchor="right"))
    titles = list(fig.layout.annotations)

    def update(k: str) -> tuple[dict, dict]:
        colours, legend = schemes[k]
        line = colours + ["#000000"] * (len(fig.data) - n_lines)
        scale = [False] * n_lines + [i == bars.get(k) for i in range(n_lines, len(fig.data))]
        return ({"line.color": line, "fillcolor": line, "marker.showscale": scale},
                {"annotations": titles + ([legend] if legend else [])})

    traces, layout = update(color_by)
    for trace, c, show in zip(fig.data, traces["line.color"], traces["marker.showscale"]):
        trace.line.color = c
        if trace.fill == "toself":
            trace.fillcolor = c
        if trace.marker is not None and show:
            trace.marker.showscale = True
    fig.update_layout(annotations=layout["annotations"],
                      updatemenus=[dict(buttons=[dict(label=f"colour by {k}", method="update", args=list(update(k)))
                                                 for k in choices], direction="down", x=0.0, y=1.18,
                                        xanchor="left")])


def _colour_bar(key: str, lo: float, hi: float, log: bool) -> dict:
    """A colour bar for ``key`` over [lo, hi] (log10 values when ``log``), its ticks rounded: 1, 2 and 5 per
    decade on a log scale; plotly's own round ticks on a linear one."""
    bar = dict(title=dict(text=key + (" (log)" if log else "")), len=0.8, y=0.45, thickness=14)
    if log:
        ticks = [math.log10(m * 10.0 ** e) for e in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9] or [lo, hi]
        bar.update(tickvals=ticks, ticktext=[f"{10 ** t:.2g}" for t in ticks])
    return bar


def vs_keys_figure(study: Study, value: str):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    t = study.trials
    keys = _keys(study)
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys)
    y = t[value].astype(float)
    if value == "iters_to_solve":
        y = y.fillna(t["iters"].astype(float))
    hover = [f"trial {tid}<br>{html.escape(_config_text(r, keys))}" for tid, (_, r) in zip(t["trial_id"], t.iterrows())]
    for i, k in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        if _categorical(t[k]):
            fig.add_trace(go.Box(x=t[k].astype(str), y=y, boxpoints="all", jitter=0.4, pointpos=0, name=k,
                                 showlegend=False, text=hover, hovertemplate="%{text}<br>%{y}<extra></extra>"),
                          row=r, col=c)
        else:
            fig.add_trace(go.Scatter(x=t[k], y=y, mode="markers", marker=dict(size=7, opacity=0.75),
                                     showlegend=False, text=hover, hovertemplate="%{text}<br>%{y}<extra></extra>"),
                          row=r, col=c)
            if is_log_key(study, k):
                fig.update_xaxes(type="log", row=r, col=c)
        fig.update_yaxes(title_text=value if c == 1 else None, row=r, col=c)
    note = " (never solved: plotted at its budget)" if value == "iters_to_solve" else ""
    fig.update_layout(title=f"{value} against each swept key{note}", height=330 * rows)
    return fig


def pivot_figure(study: Study, pivot: Optional[Pivot] = None):
    import plotly.graph_objects as go

    p = pivot if pivot is not None else make_pivot(study)
    table = p.table
    if table.empty:
        return None, p
    z = table.to_numpy(dtype=float)
    if p.estimates is not None:
        text = [[(e.text() if not isinstance(e, float) else "-") for e in row] for row in p.estimates.to_numpy()]
    else:
        text = [[fmt(v) for v in row] for row in z]
    x = [str(c) for c in table.columns]
    y = [" / ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]
    reverse = p.value == "iters_to_solve" or "loss" in p.value
    fig = go.Figure(go.Heatmap(z=z, x=x, y=y, text=text, texttemplate="%{text}", colorscale="Viridis",
                               reversescale=reverse, colorbar=dict(title=p.value),
                               hovertemplate="%{y} · %{x}<br>%{text}<extra></extra>"))
    xlab = p.by[-1] if len(p.by) >= 2 else ""
    ylab = ", ".join(p.by[:-1]) if len(p.by) >= 2 else (p.by[0] if p.by else "")
    fig.update_layout(title=p.title, xaxis_title=xlab, yaxis_title=ylab, height=max(260, 80 + 60 * len(y)))
    return fig, p


def importance_figure(study: Study, value: str):
    import plotly.graph_objects as go

    from .importance import importance

    keys = _keys(study)
    result, note = importance(study.trials, keys, value, log_keys=tuple(k for k in keys if is_log_key(study, k)))
    if note:
        return None, note
    fig = go.Figure(go.Bar(
        x=[r.eta2 for r in result], y=[r.key for r in result], orientation="h",
        error_x=dict(type="data", symmetric=False, array=[r.high - r.eta2 for r in result],
                     arrayminus=[r.eta2 - r.low for r in result]),
        hovertemplate="%{y}: %{x:.3f} of the variance<extra></extra>"))
    fig.update_layout(title=f"Hyperparameter importance for {value}: share of variance each key explains alone "
                            "(bars: 90% bootstrap interval over trials)", xaxis=dict(range=[0, 1],
                                                                                     title="η² (main effect)"),
                      yaxis=dict(autorange="reversed"), height=140 + 45 * len(result))
    return fig, None


# -- the page -----------------------------------------------------------------------------------------------------
def _errors(study: Study) -> list[tuple[str, str, str]]:
    from .tables import error_line

    def text(v) -> str:  # a missing value reads back from the tables as None or NaN
        return v if isinstance(v, str) else ""

    out = []
    for _, r in study.trials[study.trials["state"] == "errored"].iterrows():
        line, where = "(no error file)", ""
        error_file, trial_dir = text(r.get("error_file")).rsplit("/", 1)[-1], text(r.get("trial_dir"))
        if error_file and trial_dir and study.storage is not None:
            try:
                line = error_line(study.storage.read_text(study.storage.join(study.name, trial_dir, error_file))) \
                    or line
                where = study.storage.uri(study.name, trial_dir, error_file)
            except (OSError, FileNotFoundError):
                pass
        out.append((r["trial_id"], _config_text(r, _keys(study)), line + (f" — {where}" if where else "")))
    return out


def _record_rows(record: dict) -> list[list[str]]:
    gens = {g.get("index", 0): g for g in record.get("generations", [])}
    rows = []
    for run in record.get("runs", []):
        code = run.get("code") or {}
        commit = code.get("commit", "")[:10] + (" (dirty)" if code.get("dirty") else "") if code.get("commit") \
            else code.get("package", "")
        v = run.get("versions") or {}
        extra = ""
        if run.get("kind") == "extend":
            g = gens.get(run.get("generation"), {})
            extra = f"+{g.get('new', run.get('added', 0))} new, {len(g.get('continued', []))} continued"
        rows.append([run.get("kind", ""), str(run.get("generation", 0)), run.get("at", ""), run.get("command", ""),
                     commit, f"torch {v.get('torch', '?')}, ray {v.get('ray', '?')}, python {v.get('python', '?')}",
                     v.get("host", ""), extra])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.summary{background:#f5f7fa;border:1px solid #dde3ea;padding:10px 14px;border-radius:6px}
.warn{color:#8a4b00} .live{background:#fff4d6;border:1px solid #f0c36d;padding:6px 10px;border-radius:6px}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top} th{background:#f5f7fa} code{font-size:.9em}
"""


def render(study: Study, *, live_note: Optional[str] = None, color_by: Optional[str] = None,
           pivot: Optional[Pivot] = None, summary: Optional[dict] = None) -> str:
    """The whole page as HTML text. ``pivot`` and ``summary``: the ones `adder-sweep report` printed (its
    --by/--value/--agg), so they are not computed twice; default, the study's default pivot and summary."""
    from plotly.offline import get_plotlyjs

    s = summary if summary is not None else summarize(study)
    pivot_fig, p = pivot_figure(study, pivot)
    value = p.value if p.value in study.trials else s["metric"]  # the figures show what the pivot shows
    parts = []
    states = ", ".join(f"{v} {k}" for k, v in s["states"].items()) or "none"
    outcomes = ", ".join(f"{v} {k}" for k, v in s["outcomes"].items()) or "none yet"
    best = s["best"]
    best_line = ""
    if len(best):
        b = best.iloc[0]
        best_line = (f"best trial {b['trial_id']}: " + ", ".join(f"{k}={fmt(b[k])}" for k in study.swept if k in b)
                     + f" ({s['metric']} {fmt(b[s['metric']])})")
    if s.get("configs") is not None and len(s["configs"]):
        c = s["configs"].iloc[0]
        best_line = "best configuration: " + ", ".join(
            f"{k}={fmt(c[k])}" for k in s["configs"].columns if k not in (s["metric"], "N", "solved")) + \
            f" ({s['metric']} {c[s['metric']]}, N={c['N']})"
    line = (f"{s['trials']}/{s['planned']} trials ({states}); outcomes: {outcomes}; compute "
            f"{s['core_s']:.0f} core-seconds" + (f", {s['gpu_s']:.0f} GPU-seconds" if s["gpu_s"] else "")
            + f"; ranked by {s['metric']}" + (f" — {s['ranking_note']}" if s.get("ranking_note") else "")
            + (f"; {best_line}" if best_line else ""))
    parts.append(f'<div id="fig-summary" class="summary">{html.escape(line)}</div>')
    if live_note:
        parts.append(f'<p class="live">{html.escape(live_note)}</p>')
    if len(study.trials) and _keys(study):
        parts.append("<h2>Parallel coordinates</h2>" + _div(parallel_figure(study, value), "fig-parallel"))
    if len(study.metrics):
        parts.append("<h2>Learning curves</h2>" + _div(curves_figure(study, color_by), "fig-curves"))
    vs = vs_keys_figure(study, value)
    if vs is not None:
        parts.append("<h2>Against each swept key</h2>" + _div(vs, "fig-vs-keys"))
    if pivot_fig is not None:
        notes = "".join(f"<li>{html.escape(n.lstrip('* ').strip())}</li>" for n in p.notes)
        parts.append("<h2>Pivot</h2>" + _div(pivot_fig, "fig-pivot") + (f"<ul>{notes}</ul>" if notes else ""))
    imp, note = importance_figure(study, value)
    parts.append("<h2>Hyperparameter importance</h2>" + (_div(imp, "fig-importance") if imp is not None else
                                                        f'<p id="fig-importance">{html.escape(note)}</p>'))
    warnings = [*(f"on the edge: {e}" for e in s["best_edges"])]
    errs = _errors(study)
    parts.append("<h2>Warnings and errors</h2>" + (
        "<ul>" + "".join(f'<li class="warn">{html.escape(w)}</li>' for w in warnings) + "</ul>"
        if warnings else "<p>No best value on the edge of its range.</p>"))
    if errs:
        parts.append(f"<p>{len(errs)} trial(s) ended in error:</p>"
                     + _table(["trial", "configuration", "error"], [list(e) for e in errs]))
    rec = study.record
    parts.append("<h2>Study record</h2>" + _table(
        ["run", "generation", "at", "command", "code", "versions", "host", "trials"], _record_rows(rec)))
    parts.append(f"<p>Space: <code>{html.escape(json.dumps(rec.get('spec', {}).get('space', {})))}</code></p>")
    title = f"Study {study.name}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><p><code>{html.escape(study.path)}</code></p>"
            + "\n".join(parts) + "</body></html>\n")


def write(study: Study, *, live_note: Optional[str] = None, color_by: Optional[str] = None,
          pivot: Optional[Pivot] = None, summary: Optional[dict] = None) -> str:
    """Write report.html into the study directory (atomically on local disks); returns its location."""
    text = render(study, live_note=live_note, color_by=color_by, pivot=pivot, summary=summary)
    study.storage.write_bytes(study.storage.join(study.name, PAGE), text.encode())
    return study.storage.uri(study.name, PAGE)
