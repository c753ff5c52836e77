"""adder-sweep from Python: ``sweep``, ``resume``, ``extend`` and ``load_study``.

    from orchestrator import sweep, load_study
    result = sweep("search_spaces/quick.yaml", name="quick", repeats=3)
    result.raise_for_errors()            # errored trials are in the result; this raises TrialsFailed for them
    result.study.trials                  # the trials table (pandas), as load_study("quick") reads it

The commands of the CLI are these functions plus printing and an exit code (orchestrator/cli/). As with Ray
Tune's ``Tuner.fit``, bad input and refused launches raise (an ``AdderSweepError``: ``UserError``, ``ConfigError``,
``CheckpointError``, ``DeviceError``, with the one-line messages the CLI prints); trials that ran and failed do not
-- they are in the result, whose ``raise_for_errors()`` raises ``TrialsFailed``.

A search space is given as

* a ``pathlib.Path`` -- always a file;
* a ``str`` -- YAML text if it holds a line break or starts with ``{``, else the path of a file;
* a ``dict`` -- the file's mapping as ``yaml.safe_load`` would return it;
* a ``StudySpec`` (``read_space_file``, ``parse_space``) -- a spec built in code.

Whatever the form, the study records it as YAML text (``space.yaml`` and the record), so ``resume``'s check of the
space and the study's lineage work as they do for a file.

A call leaves the process as it found it: the environment, the log levels and handlers it touches, and the
SIGINT/SIGTERM/SIGUSR1 handlers are restored; a Ray the caller initialized (``ray.init()``) is used and left
connected, a Ray the call started is shut down. Ctrl-C stops the study as Tune does (trials stop, state is saved)
and the call returns a result marked ``interrupted``; a second Ctrl-C stops at once.

One exception to "a call returns": on a cluster the call connected to, a head node that stops answering mid-study
takes the cluster with it, and Ray would end the process by a hard exit at its reconnect timeout (60 s). The call
ends it sooner, with one line on stderr and exit code 3 (``EXIT_CLUSTER_LOST``; orchestrator/cluster/watch.py,
``ADDER_SWEEP_HEAD_LOST_AFTER_S``); ``resume(..., address=NEW_HEAD)`` continues the study on a new cluster.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import TrialsFailed, UserError
from .studydir.storage import DEFAULT_STORAGE
from .tune.study import TrialError

__all__ = ["StudyResult", "TrialError", "extend", "load_study", "resume", "sweep"]

SpaceLike = Union[str, os.PathLike, dict, Any]  # Any: a StudySpec

# Loggers a study sets (orchestrator/tune/tuner.py quiets two of Tune's); created first so that they can be restored
_TOUCHED_LOGGERS = ("", "ray", "ray.tune", "ray.tune.search.variant_generator",
                    "ray.tune.analysis.experiment_analysis", "ray.train", "ray.data")
_SIGNALS = tuple(getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, s))


@dataclass
class StudyResult:
    """What a ``sweep``, ``resume`` or ``extend`` call ran, and how it ended."""

    name: str
    path: str  # the study folder (a local path or a URI)
    storage: str  # the storage root it lives under
    states: dict = field(default_factory=dict)  # Ray trial state -> count (TERMINATED, ERROR, PENDING, ...)
    outcomes: dict = field(default_factory=dict)  # trials.parquet's outcome -> count (solved, budget, ...)
    errors: list[TrialError] = field(default_factory=list)  # the trials that ended in error, each with its line
    interrupted: bool = False  # Ctrl-C or SIGTERM: trials are left to resume
    stop_reason: Optional[str] = None  # None, "sigint", "sigterm" or "taken_over"
    taken_by: Optional[dict] = None  # the claim of the driver that took the study over
    tracking: Optional[dict] = None  # what reached the MLflow server (orchestrator.tune.tracking.finish_trackers)
    started: bool = True  # False: stopped before any trial ran (nothing to resume)
    ran: bool = True  # False: an extend with nothing new to run, or a dry run
    extension: Any = None  # extend: its ExtensionPlan (reused, continued, new)
    _study: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Every trial that ran ended normally, and the study was neither interrupted nor taken over."""
        return not self.errors and not self.interrupted and self.stop_reason != "taken_over"

    @property
    def study(self):
        """The study's tables and record, as ``load_study`` returns them (read once, on first use)."""
        if self._study is None:
            from .results.report import load_study as _load

            self._study = _load(self.path, self.storage)
        return self._study

    @property
    def best(self) -> Optional[dict]:
        """The best trial by the report's ranking rule: ``trial_id``, ``value`` (the ranking column), its value,
        and its swept keys and seed; None when no trial has results."""
        from .results.report import rank_trials

        ranked, value, _ = rank_trials(self.study)
        if ranked.empty:
            return None
        first = ranked.iloc[0]
        keys = [k for k in self.study.swept if k != "seed"] + ["seed"]
        return {"trial_id": first["trial_id"], "value": value, value: _plain(first[value]),
                "config": {k: _plain(first[k]) for k in keys if k in first.index}}

    @property
    def best_configuration(self) -> Optional[dict]:
        """With replicates, the best configuration over its seeds: its swept keys, ``n`` seeds, the ``mean`` and
        95% interval (``low``, ``high``) of the ranking value (a lower bound when some seeds never solved: iters to solve
        is then censored); None without replicates."""
        from .results.report import config_keys, default_value, rank_configurations

        study = self.study
        if not study.has_replicates or not len(study.trials):
            return None
        value = default_value(study)[0]
        first = rank_configurations(study, value).iloc[0]
        est = first["estimate"]
        return {"config": {k: _plain(first[k]) for k in config_keys(study) if k in first.index}, "value": value,
                "n": int(first["n"]), "mean": est.mean, "low": est.mean - est.half, "high": est.mean + est.half,
                "mean_is_lower_bound": est.lower_bound,
                "solved_fraction": float(first["solved_fraction"])}

    def raise_for_errors(self) -> "StudyResult":
        """Raise ``TrialsFailed`` if a trial ended in error, the study was interrupted or taken over; else return
        the result (so ``sweep(...).raise_for_errors().study`` reads on)."""
        if self.stop_reason == "taken_over":
            raise TrialsFailed(f"study {self.name} was taken over by another driver", self)
        if self.errors:
            e = self.errors[0]
            more = f" (and {len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            raise TrialsFailed(f"study {self.name}: trial {e.trial_id} ended in error{more}: {e.message}", self)
        if self.interrupted:
            raise TrialsFailed(f"study {self.name} was interrupted; resume it with orchestrator.resume"
                               f"({self.name!r})", self)
        return self


def _plain(v):
    return v.item() if hasattr(v, "item") else v


# -- the calls -------------------------------------------------------------------------------------------------
def sweep(space: SpaceLike, *, name: Optional[str] = None, storage: str = DEFAULT_STORAGE,
          address: Optional[str] = None, overrides: tuple[str, ...] | list[str] = (), repeats: Optional[int] = None,
          smoke: bool = False, max_concurrent: Optional[int] = None, cpus_per_trial: Optional[float] = None,
          gpus_per_trial: Optional[float] = None, runtime_env: Optional[dict | str] = None,
          ship_code: Optional[bool] = None, mlflow: Optional[str] = None, pack: Optional[int] = None) -> StudyResult:
    """Run a new study (``adder-sweep sweep``). ``space``: see the module docstring. ``overrides``: ``KEY=VALUE``
    strings as ``--set`` takes them. ``runtime_env``: a dict, or JSON text or a file as ``--runtime-env`` takes.
    ``address``: None starts an embedded Ray on this machine (or uses the caller's ``ray.init()``; ``$RAY_ADDRESS``
    is honoured as by the CLI). Raises AdderSweepError for bad input and refused launches."""
    from .tune.study import Stopper, launch

    with _ProcessGuard():
        check_resources(max_concurrent, cpus_per_trial, gpus_per_trial)
        file_spec, text, spec = _read_space(space, tuple(overrides))
        spec = with_repeats(spec, repeats)
        spec = spec.smoke() if smoke else spec
        spec = spec.with_overrides(max_concurrent=max_concurrent, cpus=cpus_per_trial, gpus=gpus_per_trial)
        spec = spec.with_tracking(mlflow).with_pack(pack)
        env = _runtime_env(runtime_env)
        with Stopper() as stopper:
            try:
                outcome = launch(spec, text, name=name, storage_root=str(storage), address=address,
                                 file_spec=file_spec, runtime_env=env, ship_code=ship_code, stopper=stopper)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM before any trial started: nothing to resume
                return _not_started(stopper, name or spec.name, storage)
        return _finish(outcome)


def resume(study: str, *, storage: str = DEFAULT_STORAGE, address: Optional[str] = None,
           space_file: Optional[str] = None, runtime_env: Optional[dict | str] = None, force: bool = False,
           mlflow: Optional[str] = None) -> StudyResult:
    """Continue an interrupted study (``adder-sweep resume``): finished trials stay, unfinished and errored ones
    continue from their checkpoints. ``study``: its name under ``storage``, or its path or URI."""
    from .tune.study import Stopper
    from .tune.study import resume as _resume

    with _ProcessGuard():
        env = _runtime_env(runtime_env)
        with Stopper() as stopper:
            try:
                outcome = _resume(study, storage_root=str(storage), address=address, space_file=space_file,
                                  runtime_env=env, force=force, stopper=stopper, mlflow=mlflow)
            except KeyboardInterrupt:
                return _not_started(stopper, study, storage)
        return _finish(outcome)


def extend(study: str, *, storage: str = DEFAULT_STORAGE, address: Optional[str] = None,
           overrides: tuple[str, ...] | list[str] = (), space_file: Optional[str] = None,
           num_samples: Optional[int] = None, repeats: Optional[int] = None, dry_run: bool = False,
           max_concurrent: Optional[int] = None, cpus_per_trial: Optional[float] = None,
           gpus_per_trial: Optional[float] = None, runtime_env: Optional[dict | str] = None, force: bool = False,
           mlflow: Optional[str] = None, pack: Optional[int] = None) -> StudyResult:
    """Grow a finished study (``adder-sweep extend``): more grid values, seeds, samples or iterations; only what
    is new runs. The plan (reused, continued, new) is printed and kept as ``result.extension``; with ``dry_run``,
    or when nothing is new, nothing runs and ``result.ran`` is False."""
    from .tune.extend import extend as _extend
    from .tune.study import Stopper

    with _ProcessGuard():
        check_resources(max_concurrent, cpus_per_trial, gpus_per_trial)
        for flag, value in (("--num-samples", num_samples), ("--repeats", repeats)):
            if value is not None and value < 1:
                raise UserError(f"{flag} {value}: must be >= 1")
        env = _runtime_env(runtime_env)
        with Stopper() as stopper:
            try:
                outcome, ext = _extend(study, storage_root=str(storage), address=address, overrides=tuple(overrides),
                                       space_file=space_file, num_samples=num_samples, repeats=repeats,
                                       dry_run=dry_run, runtime_env=env, force=force, stopper=stopper,
                                       max_concurrent=max_concurrent, cpus=cpus_per_trial, gpus=gpus_per_trial,
                                       mlflow=mlflow, pack=pack)
            except KeyboardInterrupt:
                return _not_started(stopper, study, storage)
        if outcome is None:
            return _as_it_stands(study, storage, ext)
        result = _finish(outcome)
        result.extension = ext
        return result


def load_study(name_or_path: str, storage: str = DEFAULT_STORAGE, *, refresh: bool = False):
    """A study's tables and record for analysis (orchestrator/results/report.py ``Study``)."""
    from .results.report import load_study as _load

    return _load(name_or_path, storage, refresh=refresh)


# -- checks shared with the CLI --------------------------------------------------------------------------------
def check_resources(max_concurrent, cpus_per_trial, gpus_per_trial) -> None:
    for flag, value, lo in (("--max-concurrent", max_concurrent, 1), ("--cpus-per-trial", cpus_per_trial, 0),
                            ("--gpus-per-trial", gpus_per_trial, 0)):
        if value is not None and value < lo:
            raise UserError(f"{flag} {value:g}: must be >= {lo}")
    if cpus_per_trial == 0 and (gpus_per_trial or 0) == 0:
        raise UserError("--cpus-per-trial 0: a trial without a GPU needs some CPU")


def with_repeats(spec, repeats: Optional[int]):
    """``spec`` with ``--repeats`` seeds per configuration (recorded in its source)."""
    if repeats is None:
        return spec
    if repeats < 1:
        raise UserError(f"--repeats {repeats}: must be >= 1")
    from .spec.space import respec

    return respec(spec, f"{spec.source} (with --repeats {repeats})", repeats=repeats)


def _read_space(space: SpaceLike, overrides: tuple[str, ...]):
    """(the space as given, its YAML text, the space with ``overrides``) for every form ``sweep`` takes."""
    import yaml

    from .spec.space import STUDY_KEYS, StudySpec, parse_space, read_space_file

    if isinstance(space, StudySpec):
        raw = {k: v for k, v in space.to_json().items() if k in STUDY_KEYS}
        text, source, stem = yaml.safe_dump(raw, sort_keys=False), space.source or "<StudySpec>", space.name
    elif isinstance(space, dict):
        text, source, stem = yaml.safe_dump(space, sort_keys=False), "<dict>", "study"
    elif isinstance(space, os.PathLike) or (isinstance(space, str) and "\n" not in space
                                            and not space.lstrip().startswith("{")):
        file_spec, text = read_space_file(space)
        spec = parse_space(text, str(space), Path(space).stem, overrides) if overrides else file_spec
        return file_spec, text, spec
    elif isinstance(space, str):
        text, source, stem = space, "<YAML text>", "study"
    else:
        raise UserError(f"space: expected a file path, YAML text, a dict or a StudySpec, got {type(space).__name__}")
    try:
        file_spec = parse_space(text, source, stem)
    except yaml.representer.RepresenterError as exc:  # pragma: no cover - safe_dump of a dict with objects
        raise UserError(f"{source}: holds a value YAML cannot record ({exc})") from None
    return file_spec, text, parse_space(text, source, stem, overrides) if overrides else file_spec


def _runtime_env(value):
    from .cluster.connect import load_runtime_env

    if value is None or isinstance(value, dict):
        return None if value is None else dict(value)
    return load_runtime_env(str(value))


# -- results ---------------------------------------------------------------------------------------------------
def _finish(outcome) -> StudyResult:
    """Tables and the study page from what Tune wrote, and the result. A page that cannot be drawn is a warning
    (the study is on storage all the same), never a failed call."""
    import gc

    from .results.tables import write_tables
    from .studydir.storage import Storage

    gc.collect()  # Tune's controller, trials and result grid sit in reference cycles: free them before the tables
    _return_freed_memory()
    storage = Storage.open(outcome.storage)
    study = _write_page(storage, outcome.name) if write_tables(storage, outcome.name) is not None else None
    result = StudyResult(outcome.name, outcome.path, outcome.storage, dict(outcome.states), {},
                         list(outcome.errors), outcome.interrupted, outcome.stop_reason, outcome.taken_by,
                         outcome.tracking, _study=study)
    if study is not None and "outcome" in study.trials:
        result.outcomes = {str(k): int(v) for k, v in study.trials["outcome"].dropna().value_counts().items()}
    return result


def _return_freed_memory() -> None:
    """Give the heap pages freed after a study back to the system (glibc's ``malloc_trim``): the tables and the
    page are built next, and without it they come on top of the pages a 10,000-trial run's driver held."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to give back this way
        pass


def _write_page(storage, name: str):
    try:
        from .results.page import write
        from .results.report import load_study as _load

        study = _load(storage.uri(name), storage.root)
        write(study)
        return study
    except Exception as exc:
        print(f"adder-sweep: report.html not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def _not_started(stopper, name: str, storage) -> StudyResult:
    return StudyResult(str(name), "", str(storage), interrupted=True, started=False,
                       stop_reason=stopper.reason or "sigint")


def _as_it_stands(study: str, storage, ext) -> StudyResult:
    """An extend that ran nothing: the study's trials as its tables have them."""
    from collections import Counter

    from .results.tables import load_trials
    from .studydir.storage import study_location

    st, name = study_location(study, str(storage))
    trials = load_trials(st, name)
    return StudyResult(name, st.uri(name), st.root, dict(Counter(t["ray_status"] for t in trials)), ran=False,
                       extension=ext)


# -- process hygiene -------------------------------------------------------------------------------------------
class _ProcessGuard:
    """Saves what a study changes in the calling process and puts it back: the environment (Ray's and our own
    settings), the levels, handlers and propagation of the loggers a study touches, and the SIGINT, SIGTERM and
    SIGUSR1 handlers (``ray.init`` replaces SIGTERM's; Tune installs SIGINT's and SIGUSR1's while it runs)."""

    def __enter__(self) -> "_ProcessGuard":
        self.env = dict(os.environ)
        self.loggers = {}
        for n in _TOUCHED_LOGGERS:
            lg = logging.getLogger(n)
            self.loggers[n] = (lg, lg.level, list(lg.handlers), lg.propagate, lg.disabled)
        self.signals = {}
        for s in _SIGNALS:
            try:
                self.signals[s] = signal.getsignal(s)
            except ValueError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        for k in set(os.environ) - set(self.env):
            del os.environ[k]
        for k, v in self.env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        for lg, level, handlers, propagate, disabled in self.loggers.values():
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
        for s, handler in self.signals.items():
            if handler is None:
                continue  # installed from C, outside Python: cannot be put back from here
            try:
                signal.signal(s, handler)
            except (ValueError, OSError):  # not the main thread: signals were not touched either
                pass
