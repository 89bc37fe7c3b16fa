"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits with 2."""

from __future__ import annotations

from typing import Optional

from store_rec.config import ConfigError


class UserError(ValueError):
    """Bad input: malformed rows, unknown features, out-of-range ids, bad arguments.

    The message must name what is wrong and where (file, row, key).
    """


class SchemaError(ValueError):
    """A schema.json that is malformed or does not match the data it describes (raised by
    :mod:`store_rec.data.schema`, which re-exports it)."""


class DataError(UserError):
    """A data file that cannot be read as the schema says (names file and row)."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (what ``timeout``, slurm and kubernetes send), so that every
    ``with`` block unwinds like on an error: temp outputs are removed, nothing half-written is left.
    A ``BaseException`` like ``KeyboardInterrupt``: ``except Exception`` blocks do not swallow it."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


USER_ERRORS = (UserError, ConfigError, SchemaError, FileNotFoundError, NotADirectoryError, KeyError)


def error_message(e: BaseException) -> Optional[str]:
    """The one-line message an entry point prints (exit code 2) for an error the user can fix, else None
    (re-raise it): a :data:`USER_ERRORS` message (a ``KeyError``'s key without its quotes), or, for an
    ``ImportError`` / ``OSError`` from a broken torch / fbgemm / torchrec install, which package to fix
    (:func:`store_rec.stack.diagnose`)."""
    if isinstance(e, USER_ERRORS):
        return str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
    if isinstance(e, (ImportError, OSError)):
        from store_rec.stack import diagnose

        return diagnose(e)
    return None
