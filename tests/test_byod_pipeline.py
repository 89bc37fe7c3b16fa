"""Bring your own data, end to end through the generic prepare only: `data prepare table` -> `pretrain`
-> `tokenize` -> train STORE and a baseline (one in-process rank, a few steps), on a generated
interaction log and on a generated wide CSV."""

import json
from pathlib import Path

import numpy as np
import pytest

from _byod import LOG_SCHEMA, WIDE_SCHEMA, write_interaction_log, write_wide_csv

ROOT = Path(__file__).resolve().parents[1]


def _train(data: Path, out: Path, *extra: str):
    from store_rec.train.trainer import run
    from store_rec.train.config import load_train_config

    ov = [f"data.dir={data}", "data.prepare_if_missing=null", "data.batch_size=256", "data.eval_batch_size=1024",
          f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false", "checkpoint.enabled=false",
          "train.epochs=1", "train.eval_every=0", "optim.warmup_steps=2", "model.attention.num_layers=1", *extra]
    return run(load_train_config(ROOT / "configs" / "smoke.yaml", ov))


@pytest.mark.parametrize("kind", ["interactions", "wide"])
def test_prepare_pretrain_tokenize_train(tmp_path, kind):
    from store_rec.cli import main
    from store_rec.data.schema import DatasetSchema

    src, schema = tmp_path / f"{kind}.csv", tmp_path / f"{kind}.yaml"
    if kind == "interactions":
        write_interaction_log(src)
        schema.write_text(LOG_SCHEMA)
        item = "item"
    else:
        write_wide_csv(src)
        schema.write_text(WIDE_SCHEMA)
        item = "item_id"
    data = tmp_path / "data"
    assert main(["data", "prepare", "table", "--source", str(src), "--schema", str(schema), "--out", str(data)]) == 0
    ds = DatasetSchema.load(data)
    assert ds.sequences is not None and ds.sequences.item_feature == item
    assert ds.sequences.num_items + 1 == ds.feature(item).vocab_size
    sanity = json.loads((data / "sanity.json").read_text())
    assert sanity["item_feature"] == item and 0.0 <= sanity["item_popularity_auc"] <= 1.0
    assert sanity["users"] > 0 and set(sanity["label_rate"]) == {"train", "valid", "test"}

    emb, sids = tmp_path / "emb.parquet", tmp_path / "sids.parquet"
    assert main(["pretrain", "--data", str(data), "--out", str(emb), "--epochs", "3", "--dim", "16",
                 "--max-len", "20"]) == 0
    rep = json.loads(emb.with_suffix(".json").read_text())
    assert rep["exported_items"] == ds.sequences.num_items and not rep["worse_than_chance"]
    assert main(["tokenize", "--embeddings", str(emb), "--method", "opmq", "--num-sids", "2", "--codebook-size", "8",
                 "--out", str(sids), "--data", str(data), "--steps", "30"]) == 0

    store = _train(data, tmp_path / "store", f"data.sid_table={sids}", "model.tokenizer=opmq", f"model.item_feature={item}")
    base = _train(data, tmp_path / "base", "model.name=dlrm_dcn", "model.tokenizer=none")
    for s in (store, base):
        assert s["steps"] >= 5 and np.isfinite(s["logloss"]) and 0.0 <= s["auc"] <= 1.0
        assert np.isfinite(s["gauc"])  # both datasets have a user key
