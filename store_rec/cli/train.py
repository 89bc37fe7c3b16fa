"""``store-rec train``: train STORE or a baseline on sharded TorchRec embeddings (one rank per process).

    store-rec train --config configs/smoke.yaml [key=value ...] [--metrics-out FILE] [--resume] [--plan FILE]

Single process: runs as a world of one. Several ranks: launch the module entry point with torchrun or
torchx (``torchx run launch/components.py:train -- --config configs/smoke.yaml``), which runs
``python -m store_rec.train`` = this command on every rank.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("train", help="train a ranking model (STORE or a baseline) on sharded TorchRec tables",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (store_rec.train.config.TrainConfig)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2 data.batch_size=512")
    p.add_argument("--metrics-out", help="final JSON summary path (overrides output.metrics_out)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in checkpoint.dir")
    p.add_argument("--plan", help="sharding plan JSON written by `store-rec plan` (overrides sharding.plan_file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from store_rec.train.app import run as run_app
    from store_rec.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    summary = run_app(cfg, resume=args.resume, plan_file=args.plan, metrics_out=args.metrics_out)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        # gflops_per_batch: GFLOPs of one fwd+bwd step per batch of 1024 samples (summary.json keeps
        # tflops_per_batch, its older key: the same figure / 1000)
        keys = ("auc", "gauc", "logloss", "samples_per_s", "gflops_per_batch", "steps", "resumed_from_step")
        shown = {**summary}
        if shown.get("gflops_per_batch") is None and shown.get("tflops_per_batch") is not None:
            shown["gflops_per_batch"] = round(shown["tflops_per_batch"] * 1e3, 6)
        print(json.dumps({k: shown.get(k) for k in keys}))
    return 0
