"""Packed trials in a study (``pack: K``) on real Ray: the tables, status and report see members, not packs; a
packed study has the logical trials, configurations and outcomes of the same study unpacked, and equal curves in
float64; a pack resumed after SIGKILL of the driver ends bit-identical; what cannot decide per member is refused."""
import os
import signal
import subprocess
import sys
import time

import pytest

from benchmarks.stress_resume import kill_group
from conftest import ROOT, run_cli, run_study, write_space
from orchestrator.results.report import load_study
from orchestrator.results.tables import load_trials
from orchestrator.spec.space import SpaceError, parse_space
from orchestrator.studydir.storage import Storage

SPACE = """
name: packed
pack: 4
space:
  cell: {grid: [rnn, gru]}
  lr: {grid: [0.001, 0.01, 0.05]}
  digits: 2
  hidden: 12
  iters: 60
  eval_every: 20
  eval_size: 100
  batch_size: 32
  dtype: float64
repeats: 2
checkpoint_every: 1
"""
KEY = ["cell", "lr", "seed"]


def _by_config(study):
    return study.trials.set_index(KEY).sort_index()


def _curves(study):
    """Every report, indexed by the member's configuration (cell, its lr, seed) and iteration."""
    configs = study.trials[["trial_id"] + KEY].rename(columns={"lr": "config_lr"})
    m = study.metrics.merge(configs, on="trial_id")
    return m.set_index(["cell", "config_lr", "seed", "iter"]).sort_index()


def test_a_packed_study_has_the_trials_of_the_unpacked_one(ray_local, tmp_path):
    space = write_space(tmp_path / "p.yaml", SPACE)
    packed = run_study(space, tmp_path / "res", "packed")
    assert packed.states == {"TERMINATED": 12}  # members, in four packs: rnn 4 + 2, gru 4 + 2
    lone = run_study(write_space(tmp_path / "l.yaml", SPACE.replace("pack: 4", "pack: 1")), tmp_path / "res", "lone")
    assert lone.states == {"TERMINATED": 12}
    a, b = load_study("packed", str(tmp_path / "res")), load_study("lone", str(tmp_path / "res"))
    A, B = _by_config(a), _by_config(b)
    assert len(A) == 12 and list(A.index) == list(B.index)
    assert list(A.config_id) == list(B.config_id) and list(A.outcome) == list(B.outcome)
    assert set(A.kernel_ran) == {"packed"} and B.pack.isna().all()
    sizes = A.groupby("pack").size().sort_values().tolist()
    assert sizes == [2, 2, 4, 4] and (A.reset_index().groupby("pack").cell.nunique() == 1).all()
    assert all(t.startswith(p + "-") for t, p in zip(A.trial_id, A.pack))
    ca, cb = _curves(a), _curves(b)
    assert list(ca.index) == list(cb.index) and len(ca) == 36
    assert (abs(ca.loss - cb.loss) <= 1e-9 * (1 + abs(cb.loss))).all(), (ca.loss - cb.loss).abs().max()
    # status and report read members as trials
    p = run_cli("status", "packed", "--storage", tmp_path / "res", check=0)
    assert "12/12" in p.stdout
    p = run_cli("report", "packed", "--storage", tmp_path / "res", check=0)
    assert "trials.parquet" in p.stdout and (tmp_path / "res" / "packed" / "report.html").is_file()


def _reports_of(storage, name):
    study = load_study(name, str(storage))
    return _curves(study)[["loss", "exact_acc", "digit_acc", "lr"]]


def test_a_packed_study_resumed_after_sigkill_ends_bit_identical(ray_local, tmp_path):
    text = SPACE.replace("iters: 60", "iters: 200").replace("lr: {grid: [0.001, 0.01, 0.05]}", "lr: {grid: [0.01]}")
    space = write_space(tmp_path / "p.yaml", text)  # 4 trials in 2 packs of 2, a checkpoint every 20 iterations
    run_study(space, tmp_path / "ref", "p")
    storage = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "p", "--storage",
                             str(storage)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((storage / "p").glob("trial_*/checkpoint_000002")):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    kill_group(proc)
    st = Storage.open(storage)
    assert any(t["state"] != "terminated" for t in load_trials(st, "p")), "killed too late: nothing to resume"
    run_cli("resume", "p", "--storage", storage, check=0, cwd=tmp_path)
    got, want = _reports_of(storage, "p"), _reports_of(tmp_path / "ref", "p")
    assert list(got.index) == list(want.index) and len(got) == 40
    assert got.equals(want), (got - want).abs().max()


def test_what_decides_per_tune_trial_is_refused_with_packs(tmp_path):
    base = SPACE.replace("repeats: 2\n", "")
    cases = {
        "scheduler: {type: asha, max_t: 60, grace_period: 20}\n": "the asha scheduler decides per Tune trial",
        "search: {type: optuna}\n": "optuna learns from one result per Tune trial",
        "stop: {exact_acc: 0.9}\n": "a stop rule (exact_acc) ends a whole Tune trial",
        "tracking: {mlflow: 'http://127.0.0.1:5000'}\n": "MLflow tracking logs one run per Tune trial",
    }
    for extra, why in cases.items():
        text = base + extra
        if "optuna" in extra:
            text = text.replace("{grid: [rnn, gru]}", "{choice: [rnn, gru]}").replace(
                "{grid: [0.001, 0.01, 0.05]}", "{loguniform: [0.001, 0.05]}")
        with pytest.raises(SpaceError, match="pack: " + why.split("(")[0].rstrip()):
            parse_space(text, "p.yaml")
    with pytest.raises(SpaceError, match="pack: must be >= 1, got 0"):
        parse_space(SPACE.replace("pack: 4", "pack: 0"), "p.yaml")
    asha = write_space(tmp_path / "a.yaml", SPACE.replace("pack: 4\n", "") +
                       "scheduler: {type: asha, max_t: 60, grace_period: 20}\n")
    p = run_cli("sweep", asha, "--pack", "8", "--storage", tmp_path / "res", check=2)
    assert p.stderr.strip().splitlines()[-1].startswith("adder-sweep sweep: error: --pack 8: the asha scheduler")
    assert not (tmp_path / "res").exists()


def test_extending_a_packed_study_packs_new_seeds_and_continues_members_bit_identically(ray_local, tmp_path):
    """More seeds make new packs; a larger iters continues every pack from its last checkpoint, and each member's
    curve then equals the same packed study run to the larger budget from the start."""
    from orchestrator import extend

    text = SPACE.replace("repeats: 2\n", "").replace("lr: {grid: [0.001, 0.01, 0.05]}", "lr: {grid: [0.01, 0.05]}")
    run_study(write_space(tmp_path / "p.yaml", text), tmp_path / "res", "p")  # 4 trials, one pack per cell
    r = extend("p", storage=str(tmp_path / "res"), repeats=2)
    assert r.states == {"TERMINATED": 8} and len(r.extension.new) == 4  # the new seeds: one more pack per cell
    study = load_study("p", str(tmp_path / "res"))
    assert len(study.trials) == 8 and study.trials.pack.nunique() == 4 and set(study.trials.outcome) == {"budget"}
    r = extend("p", storage=str(tmp_path / "res"), overrides=("iters=100",))
    assert len(r.extension.continued) == 8 and len(r.extension.packs) == 4 and r.ok
    run_study(write_space(tmp_path / "long.yaml", text.replace("iters: 60", "iters: 100") + "repeats: 2\n"),
              tmp_path / "ref", "p")
    got, want = _curves(load_study("p", str(tmp_path / "res"))), _curves(load_study("p", str(tmp_path / "ref")))
    assert list(got.index) == list(want.index) and len(got) == 8 * 5
    assert got[["loss", "exact_acc", "digit_acc", "lr"]].equals(want[["loss", "exact_acc", "digit_acc", "lr"]])
    trials = _by_config(load_study("p", str(tmp_path / "res")))
    assert len(trials) == 8 and set(trials.generation) == {2} and set(trials.iters_run) == {100}
