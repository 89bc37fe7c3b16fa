"""Process-group environment shared by the training app and the offline distributed tokenizer.

Importing this module is cheap (no torch at import time): ``launch/components.py`` reads
:data:`SHARED_STORE_ENV` from it when torchx loads the component file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch's elastic agent (torchrun --max-restarts N) keeps one TCP store across restart rounds; the process
# group's keys of a failed round are still in it, and a restarted gloo rank can read its peer's stale
# address and hang (pytorch/pytorch#135712). Launchers set this variable to "1" to give every round its
# own store.
SHARED_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: "torch.device"
    backend: str
    owns_group: bool  # init_distributed started the process group (its caller destroys it)


def init_distributed() -> DistEnv:
    """The default process group: from torchrun's / torchx's environment (``MASTER_ADDR`` or
    ``TORCHELASTIC_RUN_ID`` set), else a world of one (a single process without torchrun, on a
    ``HashStore``). An already initialised group is used as it is.

    Backend and device: nccl + ``cuda:LOCAL_RANK`` when a GPU is visible, else gloo + cpu; for an
    existing group, nccl -> ``cuda:LOCAL_RANK``, any other backend -> cpu."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    else:
        backend = str(dist.get_backend())
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before init_process_group, as nccl wants
    else:
        device = torch.device("cpu")
    if owns:
        if "MASTER_ADDR" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, local_world, device, backend, owns)
