"""``store-rec bench sequence``: STORE with behaviour sequences, MoBA vs vanilla attention vs history length N.

The issue-13 regime: the user's last N history items become ``N * K`` SID tokens (``model.history``,
``item_tokens: sid``) in front of STORE's non-sequential tokens, so the interaction sees hundreds of
tokens (N = 128, K = 3: 384 history tokens). For every N in ``--lengths``:

* ``store_moba``: STORE with MoBA at ``--sparsity`` (default 1/2; instance routing, blocks of
  ``--items-per-block`` whole history items, the target item's SID tokens gate the blocks:
  ``attention.gate: item``);
* ``store_vanilla``: the same model (same weights: its state dict is copied) with dense SDPA
  attention -- the OneTrans-style model.

Measured per (N, model), both models in this one process on the same batches:

* ``tokens``: the interaction's sequence length (history + non-sequential tokens);
* ``gflops_per_batch``: analytic + counted GFLOPs of one fwd+bwd per batch of **1024**
  (``store_rec.ops.flops.model_flops``; lookups not counted), ``flops_ratio`` = vanilla / MoBA;
* ``step_s``: median wall seconds of one training step (forward, loss, backward,
  ``torch.optim.Adam`` step over every parameter of the unsharded model) at ``--batch-size``; MoBA
  and vanilla steps are **interleaved** (moba, vanilla, moba, ...) so load on a shared machine hits
  both alike; ``samples_per_s = batch / step_s``; ``speedup`` = vanilla step_s / MoBA step_s;
* ``activation_mb``: bytes of the tensors autograd saves for backward in one training forward
  (``torch.autograd.graph.saved_tensors_hooks``, storages counted once): the activation memory a
  step holds at its peak, deterministic, unlike the process RSS (recorded once in ``config``).

At the longest N a **sparsity sweep** (``--sweep``, default 0.25, 0.5, 0.75; the paper's Fig. 2 on
real sequences) times MoBA at every sparsity against the same vanilla model, all in the same
interleaved rounds (records with ``point: sweep``; the ``--sparsity`` one is the ``per_n`` record). The JSON ``summary`` holds
``tokens``, ``tflops_ratio`` (vanilla / MoBA) and ``speedup`` (vanilla step time / MoBA step time,
same process) at the longest N and ``--sparsity``.

Data: the synthetic generator with history (``history_len`` = the longest N; shorter N are the
loader's ``history_len`` truncation), a seeded random SID table (K = ``--num-sids`` codes per item):
this suite measures cost, not accuracy (configs/experiments/sequence.yaml measures accuracy).
Threads: ``--threads`` (default 1; see ``store_rec.bench.attention``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from store_rec.bench.common import BenchResult

FULL_LENGTHS = (16, 64, 128, 256, 512)
TINY_LENGTHS = (4, 8)
SWEEP = (0.25, 0.5, 0.75)

COLUMNS = ("history_len", "point", "tokens", "model", "sparsity", "gflops_per_batch", "flops_ratio", "step_s", "samples_per_s",
           "speedup", "activation_mb", "batch_size", "repeats")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiny", action="store_true", help="CI mode: tiny data, N in {4, 8} (same as --quick)")
    parser.add_argument("--lengths", default=None, help="comma-separated history lengths N (default 16,64,128,256,512)")
    parser.add_argument("--sweep", default=None, help="MoBA sparsities measured at the longest N (default 0.25,0.5,0.75)")
    parser.add_argument("--sparsity", type=float, default=0.5, help="MoBA sparsity of the per-N comparison (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch of a timed step (default 128; tiny 16)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model and point (default 3; tiny 2)")
    parser.add_argument("--num-sids", type=int, default=3, help="SID tokens per item K (default 3)")
    parser.add_argument("--items-per-block", type=int, default=8, help="history items per MoBA block (default 8)")
    parser.add_argument("--embedding-dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)


def _csv(text: str, cast):  # noqa: ANN001, ANN202
    return [cast(x) for x in text.split(",") if x.strip()]


def _model_cfg(args: argparse.Namespace, n: int, kind: str, sparsity: float, block_size: int):  # noqa: ANN202
    from store_rec.config import from_dict
    from store_rec.models.config import ModelConfig

    D = args.embedding_dim
    att: Dict[str, Any] = {"type": kind, "num_heads": args.heads, "num_layers": args.layers, "ffn_dim": 2 * D,
                           "pooling": "mean", "block_size": block_size, "routing": "instance"}
    if kind == "moba":
        att.update(sparsity=sparsity, gate="item")
    return from_dict(ModelConfig, {"name": "store", "embedding_dim": D, "tokenizer": "opmq", "item_feature": "item_id",
                                   "attention": att, "history": {"enabled": True, "max_len": n, "item_tokens": "sid"}},
                     "model")


def _tokens(model) -> int:  # noqa: ANN001
    """The interaction's sequence length (history tokens included)."""
    return int(model.model.inter_arch.num_tokens)


def activation_bytes(train, batch) -> int:  # noqa: ANN001
    """Bytes of the tensors autograd saves for backward in one training forward of ``train(batch)``
    (each storage counted once; views of one storage share it)."""
    import torch

    seen: Dict[Any, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[(st.data_ptr(), t.device)] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. sparse / meta tensors
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = train(batch)
    del loss
    return int(sum(seen.values()))


class _Stepper:
    """One model's training step: forward, loss, backward, Adam step."""

    def __init__(self, model) -> None:  # noqa: ANN001
        import torch

        from store_rec.models.ranking import RankingTrain

        self.model = model
        self.train = RankingTrain(model)
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def __call__(self, batch) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss, _ = self.train(batch)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def _interleaved(steppers: Dict[str, "_Stepper"], batches: List[Any], repeats: int) -> Dict[str, List[float]]:
    """One warm-up step each, then ``repeats`` rounds of one step per model in turn."""
    for s in steppers.values():
        s(batches[0])
    times: Dict[str, List[float]] = {k: [] for k in steppers}
    for r in range(repeats):
        b = batches[(r + 1) % len(batches)]
        for k, s in steppers.items():
            times[k].append(s(b))
    return times


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    per_n = [r for r in records if r.get("point") == "per_n"]
    longest = max(r["history_len"] for r in records)
    sweep = [r for r in records if r["history_len"] == longest and r["model"] == "store_moba"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for model in ("store_vanilla", "store_moba"):
        rs = sorted((r for r in per_n if r["model"] == model), key=lambda r: r["tokens"])
        if rs:
            axes[0].plot([r["tokens"] for r in rs], [r["step_s"] for r in rs], "-o", label=model)
            axes[1].plot([r["tokens"] for r in rs], [r["gflops_per_batch"] for r in rs], "-o", label=model)
    axes[0].set_xlabel("tokens (history N*K + non-sequential)")
    axes[0].set_ylabel("train step seconds (median)")
    axes[0].set_title("training step time")
    axes[1].set_xlabel("tokens")
    axes[1].set_ylabel("GFLOPs per batch of 1024 (fwd+bwd)")
    axes[1].set_title("model FLOPs")
    for ax in axes[:2]:
        ax.legend()
    rs = sorted(sweep, key=lambda r: r["sparsity"])
    if rs:
        axes[2].plot([r["sparsity"] for r in rs], [r["flops_ratio"] for r in rs], "-o", label="FLOPs ratio (vanilla/MoBA)")
        axes[2].plot([r["sparsity"] for r in rs], [r["speedup"] for r in rs], "-s", label="step speedup (vanilla/MoBA)")
        axes[2].axhline(1.0, color="k", lw=0.8)
        axes[2].set_xlabel("MoBA sparsity (fraction of history blocks skipped)")
        axes[2].set_title(f"sparsity sweep at {rs[0]['tokens']} tokens")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> BenchResult:
    import numpy as np
    import torch

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.data.sid_table import write_sid_table
    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.errors import UserError
    from store_rec.models.factory import build_model
    from store_rec.models.ranking import RankingTrain
    from store_rec.ops.flops import model_flops

    tiny = bool(getattr(args, "quick", False) or getattr(args, "tiny", False))
    lengths = sorted(_csv(args.lengths, int)) if args.lengths else list(TINY_LENGTHS if tiny else FULL_LENGTHS)
    sweep = _csv(args.sweep, float) if args.sweep else list(SWEEP)
    if not lengths or min(lengths) < 1:
        raise UserError(f"--lengths: need history lengths >= 1, got {args.lengths!r}")
    for s in [*sweep, args.sparsity]:
        if not 0.0 < s < 1.0:
            raise UserError(f"--sweep / --sparsity: {s} is not in (0, 1)")
    if args.items_per_block < 1 or args.num_sids < 1:
        raise UserError("--items-per-block and --num-sids must be >= 1")
    if args.embedding_dim % args.heads:
        raise UserError(f"--embedding-dim ({args.embedding_dim}) must be divisible by --heads ({args.heads})")
    batch = args.batch_size or (16 if tiny else 128)
    repeats = args.repeats or (2 if tiny else 3)
    torch.set_num_threads(args.threads)
    K, C = args.num_sids, 16
    rows, items, users = (1_500, 100, 40) if tiny else (20_000, 2_000, 400)
    records: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sequence-") as tmp_s:
        tmp = Path(tmp_s)
        schema = prepare_synthetic(tmp / "data", rows=rows, items=items, users=users, seed=args.seed, num_clusters=8,
                                   history_len=max(lengths))
        n_items = schema.feature("item_id").vocab_size - 1
        sids = tmp / "sids.parquet"
        rng = np.random.default_rng(args.seed)
        write_sid_table(sids, np.arange(1, n_items + 1), rng.integers(0, C, (n_items, K)), method="opmq",
                        codebook_size=C, item_feature="item_id")

        def compare(n: int, sparsities: List[float]) -> None:
            """MoBA at each of ``sparsities`` and vanilla at history length ``n``, steps interleaved."""
            loader = ParquetBatchLoader(tmp / "data", "train", batch, sid_table=sids, history_len=n, drop_last=True)
            batches = [b for _, b in zip(range(3), loader)]
            if not batches:
                raise UserError(f"bench sequence: no full batch of {batch} rows in the synthetic train split")
            bs = args.items_per_block * K
            torch.manual_seed(args.seed)
            vanilla = build_model(_model_cfg(args, n, "vanilla", 0.5, bs), loader.schema)
            models = {}
            for s in sparsities:
                m = build_model(_model_cfg(args, n, "moba", s, bs), loader.schema)
                m.load_state_dict(vanilla.state_dict())
                models[f"moba_{s:g}"] = m
            models["vanilla"] = vanilla
            t = _interleaved({k: _Stepper(m) for k, m in models.items()}, batches, repeats)
            med = {k: statistics.median(v) for k, v in t.items()}
            v_flops = model_flops(vanilla, 1024)
            common = {"history_len": n, "batch_size": batch, "repeats": repeats, "block_size": bs}
            records.append({**common, "point": "per_n", "model": "store_vanilla", "tokens": _tokens(vanilla),
                            "sparsity": 0.0, "gflops_per_batch": v_flops / 1e9, "flops_ratio": 1.0,
                            "step_s": med["vanilla"], "samples_per_s": batch / med["vanilla"], "speedup": 1.0,
                            "activation_mb": activation_bytes(RankingTrain(vanilla), batches[0]) / 2**20,
                            "step_min_s": min(t["vanilla"])})
            for s in sparsities:
                k, m = f"moba_{s:g}", models[f"moba_{s:g}"]
                m_flops = model_flops(m, 1024)
                records.append({**common, "point": "per_n" if s == args.sparsity else "sweep", "model": "store_moba",
                                "tokens": _tokens(m), "sparsity": s, "gflops_per_batch": m_flops / 1e9,
                                "flops_ratio": v_flops / m_flops, "step_s": med[k], "samples_per_s": batch / med[k],
                                "speedup": med["vanilla"] / med[k], "vanilla_step_s": med["vanilla"],
                                "activation_mb": activation_bytes(RankingTrain(m), batches[0]) / 2**20,
                                "step_min_s": min(t[k])})

        for n in lengths:
            # the sparsity sweep runs at the longest N, in the same interleaved rounds as the main comparison
            compare(n, sorted({args.sparsity, *sweep}) if n == max(lengths) else [args.sparsity])
    longest = [r for r in records if r["point"] == "per_n" and r["history_len"] == max(lengths) and r["model"] == "store_moba"][0]
    summary = {"tokens": longest["tokens"], "tflops_ratio": longest["flops_ratio"], "speedup": longest["speedup"],
               "history_len": longest["history_len"], "sparsity": longest["sparsity"]}
    config = {"lengths": lengths, "sweep": sweep, "sparsity": args.sparsity, "batch_size": batch, "repeats": repeats,
              "num_sids": K, "codebook_size": C, "items_per_block": args.items_per_block,
              "embedding_dim": args.embedding_dim, "heads": args.heads, "layers": args.layers, "ffn_dim": 2 * args.embedding_dim,
              "rows": rows, "items": items, "users": users, "threads": torch.get_num_threads(), "tiny": tiny,
              "optimizer": "torch.optim.Adam on every parameter of the unsharded model",
              "timing": "median train-step wall seconds, MoBA and vanilla interleaved in one process on the same batches",
              "gflops": "store_rec.ops.flops.model_flops per batch of 1024, fwd+bwd, lookups not counted",
              "peak_rss_mb_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "sid_codes": "seeded random (cost only)"}
    return BenchResult(suite="sequence", records=records, config=config, columns=COLUMNS, summary=summary, plot=plot)
