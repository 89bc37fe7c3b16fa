"""Process-group environment shared by the training app and the offline distributed tokenizer.

Importing this module is cheap (no torch at import time): ``store_rec/launch/components.py`` reads
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


BACKEND_ENV = "STORE_REC_BACKEND"
"""``gloo`` or ``nccl`` forces the process-group backend (default: nccl when CUDA is visible, else gloo)."""


def select_backend(cuda_available: bool, device_count: int, local_rank: int, local_world_size: int,
                   forced: str | None = None) -> str:
    """The backend of a new process group: ``forced`` (``$STORE_REC_BACKEND``) if set, else nccl when CUDA is
    visible, else gloo. nccl needs one GPU per local rank (``cuda:LOCAL_RANK``): fewer is a ``UserError``
    naming the fix rather than a CUDA "invalid device ordinal" deep inside torch."""
    from store_rec.errors import UserError

    if forced:
        if forced not in ("gloo", "nccl"):
            raise UserError(f"{BACKEND_ENV}={forced!r}: must be gloo or nccl")
        backend = forced
    else:
        backend = "nccl" if cuda_available else "gloo"
    if backend == "nccl":
        if not cuda_available:
            raise UserError(f"{BACKEND_ENV}=nccl but torch sees no CUDA device (a CPU torch build, or no GPU visible)")
        if local_rank >= device_count:
            raise UserError(f"{local_world_size} ranks per node but {device_count} GPU(s) visible: nccl runs one rank per "
                            f"GPU; launch at most {device_count} per node (torchx --j Nx{device_count}) or set "
                            f"{BACKEND_ENV}=gloo to run CPU ranks")
    return backend


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

    Backend and device (:func:`select_backend`): nccl + ``cuda:LOCAL_RANK`` when a GPU is visible, else
    gloo + cpu (``$STORE_REC_BACKEND`` forces one); for an existing group, nccl -> ``cuda:LOCAL_RANK``,
    any other backend -> cpu."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    owns = not dist.is_initialized()
    if owns:
        cuda = torch.cuda.is_available()
        backend = select_backend(cuda, torch.cuda.device_count() if cuda else 0, local_rank, local_world,
                                 os.environ.get(BACKEND_ENV) or None)
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
