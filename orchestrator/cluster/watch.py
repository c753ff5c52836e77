"""Watching the cluster's head from a study's driver.

The head node holds the cluster's GCS; when it dies (a spot reclaim, an OOM, a lost machine) the whole cluster
goes, and Ray ends a driver only once the GCS has been unreachable for ``RAY_gcs_rpc_server_reconnect_timeout_s``
(60 s by default), by a hard exit of its own that no Python code sees -- the user got no word of what happened or
what to do. ``HeadWatch`` asks the GCS for the cluster's id every second (one small RPC, the one the connection
check makes, cluster/connect.py) and, once it has not answered for ``lost_after_s`` seconds in a row, calls
``on_lost`` -- the study's driver prints one line and exits (orchestrator/tune/study.py).

Only "no answer" counts: a GCS that answers anything, even a refusal of the token, is alive. A GCS that comes back
within ``lost_after_s`` (a blip, GCS fault tolerance restarting it) resets the count. ``lost_after_s``:
``ADDER_SWEEP_HEAD_LOST_AFTER_S``, else ``RAY_gcs_rpc_server_reconnect_timeout_s`` where the user set it (how long
they let the cluster be without its GCS), else 10; 0 turns the watch off and leaves it to Ray.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional

POLL_S = 1.0
RPC_TIMEOUT_S = 2.0
DEFAULT_LOST_AFTER_S = 10.0


def lost_after_s() -> float:
    for var in ("ADDER_SWEEP_HEAD_LOST_AFTER_S", "RAY_gcs_rpc_server_reconnect_timeout_s"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                from ..errors import UserError

                raise UserError(f"{var}={value!r}: not a number of seconds") from None
    return DEFAULT_LOST_AFTER_S


def gcs_answers(gcs_address: str, token: Optional[str], timeout: float = RPC_TIMEOUT_S) -> bool:
    """Whether the GCS at ``gcs_address`` answers at all (an auth refusal is an answer)."""
    from .connect import gcs_auth

    return gcs_auth(gcs_address, token, timeout=timeout) != "unreachable"


class HeadWatch:
    """A daemon thread that calls ``on_lost(seconds_without_answer)`` once, when the GCS stopped answering."""

    def __init__(self, gcs_address: str, token: Optional[str], on_lost: Callable[[float], None],
                 lost_after: Optional[float] = None, poll: float = POLL_S) -> None:
        self.gcs_address, self.token, self.on_lost = gcs_address, token, on_lost
        self.lost_after = lost_after_s() if lost_after is None else lost_after
        self.poll = poll
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "HeadWatch":
        if self.lost_after > 0:
            self._thread = threading.Thread(target=self._loop, name="adder-sweep-head-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        last_answer = time.monotonic()
        while not self._stop.wait(self.poll):
            try:
                answered = gcs_answers(self.gcs_address, self.token, timeout=min(RPC_TIMEOUT_S, self.lost_after))
            except Exception:  # grpc missing or broken: nothing to watch with; Ray's own timeout still applies
                return
            now = time.monotonic()
            if answered:
                last_answer = now
            elif now - last_answer >= self.lost_after and not self._stop.is_set():
                self.on_lost(now - last_answer)
                return
