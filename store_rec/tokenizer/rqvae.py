"""RQ-VAE (TIGER-style): one encoder, K residual quantization levels, one decoder.

``e: Tensor[N, d] -> encoder -> z: Tensor[N, latent]``; level k quantizes the residual
``r_k = z - sum_{j<k} s_j`` with its own codebook (the shared :class:`VectorQuantizer` machinery, one
codebook per level); decoder reconstructs from ``sum_k s_k`` (straight-through). Same interface as OPMQ.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from store_rec.config import ConfigError
from store_rec.tokenizer.base import SemanticTokenizer
from store_rec.tokenizer.opmq import OPMQConfig, OPMQOutput, mlp
from store_rec.tokenizer.quantizer import VectorQuantizer


class RQVAE(SemanticTokenizer):
    """``forward(emb: Tensor[N, d]) -> OPMQOutput`` (``z``/``quantized``: per-level residuals/codewords)."""

    def __init__(self, input_dim: int, num_sids: int = 3, codebook_size: int = 256, *,
                 config: OPMQConfig = None, seed: int = 0, **overrides):
        super().__init__()
        if config is not None and overrides:
            raise ConfigError(f"pass either config or keyword overrides, not both: {sorted(overrides)}")
        if input_dim <= 0:
            raise ConfigError(f"input_dim: must be > 0, got {input_dim}")
        cfg = config or OPMQConfig(num_sids=num_sids, codebook_size=codebook_size, **overrides)
        self.cfg = cfg
        self.input_dim, self.num_sids, self.codebook_size = input_dim, cfg.num_sids, cfg.codebook_size
        self.latent_dim = cfg.latent_dim
        torch.manual_seed(seed)
        dims = [input_dim, *cfg.hidden_dims, cfg.latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])
        self.levels = nn.ModuleList(
            VectorQuantizer(1, cfg.codebook_size, cfg.latent_dim, update=cfg.codebook_update,
                            decay=cfg.ema_decay, commitment_weight=cfg.commitment_weight,
                            dead_code_steps=cfg.dead_code_steps, kmeans_init=cfg.kmeans_init, seed=seed + 7 * k)
            for k in range(cfg.num_sids))

    def forward(self, emb: Tensor) -> OPMQOutput:
        z = self.encoder(emb)
        residual = z
        qs, codes, res, losses = [], [], [], {}
        for k, vq in enumerate(self.levels):
            res.append(residual)
            q, c, level_losses = vq(residual[:, None, :])
            qs.append(q[:, 0])
            codes.append(c[:, 0])
            residual = residual - q[:, 0].detach()
            for name, v in level_losses.items():
                losses[name] = losses.get(name, 0) + v
        quant = torch.stack(qs, 1)
        recon = self.decoder(quant.sum(1))
        losses["recon"] = ((recon - emb) ** 2).sum(-1).mean()
        return OPMQOutput(recon, torch.stack(codes, 1), torch.stack(res, 1), quant, losses)

    def _encode(self, emb: Tensor) -> Tensor:
        """Unvalidated codes of one batch ``Tensor[n, d] -> LongTensor[n, K]``: level k takes the nearest
        codeword of the residual left by levels ``< k``."""
        residual = self.encoder(emb)
        codes = torch.empty(emb.shape[0], self.num_sids, dtype=torch.long, device=emb.device)
        for k, vq in enumerate(self.levels):
            c = vq.nearest(residual[:, None, :])
            codes[:, k] = c[:, 0]
            residual = residual - vq.lookup(c)[:, 0]
        return codes

    def encode_bytes_per_row(self) -> int:
        return 4 * (sum(self.cfg.hidden_dims) + 3 * self.latent_dim + self.codebook_size) + 8 * self.num_sids

    def _decode(self, codes: Tensor) -> Tensor:
        """``LongTensor[N, K]`` (validated by :meth:`decode`) -> ``Tensor[N, d]``."""
        q = sum(vq.lookup(codes[:, k:k + 1])[:, 0] for k, vq in enumerate(self.levels))
        return self.decoder(q)
