"""Export of a trained model's dense part for serving: ``store-rec export``.

    store-rec export --checkpoint runs/smoke --out runs/smoke/dense.pt2

A ranking model is ``logits = dense_part(dense_features, pooled_embeddings)`` after the embedding
lookups (:meth:`store_rec.models.ranking.RankingModel.dense_step`: dense arch, interaction -- STORE's
rotation + MoBA attention --, over arch). This module loads the checkpoint the way
:mod:`store_rec.inference.predict` does (world of one), ``torch.export``s the dense part with a dynamic
batch dimension and saves it (``torch.export.save``: a ``.pt2`` that ``torch.export.load`` runs without
store_rec, or AOTInductor compiles). It checks the exported program against the full model on a batch
of ``--split`` and writes ``<out>.json`` beside it: the inputs' shapes and the sparse feature order,
the check's max |difference|, the checkpoint.

What stays TorchRec's: the embedding lookups. Serving them is TorchRec inference -- quantize the
``EmbeddingBagCollection`` (``torchrec.inference.modules.quantize_inference_model``) and shard it for
inference (``torchrec.inference.modules.shard_quant_model``) -- whose output, the pooled embeddings
``[B, F, D]`` in ``feature_order``, is this program's ``sparse`` input. That path needs the CUDA /
inference builds of fbgemm and is not exercised here (CPU build only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from torch import nn

if TYPE_CHECKING:
    from store_rec.models.ranking import RankingModel

DESCRIPTION = "torch.export the dense part of a trained model (after the embedding lookups) for serving"


class DensePart(nn.Module):
    """``forward(dense: Tensor[B, n_dense], sparse: Tensor[B, F, D]) -> logits: Tensor[B]``."""

    def __init__(self, model: "RankingModel") -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.model.dense_step(dense, sparse).squeeze(-1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="step-N dir, a checkpoint root (newest step-N) or a run's output.dir")
    p.add_argument("--out", required=True, help="the exported program (.pt2); <out>.json is written beside it")
    p.add_argument("--data", help="prepared dataset dir for the example / check batch (default: the config's data.dir)")
    p.add_argument("--split", default="valid", help="split whose first batch is the example input and the check (default valid)")
    p.add_argument("--config", help="the training config (default: config.yaml of the checkpoint)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def export_dense(args: argparse.Namespace) -> Dict[str, Any]:
    """Export, save and check; returns what ``<out>.json`` holds."""
    import torch.distributed as dist

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.distributed.benign_warnings import filter_benign_warnings
    from store_rec.distributed.env import init_distributed
    from store_rec.errors import UserError
    from store_rec.fileio import atomic_path, atomic_write_json
    from store_rec.inference.predict import load_sharded_model, open_checkpoint
    from store_rec.models.ranking import dense_input

    filter_benign_warnings()
    out, step, cfg = open_checkpoint(args)
    env = init_distributed()
    if env.world_size != 1:
        raise UserError("store-rec export runs as one process (the dense part is replicated)")
    try:
        loader = ParquetBatchLoader(cfg.data.dir, args.split, 256, shuffle=False, sid_table=cfg.data.sid_table,
                                    sid_feature=cfg.data.sid_feature, sid_tables=cfg.data.sid_tables, history_len=cfg.data.history_len,
                                    sid_embedding=cfg.data.sid_embedding, sid_hash_buckets=cfg.data.sid_hash_buckets)
        dmp = load_sharded_model(cfg, loader.schema, step, env, None)
        dmp.eval()
        model = dmp.module.model  # the RankingModel inside DMP / RankingTrain
        batch = next(iter(loader))
        with torch.no_grad():
            _, full = dmp(batch)
            dense = dense_input(batch, model.const_dense)
            sparse = model.model.sparse_arch(batch.sparse_features)  # pooled embeddings [B, F, D]
        part = DensePart(model).eval()
        b = torch.export.Dim("batch", min=2, max=1 << 20)
        t0 = time.perf_counter()
        program = torch.export.export(part, (dense, sparse), dynamic_shapes={"dense": {0: b}, "sparse": {0: b}})
        export_s = time.perf_counter() - t0
        with atomic_path(out) as tmp:
            torch.export.save(program, str(tmp))
        with torch.no_grad():
            got = torch.export.load(str(out)).module()(dense, sparse)
        diff = float((got - full.logits).abs().max())
        if not diff <= 1e-5:
            raise RuntimeError(f"exported dense part differs from the model by {diff:.3g} on {args.split}")
        meta = {
            "checkpoint": str(step), "out": str(out), "export_s": round(export_s, 3),
            "inputs": {"dense": ["B", int(dense.shape[1])], "sparse": ["B", int(sparse.shape[1]), int(sparse.shape[2])]},
            "dense_is_constant_ones": bool(model.const_dense),
            "feature_order": list(model.model.sparse_arch.sparse_feature_names),
            "output": "logits [B] (score = sigmoid(logit))",
            "check": {"split": args.split, "rows": int(dense.shape[0]), "max_abs_diff_vs_model": diff},
            "torch": torch.__version__,
        }
        atomic_write_json(out.with_name(out.name + ".json"), meta)
        return meta
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def run_from_args(args: argparse.Namespace) -> int:
    m = export_dense(args)
    print(json.dumps({k: m[k] for k in ("out", "inputs", "check", "export_s")}))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from store_rec.errors import USER_ERRORS

    p = argparse.ArgumentParser(prog="python -m store_rec.inference.export", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv if argv is not None else sys.argv[1:])
    try:
        return int(run_from_args(args) or 0)
    except USER_ERRORS as e:
        print(f"store-rec export: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
