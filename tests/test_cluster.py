"""Connecting to clusters and exit codes (orchestrator/cluster.py, orchestrator/study.py, sweep_cmd.finish), on
real Ray: clusters started with `ray start --head` as users start them, each with its own temp dir and token file."""
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cluster import load_runtime_env, resolve_address, trial_runtime_env
from orchestrator.errors import UserError
from orchestrator.results.tables import error_line
from tests.conftest import ROOT, run_cli, write_space

BIN = Path(sys.executable).parent
TINY = """\
# tiny study for the cluster tests
name: tiny
space:
  cell: {grid: [rnn, gru]}
  digits: 3
  iters: 40
  eval_every: 20
  eval_size: 100
  target: 1.5
checkpoint_every: 1
"""


# -- pieces ------------------------------------------------------------------------------------------------------
def test_address_comes_from_the_flag_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None  # embedded
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve_address(None) == "10.0.0.1:6379"  # what `ray job submit` sets for the driver
    assert resolve_address("auto") == "auto"


def test_runtime_env_ships_the_code_and_merges_with_the_jobs(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.delenv("RAY_OVERRIDE_JOB_RUNTIME_ENV", raising=False)
    env = trial_runtime_env({"env_vars": {"A": "1"}}, ship_code=True)
    assert env["py_modules"] == [str(ROOT / "trainables")] and env["env_vars"] == {"A": "1"}
    assert trial_runtime_env(None, ship_code=False) == {}
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "py_modules": ["gcs://_ray_pkg_y.zip"],
                           "env_vars": {"A": "job", "B": "2"}, "pip": ["scipy"]}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    merged = trial_runtime_env({"env_vars": {"A": "1"}, "pip": ["rich"]}, ship_code=True)
    assert merged["working_dir"] == "gcs://_ray_pkg_x.zip"  # the job's own fields stay
    assert merged["py_modules"] == ["gcs://_ray_pkg_y.zip", str(ROOT / "trainables")]
    assert merged["env_vars"] == {"A": "1", "B": "2"} and merged["pip"] == ["scipy", "rich"]
    assert os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    with pytest.raises(UserError, match="--runtime-env working_dir: the Ray job this driver runs in sets working_dir"):
        trial_runtime_env({"working_dir": "/elsewhere"}, ship_code=True)


def test_runtime_env_flag_errors(tmp_path):
    assert load_runtime_env('{"pip": ["scipy"]}') == {"pip": ["scipy"]}
    f = tmp_path / "env.yaml"
    f.write_text("env_vars:\n  X: '1'\n")
    assert load_runtime_env(str(f)) == {"env_vars": {"X": "1"}}
    with pytest.raises(UserError, match="neither a JSON object nor a file"):
        load_runtime_env("nope.json")
    with pytest.raises(UserError, match="unknown runtime_env field 'pips' \\(did you mean 'pip'\\?\\)"):
        load_runtime_env('{"pips": []}')
    with pytest.raises(UserError, match="--runtime-env: not valid JSON/YAML"):
        load_runtime_env('{"pip": [}')


def test_error_line_is_the_exception_not_rays_header():
    text = ("Failure # 1 (occurred at 2026-11-30_10-00-00)\nray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)\n"
            "  File \"x.py\", line 3, in f\n    raise RuntimeError('boom')\nRuntimeError: device cuda was requested\n")
    assert error_line(text) == "RuntimeError: device cuda was requested"
    died = "Failure # 1 (occurred at x)\nThe actor died unexpectedly before finishing this task.\n\tclass_name: X\n"
    assert error_line(died) == "The actor died unexpectedly before finishing this task."


# -- exit codes on the embedded Ray ------------------------------------------------------------------------------
def test_a_trial_in_error_makes_the_sweep_exit_1_naming_it(ray_local, tmp_path, capsys):
    space = write_space(tmp_path / "err.yaml", TINY.replace("  digits: 3\n", "  digits: 3\n  device: "
                                                             "{grid: [cpu, cuda]}\n") + "max_failures: 0\n")
    assert main(["sweep", str(space), "--storage", str(tmp_path), "--name", "err"]) == 1
    out = capsys.readouterr()
    err = out.err
    assert "adder-sweep sweep: 2 trials ended in error:" in err
    lines = [l for l in err.splitlines() if "device=" in l]
    assert len(lines) == 2 and all("device=cuda" in l for l in lines), lines
    assert all("RuntimeError: device cuda was requested but torch sees no CUDA device" in l for l in lines)
    error_file = err.split("full error: ")[1].splitlines()[0]
    assert Path(error_file).is_file() and "device cuda" in Path(error_file).read_text()
    assert "adder-sweep resume err" in err and "Study page:" not in out.out


def test_sigterm_stops_like_ctrl_c_exits_143_and_resumes(ray_local, tmp_path):
    space = write_space(tmp_path / "long.yaml", TINY.replace("iters: 40", "iters: 400").replace(
        "  cell: {grid: [rnn, gru]}", "  cell: {grid: [rnn, gru]}\n  seed: {grid: [0, 1]}"))
    storage = tmp_path / "res"
    storage.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "term",
                             "--storage", str(storage)], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any((storage / "term").glob("trial_*/checkpoint_*")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err[-3000:]
    assert "Study term was stopped by SIGTERM. Resume it with:" in err
    assert f"adder-sweep resume term --storage {storage}" in err
    p = run_cli("resume", "term", "--storage", storage, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "4/4 trials: 4 terminated" in p.stdout


def test_two_sweeps_racing_for_one_name_one_runs_the_other_exits_2(tmp_path):
    space = write_space(tmp_path / "race.yaml", TINY)
    storage = tmp_path / "res"
    storage.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "same",
                               "--storage", str(storage)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.communicate()[1]) for p in procs)
    assert [rc for rc, _ in results] == [0, 2], results
    assert "study 'same' already exists" in results[1][1]
    assert len(list((storage / "same").glob("trial_*"))) == 2  # one study's trials, not two


# -- real clusters started with `ray start --head` -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """`ray start --head --block` on loopback, in its own process group, with its own temp dir and token file."""

    def __init__(self, base: Path, token_mode: bool):
        self.base, self.port = base, _free_port()
        self.token = base / "cluster_token"
        self.token.write_text(secrets.token_hex(32))
        temp = Path(__import__("tempfile").mkdtemp(prefix="adt", dir="/tmp"))  # short: Ray's sockets live there
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token" if token_mode else "disabled", RAY_AUTH_TOKEN_PATH=str(self.token))
        self.log = open(base / "head.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
             str(self.port), "--num-cpus", "2", "--temp-dir", str(temp), "--include-dashboard", "false",
             "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port()),
             "--ray-client-server-port", str(_free_port()), "--metrics-export-port", str(_free_port())],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.temp = temp
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, (base / "head.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the raylet registers after the GCS listens

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import shutil

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=40)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _driver_env(token_file: Path, **extra) -> dict:
    """A user's shell after `make sweep`: this machine has a Ray token file, RAY_AUTH_MODE is not set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_TOKEN_PATH=str(token_file), **extra)
    return env


@pytest.mark.parametrize("token_mode", [False, True], ids=["cluster-without-token", "cluster-with-token"])
def test_ray_start_cluster_via_ray_address_with_auth_detected(tmp_path, token_mode):
    """The issue's silent failure: a machine with a token file, a cluster with or without token auth. The driver
    takes the cluster from RAY_ADDRESS and connects as the cluster needs; every trial finishes."""
    head = Head(tmp_path, token_mode)
    try:
        space = write_space(tmp_path / "tiny.yaml", TINY)
        mine = tmp_path / "my_token"
        mine.write_text(head.token.read_text() if token_mode else secrets.token_hex(32))
        storage = tmp_path / "res"
        storage.mkdir()
        p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "c",
                            "--storage", str(storage)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env=_driver_env(mine, RAY_ADDRESS=head.address))
        assert p.returncode == 0, p.stderr[-3000:]
        assert "2/2 trials: 2 terminated" in p.stdout
        record = json.loads((storage / "c" / "adder_study.json").read_text())
        assert record["address"] == head.address
        assert record["runs"][0]["auth"] == ("token" if token_mode else "disabled")
        if token_mode:  # and without the cluster's token: one line with the variable to set, nothing created
            p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "d",
                                "--storage", str(storage), "--address", head.address], capture_output=True,
                               text=True, timeout=120, cwd=tmp_path, env=_driver_env(tmp_path / "no_token"))
            assert p.returncode == 2, p.stderr
            assert "uses token authentication and this machine has no token; set RAY_AUTH_TOKEN" in p.stderr
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert not (storage / "d").exists()
    finally:
        head.stop()


def test_the_tests_never_touch_the_users_ray_token(ray_local):
    """conftest gives this test process its own token file; a local ray.init() must not write ~/.ray."""
    assert os.environ["RAY_AUTH_TOKEN_PATH"].startswith(os.environ["ADDER_SWEEP_TEST_TOKEN_DIR"])
    assert Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file()
