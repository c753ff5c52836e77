"""Search-space files: load a YAML study description into a StudySpec and validate all of it.

A file has study keys (``name``, ``metric``, ``scheduler``, ...) and a ``space`` mapping whose keys are the
training-config fields (``trainables.config``), each a constant or one distribution:
``{grid: [..]}``, ``{choice: [..]}``, ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``
(hi exclusive), ``{quniform: [lo, hi, q]}``, ``{qrandint: [lo, hi, q]}``.

Everything is checked before anything starts; every problem is reported at once, each naming the file and key.
The spec is plain data: orchestrator/tune/search.py makes Ray Tune's objects of it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from trainables.config import ConfigError, TrainConfig, coerce, did_you_mean, field_specs, type_name

from ..errors import UserError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint", "quniform", "qrandint")
METRICS = ("exact_acc", "digit_acc", "loss")
STOP_KEYS = ("exact_acc", "digit_acc", "iter", "time_s", "time_total_s", "training_iteration")
SCHEDULER_KNOBS: dict[str, dict[str, type]] = {
    "fifo": {},
    "asha": {"max_t": int, "grace_period": int, "reduction_factor": float, "brackets": int},
    "hyperband": {"max_t": int, "reduction_factor": float, "stop_last_trials": bool},
    "median": {"grace_period": int, "min_samples_required": int, "min_time_slice": int, "hard_stop": bool},
    "pbt": {"perturbation_interval": int, "hyperparam_mutations": dict, "quantile_fraction": float,
            "resample_probability": float},
}
# PBT restarts a trial from another's checkpoint, so only keys the loop can change mid-run may be perturbed.
PERTURBABLE = ("lr", "grad_clip")
SEARCHERS = ("grid", "random", "optuna")
STUDY_KEYS = ("name", "description", "metric", "mode", "num_samples", "repeats", "stop", "scheduler", "search",
              "resources", "max_concurrent", "checkpoint_every", "max_failures", "tracking", "pack", "space")
TRACKERS = ("mlflow",)  # tracking: {mlflow: URI} (orchestrator/tune/tracking.py)
SMOKE = {"iters": 40, "eval_every": 20, "eval_size": 200, "batch_size": 32}
SMOKE_GRID_POINTS = 4


class SpaceError(UserError):
    """A search-space file is invalid. ``problems`` holds (key, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source, self.problems = source, problems
        if len(problems) == 1:
            key, msg = problems[0]
            text = f"{source}: {key}: {msg}"
        else:
            text = f"{source}: {len(problems)} problems: " + "; ".join(f"{k}: {m}" for k, m in problems)
        super().__init__(text)


@dataclass
class Dist:
    kind: str
    args: list

    def describe(self) -> str:
        return f"{self.kind}({', '.join(map(repr, self.args))})"

    def to_json(self) -> dict:
        return {self.kind: self.args}


@dataclass
class StudySpec:
    name: str
    space: dict[str, Any]  # key -> constant or Dist
    description: str = ""
    metric: str = "exact_acc"
    mode: str = "max"
    num_samples: int = 1
    repeats: int = 1  # replicates of every configuration: seeds s..s+repeats-1, s = space.seed (orchestrator/spec/plan.py)
    stop: dict[str, float] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    search: dict[str, Any] = field(default_factory=lambda: {"type": "grid", "seed": 0})
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: Optional[int] = None
    checkpoint_every: int = 5
    max_failures: int = 1
    tracking: dict[str, str] = field(default_factory=dict)  # {"mlflow": URI}, or empty: not tracked
    pack: int = 1  # members per packed trial (trainables/pack_loop.py); 1: every trial alone
    source: str = ""

    # -- derived -----------------------------------------------------------------------------------------
    def swept_keys(self) -> list[str]:
        return [k for k, v in self.space.items() if isinstance(v, Dist)]

    def grid_size(self) -> int:
        return math.prod(len(v.args) for v in self.space.values() if isinstance(v, Dist) and v.kind == "grid")


    def to_json(self) -> dict:
        d = asdict(self)
        d["space"] = {k: (v.to_json() if isinstance(v, Dist) else v) for k, v in self.space.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "StudySpec":
        d = dict(d)
        d["space"] = {k: (Dist(*next(iter(v.items()))) if isinstance(v, dict) else v) for k, v in d["space"].items()}
        return cls(**d)

    def space_fingerprint(self) -> str:
        """What must not change on resume: the space and the study's search and stopping rules (the tracking
        server may: it is where runs are copied to, not part of the experiment)."""
        keep = {k: v for k, v in self.to_json().items() if k not in ("description", "source", "name", "tracking")}
        if keep["pack"] == 1:  # as studies recorded before packs existed
            del keep["pack"]
        return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]

    def smoke(self) -> "StudySpec":
        """The study in miniature, to try a file: 40 iterations of 32 examples (a report every 20, on 200), at most
        2 samples, scheduler milestones scaled to match, and at most SMOKE_GRID_POINTS grid points: in file order,
        each grid keeps its first and last value while the product stays within the limit, later grids their
        first value only (so put the keys whose code paths matter -- cell, mode, schedule -- first)."""
        space, points = {}, 1
        for k, v in self.space.items():
            if k in SMOKE:
                continue  # replaced below; must not use up the grid-point budget
            if isinstance(v, Dist) and v.kind == "grid":
                ends = v.args if len(v.args) <= 2 else [v.args[0], v.args[-1]]
                ends = ends if points * len(ends) <= SMOKE_GRID_POINTS else ends[:1]
                points *= len(ends)
                v = Dist("grid", ends)
            space[k] = v
        space.update(SMOKE)
        sched = dict(self.scheduler)
        if "max_t" in sched:
            sched["max_t"] = SMOKE["iters"]
        for knob in ("grace_period", "perturbation_interval"):
            if knob in sched:
                sched[knob] = SMOKE["eval_every"]
        return StudySpec(**{**self.__dict__, "space": space, "scheduler": sched, "checkpoint_every": 1,
                            "num_samples": min(self.num_samples, 2), "repeats": 1})

    def with_overrides(self, *, max_concurrent=None, cpus=None, gpus=None) -> "StudySpec":
        res = dict(self.resources)
        if cpus is not None:
            res["cpu"] = cpus
        if gpus is not None:
            res["gpu"] = gpus
            problem = device_problem(self.space, res)
            if problem:
                raise UserError(f"--gpus-per-trial {gpus:g}: space.device: {problem}")
        return StudySpec(**{**self.__dict__, "resources": res,
                            "max_concurrent": max_concurrent if max_concurrent is not None else self.max_concurrent})

    def with_pack(self, pack: Optional[int]) -> "StudySpec":
        """The study with ``--pack K`` members per packed trial (None keeps its own); UserError if the study's
        scheduler, searcher or stop rules cannot work on members of a pack."""
        if pack is None:
            return self
        problem = pack_problem(pack, self.scheduler, self.search, self.stop, self.tracking)
        if problem:
            raise UserError(f"--pack {pack}: {problem}")
        return StudySpec(**{**self.__dict__, "pack": pack})

    def with_tracking(self, mlflow: Optional[str]) -> "StudySpec":
        """The study tracked on the MLflow server at ``mlflow`` (``off``: not tracked); None keeps its own."""
        if mlflow is None:
            return self
        if not mlflow.strip():
            raise UserError("--mlflow '': give the tracking server's URI, e.g. --mlflow http://127.0.0.1:5000, "
                            "or --mlflow off")
        tracking = {} if mlflow.strip() == "off" else {"mlflow": mlflow.strip()}
        problem = pack_problem(self.pack, self.scheduler, self.search, self.stop, tracking)
        if problem:
            raise UserError(f"--mlflow {mlflow}: pack: {self.pack}: {problem}")
        return StudySpec(**{**self.__dict__, "tracking": tracking})


# -- loading -----------------------------------------------------------------------------------------------
def read_space_file(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[StudySpec, str]:
    """Load and validate a search-space file; returns the spec and the file's text.
    ``overrides`` are ``KEY=VALUE`` strings (VALUE in YAML) replacing entries of ``space`` before validation."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such search-space file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a search-space YAML file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    return parse_space(text, str(path), default_name=path.stem, overrides=overrides), text


def parse_override(item: str) -> tuple[str, Any]:
    """``digits=100`` or ``lr={grid: [0.01, 0.1]}`` -> (key, parsed YAML value)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set digits=100 or --set 'seed={{grid: [0, 1]}}'")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise UserError(f"--set {item!r}: the value is not valid YAML") from None


def parse_space(text: str, source: str, default_name: str = "study", overrides: tuple[str, ...] = ()) -> StudySpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        ctx, ctx_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if ctx and ctx_mark:  # where the unclosed construct began is what the user must fix
            problem += f" ({ctx} started at line {ctx_mark.line + 1}, column {ctx_mark.column + 1})"
        raise SpaceError(source, [("yaml", f"invalid YAML{where}: {problem}")]) from None
    if raw is None:
        raise SpaceError(source, [("file", "is empty; a search-space file needs at least a 'space' mapping")])
    if not isinstance(raw, dict):
        raise SpaceError(source, [("file", f"top level must be a mapping of study keys, got {type(raw).__name__}")])
    if overrides:
        space = raw.get("space") if isinstance(raw.get("space"), dict) else {}
        raw["space"] = {**space, **dict(parse_override(o) for o in overrides)}
        source = f"{source} (with --set {' '.join(overrides)})"
    return _validate(raw, source, default_name)


def respec(spec: StudySpec, source: str, overrides: tuple[str, ...] = (), **study_keys: Any) -> StudySpec:
    """``spec`` with ``--set KEY=VALUE`` overrides of its space and new study keys (num_samples, repeats),
    validated as a file would be."""
    raw = {k: v for k, v in spec.to_json().items() if k in STUDY_KEYS}
    raw.update({k: v for k, v in study_keys.items() if v is not None})
    if overrides:
        raw["space"] = {**raw["space"], **dict(parse_override(o) for o in overrides)}
    return _validate(raw, source, spec.name)


class _Problems:
    """The problems of one file, gathered so that they are all reported at once (SpaceError), and the reading of
    a scalar study key against them."""

    def __init__(self, raw: dict):
        self.raw, self.found = raw, []

    def bad(self, key: str, msg: str) -> None:
        self.found.append((key, msg))

    def get(self, key, tp, default, check=None):
        if key not in self.raw or self.raw[key] is None:
            return default
        v = self.raw[key]
        try:
            v = coerce(v, tp) if tp in (int, float, str, bool) else v
        except TypeError as exc:
            self.bad(key, str(exc))
            return default
        if check:
            msg = check(v)
            if msg:
                self.bad(key, msg)
                return default
        return v

    def dedupe(self) -> None:
        seen = set()
        self.found[:] = [p for p in self.found if not (p in seen or seen.add(p))]


def _at_least(lo: int, extra: str = ""):
    return lambda v: None if v >= lo else f"must be >= {lo}{extra}, got {v}"


def _validate(raw: dict, source: str, default_name: str) -> StudySpec:
    """A file's mapping as a StudySpec, or SpaceError naming every problem: each study key has its rule below."""
    p = _Problems(raw)
    specs = field_specs()
    _check_study_keys(raw, specs, p.bad)
    name = p.get("name", str, default_name, lambda v: None if _valid_name(v) else
                 f"{v!r} is not a valid study name (letters, digits, '-', '_', '.'; no '/' or '..')")
    metric = p.get("metric", str, "exact_acc", lambda v: None if v in METRICS else
                   f"unknown metric {v!r}{did_you_mean(v, METRICS)}; choose one of {', '.join(METRICS)}")
    keys = dict(
        name=name, description=p.get("description", str, ""), metric=metric,
        mode=p.get("mode", str, "min" if metric == "loss" else "max",
                   lambda v: None if v in ("min", "max") else f"must be 'min' or 'max', got {v!r}"),
        num_samples=p.get("num_samples", int, 1, _at_least(1)), repeats=p.get("repeats", int, 1, _at_least(1)),
        max_concurrent=p.get("max_concurrent", int, None, _at_least(1)),
        checkpoint_every=p.get("checkpoint_every", int, None, _at_least(1)),
        max_failures=p.get("max_failures", int, 1, lambda v: None if v >= -1 else
                           f"must be >= 0 (or -1: retry forever), got {v}"))
    keys["stop"] = _parse_stop(raw.get("stop"), p.bad)
    space = keys["space"] = _parse_training_space(raw.get("space"), specs, p.bad)
    p.dedupe()
    keys["search"] = _parse_search(raw.get("search"), space, p.bad)
    keys["scheduler"] = _parse_scheduler(raw.get("scheduler"), space, p.bad)
    resources = keys["resources"] = _parse_resources(raw.get("resources"), p.bad)
    keys["tracking"] = _parse_tracking(raw.get("tracking"), p.bad)
    device = device_problem(space, resources)
    if device:
        p.bad("space.device", device)
    keys["pack"] = p.get("pack", int, 1, _at_least(1))
    problem = pack_problem(keys["pack"], keys["scheduler"], keys["search"], keys["stop"], keys["tracking"])
    if problem:
        p.bad("pack", problem)
    if keys["repeats"] > 1 and isinstance(space.get("seed"), Dist):
        p.bad("repeats", f"repeats: {keys['repeats']} and a seed {space['seed'].kind} both set the replicate seeds; "
                         "keep one (repeats: N runs seeds s..s+N-1 from space.seed, 0 unless set)")
    if p.found:
        raise SpaceError(source, p.found)
    if keys["checkpoint_every"] is None:
        keys["checkpoint_every"] = 1 if keys["scheduler"]["type"] == "pbt" else 5
    return StudySpec(**keys, source=source)


def _check_study_keys(raw: dict, specs: dict, bad) -> None:
    for key in raw:
        if key not in STUDY_KEYS:
            hint = did_you_mean(key, STUDY_KEYS)
            if key in specs:
                hint = " (training-config keys go under 'space:')"
            bad(str(key), f"unknown study key{hint}")


def _float_mapping(where: str, value, out: dict, allowed, shape: str, unknown: str, hint: str, bad,
                   check=None) -> dict:
    """A study key that maps known names to numbers (stop, resources): each value a float, every problem said."""
    if value is None:
        return out
    if not isinstance(value, dict):
        bad(where, f"must be {shape}, got {value!r}")
        return out
    for k, v in value.items():
        if k not in allowed:
            bad(f"{where}.{k}", f"{unknown}{did_you_mean(k, allowed)}; {hint}")
            continue
        try:
            out[k] = coerce(v, float)
        except TypeError as exc:
            bad(f"{where}.{k}", str(exc))
            continue
        msg = check(out[k], v) if check else None
        if msg:
            bad(f"{where}.{k}", msg)
    return out


def _parse_stop(value, bad) -> dict[str, float]:
    return _float_mapping("stop", value, {}, STOP_KEYS, "a mapping of metric to threshold, e.g. {iter: 2000}",
                          "unknown stop key", f"choose from {', '.join(STOP_KEYS)}", bad)


def _parse_training_space(raw_space, specs: dict, bad) -> dict[str, Any]:
    space: dict[str, Any] = {}
    if raw_space is None:
        bad("space", "missing: a search-space file needs a 'space' mapping of training-config keys")
        return space
    if not isinstance(raw_space, dict):
        bad("space", f"must be a mapping of training-config keys, got {type(raw_space).__name__}")
        return space
    for key, value in raw_space.items():
        where = f"space.{key}"
        if key not in specs:
            bad(where, f"unknown training-config key{did_you_mean(key, specs)}")
            continue
        tp = specs[key].type
        if isinstance(value, dict):
            dist = _parse_dist(where, value, tp, bad)
            if dist is not None:
                space[key] = dist
        else:
            try:
                space[key] = coerce(value, tp)
            except TypeError as exc:
                bad(where, str(exc))
    _probe_configs(space, bad)
    return space


def _probe_configs(space: dict, bad) -> None:
    """Every combination of the constants and one value of each distribution must be a valid config."""
    probe = {k: (v.args[0] if isinstance(v, Dist) else v) for k, v in space.items()}
    for k, v in space.items():
        values = v.args if isinstance(v, Dist) and v.kind in ("grid", "choice") else (
            v.args[:2] if isinstance(v, Dist) else [v])
        for val in values:
            if isinstance(v, Dist) and v.kind == "randint":
                val = max(v.args[0], v.args[1] - 1) if val == v.args[1] else val
            try:
                TrainConfig.from_flat({**probe, k: val})
            except ConfigError as exc:
                for name_, msg in exc.problems:
                    if name_ == k or name_ not in space:
                        bad(f"space.{k}", msg)
                break


def _parse_search(value, space: dict, bad) -> dict[str, Any]:
    search = {"type": "grid", "seed": 0}
    if value is not None:
        s = {"type": value} if isinstance(value, str) else value
        if not isinstance(s, dict):
            bad("search", f"must be a name ({', '.join(SEARCHERS)}) or a mapping with 'type', got {s!r}")
        else:
            for k in s:
                if k not in ("type", "seed"):
                    bad(f"search.{k}", f"unknown search option{did_you_mean(k, ('type', 'seed'))}; options: type, seed")
            t = s.get("type", "grid")
            if t not in SEARCHERS:
                bad("search.type", f"unknown searcher {t!r}{did_you_mean(t, SEARCHERS)}; choose one of "
                                   f"{', '.join(SEARCHERS)}")
            else:
                search["type"] = t
            try:
                search["seed"] = coerce(s.get("seed", 0), int)
            except TypeError as exc:
                bad("search.seed", str(exc))
    if search["type"] == "optuna":
        grids = [k for k, v in space.items() if isinstance(v, Dist) and v.kind == "grid"]
        if grids:
            bad("search", f"optuna cannot handle grid distributions (space.{grids[0]}); use choice, or search: grid")
        if not any(isinstance(v, Dist) for v in space.values()):
            bad("search", "optuna needs at least one distribution in space")
    return search


def _parse_scheduler(value, space: dict, bad) -> dict[str, Any]:
    if value is None:
        return {"type": "fifo"}
    s = {"type": value} if isinstance(value, str) else value
    if not isinstance(s, dict) or "type" not in s:
        bad("scheduler", f"must be a name ({', '.join(SCHEDULER_KNOBS)}) or a mapping with 'type', got {s!r}")
        return {"type": "fifo"}
    if s["type"] not in SCHEDULER_KNOBS:
        bad("scheduler.type", f"unknown scheduler {s['type']!r}{did_you_mean(s['type'], SCHEDULER_KNOBS)}; "
            f"choose one of {', '.join(SCHEDULER_KNOBS)}")
        return {"type": "fifo"}
    knobs = SCHEDULER_KNOBS[s["type"]]
    scheduler = {"type": s["type"]}
    for k, v in s.items():
        if k == "type":
            continue
        if k not in knobs:
            valid = ", ".join(knobs) or "none"
            bad(f"scheduler.{k}", f"{s['type']} has no knob {k!r}{did_you_mean(k, knobs)}; its knobs: {valid}")
            continue
        if knobs[k] is dict:
            scheduler[k] = v
            continue
        try:
            scheduler[k] = coerce(v, knobs[k])
        except TypeError as exc:
            bad(f"scheduler.{k}", str(exc))
            continue
        if knobs[k] in (int, float) and not isinstance(v, bool) and scheduler[k] <= 0:
            bad(f"scheduler.{k}", f"must be > 0, got {v}")
    if scheduler["type"] == "pbt":
        _check_pbt(scheduler, space, bad)
    if scheduler["type"] in ("asha", "hyperband") and scheduler.get("reduction_factor", 2) <= 1:
        bad("scheduler.reduction_factor", f"must be > 1, got {scheduler['reduction_factor']}")
    return scheduler


def _parse_resources(value, bad) -> dict[str, float]:
    resources = _float_mapping("resources", value, {"cpu": 1.0, "gpu": 0.0}, ("cpu", "gpu"),
                               "a mapping like {cpu: 1, gpu: 0.25}", "unknown resource", "use cpu and gpu", bad,
                               lambda x, v: f"must be >= 0, got {v}" if x < 0 else None)
    if isinstance(value, dict) and resources["cpu"] == 0 and resources["gpu"] == 0:
        bad("resources", "a trial needs some cpu or gpu")
    return resources


def device_problem(space: dict, resources: dict) -> Optional[str]:
    """Why a trial's device and its Ray resources disagree, or None. ``cuda`` or ``mps`` with no GPU share would
    pile trials onto GPU 0 that Ray does not count (``auto`` follows the share; ``cpu`` with a share is allowed:
    it trains on the CPU in a GPU's slot)."""
    device = space.get("device")
    values = device.args if isinstance(device, Dist) else [device]
    gpu_only = sorted({v for v in values if v in ("cuda", "mps")})
    if gpu_only and resources.get("gpu", 0) == 0:
        return (f"{' and '.join(gpu_only)} needs a GPU share, but resources.gpu is 0 (trials would share GPU 0 "
                f"without Ray counting them); set resources.gpu (or --gpus-per-trial), or use device auto or cpu")
    return None


def pack_problem(pack: int, scheduler: dict, search: dict, stop: dict, tracking: dict) -> Optional[str]:
    """Why a study cannot train its trials in packs of ``pack``, or None. Schedulers, searchers and stop rules
    decide per Tune trial, and a pack is one Tune trial of many members: ASHA would stop a whole pack for its
    worst member's curve, Optuna learns from one number per trial, a stop rule ends every member when one meets
    it."""
    if pack < 1:
        return f"must be >= 1, got {pack}"
    if pack == 1:
        return None
    if scheduler["type"] != "fifo":
        return (f"the {scheduler['type']} scheduler decides per Tune trial and a pack of {pack} is one trial of "
                f"{pack} configurations, so it would stop or copy them together; use pack: 1, or scheduler: fifo")
    if search["type"] == "optuna":
        return ("optuna learns from one result per Tune trial and a pack is one trial of many configurations; "
                "use pack: 1, or search: grid or random")
    if stop:
        return (f"a stop rule ({', '.join(sorted(stop))}) ends a whole Tune trial, i.e. every member of a pack "
                "when one meets it; give members their own end with space.iters and space.target, or pack: 1")
    if tracking:
        return "MLflow tracking logs one run per Tune trial, not per member of a pack; use pack: 1, or no tracking"
    return None


def _parse_tracking(value, bad) -> dict[str, str]:
    """``tracking: {mlflow: URI}``: where the study's runs are copied to (the server is probed at launch)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        bad("tracking", f"must be a mapping like {{mlflow: http://127.0.0.1:5000}}, got {value!r}")
        return {}
    out = {}
    for k, v in value.items():
        if k not in TRACKERS:
            bad(f"tracking.{k}", f"unknown tracker{did_you_mean(k, TRACKERS)}; trackers: {', '.join(TRACKERS)}")
        elif not isinstance(v, str) or not v.strip():
            bad(f"tracking.{k}", f"must be the tracking server's URI as a string, e.g. http://127.0.0.1:5000, "
                                 f"got {v!r}")
        else:
            out[k] = v.strip()
    return out


def _valid_name(name: str) -> bool:
    import re

    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name)) and ".." not in name


def valid_study_name(name: str) -> bool:
    return _valid_name(name)


def _parse_dist(where: str, value: dict, tp, bad) -> Optional[Dist]:
    if len(value) != 1:
        bad(where, f"a distribution is a mapping with one of {', '.join(DISTRIBUTIONS)}, got keys {list(value)}")
        return None
    kind, args = next(iter(value.items()))
    if kind not in DISTRIBUTIONS:
        bad(where, f"unknown distribution {kind!r}{did_you_mean(kind, DISTRIBUTIONS)}; choose one of {', '.join(DISTRIBUTIONS)}")
        return None
    if not isinstance(args, list):
        bad(where, f"{kind} takes a list, got {args!r}")
        return None
    if kind in ("grid", "choice"):
        if not args:
            bad(where, f"empty {kind}: give at least one value")
            return None
        try:
            vals = [coerce(a, tp) for a in args]
        except TypeError as exc:
            bad(where, f"{kind} value {exc}")
            return None
        return Dist(kind, vals)
    n_args = 3 if kind.startswith("q") else 2
    if len(args) != n_args:
        form = "[lo, hi, q]" if n_args == 3 else "[lo, hi]"
        bad(where, f"{kind} takes {form}, got {args!r}")
        return None
    numeric = int if kind in ("randint", "qrandint") else float
    if tp not in (int, float) or (tp is int and numeric is float):
        use = "randint" if tp is int else "grid or choice"
        bad(where, f"{kind} draws {'integers' if numeric is int else 'real numbers'} but "
                   f"{where.split('.')[-1]} takes {type_name(tp)}; use {use}")
        return None
    try:
        vals = [coerce(a, numeric) for a in args]
    except TypeError as exc:
        bad(where, f"{kind} bound {exc}")
        return None
    lo, hi = vals[0], vals[1]
    if lo > hi or (numeric is int and lo == hi):
        bad(where, f"{kind} lo > hi ({lo} > {hi})" if lo > hi else f"{kind} range [{lo}, {hi}) is empty (hi is exclusive)")
        return None
    if kind == "loguniform" and lo <= 0:
        bad(where, f"loguniform needs lo > 0, got {lo}")
        return None
    if n_args == 3 and vals[2] <= 0:
        bad(where, f"{kind} step q must be > 0, got {vals[2]}")
        return None
    return Dist(kind, vals)


def _check_pbt(scheduler: dict, space: dict, bad) -> None:
    muts = scheduler.get("hyperparam_mutations")
    if not muts:
        bad("scheduler.hyperparam_mutations", f"pbt needs at least one key to perturb; perturbable: {', '.join(PERTURBABLE)}")
        return
    if not isinstance(muts, dict):
        bad("scheduler.hyperparam_mutations", f"must map a key to a distribution, got {muts!r}")
        return
    parsed = {}
    for k, v in muts.items():
        where = f"scheduler.hyperparam_mutations.{k}"
        if k not in PERTURBABLE:
            bad(where, f"{k!r} cannot be perturbed mid-run; perturbable: {', '.join(PERTURBABLE)}")
            continue
        if not isinstance(v, dict):
            bad(where, f"must be a distribution such as {{loguniform: [1e-4, 1e-1]}}, got {v!r}")
            continue
        d = _parse_dist(where, v, field_specs()[k].type, bad)
        if d is not None:
            if d.kind == "grid":
                bad(where, "pbt samples mutations; use choice instead of grid")
            else:
                parsed[k] = d
    scheduler["hyperparam_mutations"] = {k: d.to_json() for k, d in parsed.items()}
    scheduler.setdefault("perturbation_interval", 100)
