"""STORE's full objective inside TorchRec DLRM code: the train wrapper and the alternating schedule.

TorchRec users train ``DLRM`` through ``torchrec.models.dlrm.DLRMTrain``: ``forward(batch) -> (loss,
(loss, logits, labels))`` with ``loss = BCEWithLogits``. Putting :class:`~store_rec.models.store.StoreInteractionArch`
into a DLRM (``DLRM_STORE``, or ``dlrm.inter_arch = StoreInteractionArch(...)``) and keeping ``DLRMTrain``
trains "STORE minus two pieces": the rotation diversity loss and the online tokenizer's losses are not in
the loss, and the rotations step together with everything else instead of on STORE's alternating schedule.
The two pieces here restore them:

* :class:`DLRMStoreTrain` -- ``DLRMTrain``'s place in your code: ``forward(batch) -> (loss, TrainOutput)``
  with ``loss = BCEWithLogits(logits, labels) + sum_k w_k * aux_k`` over the arch's auxiliary losses
  (``"diversity"``: ``-sum_{i<j} ||R_i - R_j||_F^2``, weight ``rotation.diversity_weight``; with an online
  tokenizer, ``"sid_<name>"``, weight 1); the same loss as store_rec's own ``RankingTrain``
  (:func:`store_rec.models.ranking.ranking_loss`). State-dict keys are ``DLRMTrain``'s (``model.sparse_arch...``).
* :func:`alternating_optimizer` -- the dense optimizer of your loop / of ``TrainPipelineSparseDist``:
  the main network's and the rotations' parameters get separate optimizers, stepped on the
  ``"M:R"`` schedule (M main steps, then R rotation steps; ``"joint"``: both every step). The embedding
  tables keep their fused in-backward optimizer (DMP), which updates them on every step.

Your loop, before and after (see README "STORE inside your TorchRec DLRM code")::

    train = DLRMTrain(dlrm)                                    ->  train = DLRMStoreTrain(dlrm)
    model = DistributedModelParallel(train, ...)                   model = DistributedModelParallel(train, ...)
    opt = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter( opt = alternating_optimizer(model, schedule="4:1",
        model.named_parameters())), lambda p: Adam(p, lr=1e-3))        main=lambda p: Adam(p, lr=1e-3), rotation=lambda p: Adam(p, lr=1e-3))
    pipeline = TrainPipelineSparseDist(model, opt, device)         (same)
    loss, logits, labels = pipeline.progress(it)                   out = pipeline.progress(it)  # TrainOutput: out.loss, out.logits, out.losses["diversity"]
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from store_rec.models.ranking import TrainOutput, ranking_loss
from store_rec.models.store import StoreInteractionArch
from store_rec.modules.rotation import AlternatingOptimizer, AlternatingSchedule, rotation_modules, split_rotation_params

OptimizerFactory = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


class DLRMStoreTrain(nn.Module):
    """``torchrec.models.dlrm.DLRMTrain`` for a DLRM whose ``inter_arch`` is a :class:`StoreInteractionArch`,
    with STORE's full objective.

    Args:
        dlrm_module: ``DLRM_STORE`` or any ``torchrec.models.dlrm.DLRM`` (``DLRM_DCN``, ...) whose
            ``inter_arch`` was replaced by a ``StoreInteractionArch`` (and ``over_arch`` sized to its
            ``output_dim``).
        aux_weights: per-loss weights over the arch's defaults (``StoreInteractionArch.aux_loss_weights()``);
            ``{"diversity": 0}`` drops the diversity term.

    ``forward(batch) -> (loss: Tensor[], TrainOutput)``: ``batch`` is ``torchrec.datasets.utils.Batch``
    (``dense_features: Tensor[B, n_dense]``, ``sparse_features: KJT``, ``labels: Tensor[B]``) or
    anything with those attributes; :class:`~store_rec.models.ranking.TrainOutput` is detached
    (``loss, logits: Tensor[B], labels, user_ids`` (-1 when the batch has none), ``losses`` = ``{"bce",
    **aux}`` unweighted).
    """

    def __init__(self, dlrm_module: nn.Module, aux_weights: Optional[Mapping[str, float]] = None) -> None:
        super().__init__()
        arch = getattr(dlrm_module, "inter_arch", None)
        if not isinstance(arch, StoreInteractionArch):
            raise TypeError(f"DLRMStoreTrain: dlrm_module.inter_arch must be a StoreInteractionArch, got "
                            f"{type(arch).__name__} (use torchrec's DLRMTrain for other interactions)")
        self.model = dlrm_module
        self.aux_weights: Dict[str, float] = {**arch.aux_loss_weights(), **dict(aux_weights or {})}
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch) -> Tuple[torch.Tensor, TrainOutput]:  # noqa: ANN001
        m = self.model
        with parametrize.cached():  # each parametrized R_i computed once for the forward and the diversity loss
            embedded_dense = m.dense_arch(batch.dense_features)
            embedded_sparse = m.sparse_arch(batch.sparse_features)
            inter, sid_aux = m.inter_arch.interact(dense_features=embedded_dense, sparse_features=embedded_sparse)
            logits = m.over_arch(inter).squeeze(-1)
            aux = {**m.inter_arch.aux_losses(), **sid_aux}
        return ranking_loss(logits, aux, batch, self.aux_weights, self.loss_fn)


def alternating_optimizer(
    model: nn.Module,
    main: OptimizerFactory,
    rotation: OptimizerFactory,
    schedule: Union[str, AlternatingSchedule, None] = None,
) -> AlternatingOptimizer:
    """The dense optimizer for STORE in your own loop or ``TrainPipelineSparseDist(model, optimizer, device)``.

    ``model`` is the (DMP-wrapped) train module; parameters that already have an in-backward optimizer
    (the embedding tables under DMP / ``apply_optimizer_in_backward``) are left to it. The rest is split
    into the rotation parameters of every ``OrthogonalRotation`` (optimizer ``rotation(params)``) and the
    main network (``main(params)``), each wrapped in torchrec's ``KeyedOptimizerWrapper`` (so
    ``state_dict()`` is keyed by parameter name, as DMP checkpoints expect). ``step()`` steps them on
    ``schedule`` (``"M:R"`` or ``"joint"``; default: the arch's ``RotationConfig.schedule``) and re-orthonormalises the
    rotations after a rotation step (QR method); ``zero_grad()`` clears both every step.

    In a plain loop::

        opt = alternating_optimizer(model, main=lambda p: torch.optim.Adam(p, 1e-3),
                                    rotation=lambda p: torch.optim.Adam(p, 1e-3))  # schedule: rotation.schedule
        for batch in loader:
            loss, out = model(batch)
            opt.zero_grad(); loss.backward(); opt.step()
    """
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    if schedule is None:
        specs = {m.rotation_config.schedule for m in model.modules() if isinstance(m, StoreInteractionArch) and m.use_rotation}
        if len(specs) != 1:
            raise ValueError(f"alternating_optimizer: give schedule=...: the model's rotation schedules are {sorted(specs)}")
        schedule = specs.pop()
    sched = schedule if isinstance(schedule, AlternatingSchedule) else AlternatingSchedule(schedule)
    main_params, rot_params = split_rotation_params(model, in_backward_optimizer_filter(model.named_parameters()))
    if not rot_params:
        raise ValueError("alternating_optimizer: the model has no OrthogonalRotation parameters (rotation disabled?); "
                         "use one optimizer for everything")
    return AlternatingOptimizer(
        KeyedOptimizerWrapper(main_params, main) if main_params else None,
        KeyedOptimizerWrapper(rot_params, rotation),
        sched,
        rotation_modules(model),
    )
