"""Evaluation: AUC / GAUC / LogLoss / NE / calibration and the cold / warm target-item slice AUCs
of the sharded model on a split (:class:`~store_rec.train.metrics.EvalMetrics`: no rank holds every
prediction), and the early-stop comparison of a valid AUC with the best so far."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from store_rec.data.slices import ItemSlices
from store_rec.distributed.env import DistEnv
from store_rec.train.metrics import EvalMetrics


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv, auc_method: str = "exact", bins: int = 1 << 16,  # noqa: ANN001
             item_slices: Optional[ItemSlices] = None) -> Dict[str, Any]:
    """Metrics of ``model`` (a ``RankingTrain``, possibly DMP-wrapped: ``model(batch) -> (loss,
    TrainOutput)``) on all ranks' parts of ``loader``'s split: :meth:`EvalMetrics.compute`'s dict plus
    ``eval_samples_per_s`` (rows of every rank / the slowest rank's seconds) and ``eval_time_s``.

    ``item_slices`` (:func:`store_rec.data.slices.item_slices`; its feature must be one of the
    loader's keys): each row is put in the warm / cold slice of its target item, and the dict gets
    ``auc_warm``, ``auc_cold``, ``auc_within_warm``, ``auc_within_cold``, ``positives_*``,
    ``negatives_*`` (:func:`store_rec.train.metrics.slice_aucs`; NaN where a slice has no positive).

    ``gauc`` is None when the dataset has no user key (``schema.user_key``; the loader then fills the
    batch's user ids with a placeholder) or a row has no user id (-1): never the AUC under another name."""
    import time

    import torch.distributed as dist

    was = model.training
    model.eval()
    loader.set_epoch(0)
    schema = getattr(loader, "schema", None)
    has_user_key = schema is None or getattr(schema, "user_key", None) is not None
    keys = list(getattr(loader, "keys", []))
    if item_slices is not None and item_slices.feature not in keys:
        raise ValueError(f"item_slices: feature {item_slices.feature!r} is not among the loader's keys {keys}")
    metrics = EvalMetrics(auc_method=auc_method, bins=bins, gauc=has_user_key,
                          slice_names=item_slices.names if item_slices is not None else ())
    t0 = time.perf_counter()
    for batch in loader:
        slices = None
        if item_slices is not None:  # single-valued feature: one value per row, in row order
            ids = batch.sparse_features[item_slices.feature].values()
            slices = torch.from_numpy(item_slices.codes(ids.cpu().numpy()))
        batch = batch.to(env.device)
        _, out = model(batch)
        users = out.user_ids
        metrics.update(out.logits, out.labels, users if has_user_key and bool((users >= 0).all()) else None,
                       slices)
    model.train(was)
    took = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(took, op=dist.ReduceOp.MAX)
    computed = metrics.compute()
    m: Dict[str, Optional[float]] = dict(computed)
    if not has_user_key or m["gauc"] is None or math.isnan(m["gauc"]):
        m["gauc"] = None  # no user key, or a row without a user id: absent, never the AUC under another name
    m["eval_time_s"] = float(took[0])
    m["eval_samples_per_s"] = computed["num_samples"] / float(took[0]) if took[0] > 0 else float("nan")
    return m


def improves_on_best(auc: Optional[float], best: Optional[Mapping[str, Any]]) -> bool:
    """Whether a valid ``auc`` makes a new best (early stop counts the evals where it does not).

    The first eval always does (``best is None``). A non-finite or missing AUC (NaN from a
    single-class valid split) is worse than any finite one: it never beats a best, and any finite AUC
    beats a non-finite best, so one NaN eval cannot freeze ``best`` and trigger early stop."""
    if best is None:
        return True
    if auc is None or not math.isfinite(auc):
        return False
    b = best.get("auc")
    return b is None or not math.isfinite(b) or auc > b
