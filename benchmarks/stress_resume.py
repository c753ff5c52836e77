"""Kill the sweep driver at random moments, resume until the study completes, and check nothing was lost.

One scenario: start ``adder-sweep sweep`` on a small study in its own process group; SIGKILL the whole group
(driver and the embedded Ray it started, as when a machine is lost) at chosen moments -- with a stale experiment
state before any trial has finished, right after a checkpoint appears, and at random times; after each kill run
``adder-sweep resume``; when a resume runs to the end, compare with an uninterrupted run of the same file.

"Stale state" is the moment that lost checkpoints on a real cluster: Tune's experiment state (which names each
trial's latest checkpoint) reaches storage seconds after the checkpoints do, so a driver lost in between leaves a
state several checkpoints behind. The scenario copies the state on storage once it names a running trial's
checkpoint, lets that trial write three more, kills the driver and puts the copy back: every checkpoint that state
names must still be there for `resume`.

    python benchmarks/stress_resume.py --runs 10          # prints `N passed, N failed` last

The test suite runs one scenario (tests/test_faults.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = """\
# stress study: four small trials that checkpoint often
name: stress
space:
  cell: {grid: [rnn, gru]}
  seed: {grid: [0, 1]}
  digits: 6
  iters: 400
  eval_every: 25
  eval_size: 200
  target: 1.5
checkpoint_every: 2
max_failures: 1
"""
KEYS = ("cell", "seed")
EVAL_EVERY = 25


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *map(str, args)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process group we started (the driver and the Ray processes it spawned), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    time.sleep(0.5)  # let Ray's children notice their parent is gone


def study_reports(study: Path) -> dict[str, list[dict]]:
    """trial dir -> reports in result.json order (cut lines skipped)."""
    out = {}
    for f in sorted(study.glob("trial_*/result.json")):
        rows = []
        for line in f.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
        out[f.parent.name] = rows
    return out


def final_by_config(study: Path) -> dict:
    from orchestrator.studydir.storage import Storage
    from orchestrator.results.tables import load_reports, load_trials

    st = Storage.open(study.parent)
    out = {}
    for t in load_trials(st, study.name):
        last = load_reports(st, study.name, t["dir"])[-1]
        key = tuple(t["config"][k] for k in KEYS)
        if key in out:
            raise AssertionError(f"two trials with config {key}")
        out[key] = {k: last[k] for k in ("iter", "loss", "exact_acc", "digit_acc", "lr", "status")}
    return out


def reference(workdir: Path) -> dict:
    """Final metrics of an uninterrupted run of SPACE."""
    space = workdir / "stress.yaml"
    space.write_text(SPACE)
    (workdir / "res").mkdir(exist_ok=True)
    subprocess.run(_cli("sweep", space, "--name", "reference", "--storage", workdir / "res"), cwd=workdir,
                   env=_env(), check=True, capture_output=True, timeout=600)
    return final_by_config(workdir / "res" / "reference")


# stale_state first: it needs trials far from done, and kills before any has finished
MOMENTS = ("stale_state", "after_checkpoint")


def run_scenario(workdir: Path, reference_metrics: dict, *, seed: int, kills: int = 3, log=print,
                 moments: tuple = MOMENTS) -> list[str]:
    """One kill-and-resume scenario: ``kills`` kills, at ``moments`` in turn and then at random times; returns the
    problems found (empty: passed)."""
    rng = random.Random(seed)
    space = workdir / "stress.yaml"
    space.write_text(SPACE)
    storage = workdir / "res"
    storage.mkdir(exist_ok=True)
    name = f"killed-{seed}"
    study = storage / name
    problems: list[str] = []
    moments = (list(moments) + ["random"] * kills)[:kills]
    restore_points: dict[str, list[int]] = {}
    phase = 0
    while True:
        args = ("sweep", space, "--name", name, "--storage", storage) if phase == 0 else \
            ("resume", name, "--storage", storage)
        before = {d: len(r) for d, r in study_reports(study).items()} if study.exists() else {}
        moment = moments[phase] if phase < len(moments) else None
        # a stale state needs one to copy early, while its trial has checkpoints to go: Tune snapshots at every
        # step of its loop instead of every 10 s or more (a trial writes two or three checkpoints a second)
        env = {**_env(), "TUNE_GLOBAL_CHECKPOINT_S": "0"} if moment == "stale_state" else _env()
        proc = subprocess.Popen(_cli(*args), cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        killed = False
        if moment == "stale_state":
            killed = _kill_with_stale_state(proc, study, problems, log)
        elif moment is not None:
            killed = _kill_at(proc, study, moment, rng)
        if not killed:
            _, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                problems.append(f"phase {phase} ({args[0]}) exited {proc.returncode}: {err[-800:]}")
                break
        log(f"  phase {phase}: {args[0]} {'killed (' + moment + ')' if killed else 'completed'}")
        # where each trial restarted in this phase
        for d, rows in study_reports(study).items():
            new = rows[before.get(d, 0):]
            if new and before.get(d, 0):
                restore_points.setdefault(d, []).append(new[0]["iter"] - EVAL_EVERY)
        phase += 1
        if not killed:
            break
        if phase > kills + 3:
            problems.append("study did not complete after all resumes")
            break

    if not problems:
        from orchestrator.studydir.storage import Storage
        from orchestrator.results.tables import load_trials

        trials = load_trials(Storage.open(storage), name)
        ids = [t["trial_id"] for t in trials]
        if len(ids) != len(set(ids)):
            problems.append(f"a trial id appears twice: {ids}")
        planned = {k for k in reference_metrics}
        got = {tuple(t["config"][k] for k in KEYS) for t in trials}
        if got != planned:
            problems.append(f"trials {sorted(got)} differ from the planned {sorted(planned)}")
        errored = sorted(f.parent.name for f in study.glob("trial_*/error.txt"))
        if errored:
            # only the driver is killed here: a trial that failed on its own (e.g. could not restore) is a loss
            # even when a later resume restarted it
            problems.append(f"trials failed along the way: {errored}: "
                            + (study / errored[0] / "error.txt").read_text()[-400:])
        if any(t["state"] != "terminated" for t in trials):
            problems.append(f"unfinished trials: {[(t['trial_id'], t['state']) for t in trials]}")
        for d, points in restore_points.items():
            if points != sorted(points):
                problems.append(f"{d}: restore points went backwards across resumes: {points}")
        final = final_by_config(study)
        for key, ref in reference_metrics.items():
            if final.get(key) != ref:
                problems.append(f"trial {key}: final {final.get(key)} != uninterrupted {ref}")
    return problems


def _state_files(study: Path) -> dict[str, bytes]:
    """Tune's experiment-level state on storage: what `resume` restores from."""
    return {p.name: p.read_bytes() for p in study.glob("*.json")
            if p.name.startswith(("experiment_state-", "basic-variant-state-"))}


def _running_checkpoint(study: Path, state_files: dict[str, bytes]) -> tuple[str, int] | None:
    """(trial dir, checkpoint index) of the RUNNING trial furthest from its end whose latest result in the newest
    experiment state (the one `resume` restores) names a checkpoint, or None."""
    from orchestrator.errors import UserError
    from orchestrator.results.tables import snapshot_trials
    from orchestrator.studydir.storage import Storage

    names = [f for f in state_files if f.startswith("experiment_state-")]
    if not names:
        return None
    try:
        trials = snapshot_trials(Storage.open(str(study.parent)), study.name, text=state_files[max(names)].decode())
    except (UserError, ValueError):
        return None  # caught mid-write: look again
    found = [(int(t["last_result"]["checkpoint_dir_name"].rsplit("_", 1)[1]), t["dir"]) for t in trials
             if t["ray_status"] == "RUNNING" and t["last_result"].get("checkpoint_dir_name")]
    return (min(found)[1], min(found)[0]) if found else None


def _kill_with_stale_state(proc: subprocess.Popen, study: Path, problems: list[str], log=print) -> bool:
    """The "stale_state" moment (see the module's docstring); False if the study finished first."""
    deadline = time.time() + 300
    snapshot, found = {}, None
    while time.time() < deadline and proc.poll() is None and found is None:
        snapshot = _state_files(study) if study.exists() else {}
        found = _running_checkpoint(study, snapshot)
        time.sleep(0.05)
    if found is None:
        problems.append("stale_state: the run ended before its state named a running trial's checkpoint; missed")
        return False
    trial, index = found

    def newest() -> int:
        return max((int(p.name.rsplit("_", 1)[1]) for p in (study / trial).glob("checkpoint_*")), default=-1)

    while time.time() < deadline and proc.poll() is None and newest() < index + 3:
        time.sleep(0.02)
    if proc.poll() is not None:
        problems.append(f"stale_state: the run ended before {trial} wrote checkpoint {index} + 3; missed")
        return False
    kill_group(proc)
    log(f"  stale state names {trial} checkpoint {index}; killed at checkpoint {newest()}")
    if newest() < index + 3:
        problems.append(f"stale_state: {trial} never got past checkpoint {index} + 3")
    if any(r and r[-1].get("done") for r in study_reports(study).values()):
        # adder-sweep prunes a finished trial only once the state on storage says it finished; a copy older than
        # that is not a state a lost driver leaves, so the moment is missed rather than faked
        problems.append("stale_state: a trial finished before the kill; moment missed")
    for fname in _state_files(study):
        (study / fname).unlink()
    for fname, data in snapshot.items():
        (study / fname).write_bytes(data)
    return True


def _kill_at(proc: subprocess.Popen, study: Path, moment: str, rng: random.Random) -> bool:
    """Wait for ``moment`` and SIGKILL the driver's process group; False if it finished first."""
    deadline = time.time() + 300

    def checkpoints() -> set:
        return set(glob.glob(str(study / "trial_*" / "checkpoint_*")))

    if moment == "after_checkpoint":
        seen = checkpoints()
        while time.time() < deadline and proc.poll() is None and not (checkpoints() - seen):
            time.sleep(0.02)
    else:
        until = time.time() + rng.uniform(4.0, 14.0)
        while time.time() < until and proc.poll() is None:
            time.sleep(0.05)
    if proc.poll() is not None:
        return False
    kill_group(proc)
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="scenarios to run (default: %(default)s)")
    p.add_argument("--kills", type=int, default=3, help="driver kills per scenario (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kill times (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="adder-stress-"))
    print(f"working in {workdir}")
    ref = reference(workdir)
    passed = failed = 0
    for i in range(args.runs):
        t0 = time.time()
        print(f"scenario {i + 1}/{args.runs}")
        problems = run_scenario(workdir, ref, seed=args.seed * 1000 + i, kills=args.kills)
        if problems:
            failed += 1
            print(f"  FAILED ({time.time() - t0:.0f}s): " + "; ".join(problems))
        else:
            passed += 1
            print(f"  passed ({time.time() - t0:.0f}s)")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
