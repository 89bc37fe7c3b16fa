"""Atomic writing of a prepared dataset directory (parquet splits + vocab + schema.json).

Nothing appears at ``out`` until :meth:`DatasetWriter.commit` succeeds: everything is written into a
hidden temporary directory beside ``out`` and renamed at the end, so a failed or interrupted
``prepare`` leaves no half dataset behind. An existing ``out`` must be an empty directory (replaced
atomically by the rename) unless ``overwrite``; a non-empty one is refused, also when it was filled
while preparing. ``overwrite`` replaces only a previous *prepared dataset* (a directory holding the
marker file :data:`MARKER` this writer puts in every dataset, or, for datasets written before the
marker, a ``schema.json`` that loads as a dataset schema); any other directory or file is refused, so
a mistyped ``--out`` never deletes a user's folder::

    with DatasetWriter(out, overwrite=True) as w:
        train = w.split("train", arrow_schema)
        train.write(table_chunk)          # any number of times; row groups of ``row_group_size``
        w.write_vocab("site_id", values)  # values[i] is the raw value of id i (id 0 = OOV)
        w.commit(schema)                  # fills schema.splits, writes schema.json, renames
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from store_rec.data.schema import SPLITS, DatasetSchema, SplitInfo
from store_rec.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_ROW_GROUP_SIZE = 65_536
DEFAULT_FILE_ROWS = 4_000_000
#: file written into every prepared dataset; ``overwrite`` only ever replaces a directory holding it
MARKER = ".store-rec-dataset"


def is_prepared_dataset(path: os.PathLike) -> bool:
    """True for a directory this code wrote as a dataset: it holds :data:`MARKER`, or (written before the
    marker existed) a ``schema.json`` that loads as a :class:`DatasetSchema`."""
    p = Path(path)
    if p.is_symlink() or not p.is_dir():
        return False
    if (p / MARKER).is_file():
        return True
    try:
        DatasetSchema.load(p)
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is not one of ours
        return False


def check_replaceable(out: os.PathLike, overwrite: bool) -> None:
    """UserError unless writing a dataset to ``out`` is allowed: ``out`` does not exist, is an empty
    directory, or (with ``overwrite``) is a previous prepared dataset. Nothing is touched."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; refusing to replace it (--overwrite only "
                        "replaces a dataset prepared by store-rec)")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{out}: output directory exists and is not empty (use --overwrite; it replaces only a "
                        "dataset prepared by store-rec)")
    if not is_prepared_dataset(out):
        raise UserError(f"{out}: not a dataset prepared by store-rec (no {MARKER} or schema.json); "
                        "--overwrite only replaces a previous prepared dataset, never another directory: "
                        "choose another --out or remove it yourself")


class SplitWriter:
    """Appends Arrow tables to ``split/part-NNNNN.parquet`` files, rolling over every ``file_rows``."""

    def __init__(self, root: Path, split: str, schema: pa.Schema, label: Optional[str],
                 row_group_size: int, file_rows: int):
        self.root, self.split, self.schema = root, split, schema
        self.label = label
        self.row_group_size, self.file_rows = row_group_size, file_rows
        (root / split).mkdir(parents=True, exist_ok=True)
        self.files: list = []
        self.rows = 0
        self.positives = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._rows_in_file = 0

    def _open(self) -> None:
        rel = f"{self.split}/part-{len(self.files):05d}.parquet"
        self._writer = pq.ParquetWriter(self.root / rel, self.schema, compression="zstd")
        self.files.append(rel)
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        if self.label is not None:
            import pyarrow.compute as pc

            self.positives += int(pc.sum(pc.greater(table[self.label], 0.5)).as_py() or 0)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._rows_in_file >= self.file_rows:
                self.close()
                self._open()
            n = min(table.num_rows - offset, self.file_rows - self._rows_in_file)
            self._writer.write_table(table.slice(offset, n), row_group_size=self.row_group_size)
            offset += n
            self._rows_in_file += n
            self.rows += n

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def info(self) -> SplitInfo:
        return SplitInfo(files=list(self.files), rows=self.rows, positives=self.positives)


class DatasetWriter:
    """Context manager that builds a dataset in a temp dir and renames it to ``out`` on commit."""

    def __init__(self, out: os.PathLike, overwrite: bool = False,
                 row_group_size: int = DEFAULT_ROW_GROUP_SIZE, file_rows: int = DEFAULT_FILE_ROWS):
        self.out = Path(out)
        check_replaceable(self.out, overwrite)
        self.overwrite = overwrite
        self.row_group_size, self.file_rows = row_group_size, file_rows
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self._splits: Dict[str, SplitWriter] = {}
        self._added: Dict[str, list] = {}  # split -> [SplitInfo] of files written directly under root
        self._committed = False

    @property
    def root(self) -> Path:
        """Temporary directory to write extra files into (paths inside are kept on commit)."""
        return self.tmp

    def split(self, name: str, schema: pa.Schema, label: Optional[str] = None) -> SplitWriter:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {SPLITS}")
        if name not in self._splits:
            self._splits[name] = SplitWriter(self.tmp, name, schema, label, self.row_group_size, self.file_rows)
        return self._splits[name]

    def add_split_files(self, name: str, info: SplitInfo) -> None:
        """Register parquet files of split ``name`` that were written directly under :attr:`root`
        (e.g. by worker processes streaming their own row groups); ``info.files`` are relative paths."""
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {SPLITS}")
        self._added.setdefault(name, []).append(info)

    def write_vocab(self, feature: str, values: Sequence[str]) -> str:
        """Save vocabulary of ``feature``: ``values[i]`` is the raw value mapped to id ``i``.

        ``values[0]`` is the OOV slot (conventionally ``""``). Returns the path relative to the dataset.
        """
        rel = f"vocab/{feature}.parquet"
        (self.tmp / "vocab").mkdir(exist_ok=True)
        table = pa.table({"value": pa.array([str(v) for v in values], pa.string()),
                          "id": pa.array(range(len(values)), pa.int64())})
        pq.write_table(table, self.tmp / rel)
        return rel

    def write_table(self, rel: str, table: pa.Table) -> str:
        """Write an extra parquet file (e.g. ``sequences.parquet``) at ``rel`` inside the dataset."""
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        return rel

    def commit(self, schema: DatasetSchema) -> Path:
        for w in self._splits.values():
            w.close()
        schema.splits = {name: w.info() for name, w in self._splits.items()}
        for name, infos in self._added.items():
            cur = schema.splits.get(name, SplitInfo(files=[], rows=0, positives=0))
            for i in infos:
                cur = SplitInfo(files=cur.files + list(i.files), rows=cur.rows + i.rows,
                                positives=cur.positives + i.positives)
            schema.splits[name] = cur
        schema.splits = {name: schema.splits[name] for name in SPLITS if name in schema.splits}
        schema.validate(str(self.out / "schema.json"))
        schema.save(self.tmp)
        (self.tmp / MARKER).write_text("a dataset prepared by store_rec (store-rec data prepare); "
                                       "--overwrite may replace this directory\n")
        if self.out.exists() and self.overwrite and any(self.out.iterdir()):
            check_replaceable(self.out, True)  # still ours (it may have been swapped while preparing)
            trash = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out, trash)
            os.replace(self.tmp, self.out)
            if trash.is_dir() and not trash.is_symlink():
                shutil.rmtree(trash, ignore_errors=True)
            else:
                trash.unlink()
        elif self.out.exists():
            self._replace_empty_dir()
        else:
            os.replace(self.tmp, self.out)
        self._committed = True
        logger.info("wrote %s (%s)", self.out,
                    ", ".join(f"{k}: {v.rows} rows" for k, v in schema.splits.items()))
        return self.out

    def _replace_empty_dir(self) -> None:
        """``out`` exists without ``overwrite``: allowed only while it is an empty directory.

        POSIX ``rename`` replaces an empty directory atomically and fails if it is not empty, so a
        directory filled by someone else while we prepared is never clobbered."""
        if not self.out.is_dir() or self.out.is_symlink():
            raise UserError(f"{self.out}: was created while preparing and is not a directory; "
                            "refusing to replace it (use --overwrite)")
        try:
            os.replace(self.tmp, self.out)
            return
        except OSError:
            pass
        if any(self.out.iterdir()):
            raise UserError(f"{self.out}: output directory is not empty (files were written to it while "
                            "preparing); refusing to replace it (use --overwrite)")
        os.rmdir(self.out)  # platforms where rename cannot replace a directory
        os.replace(self.tmp, self.out)

    def abort(self) -> None:
        for w in self._splits.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - best effort while cleaning up after a failure
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            self.abort()
