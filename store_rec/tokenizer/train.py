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
from store_rec.tokenizer.base import check_embeddings, check_fit_size

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

    Raises UserError when the codebook is larger than the number of items (``C > N``); warns when the
    batch (the k-means initialisation sample) is smaller than ``C``. Raises FloatingPointError naming
    the step when the loss is not finite (diverged, or inputs too large for float32): training stops
    there instead of producing a tokenizer whose codes are all garbage.
    """
    cfg = cfg or TrainConfig()
    check_embeddings(emb, model.input_dim)
    emb = emb.float()
    n = emb.shape[0]
    bs = min(cfg.batch_size, n)
    n_total = n
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # data-parallel: all shards
        t = torch.tensor([n], dtype=torch.long, device=emb.device)
        torch.distributed.all_reduce(t)
        n_total = int(t)
    check_fit_size(n_total, int(model.codebook_size), batch_size=bs, where=f"fit_tokenizer({type(model).__name__})")
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
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.losses.items())
            raise FloatingPointError(f"step {step}: loss is {loss.item()} ({parts})")
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


# ------------------------------------------------------------------- shared by the CLI and distributed mode

METHODS = ("opmq", "rqvae", "opq")
OPQ_KEYS = ("outer_iters", "kmeans_iters", "max_train")


@dataclass
class TokenizeSpec:
    """Everything needed to build and train a tokenizer (``store-rec tokenize`` and the offline distributed
    tokenizer read the same YAML): ``model`` (OPMQ/RQ-VAE architecture + VQ), ``train`` (minibatch Adam),
    ``opq`` (``OPQ.fit`` keyword arguments) and ``raw`` (the merged plain-data config, for reports)."""

    method: str
    model: Any
    train: TrainConfig
    opq: Dict[str, Any]
    raw: Dict[str, Any]


def load_tokenize_spec(config_path: Optional[str], *, method: str, num_sids: int, codebook_size: int,
                       steps: Optional[int] = None, seed: Optional[int] = None, epochs: Optional[int] = None,
                       batch_size: Optional[int] = None) -> TokenizeSpec:
    """Read ``--config YAML`` (sections ``model:`` OPMQConfig, ``train:`` TrainConfig, ``opq:`` {outer_iters,
    kmeans_iters, max_train}); the explicit arguments win over the file. Errors name the file and key."""
    from store_rec.config import ConfigError, from_dict, load_yaml
    from store_rec.tokenizer.opmq import OPMQConfig

    if method not in METHODS:
        raise ConfigError(f"method: must be one of {METHODS}, got {method!r}")
    if num_sids <= 0 or codebook_size <= 0:
        raise ConfigError(f"--num-sids/--codebook-size: must be > 0, got {num_sids}/{codebook_size}")
    raw: Dict[str, Any] = {}
    if config_path:
        raw = load_yaml(config_path)  # ConfigError naming the file: missing, not YAML, not a mapping
        if set(raw) - {"model", "train", "opq"}:
            raise ConfigError(f"{config_path}: expected a mapping with keys model/train/opq, got {list(raw)}")
    for section in ("model", "train", "opq"):
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{config_path}: {section}: expected a mapping, got {type(raw[section]).__name__} "
                              f"{raw[section]!r}")
    mcfg = dict(raw.get("model") or {}, num_sids=num_sids, codebook_size=codebook_size)
    tcfg = dict(raw.get("train") or {})
    for key, val in (("steps", steps), ("seed", seed), ("epochs", epochs), ("batch_size", batch_size)):
        if val is not None:
            tcfg[key] = val
    ocfg = dict(raw.get("opq") or {})
    unknown = sorted(set(ocfg) - set(OPQ_KEYS))
    if unknown:
        raise ConfigError(f"{config_path}: opq.{unknown[0]}: unknown key (known: {', '.join(OPQ_KEYS)})")
    where = f"{config_path}: " if config_path else ""
    try:
        model_cfg = from_dict(OPMQConfig, mcfg, path="model")
        train_cfg = from_dict(TrainConfig, tcfg, path="train")
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    return TokenizeSpec(method=method, model=model_cfg, train=train_cfg, opq=ocfg,
                        raw={"model": mcfg, "train": tcfg, "opq": ocfg})


def build_tokenizer(spec: TokenizeSpec, input_dim: int) -> nn.Module:
    """A fresh tokenizer of ``spec.method`` for ``Tensor[N, input_dim]`` embeddings (seeded by ``spec.train.seed``)."""
    from store_rec.tokenizer.opmq import OPMQ
    from store_rec.tokenizer.opq import OPQ
    from store_rec.tokenizer.rqvae import RQVAE

    if spec.method == "opq":
        return OPQ(input_dim, spec.model.num_sids, spec.model.codebook_size, seed=spec.train.seed)
    cls = OPMQ if spec.method == "opmq" else RQVAE
    return cls(input_dim, config=spec.model, seed=spec.train.seed)


def train_tokenizer(model: nn.Module, emb: Tensor, spec: TokenizeSpec, *, progress: bool = False) -> Dict[str, Any]:
    """Train ``model`` (from :func:`build_tokenizer`) on ``emb: Tensor[N, d]``; returns the history dict."""
    if spec.method == "opq":
        return model.fit(emb, **spec.opq)
    return fit_tokenizer(model, emb, spec.train, progress=progress)
