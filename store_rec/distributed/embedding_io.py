"""Pre-trained item vectors into (and out of) a sharded TorchRec EmbeddingBagCollection.

At industrial scale the item table does not fit one process, so pre-trained vectors (SASRec,
``store-rec pretrain``) are written shard by shard: each rank copies the rows/columns of the shards
it owns into the sharded module's weights, read through the module's ``state_dict()``:

* model-parallel tables (table_wise, column_wise, table_column_wise, row_wise on cuda) appear as
  ``ShardedTensor``; every local shard has ``metadata.shard_offsets = [row0, col0]`` and
  ``shard_sizes = [rows, cols]``, and its ``tensor`` is a view of the FBGEMM TBE weights, so an in-place
  ``copy_`` updates the weights the forward uses;
* data_parallel tables are plain replicated tensors: every rank writes the full rows.

Works for a plain (unsharded) ``EmbeddingBagCollection`` too, and for any module that holds one
(``DistributedModelParallel``, DLRM): the weight is found by the state-dict key suffix
``embedding_bags.<table_name>.weight``.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from store_rec.errors import UserError


def _find_weight(model: nn.Module, table_name: str) -> Tuple[str, Any]:
    suffix = f"embedding_bags.{table_name}.weight"
    names = []
    for key, val in model.state_dict(keep_vars=True).items():
        if key.endswith(suffix) and (key == suffix or key[: -len(suffix)].endswith(".")):
            return key, val
        if "embedding_bags." in key and key.endswith(".weight"):
            names.append(key.split("embedding_bags.")[-1][: -len(".weight")])
    raise UserError(f"table {table_name!r} not found in the model (tables: {', '.join(sorted(set(names))[:20]) or 'none'})")


def _global_size(val: Any) -> Tuple[int, int]:
    s = val.size() if callable(getattr(val, "size", None)) else val.shape
    return int(s[0]), int(s[1])


def _pieces(val: Any) -> Iterator[Tuple[int, int, Tensor]]:
    """``(row0, col0, local tensor)`` of every piece of the table this rank holds."""
    if hasattr(val, "local_shards"):
        for sh in val.local_shards():
            r0, c0 = (int(x) for x in sh.metadata.shard_offsets)
            yield r0, c0, sh.tensor
    else:
        yield 0, 0, val


def _is_sharded(val: Any) -> bool:
    return hasattr(val, "local_shards")


def load_pretrained_into_ebc(model: nn.Module, table_name: str, ids: Any, emb: Any) -> int:
    """Copy ``emb[i]`` into row ``ids[i]`` of table ``table_name``, on this rank's shards.

    Args:
        model: an ``EmbeddingBagCollection``, a ``ShardedEmbeddingBagCollection``, or a module holding one
            (``DistributedModelParallel``, DLRM ...).
        table_name: ``EmbeddingBagConfig.name`` (``t_<feature>`` in store_rec models).
        ids: ``int64[N]`` row ids (unique, in ``[0, num_embeddings)``). Rows not listed keep their values.
        emb: ``float[N, d]`` with ``d`` = the table's full embedding dim.

    Every rank must be given at least the rows it owns (simplest: the same full arrays on every rank);
    rows owned by other ranks are skipped. No collective is issued.

    Returns:
        the number of (row, shard) pieces written on this rank.
    """
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.int64).reshape(-1)
    emb_t = torch.as_tensor(np.asarray(emb, dtype=np.float32))
    _, val = _find_weight(model, table_name)
    rows, dim = _global_size(val)
    if emb_t.ndim != 2 or emb_t.shape[0] != ids_t.numel():
        raise UserError(f"table {table_name}: expected emb [N={ids_t.numel()}, {dim}], got {tuple(emb_t.shape)}")
    if emb_t.shape[1] != dim:
        raise UserError(f"table {table_name}: embedding dimension {emb_t.shape[1]} != table dim {dim}")
    if ids_t.numel() and (int(ids_t.min()) < 0 or int(ids_t.max()) >= rows):
        bad = ids_t[(ids_t < 0) | (ids_t >= rows)][0]
        raise UserError(f"table {table_name}: id {int(bad)} outside [0, {rows})")
    if torch.unique(ids_t).numel() != ids_t.numel():
        raise UserError(f"table {table_name}: duplicate ids in the pre-trained rows")
    if not torch.isfinite(emb_t).all():
        r = int((~torch.isfinite(emb_t)).any(1).nonzero()[0])
        raise UserError(f"table {table_name}: non-finite embedding for id {int(ids_t[r])} (row {r})")
    written = 0
    with torch.no_grad():
        for r0, c0, t in _pieces(val):
            nr, nc = t.shape
            m = (ids_t >= r0) & (ids_t < r0 + nr)
            if not bool(m.any()):
                continue
            local = (ids_t[m] - r0).to(t.device)
            t.detach().index_copy_(0, local, emb_t[m, c0:c0 + nc].to(t.device, t.dtype))
            written += int(m.sum())
    return written


def read_table_from_ebc(model: nn.Module, table_name: str, dst: Optional[int] = None) -> Optional[Tensor]:
    """The full table ``Tensor[num_embeddings, d]`` (float32, cpu) assembled from all ranks' shards.

    Collective when the table is sharded and ``torch.distributed`` is initialised: every rank must
    call it. ``dst=None`` returns the table on every rank (all-reduce of the disjoint shards);
    ``dst=r`` returns it on rank ``r`` only (reduce) and ``None`` elsewhere. Replicated
    (data_parallel) and unsharded tables are returned directly without communication.
    """
    import torch.distributed as dist

    _, val = _find_weight(model, table_name)
    rows, dim = _global_size(val)
    if not _is_sharded(val):
        return val.detach().float().cpu().clone()
    full = torch.zeros(rows, dim, dtype=torch.float32)
    for r0, c0, t in _pieces(val):
        nr, nc = t.shape
        full[r0:r0 + nr, c0:c0 + nc] = t.detach().float().cpu()
    if not (dist.is_available() and dist.is_initialized()):
        return full
    pg = getattr(val, "_process_group", None)
    backend = dist.get_backend(pg)
    work = full.cuda() if backend == "nccl" else full
    if dst is None:
        dist.all_reduce(work, group=pg)
        return work.cpu()
    dist.reduce(work, dst=dst, group=pg)
    return work.cpu() if dist.get_rank() == dst else None
