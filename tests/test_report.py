"""``adder-sweep report | compare | board`` and the plots, on a real tiny Ray Tune study."""
import json
import os
import re
import shutil
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.results import plots, report
from orchestrator.cli import main
from tests.conftest import run_cli, run_study_text

# A stop rule at iteration 100 ends the trials before their own end (stopped_early): exact accuracy 0.9 on 3-4
# digit sums takes a few hundred iterations. Each trial ends solved or stopped_early.
TINY = """\
name: rep
space:
  cell: {grid: [rnn, gru]}
  digits: {grid: [3, 4]}
  iters: 200
  eval_every: 20
  eval_size: 200
  target: 0.9
stop: {iter: 100}
checkpoint_every: 2
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    outcome = run_study_text(TINY, root, "rep")
    assert not outcome.interrupted
    _interrupted_copy(root / "rep", root / "cut")
    return root


def _interrupted_copy(src: Path, dst: Path) -> None:
    """The study as a killed driver leaves it: the experiment state still says one trial runs and one waits."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("final_states.json"))  # a killed driver writes none
    record = json.loads((dst / "adder_study.json").read_text())
    (dst / "adder_study.json").write_text(json.dumps({**record, "name": "cut"}))
    state_path = next(dst.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    new = []
    for i, (tj, rj) in enumerate(sorted(state["trial_data"], key=lambda tr: json.loads(tr[0])["trial_id"])):
        t = json.loads(tj)
        if i == 0:
            t["status"] = "RUNNING"
        elif i == 1:
            t["status"] = "PENDING"
            shutil.rmtree(dst / t["relative_logdir"])
            rj = json.dumps({**json.loads(rj), "last_result": {}})
        new.append([json.dumps(t), rj])
    state["trial_data"] = new
    state_path.write_text(json.dumps(state))


@pytest.fixture(scope="module")
def study(root):
    return report.load_study("rep", str(root))


def test_summary_counts_outcomes_and_compute(study):
    s = report.summarize(study)
    assert s["trials"] == s["planned"] == 4
    assert s["states"] == {"terminated": 4}
    assert set(s["outcomes"]) <= {"solved", "stopped_early"} and sum(s["outcomes"].values()) == 4
    assert "stopped_early" in s["outcomes"]
    assert s["core_s"] == pytest.approx(study.trials["wall_s"].sum())
    best = s["best"]
    assert list(best["best_exact_acc"]) == sorted(best["best_exact_acc"], reverse=True)
    assert (study.trials["iters_run"] <= 100).all()


def test_default_pivot_is_swept_keys_by_best_metric(study):
    p = report.make_pivot(study)
    assert p.by == ["cell", "digits"] and p.value == "best_exact_acc"
    t = study.trials
    for cell in ("rnn", "gru"):
        for digits in (3, 4):
            want = t[(t.cell == cell) & (t.digits == digits)]["best_exact_acc"].median()
            assert p.table.loc[cell, digits] == pytest.approx(want)
    best = t.loc[t["best_exact_acc"].idxmax()]
    assert p.best == (best["cell"], best["digits"])
    # digits has two values, so the best always sits on an edge of its range
    assert any("on the edge: digits=" in n for n in p.notes)


def test_edge_note_for_sampled_ranges(study):
    from orchestrator.spec.space import Dist, StudySpec

    spec = StudySpec(name="x", space={"lr": Dist("loguniform", [1e-4, 1e-1]), "layers": Dist("grid", [1, 2, 3]),
                                      "cell": Dist("grid", ["rnn", "gru"])})
    assert "upper edge" in report.edge_note(spec, "lr", 0.09)
    assert report.edge_note(spec, "lr", 3e-3) is None
    assert "lowest" in report.edge_note(spec, "layers", 1)
    assert report.edge_note(spec, "layers", 2) is None
    assert report.edge_note(spec, "cell", "rnn") is None


def test_report_cli_pivot_formats_and_files(root, study):
    r = run_cli("report", "rep", "--storage", root, "--by", "cell,digits", "--value", "iters_to_solve",
                "--agg", "median", check=0)
    assert "Pivot: median iters_to_solve by cell (rows) x digits (columns)" in r.stdout
    assert re.search(r"^cell\s+digits=3\s+digits=4$", r.stdout, re.M)
    solved = study.trials.dropna(subset=["iters_to_solve"])
    if len(solved):
        assert "*" in r.stdout
    d = root / "rep"
    for f in ("trials.parquet", "metrics.parquet", "report.md", "plots/learning_curves.png",
              "plots/metric_vs_digits.png", "plots/heatmap.png"):
        assert (d / f).is_file(), f
    md = (d / "report.md").read_text()
    assert "## Plots" in md and "](plots/heatmap.png)" in md and "| cell | digits=3 | digits=4 |" in md
    # the study page's pivot is the one this command printed (its --by / --value / --agg)
    assert "median iters_to_solve by cell (rows) x digits (columns)" in (d / "report.html").read_text()
    for png in (d / "plots").glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000



def test_report_csv_and_json(root, capsys):
    # in-process: the formats need no fresh interpreter
    assert main(["report", "rep", "--storage", str(root), "--format", "csv", "--by", "digits", "--no-plots"]) == 0
    csv = pd.read_csv(StringIO(capsys.readouterr().out))
    assert list(csv.columns) == ["digits", "best_exact_acc"] and list(csv["digits"]) == [3, 4]
    assert main(["report", "rep", "--storage", str(root), "--format", "json", "--no-plots"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pivot"]["by"] == ["cell", "digits"] and out["summary"]["trials"] == 4
    assert len(out["summary"]["best"]) == 4


def test_report_rejects_bad_keys_and_missing_study(root, capsys):
    r = run_cli("report", "nosuch", "--storage", root, check=2)
    assert r.stderr.strip().count("\n") == 0 and "no study 'nosuch'" in r.stderr
    assert main(["report", "rep", "--storage", str(root), "--by", "cel", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "--by cel" in err and "did you mean 'cell'" in err
    assert main(["report", "rep", "--storage", str(root), "--value", "acc", "--no-plots"]) == 2
    assert "--value acc" in capsys.readouterr().err


def test_report_on_interrupted_study(root):
    cut = report.load_study("cut", str(root))
    s = report.summarize(cut)
    assert s["states"] == {"running": 1, "pending": 1, "terminated": 2}
    assert cut.trials["outcome"].isna().sum() == 2
    r = run_cli("report", "cut", "--storage", root, check=0)
    assert "1 running" in r.stdout and "1 pending" in r.stdout
    assert (root / "cut" / "plots" / "learning_curves.png").is_file()


def test_learning_curves_one_line_per_trial(study):
    fig = plots.learning_curves_figure(study, "cell")
    ax_loss, ax_acc = fig.axes
    lines = [ax.collections[0] for ax in (ax_loss, ax_acc)]  # one LineCollection per panel, a line per trial
    assert [len(c.get_segments()) for c in lines] == [4, 4]
    assert all(len(seg) == len(study.metrics) // 4 for seg in lines[1].get_segments())
    assert ax_loss.get_xlabel() == "iteration" and ax_acc.get_ylabel() == "exact_acc"
    assert [t.get_text() for t in ax_acc.get_legend().get_texts()] == ["gru", "rnn"]
    colors = {tuple(c) for c in lines[1].get_colors()}
    assert len(colors) == 2  # coloured by cell
    assert plots.png_bytes(fig).startswith(PNG_MAGIC)


def test_loss_band_on_a_log_axis_is_geometric_and_stays_positive():
    """Three seeds whose losses spread over decades: the arithmetic 95% interval reaches below zero (a log axis
    would draw it as a stripe to its bottom); the band for the log-scale loss panel is taken over log(loss)."""
    import numpy as np

    losses = {"a": [0.5, 0.09], "b": [0.4, 0.014], "c": [0.6, 0.012]}
    m = pd.DataFrame([{"trial_id": t, "iter": it, "loss": v} for t, vs in losses.items()
                      for it, v in zip((50, 100), vs)])
    mean, lo, hi = plots.replicate_band(m, "loss")
    assert lo.loc[100] < 0 < mean.loc[100]  # the case that broke the plot
    gmean, glo, ghi = plots.replicate_band(m, "loss", log=True)
    assert gmean.loc[100] == pytest.approx(np.exp(np.mean(np.log([0.09, 0.014, 0.012]))))
    assert (glo > 0).all() and (glo < gmean).all() and (gmean < ghi).all()
    assert glo.loc[100] * ghi.loc[100] == pytest.approx(gmean.loc[100] ** 2)  # symmetric in log space
    acc = m.assign(exact_acc=[1.0, 0.0, 1.0, 0.0, 0.5, 0.6]).drop(columns="loss")
    amean, alo, ahi = plots.replicate_band(acc, "exact_acc")
    assert amean.loc[100] == pytest.approx(0.2) and alo.loc[100] == 0.0 and ahi.loc[100] == 1.0  # cut at 0 and 1


def test_metric_vs_digits_one_line_per_cell(study):
    fig = plots.vs_digits_figure(study)
    for ax in fig.axes:
        assert len(ax.lines) == 2 and ax.get_xlabel() == "digits per operand"
    acc = fig.axes[0]
    gru = next(l for l in acc.lines if l.get_label() == "gru")
    t = study.trials[study.trials.cell == "gru"].sort_values("digits")
    assert list(gru.get_xdata()) == [3, 4] and list(gru.get_ydata()) == pytest.approx(list(t["best_exact_acc"]))


def test_heatmap_of_two_keys(study):
    fig = plots.heatmap_figure(study, "digits", "cell", "exact_acc")
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (2, 2)
    assert len(ax.texts) == 4 and ax.get_xlabel() == "digits" and ax.get_ylabel() == "cell"
    assert plots.heatmap_keys(study) == ("digits", "cell")


def test_compare_two_studies(root):
    r = run_cli("compare", "rep", "cut", "--storage", root, check=0)
    assert "median best_exact_acc by cell, digits" in r.stdout
    assert re.search(r"^cell\s+digits\s+rep\s+cut\s+B - A$", r.stdout, re.M)
    assert "Other differences: none" in r.stdout
    r = run_cli("compare", "rep", "cut", "--storage", root, "--format", "json", check=0)
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 4 and {"cell", "digits", "rep", "cut", "B - A"} <= set(rows[0])


def test_board_serves_http_and_stops(root):
    r = run_cli("board", "rep", "--storage", root, "--port", "0", "--check", timeout=120, check=0)
    m = re.search(r"(http://localhost:\d+/)\s+\(pid (\d+)", r.stdout)
    assert m, r.stdout
    pid = int(m.group(2))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped by the command (and reaped)
    assert list((root / "rep").glob("trial_*/events.out.tfevents.*"))
    run_cli("board", "nosuch", "--storage", root, check=2)


# -- replicates: intervals in the report, paired comparison ---------------------------------------------------------
REPLICATES = """\
name: reps
repeats: 3
checkpoint_every: 2
space:
  cell: {grid: [rnn, gru]}
  digits: 3
  iters: 300
  eval_every: 20
  eval_size: 100
  target: 0.5
"""


@pytest.fixture(scope="module")
def replicate_root(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("replicates")
    for name, text in (("reps", REPLICATES), ("reps-lr", REPLICATES.replace("  digits: 3\n",
                                                                              "  digits: 3\n  lr: 0.003\n"))):
        outcome = run_study_text(text, root, name)
        assert not outcome.interrupted
    return root


def test_report_groups_replicates_with_intervals(replicate_root):
    from orchestrator.results.stats import censored_estimate, estimate

    study = report.load_study("reps", str(replicate_root))
    assert study.has_replicates and study.trials.groupby("config_id").size().tolist() == [3, 3]
    p = report.make_pivot(study, ["cell"], "iters_to_solve")
    assert p.estimates is not None and p.title.startswith("mean ± 95% CI of iters_to_solve by cell")
    for cell in ("rnn", "gru"):
        rows = study.trials[study.trials.cell == cell]
        want = censored_estimate(list(rows["iters_to_solve"]), list(rows["iters"]))
        got = p.estimates.loc[cell, "iters_to_solve"]
        assert (got.mean, got.n, got.solved) == (want.mean, 3, want.solved)
    acc = report.make_pivot(study, ["cell"], "final_exact_acc").estimates.loc["gru", "final_exact_acc"]
    assert acc.mean == pytest.approx(estimate(study.trials[study.trials.cell == "gru"]["final_exact_acc"]).mean)
    r = run_cli("report", "reps", "--storage", replicate_root, "--by", "cell", "--value", "iters_to_solve",
                check=0)
    assert "Best configurations over seeds" in r.stdout and " ± " in r.stdout
    assert re.search(r"^(rnn|gru)\s+.*\d+ ± \d+|solved\)", r.stdout, re.M), r.stdout
    assert (replicate_root / "reps" / "plots" / "learning_curves.png").is_file()


def test_compare_is_paired_by_seed(replicate_root):
    a = report.load_study("reps", str(replicate_root))
    b = report.load_study("reps-lr", str(replicate_root))
    c = report.compare(a, b, ["cell"], "final_loss")
    assert c["paired"] and c["agg"] == "mean, paired by seed"
    t = c["table"]
    for cell in ("rnn", "gru"):
        la = a.trials[a.trials.cell == cell].set_index("seed")["final_loss"]
        lb = b.trials[b.trials.cell == cell].set_index("seed")["final_loss"]
        assert t.loc[cell, "pairs"] == 3
        assert t.loc[cell, "B - A"] == pytest.approx((lb - la).mean())
    r = run_cli("compare", "reps", "reps-lr", "--storage", replicate_root, "--by", "cell", "--value",
                "final_loss", check=0)
    assert "B - A (95% CI)" in r.stdout and "(n=3)" in r.stdout


def test_tensorboard_hparams_list_every_trial_with_its_keys_and_final_metrics(root, study):
    """What the HParams tab shows, read back with TensorBoard's own event reader and hparams plugin parser."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    sessions = {}
    for events in (root / "rep").glob("trial_*/events.out.tfevents.*"):
        ea = EventAccumulator(str(events.parent))
        ea.Reload()
        content = ea.PluginTagToContent(metadata.PLUGIN_NAME)
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        hp = {k: (v.string_value or v.number_value) for k, v in start.hparams.items()}
        final = ea.Scalars("ray/tune/exact_acc")[-1].value
        sessions[events.parent.name] = (hp, final)
    t = study.trials.set_index("trial_dir")
    assert set(sessions) == set(t.index)  # every trial has its session
    for trial_dir, (hp, final) in sessions.items():
        row = t.loc[trial_dir]
        assert hp == {"cell": row["cell"], "digits": row["digits"], "seed": row["seed"]}
        assert final == pytest.approx(row["final_exact_acc"])


def test_exported_study_reports_from_its_tables_alone(root, study, tmp_path):
    """A study kept as its tables and record only (as under docs/reproduction/): report and load_study read the
    tables; without them the study has nothing to tabulate, said in one line."""
    export = tmp_path / "rep"
    export.mkdir()
    for f in ("trials.parquet", "metrics.parquet", "adder_study.json"):
        shutil.copy(root / "rep" / f, export / f)
    (export / "adder_study.json").touch()  # newer than the tables, as a copy made in any order can be
    again = report.load_study(str(export))
    assert again.trials.sort_values("trial_id")["final_loss"].tolist() == \
        study.trials.sort_values("trial_id")["final_loss"].tolist()
    r = run_cli("report", export, "--no-plots", check=0)
    assert "4/4" in r.stdout or "4 terminated" in r.stdout, r.stdout
    (export / "metrics.parquet").unlink()
    r = run_cli("report", export, "--no-plots", check=2)
    assert r.stderr.strip().count("\n") == 0 and "nothing to tabulate" in r.stderr


@pytest.mark.parametrize("kind,args", [("loguniform", [1e-4, 1e-2]), ("uniform", [-1.0, 3.0]), ("randint", [1, 1000]),
                                       ("qrandint", [8, 512, 8]), ("quniform", [0.0, 1.0, 0.01]),
                                       ("loguniform", [1e-9, 1e3])])
def test_pivot_bins_stay_inside_the_values_the_trials_had(kind, args):
    """pd.qcut widened the first bin below the minimum: a loguniform lr over [1e-4, 1e-2] printed its first bin as
    -0.000899..0.000265. Every bin edge, as printed, lies within the values drawn, and so within the range."""
    import numpy as np

    from orchestrator.spec.plan import draw
    from orchestrator.spec.space import Dist

    rng = np.random.default_rng(0)
    values = pd.Series([draw(Dist(kind, args), rng) for _ in range(1000)])
    labels = report.levels(values)
    assert labels.nunique() == 5 and labels.notna().all()
    edges = [tuple(map(float, label.split(".."))) for label in labels.cat.categories]
    assert all(values.min() <= a <= b <= values.max() for a, b in edges), (edges, values.min(), values.max())
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(edges, edges[1:])), edges  # in order, not overlapping
    for value, label in zip(values, labels):  # each value in its bin, up to the label's 3-digit rounding
        a, b = map(float, label.split(".."))
        assert a - 5e-3 * abs(a) <= value <= b + 5e-3 * abs(b), (value, label)


def test_edge_note_counts_qrandints_upper_bound_as_drawn():
    """qrandint draws include its upper bound (orchestrator/spec/plan.py, as Tune's); randint's is exclusive."""
    from orchestrator.spec.space import parse_space

    spec = parse_space("space:\n  hidden: {qrandint: [16, 128, 16]}\n  layers: {randint: [1, 4]}\n", "e.yaml")
    assert report.edge_note(spec, "hidden", 128) is not None and "upper edge" in report.edge_note(spec, "hidden", 128)
    assert report.edge_note(spec, "hidden", 64) is None
    assert "upper edge" in report.edge_note(spec, "layers", 3)  # 3 is randint [1, 4)'s largest draw
