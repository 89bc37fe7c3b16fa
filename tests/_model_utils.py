"""Shared helpers for the model tests: a tiny schema and tiny batches with a learnable signal."""

from __future__ import annotations

import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from store_rec.data.schema import DatasetSchema, SparseFeature


def tiny_schema(with_sids: bool = True, dense: int = 2) -> DatasetSchema:
    sparse = [
        SparseFeature("item", "id", 40),
        SparseFeature("site", "id", 12),
        SparseFeature("age", "static", 5, group="user"),
        SparseFeature("gender", "static", 3, group="user"),
        SparseFeature("hour", "static", 24, group="context"),
    ]
    if with_sids:
        sparse += [SparseFeature("sid_0", "sid", 9), SparseFeature("sid_1", "sid", 9)]
    return DatasetSchema(dataset="tiny", label="label", dense=[f"d{i}" for i in range(dense)], sparse=sparse)


def tiny_batch(schema: DatasetSchema, batch_size: int = 16, seed: int = 0) -> Batch:
    """A batch whose label depends on ``item`` parity and ``age`` (learnable), one id per feature
    except ``site`` which is multi-hot (0..2 ids)."""
    g = torch.Generator().manual_seed(seed)
    values, lengths, cols = [], [], {}
    for f in schema.sparse:
        if f.name == "site":
            n = torch.randint(0, 3, (batch_size,), generator=g)
            v = torch.randint(0, f.vocab_size, (int(n.sum()),), generator=g)
        else:
            n = torch.ones(batch_size, dtype=torch.long)
            v = torch.randint(0, f.vocab_size, (batch_size,), generator=g)
        cols[f.name] = v
        values.append(v)
        lengths.append(n)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=schema.sparse_names, values=torch.cat(values), lengths=torch.cat(lengths))
    dense = torch.randn(batch_size, len(schema.dense), generator=g)
    signal = (cols["item"] % 2).float() * 2 - 1 + (cols["age"] >= 3).float()
    if len(schema.dense):
        signal = signal + dense[:, 0]
    labels = (signal + 0.3 * torch.randn(batch_size, generator=g) > 0.5).float()
    return Batch(dense_features=dense, sparse_features=kjt, labels=labels)
