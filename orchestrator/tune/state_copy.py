"""adder-sweep's copy of Ray Tune's newest complete experiment state, kept by the driver on storage that is a file
system (local or shared disk).

Ray writes its experiment state there in place, so a driver killed mid-write leaves it cut off (objects in S3/GCS
are replaced whole, so no copy is kept there). `resume` puts the copy back (orchestrator/tune/study.py ``_mend_state``);
checkpoint pruning decides from the copy only (orchestrator/tune/callbacks.py). This is the running side's: the results
package only reads what studies wrote.
"""
from __future__ import annotations

import json
import re
import time
from typing import Optional

from ..results.tables import experiment_state_path
from ..studydir.storage import Storage, generation_parts

STATE_COPY = "adder_state_copy.json"
# Ray's experiment state (Ray 2.52-2.60) ends with its "stats" object: a file cut off mid-write ends elsewhere
# (inside trial_data, whose JSON texts are escaped, an unescaped '"stats": {' cannot occur)
_COMPLETE_TAIL = re.compile(rb'"stats": \{[^{}]*\}\}\s*$')


def state_is_complete(text: str | bytes) -> bool:
    """Whether an experiment-state file's content is whole (not cut off mid-write). Ray's own shape is checked
    from its last bytes -- at 10,000 trials the state is ~200 MB, too much to parse every few seconds -- and any
    other shape by parsing it."""
    data = text.encode() if isinstance(text, str) else text
    if data.startswith(b'{"trial_data": [') and _COMPLETE_TAIL.search(data[-4096:]):
        return True
    try:
        return isinstance(json.loads(data)["trial_data"], list)
    except (ValueError, KeyError, TypeError):
        return False


def read_state_copy(storage: Storage, name: str, gen_path: str = "") -> Optional[dict]:
    """{"file": experiment-state file name, "saved": ISO time, "text": its content}, or None. The copy is one line
    of JSON (file, saved) followed by the state's bytes as they were (older studies: one JSON object holding the
    text)."""
    path = storage.join(*generation_parts(name, gen_path, STATE_COPY))
    if not storage.exists(path):
        return None
    try:
        with storage.fs.open_input_stream(path) as f:
            raw = f.read()
        head, _, body = raw.partition(b"\n")
        meta = json.loads(head)
        text = meta["text"] if "text" in meta else body.decode()
        return {"file": meta["file"], "saved": meta["saved"], "text": text} if state_is_complete(text) else None
    except (ValueError, KeyError, TypeError, OSError):
        return None


def keep_state_copy(storage: Storage, name: str, gen_path: str = "", unchanged: Optional[tuple] = None
                    ) -> tuple[Optional[bytes], Optional[tuple]]:
    """Copy the newest experiment state to STATE_COPY (atomically) if it is complete. Returns (the copied bytes or
    None, the state file's (name, size, mtime) that was copied). ``unchanged``: that signature from the previous
    call -- a state Ray has not rewritten since is not read and written again. None bytes: object storage, no
    state yet, unchanged, or caught mid-write (the previous copy stays)."""
    from ..studydir.records import write_atomic

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
    meta = json.dumps({"file": path.rsplit("/", 1)[-1], "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_atomic(storage.join(*generation_parts(name, gen_path, STATE_COPY)), meta.encode() + b"\n", data)
    return data, signature
