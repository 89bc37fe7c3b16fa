"""The training app on 2 gloo ranks (elastic_launch, as TorchRec's dlrm_main test): STORE and a
baseline train end to end; sharded forward == unsharded forward; distributed AUC == single-process
AUC; a rank killed mid-training restarts, resumes from the checkpoint and reaches the same metrics."""

import json
from pathlib import Path

import pytest
import torch

from store_rec.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]


def _launch(fn, args, tmp: Path, max_restarts: int = 0):
    from store_rec.distributed.local_launch import launch_local

    return launch_local(fn, args, nproc=2, max_restarts=max_restarts)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from store_rec.data.synthetic import prepare_synthetic

    d = tmp_path_factory.mktemp("data") / "tiny"
    prepare_synthetic(d, rows=2000, items=100, users=60, seed=0, num_clusters=4)
    return d


def _overrides(data_dir: Path, out: Path, *extra: str):
    return [f"data.dir={data_dir}", "data.prepare_if_missing=null", "data.batch_size=64", "data.eval_batch_size=256",
            f"output.dir={out}", "output.progress_bar=false", "output.tensorboard=false",
            f"checkpoint.dir={out}/ck", "train.epochs=2", "model.attention.num_layers=1", *extra]


def _train_worker(overrides, metrics_out):
    from store_rec.train.trainer import run

    return run(load_train_config(ROOT / "configs" / "smoke.yaml", overrides), metrics_out=metrics_out)


@pytest.mark.parametrize("model", ["store", "dlrm_dcn"])
def test_two_rank_training(data_dir, tmp_path, model):
    out = tmp_path / "run"
    ov = _overrides(data_dir, out, f"model.name={model}", "train.eval_every=10", "checkpoint.every_steps=0")
    res = _launch(_train_worker, (ov, str(out / "summary.json")), tmp_path)
    s = json.loads((out / "summary.json").read_text())
    assert res[0]["auc"] == res[1]["auc"] == s["auc"]  # every rank computes the same global metrics
    assert s["steps"] == 26 and s["world_size"] == 2 and s["model"] == model
    assert s["global_batch_size"] == 2 * s["batch_size_per_rank"] == 128  # data.batch_size=64 is per rank
    assert 0.5 < s["auc"] <= 1.0 and 0.0 <= s["gauc"] <= 1.0 and 0 < s["logloss"] < 0.7  # tiny data: GAUC is noisy
    assert s["samples_per_s"] > 0 and s["tflops_per_batch"] > 0
    if model == "store":  # the rotations are still orthogonal after training (Cayley parametrization)
        assert s["rotation_orthogonality_error"] < 1e-5
    else:
        assert s["rotation_orthogonality_error"] is None
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "valid"][:3] == [10, 13, 20]
    assert s["final"]["test"]["num_samples"] == recs[-1]["num_samples"]
    # eval records label both throughputs; NE / calibration from the all-reduced sums; the resolved config is saved
    assert all(r["eval_samples_per_s"] > 0 and r["train_samples_per_s"] > 0 and r["ne"] > 0 and r["calibration"] > 0 for r in recs)
    assert (out / "config.yaml").exists() and s["gflops_per_batch"] == pytest.approx(s["tflops_per_batch"] * 1e3)


def _auc_worker(n_local):
    from store_rec.distributed.env import init_distributed
    from store_rec.train.metrics import auc, gather_predictions, gauc

    env = init_distributed()
    g = torch.Generator().manual_seed(env.rank)
    n = n_local[env.rank]
    s, y, u = torch.randn(n, generator=g).round(decimals=1), (torch.rand(n, generator=g) < 0.4).float(), torch.randint(0, 7, (n,), generator=g)
    gs, gy, gu = gather_predictions(s, y, u)
    return {"local": (s, y, u), "auc": auc(gs, gy), "gauc": gauc(gs, gy, gu)}


def _copy_full_state(dst_sd, full_sd):
    """Copy an unsharded state dict into a DMP state dict (ShardedTensor shards get their slices)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    for k, v in dst_sd.items():
        src = full_sd[k]
        if isinstance(v, ShardedTensor):
            for sh in v.local_shards():
                o, sz = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                sh.tensor.copy_(src[o[0]:o[0] + sz[0], o[1]:o[1] + sz[1]])
        elif hasattr(v, "to_local"):  # DTensor
            raise AssertionError(f"{k}: DTensor state not handled by this test")
        else:
            v.copy_(src)


def _sharded_forward_worker(data_dir, sharding_type):
    import torch.distributed as dist

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.models.config import ModelConfig
    from store_rec.models.factory import build_model
    from store_rec.models.tables import embedding_tables
    from store_rec.distributed.env import init_distributed
    from store_rec.models.ranking import RankingTrain
    from store_rec.train.config import TrainConfig, DataConfig, ShardingConfig
    from store_rec.train.sharding import shard_model

    env = init_distributed()
    cfg = TrainConfig(data=DataConfig(dir=str(data_dir)), model=ModelConfig(name="store", tokenizer="none", embedding_dim=8),
                      sharding=ShardingConfig(sharding_types=[sharding_type]))
    loader = ParquetBatchLoader(data_dir, "valid", 32, rank=env.rank, world_size=env.world_size)
    torch.manual_seed(0)
    ref = RankingTrain(build_model(cfg.model, loader.schema))
    ref.eval()
    meta = RankingTrain(build_model(cfg.model, loader.schema, device=torch.device("meta")))
    dmp = shard_model(meta, cfg, env, embedding_tables(loader.schema, cfg.model), None)
    plan_types = {p.sharding_type for m in dmp.plan.plan.values() for p in m.values()}
    full = ref.state_dict()
    sd = dmp.state_dict()
    _copy_full_state(sd, {k: full[k.removeprefix("module.")] if k not in full else full[k] for k in sd})
    dmp.eval()
    batch = next(iter(loader))
    with torch.no_grad():
        want = ref(batch)[1].logits
        got = dmp(batch)[1].logits
    dist.barrier()
    return {"max_diff": float((want - got).abs().max()), "types": plan_types}


def test_distributed_auc_equals_single_process(tmp_path):
    from store_rec.train.metrics import auc, gauc

    res = _launch(_auc_worker, ({0: 301, 1: 157},), tmp_path)
    s = torch.cat([res[0]["local"][0], res[1]["local"][0]])
    y = torch.cat([res[0]["local"][1], res[1]["local"][1]])
    u = torch.cat([res[0]["local"][2], res[1]["local"][2]])
    assert res[0]["auc"] == res[1]["auc"] == pytest.approx(auc(s, y), abs=1e-12)
    assert res[0]["gauc"] == pytest.approx(gauc(s, y, u), abs=1e-12)
    # and it is not the mean of per-rank AUCs
    per_rank = (auc(*res[0]["local"][:2]) + auc(*res[1]["local"][:2])) / 2
    assert abs(per_rank - res[0]["auc"]) > 1e-4


@pytest.mark.parametrize("sharding_type", ["table_wise", "column_wise"])
def test_sharded_forward_equals_unsharded(data_dir, tmp_path, sharding_type):
    res = _launch(_sharded_forward_worker, (data_dir, sharding_type), tmp_path)
    for r in res.values():
        assert r["types"] == {sharding_type}
        assert r["max_diff"] < 1e-5


def _resume_worker(overrides, metrics_out):
    from store_rec.train.trainer import run

    return run(load_train_config(ROOT / "configs" / "smoke.yaml", overrides), resume=True, metrics_out=metrics_out)


def test_checkpoint_resume_equals_uninterrupted(data_dir, tmp_path):
    """2 ranks: an uninterrupted run vs a run resumed (--resume) from its step-8 checkpoint reach the same metrics."""
    import shutil

    a = tmp_path / "a"
    common = ("train.eval_every=0", "checkpoint.every_steps=4", "checkpoint.keep=20", "data.shuffle=true")
    _launch(_train_worker, (_overrides(data_dir, a, *common), str(a / "summary.json")), tmp_path)
    for p in (a / "ck").iterdir():
        if p.name != "step-8":
            shutil.rmtree(p)
    _launch(_resume_worker, (_overrides(data_dir, a, *common), str(a / "resumed.json")), tmp_path)
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((a / "resumed.json").read_text())
    assert sa["resumed_from_step"] is None and sb["resumed_from_step"] == 8
    assert sb["steps"] == sa["steps"] == 26
    assert abs(sa["auc"] - sb["auc"]) < 1e-3 and abs(sa["gauc"] - sb["gauc"]) < 1e-3
    assert abs(sa["logloss"] - sb["logloss"]) < 1e-3
    print(f"resume equality: auc {sa['auc']:.6f} vs {sb['auc']:.6f}; logloss {sa['logloss']:.6f} vs {sb['logloss']:.6f}")


def test_killed_rank_restarts_and_resumes_exactly(data_dir, tmp_path, monkeypatch):
    """Uninterrupted run vs a run whose rank 1 is SIGKILLed after step 10 (checkpoints every 4 steps):
    the elastic agent restarts both ranks, they resume from step-8 and end with the same metrics.

    The agent runs in this process, so the launcher's environment is ours: without
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 the restarted ranks can hang (pytorch/pytorch#135712)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("train.eval_every=0", "checkpoint.every_steps=4", "data.shuffle=true")
    _launch(_train_worker, (_overrides(data_dir, a, *common), str(a / "summary.json")), tmp_path)
    monkeypatch.setenv("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    monkeypatch.setenv("STORE_REC_FAULT_AT_STEP", "10")
    _launch(_train_worker, (_overrides(data_dir, b, *common), str(b / "summary.json")), tmp_path, max_restarts=1)
    assert (b / "ck" / "fault.marker").read_text().startswith("killed rank 1 at step 10")
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sa["resumed_from_step"] is None and sb["resumed_from_step"] == 8
    assert sb["steps"] == sa["steps"] == 26
    assert abs(sa["auc"] - sb["auc"]) < 1e-3 and abs(sa["gauc"] - sb["gauc"]) < 1e-3
    assert abs(sa["logloss"] - sb["logloss"]) < 1e-3
    print(f"resume equality: auc {sa['auc']:.6f} vs {sb['auc']:.6f}; logloss {sa['logloss']:.6f} vs {sb['logloss']:.6f}")


def _run1(data_dir: Path, out: Path, *extra: str, resume: bool = False, overwrite: bool = False):
    """One in-process rank (a world of one: no launcher)."""
    from store_rec.train.trainer import run

    return run(load_train_config(ROOT / "configs" / "smoke.yaml", _overrides(data_dir, out, *extra)), resume=resume,
               overwrite_checkpoints=overwrite)


def test_checkpoint_lifecycle_single_rank(data_dir, tmp_path):
    """every_steps=0 checkpoints at epoch ends; a fresh run refuses an older run's checkpoints, and with
    --overwrite-checkpoints clears them (so keep= never prunes the new ones) and starts a new metrics.jsonl;
    --resume refuses a checkpoint of another config."""
    from store_rec.errors import UserError

    out = tmp_path / "r"
    s = _run1(data_dir, out, "checkpoint.every_steps=0", "checkpoint.keep=5", "train.eval_every=0")
    per_epoch = s["steps"] // 2
    assert sorted(p.name for p in (out / "ck").iterdir()) == sorted([f"step-{per_epoch}", f"step-{2 * per_epoch}"])
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"]) for r in recs]
    assert len(keys) == len(set(keys)), keys  # the final valid eval reuses the epoch-end one
    assert {r["split"] for r in recs} == {"valid", "test"}

    with pytest.raises(UserError, match=r"model\.embedding_dim=16, this config has model\.embedding_dim=32"):
        _run1(data_dir, out, "checkpoint.every_steps=0", "model.embedding_dim=32", resume=True)

    with pytest.raises(UserError, match="checkpoints exist .*: pass --resume to continue from the newest, or --overwrite-checkpoints"):
        _run1(data_dir, out, "checkpoint.every_steps=0", "train.epochs=1", "train.eval_every=0")
    s1 = _run1(data_dir, out, "checkpoint.every_steps=0", "train.epochs=1", "train.eval_every=0", overwrite=True)
    assert s1["steps"] == per_epoch
    assert [p.name for p in (out / "ck").iterdir()] == [f"step-{per_epoch}"]  # the 2-epoch run's step dirs are gone
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in recs) == per_epoch

    s2 = _run1(data_dir, out, "checkpoint.every_steps=0", "train.epochs=2", "train.eval_every=0", resume=True)
    assert s2["resumed_from_step"] == per_epoch and s2["steps"] == 2 * per_epoch


def test_sparse_lr_follows_the_schedule(data_dir, tmp_path):
    """The fused TBE kernels' LR is scaled with the dense LR (warm-up / decay); data-parallel tables have no
    sparse optimizer (the dense one trains them, as in TorchRec's DLRM app)."""
    from store_rec.distributed.env import init_distributed
    from store_rec.models.ranking import RankingTrain
    from store_rec.train.optim import SparseLR
    from store_rec.train.sharding import shard_model
    from store_rec.models.factory import build_model
    from store_rec.models.tables import embedding_tables
    from store_rec.data.schema import DatasetSchema
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    import torchrec.optim as trec_optim

    schema = DatasetSchema.load(data_dir)
    for types in (["table_wise"], ["data_parallel"]):
        cfg = load_train_config(ROOT / "configs" / "smoke.yaml", _overrides(data_dir, tmp_path, f"sharding.sharding_types={types}"))
        env = init_distributed()
        try:
            model = build_model(cfg.model, schema, device=torch.device("meta"))
            apply_optimizer_in_backward(trec_optim.RowWiseAdagrad, model.embedding_bag_collection.parameters(), {"lr": 0.05})
            dmp = shard_model(RankingTrain(model), cfg, env, embedding_tables(schema, cfg.model), None)
            lr = SparseLR(dmp, 0.05)
            if types == ["data_parallel"]:
                assert lr.optimizers == []
                continue
            assert lr.optimizers
            lr.set(0.25)
            for o in lr.optimizers:
                assert o.param_groups[0]["lr"] == pytest.approx(0.0125)
                if hasattr(o, "_emb_module"):
                    assert o._emb_module.get_learning_rate() == pytest.approx(0.0125)
        finally:
            import torch.distributed as dist

            dist.destroy_process_group()


def test_two_rank_training_with_online_sids(data_dir, tmp_path):
    """sid_source online on 2 ranks: pre-trained item vectors loaded into the sharded item table, an OPMQ
    file tokenizes the item inside the model (fine-tuned: its losses join the loss), through the pipeline."""
    import numpy as np

    from store_rec.data.schema import DatasetSchema
    from store_rec.tokenizer import OPMQ
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.online import save_tokenizer

    n_items = DatasetSchema.load(data_dir).feature("item_id").vocab_size
    rng = np.random.default_rng(0)
    ids = np.arange(1, n_items, dtype=np.int64)
    emb = rng.normal(scale=0.1, size=(len(ids), 16)).astype(np.float32)
    save_embeddings(tmp_path / "emb.parquet", ids, emb, {"dim": 16, "item_feature": "item_id"})
    tok = OPMQ(16, 2, 8, hidden_dims=[16], latent_dim=8, seed=0)
    tok(torch.from_numpy(emb))
    save_tokenizer(tmp_path / "tok.pt", tok.eval(), "opmq")

    out = tmp_path / "run"
    ov = _overrides(data_dir, out, "model.tokenizer=opmq", "model.sid_source=online", "model.item_feature=item_id",
                    f"model.online.tokenizer={tmp_path / 'tok.pt'}", f"model.online.embeddings={tmp_path / 'emb.parquet'}",
                    "model.online.finetune=true", "model.online.token_mode=latent", "model.attention.gate=item",
                    "train.eval_every=0", "checkpoint.enabled=false")
    res = _launch(_train_worker, (ov, str(out / "summary.json")), tmp_path)
    s = json.loads((out / "summary.json").read_text())
    assert res[0]["auc"] == res[1]["auc"] == s["auc"] and s["steps"] == 26
    assert 0.5 < s["auc"] <= 1.0


def test_tokenizer_switch_must_match_the_sid_table(tmp_path):
    import numpy as np

    from store_rec.errors import UserError
    from store_rec.data.sid_table import write_sid_table
    from store_rec.train.data import check_sid_table_method

    path = tmp_path / "sids.parquet"
    write_sid_table(path, np.arange(1, 5), np.zeros((4, 2), np.int64), method="rqvae", codebook_size=4, item_feature="item_id")
    cfg = load_train_config(ROOT / "configs" / "smoke.yaml", ["model.tokenizer=rqvae", f"data.sid_table={path}"])
    check_sid_table_method(cfg)
    cfg = load_train_config(ROOT / "configs" / "smoke.yaml", ["model.tokenizer=opmq", f"data.sid_table={path}"])
    with pytest.raises(UserError, match="model.tokenizer: 'opmq', but data.sid_table .* was written by 'rqvae'"):
        check_sid_table_method(cfg)
    cfg = load_train_config(ROOT / "configs" / "smoke.yaml", ["model.tokenizer=opmq", f"data.sid_table={tmp_path / 'no.parquet'}"])
    with pytest.raises(UserError, match="no such file"):
        check_sid_table_method(cfg)


def test_nan_valid_auc_is_worse_than_any_finite_auc():
    """A single-class valid split gives AUC NaN; it must not become an unbeatable best (early stop)."""
    from store_rec.train.evaluate import improves_on_best

    nan = float("nan")
    assert improves_on_best(nan, None) and improves_on_best(0.6, None)  # the first eval sets the best
    assert improves_on_best(0.51, {"auc": nan}) and improves_on_best(0.51, {"auc": None})
    assert not improves_on_best(nan, {"auc": nan}) and not improves_on_best(nan, {"auc": 0.5})
    assert not improves_on_best(None, {"auc": 0.5}) and not improves_on_best(float("inf"), {"auc": 0.5})
    assert improves_on_best(0.7, {"auc": 0.6}) and not improves_on_best(0.6, {"auc": 0.6})
    # the loop's early stop: NaN first, then improving finite AUCs -> no bad evals
    best, bad = None, 0
    for auc in (nan, 0.55, 0.6, nan, 0.65):
        if improves_on_best(auc, best):
            best, bad = {"auc": auc}, 0
        else:
            bad += 1
    assert best == {"auc": 0.65} and bad == 0


def test_train_package_does_not_import_the_cli():
    """train sits below cli: its entry point parses its own arguments (no upward import)."""
    import subprocess
    import sys

    code = ("import sys, store_rec.train.__main__, store_rec.train.trainer; "
            "bad = sorted(m for m in sys.modules if m.startswith(('store_rec.cli', 'store_rec.experiments', 'store_rec.bench'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
