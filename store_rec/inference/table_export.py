"""One feature's embedding table read back from a training checkpoint, written as EMB.parquet.

What ``store-rec embeddings export`` runs (and the experiments runner's first stage: train a DLRM on the
train split -> export its ``site_id`` / ``app_id`` tables -> ``store-rec tokenize`` -> ``data.sid_tables``),
so datasets without user sequences (Avazu, Criteo) get item embeddings to tokenize, as the paper's
Avazu / Criteo runs did::

    store-rec embeddings export --checkpoint RUN --feature site_id --out EMB_site_id.parquet

1. ``--checkpoint``: a ``step-N`` directory, a checkpoint root or a run's ``output.dir``
   (:func:`store_rec.inference.predict.resolve_checkpoint`); its ``config.yaml`` names the dataset.
   Any model store_rec trains works (STORE, DLRM, DCN ...): every one keeps feature ``F`` in the EBC
   table ``t_F`` (``--table`` names another).
2. The table is read with ``torch.distributed.checkpoint`` into one full ``Tensor[vocab, d]`` without
   building the model or a process group: DCP assembles the shards of any world size and sharding
   type (table-wise, row-wise, column-wise, data-parallel) from the checkpoint's metadata.
3. Rows ``1 .. vocab-1`` are written (id 0 is the OOV row), in the layout of
   :mod:`store_rec.tokenizer.embeddings` (what ``store-rec pretrain`` writes; ``store-rec tokenize``
   takes it unchanged), with ``trained`` = the id occurs in the dataset's **train** split: a row never
   looked up in training keeps its random initialisation, and tokenize gives it the OOV SID instead of
   letting it share a collapsed tuple. Metadata: ``dim``, ``item_feature``, ``source: "checkpoint"``,
   ``num_items``, ``input`` (the step dir), ``table``, ``model``, ``step``.

Checks (``UserError``, exit code 2, naming the file): ``--out`` must end in ``.parquet``, may not be an
input (the checkpoint, its config, the dataset's files) and is not replaced without ``force``; the
feature must be in the dataset; the table must be in the checkpoint (the message lists the tables it
has) with ``vocab_size`` rows; no weight may be NaN / inf. The output is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from store_rec.errors import UserError
from store_rec.fileio import PathLike

logger = logging.getLogger(__name__)

DESCRIPTION = "write one feature's embedding table from a training checkpoint as EMB.parquet (for store-rec tokenize)"


def checkpoint_tables(step: Path) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``{table name: (DCP key, global size)}`` of every EBC table in a ``step-N`` checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        meta = FileSystemReader(str(step)).read_metadata()
    except Exception as e:  # noqa: BLE001 - a missing / truncated .metadata, whatever DCP raises for it
        raise UserError(f"--checkpoint {step}: cannot read its DCP metadata ({type(e).__name__}: {e})") from None
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for key, md in meta.state_dict_metadata.items():
        if not key.startswith("model.") or ".embedding_bags." not in key or not key.endswith(".weight"):
            continue
        name = key.rsplit(".embedding_bags.", 1)[1][: -len(".weight")]
        size = tuple(int(x) for x in getattr(md, "size", ()))
        if "." in name or len(size) != 2:
            continue
        if name in out:
            raise UserError(f"--checkpoint {step}: table {name!r} appears twice ({out[name][0]}, {key})")
        out[name] = (key, size)
    return out


def read_checkpoint_table(step: Path, table: str) -> np.ndarray:
    """``float32[rows, d]``: table ``table`` of checkpoint ``step``, assembled from its shards."""
    import torch
    import torch.distributed.checkpoint as dcp

    tables = checkpoint_tables(step)
    if table not in tables:
        raise UserError(f"--checkpoint {step}: no embedding table {table!r} (tables: {', '.join(sorted(tables)) or 'none'})")
    key, (rows, dim) = tables[table]
    full = torch.zeros(rows, dim, dtype=torch.float32)
    dcp.load({key: full}, checkpoint_id=str(step), no_dist=True)
    return full.numpy()


def train_ids(data_dir: Path, feature: str) -> np.ndarray:
    """The distinct ids of ``feature`` in the train split of a prepared dataset (``int64[n]``, sorted)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from store_rec.data.schema import DatasetSchema

    schema = DatasetSchema.load(data_dir)
    if "train" not in schema.splits:
        raise UserError(f"{data_dir}/schema.json: no train split (the trained rows are the ids seen in training)")
    seen: List[np.ndarray] = []
    for rel in schema.splits["train"].files:
        col = pq.read_table(data_dir / rel, columns=[feature]).column(feature)
        if col.null_count:
            raise UserError(f"{data_dir / rel}: column {feature!r} has nulls")
        if hasattr(col.type, "value_type"):  # multi-hot: every id of every list
            col = pc.list_flatten(col)
        seen.append(np.unique(col.to_numpy(zero_copy_only=False).astype(np.int64)))
    return np.unique(np.concatenate(seen)) if seen else np.zeros(0, np.int64)


def check_export_output(out: Path, *, step: Path, config: Optional[PathLike], data_dir: Path, force: bool) -> None:
    """``out`` checked before anything is read: ``.parquet``, not an input (the checkpoint, its config,
    the dataset's schema / split / vocab files: a new file inside the dataset dir is fine), not
    replaced without ``force``."""
    from store_rec.data.schema import SCHEMA_FILE
    from store_rec.fileio import check_output_path

    if out.suffix != ".parquet":
        raise UserError(f"--out {out}: must end with .parquet")
    inputs: List[Tuple[str, Any]] = [("--checkpoint", step), ("--config", config), ("--data", data_dir)]
    if data_dir.is_dir():
        inputs += [("--data", data_dir / SCHEMA_FILE)]
        inputs += [("--data subdirectory", p) for p in data_dir.iterdir() if p.is_dir()]
    check_output_path(out, inputs=inputs, flag="--out", may_nest=("--data",))
    if out.exists() and not force:
        raise UserError(f"--out: {out} exists; pass --force to replace it")


def export_feature_embeddings(checkpoint: PathLike, feature: str, out: PathLike, *, table: Optional[str] = None,
                              config: Optional[PathLike] = None, data: Optional[PathLike] = None,
                              force: bool = False) -> Dict[str, Any]:
    """Write ``feature``'s table of ``checkpoint`` to ``out`` (see the module docstring).

    Args:
        checkpoint: a ``step-N`` dir, a checkpoint root (its newest step) or a run's ``output.dir``.
        feature: the sparse feature whose table is exported (the EMB.parquet's ``item_feature``).
        out: the EMB.parquet to write.
        table: the EBC table name (default ``t_<feature>``).
        config: the run's training config (default: the ``config.yaml`` found above the checkpoint).
        data: the prepared dataset (default: the config's ``data.dir``); its train split decides ``trained``.
        force: replace an existing ``out``.

    Returns:
        a summary: ``out``, ``step`` dir, ``table``, ``rows`` exported, ``dim``, ``trained_items``,
        ``untrained_items``, ``model``.
    """
    from store_rec.data.schema import DatasetSchema
    from store_rec.inference.predict import find_config, resolve_checkpoint
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.train.config import load_train_config

    out = Path(out)
    step = resolve_checkpoint(Path(checkpoint))
    cfg = load_train_config(find_config(step, str(config) if config else None),
                            ["data.prepare_if_missing=null"] + ([f"data.dir={data}"] if data else []))
    data_dir = Path(cfg.data.dir)
    check_export_output(out, step=step, config=config, data_dir=data_dir, force=force)
    if not (data_dir / "schema.json").is_file():
        raise UserError(f"--data: {data_dir} is not a prepared dataset (no schema.json)")
    schema = DatasetSchema.load(data_dir)
    if feature not in schema.sparse_names:
        raise UserError(f"--feature: {feature!r} is not a sparse feature of {data_dir}/schema.json (has: "
                        f"{', '.join(schema.sparse_names)})")
    vocab = schema.feature(feature).vocab_size
    table = table or f"t_{feature}"
    weights = read_checkpoint_table(step, table)
    if weights.shape[0] != vocab:
        raise UserError(f"--checkpoint {step}: table {table!r} has {weights.shape[0]} rows but feature {feature!r} of "
                        f"{data_dir} has vocab_size {vocab}: the checkpoint was trained on another dataset (pass --data)")
    bad = np.flatnonzero(~np.isfinite(weights).all(axis=1))
    if len(bad):
        raise UserError(f"--checkpoint {step}: table {table!r} row {int(bad[0])} is not finite ({len(bad)} such rows): "
                        "the run diverged")
    ids = np.arange(1, vocab, dtype=np.int64)  # row 0 = the OOV id, as store-rec pretrain --data writes
    trained = np.isin(ids, train_ids(data_dir, feature))
    stepno = int(step.name.split("-", 1)[1]) if step.name.startswith("step-") else None
    meta = {"item_feature": feature, "source": "checkpoint", "num_items": int(vocab - 1), "input": str(step),
            "table": table, "model": cfg.model.name, "step": stepno}
    save_embeddings(out, ids, weights[1:], meta, trained=trained)
    n_tr = int(trained.sum())
    logger.info("%s: %d rows of %s (%s) x %d, %d trained, %d never in the train split (-> OOV SID)", out, len(ids),
                table, cfg.model.name, weights.shape[1], n_tr, len(ids) - n_tr)
    return {"out": str(out), "step": str(step), "table": table, "rows": int(len(ids)), "dim": int(weights.shape[1]),
            "trained_items": n_tr, "untrained_items": int(len(ids) - n_tr), "model": cfg.model.name}
