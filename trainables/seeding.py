"""Seeds derived from names, stable across processes, machines and Python versions (unlike ``hash()``).

Torch-free, so the sweep driver can plan trials (orchestrator/spec/plan.py) without importing torch.
"""
from __future__ import annotations

import hashlib


def stream_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts``; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def training_values(config: dict) -> dict:
    """A trial's Tune config as it trains: the driver's keys (``_continues``, Tune's ``__trial_index__``) dropped,
    and an Optuna replicate's index -- Tune's ``Repeater`` sets ``__trial_index__`` -- added to its seed. The one
    rule for the trial (trainables/tune_adapter.py) and for its row in the tables (orchestrator/results)."""
    out = {k: v for k, v in config.items() if not k.startswith("_")}
    index = config.get("__trial_index__")
    if index is not None:
        out["seed"] = int(config.get("seed", 0)) + int(index)
    return out
