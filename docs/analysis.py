"""A study run and analysed from Python: launched with the API, then analysed twice -- with adder-sweep's notebook
API, and with duckdb on the Parquet tables.

    python docs/analysis.py --sweep search_spaces/quick.yaml --name quick --repeats 2   # run it, then analyse it
    python docs/analysis.py quick-20261130-101500                   # a study under ./results
    python docs/analysis.py NAME --storage /shared/studies          # or s3://bucket/studies

The same lines work in a notebook. ``load_study`` never writes: it reads trials.parquet and metrics.parquet, or
builds them in memory when they are missing or older than the trial files (a read-only copy, an S3 store).
tests/test_analysis_doc.py runs this file on a real study.
"""
from __future__ import annotations

import argparse

import pandas as pd

from orchestrator import load_study, sweep


def launch(space: str, name: str, storage: str, repeats: int | None) -> str:
    """Run a study as ``adder-sweep sweep`` would (an embedded Ray on this machine's cores, or the caller's
    ``ray.init()``); errored trials are in the result, and ``raise_for_errors`` turns them into an exception."""
    result = sweep(space, name=name, storage=storage, repeats=repeats)
    result.raise_for_errors()
    print(f"ran {result.name}: {result.states}; outcomes {result.outcomes}; best trial {result.best['trial_id']} "
          f"({result.best['value']} = {result.best[result.best['value']]:.4g})")
    if result.best_configuration:
        b = result.best_configuration
        print(f"best configuration over {b['n']} seeds: {b['config']}, {b['value']} {b['mean']:.4g} "
              f"[{b['low']:.4g}, {b['high']:.4g}]")
    return result.name


def with_the_api(name: str, storage: str) -> None:
    study = load_study(name, storage)
    t = study.trials  # one row per trial: config columns, outcome, final_* / best_*, iters_to_solve, ...
    print(f"{study.name}: {len(t)} trials, swept {', '.join(study.swept)}; outcomes "
          f"{t['outcome'].value_counts().to_dict()}")

    # the best trial by the study's own rule (its metric; iters_to_solve when every trial solved), and its config
    best = study.best()
    print(f"best trial {best['trial_id']}: iters_to_solve={best['iters_to_solve']}, config "
          f"{ {k: v for k, v in study.config(best['trial_id']).items() if k in study.swept} }")

    # replicates: mean and spread over seeds per configuration (report.py does the 95% intervals)
    keys = [k for k in study.swept if k != "seed"] or ["config_id"]
    per_config = t.groupby(keys)["best_exact_acc"].agg(["mean", "std", "count"])
    print("best exact accuracy per configuration (mean, std, seeds):")
    print(per_config.to_string())

    # curves as a long table: the iteration at which each trial first passed 50% exact accuracy
    curves = study.curves("exact_acc")
    first = curves[curves["value"] >= 0.5].groupby("trial_id")["iter"].min()
    passed = t.set_index("trial_id").join(first.rename("iter_to_50pct"))[keys + ["iter_to_50pct"]]
    print("first iteration at >= 50% exact accuracy:")
    print(passed.sort_values("iter_to_50pct").to_string())


def with_duckdb(name: str, storage: str) -> None:
    """Any Parquet reader works on the tables as they are; duckdb queries them with SQL (for s3:// stores, load
    duckdb's httpfs extension first)."""
    import duckdb

    study = load_study(name, storage)  # for where the files are and which keys were swept
    keys = ", ".join(k for k in study.swept if k != "seed") or "study"
    trials = f"{study.path}/trials.parquet"
    metrics = f"{study.path}/metrics.parquet"
    print(duckdb.sql(f"""
        select {keys}, count(*) as trials, avg(iters_to_solve) as mean_iters_to_solve,
               avg(case when outcome = 'solved' then 1.0 else 0.0 end) as solved
        from '{trials}' group by {keys} order by mean_iters_to_solve nulls last
    """).df().to_string(index=False))
    # the loss curve of the fastest trial, from metrics joined to trials
    print(duckdb.sql(f"""
        select m.iter, m.loss, m.exact_acc from '{metrics}' m
        join (select trial_id from '{trials}' order by iters_to_solve nulls last limit 1) best using (trial_id)
        order by m.iter
    """).df().head(8).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", nargs="?", help="a study to analyse (with --sweep: none)")
    parser.add_argument("--storage", default="./results")
    parser.add_argument("--sweep", metavar="FILE", help="run this search-space file first, then analyse its study")
    parser.add_argument("--name", help="with --sweep: the study's name")
    parser.add_argument("--repeats", type=int, help="with --sweep: seeds per configuration")
    args = parser.parse_args()
    if (args.sweep is None) == (args.study is None):
        parser.error("give a study, or --sweep FILE")
    pd.set_option("display.width", 160)
    study = launch(args.sweep, args.name, args.storage, args.repeats) if args.sweep else args.study
    print()
    with_the_api(study, args.storage)
    print()
    with_duckdb(study, args.storage)


if __name__ == "__main__":
    main()
