"""The adder model and its plain PyTorch training loop. Only ``tune_adapter`` imports Ray.

The torch-backed names load on first use, so ``trainables.config`` (all a sweep's driver needs) does not pay for
``import torch`` (about 1 s).
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import ConfigError, TrainConfig, field_specs

_LAZY = {"AdderNet": "model", "CheckpointError": "errors", "load_checkpoint": "checkpoint", "load_model": "checkpoint",
         "save_checkpoint": "checkpoint", "train": "loop"}

__all__ = ["AdderNet", "CheckpointError", "ConfigError", "TrainConfig", "field_specs", "load_checkpoint",
           "load_model", "save_checkpoint", "train"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
