"""MLflow tracking (orchestrator/tune/tracking.py) against a real MLflow server and real Ray, through the CLI: one run
per logical trial whose metric history equals metrics.parquet, kept by an interrupted study's resume and by
extend (continued trials get only their new steps, new trials new runs); a server down at launch refused before
anything is written; a server lost mid-study costs the copy, never the study. Plus the study-file key's checks.

The server runs from a venv of its own (``make test`` builds .venv-mlflow: mlflow's server pins a pyarrow older than
the project's), the client is mlflow-skinny in the project's venv."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.spec.space import parse_space
from tests.conftest import ROOT, require, run_cli, write_space

SERVER = Path(os.environ.get("ADDER_SWEEP_MLFLOW_SERVER", ROOT / ".venv-mlflow" / "bin" / "mlflow"))
LEARNING = ("loss", "exact_acc", "digit_acc", "lr")  # equal to the tables' even for replayed steps
# target 1.5 never solves: every trial ends on its budget and can be continued by extend. No checkpoint before the
# last report: a trial interrupted mid-run starts again from iteration 0 on resume and replays every step it logged.
STUDY = """\
# two tracked trials, long enough to be interrupted
name: tracked
checkpoint_every: 1000
max_concurrent: 2
space:
  cell: {grid: [rnn, gru]}
  digits: 3
  iters: ITERS
  eval_every: 20
  eval_size: 100
  batch_size: 32
  target: 1.5
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An MLflow tracking server on a free port, in its own process group (it starts a uvicorn child), stopped
    by that group's id."""

    def __init__(self, folder: Path, port: int | None = None):
        self.folder, self.port = folder, port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> "Server":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(SERVER), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--default-artifact-root", str(self.folder / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # its job runner (a pool of task consumers) serves features no test uses, on 2 shared cores
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        log_tail = (self.folder / "server.log").read_text()[-3000:]
        raise AssertionError(f"MLflow server not up in {timeout} s: {log_tail}")

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the server's process group, children included (they may outlive the parent's SIGTERM)."""
        if self.proc is None:
            return
        deadline = time.monotonic() + 15
        try:
            os.killpg(self.proc.pid, sig)
            while time.monotonic() < deadline:
                os.killpg(self.proc.pid, 0)  # raises once no process of the group is left
                self.proc.poll()
                time.sleep(0.2)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(15)

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)


def _require_client() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        require(False, "mlflow-skinny is not installed (pip install -e '.[dev]')")


def _require_server() -> None:
    _require_client()
    require(SERVER.exists(), f"no MLflow server at {SERVER}: `make test` builds .venv-mlflow (or set "
                             "ADDER_SWEEP_MLFLOW_SERVER to an `mlflow` executable)")


@pytest.fixture
def server(tmp_path):
    _require_server()
    s = Server(tmp_path / "mlflow").start()
    try:
        yield s
    finally:
        s.stop()


def _runs(client, study: str) -> dict:
    """trial_id tag -> run, failing on a duplicate."""
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment {study}"
    out = {}
    for run in client.search_runs([experiment.experiment_id]):
        tid = run.data.tags["trial_id"]
        assert tid not in out, f"two runs for trial {tid}"
        out[tid] = run
    return out


def _history(client, run, key: str) -> list:
    steps = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
    assert len({s for s, _ in steps}) == len(steps), f"{run.data.tags['trial_id']}: a step logged twice: {steps}"
    return sorted(steps)


def _check_against_tables(client, study_dir: Path) -> dict:
    """Every trial of trials.parquet has exactly one run, whose params, tags and metric history are the study's
    own; returns the runs by trial id."""
    trials = pd.read_parquet(study_dir / "trials.parquet")
    metrics = pd.read_parquet(study_dir / "metrics.parquet")
    runs = _runs(client, study_dir.name)
    assert sorted(runs) == sorted(trials.trial_id)
    for row in trials.itertuples():
        run = runs[row.trial_id]
        tags, params = run.data.tags, run.data.params
        assert tags["study"] == study_dir.name and tags["generation"] == str(row.generation)
        assert tags["seed"] == str(row.seed) and tags["outcome"] == row.outcome == "budget"
        assert run.info.status == "FINISHED"
        assert params["cell"] == row.cell and params["digits"] == str(row.digits)
        # MLflow keeps a param's first value: the budget a continued trial has now is a tag
        assert tags.get("iters", params["iters"]) == str(row.iters)
        curve = metrics[metrics.trial_id == row.trial_id].sort_values("iter")
        for key in LEARNING:
            assert _history(client, run, key) == list(zip(curve["iter"], curve[key])), (row.trial_id, key)
        assert [s for s, _ in _history(client, run, "time_s")] == list(curve["iter"])
    return runs


def _wait_for(predicate, timeout: float, proc) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if predicate():
                return True
        except Exception:  # the experiment does not exist yet
            pass
        time.sleep(0.5)
    return False


def _steps(client, study: str) -> dict:
    """trial id -> steps its run has logged so far."""
    return {t: [s for s, _ in _history(client, r, "loss")] for t, r in _runs(client, study).items()}


def _states(storage: Path, study: str) -> dict:
    from orchestrator.results.tables import load_trials
    from orchestrator.studydir.storage import Storage

    return {t["trial_id"]: t["state"] for t in load_trials(Storage.open(str(storage)), study)}


def _sweep(space: Path, storage: Path, name: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--storage", str(storage),
                             "--name", name, *args], cwd=storage, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_interrupted_resumed_and_extended_study_keeps_one_run_per_trial(server, tmp_path):
    space = write_space(tmp_path / "tracked.yaml",
                        STUDY.replace("ITERS", "800") + f"tracking: {{mlflow: {server.uri}}}\n")
    storage = tmp_path / "res"
    storage.mkdir()
    client = server.client()

    # Ctrl-C once a run has a few steps: an unfinished trial's run stays RUNNING for resume, which continues it
    proc = _sweep(space, storage, "tr")
    assert _wait_for(lambda: max(map(len, _steps(client, "tr").values())) >= 3, 120, proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    cut, states, logged = _runs(client, "tr"), _states(storage, "tr"), _steps(client, "tr")
    for tid, run in cut.items():
        done = states[tid] == "terminated"
        assert (run.info.status, run.data.tags["outcome"]) == (("FINISHED", "budget") if done else
                                                                ("RUNNING", "running")), tid
    assert any(states[t] != "terminated" and logged[t] for t in cut), (states, logged)  # something to replay

    # the study's own server; the restarted trials replay steps their runs have: each is logged once
    p = run_cli("resume", "tr", "--storage", storage, cwd=tmp_path, check=0)
    assert f"in MLflow experiment tr at {server.uri}" in p.stdout, p.stdout[-2000:]
    runs = _check_against_tables(client, storage / "tr")
    assert {t: r.info.run_id for t, r in runs.items()} == {t: r.info.run_id for t, r in cut.items()}

    # continued trials (seed 0, budget 800 -> 880) keep their runs and get the new steps; seed 1 is two new runs
    p = run_cli("extend", "tr", "--storage", storage, "--set", "iters=880", "--repeats", "2", cwd=tmp_path, check=0)
    assert "Tracking: 4 runs" in p.stdout, p.stdout[-2000:]
    after = _check_against_tables(client, storage / "tr")
    assert len(after) == 4
    for tid, run in runs.items():
        assert after[tid].info.run_id == run.info.run_id
        assert after[tid].data.tags["generation"] == "1" and after[tid].data.params["iters"] == "800"
        assert [s for s, _ in _history(client, after[tid], "loss")][-5:] == [800, 820, 840, 860, 880]
    new = set(after) - set(runs)
    assert len(new) == 2 and all(after[t].data.tags["seed"] == "1" for t in new)


def test_server_down_at_launch_is_refused_before_anything_is_written(tmp_path):
    _require_client()  # no server at all: a free port
    uri = f"http://127.0.0.1:{_free_port()}"
    space = write_space(tmp_path / "tracked.yaml", STUDY.replace("ITERS", "40"))
    storage = tmp_path / "res"
    storage.mkdir()
    p = run_cli("sweep", space, "--storage", storage, "--name", "down", "--mlflow", uri, cwd=tmp_path, check=2)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and uri in lines[0] and "does not answer" in lines[0], p.stderr
    assert list(storage.iterdir()) == []


def test_server_lost_mid_study_costs_the_copy_not_the_study(tmp_path):
    _require_server()
    server = Server(tmp_path / "mlflow").start()
    try:
        space = write_space(tmp_path / "tracked.yaml", STUDY.replace("ITERS", "800"))
        storage = tmp_path / "res"
        storage.mkdir()
        client = server.client()
        proc = _sweep(space, storage, "lost", "--mlflow", server.uri)
        assert _wait_for(lambda: max(map(len, _steps(client, "lost").values())) >= 2, 120, proc), proc.communicate()
        server.stop(signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
        assert f"the MLflow server at {server.uri} stopped answering" in err
        trials = pd.read_parquet(storage / "lost" / "trials.parquet")
        assert set(trials.outcome) == {"budget"}
        head = [x for x in err.splitlines() if "missed metrics" in x]
        assert len(head) == 1 and f"experiment lost at {server.uri}" in head[0], err[-3000:]
        listed = dict(re.findall(r"^  (\S+) \(run (?:[0-9a-f]+|not created)\): \d+ reports? not logged "
                                 r"\(iter (\d+)", err, re.M))
        assert listed and set(listed) <= set(trials.trial_id), err[-3000:]

        # what the message says was not logged is exactly what the server lacks (a trial that ended before the
        # server was lost has everything, and its end)
        server.start()
        metrics = pd.read_parquet(storage / "lost" / "metrics.parquet")
        runs = _runs(client, "lost")
        for tid in trials.trial_id:
            steps = list(metrics[metrics.trial_id == tid].sort_values("iter")["iter"])
            logged = [s for s, _ in _history(client, runs[tid], "loss")] if tid in runs else []
            if tid in listed:
                assert logged == [s for s in steps if s < int(listed[tid])], (tid, listed[tid])
                assert tid not in runs or runs[tid].info.status == "RUNNING"  # its end never reached the server
            else:
                assert logged == steps and runs[tid].info.status == "FINISHED", tid
    finally:
        server.stop()


@pytest.mark.parametrize("text, key, message", [
    ("tracking: {mlfow: http://h:5000}", "tracking.mlfow", "unknown tracker (did you mean 'mlflow'?)"),
    ("tracking: http://h:5000", "tracking", "must be a mapping like {mlflow: http://127.0.0.1:5000}"),
    ("tracking: {mlflow: 5000}", "tracking.mlflow", "must be the tracking server's URI as a string"),
    ("trackng: {mlflow: http://h:5000}", "trackng", "unknown study key (did you mean 'tracking'?)"),
])
def test_tracking_key_is_checked_like_the_others(text, key, message):
    from orchestrator.spec.space import SpaceError

    with pytest.raises(SpaceError) as info:
        parse_space(f"{text}\nspace: {{iters: 40}}\n", "t.yaml")
    assert info.value.problems == [(key, info.value.problems[0][1])] and message in str(info.value)


def test_tracking_is_not_part_of_the_space():
    """A study's fingerprint (what resume checks) ignores where it is tracked; --mlflow replaces or turns off."""
    a = parse_space("space: {iters: 40}\n", "t.yaml")
    b = parse_space("tracking: {mlflow: http://h:5000}\nspace: {iters: 40}\n", "t.yaml")
    assert b.tracking == {"mlflow": "http://h:5000"} and a.space_fingerprint() == b.space_fingerprint()
    assert b.with_tracking("off").tracking == {} and a.with_tracking("http://x:1").tracking == {"mlflow": "http://x:1"}
    assert b.with_tracking(None) is b
