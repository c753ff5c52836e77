"""Connecting to clusters and exit codes (orchestrator/cluster/connect.py, orchestrator/tune/study.py, orchestrator/cli/sweep.py finish), on
real Ray: clusters started with `ray start --head` as users start them, each with its own temp dir and token file."""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.cluster.connect import load_runtime_env, resolve_address, trial_runtime_env
from orchestrator.errors import UserError
from orchestrator.results.tables import error_line
from tests.conftest import ROOT, write_space

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


def test_probe_explains_a_node_listed_alive_that_takes_no_tasks():
    """Seen in the two-host test: a probe right after a host's Ray was SIGKILLed, while the GCS still listed the
    node alive. Ray's own words were 'The task is not schedulable: ... soft=False was specified'."""
    from orchestrator.cluster.connect import _cause

    exc = RuntimeError("The task is not schedulable: The node specified via NodeAffinitySchedulingStrategy doesn't "
                       "exist any more or is infeasible, and soft=False was specified. lease_id=02, name=node_check")
    assert "lists it as alive but it takes no tasks -- most likely it was just lost" in _cause(exc, None)


# -- exit codes on the embedded Ray ------------------------------------------------------------------------------
def test_a_trial_in_error_makes_the_sweep_exit_1_naming_it(tmp_path):
    """On a cluster of one logical GPU (Ray's, on this CPU machine), trials on MPS -- which Linux does not have,
    and the probe does not check -- fail in their worker; the others train on the CPU in a GPU's slot."""
    head = Head(tmp_path, token_mode=False, num_cpus=2, num_gpus=1)
    try:
        space = write_space(tmp_path / "err.yaml", TINY.replace("  digits: 3\n", "  digits: 3\n  device: "
                                                                 "{grid: [cpu, mps]}\n")
                            + "max_failures: 0\nresources: {cpu: 1, gpu: 0.5}\n")
        p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--storage", str(tmp_path),
                            "--name", "err"], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env=_driver_env(tmp_path / "no_token", RAY_ADDRESS=head.address))
    finally:
        head.stop()
    assert p.returncode == 1, p.stderr[-3000:]
    err = p.stderr
    assert "adder-sweep sweep: 2 trials ended in error:" in err
    lines = [l for l in err.splitlines() if "device=" in l]
    assert len(lines) == 2 and all("device=mps" in l for l in lines), lines
    assert all("DeviceError: device mps was requested but torch sees no MPS device" in l for l in lines)
    error_file = err.split("full error: ")[1].splitlines()[0]
    assert Path(error_file).is_file() and "device mps" in Path(error_file).read_text()
    assert f"adder-sweep resume err --storage {tmp_path}" in err and "Study page:" not in p.stdout


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

    def __init__(self, base: Path, token_mode: bool, num_cpus: int = 2, num_gpus: int = 0):
        self.base, self.port = base, _free_port()
        self.token = base / "cluster_token"
        self.token.write_text(secrets.token_hex(32))
        temp = Path(__import__("tempfile").mkdtemp(prefix="adt", dir="/tmp"))  # short: Ray's sockets live there
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(RAY_AUTH_MODE="token" if token_mode else "disabled", RAY_AUTH_TOKEN_PATH=str(self.token))
        self.log = open(base / "head.log", "ab")
        self.procs = [subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port",
             str(self.port), "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus), "--temp-dir", str(temp),
             "--include-dashboard", "false",
             "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port()),
             "--ray-client-server-port", str(_free_port()), "--metrics-export-port", str(_free_port())],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)]
        self.temp = temp
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.procs[0].poll() is None, (base / "head.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(3)  # the raylet registers after the GCS listens

    def add_node(self, num_cpus: int = 1) -> None:
        """A second node (`ray start --address`, its own process group) on the same machine; returns when the
        cluster counts it."""
        self.procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--address", self.address, "--node-ip-address", "127.0.0.1",
             "--num-cpus", str(num_cpus), "--disable-usage-stats", "--dashboard-agent-listen-port",
             str(_free_port()), "--metrics-export-port", str(_free_port())],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.procs[-1].poll() is None, (self.base / "head.log").read_text()[-2000:]
            p = subprocess.run([str(BIN / "ray"), "status", "--address", self.address], capture_output=True,
                               text=True, env=self.env)
            if p.stdout.count(" node_") >= 2:  # "Active:" lists one line per alive node
                return
            time.sleep(1)
        raise AssertionError("the second node did not join: " + (self.base / "head.log").read_text()[-2000:])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        import shutil

        # SIGKILL to the whole group: `ray start --block` takes ~30 s to wind down after SIGTERM, and nothing of
        # this throwaway cluster needs a graceful end (Ray's processes are in the group or die with their raylet)
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)


def _driver_env(token_file: Path, **extra) -> dict:
    """A user's shell after `make sweep`: this machine has a Ray token file, RAY_AUTH_MODE is not set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PYTHONPATH=str(ROOT), RAY_AUTH_TOKEN_PATH=str(token_file), **extra)
    return env


@pytest.mark.parametrize("token_mode", [False, True], ids=["cluster-without-token", "cluster-with-token"])
def test_ray_start_cluster_via_ray_address_with_auth_detected(tmp_path, token_mode):
    """The issue's silent failure: a machine with a token file, a cluster with or without token auth. The driver
    takes the cluster from RAY_ADDRESS and connects as the cluster needs; every trial finishes. Without token auth
    the cluster has two nodes of one CPU each, and the two trials run one on each (code shipped, storage shared)."""
    head = Head(tmp_path, token_mode, num_cpus=2 if token_mode else 1)
    try:
        if not token_mode:
            head.add_node(num_cpus=1)
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
        if not token_mode:
            from orchestrator.results.tables import load_reports, load_trials
            from orchestrator.studydir.storage import Storage

            st = Storage.open(storage)
            nodes = {r["node"] for t in load_trials(st, "c") for r in load_reports(st, "c", t["dir"])}
            assert len(nodes) == 2, nodes
            # a trial that fits the cluster's 2 CPUs in all but no single node: refused, not pending forever
            p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "big",
                                "--storage", str(storage), "--cpus-per-trial", "2"], capture_output=True, text=True,
                               timeout=120, cwd=tmp_path, env=_driver_env(mine, RAY_ADDRESS=head.address))
            assert p.returncode == 2, p.stderr[-3000:]
            assert re.search(r"a trial asks for 2 CPUs but the largest of the cluster's 2 nodes \(\S+ \(\w{8}\)\) has 1 "
                             r"\(2 in all; a trial's resources must fit on one node\)", p.stderr), p.stderr
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert not (storage / "big").exists()
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


def test_a_trial_must_fit_on_one_node_not_on_the_cluster_totals():
    """check_fits decides from each alive node's resources as ray.nodes() lists them (the CPU case runs on a real
    two-node cluster above; GPU nodes cannot be started here)."""
    from orchestrator.spec.space import parse_space
    from orchestrator.tune.study import check_fits

    def node(ip, cpu, gpu=0, alive=True):
        return {"NodeManagerAddress": ip, "NodeID": "f" * 56, "Alive": alive,
                "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}

    two_gpus = parse_space("resources: {cpu: 1, gpu: 2}\nspace: {digits: 5}\n", "g.yaml")
    with pytest.raises(UserError, match=r"asks for 2 GPU but the largest of the cluster's 2 nodes \(10\.0\.0\.1 "
                                        r"\(ffffffff\)\) has 1 \(2 in all; a trial's resources must fit on one node\)"):
        check_fits(two_gpus, [node("10.0.0.1", 8, 1), node("10.0.0.2", 16, 1)])
    check_fits(two_gpus, [node("10.0.0.1", 8, 1), node("10.0.0.2", 2, 2)])  # one node holds it
    with pytest.raises(UserError, match="asks for 2 GPU but the largest"):  # a dead node offers nothing
        check_fits(two_gpus, [node("10.0.0.1", 8, 1), node("10.0.0.2", 2, 2, alive=False), node("10.0.0.3", 1)])
    both = parse_space("resources: {cpu: 4, gpu: 1}\nspace: {digits: 5}\n", "b.yaml")
    with pytest.raises(UserError, match="asks for 4 CPUs and 1 GPU on one node, and no node of the Ray cluster has "
                                        "both"):
        check_fits(both, [node("10.0.0.1", 8), node("10.0.0.2", 2, 1)])
    with pytest.raises(UserError, match="asks for 4 CPUs but the Ray cluster has 2; use a smaller --cpus-per-trial"):
        check_fits(both.with_overrides(gpus=0), [node("10.0.0.1", 2)])


def test_the_tests_never_touch_the_users_ray_token(ray_local):
    """conftest gives this test process its own token file; a local ray.init() must not write ~/.ray."""
    assert os.environ["RAY_AUTH_TOKEN_PATH"].startswith(os.environ["ADDER_SWEEP_TEST_TOKEN_DIR"])
    assert Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file()


# -- GPUs: Ray's logical GPUs on a CPU machine test scheduling, not CUDA -----------------------------------------
LOGICAL = """\
# eight trials sharing two logical GPUs, training on the CPU
name: shares
num_samples: 8
search: {type: random, seed: 0}
resources: {cpu: 0.25, gpu: 0.25}
max_concurrent: 8
space:
  lr: {loguniform: [0.001, 0.01]}
  device: cpu
  digits: 3
  hidden: 16
  iters: 400
  eval_every: 20
  eval_size: 50
  target: 1.5
"""


def test_fractional_gpus_run_eight_trials_at_once_on_two_logical_gpus(tmp_path):
    """`ray start --num-gpus 2`: at gpu 0.25 per trial, all 8 trials run at once (their report times overlap),
    each given one of the two GPU ids; a study that trains on CUDA there is refused by the probe, since this
    machine's torch sees no CUDA device behind Ray's logical GPUs."""
    from orchestrator.results.tables import load_reports, load_trials
    from orchestrator.studydir.storage import Storage

    head = Head(tmp_path, token_mode=False, num_cpus=2, num_gpus=2)
    try:
        space = write_space(tmp_path / "shares.yaml", LOGICAL)
        storage = tmp_path / "res"
        env = _driver_env(tmp_path / "no_token", RAY_ADDRESS=head.address)
        p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "s", "--storage",
                            str(storage)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        st = Storage.open(storage)
        runs = {t["trial_id"]: load_reports(st, "s", t["dir"]) for t in load_trials(st, "s")}
        assert len(runs) == 8 and all(len(r) == 20 for r in runs.values())
        spans = [(r[0]["timestamp"], r[-1]["timestamp"]) for r in runs.values()]
        assert max(a for a, _ in spans) <= min(b for _, b in spans), spans  # one moment when all 8 ran
        given = {r[0]["gpu_ids"] for r in runs.values()}
        assert given == {"0", "1"}, given  # a share of one GPU each, both GPUs used
        # they train on the CPU (device: cpu), so their processes see no GPU: torch's Adam cannot initialise CUDA
        assert {r[0]["cuda_visible_devices"] for r in runs.values()} == {""}
        p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "cuda",
                            "--storage", str(storage), "--set", "device=auto"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path, env=env)
        assert p.returncode == 2, p.stderr[-3000:]
        assert "trials train on CUDA and this node offers GPUs to Ray, but its torch" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and not (storage / "cuda").exists()
    finally:
        head.stop()


def test_the_probe_asks_for_a_compiler_only_where_the_fused_kernel_builds():
    from orchestrator.spec.space import parse_space
    from orchestrator.tune.study import needs_cuda, uses_fused_kernel

    def spec(text):
        return parse_space(text + "\n", "k.yaml")

    assert uses_fused_kernel(spec("space: {kernel: fused, cell: gru}"))
    assert not uses_fused_kernel(spec("space: {kernel: fused, cell: lstm}"))  # lstm keeps torch's kernel
    assert not uses_fused_kernel(spec("resources: {gpu: 0.5}\nspace: {kernel: fused}"))  # CUDA keeps cuDNN
    assert uses_fused_kernel(spec("resources: {gpu: 0.5}\nspace: {kernel: fused, device: cpu}"))
    assert uses_fused_kernel(spec("space: {kernel: {grid: [torch, fused]}, cell: {grid: [lstm, rnn]}}"))
    assert needs_cuda(spec("resources: {gpu: 0.5}\nspace: {digits: 5}"))
    assert not needs_cuda(spec("resources: {gpu: 0.5}\nspace: {device: cpu}"))
    assert not needs_cuda(spec("space: {digits: 5}"))
