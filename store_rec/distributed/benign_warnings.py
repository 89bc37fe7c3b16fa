"""Known-benign TorchRec / fbgemm / torch warnings, filtered once per process, each with its reason.

A 2-rank CPU run of ``configs/smoke.yaml`` (torchrec 1.8.0, fbgemm-gpu-cpu 1.8.0, torch 2.13) printed
these for every data-parallel table, on every rank, although the results are right. Users read "may
lead to silently incorrect behavior" and stop trusting a correct run, so :func:`filter_benign_warnings`
drops exactly these messages (matched by logger / category and message prefix) and nothing else.
``STORE_REC_SHOW_LIBRARY_WARNINGS=1`` turns the filter off. :data:`BENIGN` is the list with the
reason each is harmless; docs/OPERATIONS.md repeats it.

Warnings that point at something we can fix are fixed instead of filtered (the training planner gets
a TorchRec ``Topology`` from ``TopologyFactory`` and a fixed-percentage storage reservation, as
``store-rec plan`` already does).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import List, Optional, Type

SHOW_ENV = "STORE_REC_SHOW_LIBRARY_WARNINGS"


@dataclass(frozen=True)
class Benign:
    """One message: from ``logger`` (a logging record) or of ``category`` (a ``warnings`` warning)."""

    message: str  # regex matched at the start of the message
    reason: str
    logger: Optional[str] = None
    category: Optional[Type[Warning]] = None


BENIGN: List[Benign] = [
    Benign(
        message=r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        category=UserWarning,
        reason="raised by torch for fbgemm's dense (data-parallel) TBE op, whose backward fbgemm registers "
        "through its own autograd function; the gradients are exact: tests/test_benign_warnings.py compares "
        "them with torch.nn.EmbeddingBag's, and `store-rec plan --verify` compares data-parallel tables' "
        "gradients with the unsharded EBC",
    ),
    Benign(
        message=r"Sharding Type is data_parallel, caching params will be ignored",
        logger="torchrec.distributed.utils",
        reason="TorchRec logs it for every data-parallel table whether or not cache parameters were set; "
        "data-parallel tables have no cache",
    ),
    Benign(
        message=r"Sharding spec not found for ",
        logger="root",
        reason="TorchRec's plan check logs it for every data-parallel table: a replicated table has no "
        "shard placement by design",
    ),
    Benign(
        message=r"`broadcast_buffers` is deprecated",
        category=FutureWarning,
        reason="TorchRec 1.8's own DistributedModelParallel / EBC sharder call DDP with the old argument; "
        "nothing in store_rec passes it",
    ),
    Benign(
        message=r"Please use DTensor instead and we are deprecating ShardedTensor",
        category=FutureWarning,
        reason="torch.distributed.checkpoint's note when it loads the ShardedTensors TorchRec 1.8's sharded "
        "modules hold; loading is exact (`store-rec predict` reproduces the training's test AUC from a "
        "checkpoint, tests/test_predict.py)",
    ),
    Benign(
        message=r"is_fx_tracing will return true for both fx.symbolic_trace and torch.export",
        logger="torch.fx._symbolic_trace",
        reason="torch's note to library authors (TorchRec calls is_fx_tracing); no behaviour changes",
    ),
]


class _DropBenign(logging.Filter):
    def __init__(self, patterns: List[re.Pattern]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
            return True
        return not any(p.match(msg) for p in self.patterns)


_installed = False


def filter_benign_warnings(force: bool = False) -> bool:
    """Install the filters of :data:`BENIGN` (once per process; ``force`` re-checks the env switch).

    Returns whether filters are active (False when ``STORE_REC_SHOW_LIBRARY_WARNINGS`` is set)."""
    global _installed
    if os.environ.get(SHOW_ENV, "").strip() not in ("", "0"):
        return False
    if _installed and not force:
        return True
    by_logger: dict = {}
    for b in BENIGN:
        if b.category is not None:
            warnings.filterwarnings("ignore", message=b.message, category=b.category)
        if b.logger is not None:
            by_logger.setdefault(b.logger, []).append(re.compile(b.message))
    for name, pats in by_logger.items():
        lg = logging.getLogger() if name == "root" else logging.getLogger(name)
        for f in [f for f in lg.filters if isinstance(f, _DropBenign)]:
            lg.removeFilter(f)
        lg.addFilter(_DropBenign(pats))
    _installed = True
    return True
