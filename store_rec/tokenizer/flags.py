"""The tokenize command-line flags, defined once for both entry points.

* ``store-rec tokenize`` (:mod:`store_rec.cli.tokenize`): one process; embeddings as EMB.parquet or
  EMB.npy (``--ids`` / ``--positional-ids``), dataset coverage check (``--data``), ``--save-model``.
* ``python -m store_rec.distributed.tokenizer`` (:mod:`store_rec.distributed.tokenizer`, the torchx
  ``tokenize`` component): N data-parallel ranks; EMB.parquet only, plus per-rank ``--epochs`` /
  ``--batch-size``.

Every flag both accept has one definition here, with the same default (``--num-sids`` and
``--codebook-size`` are required in both).
"""

from __future__ import annotations

import argparse


def add_tokenize_flags(p: argparse.ArgumentParser, *, distributed: bool = False) -> argparse.ArgumentParser:
    """Add the tokenize flags to ``p``: the shared ones, then the entry point's own (see module docstring)."""
    if distributed:
        p.add_argument("--embeddings", required=True, help="EMB.parquet (item int64, embedding list<float32>[d])")
    else:
        p.add_argument("--embeddings", required=True,
                       help="EMB.parquet (item int64, embedding list<float32>[d]) or EMB.npy (with --ids)")
        p.add_argument("--ids", default=None, help="item ids of the .npy rows: .npy int array or text, one id per line")
        p.add_argument("--positional-ids", type=int, choices=[0, 1], default=None,
                       help=".npy without --ids: row i is item i+FIRST (1) or item i with row 0 = OOV dropped (0)")
        p.add_argument("--dim", type=int, default=None, help="required embedding width d")
        p.add_argument("--data", default=None,
                       help="prepared dataset dir: every item of its item vocabulary must have an embedding")
    p.add_argument("--method", choices=["opmq", "rqvae", "opq"], default="opmq")
    p.add_argument("--num-sids", type=int, required=True, help="K, SIDs per item")
    p.add_argument("--codebook-size", type=int, required=True, help="C, codewords per codebook")
    p.add_argument("--out", required=True,
                   help="output SID table (.parquet)" + (", written by rank 0 (atomic)" if distributed else ""))
    p.add_argument("--report", default=None, help="output report JSON" + (" (rank 0)" if distributed else ""))
    p.add_argument("--config", default=None, help="YAML with model:/train:/opq: sections")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps (train.steps)" + (", per rank" if distributed else ""))
    if distributed:
        p.add_argument("--epochs", type=int, default=None, help="training epochs over each shard (train.epochs)")
        p.add_argument("--batch-size", type=int, default=None, help="per-rank batch size (train.batch_size)")
    p.add_argument("--seed", type=int, default=None, help="train.seed (default 0)")
    p.add_argument("--dedup", action="store_true", help="add the sid_dedup disambiguation column")
    p.add_argument("--item-feature", default=None, help="item feature name (default: EMB metadata or 'item')")
    if not distributed:
        p.add_argument("--save-model", default=None, metavar="FILE",
                       help="also save the trained tokenizer (for model.sid_source: online, model.online.tokenizer)")
    return p
