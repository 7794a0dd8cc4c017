"""User-facing errors.

Every failure a user can cause (a bad argument, a missing or corrupt file, a broken store entry) raises a
`CapsrobustError`. The CLI prints its message as one line and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class CapsrobustError(Exception):
    """A problem the user can fix; its message is one line that says what is wrong and, where it helps, what to do."""


class DataError(CapsrobustError):
    """A data set file is missing, corrupt, truncated or fails its checksum."""


class ConfigError(CapsrobustError):
    """An unknown name or an out-of-range value in a model, trainer or attack configuration."""


class StoreError(CapsrobustError):
    """A trained-model store entry is missing, unreadable or fails verification."""


class TrainingDiverged(CapsrobustError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""
