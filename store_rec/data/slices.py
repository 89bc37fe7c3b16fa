"""Cold / warm target-item slices of a prepared dataset, for per-slice evaluation.

Definition: an item id (a vocab id of the dataset's item feature) is **warm** when it is the item
of at least one **positive row of the train split**, and **cold** otherwise -- whether it never
occurs in train or occurs there only on negative rows (sampled or explicit). This is the set of
items a pre-trained item embedding (SASRec on ``sequences.parquet``, which holds the train
positives) and hence a SID exists for: a cold item gets the OOV SID, so the cold slice is where SIDs
fall back to their shared OOV tuple (or side information) and raw IDs to an untrained row. The OOV
vocab id 0 is cold.

An evaluation row belongs to the slice of its target item (the item feature's value in that row);
:func:`store_rec.train.metrics.slice_aucs` defines the per-slice AUCs reported next to AUC / GAUC.

The item feature: ``schema.params["item_feature"]`` (written by every preparer that has one:
MovieLens ``movie_id``, interaction logs, tables with ``item_key``), else the feature of
``schema.sequences``; a dataset with neither has no item slices (Avazu, Criteo).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store_rec.data.schema import DatasetSchema
from store_rec.errors import DataError
from store_rec.fileio import PathLike

#: slice names in id order: row slice id 0 = warm, 1 = cold
SLICE_NAMES: Tuple[str, str] = ("warm", "cold")


def item_feature_of(schema: DatasetSchema) -> Optional[str]:
    """The dataset's target-item feature (see the module docstring), or None."""
    name = (schema.params or {}).get("item_feature")
    if name is None and schema.sequences is not None:
        name = schema.sequences.item_feature
    if name is None or name not in schema.sparse_names or schema.feature(name).multi_hot:
        return None
    return str(name)


@dataclass
class ItemSlices:
    """Warm / cold target items of a dataset.

    Attributes:
        feature: the item feature (a single-valued sparse feature of the schema).
        warm: ``bool[vocab_size]``: ``warm[i]`` = item id i has a train positive.
    """

    feature: str
    warm: np.ndarray
    names: Tuple[str, str] = SLICE_NAMES

    @property
    def num_warm(self) -> int:
        return int(self.warm.sum())

    def codes(self, item_ids: np.ndarray) -> np.ndarray:
        """``int64[N]`` slice id of each row (0 warm, 1 cold) for ``item_ids: int64[N]`` (vocab ids)."""
        ids = np.asarray(item_ids, np.int64)
        inside = (ids >= 0) & (ids < len(self.warm))
        if not inside.all():
            bad = int(ids[~inside][0])
            raise DataError(f"item slices: {self.feature!r} id {bad} outside [0, {len(self.warm)})")
        return np.where(self.warm[ids], 0, 1).astype(np.int64)


def item_slices(data_dir: PathLike, schema: Optional[DatasetSchema] = None,
                feature: Optional[str] = None) -> Optional[ItemSlices]:
    """:class:`ItemSlices` of the prepared dataset ``data_dir`` (reads the train split's item and label
    columns: ~12 bytes a row), or None when the dataset has no item feature or no train split."""
    d = Path(data_dir)
    schema = schema or DatasetSchema.load(d)
    feature = feature or item_feature_of(schema)
    if feature is None or "train" not in schema.splits:
        return None
    vocab = schema.feature(feature).vocab_size
    warm = np.zeros(vocab, bool)
    for rel in schema.splits["train"].files:
        path = d / rel
        try:
            t = pq.read_table(path, columns=[feature, schema.label])
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read columns {feature!r} / {schema.label!r}: {e}") from e
        pos = np.asarray(pc.fill_null(pc.greater(t.column(schema.label), 0.5), False).to_numpy(zero_copy_only=False), bool)
        ids = np.asarray(t.column(feature).to_numpy(zero_copy_only=False))[pos].astype(np.int64)
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            raise DataError(f"{path}: feature {feature!r}: id {int(ids[bad][0])} outside [0, {vocab}) (vocab_size "
                            "in schema.json)")
        warm[ids] = True
    warm[0] = False  # the OOV id is never a known item
    return ItemSlices(feature, warm)
