"""History tokens, distributed side (issue 13): a model's ``EmbeddingCollection`` (unpooled lookups) is
sharded by DMP next to its EBC, planned by ``store-rec plan``, and saved / restored by checkpoints.

* sharded == unsharded on 2 gloo ranks: a toy model (EBC + EC, ``tests/_toy_history.py``) sharded by the
  train app's ``shard_model`` with its EC tables table_wise, row_wise and column_wise gives the unsharded
  model's logits on each rank's batch, and after one step (fused Adagrad on the tables in backward, SGD on
  the dense part) the unsharded model's weights for the mean of the ranks' losses;
* data_parallel EC tables do not run on cpu in TorchRec 1.8 (the reason store_rec leaves them out there);
* checkpoints: saved by 2 ranks with the EC row-wise, restored on 2 ranks with another EC sharding and on
  1 rank (elastic), weights identical;
* planning: EC tables are planned next to the EBC ones (any topology, offline), with their sharding
  and memory in the plan file, and a plan file round-trips into the two module plans; ``store-rec plan
  --verify``'s check covers EC tables.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import torch

from _toy_history import BAG, SEQ, ToyHistoryModel, toy_batch

LR = 0.5
EPS = 1e-8
EC_TYPES = ("table_wise", "row_wise", "column_wise")
H_KEY = "model.model.history.embeddings.t_h.weight"
VERIFY = ("row_wise", "column_wise")  # store-rec plan --verify strategies checked in the 2-rank run


def _cfg(ec_type: str):  # noqa: ANN202
    from store_rec.config import from_dict
    from store_rec.train.config import TrainConfig

    tables: Dict[str, Any] = {t.name: {"sharding_types": ["table_wise"]} for t in BAG}
    tables.update({t.name: {"sharding_types": [ec_type]} for t in SEQ})
    return from_dict(TrainConfig, {"data": {"dir": "unused"}, "sharding": {"tables": tables}}, "")


def _sharded(ec_type: str, env, plan_dir: str):  # noqa: ANN001, ANN202
    """The toy model on the meta device, fused Adagrad applied in backward, sharded by the train app: planned in
    the job from ``sharding.tables``, except column_wise, applied from a ``store-rec plan`` file made with
    ``min_partition = 4`` so that the dim-8 EC tables are split in 2 column shards over the 2 ranks."""
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    from store_rec.models.ranking import RankingTrain
    from store_rec.train.sharding import model_tables, shard_model, sparse_parameters

    model = ToyHistoryModel(torch.device("meta"))
    apply_optimizer_in_backward(torch.optim.Adagrad, sparse_parameters(model), {"lr": LR, "eps": EPS})
    cfg = _cfg(ec_type)
    plan_file = None
    if ec_type == "column_wise":
        from store_rec.distributed.plan_io import save_plan
        from store_rec.distributed.planning import PlanConfig, TableOverride, plan_tables
        from store_rec.distributed.topology import load_topology

        pc = PlanConfig(tables={**{t.name: TableOverride(sharding_types=["table_wise"]) for t in BAG},
                                **{t.name: TableOverride(sharding_types=["column_wise"], min_partition=4) for t in SEQ}})
        res = plan_tables(BAG + SEQ, load_topology("cpu_gloo").with_world_size(env.world_size), "auto", None, pc, None)
        plan_file = str(Path(plan_dir) / f"plan_cw_ws{env.world_size}_rank{env.rank}.json")
        save_plan(res, plan_file)
    dmp = shard_model(RankingTrain(model), cfg, env, model_tables(model), plan_file)
    return dmp, cfg


def _shards(dmp):  # noqa: ANN001, ANN202
    """(key, local tensor, (row offset, col offset)) of every local piece of the DMP state."""
    for k, v in dmp.state_dict().items():
        if hasattr(v, "local_shards"):
            for sh in v.local_shards():
                yield k, sh.tensor, tuple(sh.metadata.shard_offsets)
        else:
            yield k, v, None


def _piece(full: torch.Tensor, t: torch.Tensor, off) -> torch.Tensor:  # noqa: ANN001
    if off is None:
        return full
    (o0, o1), (s0, s1) = off, t.shape
    return full[o0 : o0 + s0, o1 : o1 + s1]


def _load_full(dmp, full: Dict[str, torch.Tensor]) -> None:  # noqa: ANN001
    with torch.no_grad():
        for k, t, off in _shards(dmp):
            t.copy_(_piece(full[k], t, off))


def _max_diff(dmp, full: Dict[str, torch.Tensor]) -> float:  # noqa: ANN001
    return max(float((t.detach() - _piece(full[k], t, off)).abs().max()) for k, t, off in _shards(dmp) if t.numel())


def _reference(world: int):  # noqa: ANN202
    """Unsharded toy model: initial weights, logits per rank, and after one step on mean_r loss_r (Adagrad on
    the tables, SGD on the dense part) the weights and the tables' Adagrad sums (by state-dict key)."""
    from store_rec.models.ranking import RankingTrain

    torch.manual_seed(0)
    ref = RankingTrain(ToyHistoryModel())
    init = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    logits, losses = [], []
    for r in range(world):
        loss, out = ref(toy_batch(r))
        logits.append(out.logits)
        losses.append(loss)
    (sum(losses) / world).backward()
    tables = {n: p for n, p in ref.named_parameters() if ".embedding_bags." in n or ".embeddings." in n}
    sums = {}
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in tables:  # exact Adagrad, as fbgemm's fused EXACT_ADAGRAD
                sums[n] = p.grad**2
                p -= LR * p.grad / (sums[n].sqrt() + EPS)
            else:
                p -= LR * p.grad
    return init, logits, {k: v.detach().clone() for k, v in ref.state_dict().items()}, sums


def _adagrad_state_diff(dmp, sums: Dict[str, torch.Tensor]) -> float:  # noqa: ANN001
    """max |fused Adagrad sum - reference| over this rank's local optimizer-state shards of every table."""
    diff, seen = 0.0, set()
    for key, st in dmp.fused_optimizer.state_dict()["state"].items():
        for v in st.values():
            for sh in v.local_shards():
                seen.add(key)
                diff = max(diff, float((sh.tensor - _piece(sums[key], sh.tensor, tuple(sh.metadata.shard_offsets))).abs().max()))
    return diff if seen else float("nan")


def _ec_types_worker(ckpt_root: str) -> Dict[str, Any]:
    import torch.distributed as dist

    from store_rec.distributed.env import init_distributed
    from store_rec.train.checkpoint import dense_param_names, save_checkpoint
    from store_rec.config import to_dict

    env = init_distributed()
    out: Dict[str, Any] = {"rank": env.rank}
    try:
        init, ref_logits, ref_after, ref_sums = _reference(env.world_size)
        for ec_type in EC_TYPES:
            dmp, cfg = _sharded(ec_type, env, ckpt_root)
            plan = {n: ps.sharding_type for mp in dmp.plan.plan.values() for n, ps in mp.items()}
            _load_full(dmp, init)
            loss, got = dmp(toy_batch(env.rank))
            fwd = float((got.logits.detach() - ref_logits[env.rank].detach()).abs().max())
            loss.backward()
            from torchrec.optim.optimizers import in_backward_optimizer_filter

            dense = torch.optim.SGD([p for _, p in in_backward_optimizer_filter(dmp.named_parameters())], lr=LR)
            dense.step()
            out[ec_type] = {"plan": plan, "fwd": fwd, "after_step": _max_diff(dmp, ref_after),
                            "adagrad": _adagrad_state_diff(dmp, ref_sums),
                            "t_h_local_shards": [tuple(sh.metadata.shard_sizes) for sh in dmp.state_dict()[H_KEY].local_shards()]}
            if ec_type == "row_wise":  # the checkpoint the restore workers read
                extra = {"step": 1, "epoch": 0, "pos": 1, "world_size": env.world_size, "steps_per_epoch": 1,
                         "dense_params": dense_param_names(dmp), "config": to_dict(cfg)}
                save_checkpoint(Path(ckpt_root), 1, dmp, extra, env, keep=1)
            dist.barrier()
        # the row-wise checkpoint restored on the same 2 ranks with the EC tables table-wise (resharded)
        out["restore_table_wise"] = _restore(ckpt_root, "table_wise", env)
        # data_parallel EC tables on cpu: what TorchRec 1.8 does with a plan that asks for it
        out["data_parallel"] = _data_parallel_error(env)
        # store-rec plan --verify's check of the EBC + EC tables (plans made by rank 0, then shared)
        from store_rec.distributed.verify import check_plans, verify_jobs

        box = [verify_jobs(BAG + SEQ, VERIFY, Path(ckpt_root) / "verify") if env.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        jobs, tables_js = box[0]
        out["verify_jobs"], out["verify"] = jobs, check_plans(jobs, tables_js)
    finally:
        dist.destroy_process_group()
    return out


def _data_parallel_error(env) -> Optional[str]:  # noqa: ANN001
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import EmbeddingModuleShardingPlan, ParameterSharding, ShardingPlan
    from torchrec.modules.embedding_modules import EmbeddingCollection

    plan = ShardingPlan({"": EmbeddingModuleShardingPlan({t.name: ParameterSharding("data_parallel", "dense", list(range(env.world_size)))
                                                          for t in SEQ})})
    dmp = DistributedModelParallel(EmbeddingCollection(tables=SEQ, device=torch.device("meta")), device=torch.device("cpu"),
                                   plan=plan, sharders=[EmbeddingCollectionSharder()])
    try:
        res = dmp(toy_batch(env.rank).sparse_features)
        res = res.wait() if hasattr(res, "wait") else res
        return None if all(v.values().shape[0] == v.lengths().sum() for v in res.values()) else "wrong shape"
    except RuntimeError as e:
        return str(e).splitlines()[0]


def _restore(ckpt_root: str, ec_type: str, env) -> Dict[str, Any]:  # noqa: ANN001
    """Load the newest checkpoint under ``ckpt_root`` into the toy model sharded with its EC tables ``ec_type``;
    compare with the stepped reference (weights, tables' Adagrad sums, logits)."""
    from store_rec.models.ranking import RankingTrain
    from store_rec.train.checkpoint import latest_checkpoint, load_checkpoint

    _, _, ref_after, ref_sums = _reference(2)
    dmp, cfg = _sharded(ec_type, env, ckpt_root)
    path = latest_checkpoint(Path(ckpt_root))
    assert path is not None
    extra = load_checkpoint(path, dmp, env, cfg)
    plan = {n: ps.sharding_type for mp in dmp.plan.plan.values() for n, ps in mp.items()}
    _, got = dmp(toy_batch(env.rank))  # the restored model computes the stepped reference's logits
    ref = RankingTrain(ToyHistoryModel())
    ref.load_state_dict(ref_after)
    _, want = ref(toy_batch(env.rank))
    return {"plan": plan, "saved_world_size": extra["saved_world_size"], "weights": _max_diff(dmp, ref_after),
            "adagrad": _adagrad_state_diff(dmp, ref_sums), "logits": float((got.logits - want.logits).abs().max())}


def _restore_worker(ckpt_root: str, ec_type: str) -> Dict[str, Any]:
    import torch.distributed as dist

    from store_rec.distributed.env import init_distributed

    env = init_distributed()
    try:
        return _restore(ckpt_root, ec_type, env)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):  # noqa: ANN001, ANN201
    from store_rec.distributed.local_launch import launch_local

    root = tmp_path_factory.mktemp("history_ckpt")
    return root, launch_local(_ec_types_worker, (str(root),), nproc=2)


@pytest.mark.parametrize("ec_type", EC_TYPES)
def test_ec_sharded_equals_unsharded_on_2_gloo_ranks(two_rank_run, ec_type):
    _, res = two_rank_run
    for r in (0, 1):
        got = res[r][ec_type]
        assert got["plan"] == {"t_a": "table_wise", "t_b": "table_wise", "t_h": ec_type, "t_g": ec_type}
        assert got["fwd"] <= 1e-5, got  # logits of each rank's batch
        assert got["after_step"] <= 1e-5, got  # every local shard and dense weight after one step
        assert got["adagrad"] <= 1e-5, got  # the fused Adagrad sums of this rank's table shards
    # how t_h (41 x 8) lies on the 2 ranks
    shards = {"table_wise": [[(41, 8)], []], "row_wise": [[(21, 8)], [(20, 8)]], "column_wise": [[(41, 4)], [(41, 4)]]}[ec_type]
    assert sorted([res[r][ec_type]["t_h_local_shards"] for r in (0, 1)], key=len, reverse=True) == sorted(shards, key=len, reverse=True)


def test_ec_data_parallel_does_not_run_on_cpu_so_store_rec_leaves_it_out(two_rank_run):
    from store_rec.distributed.sequence import CpuSequenceECSharder

    _, res = two_rank_run
    # TorchRec 1.8 + fbgemm-gpu-cpu 1.8: the dense cpu kernel pools the unpooled table. If this starts
    # passing (None), data_parallel can go back into SEQUENCE_CPU_SHARDING_TYPES.
    assert all(res[r]["data_parallel"] is not None for r in (0, 1)), res
    assert "data_parallel" not in CpuSequenceECSharder().sharding_types("cpu")
    assert "data_parallel" in CpuSequenceECSharder().sharding_types("cuda")


def _check_restored(res: Dict[str, Any], ec_type: str) -> None:
    assert res["saved_world_size"] == 2
    assert res["plan"]["t_h"] == ec_type and res["plan"]["t_g"] == ec_type
    assert res["weights"] <= 1e-6, res  # saved row-wise on 2 ranks, restored
    assert res["adagrad"] <= 1e-5, res  # and the tables' fused optimizer state, resharded
    assert res["logits"] <= 1e-6, res


def test_checkpoint_restores_ec_shards_resharded(two_rank_run):
    from store_rec.train.checkpoint import verify_checkpoint

    root, res = two_rank_run
    step = root / "step-1"
    assert verify_checkpoint(step) is None
    assert json.loads((step / ".store-rec-checkpoint").read_text())["world_size"] == 2
    for r in (0, 1):  # row_wise when saved, table_wise when restored
        _check_restored(res[r]["restore_table_wise"], "table_wise")


def test_checkpoint_restores_ec_shards_on_another_world_size(two_rank_run):
    root, _ = two_rank_run
    res = _restore_worker(str(root), "column_wise")  # elastic: 2 ranks -> a world of one (this process)
    _check_restored(res, "column_wise")


# ---------------------------------------------------------------------------------------------- planning
def test_plan_lists_history_tables_with_sharding_and_memory(tmp_path):
    from store_rec.distributed.plan_io import load_plan, read_plan, save_plan
    from store_rec.distributed.planning import plan_tables
    from store_rec.distributed.topology import load_topology

    tables = BAG + SEQ
    pfs = {"a": 1.0, "b": 1.0, "h": 3.0, "g": 3.0}
    for topo, ws in (("cpu_gloo", 2), ("h100x8", 64)):
        spec = load_topology(topo).with_world_size(ws)
        res = plan_tables(tables, spec, "auto", None, None, pfs)
        usage = res.table_usage()
        assert {n: u["kind"] for n, u in usage.items()} == {"t_a": "bag", "t_b": "bag", "t_h": "sequence", "t_g": "sequence"}
        allowed = ("table_wise", "column_wise", "row_wise") + (("data_parallel",) if topo != "cpu_gloo" else ())
        assert all(usage[t.name]["sharding_type"] in allowed for t in SEQ), usage
        # 41 x 8 fp32 rows of t_h (plus optimizer state): some memory, on real ranks
        assert usage["t_h"]["hbm_gb" if topo != "cpu_gloo" else "ddr_gb"] > 41 * 8 * 4 / 1e9 * 0.99
        assert res.summary()["sequence_tables"] == 2
        path = save_plan(res, tmp_path / f"plan_{topo}.json")
        d = read_plan(path)
        assert d["module_path"] == "ebc" and d["ec_module_path"] == "ec"
        assert [t.get("kind") for t in d["tables"]] == [None, None, "sequence", "sequence"]
        assert d["plan"]["t_h"]["kind"] == "sequence" and d["plan"]["t_h"]["sharding_type"] in allowed
        dev = "cpu" if topo == "cpu_gloo" else "cuda"
        plan = load_plan(path, tables, ws, dev, module_path="model.sparse_arch.embedding_bag_collection",
                         ec_module_path="model.history", local_world_size=spec.local_world_size).plan
        assert sorted(plan) == ["model.history", "model.sparse_arch.embedding_bag_collection"]
        assert sorted(plan["model.history"]) == ["t_g", "t_h"]


def test_plan_forced_strategies_and_overrides_for_history_tables():
    from store_rec.distributed.planning import PlanConfig, TableOverride, plan_tables
    from store_rec.distributed.topology import load_topology
    from store_rec.errors import UserError

    spec = load_topology("cpu_gloo").with_world_size(2)
    # a strategy the EC sharder lacks leaves EC tables to the planner among their own types
    res = plan_tables(BAG + SEQ, spec, "table_row_wise", None, None, None)
    usage = res.table_usage()
    assert usage["t_a"]["sharding_type"] == "table_row_wise"
    assert usage["t_h"]["sharding_type"] in ("table_wise", "column_wise", "row_wise")
    # data_parallel forced on every table: the EBC tables get it, the EC tables (cpu) cannot
    res = plan_tables(BAG + SEQ, spec, "data_parallel", None, None, None)
    assert res.table_usage()["t_b"]["sharding_type"] == "data_parallel"
    assert res.table_usage()["t_g"]["sharding_type"] != "data_parallel"
    res = plan_tables(BAG + SEQ, spec, "row_wise", None, None, None)
    assert {u["sharding_type"] for u in res.table_usage().values()} == {"row_wise"}
    # an explicit per-table request the EC table cannot have is an error naming it
    cfg = PlanConfig(tables={"t_h": TableOverride(sharding_types=["table_row_wise"])})
    with pytest.raises(UserError, match=r"plan.tables.t_h.sharding_types: \['table_row_wise'\] cannot shard t_h"):
        plan_tables(BAG + SEQ, spec, "auto", None, cfg, None)
    cfg = PlanConfig(tables={"t_g": TableOverride(sharding_types=["data_parallel"])})
    with pytest.raises(UserError, match="it can be"):
        plan_tables(BAG + SEQ, spec, "auto", None, cfg, None)


def test_plan_file_with_data_parallel_history_table_is_refused_on_cpu(tmp_path):
    from store_rec.distributed.plan_io import load_plan, save_plan
    from store_rec.distributed.planning import plan_tables
    from store_rec.distributed.topology import load_topology
    from store_rec.errors import UserError

    path = save_plan(plan_tables(BAG + SEQ, load_topology("cpu_gloo").with_world_size(2), "auto", None, None, None), tmp_path / "p.json")
    d = json.loads(path.read_text())
    d["plan"]["t_h"].update(sharding_type="data_parallel", compute_kernel="dense", ranks=[0, 1], shards=[])
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="t_h: data_parallel does not run for an EmbeddingCollection table on cpu"):
        load_plan(path, BAG + SEQ, 2, "cpu")
    # a table planned as a bag but now an EC table (or the reverse) is named
    d["tables"][2].pop("kind")
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="t_h: planned as bag"):
        load_plan(path, BAG + SEQ, 2, "cpu")


def test_model_tables_and_sparse_parameters_cover_both_collections():
    from store_rec.models.ranking import RankingTrain
    from store_rec.train.sharding import model_tables, sparse_parameters

    m = ToyHistoryModel()
    assert [t.name for t in model_tables(RankingTrain(m))] == ["t_a", "t_b", "t_h", "t_g"]
    ids = {id(p) for p in sparse_parameters(m)}
    assert ids == {id(p) for p in m.model.sparse_arch.parameters()} | {id(p) for p in m.model.history.parameters()}
    assert not ids & {id(p) for p in m.model.over.parameters()}


def test_planner_constraints_of_train_app_for_history_tables():
    from store_rec.errors import UserError
    from store_rec.train.sharding import planner_constraints

    cfg = _cfg("row_wise")
    cfg.sharding.tables = {}
    cfg.sharding.sharding_types = ["table_row_wise", "table_wise"]
    c = planner_constraints(cfg, BAG + SEQ, torch.device("cpu"))
    assert c["t_a"].sharding_types == ["table_row_wise", "table_wise"]
    assert c["t_h"].sharding_types == ["table_wise"]  # table_row_wise: not an EC type
    cfg.sharding.sharding_types = None
    assert sorted(planner_constraints(cfg, BAG + SEQ, torch.device("cpu"))["t_g"].sharding_types) == ["column_wise", "row_wise", "table_wise"]
    from store_rec.train.config import TableShardingConfig

    cfg.sharding.tables = {"t_h": TableShardingConfig(sharding_types=["table_column_wise"])}
    with pytest.raises(UserError, match=r"sharding.tables.t_h.sharding_types: \['table_column_wise'\] cannot shard t_h"):
        planner_constraints(cfg, BAG + SEQ, torch.device("cpu"))



def test_plan_verify_checks_history_tables_sharded_equals_unsharded(two_rank_run):
    """``store-rec plan --verify``'s check with EC tables (run inside the 2-rank launch): each plan applied on
    2 gloo ranks, every EBC feature's pooled rows, every EC feature's rows (one per id) and every table
    shard's gradient == unsharded."""
    from store_rec.distributed.verify import verify_results

    root, res = two_rank_run
    jobs = res[0]["verify_jobs"]
    out = verify_results(jobs, [r for k in (0, 1) for r in res[k]["verify"]], root / "verify")
    assert [r["strategy"] for r in out] == list(VERIFY)
    for r in out:
        assert r["ok"] and r["max_fwd_diff"] <= 1e-5 and r["max_grad_diff"] <= 1e-5, r
        assert all(x["shards_checked"] == 4 for x in r["ranks"]), r["ranks"]  # 4 tables, each split over both ranks
        plan = json.loads(Path(r["plan"]).read_text())["plan"]
        assert {plan[t.name]["kind"] for t in SEQ} == {"sequence"} and all(len(plan[t.name]["shards"]) == 2 for t in SEQ)
