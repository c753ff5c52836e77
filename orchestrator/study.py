"""Launch, resume and inspect studies on Ray Tune.

``launch`` turns a validated StudySpec into a ``Tuner`` (current API: ``Tuner``, ``RunConfig(storage_path=...)``,
``tune.with_resources``, ``Tuner.restore``) and records what reproduces the study in its directory:
``adder_study.json`` (spec, YAML text, command lines, versions) and ``space.yaml``.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Optional

from .errors import UserError
from .records import command_line, now_iso, package_versions
from .space import StudySpec, make_scheduler, make_searcher, param_space, parse_space, valid_study_name
from .storage import STUDY_RECORD, Storage

DRIVER_FILE = "driver.json"
PARAM_COLUMNS = ("cell", "layers", "digits", "lr")
METRIC_COLUMNS = ("iter", "loss", "exact_acc")


@dataclass
class Outcome:
    name: str
    path: str  # study location (local path or URI)
    states: dict  # Ray trial state -> count
    interrupted: bool
    storage: str


def _quiet_ray_env() -> None:
    # The legacy CLIReporter lets us choose the live table's columns; Ray's new output ignores them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Checkpoints are small and frequent by design; Ray's warning about snapshot frequency is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def connect(address: Optional[str]) -> bool:
    """Start an embedded local Ray (address None) or connect to a cluster. Returns True if we started it."""
    if address and address != "auto":
        _use_local_auth_token()  # before Ray is imported: it reads the auth mode then
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=True)
    try:
        # "local" always starts a fresh embedded instance; plain ray.init() would join any Ray started on this
        # machine earlier (RAY_ADDRESS or /tmp/ray/ray_current_cluster), which is what --address auto is for.
        ray.init(address=address or "local", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--address {address}" if address else "local Ray"
        raise UserError(f"{where}: cannot connect ({str(exc).splitlines()[0]}); is the cluster up (`ray status`)? "
                        "A cluster with token authentication also needs its token here: RAY_AUTH_TOKEN, or the "
                        "head node's ~/.ray/auth_token") from None
    return True


def _use_local_auth_token() -> None:
    """Ray (2.5x+) starts clusters with token authentication, and sends the token for ``auto`` and new local
    clusters only. For an explicit address, do what Ray does for ``auto``: use a token this machine has."""
    if "RAY_AUTH_MODE" in os.environ:
        return  # the user chose
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(token_file):
        os.environ["RAY_AUTH_MODE"] = "token"


def check_fits(spec: StudySpec) -> None:
    """A trial that can never be scheduled would leave the study pending forever: say so instead."""
    import ray

    total = ray.cluster_resources()
    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    if gpu > total.get("GPU", 0):
        raise UserError(f"resources: a trial asks for {gpu:g} GPU but the Ray cluster has {total.get('GPU', 0):g}; "
                        "use --gpus-per-trial 0 or connect to a cluster with GPUs (--address)")
    if cpu > total.get("CPU", 0):
        raise UserError(f"resources: a trial asks for {cpu:g} CPUs but the Ray cluster has {total.get('CPU', 0):g}")


def trial_resources(spec: StudySpec) -> dict:
    """Ray resources of one trial; a GPU share makes the trial train on CUDA (see trainables.loop.resolve_device)."""
    return {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}


def build_trainable(spec: StudySpec):
    from ray import tune

    from trainables.tune_adapter import run_trial

    trainable = tune.with_parameters(run_trial, checkpoint_every=spec.checkpoint_every)
    return tune.with_resources(trainable, trial_resources(spec))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(spec: StudySpec, name: str, storage: Storage):
    from ray import tune
    from ray.tune import CLIReporter, CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    reporter = CLIReporter(parameter_columns=list(PARAM_COLUMNS), metric_columns=list(METRIC_COLUMNS),
                           max_report_frequency=15, sort_by_metric=False)
    run_config = RunConfig(
        name=name, storage_path=storage.root, stop=spec.stop or None,
        failure_config=FailureConfig(max_failures=spec.max_failures),
        # Two checkpoints per trial suffice to fall back from a damaged one; PBT needs more: a donor's checkpoint
        # must outlive the recipient's restore, so there all are kept.
        checkpoint_config=CheckpointConfig(num_to_keep=None if spec.scheduler["type"] == "pbt" else 2),
        progress_reporter=reporter, verbose=1)
    tune_config = TuneConfig(
        metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples, scheduler=make_scheduler(spec),
        search_alg=make_searcher(spec), max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
        trial_dirname_creator=_trial_dirname)
    return tune.Tuner(build_trainable(spec), param_space=param_space(spec), tune_config=tune_config,
                      run_config=run_config)


def study_location(name_or_path: str, storage_root: str) -> tuple[Storage, str]:
    """(storage, study name) for a study given by name under ``storage_root``, or by its path/URI."""
    if "://" in name_or_path or os.sep in name_or_path or name_or_path.startswith("."):
        if "://" in name_or_path:
            parent, _, name = name_or_path.rstrip("/").rpartition("/")
        else:
            full = os.path.abspath(name_or_path)
            parent, name = os.path.dirname(full), os.path.basename(full)
        return Storage.open(parent), name
    if not valid_study_name(name_or_path):
        raise UserError(f"study name {name_or_path!r}: use letters, digits, '-', '_', '.' (no '/' or '..')")
    return Storage.open(storage_root), name_or_path


def _write_driver(storage: Storage, name: str) -> None:
    storage.write_text(storage.join(name, DRIVER_FILE),
                       json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso()}))


def driver_alive(storage: Storage, name: str) -> bool:
    """True if the driver recorded for a study still runs (checked on this host only)."""
    path = storage.join(name, DRIVER_FILE)
    if not storage.exists(path):
        return False
    try:
        info = json.loads(storage.read_text(path))
    except (ValueError, OSError):
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot tell; assume a driver elsewhere still runs
    try:
        os.kill(int(info["pid"]), 0)
    except (ProcessLookupError, ValueError, KeyError):
        return False
    except PermissionError:
        return True
    return True


def launch(spec: StudySpec, yaml_text: str, *, name: Optional[str], storage_root: str, address: Optional[str],
           file_spec: StudySpec, create_storage: bool = True) -> Outcome:
    """Start a new study. ``spec`` has the command-line overrides applied; ``file_spec`` is the file as written."""
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not valid_study_name(name):
        raise UserError(f"--name {name!r}: use letters, digits, '-', '_', '.' (no '/' or '..')")
    storage = Storage.open(storage_root)
    if storage.exists(storage.join(name)):
        raise UserError(f"study {name!r} already exists under {storage.root}; continue it with "
                        f"`adder-sweep resume {name} --storage {storage.root}`, or pick another --name")
    storage.check_writable(create=create_storage)
    _quiet_ray_env()
    started = connect(address)
    try:
        check_fits(spec)
        tuner = build_tuner(spec, name, storage)
        storage.fs.create_dir(storage.join(name), recursive=True)
        record = {
            "name": name, "created": now_iso(), "spec": spec.to_json(), "file_spec": file_spec.to_json(),
            "file_fingerprint": file_spec.space_fingerprint(), "yaml": yaml_text, "source": file_spec.source,
            "address": address, "runs": [{"kind": "sweep", "command": command_line(), "at": now_iso(),
                                          "versions": package_versions()}],
        }
        storage.write_text(storage.join(name, STUDY_RECORD), json.dumps(record, indent=2) + "\n")
        storage.write_text(storage.join(name, "space.yaml"), yaml_text)
        return _fit(tuner, storage, name)
    finally:
        if started:
            import ray

            ray.shutdown()


def read_record(storage: Storage, name: str) -> dict:
    path = storage.join(name, STUDY_RECORD)
    if not storage.exists(storage.join(name)):
        raise UserError(f"no study {name!r} under {storage.root}; `adder-sweep status --storage {storage.root}` "
                        "lists the studies there, `adder-sweep sweep FILE` starts one")
    if not storage.exists(path):
        raise UserError(f"{storage.uri(name)}: not an adder-sweep study (no {STUDY_RECORD})")
    try:
        return json.loads(storage.read_text(path))
    except ValueError as exc:
        raise UserError(f"{storage.uri(name, STUDY_RECORD)}: unreadable ({exc}); the study record is damaged") from None


def resume(name_or_path: str, *, storage_root: str, address: Optional[str], space_file: Optional[str]) -> Outcome:
    """Continue a study with ``Tuner.restore``: finished trials stay, unfinished and errored ones resume."""
    from ray import tune

    storage, name = study_location(name_or_path, storage_root)
    record = read_record(storage, name)
    spec = StudySpec.from_json(record["spec"])
    _check_space_unchanged(record, space_file)
    if driver_alive(storage, name):
        raise UserError(f"study {name!r} is still running (driver pid in {storage.uri(name, DRIVER_FILE)}); "
                        "stop it first (Ctrl-C) or wait for it")
    _quiet_ray_env()
    started = connect(address or record.get("address"))
    try:
        if not tune.Tuner.can_restore(storage.uri(name)):
            raise UserError(f"study {name!r} at {storage.uri(name)} has no Ray Tune state to restore (it was "
                            f"interrupted before its first trial started); start it again with "
                            f"`adder-sweep sweep {record.get('source')} --name {name}-2`")
        check_fits(spec)
        _check_trial_folders(storage, name)
        try:
            tuner = tune.Tuner.restore(storage.uri(name), trainable=build_trainable(spec), resume_errored=True)
        except Exception as exc:  # Ray raises plain Exceptions/ValueErrors for damaged state files
            raise UserError(f"study {name!r}: Ray Tune cannot restore its state ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); the experiment state files in "
                            f"{storage.uri(name)} may be damaged") from None
        record["runs"].append({"kind": "resume", "command": command_line(), "at": now_iso(),
                               "versions": package_versions()})
        storage.write_text(storage.join(name, STUDY_RECORD), json.dumps(record, indent=2) + "\n")
        return _fit(tuner, storage, name)
    finally:
        if started:
            import ray

            ray.shutdown()


def _check_trial_folders(storage: Storage, name: str) -> None:
    """An unfinished trial whose folder is gone cannot continue; say which, before Ray fails obscurely."""
    from .tables import load_trials

    for t in load_trials(storage, name):
        if t["state"] != "terminated" and t["dir"] and not storage.exists(storage.join(name, t["dir"])):
            raise UserError(f"cannot resume {name!r}: the folder of unfinished trial {t['trial_id']} "
                            f"({storage.uri(name, t['dir'])}) is missing; restore it from a backup, or start a "
                            f"new study with `adder-sweep sweep`")


def _check_space_unchanged(record: dict, space_file: Optional[str]) -> None:
    from .space import read_space_file

    name = record["name"]
    candidates = [space_file] if space_file else []
    source = record.get("source")
    if not space_file and source and os.path.isfile(source):
        candidates.append(source)
    for path in candidates:
        try:
            current, _ = read_space_file(path)
        except UserError as exc:
            raise UserError(f"cannot resume {name!r}: its search-space file no longer validates ({exc}); "
                            f"restore the file as it was (a copy is in the study's space.yaml)") from None
        if current.space_fingerprint() != record["file_fingerprint"]:
            recorded = StudySpec.from_json(record["file_spec"]).to_json()
            now = current.to_json()
            changed = sorted(k for k in set(recorded) | set(now)
                             if k not in ("source", "description", "name") and recorded.get(k) != now.get(k))
            raise UserError(f"cannot resume {name!r}: {path} changed since the study started ({', '.join(changed)} "
                            f"differ); a study's space cannot change -- restore the file (the original is in the "
                            f"study's space.yaml) or start a new study with `adder-sweep sweep {path}`")


def _fit(tuner, storage: Storage, name: str) -> Outcome:
    from collections import Counter

    _write_driver(storage, name)
    try:
        grid = tuner.fit()
        _record_final_states(grid, storage, name)
        states = dict(Counter(trial_states(storage, name).values()))
        interrupted = any(s in ("PENDING", "RUNNING", "PAUSED") for s in states)
    except KeyboardInterrupt:  # a second Ctrl-C skips Tune's graceful stop
        interrupted, states = True, {}
    finally:
        storage.delete(storage.join(name, DRIVER_FILE))
    return Outcome(name, storage.uri(name), states, interrupted, storage.root)


def _record_final_states(grid, storage: Storage, name: str) -> None:
    """Ray's last experiment-state snapshot can predate a trial's final failure (it then still says RUNNING);
    the driver's in-memory trials know better. Record which trials errored against that snapshot's file name.
    Only errors: after Ctrl-C the in-memory trials read TERMINATED while the snapshot rightly keeps them
    unfinished for resume."""
    from .tables import FINAL_STATES, experiment_state_path

    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    state_path = experiment_state_path(storage, name)
    if not trials or state_path is None:
        return
    record = {"experiment_state": state_path.rsplit("/", 1)[-1],
              "states": {t.trial_id: t.status for t in trials if t.status == "ERROR"}}
    storage.write_text(storage.join(name, FINAL_STATES), json.dumps(record, indent=1) + "\n")


def trial_states(storage: Storage, name: str) -> dict[str, str]:
    """trial id -> Ray state (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) from the experiment state file."""
    from .tables import load_trials

    return {t["trial_id"]: t["ray_status"] for t in load_trials(storage, name)}
