"""Minibatch Adam training of a neural tokenizer (OPMQ / RQ-VAE): loss = sum of ``forward().losses``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn
from tqdm import tqdm

from store_rec.config import check
from store_rec.tokenizer.base import check_embeddings

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 2000
    epochs: Optional[int] = None  # if set, steps = epochs * ceil(N / batch_size)
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self):
        check(self.steps > 0, "steps", f"must be > 0, got {self.steps}")
        check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.epochs is None or self.epochs > 0, "epochs", "must be > 0")


def fit_tokenizer(model: nn.Module, emb: Tensor, cfg: TrainConfig = None, *, log_every: int = 100,
                  progress: bool = False) -> Dict[str, Any]:
    """Train ``model`` on ``emb: Tensor[N, d]``; returns history {"step", "loss", per-loss lists, "seconds"}.

    Batches are sampled (seeded by ``cfg.seed``) without replacement per epoch. The first batch
    k-means-initialises the codebooks (when the model's quantizer has ``kmeans_init``).
    """
    cfg = cfg or TrainConfig()
    check_embeddings(emb, model.input_dim)
    emb = emb.float()
    n = emb.shape[0]
    bs = min(cfg.batch_size, n)
    steps = cfg.steps if cfg.epochs is None else cfg.epochs * -(-n // bs)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.train()
    hist: Dict[str, List[float]] = {"step": [], "loss": []}
    perm, pos = torch.randperm(n, generator=g), 0
    t0 = time.perf_counter()
    for step in tqdm(range(steps), disable=not progress, desc="tokenizer"):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        batch = emb[perm[pos:pos + bs].to(emb.device)]
        pos += bs
        out = model(batch)
        loss = sum(out.losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            hist["step"].append(step)
            hist["loss"].append(loss.item())
            for k, v in out.losses.items():
                hist.setdefault(k, []).append(v.item())
            log.info("step %d loss %.5f", step, hist["loss"][-1])
    model.eval()
    hist["seconds"] = time.perf_counter() - t0
    hist["steps"] = steps
    return hist
