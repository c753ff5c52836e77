"""adder-sweep's copy of Ray Tune's newest complete experiment state, kept by the driver on storage that is a file
system (local or shared disk).

Ray writes its experiment state there in place, so a driver killed mid-write leaves it cut off (objects in S3/GCS
are replaced whole, so no copy is kept there). `resume` puts the copy back (orchestrator/study.py ``_mend_state``);
checkpoint pruning decides from the copy only (orchestrator/callbacks.py). This is the running side's: the results
package only reads what studies wrote.
"""
from __future__ import annotations

import json
import time
from typing import Optional

from .results.tables import experiment_state_path
from .storage import Storage, generation_parts

STATE_COPY = "adder_state_copy.json"


def state_is_complete(text: str) -> bool:
    """Whether an experiment-state file's text parses as one (not cut off mid-write)."""
    try:
        return isinstance(json.loads(text)["trial_data"], list)
    except (ValueError, KeyError, TypeError):
        return False


def read_state_copy(storage: Storage, name: str, gen_path: str = "") -> Optional[dict]:
    """{"file": experiment-state file name, "saved": ISO time, "text": its content}, or None."""
    path = storage.join(*generation_parts(name, gen_path, STATE_COPY))
    if not storage.exists(path):
        return None
    try:
        copy = json.loads(storage.read_text(path))
        return copy if state_is_complete(copy["text"]) else None
    except (ValueError, KeyError, TypeError):
        return None


def keep_state_copy(storage: Storage, name: str, gen_path: str = "", unchanged: Optional[tuple] = None
                    ) -> tuple[Optional[str], Optional[tuple]]:
    """Copy the newest experiment state to STATE_COPY (atomically) if it is complete. Returns (the copied text or
    None, the state file's (name, size, mtime) that was copied). ``unchanged``: that signature from the previous
    call -- a state Ray has not rewritten since is not read, parsed and written again (at 10,000 trials the state
    is tens of MB). None text: object storage, no state yet, unchanged, or caught mid-write (the previous copy
    stays)."""
    if not storage.is_local:
        return None, None
    path = experiment_state_path(storage, name, gen_path)
    if path is None:
        return None, None
    info = storage.fs.get_file_info(path)
    signature = (path, info.size, info.mtime_ns)
    if signature == unchanged:
        return None, signature
    try:
        text = storage.read_text(path)
    except (OSError, ValueError):  # ValueError: cut inside a character
        return None, unchanged
    if not state_is_complete(text):
        return None, unchanged
    storage.write_text(storage.join(*generation_parts(name, gen_path, STATE_COPY)), json.dumps(
        {"file": path.rsplit("/", 1)[-1], "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "text": text}))
    return text, signature
