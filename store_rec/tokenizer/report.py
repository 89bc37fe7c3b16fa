"""Quality report of a trained tokenizer over all items (JSON-ready dict).

The report is assembled from additive partial statistics (:func:`partial_stats`: sums over items of the
reconstruction error, cosine, embedding moments and per-codebook code counts), so a sharded table can be
reported by summing the partials of every shard (the offline distributed tokenizer all-reduces them);
only the tuple statistics (unique-tuple rate, collisions) need the codes themselves (:func:`tuple_stats`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn

from store_rec.data.sid_table import dedup_tokens  # noqa: F401  (re-exported: the SID table format owns it)

#: rows per decode batch in :func:`partial_stats` (bounded memory whatever N is)
DECODE_BATCH = 16384


def usage_stats(counts: np.ndarray) -> Dict[str, Any]:
    """Per-position ``utilization`` (fraction of codewords used) and ``perplexity`` (exp of the code
    entropy) from code counts ``int[K, C]``."""
    util, ppl = [], []
    for cnt in np.asarray(counts):
        total = cnt.sum()
        p = cnt[cnt > 0] / max(total, 1)
        util.append(float((cnt > 0).mean()))
        ppl.append(float(math.exp(-(p * np.log(p)).sum())) if total else 0.0)
    return {"utilization": util, "perplexity": ppl}


def tuple_stats(codes: np.ndarray, codebook_size: int) -> Dict[str, Any]:
    """Unique-SID-tuple rate, largest collision group and collided items of ``codes: int[N, K]``."""
    n, k = codes.shape
    if n == 0:
        return {"unique_tuple_rate": 0.0, "largest_collision_group": 0, "collided_items": 0,
                "tuple_space": float(codebook_size) ** k}
    _, tcounts = np.unique(codes, axis=0, return_counts=True)
    return {"unique_tuple_rate": float(len(tcounts) / n), "largest_collision_group": int(tcounts.max()),
            "collided_items": int(tcounts[tcounts > 1].sum()), "tuple_space": float(codebook_size) ** k}


def code_stats(codes: np.ndarray, codebook_size: int) -> Dict[str, Any]:
    """Utilization / perplexity per position, unique-tuple rate and collision sizes of ``codes: int[N, K]``."""
    n, k = codes.shape
    counts = np.stack([np.bincount(codes[:, j], minlength=codebook_size) for j in range(k)]) if n else \
        np.zeros((k, codebook_size), np.int64)
    return {"num_items": int(n), **usage_stats(counts), **tuple_stats(codes, codebook_size)}


@torch.inference_mode()
def partial_stats(model: nn.Module, emb: Tensor, codes: Tensor, *, batch_size: int = DECODE_BATCH
                  ) -> Dict[str, Tensor]:
    """Additive statistics of one shard: ``emb: Tensor[n, d]`` and its ``codes: LongTensor[n, K]``.

    Returns float64 / int64 tensors (sum them across shards, then :func:`finish_partials`):
    ``n`` [1], ``sq_err`` [1] (sum over items of the per-item mean squared error), ``cos`` [1],
    ``x_sum`` [d], ``x_sq`` [d] (embedding moments for the data variance), ``counts`` [K, C].
    """
    k, c = int(model.num_sids), int(model.codebook_size)
    d = emb.shape[1]
    out = {"n": torch.zeros(1, dtype=torch.float64), "sq_err": torch.zeros(1, dtype=torch.float64),
           "cos": torch.zeros(1, dtype=torch.float64), "x_sum": torch.zeros(d, dtype=torch.float64),
           "x_sq": torch.zeros(d, dtype=torch.float64), "counts": torch.zeros(k, c, dtype=torch.int64)}
    for i in range(0, emb.shape[0], batch_size):
        x = emb[i:i + batch_size].float()
        cb = codes[i:i + batch_size]
        r = model.decode(cb).float()
        out["n"] += x.shape[0]
        out["sq_err"] += ((r - x) ** 2).mean(1).double().sum().cpu()
        out["cos"] += torch.nn.functional.cosine_similarity(r, x, dim=1).double().sum().cpu()
        xd = x.double()
        out["x_sum"] += xd.sum(0).cpu()
        out["x_sq"] += (xd * xd).sum(0).cpu()
        out["counts"] += torch.stack([torch.bincount(cb[:, j].cpu(), minlength=c) for j in range(k)])
    return out


def finish_partials(p: Dict[str, Tensor]) -> Dict[str, Any]:
    """Report fields from (summed) :func:`partial_stats`: ``num_items``, ``recon_mse``, ``recon_cosine``,
    ``data_variance`` (mean over dims of the unbiased per-dim variance), ``utilization``, ``perplexity``."""
    n = float(p["n"].item())
    var = (p["x_sq"] - p["x_sum"] ** 2 / max(n, 1.0)) / max(n - 1.0, 1.0)
    return {"num_items": int(n), "recon_mse": float(p["sq_err"].item()) / max(n, 1.0),
            "recon_cosine": float(p["cos"].item()) / max(n, 1.0), "data_variance": float(var.mean().item()),
            **usage_stats(p["counts"].numpy())}


def tokenizer_report(model: nn.Module, emb: Tensor, codes: Optional[Tensor] = None, *,
                     encode_seconds: Optional[float] = None) -> Dict[str, Any]:
    """Reconstruction MSE/cosine (mean over items), code statistics, OPMQ orthogonality error, timing.

    ``emb: Tensor[N, d]``. Without ``codes`` the items are encoded here and timed
    (``encode_seconds``, ``encode_items_per_s``); with precomputed ``codes: LongTensor[N, K]`` pass the
    time they took as ``encode_seconds`` (otherwise it is reported as ``None``, not as 0).
    """
    model.eval()
    emb = emb.float()
    if codes is None:
        t0 = time.perf_counter()
        codes = model.encode(emb)
        encode_seconds = time.perf_counter() - t0
    n = emb.shape[0]
    rep: Dict[str, Any] = {"num_sids": int(model.num_sids), "codebook_size": int(model.codebook_size)}
    rep.update(finish_partials(partial_stats(model, emb, codes)))
    rep.update(tuple_stats(codes.cpu().numpy(), int(model.codebook_size)))
    rep["encode_seconds"] = encode_seconds
    rep["encode_items_per_s"] = (n / encode_seconds) if encode_seconds else None
    if hasattr(model, "orthogonality_error"):
        with torch.no_grad():
            rep["orthogonality_error"] = float(model.orthogonality_error())
    rep["warnings"] = collapse_warnings(rep)
    return rep


#: a SID tuple shared by more than this fraction of the items (and > COLLAPSE_MIN_ITEMS) is flagged
COLLAPSE_SHARE = 0.1
COLLAPSE_MIN_ITEMS = 20


def collapse_warnings(rep: Dict[str, Any]) -> list:
    """Warnings for a collapsed tokenization: one SID tuple holding a large share of the items (the
    signature of untrained / constant input embeddings, which all land on one code tuple)."""
    n, big = int(rep.get("num_items", 0)), int(rep.get("largest_collision_group", 0))
    if n and big > max(COLLAPSE_MIN_ITEMS, COLLAPSE_SHARE * n):
        return [f"one SID tuple is shared by {big} of {n} items ({big / n:.1%}): are some input embeddings "
                "untrained or constant (e.g. items never seen by the pre-training)? Mark them with the "
                "embedding file's 'trained' column so they get the OOV SID"]
    return []
