"""torchx components: AppDef shape, and dry runs on local_cwd / slurm / kubernetes whose job specs are
checked field by field (image, resources, retries, checkpoint dir, no local paths)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHX = [sys.executable, "-m", "torchx.cli.main"]


def _torchx(*args, cwd=ROOT):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([*TORCHX, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_component_appdef():
    from store_rec import __version__
    from store_rec.launch.components import train

    # called from Python (not the torchx CLI): the scheduler is unknown and treated as local
    app = train("--metrics-out", "m.json", "train.epochs=1", config="configs/smoke.yaml", j="2x4", max_retries=3)
    role = app.roles[0]
    assert role.num_replicas == 2 and role.max_retries == 0  # the 3 restarts are torchrun's, not also the scheduler's
    args = " ".join(role.args)
    assert "--nnodes 2" in args and "--nproc_per_node 4" in args
    assert "-m store_rec.train --config configs/smoke.yaml --metrics-out m.json train.epochs=1 --resume" in args
    assert "--max-restarts 3 " in args
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    # CPU job: 2 CPUs and 4 GiB per rank, the CPU image
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (8, 0, 16384)
    assert role.image == f"store-rec:{__version__}-cpu"
    no_retry = train()
    assert "--max-restarts 0 " in no_retry.roles[0].args[-1] and "--resume" not in no_retry.roles[0].args[-1]
    assert "--config smoke " in no_retry.roles[0].args[-1] + " "  # the shipped smoke config by default
    gpu = train(j="2x8", gpu=8).roles[0]  # 10 CPUs and 64 GiB per GPU, the CUDA image
    assert (gpu.resource.cpu, gpu.resource.gpu, gpu.resource.memMB) == (80, 8, 8 * 65536)
    assert gpu.image == f"store-rec:{__version__}-cuda"
    mine = train(j="1x8", gpu=8, cpu=32, memMB=1000, image="reg/x:1").roles[0]
    assert (mine.resource.cpu, mine.resource.memMB, mine.image) == (32, 1000, "reg/x:1")
    with pytest.raises(ValueError, match="once"):
        train("checkpoint.dir=/a", checkpoint_dir="/b")


def test_scheduler_of_the_torchx_command():
    from store_rec.launch.jobspec import cli_scheduler

    tx = "/venv/bin/torchx"
    assert cli_scheduler(["pytest", "-s", "kubernetes"]) is None  # not torchx: unknown
    assert cli_scheduler([tx, "run", "-s", "kubernetes", "-cfg", "queue=q", "store_rec.train"]) == "kubernetes"
    assert cli_scheduler([tx, "run", "--dryrun", "--scheduler=slurm", "store_rec.train"]) == "slurm"
    assert cli_scheduler([tx, "run", "--workspace", "", "--dryrun", "--scheduler", "slurm", "c.py:train"]) == "slurm"
    # -s after the component is the component's (or the app's) argument, not torchx's
    assert cli_scheduler([tx, "run", "--dryrun", "store_rec.train", "--", "-s", "slurm"]) != "slurm"


def _request(out: str) -> str:
    assert "=== SCHEDULER REQUEST ===" in out, out[-3000:]
    return out.split("=== SCHEDULER REQUEST ===", 1)[1]


def test_dryrun_local_default_from_torxconfig():
    r = _torchx("run", "--dryrun", "launch/components.py:train", "--", "--metrics-out", "m.json")
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "local_cwd" in out and "store_rec.train" in out and "--nproc_per_node 2" in out


# the README's commands (launch/README.md), run from a directory outside the checkout by component name
K8S = ["run", "--dryrun", "-s", "kubernetes", "-cfg", "queue=default,namespace=default", "--workspace", "",
       "store_rec.train", "--config", "store_synthetic", "--j", "2x8", "--gpu", "8", "--max_retries", "2",
       "--checkpoint_dir", "/mnt/ckpt/run1", "--mounts", "type=bind,src=/mnt/ckpt,dst=/mnt/ckpt",
       "--image", "registry.example.com/store-rec:0.2.0-cuda"]
SLURM = ["run", "--dryrun", "-s", "slurm", "store_rec.train", "--config", "store_synthetic", "--j", "2x8", "--gpu", "8",
         "--max_retries", "2", "--checkpoint_dir", "/shared/ckpt/run1"]


def _outside(tmp_path, *args):
    return _torchx(*args, cwd=tmp_path)


def test_dryrun_kubernetes_spec_values(tmp_path):
    import yaml

    r = _outside(tmp_path, *K8S)
    out = r.stdout + r.stderr
    if r.returncode != 0 and "No module named 'kubernetes'" in out:
        pytest.skip("kubernetes python client not installed (bash scripts/setup.sh installs it)")
    assert r.returncode == 0, out
    assert "DockerException" not in out
    job = yaml.safe_load(_request(r.stdout))
    spec = job["spec"]
    assert spec["maxRetry"] == 2 and len(spec["tasks"]) == 2  # the scheduler's retries: the whole job restarts
    for task in spec["tasks"]:
        c = task["template"]["spec"]["containers"][0]
        assert c["image"] == "registry.example.com/store-rec:0.2.0-cuda"
        assert c["resources"]["limits"] == {"cpu": "80000m", "memory": f"{8 * 65536}M", "nvidia.com/gpu": "8"}
        cmd = c["command"][-1]
        assert cmd.startswith("torchrun --max-restarts 0 ")  # no restarts compounded, no local torchrun path
        assert str(Path(sys.executable).parent) not in cmd and str(ROOT) not in cmd
        assert "--nnodes 2 --nproc_per_node 8" in cmd
        assert cmd.endswith("-m store_rec.train --config store_synthetic checkpoint.dir=/mnt/ckpt/run1 --resume")
        assert {"mountPath": "/mnt/ckpt", "name": "mount-0", "readOnly": False} in c["volumeMounts"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_dryrun_slurm_spec_values(tmp_path):
    r = _outside(tmp_path, *SLURM)
    assert r.returncode == 0, r.stdout + r.stderr
    req = _request(r.stdout)
    assert req.count("--cpus-per-task=80 --mem=524288 --gpus-per-task=8") == 2
    assert "export TORCHX_MAX_RETRIES=2" in req and "scontrol requeue" in req
    assert req.count("bash -c 'torchrun --max-restarts 0 ") == 2
    assert str(Path(sys.executable).parent) not in req and str(ROOT) not in req
    assert req.count("-m store_rec.train --config store_synthetic checkpoint.dir=/shared/ckpt/run1 --resume") == 2


@pytest.mark.parametrize("extra, why", [
    ([], "the config's checkpoint.dir is 'runs/store_synthetic/checkpoints'"),
    (["--checkpoint_dir", "runs/ck"], "must be an absolute path"),
    (["--", "checkpoint.dir=ck"], "the config's checkpoint.dir is 'ck'"),
])
def test_dryrun_cluster_refuses_relative_checkpoint_dir(tmp_path, extra, why):
    args = [a for a in SLURM if a not in ("--checkpoint_dir", "/shared/ckpt/run1")] + extra
    r = _outside(tmp_path, *args)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "must be an absolute path on persistent storage" in out and why in out, out[-2000:]


def test_dryrun_local_keeps_restarts_in_torchrun(tmp_path):
    r = _outside(tmp_path, "run", "--dryrun", "-s", "local_cwd", "store_rec.train", "--max_retries", "2")
    assert r.returncode == 0, r.stderr
    assert "--max-restarts 2 " in r.stdout and "'max_retries': 0" in r.stdout and "--config smoke" in r.stdout


def test_tokenize_component_appdef():
    from store_rec.launch.components import tokenize
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
