"""Errors that the command line turns into a message and an exit code instead of a traceback."""


class RejectionAlignError(Exception):
    """A problem with the user's input or set-up; the CLI prints it and exits with ``exit_code``."""

    exit_code = 2


class DataError(RejectionAlignError):
    """Bad input data: the message names the file, the record and what is wrong."""


class ConfigError(RejectionAlignError):
    """Bad ``rejection_*`` settings or an unusable environment for them."""
