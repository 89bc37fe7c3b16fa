"""Which sparse features a model uses, by role, and their embedding tables.

One ``EmbeddingBagConfig`` per used sparse feature, named ``t_<feature>`` with
``feature_names=[<feature>]``, ``num_embeddings = vocab_size`` (id 0 = OOV row) and
``embedding_dim = model.embedding_dim`` (a multiple of 4, as FBGEMM's TBE wants). The same list
builds the model's ``EmbeddingBagCollection`` and feeds the sharding planner.

Feature selection (:func:`model_features`), shared by STORE and the baselines so every model in a
comparison sees the same inputs:

* ``tokenizer: none`` -> every ``id`` feature as a raw-ID token; ``sid`` features are ignored.
* ``tokenizer: opmq | rqvae | opq`` with ``sid_source: batch`` -> every ``sid`` feature (``sid_0 ..
  sid_{K-1}``, attached by the loader from ``SIDS.parquet``) as a SID token, plus the ``id``
  features except ``model.item_feature`` (the item whose raw ID the SIDs replace).
* ``tokenizer: opmq | rqvae | opq`` with ``sid_source: online`` -> every ``id`` feature; the pooled
  embedding of ``model.item_feature`` becomes K SID tokens inside the model (``online``).
* ``data.sid_tables`` (several tokenized features, keys ``{feature}_sid_k``, recorded in the schema by
  :func:`store_rec.data.feature_sids.append_feature_sids`) -> with any tokenizer but ``none``, their
  SID keys are tokens (K per feature) and those features' raw ids are dropped, as ``item_feature``'s
  are, for ``batch`` and ``online`` SIDs alike; ``tokenizer: none`` ignores them (raw ids).
* ``static`` features -> grouped by ``schema.groups`` for the rotation (or plain tokens when
  rotation is off, and for the baselines).
* ``history`` features (``model.history.enabled``) -> for the DLRM family (every baseline but
  ``din``) one **mean-pooled** bag per selected history key (``store_rec.models.history.history_keys``:
  the item list as its K ``{H}_sid_k`` keys or the raw ``H``, plus ``model.history.side``), the classic "DLRM with the
  history pooled by the EBC" baseline; STORE and DIN read the same keys unpooled through their
  ``HistoryEncoder`` (an ``EmbeddingCollection``), not the EBC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

from store_rec.data.feature_sids import tokenized_features
from store_rec.data.schema import ID, SID, STATIC, DatasetSchema
from store_rec.errors import UserError
from store_rec.models.config import ModelConfig


@dataclass
class ModelFeatures:
    """Used sparse features by role (names, in schema order)."""

    tokens: List[str]  # SID / raw-ID features: one token each
    static_groups: Dict[str, List[str]]  # semantic group -> static features
    online: List[str] = field(default_factory=list)  # token features tokenized into K SIDs in the model
    history_bags: List[str] = field(default_factory=list)  # history keys mean-pooled by the EBC (DLRM family)

    @property
    def static(self) -> List[str]:
        return [f for names in self.static_groups.values() for f in names]

    @property
    def all(self) -> List[str]:
        """Table / EBC order: tokens first, then static features group by group, then history bags."""
        return [*self.tokens, *self.static, *self.history_bags]


#: models that read the history unpooled (``HistoryEncoder`` tokens) instead of EBC bags
SEQUENCE_MODELS = ("store", "din")


def model_features(schema: DatasetSchema, cfg: ModelConfig) -> ModelFeatures:
    """Select the model's sparse features from ``schema`` according to ``cfg`` (see module doc)."""
    ids = [f.name for f in schema.features_with_role(ID)]
    sids = [f.name for f in schema.features_with_role(SID)]
    per_feature = tokenized_features(schema)  # data.sid_tables: feature -> its SID keys
    extra_keys = [k for keys in per_feature.values() for k in keys]
    if cfg.item_feature is not None and cfg.item_feature not in ids:
        raise UserError(
            f"model.item_feature: {cfg.item_feature!r} is not an 'id' feature of dataset "
            f"{schema.dataset!r} (id features: {', '.join(ids) or 'none'})"
        )
    if cfg.tokenizer == "none":
        tokens = ids
    elif cfg.sid_source == "online":
        # model.item_feature is among them (ModelConfig checks it is set, the check above that it exists)
        tokens = [n for n in ids if n not in per_feature] + extra_keys
    else:
        if not sids:
            raise UserError(
                f"model.tokenizer: {cfg.tokenizer!r} needs semantic-ID features (sid_*) in the batch, but "
                f"dataset {schema.dataset!r} has none: attach a SID table (`store-rec tokenize`) or set "
                "model.tokenizer=none"
            )
        keep = [n for n in ids if n != cfg.item_feature and n not in per_feature]
        order = {f.name: i for i, f in enumerate(schema.sparse)}
        tokens = sorted(sids + keep, key=order.__getitem__)
    groups = {g: list(names) for g, names in schema.groups.items()} if schema.features_with_role(STATIC) else {}
    if not tokens and not groups:
        raise UserError(f"dataset {schema.dataset!r}: the model would use no sparse feature (tokenizer={cfg.tokenizer})")
    online = [cfg.item_feature] if cfg.tokenizer != "none" and cfg.sid_source == "online" else []
    bags: List[str] = []
    if cfg.history.enabled and cfg.name not in SEQUENCE_MODELS:
        from store_rec.models.history import history_keys  # the encoder's key selection, shared

        keys = history_keys(schema, cfg)
        bags = [*keys["item"], *keys["side"]]
    return ModelFeatures(tokens=tokens, static_groups=groups, online=online, history_bags=bags)


def embedding_tables(schema: DatasetSchema, cfg: ModelConfig) -> List[EmbeddingBagConfig]:
    """``List[EmbeddingBagConfig]``, one per used sparse feature, in :attr:`ModelFeatures.all` order
    (history bags with ``PoolingType.MEAN``: an empty history pools to zeros; the rest SUM, TorchRec's
    default)."""
    feats = model_features(schema, cfg)
    bags = set(feats.history_bags)
    return [
        EmbeddingBagConfig(
            name=f"t_{name}",
            embedding_dim=cfg.embedding_dim,
            num_embeddings=schema.feature(name).vocab_size,
            feature_names=[name],
            pooling=PoolingType.MEAN if name in bags else PoolingType.SUM,
        )
        for name in feats.all
    ]
