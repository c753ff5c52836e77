"""Reading adder-sweep's copy of Ray Tune's newest complete experiment state (written by the driver,
orchestrator/tune/state_copy.py): what `resume` puts back and what the tables read when Ray's own file is cut off.
Nothing here writes."""
from __future__ import annotations

import io
import json
import pickle
import re
from typing import Optional

from .storage import Storage, generation_parts

STATE_COPY = "adder_state_copy.json"
# Ray's experiment state (Ray 2.52-2.60) ends with its "stats" object: a file cut off mid-write ends elsewhere
# (inside trial_data, whose JSON texts are escaped, an unescaped '"stats": {' cannot occur)
_COMPLETE_TAIL = re.compile(rb'"stats": \{[^{}]*\}\}\s*$')


def ray_state_ends_whole(head: bytes, tail: bytes) -> bool:
    """Whether a file that begins with ``head`` and ends with ``tail`` (its last 4096 bytes) is a whole experiment
    state of Ray's own shape (False: not whole, or another shape -- parse it to know)."""
    return head.startswith(b'{"trial_data": [') and _COMPLETE_TAIL.search(tail[-4096:]) is not None


def state_is_complete(text: str | bytes) -> bool:
    """Whether an experiment-state file's content is whole (not cut off mid-write). Ray's own shape is checked
    from its last bytes -- at 10,000 trials the state is ~200 MB, too much to parse every few seconds -- and any
    other shape by parsing it."""
    data = text.encode() if isinstance(text, str) else text
    if ray_state_ends_whole(data[:64], data[-4096:]):
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


class _Inert:
    """What every class and function a pickle names becomes when ``pickle_is_complete`` reads it: an object that
    accepts any arguments and state and does nothing, so no code the pickle names is ever imported or called."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return _Inert

    def persistent_load(self, pid):
        return None


def pickle_is_complete(data: bytes) -> bool:
    """Whether a pickle's bytes are whole: read to its STOP opcode by the C unpickler, with every class and function
    it names replaced by ``_Inert`` -- nothing it names is imported or run. (pickletools reads it just as safely, but
    in Python: 0.17 s for Ray's searcher state of a 5,000-trial study, this 0.013 s; the driver checks it every few
    seconds.)"""
    stream = io.BytesIO(data)
    try:
        _InertUnpickler(stream).load()
    except Exception:  # a cut stream ("pickle data was truncated", EOFError), or garbage
        return False
    return stream.tell() == len(data)


def read_search_copy(storage: Storage, name: str, gen_path: str = "") -> Optional[dict]:
    """{"file": searcher-state file name, "saved": ISO time, "data": its bytes}, or None."""
    found = read_copy(storage, name, gen_path, SEARCH_COPY)
    if found is None or not pickle_is_complete(found[1]):
        return None
    return {"file": found[0]["file"], "saved": found[0]["saved"], "data": found[1]}
