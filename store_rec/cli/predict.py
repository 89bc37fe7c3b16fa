"""``store-rec predict``: score a split with a trained checkpoint (see :mod:`store_rec.inference.predict`).

    store-rec predict --checkpoint runs/smoke --data data/smoke --split test --out preds.parquet

Single process: a world of one. Several ranks: ``torchrun --nproc-per-node N -m store_rec.inference.predict``
with the same arguments (each rank scores its part of the split; rank 0 writes the file).
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    from store_rec.inference.predict import DESCRIPTION, add_arguments, run_from_args

    p = subparsers.add_parser("predict", help=DESCRIPTION, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
