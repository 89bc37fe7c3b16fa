"""Online SID tokenizer: pooled embeddings of a (sharded) EBC -> K semantic-ID tokens per feature.

Where it sits::

    KJT (from the batch) -> ShardedEmbeddingBagCollection -> KeyedTensor -> OnlineSIDTokenizer -> tokens

It consumes the EBC's *output*, so the EBC's KJT still comes straight from the batch and TorchRec's
``TrainPipelineSparseDist`` keeps overlapping the input dist: the pipeline only needs the sparse
module's input to come from the batch unchanged; whatever runs on the pooled embeddings is ordinary
dense compute of the forward and does not stall the pipelined input dist. It runs data-parallel: every rank holds the same tokenizer, and the
tokenizer's codebook state stays identical across ranks because OPMQ all-reduces its EMA statistics
and makes k-means init / dead-code restarts identical when ``torch.distributed`` is initialised.

Token construction (``token_mode``):

* ``"codes"`` (default): a learned SID embedding table per SID position, ``Tensor[K, C, D_model]``,
  indexed by the codes: token ``k`` of feature ``f`` = ``sid_table[k, codes[:, f, k]]``. Same scheme as
  SID features that come from the batch (``sid_k`` tables), so a model can switch between the
  offline (SID table -> batch) and online paths without changing what a token means.
* ``"latent"``: the tokenizer's quantized latent of expert ``k`` (straight-through, so gradients
  reach the experts when fine-tuning) projected to ``D_model`` by a per-position linear map.

Training the tokenizer (``finetune``):

* ``False``: the tokenizer is frozen (``eval()``, no gradients, codebooks never move).
* ``True``: the tokenizer trains with the ranking loss (latent mode) plus its own reconstruction /
  orthogonality / commitment losses, returned in ``aux_losses`` for the training loop to add (already
  weighted by the tokenizer's configured weights, times ``aux_weight``).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from store_rec.errors import UserError

TOKEN_MODES = ("codes", "latent")


class OnlineSIDTokenizer(nn.Module):
    """Pooled item embeddings ``[B, F, d]`` -> SID tokens ``[B, F*K, D_model]`` and auxiliary losses.

    Args:
        tokenizer: a trained OPMQ (``store_rec.tokenizer.opmq.OPMQ``); any module with the OPMQ
            interface works (``encode``, ``quantize``, ``losses``; see :meth:`_quantize`).
        features: names of the high-cardinality features to tokenize (keys of the EBC's KeyedTensor).
        model_dim: ``D_model`` of the emitted tokens.
        token_mode: ``"codes"`` or ``"latent"`` (see module docstring).
        finetune: train the tokenizer online (``True``) or keep it frozen (``False``).
        aux_weight: multiplies every auxiliary loss.
    """

    def __init__(self, tokenizer: nn.Module, features: Sequence[str], model_dim: int, *, token_mode: str = "codes",
                 finetune: bool = False, aux_weight: float = 1.0) -> None:
        super().__init__()
        if token_mode not in TOKEN_MODES:
            raise UserError(f"token_mode must be one of {TOKEN_MODES}, got {token_mode!r}")
        if not features:
            raise UserError("OnlineSIDTokenizer needs at least one feature")
        if model_dim <= 0:
            raise UserError(f"model_dim must be > 0, got {model_dim}")
        self.tokenizer = tokenizer
        self.features = list(features)
        self.model_dim = model_dim
        self.token_mode = token_mode
        self.finetune = finetune
        self.aux_weight = aux_weight
        self.num_sids = int(tokenizer.num_sids)
        self.codebook_size = int(tokenizer.codebook_size)
        self.input_dim = int(tokenizer.input_dim)
        if not hasattr(tokenizer, "latent_dim") and (finetune or token_mode != "codes"):
            raise UserError(f"{type(tokenizer).__name__} has no trainable latents: use token_mode='codes' with finetune=False")
        if token_mode == "codes":
            self.sid_emb = nn.Parameter(torch.empty(self.num_sids, self.codebook_size, model_dim))
            nn.init.normal_(self.sid_emb, std=model_dim ** -0.5)
        else:
            ld = int(tokenizer.latent_dim)
            self.proj = nn.Parameter(torch.empty(self.num_sids, ld, model_dim))
            self.proj_bias = nn.Parameter(torch.zeros(self.num_sids, model_dim))
            nn.init.normal_(self.proj, std=ld ** -0.5)
        if not finetune:
            for p in self.tokenizer.parameters():
                p.requires_grad_(False)
            self.tokenizer.eval()
        # names of the losses fine-tuning returns (keys of ``aux_losses`` without the model's ``sid_`` prefix)
        self.loss_names: Tuple[str, ...] = self._probe_loss_names() if finetune else ()

    def train(self, mode: bool = True) -> "OnlineSIDTokenizer":
        super().train(mode)
        if not self.finetune:
            self.tokenizer.eval()  # frozen: no EMA updates, no dead-code restarts
        return self

    def _probe_loss_names(self) -> Tuple[str, ...]:
        """The loss names the tokenizer returns, from one forward of two zero rows in eval mode (no
        codebook update, no k-means init: nothing in the tokenizer changes)."""
        p = next(self.tokenizer.parameters(), None)
        was = self.tokenizer.training
        self.tokenizer.eval()
        try:
            with torch.no_grad():
                _, _, losses = self._quantize(torch.zeros(2, self.input_dim, device=p.device if p is not None else None))
        finally:
            self.tokenizer.train(was)
        return tuple(losses)

    def _pooled(self, pooled: Any) -> Tensor:
        """KeyedTensor (keys include ``features``) or ``Tensor[B, F, d]`` -> ``Tensor[B, F, d]``."""
        if isinstance(pooled, Tensor):
            x = pooled
            if x.ndim != 3 or x.shape[1] != len(self.features):
                raise UserError(f"expected pooled Tensor[B, F={len(self.features)}, d], got {tuple(x.shape)}")
        else:
            d = pooled.to_dict()
            missing = [f for f in self.features if f not in d]
            if missing:
                raise UserError(f"pooled embeddings have no feature {missing[0]!r} (keys: {list(d)[:20]})")
            x = torch.stack([d[f] for f in self.features], dim=1)
        if x.shape[-1] != self.input_dim:
            raise UserError(f"pooled embedding dim {x.shape[-1]} != tokenizer input dim {self.input_dim}")
        return x

    def forward(self, pooled: Any) -> Tuple[Tensor, Dict[str, Tensor]]:
        """``pooled``: KeyedTensor or ``Tensor[B, F, d]`` -> ``(Tensor[B, F*K, D_model], aux_losses)``.

        Tokens are ordered feature-major: feature 0's K tokens, then feature 1's ...
        ``codes`` of the last call are kept in ``self.last_codes: LongTensor[B, F, K]``.
        """
        x = self._pooled(pooled)
        if not self.finetune and self.tokenizer.training:
            self.tokenizer.eval()  # frozen even if someone called .train() on the tokenizer itself
        B, F, d = x.shape
        flat = x.reshape(B * F, d)
        aux: Dict[str, Tensor] = {}
        if self.finetune and self.training:
            q, codes, losses = self._quantize(flat)
            aux = {k: self.aux_weight * v for k, v in losses.items()}
        elif self.token_mode == "codes":  # frozen codes: the nearest codewords only (no decoder)
            with torch.no_grad():
                q, codes = None, self.tokenizer._encode(flat.detach())
        else:
            with torch.no_grad():
                q, codes, _ = self._quantize(flat.detach())
        self.last_codes = codes.reshape(B, F, self.num_sids)
        if self.token_mode == "codes":
            k_idx = torch.arange(self.num_sids, device=codes.device).expand_as(codes)
            tok = self.sid_emb[k_idx, codes]  # [B*F, K, D]
        else:
            tok = torch.einsum("nke,ked->nkd", q, self.proj) + self.proj_bias
        return tok.reshape(B, F * self.num_sids, self.model_dim), aux

    def _quantize(self, x: Tensor) -> Tuple[Tensor, Tensor, Dict[str, Tensor]]:
        """``x: Tensor[N, d]`` -> ``(quantized latents Tensor[N, K, e], codes LongTensor[N, K], losses)``."""
        out = self.tokenizer(x)
        return out.quantized, out.codes, dict(out.losses)


# ------------------------------------------------------------------ tokenizer files
TOKENIZER_FILE_VERSION = 1


def save_tokenizer(path: Union[str, "os.PathLike[str]"], tokenizer: nn.Module, method: str) -> None:
    """Write a trained tokenizer (``opmq`` / ``rqvae`` / ``opq``) to ``path`` (temp file + rename):
    its constructor arguments and ``state_dict``, what :func:`load_tokenizer` rebuilds it from.

    The file holds only plain containers, numbers, strings and tensors, so :func:`load_tokenizer` reads it
    with ``torch.load(weights_only=True)``: loading a file never runs code from it."""
    import dataclasses

    from store_rec.fileio import atomic_path

    if method not in ("opmq", "rqvae", "opq"):
        raise UserError(f"method must be opmq, rqvae or opq, got {method!r}")
    cfg = getattr(tokenizer, "cfg", None)
    blob = {"version": TOKENIZER_FILE_VERSION, "method": method, "input_dim": int(tokenizer.input_dim),
            "num_sids": int(tokenizer.num_sids), "codebook_size": int(tokenizer.codebook_size),
            "config": _plain(dataclasses.asdict(cfg)) if cfg is not None else None,
            "state_dict": {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def _plain(obj: Any) -> Any:
    """Tuples -> lists (recursively): what ``weights_only`` loading accepts without an allow-list."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def load_tokenizer(path: Union[str, "os.PathLike[str]"]) -> Tuple[nn.Module, str]:
    """``(tokenizer, method)`` from a file of :func:`save_tokenizer`; errors name the file.

    Read with ``torch.load(weights_only=True)``: a file that would run code when unpickled (any object
    but containers, numbers, strings and tensors) is refused with a UserError, never executed."""
    import os
    import pickle

    from store_rec.tokenizer.opmq import OPMQ, OPMQConfig
    from store_rec.tokenizer.opq import OPQ
    from store_rec.tokenizer.rqvae import RQVAE

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such tokenizer file (write one with `store-rec tokenize ... --save-model FILE`)")
    try:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"{path}: refused: the file holds objects other than tensors and plain data, which "
                            f"could run code when loaded (not a store_rec tokenizer file; "
                            f"{str(e).splitlines()[0][:200]})") from None
        if not isinstance(blob, dict):
            raise UserError(f"{path}: not a store_rec tokenizer file (top level is {type(blob).__name__})")
        method = blob["method"]
        if method not in ("opmq", "rqvae", "opq"):
            raise UserError(f"{path}: not a store_rec tokenizer file (method {method!r})")
        if method == "opq":
            tok: nn.Module = OPQ(blob["input_dim"], blob["num_sids"], blob["codebook_size"])
        else:
            cls = OPMQ if method == "opmq" else RQVAE
            tok = cls(blob["input_dim"], config=OPMQConfig(**blob["config"]))
        tok.load_state_dict(blob["state_dict"])
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any malformed file
        raise UserError(f"{path}: not a store_rec tokenizer file ({type(e).__name__}: {e})") from None
    return tok.eval(), method
