"""The notebook API (``from orchestrator import sweep, load_study``) and docs/analysis.py, which launches a real
study through the API in a fresh interpreter and analyses it; the other tests read that study."""
import os
import shutil
import stat
import subprocess
import sys
import time

import pytest

from orchestrator import load_study
from tests.conftest import ROOT

STUDY = """\
# analysis doc study
name: ana
repeats: 2
space:
  cell: {grid: [rnn, gru]}
  digits: 3
  iters: 200
  eval_every: 20
  eval_size: 100
  target: 0.5
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """docs/analysis.py --sweep: the study run through the API (its own embedded Ray), then analysed."""
    root = tmp_path_factory.mktemp("analysis")
    (root / "ana.yaml").write_text(STUDY)
    p = subprocess.run([sys.executable, str(ROOT / "docs" / "analysis.py"), "--sweep", str(root / "ana.yaml"),
                        "--name", "ana", "--storage", str(root)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return root, p


@pytest.fixture(scope="module")
def root(launched):
    root, p = launched
    assert p.returncode == 0, p.stderr[-3000:]
    return root


def test_docs_analysis_runs(launched):
    _, p = launched
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ran ana: {'TERMINATED': 4}" in p.stdout and "best configuration over 2 seeds" in p.stdout
    assert "ana: 4 trials, swept cell" in p.stdout and "best trial" in p.stdout
    assert "first iteration at >= 50% exact accuracy" in p.stdout
    assert "mean_iters_to_solve" in p.stdout  # the duckdb part ran


def test_api_reads_without_writing_and_rebuilds_stale_tables_in_memory(root, tmp_path):
    copy = tmp_path / "ro"
    shutil.copytree(root / "ana", copy / "ana")
    s = load_study("ana", str(copy))
    assert len(s.trials) == 4 and set(s.curves("loss").columns) == {"trial_id", "iter", "value"}
    assert s.config(s.trials["trial_id"][0])["digits"] == 3
    best = s.best()
    assert best["trial_id"] in set(s.trials["trial_id"])
    assert s.best(by="loss")["best_loss"] == s.trials["best_loss"].min()
    with pytest.raises(KeyError, match="not a column of metrics.parquet"):
        s.curves("accuracy")
    # tables gone, a trial file newer than the tables, and the whole copy read-only: built in memory, nothing written
    (copy / "ana" / "metrics.parquet").unlink()
    result = next((copy / "ana").glob("trial_*/result.json"))
    time.sleep(0.01)
    result.touch()
    for p in [copy / "ana", *(copy / "ana").rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = sorted(p.name for p in (copy / "ana").iterdir())
        again = load_study("ana", str(copy))
        assert len(again.trials) == 4 and len(again.metrics) == len(s.metrics)
        assert sorted(p.name for p in (copy / "ana").iterdir()) == before
    finally:
        for p in [copy / "ana", *(copy / "ana").rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_stale_tables_are_not_trusted(root, tmp_path):
    import pyarrow.parquet as pq

    from orchestrator.results import tables
    from orchestrator.studydir.storage import Storage

    copy = tmp_path / "c"
    shutil.copytree(root / "ana", copy / "ana")
    st = Storage.open(copy)
    assert tables.tables_are_current(st, "ana")
    path = copy / "ana" / "trials.parquet"
    pq.write_table(pq.read_table(path).slice(0, 1), path)  # a table that differs from what Ray wrote
    assert tables.read_tables(st, "ana")[0].num_rows == 1  # current: trusted as it is
    result = next((copy / "ana").glob("trial_*/result.json"))
    future = time.time() + 60
    os.utime(result, (future, future))
    assert not tables.tables_are_current(st, "ana")
    assert tables.read_tables(st, "ana")[0].num_rows == 4  # stale: rebuilt from the trial files
    assert pq.read_table(path).num_rows == 1  # and nothing written
