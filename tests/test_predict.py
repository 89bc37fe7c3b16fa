"""`store-rec predict` round trip: a smoke model trained with checkpoints is loaded back (sharded,
1 rank and re-sharded onto 2 gloo ranks), scores the test split, and reproduces the training run's
own test AUC / GAUC / LogLoss exactly; the rows come back in split order with the data's labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from store_rec.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.train.config import load_train_config
    from store_rec.train.trainer import run

    tmp = tmp_path_factory.mktemp("predict")
    data = tmp / "data"
    prepare_synthetic(data, rows=3000, items=120, users=80, seed=0, num_clusters=4)
    out = tmp / "run"
    cfg = load_train_config(ROOT / "configs" / "smoke.yaml", [
        f"data.dir={data}", "data.prepare_if_missing=null", "data.batch_size=128", "data.eval_batch_size=256",
        f"output.dir={out}", "output.tensorboard=false", f"checkpoint.dir={out}/ck", "train.max_steps=12",
        "model.attention.num_layers=1"])
    summary = run(cfg)
    return data, out, summary


def _predict(tmp_path, trained, *extra):
    data, out, _ = trained
    preds = tmp_path / "preds.parquet"
    rc = main(["predict", "--checkpoint", str(out / "ck"), "--data", str(data), "--split", "test", "--out", str(preds), *extra])
    return rc, preds


def test_predict_reproduces_the_test_metrics_and_rows(tmp_path, trained):
    from store_rec.data.loader import ParquetBatchLoader

    data, out, summary = trained
    assert (out / "config.yaml").exists()  # the resolved config, beside metrics.jsonl
    rc, preds = _predict(tmp_path, trained)
    assert rc == 0
    t = pq.read_table(preds)
    assert t.column_names == ["row", "user_id", "label", "logit", "score"]
    m = json.loads(preds.with_name(preds.name + ".metrics.json").read_text())
    assert m["rows"] == t.num_rows == summary["final"]["test"]["num_samples"]
    for k in ("auc", "gauc", "logloss"):  # the same model on the same rows: the training run's own numbers
        assert m[k] == pytest.approx(summary[k], rel=1e-12), k
    # row = index in the split (file order): the labels line up with the data's
    labels = torch.cat([b.labels for b in ParquetBatchLoader(data, "test", 1000, shuffle=False)])
    assert t.column("row").to_pylist() == list(range(t.num_rows))
    assert t.column("label").to_pylist() == labels.tolist()
    logit = torch.tensor(t.column("logit").to_pylist())
    torch.testing.assert_close(torch.tensor(t.column("score").to_pylist()), torch.sigmoid(logit))
    assert not list(tmp_path.glob(".preds.parquet.rank*"))  # the part files are gone


def test_predict_refuses_to_overwrite_and_bad_checkpoints(tmp_path, trained, capsys):
    preds = tmp_path / "preds.parquet"
    preds.write_text("keep me")
    rc, _ = _predict(tmp_path, trained)
    assert rc == 2 and preds.read_text() == "keep me" and "--force" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--checkpoint", str(empty), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "no step-N checkpoint" in capsys.readouterr().err
    # --out is never an input, even with --force: not the checkpoint's config, not a file of the dataset
    data, out, _ = trained
    step = sorted((out / "ck").glob("step-*"))[-1]
    for victim in (step / "config.yaml", data / "schema.json"):
        before = victim.read_bytes()
        rc = main(["predict", "--checkpoint", str(step), "--data", str(data), "--out", str(victim), "--force"])
        err = capsys.readouterr().err
        assert rc == 2 and victim.read_bytes() == before and "input" in err, (victim, err)
    for cmd in ("predict", "export"):
        rc = main([cmd, "--checkpoint", str(step), "--data", str(data), "--out", str(step / "config.yaml"), "--force"])
        err = capsys.readouterr().err
        assert rc == 2 and "--out" in err and "input" in err, err


def _predict_worker(args):
    import argparse

    from store_rec.inference.predict import add_arguments, predict

    p = argparse.ArgumentParser()
    add_arguments(p)
    return predict(p.parse_args(args))


def test_predict_on_two_ranks_reshards_a_one_rank_checkpoint(tmp_path, trained):
    from store_rec.distributed.local_launch import launch_local

    data, out, summary = trained
    preds = tmp_path / "preds2.parquet"
    res = launch_local(_predict_worker, (["--checkpoint", str(out / "ck"), "--data", str(data), "--split", "test",
                                          "--out", str(preds)],), nproc=2)
    assert res[0]["auc"] == res[1]["auc"] == pytest.approx(summary["auc"], rel=1e-12)
    assert res[0]["world_size"] == 2 and math.isclose(res[0]["logloss"], summary["logloss"], rel_tol=1e-9)
    t = pq.read_table(preds)
    assert t.column("row").to_pylist() == list(range(t.num_rows))  # rank 0's part, then rank 1's


def test_export_dense_part_matches_the_model(tmp_path, trained):
    """The exported dense part, fed the EBC's pooled embeddings, gives the logits `predict` wrote."""
    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.inference.predict import load_sharded_model, resolve_checkpoint
    from store_rec.models.ranking import dense_input
    from store_rec.train.config import load_train_config

    data, out, _ = trained
    pt2 = tmp_path / "dense.pt2"
    assert main(["export", "--checkpoint", str(out), "--data", str(data), "--out", str(pt2)]) == 0
    meta = json.loads(pt2.with_name("dense.pt2.json").read_text())
    assert meta["check"]["max_abs_diff_vs_model"] <= 1e-5 and meta["inputs"]["sparse"][1] == len(meta["feature_order"])
    rc, preds = _predict(tmp_path, trained)
    assert rc == 0
    program = torch.export.load(str(pt2)).module()
    # the embedding side, as a server would run it, on the first 5 test rows (a batch size the export never saw)
    import torch.distributed as dist

    from store_rec.distributed.env import init_distributed

    cfg = load_train_config(out / "config.yaml", [])
    env = init_distributed()
    try:
        loader = ParquetBatchLoader(data, "test", 5, shuffle=False)
        model = load_sharded_model(cfg, loader.schema, resolve_checkpoint(out), env, None).module.model.eval()
        batch = next(iter(loader))
        with torch.no_grad():
            logits = program(dense_input(batch, model.const_dense), model.model.sparse_arch(batch.sparse_features))
    finally:
        dist.destroy_process_group()
    want = torch.tensor(pq.read_table(preds).column("logit").to_pylist()[:5])
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
