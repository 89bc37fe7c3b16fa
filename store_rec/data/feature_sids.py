"""Per-feature SID tables (``data.sid_tables``): several tokenized id features, each with its own table.

``data.sid_table`` attaches one table as ``sid_0 .. sid_{K-1}`` (the target item's SIDs). Datasets
without user sequences (Avazu, Criteo) tokenize *several* id features instead, each from its own
item embeddings (e.g. a first-stage DLRM's ``site_id`` / ``app_id`` tables read back from its
checkpoint: ``store-rec embeddings export``), so ``data.sid_tables`` maps a feature to its table::

    data:
      sid_tables: {site_id: SIDS_site.parquet, app_id: SIDS_app.parquet}

Feature ``F``'s table (the :mod:`store_rec.data.sid_table` format) is attached as the keys
``F_sid_0 .. F_sid_{K_F - 1}`` (role ``sid``, ``vocab_size = C_F + 1``; ids absent from the table get
the OOV SID ``C_F``), appended to the schema after ``data.sid_table``'s ``sid_*`` keys in the order of
the mapping. The schema records the mapping as ``params["sid_tables"] = {F: {"path", "keys",
"codebook_size", "method"}}``: :func:`store_rec.models.tables.model_features` drops the raw ids of
those features (their SIDs replace them, as ``model.item_feature``'s do) in every model.

Validation (:class:`UserError` naming ``data.sid_tables.<feature>`` and the file): the feature must be
a single-valued ``id`` feature of the dataset and not the feature ``data.sid_table`` already
tokenizes; the table's ``item_feature`` metadata (when it names one) must be that feature; its
``num_sids`` metadata must equal its ``sid_k`` columns (K) and every code must lie in ``[0, C)``;
every item id must lie in the feature's vocabulary; no key may clash with a dataset feature.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from store_rec.data.schema import ID, SID, DatasetSchema, SparseFeature
from store_rec.data.sid_table import read_sid_table, sid_codebook_size, sid_lookup
from store_rec.errors import UserError
from store_rec.fileio import PathLike

logger = logging.getLogger(__name__)

KEY = "data.sid_tables"


def feature_sid_keys(feature: str, num_sids: int) -> List[str]:
    """The KJT keys of feature ``feature``'s SIDs: ``{feature}_sid_0 .. {feature}_sid_{K-1}``."""
    return [f"{feature}_sid_{k}" for k in range(num_sids)]


@dataclass
class FeatureSids:
    """One tokenized feature: its table read and checked, and the lookup ``lut int64[K, vocab]``
    (row ``k`` = ``sid_k`` of every id of the feature; ids absent from the table -> OOV SID ``C``)."""

    feature: str
    path: Path
    keys: List[str]
    codebook_size: int
    method: Optional[str]
    lut: np.ndarray
    oov_items: int  # ids 1 .. vocab-1 without a row (they get the OOV SID)

    def codes(self, ids: np.ndarray) -> np.ndarray:
        """``ids int64[n]`` (already in ``[0, vocab)``) -> ``int64[K, n]``."""
        return self.lut[:, ids]


def load_feature_sids(schema: DatasetSchema, tables: Mapping[str, PathLike], *,
                      primary_feature: Optional[str] = None) -> List[FeatureSids]:
    """Read and validate every table of ``data.sid_tables`` against ``schema`` (the dataset's own,
    without SID features). ``primary_feature``: the feature ``data.sid_table`` tokenizes (refused here)."""
    out = []
    for feature, path in tables.items():
        where = f"{KEY}.{feature}"
        if feature not in schema.sparse_names:
            raise UserError(f"{where}: {feature!r} is not a sparse feature of dataset {schema.dataset!r} "
                            f"(id features: {', '.join(f.name for f in schema.features_with_role(ID)) or 'none'})")
        f = schema.feature(feature)
        if f.role != ID or f.multi_hot:
            raise UserError(f"{where}: {feature!r} is a {'multi-hot ' if f.multi_hot else ''}{f.role!r} feature; only "
                            "single-valued 'id' features are tokenized (their SIDs replace the raw id)")
        if primary_feature is not None and feature == primary_feature:
            raise UserError(f"{where}: {feature!r} is already tokenized by data.sid_table (keys sid_*); give each "
                            "feature one SID table")
        if not path:
            raise UserError(f"{where}: no SID table path")
        out.append(_read_one(where, feature, Path(path), f.vocab_size))
    return out


def _read_one(where: str, feature: str, path: Path, vocab: int) -> FeatureSids:
    try:
        table, meta, cols = read_sid_table(path)
    except FileNotFoundError:
        raise UserError(f"{where}: {path}: SID table not found (write one with `store-rec tokenize`)") from None
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    named = meta.get("item_feature")
    if named not in (None, "item", feature):
        raise UserError(f"{where}: {path} holds the SIDs of feature {named!r} (its item_feature metadata), not "
                        f"{feature!r}")
    k = len(cols)
    if "num_sids" in meta and meta["num_sids"] != k:
        raise UserError(f"{where}: {path}: metadata num_sids={meta['num_sids']!r} but the table has {k} sid_k columns "
                        f"({', '.join(cols)})")
    try:
        c = sid_codebook_size(path, meta, table, cols)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    try:
        lut, missing = sid_lookup(path, table, cols, c, vocab, feature)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    oov = int(len(missing))
    if oov:
        logger.info("%s: %d of %d %r ids have no row in %s; they get the OOV SID %d", where, oov, vocab - 1, feature, path, c)
    return FeatureSids(feature, path, feature_sid_keys(feature, k), c, meta.get("method"), lut, oov)


def append_feature_sids(schema: DatasetSchema, fsids: List[FeatureSids]) -> DatasetSchema:
    """``schema`` with every table's keys appended (role ``sid``, vocab ``C + 1``) and
    ``params["sid_tables"]`` recording which features they tokenize."""
    out = copy.deepcopy(schema)
    rec: Dict[str, Any] = dict(out.params.get("sid_tables") or {})  # type: ignore[call-overload]
    for fs in fsids:
        clash = [n for n in fs.keys if n in out.sparse_names]
        if clash:
            raise UserError(f"{KEY}.{fs.feature}: SID key(s) {clash} already exist in the dataset schema")
        out.sparse += [SparseFeature(name=n, role=SID, vocab_size=fs.codebook_size + 1) for n in fs.keys]
        rec[fs.feature] = {"path": str(fs.path), "keys": list(fs.keys), "codebook_size": fs.codebook_size,
                           "method": fs.method}
    out.params = {**out.params, "sid_tables": rec}
    return out


def tokenized_features(schema: DatasetSchema) -> Dict[str, List[str]]:
    """``{feature: its SID keys}`` of the ``data.sid_tables`` attached to ``schema`` (``{}`` when none)."""
    rec: Dict[str, Any] = schema.params.get("sid_tables") or {}  # type: ignore[assignment]
    return {f: list(v["keys"]) for f, v in rec.items()}


def schema_with_feature_sids(schema: DatasetSchema, tables: Mapping[str, PathLike],
                             primary_feature: Optional[str] = None) -> DatasetSchema:
    """What the loader yields with ``data.sid_tables`` attached (``store-rec plan`` uses the schema only)."""
    if not tables:
        return schema
    return append_feature_sids(schema, load_feature_sids(schema, tables, primary_feature=primary_feature))
