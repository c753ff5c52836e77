"""Statistics over replicates (the same configuration, another seed), with numpy and pandas only.

* **Intervals** are Student-t 95% intervals of the mean, ``mean ± t(0.975, n-1) · s / √n``. The t quantiles are
  tabulated below (scipy is not a dependency). With 3 seeds the interval is wide (t = 4.30), which is the honest
  answer for 3 seeds. A bootstrap would be too narrow there: 3 values have only 10 distinct resamples.
* **Censoring.** A trial that never solved has no ``iters_to_solve``. It is counted, not dropped: its value is
  censored at the iterations it ran (its budget). A configuration's mean is then a lower bound, shown as
  ``≥ 1900 (2/3 solved)``, and configurations rank by solved fraction first.
* **Paired differences** (``compare``): per configuration, B - A over the seeds both studies ran, with the same
  t interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

# two-sided 95%: t(0.975, df) for df = 1..30; beyond 30 the values below are interpolated towards 1.96
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
_T975_LARGE = [(40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960)]
CENSORED = ("iters_to_solve",)  # values a trial only has if it solved


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        return math.nan
    if df <= 30:
        return _T975[df - 1]
    lo_df, lo_t = 30, _T975[-1]
    for hi_df, hi_t in _T975_LARGE:
        if df <= hi_df:
            if math.isinf(hi_df):
                return hi_t
            return lo_t + (hi_t - lo_t) * (df - lo_df) / (hi_df - lo_df)
        lo_df, lo_t = hi_df, hi_t
    return 1.96


@dataclass
class Estimate:
    """A mean over replicates with its 95% interval; ``censored`` > 0 makes the mean a lower bound."""

    mean: float
    half: float  # half-width of the 95% interval (nan below 2 values)
    std: float
    n: int
    solved: Optional[int] = None  # for censored values: how many reached the target
    censored_at: Optional[float] = None  # the largest budget a censored value was cut at

    @property
    def lower_bound(self) -> bool:
        return self.solved is not None and self.solved < self.n

    def text(self, digits: int = 4) -> str:
        def f(v: float) -> str:
            if v != v:
                return "-"
            return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"

        if self.n == 0:
            return "-"
        if self.solved == 0:
            return f"> {f(self.censored_at or self.mean)} (0/{self.n} solved)"
        core = f(self.mean) if self.n < 2 or self.half != self.half else plus_minus(self.mean, self.half)
        if self.lower_bound:
            return f"≥ {f(self.mean)} ({self.solved}/{self.n} solved)"
        if self.solved is not None and self.n > 1:
            return f"{core} ({self.n}/{self.n} solved)"
        return core


def plus_minus(mean: float, half: float) -> str:
    """``mean ± half`` with the half-width to two significant figures and the mean to the same decimals
    (241.67 ± 35.86 -> "242 ± 36"; 0.95312 ± 0.01234 -> "0.953 ± 0.012")."""
    if not math.isfinite(half) or half <= 0:
        return f"{mean:.4g}" if abs(mean) < 100 else f"{mean:.0f}"
    decimals = min(8, max(0, 1 - math.floor(math.log10(half))))
    return f"{mean:.{decimals}f} ± {half:.{decimals}f}"


def estimate(values: Sequence[float]) -> Estimate:
    """Mean, t interval and std of plain values (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and v == v], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    std = float(x.std(ddof=1))
    return Estimate(mean, t975(n - 1) * std / math.sqrt(n), std, n)


def censored_estimate(values: Sequence[Optional[float]], budgets: Sequence[float]) -> Estimate:
    """As ``estimate``, for a value a trial has only when it solved (``iters_to_solve``): an unsolved trial
    counts at its budget, which makes the mean a lower bound."""
    solved = [v is not None and v == v for v in values]
    x = [float(v) if ok else float(b) for v, ok, b in zip(values, solved, budgets)]
    e = estimate(x)
    e.solved = int(sum(solved))
    cut = [float(b) for ok, b in zip(solved, budgets) if not ok]
    e.censored_at = max(cut) if cut else None
    return e


def group_estimates(trials: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """One row per group of ``by`` with the Estimate of ``value`` over its trials (column "estimate"), plus mean,
    half, n, solved for sorting and output."""
    rows = []
    groups = trials.groupby(by, dropna=False, observed=True, sort=True) if by else [((), trials)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        if value in CENSORED:  # a never-solved trial counts at its budget (stopped early or not)
            budget = g["iters"] if "iters" in g else g["iters_run"]
            e = censored_estimate(list(g[value]), list(budget.fillna(0)))
        else:
            e = estimate(list(g[value]))
        rows.append({**dict(zip(by, key)), "estimate": e, "mean": e.mean, "half": e.half, "std": e.std, "n": e.n,
                     "solved": e.solved})
    return pd.DataFrame(rows)


def rank(groups: pd.DataFrame, value: str, lower_is_better: bool,
         tiebreak: Optional[pd.Series] = None) -> pd.DataFrame:
    """Groups best first: censored values by solved fraction then mean; others by mean. ``tiebreak`` (aligned
    with ``groups``, lower is better -- e.g. each group's mean censored iters_to_solve) orders equal means."""
    g = groups.copy()
    key = g["mean"] if lower_is_better else -g["mean"]
    g["_tie"] = tiebreak.to_numpy() if tiebreak is not None else 0.0
    if value in CENSORED:
        g["_frac"] = -(g["solved"].fillna(0) / g["n"].clip(lower=1))
        g["_key"] = key
        return g.sort_values(["_frac", "_key", "_tie"], kind="stable").drop(columns=["_frac", "_key", "_tie"])
    g["_key"] = key
    return g.sort_values(["_key", "_tie"], kind="stable").drop(columns=["_key", "_tie"])


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of ``by``: B - A of ``value`` over the seeds both studies ran (pairs matched on by + seed)."""
    cols = by + ["seed"]
    left = a[cols + [value]].rename(columns={value: "a"})
    right = b[cols + [value]].rename(columns={value: "b"})
    pairs = left.merge(right, on=cols, how="inner")
    rows = []
    groups = pairs.groupby(by, dropna=False, sort=True) if by else [((), pairs)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        d = estimate(list(g["b"] - g["a"]))
        rows.append({**dict(zip(by, key)), "a": float(g["a"].mean()), "b": float(g["b"].mean()), "diff": d,
                     "pairs": d.n, "seeds": ",".join(str(int(s)) for s in sorted(g["seed"]))})
    return pd.DataFrame(rows)
