"""The study claim (orchestrator/studydir/claim.py): one driver per study, heartbeats, and taking over from a lost driver.

Claims are plain files; these tests use real processes and real files, no Ray."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from orchestrator.studydir import claim as claims
from orchestrator.errors import UserError
from orchestrator.studydir.storage import Storage
from tests.conftest import ROOT

RACE = """
import sys, time
sys.path.insert(0, {root!r})
from orchestrator.studydir.claim import claim_new_study
from orchestrator.errors import UserError
from orchestrator.studydir.storage import Storage
time.sleep(max(0.0, {start} - time.time()))
try:
    claim_new_study(Storage.open({storage!r}), "race")
    print("won")
except UserError as exc:
    print("lost:", exc)
"""


def test_two_drivers_racing_for_one_name_one_wins(tmp_path):
    storage = tmp_path / "studies"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", RACE.format(root=str(ROOT), start=start, storage=str(storage))],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(o.split(":")[0] for o in outs) == ["lost", "lost", "lost", "won"], outs
    assert all("already exists" in o for o in outs if o.startswith("lost"))
    info = json.loads((storage / "race" / "driver.json").read_text())
    assert info["host"] == socket.gethostname() and info["beat"] == 0


def _fake_claim(storage: Storage, name: str, **fields):
    (storage.fs.create_dir(storage.join(name), recursive=True))
    info = {"owner": "someone-else", "host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
            "started": "2026-01-01T00:00:00+00:00", "beat": 7, **fields}
    storage.write_text(storage.join(name, "driver.json"), json.dumps(info))
    return info


def test_resume_refuses_a_study_whose_driver_runs_on_this_host(tmp_path):
    st = Storage.open(tmp_path)
    _fake_claim(st, "s", pid=os.getpid(), pid_start=claims._pid_start(os.getpid()))
    with pytest.raises(UserError, match=r"study 's' is running: its driver is host .* \(pid \d+.*on this host"):
        claims.claim_existing_study(st, "s", force=False)


def test_resume_takes_over_from_a_dead_driver_on_this_host(tmp_path, capsys):
    st = Storage.open(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _fake_claim(st, "s", pid=gone.pid)
    c = claims.claim_existing_study(st, "s", force=False)
    assert claims.read_claim(st, "s")["owner"] == c.owner
    assert "took over study s" in capsys.readouterr().err
    c.release()
    assert claims.read_claim(st, "s") is None


def test_a_reused_pid_is_not_mistaken_for_the_driver(tmp_path):
    st = Storage.open(tmp_path)
    _fake_claim(st, "s", pid=os.getpid(), pid_start="1")  # our pid, but another process's start time
    c = claims.claim_existing_study(st, "s", force=False)
    assert claims.read_claim(st, "s")["owner"] == c.owner


def _beating_elsewhere(storage, name, stop, every=0.3):
    """A driver on another host: its claim's heartbeat advances until ``stop`` is set."""
    info = _fake_claim(storage, name, host="another-host", pid=1)

    def beat():
        while not stop.wait(every):
            info["beat"] += 1
            storage.write_text(storage.join(name, "driver.json"), json.dumps(info))

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    return t


def test_a_driver_elsewhere_is_judged_by_its_heartbeat(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(claims, "STALE_AFTER_S", 3.0)
    st = Storage.open(tmp_path)
    stop = threading.Event()
    beater = _beating_elsewhere(st, "s", stop)
    with pytest.raises(UserError, match="its driver on host another-host .* advanced its heartbeat just now"):
        claims.claim_existing_study(st, "s", force=False)
    stop.set()
    beater.join()
    t0 = time.monotonic()
    c = claims.claim_existing_study(st, "s", force=False)  # the heartbeat stands still: taken over
    assert time.monotonic() - t0 >= 3.0
    assert claims.read_claim(st, "s")["owner"] == c.owner
    err = capsys.readouterr().err
    assert "watching its heartbeat for up to 3s" in err and "took over study s" in err


def test_force_takes_over_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "STALE_AFTER_S", 30.0)
    st = Storage.open(tmp_path)
    stop = threading.Event()
    _beating_elsewhere(st, "s", stop)
    t0 = time.monotonic()
    c = claims.claim_existing_study(st, "s", force=True)
    stop.set()
    assert time.monotonic() - t0 < 5
    assert c.owner != "someone-else"


def test_a_driver_whose_claim_was_taken_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "BEAT_EVERY_S", 0.2)
    st = Storage.open(tmp_path)
    mine = claims.claim_new_study(st, "s")
    lost = []
    mine.start_heartbeat(lost.append)
    time.sleep(0.7)
    assert json.loads((tmp_path / "s" / "driver.json").read_text())["beat"] >= 2  # it advances
    thief = claims.claim_existing_study(st, "s", force=True)
    deadline = time.time() + 5
    while not lost and time.time() < deadline:
        time.sleep(0.05)
    assert lost and lost[0]["owner"] == thief.owner
    mine.release()  # does not remove the new owner's claim
    assert claims.read_claim(st, "s")["owner"] == thief.owner
