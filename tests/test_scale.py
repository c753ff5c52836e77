"""A study of a few hundred tiny random-lr trials, the small version of the 10,000-trial benchmark
(benchmarks/scale.py): what a first exploration looks like -- nothing solves, lr sampled on a log scale -- and what
every command must still make of it. Behaviour only; the times belong to `make bench`."""
import contextlib
import io
import re

import pandas as pd
import pytest

from orchestrator.cli import main
from orchestrator.results import page, report
from tests.conftest import write_space

N = 200
SPACE = f"""\
# many tiny trials, none of which can solve in 20 iterations
name: many
num_samples: {N}
search: {{type: random, seed: 0}}
max_concurrent: 2
checkpoint_every: 100
space:
  lr: {{loguniform: [0.0001, 0.01]}}
  hidden: 16
  digits: 3
  iters: 20
  eval_every: 10
  eval_size: 50
"""


@pytest.fixture(scope="module")
def many(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("many")
    space = write_space(d / "many.yaml", SPACE)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the live table, which Ray prints from the driver
        rc = main(["sweep", str(space), "--storage", str(d), "--name", "many"])
    assert rc == 0, out.getvalue()[-3000:]
    return d, out.getvalue()


def test_every_trial_is_in_the_tables_once(many):
    d, _ = many
    study = report.load_study("many", str(d))
    assert len(study.trials) == N and study.trials["trial_id"].is_unique
    assert (study.trials["outcome"] == "budget").all()
    per_trial = study.metrics.groupby("trial_id")["iter"]
    assert (per_trial.count() == 2).all() and (per_trial.nunique() == 2).all()  # iterations 10 and 20, no repeats


def test_the_live_table_shows_the_swept_key_and_the_study_folder(many):
    d, out = many
    header = [line for line in out.splitlines() if line.startswith("| Trial name")][-1]  # the last: with results
    assert re.search(r"\|\s+lr\s+\|", header) and "exact_acc" in header and "cell" not in header, header
    assert "Result logdir" not in out and f"Study folder: {d / 'many'}" in out


def test_nothing_solved_ranks_and_pivots_by_the_loss(many):
    """Every trial's best_exact_acc is 0: a page about that constant would be flat everywhere."""
    d, _ = many
    study = report.load_study("many", str(d))
    assert (study.trials["best_exact_acc"] == 0).all()
    summary = report.summarize(study)
    assert summary["metric"] == "best_loss" and summary["mode"] == "min"
    assert "every trial reached best_exact_acc = 0: ranked by best_loss" in summary["ranking_note"]
    ranked = summary["best"]["best_loss"].tolist()
    assert ranked == sorted(ranked) and ranked[0] == study.trials["best_loss"].min()
    pivot = report.make_pivot(study)
    assert pivot.value == "best_loss" and pivot.table["best_loss"].nunique() > 1
    assert any("ranked by best_loss" in n for n in pivot.notes)
    parallel = page.parallel_figure(study, report.default_value(study)[0])
    assert pd.Series(parallel.data[0].line.color).nunique() > 1  # coloured by something that varies


def test_pivot_bins_of_the_sampled_lr_lie_inside_its_range(many):
    d, _ = many
    study = report.load_study("many", str(d))
    labels = report.make_pivot(study, by=["lr"]).table.index
    assert len(labels) == 5
    for label in labels:
        lo, hi = map(float, label.split(".."))
        assert 1e-4 <= lo <= hi <= 1e-2, label


def test_a_continuous_key_colours_the_curves_on_a_log_scale_not_a_legend_of_floats(many):
    d, _ = many
    study = report.load_study("many", str(d))
    fig = page.curves_figure(study, "lr")
    bars = [t for t in fig.data if t.marker is not None and t.marker.showscale]
    assert len(bars) == 1
    bar = bars[0].marker.colorbar
    assert "lr" in bar.title.text and "log" in bar.title.text
    assert all(len(text) <= 6 for text in bar.ticktext), bar.ticktext  # rounded: 0.0002, 0.005, ...
    ticks = [float(x) for x in bar.ticktext]
    assert min(ticks) >= 1e-4 and max(ticks) <= 1e-2 and len(ticks) >= 3
    assert not any("0.00" in (a.text or "") and "■" in (a.text or "") for a in fig.layout.annotations)
    lines = {t.line.color for t in fig.data if t.mode == "lines"}
    assert len(lines) > 50  # one shade per trial along the scale


def test_trial_folders_hold_only_what_something_reads(many):
    """Ray's progress.csv repeats result.json and nothing reads it: not written (10,000 files fewer at 10,000
    trials). What stays: result.json (the tables), params.json/params.pkl (Tune.restore), events (board), and the
    checkpoint."""
    d, _ = many
    trial = next((d / "many").glob("trial_*"))
    names = {p.name.split(".out.tfevents")[0] if "tfevents" in p.name else p.name for p in trial.iterdir()}
    assert "progress.csv" not in names and {"result.json", "params.json", "params.pkl", "events"} <= names, names


def test_finished_trials_leave_no_running_statistics_in_the_state(many):
    """Tune keeps max/min/avg/last-n statistics of every numeric result key of every trial, in memory and in each
    experiment-state snapshot (most of a 10,000-trial state's 200 MB); finished trials drop them."""
    import json

    d, _ = many
    state = json.loads(max((d / "many").glob("experiment_state-*.json")).read_text())
    runtimes = [json.loads(entry[1]) for entry in state["trial_data"]]
    assert len(runtimes) == N and all(rt["metric_analysis"] == {} and rt["metric_n_steps"] == {} for rt in runtimes)
    assert all(rt["last_result"].get("iter") == 20 for rt in runtimes)  # what the tables fall back on stays
