"""Semantic tokenizers: item embeddings ``Tensor[N, d]`` -> K semantic IDs in ``[0, C)`` per item.

OPMQ (STORE), RQ-VAE (TIGER) and OPQ share the interface of :class:`base.SemanticTokenizer`. Items
missing from a SID table get the OOV SID ``C`` (``sid_k`` vocab size ``C + 1``).
"""

from store_rec.tokenizer.base import SemanticTokenizer, check_embeddings
from store_rec.tokenizer.opmq import OPMQ, OPMQConfig, OPMQOutput
from store_rec.tokenizer.opq import OPQ
from store_rec.tokenizer.rqvae import RQVAE
from store_rec.tokenizer.train import TrainConfig, fit_tokenizer

__all__ = ["SemanticTokenizer", "check_embeddings", "OPMQ", "OPMQConfig", "OPMQOutput", "OPQ", "RQVAE",
           "TrainConfig", "fit_tokenizer"]
