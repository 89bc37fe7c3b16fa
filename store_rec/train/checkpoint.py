"""Checkpoints of a training run: save / load / latest / clear, the resume config check, RNG states.

Layout (``torch.distributed.checkpoint``): ``<checkpoint.dir>/step-N`` holds the DMP state dict
(sharded tables + dense parameters) and the fused optimizer state (DCP, sharded), plus one
``extra-rank<r>.pt`` per rank (dense/rotation optimizer states, loader position, RNG states, step,
epoch, steps per epoch, early-stop state: :meth:`store_rec.train.trainer.Trainer.extra_state`). Written
into ``step-N.tmp`` and renamed when every rank is done, so a ``step-N`` directory is always complete.

A checkpoint resumes on any world size (:func:`load_checkpoint`, :func:`map_position`): DCP reshards the
tables, dense parameters and fused optimizer state; the loop position is mapped to the new world size.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from store_rec.config import to_dict
from store_rec.distributed.env import DistEnv
from store_rec.errors import UserError
from store_rec.train.config import TrainConfig

logger = logging.getLogger(__name__)

# config keys a checkpoint must share with the run that resumes it; the rest (epochs, evals, outputs,
# sharding, eval batch size, data location) may change between attempts.
RESUME_MUST_MATCH = ("data", "model", "optim", "loss", "train.seed")
RESUME_MAY_DIFFER = ("data.dir", "data.prepare_if_missing", "data.eval_batch_size", "data.sid_table")


def _step_dirs(root: Path) -> List[Tuple[int, Path]]:
    out = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp"):
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    continue
    return sorted(out)


def latest_checkpoint(root: Path) -> Optional[Path]:
    """Newest complete ``step-N`` directory under ``root`` (``.tmp`` ones are incomplete)."""
    dirs = _step_dirs(root)
    return dirs[-1][1] if dirs else None


def rng_state() -> Dict[str, Any]:
    """This process's torch / numpy / python (and cuda) RNG states."""
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    """Fresh torch / numpy / python RNG states for ``rank`` at ``step`` (an elastic resume: the saved
    per-rank states belong to another set of ranks)."""
    s = (int(seed) * 1_000_003 + int(step) * 1009 + int(rank)) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: Dict[str, Any], env: DistEnv, keep: int) -> Path:
    """Write ``root/step-<step>`` atomically (``.tmp`` then rename by rank 0 after a barrier); keep
    the newest ``keep``."""
    import torch.distributed.checkpoint as dcp

    tmp, final = root / f"step-{step}.tmp", root / f"step-{step}"
    if env.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    dist.barrier()
    state = {"model": model.state_dict(), "fused_optim": model.fused_optimizer.state_dict()}
    dcp.save(state, checkpoint_id=str(tmp))
    torch.save(extra, tmp / f"extra-rank{env.rank}.pt")
    dist.barrier()
    if env.rank == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in _step_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("checkpoint: %s", final)
    dist.barrier()
    return final


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def check_resume_config(path: Path, saved: Mapping[str, Any], cfg: TrainConfig) -> None:
    """UserError naming the first key (of :data:`RESUME_MUST_MATCH`) where ``cfg`` differs from the
    config the checkpoint at ``path`` was trained with."""
    a, b = _flatten(saved), _flatten(to_dict(cfg))

    def relevant(k: str) -> bool:
        return any(k == p or k.startswith(p + ".") for p in RESUME_MUST_MATCH) and \
            not any(k == p or k.startswith(p + ".") for p in RESUME_MAY_DIFFER)

    for k in sorted({k for k in (*a, *b) if relevant(k)}):
        if a.get(k) != b.get(k):
            raise UserError(f"{path}: written with {k}={a.get(k)!r}, this config has {k}={b.get(k)!r}; resume with the "
                            f"same config, or start from scratch (without --resume) or in another checkpoint.dir")


def clear_checkpoints(root: Path) -> List[Path]:
    """Remove every ``step-N`` (and ``.tmp``) directory under ``root``; returns what was removed."""
    gone = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and p.name.startswith("step-"):
                shutil.rmtree(p)
                gone.append(p)
    return gone


def saved_world_size(path: Path) -> int:
    """The world size of the job that wrote checkpoint ``path`` (one ``extra-rank<r>.pt`` per rank)."""
    n = len(list(path.glob("extra-rank*.pt")))
    if n == 0:
        raise UserError(f"{path}: no extra-rank<r>.pt files: not a complete store_rec checkpoint")
    return n


def load_checkpoint(path: Path, model: nn.Module, env: DistEnv, cfg: TrainConfig) -> Dict[str, Any]:
    """Load ``path`` into ``model`` (tables, dense parameters, fused optimizer); return this rank's extras.

    Refuses (UserError) a checkpoint of an incompatible config (:func:`check_resume_config`) before any
    tensor is read. **Elastic:** the checkpoint may come from another world size. DCP reshards what it
    holds -- the embedding tables and their fused optimizer state (row-wise Adagrad moments) into this
    job's sharding plan, the dense parameters (replicated) onto every rank. The per-rank extras
    (dense / rotation optimizer state, identical on every rank under DDP; loop position; RNG) come
    from rank ``rank % saved_world_size``; the caller maps the loop position with
    :func:`map_position`. The returned dict has ``"saved_world_size"``."""
    import torch.distributed.checkpoint as dcp

    saved = saved_world_size(path)
    src = env.rank % saved
    extra = torch.load(path / f"extra-rank{src}.pt", weights_only=False)
    check_resume_config(path, extra["config"], cfg)
    if saved != env.world_size:
        check_dense_params(path, extra.get("dense_params"), dense_param_names(model))
        if "steps_per_epoch" not in extra:
            raise UserError(f"{path}: written with world_size {saved} by a store_rec without elastic resume (no "
                            f"steps_per_epoch recorded); resume it with {saved} ranks")
        logger.info("elastic resume: %s was written by %d rank(s), this job has %d: resharding tables, dense parameters "
                    "and optimizer state", path, saved, env.world_size)
    state = {"model": model.state_dict(), "fused_optim": model.fused_optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    model.fused_optimizer.load_state_dict(state["fused_optim"])
    extra["saved_world_size"] = saved
    return extra


def dense_param_names(model: nn.Module) -> List[str]:
    """Names of the parameters the dense optimizer owns (no in-backward optimizer), wrapper prefixes removed:
    what a checkpoint's dense optimizer state is indexed by."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    return [_strip_wrappers(n) for n, _ in in_backward_optimizer_filter(model.named_parameters())]


def _strip_wrappers(name: str) -> str:
    return ".".join(p for p in name.split(".") if p not in ("_dmp_wrapped_module", "module"))


def check_dense_params(path: Path, saved: Optional[List[str]], now: List[str]) -> None:
    """UserError when the dense optimizer's parameters differ between the checkpoint and this job (its state
    is by position): a table that is data-parallel (dense optimizer) at one world size and sharded (fused
    optimizer) at the other."""
    if saved is None or list(saved) == list(now):
        return
    only_saved, only_now = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
    raise UserError(f"{path}: the dense optimizer's parameters differ at this world size (only in the checkpoint: "
                    f"{only_saved[:5]}, only now: {only_now[:5]}); a table changed between data_parallel and a sharded "
                    f"type: pin the tables' sharding (sharding.sharding_types / sharding.tables / --plan) for both world sizes")


def map_position(extra: Mapping[str, Any], steps_per_epoch: int, world_size: int) -> Tuple[int, int, int]:
    """``(step, epoch, pos)`` of checkpoint ``extra`` in the units of this job (``world_size`` ranks,
    ``steps_per_epoch`` batches per epoch).

    Same world size: as saved. Another one: the checkpoint stopped ``pos`` of ``S_old`` batches into epoch
    ``epoch``; the resumed job continues at the same share of that epoch, ``pos' = round(pos * S_new /
    S_old)`` of its ``S_new = steps_per_epoch`` batches, and its step counter at ``epoch * S_new + pos'``
    (the loop's invariant ``step = epoch * S + pos``): the number of samples trained is kept, so the LR
    schedule and the epoch count continue where they were. The rows of the interrupted epoch are
    re-partitioned over the new ranks, so the rest of that epoch is the same share of the data but not
    exactly the rows the old ranks had left (later epochs are exact)."""
    step, epoch, pos = int(extra["step"]), int(extra["epoch"]), int(extra["pos"])
    old = extra.get("steps_per_epoch")
    if int(extra["world_size"]) == int(world_size) or old is None:
        return step, epoch, pos
    new_pos = min(int(steps_per_epoch), int(round(pos * steps_per_epoch / int(old))))
    return epoch * int(steps_per_epoch) + new_pos, epoch, new_pos
