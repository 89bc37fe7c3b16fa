"""``store-rec train``: train STORE or a baseline on sharded TorchRec embeddings (one rank per process).

    store-rec train --config configs/smoke.yaml [key=value ...] [--metrics-out FILE] [--resume] [--plan FILE]

Single process: runs as a world of one. Several ranks: launch the module entry point with torchrun or
torchx (``torchx run launch/components.py:train -- --config configs/smoke.yaml``), which runs
``python -m store_rec.train`` (:mod:`store_rec.train.__main__`, the same arguments) on every rank.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    from store_rec.train.__main__ import DESCRIPTION, add_arguments, run_from_args

    p = subparsers.add_parser("train", help=DESCRIPTION, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
