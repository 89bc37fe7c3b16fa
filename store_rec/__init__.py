"""store_rec: STORE (Semantic Tokenization, Orthogonal Rotation, Efficient attention) on TorchRec.

Public names are imported lazily so that ``import store_rec`` (and the CLI's ``--help``) does not
pay for importing torch/torchrec::

    from store_rec import OPMQ, RQVAE, OPQ                          # semantic tokenizers
    from store_rec import OrthogonalRotation, BlockSparseAttention  # STORE's modules
    from store_rec import StoreInteractionArch, DLRM_STORE, StoreModel
    from store_rec import AttentionConfig, RotationConfig, ModelConfig       # configs (or dicts)
    from store_rec import DLRMStoreTrain, alternating_optimizer, TrainOutput # STORE in your TorchRec loop
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"  # the single source: pyproject.toml reads it (tool.setuptools.dynamic)

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
    # configs (dataclasses; the arch and DLRM_STORE also take dicts of their keys)
    "AttentionConfig": "store_rec.models.config",
    "RotationConfig": "store_rec.models.config",
    "ModelConfig": "store_rec.models.config",
    # training STORE in TorchRec code: the DLRMTrain analogue with the full objective, the schedule
    "DLRMStoreTrain": "store_rec.models.dropin",
    "alternating_optimizer": "store_rec.models.dropin",
    "AlternatingOptimizer": "store_rec.modules.rotation",
    "AlternatingSchedule": "store_rec.modules.rotation",
    "RankingTrain": "store_rec.models.ranking",
    "TrainOutput": "store_rec.models.ranking",
}

__all__ = sorted(_EXPORTS)  # noqa: PLE0605  (a list: ruff cannot infer sorted()'s type)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'store_rec' has no attribute {name!r}")
    try:
        module = importlib.import_module(mod)
    except (ImportError, OSError) as e:  # fbgemm's missing .so is an OSError
        from store_rec.stack import StackError, diagnose

        msg = diagnose(e)
        if msg is None:
            raise
        raise StackError(f"store_rec.{name}: {msg}") from e
    value = getattr(module, name)
    globals()[name] = value
    return value
