"""Baselines in the same harness as STORE: same features (``tables.model_features``), embedding
dims, seeds and ``forward(batch) -> ModelOutput(logits: Tensor[B], aux_losses={})`` contract
(:class:`~store_rec.models.ranking.RankingModel`).

TorchRec's own classes are used where they exist:

* ``dlrm``        – ``torchrec.models.dlrm.DLRM`` (dot interaction).
* ``dlrm_dcn``    – ``torchrec.models.dlrm.DLRM_DCN`` (DCNv2 low-rank cross net).
* ``transformer`` – ``torchrec.models.experimental.transformerdlrm.DLRM_Transformer`` with its
  encoder rebuilt ``batch_first=True``: TorchRec's ``InteractionTransformerArch`` feeds a
  ``[B, F+1, D]`` tensor to a ``batch_first=False`` ``nn.TransformerEncoder``, which therefore
  attends across the *samples of the batch* instead of across features (and its FFN width is fixed
  at 2048). The rebuilt encoder keeps the module names (state_dict keys) and uses
  ``attention.num_heads/num_layers/ffn_dim/dropout``.
* ``deepfm``      – ``torchrec.models.deepfm.SimpleDeepFMNN`` (``torchrec.modules.deepfm`` DeepFM +
  FactorizationMachine) with its over arch replaced by a linear logit layer (TorchRec's ends in a
  sigmoid; the harness trains on logits with ``BCEWithLogits``).
* ``rankmixer``   – :class:`DLRM_RankMixer` (no TorchRec class exists): tokens ``[dense, sparse...]``
  -> ``num_layers`` x (parameter-free token mixing + per-token FFN, each with residual + LN).
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn
from torchrec.models.deepfm import SimpleDeepFMNN
from torchrec.models.dlrm import DLRM, DLRM_DCN, OverArch
from torchrec.models.experimental.transformerdlrm import DLRM_Transformer
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedTensor

from store_rec.models.config import ModelConfig
from store_rec.models.ranking import RankingModel
from store_rec.ops.flops import mha_flops


class RankMixerInteractionArch(nn.Module):
    """RankMixer-style interaction (TorchRec interaction-arch contract).

    ``forward(dense_features: Tensor[B, D], sparse_features: Tensor[B, F, D]) -> Tensor[B, T*D]``
    with ``T = F + 1`` tokens. Each layer::

        X = LN(X + Mix(X))      Mix: [B, T, D] -> transpose -> [B, D, T] -> reshape -> [B, T, D]
        X = LN(X + PFFN(X))     one 2-layer FFN per token (weights [T, D, m*D] and [T, m*D, D])

    ``Mix`` is parameter-free: output token j holds the j-th slice of every input token's
    dimensions (RankMixer's head split with T heads; when ``T`` divides ``D`` it is exactly the
    paper's per-head concatenation up to a fixed permutation inside each token, which the
    per-token FFN absorbs).
    """

    def __init__(self, num_sparse_features: int, embedding_dim: int, num_layers: int = 2, ffn_mult: int = 2) -> None:
        super().__init__()
        T, D, H = num_sparse_features + 1, embedding_dim, ffn_mult * embedding_dim
        self.num_tokens, self.embedding_dim = T, D
        self.w1 = nn.ParameterList(nn.Parameter(torch.randn(T, D, H) / D**0.5) for _ in range(num_layers))
        self.b1 = nn.ParameterList(nn.Parameter(torch.zeros(T, 1, H)) for _ in range(num_layers))
        self.w2 = nn.ParameterList(nn.Parameter(torch.randn(T, H, D) / H**0.5) for _ in range(num_layers))
        self.b2 = nn.ParameterList(nn.Parameter(torch.zeros(T, 1, D)) for _ in range(num_layers))
        self.norm_mix = nn.ModuleList(nn.LayerNorm(D) for _ in range(num_layers))
        self.norm_ffn = nn.ModuleList(nn.LayerNorm(D) for _ in range(num_layers))
        self.output_dim = T * D

    @staticmethod
    def mix(x: torch.Tensor) -> torch.Tensor:
        """Parameter-free token mixing ``Tensor[B, T, D] -> Tensor[B, T, D]``."""
        B, T, D = x.shape
        return x.transpose(1, 2).reshape(B, T, D)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        x = torch.cat([dense_features.unsqueeze(1), sparse_features], dim=1)  # [B, T, D]
        for i in range(len(self.w1)):
            x = self.norm_mix[i](x + self.mix(x))
            h = torch.relu(torch.bmm(x.transpose(0, 1), self.w1[i]) + self.b1[i])  # [T, B, H]
            x = self.norm_ffn[i](x + (torch.bmm(h, self.w2[i]) + self.b2[i]).transpose(0, 1))
        return x.flatten(1)


class DLRM_RankMixer(DLRM):
    """``DLRM`` with :class:`RankMixerInteractionArch` (built like ``DLRM_DCN``)."""

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_arch_layer_sizes: List[int],
        over_arch_layer_sizes: List[int],
        num_layers: int = 2,
        ffn_mult: int = 2,
        dense_device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, dense_arch_layer_sizes, over_arch_layer_sizes, dense_device)
        D = embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        F = len(self.sparse_arch.sparse_feature_names)
        self.inter_arch = RankMixerInteractionArch(F, D, num_layers, ffn_mult)
        if dense_device is not None:
            self.inter_arch.to(dense_device)
        self.over_arch = OverArch(self.inter_arch.output_dim, over_arch_layer_sizes, device=dense_device)


class TorchRecBaseline(RankingModel):
    """A TorchRec DLRM-family model in the harness (see module docstring for each ``name``)."""

    def analytic_flops_modules(self):  # noqa: ANN201
        """The transformer's ``nn.MultiheadAttention`` modules (counted analytically); none otherwise."""
        if self.name != "transformer":
            return {}
        L = sum(len(c.feature_names) for c in self.embedding_bag_collection.embedding_bag_configs()) + 1
        D = self.embedding_bag_collection.embedding_bag_configs()[0].embedding_dim
        mhas = [m for m in self.model.inter_arch.modules() if isinstance(m, nn.MultiheadAttention)]
        return {m: (lambda b, bw, h=m.num_heads: mha_flops(b, L, D, h, backward=bw)) for m in mhas}

    def dense_step(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        if self.name != "deepfm":
            return super().dense_step(dense, sparse)
        names = self.model.inter_arch.sparse_feature_names
        B, F, D = sparse.shape
        kt = KeyedTensor(keys=list(names), length_per_key=[D] * F, values=sparse.reshape(B, F * D))
        ed = self.model.dense_arch(dense)
        return self.model.over_arch(self.model.inter_arch(dense_features=ed, sparse_features=kt))

    @property
    def embedding_bag_collection(self) -> EmbeddingBagCollection:
        return self.model.sparse_arch.embedding_bag_collection


def build_baseline(
    cfg: ModelConfig, ebc: EmbeddingBagCollection, dense_in: int, const_dense: bool, dense_device: Optional[torch.device] = None
) -> TorchRecBaseline:
    """The baseline named ``cfg.name`` over ``ebc`` (one table per used feature, dim D)."""
    D = cfg.embedding_dim
    dense_sizes = [*cfg.dense_arch, D]
    over_sizes = [*cfg.over_arch, 1]
    if cfg.name == "dlrm":
        model: nn.Module = DLRM(ebc, dense_in, dense_sizes, over_sizes, dense_device)
    elif cfg.name == "dlrm_dcn":
        model = DLRM_DCN(ebc, dense_in, dense_sizes, over_sizes, cfg.dcn.num_layers, cfg.dcn.low_rank_dim, dense_device)
    elif cfg.name == "transformer":
        a = cfg.attention
        model = DLRM_Transformer(ebc, dense_in, dense_sizes, over_sizes, nhead=a.num_heads, ntransformer_layers=a.num_layers, dense_device=dense_device)
        layer = nn.TransformerEncoderLayer(D, a.num_heads, dim_feedforward=a.ffn_dim, dropout=a.dropout, batch_first=True, device=dense_device)
        model.inter_arch.interarch_TE = nn.TransformerEncoder(layer, num_layers=a.num_layers, enable_nested_tensor=False)
    elif cfg.name == "deepfm":
        model = SimpleDeepFMNN(dense_in, ebc, cfg.deepfm.hidden_layer_size, cfg.deepfm.deep_fm_dimension)
        model.over_arch = nn.Linear(D + cfg.deepfm.deep_fm_dimension + 1, 1)
        if dense_device is not None:
            for part in (model.dense_arch, model.inter_arch, model.over_arch):
                part.to(dense_device)
    elif cfg.name == "rankmixer":
        model = DLRM_RankMixer(ebc, dense_in, dense_sizes, over_sizes, cfg.rankmixer.num_layers, cfg.rankmixer.ffn_mult, dense_device)
    else:
        raise ValueError(f"model.name: {cfg.name!r} is not a baseline")
    return TorchRecBaseline(model, dense_in if not const_dense else 0, const_dense, cfg.name)


def baseline_names() -> Dict[str, str]:
    """Baseline name -> the class it builds (for docs and ``--help``)."""
    return {
        "dlrm": "torchrec.models.dlrm.DLRM",
        "dlrm_dcn": "torchrec.models.dlrm.DLRM_DCN",
        "transformer": "torchrec.models.experimental.transformerdlrm.DLRM_Transformer (batch_first encoder)",
        "deepfm": "torchrec.models.deepfm.SimpleDeepFMNN (logit over arch)",
        "rankmixer": "store_rec.models.baselines.DLRM_RankMixer",
        "din": "store_rec.models.sequence_baselines.DLRM_DIN (DLRM + DIN target attention over the history)",
    }
