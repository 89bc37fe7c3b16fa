"""StoreInteractionArch as a drop-in for TorchRec's DLRM, DLRM_STORE, and both trained through
DLRMTrain inside DistributedModelParallel + TrainPipelineSparseDist on 2 gloo ranks."""

from __future__ import annotations


import torch
from torchrec.models.dlrm import DLRM, DLRMTrain, OverArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from _model_utils import tiny_batch, tiny_schema

from store_rec.models import AttentionConfig, RotationConfig
from store_rec.models.store import DLRM_STORE, StoreInteractionArch

D = 8
ATT = AttentionConfig(num_layers=1, num_heads=2, ffn_dim=16, block_size=2)
GROUPS = {"user": ["age", "gender"], "context": ["hour"]}


def _ebc(schema, device=None):
    feats = ["item", "site", "age", "gender", "hour"]
    tables = [
        EmbeddingBagConfig(name=f"t_{f}", embedding_dim=D, num_embeddings=schema.feature(f).vocab_size, feature_names=[f])
        for f in feats
    ]
    return EmbeddingBagCollection(tables=tables, device=device)


def _swapped_dlrm(schema, device=None):
    dlrm = DLRM(_ebc(schema, device), dense_in_features=2, dense_arch_layer_sizes=[8, D], over_arch_layer_sizes=[8, 1])
    arch = StoreInteractionArch(
        num_sparse_features=5, embedding_dim=D, static_groups=[[2, 3], [4]], rotation=RotationConfig(), attention=ATT
    )
    dlrm.inter_arch = arch
    dlrm.over_arch = OverArch(arch.output_dim, [8, 1])
    return dlrm


def _store(schema, device=None):
    return DLRM_STORE(_ebc(schema, device), 2, [8, D], [8, 1], static_groups=GROUPS, attention=ATT)


def test_swap_into_torchrec_dlrm_forward_backward():
    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    dlrm = _swapped_dlrm(schema)
    batch = tiny_batch(schema, 6)
    logits = dlrm(dense_features=batch.dense_features, sparse_features=batch.sparse_features)
    assert logits.shape == (6, 1)
    loss, (_, lg, labels) = DLRMTrain(dlrm)(batch)
    loss.backward()
    for name, p in dlrm.named_parameters():
        assert p.grad is not None, name
    assert dlrm.inter_arch.seq_len == 1 + 2 + 2


def test_dlrm_store_keeps_dlrm_state_dict_keys_and_forward():
    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    base = DLRM(_ebc(schema), 2, [8, D], [8, 1])
    store = _store(schema)
    base_keys, store_keys = set(base.state_dict()), set(store.state_dict())
    for part in ("sparse_arch.", "dense_arch.", "over_arch."):
        assert {k for k in base_keys if k.startswith(part)} == {k for k in store_keys if k.startswith(part)}, part
    assert all(k.startswith(("sparse_arch.", "dense_arch.", "over_arch.", "inter_arch.")) for k in store_keys)
    assert isinstance(store.inter_arch, StoreInteractionArch)
    assert store.over_arch.model[0]._mlp[0]._linear.in_features == store.inter_arch.output_dim
    # same forward as DLRM: the swapped-arch DLRM with identical weights gives identical logits
    swapped = _swapped_dlrm(schema)
    swapped.load_state_dict(store.state_dict())
    batch = tiny_batch(schema, 5)
    torch.testing.assert_close(
        swapped(batch.dense_features, batch.sparse_features), store(batch.dense_features, batch.sparse_features)
    )


# ----------------------------------------------------------------------------- 2 gloo ranks
def _train_worker(kinds, steps: int):
    """Runs on each rank: trains every model kind for ``steps`` pipeline steps; returns losses."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    out = {kind: _train_one(kind, steps) for kind in kinds}
    dist.destroy_process_group()
    return out


def _train_one(kind: str, steps: int):
    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from store_rec.modules.rotation import AlternatingOptimizer, AlternatingSchedule, rotation_modules, split_rotation_params

    rank = dist.get_rank()
    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    meta = torch.device("meta")
    if kind == "store_model":  # the training app's path: StoreModel (SIDs from the batch) + RankingTrain
        from store_rec.config import from_dict
        from store_rec.models import ModelConfig, RankingTrain, build_model

        schema = tiny_schema(with_sids=True)
        cfg = from_dict(ModelConfig, {"embedding_dim": D, "attention": {
            "num_layers": 1, "num_heads": 2, "ffn_dim": 16, "block_size": 2}}, path="model")
        train = RankingTrain(build_model(cfg, schema, device=meta))
        sparse_params = train.model.embedding_bag_collection.parameters()
    else:
        module = _store(schema, meta) if kind == "store" else _swapped_dlrm(schema, meta)
        train = DLRMTrain(module)
        sparse_params = train.model.sparse_arch.parameters()
    apply_optimizer_in_backward(torch.optim.SGD, sparse_params, {"lr": 1.0})
    model = DistributedModelParallel(module=train, device=torch.device("cpu"))
    main, rot = split_rotation_params(model, in_backward_optimizer_filter(model.named_parameters()))
    opt = AlternatingOptimizer(
        KeyedOptimizerWrapper(main, lambda ps: torch.optim.Adam(ps, lr=3e-2)),
        KeyedOptimizerWrapper(rot, lambda ps: torch.optim.Adam(ps, lr=3e-2)),
        AlternatingSchedule("1:1"),
        rotation_modules(model),
    )
    pipeline = TrainPipelineSparseDist(model, opt, torch.device("cpu"))
    batches = [tiny_batch(schema, 32, seed=100 * rank + (i % 4)) for i in range(steps)]
    it = iter(batches)
    losses = []
    while True:
        try:
            out = pipeline.progress(it)  # RankingTrain: a TrainOutput; TorchRec's DLRMTrain: (loss, logits, labels)
            loss = out.losses["bce"] if kind == "store_model" else out[0]
        except StopIteration:
            break
        losses.append(float(loss))
    err = max(m.orthogonality_error() for m in rotation_modules(model))
    return {"losses": losses, "orth": err, "n_rot": len(rot)}


def test_two_rank_gloo_dmp_pipeline_training():
    from store_rec.distributed.local_launch import launch_local

    out = launch_local(_train_worker, (("store", "swapped", "store_model"), 24), nproc=2)
    assert sorted(out) == [0, 1]
    for kind in ("store", "swapped", "store_model"):
        for rank in (0, 1):
            res = out[rank][kind]
            losses = res["losses"]
            assert len(losses) == 24, (kind, rank)
            first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
            assert last < 0.8 * first, (kind, rank, [round(x, 3) for x in losses])
            assert res["orth"] < 1e-5 and res["n_rot"] == 2
    # same seed, same weights layout: DLRM_STORE and the swapped-arch DLRM train identically
    assert out[0]["store"]["losses"] == out[0]["swapped"]["losses"]


# ----------------------------------------------------------------------------- the full objective (DLRMStoreTrain)
ROT = {"schedule": "2:1", "diversity_weight": 0.5}  # configs as dicts, validated like the YAML sections


def _full_store(schema, device=None):
    return DLRM_STORE(_ebc(schema, device), 2, [8, D], [8, 1], static_groups=GROUPS, rotation=ROT,
                      attention={"num_layers": 1, "num_heads": 2, "ffn_dim": 16, "block_size": 2})


def _check_full_objective(outs, rot_snaps, main_snaps, period=3):
    """Every loss is bce + 0.5 * diversity (diversity < 0: a negated distance); the rotation parameters
    change exactly on the schedule's rotation steps (t % 3 == 2 for "2:1"), the main network on the others."""
    for t, out in enumerate(outs):
        assert set(out.losses) == {"bce", "diversity"}
        assert float(out.losses["diversity"]) < -1e-3
        torch.testing.assert_close(out.loss, out.losses["bce"] + 0.5 * out.losses["diversity"], rtol=0, atol=1e-5)
    for t in range(1, len(rot_snaps)):
        rot_moved = not torch.equal(rot_snaps[t], rot_snaps[t - 1])
        main_moved = not torch.equal(main_snaps[t], main_snaps[t - 1])
        assert rot_moved == (t % period == period - 1), (t, rot_moved)
        assert main_moved == (t % period != period - 1), (t, main_moved)


def test_dlrm_store_train_in_a_plain_loop():
    """A user's own loop: DLRMStoreTrain + alternating_optimizer on the swapped-arch DLRM, no DMP."""
    from store_rec import DLRMStoreTrain, alternating_optimizer
    from store_rec.modules.rotation import rotation_parameters

    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    train = DLRMStoreTrain(_full_store(schema))
    assert {k for k in train.state_dict() if k.startswith("model.sparse_arch.")}  # DLRMTrain's keys
    opt = alternating_optimizer(train, main=lambda ps: torch.optim.Adam(ps, lr=1e-2),
                                rotation=lambda ps: torch.optim.Adam(ps, lr=1e-2))  # schedule "2:1" from the config
    rot, main = rotation_parameters(train)[0], train.model.over_arch.model[0]._mlp[0]._linear.weight
    outs, rs, ms = [], [rot.detach().clone()], [main.detach().clone()]
    for t in range(7):
        loss, out = train(tiny_batch(schema, 16, seed=t))
        opt.zero_grad()
        loss.backward()
        opt.step()
        outs.append(out)
        rs.append(rot.detach().clone())
        ms.append(main.detach().clone())
    # snapshot t+1 is after step t: rotation steps are t = 2, 5
    _check_full_objective(outs, rs[1:], ms[1:])
    assert not torch.equal(rs[3], rs[2]) and torch.equal(rs[1], rs[0])
    # TorchRec's DLRMTrain on the same module: BCE only (what the drop-in used to train)
    base_loss, _ = DLRMTrain(train.model)(tiny_batch(schema, 16, seed=0))
    full_loss, out = train(tiny_batch(schema, 16, seed=0))
    torch.testing.assert_close(base_loss, out.losses["bce"])
    assert float(full_loss - base_loss) < -1e-4


def test_configs_as_dicts_name_the_bad_key():
    import pytest

    from store_rec.config import ConfigError

    schema = tiny_schema(with_sids=False)
    with pytest.raises(ConfigError, match=r"rotation\.diversity_weigth: unknown key \(valid keys under rotation: "):
        DLRM_STORE(_ebc(schema), 2, [8, D], [8, 1], static_groups=GROUPS, rotation={"diversity_weigth": 0.1})
    with pytest.raises(ConfigError, match=r"attention\.num_heads: expected int"):
        StoreInteractionArch(num_sparse_features=5, embedding_dim=D, static_groups=[[2, 3], [4]], attention={"num_heads": "two"})
    with pytest.raises(TypeError, match="inter_arch must be a StoreInteractionArch"):
        from store_rec import DLRMStoreTrain

        DLRMStoreTrain(DLRM(_ebc(schema), 2, [8, D], [8, 1]))


def _full_objective_worker(steps: int):
    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward as apply_optimizer_in_backward
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    from store_rec import DLRMStoreTrain, alternating_optimizer
    from store_rec.modules.rotation import rotation_parameters

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    schema = tiny_schema(with_sids=False)
    train = DLRMStoreTrain(_full_store(schema, torch.device("meta")))
    apply_optimizer_in_backward(torch.optim.SGD, train.model.sparse_arch.parameters(), {"lr": 1.0})
    model = DistributedModelParallel(module=train, device=torch.device("cpu"))
    opt = alternating_optimizer(model, main=lambda ps: torch.optim.Adam(ps, lr=3e-2),
                                rotation=lambda ps: torch.optim.Adam(ps, lr=3e-2))
    pipeline = TrainPipelineSparseDist(model, opt, torch.device("cpu"))
    rot = rotation_parameters(model)[0]
    main = dict(model.named_parameters())[next(n for n, _ in model.named_parameters() if "over_arch" in n and n.endswith("weight"))]
    it = iter([tiny_batch(schema, 32, seed=100 * rank + i) for i in range(steps)])
    outs, rs, ms = [], [], []
    while True:
        try:
            out = pipeline.progress(it)
        except StopIteration:
            break
        outs.append(out)
        rs.append(rot.detach().clone())
        ms.append(main.detach().clone())
    dist.destroy_process_group()
    return {"outs": [o._replace(user_ids=o.user_ids.clone()) for o in outs], "rot": rs, "main": ms}


def test_dlrm_store_train_two_rank_pipeline_full_objective():
    """2 gloo ranks, DMP + TrainPipelineSparseDist: the diversity term is in every step's loss and the
    rotation optimizer steps on its "2:1" schedule (the main optimizer on the other steps)."""
    from store_rec.distributed.local_launch import launch_local

    res = launch_local(_full_objective_worker, (9,), nproc=2)
    for rank in (0, 1):
        r = res[rank]
        assert len(r["outs"]) == 9
        _check_full_objective(r["outs"], r["rot"], r["main"])
    # the dense parameters stay replicated (DDP): both ranks hold the same rotation after every step
    for a, b in zip(res[0]["rot"], res[1]["rot"]):
        torch.testing.assert_close(a, b)


def test_shipped_dropin_example_runs(capsys):
    """``python -m store_rec.examples.dropin_dlrm`` (shipped in the wheel): DLRM_STORE + DLRMStoreTrain + DMP +
    TrainPipelineSparseDist + alternating_optimizer, one process."""
    import json

    from store_rec.examples.dropin_dlrm import main

    assert main(["--steps", "5", "--log-every", "1"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    assert [r["stepped"] for r in recs] == ["main"] * 4 + ["rotation"]  # "4:1"
    for r in recs:
        assert r["diversity"] < 0 and abs(r["loss"] - (r["bce"] + 0.1 * r["diversity"])) < 1e-4
