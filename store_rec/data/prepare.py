"""``prepare(name, source, out, **options)``: one entry point for every dataset.

==========  ================================================  =========================================
name        source                                            module
==========  ================================================  =========================================
avazu       Kaggle CSV file(s) (.csv/.csv.gz/.txt) or a dir   :mod:`store_rec.data.avazu`
criteo      Kaggle/terabyte TSV or CSV-with-header, or a dir  :mod:`store_rec.data.criteo`
movielens   the ml-1m directory                               :mod:`store_rec.data.movielens`
synthetic   (none: generated)                                 :mod:`store_rec.data.synthetic`
table       your CSV / TSV / parquet files + ``schema=`` YAML  :mod:`store_rec.data.table` (+ interactions)
torchrec_criteo  TorchRec's ``day_{i}_*.npy`` directory       :mod:`store_rec.data.torchrec_criteo`
==========  ================================================  =========================================

Given splits: ``splits={"train": PATH, "valid": PATH, "test": PATH}`` (or files named train* /
valid* / test* in the source directory) are kept row for row by avazu, criteo and table;
``resplit=True`` splits them again by the dataset's rule. Every prepare ends with the sanity figures
of :mod:`store_rec.data.sanity` (``DIR/sanity.json``).

``options`` for the real datasets: ``config`` (YAML path or mapping), ``seed``, ``overwrite``,
``skip_bad_rows`` and any config key as an override (e.g. ``min_count=1``, ``max_users=300``).
For ``synthetic``: ``rows``, ``items``, ``seed``, ``overwrite`` and the generator's keywords.
"""

from __future__ import annotations

import importlib
import os
from typing import Optional

from store_rec.data.schema import DatasetSchema
from store_rec.errors import UserError

DATASETS = {
    "avazu": ("store_rec.data.avazu", "prepare_avazu"),
    "criteo": ("store_rec.data.criteo", "prepare_criteo"),
    "movielens": ("store_rec.data.movielens", "prepare_movielens"),
    "synthetic": ("store_rec.data.synthetic", "prepare_synthetic"),
    "table": ("store_rec.data.table", "prepare_table"),
    "torchrec_criteo": ("store_rec.data.torchrec_criteo", "prepare_torchrec_criteo"),
}
#: dataset kinds that keep given splits (``splits=`` / files named train, valid, test)
GIVEN_SPLITS = ("avazu", "criteo", "table")


def prepare(name: str, source: Optional[str], out: os.PathLike, **options) -> DatasetSchema:
    """Prepare dataset ``name`` from ``source`` into directory ``out`` (atomically); returns its schema."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    module, func = DATASETS[name]
    fn = getattr(importlib.import_module(module), func)
    sanity = options.pop("sanity", True)
    if name not in GIVEN_SPLITS:
        if options.get("splits"):
            raise UserError(f"{name}: --splits is not supported ({name} has its own split rule; given splits are kept "
                            f"by {', '.join(GIVEN_SPLITS)})")
        if options.get("resplit"):
            raise UserError(f"{name}: --resplit is not supported")
        options.pop("splits", None)
        options.pop("resplit", None)
    if name != "table":
        if (options.get("workers") or 1) > 1:
            raise UserError(f"{name}: --workers is for `prepare table` (streaming over files)")
        options.pop("workers", None)
        if options.get("schema"):
            raise UserError(f"{name}: --schema is for `prepare table`")
        options.pop("schema", None)
    schema = _dispatch(name, fn, source, out, options)
    if sanity:
        from store_rec.data.sanity import write_sanity

        write_sanity(out, schema)
    return schema


def _dispatch(name, fn, source, out, options) -> DatasetSchema:
    from store_rec.data.writer import check_replaceable
    from store_rec.fileio import check_output_path

    if name == "synthetic":
        if source:
            raise UserError("synthetic: --source is not used (the data is generated); drop it")
        for k in ("config", "skip_bad_rows"):
            if options.get(k):
                raise UserError(f"synthetic: --{k.replace('_', '-')} is not supported")
            options.pop(k, None)
    # before anything is read or written: --out never equals, contains or sits inside an input, and an
    # existing --out is replaced only when it is empty or (--overwrite) a previous prepared dataset
    cfg, schema_file = options.get("config"), options.get("schema")
    inputs = [("--source", source),
              ("--config", cfg if isinstance(cfg, (str, os.PathLike)) else None),
              ("--schema", schema_file if isinstance(schema_file, (str, os.PathLike)) else None)]
    inputs += [(f"--splits {k}", v) for k, v in (options.get("splits") or {}).items()]
    check_output_path(out, inputs=inputs, kind="dir")
    check_replaceable(out, bool(options.get("overwrite")))
    if name == "synthetic":
        return fn(out, **options)
    return fn(source, out, **options)
