"""``python -m store_rec.train --config FILE [key=value ...] [--metrics-out FILE] [--resume] [--plan FILE]``:
the entry point torchrun / torchx launch on every rank, and what ``store-rec train`` runs.

The arguments are defined here (:func:`add_arguments`) and ``store_rec.cli.train`` registers the same
ones, so both commands take the same arguments; errors the user can fix exit with code 2 and one line
on stderr, as every ``store-rec`` command does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

DESCRIPTION = "train a ranking model (STORE or a baseline) on sharded TorchRec tables"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training command's arguments (shared with ``store-rec train``)."""
    p.add_argument("--config", required=True, help="training YAML (store_rec.train.config.TrainConfig)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2 data.batch_size=512")
    p.add_argument("--metrics-out", help="final JSON summary path (overrides output.metrics_out)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in checkpoint.dir")
    p.add_argument("--overwrite-checkpoints", action="store_true",
                   help="a fresh run (no --resume) deletes the checkpoints in checkpoint.dir (only those store_rec wrote) "
                        "instead of refusing to start")
    p.add_argument("--plan", help="sharding plan JSON written by `store-rec plan` (overrides sharding.plan_file)")


def run_from_args(args: argparse.Namespace) -> int:
    """Load the config, train, print the headline metrics as one JSON line on rank 0."""
    from store_rec.train.config import load_train_config
    from store_rec.train.trainer import run

    cfg = load_train_config(args.config, args.overrides)
    summary = run(cfg, resume=args.resume, plan_file=args.plan, metrics_out=args.metrics_out,
                  overwrite_checkpoints=args.overwrite_checkpoints, config_file=args.config)
    if int(os.environ.get("RANK", "0")) == 0:
        # gflops_per_batch: GFLOPs of one fwd+bwd step per batch of 1024 samples (the summary also has it as
        # tflops_per_batch, its older key); samples_per_s: training throughput
        keys = ("auc", "gauc", "logloss", "ne", "calibration", "samples_per_s", "gflops_per_batch", "steps", "resumed_from_step")
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), set up logging like ``store-rec``, train; 2 on a user error."""
    from store_rec.errors import USER_ERRORS, error_message

    p = argparse.ArgumentParser(prog="python -m store_rec.train", description=DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_arguments(p)
    args = p.parse_intermixed_args(argv if argv is not None else sys.argv[1:])
    # as store_rec.cli.main: store_rec at INFO (DEBUG with -v), other libraries from WARNING; force, because an
    # earlier import (fbgemm_gpu) can have set the root logger up at WARNING
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("store_rec").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(run_from_args(args) or 0)
    except (*USER_ERRORS, ImportError, OSError) as e:  # user errors; a broken torch/fbgemm/torchrec install
        msg = error_message(e)
        if msg is None:
            raise
        print(f"store-rec train: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
