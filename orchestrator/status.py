"""``adder-sweep status``: what is under a storage path, from the files alone (no Ray needed)."""
from __future__ import annotations

import json
import math
from typing import Optional

from .errors import UserError
from .space import StudySpec
from .storage import STUDY_RECORD, Storage
from .tables import load_trials

STATE_ORDER = ("pending", "running", "terminated", "errored")


def driver_note(storage: Storage, name: str) -> str | None:
    """Who runs the study now, from its claim: None if nobody (or a driver of this host that is gone)."""
    from .claim import holder_alive_here, on_this_host, read_claim

    info = read_claim(storage, name)
    if info is None or (on_this_host(info) and not holder_alive_here(info)):
        return None
    if on_this_host(info):
        return f"running now (pid {info.get('pid')})"
    return f"claimed by host {info.get('host')} (pid {info.get('pid')}; resume takes over if its heartbeat stopped)"


def study_summary(storage: Storage, name: str) -> dict:
    record = json.loads(storage.read_text(storage.join(name, STUDY_RECORD)))
    spec = record["spec"]
    metric, mode = spec["metric"], spec["mode"]
    trials = load_trials(storage, name)
    counts = {s: 0 for s in STATE_ORDER}
    outcomes: dict[str, int] = {}
    best, best_trial = None, None
    for t in trials:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
        status = t["last_result"].get("status")
        if status:
            outcomes[status] = outcomes.get(status, 0) + 1
        v = t["last_result"].get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            if best is None or (v > best if mode == "max" else v < best):
                best, best_trial = v, t
    driver = driver_note(storage, name)
    alive = driver is not None
    planned = StudySpec.from_json(spec).num_trials()
    unfinished = counts["pending"] + counts["running"] + counts["errored"]
    resumable = not alive and (unfinished > 0 or len(trials) < planned)
    return {"name": name, "trials": len(trials), "planned": planned, "counts": counts, "outcomes": outcomes,
            "metric": metric, "mode": mode, "best": best, "best_trial": best_trial, "driver_alive": alive, "driver": driver,
            "resumable": resumable, "created": record.get("created"), "source": record.get("source")}


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def print_study_summary(storage: Storage, name: str) -> None:
    s = study_summary(storage, name)
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items() if n)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(s["outcomes"].items()))
    print(f"Study {name} ({storage.uri(name)}): {s['trials']}/{s['planned']} trials: {counts or 'none started'}"
          + (f"; outcomes: {outcomes}" if outcomes else ""))
    t = s["best_trial"]
    if t is not None:
        cfg = t["config"]
        lr_ = t["last_result"]
        print(f"Best {s['metric']} = {_fmt(s['best'])} by {t['trial_id']}: cell={cfg.get('cell')} layers={cfg.get('layers')} "
              f"digits={cfg.get('digits')} lr={_fmt(cfg.get('lr'))} seed={cfg.get('seed')} "
              f"(status {lr_.get('status')}, iters {lr_.get('iter')}, iters_to_solve {_fmt(lr_.get('iters_to_solve'))})")


def print_status(storage_root: str, name: Optional[str]) -> int:
    storage = Storage.open(storage_root)
    if name is not None:
        from .storage import read_record, study_location

        storage, name = study_location(name, storage_root)
        read_record(storage, name)
        names = [name]
    else:
        names = [n for n in storage.list_dirs() if storage.exists(storage.join(n, STUDY_RECORD))]
        if not names:
            print(f"no studies under {storage.root}")
            return 0
    header = f"{'study':<40} {'trials':>7} {'pend':>5} {'run':>5} {'term':>5} {'err':>5}  {'best':>12}  resumable"
    print(header)
    for n in names:
        try:
            s = study_summary(storage, n)
        except UserError as exc:
            print(f"{n:<40} unreadable: {exc}")
            continue
        c = s["counts"]
        best = f"{s['metric']}={_fmt(s['best'])}" if s["best"] is not None else "-"
        res = s["driver"] if s["driver_alive"] else ("yes" if s["resumable"] else "no (complete)")
        print(f"{n:<40} {s['trials']:>3}/{s['planned']:<3} {c['pending']:>5} {c['running']:>5} {c['terminated']:>5} "
              f"{c['errored']:>5}  {best:>12}  {res}")
    return 0
