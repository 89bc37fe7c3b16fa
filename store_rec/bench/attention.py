"""``store-rec bench attention``: MoBA vs dense SDPA, fwd+bwd wall time and FLOPs.

For every sequence length L, sparsity and routing, the MoBA fast path (``moba_attention(...,
impl="fast")``) and dense ``F.scaled_dot_product_attention`` run fwd+bwd on the same q/k/v
(``Tensor[B, H, L, Dh]``, fp32) in the same process, **interleaved** (moba, dense, moba, dense, ...),
and the medians are compared. FLOPs are analytic (``store_rec.ops.flops``; FlopCounterMode sees 0 for
CPU SDPA). ``flops_ratio`` is dense / MoBA for the attention core (gate included);
``module_flops_ratio`` adds the q/k/v/out projections of a ``BlockSparseAttention`` layer.

``--level`` picks what is timed (MoBA and dense always share weights; fwd + bwd to the inputs and
the parameters):

* ``op`` (default): the attention core on ``q, k, v: Tensor[B, H, L, Dh]``;
* ``layer``: a ``BlockSparseAttention`` layer (q/k/v/out projections included) vs ``dense=True``;
* ``arch``: STORE's whole interaction arch (``StoreInteractionArch``: L tokens = dense token + L-1
  sparse features, ``--arch-layers`` post-LN attention + FFN(``--ffn-dim``) blocks, mean pooling, no
  rotation) with ``attention.type`` moba vs vanilla -- what a model step pays. Its FLOPs come from
  ``StoreInteractionArch.flops`` (FFN / LayerNorm counted, attention analytic), so at this level
  ``flops_ratio`` is the arch's ratio, diluted by the FFN and projections that sparsity cannot cut.

Blocks: ``num_blocks`` (default 8) per sequence, so ``block_size = ceil(L / num_blocks)`` and the
sparsities {0, 1/4, 1/2, 3/4} are exact at every L (``--block-size`` fixes the block size instead).

Threads: ``--threads`` (default 1). On a small shared CPU, multi-threaded ATen ops wait for a
descheduled worker thread (~16 ms per parallel op measured under load), which swamps the op count
differences we want to measure; one thread gives stable ratios. Record what you ran with.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any, Dict, List

FULL_LENGTHS = (64, 128, 256, 512, 1024, 2048)
QUICK_LENGTHS = (64, 512)
SPARSITIES = (0.0, 0.25, 0.5, 0.75)
DEFAULT_ROUTING = "instance"
ALL_ROUTINGS = ("instance", "query_block", "query")

COLUMNS = (
    "seq_len",
    "sparsity",
    "routing",
    "block_size",
    "topk",
    "moba_s",
    "dense_s",
    "speedup",
    "flops_ratio",
    "module_flops_ratio",
    "moba_flops",
    "dense_flops",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=32, help="batch size B (default 32)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads H (default 4)")
    parser.add_argument("--d-model", type=int, default=128, help="model width D = H * Dh (default 128)")
    parser.add_argument("--num-blocks", type=int, default=8, help="key blocks per sequence (default 8)")
    parser.add_argument("--block-size", type=int, default=None, help="fixed block size (overrides --num-blocks)")
    parser.add_argument("--lengths", type=str, default=None, help="comma-separated L values (default by mode)")
    parser.add_argument("--sparsities", type=str, default=None, help="comma-separated sparsities (default 0,0.25,0.5,0.75)")
    parser.add_argument(
        "--routings",
        type=str,
        default=None,
        help=f"comma-separated routings measured at sparsity 0.5 besides {DEFAULT_ROUTING!r} at every sparsity "
        f"(default: all in full mode, none in quick mode)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per point (default 5; quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, see module doc)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", choices=("op", "layer", "arch"), default="op",
                        help="what is timed: the attention op, a BlockSparseAttention layer, or the whole "
                        "StoreInteractionArch (default op; see module doc)")
    parser.add_argument("--arch-layers", type=int, default=1, help="arch level: attention + FFN blocks (default 1)")
    parser.add_argument("--ffn-dim", type=int, default=None, help="arch level: FFN width (default 2 * d-model)")


def _csv(text, cast):
    return [cast(x) for x in text.split(",") if x.strip()]


def _fwd_bwd(fn, q, k, v, grad_out):
    import torch

    out = fn(q, k, v)
    if v is None:  # layer / arch level: input and parameter gradients, as in training
        out.backward(grad_out)
    else:
        torch.autograd.grad(out, (q, k, v), grad_out)


def _time_pair(moba, dense, q, k, v, grad_out, repeats: int, sync, min_seconds: float = 0.3) -> Dict[str, float]:
    """Interleaved medians of fwd+bwd wall time (one warm-up each).

    Short points get more repeats (up to 50) so that each side runs for about ``min_seconds``.
    """
    t0 = time.perf_counter()
    _fwd_bwd(moba, q, k, v, grad_out)
    _fwd_bwd(dense, q, k, v, grad_out)
    sync()
    warm = (time.perf_counter() - t0) / 2
    repeats = max(repeats, min(50, int(min_seconds / max(warm, 1e-6))))
    tm: List[float] = []
    td: List[float] = []
    for _ in range(repeats):
        for fn, acc in ((moba, tm), (dense, td)):
            t0 = time.perf_counter()
            _fwd_bwd(fn, q, k, v, grad_out)
            sync()
            acc.append(time.perf_counter() - t0)
    return {
        "moba_s": statistics.median(tm),
        "dense_s": statistics.median(td),
        "moba_min_s": min(tm),
        "dense_min_s": min(td),
        "repeats": repeats,
    }


def _fit_exponent(points: List[tuple]) -> float:
    """Least-squares slope of log(time) vs log(L)."""
    import numpy as np

    if len(points) < 2:
        return float("nan")
    x = np.log([p[0] for p in points])
    y = np.log([p[1] for p in points])
    return float(np.polyfit(x, y, 1)[0])


def plot(records: List[Dict[str, Any]], path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    default = [r for r in records if r["routing"] == DEFAULT_ROUTING]
    dense = {}
    for r in default:
        dense.setdefault(r["seq_len"], []).append(r["dense_s"])
    Ls = sorted(dense)
    ax1.plot(Ls, [statistics.median(dense[L]) for L in Ls], "k-o", label="dense SDPA")
    for s in sorted({r["sparsity"] for r in default}):
        pts = sorted((r["seq_len"], r["moba_s"]) for r in default if r["sparsity"] == s)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "--o", label=f"MoBA s={s:g} ({DEFAULT_ROUTING})")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("sequence length L")
    ax1.set_ylabel("fwd+bwd seconds (median)")
    ax1.set_title("attention fwd+bwd time")
    ax1.legend(fontsize=8)
    for routing in sorted({r["routing"] for r in records}):
        for s in sorted({r["sparsity"] for r in records if r["routing"] == routing}):
            pts = sorted((r["seq_len"], r["speedup"]) for r in records if r["routing"] == routing and r["sparsity"] == s)
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=f"{routing} s={s:g}")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("sequence length L")
    ax2.set_ylabel("speedup = dense_s / moba_s")
    ax2.set_title("MoBA speedup over dense SDPA")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args):
    import torch
    import torch.nn.functional as F

    from store_rec.bench.common import BenchResult
    from store_rec.errors import UserError
    from store_rec.ops.flops import dense_attention_flops, moba_attention_flops, num_blocks, projection_flops, topk_for
    from store_rec.ops.moba import BlockSparseAttention, moba_attention

    quick = bool(getattr(args, "quick", False))
    lengths = _csv(args.lengths, int) if args.lengths else list(QUICK_LENGTHS if quick else FULL_LENGTHS)
    sparsities = _csv(args.sparsities, float) if args.sparsities else list(SPARSITIES)
    if args.routings is not None:
        # the default routing is measured at every sparsity already; listing it adds nothing
        extra = list(dict.fromkeys(r for r in _csv(args.routings, str) if r != DEFAULT_ROUTING))
    else:
        extra = [] if quick else [r for r in ALL_ROUTINGS if r != DEFAULT_ROUTING]
    repeats = args.repeats or (3 if quick else 5)
    if args.d_model % args.heads:
        raise UserError(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise UserError(f"--sparsities: {s} is not in [0, 1)")
    for r in extra:
        if r not in ALL_ROUTINGS:
            raise UserError(f"--routings: unknown routing {r!r} (choose from {ALL_ROUTINGS})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    B, H, D = args.batch, args.heads, args.d_model
    Dh = D // H
    gen = torch.Generator().manual_seed(args.seed)

    points = [(L, s, DEFAULT_ROUTING) for L in lengths for s in sparsities]
    points += [(L, 0.5, r) for L in lengths for r in extra]
    records: List[Dict[str, Any]] = []
    level = args.level
    for L, s, routing in points:
        bs = args.block_size or math.ceil(L / args.num_blocks)
        if level == "arch":
            from store_rec.models.config import AttentionConfig, RotationConfig
            from store_rec.models.store import StoreInteractionArch
            from store_rec.ops.flops import interaction_flops

            def arch(kind: str, bs=bs, s=s, routing=routing) -> StoreInteractionArch:
                att = AttentionConfig(type=kind, sparsity=s, block_size=bs, routing=routing, num_layers=args.arch_layers,
                                      num_heads=H, ffn_dim=args.ffn_dim or 2 * D, pooling="mean")
                return StoreInteractionArch(L - 1, D, rotation=RotationConfig(enabled=False), attention=att).to(device)

            m_arch, d_arch = arch("moba"), arch("vanilla")
            d_arch.load_state_dict(m_arch.state_dict())
            dense_x = torch.randn(B, D, generator=gen).to(device).requires_grad_(True)
            sparse_x = torch.randn(B, L - 1, D, generator=gen).to(device).requires_grad_(True)
            g = torch.randn(B, D, generator=gen).to(device)
            t = _time_pair(lambda d, sp, _v: m_arch(dense_features=d, sparse_features=sp),
                           lambda d, sp, _v: d_arch(dense_features=d, sparse_features=sp), dense_x, sparse_x, None, g,
                           repeats, sync)
            mf, df = interaction_flops(m_arch, B), interaction_flops(d_arch, B)
            del m_arch, d_arch, dense_x, sparse_x, g
        elif level == "layer":
            x, g = (torch.randn(B, L, D, generator=gen).to(device) for _ in range(2))
            x.requires_grad_(True)
            layer = BlockSparseAttention(D, H, block_size=bs, sparsity=s, routing=routing).to(device)
            base = BlockSparseAttention(D, H, block_size=bs, dense=True).to(device)
            base.load_state_dict(layer.state_dict())
            t = _time_pair(lambda x, _k, _v: layer(x), lambda x, _k, _v: base(x), x, None, None, g, repeats, sync)
            mf, df = layer.flops(B, L), base.flops(B, L)
            del x, g, layer, base
        else:
            q, k, v, g = (torch.randn(B, H, L, Dh, generator=gen).to(device) for _ in range(4))
            for t_ in (q, k, v):
                t_.requires_grad_(True)

            def moba(q, k, v, bs=bs, s=s, routing=routing):
                return moba_attention(q, k, v, block_size=bs, sparsity=s, routing=routing, impl="fast")

            def dense(q, k, v):
                return F.scaled_dot_product_attention(q, k, v)

            t = _time_pair(moba, dense, q, k, v, g, repeats, sync)
            mf = moba_attention_flops(B, H, L, Dh, block_size=bs, sparsity=s, routing=routing, impl="fast")["total"]
            df = dense_attention_flops(B, H, L, Dh)
            del q, k, v, g
        proj = 0 if level != "op" else projection_flops(B, L, D)
        nb = num_blocks(L, bs)
        records.append(
            {
                "seq_len": L,
                "sparsity": s,
                "routing": routing,
                "block_size": bs,
                "num_blocks": nb,
                "topk": topk_for(s, nb),
                "moba_s": t["moba_s"],
                "dense_s": t["dense_s"],
                "speedup": t["dense_s"] / t["moba_s"],
                "moba_min_s": t["moba_min_s"],
                "dense_min_s": t["dense_min_s"],
                "flops_ratio": df / mf,
                "module_flops_ratio": (df + proj) / (mf + proj),
                "moba_flops": mf,
                "dense_flops": df,
                "batch": B,
                "heads": H,
                "head_dim": Dh,
                "d_model": D,
                "repeats": t["repeats"],
                "level": level,
            }
        )

    summary: Dict[str, Any] = {}
    half = sorted(((r["seq_len"], r) for r in records if r["routing"] == DEFAULT_ROUTING and r["sparsity"] == 0.5),
                  key=lambda t: t[0])
    if half:
        summary["dense_time_exponent"] = _fit_exponent([(L, r["dense_s"]) for L, r in half])
        summary["moba_time_exponent_s0.5"] = _fit_exponent([(L, r["moba_s"]) for L, r in half])
        at512 = [r for L, r in half if L == 512]
        if at512:
            summary["speedup_L512_s0.5"] = at512[0]["speedup"]
            summary["flops_ratio_L512_s0.5"] = at512[0]["flops_ratio"]
    config = {
        "batch": B,
        "heads": H,
        "d_model": D,
        "head_dim": Dh,
        "num_blocks": args.num_blocks,
        "block_size": args.block_size,
        "lengths": lengths,
        "sparsities": sparsities,
        "default_routing": DEFAULT_ROUTING,
        "extra_routings_at_s0.5": extra,
        "min_repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "dtype": "float32",
        "quick": quick,
        "level": {"op": "op (attention core)", "layer": "layer (BlockSparseAttention incl. projections)",
                  "arch": f"arch (StoreInteractionArch, {args.arch_layers} attention+FFN block(s), ffn {args.ffn_dim or 2 * D})"}[level],
        "timing": "median fwd+bwd wall seconds, MoBA and dense interleaved in one process",
    }
    return BenchResult(suite="attention", records=records, config=config, columns=COLUMNS, summary=summary, plot=plot)
