"""Atomic file writes: a temp file in the target's directory, renamed over the target when complete.

A crash or error leaves the previous file (or nothing) at the path, never a half-written one. Use
these for every output a user or a later step reads (summaries, reports, plans, tables).

Also here: the output-path rules every command applies before it touches anything
(:func:`check_output_path`: an output never equals, contains or sits inside an input) and strict JSON
(:func:`strict_json_dumps`: non-finite values become ``null`` with a reason).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

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
    """``obj`` as strict JSON (``indent=2`` unless given; other ``json.dumps`` keywords pass through).

    Non-finite floats are written as ``null`` with the reason under ``"non_finite"`` (see
    :func:`strict_json_dumps`): the file is always valid JSON."""
    dump_kw.setdefault("indent", 2)
    if "default" in dump_kw:  # resolve custom objects first, so that non-finite values they give are caught too
        obj = json.loads(json.dumps(obj, default=dump_kw.pop("default")))
    return atomic_write_text(path, strict_json_dumps(obj, **dump_kw) + "\n")


# ------------------------------------------------------------------ output-path rules
# An output never overwrites, deletes or nests around an input, and a command checks every output path
# before it reads or writes anything (so a mistake costs a one-line error, not an hour of work or the input).

OutputKind = str  # "file" | "dir"


def _real(p: PathLike) -> Path:
    """Absolute path with symlinks resolved as far as the path exists (``a/link/new`` -> ``a/target/new``)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(p))))


def is_inside(path: PathLike, root: PathLike) -> bool:
    """True when ``path`` is ``root`` or below it (after resolving symlinks and ``..``)."""
    p, r = _real(path), _real(root)
    return p == r or r in p.parents


def ensure_inside(path: PathLike, root: PathLike, what: str = "path") -> Path:
    """``path`` unchanged, or UserError when it resolves outside ``root`` (e.g. a name with ``../``)."""
    from store_rec.errors import UserError

    if not is_inside(path, root):
        raise UserError(f"{what} {path}: resolves outside {root}; refusing to write there")
    return Path(path)


def check_output_path(out: PathLike, *, inputs: Any = (), kind: OutputKind = "file", flag: str = "--out",
                      may_nest: Any = ()) -> Path:
    """Check an output path before anything is read or written; returns it as a Path.

    Refused (:class:`store_rec.errors.UserError`, exit code 2 in the CLI) when ``out``

    * equals an input (``--out X --embeddings X``), also through a symlink or ``..``;
    * contains an input (``--out`` a folder above ``--source``): replacing it would delete the input;
    * lies inside an input directory, unless that input's flag is in ``may_nest`` (a dataset dir
      that only gets a new file beside the ones read, like ``pretrain --data D --out D/emb.parquet``;
      pass the files actually read as inputs too, so that none of them can be overwritten);
    * has the wrong kind: ``kind="file"`` and ``out`` is an existing directory, or ``kind="dir"``
      and ``out`` is an existing file; or a parent of ``out`` is an existing file.

    ``inputs``: a mapping ``flag -> path`` or a sequence of ``(flag, path)`` pairs; ``None`` paths are
    skipped. ``flag`` names ``out`` in the message.
    """
    from store_rec.errors import UserError

    if out is None or os.fspath(out) == "":
        raise UserError(f"{flag}: an output path is required")
    outp = Path(out)
    ro = _real(outp)
    pairs = list(inputs.items()) if isinstance(inputs, dict) else list(inputs)
    for iflag, ipath in pairs:
        if ipath is None or os.fspath(ipath) == "":
            continue
        ri = _real(ipath)
        if ri == ro:
            raise UserError(f"{flag} {out}: is the input {iflag} {ipath}; refusing to overwrite an input "
                            "(choose another output path)")
        if ro in ri.parents:
            raise UserError(f"{flag} {out}: contains the input {iflag} {ipath}; refusing to write an output "
                            "around its own input (choose an output path outside it)")
        if ri in ro.parents and iflag not in may_nest and os.path.isdir(ri):
            raise UserError(f"{flag} {out}: is inside the input {iflag} {ipath}; refusing to write into an "
                            "input (choose an output path outside it)")
    for parent in ro.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {out}: {parent} is a file, not a directory")
            break
    if kind == "file" and ro.is_dir():
        raise UserError(f"{flag} {out}: is a directory; expected a file path")
    if kind == "dir" and ro.exists() and not ro.is_dir():
        raise UserError(f"{flag} {out}: exists and is not a directory")
    return outp


def check_distinct_outputs(outputs: Any) -> None:
    """Two outputs of one command must not be the same file (``--out R --report R``). ``outputs``: a
    mapping or (flag, path) pairs; ``None`` paths are skipped."""
    from store_rec.errors import UserError

    seen: dict = {}
    for f, p in (outputs.items() if isinstance(outputs, dict) else outputs):
        if p is None or os.fspath(p) == "":
            continue
        r = _real(p)
        if r in seen:
            raise UserError(f"{f} {p}: is the same path as {seen[r]}; two outputs cannot share a file")
        seen[r] = f"{f} {p}"


# ------------------------------------------------------------------ strict JSON
def json_safe(obj: Any, _path: str = "", _bad: Optional[dict] = None) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``.

    Used by :func:`atomic_write_json` so that every JSON file this code writes is strict JSON (no bare
    ``NaN``, which ``json.loads`` of other languages rejects). The dotted key path of each replaced value
    and what it was are collected into ``_bad`` (see :func:`atomic_write_json`).
    """
    import math

    if _bad is None:
        _bad = {}
    if isinstance(obj, float):
        if not math.isfinite(obj):
            _bad[_path or "<root>"] = repr(obj)
            return None
        return obj
    if isinstance(obj, dict):
        return {k: json_safe(v, f"{_path}.{k}" if _path else str(k), _bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, f"{_path}[{i}]", _bad) for i, v in enumerate(obj)]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return json_safe(obj.item(), _path, _bad)
    return obj


def strict_json_dumps(obj: Any, **dump_kw: Any) -> str:
    """``json.dumps`` that never emits ``NaN``/``Infinity``: non-finite floats become ``null`` and, for a
    mapping, a ``"non_finite"`` entry says which keys were replaced and what they were (the reason)."""
    bad: dict = {}
    clean = json_safe(obj, _bad=bad)
    if bad and isinstance(clean, dict):
        clean = {**clean, "non_finite": {**(clean.get("non_finite") or {}), **bad}}
    dump_kw["allow_nan"] = False
    return json.dumps(clean, **dump_kw)
