"""``store-rec export``: ``torch.export`` the dense part of a trained model for serving (see
:mod:`store_rec.inference.export`; the embedding lookups stay TorchRec inference sharding).

    store-rec export --checkpoint runs/smoke --out runs/smoke/dense.pt2
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    from store_rec.inference.export import DESCRIPTION, add_arguments, run_from_args

    p = subparsers.add_parser("export", help=DESCRIPTION, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
