"""GPU readiness: the smoke config trains on 1 and 2 GPUs with nccl (``pytest -m gpu``; skipped without
enough CUDA devices, so CI on CPU never depends on them), and the backend choice that puts ranks there.

The GPU tests have not run in this project's CI or development sessions (no GPU available);
docs/BENCHMARKS.md records GPU figures only when they were measured."""

import json
import uuid
from pathlib import Path

import pytest
import torch

from store_rec.distributed.env import select_backend
from store_rec.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def needs_gpus(n: int):
    return pytest.mark.skipif(_gpus() < n, reason=f"needs {n} CUDA GPU(s), {_gpus()} visible")


def test_backend_selection():
    assert select_backend(False, 0, 0, 2) == "gloo"
    assert select_backend(True, 2, 1, 2) == "nccl"
    assert select_backend(True, 2, 1, 2, forced="gloo") == "gloo"  # CPU ranks on a GPU host
    with pytest.raises(UserError, match=r"2 ranks per node but 1 GPU\(s\) visible.*--j Nx1"):
        select_backend(True, 1, 1, 2)
    with pytest.raises(UserError, match="no CUDA device"):
        select_backend(False, 0, 0, 1, forced="nccl")
    with pytest.raises(UserError, match="must be gloo or nccl"):
        select_backend(True, 1, 0, 1, forced="mpi")


def _gpu_worker(overrides, metrics_out):
    import torch.distributed as dist

    from store_rec.distributed.env import init_distributed
    from store_rec.train.trainer import run
    from store_rec.train.config import load_train_config

    env = init_distributed()  # the app below uses this group as it is
    try:
        summary = run(load_train_config("smoke", overrides), metrics_out=metrics_out)
        return {"backend": env.backend, "device": str(env.device), "summary": summary}
    finally:
        dist.destroy_process_group()


def _train_on_gpus(tmp_path: Path, nproc: int):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    out = tmp_path / "run"
    ov = [f"data.dir={tmp_path / 'data'}", f"output.dir={out}", f"checkpoint.dir={out}/ck", "output.progress_bar=false",
          "output.tensorboard=false", "train.epochs=1"]
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                       rdzv_endpoint=str(tmp_path / "rdzv"), rdzv_configs={"store_type": "file"}, start_method="spawn",
                       monitor_interval=0.2)
    res = elastic_launch(cfg, _gpu_worker)(ov, str(out / "summary.json"))
    return res, json.loads((out / "summary.json").read_text())


@pytest.mark.gpu
@needs_gpus(1)
def test_smoke_trains_on_one_gpu(tmp_path):
    res, s = _train_on_gpus(tmp_path, 1)
    assert res[0]["backend"] == "nccl" and res[0]["device"] == "cuda:0"
    assert s["world_size"] == 1 and s["steps"] > 0 and 0.5 < s["auc"] <= 1.0
    assert s["rotation_orthogonality_error"] < 1e-4
    print(f"1 GPU: auc {s['auc']:.4f} logloss {s['logloss']:.4f} samples/s {s['samples_per_s']:.0f}")


@pytest.mark.gpu
@needs_gpus(2)
def test_smoke_trains_on_two_gpus(tmp_path):
    res, s = _train_on_gpus(tmp_path, 2)
    assert [r["backend"] for r in res.values()] == ["nccl", "nccl"]
    assert sorted(r["device"] for r in res.values()) == ["cuda:0", "cuda:1"]
    assert res[0]["summary"]["auc"] == res[1]["summary"]["auc"] == s["auc"]  # global metrics on every rank
    assert s["world_size"] == 2 and s["steps"] > 0 and 0.5 < s["auc"] <= 1.0
    print(f"2 GPUs: auc {s['auc']:.4f} logloss {s['logloss']:.4f} samples/s {s['samples_per_s']:.0f}")
