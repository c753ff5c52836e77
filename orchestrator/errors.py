"""The one error type the CLI turns into a clean message and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a file, a flag, a name. The message names the culprit and what to do."""

    exit_code = 2
