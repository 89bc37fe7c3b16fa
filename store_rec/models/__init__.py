"""Ranking models: STORE (``StoreModel``, ``DLRM_STORE``, ``StoreInteractionArch``) and baselines,
all :class:`RankingModel` s (``forward(batch) -> ModelOutput``), trained through :class:`RankingTrain`
(``forward(batch) -> (loss, TrainOutput)``).

``build_model(cfg, schema, device)`` builds any of them from the ``model:`` config section;
``embedding_tables(schema, cfg)`` lists their ``EmbeddingBagConfig`` s (also for the planner).
"""

from store_rec.models.baselines import DLRM_RankMixer, RankMixerInteractionArch, TorchRecBaseline
from store_rec.models.config import AttentionConfig, ModelConfig, RotationConfig
from store_rec.models.dropin import DLRMStoreTrain, alternating_optimizer
from store_rec.models.factory import build_model
from store_rec.models.ranking import ModelOutput, RankingModel, RankingTrain, TrainOutput
from store_rec.models.store import DLRM_STORE, StoreInteractionArch, StoreLayer, StoreModel
from store_rec.models.tables import ModelFeatures, embedding_tables, model_features

__all__ = [
    "AttentionConfig",
    "DLRMStoreTrain",
    "DLRM_RankMixer",
    "DLRM_STORE",
    "ModelConfig",
    "ModelFeatures",
    "ModelOutput",
    "RankMixerInteractionArch",
    "RankingModel",
    "RankingTrain",
    "RotationConfig",
    "StoreInteractionArch",
    "StoreLayer",
    "StoreModel",
    "TorchRecBaseline",
    "TrainOutput",
    "alternating_optimizer",
    "build_model",
    "embedding_tables",
    "model_features",
]
