"""STORE with history tokens end to end on 2 gloo ranks (issue 13): the train app shards the model's
EmbeddingCollection next to its EBC, trains, checkpoints, and a run resumed from a mid-run checkpoint
ends with the uninterrupted run's metrics exactly; ``store-rec predict`` reshards the 2-rank checkpoint
onto one rank and reproduces the run's test metrics; ``store-rec plan`` lists the history tables of the
same config.

Tiny synthetic data with history lists (``history_len=8``), raw-ID history tokens (``item_tokens: id``,
no SID table needed) plus the recency side key, MoBA blocks of 4 items.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest

EC_TABLES = ["t_hist_item_id", "t_hist_gap"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    from store_rec.data.synthetic import prepare_synthetic

    d = tmp_path_factory.mktemp("hist_e2e") / "tiny"
    prepare_synthetic(d, rows=1200, items=80, users=40, seed=0, num_clusters=4, history_len=8)
    return d


def _ov(data_dir: Path, out: Path) -> List[str]:
    # EBC tables table-wise; the history EmbeddingCollection's item table row-wise and its gap table
    # column-wise (each split over both ranks)
    return [f"data.dir={data_dir}", "data.prepare_if_missing=null", "data.batch_size=64", "data.eval_batch_size=256",
            "data.history_len=8", f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false",
            f"checkpoint.dir={out}/ck", "checkpoint.every_steps=4", "checkpoint.keep=20", "train.epochs=2",
            "train.eval_every=0", "model.attention.num_layers=1", "model.attention.block_size=4",
            "model.history.enabled=true", "model.history.max_len=8", "model.history.item_tokens=id",
            "model.history.side=[hist_gap]", "sharding.sharding_types=[table_wise]",
            "sharding.tables.t_hist_item_id.sharding_types=[row_wise]",
            "sharding.tables.t_hist_gap.sharding_types=[column_wise]"]



def _train_then_resume(data_dir: str, full: str, resumed: str, at_step: int) -> Dict[str, Any]:
    """On every rank: the full run, then (same processes, same process group) a copy of its ``step-<at_step>``
    checkpoint resumed to the end."""
    import torch.distributed as dist

    from store_rec.train.config import load_train_config
    from store_rec.train.trainer import run

    dist.init_process_group("gloo")  # run() uses it and leaves it up
    try:
        a = run(load_train_config("smoke", _ov(Path(data_dir), Path(full))), metrics_out=f"{full}/summary.json")
        if dist.get_rank() == 0:
            (Path(resumed) / "ck").mkdir(parents=True)
            shutil.copytree(Path(full) / "ck" / f"step-{at_step}", Path(resumed) / "ck" / f"step-{at_step}")
        dist.barrier()
        b = run(load_train_config("smoke", _ov(Path(data_dir), Path(resumed))), resume=True,
                metrics_out=f"{resumed}/summary.json")
        return {"full": a, "resumed": b}
    finally:
        dist.destroy_process_group()


def test_store_with_history_trains_on_2_ranks_and_resumes_to_identical_metrics(data_dir, tmp_path):
    import torch.distributed.checkpoint as dcp

    from store_rec.distributed.local_launch import launch_local

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    res = launch_local(_train_then_resume, (str(data_dir), str(full), str(resumed), 4), nproc=2)
    a, b = res[0]["full"], res[0]["resumed"]
    assert a["world_size"] == 2 and a["steps"] > 4 and b["resumed_checkpoint_step"] == 4
    assert b["steps"] == a["steps"]
    for key in ("auc", "gauc", "logloss"):
        assert a[key] == b[key], (key, a[key], b[key])  # exact: same ranks, RNG and loader position restored
    assert 0.0 < a["auc"] < 1.0
    # the checkpoint holds the history EmbeddingCollection's tables and their fused optimizer state
    meta = dcp.FileSystemReader(str(full / "ck" / "step-4")).read_metadata()
    keys = list(meta.state_dict_metadata)
    for t in EC_TABLES:
        assert any(k.startswith("model.") and f".embeddings.{t}.weight" in k for k in keys), (t, keys[:20])
        assert any(k.startswith("fused_optim.") and t in k for k in keys), (t, keys[:20])
    # the EC's item table was row-wise over both ranks (its weight saved as 2 shards)
    item = next(k for k in keys if k.startswith("model.") and ".embeddings.t_hist_item_id.weight" in k)
    assert len(meta.state_dict_metadata[item].chunks) == 2

    # store-rec predict in this process (a world of one: the 2-rank history checkpoint resharded) scores the
    # test split with the training run's own metrics
    from store_rec.cli import main

    preds = tmp_path / "preds.parquet"
    assert main(["predict", "--checkpoint", str(full / "ck"), "--data", str(data_dir), "--split", "test",
                 "--out", str(preds)]) == 0
    m = json.loads(preds.with_name(preds.name + ".metrics.json").read_text())
    assert m["rows"] == a["final"]["test"]["num_samples"]
    for key in ("auc", "gauc"):  # rank-order metrics of the same model on the same rows
        assert m[key] == pytest.approx(a[key], abs=1e-9), key
    assert m["logloss"] == pytest.approx(a["logloss"], rel=1e-6)


def test_store_rec_plan_lists_history_tables(data_dir, tmp_path, capsys):
    import yaml

    from store_rec.cli import main

    cfg = tmp_path / "hist.yaml"
    ov = {"data": {"dir": str(data_dir), "history_len": 8},
          "model": {"name": "store", "embedding_dim": 16, "tokenizer": "none",
                    "attention": {"block_size": 4, "num_layers": 1, "num_heads": 2, "ffn_dim": 32},
                    "history": {"enabled": True, "max_len": 8, "item_tokens": "id", "side": ["hist_gap"]}}}
    cfg.write_text(yaml.safe_dump(ov))
    for topo, ws in (("cpu_gloo", 2), ("h100x8", 16)):
        out = tmp_path / f"plan_{topo}"
        assert main(["plan", "--config", str(cfg), "--topology", topo, "--world-sizes", str(ws), "--out", str(out)]) == 0
        text = capsys.readouterr().out
        assert "history-token EmbeddingCollection tables" in text
        assert "history (EmbeddingCollection) tables: t_hist_item_id " in text and "t_hist_gap " in text
        d = json.loads((out / f"plan_ws{ws}_auto.json").read_text())
        for t in EC_TABLES:
            e = d["plan"][t]
            assert e["kind"] == "sequence" and e["sharding_type"] in ("table_wise", "column_wise", "row_wise", "data_parallel")
            assert e["hbm_gb"] + e["ddr_gb"] > 0
        assert d["ec_module_path"] == "ec"
        rec = json.loads((out / "comparison.json").read_text())["records"][0]
        assert rec["sequence_tables"] == 2
        # pooling factor of the history features: their mean length in the prepared train split, <= 8
        assert 0 < d["pooling_factors"]["hist_item_id"] <= 8 and d["pooling_factors"]["hist_item_id"] != 1.0


def test_store_rec_plan_with_sid_history_tokens_sees_the_loader_keys(data_dir, tmp_path, capsys):
    """item_tokens: sid -- the EC tables are the loader-made <H>_sid_k keys (not in the parquet): the plan's
    schema is the loader's (SID table attached, history_len applied) and their pooling factor is H's mean
    length, capped at data.history_len."""
    import numpy as np
    import yaml

    from store_rec.cli import main
    from store_rec.data.sid_table import write_sid_table
    from store_rec.distributed.planning import measure_pooling_factors

    ids = np.arange(1, 81)
    sids = write_sid_table(tmp_path / "sids.parquet", ids, np.stack([ids % 7, ids % 3], 1), method="opmq",
                           codebook_size=7, item_feature="item_id")
    cfg = tmp_path / "hist_sid.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dir": str(data_dir), "sid_table": str(sids), "history_len": 2},
        "model": {"name": "store", "embedding_dim": 16, "tokenizer": "opmq", "item_feature": "item_id",
                  "attention": {"block_size": 4, "num_layers": 1, "num_heads": 2, "ffn_dim": 32},
                  "history": {"enabled": True, "max_len": 2, "item_tokens": "sid", "side": ["hist_gap"]}}}))
    out = tmp_path / "plan"
    assert main(["plan", "--config", str(cfg), "--topology", "cpu_gloo", "--world-sizes", "2", "--out", str(out)]) == 0
    assert "t_hist_item_id_sid_0 " in capsys.readouterr().out
    d = json.loads((out / "plan_ws2_auto.json").read_text())
    seq = sorted(t["name"] for t in d["tables"] if t.get("kind") == "sequence")
    assert seq == ["t_hist_gap", "t_hist_item_id_sid_0", "t_hist_item_id_sid_1"]
    raw = measure_pooling_factors(data_dir, ["hist_item_id"])["hist_item_id"]
    assert d["pooling_factors"]["hist_item_id_sid_0"] == d["pooling_factors"]["hist_item_id_sid_1"] == min(raw, 2.0)
