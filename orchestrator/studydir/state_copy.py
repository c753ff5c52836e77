"""Reading adder-sweep's copy of Ray Tune's newest complete experiment state (written by the driver,
orchestrator/tune/state_copy.py): what `resume` puts back and what the tables read when Ray's own file is cut off.
Nothing here writes."""
from __future__ import annotations

import json
import re
from typing import Optional

from .storage import Storage, generation_parts

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


def read_copy(storage: Storage, name: str, gen_path: str, copy_name: str) -> Optional[tuple[dict, bytes]]:
    """(its header, the copied bytes) of one of adder-sweep's copies: one line of JSON (file, saved), then the
    bytes as they were; None if there is none or it is unreadable."""
    path = storage.join(*generation_parts(name, gen_path, copy_name))
    if not storage.exists(path):
        return None
    try:
        with storage.fs.open_input_stream(path) as f:
            raw = f.read()
        head, _, body = raw.partition(b"\n")
        meta = json.loads(head)
        return (meta, body) if isinstance(meta, dict) and "file" in meta and "saved" in meta else None
    except (ValueError, TypeError, OSError):
        return None


def read_state_copy(storage: Storage, name: str, gen_path: str = "") -> Optional[dict]:
    """{"file": experiment-state file name, "saved": ISO time, "text": its content}, or None (older studies' copy:
    one JSON object holding the text)."""
    found = read_copy(storage, name, gen_path, STATE_COPY)
    if found is None:
        return None
    meta, body = found
    try:
        text = meta["text"] if "text" in meta else body.decode()
    except UnicodeDecodeError:
        return None
    return {"file": meta["file"], "saved": meta["saved"], "text": text} if state_is_complete(text) else None

SEARCH_COPY = "adder_search_copy.pkl"  # beside it: the newest complete searcher state of the same moment
SEARCH_STATE = "basic-variant-state-"  # Ray Tune's searcher state files (a pickle; grid and random studies)


def pickle_is_complete(data: bytes) -> bool:
    """Whether a pickle's bytes are whole, read opcode by opcode (pickletools: nothing is loaded or run)."""
    import pickletools

    try:
        ops = list(pickletools.genops(data))
    except Exception:  # a cut stream: "truncated", "unexpected EOF", or garbage
        return False
    return bool(ops) and ops[-1][0].name == "STOP" and ops[-1][2] + 1 == len(data)


def read_search_copy(storage: Storage, name: str, gen_path: str = "") -> Optional[dict]:
    """{"file": searcher-state file name, "saved": ISO time, "data": its bytes}, or None."""
    found = read_copy(storage, name, gen_path, SEARCH_COPY)
    if found is None or not pickle_is_complete(found[1]):
        return None
    return {"file": found[0]["file"], "saved": found[0]["saved"], "data": found[1]}
