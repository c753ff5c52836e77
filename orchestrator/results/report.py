"""Analysis of a study's result tables: summary, a pivot of any metric by any keys, edge-of-range flags,
comparison of two studies, and rendering as a terminal table, Markdown, CSV or JSON.

Reads only the Parquet tables (``orchestrator.results.tables``) and the study record; never imports Ray.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import pandas as pd

from trainables.config import did_you_mean

from ..errors import UserError
from ..spec.plan import num_trials
from ..spec.space import Dist, StudySpec
from ..studydir.storage import DEFAULT_STORAGE, Storage

from . import AGGS, FORMATS  # noqa: F401  (the flags' choices; re-exported)
# metric names a user types, and the per-trial column they mean
VALUE_ALIASES = {"exact_acc": "best_exact_acc", "digit_acc": "best_digit_acc", "loss": "best_loss"}
LOWER_IS_BETTER = ("iters_to_solve", "iters_run", "wall_s", "train_s", "num_failures")
MAX_LEVELS = 8  # a numeric key with more distinct values than this is grouped into quantile bins


@dataclass
class Study:
    name: str
    storage: Storage
    record: dict
    spec: StudySpec
    trials: pd.DataFrame
    metrics: pd.DataFrame

    @property
    def swept(self) -> list[str]:
        return self.spec.swept_keys()

    @property
    def path(self) -> str:
        return self.storage.uri(self.name)

    def config(self, trial_id: str) -> dict:
        """The training config of one trial (every key of trainables.config), as plain Python values."""
        from trainables.config import field_specs

        rows = self.trials[self.trials["trial_id"] == trial_id]
        if rows.empty:
            raise KeyError(f"no trial {trial_id!r} in study {self.name}")
        row = rows.iloc[0]
        return {k: _plain(row[k]) if not hasattr(row[k], "tolist") else row[k].tolist() for k in field_specs()}

    def best(self, by: Optional[str] = None) -> pd.Series:
        """The best trial's row: by the study's ranking rule (its metric, or iters_to_solve when every trial
        reaches the same value), or by the column ``by`` (exact_acc, digit_acc, loss mean their best values)."""
        if by is None:
            ranked, _, _ = rank_trials(self)
        else:
            col = resolve_value(self.trials, by)
            ranked = self.trials.dropna(subset=[col]).sort_values(col, ascending=lower_is_better(col))
        if ranked.empty:
            raise ValueError(f"study {self.name} has no finished trial to rank")
        return ranked.iloc[0]

    def curves(self, metric: str = "exact_acc") -> pd.DataFrame:
        """Every trial's curve of ``metric`` as a long table: trial_id, iter, value (one row per report)."""
        if metric not in self.metrics.columns or metric in ("study", "trial_id", "iter"):
            numeric = [c for c in self.metrics.columns if c not in ("study", "trial_id", "iter", "status")]
            raise KeyError(f"{metric!r} is not a column of metrics.parquet; choose from {', '.join(numeric)}")
        out = self.metrics[["trial_id", "iter", metric]].rename(columns={metric: "value"})
        return out.sort_values(["trial_id", "iter"]).reset_index(drop=True)

    @property
    def has_replicates(self) -> bool:
        """Some configuration ran with more than one seed."""
        t = self.trials
        return "config_id" in t and t["config_id"].notna().any() and int(t.groupby("config_id").size().max()) > 1


def load_study(name_or_path: str, storage_root: str = DEFAULT_STORAGE, *, refresh: bool = False) -> Study:
    """A study for analysis: its record, spec and tables as pandas DataFrames.

    Reads ``trials.parquet`` and ``metrics.parquet``; when they are missing or older than the files Ray wrote, it
    builds them in memory and writes nothing, so it works on a read-only copy or an object store. ``refresh``
    (the ``report`` command) rebuilds and writes them. UserError if the study does not exist or has no trials."""
    from ..studydir.storage import read_record, study_location
    from .tables import read_tables, refresh_tables

    storage, name = study_location(name_or_path, storage_root)
    record = read_record(storage, name)
    trials, metrics = refresh_tables(storage, name) if refresh else read_tables(storage, name)
    return Study(name, storage, record, StudySpec.from_json(record["spec"]), trials.to_pandas(), metrics.to_pandas())


# -- small helpers ------------------------------------------------------------------------------------------
def lower_is_better(column: str) -> bool:
    return "loss" in column or column in LOWER_IS_BETTER or column.endswith("_iter")


def ranks_lower(spec: StudySpec, column: str) -> bool:
    """Whether lower values of a ranking column are better: the study's mode for its metric, else the column's
    nature (losses, iterations, times)."""
    if column in (spec.metric, VALUE_ALIASES.get(spec.metric, spec.metric)):
        return spec.mode == "min"
    return lower_is_better(column)


def resolve_value(trials: pd.DataFrame, value: str) -> str:
    """The trials column a --value names (``exact_acc`` means ``best_exact_acc``)."""
    col = VALUE_ALIASES.get(value, value)
    numeric = [c for c in trials.columns if pd.api.types.is_numeric_dtype(trials[c])]
    if col not in numeric:
        raise UserError(f"--value {value}: not a numeric column of trials.parquet{did_you_mean(value, numeric)}; "
                        f"choose from {', '.join(numeric)} (or exact_acc, digit_acc, loss for their best values)")
    return col


def resolve_keys(trials: pd.DataFrame, keys: list[str], flag: str) -> list[str]:
    for k in keys:
        if k not in trials.columns:
            raise UserError(f"{flag} {k}: no such column in trials.parquet{did_you_mean(k, trials.columns)}")
    if len(set(keys)) != len(keys):
        raise UserError(f"{flag} {','.join(keys)}: a key is repeated")
    return keys


def split_keys(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    return [k.strip() for k in text.split(",") if k.strip()]


def default_value(study: Study) -> tuple[str, Optional[str]]:
    """The value that ranks trials and fills the pivot by default, and why when it is not the study's metric.
    When every trial reaches the same best value of the metric, the metric tells them apart no more: if they all
    solved, the iterations it took them do; if none did (exact_acc 0 everywhere, the usual first exploration), the
    lowest loss each reached does."""
    metric = VALUE_ALIASES.get(study.spec.metric, study.spec.metric)
    t = study.trials
    values = t[metric].dropna() if metric in t else pd.Series(dtype=float)
    if len(t) > 1 and t["iters_to_solve"].notna().all():
        if values.nunique() == 1:
            return "iters_to_solve", (f"every trial reached {metric} = {fmt(_plain(values.iloc[0]))}: ranked by "
                                      "iters_to_solve (fewer is better)")
        return "iters_to_solve", ("every trial solved (reached its target exact_acc): ranked by iters_to_solve "
                                  "(fewer is better)")
    if len(values) > 1 and len(values) == len(t) and values.nunique() == 1 and metric != "best_loss" \
            and "best_loss" in t and t["best_loss"].notna().any():
        return "best_loss", (f"every trial reached {metric} = {fmt(_plain(values.iloc[0]))}: ranked by best_loss, "
                             "the lowest training loss each reached (lower is better)")
    return metric, None


def default_keys(study: Study) -> list[str]:
    """The swept keys with a few discrete values (grid/choice) first; sampled ones only if nothing else varies."""
    discrete = [k for k in study.swept if study.spec.space[k].kind in ("grid", "choice")]
    keys = discrete or study.swept
    return [k for k in keys if k in study.trials.columns and study.trials[k].nunique(dropna=True) > 1] or keys


def levels(series: pd.Series, bins: int = 5) -> pd.Series:
    """Group labels for a key: its values, or -- for a numeric key with many distinct values -- ``bins`` quantile
    bins, each labelled ``lo..hi`` by the smallest and largest value it holds, so no label reaches outside the
    values the trials had (pd.qcut's edges do: it widens the first bin below the minimum, which printed a negative
    learning rate for a loguniform lr). Quantiles of a value are quantiles of its logarithm, so a loguniform key
    gets equal-count bins on its log scale too."""
    if not pd.api.types.is_numeric_dtype(series) or series.nunique(dropna=True) <= MAX_LEVELS:
        return series
    values = series.astype(float)
    codes = pd.qcut(values.rank(method="min"), q=bins, labels=False, duplicates="drop")  # ties share a bin
    low, high = float(values.min()), float(values.max())
    labels = {code: f"{_inside(member.min(), low, high)}..{_inside(member.max(), low, high)}"
              for code, member in values.groupby(codes)}
    ordered = [labels[c] for c in sorted(labels)]
    return pd.Series(pd.Categorical(codes.map(labels), categories=ordered, ordered=True), index=series.index)


def _inside(v: float, low: float, high: float) -> str:
    """``v`` in 3 significant digits, or in as many more as keep the printed number inside [low, high]."""
    for digits in (3, 4, 6, 9, 17):
        text = f"{v:.{digits}g}"
        if low <= float(text) <= high:
            return text
    return repr(float(v))


def fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 10 else f"{v:.4g}"
    return str(v)


def _plain(v: Any) -> Any:
    """A JSON-ready scalar."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


# -- edges of the search space ------------------------------------------------------------------------------
def edge_note(spec: StudySpec, key: str, value: Any) -> Optional[str]:
    """A sentence if ``value`` sits on the edge of ``key``'s swept range (the tuning playbook's warning that
    the optimum may lie outside it), else None. Categorical keys have no edges."""
    dist = spec.space.get(key)
    if not isinstance(dist, Dist) or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if dist.kind in ("grid", "choice"):
        vals = sorted(v for v in dist.args if isinstance(v, (int, float)) and not isinstance(v, bool))
        if len(vals) < 2:
            return None
        if value == vals[0]:
            return f"{key}={fmt(value)} is the lowest value of its range {vals}; try lower values"
        if value == vals[-1]:
            return f"{key}={fmt(value)} is the highest value of its range {vals}; try higher values"
        return None
    lo, hi = dist.args[0], dist.args[1]
    if dist.kind == "randint":
        hi = hi - 1  # hi is exclusive (qrandint's is inclusive, as Tune's and orchestrator/spec/plan.py draw it)
    if dist.kind == "loguniform":
        pos = (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    else:
        pos = (value - lo) / (hi - lo) if hi > lo else 0.5
    if pos <= 0.1:
        return f"{key}={fmt(value)} lies near the lower edge of {dist.describe()}; try lower values"
    if pos >= 0.9:
        return f"{key}={fmt(value)} lies near the upper edge of {dist.describe()}; try higher values"
    return None


# -- summary -------------------------------------------------------------------------------------------------
def rank_trials(study: Study) -> tuple[pd.DataFrame, str, Optional[str]]:
    """The trials best first, by the one rule of ``default_value``: the study's metric, then the iteration that
    first reached it; or, when every trial reaches the same best value, iters_to_solve. Returns (ranked trials,
    the ranking column, why when it is not the metric)."""
    t, spec = study.trials, study.spec
    value, why = default_value(study)
    if value == "iters_to_solve":
        return t.sort_values(["iters_to_solve", "trial_id"], na_position="last"), value, why
    lower = ranks_lower(spec, value)
    ranked = t.dropna(subset=[value]).sort_values([value, f"{value}_iter"], ascending=[lower, True])
    return ranked, value, why


def config_keys(study: Study) -> list[str]:
    """The swept keys that tell configurations apart (all but seed)."""
    return [k for k in study.swept if k != "seed"]


def rank_configurations(study: Study, value: Optional[str] = None) -> pd.DataFrame:
    """One row per configuration over its seeds -- mean, 95% interval, N, solved fraction -- best first."""
    from .stats import group_estimates, rank

    t = study.trials
    value = value or default_value(study)[0]
    keys = ["config_id"] + [k for k in config_keys(study) if k in t]
    groups = group_estimates(t, keys, value)
    groups["solved_fraction"] = [float((g["outcome"] == "solved").mean()) for _, g in
                                 t.groupby(keys, dropna=False, sort=True)]
    lower = ranks_lower(study.spec, value)
    tiebreak = None
    if value != "iters_to_solve" and "iters_to_solve" in t:  # equal on the metric: sooner solved is better
        tiebreak = group_estimates(t, keys, "iters_to_solve")["mean"]
    return rank(groups, value, lower, tiebreak)


def best_configuration_line(study: Study) -> Optional[str]:
    """With replicates, the best configuration over its seeds (``rank_configurations``' first row) in one line, as
    the end of a sweep, extend or resume prints it beside the best single trial; None without replicates."""
    if not study.has_replicates or not len(study.trials):
        return None
    value = default_value(study)[0]
    first = rank_configurations(study, value).iloc[0]
    config = " ".join(f"{k}={_plain(first[k])}" for k in config_keys(study) if k in first)
    est = first["estimate"]
    solved = "" if "solved" in est.text() else f", {first['solved_fraction']:.0%} solved"
    return (f"Best configuration over seeds (mean ± 95% CI, N = {int(first['n'])}): {config or 'the only one'}, "
            f"{value} {est.text()}{solved}")


def summarize(study: Study, top: int = 5) -> dict:
    """Trials by state and outcome, core-seconds, the best trials -- and with replicates the best configurations
    over their seeds -- by the ranking rule of ``rank_trials``."""
    t, spec = study.trials, study.spec
    wall = float(t["wall_s"].fillna(0).sum())
    ranked, metric, why = rank_trials(study)
    best_cols = ["trial_id", *study.swept, metric]
    best_cols += [f"{metric}_iter"] if f"{metric}_iter" in t else []
    best_cols += [c for c in ("iters_to_solve", "outcome") if c not in best_cols]
    best = ranked[best_cols].head(top).copy()
    best["outcome"] = best["outcome"].fillna(ranked["state"])  # an unfinished trial shows its state
    edges = []
    if len(ranked):
        first = ranked.iloc[0]
        tied = ranked[ranked[metric] == first[metric]]
        for k in study.swept:
            if k == "seed" or tied[k].astype(str).nunique() > 1:
                continue  # the best value is reached across this key's range: no edge to warn about
            note = edge_note(spec, k, _plain(first[k]))
            if note:
                edges.append(note)
    configs = None
    if study.has_replicates:
        c = rank_configurations(study, metric)
        configs = pd.DataFrame({**{k: c[k] for k in config_keys(study) if k in c},
                                metric: [e.text() for e in c["estimate"]], "N": c["n"],
                                "solved": [f"{x:.0%}" for x in c["solved_fraction"]]}).head(top)
    return {
        "study": study.name, "path": study.path, "trials": len(t), "planned": num_trials(spec),
        "states": {k: int(v) for k, v in t["state"].value_counts().items()},
        "outcomes": {k: int(v) for k, v in t["outcome"].value_counts().items()},
        "wall_s": wall, "core_s": wall * spec.resources["cpu"], "gpu_s": wall * spec.resources["gpu"],
        "metric": metric, "mode": "min" if ranks_lower(spec, metric) else "max", "ranking_note": why,
        "swept": study.swept, "best": best, "best_edges": edges, "configs": configs,
        "generations": int(t["generation"].max()) + 1 if "generation" in t and len(t) else 1,
    }


# -- pivot ---------------------------------------------------------------------------------------------------
@dataclass
class Pivot:
    by: list[str]
    value: str
    agg: str
    table: pd.DataFrame  # index: rows key(s); columns: values of the last key (or the value name)
    best: Optional[tuple] = None  # (row label, column label) of the best cell
    notes: list[str] = field(default_factory=list)
    estimates: Optional[pd.DataFrame] = None  # same shape as table: stats.Estimate per cell (agg "mean ± 95% CI")

    @property
    def title(self) -> str:
        agg = "mean ± 95% CI of" if self.estimates is not None else self.agg
        if not self.by:
            return f"{agg} {self.value} over all trials"
        if len(self.by) == 1:
            return f"{agg} {self.value} by {self.by[0]}"
        return f"{agg} {self.value} by {', '.join(self.by[:-1])} (rows) x {self.by[-1]} (columns)"


def make_pivot(study: Study, by: Optional[list[str]] = None, value: Optional[str] = None,
               agg: Optional[str] = None) -> Pivot:
    """A metric of the trials by one or two keys. ``agg`` None: the mean with its 95% interval over replicates
    when the study has them (stats.py; never-solved trials censored), else the median. ``value`` None: the
    study's metric, or iters_to_solve when every trial reaches the same best value (default_value)."""
    t = study.trials
    by = resolve_keys(t, default_keys(study) if by is None else by, "--by")
    why = None
    if value is None:
        value, why = default_value(study)
    value = resolve_value(t, value)
    if agg is not None and agg not in AGGS:
        raise UserError(f"--agg {agg}: choose one of {', '.join(AGGS)}")
    data = t.copy()
    for k in by:
        data[k] = levels(data[k])
    if agg is None and study.has_replicates:
        p = _estimate_pivot(data, by, value)
    else:
        p = _plain_pivot(data, by, value, agg or "median")
    if why:
        p.notes.append(f"* {why}")
    _mark_best(study, p)
    return p


def _plain_pivot(data: pd.DataFrame, by: list[str], value: str, agg: str) -> Pivot:
    if not by:
        table = pd.DataFrame({value: [data[value].agg(agg)]}, index=pd.Index(["all"], name="trials"))
    elif len(by) == 1:
        table = data.groupby(by[0], observed=True, dropna=False)[value].agg(agg).to_frame(value)
    else:
        table = data.pivot_table(index=by[:-1], columns=by[-1], values=value, aggfunc=agg, dropna=False,
                                 observed=True)
        if agg == "count":
            table = table.fillna(0)
    return Pivot(by, value, agg, table)


def _estimate_pivot(data: pd.DataFrame, by: list[str], value: str) -> Pivot:
    from .stats import group_estimates

    g = group_estimates(data, by, value)
    if not by:
        table = pd.DataFrame({value: g["mean"].tolist()}, index=pd.Index(["all"], name="trials"))
        est = pd.DataFrame({value: g["estimate"].tolist()}, index=table.index)
    elif len(by) == 1:
        table = g.set_index(by[0])[["mean"]].rename(columns={"mean": value})
        est = g.set_index(by[0])[["estimate"]].rename(columns={"estimate": value})
    else:
        table = g.pivot_table(index=by[:-1], columns=by[-1], values="mean", dropna=False, observed=True)
        est = g.set_index(by)["estimate"].unstack(by[-1]).reindex(index=table.index, columns=table.columns)
    p = Pivot(by, value, "mean", table, estimates=est)
    if value == "iters_to_solve":
        p.notes.append("* a trial that never solved counts at its budget: '≥' marks a mean that is a lower bound, "
                       "'>' a configuration none of whose seeds solved")
    return p


def _mark_best(study: Study, p: Pivot) -> None:
    if p.agg in ("count", "std"):
        return  # "best" means nothing for these
    title = "mean" if p.estimates is not None else p.agg
    stacked = p.table.stack().dropna()
    if stacked.empty:
        return
    if p.estimates is not None and p.value == "iters_to_solve":  # solved fraction first, then the mean
        est = p.estimates.stack().reindex(stacked.index)
        frac = est.map(lambda e: e.solved / e.n if e.n else 0)
        stacked = stacked[frac == frac.max()]
    label = stacked.idxmin() if lower_is_better(p.value) else stacked.idxmax()
    row, col = label[:-1], label[-1]
    p.best = (row[0] if len(row) == 1 else row, col)
    if len(p.by) >= 2:
        values = dict(zip(p.by[:-1], row if isinstance(row, tuple) else (row,)))
        values[p.by[-1]] = col
    elif len(p.by) == 1:
        values = {p.by[0]: row[0] if isinstance(row, tuple) and len(row) == 1 else row}
    else:
        values = {}
    where = ", ".join(f"{k}={fmt(v)}" for k, v in values.items()) or "all trials"
    ties = int((stacked == stacked.loc[label]).sum())
    if ties > 1:  # a tie has no single best cell, so no edge to warn about
        p.notes.append(f"* best {title} {p.value} = {fmt(stacked.loc[label])}, tied by {ties} cells (first: {where})")
        return
    p.notes.append(f"* best {title} {p.value} = {fmt(stacked.loc[label])} at {where}")
    for k, v in values.items():
        note = edge_note(study.spec, k, _plain(v))
        if note:
            p.notes.append(f"  on the edge: {note}")


# -- comparison of two studies --------------------------------------------------------------------------------
def compare(a: Study, b: Study, by: Optional[list[str]] = None, value: Optional[str] = None,
            agg: Optional[str] = None) -> dict:
    """Both studies over their common swept keys, side by side, and what differs between them. When the two ran
    the same configurations with the same seeds (replicates), the difference is per configuration and paired by
    seed: B - A over the seeds both have, with its 95% interval (stats.paired_differences); else each study is
    aggregated (``agg``, median by default) and the aggregates are subtracted."""
    from .stats import paired_differences

    if by is None:
        by = [k for k in default_keys(a) if k in default_keys(b) and k != "seed"] or \
             [k for k in a.swept if k in b.swept and k != "seed"]
    resolve_keys(a.trials, by, "--by")
    resolve_keys(b.trials, by, "--by")
    col = resolve_value(a.trials, value or default_value(a)[0])
    resolve_value(b.trials, col)
    names = (a.name, b.name) if a.name != b.name else (f"{a.name} (A)", f"{b.name} (B)")
    paired = None
    if agg is None and (a.has_replicates or b.has_replicates):
        pairs = paired_differences(a.trials, b.trials, by, col)
        if len(pairs) and int(pairs["pairs"].max()) > 1:
            paired = pairs
    if paired is not None:
        index = pd.MultiIndex.from_frame(paired[by]) if len(by) > 1 else (
            pd.Index(paired[by[0]], name=by[0]) if by else pd.Index(["all"], name="trials"))
        table = pd.DataFrame({names[0]: paired["a"].values, names[1]: paired["b"].values,
                              "B - A": [d.mean for d in paired["diff"]],
                              "B - A (95% CI)": [_signed(d) for d in paired["diff"]],
                              "pairs": paired["pairs"].values}, index=index)
        agg_used = "mean, paired by seed"
    else:
        agg_used = agg or "median"

        def agg_of(s: Study) -> pd.Series:
            if not by:
                return pd.Series([s.trials[col].agg(agg_used)], index=pd.Index(["all"], name="trials"))
            return s.trials.groupby(by, dropna=False)[col].agg(agg_used)

        table = pd.concat({names[0]: agg_of(a), names[1]: agg_of(b)}, axis=1)
        table["B - A"] = table.iloc[:, 1] - table.iloc[:, 0]
    differs = []
    from trainables.config import field_specs

    for k in field_specs():
        sa, sb = k in a.swept, k in b.swept
        if k in by or k == "seed":
            continue
        if sa or sb:
            if sa != sb:
                differs.append(f"{k}: swept only in {a.name if sa else b.name}")
            continue
        ja, jb = _distinct(a.trials[k]), _distinct(b.trials[k])
        if ja != jb:
            differs.append(f"{k}: {', '.join(ja) or '-'} in {a.name} vs {', '.join(jb) or '-'} in {b.name}")
    return {"by": by, "value": col, "agg": agg_used, "table": table, "differs": differs, "paired": paired is not None,
            "summaries": [summarize(a), summarize(b)]}


def _signed(e) -> str:
    if e.n == 0:
        return "-"
    from .stats import plus_minus

    if e.half != e.half:
        return fmt(e.mean) if e.mean < 0 else "+" + fmt(e.mean)
    text = plus_minus(e.mean, e.half)
    return f"{text if e.mean < 0 else '+' + text} (n={e.n})"


def _distinct(series: pd.Series) -> list[str]:
    """The distinct non-null values of a column as JSON text (list columns such as eval_lengths included)."""
    out = set()
    for v in series:
        v = v.tolist() if hasattr(v, "tolist") else v
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.add(json.dumps(v))
    return sorted(out)


# -- rendering -----------------------------------------------------------------------------------------------
def _flat(table: pd.DataFrame, best: Optional[tuple] = None,
          estimates: Optional[pd.DataFrame] = None) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of a pivot, with the index as leading columns and '*' after the best cell; with
    ``estimates``, each cell reads ``mean ± half-width`` (and the solved fraction for censored values)."""
    index_names = [n if n is not None else "" for n in table.index.names]
    col_name = table.columns.name
    header = index_names + [(f"{col_name}={fmt(c)}" if col_name else str(c)) for c in table.columns]
    rows = []
    for idx, r in table.iterrows():
        idx_t = idx if isinstance(idx, tuple) else (idx,)
        cells = []
        for c, v in r.items():
            mark = "*" if best is not None and _same(best, idx, c) else ""
            e = estimates.loc[idx, c] if estimates is not None else None
            text = e.text() if e is not None and not (isinstance(e, float) and math.isnan(e)) else fmt(_plain(v))
            cells.append(text + mark)
        rows.append([fmt(_plain(i)) for i in idx_t] + cells)
    return header, rows


def _same(best: tuple, idx: Any, col: Any) -> bool:
    return best[0] == idx and best[1] == col


def text_table(header: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    def line(cells):
        return "  ".join(c.ljust(w) if i < n_left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def md_table(header: list[str], rows: list[list[str]], n_left: int = 1) -> str:
    esc = [[c.replace("|", "\\|").replace("*", "\\*") for c in r] for r in [header, *rows]]
    align = ["---" if i < n_left else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(r) + " |" for r in [esc[0], align, *esc[1:]])


def summary_lines(s: dict) -> list[str]:
    states = ", ".join(f"{v} {k}" for k, v in s["states"].items()) or "none"
    outcomes = ", ".join(f"{v} {k}" for k, v in s["outcomes"].items()) or "none yet"
    lines = [f"Study {s['study']} ({s['path']})",
             f"trials: {s['trials']}/{s['planned']} ({states}); outcomes: {outcomes}",
             f"compute: {s['core_s']:.1f} core-seconds" + (f", {s['gpu_s']:.1f} GPU-seconds" if s["gpu_s"] else "")
             + f" ({s['wall_s']:.1f} trial-seconds)",
             f"swept: {', '.join(s['swept']) or 'nothing'}; ranked by {s['metric']} ({s['mode']})"
             + (f" -- {s['ranking_note']}" if s.get("ranking_note") else "")]
    if s.get("generations", 1) > 1:
        lines.append(f"generations: {s['generations']} (the study grew with `adder-sweep extend`)")
    return lines


def _config_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    c = s.get("configs")
    if c is None or c.empty:
        return [], []
    return list(c.columns), [[fmt(_plain(v)) if not isinstance(v, str) else v for v in r]
                             for r in c.itertuples(index=False)]


def _best_rows(s: dict) -> tuple[list[str], list[list[str]]]:
    best = s["best"]
    header = list(best.columns)
    rows = [[fmt(_plain(v)) for v in r] for r in best.itertuples(index=False)]
    return header, rows


def render_report(s: dict, p: Pivot, fmt_: str, plots: Optional[list[str]] = None) -> str:
    """The report in one of FORMATS. ``plots``: paths relative to the study directory (Markdown only)."""
    n_left = max(1, len(p.table.index.names))
    if fmt_ == "csv":
        return p.table.to_csv()
    if fmt_ == "json":
        return json.dumps(report_json(s, p), indent=2, default=str) + "\n"
    header, rows = _flat(p.table, p.best, p.estimates)
    bh, br = _best_rows(s)
    ch, cr = _config_rows(s)
    if fmt_ == "md":
        out = [f"# Study {s['study']}", "", *(f"- {l}" for l in summary_lines(s)[1:]), ""]
        if cr:
            out += [f"## Best configurations over seeds, by {s['metric']} (mean ± 95% CI)", "",
                    md_table(ch, cr, len(ch) - 3), ""]
        out += [f"## Best trials by {s['metric']}", "", md_table(bh, br), ""]
        out += [f"- on the edge: {e}" for e in s["best_edges"]] + ([""] if s["best_edges"] else [])
        out += [f"## {p.title[0].upper()}{p.title[1:]}", "", md_table(header, rows, n_left), ""]
        out += [n.replace("*", "\\*", 1) if n.startswith("*") else f"  - {n.strip()}" for n in p.notes]
        if plots:
            out += ["", "## Plots", ""]
            out += [f"![{path.rsplit('/', 1)[-1][:-4].replace('_', ' ')}]({path})\n" for path in plots]
        return "\n".join(out).rstrip() + "\n"
    out = [*summary_lines(s), ""]
    if cr:
        out += [f"Best configurations over seeds, by {s['metric']} (mean ± 95% CI, t):",
                text_table(ch, cr, len(ch) - 3), ""]
    out += [f"Best trials by {s['metric']}:", text_table(bh, br)]
    out += [f"  on the edge: {e}" for e in s["best_edges"]]
    out += ["", f"Pivot: {p.title}", text_table(header, rows, n_left), *p.notes]
    return "\n".join(out) + "\n"


def report_json(s: dict, p: Pivot) -> dict:
    table = p.table.copy()
    rows = []
    for idx, r in table.iterrows():
        idx_t = idx if isinstance(idx, tuple) else (idx,)
        keys = dict(zip([n or "index" for n in table.index.names], map(_plain, idx_t)))
        row = {**keys, "values": {str(_plain(c)): _plain(v) for c, v in r.items()}}
        if p.estimates is not None:
            row["intervals"] = {str(_plain(c)): _estimate_json(p.estimates.loc[idx, c]) for c in r.index}
        rows.append(row)
    summary = {k: v for k, v in s.items() if k not in ("best", "configs")}
    summary["best"] = [{k: _plain(v) for k, v in r.items()} for r in s["best"].to_dict("records")]
    if s.get("configs") is not None:
        summary["configs"] = [{k: _plain(v) for k, v in r.items()} for r in s["configs"].to_dict("records")]
    return {"summary": summary,
            "pivot": {"by": p.by, "value": p.value, "agg": p.agg, "rows": rows,
                      "best": None if p.best is None else [
                          _plain(x) if not isinstance(x, tuple) else list(map(_plain, x)) for x in p.best],
                      "notes": p.notes}}


def _estimate_json(e) -> Optional[dict]:
    if e is None or isinstance(e, float):
        return None
    return {"mean": _plain(e.mean), "ci95_half_width": _plain(e.half), "std": _plain(e.std), "n": e.n,
            "solved": e.solved, "text": e.text()}


def render_compare(c: dict, fmt_: str) -> str:
    table = c["table"]
    if fmt_ == "csv":
        return table.to_csv()
    if fmt_ == "json":
        rows = []
        for idx, r in table.iterrows():
            idx_t = idx if isinstance(idx, tuple) else (idx,)
            rows.append({**dict(zip(c["by"] or ["trials"], map(_plain, idx_t))),
                         **{str(k): _plain(v) for k, v in r.items()}})
        return json.dumps({"by": c["by"], "value": c["value"], "agg": c["agg"], "rows": rows,
                           "differs": c["differs"]}, indent=2, default=str) + "\n"
    header, rows = _flat(table)
    n_left = max(1, len(table.index.names))
    title = f"{c['agg']} {c['value']} by {', '.join(c['by']) or 'nothing in common'}"
    if fmt_ == "md":
        out = [f"# Compare {' vs '.join(s['study'] for s in c['summaries'])}", ""]
        for s in c["summaries"]:
            out += [f"- {summary_lines(s)[0]}: {summary_lines(s)[1]}"]
        out += ["", f"## {title}", "", md_table(header, rows, n_left), ""]
        out += ["## Other differences", "", *(f"- {d}" for d in c["differs"] or ["none"])]
        return "\n".join(out) + "\n"
    out = []
    for s in c["summaries"]:
        out += [f"{summary_lines(s)[0]}: {summary_lines(s)[1]}"]
    out += ["", title, text_table(header, rows, n_left), "",
            "Other differences: " + ("none" if not c["differs"] else "")]
    out += [f"  {d}" for d in c["differs"]]
    return "\n".join(out) + "\n"
