"""Checkpoint files: one dict per checkpoint (model, optimizer, scheduler, iteration, RNG state, config, best
metrics), written atomically and read as data only (``weights_only``). Nothing here knows about Ray."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .errors import CheckpointError, first_line
from .model import AdderNet

CHECKPOINT_FORMAT = "adder-sweep-checkpoint/1"
PACK_FORMAT = "adder-sweep-pack/1"  # a packed trial's: every member (trainables/pack_loop.py)
CHECKPOINT_FILE = "checkpoint.pt"

def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


REQUIRED_KEYS = {CHECKPOINT_FORMAT: ("format", "config", "model", "optimizer", "iter", "rng"),
                 PACK_FORMAT: ("format", "configs", "model", "optimizer", "iter", "members", "schedulers")}


def _unsafe_global(exc: Exception) -> str | None:
    """The global a weights-only load refused (e.g. ``posix.system``), if that is why it failed."""
    import re

    m = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(exc))  # torch >= 2.4 / 2.3
    return m.group(1) if m else None


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The checkpoint file itself, given it or a run/checkpoint directory holding it."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / CHECKPOINT_FILE, path / "checkpoint" / CHECKPOINT_FILE]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(f"{path}: no {CHECKPOINT_FILE} in this directory; is it an adder-sweep run?")
        path = found
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return path


def load_checkpoint(path: str | os.PathLike, fmt: str = CHECKPOINT_FORMAT) -> dict:
    """Load and check a checkpoint file of format ``fmt`` (a run's, or ``PACK_FORMAT``: a packed trial's), or the
    checkpoint inside a run/checkpoint directory.

    A checkpoint is data, never code: it is read with ``weights_only=True``, so a file that would import or call
    anything beyond tensors and plain containers is refused before any of it runs. Every way a file can be wrong
    (missing, truncated, not ours, another format version, keys missing) is a CheckpointError naming the file."""
    import pickle

    path = checkpoint_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsafe_global(exc)
        if culprit is not None:
            raise CheckpointError(f"{path}: refused to load: the file asks to import or call {culprit}, which a "
                                  "checkpoint never contains (loading it could run code); it is not an adder-sweep "
                                  "checkpoint -- do not use files from sources you do not trust") from None
        raise CheckpointError(f"{path}: checkpoint is unreadable ({type(exc).__name__}: {first_line(exc)}); "
                              "it may be truncated -- resume from an earlier checkpoint or retrain") from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise CheckpointError(f"{path}: checkpoint is unreadable ({type(exc).__name__}: {first_line(exc)}); "
                              "it may be truncated -- resume from an earlier checkpoint or retrain") from None
    check_checkpoint(state, path, fmt)
    return state


def check_checkpoint(state: Any, path: str | os.PathLike, expected: str = CHECKPOINT_FORMAT) -> None:
    """Raise CheckpointError unless ``state`` is a checkpoint dict of format ``expected``."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an adder-sweep checkpoint (it holds a {type(state).__name__}, not the "
                              f"checkpoint dict of format {expected})")
    fmt = state.get("format")
    if fmt is None:
        keys = ", ".join(sorted(map(str, state))[:6]) or "none"
        raise CheckpointError(f"{path}: not an adder-sweep checkpoint (no 'format' key; its keys: {keys}); "
                              f"this version reads format {expected}")
    if fmt in REQUIRED_KEYS and fmt != expected:
        what = {CHECKPOINT_FORMAT: "a single run's", PACK_FORMAT: "a packed trial's (many members)"}
        raise CheckpointError(f"{path}: {what[fmt]} checkpoint, where {what[expected]} was expected")
    if fmt != expected:
        raise CheckpointError(f"{path}: checkpoint format {fmt!r}, but this version of adder-sweep reads "
                              f"{expected!r}; use the adder-sweep version that wrote it")
    missing = [k for k in REQUIRED_KEYS[fmt] if k not in state]
    if missing:
        raise CheckpointError(f"{path}: damaged checkpoint: missing {', '.join(missing)}")
    config = state["config"] if fmt == CHECKPOINT_FORMAT else state["configs"]
    if not isinstance(config, (dict, list)) or not isinstance(state["model"], dict) \
            or not isinstance(state["iter"], int):
        raise CheckpointError(f"{path}: damaged checkpoint: config, model or iter has the wrong type")


def model_from_checkpoint(state: dict, path: str | os.PathLike) -> AdderNet:
    """The AdderNet a checked checkpoint describes, with its weights (CheckpointError if they do not fit)."""
    from .config import ConfigError

    try:
        config = TrainConfig.from_flat(state["config"], source="config")
    except ConfigError as exc:
        raise CheckpointError(f"{path}: damaged checkpoint: its {exc}") from None
    model = AdderNet.from_config(config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint: the weights do not fit its config "
                              f"({first_line(exc)})") from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> AdderNet:
    """An AdderNet from a run directory or checkpoint file; the architecture comes from the checkpoint."""
    return model_from_checkpoint(load_checkpoint(path), checkpoint_file(path)).to(device).eval()
