"""Ranking metrics over all ranks: AUC, GAUC, LogLoss, NE, calibration.

Per-rank AUCs cannot be averaged into the global AUC. Evaluation uses :class:`EvalMetrics`, which
computes them without every rank holding every prediction: sums for LogLoss / NE / calibration
(all-reduced), the exact AUC on rank 0 alone (``gather`` of ``(logit, label)``) or a histogram AUC
with its error bound (all-reduced counts), and the exact GAUC with each user's rows moved to one rank
(``all_to_all``). The reference functions below (:func:`auc`, :func:`gauc`, :func:`logloss` on all
predictions in one process) define the numbers; ``tests/test_eval_metrics.py`` checks
:class:`EvalMetrics` against them on 1 and 2 gloo ranks. :func:`gather_predictions` (every rank gets
every prediction) is kept for tests and small tools.

* :func:`auc` -- the Mann-Whitney statistic with ties counted 1/2:
  ``(sum of the positives' average ranks - P(P+1)/2) / (P * N)``.
* :func:`gauc` -- per-user AUC weighted by the user's impressions, over users with both a positive
  and a negative (others skipped): ``sum_u n_u AUC_u / sum_u n_u``.
* :func:`logloss` -- mean binary cross-entropy of ``sigmoid(logits)`` (computed from logits).
* :func:`slice_aucs` -- per-slice AUC (e.g. cold / warm target items, :mod:`store_rec.data.slices`):
  ``auc_<slice>`` = P(a positive of the slice scores above a negative of the split, any slice), so
  ``AUC = sum_s (P_s / P) auc_<slice>`` (it decomposes the AUC and stays defined when the slice has
  few negatives, as with sampled negatives); ``auc_within_<slice>`` = the AUC of the slice's rows
  alone; plus ``positives_<slice>`` / ``negatives_<slice>`` (row counts).

Everything runs in float64 on CPU numpy (evaluation sets are at most a few million rows).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

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


def slice_aucs(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
               slices: torch.Tensor | np.ndarray, names: Sequence[str]) -> Dict[str, Any]:
    """Per-slice AUCs of ``scores: [N]`` / ``labels: [N]`` with ``slices: [N]`` (int, ``0 <= slices <
    len(names)``: row i belongs to slice ``names[slices[i]]``; -1: no slice).

    Returns, per slice name ``s``: ``auc_<s>`` (the slice's positives against every negative of the
    split; NaN without a positive in the slice or a negative anywhere), ``auc_within_<s>`` (the
    Mann-Whitney AUC of the slice's rows alone; NaN with one class) and ``positives_<s>`` /
    ``negatives_<s>`` (ints). Since the positives of all slices partition the positives,
    ``auc == sum_s positives_s * auc_s / sum_s positives_s`` when every row has a slice."""
    s, y = _np(scores).astype(np.float64).ravel(), _np(labels).astype(np.float64).ravel() > 0.5
    g = _np(slices).astype(np.int64).ravel()
    if not (len(s) == len(y) == len(g)):
        raise ValueError(f"scores [{len(s)}], labels [{len(y)}] and slices [{len(g)}] differ in length")
    S = len(names)
    if len(g) and (g.min() < -1 or g.max() >= S):
        raise ValueError(f"slices: ids must be in [-1, {S}), got {int(g.min())}..{int(g.max())}")
    out: Dict[str, Any] = {}
    neg = ~y
    n_neg_all = int(neg.sum())
    # rows of "slice k's positives + every negative" as group k, all slices in one sorted pass
    parts_s, parts_y, parts_g = [], [], []
    for k in range(S):
        sel = (g == k) & y
        parts_s += [s[sel], s[neg]]
        parts_y += [np.ones(int(sel.sum())), np.zeros(n_neg_all)]
        parts_g += [np.full(int(sel.sum()) + n_neg_all, k, np.int64)]
    vs_all = np.full(S, np.nan)
    if S and len(s):
        a, n_pos, _ = _grouped_auc(np.concatenate(parts_s), np.concatenate(parts_y), np.concatenate(parts_g))
        present = np.unique(np.concatenate(parts_g))
        vs_all[present] = a
    within = np.full(S, np.nan)
    ok = g >= 0
    if ok.any():
        a, _, _ = _grouped_auc(s[ok], y[ok].astype(np.float64), g[ok])
        within[np.unique(g[ok])] = a
    for k, name in enumerate(names):
        out[f"auc_{name}"] = float(vs_all[k])
        out[f"auc_within_{name}"] = float(within[k])
        out[f"positives_{name}"] = int(((g == k) & y).sum())
        out[f"negatives_{name}"] = int(((g == k) & neg).sum())
    return out


def slice_aucs_from_histograms(hist: np.ndarray, names: Sequence[str]) -> Dict[str, Any]:
    """:func:`slice_aucs` from per-slice class histograms ``hist: [S, 2, bins]`` (``[:, 0]``
    negatives, ``[:, 1]`` positives, the same ascending score bins): same keys, each AUC within the
    bound of :func:`histogram_auc` (same-bin pairs counted 1/2)."""
    neg_all = hist[:, 0].sum(axis=0)
    out: Dict[str, Any] = {}
    for k, name in enumerate(names):
        out[f"auc_{name}"] = histogram_auc(hist[k, 1], neg_all)[0]
        out[f"auc_within_{name}"] = histogram_auc(hist[k, 1], hist[k, 0])[0]
        out[f"positives_{name}"] = int(hist[k, 1].sum())
        out[f"negatives_{name}"] = int(hist[k, 0].sum())
    return out


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


# ---------------------------------------------------------------------------------- evaluation at scale
#: ``eval.auc`` methods: ``exact`` gathers (logit, label) to rank 0 only; ``histogram`` all-reduces
#: per-class score histograms (O(bins) memory, every rank) and reports its error bound.
AUC_METHODS = ("exact", "histogram")


def _dist_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def histogram_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> Tuple[float, float]:
    """AUC from per-class histograms over the same ascending score bins, and its error bound.

    Pairs in different bins are ordered exactly; a (positive, negative) pair in the same bin is
    counted 1/2, as the exact statistic counts a tie, so ``|AUC_hist - AUC_exact| <= bound =
    0.5 * sum_b pos_b neg_b / (P N)`` (the share of same-bin pairs over 2). NaN if one class."""
    pos, neg = np.asarray(pos_hist, np.float64), np.asarray(neg_hist, np.float64)
    P, N = pos.sum(), neg.sum()
    if P == 0 or N == 0:
        return float("nan"), float("nan")
    neg_below = np.cumsum(neg) - neg
    same = float((pos * neg).sum())
    return float(((pos * neg_below).sum() + 0.5 * same) / (P * N)), float(0.5 * same / (P * N))


class EvalMetrics:
    """Streaming evaluation metrics over every rank without every rank holding every prediction.

    ``update(logits, labels, user_ids)`` per batch on each rank; ``compute()`` (a collective: every
    rank calls it) returns the same dict on every rank:

    * ``logloss``, ``ne``, ``calibration``, ``ctr``, ``num_samples``: exact, from all-reduced sums
      (``sum BCE``, ``sum y``, ``sum sigmoid(logit)``, ``n``) -- O(1) memory. ``ne`` = logloss / the
      entropy of the mean label (He et al. 2014; TorchRec's NE); ``calibration`` = sum of predicted
      probabilities / sum of labels (1.0 = calibrated; TorchRec's definition); ``ctr`` = mean label.
    * ``auc``: ``auc_method="exact"`` gathers (logit float32, label) to rank 0 only (8 bytes a row
      on rank 0, none kept elsewhere), which computes the Mann-Whitney AUC of :func:`auc` and
      broadcasts it; ``"histogram"`` bins ``sigmoid(logit)`` into ``bins`` equal-width bins per
      class, all-reduces the 2 x ``bins`` counts and reports ``auc_error_bound``
      (:func:`histogram_auc`; 0.0 for exact).
    * ``gauc``: exact. Rows are sent to rank ``user_id % world`` (``all_to_all``), so every user's
      rows meet on one rank holding ~1/world of the set; each rank sums ``n_u AUC_u`` and ``n_u``
      over its users and the sums are all-reduced.

    * per-slice AUCs (``slice_names``, e.g. ``("warm", "cold")``; :func:`slice_aucs`' keys): the
      exact path gathers the slice id with (logit, label) to rank 0 (4 more bytes a row); the
      histogram path all-reduces one pair of class histograms per slice. Rows of a batch updated
      without ``slices`` (and rows with slice -1) are in no slice.

    Per rank, the exact path keeps its own rows only (logit, label and user id: 16 bytes a row);
    the previous all-gather kept every rank's rows on every rank (24 bytes a row x world).
    """

    def __init__(self, auc_method: str = "exact", bins: int = 1 << 16, gauc: bool = True,
                 slice_names: Sequence[str] = ()) -> None:
        if auc_method not in AUC_METHODS:
            raise ValueError(f"auc_method: {auc_method!r} is not one of {AUC_METHODS}")
        if bins < 2:
            raise ValueError(f"bins: need >= 2, got {bins}")
        self.auc_method, self.bins, self.with_gauc = auc_method, int(bins), gauc
        self.slice_names = tuple(slice_names)
        self.reset()

    def reset(self) -> None:
        self._sums = np.zeros(4, dtype=np.float64)  # n, sum y, sum p, sum bce
        self._hist = np.zeros((2, self.bins), dtype=np.float64) if self.auc_method == "histogram" else None
        self._logits: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._users: List[torch.Tensor] = []
        self._users_missing = False
        self._slices: List[torch.Tensor] = []
        S = len(self.slice_names)
        self._slice_hist = np.zeros((S, 2, self.bins), np.float64) if S and self.auc_method == "histogram" else None

    def update(self, logits: torch.Tensor, labels: torch.Tensor, user_ids: Optional[torch.Tensor] = None,
               slices: Optional[torch.Tensor] = None) -> None:
        """``logits: [B]``, ``labels: [B]`` (0/1), ``user_ids: [B]`` (int; GAUC needs them for every row:
        one batch without them makes GAUC NaN), ``slices: [B]`` (int slice id per row, an index into
        ``slice_names``, -1 = none; ignored without ``slice_names``)."""
        x = logits.detach().reshape(-1).to("cpu", torch.float64)
        y = labels.detach().reshape(-1).to("cpu", torch.float64)
        if x.numel() != y.numel():
            raise ValueError(f"logits [{x.numel()}] and labels [{y.numel()}] differ in length")
        p = torch.sigmoid(x)
        bce = torch.clamp(x, min=0) - x * y + torch.log1p(torch.exp(-x.abs()))
        self._sums += np.array([x.numel(), float(y.sum()), float(p.sum()), float(bce.sum())])
        if self._hist is not None:
            b = torch.clamp((p * self.bins).long(), 0, self.bins - 1).numpy()
            pos = y.numpy() > 0.5
            self._hist[1] += np.bincount(b[pos], minlength=self.bins)
            self._hist[0] += np.bincount(b[~pos], minlength=self.bins)
        if self.slice_names:
            S = len(self.slice_names)
            g = (torch.full((x.numel(),), -1, dtype=torch.int64) if slices is None
                 else slices.detach().reshape(-1).to("cpu", torch.int64))
            if g.numel() != x.numel():
                raise ValueError(f"slices [{g.numel()}] and logits [{x.numel()}] differ in length")
            if g.numel() and (int(g.min()) < -1 or int(g.max()) >= S):
                raise ValueError(f"slices: ids must be in [-1, {S}), got {int(g.min())}..{int(g.max())}")
            if self._slice_hist is not None:
                b = torch.clamp((p * self.bins).long(), 0, self.bins - 1).numpy()
                gn, pos = g.numpy(), y.numpy() > 0.5
                for k in range(S):
                    for c, m in ((1, pos), (0, ~pos)):
                        self._slice_hist[k, c] += np.bincount(b[(gn == k) & m], minlength=self.bins)
            else:
                self._slices.append(g.to(torch.int32))
        keep_rows = self.auc_method == "exact" or (self.with_gauc and user_ids is not None)
        if keep_rows:
            self._logits.append(logits.detach().reshape(-1).to("cpu", torch.float32))
            self._labels.append(labels.detach().reshape(-1).to("cpu", torch.float32))
            if self.with_gauc and user_ids is not None:
                self._users.append(user_ids.detach().reshape(-1).to("cpu", torch.int64))
        if user_ids is None:
            self._users_missing = True

    def compute(self) -> Dict[str, Any]:
        """The metrics over every rank (collective: every rank calls it). ``gauc`` is None -- absent, not a
        number -- without user ids for every row (a dataset without a user key), as in :func:`ranking_metrics`."""
        import torch.distributed as dist

        rank, world = _dist_world()
        sums = torch.from_numpy(self._sums.copy())
        if world > 1:
            dist.all_reduce(sums)
        n, sy, sp, sbce = (float(v) for v in sums)
        out: Dict[str, Any] = {"num_samples": int(n)}
        ctr = sy / n if n else float("nan")
        out["logloss"] = sbce / n if n else float("nan")
        out["ctr"] = ctr
        out["calibration"] = sp / sy if sy > 0 else float("nan")
        if n and 0.0 < ctr < 1.0:
            out["ne"] = out["logloss"] / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
        else:
            out["ne"] = float("nan")
        logits = torch.cat(self._logits) if self._logits else torch.zeros(0)
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0)
        if self.auc_method == "histogram":
            h = torch.from_numpy(self._hist.copy())
            if world > 1:
                dist.all_reduce(h)
            out["auc"], out["auc_error_bound"] = histogram_auc(h[1].numpy(), h[0].numpy())
            if self._slice_hist is not None:
                sh = torch.from_numpy(self._slice_hist.copy())
                if world > 1:
                    dist.all_reduce(sh)
                out.update(slice_aucs_from_histograms(sh.numpy(), self.slice_names))
        else:
            sl = (torch.cat(self._slices) if self._slices else torch.zeros(0, dtype=torch.int32)) if self.slice_names else None
            out["auc"], extra = _rank0_auc(logits, labels, rank, world, sl, self.slice_names)
            out["auc_error_bound"] = 0.0
            out.update(extra)
        # [some batch had user ids, some batch had none] over every rank (a rank that saw no batch joins too)
        flags = torch.tensor([1 if self._users else 0, 1 if self._users_missing else 0])
        if world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if self.with_gauc and int(flags[0]) and not int(flags[1]):
            users = torch.cat(self._users) if self._users else torch.zeros(0, dtype=torch.int64)
            out["gauc"] = _user_sharded_gauc(logits, labels, users, rank, world)
        else:  # no user ids, or not for every row (as the gathered implementation: GAUC needs all of them)
            out["gauc"] = None
        return out


def _rank0_auc(logits: torch.Tensor, labels: torch.Tensor, rank: int, world: int,
               slices: Optional[torch.Tensor] = None, slice_names: Sequence[str] = ()) -> Tuple[float, Dict[str, Any]]:
    """Exact AUC (and :func:`slice_aucs` when ``slices`` is given): every rank's (logit, label[, slice])
    rows gathered on rank 0 only; the values broadcast."""
    import torch.distributed as dist

    keys = list(slice_aucs(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), slice_names)) if slices is not None else []
    if world == 1:
        extra = slice_aucs(logits, labels, slices, slice_names) if slices is not None else {}
        return auc(logits, labels), extra
    n = torch.tensor([logits.numel()], dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)  # world integers
    m = max(int(s) for s in sizes)
    packed = torch.zeros(2 if slices is None else 3, m, dtype=torch.float32)
    packed[0, : logits.numel()] = logits
    packed[1, : labels.numel()] = labels
    if slices is not None:
        packed[2, : slices.numel()] = slices.to(torch.float32)  # small ints: exact in float32
    parts = [torch.empty_like(packed) for _ in range(world)] if rank == 0 else None
    dist.gather(packed, parts, dst=0)
    val = torch.zeros(1 + len(keys), dtype=torch.float64)
    if rank == 0:
        assert parts is not None
        x = torch.cat([p[0, : int(k)] for p, k in zip(parts, sizes)])
        y = torch.cat([p[1, : int(k)] for p, k in zip(parts, sizes)])
        val[0] = auc(x, y)
        if slices is not None:
            g = torch.cat([p[2, : int(k)] for p, k in zip(parts, sizes)]).to(torch.int64)
            got = slice_aucs(x, y, g, slice_names)
            val[1:] = torch.tensor([float(got[k]) for k in keys], dtype=torch.float64)
        del parts
    dist.broadcast(val, src=0)
    extra = {k: (int(v) if k.startswith(("positives_", "negatives_")) else float(v)) for k, v in zip(keys, val[1:].tolist())}
    return float(val[0]), extra


def _user_sharded_gauc(logits: torch.Tensor, labels: torch.Tensor, users: torch.Tensor, rank: int, world: int) -> float:
    """Exact GAUC with each user's rows moved to rank ``user_id % world`` (``all_to_all``)."""
    import torch.distributed as dist

    if world > 1:
        dest = torch.remainder(users, world)
        order = torch.argsort(dest, stable=True)
        send_counts = torch.bincount(dest, minlength=world).to(torch.int64)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        sc, rc = send_counts.tolist(), recv_counts.tolist()
        moved = []
        for t in (logits, labels, users):
            got = torch.empty(sum(rc), dtype=t.dtype)
            dist.all_to_all_single(got, t[order].contiguous(), rc, sc)
            moved.append(got)
        logits, labels, users = moved
    sums = torch.zeros(2, dtype=torch.float64)
    if users.numel():
        a, n_pos, n_neg = _grouped_auc(_np(logits).astype(np.float64), _np(labels).astype(np.float64), _np(users))
        ok = ~np.isnan(a)
        w = (n_pos + n_neg)[ok]
        sums[0], sums[1] = float((a[ok] * w).sum()), float(w.sum())
    if world > 1:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
