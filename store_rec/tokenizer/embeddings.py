"""Item-embedding files: ours (parquet) and foreign ones (``.npy`` + id file), validated.

Parquet layout (``EMB.parquet``, written by ``store-rec pretrain``): columns ``item`` (int64) and
``embedding`` (``fixed_size_list<float32>[d]``); key-value metadata ``store_rec`` = JSON
``{"dim", "item_feature", "source", "num_items", ...}``.

Foreign layout: ``EMB.npy`` holding ``float[N, d]`` plus an id file (``.npy`` int ``[N]`` or text with
one integer id per line) naming the item of each row. Without an id file :func:`load_embeddings` numbers
rows ``first_id, first_id + 1, ...`` (default 0). Id ``0`` is the OOV id of every vocabulary, so the
CLI-level :func:`load_item_embeddings` refuses a ``.npy`` without ids unless positional ids are asked
for explicitly, and refuses id 0 / negative ids.

Untrained rows: an exporter that writes every vocabulary id (``store-rec pretrain --data`` writes ids
``1 .. N`` even when some never occur in a sequence) marks the rows whose vector was never trained
with an optional bool column ``trained`` (:func:`save_embeddings` ``trained=``; read it with
:func:`load_trained_mask`). Those vectors are their random initialisation: tokenized, they collapse
onto a few shared SID tuples (measured: 1,150 of 1,164 unseen items on one tuple), so
``store-rec tokenize`` leaves them out of the tokenizer's training data and of the SID table, and
the loader gives them the OOV SID.

Validation (each raises :class:`store_rec.errors.DataError` naming the file and the offending
row / id): wrong shapes, dimension mismatch, duplicate ids, missing ids, NaN/inf values.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from store_rec.errors import DataError
from store_rec.fileio import atomic_path

logger = logging.getLogger(__name__)

META_KEY = b"store_rec"
#: largest |value| accepted: squared (1e30) and summed over a batch it stays finite in float32 (max 3.4e38)
MAX_ABS_VALUE = 1e15
PathLike = Union[str, os.PathLike]


def _validate(where: str, ids: np.ndarray, emb: np.ndarray, expected_dim: Optional[int],
              expected_ids: Optional[Union[int, Sequence[int], np.ndarray]]) -> None:
    if emb.ndim != 2:
        raise DataError(f"{where}: embeddings must be 2-D [N, d], got shape {tuple(emb.shape)}")
    if ids.ndim != 1:
        raise DataError(f"{where}: ids must be 1-D [N], got shape {tuple(ids.shape)}")
    if len(ids) != len(emb):
        raise DataError(f"{where}: {len(ids)} ids for {len(emb)} embedding rows")
    if len(emb) == 0 or emb.shape[1] == 0:
        raise DataError(f"{where}: empty embedding table, shape {tuple(emb.shape)}")
    if expected_dim is not None and emb.shape[1] != expected_dim:
        raise DataError(f"{where}: embedding dimension {emb.shape[1]} != expected {expected_dim}")
    bad_rows = np.nonzero(~np.isfinite(emb).all(axis=1))[0]
    if bad_rows.size:
        r = int(bad_rows[0])
        kind = "NaN" if np.isnan(emb[r]).any() else "inf"
        raise DataError(f"{where}: {kind} in embedding of id {int(ids[r])} (row {r}); "
                        f"{bad_rows.size} non-finite rows in total")
    big = np.abs(emb).max(axis=1) > MAX_ABS_VALUE
    if big.any():
        r = int(np.argmax(big))
        raise DataError(f"{where}: embedding of id {int(ids[r])} (row {r}) has a value of magnitude "
                        f"{float(np.abs(emb[r]).max()):.3g} > {MAX_ABS_VALUE:.0e}: its squares overflow float32 "
                        f"arithmetic; {int(big.sum())} such rows in total (rescale the table, e.g. L2-normalise "
                        "each row)")
    uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[np.argmax(counts > 1)])
        rows = np.nonzero(ids == dup)[0][:5].tolist()
        raise DataError(f"{where}: duplicate id {dup} (rows {rows}); "
                        f"{int((counts > 1).sum())} ids appear more than once")
    if expected_ids is not None:
        if np.isscalar(expected_ids):
            # a vocabulary size: every id 1 .. vocab_size - 1 must be present (0 = OOV may be absent)
            vocab = int(expected_ids)  # type: ignore[arg-type]
            out = ids[(ids < 0) | (ids >= vocab)]
            if out.size:
                raise DataError(f"{where}: id {int(out[0])} outside the vocabulary [0, {vocab})")
            want = np.arange(1, vocab, dtype=np.int64)
        else:
            want = np.unique(np.asarray(expected_ids, dtype=np.int64))
        missing = np.setdiff1d(want, uniq, assume_unique=True)
        if missing.size:
            raise DataError(f"{where}: {missing.size} expected ids have no embedding, e.g. "
                            f"{missing[:5].tolist()}")


def _read_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"id file {path} does not exist")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
        if not np.issubdtype(ids.dtype, np.integer):
            raise DataError(f"{path}: ids must be integers, got dtype {ids.dtype}")
        return ids.astype(np.int64)
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {n}: not valid UTF-8 text") from None
            s = line.strip()
            if not s:
                continue
            try:
                out.append(int(s))
            except ValueError:
                raise DataError(f"{path}: line {n}: {s!r} is not an integer id") from None
    return np.asarray(out, dtype=np.int64)


def _parquet_error(path: PathLike, e: BaseException) -> DataError:
    return DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The ``store_rec`` JSON metadata of an embedding parquet (``{}`` when absent); errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from None
    if META_KEY not in meta:
        return {}
    try:
        out = json.loads(meta[META_KEY])
    except ValueError as e:
        raise DataError(f"{path}: metadata {META_KEY.decode()!r} is not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise DataError(f"{path}: metadata {META_KEY.decode()!r} must be a JSON object, got {type(out).__name__}")
    return out


def load_embeddings(path: PathLike, *, ids_path: Optional[PathLike] = None, expected_dim: Optional[int] = None,
                    expected_ids: Optional[Union[int, Sequence[int], np.ndarray]] = None, first_id: int = 0
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """Read and validate an item-embedding table.

    Args:
        path: ``.parquet`` (our layout) or ``.npy`` (``float[N, d]``).
        ids_path: for ``.npy`` only: ids of the rows (``.npy`` or text, one id per line); default
            ``first_id + arange(N)``.
        expected_dim: required embedding width ``d``.
        expected_ids: either the vocabulary size (int: every id ``1 .. size-1`` must be present and
            no id may fall outside ``[0, size)``) or the collection of ids that must be present.

    Returns:
        ``(ids np.int64[N], emb np.float32[N, d])`` in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    where = str(path)
    if path.suffix == ".npy":
        try:
            emb = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npy array ({e})") from None
        if not np.issubdtype(emb.dtype, np.floating):
            raise DataError(f"{path}: embeddings must be floating point, got dtype {emb.dtype}")
        if ids_path is not None:
            ids = _read_ids(Path(ids_path))
            where = f"{path} (ids from {ids_path})"
        else:
            ids = np.arange(len(emb) if emb.ndim else 0, dtype=np.int64) + int(first_id)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        if ids_path is not None:
            raise DataError(f"{path}: an id file is only used with .npy embeddings (parquet has an 'item' column)")
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as e:
            raise _parquet_error(path, e) from None
        if table.num_rows == 0:
            raise DataError(f"{path}: empty embedding table (0 rows)")
        for col in ("item", "embedding"):
            if col not in table.column_names:
                raise DataError(f"{path}: missing column {col!r} (has {table.column_names})")
        ids = table.column("item").to_numpy().astype(np.int64)
        col = table.column("embedding").combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            d = col.type.list_size
            emb = col.values.to_numpy(zero_copy_only=False).reshape(-1, d)
        elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            lens = np.diff(col.offsets.to_numpy())
            if len(lens) and (lens != lens[0]).any():
                r = int(np.argmax(lens != lens[0]))
                raise DataError(f"{path}: row {r} (id {int(ids[r])}) has an embedding of length {int(lens[r])}, "
                                f"row 0 has {int(lens[0])}")
            emb = col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)
        else:
            raise DataError(f"{path}: column 'embedding' must be a list of floats, got {col.type}")
        if col.null_count:
            raise DataError(f"{path}: column 'embedding' has {col.null_count} null rows")
    else:
        raise DataError(f"{path}: unknown embedding format (expected .parquet or .npy)")
    _validate(where, ids, emb, expected_dim, expected_ids)
    return ids, np.ascontiguousarray(emb, dtype=np.float32)


def load_item_embeddings(path: PathLike, *, ids_path: Optional[PathLike] = None, positional_ids: Optional[int] = None,
                         expected_dim: Optional[int] = None, data_dir: Optional[PathLike] = None,
                         item_feature: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, str]:
    """Load an item table for tokenization, with every check that applies (what ``store-rec tokenize`` uses).

    Args:
        path: ``EMB.parquet`` or ``EMB.npy``.
        ids_path: ids of a ``.npy``'s rows (``.npy`` or text, one id per line).
        positional_ids: for a ``.npy`` without ``ids_path``, explicitly number the rows: ``1`` = row i is
            item ``i + 1``; ``0`` = row i is item ``i`` and row 0 (the OOV id's row, e.g. a padding row) is
            dropped. Without ids or this, a ``.npy`` is refused (id 0 is OOV: positional ids are a guess).
        expected_dim: required width ``d`` (also checked against the parquet's ``dim`` metadata).
        data_dir: a prepared dataset; every id ``1 .. vocab_size - 1`` of the item feature must have an
            embedding and no id may fall outside the vocabulary.
        item_feature: item feature name (default: the parquet metadata, else the dataset's
            ``sequences.item_feature``, else ``"item"``).

    Returns:
        ``(ids int64[N], emb float32[N, d], item_feature)``; ids are >= 1, unique.

    Raises:
        UserError / DataError naming the file, row or id.
    """
    from store_rec.errors import UserError

    path = Path(path)
    if path.suffix == ".npy":
        if ids_path is not None and positional_ids is not None:
            raise UserError(f"{path}: pass either an id file (--ids) or --positional-ids, not both")
        if ids_path is None and positional_ids is None:
            raise UserError(f"{path}: a .npy table carries no item ids; pass --ids FILE (.npy or text, one id per "
                            "row) or, if rows are positional, --positional-ids 1 (row i = item i+1) or 0 "
                            "(row i = item i, row 0 = the OOV id, dropped)")
        if positional_ids is not None and positional_ids not in (0, 1):
            raise UserError(f"--positional-ids must be 0 or 1, got {positional_ids}")
    elif ids_path is not None or positional_ids is not None:
        raise UserError(f"{path}: --ids / --positional-ids only apply to .npy embeddings (a parquet table has "
                        "an 'item' column)")
    meta = read_metadata(path) if path.suffix == ".parquet" and path.is_file() else {}
    if meta.get("dim") is not None:
        if expected_dim is not None and int(meta["dim"]) != int(expected_dim):
            raise DataError(f"{path}: metadata dim {meta['dim']} != expected dimension {expected_dim}")
        expected_dim = int(meta["dim"]) if expected_dim is None else expected_dim
    feature = item_feature or meta.get("item_feature")
    expected_ids = None
    if data_dir is not None:
        from store_rec.data.schema import DatasetSchema

        schema = DatasetSchema.load(data_dir)
        if feature is None and schema.sequences is not None:
            feature = schema.sequences.item_feature
        feat = next((f for f in schema.sparse if f.name == feature), None)
        if feat is None:
            raise UserError(f"{data_dir}/schema.json: no sparse feature {feature!r} (has "
                            f"{[f.name for f in schema.sparse]}); pass --item-feature")
        expected_ids = int(feat.vocab_size)
    ids, emb = load_embeddings(path, ids_path=ids_path, expected_dim=expected_dim, expected_ids=expected_ids,
                               first_id=positional_ids or 0)
    if positional_ids == 0 and len(ids) and ids[0] == 0:
        logger.info("%s: --positional-ids 0: row 0 is the OOV id and is not tokenized", path)
        ids, emb = ids[1:], emb[1:]
    bad = np.flatnonzero(ids <= 0)
    if bad.size:
        r = int(bad[0])
        raise DataError(f"{path}: row {r} has id {int(ids[r])}; item ids must be >= 1 (0 is the OOV id, which "
                        "gets the OOV SID and no codes)")
    if len(ids) == 0:
        raise DataError(f"{path}: no item rows left")
    return ids, emb, feature or "item"


def load_trained_mask(path: PathLike) -> Optional[np.ndarray]:
    """``bool[N]`` in file order: the ``trained`` column of an embedding parquet (``None`` when the file
    has none, or is a ``.npy``: then every row counts as trained)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.suffix != ".parquet" or "trained" not in pq.read_schema(path).names:
        return None
    col = pq.read_table(path, columns=["trained"]).column("trained")
    if col.null_count:
        raise DataError(f"{path}: column 'trained' has {col.null_count} null rows")
    return col.to_numpy(zero_copy_only=False).astype(bool)


def save_embeddings(path: PathLike, ids: np.ndarray, emb: np.ndarray, meta: Optional[Dict[str, Any]] = None,
                    trained: Optional[np.ndarray] = None) -> Path:
    """Write ``ids np.int64[N]`` / ``emb float[N, d]`` as our parquet layout, atomically.

    ``meta`` is stored as the ``store_rec`` JSON metadata; ``dim`` is filled in. ``trained: bool[N]``
    (optional) marks the rows whose vector was trained; it is written as the ``trained`` column and
    ``untrained_items`` (the count of False) joins the metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    ids = np.asarray(ids, dtype=np.int64)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    _validate(str(path), ids, emb, None, None)
    d = emb.shape[1]
    values = pa.array(emb.reshape(-1), type=pa.float32())
    cols = {"item": pa.array(ids, type=pa.int64()), "embedding": pa.FixedSizeListArray.from_arrays(values, d)}
    m = dict(meta or {})
    if trained is not None:
        trained = np.asarray(trained, dtype=bool)
        if trained.shape != ids.shape:
            raise DataError(f"{path}: trained mask of shape {trained.shape} for {len(ids)} ids")
        cols["trained"] = pa.array(trained, type=pa.bool_())
        m["untrained_items"] = int((~trained).sum())
    table = pa.table(cols)
    m["dim"] = d
    table = table.replace_schema_metadata({META_KEY: json.dumps(m).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path
