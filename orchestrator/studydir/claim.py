"""Who runs a study: an exclusive claim on its name, kept alive by a heartbeat.

Every command that runs trials (``sweep``, ``resume``, ``extend``) holds the study's claim, ``driver.json`` in the
study directory: the driver's host, pid (and the pid's start time, so a reused pid is not mistaken for it), a random
owner id and a heartbeat counter the driver advances every few seconds.

* A new study's name is claimed atomically: on a filesystem the study directory is created with ``mkdir`` (which
  fails if it exists) and the claim file with ``O_EXCL``; of two drivers racing for one name one wins and the other
  is refused. Object stores (S3, GCS) offer no exclusive create through pyarrow: there the claim is written, then
  read back after a pause, which catches most races but not all (documented as best effort).
* ``resume`` takes over a study whose driver is gone: on the same host when its pid no longer runs, on another host
  when its heartbeat has not advanced for ``STALE_AFTER_S`` seconds -- judged by watching the counter, never by
  comparing clocks across hosts. ``--force`` takes over at once.
* A driver whose claim was taken over notices at its next heartbeat and stops its study (``on_lost``).

Nothing here imports Ray.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..errors import UserError
from .records import now_iso
from .storage import Storage

CLAIM_FILE = "driver.json"
BEAT_EVERY_S = float(os.environ.get("ADDER_SWEEP_BEAT_EVERY_S", "5"))
STALE_AFTER_S = float(os.environ.get("ADDER_SWEEP_STALE_AFTER_S", "60"))
_READBACK_PAUSE_S = 1.0  # object stores: how long a racing writer has to show up before we trust our claim


def _pid_start(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a pid from its reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_runs(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # runs, as another user
    if start is not None and _pid_start(pid) not in (None, start):
        return False  # the pid was reused by another process
    return True


def read_claim(storage: Storage, name: str) -> Optional[dict]:
    """The current claim of a study, or None if nobody holds it (or the file is unreadable)."""
    path = storage.join(name, CLAIM_FILE)
    try:
        if not storage.exists(path):
            return None
        info = json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def describe(info: dict) -> str:
    return f"host {info.get('host', '?')} (pid {info.get('pid', '?')}, since {info.get('started', '?')})"


def on_this_host(info: dict) -> bool:
    return info.get("host") == socket.gethostname()


def holder_alive_here(info: dict) -> bool:
    """For a claim made on this host: does its driver process still run?"""
    try:
        return _pid_runs(int(info["pid"]), info.get("pid_start"))
    except (KeyError, TypeError, ValueError):
        return False


@dataclass
class Claim:
    """A claim this process holds; ``start_heartbeat`` keeps it alive, ``release`` gives it up."""

    storage: Storage
    name: str
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    beat: int = 0
    lost_to: Optional[dict] = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    @property
    def path(self) -> str:
        return self.storage.join(self.name, CLAIM_FILE)

    def info(self) -> dict:
        pid = os.getpid()
        return {"owner": self.owner, "host": socket.gethostname(), "pid": pid, "pid_start": _pid_start(pid),
                "started": now_iso(), "beat": self.beat, "beat_every_s": BEAT_EVERY_S, "argv": sys.argv[1:]}

    def write(self) -> None:
        self.storage.write_text(self.path, json.dumps(self.info(), indent=1) + "\n")

    def still_ours(self) -> bool:
        current = read_claim(self.storage, self.name)
        if current is not None and current.get("owner") != self.owner:
            self.lost_to = current
            return False
        return True

    def start_heartbeat(self, on_lost: Callable[[dict], None]) -> None:
        """Advance the heartbeat every BEAT_EVERY_S seconds; call ``on_lost(new_claim)`` once if another driver
        took the study over (and stop beating)."""
        def loop() -> None:
            while not self._stop.wait(BEAT_EVERY_S):
                try:
                    if not self.still_ours():
                        on_lost(self.lost_to or {})
                        return
                    self.beat += 1
                    self.write()
                except Exception as exc:  # a storage hiccup must not kill the study; the next beat retries
                    print(f"adder-sweep: heartbeat of study {self.name} not written ({exc})", file=sys.stderr)

        self._thread = threading.Thread(target=loop, name="adder-sweep-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, unless another driver holds it by now."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=BEAT_EVERY_S + 5)
        try:
            if self.still_ours():
                self.storage.delete(self.path)
        except OSError:
            pass


def claim_new_study(storage: Storage, name: str) -> Claim:
    """Claim the name of a study that does not exist yet, atomically where the storage allows; creates its
    directory. UserError if the name is taken (by an existing study or a racing driver)."""
    taken = UserError(f"study {name!r} already exists under {storage.root}; continue it with "
                      f"`adder-sweep resume {name}{storage.flag()}`, or pick another --name")
    claim = Claim(storage, name)
    if storage.is_local:
        study_dir = storage.join(name)
        os.makedirs(storage.path, exist_ok=True)  # made by check_writable; a racing driver may share it
        try:
            os.mkdir(study_dir)  # atomic: exactly one of two racing drivers creates it
        except FileExistsError:
            raise taken from None
        try:
            fd = os.open(claim.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(claim.info(), indent=1) + "\n")
        except OSError:
            os.rmdir(study_dir)
            raise
        return claim
    if storage.exists(storage.join(name)):
        raise taken
    claim.write()
    time.sleep(_READBACK_PAUSE_S)
    if not claim.still_ours():
        raise UserError(f"study {name!r} was claimed at the same moment by {describe(claim.lost_to or {})}; "
                        "this driver leaves it to that one")
    return claim


def claim_existing_study(storage: Storage, name: str, *, force: bool) -> Claim:
    """Take the claim of an existing study for ``resume``/``extend``: at once if nobody holds it, if its driver ran
    on this host and is gone, or with ``force``; after watching its heartbeat stand still for STALE_AFTER_S seconds
    if it ran elsewhere. UserError if its driver is alive."""
    current = read_claim(storage, name)
    if current is not None and not force:
        if on_this_host(current):
            if holder_alive_here(current):
                raise UserError(f"study {name!r} is running: its driver is {describe(current)} on this host; stop "
                                f"it first (Ctrl-C), or wait for it")
        else:
            _wait_for_stale_heartbeat(storage, name, current)
    claim = Claim(storage, name)
    claim.write()
    if current is not None:
        print(f"adder-sweep: took over study {name} from its previous driver, {describe(current)}", file=sys.stderr)
    return claim


def _wait_for_stale_heartbeat(storage: Storage, name: str, current: dict) -> None:
    print(f"adder-sweep: study {name} is claimed by a driver on {describe(current)}; watching its heartbeat for up "
          f"to {STALE_AFTER_S:g}s to see whether it still runs (--force skips this)", file=sys.stderr, flush=True)
    deadline = time.monotonic() + STALE_AFTER_S
    while time.monotonic() < deadline:
        time.sleep(min(1.0, BEAT_EVERY_S / 2))
        now = read_claim(storage, name)
        if now is None:
            return  # released meanwhile
        if now.get("owner") != current.get("owner") or now.get("beat") != current.get("beat"):
            raise UserError(f"study {name!r} is running: its driver on {describe(now)} advanced its heartbeat "
                            "just now; stop it there, or wait for it")
