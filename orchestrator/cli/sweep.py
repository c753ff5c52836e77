"""``adder-sweep validate | sweep | resume | extend | status``: the commands over orchestrator/api.py -- their
flags, what they print, and their exit codes."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from ..errors import EXIT_CLUSTER_LOST, UserError  # noqa: F401  (EXIT_CLUSTER_LOST: exited by tune/study.watch_head)
from ..studydir.storage import DEFAULT_STORAGE

# Exit codes of the commands that run trials (README "Exit codes").
EXIT_OK, EXIT_TRIALS_ERRORED, EXIT_REFUSED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 2, 130, 143


def register(sub) -> None:
    v = sub.add_parser("validate", help="check a search-space file and print the resolved space and trial count")
    v.add_argument("file", help="search-space YAML file")
    v.add_argument("--smoke", action="store_true", help="show the space as --smoke would run it")
    v.add_argument("--repeats", type=int, help="as for sweep: seeds per configuration")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="as for sweep: replace one entry of the space")
    _pack_flag(v, "default: the file's pack, else 1")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("sweep", help="run a study from a search-space file on Ray Tune")
    s.add_argument("file", help="search-space YAML file (see search_spaces/)")
    s.add_argument("--name", help="study name (default: the file's name plus a timestamp)")
    _storage_flags(s)
    s.add_argument("--max-concurrent", type=int, help="trials running at once (default: the file's, else all that fit)")
    s.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (fractions allowed); also the torch threads")
    s.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share one GPU)")
    s.add_argument("--smoke", action="store_true", help="tiny iteration budget, for trying a file quickly")
    s.add_argument("--repeats", type=int, help="seeds per configuration (replicates), replacing the file's repeats: "
                   "e.g. --repeats 1 for one seed of a file that has 3 (recorded)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="replace one entry of the file's space (VALUE in YAML), e.g. --set digits=100 "
                        "--set 'seed={grid: [0]}'; recorded in the study (repeatable)")
    s.add_argument("--runtime-env", metavar="FILE|JSON", help="Ray runtime_env for the trials, e.g. "
                   "'{\"pip\": [\"scipy\"], \"env_vars\": {\"X\": \"1\"}}' or a JSON/YAML file; on a cluster the "
                   "project's code is shipped as py_modules in any case (recorded; resume reuses it)")
    s.add_argument("--no-ship-code", dest="ship_code", action="store_false", default=None,
                   help="on a cluster, do not ship the project's code: every node has adder-sweep installed")
    _tracking_flag(s, "default: the file's tracking.mlflow, if any")
    _pack_flag(s, "default: the file's pack, else 1")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("resume", help="continue an interrupted study (finished trials are not rerun)")
    r.add_argument("study", help="study name under --storage, or the study's path / URI")
    _storage_flags(r)
    r.add_argument("--file", dest="space_file", help="check the study against this search-space file")
    r.add_argument("--runtime-env", metavar="FILE|JSON", help="replace the runtime_env recorded with the study "
                   "(see sweep --runtime-env)")
    r.add_argument("--force", action="store_true", help="take the study over from its recorded driver without "
                   "checking that the driver is gone (it stops when it notices)")
    _tracking_flag(r, "default: the server recorded with the study")
    r.set_defaults(func=cmd_resume)

    e = sub.add_parser("extend", help="grow a finished study: more grid values, seeds, samples or iterations; "
                                      "runs only what is new (finished trials are reused or continued)")
    e.add_argument("study", help="study name under --storage, or the study's path / URI")
    _storage_flags(e)
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one entry of the study's space (VALUE in YAML): add grid values "
                        "(--set 'lr={grid: [0.001, 0.01]}'), widen a random range, or raise iters")
    e.add_argument("--file", dest="space_file", help="the study's search-space file as edited (e.g. with more grid "
                   "values); default: the study's own space")
    e.add_argument("--num-samples", type=int, help="random samples per grid point (more than the study has)")
    e.add_argument("--repeats", type=int, help="seeds per configuration (more than the study has)")
    e.add_argument("--dry-run", action="store_true", help="print which trials are reused, continued and new; run "
                                                          "nothing")
    e.add_argument("--max-concurrent", type=int, help="trials running at once (default: the study's)")
    e.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the study's)")
    e.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: the study's)")
    e.add_argument("--runtime-env", metavar="FILE|JSON", help="replace the runtime_env recorded with the study")
    e.add_argument("--force", action="store_true", help="take the study over from its recorded driver at once")
    _tracking_flag(e, "default: the server recorded with the study")
    _pack_flag(e, "default: the study's")
    e.set_defaults(func=cmd_extend)

    st = sub.add_parser("status", help="list studies: trials by state, best metric, whether resumable")
    st.add_argument("study", nargs="?", help="one study (default: all under --storage)")
    st.add_argument("--storage", default=DEFAULT_STORAGE, help="where studies live (default: %(default)s)")
    st.set_defaults(func=cmd_status)


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="where studies live: a local or shared path, or a URI such as s3://bucket/dir or "
                        "'s3://bucket/dir?endpoint_override=http://host:9000' (default: %(default)s)")
    p.add_argument("--address", help="existing Ray cluster: auto, host:port or ray://host:port (default: "
                   "$RAY_ADDRESS if set, else start an embedded local Ray on this machine's cores)")


def _tracking_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--mlflow", metavar="URI", help=f"log every trial as an MLflow run on this tracking server, e.g. "
                   f"http://127.0.0.1:5000 ('off': no tracking; {default}; recorded, so resume and extend keep "
                   f"it); needs adder-sweep[tracking]")


def _pack_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--pack", type=int, metavar="K", help=f"train up to K configurations that share a model shape as "
                   f"one batched model, one Ray trial (README, 'Packed trials'; {default}); FIFO, grid or random "
                   f"search only")


def cmd_validate(args: argparse.Namespace) -> int:
    from ..api import with_repeats
    from ..spec.describe import describe
    from ..spec.space import read_space_file

    spec, _ = read_space_file(args.file, tuple(args.overrides))
    spec = with_repeats(spec, args.repeats).with_pack(args.pack)
    print(describe(spec.smoke() if args.smoke else spec))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..api import sweep

    result = sweep(args.file, name=args.name, storage=args.storage, address=args.address,
                   overrides=tuple(args.overrides), repeats=args.repeats, smoke=args.smoke,
                   max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                   gpus_per_trial=args.gpus_per_trial, runtime_env=args.runtime_env, ship_code=args.ship_code,
                   mlflow=args.mlflow, pack=args.pack)
    return finish(result, "sweep", args.address)


def cmd_resume(args: argparse.Namespace) -> int:
    from ..api import resume

    result = resume(args.study, storage=args.storage, address=args.address, space_file=args.space_file,
                    runtime_env=args.runtime_env, force=args.force, mlflow=args.mlflow)
    return finish(result, "resume", args.address)


def cmd_extend(args: argparse.Namespace) -> int:
    from ..api import extend

    result = extend(args.study, storage=args.storage, address=args.address, overrides=tuple(args.overrides),
                    space_file=args.space_file, num_samples=args.num_samples, repeats=args.repeats,
                    dry_run=args.dry_run, max_concurrent=args.max_concurrent, cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial, runtime_env=args.runtime_env, force=args.force,
                    mlflow=args.mlflow, pack=args.pack)
    return EXIT_OK if not result.ran else finish(result, "extend", args.address)


def _describe_config(config: dict, keys: list[str]) -> str:
    return " ".join(f"{k}={config.get(k)}" for k in keys if k in config)


def finish(result, command: str, address: Optional[str]) -> int:
    """The summary and the exit code of a command that ran trials: 0 if every trial ended normally, 1 if any
    ended in error (each listed), 130 after Ctrl-C, 143 after SIGTERM, 2 if another driver took over. (3, the
    cluster's head lost, never reaches here: tune/study.watch_head exits the process.) Runs the
    MLflow server missed are listed, and change no exit code: the study folder is the record, tracking a copy."""
    from ..spec.space import StudySpec
    from .status import print_study_summary
    from ..studydir.storage import Storage, read_record

    if not result.started:  # Ctrl-C or SIGTERM before any trial started: nothing to resume
        print("adder-sweep: stopped before any trial ran", file=sys.stderr)
        return EXIT_SIGTERM if result.stop_reason == "sigterm" else EXIT_SIGINT
    storage = Storage.open(result.storage)
    study = result._study  # the tables the call wrote, or None when they could not be written (it said why)
    print()
    try:
        print_study_summary(storage, result.name, study)
    except UserError as exc:
        print(f"adder-sweep: {exc}", file=sys.stderr)
    if study is not None:
        from ..results.report import best_configuration_line

        try:  # like the page: a summary line that cannot be computed is a warning, never a failed run
            line = best_configuration_line(study)
        except Exception as exc:
            line = None
            print(f"adder-sweep: best configuration over seeds not computed ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
        if line:
            print(line)
    from ..tune.tracking import describe_tracking

    for line in describe_tracking(result.tracking):
        print(line, file=sys.stderr if result.tracking["missed"] else sys.stdout)
    where = storage.flag()
    addr = f" --address {address}" if address else ""
    if result.stop_reason == "taken_over":
        from ..studydir.claim import describe

        print(f"adder-sweep {command}: error: study {result.name} was taken over by another driver "
              f"({describe(result.taken_by or {})}); this one stopped its trials and leaves the study to it",
              file=sys.stderr)
        return EXIT_REFUSED
    if result.errors:
        try:
            swept = StudySpec.from_json(read_record(storage, result.name)["spec"]).swept_keys()
        except (UserError, KeyError, TypeError):
            swept = []
        n = len(result.errors)
        print(f"\nadder-sweep {command}: {n} trial{'s' if n != 1 else ''} ended in error:", file=sys.stderr)
        for e in result.errors:
            print(f"  {e.trial_id} ({_describe_config(e.config, swept) or 'config in trials.parquet'}): {e.message}"
                  + (f"\n    full error: {e.error_file}" if e.error_file else ""), file=sys.stderr)
    if result.interrupted:
        why = "stopped by SIGTERM" if result.stop_reason == "sigterm" else "interrupted"
        print(f"\nStudy {result.name} was {why}. Resume it with:\n  adder-sweep resume {result.name}{where}{addr}",
              file=sys.stderr)
        return EXIT_SIGTERM if result.stop_reason == "sigterm" else EXIT_SIGINT
    if result.errors:
        print(f"Errored trials continue from their last checkpoint with: adder-sweep resume {result.name}{where}"
              f"{addr}", file=sys.stderr)
        return EXIT_TRIALS_ERRORED
    print(f"Study page: {storage.uri(result.name, 'report.html')}  (tables and plots: adder-sweep report "
          f"{result.name}{where})")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .status import print_status

    return print_status(args.storage, args.study)
