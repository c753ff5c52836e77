import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _own_ray_token() -> None:
    """Ray (2.5x+) turns token auth on for every local ray.init() and, without a token, writes one to the user's
    ~/.ray/auth_token. The tests must not touch the user's ~/.ray: this test process (and the subprocesses it
    starts, which inherit the environment) gets a token file of its own, and token mode as a local ray.init() would
    choose. Tests of auth itself set RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH per subprocess."""
    import atexit
    import secrets
    import shutil
    import tempfile

    if os.environ.get("ADDER_SWEEP_TEST_TOKEN_DIR"):
        return  # a subprocess of the test session: inherited already
    token_dir = tempfile.mkdtemp(prefix="adder-sweep-test-ray-token-")
    atexit.register(shutil.rmtree, token_dir, ignore_errors=True)  # the session that made it removes it
    token_path = Path(token_dir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    os.environ["ADDER_SWEEP_TEST_TOKEN_DIR"] = token_dir
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.pop("RAY_ADDRESS", None)  # a user's cluster must not capture the tests' embedded Ray


_own_ray_token()
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Training in the test process (``trainables.train`` with threads 0, torch's default of every core) runs on
    one thread, as a trial and ``adder-sweep train`` do: with Ray's processes beside it, torch's OpenMP threads
    wait for descheduled siblings and a run slows down tens of times over."""
    import torch

    torch.set_num_threads(1)


def require(ok: bool, reason: str) -> None:
    """A test that needs something of the machine (root, a system package, a service binary) skips without it,
    with ``reason`` in pytest's summary -- except in CI (``CI=true``), where .ci/run installs everything and a
    missing prerequisite is a failure."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true, but this test's prerequisite is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def trial_processes():
    """(pid, working directory, trial folder name) of every Ray Tune trial running on this machine now -- a netns
    "host" of tests/hosts.py included: Tune runs a trial in .../working_dirs/<trial folder>. Tests use it to hit a
    trial mid-run; its reports reach storage only at the driver's next sync, too late on a fast machine."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        parent, _, trial = cwd.rpartition("/")
        if parent.endswith("/working_dirs"):
            yield int(proc.name), cwd, trial


def run_cli(*args, cwd=None, timeout=300, env=None, check=None):
    """Run ``python -m orchestrator ARGS`` in a subprocess; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session, sized like the CI machine. In-process sweeps reuse it."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def stress_reference(ray_local, tmp_path_factory):
    """Final metrics of an uninterrupted run of benchmarks/stress_resume.py's study (four trials that checkpoint
    often): what every interrupted and resumed run of it must equal (test_faults.py, test_study.py)."""
    from benchmarks.stress_resume import SPACE, final_by_config

    d = tmp_path_factory.mktemp("stress_reference")
    run_study(write_space(d / "stress.yaml", SPACE), d / "res", "reference")
    return final_by_config(d / "res" / "reference")


def write_space(path, text):
    path = Path(path)
    path.write_text(text)
    return path


def run_study(space_path, storage, name, **kw):
    """Launch a study in-process on the session's Ray; returns the Outcome."""
    from orchestrator.spec.space import read_space_file
    from orchestrator.tune.study import launch

    spec, text = read_space_file(space_path)
    return launch(spec, text, name=name, storage_root=str(storage), address=None, file_spec=spec, **kw)


def run_study_text(text, storage, name, **kw):
    """run_study for a search space held in a string (recorded as coming from NAME.yaml)."""
    from orchestrator.spec.space import parse_space
    from orchestrator.tune.study import launch

    spec = parse_space(text, source=f"{name}.yaml")
    return launch(spec, text, name=name, storage_root=str(storage), address=None, file_spec=spec, **kw)


def final_metrics_by_config(storage, name, swept):
    """{tuple of swept config values: last report without timing fields} for every trial of a study."""
    from orchestrator.studydir.storage import Storage
    from orchestrator.results.tables import load_reports, load_trials

    st = Storage.open(storage)
    out = {}
    for t in load_trials(st, name):
        reports = load_reports(st, name, t["dir"])
        last = reports[-1]
        key = tuple(t["config"][k] for k in swept)
        assert key not in out, f"two trials with config {key}"
        out[key] = {k: last[k] for k in ("iter", "loss", "exact_acc", "digit_acc", "lr", "status", "iters_to_solve")}
    return out
