"""Study storage (orchestrator/studydir/storage.py) on an S3 server: pyarrow's URI query form
(``s3://bucket/dir?endpoint_override=...``) end to end -- sweep, status, report, compare, resume -- with the query
kept out of every path. The S3 server is moto, started on loopback by the test."""
import os
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
    yield endpoint, fs
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def _cli(*args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_endpoint_override_uri_works_for_every_command(s3, tmp_path):
    endpoint, fs = s3
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
