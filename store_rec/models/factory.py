"""``build_model(cfg, schema)``: STORE or a baseline, all with ``forward(batch) -> ModelOutput(logits, aux_losses)``."""

from __future__ import annotations

from typing import Optional

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from store_rec.data.schema import DatasetSchema
from store_rec.models.baselines import build_baseline
from store_rec.models.config import ModelConfig
from store_rec.models.ranking import RankingModel
from store_rec.models.store import StoreModel
from store_rec.models.tables import embedding_tables


def build_model(
    cfg: ModelConfig,
    schema: DatasetSchema,
    device: Optional[torch.device] = None,
    dense_device: Optional[torch.device] = None,
) -> RankingModel:
    """Build ``cfg.name`` over the features of ``schema`` (:func:`~store_rec.models.tables.model_features`).

    Args:
        cfg: the validated ``model:`` section.
        schema: the schema of what the loader yields (with ``sid_*`` features when a SID table is
            attached).
        device: where the ``EmbeddingBagCollection`` is created; ``torch.device("meta")`` for
            ``DistributedModelParallel`` (it shards and materialises the tables).
        dense_device: where the dense parts are created (default CPU; DMP moves them).

    Returns:
        a :class:`~store_rec.models.ranking.RankingModel`: ``model(batch) -> ModelOutput(logits:
        Tensor[B], aux_losses: Dict[str, Tensor])``; ``model.aux_loss_weights()`` gives the config
        weights; :class:`~store_rec.models.ranking.RankingTrain` wraps it for training.
    """
    if cfg.name == "store":
        return StoreModel(schema, cfg, device=device, dense_device=dense_device)
    ebc = EmbeddingBagCollection(tables=embedding_tables(schema, cfg), device=device)
    const_dense = len(schema.dense) == 0
    dense_in = 1 if const_dense else len(schema.dense)
    if cfg.name == "din":
        from store_rec.models.history import history_encoder
        from store_rec.models.sequence_baselines import build_din

        encoder = history_encoder(schema, cfg, device=device)
        assert encoder is not None  # ModelConfig: din needs model.history.enabled
        if dense_device is not None:
            encoder.token_arch.to(dense_device)  # the position table (the EC stays on `device` for DMP)
        return build_din(cfg, schema, ebc, dense_in, const_dense, encoder, dense_device)
    return build_baseline(cfg, ebc, dense_in, const_dense, dense_device)
