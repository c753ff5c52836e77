"""Errors of the training side that callers handle without importing torch (the CLI maps them to exit code 2)."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, not an adder-sweep checkpoint, or refused (it would run code)."""
