"""Study storage (orchestrator/studydir/storage.py) on an S3 server: pyarrow's URI query form
(``s3://bucket/dir?endpoint_override=...``) end to end -- sweep, status, report, compare, resume -- with the query
kept out of every path. The S3 server is moto, started on loopback by the test."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.studydir.storage import Storage, study_location
from tests.conftest import ROOT, require, write_space

MOTO = Path(sys.executable).parent / "moto_server"
TINY = """\
# tiny study on S3
name: s3
space:
  cell: {grid: [rnn, gru]}
  digits: 3
  iters: 40
  eval_every: 20
  eval_size: 100
  target: 1.5
checkpoint_every: 1
"""


def test_uri_query_stays_out_of_paths():
    s = Storage.open("s3://bucket/studies?endpoint_override=http://127.0.0.1:9&region=us-east-1")
    assert s.path == "bucket/studies" and s.ray_path == "bucket/studies" and s.ray_filesystem is s.fs
    assert s.uri("q", "trials.parquet") == ("s3://bucket/studies/q/trials.parquet?endpoint_override="
                                             "http://127.0.0.1:9&region=us-east-1")
    st, name = study_location("s3://bucket/studies/q?endpoint_override=http://127.0.0.1:9&region=us-east-1", ".")
    assert name == "q" and st.path == "bucket/studies" and st.query.startswith("endpoint_override=")
    assert Storage.open("/tmp").ray_filesystem is None


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    require(MOTO.exists(), "needs moto_server (pip install 'moto[server]': the dev extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    import pyarrow.fs as pafs

    endpoint = f"http://127.0.0.1:{port}"
    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("studies")
    yield endpoint, fs, proc
    os.kill(proc.pid, signal.SIGCONT)  # (a test that froze it may have failed before thawing it)
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_endpoint_override_uri_works_for_every_command(s3, tmp_path):
    endpoint, fs, _ = s3
    uri = f"s3://studies?endpoint_override={endpoint}&region=us-east-1"
    space = write_space(tmp_path / "s3.yaml", TINY)
    p = _cli("sweep", str(space), "--storage", uri, "--name", "q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    import pyarrow.fs as pafs

    names = {i.base_name for i in fs.get_file_info(pafs.FileSelector("studies/q"))}
    assert {"tuner.pkl", "adder_study.json", "trials.parquet", "metrics.parquet"} <= names, names
    assert not [i for i in fs.get_file_info(pafs.FileSelector("studies", recursive=True)) if "endpoint" in i.path]
    assert f"adder-sweep report q --storage '{uri}'" in p.stdout  # the command to type next keeps the query

    p = _cli("status", "--storage", uri, cwd=tmp_path)
    assert p.returncode == 0 and "q " in p.stdout and "no (complete)" in p.stdout, p.stdout + p.stderr
    p = _cli("report", "q", "--storage", uri, "--no-plots", cwd=tmp_path)
    assert p.returncode == 0 and "trials: 2/2" in p.stdout, p.stderr[-2000:]
    p = _cli("compare", "q", f"s3://studies/q?endpoint_override={endpoint}&region=us-east-1", "--storage", uri,
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    p = _cli("resume", "q", "--storage", uri, cwd=tmp_path)  # Ray restores from the right path: nothing left to run
    assert p.returncode == 0 and "2/2 trials: 2 terminated" in p.stdout, p.stderr[-3000:]
    p = _cli("board", "q", "--storage", uri, "--check", cwd=tmp_path)
    assert p.returncode == 2 and "needs the study on a local disk" in p.stderr, p.stderr


def _final_by_config(study) -> dict:
    """stress_resume.final_by_config of a study read through load_study (any storage)."""
    m = study.metrics.merge(study.trials[["trial_id", "cell", "seed"]], on="trial_id")
    out = {}
    for (cell, seed), rows in m.sort_values("iter").groupby(["cell", "seed"]):
        last = rows.iloc[-1]
        out[(cell, int(seed))] = {k: (last[k].item() if hasattr(last[k], "item") else last[k])
                                  for k in ("iter", "loss", "exact_acc", "digit_acc", "lr", "status")}
    return out


def test_a_storage_outage_of_30_s_mid_study_loses_nothing(s3, stress_reference, tmp_path):
    """The S3 server frozen (SIGSTOP) for 30 s while trials checkpoint to it, then thawed: the study either rides it
    out (exit 0) or stops with one line (exit 1 or 2) and `resume` completes it; either way every trial's curve is
    whole -- each evaluation once, none missing -- and the final numbers equal an uninterrupted study's."""
    from benchmarks.stress_resume import EVAL_EVERY, SPACE

    from orchestrator.results.report import load_study

    endpoint, fs, moto = s3
    uri = f"s3://studies?endpoint_override={endpoint}&region=us-east-1"
    space = write_space(tmp_path / "stress.yaml", SPACE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--storage", uri, "--name",
                             "outage"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    import pyarrow.fs as pafs

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = fs.get_file_info(pafs.FileSelector("studies/outage", recursive=True, allow_not_found=True))
        if any(i.base_name == "checkpoint_000002" for i in found):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the study ended before the outage"
    os.kill(moto.pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        time.sleep(30)
    finally:
        os.kill(moto.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=600)
    print(f"outage: sweep exit {proc.returncode}, {time.time() - frozen_at:.0f} s after the freeze")
    if proc.returncode != 0:
        assert proc.returncode in (1, 2), err[-3000:]
        assert "adder-sweep resume outage" in err, err[-3000:]
        p = _cli("resume", "outage", "--storage", uri, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    study = load_study(uri.replace("s3://studies", "s3://studies/outage"), refresh=True)
    assert set(study.trials.state) == {"terminated"} and len(study.trials) == 4
    for tid, rows in study.metrics.groupby("trial_id"):
        assert list(rows.sort_values("iter")["iter"]) == list(range(EVAL_EVERY, 401, EVAL_EVERY)), tid
    assert _final_by_config(study) == stress_reference
