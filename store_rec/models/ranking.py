"""The generic ranking model and its training wrapper: the two levels TorchRec's ``DLRM`` /
``DLRMTrain`` have, for STORE and every baseline.

* :class:`RankingModel` -- ``forward(batch) -> ModelOutput(logits: Tensor[B], aux_losses: Dict[str,
  Tensor])`` around a DLRM-style ``model(dense_features: Tensor[B, n_dense], sparse_features: KJT) ->
  Tensor[B, 1]`` (``DLRM_STORE`` or a TorchRec baseline). Subclasses override
  :meth:`RankingModel.logits_and_aux` when their arch returns auxiliary losses (STORE's rotation
  diversity and online tokenizer losses), and :meth:`RankingModel.analytic_flops_modules` for the
  modules ``store_rec.ops.flops`` must count analytically.
* :class:`RankingTrain` -- the train wrapper ``TrainPipelineSparseDist`` drives: ``forward(batch) ->
  (loss, TrainOutput)`` (``pipeline.progress`` returns the :class:`TrainOutput`).

Every caller reads outputs by name (``out.logits``, ``out.losses["bce"]``), never by position.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from store_rec.ops.flops import FlopsFn


class ModelOutput(NamedTuple):
    """What a :class:`RankingModel` returns for a batch of ``B`` samples."""

    logits: torch.Tensor  #: Tensor[B], before the sigmoid
    aux_losses: Dict[str, torch.Tensor]  #: name -> scalar, unweighted (``{}`` for the baselines)


class TrainOutput(NamedTuple):
    """The detached outputs of :class:`RankingTrain` (what ``TrainPipelineSparseDist.progress`` returns).

    ``losses`` holds ``"bce"`` (the log loss alone; the total ``loss`` can be negative, since STORE's
    diversity term is a negated distance) and every auxiliary loss of the model by name, unweighted.
    """

    loss: torch.Tensor  #: Tensor[], ``bce + sum_k w_k * aux_k``
    logits: torch.Tensor  #: Tensor[B]
    labels: torch.Tensor  #: Tensor[B], float
    user_ids: torch.Tensor  #: Tensor[B], int64: the batch's user key for GAUC, -1 when it has none
    losses: Dict[str, torch.Tensor]  #: {"bce": Tensor[], **aux_losses}


def dense_input(batch, const_dense: bool) -> torch.Tensor:  # noqa: ANN001
    """``batch.dense_features: Tensor[B, n_dense]``, or ``ones[B, 1]`` when the dataset has no dense
    feature (the dense MLP then learns a bias token). No data-dependent control flow: the pipeline
    fx-traces this."""
    dense = batch.dense_features
    if const_dense:
        return torch.ones_like(batch.labels, dtype=torch.float32).unsqueeze(1)
    return dense


class RankingModel(nn.Module):
    """``forward(batch) -> ModelOutput(logits: Tensor[B], aux_losses: Dict[str, Tensor])`` around a
    DLRM-style ``model(dense_features, sparse_features: KJT) -> Tensor[B, 1]`` (STORE or a baseline).

    ``batch`` is anything with ``.dense_features: Tensor[B, n_dense]`` and ``.sparse_features: KJT``
    (``StoreBatch``, ``torchrec.datasets.utils.Batch``). The KJT may carry extra keys; the EBC reads
    its own features. Loss (:class:`RankingTrain`): ``BCEWithLogits(logits, labels) + sum_k w_k *
    aux[k]`` with ``w = aux_loss_weights()``.
    """

    def __init__(self, model: nn.Module, dense_in_features: int, const_dense: bool, name: str) -> None:
        super().__init__()
        self.model = model
        self.dense_in_features = dense_in_features
        self.const_dense = const_dense
        self.name = name
        self.autocast_dtype: Optional[torch.dtype] = None  # set_precision("bf16"): autocast the dense part
        self.autocast_device = "cpu"

    def set_precision(self, precision: str, device_type: str = "cpu") -> None:
        """``"bf16"``: run the forward under ``torch.autocast(bfloat16)``. The embedding lookups (fbgemm
        TBE, not autocast ops) and the pooled embeddings stay fp32; the dense arch, interaction (MoBA
        attention, rotation) and over arch compute in bf16 where autocast allows; the logits and
        auxiliary losses are returned as fp32 (the loss is computed in fp32). ``"fp32"``: off."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: {precision!r} is not fp32 or bf16")
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.autocast_device = device_type

    def forward(self, batch) -> ModelOutput:  # noqa: ANN001
        dense = dense_input(batch, self.const_dense)
        # each parametrized R_i is computed once for forward + aux. The autocast device is a plain string
        # (not dense.device.type): TrainPipelineSparseDist fx-traces this forward.
        amp = torch.autocast(self.autocast_device, dtype=self.autocast_dtype) if self.autocast_dtype is not None else nullcontext()
        with parametrize.cached(), amp:
            logits, aux = self.logits_and_aux(dense, batch.sparse_features)
        if self.autocast_dtype is not None:
            logits, aux = logits.float(), {k: v.float() for k, v in aux.items()}
        return ModelOutput(logits.squeeze(-1), aux)

    def dense_children(self) -> Dict[str, nn.Module]:
        """The inner model's modules after the embedding lookups (all but ``sparse_arch``): what
        ``train.compile`` compiles."""
        return {n: c for n, c in self.model.named_children() if n != "sparse_arch"}

    def logits_and_aux(self, dense: torch.Tensor, sparse_features) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:  # noqa: ANN001
        """``(Tensor[B, 1], aux_losses)`` of the inner model; the baselines have no auxiliary loss."""
        return self.model(dense_features=dense, sparse_features=sparse_features), {}

    def aux_loss_weights(self) -> Dict[str, float]:
        """Default weight of each auxiliary loss (the config's); ``{}`` without auxiliary losses."""
        return {}

    @property
    def embedding_bag_collection(self) -> EmbeddingBagCollection:
        return self.model.sparse_arch.embedding_bag_collection

    @property
    def embedding_collection(self) -> Optional[EmbeddingCollection]:
        """The model's unpooled ``EmbeddingCollection`` (history tokens, issue 13) for sharding and
        planning, or None (the default: the model has only the EBC)."""
        return None

    # ---------------------------------------------------------------- FLOPs (store_rec.ops.flops.model_flops)
    def analytic_flops_modules(self) -> Dict[nn.Module, FlopsFn]:
        """Modules whose FLOPs ``store_rec.ops.flops`` counts analytically (``FlopCounterMode`` sees 0
        for CPU SDPA) -> ``fn(batch_size, backward) -> FLOPs``. None for the plain DLRM family."""
        return {}

    def dense_step(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """What runs after the embedding lookups: ``dense: Tensor[B, n_dense], sparse: Tensor[B, F, D]
        -> Tensor[B, 1]`` (dense arch, interaction, over arch), for FLOPs counting on synthetic inputs."""
        ed = self.model.dense_arch(dense)
        return self.model.over_arch(self.model.inter_arch(dense_features=ed, sparse_features=sparse))


class RankingTrain(nn.Module):
    """The train wrapper for ``TrainPipelineSparseDist`` (TorchRec's ``DLRMTrain`` level), for every model.

    ``forward(batch) -> (loss: Tensor[], TrainOutput)`` with ``loss = BCEWithLogits(logits, labels) +
    sum_k weights[k] * aux[k]``, ``weights = {**model.aux_loss_weights(), **aux_weights}``: the given
    weights override the model's defaults key by key (``{"diversity": 0.05}`` keeps an online
    tokenizer's ``sid_*`` weights; set a key to 0 to drop that loss). The :class:`TrainOutput` is
    detached, as ``pipeline.progress`` returns it.
    """

    def __init__(self, model: RankingModel, aux_weights: Optional[Mapping[str, float]] = None) -> None:
        super().__init__()
        self.model = model
        self.aux_weights = {**model.aux_loss_weights(), **(aux_weights or {})}
        self.loss_fn = nn.BCEWithLogitsLoss()

    def forward(self, batch) -> Tuple[torch.Tensor, TrainOutput]:  # noqa: ANN001
        logits, aux = self.model(batch)
        return ranking_loss(logits, aux, batch, self.aux_weights, self.loss_fn)


def ranking_loss(logits: torch.Tensor, aux: Mapping[str, torch.Tensor], batch, weights: Mapping[str, float],  # noqa: ANN001
                 loss_fn: nn.Module) -> Tuple[torch.Tensor, TrainOutput]:
    """The training objective of every train wrapper (:class:`RankingTrain`, ``store_rec.models.dropin.DLRMStoreTrain``):
    ``loss = loss_fn(logits: Tensor[B], batch.labels) + sum_k weights[k] * aux[k]`` (a key missing from
    ``weights`` or weighted 0 is reported, not optimised) and the detached :class:`TrainOutput`."""
    labels = batch.labels.float()
    bce = loss_fn(logits, labels)
    loss = bce
    for k, v in aux.items():
        w = weights.get(k, 0.0)
        if w:
            loss = loss + w * v
    user_ids = getattr(batch, "user_ids", None)
    if user_ids is None:
        user_ids = torch.full_like(labels, -1, dtype=torch.int64)
    losses = {"bce": bce.detach(), **{k: v.detach() for k, v in aux.items()}}
    return loss, TrainOutput(loss.detach(), logits.detach(), labels.detach(), user_ids, losses)
