"""Sweeps as users run them: ``adder-sweep sweep`` in a subprocess on an embedded Ray, watched from outside.

Sections, each a function returning plain dicts for ``benchmarks/run.py``:

* ``sweep_overhead`` -- 16 short trials through ``adder-sweep sweep`` vs the same configs one after another in a
  single process (``trainables.loop.train``, 1 thread): wall ratio, overhead per trial, share of core-seconds in
  training;
* ``startup``        -- seconds from launching ``sweep`` to the first trial's first report (1-trial study), beside
  ``import ray`` + ``ray.init`` alone;
* ``threads``        -- 2 concurrent 1-thread processes vs 1 process with 2 threads, total samples/s (no Ray);
* ``schedulers``     -- core-seconds until the first solving trial, ASHA vs FIFO on the same grid;
* ``memory``         -- peak RSS (VmHWM) of every trial worker of the sweeps above, and of the driver;

A ``SweepWatch`` thread follows each study from outside: it reads new lines of every ``trial_*/result.json`` as
they appear (so a report's time is when it reached the study folder, to ~``interval``) and polls
``/proc/<pid>/status`` of the driver and of every worker pid the reports name. Nothing here changes the project;
the sweeps run with the project's defaults, each in a temporary ``--storage``.

    python benchmarks/sweep_bench.py sequential CONFIGS.json   # internal: the single-process baseline
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if __package__:
    from .common import CoreShare, median, spread
else:  # run as a script, or imported from benchmarks/run.py run as a script
    from common import CoreShare, median, spread

# One place for the shapes of every section: (full, quick).
OVERHEAD = {"full": dict(seeds=4, lrs=(1e-3, 2e-3, 3e-3, 5e-3), iters=800, rounds=3),
            "quick": dict(seeds=2, lrs=(1e-3, 2e-3, 3e-3, 5e-3), iters=100, rounds=1)}
STARTUP_REPEATS = {"full": 5, "quick": 1}
THREADS = {"full": dict(shapes=(("rnn", 11, 2), ("lstm", 11, 2), ("rnn", 100, 3), ("lstm", 100, 3)),
                        rounds=5, block_s=1.0),
           "quick": dict(shapes=(("rnn", 11, 2), ("rnn", 100, 3)), rounds=2, block_s=0.3)}
SCHEDULERS = {"full": dict(cells=("rnn", "lstm", "gru"), lrs=(1e-4, 3e-4, 1e-3, 3e-3), digits=11, iters=1000),
              "quick": dict(cells=("rnn",), lrs=(1e-3, 1e-2), digits=5, iters=200)}


def _mode(quick: bool) -> str:
    return "quick" if quick else "full"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- launching and watching a sweep ---------------------------------------------------------------------------
def sweep_command() -> list[str]:
    """``adder-sweep`` beside this interpreter (the venv's), else the same CLI through ``-m orchestrator``."""
    script = Path(sys.executable).with_name("adder-sweep")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def rss_kb(pid: int) -> Optional[tuple[int, int]]:
    """(VmHWM, VmRSS) of a live process in kB -- its peak and current resident set; None once it has gone."""
    hwm = rss = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return (hwm, rss) if hwm is not None and rss is not None else None


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of the live processes in session ``sid`` (a sweep started with its own session:
    the driver, the Ray processes it starts and their workers, named ``ray::...`` by Ray)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # state ppid pgrp session ...
                continue
            with open(f"/proc/{name}/cmdline", "rb") as f:
                out[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
    return out


TRIAL_TITLES = ("ray::ImplicitFunc", "ray::run_trial")  # process titles Ray gives a function trainable's worker


class SweepWatch:
    """Follows a study folder from outside while its sweep runs (see the module docstring)."""

    def __init__(self, study_dir: Path, t0: float, driver_pid: int, interval: float = 0.05,
                 proc_interval: float = 0.2):
        self.study_dir, self.t0, self.driver_pid, self.interval = study_dir, t0, driver_pid, interval
        self.proc_interval = proc_interval
        self.reports: list[dict] = []  # result.json lines, plus "_t" (s since launch) and "_trial" (folder)
        self.hwm_kb: dict[int, int] = {}  # pid -> highest VmHWM seen, every process of the sweep's session
        self.ran_task: set[int] = set()
        self.total_rss_kb = 0  # highest sum of VmRSS over the session's processes at one poll
        self._last_proc_poll = -1e9
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SweepWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        now = time.monotonic() - self.t0
        for path in self.study_dir.glob("trial_*/result.json"):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            offset = self._offsets.get(path, 0)
            if size <= offset:
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = self._partial.pop(path, b"") + f.read(size - offset)
            self._offsets[path] = size
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest  # a line still being written
            for line in lines:
                if line.strip():
                    self.reports.append({**json.loads(line), "_t": now, "_trial": path.parent.name})
        if now - self._last_proc_poll >= self.proc_interval:
            self._last_proc_poll = now
            pids = session_processes(self.driver_pid)
            pids.update({r["pid"]: "" for r in self.reports if "pid" in r and r["pid"] not in pids})
            total = 0
            for pid, cmd in pids.items():
                kb = rss_kb(pid)
                if kb is None:
                    continue
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), kb[0])
                total += kb[1]
                if cmd.startswith(TRIAL_TITLES):
                    self.ran_task.add(pid)  # a Ray worker holding a trial's actor (not a spare, not an agent)
            self.total_rss_kb = max(self.total_rss_kb, total)

    def workers(self) -> set[int]:
        """Trial workers: the pids the reports name, and every process of the session seen holding a trial
        (Ray titles it ``ray::ImplicitFunc...`` for a function trainable), which catches workers that ended
        between two polls of the reports."""
        return {r["pid"] for r in self.reports if "pid" in r} | self.ran_task


@dataclass
class SweepRun:
    """What one watched ``adder-sweep sweep`` did. Times are seconds since the command was launched."""

    name: str
    wall_s: float
    rc: int
    reports: list[dict]
    worker_hwm_mb: dict[int, float]
    driver_hwm_mb: float
    session_rss_mb: float  # highest sum of the resident sets of all the sweep's processes at one moment
    cpu_s: float  # CPU-seconds of the sweep's processes (the driver and the Ray processes it reaped)
    others_cores: Optional[float]
    log_tail: str = ""
    by_trial: dict[str, list[dict]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in sorted(self.reports, key=lambda r: r["_t"]):
            self.by_trial.setdefault(r["_trial"], []).append(r)

    @property
    def first_report_s(self) -> Optional[float]:
        return min((r["_t"] for r in self.reports), default=None)

    @property
    def last_report_s(self) -> Optional[float]:
        return max((r["_t"] for r in self.reports), default=None)

    @property
    def training_started_s(self) -> Optional[float]:
        """When the first trial's training loop started: its first report's arrival less that report's
        ``time_s``. Everything before (Ray, the worker, imports, building the model and eval set) is start-up."""
        if not self.reports:
            return None
        first = min(self.reports, key=lambda r: r["_t"])
        return first["_t"] - first["time_s"]

    def train_s(self, until: float = float("inf")) -> float:
        """Sum over trials of the loop's ``time_s`` (training and evaluation seconds, without Ray, setup,
        reports and checkpoints) in the last report that arrived by ``until``."""
        total = 0.0
        for reps in self.by_trial.values():
            seen = [r["time_s"] for r in reps if r["_t"] <= until]
            total += max(seen, default=0.0)
        return total

    def first_solve(self) -> Optional[dict]:
        solved = [r for r in self.reports if r.get("status") == "solved"]
        return min(solved, key=lambda r: r["_t"]) if solved else None

    def outcomes(self) -> dict[str, int]:
        """Last reported loop status per trial ('running' at the end: stopped by the scheduler)."""
        out: dict[str, int] = {}
        for reps in self.by_trial.values():
            s = reps[-1].get("status", "?")
            s = "stopped early" if s == "running" else s
            out[s] = out.get(s, 0) + 1
        return out


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_sweep(yaml_text: str, workdir: Path, name: str, extra_args: tuple[str, ...] = (),
              timeout_s: float = 600, interval: float = 0.05) -> SweepRun:
    """Run ``adder-sweep sweep`` on ``yaml_text`` with ``--storage workdir/storage``, watching it."""
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    space = workdir / f"{name}.yaml"
    space.write_text(yaml_text)
    log_path = workdir / f"{name}.log"
    cmd = [*sweep_command(), "sweep", str(space), "--storage", str(storage), "--name", name, *extra_args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cpu0 = os.times()
    with open(log_path, "wb") as logf, CoreShare(include_children=True) as share:
        t0 = time.monotonic()
        # its own session, so that the driver and the embedded Ray it starts can be killed as one group
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        watch = SweepWatch(storage / name, t0, proc.pid, interval).start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except BaseException:  # timeout or Ctrl-C: leave nothing running
            _kill_group(proc)
            watch.stop()
            raise
        wall = time.monotonic() - t0
        watch.stop()
    cpu1 = os.times()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
    if rc != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {rc}; last lines of {log_path}:\n{tail}")
    cpu_s = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    workers = {p: watch.hwm_kb[p] / 1024 for p in watch.workers() if p in watch.hwm_kb}
    return SweepRun(name, wall, rc, watch.reports, workers, watch.hwm_kb.get(proc.pid, 0) / 1024,
                    watch.total_rss_kb / 1024, cpu_s, share.others, tail)


def space_yaml(name: str, space: dict[str, Any], **study: Any) -> str:
    """A search-space file: ``space`` values that are lists become grids."""
    lines = [f"name: {name}", "metric: exact_acc", "mode: max"]
    for k, v in study.items():
        lines.append(f"{k}: {json.dumps(v)}")
    lines.append("space:")
    for k, v in space.items():
        lines.append(f"  {k}: {json.dumps({'grid': list(v)} if isinstance(v, (list, tuple)) else v)}")
    return "\n".join(lines) + "\n"


# -- sweep overhead -------------------------------------------------------------------------------------------
def overhead_space(quick: bool) -> dict[str, Any]:
    o = OVERHEAD[_mode(quick)]
    # target 1.5 is never reached, so every trial runs all its iterations and the two sides do the same work
    return {"cell": "rnn", "digits": 5, "layers": 2, "seed": list(range(o["seeds"])), "lr": list(o["lrs"]),
            "iters": o["iters"], "eval_every": 50, "eval_size": 500, "target": 1.5}


def grid_configs(space: dict[str, Any]) -> list[dict]:
    """Every point of a grid-only space (same set as Ray's grid, order irrelevant for the sums)."""
    import itertools

    keys = list(space)
    axes = [v if isinstance(v, list) else [v] for v in space.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def run_sequential(configs: list[dict], workdir: Path, tag: str) -> dict:
    """The configs one after another in one fresh process at 1 thread; wall from launch to exit."""
    path = workdir / f"sequential-{tag}.json"
    path.write_text(json.dumps(configs))
    out = workdir / f"sequential-{tag}.out.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "sequential", str(path), str(out)]
    with CoreShare(include_children=True) as share:
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"sequential baseline failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {**result, "wall_s": wall, "others_cores": share.others}


def _sequential_main(configs_path: str, out_path: str) -> None:
    """Child process of ``run_sequential``."""
    t_start = time.monotonic()
    import torch

    from trainables.config import TrainConfig
    from trainables.loop import train

    torch.set_num_threads(1)
    t_imported = time.monotonic()
    train_s = []
    for flat in json.loads(Path(configs_path).read_text()):
        summary = train(TrainConfig.from_flat({**flat, "threads": 1}))
        train_s.append(summary["wall_s"])
    t_end = time.monotonic()
    Path(out_path).write_text(json.dumps({"train_s": train_s, "import_s": t_imported - t_start,
                                          "in_process_s": t_end - t_imported}))


def sweep_overhead(quick: bool, workdir: Path, cores: int) -> dict:
    """Rounds alternate which side goes first (sweep, sequential | sequential, sweep, ...)."""
    o = OVERHEAD[_mode(quick)]
    space = overhead_space(quick)
    configs = grid_configs(space)
    n = len(configs)
    text = space_yaml("overhead", space)
    rounds, sweeps = [], []
    for r in range(o["rounds"]):
        order = ("sweep", "sequential") if r % 2 == 0 else ("sequential", "sweep")
        got: dict[str, Any] = {}
        for side in order:
            log(f"  round {r + 1}/{o['rounds']}: {side} ({n} trials) ...")
            if side == "sweep":
                got[side] = run_sweep(text, workdir, f"overhead-{r}")
            else:
                got[side] = run_sequential(configs, workdir, str(r))
        sw, seq = got["sweep"], got["sequential"]
        sweeps.append(sw)
        if len(sw.by_trial) != n:
            raise RuntimeError(f"overhead sweep reported {len(sw.by_trial)} trials, expected {n}")
        train_s = sw.train_s()
        core_s = sw.wall_s * cores
        startup_share = sw.training_started_s
        rounds.append({
            "round": r + 1, "trials": n, "cores": cores,
            "sweep_wall_s": sw.wall_s, "sequential_wall_s": seq["wall_s"],
            "wall_ratio": sw.wall_s / seq["wall_s"],
            "ideal_ratio": 1 / cores,
            "sweep_train_s": train_s, "sequential_train_s": sum(seq["train_s"]),
            "sequential_import_s": seq["import_s"], "sequential_in_process_s": seq["in_process_s"],
            "overhead_per_trial_s": (core_s - train_s) / n,
            "train_fraction": train_s / core_s,
            "sweep_cpu_s": sw.cpu_s,
            # launch -> the first trial's training started: paid once per sweep, spread over its trials
            "startup_s": startup_share,
            "shutdown_s": sw.wall_s - sw.last_report_s,  # last report -> the command exits (tables, summary)
            "overhead_per_trial_after_startup_s": ((core_s - train_s) - (startup_share or 0) * cores) / n,
            "sequential_overhead_per_trial_s": (seq["wall_s"] - sum(seq["train_s"])) / n,
            "others_cores_sweep": sw.others_cores, "others_cores_sequential": seq["others_cores"],
        })
    keys = ("wall_ratio", "overhead_per_trial_s", "train_fraction", "overhead_per_trial_after_startup_s",
            "sweep_wall_s", "sequential_wall_s", "startup_s")
    summary = {k: median([r[k] for r in rounds if r[k] is not None]) for k in keys}
    return {"rounds": rounds, "summary": summary, "space": space, "sweeps": sweeps}


# -- start-up ------------------------------------------------------------------------------------------------
STARTUP_SPACE = {"cell": "rnn", "digits": 5, "layers": 2, "iters": 20, "eval_every": 5, "eval_size": 100,
                 "target": 1.5}

# What the start-up is made of, one piece after another in a fresh process: the driver's `import ray` and
# `ray.init` (as orchestrator.tune.study.connect calls it), then what a trial worker imports besides ray.
RAY_INIT_PROBE = textwrap.dedent("""\
    import json, time
    t0 = time.monotonic()
    import ray
    t1 = time.monotonic()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    t2 = time.monotonic()
    ray.shutdown()
    t3 = time.monotonic()
    import ray.tune
    t4 = time.monotonic()
    import torch
    t5 = time.monotonic()
    import trainables.tune_adapter
    t6 = time.monotonic()
    print(json.dumps({"import_ray_s": t1 - t0, "ray_init_s": t2 - t1, "import_tune_s": t4 - t3,
                      "import_torch_s": t5 - t4, "import_adapter_s": t6 - t5}))
""")


def startup(quick: bool, workdir: Path) -> dict:
    """Alternates a 1-trial sweep with a bare ``import ray; ray.init()`` process, ``repeats`` times each."""
    repeats = STARTUP_REPEATS[_mode(quick)]
    text = space_yaml("startup", STARTUP_SPACE)
    rows, sweeps = [], []
    for r in range(repeats):
        order = ("sweep", "ray") if r % 2 == 0 else ("ray", "sweep")
        row: dict[str, Any] = {"repeat": r + 1}
        for side in order:
            if side == "sweep":
                log(f"  sweep {r + 1}/{repeats} ...")
                sw = run_sweep(text, workdir, f"startup-{r}", interval=0.02)
                sweeps.append(sw)
                first = min(sw.reports, key=lambda x: x["_t"])
                row.update(first_report_s=sw.first_report_s, first_report_train_s=first["time_s"],
                           sweep_exit_s=sw.wall_s, others_cores=sw.others_cores)
            else:
                t0 = time.monotonic()
                p = subprocess.run([sys.executable, "-c", RAY_INIT_PROBE], cwd=ROOT, capture_output=True,
                                   text=True, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
                if p.returncode != 0:
                    raise RuntimeError(f"ray.init probe failed:\n{p.stderr[-2000:]}")
                row.update(json.loads(p.stdout.strip().splitlines()[-1]), ray_probe_exit_s=time.monotonic() - t0)
        rows.append(row)
    keys = ("first_report_s", "first_report_train_s", "sweep_exit_s", "import_ray_s", "ray_init_s",
            "import_tune_s", "import_torch_s", "import_adapter_s")
    summary = {k: median([row[k] for row in rows]) for k in keys}
    summary["first_report_spread"] = spread([row["first_report_s"] for row in rows])
    return {"rows": rows, "summary": summary, "space": STARTUP_SPACE, "sweeps": sweeps}


# -- threads ------------------------------------------------------------------------------------------------
def _step_worker(conn, threads: int) -> None:
    """A process that builds a training step on request and runs it for a given window."""
    import torch

    torch.set_num_threads(threads)
    if __package__:
        from .step import ProjectStep
    else:
        from step import ProjectStep
    step = None
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "build":
            _, cell, digits, layers = msg
            step = ProjectStep(cell, digits, layers)
            step()
            step()  # warm-up: first calls allocate and pick kernels
            conn.send(("ready", step.batch))
        else:
            _, start_at, duration = msg
            while time.monotonic() < start_at:
                time.sleep(0.001)
            n, t0 = 0, time.monotonic()
            end = t0 + duration
            while True:
                step()
                n += 1
                if time.monotonic() >= end:
                    break
            conn.send((n * step.batch, time.monotonic() - t0))


class _Workers:
    def __init__(self, threads: list[int]):
        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        for t in threads:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_step_worker, args=(child, t), daemon=True)
            p.start()
            self.procs.append(p)
            self.conns.append(parent)

    def build(self, cell: str, digits: int, layers: int) -> None:
        for c in self.conns:
            c.send(("build", cell, digits, layers))
        for c in self.conns:
            c.recv()

    def run(self, which: list[int], duration: float) -> float:
        """Run workers ``which`` over the same window; total samples/s."""
        start_at = time.monotonic() + 0.05
        for i in which:
            self.conns[i].send(("run", start_at, duration))
        return sum(samples / elapsed for samples, elapsed in (self.conns[i].recv() for i in which))

    def close(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def threads_section(quick: bool, cores: int) -> dict:
    """Per shape, rounds alternate the two cases; each block runs ``block_s`` seconds."""
    cfg = THREADS[_mode(quick)]
    if cores < 2:
        return {"skipped": f"{cores} usable core: nothing to compare"}
    rows = []
    with CoreShare(include_children=True) as share:
        workers = _Workers([1, 1, 2])  # two 1-thread trials, one 2-thread trial
        try:
            for cell, digits, layers in cfg["shapes"]:
                workers.build(cell, digits, layers)
                samples: dict[str, list[float]] = {"2 x 1 thread": [], "1 x 2 threads": []}
                for r in range(cfg["rounds"]):
                    order = list(samples) if r % 2 == 0 else list(samples)[::-1]
                    for case in order:
                        time.sleep(0.2)  # let spinning OpenMP threads of the previous block go idle
                        which = [0, 1] if case == "2 x 1 thread" else [2]
                        samples[case].append(workers.run(which, cfg["block_s"]))
                two, one = median(samples["2 x 1 thread"]), median(samples["1 x 2 threads"])
                rows.append({"cell": cell, "digits": digits, "layers": layers,
                             "two_single_samples_s": two, "one_double_samples_s": one, "ratio": two / one,
                             "two_single_spread": spread(samples["2 x 1 thread"]),
                             "one_double_spread": spread(samples["1 x 2 threads"])})
                log(f"  {cell:4s} {digits:3d} digits: 2 x 1 thread {two:9,.0f} samples/s, "
                    f"1 x 2 threads {one:9,.0f} samples/s")
        finally:
            workers.close()
    return {"rows": rows, "rounds": cfg["rounds"], "block_s": cfg["block_s"], "others_cores": share.others}


# -- schedulers ------------------------------------------------------------------------------------------------
def scheduler_space(quick: bool) -> dict[str, Any]:
    s = SCHEDULERS[_mode(quick)]
    return {"cell": list(s["cells"]), "lr": list(s["lrs"]), "digits": s["digits"], "layers": 2,
            "iters": s["iters"], "eval_every": 50, "eval_size": 1000, "target": 1.0}


def asha_settings(quick: bool) -> dict[str, Any]:
    iters = SCHEDULERS[_mode(quick)]["iters"]
    return {"type": "asha", "max_t": iters, "grace_period": 50 if quick else 100, "reduction_factor": 3}


def schedulers(quick: bool, workdir: Path, cores: int) -> dict:
    """FIFO and ASHA on the same grid, each to the end of the study (so the totals compare as well)."""
    space = scheduler_space(quick)
    studies = {"fifo": space_yaml("sched_fifo", space, scheduler="fifo"),
               "asha": space_yaml("sched_asha", space, scheduler=asha_settings(quick))}
    rows, sweeps = [], []
    for kind, text in studies.items():
        log(f"  {kind} ({len(grid_configs(space))} trials) ...")
        sw = run_sweep(text, workdir, f"sched-{kind}")
        sweeps.append(sw)
        first = sw.first_solve()
        row = {"scheduler": kind, "trials": len(sw.by_trial), "wall_s": sw.wall_s,
               "total_core_s": sw.wall_s * cores, "total_train_s": sw.train_s(),
               "outcomes": ", ".join(f"{k} {v}" for k, v in sorted(sw.outcomes().items())),
               "others_cores": sw.others_cores}
        if first is not None:
            t = first["_t"]
            cfg = first.get("config", {})
            row.update(first_solve_s=t, first_solve_core_s=t * cores, first_solve_train_s=sw.train_s(until=t),
                       first_solver=f"{cfg.get('cell')} lr={cfg.get('lr'):g} @ {first.get('iters_to_solve')} iters")
        rows.append(row)
    by = {r["scheduler"]: r for r in rows}
    ratio = None
    if by["fifo"].get("first_solve_core_s") and by["asha"].get("first_solve_core_s"):
        ratio = by["asha"]["first_solve_core_s"] / by["fifo"]["first_solve_core_s"]
    return {"rows": rows, "space": space, "asha": asha_settings(quick), "asha_over_fifo_first_solve": ratio,
            "asha_over_fifo_total": by["asha"]["total_core_s"] / by["fifo"]["total_core_s"], "sweeps": sweeps}


# -- memory ---------------------------------------------------------------------------------------------------
def memory(sweeps: list[SweepRun]) -> dict:
    """Peak RSS per sweep from the watched runs: the largest worker, and the driver."""
    rows = []
    for sw in sweeps:
        if not sw.worker_hwm_mb:
            continue
        rows.append({"study": sw.name, "workers": len(sw.worker_hwm_mb),
                     "worker_peak_mb": max(sw.worker_hwm_mb.values()),
                     "worker_median_mb": median(list(sw.worker_hwm_mb.values())),
                     "driver_peak_mb": sw.driver_hwm_mb or None, "session_rss_mb": sw.session_rss_mb or None})
    peak = max((r["worker_peak_mb"] for r in rows), default=None)
    return {"rows": rows, "worker_peak_mb": peak}


# -- GPU ----------------------------------------------------------------------------------------------------
# -- the sequential baseline as a child process ------------------------------------------------------------------
if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sequential":
        _sequential_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} sequential CONFIGS.json OUT.json  (run benchmarks/run.py instead)")
