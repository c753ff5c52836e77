"""``adder-sweep status``: what is under a storage path, from the files alone (no Ray needed)."""
from __future__ import annotations

import json
import math
from typing import Optional

from ..errors import UserError
from ..spec.plan import num_trials
from ..spec.space import StudySpec
from ..studydir.storage import STUDY_RECORD, Storage
from ..results.tables import load_trials

STATE_ORDER = ("pending", "running", "terminated", "errored")


def driver_note(storage: Storage, name: str) -> str | None:
    """Who runs the study now, from its claim: None if nobody (or a driver of this host that is gone)."""
    from ..studydir.claim import holder_alive_here, on_this_host, read_claim

    info = read_claim(storage, name)
    if info is None or (on_this_host(info) and not holder_alive_here(info)):
        return None
    if on_this_host(info):
        return f"running now (pid {info.get('pid')})"
    return f"claimed by host {info.get('host')} (pid {info.get('pid')}; resume takes over if its heartbeat stopped)"


def best_key(value: float, mode: str, iters_to_solve) -> tuple:
    """Sort key of a trial's result, best first: the metric, then -- among trials that reach the same value (all
    solved, say) -- the fewer iterations it took. The one rule behind "best" everywhere (status, report)."""
    its = iters_to_solve if isinstance(iters_to_solve, (int, float)) and iters_to_solve == iters_to_solve else math.inf
    return (-value if mode == "max" else value, its)


def study_summary(storage: Storage, name: str) -> dict:
    from ..results.tables import logical_trials

    record = json.loads(storage.read_text(storage.join(name, STUDY_RECORD)))
    spec = record["spec"]
    metric, mode = spec["metric"], spec["mode"]
    chains = logical_trials(load_trials(storage, name))
    counts = {s: 0 for s in STATE_ORDER}
    outcomes: dict[str, int] = {}
    ranked = []
    for chain in chains:
        t = chain[-1]
        counts[t["state"]] = counts.get(t["state"], 0) + 1
        status = t["last_result"].get("status")
        if status:
            outcomes[status] = outcomes.get(status, 0) + 1
        v = t["last_result"].get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            ranked.append((best_key(v, mode, t["last_result"].get("iters_to_solve")), v, t, chain[0]["trial_id"]))
    all_solved = bool(chains) and all(c[-1]["last_result"].get("status") == "solved" for c in chains)
    # the one rule (results/report.py: default_value): when every trial solved, fewer iterations rank first
    ranked.sort(key=lambda r: (r[0][1], r[0][0]) if all_solved else r[0])
    best, best_trial, best_id = (ranked[0][1], ranked[0][2], ranked[0][3]) if ranked else (None, None, None)
    driver = driver_note(storage, name)
    alive = driver is not None
    study_spec = StudySpec.from_json(spec)
    planned = num_trials(study_spec)
    unfinished = counts["pending"] + counts["running"] + counts["errored"]
    resumable = not alive and (unfinished > 0 or len(chains) < planned)
    tied = sum(1 for r in ranked if r[1] == best)
    return {"name": name, "trials": len(chains), "planned": planned, "counts": counts, "outcomes": outcomes,
            "metric": metric, "mode": mode, "best": best, "best_trial": best_trial, "best_id": best_id,
            "best_tied": tied, "all_solved": all_solved, "driver_alive": alive, "driver": driver,
            "resumable": resumable,
            "created": record.get("created"), "source": record.get("source"), "swept": study_spec.swept_keys(),
            "generations": len(record.get("generations") or [None])}


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def print_study_summary(storage: Storage, name: str, study=None) -> None:
    """The end of a sweep, extend or resume: trials by state and outcome, and the best trial -- by the ranking
    rule of the report and the study page (results/report.py: rank_trials) when ``study`` (its tables) is given."""
    s = study_summary(storage, name)
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items() if n)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(s["outcomes"].items()))
    print(f"Study {name} ({storage.uri(name)}): {s['trials']}/{s['planned']} trials: {counts or 'none started'}"
          + (f"; outcomes: {outcomes}" if outcomes else ""))
    if study is not None and len(study.trials):
        line = best_trial_line(study)
        if line:
            print(line)
        return
    t = s["best_trial"]
    if t is not None:
        cfg = t["config"]
        lr_ = t["last_result"]
        tie = (" (every trial solved: ranked by iters_to_solve)" if s["all_solved"] else
               f" (ties on {s['metric']} broken by iters_to_solve)" if s["best_tied"] > 1 else "")
        head = (f"Best: {s['best_id']} solved in {lr_.get('iters_to_solve')} iterations" if s["all_solved"]
                else f"Best {s['metric']} = {_fmt(s['best'])} by {s['best_id']}")
        keys = [k for k in s["swept"] if k != "seed"] + ["seed"]
        values = " ".join(f"{k}={_fmt(cfg.get(k))}" for k in keys if k in cfg)
        print(f"{head}: {values} (status {lr_.get('status')}, iters {lr_.get('iter')}, iters_to_solve "
              f"{_fmt(lr_.get('iters_to_solve'))})" + tie)


def best_trial_line(study) -> Optional[str]:
    """The best trial in one line, by the report's ranking rule (its metric; iters_to_solve when all solved;
    best_loss when all tie), with its swept keys and seed."""
    from ..results.report import fmt, rank_trials

    ranked, value, why = rank_trials(study)
    if ranked.empty:
        return None
    best = ranked.iloc[0]
    keys = [k for k in study.swept if k != "seed"] + ["seed"]
    values = " ".join(f"{k}={fmt(best[k]) if not isinstance(best[k], str) else best[k]}" for k in keys
                      if k in best.index)
    its = best.get("iters_to_solve")
    return (f"Best {value} = {fmt(best[value])} by {best['trial_id']}: {values} (outcome {best.get('outcome')}, "
            f"iters {best.get('iters_run')}, iters_to_solve {fmt(its)})" + (f"; {why}" if why else ""))


def print_status(storage_root: str, name: Optional[str]) -> int:
    storage = Storage.open(storage_root)
    if name is not None:
        from ..studydir.storage import read_record, study_location

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
