"""Fault injection on real Ray: killed drivers and workers, diverging trials, damaged files."""
import json
import os
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest

from benchmarks.stress_resume import SPACE, final_by_config, run_scenario
from orchestrator.cli import main
from orchestrator.tune.state_copy import read_state_copy
from orchestrator.studydir.storage import Storage
from orchestrator.results.tables import load_reports, load_trials
from tests.conftest import run_cli, run_study, trial_processes, write_space
from trainables import TrainConfig, train


@pytest.mark.slow
def test_driver_killed_twice_then_resumed(stress_reference, tmp_path):
    """Killed once with the experiment state on storage three checkpoints behind the trials (as when a driver is
    lost before its snapshot upload lands: Ray's num_to_keep had deleted the checkpoint that state named, and the
    resume failed that trial), once right after a checkpoint; each time resumed; final metrics as uninterrupted."""
    problems = run_scenario(tmp_path, stress_reference, seed=1, kills=2, log=lambda *a: None,
                            moments=("stale_state", "after_checkpoint"))
    assert problems == []
    # Ray deletes no checkpoint; the driver pruned each finished trial to its newest two (of eight)
    kept = {d.name: sorted(c.name for c in d.glob("checkpoint_*"))
            for d in (tmp_path / "res" / "killed-1").glob("trial_*")}
    assert len(kept) == 4 and all(names == ["checkpoint_000006", "checkpoint_000007"] for names in kept.values()), kept


def _kill_worker_when(study_dir, checkpoint_index, killed):
    """Background thread: SIGKILL the worker of the first trial whose checkpoint ``checkpoint_index`` is on
    storage. Checkpoints land there as they are written (reports reach result.json only at the driver's next
    sync), so the trial is still mid-run, also on a fast machine."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for ckpt in study_dir.glob(f"trial_*/checkpoint_{checkpoint_index:06d}"):
                pid = next((pid for pid, _, t in trial_processes() if t == ckpt.parent.name), None)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    killed.append((ckpt.parent.name, pid))
                    return
            time.sleep(0.02)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def test_worker_killed_is_retried_from_its_checkpoint(stress_reference, tmp_path):
    space = write_space(tmp_path / "s.yaml", SPACE)  # max_failures: 1
    killed = []
    watcher = _kill_worker_when(tmp_path / "res" / "retry", 2, killed)  # iteration 150 of 400
    out = run_study(space, tmp_path / "res", "retry")
    watcher.join()
    assert killed, "no worker was killed"
    assert out.states == {"TERMINATED": 4}
    st = Storage.open(tmp_path / "res")
    victim = next(t for t in load_trials(st, "retry") if t["dir"] == killed[0][0])
    assert victim["num_failures"] == 1
    iters = [r["iter"] for r in load_reports(st, "retry", victim["dir"])]
    # retried from a checkpoint at iteration 100 or later (the one just written, or the one before if its report
    # died with the worker), not from scratch
    assert iters[0] == 25 and iters.count(25) == 1 and iters[-1] == 400, iters
    assert final_by_config(tmp_path / "res" / "retry") == stress_reference


def test_errored_trial_is_resumed_even_from_a_damaged_checkpoint(stress_reference, tmp_path, capsys):
    """A worker killed (max_failures 0: the trial ends in error); its checkpoints then damaged, and Ray's saved
    state holding a STOP for it (what Ray leaves when the worker dies while a checkpoint is being saved: it had
    ended such a trial, as finished, at its first checkpoint after the resume); `resume` runs it to the end."""
    space = write_space(tmp_path / "s.yaml", SPACE.replace("max_failures: 1", "max_failures: 0"))
    killed = []
    watcher = _kill_worker_when(tmp_path / "res" / "err", 2, killed)
    out = run_study(space, tmp_path / "res", "err")
    watcher.join()
    assert out.states == {"TERMINATED": 3, "ERROR": 1} and not out.interrupted
    st = Storage.open(tmp_path / "res")
    errored = next(t for t in load_trials(st, "err") if t["state"] == "errored")
    trial_dir = tmp_path / "res" / "err" / errored["dir"]
    # an errored trial keeps its newest three checkpoints; Tune restores the newest or -- when the worker died
    # between saving one and reporting it -- the one before: damage both, resume must fall back to the oldest
    folders = sorted(trial_dir.glob("checkpoint_*"))
    assert len(folders) == 3, folders
    for folder in folders[1:]:
        data = (folder / "checkpoint.pt").read_bytes()
        (folder / "checkpoint.pt").write_bytes(data[:500])
    state_file = max((tmp_path / "res" / "err").glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    state["runner_data"]["_cached_trial_decisions"] = {errored["trial_id"]: "STOP"}
    state_file.write_text(json.dumps(state))
    p = run_cli("status", "--storage", tmp_path / "res", check=0)
    assert "err" in p.stdout and "yes" in p.stdout
    assert main(["resume", "err", "--storage", str(tmp_path / "res")]) == 0
    trials = load_trials(st, "err")
    assert all(t["state"] == "terminated" for t in trials)
    assert final_by_config(tmp_path / "res" / "err") == stress_reference
    assert f"trial {errored['trial_id']}: dropped Ray Tune's saved STOP decision" in capsys.readouterr().err
    # it restarted once, from the oldest kept checkpoint (one every 50 iterations: checkpoint_00000k at 50(k+1))
    reports = load_reports(st, "err", errored["dir"])
    restarts = [(a["iter"], b["iter"]) for a, b in zip(reports, reports[1:]) if b["iter"] <= a["iter"]]
    assert len(restarts) == 1, [r["iter"] for r in reports]
    assert restarts[0][1] == 50 * (int(folders[0].name.rsplit("_", 1)[1]) + 1) + 25


def test_diverging_trial_ends_diverged_and_others_are_unaffected(ray_local, tmp_path, capsys):
    space = write_space(tmp_path / "d.yaml", """\
# one absurd learning rate among sane ones
name: div
space:
  lr: {grid: [1.0e+22, 0.001]}
  seed: 1
  digits: 5
  iters: 300
  eval_every: 5
  eval_size: 500
  target: 1.5
  threads: 1
""")
    run_study(space, tmp_path / "res", "div")
    st = Storage.open(tmp_path / "res")
    by_lr = {t["config"]["lr"]: t for t in load_trials(st, "div")}
    bad = load_reports(st, "div", by_lr[1e22]["dir"])
    assert bad[-1]["status"] == "diverged" and bad[-1]["iter"] < 300
    assert all(r["loss"] < float("inf") for r in bad[:-1])  # reports before the divergence are finite
    assert bad[-1]["exact_acc"] == (bad[-2]["exact_acc"] if len(bad) > 1 else 0.0)  # last finite metrics kept
    good = load_reports(st, "div", by_lr[0.001]["dir"])
    plain = []
    train(TrainConfig.from_flat({**by_lr[0.001]["config"]}), report=lambda m, c: plain.append(m))
    strip = lambda rows: [(r["iter"], r["loss"], r["exact_acc"]) for r in rows]  # noqa: E731
    assert strip(good) == strip(plain)  # the Tune adapter gives the plain loop's numbers
    assert main(["report", "div", "--storage", str(tmp_path / "res"), "--no-plots"]) == 0
    assert "diverged" in capsys.readouterr().out
    trials = pq.read_table(tmp_path / "res" / "div" / "trials.parquet").to_pylist()
    assert sorted(t["outcome"] for t in trials) == ["budget", "diverged"]


@pytest.fixture(scope="module")
def finished(ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    space = write_space(d / "s.yaml", SPACE.replace("iters: 400", "iters: 100"))
    run_study(space, d / "res", "done")
    return d


def _copy_study(src, dst):
    """A copy of a finished study to damage."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_truncated_experiment_state_is_put_back_from_the_copy_or_a_clear_error(finished, tmp_path, capsys):
    """Ray writes its experiment state in place: a driver killed mid-write leaves it cut off (the stress run hit
    it). `resume` puts back adder-sweep's copy; without one it is one clear error and nothing changes."""
    study = _copy_study(finished / "res" / "done", tmp_path / "res" / "done")
    state = max(study.glob("experiment_state-*.json"))
    whole = state.read_bytes()
    assert read_state_copy(Storage.open(tmp_path / "res"), "done")["file"] == state.name
    state.write_bytes(whole[: len(whole) // 2])
    assert main(["resume", "done", "--storage", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err
    assert f"{state.name} was cut off" in err and f"kept as {state.name}.damaged" in err, err
    assert json.loads(state.read_text())["trial_data"]
    assert (study / f"{state.name}.damaged").read_bytes() == whole[: len(whole) // 2]
    assert [t["state"] for t in load_trials(Storage.open(tmp_path / "res"), "done")] == ["terminated"] * 4

    other = _copy_study(finished / "res" / "done", tmp_path / "other" / "done")
    (other / "adder_state_copy.json").unlink()
    state = max(other.glob("experiment_state-*.json"))
    state.write_bytes(whole[: len(whole) // 2])
    before = sorted(p.name for p in other.iterdir())
    assert main(["resume", "done", "--storage", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert state.name in err and ("unreadable" in err or "cannot restore" in err), err
    assert main(["status", "--storage", str(tmp_path / "other")]) == 0
    assert "unreadable" in capsys.readouterr().out
    assert sorted(p.name for p in other.iterdir()) == before


def test_missing_trial_folder_is_a_clear_error(finished, tmp_path, capsys):
    import shutil

    study = _copy_study(finished / "res" / "done", tmp_path / "res" / "done")
    # make one trial unfinished in Ray's state, then delete its folder
    state_file = max(study.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial["status"] = "RUNNING"
    state["trial_data"][0][0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))
    shutil.rmtree(study / trial["relative_logdir"])
    assert main(["resume", "done", "--storage", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert trial["relative_logdir"] in err and "missing" in err


def test_truncated_table_is_rebuilt_by_report(finished, tmp_path, capsys):
    study = _copy_study(finished / "res" / "done", tmp_path / "res" / "done")
    assert main(["report", "done", "--storage", str(tmp_path / "res"), "--no-plots"]) == 0
    table = study / "trials.parquet"
    table.write_bytes(table.read_bytes()[:100])
    with pytest.raises(Exception):
        pq.read_table(table)
    assert main(["report", "done", "--storage", str(tmp_path / "res"), "--no-plots"]) == 0
    assert pq.read_table(table).num_rows == 4


def test_truncated_run_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--len=3", "--iters=40", "--eval-every=20", "--out", out, "--quiet", check=0)
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    p = run_cli("train", "--resume", out, "--quiet")
    assert p.returncode == 2 and "checkpoint.pt: checkpoint is unreadable" in p.stderr
    assert ckpt.exists() and (out / "metrics.parquet").exists()
