import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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


def write_space(path, text):
    path = Path(path)
    path.write_text(text)
    return path


def run_study(space_path, storage, name, **kw):
    """Launch a study in-process on the session's Ray; returns the Outcome."""
    from orchestrator.space import read_space_file
    from orchestrator.study import launch

    spec, text = read_space_file(space_path)
    return launch(spec, text, name=name, storage_root=str(storage), address=None, file_spec=spec, **kw)


def final_metrics_by_config(storage, name, swept):
    """{tuple of swept config values: last report without timing fields} for every trial of a study."""
    from orchestrator.storage import Storage
    from orchestrator.tables import load_reports, load_trials

    st = Storage.open(storage)
    out = {}
    for t in load_trials(st, name):
        reports = load_reports(st, name, t["dir"])
        last = reports[-1]
        key = tuple(t["config"][k] for k in swept)
        assert key not in out, f"two trials with config {key}"
        out[key] = {k: last[k] for k in ("iter", "loss", "exact_acc", "digit_acc", "lr", "status", "iters_to_solve")}
    return out
