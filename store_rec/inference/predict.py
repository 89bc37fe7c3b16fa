"""Batch scoring with a trained checkpoint: ``store-rec predict`` / ``python -m store_rec.inference.predict``.

    store-rec predict --checkpoint runs/smoke --data data/smoke --split test --out preds.parquet
    torchrun --nproc-per-node 2 -m store_rec.inference.predict --checkpoint runs/smoke --split test --out preds.parquet

What it does, on every rank (a world of one without torchrun):

1. ``--checkpoint``: a ``step-N`` directory written by training, a checkpoint root (its newest
   ``step-N``) or a run's ``output.dir`` (the ``checkpoint.dir`` its ``config.yaml`` names, else its
   ``checkpoints/``). The training config is the ``config.yaml`` every checkpoint carries (or
   ``--config``); nothing in the checkpoint is unpickled.
2. The model is built as training builds it (``build_model`` on the meta device, the same
   ``RankingTrain`` wrapper) and sharded for *this* job's world size
   (``DistributedModelParallel``, planned anew or ``--plan``); ``torch.distributed.checkpoint``
   loads the checkpoint's model state into these shards, re-sharding when the world size differs.
   The optimizer state is not read.
3. Rank ``r`` scores rows ``[r N / W, (r+1) N / W)`` of the split in file order (the training
   loader's eval sharding), with ``--batch-size`` (default: the config's ``data.eval_batch_size``).
4. Each rank writes its rows to a part file beside ``--out``; rank 0 concatenates the parts in
   rank order into ``--out`` (atomically: a failed run leaves no ``--out``) and removes the parts.

Output columns: ``row`` (int64, the row's index in the split, file order: join key back to the data),
``user_id`` (int64, the batch's user key for GAUC; -1 when the dataset has none), ``label``
(float32), ``logit`` (float32), ``score`` (float32, ``sigmoid(logit)``). The metrics of the scored
rows (:class:`store_rec.train.metrics.EvalMetrics`: AUC, GAUC, LogLoss, NE, calibration) are printed
and written to ``<out>.metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

DESCRIPTION = "score a split with a trained checkpoint (rank-sharded; ids + scores + labels to parquet)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="step-N dir, a checkpoint root (newest step-N) or a run's output.dir")
    p.add_argument("--data", help="prepared dataset dir (default: the training config's data.dir)")
    p.add_argument("--split", default="test", help="split to score (default test)")
    p.add_argument("--out", required=True, help="output parquet (written atomically; an existing file is not overwritten without --force)")
    p.add_argument("--config", help="the training config (default: config.yaml of the run, found above the checkpoint)")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: data.eval_batch_size)")
    p.add_argument("--plan", help="sharding plan JSON for this job's world size (default: planned anew)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def resolve_checkpoint(path: Path) -> Path:
    """A ``step-N`` directory from a step dir, a checkpoint root or a run dir (UserError otherwise)."""
    from store_rec.errors import UserError
    from store_rec.train.checkpoint import latest_checkpoint

    if not path.exists():
        raise UserError(f"--checkpoint: {path} does not exist")
    if path.name.startswith("step-") and path.is_dir() and not path.name.endswith(".tmp"):
        return path
    roots = [path, path / "checkpoints"]
    if (path / "config.yaml").is_file():  # a run's output.dir: its config names the checkpoint dir
        from store_rec.config import load_yaml

        ck = (load_yaml(path / "config.yaml").get("checkpoint") or {}).get("dir")
        if ck:
            roots.insert(0, Path(ck))
    for root in roots:
        step = latest_checkpoint(root)
        if step is not None:
            return step
    raise UserError(f"--checkpoint: no step-N checkpoint in {' or '.join(map(str, roots))}")


def find_config(step: Path, given: Optional[str]) -> Path:
    from store_rec.errors import UserError

    if given:
        return Path(given)
    for d in (step, *list(step.parents)[:3]):
        if (d / "config.yaml").is_file():
            return d / "config.yaml"
    raise UserError(f"--checkpoint {step}: no config.yaml in it or the 3 directories above (training writes one into "
                    "output.dir); pass --config")


def open_checkpoint(args: argparse.Namespace) -> Tuple[Path, Path, Any]:
    """What ``store-rec predict`` and ``store-rec export`` do first, before any process group or model:
    ``--out`` checked (exists only with ``--force``; never an input: the checkpoint, its config, the
    data), the ``step-N`` dir resolved, its training config loaded (``--data`` overrides ``data.dir``),
    the dataset checked. Returns ``(out, step dir, TrainConfig)``."""
    from store_rec.errors import UserError
    from store_rec.fileio import check_output_path
    from store_rec.train.config import load_train_config

    out = Path(args.out)
    step = resolve_checkpoint(Path(args.checkpoint))
    cfg = load_train_config(find_config(step, args.config),
                            ["data.prepare_if_missing=null"] + ([f"data.dir={args.data}"] if args.data else []))
    check_output_path(out, inputs=[("--checkpoint", step), ("--config", args.config), ("--data", cfg.data.dir),
                                   ("data.sid_table", cfg.data.sid_table),
                                   *((f"data.sid_tables.{f}", p) for f, p in cfg.data.sid_tables.items())])
    if out.exists() and not args.force:
        raise UserError(f"--out: {out} exists; pass --force to replace it")
    if not (Path(cfg.data.dir) / "schema.json").is_file():
        raise UserError(f"--data: {cfg.data.dir} is not a prepared dataset (no schema.json)")
    return out, step, cfg


def predict(args: argparse.Namespace) -> Dict[str, Any]:
    """Score ``args.split`` on every rank; rank 0 writes ``args.out``. Returns the metrics (every rank)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.distributed.benign_warnings import filter_benign_warnings
    from store_rec.distributed.env import init_distributed
    from store_rec.fileio import atomic_path, atomic_write_json
    from store_rec.train.metrics import EvalMetrics

    filter_benign_warnings()
    out, step, cfg = open_checkpoint(args)
    data_dir = Path(cfg.data.dir)
    env = init_distributed()
    try:
        t0 = time.perf_counter()
        loader = ParquetBatchLoader(data_dir, args.split, args.batch_size or cfg.data.eval_batch_size, rank=env.rank,
                                    world_size=env.world_size, shuffle=False, drop_last=False,
                                    sid_table=cfg.data.sid_table, sid_feature=cfg.data.sid_feature,
                                    sid_tables=cfg.data.sid_tables, history_len=cfg.data.history_len,
                                    sid_embedding=cfg.data.sid_embedding, sid_hash_buckets=cfg.data.sid_hash_buckets)
        dmp = load_sharded_model(cfg, loader.schema, step, env, args.plan)
        load_s = time.perf_counter() - t0
        first_row = env.rank * loader.num_rows // env.world_size  # the loader's part of rank r: [r N / W, (r+1) N / W)
        metrics = EvalMetrics()
        cols: Dict[str, List[Any]] = {"logit": [], "label": [], "user_id": []}
        t1 = time.perf_counter()
        dmp.eval()
        with torch.no_grad():
            for batch in loader:
                _, o = dmp(batch.to(env.device))
                metrics.update(o.logits, o.labels, o.user_ids)
                cols["logit"].append(o.logits.float().cpu())
                cols["label"].append(o.labels.float().cpu())
                cols["user_id"].append(o.user_ids.long().cpu())
        n = sum(len(x) for x in cols["logit"])
        score_s = time.perf_counter() - t1
        m = metrics.compute()  # collective
        logit = torch.cat(cols["logit"]) if n else torch.zeros(0)
        table = pa.table({
            "row": pa.array(range(first_row, first_row + n), pa.int64()),
            "user_id": (torch.cat(cols["user_id"]) if n else torch.zeros(0, dtype=torch.int64)).numpy(),
            "label": (torch.cat(cols["label"]) if n else torch.zeros(0)).numpy(),
            "logit": logit.numpy(),
            "score": torch.sigmoid(logit).numpy(),
        })
        part = out.with_name(f".{out.name}.rank{env.rank}.part")
        pq.write_table(table, part)
        dist.barrier()
        if env.rank == 0:
            parts = [out.with_name(f".{out.name}.rank{r}.part") for r in range(env.world_size)]
            with atomic_path(out) as tmp:
                with pq.ParquetWriter(tmp, table.schema) as w:
                    for p in parts:
                        w.write_table(pq.read_table(p))
            for p in parts:
                p.unlink()
        total = torch.tensor([float(n)], dtype=torch.float64)
        dist.all_reduce(total)
        slow = torch.tensor([score_s], dtype=torch.float64)
        dist.all_reduce(slow, op=dist.ReduceOp.MAX)
        result = {"checkpoint": str(step), "split": args.split, "rows": int(total[0]), "world_size": env.world_size,
                  **m, "load_s": round(load_s, 3), "score_s": round(float(slow[0]), 3),
                  "eval_samples_per_s": float(total[0] / slow[0]) if slow[0] > 0 else None, "out": str(out)}
        if env.rank == 0:
            atomic_write_json(out.with_name(out.name + ".metrics.json"), result)
        dist.barrier()
        return result
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def load_sharded_model(cfg, schema, step: Path, env, plan_file: Optional[str]):  # noqa: ANN001, ANN201
    """The training model (``RankingTrain`` around ``build_model``), sharded for this job by
    ``DistributedModelParallel``, with the model state of checkpoint ``step`` loaded into its shards
    (``torch.distributed.checkpoint`` re-shards across world sizes; the optimizer state is not read)."""
    import torch
    import torch.distributed.checkpoint as dcp

    from store_rec.models.factory import build_model
    from store_rec.models.ranking import RankingTrain
    from store_rec.train.sharding import model_tables, shard_model

    model = build_model(cfg.model, schema, device=torch.device("meta"))
    model.set_precision(cfg.train.precision, env.device.type)  # score as training evaluated
    wrapper = RankingTrain(model, cfg.loss.aux_weights)
    dmp = shard_model(wrapper, cfg, env, model_tables(model), plan_file)
    state = {"model": dmp.state_dict()}
    dcp.load(state, checkpoint_id=str(step))
    dmp.load_state_dict(state["model"])
    return dmp


def run_from_args(args: argparse.Namespace) -> int:
    r = predict(args)
    if int(os.environ.get("RANK", "0")) == 0:
        keys = ("rows", "auc", "gauc", "logloss", "ne", "calibration", "eval_samples_per_s", "out")
        print(json.dumps({k: r.get(k) for k in keys}))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from store_rec.errors import USER_ERRORS

    p = argparse.ArgumentParser(prog="python -m store_rec.inference.predict", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("store_rec").setLevel(logging.INFO)
    try:
        return int(run_from_args(args) or 0)
    except USER_ERRORS as e:
        print(f"store-rec predict: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
