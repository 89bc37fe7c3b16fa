"""Checkpoints of a training run: save / load / latest / clear, the resume config check, RNG states.

Layout (``torch.distributed.checkpoint``): ``<checkpoint.dir>/step-N`` holds the DMP state dict
(sharded tables + dense parameters) and the fused optimizer state (DCP, sharded), plus one
``extra-rank<r>.pt`` per rank (dense/rotation optimizer states, loader position, RNG states, step,
epoch, early-stop state: :meth:`store_rec.train.trainer.Trainer.extra_state`), and ``config.yaml`` (the
run's resolved config as plain YAML, so a reader such as ``store-rec predict`` unpickles nothing). Written into
``step-N.tmp`` and renamed when every rank is done, so a ``step-N`` directory is always complete.
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
    if env.rank == 0 and "config" in extra:  # plain YAML of the run's config: what `store-rec predict` reads
        import yaml

        (tmp / "config.yaml").write_text(yaml.safe_dump(extra["config"], sort_keys=False))
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


def load_checkpoint(path: Path, model: nn.Module, env: DistEnv, cfg: TrainConfig) -> Dict[str, Any]:
    """Load ``path`` into ``model`` (tables, dense parameters, fused optimizer); return this rank's extras.

    Refuses (UserError) a checkpoint of another world size or of an incompatible config
    (:func:`check_resume_config`) before any tensor is read."""
    import torch.distributed.checkpoint as dcp

    extra_file = path / f"extra-rank{env.rank}.pt"
    if not extra_file.exists():
        raise UserError(f"{path}: no {extra_file.name}: the checkpoint was written by a job with a different world size")
    extra = torch.load(extra_file, weights_only=False)
    if extra["world_size"] != env.world_size:
        raise UserError(f"{path}: written with world_size {extra['world_size']}, this job has {env.world_size}")
    check_resume_config(path, extra["config"], cfg)
    state = {"model": model.state_dict(), "fused_optim": model.fused_optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    model.fused_optimizer.load_state_dict(state["fused_optim"])
    return extra
