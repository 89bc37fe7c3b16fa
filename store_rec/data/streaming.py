"""Bounded-memory reading of raw tables: CSV / TSV (optionally ``.gz``) and parquet, chunk by chunk.

``iter_chunks(path, ...)`` yields ``(first_row, pa.Table)`` pieces of about ``block_size`` bytes
(CSV: ``pyarrow.csv.open_csv``, a streaming reader; parquet: ``ParquetFile.iter_batches``), so a
file of any size is read with memory proportional to one block, never to the file. Every column is
read as a string (CSV) so that validation is ours and errors name file and line.

``row_uniform(seed, file_index, rows)`` gives each row a uniform number in ``[0, 1)`` from a
counter-based hash (splitmix64) of ``(seed, file index, row index in the file)``: a random split
drawn from it is the same whatever the chunking and the number of worker processes.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from store_rec.data.csvio import _shorten, first_line, natural_key
from store_rec.errors import DataError, UserError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
BLOCK_SIZE = 8 << 20
PARQUET_BATCH_ROWS = 262_144


def resolve_sources(source: Optional[str], what: str = "--source") -> List[Path]:
    """``source``: a file, a directory (its CSV/TSV/parquet files, natural name order) or a glob
    pattern; several may be given separated by commas. Errors name the path."""
    if source is None or str(source).strip() == "":
        raise UserError(f"{what} is required (a file, a directory or a glob of CSV / TSV / parquet files)")
    out: List[Path] = []
    for part in str(source).split(","):
        part = part.strip()
        if not part:
            continue
        if any(c in part for c in "*?["):
            hits = sorted((Path(p) for p in glob.glob(part) if Path(p).is_file()), key=natural_key)
            if not hits:
                raise UserError(f"{what} {part}: the pattern matches no file")
            out += hits
            continue
        p = Path(part)
        if not p.exists():
            raise UserError(f"{what} {p}: does not exist")
        if p.is_file():
            out.append(p)
            continue
        files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.name.lower().endswith(TEXT_SUFFIXES + PARQUET_SUFFIXES)), key=natural_key)
        if not files:
            raise UserError(f"{what} {p}: no CSV / TSV / parquet files in this directory")
        out += files
    if not out:
        raise UserError(f"{what}: no input files")
    return out


def file_format(path: Path, fmt: str = "auto") -> str:
    """``csv`` / ``tsv`` / ``parquet`` of ``path`` (``fmt`` wins unless ``auto``)."""
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith((".tsv", ".tsv.gz")):
        return "tsv"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    line = first_line(path)
    return "tsv" if "\t" in line else "csv"


def header_names(path: Path, delimiter: str) -> List[str]:
    import csv

    return [h.strip() for h in next(csv.reader([first_line(path)], delimiter=delimiter))]


def iter_chunks(path: Path, *, fmt: str, columns: Sequence[str], header: bool, delimiter: Optional[str] = None,
                skip_bad_rows: bool = False, block_size: int = BLOCK_SIZE,
                bad_rows: Optional[list] = None) -> Iterator[Tuple[int, pa.Table]]:
    """Yield ``(index of the first row in the file, table)`` chunks with the columns ``columns``.

    CSV / TSV: every column is a string (null = empty field). With ``header`` the file's first line
    must name every column of ``columns`` (extra columns are an error naming them: each column of a
    file needs a role, ``drop`` included); without, the fields are ``columns`` in order. A row with
    the wrong number of fields is an error naming file and line, or (``skip_bad_rows``) skipped and
    appended to ``bad_rows``. Parquet: the columns are read with their own types.
    """
    columns = list(columns)
    if fmt == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: cannot read parquet: {e}") from None
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        unknown = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing} (the file has {names})")
        if unknown:
            raise DataError(f"{path}: column(s) {unknown} have no role in the schema (give them role: drop)")
        start = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            yield start, pa.Table.from_batches([batch])
            start += batch.num_rows
        return
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    col_names = columns
    if header:
        head = header_names(path, delim)
        missing = [c for c in columns if c not in head]
        unknown = [h for h in head if h not in columns]
        if unknown:
            raise DataError(f"{path}: line 1: column(s) {unknown} in the header have no role in the schema "
                            "(give them role: drop)")
        if missing:
            raise DataError(f"{path}: line 1: missing column(s) {missing} in the header")
        col_names = head
    bad: List[str] = [] if bad_rows is None else bad_rows
    n_bad_before = len(bad)

    def handler(row) -> str:
        bad.append(row.text)
        return "skip" if skip_bad_rows else "error"

    read_opts = pacsv.ReadOptions(column_names=col_names, skip_rows=1 if header else 0, block_size=block_size,
                                  use_threads=True)
    parse_opts = pacsv.ParseOptions(delimiter=delim, invalid_row_handler=handler, quote_char='"')
    conv_opts = pacsv.ConvertOptions(column_types={n: pa.string() for n in col_names}, strings_can_be_null=True,
                                     quoted_strings_can_be_null=True)
    start = 0
    try:
        reader = pacsv.open_csv(str(path), read_options=read_opts, parse_options=parse_opts,
                                convert_options=conv_opts)
        for batch in reader:
            if batch.num_rows == 0:
                continue
            yield start, pa.Table.from_batches([batch]).select(columns)
            start += batch.num_rows
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise DataError(f"{path}: empty file (no data rows)") from None
        if len(bad) > n_bad_before and not skip_bad_rows:
            raise DataError(f"{path}: near data row {start + 1}: expected {len(col_names)} fields "
                            f"({delim!r}-separated), got {_shorten(bad[n_bad_before])!r} "
                            "(use --skip-bad-rows to skip malformed rows)") from None
        raise DataError(f"{path}: cannot parse: {e}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over ``uint64`` (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def row_uniform(seed: int, file_index: int, first_row: int, n: int) -> np.ndarray:
    """``float64[n]`` in ``[0, 1)`` for rows ``first_row .. first_row + n - 1`` of file ``file_index``."""
    with np.errstate(over="ignore"):
        base = splitmix64(np.array([seed & 0xFFFFFFFF, file_index], np.uint64)).sum(dtype=np.uint64)
        z = splitmix64(np.arange(first_row, first_row + n, dtype=np.uint64) ^ base)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
