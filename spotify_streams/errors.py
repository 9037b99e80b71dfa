"""The series' own error types. Each message names the problem and the fix.

Only DataError is about the data; the others say what else went wrong, so a caller can tell a
bad file from a missing step of the series.
"""


class DataError(ValueError):
    """The input data cannot be used (a file, a column, a row)."""


class ParameterError(ValueError):
    """A notebook or command parameter has the wrong type or value."""


class MissingStepError(FileNotFoundError):
    """An earlier step's output (a notebook's metrics, a saved model) is not there yet."""


class UntrustedModelError(ValueError):
    """A saved-model file holds types the series never saves, so it is not loaded."""
