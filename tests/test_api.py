"""The Python API (orchestrator/api.py), as a notebook uses it: each test runs its script in a fresh interpreter,
on real Ray, so that what a call leaves in the process (signal handlers, environment, loggers, Ray) is the
process's own and not pytest's."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ROOT

TINY = """
name: tiny
metric: exact_acc
mode: max
space:
  cell: {grid: [rnn, gru]}
  digits: 2
  hidden: 16
  iters: 40
  eval_every: 20
  eval_size: 100
  batch_size: 32
  seed: 0
checkpoint_every: 1
"""


def run_script(code: str, tmp_path: Path, timeout: int = 400) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line of what it found, returned here."""
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])  # (the live table and the summary come before it)


def test_two_studies_in_one_interpreter_leave_the_process_as_they_found_it(tmp_path):
    found = run_script(f"""
        import json, logging, os, signal, sys
        TINY = {TINY!r}
        import yaml
        import orchestrator
        from orchestrator import StudySpec, load_study, parse_space, resume, sweep

        marker = lambda *a: None
        signal.signal(signal.SIGTERM, marker)  # a caller's own handlers must survive both calls
        sigint = signal.getsignal(signal.SIGINT)
        env = dict(os.environ)
        ray_level = logging.getLogger("ray").level
        out = {{}}

        r1 = sweep(TINY, name="from-text", storage="res")           # YAML text
        spec = parse_space(TINY, "in code", "tiny")
        r2 = sweep(yaml.safe_load(TINY), name="from-dict", storage="res", overrides=["hidden=8"])  # a dict
        r3 = sweep(spec, name="from-spec", storage="res", repeats=2)  # a StudySpec, with replicates
        for r in (r1, r2, r3):
            r.raise_for_errors()
        out["states"] = [r.states for r in (r1, r2, r3)]
        out["ok"] = [r.ok for r in (r1, r2, r3)]
        out["trials"] = [len(load_study(r.name, "res").trials) for r in (r1, r2, r3)]
        out["hidden"] = sorted(set(r2.study.trials["hidden"]))
        out["best"] = r3.best
        out["best_configuration"] = r3.best_configuration
        out["paths"] = [r.path for r in (r1, r2, r3)]
        out["space_yaml"] = [yaml.safe_load(open(os.path.join(r.path, "space.yaml")))["space"]["cell"]
                             for r in (r1, r2, r3)]
        r4 = resume("from-dict", storage="res")  # recorded as YAML: the space check passes, nothing reruns
        out["resumed"] = r4.states
        out["sigterm_kept"] = signal.getsignal(signal.SIGTERM) is marker
        out["sigint_kept"] = signal.getsignal(signal.SIGINT) is sigint
        out["env_kept"] = dict(os.environ) == env
        out["ray_level_kept"] = logging.getLogger("ray").level == ray_level
        import ray
        out["ray_shut_down"] = not ray.is_initialized()
        print(json.dumps(out, default=str))
    """, tmp_path)
    assert found["states"] == [{"TERMINATED": 2}, {"TERMINATED": 2}, {"TERMINATED": 4}]
    assert found["ok"] == [True, True, True] and found["trials"] == [2, 2, 4]
    assert found["hidden"] == [8]  # the override reached the trials
    assert found["space_yaml"] == [{"grid": ["rnn", "gru"]}] * 3  # every form is recorded as YAML
    assert found["best"]["config"]["cell"] in ("rnn", "gru") and found["best"]["value"]
    assert found["best_configuration"]["n"] == 2 and found["best_configuration"]["config"]["cell"] in ("rnn", "gru")
    assert found["resumed"] == {"TERMINATED": 2}
    assert found["sigterm_kept"] and found["sigint_kept"] and found["env_kept"] and found["ray_level_kept"]
    assert found["ray_shut_down"]  # the calls started Ray, so they shut it down


def test_a_callers_ray_is_used_and_left_connected_and_errors_are_raised(tmp_path):
    found = run_script(f"""
        import json
        import ray
        from orchestrator import AdderSweepError, TrialsFailed, UserError, sweep
        from orchestrator.results.tables import load_reports, load_trials
        from orchestrator.studydir.storage import Storage

        TINY = {TINY!r}
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
        out = {{}}
        try:
            sweep(TINY.replace("digits: 2", "digits: zwei"), name="bad", storage="res")
        except AdderSweepError as exc:
            out["bad"] = [type(exc).__name__, str(exc)]
        try:
            sweep(42, storage="res")
        except UserError as exc:
            out["not_a_space"] = str(exc)
        r = sweep(TINY.replace("hidden: 16", "hidden: 16\\n  device: mps") + "resources: {{gpu: 0.5}}\\n",
                  name="fails", storage="res")
        try:
            r.raise_for_errors()
        except TrialsFailed as exc:
            out["failed"] = [str(exc), exc.result.name, len(r.errors), r.ok]
        out["still_connected"] = ray.is_initialized()
        out["second"] = sweep(TINY, name="after", storage="res").states
        st = Storage.open("res")
        out["visible"] = sorted({{r["cuda_visible_devices"] for t in load_trials(st, "after")
                                  for r in load_reports(st, "after", t["dir"])}})
        print(json.dumps(out))
    """, tmp_path)
    assert found["bad"][0] == "SpaceError" and "digits" in found["bad"][1] and "\n" not in found["bad"][1]
    assert "expected a file path, YAML text, a dict or a StudySpec, got int" in found["not_a_space"]
    message, name, n_errors, ok = found["failed"]
    assert name == "fails" and n_errors == 2 and not ok and "ended in error (and 1 more)" in message
    assert found["still_connected"]  # the caller's ray.init() is left as it was
    assert found["second"] == {"TERMINATED": 2}
    assert found["visible"] == [""]  # trials given no GPU share see none (Ray 2.60 leaves the variable alone)
    assert not (tmp_path / "res" / "bad").exists()  # a refused launch writes nothing


def test_ctrl_c_in_a_notebook_returns_an_interrupted_result(tmp_path):
    """SIGINT, as Jupyter's interrupt sends it, while trials run: the call returns a result marked interrupted
    (trials left to resume), and resume through the API finishes the study."""
    from benchmarks.stress_resume import SPACE as long  # four trials on two cores: two wait while two run
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from orchestrator import resume, sweep
        r = sweep({long!r}, name="long", storage="res")
        print(json.dumps({{"interrupted": r.interrupted, "reason": r.stop_reason, "states": r.states}}), flush=True)
        if "--resume" in sys.argv:
            r = resume("long", storage="res")
            print(json.dumps({{"interrupted": r.interrupted, "states": r.states, "ok": r.ok}}), flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script), "--resume"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 180  # until this study's first checkpoint (other Ray trials may run on the machine)
    while time.time() < deadline and proc.poll() is None and not any(tmp_path.glob("res/long/trial_*/checkpoint_*")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-4000:]
    first, second = (json.loads(line) for line in out.splitlines() if line.startswith('{"interrupted"'))
    assert first["interrupted"] and first["reason"] == "sigint", (first, err[-3000:])
    assert set(first["states"]) - {"TERMINATED"}, first  # something is left to resume
    assert second == {"interrupted": False, "states": {"TERMINATED": 4}, "ok": True}, (second, err[-3000:])


@pytest.mark.parametrize("form", ["path-str", "path-object"])
def test_a_path_is_told_from_yaml_text(tmp_path, form):
    from orchestrator.api import _read_space

    f = tmp_path / "s.yaml"
    f.write_text(TINY)
    spec_from_file = _read_space(str(f) if form == "path-str" else f, ())[2]
    assert spec_from_file.source == str(f) and spec_from_file.name == "tiny"
    from orchestrator import UserError

    with pytest.raises(UserError, match="no such search-space file"):
        _read_space(str(tmp_path / "missing.yaml"), ())
    assert _read_space("{space: {cell: rnn}}", ())[2].source == "<YAML text>"
