"""scripts/slice_eval.py: the cold / warm slices of a test split."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq

from store_rec.data.synthetic import prepare_synthetic

ROOT = Path(__file__).resolve().parents[1]


def test_make_slices_splits_test_by_item_seen_in_train(tmp_path):
    spec = importlib.util.spec_from_file_location("slice_eval", ROOT / "scripts" / "slice_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    prepare_synthetic(tmp_path / "ds", rows=6000, items=400, users=100, num_clusters=8, num_user_groups=4, generator="v2")
    info = mod.make_slices(tmp_path / "ds", tmp_path / "sl", "item_id")
    train = set(pq.read_table(tmp_path / "ds" / "train")["item_id"].to_pylist())
    warm = pq.read_table(tmp_path / "sl" / "valid")["item_id"].to_pylist()
    cold = pq.read_table(tmp_path / "sl" / "test")["item_id"].to_pylist()
    assert set(warm) <= train and not set(cold) & train
    assert info == {"warm_rows": len(warm), "cold_rows": len(cold)} and len(cold) > 0
    assert len(warm) + len(cold) == pq.read_table(tmp_path / "ds" / "test").num_rows
    sch = json.loads((tmp_path / "sl" / "schema.json").read_text())
    assert sch["splits"]["test"]["rows"] == len(cold) and (tmp_path / "sl" / "train").is_symlink()
