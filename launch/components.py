"""torchx components for store_rec: ``torchx run launch/components.py:train -- --config FILE``.

The component launches the module entry point ``python -m store_rec.train`` on every rank through
``torchx.components.dist.ddp`` (torchrun underneath), so the same AppDef runs on ``local_cwd``
(2 gloo processes on a laptop, the default from ``.torchxconfig``), ``slurm`` and ``kubernetes``.
See ``launch/README.md``.
"""


import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torchx.specs as specs
from torchx.components.dist import ddp

# set to 1 for every job: a restarted gloo rank can otherwise hang (pytorch/pytorch#135712, see the module)
from store_rec.distributed.env import SHARED_STORE_ENV


def train(
    *script_args: str,
    config: Optional[str] = None,
    j: str = "1x2",
    max_retries: int = 0,
    image: str = "ghcr.io/pytorch/torchx:0.7.0",
    name: str = "store-rec-train",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    h: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Train STORE or a baseline with ``store-rec train`` on ``j`` = NNODESxNPROC_PER_NODE ranks.

    Every rank runs ``python -m store_rec.train --config CONFIG [script_args...]``; on CPUs the ranks
    talk gloo, on GPUs nccl (chosen by the app from the environment). With ``max_retries >= 1`` a
    failed rank restarts the job (torchrun ``--max-restarts`` on every scheduler, plus the scheduler's
    own retries where it has them), and every attempt runs with ``--resume``: it continues from the
    newest checkpoint in ``checkpoint.dir`` (one written with a different config is refused).

    Args:
        script_args: extra arguments of ``store-rec train`` (``key=value`` overrides,
            ``--metrics-out FILE``, ``--resume``, ``--plan FILE``).
        config: training YAML (``store_rec.train.config.TrainConfig``), relative to the job's cwd;
            may also be given after ``--`` as ``--config FILE``; default ``configs/smoke.yaml``.
        j: ``{nnodes}x{nproc_per_node}`` (e.g. ``1x2``, ``2x8``); ``{min}:{max}x{nproc}`` for elastic.
        max_retries: job restarts after a rank failure (each restart resumes from the last checkpoint).
        image: container image (ignored by ``local_cwd``; slurm uses the current directory/venv).
        name: job name.
        cpu: CPUs per replica (node).
        gpu: GPUs per replica (node); set it to nproc_per_node on GPU clusters.
        memMB: memory per replica in MB.
        h: a named resource (e.g. ``aws_p4d.24xlarge``) instead of cpu/gpu/memMB.
        env: extra environment variables, ``KEY=VALUE,...``.
        rdzv_port: c10d rendezvous port on the first node.
        mounts: mounts for container schedulers (``type=bind,src=/data,dst=/data``).

    Returns:
        the AppDef (one role, ``nnodes`` replicas of torchrun).
    """
    if config is not None and "--config" in script_args:
        raise ValueError("give the training config once: --config before `--` or after it, not both")
    if config is None and "--config" not in script_args:
        config = "configs/smoke.yaml"
    app = ddp(
        *(["--config", config] if config is not None else []), *script_args, *(["--resume"] if max_retries > 0 else []),
        m="store_rec.train", image=image, name=name, h=h, cpu=cpu, gpu=gpu, memMB=memMB, j=j,
        env={SHARED_STORE_ENV: "1", **(env or {})}, max_retries=max_retries, rdzv_port=rdzv_port, mounts=mounts,
    )
    return _launcher(app, max_restarts=max_retries)


def _launcher(app: specs.AppDef, max_restarts: Optional[int] = None) -> specs.AppDef:
    """ddp's role runs ``bash -c "torchrun ..."``: use the torchrun of this Python when the host running
    the job has none on PATH (a venv that is not activated; ``$$`` is torchx's escape of ``$``, the bash
    of the job evaluates ``$(...)``), and with ``max_restarts`` add in-job restarts (torchrun's elastic
    agent restarts all local ranks when one fails; local_cwd ignores the scheduler-level max_retries)."""
    role = app.roles[0]
    launcher = "torchrun"
    here = Path(sys.executable).parent / "torchrun"
    if shutil.which("torchrun") is None and here.exists():
        launcher = f'"$$(command -v torchrun || echo {here})"'
    cmd = role.args[-1]
    if not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected torchx ddp command (torchx != 0.7.0?): {cmd[:80]}")
    restarts = f" --max-restarts {max_restarts}" if max_restarts is not None else ""
    role.args[-1] = f"{launcher}{restarts} " + cmd[len("torchrun "):]
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
    image: str = "ghcr.io/pytorch/torchx:0.7.0",
    name: str = "store-rec-tokenize",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
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
        image: container image (ignored by ``local_cwd``).
        name: job name.
        cpu: CPUs per replica (node).
        gpu: GPUs per replica (node).
        memMB: memory per replica in MB.
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
    app = ddp(
        *args, *script_args, m="store_rec.distributed.tokenizer", image=image, name=name, h=h, cpu=cpu, gpu=gpu,
        memMB=memMB, j=j, env={SHARED_STORE_ENV: "1", **(env or {})}, max_retries=0, rdzv_port=rdzv_port,
        mounts=mounts,
    )
    return _launcher(app)
