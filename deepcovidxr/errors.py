"""The failures a user can cause and mend: bad flags or config values, missing or unusable inputs.

`cli.run_stage` turns exactly these into one log line and exit code 2; anything else is a bug (ours
or a library's) and exits 1 with its traceback shown at ``-v``. They subclass the built-in error a
caller would expect (`ValueError`, `FileNotFoundError`), so library callers can catch either.
"""

from __future__ import annotations


class DeepcovidxrError(Exception):
    """Base of the expected, user-mendable failures (exit code 2)."""


class UsageError(DeepcovidxrError, ValueError):
    """A bad option, config value or combination of them; or input data that breaks a contract
    (an incomplete dataset tree, members that do not fit together, weights of the wrong shape)."""


class MissingInputError(DeepcovidxrError, FileNotFoundError):
    """A file or folder the stage needs does not exist (weights, dataset tree, input folder)."""


class OfflineError(DeepcovidxrError, ConnectionError):
    """Something must be downloaded and the network is not there; the message names the file or
    option to use instead."""
