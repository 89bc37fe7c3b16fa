"""store_rec: STORE (Semantic Tokenization, Orthogonal Rotation, Efficient attention) on TorchRec.

Public names are imported lazily so that ``import store_rec`` (and the CLI's ``--help``) does not
pay for importing torch/torchrec::

    from store_rec import OPMQ, RQVAE, OPQ                          # semantic tokenizers
    from store_rec import OrthogonalRotation, BlockSparseAttention  # STORE's modules
    from store_rec import StoreInteractionArch, DLRM_STORE, StoreModel
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DatasetSchema": "store_rec.data.schema",
    "OPMQ": "store_rec.tokenizer.opmq",
    "RQVAE": "store_rec.tokenizer.rqvae",
    "OPQ": "store_rec.tokenizer.opq",
    "OrthogonalRotation": "store_rec.modules.rotation",
    "BlockSparseAttention": "store_rec.ops.moba",
    "StoreInteractionArch": "store_rec.models.store",
    "DLRM_STORE": "store_rec.models.store",
    "StoreModel": "store_rec.models.store",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (a list: ruff cannot infer sorted()'s type)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'store_rec' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value
