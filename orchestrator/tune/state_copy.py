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
                                   ray_state_ends_whole, read_state_copy, state_is_complete)
from ..studydir.storage import Storage, generation_parts


def keep_state_copy(storage: Storage, name: str, gen_path: str = "", unchanged: Optional[tuple] = None
                    ) -> tuple[Optional[str], Optional[tuple]]:
    """Copy the newest experiment state to STATE_COPY (atomically) if it is complete. Returns (the copy's path or
    None, the state file's (name, size, mtime) that was copied). ``unchanged``: that signature from the previous
    call -- a state Ray has not rewritten since is not read and written again. None path: object storage, no
    state yet, unchanged, or caught mid-write (the previous copy stays).

    The state is streamed into the copy a MB at a time (at 10,000 trials it is ~200 MB: read whole, every copy
    cost the driver that much again), checked whole by its first and last bytes, and kept only if Ray did not
    rewrite it meanwhile (same size and mtime after as before)."""
    if not storage.is_local:
        return None, None
    path = experiment_state_path(storage, name, gen_path)
    if path is None:
        return None, None
    info = storage.fs.get_file_info(path)
    signature = (path, info.size, info.mtime_ns)
    if signature == unchanged:
        return None, signature
    ends = {"head": b"", "tail": b""}

    def chunks():
        with storage.fs.open_input_stream(path) as f:
            while chunk := f.read(_CHUNK):
                if len(ends["head"]) < 64:
                    ends["head"] += chunk[:64]
                ends["tail"] = (ends["tail"] + chunk)[-4096:]
                yield chunk

    def whole_and_unchanged(written) -> bool:
        after = storage.fs.get_file_info(path)
        if (after.size, after.mtime_ns) != (info.size, info.mtime_ns):
            return False
        if ray_state_ends_whole(ends["head"], ends["tail"]):  # Ray's shape, checked by its last bytes
            return True
        from ..results.tables import state_entries

        try:  # cut off, or another shape: the copy just written is parsed to know (a chunk at a time)
            with open_state_copy(written) as f:
                for _ in state_entries(f):
                    pass
        except ValueError:  # cut off, or not an experiment state
            return False
        return True
    try:
        copied = _write_copy(storage, name, gen_path, STATE_COPY, path, chunks=chunks(), keep_if=whole_and_unchanged)
    except FileNotFoundError:
        return None, unchanged  # replaced by a newer state while read
    if copied is None:
        return None, unchanged
    _keep_search_copy(storage, name, gen_path, path)
    return copied, signature


def open_state_copy(path: str):
    """A binary stream of the experiment state held in adder-sweep's copy at ``path`` (past its header line)."""
    f = open(path, "rb")
    f.readline()
    return f


_CHUNK = 1 << 20


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


def _write_copy(storage: Storage, name: str, gen_path: str, copy_name: str, source: str, data: bytes = b"",
                **streamed) -> Optional[str]:
    """One of adder-sweep's copies, atomically: a line of JSON (the source file's name, when), then its bytes
    (``data``, or ``chunks`` -- see write_atomic, also for ``keep_if``). Returns the copy's path, or None if
    ``keep_if`` refused it."""
    from ..studydir.records import write_atomic

    meta = json.dumps({"file": source.rsplit("/", 1)[-1], "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    target = storage.join(*generation_parts(name, gen_path, copy_name))
    return target if write_atomic(target, meta.encode() + b"\n", data, **streamed) is not None else None
