"""Optimizers of a training run: the fused sparse optimizer of the embedding tables, the dense and
rotation optimizers (alternated by :class:`~store_rec.modules.rotation.AlternatingOptimizer`), and
the LR schedule (linear warm-up, then none / linear / cosine decay) they all follow.

* :func:`sparse_optimizer` -- (class, kwargs) for ``apply_optimizer_in_backward`` on the tables
  (Adagrad / row-wise Adagrad / SGD / Adam / row-wise Adam, fused in fbgemm's TBE), applied before sharding.
* :func:`dense_optimizer` -- Adam/Adagrad over the non-rotation dense parameters + the rotation
  optimizer, stepped on ``model.rotation.schedule``.
* :func:`lr_factor` / :class:`LRSchedule` -- the multiplier at each step, applied to the dense groups
  and (``optim.schedule_sparse_lr``, the default) to the tables' fused LR through :class:`SparseLR`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from store_rec.train.config import TrainConfig


#: sparse optimizers fbgemm's CPU TBE implements (split_table_batched_embeddings_ops_training, fbgemm 1.8)
CPU_SPARSE_OPTIMIZERS = ("adagrad", "rowwise_adagrad", "sgd")


def sparse_optimizer(cfg: TrainConfig, device_type: str = "cpu") -> Tuple[type, Dict[str, Any]]:
    """(optimizer class, kwargs) for ``apply_optimizer_in_backward`` on the embedding tables. Adam and
    row-wise Adam are fused on CUDA only: refused on CPU (UserError) before the model is sharded."""
    import torchrec.optim as trec_optim

    from store_rec.errors import UserError

    s = cfg.optim.sparse
    if device_type != "cuda" and s.type not in CPU_SPARSE_OPTIMIZERS:
        raise UserError(f"optim.sparse.type: {s.type!r} is fused on CUDA only (fbgemm's CPU embedding kernels implement "
                        f"{', '.join(CPU_SPARSE_OPTIMIZERS)})")
    # each class maps to a fused fbgemm EmbOptimType (torchrec.distributed.utils.optimizer_type_to_emb_opt_type)
    if s.type == "rowwise_adagrad":
        return trec_optim.RowWiseAdagrad, {"lr": s.lr, "eps": s.eps}
    if s.type == "sgd":
        return trec_optim.SGD, {"lr": s.lr}
    if s.type == "adam":
        return trec_optim.Adam, {"lr": s.lr, "eps": s.eps}
    if s.type == "rowwise_adam":
        return trec_optim.PartialRowWiseAdam, {"lr": s.lr, "eps": s.eps}
    return torch.optim.Adagrad, {"lr": s.lr, "eps": s.eps}


def dense_optimizer(cfg: TrainConfig, dmp: nn.Module):  # noqa: ANN201
    """The ``AlternatingOptimizer`` of ``dmp``'s dense parameters (those without an in-backward
    optimizer): ``optim.dense`` over the non-rotation ones, ``optim.rotation`` over the rotation ones
    (if any), alternated on ``model.rotation.schedule``."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from store_rec.modules.rotation import AlternatingOptimizer, AlternatingSchedule, rotation_modules, split_rotation_params

    dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
    main_p, rot_p = split_rotation_params(dmp, dense.items())
    o = cfg.optim
    if o.dense.type == "adam":
        main_opt = torch.optim.Adam(list(main_p.values()), lr=o.dense.lr, weight_decay=o.weight_decay)
    else:
        main_opt = torch.optim.Adagrad(list(main_p.values()), lr=o.dense.lr, weight_decay=o.weight_decay)
    rot_opt = None
    if rot_p:
        cls = torch.optim.Adam if o.rotation.type == "adam" else torch.optim.SGD
        rot_opt = cls(list(rot_p.values()), lr=o.rotation.lr)
    return AlternatingOptimizer(main_opt, rot_opt, AlternatingSchedule(cfg.model.rotation.schedule), rotation_modules(dmp))


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the dense / rotation LR at optimizer step ``step`` (0-based) of ``total``."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.decay == "none" or total <= o.warmup_steps:
        return 1.0
    frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.decay == "linear":
        shape = 1.0 - frac
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * frac))
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


class SparseLR:
    """Sets the embedding tables' LR to ``lr * factor``: the fused TBE optimizers of sharded tables
    (their ``step()`` only pushes the LR into the kernel; the update itself runs in backward) and any
    in-backward torch optimizer left on a parameter. Data-parallel tables have neither: as in TorchRec's
    DLRM app they are trained by the dense optimizer, whose LR the loop already schedules."""

    def __init__(self, dmp: nn.Module, lr: float) -> None:
        from torchrec.optim.fused import FusedOptimizer
        from torchrec.optim.keyed import CombinedOptimizer

        def leaves(o):  # noqa: ANN001, ANN202
            if isinstance(o, CombinedOptimizer):
                for _, c in o.optimizers:
                    yield from leaves(c)
            else:
                yield o

        opts = {id(o): o for o in leaves(dmp.fused_optimizer)}
        for p in dmp.parameters():
            opts.update({id(o): o for o in getattr(p, "_in_backward_optimizers", [])})
        self.optimizers = list(opts.values())
        self._fused = FusedOptimizer
        self.lr = lr
        self.factor: Optional[float] = None

    def set(self, factor: float) -> None:
        if factor == self.factor:
            return
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = self.lr * factor
            if isinstance(o, self._fused):
                o.step()
        self.factor = factor


class LRSchedule:
    """Applies :func:`lr_factor` before each step: ``lr = base_lr * factor`` on every dense / rotation
    param group (``base_lrs`` read at construction, before ``optimizer.load_state_dict`` replaces the
    group dicts), and the same factor on the tables' LR when ``sparse_lr`` is given."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, total: int, sparse_lr: Optional[SparseLR]) -> None:
        self.cfg, self.optimizer, self.total, self.sparse_lr = cfg, optimizer, total, sparse_lr
        self.base_lrs: List[float] = [g["lr"] for g in optimizer.param_groups]

    def current_lrs(self) -> Dict[str, float]:
        """The LR each optimizer uses now: ``dense``, ``rotation`` (when the model has one) and ``sparse``
        (the embedding tables' fused optimizer)."""
        out: Dict[str, float] = {}
        for name in ("main", "rotation"):
            opt = getattr(self.optimizer, name, None)
            if opt is not None and opt.param_groups:
                out["dense" if name == "main" else name] = float(opt.param_groups[0]["lr"])
        if not out and self.optimizer.param_groups:
            out["dense"] = float(self.optimizer.param_groups[0]["lr"])
        sl = self.sparse_lr
        out["sparse"] = float(sl.lr * (sl.factor if sl.factor is not None else 1.0)) if sl is not None else self.cfg.optim.sparse.lr
        return out

    def apply(self, step: int) -> None:
        f = lr_factor(step, self.total, self.cfg)
        for g, lr0 in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr0 * f
        if self.sparse_lr is not None:
            self.sparse_lr.set(f)
