"""``adder-sweep status``: what is under a storage path, from the files alone (no Ray needed)."""
from __future__ import annotations

from typing import Optional

from ..errors import UserError
from ..spec.plan import num_trials
from ..spec.space import StudySpec
from ..studydir.storage import STUDY_RECORD, Storage, read_record
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


def study_summary(storage: Storage, name: str, *, best: bool = True) -> dict:
    """Trials by state and outcome, whether the study can be resumed, and its best trial -- by the one ranking
    rule of the report and the study page (results/report.py: rank_trials), on the tables as ``load_study``
    reads them (built in memory when Ray wrote more since; nothing is written). ``best=False`` skips that read
    (the end of a sweep ranks the tables it has just written)."""
    from ..results.tables import logical_trials

    record = read_record(storage, name)
    spec = record["spec"]
    chains = logical_trials(load_trials(storage, name))
    counts = {s: 0 for s in STATE_ORDER}
    outcomes: dict[str, int] = {}
    for chain in chains:
        t = chain[-1]
        counts[t["state"]] = counts.get(t["state"], 0) + 1
        status = t["last_result"].get("status")
        if status:
            outcomes[status] = outcomes.get(status, 0) + 1
    driver = driver_note(storage, name)
    alive = driver is not None
    study_spec = StudySpec.from_json(spec)
    planned = num_trials(study_spec)
    unfinished = counts["pending"] + counts["running"] + counts["errored"]
    resumable = not alive and (unfinished > 0 or len(chains) < planned)
    best_value, best_of = _best(storage, name) if chains and best else (None, None)
    return {"name": name, "trials": len(chains), "planned": planned, "counts": counts, "outcomes": outcomes,
            "metric": spec["metric"], "mode": spec["mode"], "best_value": best_value, "best": best_of,
            "driver_alive": alive, "driver": driver, "resumable": resumable,
            "created": record.get("created"), "source": record.get("source"), "swept": study_spec.swept_keys(),
            "generations": len(record.get("generations") or [None])}


def _best(storage: Storage, name: str):
    """(the ranking column, its value for the best trial), or (None, None) when no trial has results yet."""
    from ..results.report import load_study, rank_trials

    try:
        study = load_study(storage.uri(name), storage.root)
    except UserError:
        return None, None  # no trial has reported yet
    ranked, value, _ = rank_trials(study)
    if ranked.empty or ranked.iloc[0][value] != ranked.iloc[0][value]:  # (NaN: nothing reported)
        return None, None
    return value, ranked.iloc[0][value].item() if hasattr(ranked.iloc[0][value], "item") else ranked.iloc[0][value]


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def print_study_summary(storage: Storage, name: str, study=None) -> None:
    """The end of a sweep, extend or resume: trials by state and outcome, and the best trial -- by the ranking
    rule of the report and the study page (results/report.py: rank_trials) when ``study`` (its tables) is given."""
    s = study_summary(storage, name, best=False)
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items() if n)
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(s["outcomes"].items()))
    print(f"Study {name} ({storage.uri(name)}): {s['trials']}/{s['planned']} trials: {counts or 'none started'}"
          + (f"; outcomes: {outcomes}" if outcomes else ""))
    if study is None and s["trials"]:
        from ..results.report import load_study

        try:
            study = load_study(storage.uri(name), storage.root)
        except UserError:
            return  # no trial has reported yet: there is no best
    if study is not None and len(study.trials):
        line = best_trial_line(study)
        if line:
            print(line)


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
    header = f"{'study':<40} {'trials':>7} {'pend':>5} {'run':>5} {'term':>5} {'err':>5}  {'best':>24}  resumable"
    print(header)
    for n in names:
        try:
            s = study_summary(storage, n)
        except UserError as exc:
            print(f"{n:<40} unreadable: {exc}")
            continue
        c = s["counts"]
        best = f"{s['best_value']}={_fmt(s['best'])}" if s["best"] is not None else "-"
        res = s["driver"] if s["driver_alive"] else ("yes" if s["resumable"] else "no (complete)")
        print(f"{n:<40} {s['trials']:>3}/{s['planned']:<3} {c['pending']:>5} {c['running']:>5} {c['terminated']:>5} "
              f"{c['errored']:>5}  {best:>24}  {res}")
    return 0
