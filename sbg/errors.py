"""Errors sbg reports to users.

Every error a user can cause with their input or options is an ``SbgError``:
the CLI prints its message on one line and exits with its ``exit_code``,
never with a traceback.
"""

__all__ = ["SbgError", "SourceError", "ConfigError", "EXIT_USAGE", "EXIT_INPUT", "EXIT_CONFIG"]

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_CONFIG = 4


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
