"""User-facing errors.

Anything a user can fix (a recipe key, a missing dataset, a bad file) raises an
``SslZooError`` whose message says what is wrong, where, and what to do. The CLI
prints that message alone, without a traceback, and exits with status 2.
"""


class SslZooError(Exception):
    """An error caused by the user's input, with a message that explains the fix."""


class RecipeError(SslZooError):
    """A recipe name, key or value is not valid."""


class DataNotFoundError(SslZooError):
    """A dataset is missing on disk and cannot be downloaded (or download=False)."""


class DataFormatError(SslZooError):
    """A dataset exists but its content is not what ssl_zoo can read."""


class CheckpointError(SslZooError):
    """A file passed as a checkpoint is missing, not a checkpoint, or does not fit."""


class TrainingError(SslZooError):
    """Training cannot go on (a NaN loss); the message says what was kept and what to try."""
