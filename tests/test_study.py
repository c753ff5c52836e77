"""Sweeps on real Ray: end to end, ASHA, interrupt + resume, a two-node cluster, resume errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.cli import main
from orchestrator.spec.plan import num_trials
from orchestrator.spec.space import read_space_file
from orchestrator.studydir.storage import Storage
from orchestrator.results.tables import load_reports, load_trials
from benchmarks.stress_resume import SPACE as STRESS_SPACE, final_by_config
from tests.conftest import ROOT, final_metrics_by_config, run_cli, run_study, write_space

# target 1.5 never stops a trial early, whatever a torch version's rounding makes of the first iterations
TINY = """\
# tiny study for tests
name: tiny
space:
  cell: {grid: [rnn, gru]}
  digits: {grid: [3, 4]}
  iters: 100
  eval_every: 20
  eval_size: 200
  target: 1.5
checkpoint_every: 2
"""

def test_end_to_end_sweep_records_and_results(ray_local, tmp_path):
    space = write_space(tmp_path / "tiny.yaml", TINY)
    out = run_study(space, tmp_path / "res", "e2e")
    assert not out.interrupted and out.states == {"TERMINATED": 4}
    st = Storage.open(tmp_path / "res")
    record = json.loads((tmp_path / "res" / "e2e" / "adder_study.json").read_text())
    assert record["yaml"] == TINY and (tmp_path / "res" / "e2e" / "space.yaml").read_text() == TINY
    assert record["runs"][0]["versions"]["ray"] and record["runs"][0]["command"]
    trials = load_trials(st, "e2e")
    assert sorted((t["config"]["cell"], t["config"]["digits"]) for t in trials) == [
        ("gru", 3), ("gru", 4), ("rnn", 3), ("rnn", 4)]
    for t in trials:
        reports = load_reports(st, "e2e", t["dir"])
        assert [r["iter"] for r in reports] == [20, 40, 60, 80, 100]
        assert t["config"]["layers"] == 2 and t["config"]["threads"] == 0  # full config recorded
    # same seed, same machine: identical numbers to a second study
    again = run_study(space, tmp_path / "res", "e2e-again")
    assert again.states == {"TERMINATED": 4}
    assert final_metrics_by_config(tmp_path / "res", "e2e", ["cell", "digits"]) == \
        final_metrics_by_config(tmp_path / "res", "e2e-again", ["cell", "digits"])
    # an existing name is refused and points to resume
    assert main(["sweep", str(space), "--name", "e2e", "--storage", str(tmp_path / "res")]) == 2


def test_asha_stops_some_trials_early(ray_local, tmp_path):
    space = write_space(tmp_path / "asha.yaml", """\
# ASHA on a wide lr range: bad learning rates are stopped at a rung. ASHA passes the first trials to reach a
# rung unconditionally, so the good learning rates come first in the grid.
name: asha
metric: loss
mode: min
scheduler: {type: asha, max_t: 200, grace_period: 20, reduction_factor: 3}
space:
  lr: {grid: [0.01, 0.003, 0.03, 0.0001, 0.00003, 0.00001]}
  target: 1.5
  digits: 4
  iters: 200
  eval_every: 20
  eval_size: 200
""")
    run_study(space, tmp_path / "res", "asha")
    st = Storage.open(tmp_path / "res")
    trials = load_trials(st, "asha")
    reports = {t["config"]["lr"]: load_reports(st, "asha", t["dir"]) for t in trials}
    iters = {lr: r[-1]["iter"] for lr, r in reports.items()}
    assert all(t["state"] == "terminated" for t in trials)
    assert min(iters.values()) < 200, iters  # some trials were stopped early by ASHA
    assert max(iters.values()) == 200, iters  # and some ran to max_t
    # ASHA's rule, whatever the numbers: a trial stopped at a rung was not the best there (the cutoff comes from
    # the trials that reached the rung before it, so the best one at a rung always passes)
    for lr, it in iters.items():
        if it < 200:
            at_rung = {other: next(r["loss"] for r in rs if r["iter"] == it)
                       for other, rs in reports.items() if any(r["iter"] == it for r in rs)}
            assert at_rung[lr] > min(at_rung.values()), (lr, it, at_rung)


def _wait_for(predicate, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_sigint_then_sigterm_then_resume_equals_uninterrupted(stress_reference, tmp_path):
    """Ctrl-C stops a sweep (exit 130), SIGTERM -- what `ray job stop` and Kubernetes send -- stops its resume
    (exit 143); each prints the resume command, and the study finished by a second resume has the numbers of an
    uninterrupted one, without rerunning a trial that had finished."""
    space = write_space(tmp_path / "stress.yaml", STRESS_SPACE)
    storage = tmp_path / "res"
    storage.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    study = storage / "cut"

    def start(*argv):
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *argv, "--storage", str(storage)],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    proc = start("sweep", str(space), "--name", "cut")
    assert _wait_for(lambda: any(study.glob("trial_*/checkpoint_*")), 120, proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert f"adder-sweep resume cut --storage {storage}" in err
    assert "Failed to fetch metrics" not in err  # Tune's alarm over trials that were pending, not lost
    st = Storage.open(storage)
    before = {t["trial_id"]: (t["state"], len(load_reports(st, "cut", t["dir"]))) for t in load_trials(st, "cut")}
    assert any(state != "terminated" for state, _ in before.values()), before

    p = run_cli("status", "--storage", storage, check=0)
    assert "cut" in p.stdout and "yes" in p.stdout

    # stop the resume once a trial has progressed: a new checkpoint (on storage as soon as it is written; reports
    # reach result.json only at the driver's next sync, when on a fast machine the study may be done)
    checkpoints = set(study.glob("trial_*/checkpoint_*"))
    proc = start("resume", "cut")
    assert _wait_for(lambda: set(study.glob("trial_*/checkpoint_*")) - checkpoints, 120, proc), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:] + err[-3000:]
    assert "Study cut was stopped by SIGTERM. Resume it with:" in err
    assert f"adder-sweep resume cut --storage {storage}" in err

    p = run_cli("resume", "cut", "--storage", storage, cwd=tmp_path, check=0, timeout=300)
    assert "4/4 trials: 4 terminated" in p.stdout
    trials = load_trials(st, "cut")
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4
    assert all(t["state"] == "terminated" for t in trials)
    for t in trials:  # a trial finished before the interrupt was not run again
        state, n = before.get(t["trial_id"], (None, 0))
        if state == "terminated":
            assert len(load_reports(st, "cut", t["dir"])) == n

    assert final_by_config(study) == stress_reference


def test_resume_errors(ray_local, tmp_path, capsys):
    storage = tmp_path / "res"
    assert main(["resume", "nope", "--storage", str(storage)]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
    space = write_space(tmp_path / "tiny.yaml", TINY)
    run_study(space, storage, "done")
    space.write_text(TINY.replace("[3, 4]", "[3, 5]"))
    assert main(["resume", "done", "--storage", str(storage)]) == 2
    err = capsys.readouterr().err
    assert "changed since the study started (space differ)" in err and "adder-sweep sweep" in err
    space.write_text(TINY + "\n# a comment does not change the space\n")
    assert main(["resume", "done", "--storage", str(storage)]) == 0  # nothing left to run


def test_gpu_resources_select_cuda_and_unschedulable_is_an_error(ray_local):
    from orchestrator.spec.space import parse_space
    from orchestrator.tune.study import check_fits, trial_resources
    from orchestrator.errors import UserError
    from trainables.device import resolve_device
    from trainables.tune_adapter import trial_threads

    spec = parse_space("resources: {cpu: 1, gpu: 0.25}\nspace: {digits: 5}\n", "gpu.yaml")
    assert trial_resources(spec) == {"cpu": 1, "gpu": 0.25}
    assert trial_resources(spec.with_overrides(gpus=0.5, cpus=2)) == {"cpu": 2, "gpu": 0.5}
    assert resolve_device("auto", gpus_assigned=0).type == "cpu"  # a GPU share's device: tests/test_device.py
    assert trial_threads({"threads": 0}, 2.0) == 2 and trial_threads({"threads": 0}, 0.5) == 1
    with pytest.raises(UserError, match="asks for 0.25 GPU but the Ray cluster has 0"):
        check_fits(spec)


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_file_runs_in_smoke_mode(ray_local, tmp_path, path, capsys):
    spec, _ = read_space_file(path)
    # a GPU study is tried here as its file tells a machine without a GPU to: on the CPU
    cpu_only = ["--gpus-per-trial", "0"] if spec.resources["gpu"] else []
    assert main(["sweep", str(path), "--smoke", "--storage", str(tmp_path), "--name", "smoke", *cpu_only]) == 0
    trials = load_trials(Storage.open(tmp_path), "smoke")
    assert len(trials) == num_trials(spec.smoke()) and all(t["state"] == "terminated" for t in trials)
    assert all(load_reports(Storage.open(tmp_path), "smoke", t["dir"])[-1]["iter"] <= 40 for t in trials)


def test_smoke_keeps_grid_extremes_and_shrinks_the_budget():
    from orchestrator.spec.space import parse_space

    spec = parse_space("num_samples: 5\nscheduler: {type: asha, max_t: 3000, grace_period: 100}\nspace:\n"
                       "  digits: {grid: [10, 20, 50, 100]}\n  cell: {grid: [rnn, lstm, gru]}\n"
                       "  iters: {grid: [1000, 3000]}\n  mode: {grid: [seed, full]}\n  seed: {grid: [0, 1]}\n",
                       "s.yaml").smoke()
    assert spec.space["digits"].args == [10, 100] and spec.space["cell"].args == ["rnn", "gru"]
    assert spec.space["mode"].args == ["seed"] and spec.space["seed"].args == [0]  # at most 4 points
    # no random key: the 2 samples of a grid point are the same configuration with the same seed, run once
    assert spec.space["iters"] == 40 and spec.num_samples == 2 and num_trials(spec) == 4
    assert spec.scheduler == {"type": "asha", "max_t": 40, "grace_period": 20}


def test_pbt_exploit_restarts_a_trial_from_another_checkpoint_with_a_new_lr(ray_local, tmp_path):
    space = write_space(tmp_path / "pbt.yaml", """\
# PBT on a wide lr range: the worst trial copies the best one's checkpoint and gets a new lr
name: pbt
num_samples: 4
search: {type: random, seed: 0}
scheduler:
  type: pbt
  perturbation_interval: 40
  quantile_fraction: 0.25
  hyperparam_mutations:
    lr: {loguniform: [0.0003, 0.03]}
space:
  digits: 8
  lr: {loguniform: [0.00001, 0.03]}
  iters: 240
  eval_every: 20
  eval_size: 300
  target: 1.5
""")
    out = run_study(space, tmp_path / "res", "pbt")
    assert out.states == {"TERMINATED": 4}
    st = Storage.open(tmp_path / "res")
    exploited = 0
    for t in load_trials(st, "pbt"):
        reports = load_reports(st, "pbt", t["dir"])
        lrs = [r["lr"] for r in reports]
        if len(set(lrs)) > 1:
            exploited += 1
            switch = next(i for i in range(1, len(lrs)) if lrs[i] != lrs[i - 1])
            # continued from the donor's checkpoint, so its iterations go on rather than restarting at 20
            assert reports[switch]["iter"] > 20
        assert reports[-1]["iter"] == 240
    assert exploited >= 1
