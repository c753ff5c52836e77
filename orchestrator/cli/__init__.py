"""The ``adder-sweep`` command line. Each subcommand lives in its own module and registers itself here."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from . import report as report_cmd
    from . import sweep as sweep_cmd
    from . import train as train_cmd

    parser = argparse.ArgumentParser(prog="adder-sweep", description="Hyperparameter sweeps of an RNN adder on Ray Tune.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_cmd.register(sub)
    sweep_cmd.register(sub)
    report_cmd.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from trainables.errors import AdderSweepError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AdderSweepError as exc:  # UserError, ConfigError, CheckpointError, DeviceError
        print(f"adder-sweep {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
