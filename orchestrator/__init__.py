"""adder-sweep's orchestration: CLI, search spaces, Ray Tune launch and resume, result tables, reports.

For analysis in Python: ``from orchestrator import load_study`` (see docs/analysis.py). Importing this package
imports nothing heavy; ``load_study`` loads pandas on first use.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_study"]


def __getattr__(name: str) -> Any:
    if name == "load_study":
        from .results.report import load_study

        return load_study
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
