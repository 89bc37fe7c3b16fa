"""The training loop: sharded STORE / baseline training on TorchRec with exact metrics and resume.

``run(cfg)`` is what ``store-rec train`` and ``python -m store_rec.train`` (under ``torchrun`` /
``torchx``) execute on every rank; a :class:`Trainer` holds the run's state. Read in this order:

1. Process group from the environment (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from torchrun; cuda +
   nccl with GPUs, cpu + gloo otherwise; a single process without torchrun gets a world of one):
   :func:`store_rec.distributed.env.init_distributed`.
2. Data (:mod:`store_rec.train.data`): ``data.dir`` (prepared by rank 0 from
   ``data.prepare_if_missing`` when absent), one :class:`~store_rec.data.loader.ParquetBatchLoader`
   per split, rank-sharded.
3. Model: :func:`~store_rec.models.factory.build_model` with its EBC on the meta device, wrapped in
   :class:`~store_rec.models.ranking.RankingTrain` (``forward(batch) -> (loss, TrainOutput)``); fused
   sparse optimizer applied in backward (Adagrad / row-wise Adagrad, :mod:`store_rec.train.optim`),
   sharded by ``DistributedModelParallel`` with a plan from ``EmbeddingShardingPlanner`` (constraints
   from ``sharding:``) or a plan file (``store-rec plan``) (:mod:`store_rec.train.sharding`).
4. Dense optimizer (Adam/Adagrad) over the non-rotation dense parameters and the rotation optimizer,
   stepped by :class:`~store_rec.modules.rotation.AlternatingOptimizer` on ``model.rotation.schedule``;
   linear warm-up then none/linear/cosine decay of their LRs. With ``optim.schedule_sparse_lr`` (the
   default) the fused sparse LR of the embedding tables follows the same schedule
   (:class:`~store_rec.train.optim.SparseLR`); without it it stays at ``optim.sparse.lr``.
5. Loop (:meth:`Trainer.fit`): ``TrainPipelineSparseDist`` over segments of the epoch that end at the
   next eval / checkpoint / stop step (the pipeline is drained there, so a checkpoint holds the exact
   loader position). Eval on ``valid`` every ``train.eval_every`` steps and at each epoch end
   (:mod:`store_rec.train.evaluate`); early stop on valid AUC; final eval of the last model on
   ``train.eval_splits``.
6. Outputs (rank 0): ``<output.dir>/config.yaml`` (the resolved config, what ``store-rec predict``
   reads), ``<output.dir>/metrics.jsonl`` (one record per eval: AUC, GAUC, LogLoss, NE, calibration,
   ``eval_samples_per_s`` and the training's ``train_samples_per_s`` so far), TensorBoard scalars in
   ``<output.dir>/tb`` (:mod:`store_rec.train.recorder`: eval metrics, and every ``train.log_every``
   steps the log loss, each auxiliary loss, each optimizer's LR, train samples/s and the rotations'
   orthogonality error), a tqdm bar on a terminal or one log line every ``train.log_every`` steps
   otherwise, and the final JSON summary (``auc``, ``gauc``, ``logloss`` of the test split -- valid if
   there is no test -- plus ``samples_per_s`` (training), ``gflops_per_batch`` (GFLOPs of one fwd+bwd
   step on a batch of 1024 samples, whatever ``data.batch_size`` is, as the paper reports them; also as
   ``tflops_per_batch``, its older key), best/valid/test details) at ``output.metrics_out``; written to
   a temp file then renamed. Known-benign TorchRec / fbgemm warnings are filtered once
   (:mod:`store_rec.distributed.benign_warnings`).
7. Checkpoints (:mod:`store_rec.train.checkpoint`): ``<checkpoint.dir>/step-N``, written atomically. A
   run with ``resume=True`` -- or any restart of an elastic job (``TORCHELASTIC_RESTART_COUNT > 0``)
   -- continues from the newest complete checkpoint, exactly (same world size).

Test hook: ``STORE_REC_FAULT_AT_STEP=N`` makes the last rank SIGKILL itself once after step ``N``
(a marker file ``STORE_REC_FAULT_MARKER`` -- default ``<checkpoint.dir>/fault.marker`` -- keeps the
restarted attempt alive). It exists to test fault recovery and is off unless the variable is set.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from store_rec.config import to_dict
from store_rec.distributed.env import SHARED_STORE_ENV, DistEnv, init_distributed
from store_rec.fileio import atomic_write_json
from store_rec.models.ranking import RankingModel, RankingTrain, TrainOutput
from store_rec.errors import UserError
from store_rec.train.checkpoint import (check_fresh_start, clear_checkpoints, dense_param_names, existing_checkpoints,
                                        load_latest_checkpoint, map_position, reseed, rng_state, save_checkpoint,
                                        set_rng_state)
from store_rec.train.config import TrainConfig
from store_rec.train.data import check_sid_table_method, make_loader, prepare_data
from store_rec.train.evaluate import evaluate, improves_on_best
from store_rec.train.metrics import finite_or_none
from store_rec.train.optim import LRSchedule, SparseLR, dense_optimizer, sparse_optimizer
from store_rec.train.recorder import Recorder
from store_rec.train.sharding import load_online_item_embeddings, model_tables, shard_model, sparse_parameters

logger = logging.getLogger(__name__)

class TrainingDiverged(UserError):
    """A non-finite training loss: the run stops at that step (exit code 2), nothing more is written."""


NO_BAD_STEP = 2**62  # "no non-finite loss yet" in the all-reduced minimum of first non-finite steps

FAULT_ENV = "STORE_REC_FAULT_AT_STEP"
FAULT_MARKER_ENV = "STORE_REC_FAULT_MARKER"


def warn_shared_rdzv_store(env: DistEnv) -> None:
    """torch's elastic agent (torchrun --max-restarts N) shares one TCP store across restart rounds; the
    process group's keys of the failed round are still in it, and a restarted gloo rank can read its
    peer's stale address and wait forever (pytorch/pytorch#135712). The launcher must run with
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (launch/components.py:train sets it)."""
    if env.rank == 0 and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and os.environ.get(SHARED_STORE_ENV) != "1":
        logger.warning("elastic restarts are on but %s is not set in the launcher's environment: a restarted attempt can "
                       "hang in init_process_group (pytorch/pytorch#135712); set %s=1 for torchrun", SHARED_STORE_ENV, SHARED_STORE_ENV)


class Trainer:
    """One training run on this rank: built by ``__init__`` (steps 2-4 of the module docstring),
    trained by :meth:`fit` (steps 5-7). The loop's state (``step``, ``epoch``, ``pos`` -- the batch
    within the epoch --, early-stop state, throughput counters) lives on the instance and is what a
    checkpoint's extras hold (:meth:`extra_state`)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, plan_file: Optional[str] = None) -> None:
        from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        from store_rec.models.factory import build_model
        from store_rec.ops.flops import tflops_per_batch

        self.cfg, self.env = cfg, env
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        # data
        check_sid_table_method(cfg)
        data_dir = prepare_data(cfg, env)
        self.train_loader = make_loader(cfg, data_dir, "train", env, train=True)
        schema = self.train_loader.schema
        self.eval_loaders = {s: make_loader(cfg, data_dir, s, env, train=False)
                             for s in sorted({"valid", *cfg.train.eval_splits, *cfg.train.epoch_end_splits}) if s in schema.splits}
        self.item_slices = None  # cold / warm target-item AUCs in every eval (store_rec.data.slices)
        if cfg.train.eval_item_slices:
            from store_rec.data.slices import item_slices

            sl = item_slices(data_dir)
            if sl is not None and sl.feature in self.train_loader.keys:
                self.item_slices = sl
                logger.info("eval slices: %d warm items of %r (with a train positive), %d cold", sl.num_warm,
                            sl.feature, len(sl.warm) - sl.num_warm)
        # model, sharded
        model = build_model(cfg.model, schema, device=torch.device("meta"))
        self.tflops = float(tflops_per_batch(model, 1024))
        tables = model_tables(model)  # the EBC's, and the EmbeddingCollection's (history tokens) if any
        wrapper = RankingTrain(model, cfg.loss.aux_weights)
        opt_cls, opt_kw = sparse_optimizer(cfg, env.device.type)
        apply_optimizer_in_backward(opt_cls, sparse_parameters(model), opt_kw)
        model.set_precision(cfg.train.precision, env.device.type)
        self.dmp = shard_model(wrapper, cfg, env, tables, plan_file or cfg.sharding.plan_file)
        load_online_item_embeddings(self.dmp, cfg, schema)
        t0 = time.perf_counter()
        self.compiled = compile_dense_part(model, self.dmp, self.train_loader, env) if cfg.train.compile else False
        self.compile_s = time.perf_counter() - t0 if cfg.train.compile else 0.0
        # optimizers, LR schedule, pipeline
        self.optimizer = dense_optimizer(cfg, self.dmp)
        self.steps_per_epoch = len(self.train_loader)
        total = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            total = min(total, cfg.train.max_steps)
        self.total = total
        self.global_batch_size = cfg.data.batch_size * env.world_size
        if env.rank == 0:
            logger.info("global batch %d = data.batch_size %d (per rank) x %d rank(s); %d steps per epoch, %d steps in all",
                        self.global_batch_size, cfg.data.batch_size, env.world_size, self.steps_per_epoch, total)
            if cfg.optim.warmup_steps > total:
                logger.warning("optim.warmup_steps = %d exceeds the %d training steps (%d epoch(s) x %d steps of a global "
                               "batch of %d = data.batch_size %d x %d ranks): the LR never reaches its base value; lower "
                               "optim.warmup_steps or data.batch_size, or train longer", cfg.optim.warmup_steps, total,
                               cfg.train.epochs, self.steps_per_epoch, self.global_batch_size, cfg.data.batch_size,
                               env.world_size)
        sparse_lr = SparseLR(self.dmp, cfg.optim.sparse.lr) if cfg.optim.schedule_sparse_lr else None
        self.lr_schedule = LRSchedule(cfg, self.optimizer, total, sparse_lr)  # reads the base LRs before a resume
        self.pipeline = TrainPipelineSparseDist(self.dmp, self.optimizer, env.device, execute_all_batches=True)
        self.ck_root = Path(cfg.checkpoint.dir or Path(cfg.output.dir) / "checkpoints")
        # loop state
        self.step, self.epoch, self.pos = 0, 0, 0
        self.best: Optional[Dict[str, Any]] = None
        self.bad_evals, self.train_time, self.train_samples = 0, 0.0, 0
        self.train_cpu_time = 0.0  # not checkpointed: the CPU seconds of this attempt's training
        self.resumed_from: Optional[int] = None  # the step this run continued at (in its own step units)
        self.resumed_checkpoint_step: Optional[int] = None  # that checkpoint's step (in the units of its writer)
        self.resumed_from_world_size: Optional[int] = None  # set when the checkpoint came from another world size
        self.last_eval: Dict[str, Dict[str, Any]] = {}  # split -> its newest eval record
        self.loss_sum, self.loss_n = self._zero_loss(), 0
        self.first_bad = torch.full((), NO_BAD_STEP, dtype=torch.long, device=env.device)
        self.recorder: Optional[Recorder] = None
        self.fault_step = int(os.environ[FAULT_ENV]) if os.environ.get(FAULT_ENV) else None
        self.fault_marker = Path(os.environ.get(FAULT_MARKER_ENV) or self.ck_root / "fault.marker")

    # ------------------------------------------------------------------ resume / checkpoint state
    def restore(self, resume: bool, overwrite_checkpoints: bool = False) -> None:
        """Continue from the newest complete checkpoint (``resume``, or a restarted elastic attempt; a
        corrupt newer one is reported and skipped). A fresh run in a checkpoint dir that holds checkpoints
        was refused by :func:`check_run_paths` unless ``overwrite_checkpoints``: then the checkpoints this
        code wrote (and nothing else) are removed."""
        env = self.env
        warn_shared_rdzv_store(env)
        if resume or is_restart():
            latest, extra = load_latest_checkpoint(self.ck_root, self.dmp, env, self.cfg)
            if latest is not None:
                self.optimizer.load_state_dict(extra["optimizer"])
                self.step, self.epoch, self.pos = map_position(extra, self.steps_per_epoch, env.world_size)
                self.best, self.bad_evals = extra["best"], extra["bad_evals"]
                self.train_time, self.train_samples = extra["train_time"], extra["train_samples"]
                self.resumed_from, self.resumed_checkpoint_step = self.step, int(extra["step"])
                if extra["saved_world_size"] == env.world_size:
                    set_rng_state(extra["rng"])
                    logger.info("resumed from %s (step %d, epoch %d, batch %d)", latest, self.step, self.epoch, self.pos)
                else:  # elastic: per-rank states of another world; samples per rank scale with 1 / world size
                    self.train_samples = int(round(self.train_samples * extra["saved_world_size"] / env.world_size))
                    reseed(self.cfg.train.seed, self.step, env.rank)
                    self.resumed_from_world_size = int(extra["saved_world_size"])
                    logger.info("resumed from %s written by %d rank(s) at step %d (epoch %d, batch %d of %d): continuing "
                                "on %d rank(s) at step %d (batch %d of %d)", latest, extra["saved_world_size"], extra["step"],
                                self.epoch, extra["pos"], extra["steps_per_epoch"], env.world_size, self.step, self.pos,
                                self.steps_per_epoch)
            elif existing_checkpoints(self.ck_root):
                raise UserError(f"{self.ck_root}: no usable checkpoint to resume from (each one's problem is logged above); "
                                "to start from scratch instead, run without --resume and with --overwrite-checkpoints")
            elif resume:
                logger.info("--resume: no checkpoint in %s, starting from scratch", self.ck_root)
        if self.resumed_from is None and env.rank == 0 and overwrite_checkpoints:
            # a fresh run must not mix with (nor have its new checkpoints pruned in favour of) an older run's
            gone = clear_checkpoints(self.ck_root)
            if gone:
                logger.warning("starting from scratch (--overwrite-checkpoints): removed %d checkpoint(s) in %s",
                               len(gone), self.ck_root)
        dist.barrier()

    def extra_state(self) -> Dict[str, Any]:
        """This rank's part of a checkpoint besides the DCP state (see :mod:`store_rec.train.checkpoint`)."""
        return {"step": self.step, "epoch": self.epoch, "pos": self.pos, "optimizer": self.optimizer.state_dict(),
                "best": self.best, "bad_evals": self.bad_evals, "train_time": self.train_time,
                "train_samples": self.train_samples, "rng": rng_state(), "world_size": self.env.world_size,
                "steps_per_epoch": self.steps_per_epoch, "dense_params": dense_param_names(self.dmp),
                "config": to_dict(self.cfg)}

    # ------------------------------------------------------------------ metrics
    def global_samples_per_s(self) -> float:
        """Training samples of every rank / the slowest rank's training time."""
        n = torch.tensor([float(self.train_samples)], dtype=torch.float64)
        dist.all_reduce(n)
        t = torch.tensor([self.train_time], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(n[0] / t[0]) if t[0] > 0 else float("nan")

    def evaluate_split(self, split: str, loss_avg: Optional[float]) -> Dict[str, Any]:
        """Evaluate the current model on ``split`` (once per step), record and return the record."""
        if split in self.last_eval and self.last_eval[split]["step"] == self.step:  # this model was already evaluated
            return self.last_eval[split]
        self.pipeline.detach()
        m = evaluate(self.dmp, self.eval_loaders[split], self.env, self.cfg.train.eval_auc, self.cfg.train.eval_auc_bins,
                     self.item_slices)
        # train_samples_per_s: the training throughput so far (eval excluded); eval_samples_per_s: this eval's
        rec = {"step": self.step, "epoch": self.epoch, "split": split, **m, "train_samples_per_s": self.global_samples_per_s(),
               "gflops_per_batch": self.tflops * 1e3, "tflops_per_batch": self.tflops, "train_logloss": loss_avg,
               "resumed_from_step": self.resumed_from, "rotation_orthogonality_error": self.orthogonality_error()}
        self.last_eval[split] = rec
        self.recorder.eval_record(rec)
        if self.env.rank == 0:
            gauc = m.get("gauc")
            logger.info("eval %s step %d epoch %d: auc %.5f gauc %s logloss %.5f ne %.4f calibration %.3f "
                        "(%d rows, %.0f eval samples/s)", split, self.step, self.epoch, m["auc"],
                        f"{gauc:.5f}" if gauc is not None else "n/a (no user key)", m["logloss"],
                        m["ne"], m["calibration"], m["num_samples"], m["eval_samples_per_s"])
        return rec

    def orthogonality_error(self) -> Optional[float]:
        """max |R^T R - I| over every rotation matrix of the model (None without rotation)."""
        from store_rec.modules.rotation import rotation_modules

        return max((float(m.orthogonality_error()) for m in rotation_modules(self.dmp)), default=None)

    def _zero_loss(self) -> torch.Tensor:
        # sum of the steps' log loss since the last valid eval, kept on the device: float() of it syncs host and
        # device, so it happens only at log_every and at segment ends (where the pipeline is drained anyway)
        return torch.zeros((), dtype=torch.float64, device=self.env.device)

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False, metrics_out: Optional[str] = None, overwrite_checkpoints: bool = False) -> Dict[str, Any]:
        """Train (from the newest checkpoint with ``resume``), evaluate, write and return the summary."""
        from tqdm import tqdm

        cfg = self.cfg
        self.restore(resume, overwrite_checkpoints)
        # metrics.jsonl keeps the records up to the checkpoint's step (in the writer's step units)
        self.recorder = Recorder(cfg, self.env, self.resumed_checkpoint_step)
        self.recorder.write_config(cfg)
        # a bar only on a terminal: in slurm / torchx log files its carriage-return updates pile up, and
        # there (or with output.progress_bar false) train_segment logs a line every log_every steps instead
        self.bar = self.env.rank == 0 and cfg.output.progress_bar and sys.stderr.isatty()
        pbar = tqdm(total=self.total, initial=self.step, desc="train", disable=not self.bar, dynamic_ncols=True)
        self._log_t, self._log_samples = time.perf_counter(), self.train_samples
        self.profiler = self.start_profiler()
        stop = self.step >= self.total
        self.loss_sum, self.loss_n = self._zero_loss(), 0
        while not stop and self.epoch < cfg.train.epochs:
            stop = self.train_epoch(pbar)
        pbar.close()
        if self.profiler is not None:
            self.profiler.stop()
        self.pipeline.detach()
        return self.finish(metrics_out)

    def start_profiler(self):  # noqa: ANN201
        """``train.profile_steps > 0``: a ``torch.profiler`` over that many training steps after
        ``train.profile_skip`` (+1 warm-up) steps, its trace written per rank to
        ``<output.dir>/profile/rank<r>.json`` (chrome://tracing / Perfetto)."""
        n = self.cfg.train.profile_steps
        if not n:
            return None
        from torch.profiler import ProfilerActivity, profile, schedule

        out = Path(self.cfg.output.dir) / "profile"
        out.mkdir(parents=True, exist_ok=True)
        rank = self.env.rank

        def save(p) -> None:  # noqa: ANN001
            path = out / f"rank{rank}.json"
            p.export_chrome_trace(str(path))
            logger.info("train.profile_steps: trace of %d steps in %s", n, path)

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.env.device.type == "cuda" else [])
        prof = profile(activities=acts, schedule=schedule(wait=self.cfg.train.profile_skip, warmup=1, active=n, repeat=1),
                       on_trace_ready=save, record_shapes=True)
        prof.start()
        return prof

    def train_epoch(self, pbar) -> bool:  # noqa: ANN001
        """Train the rest of the current epoch (from batch ``pos``) segment by segment; True to stop."""
        self.train_loader.set_epoch(self.epoch)
        self.train_loader.load_state_dict({**self.train_loader.state_dict(), "epoch": self.epoch, "batches": self.pos})
        it: Iterator = iter(self.train_loader)
        self.dmp.train()
        stop = False
        while self.pos < self.steps_per_epoch and self.step < self.total:
            self.train_segment(itertools.islice(it, self.segment_end() - self.step), pbar)
            stop, epoch_done = self.end_segment()
            if stop or epoch_done:
                break
        if hasattr(it, "close"):
            it.close()
        return stop

    def segment_end(self) -> int:
        """The next segment boundary: eval, checkpoint, epoch end or the last step."""
        ends = [self.steps_per_epoch - self.pos + self.step, self.total]
        for every in (self.cfg.train.eval_every, self.cfg.checkpoint.every_steps):
            if every:
                ends.append((self.step // every + 1) * every)
        return min(ends)

    def train_segment(self, seg: Iterator, pbar) -> None:  # noqa: ANN001
        """Pipeline steps over ``seg`` (LR scheduled before each), counting samples and log loss."""
        t0, c0 = time.perf_counter(), time.process_time()
        while True:
            self.lr_schedule.apply(self.step)
            try:
                out: TrainOutput = self.pipeline.progress(seg)
            except StopIteration:
                break
            self.step += 1
            self.pos += 1
            if self.profiler is not None:
                self.profiler.step()
            self.train_samples += int(out.labels.numel())
            self.loss_sum += out.losses["bce"].to(torch.float64)
            self.loss_n += 1
            # first step with a non-finite loss, kept on the device (no host sync per step); checked at the
            # segment end, before any eval or checkpoint (:meth:`check_finite`)
            bad = ~torch.isfinite(out.loss.detach())
            self.first_bad = torch.where(bad & (self.first_bad == NO_BAD_STEP), torch.full_like(self.first_bad, self.step),
                                         self.first_bad)
            pbar.update(1)
            if self.step % self.cfg.train.log_every == 0 and self.env.rank == 0:
                self.log_step(out, pbar, self.train_time + time.perf_counter() - t0)
            self.maybe_inject_fault()
        self.train_time += time.perf_counter() - t0
        self.train_cpu_time += time.process_time() - c0  # this process's CPU seconds: steadier on a shared machine

    def log_step(self, out: TrainOutput, pbar, train_time: float) -> None:  # noqa: ANN001
        """Every ``train.log_every`` steps on rank 0: TensorBoard scalars (log loss, loss, each auxiliary
        loss, each optimizer's LR, this rank's train samples/s since the last log, orthogonality error),
        and the bar's postfix on a terminal or one log line otherwise."""
        logloss = float(self.loss_sum) / self.loss_n
        now = time.perf_counter()
        # this rank's rate since the last log line (wall time, evals included when one fell in between)
        rate = (self.train_samples - self._log_samples) / max(now - self._log_t, 1e-9)
        self._log_t, self._log_samples = now, self.train_samples
        lrs = self.lr_schedule.current_lrs()
        orth = self.orthogonality_error()
        rec = self.recorder
        rec.scalar("train/logloss", logloss, self.step)
        rec.scalar("train/loss", float(out.loss), self.step)
        for k, v in out.losses.items():
            if k != "bce":
                rec.scalar(f"train/aux/{k}", float(v), self.step)
        for k, v in lrs.items():
            rec.scalar(f"lr/{k}", v, self.step)
        rec.scalar("throughput/train_samples_per_s_rank0", rate, self.step)
        if orth is not None:
            rec.scalar("rotation/orthogonality_error", orth, self.step)
        if self.bar:
            pbar.set_postfix(logloss=f"{logloss:.4f}")
        else:
            aux = "".join(f" {k} {float(v):.4g}" for k, v in out.losses.items() if k != "bce")
            logger.info("step %d/%d (%.0f%%) epoch %d: logloss %.4f%s | lr %s | %.0f samples/s (rank 0)%s", self.step,
                        self.total, 100.0 * self.step / max(self.total, 1), self.epoch, logloss, aux,
                        " ".join(f"{k} {v:.3g}" for k, v in lrs.items()), rate,
                        f" | orthogonality error {orth:.2e}" if orth is not None else "")

    def end_segment(self) -> Tuple[bool, bool]:
        """At a segment boundary: evals + early stop, epoch bookkeeping, checkpoint. ``(stop, epoch_done)``."""
        cfg = self.cfg
        self.check_finite()
        eval_every, ck_every = cfg.train.eval_every, cfg.checkpoint.every_steps
        loss_avg = float(self.loss_sum) / self.loss_n if self.loss_n else None
        epoch_done = self.pos >= self.steps_per_epoch
        stop = False
        if (eval_every and self.step % eval_every == 0) or (epoch_done and cfg.train.eval_at_epoch_end) or self.step >= self.total:
            if "valid" in self.eval_loaders:
                rec = self.evaluate_split("valid", loss_avg)
                self.loss_sum, self.loss_n = self._zero_loss(), 0
                if improves_on_best(rec["auc"], self.best):
                    self.best, self.bad_evals = {k: rec[k] for k in ("step", "epoch", "auc", "gauc", "logloss")}, 0
                else:
                    self.bad_evals += 1
                if cfg.train.early_stop_patience and self.bad_evals >= cfg.train.early_stop_patience:
                    logger.info("early stop at step %d: %d evals without a better valid AUC", self.step, self.bad_evals)
                    stop = True
        if epoch_done and cfg.train.eval_at_epoch_end:
            for split in cfg.train.epoch_end_splits:
                if split != "valid" and split in self.eval_loaders:
                    self.evaluate_split(split, loss_avg)
        if epoch_done:
            self.epoch, self.pos = self.epoch + 1, 0
        if cfg.checkpoint.enabled and ((ck_every and self.step % ck_every == 0) or epoch_done or stop or self.step >= self.total):
            save_checkpoint(self.ck_root, self.step, self.dmp, self.extra_state(), self.env, cfg.checkpoint.keep)
        return stop or self.step >= self.total, epoch_done

    def check_finite(self) -> None:
        """Stop the run (:class:`TrainingDiverged` on every rank) when any rank's loss was non-finite at a
        step of the segment just trained, naming the first such step: no eval, checkpoint or summary of a
        diverged model is written."""
        first = self.first_bad.detach().clone().reshape(1)
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first[0])
        if step != NO_BAD_STEP:
            o = self.cfg.optim
            raise TrainingDiverged(
                f"training diverged: the loss is NaN or inf at step {step} (epoch {self.epoch}); stopped, no checkpoint or "
                f"summary written for it (lower the learning rates: optim.dense.lr={o.dense.lr}, optim.sparse.lr={o.sparse.lr})")

    def maybe_inject_fault(self) -> None:
        """The ``STORE_REC_FAULT_AT_STEP`` test hook (see the module docstring)."""
        env = self.env
        if self.fault_step is not None and self.step == self.fault_step and env.rank == env.world_size - 1 \
                and not self.fault_marker.exists():
            self.fault_marker.parent.mkdir(parents=True, exist_ok=True)
            self.fault_marker.write_text(f"killed rank {env.rank} at step {self.step}\n")
            logger.warning("fault injection: SIGKILL rank %d at step %d", env.rank, self.step)
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, metrics_out: Optional[str]) -> Dict[str, Any]:
        """Final evals on ``train.eval_splits``; the summary (written by rank 0, returned on every rank)."""
        cfg, env = self.cfg, self.env
        final = {s: self.evaluate_split(s, None) for s in cfg.train.eval_splits if s in self.eval_loaders}
        head = final.get("test") or final.get("valid") or next(iter(final.values()), {})
        summary = {
            "auc": finite_or_none(head.get("auc")), "gauc": finite_or_none(head.get("gauc")),
            "logloss": finite_or_none(head.get("logloss")), "split": head.get("split"),
            # TFLOPs of one fwd+bwd step per batch of 1024 samples (not per data.batch_size batch)
            "samples_per_s": finite_or_none(self.global_samples_per_s()), "gflops_per_batch": self.tflops * 1e3,
            "tflops_per_batch": self.tflops, "ne": finite_or_none(head.get("ne")),
            "calibration": finite_or_none(head.get("calibration")),
            # AUC of the cold / warm target items' positives against every negative (store_rec.data.slices)
            "auc_cold": finite_or_none(head.get("auc_cold")), "auc_warm": finite_or_none(head.get("auc_warm")),
            "steps": self.step, "epochs_completed": self.epoch, "world_size": env.world_size, "model": cfg.model.name,
            # data.batch_size is per rank: one step consumes data.batch_size x world_size samples
            "batch_size_per_rank": cfg.data.batch_size, "global_batch_size": self.global_batch_size,
            "best_valid": self.best,
            "final": {s: {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in r.items()} for s, r in final.items()},
            "resumed_from_step": self.resumed_from, "resumed_from_world_size": self.resumed_from_world_size,
            "resumed_checkpoint_step": self.resumed_checkpoint_step,
            "train_time_s": self.train_time, "train_samples": self.train_samples,
            "train_cpu_s": round(self.train_cpu_time, 3),
            "precision": cfg.train.precision, "compiled": self.compiled, "compile_s": round(self.compile_s, 3),
            # max |R^T R - I| over every rotation matrix after training (None without rotation)
            "rotation_orthogonality_error": self.orthogonality_error(),
        }
        out = Path(metrics_out or cfg.output.metrics_out or Path(cfg.output.dir) / "summary.json")
        if env.rank == 0:
            atomic_write_json(out, summary, sort_keys=True)
            logger.info("summary: %s", out)
        self.recorder.close()
        dist.barrier()
        return summary


def is_restart() -> bool:
    """True in a restarted attempt of an elastic job (it continues from the newest checkpoint)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def check_run_paths(cfg: TrainConfig, *, plan_file: Optional[str] = None, metrics_out: Optional[str] = None,
                    resume: bool = False, overwrite_checkpoints: bool = False, config_file: Optional[str] = None) -> None:
    """Every output path of the run, checked at start-up (before any data is read or model built):
    ``output.dir`` and ``checkpoint.dir`` must be directories (or not exist yet), the summary JSON a file
    path, and none may equal, contain or sit inside an input (config, plan, dataset, SID table); a fresh
    run refuses a checkpoint dir that holds checkpoints (:func:`~store_rec.train.checkpoint.check_fresh_start`)."""
    from store_rec.fileio import check_output_path

    inputs = [("--config", config_file), ("--plan", plan_file or cfg.sharding.plan_file), ("data.dir", cfg.data.dir),
              ("data.sid_table", cfg.data.sid_table), *((f"data.sid_tables.{f}", p) for f, p in cfg.data.sid_tables.items())]
    out_dir = Path(cfg.output.dir)
    check_output_path(out_dir, inputs=inputs, kind="dir", flag="output.dir")
    ck = Path(cfg.checkpoint.dir or out_dir / "checkpoints")
    check_output_path(ck, inputs=inputs, kind="dir", flag="checkpoint.dir")
    summary = metrics_out or cfg.output.metrics_out or out_dir / "summary.json"
    check_output_path(summary, inputs=inputs, flag="--metrics-out" if metrics_out else "output.metrics_out")
    if cfg.checkpoint.enabled or resume:
        check_fresh_start(ck, resume=resume or is_restart(), overwrite=overwrite_checkpoints)


def compile_dense_part(model: RankingModel, dmp: nn.Module, loader, env: DistEnv) -> bool:  # noqa: ANN001
    """``train.compile``: ``nn.Module.compile()`` (in place: parameter names and checkpoints unchanged) on
    the modules after the embedding lookups (:meth:`RankingModel.dense_children`), then one forward of
    the first training batch (no backward, so no parameter changes) to compile now. Where torch.compile
    fails (no C++ compiler for inductor, an op dynamo cannot trace, ...) the modules go back to eager
    with a warning naming the error, and training goes on. Returns whether the compiled modules run.
    All ranks agree (a failure on any rank reverts every rank)."""
    parts = model.dense_children()
    for m in parts.values():
        m.compile()
    t0 = time.perf_counter()
    err = ""
    try:
        batch = next(iter(loader)).to(env.device)
        dmp(batch)
    except Exception as e:  # noqa: BLE001 - any compile failure falls back to eager
        err = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    failed = torch.tensor([1 if err else 0])
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if int(failed):
        for m in parts.values():
            m._compiled_call_impl = None  # back to eager
        logger.warning("train.compile: torch.compile of %s failed%s; continuing in eager mode", ", ".join(parts),
                       f" ({err})" if err else " on another rank")
        return False
    logger.info("train.compile: compiled %s in %.1f s (first batch)", ", ".join(parts), time.perf_counter() - t0)
    return True


def run(cfg: TrainConfig, *, resume: bool = False, plan_file: Optional[str] = None, metrics_out: Optional[str] = None,
        overwrite_checkpoints: bool = False, config_file: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg`` on this rank (see the module docstring); returns the final summary (every rank).

    ``overwrite_checkpoints``: a fresh run (no ``resume``) deletes the checkpoints in ``checkpoint.dir``
    (only those this code wrote) instead of refusing to start."""
    from store_rec.distributed.benign_warnings import filter_benign_warnings

    check_run_paths(cfg, plan_file=plan_file, metrics_out=metrics_out, resume=resume,
                    overwrite_checkpoints=overwrite_checkpoints, config_file=config_file)
    filter_benign_warnings()
    env = init_distributed()
    try:
        return Trainer(cfg, env, plan_file=plan_file).fit(resume=resume, metrics_out=metrics_out,
                                                          overwrite_checkpoints=overwrite_checkpoints)
    finally:
        if env.owns_group and dist.is_initialized():
            dist.destroy_process_group()
