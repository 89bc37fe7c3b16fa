"""torchx component: AppDef shape, and dry runs on local_cwd / slurm / kubernetes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHX = [sys.executable, "-m", "torchx.cli.main"]


def _torchx(*args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([*TORCHX, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_component_appdef():
    sys.path.insert(0, str(ROOT))
    try:
        from launch.components import train
    finally:
        sys.path.pop(0)
    app = train("--metrics-out", "m.json", "train.epochs=1", config="configs/smoke.yaml", j="2x4", max_retries=3)
    role = app.roles[0]
    assert role.num_replicas == 2 and role.max_retries == 3
    args = " ".join(role.args)
    assert "--nnodes 2" in args and "--nproc_per_node 4" in args
    assert "-m store_rec.train --config configs/smoke.yaml --metrics-out m.json train.epochs=1 --resume" in args
    assert "--max-restarts 3 " in args  # in-job restarts by torchrun's elastic agent, on every scheduler
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    no_retry = " ".join(train(config="configs/smoke.yaml").roles[0].args)
    assert "--max-restarts 0 " in no_retry and "--resume" not in no_retry


def test_dryrun_local_default_from_torxconfig():
    r = _torchx("run", "--dryrun", "launch/components.py:train", "--", "--metrics-out", "m.json")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "local_cwd" in out and "store_rec.train" in out and "--nproc_per_node 2" in out


@pytest.mark.parametrize("scheduler", ["slurm", "kubernetes"])
def test_dryrun_multinode(scheduler):
    cfg = ["-cfg", "queue=default,namespace=default"] if scheduler == "kubernetes" else []
    r = _torchx("run", "--workspace", "", "--dryrun", "-s", scheduler, *cfg, "launch/components.py:train", "--config", "configs/store_synthetic.yaml",
                "--j", "2x8", "--gpu", "8", "--max_retries", "2")
    out = r.stdout + r.stderr
    if scheduler == "kubernetes" and r.returncode != 0 and "No module named 'kubernetes'" in out:
        pytest.skip("kubernetes python client not installed: " + out.strip().splitlines()[-1])
    assert r.returncode == 0, out
    assert "store_rec.train" in out and "--nnodes 2" in out and "--nproc_per_node 8" in out
    if scheduler == "slurm":
        assert "sbatch" in out or "srun" in out
    else:
        assert "maxRetry: 2" in out or "max_retries" in out or "maxRetry" in out


def test_tokenize_component_appdef():
    sys.path.insert(0, str(ROOT))
    try:
        from launch.components import tokenize
    finally:
        sys.path.pop(0)
    app = tokenize(embeddings="emb.parquet", out="sids.parquet", report="r.json", method="rqvae", num_sids=8,
                   codebook_size=64, config="tok.yaml", steps=500, seed=3, dedup=True, j="2x4")
    role = app.roles[0]
    assert role.num_replicas == 2 and app.name == "store-rec-tokenize"
    args = " ".join(role.args)
    assert "--nnodes 2" in args and "--nproc_per_node 4" in args
    assert ("-m store_rec.distributed.tokenizer --embeddings emb.parquet --out sids.parquet --method rqvae "
            "--num-sids 8 --codebook-size 64 --report r.json --config tok.yaml --steps 500 --seed 3 --dedup") in args
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    plain = " ".join(tokenize(embeddings="e.parquet", out="s.parquet").roles[0].args)
    assert "--method opmq --num-sids 3 --codebook-size 16" in plain
    assert "--dedup" not in plain and "--report" not in plain and "--steps" not in plain
    # every flag the component passes is one the module's parser accepts (same names as store-rec tokenize)
    from store_rec.distributed.tokenizer import build_parser
    tail = args.split("-m store_rec.distributed.tokenizer ", 1)[1].split()
    ns = build_parser().parse_args(tail)
    assert (ns.method, ns.num_sids, ns.codebook_size, ns.steps, ns.seed, ns.dedup) == ("rqvae", 8, 64, 500, 3, True)


def test_tokenize_component_dryrun_local():
    r = _torchx("run", "--dryrun", "-s", "local_cwd", "launch/components.py:tokenize", "--embeddings", "emb.parquet",
                "--out", "sids.parquet", "--num_sids", "3", "--codebook_size", "16", "--dedup", "True")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "local_cwd" in out and "store_rec.distributed.tokenizer" in out and "--nproc_per_node 2" in out
    assert "--num-sids 3" in out and "--dedup" in out
