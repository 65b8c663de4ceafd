"""Errors sbg reports to users.

Every error a user can cause with their input, options or environment is an
``SbgError``: the CLI prints its message on one line and exits with its
``exit_code``, never with a traceback.
"""

__all__ = ["SbgError", "SourceError", "ConfigError", "OutputError", "EXIT_USAGE", "EXIT_INPUT", "EXIT_CONFIG",
           "EXIT_OUTPUT"]

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CONFIG = 4
EXIT_OUTPUT = 5


class SbgError(Exception):
    """An error caused by user input or options, with a one-line message."""

    exit_code = EXIT_USAGE


class SourceError(SbgError):
    """A data file that cannot be read at all (missing, empty, no schema)."""

    exit_code = EXIT_INPUT

    def __init__(self, path, message, line=None, column=None):
        self.path = str(path)
        self.line = line
        self.column = column
        where = self.path
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {message}")


class ConfigError(SbgError):
    """An invalid configuration file or setting."""

    exit_code = EXIT_CONFIG


class OutputError(SbgError):
    """An output sbg cannot write: a full disk, a read-only file system, no permission, not a database.

    >>> str(OutputError("out.csv", "No space left on device"))
    'out.csv: cannot write: No space left on device'
    """

    exit_code = EXIT_OUTPUT

    def __init__(self, path, reason, action="cannot write"):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {action}: {reason}")
