"""Atomic file writes: a temp file in the target's directory, renamed over the target when complete.

A crash or error leaves the previous file (or nothing) at the path, never a half-written one. Use
these for every output a user or a later step reads (summaries, reports, plans, tables).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; the renamed output gets the mode a plain open() would give it
_FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path`` to write to; on success it is renamed to ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: PathLike, obj: Any, **dump_kw: Any) -> Path:
    """``obj`` as JSON (``indent=2`` unless given; other ``json.dumps`` keywords pass through)."""
    dump_kw.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dump_kw) + "\n")
