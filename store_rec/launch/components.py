"""torchx components of store_rec: ``torchx run [-s SCHEDULER] store_rec.train --config NAME_OR_FILE``.

Installed with store_rec (entry point ``torchx.components``: ``store_rec.train``, ``store_rec.tokenize``);
in a checkout also ``torchx run launch/components.py:train`` (a link to this file).

Each component launches a module entry point (``python -m store_rec.train``) on every rank through
``torchx.components.dist.ddp`` (torchrun underneath), so the same AppDef runs on ``local_cwd``
(2 gloo processes on a laptop), ``slurm`` and ``kubernetes``. What the components add to ddp --
image, resources sized from ``--gpu``, the persistent ``checkpoint.dir`` rule, retries in one layer,
no local paths in cluster specs -- is in :mod:`store_rec.launch.jobspec`. See ``launch/README.md``.
"""

from typing import Dict, List, Optional

import torchx.components.dist as _dist
import torchx.specs as specs

from store_rec.launch import jobspec as _jobspec

# set to 1 for every job: a restarted gloo rank can otherwise hang (pytorch/pytorch#135712, see the module)
from store_rec.distributed.env import SHARED_STORE_ENV


def train(
    *script_args: str,
    config: Optional[str] = None,
    j: str = "1x2",
    max_retries: int = 0,
    checkpoint_dir: Optional[str] = None,
    image: Optional[str] = None,
    name: str = "store-rec-train",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train STORE or a baseline with ``store-rec train`` on ``j`` = NNODESxNPROC_PER_NODE ranks.

    Every rank runs ``python -m store_rec.train --config CONFIG [script_args...]``; on CPUs the ranks
    talk gloo, on GPUs nccl (chosen by the app from the environment). With ``max_retries`` N >= 1 the
    job may restart N times -- by torchrun on local schedulers, by the scheduler on clusters, never
    both -- and every attempt runs with ``--resume``: it continues from the newest checkpoint in
    ``checkpoint.dir`` (one written with a different config is refused).

    Args:
        script_args: extra arguments of ``store-rec train`` (``key=value`` overrides,
            ``--metrics-out FILE``, ``--resume``, ``--plan FILE``).
        config: training YAML (``store_rec.train.config.TrainConfig``): a file relative to the job's cwd
            or a shipped config name (``smoke``, ``store_synthetic``, ``configs/smoke.yaml``); may also
            be given after ``--`` as ``--config FILE``; default ``smoke``.
        j: ``{nnodes}x{nproc_per_node}`` (e.g. ``1x2``, ``2x8``); ``{min}:{max}x{nproc}`` for elastic.
        max_retries: job restarts after a failure (each restart resumes from the last checkpoint);
            torchrun ``--max-restarts`` on local schedulers, the scheduler's retries on clusters.
        checkpoint_dir: ``checkpoint.dir`` of the job; required on cluster schedulers (slurm,
            kubernetes, ...) as an absolute path on storage every node shares and that outlives the job.
        image: container image with store_rec installed (default ``store-rec:<version>-cpu``, or
            ``-cuda`` when ``gpu`` > 0: the Dockerfile's tags); ignored by local_cwd and slurm.
        name: job name.
        cpu: CPUs per replica (node); default 10 per GPU, or 2 per rank without GPUs.
        gpu: GPUs per replica (node); set it to nproc_per_node on GPU clusters.
        memMB: memory per replica in MB; default 65536 per GPU, or 4096 per rank without GPUs.
        h: a named resource (e.g. ``aws_p4d.24xlarge``) instead of cpu/gpu/memMB.
        env: extra environment variables, ``KEY=VALUE,...``.
        rdzv_port: c10d rendezvous port on the first node.
        mounts: mounts for container schedulers (``type=bind,src=/data,dst=/data``).

    Returns:
        the AppDef (one role, ``nnodes`` replicas of torchrun).
    """
    scheduler = _jobspec.cli_scheduler()
    args = _jobspec.script(config, script_args)
    ck = _jobspec.checkpoint_dir(scheduler, checkpoint_dir, args, config)
    restarts, sched_retries = _jobspec.retries(scheduler, max_retries)
    cpu_, mem_ = _jobspec.resources(j, gpu, cpu, memMB)
    app = _dist.ddp(
        *args, *([f"checkpoint.dir={ck}"] if ck else []), *(["--resume"] if max_retries > 0 else []),
        m="store_rec.train", image=image or _jobspec.default_image(gpu), name=name, h=h, cpu=cpu_, gpu=gpu,
        memMB=mem_, j=j, env={SHARED_STORE_ENV: "1", **(env or {})}, max_retries=sched_retries,
        rdzv_port=rdzv_port, mounts=mounts,
    )
    role = app.roles[0]
    role.args[-1] = _jobspec.launcher(scheduler, role.args[-1], restarts)
    return app


def tokenize(
    *script_args: str,
    embeddings: str,
    out: str,
    report: Optional[str] = None,
    method: str = "opmq",
    num_sids: int = 3,
    codebook_size: int = 16,
    config: Optional[str] = None,
    steps: Optional[int] = None,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    dedup: bool = False,
    item_feature: Optional[str] = None,
    j: str = "1x2",
    image: Optional[str] = None,
    name: str = "store-rec-tokenize",
    cpu: Optional[int] = None,
    gpu: int = 0,
    memMB: Optional[int] = None,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Offline data-parallel tokenizer (OPMQ / RQ-VAE / OPQ) on ``j`` = NNODESxNPROC_PER_NODE ranks.

    Every rank runs ``python -m store_rec.distributed.tokenizer``: it reads its shard of EMBEDDINGS, the
    tokenizer trains data-parallel (identical state on every rank, checked), each rank encodes its shard
    and rank 0 writes the complete SID table OUT and the REPORT (from all-reduced statistics).

    The arguments below become flags of ``python -m store_rec.distributed.tokenizer``. They are a subset
    of ``store-rec tokenize``'s (EMB.parquet input only: no ``--ids`` / ``--positional-ids`` / ``--dim`` /
    ``--data`` / ``--save-model``; flags defined once in ``store_rec.tokenizer.flags``) plus ``epochs`` and
    ``batch_size`` per rank.

    Args:
        script_args: extra arguments of ``store_rec.distributed.tokenizer``.
        embeddings: EMB.parquet (item, embedding), relative to the job's cwd.
        out: SIDS.parquet written by rank 0 (atomically).
        report: report JSON written by rank 0.
        method: opmq, rqvae or opq.
        num_sids: K, SIDs per item.
        codebook_size: C, codewords per codebook.
        config: YAML with model:/train:/opq: sections (as ``store-rec tokenize --config``).
        steps: training steps per rank (overrides train.steps).
        epochs: epochs over each rank's shard (overrides train.epochs).
        batch_size: per-rank batch size (overrides train.batch_size).
        seed: train.seed.
        dedup: add the sid_dedup disambiguation column.
        item_feature: item feature name (default: from the EMB metadata).
        j: ``{nnodes}x{nproc_per_node}`` (e.g. ``1x2``, ``2x8``).
        image: container image with store_rec installed (default ``store-rec:<version>-cpu`` / ``-cuda``).
        name: job name.
        cpu: CPUs per replica (node); default sized from ``gpu`` as in :func:`train`.
        gpu: GPUs per replica (node).
        memMB: memory per replica in MB; default sized from ``gpu`` as in :func:`train`.
        h: a named resource instead of cpu/gpu/memMB.
        env: extra environment variables, ``KEY=VALUE,...``.
        rdzv_port: c10d rendezvous port on the first node.
        mounts: mounts for container schedulers (``type=bind,src=/data,dst=/data``).

    Returns:
        the AppDef (one role, ``nnodes`` replicas of torchrun).
    """
    args = ["--embeddings", embeddings, "--out", out, "--method", method, "--num-sids", str(num_sids),
            "--codebook-size", str(codebook_size)]
    for flag, value in (("--report", report), ("--config", config), ("--steps", steps), ("--epochs", epochs),
                        ("--batch-size", batch_size), ("--seed", seed), ("--item-feature", item_feature)):
        if value is not None:
            args += [flag, str(value)]
    if dedup:
        args.append("--dedup")
    cpu_, mem_ = _jobspec.resources(j, gpu, cpu, memMB)
    app = _dist.ddp(
        *args, *script_args, m="store_rec.distributed.tokenizer", image=image or _jobspec.default_image(gpu), name=name,
        h=h, cpu=cpu_, gpu=gpu, memMB=mem_, j=j, env={SHARED_STORE_ENV: "1", **(env or {})}, max_retries=0,
        rdzv_port=rdzv_port, mounts=mounts,
    )
    role = app.roles[0]
    role.args[-1] = _jobspec.launcher(_jobspec.cli_scheduler(), role.args[-1], 0)
    return app
