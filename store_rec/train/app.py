"""The training app: sharded STORE / baseline training on TorchRec with exact metrics and resume.

``run(cfg)`` is what ``store-rec train`` and ``python -m store_rec.train`` (under ``torchrun`` /
``torchx``) execute on every rank:

1. Process group from the environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun; cuda +
   nccl with GPUs, cpu + gloo otherwise; a single process without torchrun gets a world of one).
2. Data: ``data.dir`` (prepared by rank 0 from ``data.prepare_if_missing`` when absent), one
   :class:`~store_rec.data.loader.ParquetBatchLoader` per split, rank-sharded.
3. Model: :func:`~store_rec.models.factory.build_model` with its EBC on the meta device, wrapped in
   :class:`~store_rec.models.ranking.RankingTrain`; fused sparse optimizer applied in backward (Adagrad / row-wise Adagrad),
   sharded by ``DistributedModelParallel`` with a plan from ``EmbeddingShardingPlanner`` (constraints
   from ``sharding:``) or a plan file (``store-rec plan``).
4. Dense optimizer (Adam/Adagrad) over the non-rotation dense parameters and the rotation optimizer,
   stepped by :class:`~store_rec.modules.rotation.AlternatingOptimizer` on ``model.rotation.schedule``;
   linear warm-up then none/linear/cosine decay of their LRs. With ``optim.schedule_sparse_lr`` (the
   default) the fused sparse LR of the embedding tables follows the same schedule (:class:`SparseLR`);
   without it it stays at ``optim.sparse.lr``.
5. Loop: ``TrainPipelineSparseDist`` over segments of the epoch that end at the next eval /
   checkpoint / stop step (the pipeline is drained there, so a checkpoint holds the exact loader
   position). Eval on ``valid`` every ``train.eval_every`` steps and at each epoch end; early stop on
   valid AUC; final eval of the last model on ``train.eval_splits``.
6. Outputs (rank 0): ``<output.dir>/metrics.jsonl`` (one record per eval), TensorBoard scalars in
   ``<output.dir>/tb``, a tqdm bar, and the final JSON summary (``auc``, ``gauc``, ``logloss`` of the
   test split -- valid if there is no test -- plus ``samples_per_s``, ``tflops_per_batch`` (TFLOPs of
   one fwd+bwd step on a batch of 1024 samples, whatever ``data.batch_size`` is, as the paper reports
   them), best/valid/test details) at ``output.metrics_out``; written to a temp file then renamed.
7. Checkpoints (``torch.distributed.checkpoint``): ``<checkpoint.dir>/step-N`` holds the DMP state dict
   (sharded tables + dense parameters) and the fused optimizer state (DCP, sharded), plus one
   ``extra-rank<r>.pt`` per rank (dense/rotation optimizer states, loader position, RNG states, step,
   epoch, early-stop state). Written into ``step-N.tmp`` and renamed when every rank is done. A run
   with ``resume=True`` -- or any restart of an elastic job (``TORCHELASTIC_RESTART_COUNT > 0``) --
   continues from the newest complete checkpoint, exactly (same world size).

Test hook: ``STORE_REC_FAULT_AT_STEP=N`` makes the last rank SIGKILL itself once after step ``N``
(a marker file ``STORE_REC_FAULT_MARKER`` -- default ``<checkpoint.dir>/fault.marker`` -- keeps the
restarted attempt alive). It exists to test fault recovery and is off unless the variable is set.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from store_rec.config import to_dict
from store_rec.distributed.env import SHARED_STORE_ENV, DistEnv, init_distributed  # noqa: F401  (public here too)
from store_rec.errors import UserError
from store_rec.fileio import atomic_write_json, atomic_write_text
from store_rec.models.ranking import RankingTrain
from store_rec.train.config import TrainConfig, ensure_data_dir
from store_rec.train.metrics import finite_or_none, gather_predictions, ranking_metrics

logger = logging.getLogger(__name__)

FAULT_ENV = "STORE_REC_FAULT_AT_STEP"
FAULT_MARKER_ENV = "STORE_REC_FAULT_MARKER"


# ----------------------------------------------------------------------------------- model pieces
def sparse_optimizer(cfg: TrainConfig) -> Tuple[type, Dict[str, Any]]:
    """(optimizer class, kwargs) for ``apply_optimizer_in_backward`` on the embedding tables."""
    import torchrec.optim as trec_optim

    s = cfg.optim.sparse
    if s.type == "rowwise_adagrad":
        return trec_optim.RowWiseAdagrad, {"lr": s.lr, "eps": s.eps}
    return torch.optim.Adagrad, {"lr": s.lr, "eps": s.eps}


def planner_constraints(cfg: TrainConfig, tables: List[Any], device: torch.device) -> Dict[str, Any]:
    """``ParameterConstraints`` per table from ``sharding:`` (global lists, then per-table overrides),
    built by :func:`store_rec.distributed.planning.build_constraints` as ``store-rec plan`` builds them
    (``--strategy auto``; on CPU the search defaults to TorchRec's CPU sharding types)."""
    from store_rec.distributed.planning import TableOverride, build_constraints
    from store_rec.distributed.sharding_types import CPU_SHARDING_TYPES

    sh = cfg.sharding
    overrides: Dict[str, TableOverride] = {}
    for name, over in sh.tables.items():  # each key given per table wins over the global one
        overrides[name] = TableOverride(sharding_types=over.sharding_types or sh.sharding_types,
                                        compute_kernels=over.compute_kernels or sh.compute_kernels)
    every = TableOverride(sharding_types=sh.sharding_types, compute_kernels=sh.compute_kernels)
    out = build_constraints(tables, "auto", None, {}, overrides, cpu=device.type == "cpu",
                            auto_defaults=every if (sh.sharding_types or sh.compute_kernels) else None,
                            overrides_key="sharding.tables")
    if device.type == "cpu":
        for t in tables:
            bad = [s for s in (out[t.name].sharding_types or []) if s not in CPU_SHARDING_TYPES]
            if bad:
                where = f"sharding.tables.{t.name}" if t.name in sh.tables and sh.tables[t.name].sharding_types else "sharding"
                raise UserError(f"{where}.sharding_types: {bad} need CUDA; on CPU use {list(CPU_SHARDING_TYPES)}")
    return out


def shard_model(wrapper: RankingTrain, cfg: TrainConfig, env: DistEnv, tables: List[Any], plan_file: Optional[str]) -> nn.Module:
    """``DistributedModelParallel`` of ``wrapper`` with a planned or loaded plan."""
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.sharding_plan import get_default_sharders

    from store_rec.distributed.cpu_row_wise import with_cpu_row_wise

    sharders = with_cpu_row_wise(get_default_sharders())  # lets the planner offer row_wise on cpu
    if plan_file:
        from store_rec.distributed.plan_io import ebc_module_path, load_plan

        plan = load_plan(plan_file, tables, env.world_size, env.device, module_path=ebc_module_path(wrapper), local_world_size=env.local_world_size)
    else:
        topology = Topology(world_size=env.world_size, local_world_size=env.local_world_size, compute_device=env.device.type)
        planner = EmbeddingShardingPlanner(topology=topology, constraints=planner_constraints(cfg, tables, env.device))
        plan = planner.collective_plan(wrapper, sharders, dist.GroupMember.WORLD)
    if env.rank == 0:
        logger.info("sharding plan:\n%s", plan)
    return DistributedModelParallel(module=wrapper, device=env.device, plan=plan, sharders=sharders)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the dense / rotation LR at optimizer step ``step`` (0-based) of ``total``."""
    o = cfg.optim
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.decay == "none" or total <= o.warmup_steps:
        return 1.0
    frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
    if o.decay == "linear":
        shape = 1.0 - frac
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * frac))
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape


class SparseLR:
    """Sets the embedding tables' LR to ``lr * factor``: the fused TBE optimizers of sharded tables
    (their ``step()`` only pushes the LR into the kernel; the update itself runs in backward) and any
    in-backward torch optimizer left on a parameter. Data-parallel tables have neither: as in TorchRec's
    DLRM app they are trained by the dense optimizer, whose LR the loop already schedules."""

    def __init__(self, dmp: nn.Module, lr: float) -> None:
        from torchrec.optim.fused import FusedOptimizer
        from torchrec.optim.keyed import CombinedOptimizer

        def leaves(o):  # noqa: ANN001, ANN202
            if isinstance(o, CombinedOptimizer):
                for _, c in o.optimizers:
                    yield from leaves(c)
            else:
                yield o

        opts = {id(o): o for o in leaves(dmp.fused_optimizer)}
        for p in dmp.parameters():
            opts.update({id(o): o for o in getattr(p, "_in_backward_optimizers", [])})
        self.optimizers = list(opts.values())
        self._fused = FusedOptimizer
        self.lr = lr
        self.factor: Optional[float] = None

    def set(self, factor: float) -> None:
        if factor == self.factor:
            return
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = self.lr * factor
            if isinstance(o, self._fused):
                o.step()
        self.factor = factor


# ----------------------------------------------------------------------------------- checkpoints
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


def _rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(root: Path, step: int, model: nn.Module, extra: Dict[str, Any], env: DistEnv, keep: int) -> Path:
    """Write ``root/step-<step>`` atomically (``.tmp`` then rename by rank 0 after a barrier)."""
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


# config keys a checkpoint must share with the run that resumes it; the rest (epochs, evals, outputs,
# sharding, eval batch size, data location) may change between attempts.
RESUME_MUST_MATCH = ("data", "model", "optim", "loss", "train.seed")
RESUME_MAY_DIFFER = ("data.dir", "data.prepare_if_missing", "data.eval_batch_size", "data.sid_table")


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


def load_online_item_embeddings(dmp: nn.Module, cfg: TrainConfig, schema) -> int:  # noqa: ANN001
    """Online SIDs: pre-trained vectors (``model.online.embeddings``) into this rank's shards of the
    ``item_feature`` table, before training (a resumed run then overwrites them from the checkpoint).
    Returns the rows written on this rank (0 when nothing is configured)."""
    m = cfg.model
    if m.sid_source != "online" or m.tokenizer == "none" or not m.online.embeddings:
        return 0
    from store_rec.distributed.embedding_io import load_pretrained_into_ebc
    from store_rec.tokenizer.embeddings import load_embeddings

    ids, emb = load_embeddings(m.online.embeddings, expected_dim=m.embedding_dim)
    n = load_pretrained_into_ebc(dmp, f"t_{m.item_feature}", ids, emb)
    logger.info("model.online.embeddings: %d pre-trained %s vectors from %s (%d rows on this rank)", len(ids),
                m.item_feature, m.online.embeddings, n)
    return n


# ----------------------------------------------------------------------------------- data
def prepare_data(cfg: TrainConfig, env: DistEnv) -> Path:
    """``data.dir``; rank 0 generates it from ``data.prepare_if_missing`` when it has no schema.json
    (:func:`store_rec.train.config.ensure_data_dir`), the other ranks wait for it."""
    d = ensure_data_dir(cfg.data, generate=env.rank == 0)
    dist.barrier()
    return d


def check_sid_table_method(cfg: TrainConfig) -> None:
    """``model.tokenizer`` (the ablation switch opmq / rqvae / opq) must name the method that wrote
    ``data.sid_table``: the SIDs in the batch decide what the model sees, the switch alone does not."""
    m = cfg.model
    if not cfg.data.sid_table or m.name != "store" or m.tokenizer == "none" or m.sid_source != "batch":
        return
    from store_rec.data.loader import read_sid_table_metadata

    try:
        meta = read_sid_table_metadata(cfg.data.sid_table)
    except FileNotFoundError:
        raise UserError(f"data.sid_table: {cfg.data.sid_table}: no such file") from None
    except UserError as e:  # DataError: not parquet, metadata not JSON
        raise UserError(f"data.sid_table: {e}") from None
    if not meta:
        raise UserError(f"data.sid_table: {cfg.data.sid_table}: not a SID table of `store-rec tokenize` (no store_rec metadata)")
    if meta.get("method") != m.tokenizer:
        raise UserError(f"model.tokenizer: {m.tokenizer!r}, but data.sid_table {cfg.data.sid_table} was written by "
                        f"{meta.get('method')!r}: point data.sid_table at the {m.tokenizer} SIDs or set model.tokenizer")


def make_loader(cfg: TrainConfig, data_dir: Path, split: str, env: DistEnv, train: bool):  # noqa: ANN201
    from store_rec.data.loader import ParquetBatchLoader

    return ParquetBatchLoader(
        data_dir, split, cfg.data.batch_size if train else cfg.data.eval_batch_size, rank=env.rank, world_size=env.world_size,
        shuffle=cfg.data.shuffle and train, seed=cfg.train.seed, drop_last=cfg.data.drop_last and train,
        sid_table=cfg.data.sid_table, sid_feature=cfg.data.sid_feature)


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv) -> Dict[str, float]:  # noqa: ANN001
    """AUC / GAUC / LogLoss of ``model`` on all ranks' parts of ``loader``'s split (exact, gathered)."""
    was = model.training
    model.eval()
    loader.set_epoch(0)
    logits, labels, users = [], [], []
    for batch in loader:
        batch = batch.to(env.device)
        _, out = model(batch)
        logits.append(out.logits.float())
        labels.append(out.labels.float())
        users.append(out.user_ids.long())
    model.train(was)
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt, device=env.device)  # noqa: E731
    lg, lb, u = gather_predictions(cat(logits, torch.float32), cat(labels, torch.float32), cat(users, torch.int64))
    has_users = bool((u >= 0).all()) and u.numel() > 0
    return ranking_metrics(lg.cpu(), lb.cpu(), u.cpu() if has_users else None)


def improves_on_best(auc: Optional[float], best: Optional[Mapping[str, Any]]) -> bool:
    """Whether a valid ``auc`` makes a new best (early stop counts the evals where it does not).

    The first eval always does (``best is None``). A non-finite or missing AUC (NaN from a
    single-class valid split) is worse than any finite one: it never beats a best, and any finite AUC
    beats a non-finite best, so one NaN eval cannot freeze ``best`` and trigger early stop."""
    if best is None:
        return True
    if auc is None or not math.isfinite(auc):
        return False
    b = best.get("auc")
    return b is None or not math.isfinite(b) or auc > b


# ----------------------------------------------------------------------------------- outputs
class _Recorder:
    """Rank-0 metrics sink: JSONL records + TensorBoard scalars."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, resumed_from: Optional[int]) -> None:
        self.active = env.rank == 0
        self.out = Path(cfg.output.dir)
        self.tb = None
        if self.active:
            self.out.mkdir(parents=True, exist_ok=True)
            jl = self.out / "metrics.jsonl"
            if jl.exists():  # a fresh run starts an empty file; a resumed one drops records past its step
                keep = [] if resumed_from is None else [
                    line for line in jl.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resumed_from]
                atomic_write_text(jl, "".join(line + "\n" for line in keep))
            if cfg.output.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))

    def eval_record(self, rec: Dict[str, Any]) -> None:
        if not self.active:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps({k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in rec.items()}) + "\n")
        if self.tb is not None:
            for k in ("auc", "gauc", "logloss"):
                if rec.get(k) is not None and math.isfinite(rec[k]):
                    self.tb.add_scalar(f"{rec['split']}/{k}", rec[k], rec["step"])
            self.tb.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------- the app
def _warn_shared_rdzv_store(env: DistEnv) -> None:
    """torch's elastic agent (torchrun --max-restarts N) shares one TCP store across restart rounds; the
    process group's keys of the failed round are still in it, and a restarted gloo rank can read its
    peer's stale address and wait forever (pytorch/pytorch#135712). The launcher must run with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (launch/components.py:train sets it)."""
    if env.rank == 0 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get(SHARED_STORE_ENV) != "1":
        logger.warning("elastic restarts are on but %s is not set in the launcher's environment: a restarted attempt can "
                       "hang in init_process_group (pytorch/pytorch#135712); set %s=1 for torchrun", SHARED_STORE_ENV, SHARED_STORE_ENV)


def run(cfg: TrainConfig, *, resume: bool = False, plan_file: Optional[str] = None, metrics_out: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg`` on this rank (see the module docstring); returns the final summary (every rank)."""
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.optimizers import in_backward_optimizer_filter
    from tqdm import tqdm

    from store_rec.models.factory import build_model
    from store_rec.models.tables import embedding_tables
    from store_rec.ops.flops import tflops_per_batch
    from store_rec.modules.rotation import AlternatingOptimizer, AlternatingSchedule, rotation_modules, split_rotation_params

    env = init_distributed()
    try:
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        check_sid_table_method(cfg)
        data_dir = prepare_data(cfg, env)
        train_loader = make_loader(cfg, data_dir, "train", env, train=True)
        schema = train_loader.schema
        eval_loaders = {s: make_loader(cfg, data_dir, s, env, train=False)
                        for s in sorted({"valid", *cfg.train.eval_splits, *cfg.train.epoch_end_splits}) if s in schema.splits}

        model = build_model(cfg.model, schema, device=torch.device("meta"))
        tflops = float(tflops_per_batch(model, 1024))
        tables = embedding_tables(schema, cfg.model)
        wrapper = RankingTrain(model, cfg.loss.aux_weights)
        opt_cls, opt_kw = sparse_optimizer(cfg)
        apply_optimizer_in_backward(opt_cls, model.embedding_bag_collection.parameters(), opt_kw)
        dmp = shard_model(wrapper, cfg, env, tables, plan_file or cfg.sharding.plan_file)
        load_online_item_embeddings(dmp, cfg, schema)

        dense = dict(in_backward_optimizer_filter(dmp.named_parameters()))
        main_p, rot_p = split_rotation_params(dmp, dense.items())
        o = cfg.optim
        if o.dense.type == "adam":
            main_opt = torch.optim.Adam(list(main_p.values()), lr=o.dense.lr, weight_decay=o.weight_decay)
        else:
            main_opt = torch.optim.Adagrad(list(main_p.values()), lr=o.dense.lr, weight_decay=o.weight_decay)
        rot_opt = None
        if rot_p:
            cls = torch.optim.Adam if o.rotation.type == "adam" else torch.optim.SGD
            rot_opt = cls(list(rot_p.values()), lr=o.rotation.lr)
        optimizer = AlternatingOptimizer(main_opt, rot_opt, AlternatingSchedule(cfg.model.rotation.schedule), rotation_modules(dmp))
        base_lrs = [g["lr"] for g in optimizer.param_groups]  # optimizer.load_state_dict replaces the group dicts
        pipeline = TrainPipelineSparseDist(dmp, optimizer, env.device, execute_all_batches=True)

        steps_per_epoch = len(train_loader)
        total = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        ck_root = Path(cfg.checkpoint.dir or Path(cfg.output.dir) / "checkpoints")
        sparse_lr = SparseLR(dmp, cfg.optim.sparse.lr) if cfg.optim.schedule_sparse_lr else None

        # ---------------- resume
        step, epoch, pos = 0, 0, 0
        best: Optional[Dict[str, Any]] = None
        bad_evals, train_time, train_samples = 0, 0.0, 0
        resumed_from = None
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        _warn_shared_rdzv_store(env)
        if resume or restarted:
            latest = latest_checkpoint(ck_root)
            if latest is not None:
                extra = load_checkpoint(latest, dmp, env, cfg)
                optimizer.load_state_dict(extra["optimizer"])
                step, epoch, pos = extra["step"], extra["epoch"], extra["pos"]
                best, bad_evals = extra["best"], extra["bad_evals"]
                train_time, train_samples = extra["train_time"], extra["train_samples"]
                _set_rng_state(extra["rng"])
                resumed_from = step
                logger.info("resumed from %s (step %d, epoch %d, batch %d)", latest, step, epoch, pos)
            elif resume:
                logger.info("--resume: no checkpoint in %s, starting from scratch", ck_root)
        if resumed_from is None and env.rank == 0:
            # a fresh run must not mix with (nor have its new checkpoints pruned in favour of) an older run's
            gone = clear_checkpoints(ck_root)
            if gone:
                logger.warning("starting from scratch: removed %d checkpoint(s) of an earlier run in %s (pass --resume "
                               "to continue from them instead)", len(gone), ck_root)
        dist.barrier()
        recorder = _Recorder(cfg, env, resumed_from)

        fault_step = int(os.environ[FAULT_ENV]) if os.environ.get(FAULT_ENV) else None
        fault_marker = Path(os.environ.get(FAULT_MARKER_ENV) or ck_root / "fault.marker")

        def extra_state() -> Dict[str, Any]:
            return {"step": step, "epoch": epoch, "pos": pos, "optimizer": optimizer.state_dict(), "best": best,
                    "bad_evals": bad_evals, "train_time": train_time, "train_samples": train_samples,
                    "rng": _rng_state(), "world_size": env.world_size, "config": to_dict(cfg)}

        def global_samples_per_s() -> float:
            n = torch.tensor([float(train_samples)], dtype=torch.float64)
            dist.all_reduce(n)
            t = torch.tensor([train_time], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return float(n[0] / t[0]) if t[0] > 0 else float("nan")

        last_eval: Dict[str, Dict[str, Any]] = {}  # split -> its newest eval record

        def do_eval(split: str, loss_avg: Optional[float]) -> Dict[str, Any]:
            if split in last_eval and last_eval[split]["step"] == step:  # this model was already evaluated
                return last_eval[split]
            pipeline.detach()
            m = evaluate(dmp, eval_loaders[split], env)
            rec = {"step": step, "epoch": epoch, "split": split, **m, "samples_per_s": global_samples_per_s(),
                   "tflops_per_batch": tflops, "train_logloss": loss_avg, "resumed_from_step": resumed_from}
            last_eval[split] = rec
            recorder.eval_record(rec)
            if env.rank == 0:
                logger.info("eval %s step %d epoch %d: auc %.5f gauc %.5f logloss %.5f", split, step, epoch,
                            m["auc"], m["gauc"], m["logloss"])
            return rec

        pbar = tqdm(total=total, initial=step, desc="train", disable=not (env.rank == 0 and cfg.output.progress_bar), dynamic_ncols=True)
        stop = step >= total
        # sum of the steps' log loss since the last valid eval, kept on the device: float() of it syncs host and
        # device, so it happens only at log_every and at segment ends (where the pipeline is drained anyway)
        new_loss_sum = lambda: torch.zeros((), dtype=torch.float64, device=env.device)  # noqa: E731
        loss_sum, loss_n = new_loss_sum(), 0
        eval_every, ck_every = cfg.train.eval_every, cfg.checkpoint.every_steps
        while not stop and epoch < cfg.train.epochs:
            train_loader.set_epoch(epoch)
            train_loader.load_state_dict({**train_loader.state_dict(), "epoch": epoch, "batches": pos})
            it: Iterator = iter(train_loader)
            dmp.train()
            while pos < steps_per_epoch and step < total:
                # next segment boundary: eval, checkpoint, epoch end or the last step
                ends = [steps_per_epoch - pos + step, total]
                for every in (eval_every, ck_every):
                    if every:
                        ends.append((step // every + 1) * every)
                seg_end = min(ends)
                seg = itertools.islice(it, seg_end - step)
                t0 = time.perf_counter()
                while True:
                    f = lr_factor(step, total, cfg)
                    for g, lr0 in zip(optimizer.param_groups, base_lrs):
                        g["lr"] = lr0 * f
                    if sparse_lr is not None:
                        sparse_lr.set(f)
                    try:
                        out = pipeline.progress(seg)
                    except StopIteration:
                        break
                    step += 1
                    pos += 1
                    train_samples += int(out.labels.numel())
                    loss_sum += out.losses["bce"].to(torch.float64)
                    loss_n += 1
                    pbar.update(1)
                    if step % cfg.train.log_every == 0 and env.rank == 0:
                        logloss = float(loss_sum) / loss_n
                        pbar.set_postfix(logloss=f"{logloss:.4f}")
                        recorder.scalar("train/logloss", logloss, step)
                        recorder.scalar("train/loss", float(out.loss), step)
                    if fault_step is not None and step == fault_step and env.rank == env.world_size - 1 and not fault_marker.exists():
                        fault_marker.parent.mkdir(parents=True, exist_ok=True)
                        fault_marker.write_text(f"killed rank {env.rank} at step {step}\n")
                        logger.warning("fault injection: SIGKILL rank %d at step %d", env.rank, step)
                        os.kill(os.getpid(), signal.SIGKILL)
                train_time += time.perf_counter() - t0
                loss_avg = float(loss_sum) / loss_n if loss_n else None
                epoch_done = pos >= steps_per_epoch
                if (eval_every and step % eval_every == 0) or (epoch_done and cfg.train.eval_at_epoch_end) or step >= total:
                    if "valid" in eval_loaders:
                        rec = do_eval("valid", loss_avg)
                        loss_sum, loss_n = new_loss_sum(), 0
                        if improves_on_best(rec["auc"], best):
                            best, bad_evals = {k: rec[k] for k in ("step", "epoch", "auc", "gauc", "logloss")}, 0
                        else:
                            bad_evals += 1
                        if cfg.train.early_stop_patience and bad_evals >= cfg.train.early_stop_patience:
                            logger.info("early stop at step %d: %d evals without a better valid AUC", step, bad_evals)
                            stop = True
                if epoch_done and cfg.train.eval_at_epoch_end:
                    for split in cfg.train.epoch_end_splits:
                        if split != "valid" and split in eval_loaders:
                            do_eval(split, loss_avg)
                if epoch_done:
                    epoch, pos = epoch + 1, 0
                if cfg.checkpoint.enabled and ((ck_every and step % ck_every == 0) or epoch_done or stop or step >= total):
                    save_checkpoint(ck_root, step, dmp, extra_state(), env, cfg.checkpoint.keep)
                if stop or step >= total:
                    stop = True
                if stop or epoch_done:
                    break
            if hasattr(it, "close"):
                it.close()
        pbar.close()

        pipeline.detach()
        final = {s: do_eval(s, None) for s in cfg.train.eval_splits if s in eval_loaders}
        head = final.get("test") or final.get("valid") or next(iter(final.values()), {})
        summary = {
            "auc": finite_or_none(head.get("auc")), "gauc": finite_or_none(head.get("gauc")),
            "logloss": finite_or_none(head.get("logloss")), "split": head.get("split"),
            # TFLOPs of one fwd+bwd step per batch of 1024 samples (not per data.batch_size batch)
            "samples_per_s": finite_or_none(global_samples_per_s()), "tflops_per_batch": tflops,
            "steps": step, "epochs_completed": epoch, "world_size": env.world_size, "model": cfg.model.name,
            "best_valid": best, "final": {s: {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in r.items()}
                                          for s, r in final.items()},
            "resumed_from_step": resumed_from, "train_time_s": train_time, "train_samples": train_samples,
            # max |R^T R - I| over every rotation matrix after training (None without rotation)
            "rotation_orthogonality_error": max((m.orthogonality_error() for m in rotation_modules(dmp)), default=None),
        }
        out = Path(metrics_out or cfg.output.metrics_out or Path(cfg.output.dir) / "summary.json")
        if env.rank == 0:
            atomic_write_json(out, summary, sort_keys=True)
            logger.info("summary: %s", out)
        recorder.close()
        dist.barrier()
        return summary
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m store_rec.train --config FILE [key=value ...]`` (the torchrun / torchx entry point)."""
    from store_rec.cli import main as cli_main

    return cli_main(["train", *(argv if argv is not None else __import__("sys").argv[1:])])
