"""Common interface of the semantic tokenizers (OPMQ, RQ-VAE, OPQ).

``encode(emb: Tensor[N, d]) -> codes LongTensor[N, K]`` with values in ``[0, C)``;
``decode(codes: LongTensor[N, K]) -> Tensor[N, d]``; ``num_sids`` = K, ``codebook_size`` = C,
``input_dim`` = d. State is saved/loaded with ``state_dict()`` / ``load_state_dict()``.

Encoding is memory-bounded: rows are processed in batches whose size is chosen from
``memory_budget_mb`` and the model's per-row working set (:meth:`SemanticTokenizer.encode_bytes_per_row`:
hidden activations, latents and the ``[K, n, C]`` distance tensor), so e.g. K=32, C=300 no longer
allocates ``N x K x C`` floats at once (measured: +89 MiB RSS for 262144 items instead of ~11 GB).

OOV convention (implemented by the SID-table loader): an item id missing from the SID table gets
SID ``C`` in every position, so each ``sid_k`` feature has ``vocab_size = C + 1``. The OOV SID has no
codeword: :meth:`SemanticTokenizer.decode` rejects it.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from store_rec.errors import UserError

logger = logging.getLogger(__name__)

#: default working-set budget of one encode batch (MiB). Small on purpose: measured on 2 CPU cores
#: (OPMQ K=3, C=16, hidden [128], d=64) 4096-row batches (~9 MiB) encode 1.5-2x faster than 262144-row
#: ones, because the layer outputs stay in cache.
ENCODE_MEMORY_BUDGET_MB = 8
#: rows per encode batch are clamped to [ENCODE_MIN_BATCH, ENCODE_MAX_BATCH]; below ~1024 rows the per-expert
#: matmul calls dominate (OPMQ K=32, C=300: 25k items/s at 256 rows vs 40k at 1024, ~58 MiB working set)
ENCODE_MIN_BATCH = 1024
ENCODE_MAX_BATCH = 65536


def check_embeddings(emb: Tensor, input_dim: int, *, where: str = "embeddings") -> None:
    """Raise UserError for a wrong shape/width or non-finite values (names the first bad row)."""
    if emb.dim() != 2:
        raise UserError(f"{where}: expected Tensor[N, d], got shape {tuple(emb.shape)}")
    if emb.shape[1] != input_dim:
        raise UserError(f"{where}: embedding dimension {emb.shape[1]} != tokenizer input_dim {input_dim}")
    if emb.numel() == 0:
        return
    bad = ~torch.isfinite(emb).all(1)
    if bool(bad.any()):
        row = int(bad.nonzero()[0])
        raise UserError(f"{where}: row {row} has NaN/inf values ({int(bad.sum())} bad rows)")


def check_codes(codes: Tensor, num_sids: int, codebook_size: int, *, where: str = "codes") -> None:
    """Raise UserError unless ``codes`` is an integer ``Tensor[N, K]`` with every value in ``[0, C)``.

    The OOV SID ``C`` (what the loader gives items missing from the SID table) has no codeword and is
    rejected with a message saying so.
    """
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
        raise UserError(f"{where}: expected an integer tensor, got dtype {codes.dtype}")
    if codes.dim() != 2 or codes.shape[1] != num_sids:
        raise UserError(f"{where}: expected LongTensor[N, K={num_sids}], got shape {tuple(codes.shape)}")
    if codes.numel() == 0:
        return
    bad = (codes < 0) | (codes >= codebook_size)
    if bool(bad.any()):
        r, k = (int(v) for v in bad.nonzero()[0])
        v = int(codes[r, k])
        if v == codebook_size:
            raise UserError(f"{where}: row {r}, sid_{k} = {v} is the OOV SID (C = {codebook_size}), which has no "
                            f"codeword and cannot be decoded; valid codes are 0..{codebook_size - 1}")
        raise UserError(f"{where}: row {r}, sid_{k} = {v} outside [0, {codebook_size}) "
                        f"({int(bad.sum())} bad values)")


def check_fit_size(n: int, codebook_size: int, *, batch_size: Optional[int] = None, where: str = "fit") -> None:
    """Training-time guard: ``C`` codewords cannot be initialised from fewer than ``C`` items.

    Raises UserError when ``codebook_size > n``; warns (``UserWarning`` and a log line) when the
    k-means initialisation batch (``batch_size``) is smaller than ``C``, because k-means++ then
    repeats points and starts with duplicate codewords.
    """
    if n <= 0:
        raise UserError(f"{where}: no training items")
    if codebook_size > n:
        raise UserError(f"{where}: codebook_size C={codebook_size} > number of training items {n}: codebooks are "
                        "initialised from the data, so at most n codewords could ever be used; lower C")
    if batch_size is not None and batch_size < codebook_size:
        msg = (f"{where}: batch_size {batch_size} < codebook_size {codebook_size}: the k-means initialisation "
               "batch has fewer points than codewords, so some start as duplicates (dead-code restarts will "
               "have to recover them); use batch_size >= codebook_size")
        logger.warning(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)


class SemanticTokenizer(nn.Module):
    """Base class; subclasses set ``input_dim``, ``num_sids``, ``codebook_size`` and implement
    ``_encode`` (``Tensor[n, d] -> LongTensor[n, K]``, no validation), ``_decode`` and
    ``encode_bytes_per_row``."""

    input_dim: int
    num_sids: int
    codebook_size: int

    def _encode(self, emb: Tensor) -> Tensor:
        raise NotImplementedError

    def _decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_bytes_per_row(self) -> int:
        """Bytes of temporaries one row needs while encoding (used to size batches)."""
        return 4 * (self.input_dim + self.num_sids * (self.codebook_size + 64))

    def encode_batch_size(self, memory_budget_mb: float = ENCODE_MEMORY_BUDGET_MB) -> int:
        """Rows per encode batch: ``memory_budget_mb`` / :meth:`encode_bytes_per_row`, clamped to
        ``[ENCODE_MIN_BATCH, ENCODE_MAX_BATCH]``."""
        if memory_budget_mb <= 0:
            raise UserError(f"encode: memory_budget_mb must be > 0, got {memory_budget_mb}")
        rows = int(memory_budget_mb * 2 ** 20) // max(1, self.encode_bytes_per_row())
        return max(ENCODE_MIN_BATCH, min(ENCODE_MAX_BATCH, rows))

    def _check_batch(self, emb: Tensor, start: int, batch_size: int) -> Tensor:
        """Rows ``[start, start + batch_size)`` as float32, checked for NaN/inf while cache-hot (the
        error names the global row)."""
        x = emb[start:start + batch_size]
        if x.dtype != torch.float32:
            x = x.float()
        # one sum per batch: any NaN/inf makes it non-finite (a finite overflow only triggers the exact check)
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            bad = ~torch.isfinite(x).all(1)
            row = start + int(bad.nonzero()[0])
            n_bad = int((~torch.isfinite(emb).all(1)).sum())
            raise UserError(f"embeddings: row {row} has NaN/inf values ({n_bad} bad rows)")
        return x

    def _encode_batches(self, emb: Tensor, out: Tensor, batch_size: int) -> None:
        """Fill ``out: LongTensor[N, K]`` batch by batch (subclasses override to reuse buffers)."""
        for i in range(0, emb.shape[0], batch_size):
            x = self._check_batch(emb, i, batch_size)
            out[i:i + x.shape[0]] = self._encode(x)

    @torch.inference_mode()
    def encode(self, emb: Tensor, *, batch_size: Optional[int] = None,
               memory_budget_mb: float = ENCODE_MEMORY_BUDGET_MB) -> Tensor:
        """``emb: Tensor[N, d]`` -> ``LongTensor[N, K]`` (validated: width d, all finite).

        Rows are encoded in batches of ``batch_size`` rows (default: :meth:`encode_batch_size` of
        ``memory_budget_mb``, the working set of one batch), written into one preallocated output, so
        peak extra memory is ``O(batch)`` whatever N, K and C are. ``N = 0`` gives ``LongTensor[0, K]``.
        """
        if emb.dim() != 2:
            raise UserError(f"embeddings: expected Tensor[N, d], got shape {tuple(emb.shape)}")
        if emb.shape[1] != self.input_dim:
            raise UserError(f"embeddings: embedding dimension {emb.shape[1]} != tokenizer input_dim {self.input_dim}")
        n = emb.shape[0]
        out = torch.empty(n, self.num_sids, dtype=torch.long, device=emb.device)
        if n == 0:
            return out
        if batch_size is not None and batch_size <= 0:
            raise UserError(f"encode: batch_size must be > 0, got {batch_size}")
        bs = int(batch_size) if batch_size else self.encode_batch_size(memory_budget_mb)
        self._encode_batches(emb, out, bs)
        return out

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """``codes: LongTensor[N, K]`` with values in ``[0, C)`` -> reconstructions ``Tensor[N, d]``.

        Raises UserError for a wrong shape, a non-integer dtype, a negative code or a code ``>= C``
        (the OOV SID ``C`` has no codeword).
        """
        check_codes(codes, self.num_sids, self.codebook_size)
        if codes.shape[0] == 0:
            return torch.empty(0, self.input_dim, device=codes.device)
        return self._decode(codes.long())

    @property
    def tuple_space(self) -> float:
        """``C ** K``, number of distinct SID tuples."""
        return math.pow(self.codebook_size, self.num_sids)
