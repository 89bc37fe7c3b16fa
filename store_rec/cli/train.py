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


def check_outputs(cfg, *, config=None, plan=None, metrics_out=None) -> None:  # noqa: ANN001
    """Every output path of a training run, checked at start-up (before any data is read): ``output.dir``
    and ``checkpoint.dir`` must be directories (or not exist yet), the summary JSON a file path; none
    may equal, contain or sit inside an input (the config, plan, dataset, SID table)."""
    from pathlib import Path

    from store_rec.fileio import check_output_path

    inputs = [("--config", config), ("--plan", plan or cfg.sharding.plan_file), ("data.dir", cfg.data.dir),
              ("data.sid_table", cfg.data.sid_table)]
    out_dir = Path(cfg.output.dir)
    check_output_path(out_dir, inputs=inputs, kind="dir", flag="output.dir")
    ck = cfg.checkpoint.dir or out_dir / "checkpoints"
    check_output_path(ck, inputs=inputs, kind="dir", flag="checkpoint.dir")
    summary = metrics_out or cfg.output.metrics_out or out_dir / "summary.json"
    check_output_path(summary, inputs=inputs, flag="--metrics-out" if metrics_out else "output.metrics_out")


def run(args: argparse.Namespace) -> int:
    from store_rec.train.app import run as run_app
    from store_rec.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    check_outputs(cfg, config=args.config, plan=args.plan, metrics_out=args.metrics_out)
    summary = run_app(cfg, resume=args.resume, plan_file=args.plan, metrics_out=args.metrics_out)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        # tflops_per_batch: TFLOPs of one fwd+bwd step per batch of 1024 samples
        keys = ("auc", "gauc", "logloss", "samples_per_s", "tflops_per_batch", "steps", "resumed_from_step")
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0
