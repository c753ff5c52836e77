"""``adder-sweep extend``: grow a finished study instead of starting over.

An extension adds grid values, seeds (``--repeats``), random samples (``--num-samples``), or a larger ``iters``
to a study, checks first that every change is one the study's finished trials stay valid under, and then runs only
what is new as the study's next **generation**: a Tune experiment of its own under ``<study>/gen-K/``, in the same
storage, under the same name and claim.

* A configuration that already ran with a seed is reused as it is.
* A trial that ended on its budget is *continued* when ``iters`` grows: a new Tune trial (Ray cannot reopen a
  finished one) that starts from its predecessor's last checkpoint, named in its config (``_continues``, which the
  Tune adapter removes). Batches are a pure function of (seed, iteration) and the checkpoint holds everything, so
  under FIFO a continued trial's curve equals a study run to the larger budget from the start, when the old budget
  is a multiple of ``eval_every``. Solved, diverged and scheduler-stopped trials stay as they are.
* The tables keep one row per logical trial (``generation``, ``first_generation``, ``tune_trials``) and one curve.

What cannot change without making the finished trials a different experiment is refused, naming every key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from ..errors import UserError
from ..spec.plan import PlannedTrial, config_id, identity_keys, plan
from ..spec.space import Dist, StudySpec, respec
from ..studydir.storage import Storage, read_record, study_location, write_record

NEW_STUDY = "start a new study instead (`adder-sweep sweep FILE --set KEY=VALUE`)"


@dataclass
class ExtensionPlan:
    spec: StudySpec  # the study as it will be
    reused: list = field(default_factory=list)  # logical trial ids kept as they are
    continued: list = field(default_factory=list)  # (logical id, point) continued to the new budget
    new: list = field(default_factory=list)  # points of new trials
    notes: list = field(default_factory=list)  # what continued trials face (schedulers), for the record

    packs: list = field(default_factory=list)  # points of packed trials continued as a whole (continued_pack)

    @property
    def points(self) -> list[dict]:
        """What the new generation runs: continued packs, continued lone trials, new trials."""
        in_packs = {json.loads(p["_continues"])["trial"] for pack in self.packs
                    for p in json.loads(pack["_pack"]) if p.get("_continues")}
        return list(self.packs) + [p for tid, p in self.continued if tid not in in_packs] + list(self.new)


# -- what may change -------------------------------------------------------------------------------------------
def compatibility(old: StudySpec, new: StudySpec) -> list[tuple[str, str]]:
    """Every change from ``old`` to ``new`` that finished trials would not stay valid under, as (key, why and
    what to do). Safe: added grid values or seeds, more samples or repeats, a wider random range, a larger iters."""
    problems: list[tuple[str, str]] = []
    for key in ("metric", "mode", "scheduler", "search", "stop"):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            problems.append((key, f"changed from {a!r} to {b!r}; the finished trials were ranked and stopped under "
                                  f"the old one -- {NEW_STUDY}"))
    if new.num_samples < old.num_samples:
        problems.append(("num_samples", f"{old.num_samples} -> {new.num_samples}: an extension only adds samples"))
    if new.repeats < old.repeats:
        problems.append(("repeats", f"{old.repeats} -> {new.repeats}: an extension only adds seeds"))
    from trainables.config import field_specs

    defaults = {k: f.default for k, f in field_specs().items()}
    for key in sorted(set(old.space) | set(new.space)):
        # a key absent from a space has its default: adding the default, or removing it, changes nothing
        a, b = old.space.get(key, defaults.get(key)), new.space.get(key, defaults.get(key))
        if key not in new.space and a != b:
            problems.append((f"space.{key}", f"removed (the study's trials ran with {_show(a)}, the default is "
                                             f"{b!r}); put it back -- {NEW_STUDY}"))
            continue
        why = _change(key, a, b)
        if why:
            problems.append((f"space.{key}", why + (" (the default)" if key not in old.space and not
                                                    isinstance(a, Dist) and "changed from" in why else "")))
    return problems


def _show(v) -> str:
    return v.describe() if isinstance(v, Dist) else repr(v)


def _change(key: str, a, b) -> Optional[str]:
    if a == b:
        return None
    if not isinstance(a, Dist) and not isinstance(b, Dist):
        if key == "iters":
            return None if b > a else f"{a} -> {b}: an extension can only give trials more iterations"
        return f"changed from {a!r} to {b!r}, which changes training -- {NEW_STUDY}"
    if not isinstance(a, Dist) and b.kind == "grid":
        return None if a in b.args else f"{a!r} -> {b.describe()}: the grid must keep the value the trials ran " \
                                        f"with ({a!r})"
    if isinstance(a, Dist) and isinstance(b, Dist) and a.kind == b.kind:
        if a.kind in ("grid", "choice"):
            if b.kind == "choice" and a.args != b.args:
                return f"{a.describe()} -> {b.describe()}: a choice cannot change (its draws would) -- {NEW_STUDY}"
            missing = [v for v in a.args if v not in b.args]
            return None if not missing else f"{a.describe()} -> {b.describe()}: removes {missing}; an extension " \
                                            "only adds grid values"
        lo_a, hi_a, lo_b, hi_b = a.args[0], a.args[1], b.args[0], b.args[1]
        if a.args[2:] != b.args[2:]:
            return f"{a.describe()} -> {b.describe()}: the step changed -- {NEW_STUDY}"
        if lo_b <= lo_a and hi_b >= hi_a:
            return None  # wider: drawn samples stay, new samples come from the new range
        return f"{a.describe()} -> {b.describe()}: narrower; only a wider range keeps every finished sample in it"
    return f"{_show(a)} -> {_show(b)}: another kind of distribution -- {NEW_STUDY}"


def _budget_problems(old: StudySpec, new: StudySpec) -> list[tuple[str, str]]:
    iters = new.space.get("iters")
    if isinstance(iters, Dist):
        iters = max(iters.args)
    out = []
    if iters is not None and new.stop.get("iter") is not None and iters > new.stop["iter"]:
        out.append(("space.iters", f"{iters} is past the study's stop rule iter >= {new.stop['iter']:g}, which would "
                                   f"end every continued trial there -- {NEW_STUDY}"))
    max_t = new.scheduler.get("max_t")
    if iters is not None and max_t is not None and iters > max_t:
        out.append(("space.iters", f"{iters} is past scheduler.max_t {max_t}: {new.scheduler['type']} would stop every "
                                   f"continued trial at {max_t} -- {NEW_STUDY}"))
    return out


# -- which trials ----------------------------------------------------------------------------------------------
def _last_checkpoint(storage: Storage, name: str, trial_dir: str) -> Optional[str]:
    from pyarrow.fs import FileSelector, FileType

    base = storage.join(name, trial_dir)
    infos = storage.fs.get_file_info(FileSelector(base, allow_not_found=True))
    dirs = sorted(i.base_name for i in infos if i.type == FileType.Directory and i.base_name.startswith("checkpoint_"))
    return storage.uri(name, trial_dir, dirs[-1]) if dirs else None


def plan_extension(storage: Storage, name: str, record: dict, new: StudySpec) -> ExtensionPlan:
    """Match the new study's trials against the ones that ran: reused, continued, new."""
    from ..results.tables import dedupe_reports, load_trials, logical_trials, trial_reports

    trials = load_trials(storage, name)
    chains = logical_trials(trials)
    unfinished = [c[-1]["trial_id"] for c in chains if c[-1]["state"] != "terminated"]
    if unfinished:
        raise UserError(f"study {name!r} has unfinished trials ({', '.join(unfinished[:5])}"
                        f"{', ...' if len(unfinished) > 5 else ''}); finish it first with `adder-sweep resume "
                        f"{name}{storage.flag()}`, then extend it")
    keys = identity_keys(new)
    ran: dict[tuple[str, int], list[dict]] = {}
    for chain in chains:
        values = chain[-1]["config"]
        ran[(config_id(values, keys), int(values.get("seed", 0)))] = chain
    out = ExtensionPlan(new)
    packs: dict[str, tuple] = {}  # packed trial id -> (one of its members, its last checkpoint, continued members)
    new_iters = new.space.get("iters")
    history = tuple(StudySpec.from_json(g["spec"]) for g in record.get("generations", []) if g.get("spec")) \
        or (StudySpec.from_json(record["spec"]),)
    if new.search["type"] == "optuna":
        planned = _optuna_replicates(chains, new, keys)
    else:
        planned = plan(new, history)
    for p in planned:
        chain = ran.get((p.config_id, p.seed))
        if chain is None:
            out.new.append(dict(p.config))
            continue
        last = chain[-1]
        values = last["config"]
        reports = dedupe_reports(trial_reports(storage, name, last))
        status = (reports[-1] if reports else last["last_result"]).get("status")
        if status == "budget" and isinstance(new_iters, int) and new_iters > int(values.get("iters", 0)):
            ckpt = _last_checkpoint(storage, name, last["dir"])
            if ckpt is None:
                raise UserError(f"trial {chain[0]['trial_id']} ended on its budget but has no checkpoint in "
                                f"{storage.uri(name, last['dir'])} to continue from; {NEW_STUDY}")
            point = {**{k: v for k, v in values.items()}, "iters": new_iters,
                     "_continues": json.dumps({"trial": chain[0]["trial_id"], "checkpoint": ckpt})}
            out.continued.append((chain[0]["trial_id"], point))
            if last.get("pack"):
                packs.setdefault(last["pack"], (last, ckpt, {}))[2][last["member"]] = (chain[0]["trial_id"], point)
        else:
            out.reused.append(chain[0]["trial_id"])
    out.packs = [continued_pack(*p, new_iters) for p in packs.values()]
    if out.continued and new.scheduler["type"] in ("asha", "hyperband", "median"):
        out.notes.append(f"continued trials run in a new Tune experiment with a fresh {new.scheduler['type']} "
                         "scheduler: its rungs are compared only among this generation's trials, from the "
                         "iteration each continued trial starts at")
    return out


def continued_pack(member: dict, checkpoint: str, continued: dict, iters: int) -> dict:
    """The point of a packed trial continued as a whole from its last checkpoint (every member, in its order, so
    the checkpoint fits): the members that ended on their budget get ``iters`` and name their logical trial;
    the others ride along frozen (``_frozen``: not trained, and not a trial of the new generation)."""
    from trainables.config import PACK_SHARED

    config = member["pack_config"]
    members = []
    for k, own in enumerate(json.loads(config["_pack"])):
        if k in continued:
            tid, point = continued[k]
            members.append({**own, "iters": iters, "_continues": point["_continues"]})
        else:
            members.append({**own, "_frozen": True})
    shared = {k: config[k] for k in PACK_SHARED if k in config}
    return {**shared, "_pack": json.dumps(members), "_members": len(members),
            "_continues": json.dumps({"pack": member["pack"], "checkpoint": checkpoint})}


def _optuna_replicates(chains, new: StudySpec, keys) -> list[PlannedTrial]:
    """An Optuna study's plan for an extension: the configurations Optuna sampled, with every seed of ``new``."""
    from ..spec.plan import seeds

    out, seen = [], set()
    for chain in chains:
        values = chain[0]["config"]
        cid = config_id(values, keys)
        if cid in seen:
            continue
        seen.add(cid)
        base = {k: values[k] for k in new.space if k in values}
        for s in seeds(new):
            out.append(PlannedTrial({**base, "seed": s}, cid, s, (), 0))
    return out


def describe_plan(name: str, ext: ExtensionPlan, swept: list[str]) -> str:
    lines = [f"extend {name}: {len(ext.reused)} trial(s) reused as they are, {len(ext.continued)} continued to "
             f"iters={ext.spec.space.get('iters')}, {len(ext.new)} new"]
    for tid, p in ext.continued:
        lines.append(f"  continue {tid}: " + " ".join(f"{k}={p.get(k)}" for k in swept + ["seed"] if k in p))
    for p in ext.new:
        lines.append("  new: " + " ".join(f"{k}={p.get(k)}" for k in swept + ["seed"] if k in p))
    lines += [f"  note: {n}" for n in ext.notes]
    return "\n".join(lines)


# -- the command -----------------------------------------------------------------------------------------------
def extend(name_or_path: str, *, storage_root: str, address: Optional[str], overrides: tuple[str, ...] = (),
           space_file: Optional[str] = None, num_samples: Optional[int] = None, repeats: Optional[int] = None,
           dry_run: bool = False,
           runtime_env: Optional[dict] = None, force: bool = False, stopper=None, max_concurrent=None, cpus=None,
           gpus=None, mlflow: Optional[str] = None, pack: Optional[int] = None):
    """Check, plan and run an extension; returns (Outcome, its ExtensionPlan), the Outcome None when there is
    nothing to run (or a dry run).
    Tracking: ``mlflow`` if given (``off``: none), else the edited file's if it names a server, else the study's."""
    from ..studydir.records import now_iso
    from .study import _fit, build_tuner, recorded_connection, run_entry, study_session

    storage, name = study_location(name_or_path, storage_root)
    record = read_record(storage, name)
    old = StudySpec.from_json(record["spec"])
    if old.scheduler["type"] == "pbt":
        raise UserError(f"study {name!r} uses PBT, whose trials copy each other's weights while the study runs; a "
                        f"PBT study cannot grow -- {NEW_STUDY}")
    if space_file is not None:  # the study file as the user edited it (more grid values, say)
        from ..spec.space import read_space_file

        base, _ = read_space_file(space_file, overrides)
        new = respec(base, base.source, num_samples=num_samples, repeats=repeats)
    else:
        new = respec(old, f"{name} (extend)", overrides, num_samples=num_samples, repeats=repeats)
    new = StudySpec(**{**new.__dict__, "name": old.name, "description": new.description or old.description,
                       "resources": old.resources, "max_concurrent": old.max_concurrent,
                       "tracking": new.tracking or old.tracking})
    new = new.with_overrides(max_concurrent=max_concurrent, cpus=cpus, gpus=gpus).with_tracking(mlflow) \
        .with_pack(pack)
    problems = compatibility(old, new) + _budget_problems(old, new)
    if problems:
        raise UserError(f"cannot extend {name!r}: " + "; ".join(f"{k}: {m}" for k, m in problems))
    if new.search["type"] == "optuna" and new.num_samples > old.num_samples:
        raise UserError(f"cannot extend {name!r}: num_samples of an Optuna study: new samples would need Optuna's "
                        "sampler state, which Ray Tune does not keep across experiments; extend its seeds "
                        f"(--repeats) or iters, or {NEW_STUDY}")
    ext = plan_extension(storage, name, record, new)
    print(describe_plan(name, ext, new.swept_keys()))
    if dry_run or not ext.points:
        if not ext.points:
            print("nothing to run: every trial of the extended study has run already")
        return None, ext
    gens = record.get("generations") or [{"index": 0, "path": "", "kind": "sweep", "spec": record["spec"]}]
    index = len(gens)
    gen_path = f"gen-{index}"
    from .tracking import check_server, mlflow_uri

    check_server(mlflow_uri(new))
    with study_session(storage, name, new, **recorded_connection(record, address, runtime_env), stopper=stopper,
                       new=False, force=force) as (conn, env_record, claim):
        tuner = build_tuner(new, name, storage, points=ext.points, gen_path=gen_path)
        gens.append({"index": index, "path": gen_path, "kind": "extend", "spec": new.to_json(), "at": now_iso(),
                     "points": ext.points, "reused": len(ext.reused),
                     "continued": [tid for tid, _ in ext.continued], "new": len(ext.new), "notes": ext.notes})
        record["generations"] = gens
        record["spec"] = new.to_json()
        record["runs"].append(run_entry("extend", conn, index, overrides=list(overrides),
                                        added=len(ext.new), continued=[tid for tid, _ in ext.continued]))
        record["runtime_env"] = env_record
        write_record(storage, name, record)
        return _fit(tuner, storage, name, claim, stopper, gen_path), ext
