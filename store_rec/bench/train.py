"""``store-rec bench train``: end-to-end training samples/s and TFLOPs per batch of 1024.

Models (``--models``, same data, features, embedding dim, heads, layers and FFN width):

* ``store_moba``    STORE with MoBA (``attention.sparsity``, default 1/2, instance routing);
* ``store_vanilla`` STORE with dense SDPA attention (the paper's "vanilla attention" ablation);
* ``dlrm_dcn``      TorchRec ``DLRM_DCN``;
* ``transformer``   TorchRec's ``DLRM_Transformer`` (dense attention over all feature tokens);
* ``dlrm``          TorchRec ``DLRM`` (with history: its EBC mean-pools each history SID key);
* ``din``           DLRM + DIN target attention over the history items (history runs only).

``--history-len N`` (issue 13, default 0 = off) gives every run the user's last N items (synthetic
data with ``history_len`` N, ``model.history`` with ``item_tokens: sid``: each history item is its K
SID tokens, the same SID table as the target), MoBA blocks of ``--items-per-block`` whole items
gated by the target item (``attention.gate: item``), K = ``--num-sids`` default 3, and the default
models ``store_moba, store_vanilla, dlrm, din``. This is the sequence models' multi-rank throughput
(the history ``EmbeddingCollection`` sharded by the planner on every rank); ``store-rec bench
sequence`` measures the single-process step cost and memory at each N.

Every model sees the same token features: ``--num-sids`` semantic-ID features (``sid_*``, attached
from a SID table) plus the synthetic dataset's other id and static features, so the baselines run
at the same token count as STORE (``seq_len`` column; STORE rotates the static groups into one
token each). The SID table holds seeded random codes: this suite measures speed, not accuracy.

Each (world size, model) is a real run of the training app (``store_rec.train.trainer.run``: sharded
EBCs, fused sparse optimizer, ``TrainPipelineSparseDist``) launched with :func:`store_rec.distributed.local_launch.launch_local` on
``--world-sizes`` local gloo ranks for ``--steps`` steps; ``samples_per_s`` is the app's own figure
(train samples over the slowest rank's train time, evals excluded) and ``gflops_per_batch`` the
model's analytic-plus-counted GFLOPs of one fwd+bwd per batch of 1024 samples (whatever the run's
batch size; the JSON also keeps the app's ``tflops_per_batch`` = GFLOPs / 1000, the key older JSONs have). Runs of one world size go
back to back in one process; ``speedup_vs_vanilla`` divides by ``store_vanilla`` of the same world
size. Each rank uses ``--threads`` intra-op threads (default 1, as torchrun sets for several ranks):
on a small shared CPU a multi-threaded op waits for descheduled workers, which measured a 1-rank run
with 2 threads at ~0.2 s per step of 64 samples, 5x slower than the same run with 1 thread.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from store_rec.bench.common import BenchResult

MODELS = {
    "store_moba": ["model.name=store", "model.attention.type=moba"],
    "store_vanilla": ["model.name=store", "model.attention.type=vanilla"],
    "dlrm_dcn": ["model.name=dlrm_dcn"],
    "transformer": ["model.name=transformer"],
    "dlrm": ["model.name=dlrm"],
    "din": ["model.name=din"],
}
NO_HISTORY_MODELS = ("store_moba", "store_vanilla", "dlrm_dcn", "transformer")
HISTORY_MODELS = ("store_moba", "store_vanilla", "dlrm", "din")

COLUMNS = ("world_size", "model", "seq_len", "steps", "batch_size", "samples_per_s", "speedup_vs_vanilla",
           "gflops_per_batch", "flops_ratio_vs_vanilla", "train_time_s")  # gflops_per_batch: per batch of 1024


def derive(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """``gflops_per_batch`` from ``tflops_per_batch`` where a record (e.g. an older JSON's) lacks it."""
    for r in records:
        if "gflops_per_batch" not in r and r.get("tflops_per_batch") is not None:
            r["gflops_per_batch"] = r["tflops_per_batch"] * 1e3
    return records

CONFIG = "smoke"  # the shipped configs/smoke.yaml (store_rec.presets)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)} (default "
                        f"{','.join(NO_HISTORY_MODELS)}; with --history-len {','.join(HISTORY_MODELS)})")
    parser.add_argument("--world-sizes", default="1,2", help="gloo ranks per run (default 1,2)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 80; quick 6)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-rank batch (default 512; quick 64)")
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (default 120k; quick 4k)")
    parser.add_argument("--num-sids", type=int, default=None,
                        help="SID features K (default 64; quick 8; with --history-len 3)")
    parser.add_argument("--history-len", type=int, default=0,
                        help="behaviour-sequence length N read by every model (default 0 = no history)")
    parser.add_argument("--items-per-block", type=int, default=8,
                        help="with --history-len: history items per MoBA block (block size = items * K)")
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank (default 1)")
    parser.add_argument("--seed", type=int, default=0)


def _worker(overrides: List[str], threads: int) -> Dict[str, Any]:
    import torch

    from store_rec.train.trainer import run
    from store_rec.train.config import load_train_config

    torch.set_num_threads(threads)
    return run(load_train_config(CONFIG, overrides))


def _launch(world: int, overrides: List[str], tmp: Path, threads: int) -> Dict[str, Any]:
    from store_rec.distributed.local_launch import launch_local

    return launch_local(_worker, (overrides, threads), nproc=world)[0]


def _seq_len(overrides: List[str]) -> int:
    """Tokens the model's interaction sees (STORE: history + non-sequential tokens; baselines: the EBC's
    features + dense, a history key counted once as it is pooled or attended as one feature)."""
    import torch

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.models.factory import build_model
    from store_rec.train.config import load_train_config

    cfg = load_train_config(CONFIG, overrides)
    schema = ParquetBatchLoader(cfg.data.dir, "train", 8, sid_table=cfg.data.sid_table, sid_feature=cfg.data.sid_feature,
                                sid_embedding=cfg.data.sid_embedding, sid_hash_buckets=cfg.data.sid_hash_buckets).schema
    model = build_model(cfg.model, schema, device=torch.device("meta"))
    inter = model.model.inter_arch
    if hasattr(inter, "num_tokens"):  # STORE: history tokens (model.history) + non-sequential tokens
        return int(inter.num_tokens)
    return sum(len(c.feature_names) for c in model.embedding_bag_collection.embedding_bag_configs()) + 1


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    worlds = sorted({r["world_size"] for r in records})
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(1, len(worlds))
    for i, w in enumerate(worlds):
        rs = {r["model"]: r for r in records if r["world_size"] == w}
        xs = [j + i * width for j in range(len(models))]
        axes[0].bar(xs, [rs[m]["samples_per_s"] if m in rs else 0 for m in models], width, label=f"{w} rank(s)")
    axes[0].set_xticks([j + width * (len(worlds) - 1) / 2 for j in range(len(models))], models, rotation=20)
    axes[0].set_ylabel("train samples/s")
    axes[0].set_title("training throughput (the app's samples/s)")
    axes[0].legend()
    first = {r["model"]: r for r in derive([dict(r) for r in records if r["world_size"] == worlds[0]])}
    bars = axes[1].bar(range(len(models)), [first[m]["gflops_per_batch"] for m in models])
    axes[1].bar_label(bars, labels=[f"{first[m]['gflops_per_batch']:.3g}" for m in models], fontsize=8)
    axes[1].set_xticks(range(len(models)), models, rotation=20)
    axes[1].set_ylabel("GFLOPs per batch of 1024 (fwd+bwd)")
    axes[1].set_title("model FLOPs (analytic + counted)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> BenchResult:
    import numpy as np

    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.errors import UserError
    from store_rec.data.sid_table import write_sid_table

    quick = bool(getattr(args, "quick", False))
    hist = args.history_len
    if hist < 0:
        raise UserError(f"--history-len: need N >= 0, got {hist}")
    models = [m for m in (args.models or ",".join(HISTORY_MODELS if hist else NO_HISTORY_MODELS)).split(",") if m]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise UserError(f"--models: unknown {bad}; choose from {list(MODELS)}")
    worlds = [int(w) for w in args.world_sizes.split(",") if w]
    if not worlds or min(worlds) < 1:
        raise UserError(f"--world-sizes: need positive integers, got {args.world_sizes!r}")
    steps = args.steps or (6 if quick else 80)
    batch = args.batch_size or (64 if quick else 512)
    rows = args.rows or (4_000 if quick else 120_000)
    k = args.num_sids or (3 if hist else 8 if quick else 64)
    block = args.items_per_block * k if hist else args.block_size
    codebook = 16
    records: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        schema = prepare_synthetic(data, rows=rows, items=max(200, rows // 50), users=max(100, rows // 100), seed=args.seed,
                                   num_clusters=16, history_len=hist)
        n_items = schema.feature("item_id").vocab_size - 1
        rng = np.random.default_rng(args.seed)
        sids = tmp / "sids.parquet"
        write_sid_table(sids, np.arange(1, n_items + 1), rng.integers(0, codebook, (n_items, k)), method="opmq",
                        codebook_size=codebook, item_feature="item_id")
        common = [f"data.dir={data}", "data.prepare_if_missing=null", f"data.sid_table={sids}", f"data.batch_size={batch}",
                  "data.eval_batch_size=4096", f"train.max_steps={steps}", "train.epochs=100", "train.eval_every=0",
                  "train.eval_at_epoch_end=false", "train.eval_splits=[valid]", f"train.seed={args.seed}",
                  "checkpoint.enabled=false", "output.tensorboard=false", "output.progress_bar=false",
                  "model.tokenizer=opmq", "model.item_feature=item_id", f"model.embedding_dim={args.embedding_dim}",
                  f"model.attention.num_heads={args.heads}", f"model.attention.num_layers={args.layers}",
                  f"model.attention.ffn_dim={2 * args.embedding_dim}", f"model.attention.block_size={block}",
                  f"model.attention.sparsity={args.sparsity}", "model.attention.pooling=mean"]
        if hist:
            common += [f"data.history_len={hist}", "model.history.enabled=true", f"model.history.max_len={hist}",
                       "model.history.item_tokens=sid", "model.attention.gate=item"]
        for w in worlds:
            by_model: Dict[str, Dict[str, Any]] = {}
            for m in models:
                ov = [*common, *MODELS[m], f"output.dir={tmp / f'run-{w}-{m}'}"]
                s = _launch(w, ov, tmp, args.threads)
                by_model[m] = rec = {"world_size": w, "model": m, "seq_len": _seq_len(ov), "steps": s["steps"],
                                     "batch_size": batch, "samples_per_s": s["samples_per_s"],
                                     "gflops_per_batch": s["tflops_per_batch"] * 1e3,
                                     "tflops_per_batch": s["tflops_per_batch"], "train_time_s": s["train_time_s"]}
                records.append(rec)
            base = by_model.get("store_vanilla")
            for rec in by_model.values():
                rec["speedup_vs_vanilla"] = rec["samples_per_s"] / base["samples_per_s"] if base else None
                rec["flops_ratio_vs_vanilla"] = base["tflops_per_batch"] / rec["tflops_per_batch"] if base else None
    summary: Dict[str, Any] = {}
    for r in records:
        if r["model"] == "store_moba" and r["speedup_vs_vanilla"] is not None:
            summary[f"store_moba_vs_vanilla_speedup_{r['world_size']}rank"] = r["speedup_vs_vanilla"]
            summary["store_moba_vs_vanilla_flops_ratio"] = r["flops_ratio_vs_vanilla"]
    config = {"models": models, "world_sizes": worlds, "steps": steps, "batch_size_per_rank": batch, "rows": rows,
              "num_sids": k, "codebook_size": codebook, "embedding_dim": args.embedding_dim, "heads": args.heads,
              "layers": args.layers, "block_size": block, "history_len": hist, "sparsity": args.sparsity, "quick": quick,
              "sid_codes": "seeded random (speed only)", "threads_per_rank": args.threads,
              "timing": "the app's samples_per_s: train samples / slowest rank's train time (evals excluded)"}
    return BenchResult(suite="train", records=records, config=config, columns=COLUMNS, summary=summary, plot=plot,
                       derive=derive)
