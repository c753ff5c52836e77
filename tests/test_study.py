"""Sweeps on real Ray: end to end, ASHA, interrupt + resume, a two-node cluster, resume errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from orchestrator.cli import main
from orchestrator.space import read_space_file
from orchestrator.storage import Storage
from orchestrator.results.tables import load_reports, load_trials
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

# Long enough to be interrupted after the first checkpoints; target 1.5 never stops early.
RESUMABLE = """\
# resumable study for the interrupt test
name: resumable
space:
  cell: {grid: [rnn, gru]}
  seed: {grid: [0, 1]}
  digits: 6
  iters: 500
  eval_every: 25
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
        time.sleep(0.2)
    return False


def test_sigint_then_resume_equals_uninterrupted(ray_local, tmp_path):
    space = write_space(tmp_path / "resumable.yaml", RESUMABLE)
    storage = tmp_path / "res"
    storage.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", str(space), "--name", "cut",
                             "--storage", str(storage)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    study = storage / "cut"
    assert _wait_for(lambda: any(study.glob("trial_*/checkpoint_*")), 120, proc), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert f"adder-sweep resume cut --storage {storage}" in err
    st = Storage.open(storage)
    before = {t["trial_id"]: (t["state"], len(load_reports(st, "cut", t["dir"]))) for t in load_trials(st, "cut")}
    assert any(state != "terminated" for state, _ in before.values()), before

    p = run_cli("status", "--storage", storage, check=0)
    assert "cut" in p.stdout and "yes" in p.stdout

    run_cli("resume", "cut", "--storage", storage, cwd=tmp_path, check=0, timeout=300)
    trials = load_trials(st, "cut")
    assert len(trials) == 4 and len({t["trial_id"] for t in trials}) == 4
    assert all(t["state"] == "terminated" for t in trials)
    for t in trials:  # a trial finished before the interrupt was not run again
        state, n = before.get(t["trial_id"], (None, 0))
        if state == "terminated":
            assert len(load_reports(st, "cut", t["dir"])) == n

    run_study(space, storage, "whole")
    assert final_metrics_by_config(storage, "cut", ["cell", "seed"]) == \
        final_metrics_by_config(storage, "whole", ["cell", "seed"])


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
    from orchestrator.space import parse_space
    from orchestrator.study import check_fits, trial_resources
    from orchestrator.errors import UserError
    from trainables.loop import resolve_device
    from trainables.tune_adapter import trial_threads

    spec = parse_space("resources: {cpu: 1, gpu: 0.25}\nspace: {digits: 5}\n", "gpu.yaml")
    assert trial_resources(spec) == {"cpu": 1, "gpu": 0.25}
    assert trial_resources(spec.with_overrides(gpus=0.5, cpus=2)) == {"cpu": 2, "gpu": 0.5}
    assert resolve_device("auto", gpus_assigned=1).type == "cuda"
    assert resolve_device("auto", gpus_assigned=0).type == "cpu"
    assert trial_threads({"threads": 0}, 2.0) == 2 and trial_threads({"threads": 0}, 0.5) == 1
    with pytest.raises(UserError, match="asks for 0.25 GPU but the Ray cluster has 0"):
        check_fits(spec)


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    """A real two-node Ray cluster (ray.cluster_utils.Cluster) and `sweep --address`, on a machine that has a
    Ray token file and no RAY_AUTH_MODE set -- as after any local sweep (where every trial used to die)."""
    space = write_space(tmp_path / "tiny.yaml", TINY.replace("iters: 100", "iters: 200"))
    (tmp_path / "res").mkdir()
    script = textwrap.dedent(f"""
        import subprocess, sys, json
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1}})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            p = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", {str(space)!r}, "--name", "two",
                                "--storage", {str(tmp_path / 'res')!r}, "--address", cluster.address],
                               capture_output=True, text=True, timeout=300)
            print(json.dumps({{"rc": p.returncode, "err": p.stderr[-3000:]}}))
        finally:
            cluster.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400,
                       cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)})
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["err"]
    st = Storage.open(tmp_path / "res")
    nodes = {r["node"] for t in load_trials(st, "two") for r in load_reports(st, "two", t["dir"])}
    assert len(nodes) == 2, nodes


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_file_runs_in_smoke_mode(ray_local, tmp_path, path, capsys):
    assert main(["sweep", str(path), "--smoke", "--storage", str(tmp_path), "--name", "smoke"]) == 0
    spec, _ = read_space_file(path)
    trials = load_trials(Storage.open(tmp_path), "smoke")
    assert len(trials) == spec.smoke().num_trials() and all(t["state"] == "terminated" for t in trials)
    assert all(load_reports(Storage.open(tmp_path), "smoke", t["dir"])[-1]["iter"] <= 40 for t in trials)


def test_smoke_keeps_grid_extremes_and_shrinks_the_budget():
    from orchestrator.space import parse_space

    spec = parse_space("num_samples: 5\nscheduler: {type: asha, max_t: 3000, grace_period: 100}\nspace:\n"
                       "  digits: {grid: [10, 20, 50, 100]}\n  cell: {grid: [rnn, lstm, gru]}\n"
                       "  iters: {grid: [1000, 3000]}\n  mode: {grid: [seed, full]}\n  seed: {grid: [0, 1]}\n",
                       "s.yaml").smoke()
    assert spec.space["digits"].args == [10, 100] and spec.space["cell"].args == ["rnn", "gru"]
    assert spec.space["mode"].args == ["seed"] and spec.space["seed"].args == [0]  # at most 4 points
    # no random key: the 2 samples of a grid point are the same configuration with the same seed, run once
    assert spec.space["iters"] == 40 and spec.num_samples == 2 and spec.num_trials() == 4
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
