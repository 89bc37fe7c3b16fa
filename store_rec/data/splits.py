"""Which rows go to train / valid / test: given splits kept, or a split drawn by a rule.

* **Given splits** (``--splits train=PATH,valid=PATH,test=PATH``; a PATH is a file, a directory or a
  glob, several joined with ``+``): every file's rows go to the split it is named for, row for row,
  in file order. :func:`detect_given_splits` also recognises a source directory whose data files are
  named ``train*`` / ``valid*`` (``val*``, ``dev*``) / ``test*`` (e.g. Criteo's official
  ``train.txt`` / ``dev.txt`` / ``test.txt``): those are kept as given unless a re-split is asked for.
* **leave-last-out** (:func:`leave_last_out_codes`): per user, in time order, the last positive (and
  the rows after the previous positive, e.g. its negatives) is test, the second-to-last valid.
* **time cutoff** (:func:`time_cutoff_codes`): ``t < valid_from`` train, ``valid_from <= t < test_from``
  valid, ``t >= test_from`` test.

Codes are ``int8``: 0 = train, 1 = valid, 2 = test (the order of :data:`store_rec.data.schema.SPLITS`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from store_rec.data.schema import SPLITS
from store_rec.errors import UserError

SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
                 "test": "test"}
CODE = {name: i for i, name in enumerate(SPLITS)}


def parse_splits_arg(text: Optional[str]) -> Optional[Dict[str, str]]:
    """``"train=a.csv,valid=b.csv,test=c/"`` -> ``{"train": "a.csv", ...}``; None stays None.

    Names: train, valid (or val / dev / validation), test; train is required. Errors name the part."""
    if text is None or not str(text).strip():
        return None
    out: Dict[str, str] = {}
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UserError(f"--splits {part!r}: expected NAME=PATH (e.g. train=train.csv,valid=dev.csv,test=test.csv)")
        name, path = (s.strip() for s in part.split("=", 1))
        split = SPLIT_ALIASES.get(name.lower())
        if split is None:
            raise UserError(f"--splits {part!r}: unknown split {name!r} (use train, valid, test)")
        if split in out:
            raise UserError(f"--splits: split {split!r} is given twice")
        if not path:
            raise UserError(f"--splits {part!r}: empty path")
        out[split] = path
    if "train" not in out:
        raise UserError("--splits: a train split is required (train=PATH)")
    return out


def resolve_given_splits(given: Dict[str, str]) -> List[Tuple[Path, str]]:
    """``split -> PATH`` (``+``-joined files / dirs / globs) -> ``[(file, split), ...]`` in split order.

    A file named in two splits is an error (it would be kept twice)."""
    from store_rec.data.streaming import resolve_sources

    out: List[Tuple[Path, str]] = []
    seen: Dict[Path, str] = {}
    for split in SPLITS:
        if split not in given:
            continue
        for f in resolve_sources(given[split].replace("+", ","), what=f"--splits {split}="):
            key = f.resolve()
            if key in seen:
                raise UserError(f"--splits: {f} is in both {seen[key]} and {split}")
            seen[key] = split
            out.append((f, split))
    return out


_NAME_RE = re.compile(r"^(train|valid|validation|val|dev|test)(?:[._-].*)?$", re.IGNORECASE)


def split_of_name(path: Path) -> Optional[str]:
    """``train.txt`` -> train, ``dev.csv.gz`` -> valid, ``test_part1.parquet`` -> test, else None."""
    m = _NAME_RE.match(path.name)
    return SPLIT_ALIASES[m.group(1).lower()] if m else None


def detect_given_splits(files: Sequence[Path]) -> Optional[List[Tuple[Path, str]]]:
    """When the files of a source directory are all named for a split and a train file is among them,
    ``[(file, split)]``; otherwise None (the data is one pool to split by a rule)."""
    if len(files) < 2:
        return None
    named = [(f, split_of_name(f)) for f in files]
    if any(s is None for _, s in named) or not any(s == "train" for _, s in named):
        return None
    given = [(f, str(s)) for f, s in named]
    return sorted(given, key=lambda fs: CODE[fs[1]])


def random_codes(u: np.ndarray, train_frac: float, valid_frac: float) -> np.ndarray:
    """Codes from uniform numbers ``u`` in ``[0, 1)``: ``u < train_frac`` train, then valid, rest test."""
    return np.where(u < train_frac, 0, np.where(u < train_frac + valid_frac, 1, 2)).astype(np.int8)


def time_cutoff_codes(t: np.ndarray, valid_from: float, test_from: float) -> np.ndarray:
    """``t < valid_from`` -> 0, ``< test_from`` -> 1, else 2 (``valid_from <= test_from``)."""
    t = np.asarray(t)
    return np.where(t < valid_from, 0, np.where(t < test_from, 1, 2)).astype(np.int8)


def time_quantile_cutoffs(t: np.ndarray, train_frac: float, valid_frac: float) -> Tuple[float, float]:
    """Cutoffs so that about ``train_frac`` of rows are before ``valid_from`` and ``train_frac + valid_frac``
    before ``test_from`` (equal timestamps never straddle a cutoff)."""
    q = np.quantile(np.asarray(t, np.float64), [train_frac, train_frac + valid_frac], method="higher")
    return float(q[0]), float(max(q[1], q[0]))


def leave_last_out_codes(user: np.ndarray, label: np.ndarray, min_positives: int = 3) -> np.ndarray:
    """Rows sorted by user, then time -> codes. Each row belongs to the *group* of the positive it is or
    precedes (rows after a user's last positive belong to the last one); per user, the last positive's
    group is test, the second-to-last's valid, the rest train. Users with fewer than ``min_positives``
    positives are train only (nothing to hold out)."""
    user = np.asarray(user)
    n = len(user)
    codes = np.zeros(n, np.int8)
    if n == 0:
        return codes
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    pos = (np.asarray(label) > 0.5).astype(np.int64)
    cum = np.cumsum(pos)
    before = np.r_[0, cum][starts][seg]
    upto = cum - before                                   # positives at or before this row (in the user)
    total = np.add.reduceat(pos, starts)[seg]
    # group of a row = index (1-based) of the positive it precedes or is; trailing rows -> last positive
    group = np.minimum(upto + (1 - pos), total)
    ok = total >= min_positives
    codes[ok & (group == total)] = 2
    codes[ok & (group == total - 1)] = 1
    return codes


def files_and_given_splits(source: Optional[str], splits: Optional[Dict[str, str]], resplit: bool, list_files
                           ) -> Tuple[List[Path], Optional[List[str]]]:
    """For the dataset modules that read whole files (avazu, criteo): the input files and, when the
    splits are given (``splits`` / files named train/valid/test), the split of each file (else None).

    ``list_files(path) -> [Path]`` lists a dataset's files under one path (file or directory)."""
    if splits:
        if source:
            raise UserError("give --source or --splits, not both (--splits names every input file)")
        files: List[Path] = []
        names: List[str] = []
        for split in SPLITS:
            for part in splits.get(split, "").split("+") if split in splits else []:
                for f in list_files(part.strip()):
                    files.append(f)
                    names.append(split)
        if len({f.resolve() for f in files}) != len(files):
            raise UserError("--splits: a file is named in two splits")
        return files, (None if resplit else names)
    files = list_files(source)
    detected = None if resplit else detect_given_splits(files)
    if detected:
        return [f for f, _ in detected], [s for _, s in detected]
    return files, None


def codes_from_file_rows(rows_per_file: Sequence[int], split_per_file: Sequence[str]) -> np.ndarray:
    """``int8`` code of every row when file ``i`` (``rows_per_file[i]`` rows, in read order) is split
    ``split_per_file[i]``."""
    return np.repeat(np.array([CODE[s] for s in split_per_file], np.int8), np.asarray(rows_per_file, np.int64))
