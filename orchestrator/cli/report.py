"""``adder-sweep report | compare | board``: read a study's results as tables, plots and TensorBoard."""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ..errors import UserError
from ..studydir.storage import DEFAULT_STORAGE


def register(sub) -> None:
    from ..results import AGGS, FORMATS

    r = sub.add_parser("report", help="summary, pivot table and plots of a study; writes report.md, plots/ and "
                                      "the Parquet tables in the study directory")
    r.add_argument("study", help="study name under --storage, or the study's path / URI")
    r.add_argument("--storage", default=DEFAULT_STORAGE, help="where studies live (default: %(default)s)")
    _pivot_flags(r, AGGS)
    r.add_argument("--format", choices=FORMATS, default="text", help="output on stdout (default: %(default)s)")
    r.add_argument("--top", type=int, default=5, help="best trials listed (default: %(default)s)")
    r.add_argument("--color-by", help="key that colours the learning curves (default: cell, else the first swept key)")
    r.add_argument("--heatmap", help="two keys for the heatmap, e.g. lr,digits (default: the first two swept keys)")
    r.add_argument("--no-plots", action="store_true", help="skip the plots (report.md then has none)")
    r.set_defaults(func=cmd_report)

    c = sub.add_parser("compare", help="two studies side by side on their common swept keys")
    c.add_argument("a", help="first study (name or path)")
    c.add_argument("b", help="second study (name or path)")
    c.add_argument("--storage", default=DEFAULT_STORAGE, help="where studies live (default: %(default)s)")
    _pivot_flags(c, AGGS)
    c.add_argument("--format", choices=FORMATS, default="text", help="output on stdout (default: %(default)s)")
    c.set_defaults(func=cmd_compare)

    b = sub.add_parser("board", help="start TensorBoard on a study (per-trial scalars and hparams) and print its URL")
    b.add_argument("study", help="study name under --storage, or the study's path / URI")
    b.add_argument("--storage", default=DEFAULT_STORAGE, help="where studies live (default: %(default)s)")
    b.add_argument("--port", type=int, default=6006, help="port to serve on; 0 picks a free one (default: %(default)s)")
    b.add_argument("--host", default="localhost", help="interface to serve on; 0.0.0.0 for other machines "
                                                       "(default: %(default)s)")
    b.add_argument("--check", action="store_true", help="start, check that it answers HTTP, stop it and exit")
    b.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for TensorBoard to answer "
                                                                      "(default: %(default)s)")
    b.set_defaults(func=cmd_board)


def _pivot_flags(p: argparse.ArgumentParser, aggs) -> None:
    p.add_argument("--by", help="comma-separated keys: all but the last are rows, the last is columns "
                                "(default: the study's swept keys)")
    p.add_argument("--value", help="a numeric trials.parquet column; exact_acc, digit_acc and loss mean their best "
                                   "value per trial (default: the study's metric)")
    p.add_argument("--agg", choices=aggs, default=None, help="aggregate over trials in a cell (default: the mean with "
                   "its 95%% interval when the study has replicates -- seeds of one configuration -- else median)")


def cmd_report(args: argparse.Namespace) -> int:
    from ..results.report import load_study, make_pivot, render_report, split_keys, summarize

    if args.top < 1:
        raise UserError(f"--top {args.top}: must be >= 1")
    study = load_study(args.study, args.storage, refresh=True)
    summary = summarize(study, top=args.top)
    pivot = make_pivot(study, split_keys(args.by), args.value, args.agg)
    plots: list[str] = []
    if not args.no_plots:
        from ..results.plots import write_plots

        plots = write_plots(study, color_by=args.color_by, heatmap=split_keys(args.heatmap), value=args.value,
                            agg=args.agg or ("mean" if study.has_replicates else "median"))
    study.storage.write_text(study.storage.join(study.name, "report.md"), render_report(summary, pivot, "md", plots))
    from ..results.page import PAGE, write

    write(study, color_by=args.color_by, pivot=pivot, summary=summary)
    sys.stdout.write(render_report(summary, pivot, args.format))
    if args.format == "text":
        written = ", ".join(["trials.parquet", "metrics.parquet", "report.md", PAGE, *plots])
        print(f"\nwrote in {study.path}: {written}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..results.report import compare, load_study, render_compare, split_keys

    a = load_study(args.a, args.storage)
    b = load_study(args.b, args.storage)
    sys.stdout.write(render_compare(compare(a, b, split_keys(args.by), args.value, args.agg), args.format))
    return 0


def free_port(host: str = "localhost") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once ``url`` answers 200; False if the process exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cmd_board(args: argparse.Namespace) -> int:
    from ..studydir.storage import read_record, study_location

    storage, name = study_location(args.study, args.storage)
    read_record(storage, name)
    if not storage.is_local:
        raise UserError(f"board needs the study on a local disk (TensorBoard here reads no {storage.uri(name)}); "
                        f"copy it first, e.g. `aws s3 sync {storage.uri(name).split('?')[0]} ./{name}`, then "
                        f"`adder-sweep board ./{name}`")
    logdir = storage.uri(name)
    port = free_port(args.host) if args.port == 0 else args.port
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port), "--host", args.host]
    # TensorBoard's own log lines (and its warnings about missing TensorFlow) go to a file, not the terminal.
    log_path = os.path.join(storage.path, name, "tensorboard.log") if storage.is_local else os.devnull
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{'localhost' if args.host in ('0.0.0.0', '::') else args.host}:{port}/"
    try:
        if not wait_for_http(url, proc, args.startup_timeout):
            code = proc.poll()
            raise UserError(f"TensorBoard did not start on port {port} "
                            + (f"(exited {code}; see {log_path})" if code is not None else
                               f"within {args.startup_timeout:g}s (see {log_path})")
                            + "; is the port taken? try --port 0")
        print(f"TensorBoard for study {name}: {url}  (pid {proc.pid}; Ctrl-C stops it)", flush=True)
        if args.check:
            return 0
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(proc)
