"""Training speed options and observability in one small single-process run: bf16 autocast, the
torch.compile fallback (torch.compile made to fail: training goes on in eager mode with a warning),
the profiler trace, the SGD table optimizer; TensorBoard gets each LR / auxiliary loss / throughput /
orthogonality error / NE; config.yaml holds the resolved config; without a terminal, log lines
replace the bar. Speed itself is measured by `store-rec bench speed`, not here."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from store_rec.config import load_yaml, to_dict
from store_rec.errors import UserError
from store_rec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def _tb_tags(d: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(d))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_bf16_compile_fallback_profiler_sgd_and_observability(tmp_path, monkeypatch, caplog):
    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.train.trainer import run

    def broken_compile(*a, **k):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler (simulated)")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    data = tmp_path / "data"
    prepare_synthetic(data, rows=2500, items=100, users=60, seed=0, num_clusters=4)
    out = tmp_path / "run"
    cfg = load_train_config(ROOT / "configs" / "smoke.yaml", [
        f"data.dir={data}", "data.prepare_if_missing=null", "data.batch_size=128", f"output.dir={out}",
        "checkpoint.enabled=false", "train.max_steps=10", "train.log_every=5", "model.attention.num_layers=1",
        "train.precision=bf16", "train.compile=true", "train.profile_steps=2", "train.profile_skip=1",
        "optim.sparse.type=sgd", "optim.sparse.lr=0.1"])
    with caplog.at_level(logging.INFO, logger="store_rec"):
        s = run(cfg)
    assert s["precision"] == "bf16" and s["compiled"] is False and s["steps"] == 10
    assert 0.3 < s["auc"] < 1.0 and s["logloss"] < 0.8
    msgs = [r.getMessage() for r in caplog.records]
    assert any("train.compile: torch.compile of" in m and "no C++ compiler (simulated)" in m and "eager" in m for m in msgs)
    # no terminal under pytest: a log line every log_every steps instead of a bar
    assert any(m.startswith("step 5/10 (50%) epoch 0: logloss") and "lr dense" in m and "samples/s" in m for m in msgs)
    assert (out / "profile" / "rank0.json").stat().st_size > 0
    assert load_yaml(out / "config.yaml") == to_dict(cfg)  # the resolved config, every key
    tags = _tb_tags(out / "tb")
    assert {"lr/dense", "lr/rotation", "lr/sparse", "train/aux/diversity", "rotation/orthogonality_error",
            "throughput/train_samples_per_s_rank0", "valid/ne", "valid/calibration", "valid/eval_samples_per_s"} <= tags


def test_cpu_refuses_cuda_only_options(tmp_path):
    from store_rec.train.trainer import run

    base = [f"data.dir={tmp_path / 'd'}", f"output.dir={tmp_path / 'o'}", "checkpoint.enabled=false", "train.max_steps=1"]
    with pytest.raises(UserError, match=r"optim.sparse.type: 'adam' is fused on CUDA only"):
        run(load_train_config(ROOT / "configs" / "smoke.yaml", [*base, "optim.sparse.type=adam"]))
    with pytest.raises(UserError, match=r"sharding.qcomms: quantized comms .* need CUDA \+ NCCL"):
        run(load_train_config(ROOT / "configs" / "smoke.yaml", [*base, "sharding.qcomms={forward: fp16, backward: bf16}"]))
