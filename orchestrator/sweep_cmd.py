"""``adder-sweep validate | sweep | resume | status``: search-space files to Ray Tune studies."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

DEFAULT_STORAGE = "./results"


def register(sub) -> None:
    v = sub.add_parser("validate", help="check a search-space file and print the resolved space and trial count")
    v.add_argument("file", help="search-space YAML file")
    v.add_argument("--smoke", action="store_true", help="show the space as --smoke would run it")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="as for sweep: replace one entry of the space")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("sweep", help="run a study from a search-space file on Ray Tune")
    s.add_argument("file", help="search-space YAML file (see search_spaces/)")
    s.add_argument("--name", help="study name (default: the file's name plus a timestamp)")
    _storage_flags(s)
    s.add_argument("--max-concurrent", type=int, help="trials running at once (default: the file's, else all that fit)")
    s.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (fractions allowed); also the torch threads")
    s.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractions share one GPU)")
    s.add_argument("--smoke", action="store_true", help="tiny iteration budget, for trying a file quickly")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="replace one entry of the file's space (VALUE in YAML), e.g. --set digits=100 "
                        "--set 'seed={grid: [0]}'; recorded in the study (repeatable)")
    s.set_defaults(func=cmd_sweep)

    r = sub.add_parser("resume", help="continue an interrupted study (finished trials are not rerun)")
    r.add_argument("study", help="study name under --storage, or the study's path / URI")
    _storage_flags(r)
    r.add_argument("--file", dest="space_file", help="check the study against this search-space file")
    r.set_defaults(func=cmd_resume)

    st = sub.add_parser("status", help="list studies: trials by state, best metric, whether resumable")
    st.add_argument("study", nargs="?", help="one study (default: all under --storage)")
    st.add_argument("--storage", default=DEFAULT_STORAGE, help="where studies live (default: %(default)s)")
    st.set_defaults(func=cmd_status)


def _storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="where studies live: a local or shared path, or a URI such as s3://bucket/dir (default: %(default)s)")
    p.add_argument("--address", help="existing Ray cluster: auto, host:port or ray://host:port "
                   "(default: start an embedded local Ray on this machine's cores)")


def cmd_validate(args: argparse.Namespace) -> int:
    from .space import describe, read_space_file

    spec, _ = read_space_file(args.file, tuple(args.overrides))
    print(describe(spec.smoke() if args.smoke else spec))
    return 0


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value, lo in (("--max-concurrent", args.max_concurrent, 1), ("--cpus-per-trial", args.cpus_per_trial, 0),
                            ("--gpus-per-trial", args.gpus_per_trial, 0)):
        if value is not None and value < lo:
            raise UserError(f"{flag} {value:g}: must be >= {lo}")
    if args.cpus_per_trial == 0 and (args.gpus_per_trial or 0) == 0:
        raise UserError("--cpus-per-trial 0: a trial without a GPU needs some CPU")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .space import parse_space, read_space_file
    from .study import launch

    _check_flags(args)
    file_spec, text = read_space_file(args.file)
    spec = parse_space(text, args.file, Path(args.file).stem, tuple(args.overrides)) if args.overrides else file_spec
    spec = spec.smoke() if args.smoke else spec
    spec = spec.with_overrides(max_concurrent=args.max_concurrent, cpus=args.cpus_per_trial, gpus=args.gpus_per_trial)
    outcome = launch(spec, text, name=args.name, storage_root=args.storage, address=args.address, file_spec=file_spec,
                     create_storage=args.storage == DEFAULT_STORAGE)
    return _finish(outcome, args)


def cmd_resume(args: argparse.Namespace) -> int:
    from .study import resume

    outcome = resume(args.study, storage_root=args.storage, address=args.address, space_file=args.space_file)
    return _finish(outcome, args)


def _finish(outcome, args) -> int:
    from .status import print_study_summary
    from .storage import Storage
    from .tables import write_tables

    storage = Storage.open(outcome.storage)
    write_tables(storage, outcome.name)
    print()
    print_study_summary(storage, outcome.name)
    where = "" if args.storage == DEFAULT_STORAGE else f" --storage {args.storage}"
    if not outcome.interrupted:
        print(f"Tables and plots: adder-sweep report {outcome.name}{where}")
    if outcome.interrupted:
        addr = f" --address {args.address}" if getattr(args, "address", None) else ""
        print(f"\nStudy {outcome.name} was interrupted. Resume it with:\n  adder-sweep resume {outcome.name}{where}{addr}",
              file=sys.stderr)
        return 130
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import print_status

    return print_status(args.storage, args.study)
