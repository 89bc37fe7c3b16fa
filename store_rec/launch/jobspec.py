"""What store_rec's torchx components decide beyond ``torchx.components.dist.ddp``.

* **Which scheduler.** A torchx component is called before torchx picks the scheduler, so
  :func:`cli_scheduler` reads it the way ``torchx run`` does (``-s/--scheduler`` before the component,
  else ``.torchxconfig``'s ``[cli:run] scheduler``, else torchx's default, ``local_cwd``) when the
  component runs under the ``torchx`` CLI, and returns None otherwise (the Python API: pass
  ``checkpoint_dir`` yourself and call with ``max_retries`` as documented below).
* **Resources** (:func:`resources`): ``cpu`` / ``memMB`` default from ``gpu`` -- per GPU
  ``CPUS_PER_GPU`` CPUs and ``MEM_MB_PER_GPU`` MB (10 CPUs, 64 GiB: an 8-GPU pod asks 80 CPUs and
  512 GiB, which fits the common 8-GPU nodes: p4d/p5, a2-highgpu-8g / a3, ND96, DGX), and per rank
  on CPU jobs ``CPUS_PER_CPU_RANK`` CPUs and ``MEM_MB_PER_CPU_RANK`` MB.
* **Image** (:func:`default_image`): ``store-rec:<version>-cpu`` / ``-cuda`` (the Dockerfile's tags;
  push it to your registry and pass ``--image REGISTRY/store-rec:...``). Ignored by local_cwd and slurm.
* **Checkpoints** (:func:`checkpoint_dir`): on a cluster scheduler (not ``local*``) the job must write
  checkpoints to a persistent absolute path (a mounted volume / shared file system), else a restart
  has nothing to resume from; a missing or relative ``checkpoint.dir`` is refused at dry-run time.
* **Retries, not compounded** (:func:`retries`): ``max_retries=N`` allows N restarts in one layer.
  local schedulers (and unknown ones): torchrun's elastic agent restarts the ranks (``--max-restarts N``;
  the scheduler's retries stay 0). Cluster schedulers: the scheduler restarts the job (slurm requeues
  it, Volcano restarts the pods -- this also replaces a lost node, which torchrun cannot) and torchrun
  gets ``--max-restarts 0``. Either way at most N + 1 attempts, each with ``--resume``.
* **No local paths** (:func:`launcher`): only on local schedulers may the job fall back to the
  ``torchrun`` next to this Python (an unactivated venv); cluster jobs run ``torchrun`` from the PATH of
  the image / the environment slurm exports.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

CPUS_PER_GPU = 10
MEM_MB_PER_GPU = 64 * 1024
CPUS_PER_CPU_RANK = 2
MEM_MB_PER_CPU_RANK = 4096
DEFAULT_CONFIG = "smoke"  # the shipped configs/smoke.yaml


def cli_scheduler(argv: Optional[Sequence[str]] = None) -> Optional[str]:
    """The scheduler of the ``torchx run`` command this process is running, or None (not the torchx CLI)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return None
    prog = argv[0].replace("\\", "/")
    if not (Path(prog).name == "torchx" or prog.endswith("torchx/cli/main.py")):
        return None
    if "run" not in argv[1:]:
        return None
    # torchx run's own options before the component name (torchx 0.7.0 cmd_run.py); its argparse actions
    # record what they parsed process-wide, so parsing argv again with its parser would fail
    with_value = {"-s", "--scheduler", "-cfg", "--scheduler_args", "--workspace", "--buck-target", "--parent_run_id"}
    rest = argv[argv.index("run", 1) + 1:]
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok in ("-s", "--scheduler"):
            return rest[i + 1] if i + 1 < len(rest) else None
        if tok.startswith("--scheduler="):
            return tok.split("=", 1)[1]
        if tok in with_value:
            i += 2
            continue
        if not tok.startswith("-"):
            break  # the component: everything after it is its own arguments
        i += 1
    from torchx.runner import config
    from torchx.schedulers import get_default_scheduler_name

    return config.get_configs(prefix="cli", name="run").get("scheduler") or get_default_scheduler_name()


def is_local(scheduler: Optional[str]) -> bool:
    """local_cwd / local_docker / local (and None: not known, treated as local)."""
    return scheduler is None or scheduler.startswith("local")


def nproc_per_node(j: str) -> int:
    from torchx.components.dist import parse_nnodes

    return int(parse_nnodes(j)[2])


def resources(j: str, gpu: int, cpu: Optional[int], memMB: Optional[int]) -> Tuple[int, int]:
    """(cpu, memMB) per replica (node): the given values, else sized from ``gpu`` (or the CPU ranks)."""
    if gpu > 0:
        return (cpu if cpu is not None else CPUS_PER_GPU * gpu, memMB if memMB is not None else MEM_MB_PER_GPU * gpu)
    n = nproc_per_node(j)
    return (cpu if cpu is not None else CPUS_PER_CPU_RANK * n, memMB if memMB is not None else MEM_MB_PER_CPU_RANK * n)


def default_image(gpu: int) -> str:
    """The Dockerfile's tag for this version: ``store-rec:<version>-cuda`` when ``gpu`` > 0, else ``-cpu``."""
    from store_rec import __version__

    return f"store-rec:{__version__}-{'cuda' if gpu > 0 else 'cpu'}"


def override_value(script_args: Sequence[str], key: str) -> Optional[str]:
    """The value of the last ``key=value`` override in ``script_args``, or None."""
    val = None
    for a in script_args:
        if a.startswith(f"{key}="):
            val = a.split("=", 1)[1]
    return val


def config_checkpoint_dir(config: Optional[str], script_args: Sequence[str] = ()) -> Optional[str]:
    """The job's ``checkpoint.dir`` as far as it can be known here: an override in ``script_args``, else
    the config's (a file or a shipped preset; default ``<output.dir>/checkpoints``), else None."""
    from store_rec.config import ConfigError, load_yaml

    if override_value(script_args, "checkpoint.dir"):
        return override_value(script_args, "checkpoint.dir")
    data = {}
    if config:
        try:
            data = load_yaml(config)
        except ConfigError:
            data = {}  # e.g. a path that exists only inside the image: the job validates it
    ck = data.get("checkpoint") or {}
    if isinstance(ck, dict) and ck.get("dir"):
        return str(ck["dir"])
    out = override_value(script_args, "output.dir") or ((data.get("output") or {}).get("dir") if config else None)
    return f"{out}/checkpoints" if out else None


def checkpoint_dir(scheduler: Optional[str], given: Optional[str], script_args: Sequence[str],
                   config: Optional[str]) -> Optional[str]:
    """The ``checkpoint.dir`` override to add (``given``), checked for cluster schedulers.

    Raises ValueError (torchx prints it at dry run) when a cluster job's checkpoint dir is missing or relative."""
    if given is not None and override_value(script_args, "checkpoint.dir") is not None:
        raise ValueError("give the checkpoint directory once: --checkpoint_dir or checkpoint.dir=... after `--`, not both")
    if config is None and "--config" in script_args:
        i = list(script_args).index("--config")
        config = script_args[i + 1] if i + 1 < len(script_args) else None
    effective = given or config_checkpoint_dir(config, script_args)
    if is_local(scheduler):
        return given
    if not effective or not effective.startswith("/") or effective.startswith("//"):
        where = f" (the config's checkpoint.dir is {effective!r})" if effective else ""
        raise ValueError(
            f"scheduler {scheduler}: --checkpoint_dir must be an absolute path on persistent storage shared by every "
            f"node and kept across restarts (a mounted volume, e.g. --mounts type=bind,src=/mnt/ckpt,dst=/mnt/ckpt "
            f"and --checkpoint_dir /mnt/ckpt/<run>){where}: a relative path lands on the pod's / node's ephemeral "
            f"disk, so a restarted job has nothing to resume")
    return given


def retries(scheduler: Optional[str], max_retries: int) -> Tuple[int, int]:
    """(torchrun --max-restarts, scheduler max_retries): the N restarts live in one layer (module docstring)."""
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    return (max_retries, 0) if is_local(scheduler) else (0, max_retries)


def launcher(scheduler: Optional[str], cmd: str, max_restarts: int) -> str:
    """ddp's ``torchrun ...`` command with ``--max-restarts`` and, on local schedulers only, a fallback to
    the torchrun of this Python when the job's PATH has none (``$$`` is torchx's escape of ``$``)."""
    if not cmd.startswith("torchrun "):
        raise RuntimeError(f"unexpected torchx ddp command (torchx != 0.7.0?): {cmd[:80]}")
    exe = "torchrun"
    here = Path(sys.executable).parent / "torchrun"
    if is_local(scheduler) and shutil.which("torchrun") is None and here.exists():
        exe = f'"$$(command -v torchrun || echo {shlex.quote(str(here))})"'
    return f"{exe} --max-restarts {max_restarts} " + cmd[len("torchrun "):]


def script(config: Optional[str], script_args: Sequence[str]) -> List[str]:
    """``--config CONFIG`` (default: the shipped smoke config) + script args, config given once."""
    if config is not None and "--config" in script_args:
        raise ValueError("give the training config once: --config before `--` or after it, not both")
    if config is None and "--config" not in script_args:
        config = DEFAULT_CONFIG
    return [*(["--config", config] if config is not None else []), *script_args]
