"""Launch and resume studies on Ray Tune.

``launch`` turns a validated StudySpec into a ``Tuner`` (current API: ``Tuner``, ``RunConfig(storage_path=...,
storage_filesystem=...)``, ``tune.with_resources``, ``Tuner.restore``) and records what reproduces the study in its
directory: ``adder_study.json`` (spec, YAML text, command lines, versions, runtime_env) and ``space.yaml``.

Order of a launch, so that a refused launch leaves nothing behind (``study_session``): validate, probe the
tracking server if any (tune/tracking.py), connect (cluster/connect.py), check the trials fit, probe every node,
claim the study name (studydir/claim.py), write the record, run Tune. After Tune returns, ``Outcome`` says how
every trial ended; the API (orchestrator/api.py) makes its StudyResult of it.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from ..studydir.claim import Claim, claim_existing_study, claim_new_study
from ..cluster.connect import Connection, connect, disconnect, probe, resolve_address, trial_runtime_env
from ..errors import UserError
from ..studydir.records import code_version, command_line, now_iso, package_versions
from ..spec.space import Dist, StudySpec, valid_study_name
from .search import make_scheduler, make_searcher, param_space
from ..studydir.storage import STUDY_RECORD, Storage, read_record, study_location, write_record  # noqa: F401


@dataclass
class TrialError:
    trial_id: str
    config: dict
    message: str  # the error's telling line
    error_file: Optional[str]  # where the full error is (a path or URI)


@dataclass
class Outcome:
    name: str
    path: str  # study location (local path or URI)
    states: dict  # Ray trial state -> count
    interrupted: bool
    storage: str
    errors: list[TrialError] = field(default_factory=list)
    stop_reason: Optional[str] = None  # None, "sigint", "sigterm" or "taken_over"
    taken_by: Optional[dict] = None
    tracking: Optional[dict] = None  # what reached the MLflow server (orchestrator.tune.tracking.finish_trackers)


class Stopper:
    """How a running study is stopped from outside. Ctrl-C is Ray Tune's own (a graceful stop; a second one
    skips it). SIGTERM -- what ``ray job stop`` and Kubernetes send -- and a claim taken over by another driver do
    the same through Tune's other stop signal, SIGUSR1. Before Tune runs, SIGTERM interrupts like Ctrl-C."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.taken_by: Optional[dict] = None
        self.in_tune = False
        self._old = None

    def __enter__(self) -> "Stopper":
        try:
            self._old = signal.getsignal(signal.SIGTERM)
        except ValueError:
            self._old = None
        self.arm()
        return self

    def arm(self) -> None:
        """(Re)install the SIGTERM handler: ray.init installs its own (which exits at once), so this runs again
        after connecting."""
        if self._old is None:
            return  # not entered: a library caller (tests) keeps its signals
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: leave signals alone
            pass

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def _on_sigterm(self, signum, frame) -> None:
        again = self.reason is not None
        self.reason = self.reason or "sigterm"
        if self.in_tune and not again and hasattr(signal, "SIGUSR1"):
            signal.raise_signal(signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    def claim_lost(self, new_claim: dict) -> None:
        """Called from the heartbeat thread: another driver took the study over; stop ours."""
        self.taken_by = new_claim
        self.reason = self.reason or "taken_over"
        if self.in_tune and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)


def _quiet_ray_env() -> None:
    # The legacy CLIReporter lets us choose the live table's columns; Ray's new output ignores them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Checkpoints are small and frequent by design; Ray's warning about snapshot frequency is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def check_fits(spec: StudySpec, nodes: Optional[list[dict]] = None) -> None:
    """A trial that no node can hold would leave the study pending forever: say so instead. Ray places all of a
    trial's resources on one node, so the test is against each alive node's resources, not the cluster's totals
    (two 1-CPU nodes cannot run a 2-CPU trial). ``nodes``: ``ray.nodes()`` as Ray returns it (default: ask)."""
    if nodes is None:
        import ray

        nodes = ray.nodes()
    alive = [(f"{n.get('NodeManagerAddress', '?')} ({n.get('NodeID', '?')[:8]})", n.get("Resources") or {})
             for n in nodes if n.get("Alive")]
    cpu, gpu = spec.resources["cpu"], spec.resources["gpu"]
    if any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for _, r in alive):
        return
    if not alive:
        raise UserError("resources: the Ray cluster lists no alive node to run trials on")
    for kind, asked, unit, hint in (("GPU", gpu, "GPU", "use --gpus-per-trial 0 or connect to a cluster with GPUs "
                                     "(--address)"), ("CPU", cpu, "CPUs", "use a smaller --cpus-per-trial")):
        if all(r.get(kind, 0) < asked for _, r in alive):
            host, most = max(((h, r.get(kind, 0)) for h, r in alive), key=lambda a: a[1])
            total = sum(r.get(kind, 0) for _, r in alive)
            if len(alive) == 1:
                raise UserError(f"resources: a trial asks for {asked:g} {unit} but the Ray cluster has {most:g}; "
                                f"{hint}")
            raise UserError(f"resources: a trial asks for {asked:g} {unit} but the largest of the cluster's "
                            f"{len(alive)} nodes ({host}) has {most:g} ({total:g} in all; a trial's resources "
                            f"must fit on one node); {hint}")
    raise UserError(f"resources: a trial asks for {cpu:g} CPUs and {gpu:g} GPU on one node, and no node of the Ray "
                    "cluster has both; use a smaller --cpus-per-trial or --gpus-per-trial")


def trial_resources(spec: StudySpec) -> dict:
    """Ray resources of one trial; a GPU share makes the trial train on CUDA (see trainables.device.resolve_device)."""
    return {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}


def _values(spec: StudySpec, key: str, default) -> list:
    v = spec.space.get(key, default)
    return list(v.args) if isinstance(v, Dist) else [v]


def uses_fused_kernel(spec: StudySpec) -> bool:
    """Whether some trial builds the fused kernel: ``kernel: fused`` for an rnn or gru cell trained on the CPU
    (lstm and CUDA run torch's kernels), so only then does the probe ask the nodes for a compiler and ninja."""
    on_cpu = spec.resources["gpu"] == 0 or "cpu" in _values(spec, "device", "auto")
    return "fused" in _values(spec, "kernel", "torch") and on_cpu and \
        bool({"rnn", "gru"} & set(_values(spec, "cell", "rnn")))


def needs_cuda(spec: StudySpec) -> bool:
    """Whether trials train on a GPU: a GPU share with device auto or cuda (``device: cpu`` with a share trains on
    the CPU, as the logical-GPU scheduling test does)."""
    return spec.resources["gpu"] > 0 and bool({"auto", "cuda"} & set(_values(spec, "device", "auto")))


def build_trainable(spec: StudySpec):
    from ray import tune

    from trainables.tune_adapter import run_trial

    trainable = tune.with_parameters(run_trial, checkpoint_every=spec.checkpoint_every)
    return tune.with_resources(trainable, trial_resources(spec))


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def experiment_location(storage: Storage, name: str, gen_path: str = "") -> tuple[str, str]:
    """(storage_path, experiment name) of one generation's Tune experiment: the study directory itself for
    generation 0, ``<study>/gen-K`` for later ones."""
    if not gen_path:
        return storage.ray_path, name
    return f"{storage.ray_path}/{name}", gen_path


def tune_points(planned) -> list[dict]:
    """Planned trials as Tune's points_to_evaluate: every swept and constant key of the space, resolved."""
    return [dict(p.config) for p in planned]


PACK_KEYS = {"_pack": "", "_members": 0}  # a packed trial's Tune config: its members (JSON), and how many


def pack_points(points: list[dict], size: int) -> list[dict]:
    """Trials' points as the points of packed trials (spec ``pack``): grouped by what a batched step shares
    (orchestrator/spec/plan.py ``pack_groups``), each pack one point -- its members' own keys in ``_pack``, the
    keys they share at the top, where the live table and Tune see them."""
    from trainables.config import PACK_SHARED

    from ..spec.plan import pack_groups

    # a pack `extend` continues as a whole is one already; a lone trial it continues stays alone (its checkpoint
    # is a single run's)
    out = [p for p in points if p.get("_pack") or p.get("_continues")]
    fresh = [p for p in points if not (p.get("_pack") or p.get("_continues"))]
    for group in pack_groups(fresh, size):
        members = [fresh[i] for i in group]
        shared = {k: members[0][k] for k in PACK_SHARED if k in members[0]}
        out.append({**shared, "_pack": json.dumps(members), "_members": len(members)})
    return out


def trial_callbacks(spec: StudySpec, name: str, storage: Storage, generation: int = 0) -> list:
    """The driver's Tune callbacks (orchestrator/tune/callbacks.py): complete HParams records in TensorBoard, the
    study page kept current while trials run, and -- except under PBT, where a donor's checkpoint must outlive the
    recipient's restore, so all are kept -- the pruning of finished trials' older checkpoints; and the MLflow
    tracker of a tracked study (orchestrator/tune/tracking.py)."""
    from .callbacks import CheckpointPruner, FinishedTrialTrimmer, HParamsLogger, LivePage, NoProgressCsv, hparam_keys
    from .tracking import tracker_for

    callbacks = [HParamsLogger(hparam_keys(spec)), NoProgressCsv(),
                 LivePage(name, storage.root, spec.to_json(), generation)]
    if spec.scheduler["type"] != "pbt":  # PBT compares trials by their results while they run: left as Tune has it
        callbacks.append(FinishedTrialTrimmer())
    if spec.scheduler["type"] != "pbt":
        callbacks.append(CheckpointPruner(name, storage.root, generation))
    return callbacks + [c for c in [tracker_for(spec, name, generation)] if c is not None]


def build_tuner(spec: StudySpec, name: str, storage: Storage, *, points: Optional[list[dict]] = None,
                gen_path: str = "", history: tuple = ()):
    """The Tuner of one generation. Grid and random studies run the trials the driver resolved
    (orchestrator/spec/plan.py) as Tune's points_to_evaluate, so Tune samples nothing; Optuna samples, and repeats come
    from Tune's Repeater. ``points`` replaces the plan (``extend`` passes the new and continued trials)."""
    import logging

    from ray import tune
    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune warns for every planned value that differs from the param space's placeholder: by design here
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    # After an interrupt Tune's result grid warns "Failed to fetch metrics ... FileNotFoundError" for every trial
    # that never started: they are pending, as the summary printed after it says, not lost
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    from trainables.config import TrainConfig

    from ..spec.plan import plan, seeds

    from .callbacks import StudyReporter, live_columns

    reporter = StudyReporter(*live_columns(spec), storage.uri(name))
    storage_path, experiment = experiment_location(storage, name, gen_path)
    run_config = RunConfig(
        name=experiment, storage_path=storage_path, storage_filesystem=storage.ray_filesystem,
        stop=spec.stop or None, failure_config=FailureConfig(max_failures=spec.max_failures),
        # Ray deletes nothing: its num_to_keep deletes checkpoints that the experiment state on storage may still
        # name (a driver lost before its next snapshot landed could not resume them); CheckpointPruner prunes
        # finished trials instead (orchestrator/tune/callbacks.py).
        checkpoint_config=CheckpointConfig(num_to_keep=None),
        progress_reporter=reporter, verbose=1,
        callbacks=trial_callbacks(spec, name, storage, int(gen_path.split("-")[-1]) if gen_path else 0))
    if spec.search["type"] == "optuna" and points is None:
        space = param_space(spec)
        searcher = make_searcher(spec)
        n = len(seeds(spec))
        if n > 1:
            from ray.tune.search import Repeater

            searcher = Repeater(searcher, repeat=n, set_index=True)
        num_samples = spec.num_samples * n
    else:
        points = tune_points(plan(spec, history)) if points is None else points
        # every key as a constant: points may only name keys of the param space, and set all of them
        space = {**TrainConfig().to_flat(), **{k: v for k, v in spec.space.items() if not isinstance(v, Dist)},
                 "_continues": ""}
        if spec.pack > 1:
            points, space = pack_points(points, spec.pack), {**space, **PACK_KEYS}
        searcher = BasicVariantGenerator(points_to_evaluate=points)
        num_samples = len(points)
    tune_config = TuneConfig(
        metric=spec.metric, mode=spec.mode, num_samples=num_samples, scheduler=make_scheduler(spec),
        search_alg=searcher, max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
        trial_dirname_creator=_trial_dirname)
    return tune.Tuner(build_trainable(spec), param_space=space, tune_config=tune_config, run_config=run_config)


def run_entry(kind: str, conn: Connection, generation: int = 0, **extra) -> dict:
    """One line of the study's lineage: what ran, when, from which code, on which cluster."""
    return {"kind": kind, "command": command_line(), "at": now_iso(), "generation": generation,
            "versions": package_versions(), "code": code_version(), "address": conn.address, "auth": conn.auth,
            **extra}


def _connect_and_probe(address: Optional[str], storage: Storage, spec: StudySpec, runtime_env: Optional[dict],
                       ship_code: Optional[bool], stopper: Optional[Stopper]) -> tuple[Connection, dict]:
    """Connect (embedded or cluster), check the trials fit and -- on a cluster -- probe every node."""
    address = resolve_address(address)
    ship = (address is not None) if ship_code is None else ship_code
    env = trial_runtime_env(runtime_env, ship)
    _quiet_ray_env()
    conn = connect(address, env)
    if stopper is not None:
        stopper.arm()
    try:
        check_fits(spec)
        if not conn.embedded:
            probe(conn, storage, fused=uses_fused_kernel(spec), cuda=needs_cuda(spec))
    except BaseException:
        disconnect(conn)
        raise
    return conn, {"user": runtime_env, "ship_code": ship}


def launch(spec: StudySpec, yaml_text: str, *, name: Optional[str], storage_root: str, address: Optional[str],
           file_spec: StudySpec, runtime_env: Optional[dict] = None,
           ship_code: Optional[bool] = None, stopper: Optional[Stopper] = None) -> Outcome:
    """Start a new study. ``spec`` has the command-line overrides applied; ``file_spec`` is the file as written."""
    name = name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not valid_study_name(name):
        raise UserError(f"--name {name!r}: use letters, digits, '-', '_', '.' (no '/' or '..')")
    from .tracking import check_server, mlflow_uri

    check_server(mlflow_uri(spec))
    storage = Storage.open(storage_root)
    if storage.exists(storage.join(name)):
        raise UserError(f"study {name!r} already exists under {storage.root}; continue it with "
                        f"`adder-sweep resume {name}{storage.flag()}`, or pick another --name")
    with study_session(storage, name, spec, address=address, runtime_env=runtime_env, ship_code=ship_code,
                       stopper=stopper, new=True) as (conn, env_record, claim):
        tuner = build_tuner(spec, name, storage)
        record = {
            "name": name, "created": now_iso(), "spec": spec.to_json(), "file_spec": file_spec.to_json(),
            "file_fingerprint": file_spec.space_fingerprint(), "yaml": yaml_text, "source": file_spec.source,
            "address": conn.address, "runtime_env": env_record, "runs": [run_entry("sweep", conn)],
            "generations": [{"index": 0, "path": "", "kind": "sweep", "spec": spec.to_json(), "at": now_iso()}],
        }
        write_record(storage, name, record)
        storage.write_text(storage.join(name, "space.yaml"), yaml_text)
        return _fit(tuner, storage, name, claim, stopper)


@contextmanager
def study_session(storage: Storage, name: str, spec: StudySpec, *, address: Optional[str],
                  runtime_env: Optional[dict], ship_code: Optional[bool], stopper: Optional[Stopper], new: bool,
                  force: bool = False):
    """The one sequence of sweep, resume and extend: connect, check the trials fit and probe the nodes, claim the
    study -- in the order that leaves nothing behind when refused -- and undo it all afterwards. Yields
    (connection, the runtime_env record, the claim).

    A new study (``new``) connects first: its claim creates the study folder, which a refused connection must not
    leave (nor the storage folder made for it). An existing one claims first: a study another driver runs is
    refused before any connection."""
    if new:
        created = storage.check_writable()
        try:
            conn, env_record = _connect_and_probe(address, storage, spec, runtime_env, ship_code, stopper)
        except BaseException:
            storage.remove_if_empty(created)  # a refused launch leaves nothing behind, not even the folder it made
            raise
        try:
            claim = claim_new_study(storage, name)
        except BaseException:
            disconnect(conn)
            raise
    else:
        claim = claim_existing_study(storage, name, force=force)  # refuses while another driver runs the study
        try:
            conn, env_record = _connect_and_probe(address, storage, spec, runtime_env, ship_code, stopper)
        except BaseException:
            claim.release()
            raise
    watch = None
    try:
        watch = watch_head(conn, storage, name)
        yield conn, env_record, claim
    finally:
        if watch is not None:
            watch.stop()
        claim.release()
        disconnect(conn)


def watch_head(conn: Connection, storage: Storage, name: str):
    """On a cluster this call connected to, watch its head (cluster/watch.py): once the GCS has stopped answering,
    the cluster is gone -- and Ray would end this process with no word of ours at its own timeout -- so say so in
    one line, with the command that resumes the study on a new cluster, and exit EXIT_CLUSTER_LOST at once. The
    claim stays, as any lost driver's: ``resume`` on this host takes it over at once, elsewhere once its heartbeat
    has stood still. A library caller's process ends the same way (Ray would end it too). None when not
    watched (the embedded Ray, a Ray the caller connected, a Ray Client address)."""
    from ..cluster.connect import _gcs_address, _local_token
    from ..cluster.watch import HeadWatch
    from ..errors import EXIT_CLUSTER_LOST

    if conn.embedded or not conn.owned:
        return None
    try:
        gcs = _gcs_address(conn.address)
    except UserError:
        return None
    if gcs is None:
        return None
    token = _local_token() if conn.auth == "token" else None

    def lost(seconds: float) -> None:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        print(f"adder-sweep: error: the Ray cluster's head at {gcs} has not answered for {seconds:.0f}s (the head "
              f"node is gone or cut off, and the cluster with it); study {name} is saved up to its trials' last "
              f"checkpoints in {storage.uri(name)} -- start a cluster, then: adder-sweep resume {name}"
              f"{storage.flag()} --address NEW_HEAD:PORT", file=sys.stderr, flush=True)
        os._exit(EXIT_CLUSTER_LOST)

    return HeadWatch(gcs, token, lost).start()


def recorded_connection(record: dict, address: Optional[str], runtime_env: Optional[dict]) -> dict:
    """What resume and extend connect with: the given address and runtime_env, else the study's recorded ones
    (and the recorded choice of shipping the code)."""
    recorded_env = record.get("runtime_env") or {}
    return {"address": address or record.get("address"),
            "runtime_env": runtime_env if runtime_env is not None else recorded_env.get("user"),
            "ship_code": recorded_env.get("ship_code")}


def resume(name_or_path: str, *, storage_root: str, address: Optional[str], space_file: Optional[str],
           runtime_env: Optional[dict] = None, force: bool = False, stopper: Optional[Stopper] = None,
           mlflow: Optional[str] = None) -> Outcome:
    """Continue a study with ``Tuner.restore``: finished trials stay, unfinished and errored ones resume.
    ``mlflow`` replaces the study's tracking server (``off``: none) from now on; by default it keeps its own."""
    from .tracking import check_server, mlflow_uri, set_tracker, tracker_for

    storage, name = study_location(name_or_path, storage_root)
    record = read_record(storage, name)
    spec = StudySpec.from_json(record["spec"]).with_tracking(mlflow)
    _check_space_unchanged(record, space_file)
    check_server(mlflow_uri(spec))
    with study_session(storage, name, spec, **recorded_connection(record, address, runtime_env), stopper=stopper,
                       new=False, force=force) as (conn, env_record, claim):
        gens = record.get("generations") or [{"index": 0, "path": "", "spec": record["spec"]}]
        generation = gens[-1]
        tuner = _restore_tuner(storage, name, record, spec, generation, gens)
        set_tracker(tuner, tracker_for(spec, name, generation.get("index", len(gens) - 1)))
        record["runs"].append(run_entry("resume", conn, generation.get("index", len(gens) - 1)))
        record["runtime_env"] = env_record
        record["spec"] = {**record["spec"], "tracking": spec.tracking}
        write_record(storage, name, record)
        return _fit(tuner, storage, name, claim, stopper, generation.get("path", ""))


def _restore_tuner(storage: Storage, name: str, record: dict, spec: StudySpec, generation: dict, gens: list):
    """The newest generation's Tuner, restored from its Tune state -- or, if it was interrupted before Tune saved
    any, built afresh from its recorded trials (nothing ran, so nothing is lost)."""
    from ray import tune

    gen_path = generation.get("path", "")
    storage_path, experiment = experiment_location(storage, name, gen_path)
    uri, fs = f"{storage_path}/{experiment}", storage.ray_filesystem
    if not tune.Tuner.can_restore(uri, storage_filesystem=fs):
        history = tuple(StudySpec.from_json(g["spec"]) for g in gens[:-1] if g.get("spec"))
        print(f"adder-sweep: generation {generation.get('index', 0)} of study {name} has no Ray Tune state yet "
              "(it was stopped before its first trial started); starting it now", file=sys.stderr)
        return build_tuner(spec, name, storage, points=generation.get("points"), gen_path=gen_path, history=history)
    _mend_state(storage, name, gen_path)
    _check_trial_folders(storage, name)
    try:
        return tune.Tuner.restore(uri, trainable=build_trainable(spec), resume_errored=True, storage_filesystem=fs)
    except Exception as exc:  # Ray raises plain Exceptions/ValueErrors for damaged state files
        raise UserError(f"study {name!r}: Ray Tune cannot restore its state ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); the experiment state files in "
                        f"{storage.uri(name)} may be damaged") from None


def _mend_state(storage: Storage, name: str, gen_path: str) -> None:
    """Two repairs of Ray Tune's newest experiment state before ``Tuner.restore`` reads it, each said in one line:

    * cut off: Ray writes it in place, so on a file system a driver killed mid-write leaves it truncated. Put back
      adder-sweep's copy of the newest complete one (checkpoints were pruned by that copy, so every checkpoint it
      names is there), keeping the cut-off file as ``.damaged``. Without a copy nothing changes, and the state is
      reported unreadable as before.
    * stale decisions: Ray saves the scheduling decisions it holds for running trials and acts on them after a
      restore. A trial whose worker died while a checkpoint was being saved leaves a STOP, and the restored trial
      was then stopped -- and recorded as finished -- at its first checkpoint, with exit code 0. They were about the
      previous driver's actors, all gone: clear them."""
    from ..results.tables import experiment_state_path
    from .state_copy import read_state_copy, state_is_complete
    from ..studydir.storage import generation_parts

    path = experiment_state_path(storage, name, gen_path)
    if path is None:
        return
    folder, file = path.rsplit("/", 1)
    with storage.fs.open_input_stream(path) as f:
        raw = f.read()
    text = raw.decode(errors="replace")  # a cut may split a character
    changed = False
    if not state_is_complete(text) and storage.is_local:
        copy = read_state_copy(storage, name, gen_path)
        if copy is None or (copy["file"] != file and not storage.exists(f"{folder}/{copy['file']}")):
            return  # no copy, or a copy of a state that is gone: do not guess
        storage.write_bytes(path + ".damaged", raw)
        print(f"adder-sweep: {storage.uri(*generation_parts(name, gen_path, file))} was cut off (its driver died, "
              f"or the disk filled, while Ray wrote it; kept as {file}.damaged); resuming from adder-sweep's copy of "
              f"{copy['file']} saved {copy['saved']}", file=sys.stderr)
        if copy["file"] != file:
            storage.delete(path)  # Ray restores the older state the copy was taken from
            return
        text, changed = copy["text"], True
    try:
        state = json.loads(text)
        runner = state["runner_data"]
        stale = {k: runner[k] for k in ("_cached_trial_decisions", "_queued_trial_decisions") if runner.get(k)}
    except (ValueError, KeyError, TypeError):
        stale = {}  # not the shape this knows: Tuner.restore reports a damaged state
    for key, decisions in stale.items():
        for trial_id, decision in decisions.items():
            if decision in ("STOP", "PAUSE"):  # CONTINUE is harmless; cleared with the rest
                print(f"adder-sweep: trial {trial_id}: dropped Ray Tune's saved {decision} decision from the "
                      "previous run (it would have halted the resumed trial at its next checkpoint)",
                      file=sys.stderr)
        runner[key] = {}
    if stale:
        text, changed = json.dumps(state), True
    if changed:
        storage.write_text(path, text)
    if storage.is_local:
        _mend_search_state(storage, name, gen_path, folder, file)


def _mend_search_state(storage: Storage, name: str, gen_path: str, folder: str, state_file: str) -> None:
    """Ray's searcher state of the session being restored, cut off (a full disk, a driver killed while Ray copied
    it): put back adder-sweep's copy, else stop with one line -- Ray would restart the searcher and fail obscurely
    (or plan the trials again)."""
    from ..studydir.state_copy import SEARCH_STATE, pickle_is_complete, read_search_copy
    from ..studydir.storage import generation_parts

    file = f"{SEARCH_STATE}{state_file[len('experiment_state-'):]}"
    path = f"{folder}/{file}"
    if not storage.exists(path):
        return
    with storage.fs.open_input_stream(path) as f:
        raw = f.read()
    if pickle_is_complete(raw):
        return
    copy = read_search_copy(storage, name, gen_path)
    where = storage.uri(*generation_parts(name, gen_path, file))
    if copy is None or copy["file"] != file:
        raise UserError(f"cannot resume {name!r}: Ray Tune's searcher state {where} is cut off and adder-sweep has "
                        "no copy of it; the trial folders are intact -- start a new study with `adder-sweep sweep`")
    storage.write_bytes(path + ".damaged", raw)
    storage.write_bytes(path, copy["data"])
    print(f"adder-sweep: {where} was cut off (kept as {file}.damaged); put back adder-sweep's copy saved "
          f"{copy['saved']}", file=sys.stderr)


def _check_trial_folders(storage: Storage, name: str) -> None:
    """An unfinished trial whose folder is gone cannot continue; say which, before Ray fails obscurely."""
    from ..results.tables import load_trials

    for t in load_trials(storage, name):
        if t["state"] != "terminated" and t["dir"] and not storage.exists(storage.join(name, t["dir"])):
            raise UserError(f"cannot resume {name!r}: the folder of unfinished trial {t['trial_id']} "
                            f"({storage.uri(name, t['dir'])}) is missing; restore it from a backup, or start a "
                            f"new study with `adder-sweep sweep`")


def _check_space_unchanged(record: dict, space_file: Optional[str]) -> None:
    from ..spec.space import read_space_file

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
                             if k not in ("source", "description", "name", "tracking")
                             and recorded.get(k) != now.get(k))
            raise UserError(f"cannot resume {name!r}: {path} changed since the study started ({', '.join(changed)} "
                            f"differ); a study's space cannot change -- restore the file (the original is in the "
                            f"study's space.yaml), grow the study with `adder-sweep extend`, or start a new study "
                            f"with `adder-sweep sweep {path}`")


def _fit(tuner, storage: Storage, name: str, claim: Claim, stopper: Optional[Stopper], gen_path: str = "") -> Outcome:
    from collections import Counter

    stopper = stopper or Stopper()
    stopper.arm()
    claim.start_heartbeat(stopper.claim_lost)
    errors: list[TrialError] = []
    try:
        stopper.in_tune = True
        grid = tuner.fit()
        stopper.in_tune = False
        _record_final_states(grid, storage, name, gen_path)
        del grid  # Tune's result grid holds every trial's last result: not needed once the states are recorded
        trials = _load_trials_quietly(storage, name)
        states = dict(Counter(t["ray_status"] for t in trials))
        interrupted = any(s in ("PENDING", "RUNNING", "PAUSED") for s in states)
        errors = [_trial_error(storage, name, t) for t in trials if t["ray_status"] == "ERROR"]
    except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM) skips Tune's graceful stop
        interrupted, states = True, {}
    except Exception as exc:
        # a full disk cuts the files Ray writes (an error file, the experiment state), and Ray fails reading them
        if no_space_left(exc) or storage.is_full():
            raise UserError(storage.full_message(name)) from None
        raise
    finally:
        stopper.in_tune = False
        from .callbacks import wait_for_live_pages
        from .tracking import finish_trackers

        wait_for_live_pages()
        tracking = finish_trackers()
    if errors and (storage.is_full() or any("No space left on device" in e.message for e in errors)):
        raise UserError(storage.full_message(name))  # the trials failed writing checkpoints: not their error
    reason = stopper.reason or ("sigint" if interrupted else None)
    return Outcome(name, storage.uri(name), states, interrupted, storage.root, errors, reason, stopper.taken_by,
                   tracking)


def no_space_left(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it came from is a full disk (ENOSPC)."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _load_trials_quietly(storage: Storage, name: str) -> list[dict]:
    from ..results.tables import load_trials

    try:
        return load_trials(storage, name)
    except UserError as exc:
        print(f"adder-sweep: cannot read the trials' final states: {exc}", file=sys.stderr)
        return []


def _trial_error(storage: Storage, name: str, trial: dict) -> TrialError:
    from ..results.tables import error_line

    path = None
    message = "the trial ended in error (Ray recorded no error file)"
    if trial.get("dir"):
        candidate = storage.join(name, trial["dir"], trial.get("error_file") or "error.txt")
        if storage.exists(candidate):
            path = storage.uri(name, trial["dir"], (trial.get("error_file") or "error.txt").rsplit("/", 1)[-1])
            try:
                message = error_line(storage.read_text(candidate)) or message
            except OSError:
                pass
    return TrialError(trial["trial_id"], trial.get("config") or {}, message, path)


def _record_final_states(grid, storage: Storage, name: str, gen_path: str = "") -> None:
    """Ray's last experiment-state snapshot can predate a trial's final failure (it then still says RUNNING);
    the driver's in-memory trials know better. Record which trials errored against that snapshot's file name.
    Only errors: after Ctrl-C the in-memory trials read TERMINATED while the snapshot rightly keeps them
    unfinished for resume."""
    from ..results.tables import FINAL_STATES, experiment_state_path

    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None)
    state_path = experiment_state_path(storage, name, gen_path)
    if not trials or state_path is None:
        return
    record = {"experiment_state": state_path.rsplit("/", 1)[-1],
              "states": {t.trial_id: t.status for t in trials if t.status == "ERROR"}}
    where = [name, gen_path, FINAL_STATES] if gen_path else [name, FINAL_STATES]
    storage.write_text(storage.join(*where), json.dumps(record, indent=1) + "\n")
