"""adder-sweep's copy of Ray Tune's newest complete experiment state, kept by the driver on storage that is a file
system (local or shared disk).

Ray writes its experiment state there in place, so a driver killed mid-write leaves it cut off (objects in S3/GCS
are replaced whole, so no copy is kept there). `resume` puts the copy back (orchestrator/tune/study.py ``_mend_state``);
checkpoint pruning decides from the copy only (orchestrator/tune/callbacks.py). This is the running side's: the results
package only reads what studies wrote.
"""
from __future__ import annotations

import json
import time
from typing import Optional

from ..results.tables import experiment_state_path
from ..studydir.state_copy import (SEARCH_COPY, SEARCH_STATE, STATE_COPY, pickle_is_complete,  # noqa: F401
                                   read_state_copy, state_is_complete)
from ..studydir.storage import Storage, generation_parts


def keep_state_copy(storage: Storage, name: str, gen_path: str = "", unchanged: Optional[tuple] = None
                    ) -> tuple[Optional[bytes], Optional[tuple]]:
    """Copy the newest experiment state to STATE_COPY (atomically) if it is complete. Returns (the copied bytes or
    None, the state file's (name, size, mtime) that was copied). ``unchanged``: that signature from the previous
    call -- a state Ray has not rewritten since is not read and written again. None bytes: object storage, no
    state yet, unchanged, or caught mid-write (the previous copy stays)."""
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
        with storage.fs.open_input_stream(path) as f:
            data = f.read()
    except OSError:
        return None, unchanged
    if not state_is_complete(data):
        return None, unchanged
    _write_copy(storage, name, gen_path, STATE_COPY, path, data)
    _keep_search_copy(storage, name, gen_path, path)
    return data, signature


def _keep_search_copy(storage: Storage, name: str, gen_path: str, state_path: str) -> None:
    """Copy Ray's searcher state of the same session as the experiment state just copied (Ray writes both at each
    snapshot, and copies both to storage -- a full disk cuts either), if it is a whole pickle."""
    folder, file = state_path.rsplit("/", 1)
    searcher = f"{folder}/{SEARCH_STATE}{file[len('experiment_state-'):]}"
    try:
        with storage.fs.open_input_stream(searcher) as f:
            data = f.read()
    except OSError:
        return  # no searcher state (Optuna's has another name), or not written yet
    if pickle_is_complete(data):
        _write_copy(storage, name, gen_path, SEARCH_COPY, searcher, data)


def _write_copy(storage: Storage, name: str, gen_path: str, copy_name: str, source: str, data: bytes) -> None:
    """One of adder-sweep's copies, atomically: a line of JSON (the source file's name, when), then its bytes."""
    from ..studydir.records import write_atomic

    meta = json.dumps({"file": source.rsplit("/", 1)[-1], "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_atomic(storage.join(*generation_parts(name, gen_path, copy_name)), meta.encode() + b"\n", data)
