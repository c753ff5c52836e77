"""Ray Tune callbacks of the sweep driver: TensorBoard's HParams records, and the live study page.

* ``HParamsLogger``: Ray's TensorBoard logger (it stays the only one: Ray adds its own only when none is given)
  writes a trial's HParams record at its end from ``trial.evaluated_params`` -- the values Tune's searcher sampled.
  adder-sweep resolves every grid and random trial in the driver (orchestrator/spec/plan.py), so Tune samples nothing
  and Ray would record no hyperparameters at all. This subclass records the study's swept keys and seed instead,
  with the trial's final metrics, in the trial's own event file: one HParams session per trial.
* ``LivePage``: while trials run, rewrites ``report.html`` every 30 s (atomically; for a large study at least 20
  times as long as drawing it took) from the results the driver holds in memory, so an open browser tab shows
  progress without anything re-reading storage.
* ``CheckpointPruner``: removes the older checkpoints of finished trials, and only of those the experiment state
  *on storage* already records as finished. Ray's own ``num_to_keep`` deletes a checkpoint as soon as a newer one
  is registered, while the experiment state naming the latest checkpoint reaches storage later (seconds, on S3
  more): a driver lost in between leaves a state whose trial restores from a deleted checkpoint, and `resume`
  fails that trial. Ray therefore keeps every checkpoint (``num_to_keep=None``) and this callback does the pruning.
  On file-system storage it also keeps adder-sweep's copy of the newest complete experiment state (Ray writes its
  file in place, so a driver killed mid-write leaves it cut off; `resume` puts the copy back) and prunes by it.
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import Optional

from ray.tune import CLIReporter
from ray.tune.callback import Callback
from ray.tune.logger import CSVLoggerCallback, TBXLoggerCallback

HPARAM_METRICS = ("exact_acc", "digit_acc", "loss", "iter", "iters_to_solve", "lr")


class StudyReporter(CLIReporter):
    """Ray's live table with the study's own columns (``live_columns``), and the study's folder where Ray names
    its session's temp folder (``Result logdir: /tmp/ray/session_.../driver_artifacts``), which holds nothing a
    user looks for."""

    def __init__(self, parameter_columns: list[str], metric_columns: list[str], study_uri: str):
        super().__init__(parameter_columns=parameter_columns, metric_columns=metric_columns,
                         max_report_frequency=15, sort_by_metric=False,
                         # explicit: left as None, Ray decides it from Tune's process-wide verbosity, which the
                         # first run in a process sets to ours (1) -- every later study in the process lost its table
                         print_intermediate_tables=True)
        self.study_uri = study_uri

    def report(self, trials, done: bool, *sys_info: str):
        lines, said = [], False
        for line in self._progress_str(trials, done, *sys_info).split("\n"):
            if line.startswith("Result logdir: "):
                if not said:
                    lines.append(f"Study folder: {self.study_uri}")
                said = True
                continue
            lines.append(line)
        self._print("\n".join(lines))


def live_columns(spec) -> tuple[list[str], list[str]]:
    """The live table's (parameter, metric) columns: the study's swept keys, the seed when it has replicates,
    and the iteration, the loss and the study's metric (of a packed trial: its best member's)."""
    from ..spec.plan import seeds

    if spec.pack > 1:  # a row per packed trial: the keys its members share, and how many there are
        from trainables.config import PACK_SHARED

        return [k for k in spec.swept_keys() if k in PACK_SHARED] + ["_members"], \
            ["iter", "loss"] + ([spec.metric] if spec.metric != "loss" else [])
    params = [k for k in spec.swept_keys() if k != "seed"]
    if "seed" in spec.swept_keys() or len(seeds(spec)) > 1 or not params:
        params.append("seed")  # (and never an empty list: Ray would show every key of the config)
    metrics = ["iter", "loss"] + ([spec.metric] if spec.metric not in ("iter", "loss") else [])
    return params, metrics


class HParamsLogger(TBXLoggerCallback):
    def __init__(self, keys: list[str]):
        super().__init__()
        self._keys = list(keys)

    def hparams_of(self, trial) -> dict:
        """The trial's hyperparameters: the study's swept keys and its seed, as TensorBoard's types."""
        from ..results.tables import training_values

        config = training_values(trial.config)
        out = {}
        for k in self._keys:
            v = config.get(k)
            if isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            if v is not None:
                out[k] = v
        return out

    def log_trial_end(self, trial, failed: bool = False):
        if trial not in self._trial_writer:
            return
        result = self._trial_result.get(trial) or {}
        if not failed and result:
            metrics = {}
            for key, value in result.items():
                name = key.rsplit("/", 1)[-1]
                if (name in HPARAM_METRICS or name.startswith(("exact_acc@", "digit_acc@"))) \
                        and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    metrics[key] = value
            self._log_hparams(trial, self.hparams_of(trial), metrics)
        self._trial_writer[trial].close()
        del self._trial_writer[trial]
        del self._trial_result[trial]

    def _log_hparams(self, trial, params: dict, metrics: dict) -> None:
        from tensorboardX.summary import hparams

        try:
            experiment, start, end = hparams(hparam_dict=params, metric_dict=metrics)
            writer = self._trial_writer[trial].file_writer
            for summary in (experiment, start, end):
                writer.add_summary(summary)
        except Exception as exc:  # a logging aid must never fail a study
            print(f"adder-sweep: TensorBoard hparams of trial {trial.trial_id} not written ({exc})", file=sys.stderr)


class NoProgressCsv(CSVLoggerCallback):
    """Takes the place of Ray's CSV logger, which Tune adds when none is given: its per-trial progress.csv repeats
    result.json (the source of every table), and nothing of adder-sweep reads it -- at 10,000 trials, 10,000 files
    fewer to write, sync and delete."""

    _SAVED_FILE_TEMPLATES: list[str] = []

    def log_trial_result(self, iteration, trial, result):
        pass

    def log_trial_end(self, trial, failed: bool = False):
        pass


class FinishedTrialTrimmer(Callback):
    """Drops Tune's running statistics of a finished trial's every numeric result key (``metric_analysis``: max,
    min, avg, last-5/10 averages, with their deques). Tune keeps them for every trial to the end, in memory and in
    every experiment-state snapshot it writes -- about 30 KB per trial, most of a 10,000-trial state's 200 MB --
    and adder-sweep reads none of them (its tables come from the reports; schedulers see each result as it comes;
    a resumed trial starts new statistics). ``last_result``, checkpoints and errors stay."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._trim(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._trim(trial)

    @staticmethod
    def _trim(trial) -> None:
        metadata = getattr(trial, "run_metadata", None)
        if metadata is None or not hasattr(metadata, "metric_analysis"):
            return  # another Ray's Trial: leave it as it is
        metadata.metric_analysis = {}
        metadata.metric_n_steps = {}
        if hasattr(trial, "invalidate_json_state"):
            trial.invalidate_json_state()


# the report keys the live page's tables read (results/tables.py: METRIC_FIELDS and the trial row); the rest of
# Ray's result (its bookkeeping, ~20 more keys) is not kept for 10,000 trials
LIVE_KEYS = ("iter", "loss", "exact_acc", "digit_acc", "lr", "time_s", "samples_per_s", "status", "time_total_s",
             "timestamp", "iters_to_solve", "node", "hostname", "device", "kernel")


class LivePage(Callback):
    """Keeps ``report.html`` of a running study current: every LIVE_EVERY_S seconds (and at the end), from the
    configs and results Tune hands the driver -- never from storage. Holds only plain data, so Tune can pickle it
    with the study's state (tuner.pkl)."""

    def __init__(self, name: str, storage_root: str, spec_json: dict, generation: int = 0,
                 every_s: float | None = None):
        self.name, self.storage_root, self.spec_json, self.generation = name, storage_root, spec_json, generation
        self.every = LIVE_EVERY_S if every_s is None else every_s
        self.trials: dict[str, dict] = {}
        self._last = self._cost = 0.0
        self._writer: threading.Thread | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "trials": {}, "_last": 0.0, "_cost": 0.0, "_writer": None,  # Tune keeps results
                "_member_configs": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_cost": 0.0, **state})

    def _entries(self, trial) -> list[tuple[Optional[str], dict]]:
        """The trial's entries, one per logical trial: itself, or each member of a packed trial (with its index
        as its reports name it)."""
        from ..results.tables import training_values

        if not trial.config.get("_pack"):
            e = self.trials.setdefault(trial.trial_id, {"reports": [], "state": "pending"})
            e["config"] = training_values(trial.config)
            return [(None, e)]
        out = []
        for k, config in enumerate(self._members(trial)):
            e = self.trials.setdefault(f"{trial.trial_id}-{k}", {"reports": [], "state": "pending"})
            e["config"] = config
            out.append((str(k), e))
        return out

    def _members(self, trial) -> list[dict]:
        from trainables.tune_adapter import pack_members

        cache = self.__dict__.setdefault("_member_configs", {})
        if trial.trial_id not in cache:
            cache[trial.trial_id] = pack_members(trial.config)
        return cache[trial.trial_id]

    def _set_state(self, trial, state: str) -> None:
        for _, e in self._entries(trial):
            e["state"] = state

    def on_trial_start(self, iteration, trials, trial, **info):
        self._set_state(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def keep(r: dict) -> dict:
            return {k: v for k, v in r.items() if k in LIVE_KEYS or k.startswith(("exact_acc@", "digit_acc@"))}

        members = result.get("members") or {}
        for key, e in self._entries(trial):
            if key is None:
                e["reports"].append(keep(result))
            elif isinstance(members.get(key), dict):
                e["reports"].append(keep({**result, **members[key]}))
        self._maybe_write(force=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._set_state(trial, "terminated")
        self._maybe_write(force=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set_state(trial, "errored")
        self._maybe_write(force=False)

    def on_experiment_end(self, trials, **info):
        self._maybe_write(force=True)

    def _maybe_write(self, force: bool) -> None:
        """Render and write the page in a background thread from a snapshot of the trials, so Tune's loop is not
        held up while plotly builds it; at the end (force), wait for any write in flight, then write in line."""
        now = time.monotonic()
        if not self.trials or (not force and now - self._last < max(self.every, COST_SHARE * self._cost)):
            return
        writer = getattr(self, "_writer", None)
        if writer is not None and writer.is_alive():
            if not force:
                return  # the previous page is still being written: skip this turn
            writer.join()
        self._last = now
        snapshot = {t: {**e, "reports": list(e["reports"])} for t, e in self.trials.items()}
        if force:
            self._write(snapshot)
        else:
            self._writer = threading.Thread(target=self._write, args=(snapshot,), name="adder-sweep-live-page",
                                            daemon=True)
            _WRITERS.append(self._writer)
            self._writer.start()

    def _write(self, trials: dict) -> None:
        start = time.monotonic()
        try:
            write_live_page(self.name, self.storage_root, self.spec_json, self.generation, trials,
                            max(self.every, COST_SHARE * self._cost))
        except Exception as exc:  # the page is a view; the study goes on without it
            print(f"adder-sweep: live report.html not written ({type(exc).__name__}: {exc})", file=sys.stderr)
        # the page is drawn beside Tune's loop, and for a large study takes seconds of the driver's CPU: the next
        # one waits at least COST_SHARE times as long (<= 5% of the driver)
        self._cost = time.monotonic() - start


_WRITERS: list[threading.Thread] = []


KEEP_CHECKPOINTS = 2  # the newest, and one to fall back on if it is damaged (trainables.tune_adapter)


def prune_finished_checkpoints(storage, name: str, gen_path: str = "", only: set[str] | None = None,
                               skip: set[str] = frozenset(), keep: int = KEEP_CHECKPOINTS) -> set[str]:
    """Delete all but the ``keep`` newest ``checkpoint_*`` folders of each trial (of ``only`` if given, not of
    ``skip``) that the newest experiment-state snapshot on storage records as TERMINATED or ERROR; returns the ids
    of those trials.

    Safe against a driver lost at any moment: a restore starts from that snapshot, so a trial it records as
    finished is never restored mid-run (TERMINATED), or restarts from its latest registered checkpoint (ERROR),
    which is the newest or -- if its worker died between uploading one more and reporting it -- the second newest
    folder; an errored trial therefore keeps one more, so the registered one always has an earlier one to fall back
    on if it is damaged. A trial the snapshot still records as running keeps every checkpoint: the snapshot may
    name any of them. On a file system the snapshot is adder-sweep's copy of the newest complete one (STATE_COPY,
    what `resume` puts back if Ray's file was cut off), refreshed first."""
    from pyarrow.fs import FileSelector, FileType

    from contextlib import nullcontext

    from ..results.tables import snapshot_trials
    from .state_copy import keep_state_copy, open_state_copy

    source = nullcontext()
    if storage.is_local:
        # decide from adder-sweep's copy, which is what `resume` restores if Ray's file is cut off
        copy, _ = keep_state_copy(storage, name, gen_path)
        if copy is None:
            return set()
        source = open_state_copy(copy)
    done = set()

    def wanted(trial_id: str) -> bool:
        return trial_id not in skip and (only is None or trial_id in only)

    with source as stream:
        trials = snapshot_trials(storage, name, gen_path, text=stream, keep=wanted)
    for t in trials:
        if t["ray_status"] not in ("TERMINATED", "ERROR") or not t["dir"] or not wanted(t["trial_id"]):
            continue
        base = storage.join(name, t["dir"])
        if storage.is_dir(base):
            found = storage.fs.get_file_info(FileSelector(base))
            folders = sorted(i.path for i in found
                             if i.type == FileType.Directory and i.base_name.startswith("checkpoint_"))
            n = keep + 1 if t["ray_status"] == "ERROR" else keep
            for path in folders[:-n] if n > 0 else folders:
                storage.fs.delete_dir(path)
        done.add(t["trial_id"])
    return done


class CheckpointPruner(Callback):
    """Prunes finished trials' checkpoints (``prune_finished_checkpoints``) every PRUNE_EVERY_S seconds while a
    study runs, and all finished trials' at its end, after Tune's final snapshot; between prunes, refreshes the
    copy of the experiment state every COPY_EVERY_S seconds. Both read and parse the whole state, which grows with
    the study (tens of MB at 10,000 trials), so each waits at least ``COST_SHARE`` times its own last duration:
    together they never take more than about 1/COST_SHARE of the driver's time. Holds only plain data."""

    def __init__(self, name: str, storage_root: str, generation: int = 0, every_s: float | None = None,
                 cost_share: float = None):
        self.name, self.storage_root, self.generation = name, storage_root, generation
        self.every = PRUNE_EVERY_S if every_s is None else every_s
        self.cost_share = COST_SHARE if cost_share is None else cost_share
        self.finished: set[str] = set()
        self.pruned: set[str] = set()
        self.waiting: set[str] = set()  # finished - pruned, kept as they change (a difference per step costs O(trials))
        self._last = self._copied = time.monotonic()
        self._prune_cost = self._copy_cost = 0.0
        self._signature = None
        self._warned = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "finished": set(), "pruned": set(), "waiting": set(), "_last": 0.0, "_copied": 0.0,
                "_warned": False, "_signature": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"_prune_cost": 0.0, "_copy_cost": 0.0, "_signature": None, "cost_share": COST_SHARE,
                              "waiting": set(), **state})
        self._last = self._copied = time.monotonic()

    @property
    def _gen_path(self) -> str:
        return f"gen-{self.generation}" if self.generation else ""

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial.trial_id)

    def _finish(self, trial_id: str) -> None:
        self.finished.add(trial_id)
        if trial_id not in self.pruned:
            self.waiting.add(trial_id)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if self.waiting and now - self._last >= max(self.every, self.cost_share * self._prune_cost):
            self._prune(set(self.waiting))
        elif now - self._copied >= max(COPY_EVERY_S, self.cost_share * self._copy_cost):
            self._copy_state()

    def _copy_state(self) -> None:
        """Refresh adder-sweep's copy of the experiment state (file-system storage only), so a state cut off by
        a lost driver costs `resume` seconds of progress, not the study."""
        from .state_copy import keep_state_copy
        from ..studydir.storage import Storage

        start = self._copied = time.monotonic()
        try:
            storage = Storage.open(self.storage_root)
            if storage.is_local:
                _, self._signature = keep_state_copy(storage, self.name, self._gen_path, self._signature)
        except Exception as exc:
            self._warn(exc)
        self._copy_cost = time.monotonic() - start

    def on_experiment_end(self, trials, **info):
        self._prune(None)  # every finished trial, also those a run before this one finished

    def _prune(self, only: set[str] | None) -> None:
        from ..studydir.storage import Storage

        start = self._last = time.monotonic()
        try:
            done = prune_finished_checkpoints(Storage.open(self.storage_root), self.name, self._gen_path, only,
                                              skip=self.pruned)
            self.pruned |= done
            self.waiting -= done
        except Exception as exc:  # storage trouble costs disk space, never the study
            self._warn(exc)
        self._prune_cost = time.monotonic() - start
        self._signature = None  # the prune wrote a fresh copy

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            print(f"adder-sweep: older checkpoints of finished trials not removed, or the experiment state not "
                  f"copied ({type(exc).__name__}: {exc}); they only take space", file=sys.stderr)


PRUNE_EVERY_S = float(os.environ.get("ADDER_SWEEP_PRUNE_EVERY_S", "30"))
COPY_EVERY_S = 5.0
COST_SHARE = 20  # a periodic driver task waits at least 20x its own last duration: <= 5% of the driver's time


def wait_for_live_pages(timeout: float = 60) -> None:
    """Let live-page writes in flight finish, so none lands after the complete page the command writes last."""
    deadline = time.monotonic() + timeout
    while _WRITERS:
        _WRITERS.pop().join(max(0.0, deadline - time.monotonic()))


def write_live_page(name: str, storage_root: str, spec_json: dict, generation: int, trials: dict,
                    every_s: float) -> str:
    """The page of the trials the driver holds in memory (this generation's), built with the same table code as
    from storage, written atomically beside the study's tables."""
    from ..results.page import write
    from ..results.report import Study
    from ..results.tables import identity_function, tables_from
    from ..spec.space import StudySpec
    from ..studydir.storage import Storage, read_record

    storage = Storage.open(storage_root)
    spec = StudySpec.from_json(spec_json)
    per_trial = []
    for trial_id, e in sorted(trials.items()):
        reports = sorted(e["reports"], key=lambda r: r.get("iter", 0))
        wall = reports[-1].get("time_total_s") if reports else None
        chain = [{"trial_id": trial_id, "state": e["state"], "config": e.get("config", {}),
                  "generation": generation, "num_failures": 0, "error_file": None, "dir": None}]
        per_trial.append((chain, reports, wall))
    trials_t, metrics_t = tables_from(name, per_trial, identity_function(spec))
    study = Study(name, storage, read_record(storage, name), spec, trials_t.to_pandas(), metrics_t.to_pandas())
    return write(study, live_note=f"Live view at {time.strftime('%H:%M:%S')}: the {len(trials)} trials this run has "
                                  f"started so far (generation {generation}), from the driver's memory; rewritten "
                                  f"every {every_s:g} s. The complete page is written when the command ends.")


LIVE_EVERY_S = float(os.environ.get("ADDER_SWEEP_PAGE_EVERY_S", "30"))


def hparam_keys(spec) -> list[str]:
    """The keys recorded as hyperparameters: the swept ones, and seed (replicates)."""
    keys = [k for k in spec.swept_keys()]
    return keys + (["seed"] if "seed" not in keys else [])
