"""``prepare(name, source, out, **options)``: one entry point for every dataset.

==========  ================================================  =========================================
name        source                                            module
==========  ================================================  =========================================
avazu       Kaggle CSV file(s) (.csv/.csv.gz/.txt) or a dir   :mod:`store_rec.data.avazu`
criteo      Kaggle/terabyte TSV or CSV-with-header, or a dir  :mod:`store_rec.data.criteo`
movielens   the ml-1m directory                               :mod:`store_rec.data.movielens`
synthetic   (none: generated)                                 :mod:`store_rec.data.synthetic`
==========  ================================================  =========================================

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
}


def prepare(name: str, source: Optional[str], out: os.PathLike, **options) -> DatasetSchema:
    """Prepare dataset ``name`` from ``source`` into directory ``out`` (atomically); returns its schema."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    from store_rec.data.writer import check_replaceable
    from store_rec.fileio import check_output_path

    module, func = DATASETS[name]
    if name == "synthetic":
        if source:
            raise UserError("synthetic: --source is not used (the data is generated); drop it")
        for k in ("config", "skip_bad_rows"):
            if options.get(k):
                raise UserError(f"synthetic: --{k.replace('_', '-')} is not supported")
            options.pop(k, None)
    # before anything is read or written: --out never equals, contains or sits inside an input, and an
    # existing --out is replaced only when it is empty or (--overwrite) a previous prepared dataset
    cfg = options.get("config")
    check_output_path(out, inputs=[("--source", source),
                                   ("--config", cfg if isinstance(cfg, (str, os.PathLike)) else None)],
                      kind="dir")
    check_replaceable(out, bool(options.get("overwrite")))
    fn = getattr(importlib.import_module(module), func)
    if name == "synthetic":
        return fn(out, **options)
    return fn(source, out, **options)
