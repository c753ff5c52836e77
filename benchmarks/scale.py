"""The scale section of ``make bench``: one study of many tiny random-lr trials (10,000; ``--quick``: 1,000) run as a
user runs it (``adder-sweep sweep`` in a subprocess, embedded Ray), and what it costs.

Measured: the command's wall; trials/s over the first and the last tenth of the trials (a per-step cost that
grows with the study shows as a falling rate); the overhead per trial against the ideal (the trials' own training
seconds over the cores); the **driver's own** peak RSS (the ``adder-sweep`` process, sampled every 0.5 s, without
Ray's workers) and its growth per 1,000 finished trials after the first thousand; files and bytes per trial and
what each kind of file is; ``status``, ``report`` and ``load_study`` times; report.html's size and the time headless
Chromium takes to load it, with its console errors.

    python benchmarks/scale.py --trials 1000 [--json out.json]

This file only measures; it changes nothing in the project.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SPACE = """\
# scale benchmark: many tiny trials of a first exploration (random lr, nothing solves in 20 iterations)
name: scale
num_samples: {n}
search: {{type: random, seed: 0}}
checkpoint_every: 100
space:
  lr: {{loguniform: [0.0001, 0.01]}}
  cell: rnn
  hidden: 16
  digits: 5
  iters: 20
  eval_every: 10
  eval_size: 100
"""

TRIALS, QUICK_TRIALS = 10_000, 1_000
# the targets at 10,000 trials
T_END_OVER_START, T_PEAK_RSS_MB, T_GROWTH_KB_PER_TRIAL, T_REPORT_S, T_PAGE_MB = 0.8, 1500, 60, 10.0, 25.0

# what each per-trial file is for, and who reads it (the benchmark counts them by these names)
FILE_ROLES = {
    "result.json": "every report, one JSON line each: the source of metrics.parquet (tables.py)",
    "params.json": "the trial's config as Ray wrote it; read by nothing of adder-sweep (Ray's own)",
    "params.pkl": "the trial's config pickled by Ray; Tune.restore needs it",
    "progress.csv": "Ray's CSV copy of the reports; read by nothing, no longer written (callbacks.NoProgressCsv)",
    "events.out.tfevents": "TensorBoard events (adder-sweep board, the HParams tab)",
    "checkpoint.pt": "the trial's checkpoint (resume, extend)",
    "error.txt": "the error of a failed trial",
}


def _cli() -> list[str]:
    exe = Path(sys.executable).parent / "adder-sweep"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestrator"]


class RssWatch(threading.Thread):
    """Samples one process's own resident memory (VmRSS) every ``every`` seconds until it ends."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []  # (monotonic time, MB)

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            rss = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), None)
            if rss is not None:
                self.samples.append((time.time(), rss / 1024))
            time.sleep(self.every)


def _timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return time.perf_counter() - start, proc


def _files(study: Path) -> dict:
    kinds: Counter = Counter()
    sizes: Counter = Counter()
    total_files = total_bytes = 0
    for dirpath, _, names in os.walk(study):
        in_trial = "/trial_" in dirpath + "/"
        for n in names:
            size = (Path(dirpath) / n).stat().st_size
            total_files += 1
            total_bytes += size
            if in_trial:
                kind = next((k for k in FILE_ROLES if n.startswith(k)), n)
                kinds[kind] += 1
                sizes[kind] += size
    return {"files": total_files, "bytes": total_bytes,
            "per_trial_kinds": {k: {"files": kinds[k], "bytes": sizes[k], "role": FILE_ROLES.get(k, "?")}
                                for k in sorted(kinds)}}


def _chromium(page: Path) -> Optional[dict]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        return None
    profile = tempfile.mkdtemp(prefix="scale-chromium-")
    start = time.perf_counter()
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr",
                           "--v=0", f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    shutil.rmtree(profile, ignore_errors=True)
    errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and ("Error" in line or "error" in line)]
    return {"render_s": wall, "console_errors": errors[:5], "n_console_errors": len(errors),
            "plots_drawn": proc.stdout.count('class="plot-container plotly"')}


def _rates(completions: list[float]) -> dict:
    """trials/s over the first and the last tenth of the trials, by when each finished."""
    done = sorted(completions)
    k = max(2, len(done) // 10)
    first = (k - 1) / max(1e-9, done[k - 1] - done[0])
    last = (k - 1) / max(1e-9, done[-1] - done[-k])
    return {"first_tenth_per_s": first, "last_tenth_per_s": last, "end_over_start": last / first}


def _rss_growth(samples: list[tuple[float, float]], completions: list[float]) -> Optional[float]:
    """MB per 1,000 finished trials, fitted over the samples after the first thousand finished (least squares)."""
    import numpy as np

    done = np.sort(np.asarray(completions))
    pts = [(int(np.searchsorted(done, t)), mb) for t, mb in samples]
    pts = [(n, mb) for n, mb in pts if 1000 <= n < len(done)]
    if len(pts) < 5:
        return None
    n, mb = np.asarray(pts, dtype=float).T
    return float(np.polyfit(n, mb, 1)[0] * 1000)


def run(n: int, workdir: Path) -> dict:
    from common import usable_cores

    workdir.mkdir(parents=True, exist_ok=True)
    space = workdir / "scale.yaml"
    space.write_text(SPACE.format(n=n))
    storage = workdir / "res"
    cmd = _cli() + ["sweep", str(space), "--storage", str(storage), "--name", "scale"]
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    watch = RssWatch(proc.pid)
    watch.start()
    err = proc.communicate()[1]
    wall = time.time() - start
    watch.join(2)
    if proc.returncode != 0:
        raise RuntimeError(f"the sweep exited {proc.returncode}: {err.strip().splitlines()[-1:]}")
    from orchestrator.results.report import load_study

    t0 = time.perf_counter()
    study = load_study("scale", str(storage))
    load_s = time.perf_counter() - t0
    last = study.metrics.sort_values("iter").groupby("trial_id").tail(1)
    completions = last["timestamp"].astype(float).tolist()
    train_s = float(study.trials["train_s"].fillna(0).sum())
    cores = usable_cores()
    ideal = train_s / cores
    status_s, _ = _timed(_cli() + ["status", "scale", "--storage", str(storage)], workdir)
    report_s, rep = _timed(_cli() + ["report", "scale", "--storage", str(storage)], workdir)
    page = storage / "scale" / "report.html"
    peak = max((mb for _, mb in watch.samples), default=None)
    done = max(completions, default=None)  # the last trial's last report: Tune's part ends, tables and page follow
    during = max((mb for t, mb in watch.samples if done is None or t <= done), default=None)
    out = {"trials": n, "finished": int(len(study.trials)), "cores": cores, "wall_s": wall,
           "trials_per_s": n / wall, **_rates(completions), "train_s_sum": train_s, "ideal_s": ideal,
           "overhead_per_trial_s": (wall - ideal) / n, "driver_peak_rss_mb": peak,
           "driver_peak_rss_while_trials_ran_mb": during,
           "driver_rss_growth_mb_per_1000": _rss_growth(watch.samples, completions),
           "status_s": status_s, "report_s": report_s, "report_ok": rep.returncode == 0, "load_study_s": load_s,
           "page_mb": page.stat().st_size / 1e6 if page.exists() else None,
           "tune_slow_callback_warnings": err.count("callbacks.on_step_end"),
           **_files(storage / "scale")}
    out["files_per_trial"] = out["files"] / n
    out["bytes_per_trial"] = out["bytes"] / n
    out["chromium"] = _chromium(page) if page.exists() else None
    return out


def targets(res: dict) -> list[tuple[str, str, bool, str]]:
    """(target, measured, met, why not) for the issue's scale targets, judged at the size that ran."""
    n = res["trials"]
    growth = res.get("driver_rss_growth_mb_per_1000")
    c = res.get("chromium") or {}
    rows = [(f"{n:,} trials: throughput at the end >= {T_END_OVER_START:.0%} of the start",
             f"{res['end_over_start']:.2f}", res["end_over_start"] >= T_END_OVER_START,
             "a per-step cost grows with the study"),
            (f"{n:,} trials: driver peak RSS <= {T_PEAK_RSS_MB} MB", f"{res['driver_peak_rss_mb']:.0f} MB",
             res["driver_peak_rss_mb"] <= T_PEAK_RSS_MB, "the driver holds too much per trial"),
            (f"{n:,} trials: driver growth <= {T_GROWTH_KB_PER_TRIAL} KB per trial after the first 1,000",
             "-" if growth is None else f"{growth:.0f} KB per trial", None if growth is None else
             growth <= T_GROWTH_KB_PER_TRIAL, "the driver holds too much per trial"),
            (f"{n:,} trials: report <= {T_REPORT_S:g} s", f"{res['report_s']:.1f} s", res["report_s"] <= T_REPORT_S,
             "report is slow at this size"),
            (f"{n:,} trials: report.html <= {T_PAGE_MB:g} MB, rendered without console errors",
             f"{res['page_mb']:.1f} MB, {c.get('n_console_errors', '?')} console errors",
             res["page_mb"] <= T_PAGE_MB and c.get("n_console_errors", 1) == 0, "page too large or broken")]
    return rows


def markdown(res: dict) -> list[str]:
    if res.get("error"):
        return [f"Scale: failed ({res['error']})"]
    c = res.get("chromium") or {}
    growth = res.get("driver_rss_growth_mb_per_1000")
    rows = [
        ("trials", f"{res['trials']:,} ({res['finished']:,} in the tables)"),
        ("wall of `adder-sweep sweep` (Ray's start, tables and page included)", f"{res['wall_s']:.0f} s"),
        ("trials/s, whole run / first tenth / last tenth", f"{res['trials_per_s']:.1f} / {res['first_tenth_per_s']:.1f}"
                                                          f" / {res['last_tenth_per_s']:.1f} (end/start "
                                                          f"{res['end_over_start']:.2f})"),
        ("ideal wall (training seconds / cores)", f"{res['ideal_s']:.0f} s on {res['cores']} cores"),
        ("overhead per trial over the ideal", f"{res['overhead_per_trial_s'] * 1000:.0f} ms"),
        ("driver's own peak RSS (while trials ran)", f"{res['driver_peak_rss_mb']:.0f} MB "
                                                      f"({res.get('driver_peak_rss_while_trials_ran_mb') or 0:.0f} MB)"
                                                      if res['driver_peak_rss_mb'] else "-"),
        ("driver RSS growth after the first 1,000 trials", f"{growth:.0f} MB per 1,000 trials"
                                                            if growth is not None else "- (too few samples)"),
        ("Tune's slow-callback warnings", str(res["tune_slow_callback_warnings"])),
        ("files / bytes per trial", f"{res['files_per_trial']:.1f} / {res['bytes_per_trial'] / 1e3:.0f} KB"),
        ("`status` / `report` / `load_study`", f"{res['status_s']:.1f} s / {res['report_s']:.1f} s / "
                                               f"{res['load_study_s']:.1f} s"),
        ("report.html", f"{res['page_mb']:.1f} MB" if res.get("page_mb") else "-"),
        ("headless Chromium load", f"{c['render_s']:.1f} s, {c['plots_drawn']} plots, {c['n_console_errors']} "
                                   "console errors" if c else "- (no chromium)"),
    ]
    out = _table(["measure", "value"], [list(r) for r in rows])
    kinds = res.get("per_trial_kinds") or {}
    out += ["", "Files in the trial folders, by kind:", ""]
    out += _table(["file", "count", "MB", "what it is for"],
                  [[k, str(v["files"]), f"{v['bytes'] / 1e6:.1f}", v["role"]] for k, v in kinds.items()])
    return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--keep", help="run in this folder and keep the study (default: a temp folder, removed)")
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="adder-scale-"))
    try:
        res = run(args.trials, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print("\n".join(markdown(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
