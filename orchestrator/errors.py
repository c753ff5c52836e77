"""The orchestrator's members of adder-sweep's exception family (its base, ``AdderSweepError``, lives in
trainables/errors.py so that the training side raises the same family). The CLI prints each as one line and exits 2."""
from trainables.errors import AdderSweepError


class UserError(AdderSweepError):
    """Bad input from the user: a file, a flag, a name, a refused launch. The message names the culprit and what
    to do."""

    exit_code = 2


EXIT_CLUSTER_LOST = 3  # the cluster's head stopped answering mid-study (orchestrator/cluster/watch.py)


class StorageFull(UserError, OSError):
    """A file adder-sweep writes (atomically) did not fit: no space left on the device. An OSError too, so code
    that rides out a failed write (the claim's heartbeat) still does; the CLI prints it as one line."""

    def __init__(self, message: str):
        UserError.__init__(self, message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TrialsFailed(AdderSweepError):
    """Raised by ``StudyResult.raise_for_errors()``: trials ended in error, the study was interrupted, or another
    driver took it over. ``result`` is the StudyResult; the message is the first of those, in one line."""

    def __init__(self, message: str, result):
        super().__init__(message)
        self.result = result
