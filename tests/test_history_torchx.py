"""Issue 13 through the user's launcher: ``torchx run -s local_cwd store_rec/launch/components.py:train -j 1x2``
with history tokens (STORE, MoBA over 8 history items + the recency key, EC sharded over both ranks)
trains, checkpoints, and a second torchx job (``-- ... --resume``) started on a copy of a mid-run checkpoint resumes and ends with the uninterrupted job's metrics exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torchx")


def _overrides(data: Path, out: Path) -> List[str]:
    return [f"data.dir={data}", "data.prepare_if_missing=null", "data.batch_size=64", "data.eval_batch_size=256",
            "data.history_len=8", f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false",
            "checkpoint.every_steps=4", "checkpoint.keep=20", "train.epochs=2", "train.eval_every=0",
            "model.attention.num_layers=1", "model.attention.block_size=4", "model.history.enabled=true",
            "model.history.max_len=8", "model.history.item_tokens=id", "model.history.side=[hist_gap]",
            "sharding.sharding_types=[table_wise]", "sharding.tables.t_hist_item_id.sharding_types=[row_wise]"]


def _torchx_train(data: Path, out: Path, *extra: str) -> dict:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    summary = out / "summary.json"
    cmd = [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd",
           f"{ROOT}/store_rec/launch/components.py:train", "--config", "smoke", "--j", "1x2",
           "--checkpoint_dir", str(out / "ck"), "--", *_overrides(data, out), "--metrics-out", str(summary), *extra]
    r = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and summary.exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(summary.read_text())


def test_torchx_two_ranks_with_history_trains_and_resumes(tmp_path):
    from store_rec.data.synthetic import prepare_synthetic

    data = tmp_path / "data"
    prepare_synthetic(data, rows=1200, items=80, users=40, seed=0, num_clusters=4, history_len=8)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir()
    a = _torchx_train(data, full)
    assert a["world_size"] == 2 and a["steps"] > 4 and 0.0 < a["auc"] < 1.0
    (resumed / "ck").mkdir(parents=True)
    shutil.copytree(full / "ck" / "step-4", resumed / "ck" / "step-4")
    b = _torchx_train(data, resumed, "--resume")
    assert b["resumed_checkpoint_step"] == 4 and b["steps"] == a["steps"]
    for key in ("auc", "gauc", "logloss"):
        assert a[key] == b[key], (key, a[key], b[key])
