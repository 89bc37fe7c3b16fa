"""Quality report of a trained tokenizer over all items (JSON-ready dict)."""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import Tensor, nn


def dedup_tokens(codes: np.ndarray) -> np.ndarray:
    """``codes: int64[N, K]`` -> ``sid_dedup int64[N]``: 0, 1, 2.. among items sharing a tuple (TIGER),
    in row order, so ``(codes, sid_dedup)`` is unique per item."""
    _, inv = np.unique(codes, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(inv)]))
    out = np.empty(len(inv), np.int64)
    out[order] = np.arange(len(inv)) - group_start
    return out


def code_stats(codes: np.ndarray, codebook_size: int) -> Dict[str, Any]:
    """Utilization / perplexity per position, unique-tuple rate and collision sizes."""
    n, k = codes.shape
    util, ppl = [], []
    for j in range(k):
        cnt = np.bincount(codes[:, j], minlength=codebook_size)
        p = cnt[cnt > 0] / n
        util.append(float((cnt > 0).mean()))
        ppl.append(float(math.exp(-(p * np.log(p)).sum())))
    _, tcounts = np.unique(codes, axis=0, return_counts=True)
    return {"num_items": int(n), "utilization": util, "perplexity": ppl,
            "unique_tuple_rate": float(len(tcounts) / n), "largest_collision_group": int(tcounts.max()),
            "collided_items": int(tcounts[tcounts > 1].sum()),
            "tuple_space": float(codebook_size) ** k}


def tokenizer_report(model: nn.Module, emb: Tensor, codes: Optional[Tensor] = None,
                     *, batch_size: int = 262144) -> Dict[str, Any]:
    """Reconstruction MSE/cosine (mean over items), code statistics, OPMQ orthogonality error, timing."""
    model.eval()
    emb = emb.float()
    t0 = time.perf_counter()
    if codes is None:
        codes = model.encode(emb)
    enc_s = time.perf_counter() - t0
    mse, cos = 0.0, 0.0
    for i in range(0, emb.shape[0], batch_size):
        x = emb[i:i + batch_size]
        r = model.decode(codes[i:i + batch_size])
        mse += float(((r - x) ** 2).mean(1).sum())
        cos += float(torch.nn.functional.cosine_similarity(r, x, dim=1).sum())
    n = emb.shape[0]
    rep: Dict[str, Any] = {"num_sids": int(model.num_sids), "codebook_size": int(model.codebook_size),
                           "recon_mse": mse / n, "recon_cosine": cos / n,
                           "data_variance": float(emb.var(0).mean()), "encode_seconds": enc_s}
    rep.update(code_stats(codes.cpu().numpy(), int(model.codebook_size)))
    if hasattr(model, "orthogonality_error"):
        with torch.no_grad():
            rep["orthogonality_error"] = float(model.orthogonality_error())
    return rep
