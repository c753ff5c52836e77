"""The one exception family of adder-sweep, and the training side's members of it; callers handle them without
importing torch. The CLI prints any ``AdderSweepError`` as one line and exits 2 (trials that ran and failed are not
an exception: they are in the result of ``orchestrator.sweep``, whose ``raise_for_errors`` raises ``TrialsFailed``)."""


class AdderSweepError(Exception):
    """Base of every error adder-sweep raises on purpose: its message is one line naming the culprit and what to do."""

    exit_code = 2


class CheckpointError(AdderSweepError, RuntimeError):
    """A checkpoint file is missing, truncated, not an adder-sweep checkpoint, or refused (it would run code)."""


class DeviceError(AdderSweepError, RuntimeError):
    """The device a run asks for is not on this machine, or a resumed run would continue on another device than
    it trained on without being told to."""


class GpuMemoryError(DeviceError):
    """A CUDA run ran out of the GPU memory it may use; the message says how much was asked and what the cap was.
    Retrying the same run repeats it: a Ray trial marks it so its retry fails at once (trainables/tune_adapter)."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The informative start of an exception's text for a one-line message: its first line, or the first two
    when the first only announces a list (torch's "Error(s) in loading state_dict for AdderNet:"); the exception's
    type name when it has no text."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text[:limit]
