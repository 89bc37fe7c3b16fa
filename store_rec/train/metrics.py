"""Ranking metrics computed exactly over all ranks: AUC, GAUC, LogLoss.

Per-rank AUCs cannot be averaged into the global AUC, so evaluation gathers every rank's
``(logits, labels, user_ids)`` (:func:`gather_predictions`, ``all_gather`` of padded tensors) and
computes on the union; every rank gets the same numbers.

* :func:`auc` -- the Mann-Whitney statistic with ties counted 1/2:
  ``(sum of the positives' average ranks - P(P+1)/2) / (P * N)``.
* :func:`gauc` -- per-user AUC weighted by the user's impressions, over users with both a positive
  and a negative (others skipped): ``sum_u n_u AUC_u / sum_u n_u``.
* :func:`logloss` -- mean binary cross-entropy of ``sigmoid(logits)`` (computed from logits).

Everything runs in float64 on CPU numpy (evaluation sets are at most a few million rows).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch


def _average_ranks_sorted(group_start: np.ndarray, tie_start: np.ndarray) -> np.ndarray:
    """1-based average ranks of sorted items: within-group position, ties get the mean of their positions.

    ``group_start[i]``: first index of item i's group; ``tie_start[i]``: first index of its tie block."""
    n = len(tie_start)
    idx = np.arange(n)
    # tie block ends: last index with the same tie_start
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = tie_start[1:] != tie_start[:-1]
    ends = np.where(is_last, idx, 0)
    tie_end = np.minimum.accumulate(np.where(is_last, ends, n)[::-1])[::-1]
    return (tie_start + tie_end) / 2.0 - group_start + 1.0


def _block_starts(changed: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's block, given ``changed[i]`` = a block starts at i."""
    idx = np.arange(len(changed))
    return np.maximum.accumulate(np.where(changed, idx, 0))


def _grouped_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group Mann-Whitney AUC. Returns ``(auc[G], n_pos[G], n_neg[G])`` over the groups present
    (sorted by group id); auc is NaN for groups with one class."""
    order = np.lexsort((scores, groups))
    s, y, g = scores[order], labels[order] > 0.5, groups[order]
    n = len(s)
    gchg = np.ones(n, dtype=bool)
    gchg[1:] = g[1:] != g[:-1]
    tchg = gchg.copy()
    tchg[1:] |= s[1:] != s[:-1]
    ranks = _average_ranks_sorted(_block_starts(gchg), _block_starts(tchg))
    gid = np.cumsum(gchg) - 1
    G = int(gid[-1]) + 1
    n_pos = np.bincount(gid, weights=y.astype(np.float64), minlength=G)
    n_all = np.bincount(gid, minlength=G).astype(np.float64)
    n_neg = n_all - n_pos
    rank_pos = np.bincount(gid, weights=np.where(y, ranks, 0.0), minlength=G)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (rank_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    a[(n_pos == 0) | (n_neg == 0)] = np.nan
    return a, n_pos, n_neg


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def auc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of ``scores: [N]`` (logits or probabilities) for binary ``labels: [N]``; NaN if one class."""
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).astype(np.float64).ravel()
    if len(s) == 0:
        return float("nan")
    a, _, _ = _grouped_auc(s, y, np.zeros(len(s), dtype=np.int64))
    return float(a[0])


def gauc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, user_ids: torch.Tensor | np.ndarray) -> float:
    """Impression-weighted mean of per-user AUCs over users with both classes; NaN if there is none."""
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).astype(np.float64).ravel()
    u = _np(user_ids).astype(np.int64).ravel()
    if len(s) == 0:
        return float("nan")
    a, n_pos, n_neg = _grouped_auc(s, y, u)
    ok = ~np.isnan(a)
    if not ok.any():
        return float("nan")
    w = (n_pos + n_neg)[ok]
    return float((a[ok] * w).sum() / w.sum())


def logloss(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against ``labels`` (natural log)."""
    x, y = _np(logits).astype(np.float64).ravel(), _np(labels).astype(np.float64).ravel()
    if len(x) == 0:
        return float("nan")
    # BCE with logits: max(x, 0) - x*y + log(1 + exp(-|x|))
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))))


def ranking_metrics(logits, labels, user_ids: Optional[torch.Tensor] = None) -> Dict[str, Optional[float]]:  # noqa: ANN001
    """``{"auc", "gauc", "logloss", "num_samples"}`` of one evaluation.

    ``gauc`` is None -- absent, not a number -- without ``user_ids`` (a dataset without a user key):
    grouping every row under one user would report the AUC under GAUC's name."""
    out: Dict[str, Optional[float]] = {"auc": auc(logits, labels), "logloss": logloss(logits, labels),
                                       "num_samples": int(len(_np(labels)))}
    out["gauc"] = gauc(logits, labels, user_ids) if user_ids is not None else None
    return out


def gather_predictions(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """All-gather 1-D tensors of per-rank length ``n_r`` into ``[sum_r n_r]`` on every rank (rank order).

    Without an initialised process group (or world size 1) returns the inputs."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tuple(tensors)
    world = dist.get_world_size()
    dev = tensors[0].device
    n = torch.tensor([tensors[0].numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_l = [int(x.item()) for x in sizes]
    m = max(sizes_l)
    out = []
    for t in tensors:
        t = t.reshape(-1)
        pad = torch.zeros(m, dtype=t.dtype, device=dev)
        pad[: t.numel()] = t
        parts = [torch.empty_like(pad) for _ in range(world)]
        dist.all_gather(parts, pad)
        out.append(torch.cat([p[:k] for p, k in zip(parts, sizes_l)]))
    return tuple(out)


def finite_or_none(x: float) -> Optional[float]:
    """JSON-safe float: NaN/inf -> None."""
    return None if x is None or not math.isfinite(x) else float(x)
