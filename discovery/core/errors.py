"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input from the user: the message says what to fix."""


class TaskError(UserError):
    """A task file that cannot be used; the message names the row and field."""


class UnsupportedModelError(UserError):
    """A model whose architecture has no adapter."""


class Cancelled(Exception):
    """Raised by a Setup.on_batch callback to stop a run (the job was cancelled); not a user error."""
