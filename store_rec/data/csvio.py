"""Reading raw delimited files (Avazu CSV, Criteo TSV/CSV) fast, with errors that name file and line.

Parsing uses ``pyarrow.csv`` (multithreaded C++), every column read as a string so that validation
is ours: a row with the wrong number of fields goes through pyarrow's ``invalid_row_handler``
(skipped and counted with ``skip_bad_rows``, otherwise an error); numeric columns are checked with a
vectorised regex. Only when something is wrong is the file re-scanned in Python, to report the exact
1-based line number of the first bad row.

Missing values: only an *empty* field is missing. Text such as ``nan``, ``NA`` or ``NULL`` is data, not a
missing value (pandas exports write ``nan`` for missing cells; a category may well be called ``NA``): in
a categorical column it is a value of its own and a warning gives the column and the count, so a
pandas export is noticed; in a numeric column (label, Criteo dense) it is a non-numeric value and an
error naming file and line (skipped with ``--skip-bad-rows``).

Files that are not UTF-8 are refused with the line of the first invalid byte sequence; a corrupt gzip
file is refused naming the file.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

#: text read as "missing": only the empty field (see the module docstring for why not ``nan``/``NA``)
NULL_VALUES = [""]
#: texts that other tools write for a missing value; counted and reported when they occur as data
NA_LIKE = ("nan", "NaN", "NAN", "-nan", "NA", "N/A", "n/a", "NULL", "null", "None", "#N/A")
DECODE_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)

DATA_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz", ".gz")
NUMERIC_RE = r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"
BLOCK_SIZE = 16 << 20


def natural_key(path: Path):
    """Sort key that orders ``day_2`` before ``day_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_source_files(source: Optional[str], dataset: str, suffixes: Sequence[str] = DATA_SUFFIXES,
                      name_re: Optional[str] = None) -> List[Path]:
    """``source`` is one data file or a directory of them (natural sort by name). Errors name the path."""
    if source is None or str(source) == "":
        raise UserError(f"{dataset}: --source is required (a file or a directory of data files)")
    p = Path(source)
    if not p.exists():
        raise UserError(f"{p}: --source does not exist")
    if p.is_file():
        return [p]
    files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".") and (
        f.name.lower().endswith(tuple(suffixes)) or (name_re is not None and re.match(name_re, f.name)))),
        key=natural_key)
    if not files:
        raise UserError(f"{p}: no data files ({', '.join(suffixes)}) in this directory")
    return files


def open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def _read_error(path: Path, e: BaseException) -> DataError:
    """A DataError naming ``path`` for an error reading it (corrupt gzip, I/O error)."""
    if isinstance(e, (zlib.error, gzip.BadGzipFile, EOFError)) or "zlib" in str(e) or "gzip" in str(e).lower():
        return DataError(f"{path}: corrupt or truncated gzip file ({type(e).__name__}: {e})")
    return DataError(f"{path}: cannot read: {e}")


def first_invalid_utf8_line(path: Path) -> int:
    """1-based line number of the first line that is not valid UTF-8 (-1 if none)."""
    raw = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")
    with raw:
        for lineno, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return -1


def first_line(path: Path) -> str:
    """First non-empty line without its newline; DataError if the file has none."""
    try:
        with open_text(path) as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    return line
    except DECODE_ERRORS as e:
        raise _read_error(path, e) from None
    raise DataError(f"{path}: empty file (no data rows)")


def _data_lines(path: Path, header: bool) -> Iterator[Tuple[int, str]]:
    """(1-based line number, text) of every non-empty data line, as pyarrow sees them."""
    with open_text(path) as f:
        seen_header = not header
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not seen_header:
                seen_header = True
                continue
            yield lineno, line


def line_of_row(path: Path, header: bool, row: int) -> int:
    """1-based line number of data row ``row`` (0-based, as parsed without skips)."""
    try:
        for i, (lineno, _) in enumerate(_data_lines(path, header)):
            if i == row:
                return lineno
    except DECODE_ERRORS:
        pass
    return -1


def _first_bad_field_count(path: Path, header: bool, delimiter: str, expected: int) -> Tuple[int, int, str]:
    """(line number, field count, text) of the first data line without ``expected`` fields."""
    for lineno, line in _data_lines(path, header):
        n = len(next(csv.reader([line], delimiter=delimiter)))
        if n != expected:
            return lineno, n, line
    return -1, -1, ""


@dataclass
class RawTable:
    """One parsed file: all columns as strings (null = empty field)."""

    path: Path
    table: pa.Table
    header: bool
    skipped: int = 0


def read_delimited(path: Path, names: Sequence[str], delimiter: str, header: bool,
                   skip_bad_rows: bool, dict_columns: Sequence[str] = (),
                   format_hint: Optional[str] = None) -> RawTable:
    """Parse ``path`` into a string table with columns ``names``.

    With ``header`` the file's first line must name exactly the columns ``names`` (any order);
    a missing or unknown column is a DataError naming it. ``dict_columns`` are read as
    ``dictionary<int32, string>`` (a fraction of the memory for repetitive categorical columns).
    Rows with the wrong number of fields are skipped and counted (``skip_bad_rows``) or reported with
    their line number; ``format_hint`` (e.g. ``"user<TAB>movie"``) replaces the plain field count
    in that message, for formats whose field count is not what a user reads (``::`` separators).
    """
    names = list(names)
    col_names = names
    if header:
        head = next(csv.reader([first_line(path)], delimiter=delimiter))
        head = [h.strip() for h in head]
        missing = [n for n in names if n not in head]
        unknown = [h for h in head if h not in names]
        if unknown:
            raise DataError(f"{path}: line 1: unknown column(s) {unknown} in the header "
                            f"(expected the columns {names})")
        if missing:
            raise DataError(f"{path}: line 1: missing column(s) {missing} in the header")
        col_names = head
    bad: List[str] = []
    lock = threading.Lock()

    def handler(row) -> str:
        with lock:
            bad.append(row.text)
        return "skip" if skip_bad_rows else "error"

    read_opts = pacsv.ReadOptions(column_names=col_names, skip_rows=1 if header else 0, block_size=BLOCK_SIZE)
    parse_opts = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler, quote_char='"')
    dict_type = pa.dictionary(pa.int32(), pa.string())
    conv_opts = pacsv.ConvertOptions(column_types={n: dict_type if n in dict_columns else pa.string()
                                                   for n in col_names},
                                     null_values=NULL_VALUES, strings_can_be_null=True,
                                     quoted_strings_can_be_null=True)
    try:
        table = pacsv.read_csv(str(path), read_options=read_opts, parse_options=parse_opts,
                               convert_options=conv_opts)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(f"{path}: empty file (no data rows)") from None
        if "invalid UTF8" in str(e) or "invalid utf8" in str(e).lower():
            try:
                lineno = first_invalid_utf8_line(path)
            except DECODE_ERRORS as e2:
                raise _read_error(path, e2) from None
            where = f"line {lineno}: " if lineno > 0 else ""
            raise DataError(f"{path}: {where}not valid UTF-8 text (re-encode the file as UTF-8)") from None
        if bad and not skip_bad_rows:
            lineno, n, text = _first_bad_field_count(path, header, delimiter, len(col_names))
            where = f"line {lineno}" if lineno > 0 else "a row"
            what = (f"expected {format_hint}, got {_shorten(text)!r}" if format_hint
                    else f"expected {len(col_names)} fields, got {n}")
            raise DataError(f"{path}: {where}: {what} (use --skip-bad-rows to skip malformed rows)") from None
        raise DataError(f"{path}: cannot parse: {e}") from None
    except DECODE_ERRORS as e:
        raise _read_error(path, e) from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    if bad:
        logger.warning("%s: skipped %d malformed row(s)", path, len(bad))
    table = table.select(names)
    warn_na_like(path, table)
    return RawTable(path, table, header, skipped=len(bad))


def warn_na_like(path: Path, table: pa.Table) -> Dict[str, int]:
    """Count values such as ``nan`` / ``NA`` / ``NULL`` per column and log a warning naming the column and
    the count: they are kept as data (only an empty field is missing), which is rarely what a pandas
    export meant. Returns ``{column: count}`` of the columns that have any."""
    found: Dict[str, int] = {}
    na = pa.array(NA_LIKE, pa.string())
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, pa.string())
        if not pa.types.is_string(col.type):
            continue
        n = int(pc.sum(pc.is_in(col, value_set=na)).as_py() or 0)
        if n:
            found[name] = n
    for name, n in found.items():
        logger.warning("%s: column %r: %d value(s) such as 'nan'/'NA'/'NULL' are read as text, not as missing "
                       "(only an empty field is missing); clean the file if they mean missing", path, name, n)
    return found


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def numeric_bad_mask(col: pa.ChunkedArray) -> np.ndarray:
    """``bool[N]``: True where a non-null value is not a finite decimal number."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    ok = pc.fill_null(pc.match_substring_regex(col, NUMERIC_RE), True)
    return ~np.asarray(ok.to_numpy(zero_copy_only=False), dtype=bool)


def drop_or_raise(raw: RawTable, bad: np.ndarray, skip_bad_rows: bool, what) -> RawTable:
    """Rows flagged in ``bad`` are removed (``skip_bad_rows``) or the first one is reported.

    ``what(i) -> str`` describes why row ``i`` is bad (column and value).
    """
    if not bad.any():
        return raw
    if not skip_bad_rows:
        i = int(np.flatnonzero(bad)[0])
        lineno = line_of_row(raw.path, raw.header, i) if raw.skipped == 0 else -1
        where = f"line {lineno}" if lineno > 0 else f"data row {i + 1}"
        raise DataError(f"{raw.path}: {where}: {what(i)} (use --skip-bad-rows to skip malformed rows)")
    n = int(bad.sum())
    logger.warning("%s: skipped %d row(s) with invalid values", raw.path, n)
    keep = pa.array(~bad)
    return RawTable(raw.path, raw.table.filter(keep), raw.header, raw.skipped + n)


def check_label(raw: RawTable, column: str, skip_bad_rows: bool) -> RawTable:
    """The label column must be 0 or 1 on every row (``"0"``, ``"1"``, ``"1.0"`` ...)."""
    col = raw.table.column(column).combine_chunks()
    bad = numeric_bad_mask(col) | np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    vals = pc.cast(pc.if_else(pa.array(bad), "0", col), pa.float64()).to_numpy(zero_copy_only=False)
    bad |= ~np.isin(vals, (0.0, 1.0))
    return drop_or_raise(raw, bad, skip_bad_rows,
                         lambda i: f"column {column!r}: label must be 0 or 1, got {col[i].as_py()!r}")


def check_numeric(raw: RawTable, columns: Sequence[str], skip_bad_rows: bool) -> RawTable:
    """Every non-empty value of ``columns`` must be a finite number."""
    for c in columns:
        col = raw.table.column(c)
        bad = numeric_bad_mask(col)
        raw = drop_or_raise(raw, bad, skip_bad_rows,
                            lambda i, c=c, col=col: f"column {c!r}: non-numeric value {col[i].as_py()!r}")
    return raw
