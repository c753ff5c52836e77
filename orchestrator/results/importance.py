"""Which swept key mattered: a main-effect variance decomposition with a bootstrap interval, numpy and pandas only.

For each swept key, the **importance** is the share of the variance of the ranking value across trials that the
key's levels explain on their own (the correlation ratio η² of a one-way analysis of variance). A numeric key with
many distinct values is cut into quantile bins first, on a log scale when its range is log-sampled. η² of
independent keys in a full grid add up to at most 1; the rest is interactions and noise -- replicate seeds
included, so importance is measured against the noise of the seeds.

The interval is a bootstrap over trials (resampling whole trials, 300 times): the 5th and 95th percentiles of
η². Every trial that has a value counts. A trial stopped early by a scheduler keeps the value it reached; one that
never solved counts at its budget for ``iters_to_solve``. Dropping stopped trials would hide exactly the keys that
made them bad (the complaint of Optuna #3709).

Below ``MIN_TRIALS`` trials the numbers are not meaningful, and ``importance`` says so instead of returning them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

MIN_TRIALS = 10
MAX_BINS = 5
BOOTSTRAP = 300


@dataclass
class Importance:
    key: str
    eta2: float  # share of variance explained by the key alone
    low: float  # 5th percentile over bootstrap resamples
    high: float  # 95th percentile
    levels: int  # distinct levels (bins for continuous keys)


def levels_of(values: pd.Series, log: bool = False, max_bins: int = MAX_BINS) -> pd.Series:
    """Integer level codes of a key: its categories, or quantile bins of a numeric key with many values."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
            and values.nunique(dropna=True) > max_bins:
        x = np.log10(values.astype(float)) if log and (values > 0).all() else values.astype(float)
        return pd.Series(pd.qcut(x, q=max_bins, labels=False, duplicates="drop"), index=values.index)
    return pd.Series(pd.factorize(values.astype(str))[0], index=values.index)


def eta_squared(y: np.ndarray, codes: np.ndarray) -> float:
    """Between-level sum of squares over total sum of squares."""
    total = ((y - y.mean()) ** 2).sum()
    if total <= 0:
        return 0.0
    between = 0.0
    for c in np.unique(codes):
        part = y[codes == c]
        between += len(part) * (part.mean() - y.mean()) ** 2
    return float(between / total)


def importance(trials: pd.DataFrame, keys: list[str], value: str, *, log_keys: tuple = (),
               budget_column: Optional[str] = "iters", seed: int = 0, bootstrap: int = BOOTSTRAP,
               min_trials: int = MIN_TRIALS) -> tuple[list[Importance], Optional[str]]:
    """Importance of each key for ``value``, best first, and a note (None, or why there is nothing to show)."""
    y = trials[value].astype(float)
    if value == "iters_to_solve" and budget_column in trials:  # never solved: counted at its budget
        y = y.fillna(trials[budget_column].astype(float))
    ok = y.notna()
    keys = [k for k in keys if k in trials and trials.loc[ok, k].nunique(dropna=True) > 1]
    n = int(ok.sum())
    if n < min_trials:
        return [], (f"importance is not meaningful with {n} trials (at least {min_trials} are needed); "
                    "add trials (adder-sweep extend) to see which key matters")
    if not keys:
        return [], "no swept key takes more than one value among the finished trials"
    yv = y[ok].to_numpy()
    codes = {k: levels_of(trials.loc[ok, k], log=k in log_keys).to_numpy() for k in keys}
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in keys}
    for _ in range(bootstrap):
        idx = rng.integers(0, n, n)
        for k in keys:
            samples[k].append(eta_squared(yv[idx], codes[k][idx]))
    out = [Importance(k, eta_squared(yv, codes[k]), float(np.percentile(samples[k], 5)),
                      float(np.percentile(samples[k], 95)), int(len(np.unique(codes[k])))) for k in keys]
    return sorted(out, key=lambda i: -i.eta2), None
