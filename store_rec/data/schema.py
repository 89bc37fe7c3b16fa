"""The prepared-dataset contract: ``schema.json`` beside the parquet splits.

A prepared dataset is a directory::

    DIR/
      schema.json              # this module's DatasetSchema, serialised
      train/part-00000.parquet # one or more parquet files per split
      valid/part-00000.parquet
      test/part-00000.parquet
      vocab/<feature>.parquet  # raw value (string) -> id (int64), one file per vocab feature
      sequences.parquet        # optional: user key -> item id list (for item-embedding pre-training)

Column roles (``FeatureRole``):

* ``label``   – the binary target, float32 column (0.0 / 1.0).
* ``dense``   – float32 column, already transformed (e.g. log1p) and finite.
* ``id``      – high-cardinality sparse ID feature (item, site, app ...) that STORE tokenizes into
  semantic IDs. int64 column (single-valued) or list<int64> (multi-hot).
* ``static``  – low-cardinality sparse feature; ``group`` names its semantic group, which the
  orthogonal-rotation layers fuse with one MLP per group. int64 or list<int64>.
* ``sid``     – a semantic-ID feature attached from a SID table (``sid_0`` .. ``sid_{K-1}``).
* ``history``– the user's most recent positive interactions strictly before the row's time, as a
  ``list<int64>`` (multi-hot) column of at most ``max_len`` ids, oldest first. ``history_of`` names
  the sparse feature whose vocabulary (and embedding semantics) the ids use: the item list
  ``hist_<item>`` has ``history_of=<item feature>``, a side list ``hist_<feature>`` mirrors a static
  feature, and the recency list ``hist_gap`` (own vocabulary) has ``history_of=None``. All history
  columns of a dataset are aligned (equal list length per row); :mod:`store_rec.data.history` builds
  them and ``params["history"]`` describes them.
* ``user_key``– int64 column identifying the user for GAUC. It may also be a sparse feature.

Id conventions for every sparse feature with a vocabulary: id ``0`` is the OOV / unknown id (values
under the min-count threshold, values unseen at fit time, missing values), known values get ids
``1 .. vocab_size - 1``. ``vocab_size`` therefore counts the OOV row, and an embedding table of
``vocab_size`` rows covers every id. Hashed features (criteo with ``hash_buckets``) use ids
``0 .. vocab_size - 1`` directly and have no vocab file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from store_rec.errors import SchemaError  # noqa: F401  (defined with the other user errors; re-exported here)

SCHEMA_FILE = "schema.json"
SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
OOV_ID = 0

LABEL = "label"
DENSE = "dense"
ID = "id"
STATIC = "static"
SID = "sid"
HISTORY = "history"
SPARSE_ROLES = (ID, STATIC, SID, HISTORY)


@dataclass
class SparseFeature:
    """One sparse (categorical) feature column.

    Attributes:
        name: column name in the parquet files and key in the KeyedJaggedTensor.
        role: ``"id"`` (high-cardinality, tokenized), ``"static"`` (low-cardinality, rotated),
            ``"sid"`` (semantic ID attached from a SID table) or ``"history"`` (the user's recent
            positives, a ``list<int64>`` oldest first; see :mod:`store_rec.data.history`).
        vocab_size: number of embedding rows needed: every id in the column is in ``[0, vocab_size)``.
        group: semantic group for ``static`` features (rotation layers); ``None`` otherwise.
        multi_hot: ``True`` when the column is ``list<int64>`` (jagged), ``False`` for ``int64``.
        max_len: longest list seen for multi-hot features (1 for single-valued).
        vocab_file: path of the vocab parquet relative to the dataset dir, or ``None`` (hashed).
        history_of: ``history`` features only: the sparse feature whose ids (vocabulary) the list
            holds (e.g. ``movie_id`` for ``hist_movie_id``), or ``None`` for a list with its own
            vocabulary (the recency list ``hist_gap``). Absent from schema.json files written before
            the history role (loads as ``None``).
    """

    name: str
    role: str
    vocab_size: int
    group: Optional[str] = None
    multi_hot: bool = False
    max_len: int = 1
    vocab_file: Optional[str] = None
    history_of: Optional[str] = None


@dataclass
class SplitInfo:
    files: List[str]
    rows: int
    positives: int = 0


@dataclass
class SequenceInfo:
    """Per-user item sequences for item-embedding pre-training (SASRec).

    ``file`` is a parquet file with columns ``user`` (int64) and ``items`` (list<int64>), items are
    ids of ``item_feature``'s vocabulary in interaction order (``order`` says which order).
    ``num_items`` counts the items, ids ``1 .. num_items`` (the OOV id 0 is not counted):
    ``num_items + 1 == vocab_size`` of ``item_feature``.
    """

    file: str
    item_feature: str
    num_items: int
    num_users: int
    order: str = "file"


@dataclass
class DatasetSchema:
    """Everything a consumer needs to read a prepared dataset without looking at its source."""

    dataset: str
    label: str
    dense: List[str] = field(default_factory=list)
    sparse: List[SparseFeature] = field(default_factory=list)
    user_key: Optional[str] = None
    splits: Dict[str, SplitInfo] = field(default_factory=dict)
    sequences: Optional[SequenceInfo] = None
    split_method: str = ""
    source: str = ""
    params: Dict[str, object] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ queries
    @property
    def sparse_names(self) -> List[str]:
        return [f.name for f in self.sparse]

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(
            f"unknown sparse feature {name!r}; the schema has: {', '.join(self.sparse_names)}"
        )

    def features_with_role(self, role: str) -> List[SparseFeature]:
        return [f for f in self.sparse if f.role == role]

    @property
    def history(self) -> List[SparseFeature]:
        """The ``history`` features (aligned lists, oldest first), in schema order."""
        return self.features_with_role(HISTORY)

    @property
    def groups(self) -> Dict[str, List[str]]:
        """Static semantic groups in first-appearance order: group -> feature names."""
        out: Dict[str, List[str]] = {}
        for f in self.sparse:
            if f.role == STATIC:
                out.setdefault(f.group or "default", []).append(f.name)
        return out

    def columns(self) -> List[str]:
        """Columns every split file must contain."""
        cols = [self.label, *self.dense, *self.sparse_names]
        if self.user_key and self.user_key not in cols:
            cols.append(self.user_key)
        return cols

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = SCHEMA_FILE) -> "DatasetSchema":
        try:
            sparse = [SparseFeature(**s) for s in d.get("sparse", [])]
            splits = {k: SplitInfo(**v) for k, v in d.get("splits", {}).items()}
            seq = SequenceInfo(**d["sequences"]) if d.get("sequences") else None
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(d) - known)
            if unknown:
                raise SchemaError(f"{where}: unknown key(s) {unknown}")
            rest = {k: v for k, v in d.items() if k not in ("sparse", "splits", "sequences")}
            schema = cls(sparse=sparse, splits=splits, sequences=seq, **rest)
        except TypeError as e:
            raise SchemaError(f"{where}: malformed schema: {e}") from e
        except KeyError as e:
            raise SchemaError(f"{where}: missing key {e}") from e
        schema.validate(where)
        return schema

    def validate(self, where: str = SCHEMA_FILE) -> None:
        if self.version != SCHEMA_VERSION:
            raise SchemaError(f"{where}: version {self.version} is not supported (expected {SCHEMA_VERSION})")
        names = [self.label, *self.dense, *self.sparse_names]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"{where}: duplicate column name(s) {dup}")
        for i, f in enumerate(self.sparse):
            key = f"{where}: sparse[{i}] ({f.name})"
            if f.role not in SPARSE_ROLES:
                raise SchemaError(f"{key}: role {f.role!r} is not one of {SPARSE_ROLES}")
            if not isinstance(f.vocab_size, int) or f.vocab_size < 1:
                raise SchemaError(f"{key}: vocab_size must be a positive integer, got {f.vocab_size!r}")
            if f.role == STATIC and not f.group:
                raise SchemaError(f"{key}: static features need a group")
            if f.role == HISTORY and not f.multi_hot:
                raise SchemaError(f"{key}: history features are list<int64> columns (multi_hot: true)")
            if f.history_of is not None:
                if f.role != HISTORY:
                    raise SchemaError(f"{key}: history_of is only for role {HISTORY!r} features, not {f.role!r}")
                if f.history_of not in self.sparse_names:
                    raise SchemaError(f"{key}: history_of {f.history_of!r} is not a sparse feature of this schema")
                if self.feature(f.history_of).vocab_size != f.vocab_size:
                    raise SchemaError(f"{key}: vocab_size {f.vocab_size} differs from that of {f.history_of!r} "
                                      f"({self.feature(f.history_of).vocab_size}), whose ids it holds")
        for s in self.splits:
            if s not in SPLITS:
                raise SchemaError(f"{where}: unknown split {s!r}; expected {SPLITS}")

    def save(self, directory: os.PathLike) -> Path:
        """Write ``directory/schema.json`` atomically (temp file + rename)."""
        from store_rec.fileio import atomic_write_json

        return atomic_write_json(Path(directory) / SCHEMA_FILE, self.to_dict(), indent=2)

    @classmethod
    def load(cls, directory: os.PathLike) -> "DatasetSchema":
        """Read ``directory/schema.json``; errors name the file."""
        d = Path(directory)
        path = d / SCHEMA_FILE if d.is_dir() or not d.suffix else d
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no prepared dataset here (run `store-rec data prepare ... --out {d}`)"
            )
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SchemaError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise SchemaError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw, where=str(path))
