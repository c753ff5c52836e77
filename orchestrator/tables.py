"""Result tables of a study, read from what Ray Tune wrote, without importing Ray.

Sources in a study directory: the newest ``experiment_state-*.json`` (every trial's id, state, config, last
result) and each trial's ``result.json`` (one JSON line per report).
"""
from __future__ import annotations

import json
from typing import Any

from .errors import UserError
from .storage import Storage

RAY_STATES = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "pending", "TERMINATED": "terminated",
              "ERROR": "errored"}


def experiment_state_path(storage: Storage, name: str) -> str | None:
    from pyarrow.fs import FileSelector

    base = storage.join(name)
    if not storage.is_dir(base):
        return None
    files = [i for i in storage.fs.get_file_info(FileSelector(base)) if
             i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")]
    if not files:
        return None
    return max(files, key=lambda i: (i.mtime_ns or 0, i.base_name)).path


def load_trials(storage: Storage, name: str) -> list[dict[str, Any]]:
    """One dict per trial: trial_id, ray_status, state, config, last_result, num_failures, dir, error_file."""
    path = experiment_state_path(storage, name)
    if path is None:
        return []
    try:
        state = json.loads(storage.read_text(path))
        rows = []
        for trial_json, runtime_json in state["trial_data"]:
            t = json.loads(trial_json)
            rt = json.loads(runtime_json)
            rows.append({
                "trial_id": t["trial_id"],
                "ray_status": t["status"],
                "state": RAY_STATES.get(t["status"], t["status"].lower()),
                "config": t["config"],
                "dir": t.get("relative_logdir") or t.get("custom_dirname"),
                "last_result": rt.get("last_result") or {},
                "num_failures": rt.get("num_failures", 0),
                "error_file": rt.get("error_filename"),
            })
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{storage.uri(name, path.rsplit('/', 1)[-1])}: experiment state is unreadable "
                        f"({type(exc).__name__}: {exc}); it may be truncated. Ray keeps no older copy; "
                        "the per-trial folders are intact") from None
    return rows


def load_reports(storage: Storage, name: str, trial_dir: str) -> list[dict[str, Any]]:
    """Every report of one trial, in order, from its result.json (a truncated last line is skipped)."""
    path = storage.join(name, trial_dir, "result.json")
    if not storage.exists(path):
        return []
    out = []
    for line in storage.read_text(path).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a killed process
    return out
