"""Errors a user can fix. The CLI prints them as one line (no traceback) and exits with 2."""

from __future__ import annotations

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


USER_ERRORS = (UserError, ConfigError, SchemaError, FileNotFoundError, NotADirectoryError, KeyError)
