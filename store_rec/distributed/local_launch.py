"""Run a function on N local ranks (one host, spawned processes): the one multi-rank launcher the
library's own multi-process code and tests use.

``launch_local(fn, args, nproc=2)`` = TorchElastic's ``elastic_launch`` (what ``torchrun`` runs) with a
c10d rendezvous over a *file* store in a fresh temporary directory (no TCP port to pick, so concurrent
launches on one machine never collide) and ``spawn`` start method. Every rank runs ``fn(*args)`` with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` ... set, as under torchrun; ``fn`` must be
picklable (a module-level function). Users launch real jobs with ``torchx run`` / ``torchrun``
(``launch/components.py``); this is for benchmarks, verification runs and tests.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Callable, Dict, Sequence


def launch_local(fn: Callable[..., Any], args: Sequence[Any] = (), *, nproc: int = 2, max_restarts: int = 0,
                 monitor_interval: float = 0.2) -> Dict[int, Any]:
    """Run ``fn(*args)`` on ``nproc`` local ranks; returns ``{rank: fn's return value}``.

    ``max_restarts > 0`` lets TorchElastic restart the whole group after a failure (elastic resume
    tests). A rank that raises makes this raise ``torch.distributed.elastic.multiprocessing.errors.
    ChildFailedError`` (with the rank's traceback) once restarts are used up.
    """
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    with tempfile.TemporaryDirectory(prefix="store_rec_rdzv_") as tmp:
        cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                           rdzv_backend="c10d", rdzv_endpoint=os.path.join(tmp, "rdzv"),
                           rdzv_configs={"store_type": "file"}, start_method="spawn", max_restarts=max_restarts,
                           monitor_interval=monitor_interval)
        return elastic_launch(cfg, fn)(*args)
