"""Really across nodes: two torchrun agents on this machine act as two nodes (c10d rendezvous over
127.0.0.1; a "host" is an agent and the ranks it starts), train with a sharding plan that depends on
the ranks per host, lose a whole node mid-training and resume.

What runs (not a dry run): ``python -m torch.distributed.run --nnodes 2 --nproc-per-node N --rdzv-backend
c10d --rdzv-endpoint 127.0.0.1:PORT --max-restarts 1 -m store_rec.train ... --resume`` twice, the way the
torchx component launches a 2-node job (every attempt with ``--resume``, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).

* Plan: ``store-rec plan --topology cpu_gloo`` with ``local_world_size = N`` and strategy ``table_row_wise``:
  each table's row shards live on the ranks of one host (ranks {0..N-1} or {N..2N-1}); the job loads it with
  ``--plan`` and refuses it if its own ranks per host differ (``store_rec.distributed.plan_io.check_plan``).
  table_row_wise runs on CPU / gloo (reduce-scatter; docs/ROW_WISE_CPU.md), so ``2x2`` shards every table
  over the 2 ranks of a host; with ``2x1`` (one rank per host) the same strategy degenerates to whole tables.
* Node failure: once checkpoint ``step-10`` exists, node 1's agent and all its ranks are SIGKILLed at once
  (the "host" is gone). Node 0's ranks fail on the broken collective, its agent (max_restarts
  1) re-enters the rendezvous; a fresh agent for node 1 (what slurm / Volcano do when they replace a node)
  joins it, and all ranks resume from the newest complete checkpoint and finish every step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROWS = 2000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from store_rec.data.synthetic import prepare_synthetic

    d = tmp_path_factory.mktemp("mn") / "tiny"
    prepare_synthetic(d, rows=ROWS, items=100, users=60, seed=0, num_clusters=4)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(data_dir: Path, out: Path, nproc: int) -> Path:
    from store_rec.cli import main

    rc = main(["plan", "--config", "smoke", "--topology", "cpu_gloo", "--topology-set", f"local_world_size={nproc}",
               "--world-sizes", str(2 * nproc), "--strategy", "table_row_wise", "--out", str(out),
               f"data.dir={data_dir}", "data.prepare_if_missing=null"])
    assert rc == 0
    return out / f"plan_ws{2 * nproc}_table_row_wise.json"


def _agent(node: int, nproc: int, port: int, run_id: str, train_args, log: Path) -> subprocess.Popen:
    conf = f"is_host={int(node == 0)},join_timeout=60,last_call_timeout=1,keep_alive_interval=1,keep_alive_max_attempt=2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", str(nproc),
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", run_id, "--rdzv-conf", conf,
           "--max-restarts", "1", "--monitor-interval", "0.2", "-m", "store_rec.train", *train_args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "LOGLEVEL": "WARNING"}
    return subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _descendants(pid: int):
    """Every live process below ``pid`` (torchrun starts each rank in its own session, so the agent's
    process group does not hold them)."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_node(p: subprocess.Popen) -> None:
    """SIGKILL a node: the agent and every process it started, at once."""
    for pid in [*_descendants(p.pid), p.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


@pytest.mark.parametrize("nproc", [1, 2], ids=["2x1", "2x2"])
def test_two_nodes_lose_one_and_resume(data_dir, tmp_path, nproc):
    plan_file = _plan(data_dir, tmp_path / "plan", nproc)
    plan = json.loads(plan_file.read_text())
    assert plan["world_size"] == 2 * nproc and plan["local_world_size"] == nproc
    hosts = [set(range(nproc)), set(range(nproc, 2 * nproc))]
    for t, e in plan["plan"].items():
        assert e["sharding_type"] == "table_row_wise", (t, e)
        ranks = {s["rank"] for s in e["shards"]}
        assert any(ranks <= h for h in hosts), f"{t}: shards on {ranks} span hosts {hosts}"
        if nproc == 2 and max(s["sizes"][0] for s in e["shards"]) >= 4:
            assert len(ranks) == 2, f"{t}: row shards over both ranks of its host expected, got {ranks}"

    out = tmp_path / "run"
    summary = out / "summary.json"
    batch = 32 // (2 * nproc)  # 32 samples per step on either world size: ~50 steps per epoch
    train_args = ["--config", "smoke", f"data.dir={data_dir}", "data.prepare_if_missing=null",
                  f"data.batch_size={batch}", "data.eval_batch_size=256", "train.epochs=2", "train.eval_every=0",
                  "train.log_every=1000", f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false",
                  f"checkpoint.dir={out}/ck", "checkpoint.every_steps=10", "checkpoint.keep=2",
                  "--plan", str(plan_file), "--metrics-out", str(summary), "--resume"]
    port, run_id = _free_port(), f"mn-{uuid.uuid4().hex[:8]}"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    node0 = _agent(0, nproc, port, run_id, train_args, logs[0])
    node1 = _agent(1, nproc, port, run_id, train_args, logs[1])
    procs = [node0, node1]
    try:
        t0 = time.time()
        while not (out / "ck" / "step-10").is_dir():  # a complete checkpoint (written under a temp name, renamed)
            assert node0.poll() is None and node1.poll() is None, "a node exited before the first checkpoint:\n" + \
                logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
            assert time.time() - t0 < 120, "no checkpoint after 120 s"
            time.sleep(0.05)
        _kill_node(node1)  # node 1 is lost: its agent and its ranks
        assert not summary.exists(), "the run finished before the node was killed: make it longer"
        killed_after = sorted(p.name for p in (out / "ck").iterdir() if p.name.startswith("step-"))
        node1b = _agent(1, nproc, port, run_id, train_args, logs[1])  # the replacement node
        procs.append(node1b)
        for p in (node0, node1b):
            assert p.wait(timeout=150) == 0, logs[0].read_text()[-4000:] + "\n---\n" + logs[1].read_text()[-4000:]
    finally:
        for p in procs:
            if p.poll() is None:
                _kill_node(p)

    s = json.loads(summary.read_text())
    resumed = s["resumed_from_step"]
    steps_done = max(int(n.split("-")[1]) for n in killed_after)
    assert s["world_size"] == 2 * nproc
    assert resumed is not None and resumed >= 10 and resumed >= steps_done, (resumed, killed_after)
    total = s["steps"]
    assert resumed < total, "resumed at the end: the failure happened too late to test anything"
    assert s["epochs_completed"] == 2
    assert 0.5 < s["auc"] <= 1.0 and 0 < s["logloss"] < 0.75
    print(f"{2}x{nproc}: lost node 1 after {killed_after[-1]}, resumed from step {resumed}, finished {total} steps; "
          f"test auc {s['auc']:.6f} logloss {s['logloss']:.6f}")
