"""Parquet result tables (orchestrator/results/tables.py) built from a real tiny Ray Tune study."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.studydir import records
from orchestrator.results import tables
from orchestrator.studydir.storage import Storage
from trainables.config import field_specs

from tests.conftest import ROOT, run_study_text  # noqa: E402
# target 0.4 within 200 iterations: some of these trials solve (0.6 did on torch 2.13 and 2.14; 0.4 leaves a margin)
TINY = """\
name: tables
space:
  cell: {grid: [rnn, gru]}
  digits: {grid: [3, 4]}
  iters: 200
  eval_every: 20
  eval_size: 200
  target: 0.4
checkpoint_every: 2
"""


def make_study(text: str, root: Path, name: str) -> Storage:
    outcome = run_study_text(text, root, name)
    assert not outcome.interrupted
    return Storage.open(outcome.storage)


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    storage = make_study(TINY, root, "tables")
    paths = tables.write_tables(storage, "tables")
    assert paths is not None
    return storage, Path(storage.path) / "tables"


def read(path):
    return pq.read_table(path)


def test_schema_and_dtypes(study):
    _, d = study
    t = read(d / "trials.parquet")
    assert t.schema.equals(tables.trials_schema(), check_metadata=False)
    specs = field_specs()
    expected = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    for name, spec in specs.items():
        assert t.schema.field(name).type == expected.get(spec.type, pa.list_(pa.int64())), name
        assert t.schema.field(name).metadata[b"doc"].decode() == spec.doc
    for col in ("final_exact_acc", "best_loss", "wall_s"):
        assert t.schema.field(col).type == pa.float64()
    for col in ("iters_to_solve", "iters_run", "best_exact_acc_iter"):
        assert t.schema.field(col).type == pa.int64()
    assert t.schema.metadata[b"adder_sweep.swept"] == b"cell,digits"
    m = read(d / "metrics.parquet")
    assert m.schema.equals(tables.metrics_schema(), check_metadata=False)


def test_one_row_per_trial_and_typed_config(study):
    storage, d = study
    df = read(d / "trials.parquet").to_pandas()
    state = tables.load_trials(storage, "tables")
    assert sorted(df["trial_id"]) == sorted(t["trial_id"] for t in state)
    assert len(df) == 4 and df["trial_id"].is_unique
    assert set(zip(df["cell"], df["digits"])) == {("rnn", 3), ("rnn", 4), ("gru", 3), ("gru", 4)}
    assert (df["state"] == "terminated").all()
    assert set(df["outcome"]) <= {"solved", "budget"}
    assert (df["iters"] == 200).all() and (df["eval_size"] == 200).all() and (df["target"] == 0.4).all()
    assert df["wall_s"].gt(0).all() and df["node"].notna().all()


def test_metrics_rows_match_reports(study):
    storage, d = study
    m = read(d / "metrics.parquet").to_pandas()
    t = read(d / "trials.parquet").to_pandas()
    for row in t.itertuples():
        reports = tables.load_reports(storage, "tables", row.trial_dir)
        mine = m[m["trial_id"] == row.trial_id]
        assert len(mine) == len(reports) == row.reports
        assert list(mine["iter"]) == [r["iter"] for r in reports]
        assert list(mine["exact_acc"]) == pytest.approx([r["exact_acc"] for r in reports])
        assert row.iters_run == reports[-1]["iter"]


def test_iters_to_solve_is_first_iteration_at_target(study):
    _, d = study
    m = read(d / "metrics.parquet").to_pandas()
    t = read(d / "trials.parquet").to_pandas()
    assert (t["outcome"] == "solved").any(), "the tiny study should solve at least one trial"
    for row in t.itertuples():
        reached = m[(m["trial_id"] == row.trial_id) & (m["exact_acc"] >= row.target)]["iter"]
        if row.outcome == "solved":
            assert row.iters_to_solve == reached.min() == row.iters_run
        else:
            assert reached.empty and pd.isna(row.iters_to_solve)
        best = m[m["trial_id"] == row.trial_id]
        assert row.best_exact_acc == best["exact_acc"].max()
        assert row.best_exact_acc_iter == best[best["exact_acc"] == best["exact_acc"].max()]["iter"].min()


def test_readable_by_pandas_and_others_as_is(study):
    _, d = study
    trials = pd.read_parquet(d / "trials.parquet")
    assert len(trials) == 4
    assert len(pd.read_parquet(d / "metrics.parquet")) == trials["reports"].sum()
    for mod, query in (("duckdb", lambda p: __import__("duckdb").sql(f"select count(*) from '{p}'").fetchall()[0][0]),
                       ("polars", lambda p: __import__("polars").read_parquet(p).height)):
        try:
            __import__(mod)
        except ImportError:
            continue
        assert query(str(d / "trials.parquet")) == 4


def test_interrupted_write_keeps_previous_table(study, monkeypatch):
    _, d = study
    before = read(d / "trials.parquet")

    def crash(src, dst):  # the temp file is fully written; the process dies before the rename
        Path(src).write_bytes(b"PAR1 half a table")
        raise KeyboardInterrupt

    monkeypatch.setattr(records.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        records.write_parquet_atomic(before.slice(0, 1), d / "trials.parquet")
    assert read(d / "trials.parquet").equals(before)
    assert not list(d.glob(".trials.parquet.*"))


def _partial_copy(storage: Storage, d: Path, tmp_path: Path) -> Path:
    """The study as an interruption leaves it: one trial still running (its last reports cut, and reports
    repeated by a restore from an older checkpoint), one pending that never started."""
    copy = tmp_path / "partial"
    shutil.copytree(d, copy, ignore=shutil.ignore_patterns("*.parquet", "final_states.json"))
    state_path = next(copy.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    trials = sorted(state["trial_data"], key=lambda tr: json.loads(tr[0])["trial_id"])
    running, pending = json.loads(trials[0][0]), json.loads(trials[1][0])
    lines = (copy / running["relative_logdir"] / "result.json").read_text().splitlines()
    # kept: reports 1-4, then a restore from the checkpoint at report 2 re-reported 3 and 4 with new values
    redo = [json.dumps({**json.loads(l), "loss": 9.0 + i}) for i, l in enumerate(lines[2:4])]
    (copy / running["relative_logdir"] / "result.json").write_text("\n".join(lines[:4] + redo) + "\n{\"iter\": 1")
    shutil.rmtree(copy / pending["relative_logdir"])
    new = []
    for tj, rj in state["trial_data"]:
        t = json.loads(tj)
        if t["trial_id"] == running["trial_id"]:
            t["status"] = "RUNNING"
        elif t["trial_id"] == pending["trial_id"]:
            t["status"] = "PENDING"
            rt = json.loads(rj)
            rt["last_result"] = {}
            rj = json.dumps(rt)
        new.append([json.dumps(t), rj])
    state["trial_data"] = new
    state_path.write_text(json.dumps(state))
    return copy


def test_partial_study_and_repeated_iterations(study, tmp_path):
    storage, d = study
    copy = _partial_copy(storage, d, tmp_path)
    s = Storage.open(copy.parent)
    assert tables.write_tables(s, copy.name) is not None
    t = read(copy / "trials.parquet").to_pandas().set_index("trial_id")
    m = read(copy / "metrics.parquet").to_pandas()
    ids = sorted(t.index)
    running, pending = t.loc[ids[0]], t.loc[ids[1]]
    assert running["state"] == "running" and pd.isna(running["outcome"]) and running["reports"] == 4
    assert pending["state"] == "pending" and pending["reports"] == 0 and pd.isna(pending["outcome"])
    assert pd.isna(pending["final_exact_acc"]) and pd.isna(pending["iters_run"])
    mine = m[m["trial_id"] == ids[0]]
    assert list(mine["iter"]) == [20, 40, 60, 80]
    assert list(mine["loss"])[2:] == [9.0, 10.0]  # the later report of a repeated iteration wins
    assert (t.loc[ids[2:], "state"] == "terminated").all()


def test_stopped_early_outcome():
    assert tables.trial_outcome("terminated", "running") == "stopped_early"
    assert tables.trial_outcome("terminated", None) == "stopped_early"
    assert tables.trial_outcome("terminated", "diverged") == "diverged"
    assert tables.trial_outcome("running", "running") is None
    assert tables.trial_outcome("errored", "running") is None


def test_write_tables_never_fails_a_sweep(tmp_path, capsys):
    s = Storage.open(tmp_path)
    (tmp_path / "empty").mkdir()
    assert tables.write_tables(s, "empty") is None  # interrupted before the first trial: nothing to write
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "experiment_state-2020.json").write_text('{"trial_data": [["{\\"tri')
    assert tables.write_tables(s, "broken") is None
    assert "unreadable" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.parquet"))


def test_every_column_is_documented():
    doc = (ROOT / "docs" / "results.md").read_text()
    for schema in (tables.trials_schema(), tables.metrics_schema()):
        for name in schema.names:
            assert f"`{name}`" in doc, f"docs/results.md does not document column {name}"


def test_extra_evaluation_lengths_become_columns(ray_local, tmp_path):
    """eval_lengths: each trial's per-length accuracies are columns of both tables, equal to its result.json."""
    text = TINY.replace("name: tables", "name: lengths").replace("  digits: {grid: [3, 4]}\n",
                                                                 "  digits: 3\n  eval_lengths: [6, 12]\n")
    storage = make_study(text, tmp_path, "lengths")
    assert tables.write_tables(storage, "lengths") is not None
    d = tmp_path / "lengths"
    t = read(d / "trials.parquet")
    m = read(d / "metrics.parquet")
    assert t.schema.equals(tables.trials_schema([6, 12]), check_metadata=False)
    assert m.schema.equals(tables.metrics_schema([6, 12]), check_metadata=False)
    assert m.column_names[-4:] == ["exact_acc@6", "digit_acc@6", "exact_acc@12", "digit_acc@12"]
    tdf, mdf = t.to_pandas().set_index("trial_id"), m.to_pandas()
    assert len(tdf) == 2
    for trial_id, row in tdf.iterrows():
        lines = (d / row["trial_dir"] / "result.json").read_text().splitlines()
        reports = [json.loads(line) for line in lines]
        mine = mdf[mdf["trial_id"] == trial_id].sort_values("iter")
        assert list(mine["exact_acc@12"]) == [r["exact_acc@12"] for r in reports]
        assert row["final_exact_acc@6"] == reports[-1]["exact_acc@6"]
        assert 0.0 <= row["final_digit_acc@12"] <= 1.0


def test_a_state_format_or_ray_version_it_cannot_read_is_one_clear_error(study, tmp_path):
    """Ray's experiment state is private and unversioned: a shape this reader does not know, or a study that a
    Ray outside the tested releases ran, is refused with one line -- never a wrong table."""
    from orchestrator.errors import UserError

    _, d = study
    copy = tmp_path / "copy"
    shutil.copytree(d, copy / "tables", ignore=shutil.ignore_patterns("*.parquet"))
    s = Storage.open(copy)
    state_path = next((copy / "tables").glob("experiment_state-*.json"))
    good = state_path.read_text()

    state = json.loads(good)
    state["trial_data"] = {json.loads(t)["trial_id"]: [t, r] for t, r in state["trial_data"]}  # a new layout
    state_path.write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"experiment state in a format this adder-sweep does not read \(no "
                                        r"'trial_data' list.*reads the state of Ray 2\.\d+-2\.\d+"):
        tables.build_tables(s, "tables")

    state = json.loads(good)
    t, r = state["trial_data"][0]
    state["trial_data"][0] = [json.dumps({**json.loads(t), "status": "SUSPENDED"}), r]
    state_path.write_text(json.dumps(state))
    with pytest.raises(UserError, match="trial entry 0: unknown trial status 'SUSPENDED'"):
        tables.build_tables(s, "tables")

    state_path.write_text(good)
    assert tables.build_tables(s, "tables")[0].num_rows == 4
    record_path = copy / "tables" / "adder_study.json"
    record = json.loads(record_path.read_text())
    record["runs"].append({"kind": "resume", "at": "2027-01-01T00:00:00+00:00", "versions": {"ray": "3.1.0"}})
    record_path.write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"study 'tables' was run with Ray 3\.1\.0 \(resume of 2027-01-01.*reads the "
                                        r"experiment state of Ray 2\.\d+-2\.\d+ only"):
        tables.build_tables(s, "tables")
    assert not list((copy / "tables").glob("*.parquet"))


def test_the_experiment_state_is_read_entry_by_entry_and_never_a_cut_one(study, monkeypatch):
    """The state is read a chunk at a time, an entry at a time (at 10,000 trials it is ~200 MB): every chunk size
    gives the entries json.loads gives, whatever the spacing, and no cut-off file -- cut anywhere, also after its
    last entry or inside a character -- reads as whole."""
    _, d = study
    real = next(d.glob("experiment_state-*.json")).read_bytes()
    trial = json.dumps({"trial_id": "é✓", "status": "RUNNING", "config": {"x": "ü" * 3}}, indent=2)
    spaced = ('{ "trial_data" :[ [' + json.dumps(trial) + ' ,"{}" ] ,\n [ "1","2" ]\n], "runner_data": {"t": 1.5e3},'
              ' "stats": {"start_time": Infinity} }').encode()
    for chunk in (1, 3, 64, 4096, 1 << 20):
        monkeypatch.setattr(tables, "_CHUNK", chunk)
        for data in (real, spaced) if chunk >= 64 else (spaced,):  # tiny chunks re-read a cut entry each time
            want = json.loads(data)["trial_data"]
            assert list(tables.state_entries(data)) == want
            assert list(tables.state_entries(data.decode())) == want
            assert list(tables.state_entries(pa.BufferReader(data))) == want
    for data, chunk, cuts in ((spaced, 5, range(len(spaced))),  # every cut of the small one, in tiny chunks
                              (real, 512, [*range(0, len(real), len(real) // 40), *range(len(real) - 120, len(real))])):
        monkeypatch.setattr(tables, "_CHUNK", chunk)
        for cut in cuts:
            with pytest.raises(ValueError):
                list(tables.state_entries(data[:cut]))
    for other in (b'[1, 2]', b'{"trial_data": 5}', b'{"runner_data": {}}'):
        with pytest.raises(tables._Shape):
            list(tables.state_entries(other))
    assert list(tables.state_entries(b'{"runner_data": {}, "trial_data": [["a", "b"]]}')) == [["a", "b"]]
