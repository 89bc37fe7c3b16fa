"""Checkpoints of a training run: save / load / verify / latest / clear, the resume config check, RNG states.

Layout (``torch.distributed.checkpoint``): ``<checkpoint.dir>/step-N`` holds the DMP state dict
(sharded tables -- the EBC's and, with history tokens, the EmbeddingCollection's -- + dense parameters)
and the fused optimizer state (DCP, sharded; none for fused SGD: :func:`dcp_state`), plus one
``extra-rank<r>.pt`` per rank (dense/rotation optimizer states, loader position, RNG states, step,
epoch, steps per epoch, early-stop state: :meth:`store_rec.train.trainer.Trainer.extra_state`) , ``config.yaml``
(the run's resolved config as plain YAML, so a reader such as ``store-rec predict`` unpickles nothing)
and the marker :data:`MARKER`. Written into ``step-N.tmp`` and renamed when every rank is done.

A checkpoint resumes on any world size (:func:`load_checkpoint`, :func:`map_position`): DCP reshards the
tables, dense parameters and fused optimizer state; the loop position is mapped to the new world size.

Safety rules (issue 11):

* Only directories named exactly ``step-<int>`` (or ``step-<int>.tmp``) that hold :data:`MARKER` are ever
  deleted (rotation to ``keep``, ``--overwrite-checkpoints``): a user's ``step-notes/`` is never touched.
* A fresh run (no ``--resume``) in a ``checkpoint.dir`` that already holds checkpoints is refused
  (:func:`check_fresh_start`) unless ``--overwrite-checkpoints`` asks to delete them.
* Extras hold only tensors and plain data and are read with ``torch.load(weights_only=True)``: a crafted
  file cannot run code.
* The marker is a manifest (every file and its size, the world size): :func:`verify_checkpoint` finds a
  missing shard or a truncated ``.metadata`` / extras file, and resuming falls back to the newest
  complete checkpoint, saying which one is corrupt and why (:func:`latest_checkpoint`).
* No checkpoint of non-finite weights is written (:func:`save_checkpoint` checks every local tensor).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
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
from store_rec.fileio import atomic_write_json
from store_rec.train.config import TrainConfig

logger = logging.getLogger(__name__)

# config keys a checkpoint must share with the run that resumes it; the rest (epochs, evals, outputs,
# sharding, eval batch size, data location) may change between attempts.
RESUME_MUST_MATCH = ("data", "model", "optim", "loss", "train.seed")
RESUME_MAY_DIFFER = ("data.dir", "data.prepare_if_missing", "data.eval_batch_size", "data.sid_table",
                     "data.sid_tables")

#: the file in every checkpoint directory this code writes (JSON): ``{"format", "step", "world_size",
#: "complete", "files": {relative path: size in bytes}}``. Written with ``complete: false`` when the
#: ``step-N.tmp`` directory is created, replaced by the full manifest (``complete: true``) once every rank
#: has written its part, just before the rename.
MARKER = ".store-rec-checkpoint"
MARKER_FORMAT = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_RE = re.compile(r"^step-(\d+)\.tmp$")


class CheckpointError(UserError):
    """A checkpoint that cannot be used (corrupt, foreign, unsafe to load); names the directory and why."""


def _read_marker(path: Path) -> Optional[Dict[str, Any]]:
    try:
        m = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _step_dirs(root: Path, *, marked_only: bool = True, tmp: bool = False) -> List[Tuple[int, Path]]:
    """``(step, path)`` of the directories under ``root`` named exactly ``step-<int>`` (``tmp``:
    ``step-<int>.tmp``), oldest first; with ``marked_only`` only those holding :data:`MARKER`."""
    pat = _TMP_RE if tmp else _STEP_RE
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = pat.match(p.name)
            if m and p.is_dir() and not p.is_symlink() and (not marked_only or (p / MARKER).is_file()):
                out.append((int(m.group(1)), p))
    return sorted(out)


def _looks_like_checkpoint(p: Path) -> bool:
    """A ``step-<int>`` directory with this code's marker, or one written before markers existed (a DCP
    ``.metadata`` and extras files)."""
    return (p / MARKER).is_file() or ((p / ".metadata").is_file() and any(p.glob("extra-rank*.pt")))


def existing_checkpoints(root: Path) -> List[Path]:
    """The checkpoints under ``root`` a fresh run would mix with (oldest first)."""
    return [p for _, p in _step_dirs(root, marked_only=False) if _looks_like_checkpoint(p)]


def _write_marker(path: Path, step: int, world_size: int, complete: bool) -> None:
    files: Dict[str, int] = {}
    if complete:
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.name != MARKER and not f.name.startswith(f".{MARKER}."):
                files[f.relative_to(path).as_posix()] = f.stat().st_size
    atomic_write_json(path / MARKER, {"format": MARKER_FORMAT, "step": step, "world_size": world_size,
                                      "complete": complete, "files": files})


def verify_checkpoint(path: Path) -> Optional[str]:
    """Why ``path`` is not a complete checkpoint written by this code, or ``None`` when it is: an empty
    or foreign directory (no marker), an unfinished write, a missing or truncated file (a DCP shard,
    ``.metadata``, an ``extra-rank<r>.pt``)."""
    if not path.is_dir():
        return "not a directory"
    if not any(path.iterdir()):
        return "empty directory"
    m = _read_marker(path)
    if m is None:
        return (f"no readable {MARKER} manifest (not written by store_rec, or by a version before checkpoint "
                "manifests; such checkpoints cannot be verified)")
    if not m.get("complete"):
        return "unfinished write (its manifest says incomplete)"
    files = m.get("files") or {}
    for rel, size in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            return f"missing file {rel}"
        if f.stat().st_size != size:
            return f"truncated file {rel} ({f.stat().st_size} of {size} bytes)"
    needed = [".metadata"] + [f"extra-rank{r}.pt" for r in range(int(m.get("world_size", 0)))]
    missing = [n for n in needed if n not in files]
    if missing:
        return f"its manifest lists no {missing[0]}"
    return None


def checkpoint_world_size(path: Path) -> Optional[int]:
    m = _read_marker(path)
    return int(m["world_size"]) if m and "world_size" in m else None


def latest_checkpoint(root: Path) -> Optional[Path]:
    """Newest complete checkpoint under ``root``: every ``step-<int>`` directory, newest first, is verified
    (:func:`verify_checkpoint`); a corrupt or foreign one is skipped with a warning naming it and why."""
    for _, p in reversed(_step_dirs(root, marked_only=False)):
        why = verify_checkpoint(p)
        if why is None:
            return p
        logger.warning("checkpoint %s is not usable (%s); trying an older one", p, why)
    return None


def check_fresh_start(root: Path, *, resume: bool, overwrite: bool) -> None:
    """Before a run starts: a fresh run (``resume`` False) refuses a ``root`` that holds checkpoints
    (exit 2, "checkpoints exist: pass --resume, or --overwrite-checkpoints"); ``overwrite`` allows it,
    unless some of them lack this code's marker (they are never deleted)."""
    if resume:
        return
    found = existing_checkpoints(root)
    if not found:
        return
    names = ", ".join(p.name for p in found[-3:]) + (" ..." if len(found) > 3 else "")
    if not overwrite:
        raise UserError(f"{root}: checkpoints exist ({names}): pass --resume to continue from the newest, or "
                        "--overwrite-checkpoints to delete them and start from scratch")
    foreign = [p for p in found if not (p / MARKER).is_file()]
    if foreign:
        raise UserError(f"{foreign[0]}: has no {MARKER} marker (written by an older store_rec or not a checkpoint); "
                        "--overwrite-checkpoints only deletes checkpoints with the marker: remove it yourself")


def _plain(obj: Any) -> Any:
    """numpy arrays -> tensors and numpy scalars -> Python numbers (recursively): what
    ``torch.load(weights_only=True)`` reads back without an allow-list."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def rng_state() -> Dict[str, Any]:
    """This process's torch / numpy / python (and cuda) RNG states, as tensors and plain data."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st: Dict[str, Any] = {"torch": torch.get_rng_state(),
                          "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                                    "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _local_tensors(state: Any):  # noqa: ANN202
    """Every local tensor of a (possibly sharded) state dict."""
    if isinstance(state, Mapping):
        for v in state.values():
            yield from _local_tensors(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from _local_tensors(v)
    elif hasattr(state, "local_shards"):  # ShardedTensor
        for s in state.local_shards():
            yield s.tensor
    elif isinstance(state, torch.Tensor):
        yield getattr(state, "_local_tensor", state)  # DTensor -> its local part


def non_finite_tensors(state: Any) -> int:
    """How many local floating-point tensors of ``state`` hold a NaN or inf."""
    bad = 0
    for t in _local_tensors(state):
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad += 1
    return bad


def reseed(seed: int, step: int, rank: int) -> None:
    """Fresh torch / numpy / python RNG states for ``rank`` at ``step`` (an elastic resume: the saved
    per-rank states belong to another set of ranks)."""
    s = (int(seed) * 1_000_003 + int(step) * 1009 + int(rank)) % (2**31 - 1)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def _has_leaves(state: Any) -> bool:
    """Whether a (nested) state dict holds any value besides empty dicts / lists."""
    if isinstance(state, Mapping):
        return any(_has_leaves(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_has_leaves(v) for v in state)
    return True


def dcp_state(model: nn.Module) -> Dict[str, Any]:
    """What DCP saves / loads of a DMP: ``{"model": its state dict (sharded tables -- EBC and history EC --
    and dense parameters), "fused_optim": the fused table optimizer's state}``. The latter is left out when
    it holds no value at all (fused SGD keeps none: DCP would save nothing under the key and then refuse to
    load it as missing); the same rule holds on every rank, so the ranks agree."""
    state = {"model": model.state_dict()}
    fused = model.fused_optimizer.state_dict()
    if _has_leaves(fused):
        state["fused_optim"] = fused
    return state


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: Dict[str, Any], env: DistEnv, keep: int) -> Path:
    """Write ``root/step-<step>`` atomically (``.tmp`` then rename by rank 0 after a barrier); keep the
    newest ``keep`` (only directories with :data:`MARKER` are ever removed).

    Raises :class:`CheckpointError` on every rank, writing nothing, when any rank holds a non-finite
    weight or optimizer value (a diverged run must not leave a checkpoint to resume from)."""
    import torch.distributed.checkpoint as dcp

    state = dcp_state(model)
    bad = torch.tensor([non_finite_tensors(state) + non_finite_tensors(extra.get("optimizer"))], dtype=torch.long)
    dist.all_reduce(bad)
    if int(bad):
        raise CheckpointError(f"step {step}: {int(bad)} weight / optimizer tensor(s) hold NaN or inf: the run diverged; "
                              "no checkpoint written (lower the learning rates, e.g. optim.dense.lr)")
    tmp, final = root / f"step-{step}.tmp", root / f"step-{step}"
    if env.rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists() and (tmp / MARKER).is_file():
            shutil.rmtree(tmp)
        elif tmp.exists():
            raise CheckpointError(f"{tmp}: exists and was not written by store_rec (no {MARKER}); refusing to replace it")
        tmp.mkdir()
        _write_marker(tmp, step, env.world_size, complete=False)
    try:
        dist.barrier()
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save(_plain(extra), tmp / f"extra-rank{env.rank}.pt")
        if env.rank == 0 and "config" in extra:  # plain YAML of the run's config: what `store-rec predict` reads
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump(extra["config"], sort_keys=False))
        dist.barrier()
        if env.rank == 0:
            _write_marker(tmp, step, env.world_size, complete=True)
            if final.exists():
                if not (final / MARKER).is_file():
                    raise CheckpointError(f"{final}: exists and was not written by store_rec (no {MARKER}); refusing to replace it")
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:  # an error, SIGTERM (store_rec.errors.Terminated) or Ctrl-C: no half-written step-N.tmp left
        if env.rank == 0 and (tmp / MARKER).is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if env.rank == 0:
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
    """Remove the checkpoints under ``root`` that this code wrote: ``step-<int>`` and ``step-<int>.tmp``
    directories holding :data:`MARKER` (nothing else, e.g. a user's ``step-notes/``); returns them."""
    gone = []
    for _, p in _step_dirs(root) + _step_dirs(root, tmp=True):
        shutil.rmtree(p)
        gone.append(p)
    return gone


def _load_extra(path: Path, rank: int) -> Dict[str, Any]:
    """``path/extra-rank<rank>.pt`` read with ``weights_only=True`` (tensors and plain data only)."""
    import pickle

    f = path / f"extra-rank{rank}.pt"
    try:
        extra = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{f}: refused: holds objects other than tensors and plain data, which could run code "
                              f"when loaded ({str(e).splitlines()[0][:200]})") from None
    except (OSError, EOFError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if not isinstance(extra, dict):
        raise CheckpointError(f"{f}: not a store_rec checkpoint extras file")
    return extra


def saved_world_size(path: Path) -> int:
    """The world size of the job that wrote checkpoint ``path``: its manifest's, else one
    ``extra-rank<r>.pt`` per rank."""
    ws = checkpoint_world_size(path)
    if ws is not None:
        return ws
    n = len(list(path.glob("extra-rank*.pt")))
    if n == 0:
        raise CheckpointError(f"{path}: no extra-rank<r>.pt files: not a complete store_rec checkpoint")
    return n


def load_checkpoint(path: Path, model: nn.Module, env: DistEnv, cfg: TrainConfig) -> Dict[str, Any]:
    """Load ``path`` into ``model`` (tables, dense parameters, fused optimizer); return this rank's extras.

    Refuses (UserError) a checkpoint of an incompatible config (:func:`check_resume_config`) before any
    tensor is read; every rank's extras are read first (``weights_only=True``) and the ranks agree that
    all of them could be (a :class:`CheckpointError` on every rank otherwise).

    **Elastic:** the checkpoint may come from another world size. DCP reshards what it holds -- the
    embedding tables and their fused optimizer state (row-wise Adagrad moments) into this job's sharding
    plan, the dense parameters (replicated) onto every rank. The per-rank extras (dense / rotation
    optimizer state, identical on every rank under DDP; loop position; RNG) come from rank
    ``rank % saved_world_size``; the caller maps the loop position with :func:`map_position`. The
    returned dict has ``"saved_world_size"``."""
    import torch.distributed.checkpoint as dcp

    saved = saved_world_size(path)
    err: Optional[CheckpointError] = None
    extra: Dict[str, Any] = {}
    try:
        extra = _load_extra(path, env.rank % saved)
    except CheckpointError as e:
        err = e
    failed = torch.tensor([1 if err is not None else 0], dtype=torch.long)
    dist.all_reduce(failed)
    if err is not None:
        raise err
    if int(failed):
        raise CheckpointError(f"{path}: another rank could not read its extras file")
    check_resume_config(path, extra["config"], cfg)
    if saved != env.world_size:
        check_dense_params(path, extra.get("dense_params"), dense_param_names(model))
        if "steps_per_epoch" not in extra:
            raise UserError(f"{path}: written with world_size {saved} by a store_rec without elastic resume (no "
                            f"steps_per_epoch recorded); resume it with {saved} ranks")
        logger.info("elastic resume: %s was written by %d rank(s), this job has %d: resharding tables, dense parameters "
                    "and optimizer state", path, saved, env.world_size)
    state = dcp_state(model)
    dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    if "fused_optim" in state:
        model.fused_optimizer.load_state_dict(state["fused_optim"])
    extra["saved_world_size"] = saved
    return extra


def load_latest_checkpoint(root: Path, model: nn.Module, env: DistEnv, cfg: TrainConfig) -> Tuple[Optional[Path], Dict[str, Any]]:
    """Load the newest checkpoint under ``root`` that verifies and loads; a corrupt one (bad manifest,
    missing or truncated file, unreadable extras) is reported and the next older one tried.
    ``(None, {})`` when there is none. Config mismatches are errors, not skipped (another world size is resumed elastically)."""
    for _, p in reversed(_step_dirs(root, marked_only=False)):
        why = verify_checkpoint(p)
        if why is None:
            try:
                return p, load_checkpoint(p, model, env, cfg)
            except CheckpointError as e:
                why = str(e)
        if env.rank == 0:
            logger.warning("checkpoint %s is not usable (%s); falling back to an older one", p, why)
    return None, {}


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
