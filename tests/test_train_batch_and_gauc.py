"""The trainer states the global batch (data.batch_size is per rank), warns when warm-up outlasts training,
and reports no GAUC (not the AUC under GAUC's name) for a dataset without a user key."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from _byod import WIDE_SCHEMA, write_wide_csv

ROOT = Path(__file__).resolve().parents[1]


def test_ranking_metrics_without_user_ids_has_no_gauc():
    from store_rec.train.metrics import auc, ranking_metrics

    rng = np.random.default_rng(0)
    s, y = rng.normal(size=200), (rng.random(200) < 0.3).astype(np.float32)
    m = ranking_metrics(s, y, None)
    assert m["gauc"] is None and m["auc"] == pytest.approx(auc(s, y))
    assert ranking_metrics(s, y, np.arange(200) % 7)["gauc"] is not None


def test_no_user_key_no_gauc_and_global_batch_and_warmup_warning(tmp_path, caplog):
    from store_rec.data.prepare import prepare
    from store_rec.train.config import load_train_config
    from store_rec.train.trainer import run

    write_wide_csv(tmp_path / "w.csv", rows=1500)
    schema = WIDE_SCHEMA.replace("{role: id, user_key: true}", "{role: id}")  # no user key
    (tmp_path / "w.yaml").write_text(schema)
    data = tmp_path / "data"
    ds = prepare("table", str(tmp_path / "w.csv"), data, schema=str(tmp_path / "w.yaml"))
    assert ds.user_key is None
    out = tmp_path / "run"
    ov = [f"data.dir={data}", "data.prepare_if_missing=null", "data.batch_size=100", "data.eval_batch_size=512",
          f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false", "checkpoint.enabled=false",
          "train.epochs=1", "train.eval_every=0", "optim.warmup_steps=50", "model.name=dlrm_dcn", "model.tokenizer=none"]
    with caplog.at_level(logging.INFO, logger="store_rec.train.trainer"):
        s = run(load_train_config(ROOT / "configs" / "smoke.yaml", ov))
    steps = -(-ds.splits["train"].rows // 100)
    assert s["steps"] == steps < 50
    assert s["global_batch_size"] == 100 and s["batch_size_per_rank"] == 100 and s["world_size"] == 1
    msgs = [r.getMessage() for r in caplog.records]
    assert any(f"global batch 100 = data.batch_size 100 (per rank) x 1 rank(s); {steps} steps per epoch" in m for m in msgs)
    assert any(f"optim.warmup_steps = 50 exceeds the {steps} training steps" in m for m in msgs)
    # no user key: GAUC is absent everywhere, not equal to the AUC
    assert s["auc"] is not None and s["gauc"] is None
    assert all(r["gauc"] is None for r in s["final"].values())
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs and all(r["gauc"] is None for r in recs)
    assert any("gauc n/a (no user key)" in m for m in msgs)
