"""adder-sweep's orchestration: search spaces, Ray Tune studies (launch, resume, extend), result tables, reports.

From Python (orchestrator/api.py; docs/analysis.py starts with one)::

    from orchestrator import sweep, load_study
    result = sweep("search_spaces/quick.yaml", name="quick")
    result.raise_for_errors().study.trials

``sweep``, ``resume`` and ``extend`` are the CLI's commands without the printing; ``read_space_file``,
``parse_space`` and ``StudySpec`` build a space in code. Every error raised on purpose is an ``AdderSweepError``.
Importing this package imports nothing heavy: each name loads its module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "sweep": "api", "resume": "api", "extend": "api", "load_study": "api", "StudyResult": "api", "TrialError": "api",
    "read_space_file": "spec.space", "parse_space": "spec.space", "StudySpec": "spec.space",
    "UserError": "errors", "TrialsFailed": "errors", "AdderSweepError": "errors",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
