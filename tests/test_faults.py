"""Fault injection on real Ray: killed drivers and workers, diverging trials, damaged files."""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks.stress_resume import SPACE, final_by_config, run_scenario
from orchestrator.cli import main
from orchestrator.tune.state_copy import read_state_copy
from orchestrator.studydir.storage import Storage
from orchestrator.results.tables import load_reports, load_trials
from tests.conftest import ROOT, require, run_cli, run_study, trial_processes, write_space
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


def test_truncated_searcher_state_is_put_back_from_the_copy_or_a_clear_error(finished, tmp_path, capsys):
    """Ray copies its searcher state (a pickle) to storage beside the experiment state; a full disk cut it (the
    full-disk test hit it in CI), and Ray then restarted the searcher and failed with a KeyError. `resume` puts
    back adder-sweep's copy of the same moment; without one it is one line, exit 2, nothing changed."""
    study = _copy_study(finished / "res" / "done", tmp_path / "res" / "done")
    searcher = max(study.glob("basic-variant-state-*.json"))
    whole = searcher.read_bytes()
    assert (study / "adder_search_copy.pkl").is_file()
    searcher.write_bytes(whole[:len(whole) // 2])
    assert main(["resume", "done", "--storage", str(tmp_path / "res")]) == 0
    err = capsys.readouterr().err
    assert f"{searcher.name} was cut off (kept as {searcher.name}.damaged); put back adder-sweep's copy" in err, err
    assert searcher.read_bytes() == whole
    assert [t["state"] for t in load_trials(Storage.open(tmp_path / "res"), "done")] == ["terminated"] * 4

    other = _copy_study(finished / "res" / "done", tmp_path / "other" / "done")
    (other / "adder_search_copy.pkl").unlink()
    searcher = max(other.glob("basic-variant-state-*.json"))
    searcher.write_bytes(whole[:len(whole) // 2])
    before = sorted(p.name for p in other.iterdir())
    assert main(["resume", "done", "--storage", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adder-sweep resume: error: cannot resume 'done': Ray Tune's searcher state") and \
        "is cut off and adder-sweep has no copy of it" in err[-1], err
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


FULL_DISK = r"""
set -u
mount -t tmpfs -o size=48m tmpfs "$DISK"
python -m orchestrator sweep "$SPACE" --storage "$DISK/res" --name full >/dev/null 2>"$OUT/sweep.err" &
S=$!
for i in $(seq 1 1200); do ls -d "$DISK"/res/full/trial_*/checkpoint_000002 >/dev/null 2>&1 && break; sleep 0.1; done
dd if=/dev/zero of="$DISK/filler" bs=1M count=100 2>/dev/null
wait $S; echo $? > "$OUT/sweep.rc"
python -m orchestrator report full --storage "$DISK/res" --no-plots >/dev/null 2>"$OUT/report.err"; echo $? > "$OUT/report.rc"
ls -a "$DISK/res/full" > "$OUT/after_report.ls"
cp -a "$DISK/res/full/report.html" "$OUT/page_on_full_disk.html"
rm "$DISK/filler"
python -m orchestrator resume full --storage "$DISK/res" >/dev/null 2>"$OUT/resume.err"; echo $? > "$OUT/resume.rc"
cp -a "$DISK/res" "$OUT/res"
"""


def test_a_full_disk_mid_study_is_one_line_and_resume_completes_identically(stress_reference, tmp_path):
    """Local storage on a 48 MB tmpfs (in a private mount namespace) that fills while trials checkpoint: the sweep
    ends with one line naming the storage and "no space left", exit 2; `report` on the full disk writes no half
    file; once space is freed, `resume` completes with the numbers of an uninterrupted study."""
    import shutil
    import subprocess

    require(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare (a private tmpfs)")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    space = write_space(tmp_path / "stress.yaml", SPACE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DISK": str(disk), "OUT": str(out), "SPACE": str(space),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    p = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", FULL_DISK], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep_err = (out / "sweep.err").read_text()
    assert (out / "sweep.rc").read_text().strip() == "2", sweep_err[-3000:]
    last = sweep_err.strip().splitlines()[-1]
    assert last.startswith(f"adder-sweep sweep: error: the study storage {disk}/res is full (no space left on "
                           "device)") and "adder-sweep resume full" in last, last
    report_err = (out / "report.err").read_text()
    assert (out / "report.rc").read_text().strip() != "0" and "no space left" in report_err.lower(), report_err
    assert len(report_err.strip().splitlines()) <= 2, report_err  # (a note on the cut state, then the error)
    left = (out / "after_report.ls").read_text().split()
    assert not [n for n in left if n.endswith(".tmp") or n.startswith(".tmp")], left
    assert (out / "page_on_full_disk.html").read_text().rstrip().endswith("</html>")
    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.err").read_text()[-3000:]
    assert final_by_config(out / "res" / "full") == stress_reference
