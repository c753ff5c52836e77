"""``adder-sweep train`` and ``adder-sweep add``: one run of the plain training loop, in a run directory.

Run directory: ``run.json`` (resolved config, command line, seed, versions), ``checkpoint.pt`` (latest),
``metrics.parquet`` (every report), ``tb/`` (TensorBoard events), ``summary.json`` (when finished).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trainables.config import ConfigError, TrainConfig, field_specs

from ..errors import UserError
from ..studydir.records import (check_writable_dir, command_line, now_iso, package_versions, timestamp, write_json,
                      write_parquet_atomic)

# The assignment's flag names, kept working beside the config field names.
FLAG_ALIASES = {"cell": ["--type"], "digits": ["--len"]}
TB_SCALARS = ("loss", "exact_acc", "digit_acc", "lr")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (derived, not re-listed); values are validated by TrainConfig."""
    group = parser.add_argument_group("training config (defaults: the assignment's basic model)")
    for spec in field_specs().values():
        flags = [f"--{spec.name.replace('_', '-')}"]
        if "_" in spec.name:
            flags.append(f"--{spec.name}")
        flags += FLAG_ALIASES.get(spec.name, [])
        default = ",".join(map(str, spec.default)) if isinstance(spec.default, list) else spec.default
        default = TRAIN_DEFAULTS.get(spec.name, default)
        group.add_argument(*flags, dest=f"cfg_{spec.name}", metavar=spec.name.upper(), default=None,
                           help=f"{spec.doc} (default: {default})")


# `train` runs on one torch thread unless --threads is given. With torch's default (every core) a run of this
# small model slowed from 0.7 s to 27 s (100 iterations, 5 digits) while other work ran on this 2-core machine:
# OpenMP threads wait for descheduled siblings. On an idle machine a second thread speeds one run up by 1.0x (rnn,
# 11 digits) to 1.7x (lstm, 100 digits) (docs/PERFORMANCE.md, "Threads"): worth asking for, not worth the risk.
TRAIN_DEFAULTS = {"threads": 1}  # where `train` departs from TrainConfig's defaults


def config_overrides(args: argparse.Namespace) -> dict:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def register(sub) -> None:
    p = sub.add_parser("train", help="train one adder model (the assignment's source.py flags work)",
                       description="Train one AdderNet. Example: adder-sweep train --layers=3 --type=gru --len=100 "
                       "--iters=3000. Runs on 1 torch thread unless --threads says otherwise (0: torch's default, "
                       "every core): on an idle machine more threads speed a long LSTM/GRU run up (up to 1.7x on "
                       "2 cores), but torch's threads slow down many times over when anything else runs on the "
                       "machine (docs/PERFORMANCE.md).")
    add_config_flags(p)
    p.add_argument("--out", type=Path, help="run directory (default: a new folder under results/runs/)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run from its directory "
                   "(only --iters may change)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    a = sub.add_parser("add", help="add two numbers with a trained model")
    a.add_argument("run", type=Path, help="run directory or checkpoint file")
    a.add_argument("a", help="first non-negative integer")
    a.add_argument("b", help="second non-negative integer")
    a.set_defaults(func=cmd_add)


def _default_run_dir(cfg: TrainConfig) -> Path:
    base = Path("results") / "runs" / f"{cfg.model.cell}-l{cfg.model.layers}-d{cfg.data.digits}-{timestamp()}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class Progress:
    """A one-line progress bar on stderr (a line per report when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()

    def update(self, m: dict) -> None:
        if not self.enabled:
            return
        frac = min(m["iter"] / self.total, 1.0)
        bar = "#" * int(frac * 24)
        line = (f"[{bar:<24}] {m['iter']:>6}/{self.total} loss {m['loss']:.4f} exact {m['exact_acc']:.4f} "
                f"digit {m['digit_acc']:.4f} lr {m['lr']:.2g} {m['samples_per_s']:.0f} samples/s")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


class RunWriter:
    """Writes reports of one run to its directory: checkpoint, metrics.parquet, TensorBoard."""

    def __init__(self, run_dir: Path, config: TrainConfig, rows: list[dict], start_iter: int):
        from torch.utils.tensorboard import SummaryWriter

        self.dir, self.config, self.rows = run_dir, config, rows
        # purge_step drops events a killed run wrote after its last checkpoint
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)

    def __call__(self, metrics: dict, checkpoint) -> None:
        from trainables.checkpoint import CHECKPOINT_FILE, save_checkpoint

        for k in TB_SCALARS:
            if k in metrics:
                self.tb.add_scalar(k, metrics[k], metrics["iter"])
        for k, v in metrics.items():
            if k.startswith("exact_acc@"):
                self.tb.add_scalar(k, v, metrics["iter"])
        self.rows.append({k: v for k, v in metrics.items()})
        if checkpoint is not None:
            save_checkpoint(checkpoint(), self.dir / CHECKPOINT_FILE)
        write_metrics(self.rows, self.dir / "metrics.parquet")
        self.tb.flush()

    def close(self, summary: dict) -> None:
        flat = self.config.to_flat()
        hparams = {k: (",".join(map(str, v)) if isinstance(v, list) else v) for k, v in flat.items()}
        final = summary.get("final") or {}
        self.tb.add_hparams(hparams, {"hparam/exact_acc": final.get("exact_acc", 0.0),
                                      "hparam/iters": summary["iters"]}, run_name="hparams")
        self.tb.close()


def write_metrics(rows: list[dict], path: Path) -> None:
    import pyarrow as pa

    cols: dict[str, list] = {}
    for r in rows:
        for k in r:
            cols.setdefault(k, [])
    table = pa.table({k: [r.get(k) for r in rows] for k in cols})
    write_parquet_atomic(table, path)


def read_metrics(path: Path) -> list[dict]:
    """The reports a run wrote so far; a damaged file is a UserError naming it (a resume must not lose them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        return []
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: unreadable ({(str(exc).splitlines() or [''])[0]}); the run's reports are damaged "
                        "-- restore the file, or delete it to continue without the earlier reports") from None
    if rows and not all(isinstance(r.get("iter"), int) for r in rows):
        raise UserError(f"{path}: not a run's metrics table (no integer 'iter' column)")
    return rows


def cmd_train(args: argparse.Namespace) -> int:
    from trainables.device import hide_accelerators
    from trainables.loop import train

    overrides = config_overrides(args)
    if args.resume is not None:
        run_dir, cfg, record, rows, resume_state = _resumed_run(args, overrides)
    else:
        run_dir, cfg, record = _new_run(args, overrides)
        rows, resume_state = [], None
    if cfg.run.device == "cpu":  # this process is the run's: keep torch's Adam from initialising CUDA here
        hide_accelerators()
    write_json(run_dir / "run.json", record)
    writer = RunWriter(run_dir, cfg, rows, resume_state["iter"] if resume_state else 0)
    progress = Progress(cfg.run.iters, enabled=not args.quiet)

    def report(metrics, checkpoint):
        writer(metrics, checkpoint)
        progress.update(metrics)

    t0 = time.perf_counter()
    try:
        summary = train(cfg, report=report, resume_from=resume_state)
    except KeyboardInterrupt:
        progress.close()
        writer.tb.close()
        print(f"interrupted; continue with: adder-sweep train --resume {run_dir}", file=sys.stderr)
        return 130
    progress.close()
    summary.pop("model")
    summary["wall_s_this_process"] = time.perf_counter() - t0
    writer.close(summary)
    write_json(run_dir / "summary.json", summary)
    f = summary["final"] or {}
    solved = f" in {summary['iters_to_solve']} iters" if summary["iters_to_solve"] else ""
    print(f"{summary['status']}{solved}: {cfg.model.cell} layers={cfg.model.layers} digits={cfg.data.digits} "
          f"iters={summary['iters']} exact_acc={f.get('exact_acc', float('nan')):.4f} "
          f"digit_acc={f.get('digit_acc', float('nan')):.4f} loss={f.get('loss', float('nan')):.4g} "
          f"({summary['wall_s']:.1f}s) -> {run_dir}")
    return 0


def _resumed_run(args: argparse.Namespace, overrides: dict):
    """``--resume DIR``: (run dir, config, record, metrics rows so far, checkpoint state), every check first."""
    from trainables.checkpoint import CHECKPOINT_FILE, load_checkpoint, model_from_checkpoint
    from trainables.device import resume_device
    from trainables.errors import DeviceError

    if args.out is not None:
        raise UserError("--resume and --out conflict: a resumed run continues in its own directory")
    run_dir = args.resume
    if not (run_dir / "run.json").is_file():
        raise UserError(f"--resume {run_dir}: not a run directory (no run.json); start a new run instead")
    resume_state = load_checkpoint(run_dir)
    extra = set(overrides) - {"iters"} - ({"device"} if overrides.get("device") == "cpu" else set())
    if extra:
        raise UserError(f"--resume keeps the run's config; only --iters may change, and --device cpu moves a "
                        f"GPU run to the CPU (got {', '.join(sorted(extra))})")
    model_from_checkpoint(resume_state, run_dir / CHECKPOINT_FILE)  # config and weights must fit, or exit 2
    cfg = TrainConfig.from_flat({**resume_state["config"], **overrides}, source="flags")
    try:
        _, note = resume_device(resume_state, cfg.run.device)
    except DeviceError as exc:
        raise UserError(f"--resume {run_dir}: {exc}") from None
    if note:
        print(f"adder-sweep train: {note}", file=sys.stderr)
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (ValueError, OSError) as exc:
        raise UserError(f"{run_dir / 'run.json'}: unreadable ({exc}); the run record is damaged") from None
    record.setdefault("resumed", []).append({"command": command_line(), "at": now_iso(),
                                             "from_iter": resume_state["iter"]})
    rows = [r for r in read_metrics(run_dir / "metrics.parquet") if r["iter"] <= resume_state["iter"]]
    return run_dir, cfg, record, rows, resume_state


def _new_run(args: argparse.Namespace, overrides: dict):
    """A new run: (its directory, made only after every check passed; the config; the record)."""
    from trainables import fused
    from trainables.device import resolve_device
    from trainables.errors import DeviceError

    cfg = TrainConfig.from_flat({**TRAIN_DEFAULTS, **overrides}, source="flags")
    run_dir = args.out or _default_run_dir(cfg)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"--out {run_dir}: already exists and is not empty; pick a new directory "
                        f"or continue it with --resume {run_dir}")
    check_writable_dir(run_dir, "--out")
    try:
        device = resolve_device(cfg.run.device)
    except DeviceError as exc:
        raise UserError(f"--device {cfg.run.device}: {exc}") from None
    if fused.used_for(cfg.model.kernel, cfg.model.cell, device):
        try:
            fused.extension()  # build it before the run directory exists: no half-written run on failure
        except fused.FusedKernelError as exc:
            raise UserError(str(exc)) from None
    record = {"config": cfg.to_flat(), "seed": cfg.run.seed, "command": command_line(), "started": now_iso(),
              "versions": package_versions()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {run_dir}: cannot create ({exc.strerror})") from None
    return run_dir, cfg, record


def _parse_operand(text: str, name: str) -> int:
    t = text.strip().replace("_", "")
    if not t.isdigit():
        raise UserError(f"{name} {text!r}: not a non-negative integer")
    from trainables.data import int_from_str

    return int_from_str(t)


def cmd_add(args: argparse.Namespace) -> int:
    from trainables.data import str_from_int
    from trainables.checkpoint import CheckpointError, load_model

    a, b = _parse_operand(args.a, "a"), _parse_operand(args.b, "b")
    if not args.run.exists():
        raise UserError(f"run {args.run}: no such run directory or checkpoint; train one with `adder-sweep train`")
    try:
        model = load_model(args.run)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    result = model.add(a, b)
    print(str_from_int(result))
    if result != a + b:
        print(f"note: the model is wrong here; the true sum is {str_from_int(a + b)}", file=sys.stderr)
    return 0
