"""Offline distributed tokenizer: train data-parallel on N ranks, encode each shard, write one SID table.

Run under torchx (the ``tokenize`` component of ``launch/components.py``), ``torchrun`` or plain
``python`` (1 rank); gloo on cpu, nccl on cuda::

    torchx run -s local_cwd launch/components.py:tokenize --embeddings EMB.parquet --out SIDS.parquet \\
        --report REPORT.json --num_sids 3 --codebook_size 16 --j 1x2
    torchx run -s local_cwd dist.ddp -j 1x2 -m store_rec.distributed.tokenizer -- \\
        --embeddings EMB.parquet --out SIDS.parquet --num-sids 3 --codebook-size 16
    torchrun --nproc-per-node 2 -m store_rec.distributed.tokenizer --embeddings EMB.parquet ...

Flags: a subset of ``store-rec tokenize``'s (``--method opmq|rqvae|opq``, ``--config YAML`` with
``model:``/``train:``/``opq:`` sections, ``--steps``, ``--seed``, ``--dedup``, ``--item-feature``; the
input is an EMB.parquet; ``--num-sids`` / ``--codebook-size`` are required) plus ``--epochs`` /
``--batch-size`` (per rank). One definition of them all: :mod:`store_rec.tokenizer.flags`.

What each rank does:

1. reads its contiguous row range of the embedding parquet (only the row groups it needs);
2. builds the same tokenizer (seeded) and broadcasts rank 0's parameters and buffers, so training starts
   identical everywhere;
3. trains on its shard. OPMQ / RQ-VAE: :func:`store_rec.tokenizer.train.fit_tokenizer`; gradients are
   averaged across ranks by autograd hooks on every parameter (the DDP all-reduce, without wrapping
   the module, so the tokenizer's own methods stay reachable); the quantizer all-reduces its EMA
   codebook statistics and makes k-means initialisation and dead-code restarts identical on every rank.
   Every rank trains on the same number of rows (the smallest shard size) so all ranks run the same
   number of steps. OPQ: k-means sums/counts and the Procrustes cross-covariance ``X^T Y`` are
   all-reduced, so every rank computes the same rotation;
4. checks that the tokenizer state is bit-identical on every rank (sha256 of the state dict), encodes
   its own full shard, computes additive report statistics of its shard (reconstruction error, cosine,
   embedding moments, per-codebook code counts: :func:`store_rec.tokenizer.report.partial_stats`) which
   are all-reduced, and sends ``(ids, codes as int16)`` to rank 0, which writes the complete SID table
   atomically (temp file + rename) and the report (tuple statistics need the codes; nothing else is
   re-read or re-encoded on rank 0).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from store_rec.distributed.env import init_distributed
from store_rec.errors import DataError, UserError
from store_rec.tokenizer.flags import add_tokenize_flags

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------- primitives


def shard_range(n: int, rank: int, world: int) -> Tuple[int, int]:
    """Contiguous rows ``[start, stop)`` of rank ``rank``: sizes differ by at most one row."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def read_embedding_shard(path: os.PathLike, rank: int, world: int, expected_dim: Optional[int] = None
                         ) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Rows of rank ``rank`` of an EMB.parquet: ``(ids int64[n], emb float32[n, d], start, total)``.

    Only the parquet row groups overlapping the rank's range are read. Validation (NaN/inf, dim,
    duplicates within the shard) is :func:`store_rec.tokenizer.embeddings.load_embeddings`'s; duplicate
    ids across shards are caught when rank 0 assembles the SID table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store_rec.tokenizer.embeddings import _validate

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {path} does not exist")
    if path.suffix != ".parquet":
        raise UserError(f"{path}: the distributed tokenizer reads EMB.parquet (convert .npy with save_embeddings)")
    pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows
    start, stop = shard_range(total, rank, world)
    pieces, row0 = [], 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        lo, hi = max(start, row0), min(stop, row0 + n)
        if lo < hi:
            pieces.append(pf.read_row_group(g, columns=["item", "embedding"]).slice(lo - row0, hi - lo))
        row0 += n
    if not pieces:
        raise DataError(f"{path}: rank {rank} of {world} has no rows ({total} rows in the file)")
    table = pa.concat_tables(pieces)
    ids = table.column("item").to_numpy().astype(np.int64)
    col = table.column("embedding").combine_chunks()
    emb = col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float32)
    _validate(f"{path} rows [{start}, {stop})", ids, emb, expected_dim, None)
    return ids, emb, start, total


def broadcast_module(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (in place)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=src)


def average_gradients_hooks(model: nn.Module) -> List[Any]:
    """Autograd hooks that all-reduce (mean) each parameter's gradient as it is produced.

    Same result as wrapping in ``DistributedDataParallel`` (mean of the ranks' gradients), but the
    module stays unwrapped. Every rank must run the same forward/backward sequence. Returns the hook
    handles (``h.remove()`` to detach).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return []
    world = dist.get_world_size()

    def hook(g: Tensor) -> Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g / world

    return [p.register_hook(hook) for p in model.parameters() if p.requires_grad]


def state_checksum(model: nn.Module) -> str:
    """sha256 over the state dict (names, shapes, bytes): equal on all ranks <=> identical tokenizer."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if not isinstance(v, Tensor):
            continue
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if v.numel() else b"")
    return h.hexdigest()


def check_identical_across_ranks(model: nn.Module) -> List[str]:
    """All ranks' :func:`state_checksum`; raises RuntimeError if they differ."""
    digest = state_checksum(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [digest]
    all_d: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(all_d, digest)
    if len(set(all_d)) != 1:
        raise RuntimeError(f"tokenizer state differs across ranks: {all_d}")
    return all_d


def gather_to_rank0(ids: np.ndarray, codes: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Concatenate every rank's ``(ids, codes)`` in rank order on rank 0 (``None`` elsewhere)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ids, codes
    objs: Optional[List[Any]] = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((ids, codes), objs, dst=0)
    if dist.get_rank() != 0:
        return None
    assert objs is not None
    return np.concatenate([o[0] for o in objs]), np.concatenate([o[1] for o in objs])


# ------------------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m store_rec.distributed.tokenizer",
                                description="Offline data-parallel tokenizer: train on N ranks, write one complete "
                                            "SID table (flags as store-rec tokenize).")
    return add_tokenize_flags(p, distributed=True)


def _spec(args: argparse.Namespace) -> Any:
    """The :class:`~store_rec.tokenizer.train.TokenizeSpec` of the flags and ``--config`` (validates both,
    including K, C > 0)."""
    from store_rec.tokenizer.train import load_tokenize_spec

    return load_tokenize_spec(getattr(args, "config", None), method=getattr(args, "method", "opmq"),
                              num_sids=args.num_sids, codebook_size=args.codebook_size,
                              steps=getattr(args, "steps", None), seed=args.seed, epochs=args.epochs,
                              batch_size=args.batch_size)


def _encode(model: nn.Module, emb: Tensor) -> np.ndarray:
    """``Tensor[n, d] -> int64[n, K]`` (memory-bounded batching is the tokenizer's own)."""
    model.eval()
    with torch.no_grad():
        return model.encode(emb).cpu().numpy().astype(np.int64)


def _reduced_report_stats(model: nn.Module, emb: Tensor, codes: np.ndarray) -> Dict[str, Any]:
    """Report fields from this rank's shard, summed over all ranks (every rank calls this).

    With a decodable tokenizer: reconstruction MSE / cosine, data variance, utilization, perplexity
    (:func:`store_rec.tokenizer.report.partial_stats`); otherwise utilization / perplexity from the codes.
    """
    from store_rec.tokenizer.report import finish_partials, partial_stats, usage_stats

    k, c = codes.shape[1], int(model.codebook_size)
    codes_t = torch.from_numpy(codes)
    if hasattr(model, "decode") and hasattr(model, "_decode"):
        parts = partial_stats(model, emb, codes_t.to(emb.device))
    else:
        parts = {"counts": torch.stack([torch.bincount(codes_t[:, j], minlength=c) for j in range(k)])}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for key in sorted(parts):  # same order on every rank; nccl needs device tensors
            t = parts[key].to(emb.device)
            dist.all_reduce(t)
            parts[key] = t.cpu()
    if "n" in parts:
        return finish_partials(parts)
    return usage_stats(parts["counts"].numpy())


def run_offline(args: argparse.Namespace, *, build=None, fit=None) -> Dict[str, Any]:
    """The per-rank program (see module docstring). Returns a summary dict on every rank (``tokenizer``:
    the trained module, identical on every rank; rank 0 also has ``report``).

    ``build(dim, args) -> tokenizer`` and ``fit(tokenizer, Tensor[n, d], args)`` are injectable so the
    distributed mechanics can be exercised with any tokenizer that has ``encode``; by default they are
    :func:`~store_rec.tokenizer.train.build_tokenizer` / ``train_tokenizer`` of the spec built here once.
    """
    from store_rec.tokenizer.embeddings import load_trained_mask
    from store_rec.tokenizer.train import build_tokenizer, train_tokenizer

    env = init_distributed()
    rank, world, device = env.rank, env.world_size, env.device
    spec = _spec(args)  # validates --config / flags (K, C > 0) on every rank before any collective
    if build is None:
        build = lambda dim, _args: build_tokenizer(spec, dim)  # noqa: E731
    if fit is None:
        fit = lambda model, emb, _args: train_tokenizer(model, emb, spec) or {}  # noqa: E731
    t0 = time.perf_counter()
    ids, emb_np, start, total = read_embedding_shard(args.embeddings, rank, world)
    shard_rows = [start, start + len(ids)]
    # rows never trained (pretrain's ``trained`` column) are left out, as by ``store-rec tokenize``: they get the
    # OOV SID from the loader instead of one shared collapsed tuple
    trained = load_trained_mask(args.embeddings)
    n_untrained = 0
    if trained is not None:
        if len(trained) != total:
            raise DataError(f"{args.embeddings}: 'trained' column has {len(trained)} rows for {total} items")
        n_untrained = int((~trained).sum())
        keep = trained[start:start + len(ids)]
        ids, emb_np = ids[keep], emb_np[keep]
        if n_untrained and rank == 0:
            logger.warning("%s: %d of %d items have an untrained (initial) embedding; they are not tokenized and get "
                           "the OOV SID", args.embeddings, n_untrained, total)
        total -= n_untrained
        if total == 0:
            raise UserError(f"{args.embeddings}: no item has a trained embedding ('trained' column all false)")
    emb = torch.from_numpy(emb_np).to(device)
    if args.codebook_size > total:
        raise UserError(f"--codebook-size {args.codebook_size} > number of items {total}: codebooks cannot be "
                        "initialised from data")
    torch.manual_seed(spec.train.seed)
    model = build(emb.shape[1], args).to(device)
    broadcast_module(model)
    # equal step counts on every rank: train on the first n rows of each shard, n = the smallest shard
    n_local = torch.tensor([len(ids)], dtype=torch.long)
    if dist.is_available() and dist.is_initialized() and world > 1:
        dist.all_reduce(n_local, op=dist.ReduceOp.MIN)
    n_train = int(n_local[0])
    if n_train == 0:
        raise UserError(f"{args.embeddings}: a rank has no trained item to fit on ({world} ranks); use fewer ranks")
    hooks = average_gradients_hooks(model)
    try:
        fit_info = fit(model, emb[:n_train], args)
    except FloatingPointError as e:  # train_tokenizer: a non-finite loss stops training
        raise UserError(f"{args.embeddings}: tokenizer training diverged: {e}; nothing written (rescale the "
                        "embeddings, e.g. L2-normalise each row, or lower train.lr)") from None
    finally:
        for h in hooks:
            h.remove()
    train_s = time.perf_counter() - t0
    digests = check_identical_across_ranks(model)
    t1 = time.perf_counter()
    codes = _encode(model, emb)
    enc_s = time.perf_counter() - t1
    stats = _reduced_report_stats(model, emb, codes)
    code_dtype = np.int16 if args.codebook_size <= np.iinfo(np.int16).max else np.int32
    gathered = gather_to_rank0(ids, codes.astype(code_dtype))
    enc_all = _gather_floats(enc_s)
    stats["untrained_items"] = stats["oov_sid_items"] = n_untrained
    summary: Dict[str, Any] = {"rank": rank, "world_size": world, "rows": shard_rows,
                               "state_sha256": digests[0], "train_rows_per_rank": n_train, "tokenizer": model}
    if rank == 0:
        assert gathered is not None
        all_ids, all_codes = gathered
        timing = {"train_seconds": round(train_s, 3), "encode_seconds_per_rank": [round(v, 4) for v in enc_all],
                  "encode_items_per_s": float(total / max(max(enc_all), 1e-9))}
        summary.update(_write_outputs(args, spec, model, all_ids, all_codes.astype(np.int64), fit_info, world,
                                      time.perf_counter() - t0, digests, stats, timing))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary


def _gather_floats(value: float) -> List[float]:
    """Every rank's ``value`` (all ranks get the list)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def _write_outputs(args: argparse.Namespace, spec: Any, model: nn.Module, ids: np.ndarray, codes: np.ndarray,
                   fit_info: Any, world: int, seconds: float, digests: Sequence[str],
                   stats: Dict[str, Any], timing: Dict[str, Any]) -> Dict[str, Any]:
    """Rank 0: the SID table and the report (from the all-reduced ``stats`` and the gathered codes)."""
    from store_rec.fileio import atomic_write_json
    from store_rec.tokenizer.embeddings import read_metadata
    from store_rec.tokenizer.report import tuple_stats

    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{args.embeddings}: duplicate id {int(uniq[np.argmax(counts > 1)])} across shards")
    meta = read_metadata(args.embeddings)
    feature = args.item_feature or meta.get("item_feature", "item")
    method = spec.method
    write_sid_parquet(args.out, ids, codes, method=method, codebook_size=args.codebook_size, item_feature=feature,
                      dedup=args.dedup)
    report: Dict[str, Any] = {"method": method, "item_feature": feature,
                              "distributed": {"world_size": world, "state_sha256": list(digests),
                                              "report": "additive statistics all-reduced over ranks; tuple "
                                                        "statistics from the codes gathered on rank 0"},
                              "num_items": int(len(ids)), "num_sids": int(codes.shape[1]),
                              "codebook_size": args.codebook_size, "embedding_dim": int(model.input_dim),
                              "seconds": round(seconds, 3), **timing}
    report.update(stats)
    report["num_items"] = int(len(ids))
    report.update(tuple_stats(codes, args.codebook_size))
    if hasattr(model, "orthogonality_error"):
        with torch.no_grad():
            report["orthogonality_error"] = float(model.orthogonality_error())
    if isinstance(fit_info, dict):
        report["training"] = {k: v for k, v in fit_info.items() if isinstance(v, (int, float, str, list))}
    report["config"] = spec.raw
    if args.report:
        atomic_write_json(args.report, report)
    return {"report": report}


def write_sid_parquet(path: os.PathLike, ids: np.ndarray, codes: np.ndarray, *, method: str, codebook_size: int,
                      item_feature: str, dedup: bool = False) -> Path:
    """Write the SID table (:func:`store_rec.data.sid_table.write_sid_table` layout) with rows sorted by
    item id, atomically; ``sid_dedup`` (0, 1, 2 ... among items sharing a tuple) then follows item-id order."""
    from store_rec.data.sid_table import write_sid_table

    order = np.argsort(ids, kind="stable")
    return write_sid_table(path, ids[order], codes[order], method=method, codebook_size=codebook_size,
                           item_feature=item_feature, dedup=dedup)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from store_rec.errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run_offline(args)
    except USER_ERRORS as e:
        print(f"store_rec.distributed.tokenizer: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if summary["rank"] == 0:
        rep = summary["report"]
        print(f"wrote {args.out}: {rep['method']} {rep['num_items']} items, K={rep['num_sids']}, "
              f"C={rep['codebook_size']}, world_size={summary['world_size']}, "
              f"recon_mse {rep.get('recon_mse', float('nan')):.4g}, unique-tuple rate {rep['unique_tuple_rate']:.4f}, "
              f"utilization {[round(u, 3) for u in rep['utilization']]}, state sha256 {summary['state_sha256'][:12]} "
              f"(identical on all ranks), {rep['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
