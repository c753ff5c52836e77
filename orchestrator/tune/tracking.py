"""MLflow tracking of a study: one MLflow run per logical trial, fed by the sweep driver (``tracking: {mlflow:
URI}`` in a study file, or ``--mlflow URI``).

* ``check_server``: the launch-time probe. A server that does not answer is a UserError naming the URI, raised
  before any trial runs or anything is written to the study folder.
* ``MlflowTracker``: a Tune callback in the driver. Its hooks only put plain records on a queue; a background
  thread turns them into MLflow calls with short timeouts and no client-side retries, and keeps what it could not
  send to try again later -- so a slow or dead server never holds up Tune's loop, and a short outage loses nothing.
* ``finish_trackers``: at the end of a command, gives the thread a bounded time to send the rest and says what
  never reached the server, for ``orchestrator.cli.sweep.finish`` to report. Tracking is a copy: the study folder stays the
  record, and lost tracking does not change a command's exit code.

Ray's ``MLflowLoggerCallback`` does not fit: it steps by ``training_iteration`` (not the report's ``iter``),
forgets its runs on restore (a resumed or extended trial would get a second run), and logs synchronously in Tune's
loop. Here a run is found again on the server by its tags -- experiment = study name, tag ``trial_id`` = the
logical trial id, so a trial continued by ``extend`` (a new Tune trial naming its predecessor in ``_continues``)
keeps its run -- and the largest step in its metric history bounds what is logged: the reports a retried,
resumed or continued trial replays from its checkpoint are not logged twice.
"""
from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from ray.tune.callback import Callback

from ..errors import UserError

OFF = "off"  # --mlflow off: stop tracking a study that had a server
# Per-report metrics that go to MLflow (plus exact_acc@L / digit_acc@L): what the loop measures, not Tune's
# bookkeeping. time_s and samples_per_s of a step replayed after a retry are the first attempt's in MLflow, while
# metrics.parquet keeps the replay's; the learning metrics are equal (resume is bit-identical).
TRACKED = ("loss", "exact_acc", "digit_acc", "lr", "time_s", "samples_per_s")
END_STATUS = {"error": "FAILED"}  # every other outcome (solved, budget, diverged, stopped_early) -> FINISHED
REQUEST_TIMEOUT_S = 5
RETRY_EVERY_S = float(os.environ.get("ADDER_SWEEP_MLFLOW_RETRY_S", "10"))
FLUSH_S = float(os.environ.get("ADDER_SWEEP_MLFLOW_FLUSH_S", "20"))
MAX_PENDING = 50_000  # reports kept per run while the server is away; older ones are dropped (and reported)
GIVE_UP_AFTER = 3  # failed tries in a row, once the command ends, before the rest counts as missed
BATCH = 900  # metrics per log_batch (MLflow's limit is 1000 entities a request)
# The client retries a failed request 7 times with backoff (minutes for a dead server) and waits 120 s for an
# answer; this module retries itself, later, so each request may fail fast. A user's own settings win.
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def mlflow_uri(spec) -> Optional[str]:
    """The study's MLflow tracking URI, or None when it is not tracked."""
    return (getattr(spec, "tracking", None) or {}).get("mlflow")


# -- the client ------------------------------------------------------------------------------------------------
_saved_env: Optional[dict] = None


def _set_client_env() -> None:
    global _saved_env
    if _saved_env is None:
        _saved_env = {k: os.environ.get(k) for k in CLIENT_ENV}
        for k, v in CLIENT_ENV.items():
            os.environ.setdefault(k, v)


def _restore_client_env() -> None:
    """Leave the process's environment as the command found it."""
    global _saved_env
    if _saved_env is None:
        return
    for k, v in _saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _saved_env = None


def brief(exc: BaseException) -> str:
    """The telling part of a client error: for a connection failure the OS's reason, else its first line."""
    text = str(exc)
    reason = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if reason:
        return reason.group(0).strip()
    if "Read timed out" in text or "timed out" in text.lower():
        return f"no answer within {REQUEST_TIMEOUT_S} s"
    if "unsupported URI" in text:  # the client names every scheme it knows; the one given is what matters
        return "unsupported URI scheme"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:200]


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError(f"tracking: {uri}: MLflow tracking needs the MLflow client: pip install "
                        "'adder-sweep[tracking]' (mlflow-skinny)") from None
    _set_client_env()
    try:
        return MlflowClient(tracking_uri=uri)
    except Exception as exc:  # an unknown scheme, a malformed URI
        raise UserError(f"tracking: {uri} is not an MLflow tracking URI ({brief(exc)})") from None


def check_server(uri: Optional[str]) -> None:
    """Refuse to start a tracked study whose server does not answer: one line naming the URI (exit 2)."""
    if not uri:
        return
    try:
        _client(uri).search_experiments(max_results=1)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"tracking: the MLflow server at {uri} does not answer ({brief(exc)}); start it, correct "
                        "--mlflow (or the study file's tracking.mlflow), or run with --mlflow off") from None
    finally:
        _restore_client_env()


# -- the Tune callback -----------------------------------------------------------------------------------------
class MlflowTracker(Callback):
    """Puts each trial's start, reports and end on the sender's queue. Holds only plain data, so Tune can pickle
    it with the study's state (tuner.pkl); the sender and what it knows are rebuilt from the server."""

    def __init__(self, uri: str, study: str, generation: int = 0):
        self.uri, self.study, self.generation = uri, study, generation
        self._sender: Optional[_Sender] = None
        self._seen: dict[str, str] = {}  # Tune trial id -> logical trial id
        self._ended: set[str] = set()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sender": None, "_seen": {}, "_ended": set()}

    def setup(self, **info):
        self._send_to()

    def _send_to(self) -> "_Sender":
        if self._sender is None:
            self._sender = _Sender(self.uri, self.study)
            _SENDERS.append(self._sender)
        return self._sender

    def _logical(self, trial) -> str:
        """The trial's logical id, announcing the trial to the sender the first time it is seen."""
        from ..results.tables import continues_of, training_values

        if trial.trial_id not in self._seen:
            logical = continues_of(trial.config).get("trial") or trial.trial_id
            config = training_values(trial.config)
            tags = {"study": self.study, "trial_id": logical, "generation": str(self.generation),
                    "seed": str(config.get("seed", 0)), "tune_trial_id": trial.trial_id, "outcome": "running"}
            self._seen[trial.trial_id] = logical
            self._send_to().put(("open", logical, {k: _param(v) for k, v in config.items()}, tags))
        return self._seen[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._ended.discard(trial.trial_id)
        logical = self._logical(trial)
        self._send_to().put(("start", logical))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = result.get("iter")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        metrics = {k: float(v) for k, v in result.items()
                   if (k in TRACKED or k.startswith(("exact_acc@", "digit_acc@")))
                   and isinstance(v, (int, float)) and not isinstance(v, bool)}
        stamp = result.get("timestamp")
        ms = int(stamp * 1000) if isinstance(stamp, (int, float)) else int(time.time() * 1000)
        self._send_to().put(("report", self._logical(trial), step, metrics, ms))

    def on_trial_complete(self, iteration, trials, trial, **info):
        from ..results.tables import trial_outcome

        self._end(trial, trial_outcome("terminated", (trial.last_result or {}).get("status")))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "error")

    def _end(self, trial, outcome: str) -> None:
        self._ended.add(trial.trial_id)
        self._send_to().put(("end", self._logical(trial), END_STATUS.get(outcome, "FINISHED"), outcome))

    def on_experiment_end(self, trials, **info):
        # A trial whose final report arrived just before an interrupt is finished for Tune's state too, and no
        # resume will start it again: close its run. Every other unfinished trial's run stays RUNNING for
        # `resume`, which continues the same run.
        for t in trials:
            status = (t.last_result or {}).get("status")
            if t.trial_id in self._seen and t.trial_id not in self._ended and status in ("solved", "budget",
                                                                                         "diverged"):
                self._end(t, status)


def _param(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def tracker_for(spec, name: str, generation: int = 0) -> Optional[MlflowTracker]:
    """The study's tracker callback, or None when the study is not tracked."""
    uri = mlflow_uri(spec)
    return MlflowTracker(uri, name, generation) if uri else None


def set_tracker(tuner, tracker: Optional[MlflowTracker]) -> None:
    """Put ``tracker`` in place of a restored Tuner's own: Tune restores callbacks from tuner.pkl, but the URI to
    use is the one of this run (``resume --mlflow``), and studies started before tracking existed have none.
    Tune has no public way to change a restored Tuner's callbacks; its RunConfig is the one it runs with."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:  # Ray Client: the Tuner lives on the cluster
        if tracker is not None:
            print("adder-sweep: MLflow tracking is not changed on resume through a Ray Client (ray://) "
                  "address; the study keeps the tracking it was started with", file=sys.stderr)
        return
    run_config = local.get_run_config()
    callbacks = [c for c in (run_config.callbacks or []) if not isinstance(c, MlflowTracker)]
    run_config.callbacks = callbacks + ([tracker] if tracker is not None else [])


# -- the sender ------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What the sender knows of one logical trial's MLflow run, and what it still has to send."""
    logical: str
    params: dict
    tags: dict
    run_id: Optional[str] = None
    max_step: Optional[int] = None  # the largest step logged or queued; a report at or below it is a replay
    pending: list = field(default_factory=list)  # (step, {metric: value}, timestamp ms), oldest first
    dropped: list = field(default_factory=list)  # steps lost to MAX_PENDING
    end: Optional[str] = None  # FINISHED / FAILED, to set once everything is logged
    end_sent: bool = False
    reopen: bool = False  # the run ended before (a continued or resumed trial): set it RUNNING again


_STOP = ("stop",)


class _Sender:
    """The background thread that talks to the server. Only it touches ``runs`` while the study runs (the lock
    guards the summary read at the end)."""

    def __init__(self, uri: str, study: str):
        self.uri, self.study = uri, study
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()
        self.problem: Optional[str] = None  # why the last attempt failed, while the server is away
        self.deadline = float("inf")
        self._client = None
        self._experiment_id: Optional[str] = None
        self.thread = threading.Thread(target=self._loop, name="adder-sweep-mlflow", daemon=True)
        self.thread.start()

    def put(self, item: tuple) -> None:
        self.queue.put(item)

    # the thread
    def _loop(self) -> None:
        stopping, next_try, failures = False, 0.0, 0
        while True:
            try:
                item = self.queue.get(timeout=0.5 if (stopping or self._has_work()) else None)
                while True:
                    if self._take(item) and not stopping:
                        stopping, failures = True, 0
                    item = self.queue.get_nowait()
            except queue.Empty:
                pass
            if self._has_work() and (stopping or time.monotonic() >= next_try):
                if self._sync():
                    failures = 0
                else:
                    failures, next_try = failures + 1, time.monotonic() + RETRY_EVERY_S
            # at the end, a server that keeps failing gets GIVE_UP_AFTER more tries, not the whole deadline
            if stopping and (not self._has_work() or failures >= GIVE_UP_AFTER or time.monotonic() >= self.deadline):
                return

    def _take(self, item: tuple) -> bool:
        """Apply one record from the callback to what is to send; True for the stop record."""
        kind = item[0]
        if kind == "stop":
            return True
        with self.lock:
            if kind == "open":
                _, logical, params, tags = item
                run = self.runs.setdefault(logical, _Run(logical, params, {}))
                run.params, run.tags = params, {**run.tags, **tags}
            elif kind == "start":
                run = self.runs[item[1]]
                if run.end is not None:  # started again in this driver (resume_errored): RUNNING once more
                    run.end, run.end_sent, run.reopen = None, False, True
                run.tags["outcome"] = "running"
            elif kind == "report":
                _, logical, step, metrics, ms = item
                run = self.runs[logical]
                if run.max_step is None or step > run.max_step:
                    run.pending.append((step, metrics, ms))
                    run.max_step = step
                    if len(run.pending) > MAX_PENDING:
                        run.dropped.append(run.pending.pop(0)[0])
            elif kind == "end":
                _, logical, status, outcome = item
                run = self.runs[logical]
                run.end, run.end_sent = status, False
                run.tags["outcome"] = outcome
        return False

    def _has_work(self) -> bool:
        return any(r.run_id is None or r.pending or r.tags or r.reopen or (r.end and not r.end_sent)
                   for r in self.runs.values())

    def _sync(self) -> bool:
        """Send everything pending, run by run; False (and the reason kept) if the server failed."""
        try:
            if self._client is None:
                self._client = _client(self.uri)
            for run in list(self.runs.values()):
                self._sync_run(run)
        except Exception as exc:  # connection refused, timeout, server error: try again later
            first = self.problem is None
            self.problem = brief(exc)
            if first:
                print(f"adder-sweep: the MLflow server at {self.uri} stopped answering ({self.problem}); the study "
                      f"goes on, and its reports are kept to send when the server is back", file=sys.stderr)
            return False
        if self.problem is not None:
            print(f"adder-sweep: the MLflow server at {self.uri} answers again; sending what it missed",
                  file=sys.stderr)
        self.problem = None
        return True

    def _sync_run(self, run: _Run) -> None:
        from mlflow.entities import Metric, RunTag

        client = self._client
        if run.run_id is None:
            self._open(run)
        if run.reopen:
            client.update_run(run.run_id, status="RUNNING")
            run.reopen = False
        while run.pending or run.tags:
            with self.lock:
                chunk, n = [], 0
                for step, metrics, ms in run.pending:
                    if chunk and len(chunk) + len(metrics) > BATCH:
                        break
                    chunk += [Metric(k, v, ms, step) for k, v in metrics.items()]
                    n += 1
                tags = dict(run.tags)
            client.log_batch(run.run_id, metrics=chunk, tags=[RunTag(k, v) for k, v in tags.items()])
            with self.lock:
                del run.pending[:n]
                for k, v in tags.items():
                    if run.tags.get(k) == v:
                        del run.tags[k]
        if run.end and not run.end_sent:
            client.set_terminated(run.run_id, run.end)
            run.end_sent = True

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self._client.get_experiment_by_name(self.study)
            self._experiment_id = found.experiment_id if found else self._client.create_experiment(self.study)
        return self._experiment_id

    def _open(self, run: _Run) -> None:
        """Find the logical trial's run on the server (a resumed, retried or continued trial has one) or create
        it; log its params; drop what it already has: every report up to its largest logged step."""
        from mlflow.entities import Param

        client = self._client
        experiment = self._experiment()
        found = client.search_runs([experiment], f"tags.trial_id = '{run.logical}'", max_results=1,
                                   order_by=["attributes.start_time ASC"])
        if found:
            existing = found[0]
            last = max((m.step for key in existing.data.metrics
                        for m in client.get_metric_history(existing.info.run_id, key)), default=None)
            logged = existing.data.params
            # MLflow refuses a changed param: a continued trial's new iters (its budget now) goes in a tag
            new = {k: v for k, v in run.params.items() if k not in logged}
            changed = {k: v for k, v in run.params.items() if k in logged and logged[k] != v}
            run_id, reopen = existing.info.run_id, existing.info.status != "RUNNING"
        else:
            with self.lock:
                tags = dict(run.tags)
            run_id = client.create_run(experiment, run_name=run.logical, tags=tags).info.run_id
            with self.lock:
                for k, v in tags.items():
                    if run.tags.get(k) == v:
                        del run.tags[k]
            new, changed, last, reopen = run.params, {}, None, False
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):  # MLflow's limit of params a request
            client.log_batch(run_id, params=items[i:i + 100])
        with self.lock:
            run.tags.update(changed)
            if last is not None:
                run.pending = [p for p in run.pending if p[0] > last]
                run.max_step = max(run.max_step if run.max_step is not None else last, last)
            run.run_id, run.reopen = run_id, reopen

    # the end of the command
    def stop(self, deadline: float) -> None:
        self.deadline = deadline
        self.put(_STOP)

    def missed(self) -> list[dict]:
        """Each run the server did not get everything of: its logical trial id, run id (None if never created),
        the steps not logged and whether its end state was."""
        out = []
        with self.lock:
            for run in sorted(self.runs.values(), key=lambda r: r.logical):
                steps = sorted(run.dropped + [p[0] for p in run.pending])
                end_missing = bool(run.end and not run.end_sent)
                if steps or run.run_id is None or end_missing:
                    out.append({"trial_id": run.logical, "run_id": run.run_id, "steps": steps,
                                "end_missing": end_missing})
        return out


_SENDERS: list[_Sender] = []


def finish_trackers(timeout: float | None = None) -> Optional[dict]:
    """Let the senders of this process send what they hold, for at most ``timeout`` seconds (FLUSH_S), and say
    what the server missed: {"uri", "experiment", "runs", "missed": [...], "problem"}, or None if nothing was
    tracked. A sender still waiting on the server then is left behind (a daemon thread)."""
    if not _SENDERS:
        _restore_client_env()
        return None
    deadline = time.monotonic() + (FLUSH_S if timeout is None else timeout)
    senders = list(_SENDERS)
    _SENDERS.clear()
    for s in senders:
        s.stop(deadline)
    for s in senders:
        s.thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
    _restore_client_env()
    missed = [m for s in senders for m in s.missed()]
    problem = next((s.problem for s in senders if s.problem), None)
    return {"uri": senders[0].uri, "experiment": senders[0].study, "runs": sum(len(s.runs) for s in senders),
            "missed": missed, "problem": problem}


def describe_tracking(report: Optional[dict]) -> list[str]:
    """The lines the end of a command prints about tracking: where the runs are, or which runs missed what."""
    if not report:
        return []
    where = f"MLflow experiment {report['experiment']} at {report['uri']}"
    if not report["missed"]:
        return [f"Tracking: {report['runs']} run{'s' if report['runs'] != 1 else ''} in {where}"]
    n = len(report["missed"])
    why = f" ({report['problem']})" if report.get("problem") else ""
    lines = [f"adder-sweep: tracking: {n} run{'s' if n != 1 else ''} of {where} missed metrics{why}; the study's "
             f"own tables (metrics.parquet) have every report:"]
    for m in report["missed"]:
        run = f"run {m['run_id']}" if m["run_id"] else "run not created"
        steps = m["steps"]
        what = (f"{len(steps)} report{'s' if len(steps) != 1 else ''} not logged (iter {steps[0]}"
                + (f"..{steps[-1]}" if len(steps) > 1 else "") + ")") if steps else "all metrics logged"
        lines.append(f"  {m['trial_id']} ({run}): {what}" + ("; end state not recorded" if m["end_missing"] else ""))
    return lines
