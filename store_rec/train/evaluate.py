"""Evaluation: exact AUC / GAUC / LogLoss of the sharded model on a split (predictions gathered from
every rank), and the early-stop comparison of a valid AUC with the best so far."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from store_rec.distributed.env import DistEnv
from store_rec.train.metrics import gather_predictions, ranking_metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv) -> Dict[str, float]:  # noqa: ANN001
    """AUC / GAUC / LogLoss of ``model`` (a ``RankingTrain``, possibly DMP-wrapped: ``model(batch) ->
    (loss, TrainOutput)``) on all ranks' parts of ``loader``'s split (exact, gathered)."""
    was = model.training
    model.eval()
    loader.set_epoch(0)
    logits, labels, users = [], [], []
    for batch in loader:
        batch = batch.to(env.device)
        _, out = model(batch)
        logits.append(out.logits.float())
        labels.append(out.labels.float())
        users.append(out.user_ids.long())
    model.train(was)
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt, device=env.device)  # noqa: E731
    lg, lb, u = gather_predictions(cat(logits, torch.float32), cat(labels, torch.float32), cat(users, torch.int64))
    has_users = bool((u >= 0).all()) and u.numel() > 0
    return ranking_metrics(lg.cpu(), lb.cpu(), u.cpu() if has_users else None)


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
