"""``store-rec plan --verify``: run a saved plan on 2 gloo ranks and compare with the unsharded EBC (and
EmbeddingCollection: a model's history-token tables, unpooled, checked id by id).

For each cpu-runnable strategy (data_parallel, table_wise, column_wise, table_column_wise, and row_wise /
table_row_wise through :class:`store_rec.distributed.cpu_row_wise.CpuRowWiseEBCSharder`) a world-size-2
cpu plan is made with the planner and saved as JSON; one local launch of 2 processes (:func:`store_rec.distributed.local_launch.launch_local`) then, per
plan, loads it with :func:`store_rec.distributed.plan_io.load_plan`, shards a meta-device
``EmbeddingBagCollection`` (with EmbeddingCollection tables: the EBC + EC module the planner planned,
:func:`store_rec.distributed.planning.planner.planning_module`) with ``DistributedModelParallel``,
copies the unsharded reference's weights into the local shards, and checks on the same batch:

* forward: each rank's pooled embeddings ``Tensor[B, D]`` per feature (EC features: ``Tensor[sum(lengths),
  D]``, one row per id) == the unsharded module on that rank's input (max abs difference <= 1e-5);
* backward: the gradient each table receives. Model-parallel tables use a fused EXACT_SGD with lr 1,
  so gradient = weight before - weight after the backward; data-parallel tables (dense kernel, DDP)
  hold it in ``.grad``. TorchRec divides model-parallel gradients by the world size in its all-to-all
  backward (``torchrec.distributed.comm_ops`` gradient division, on by default) just as DDP averages
  data-parallel ones, so both are multiplied by the world size and must equal the unsharded EBC's
  gradient of ``sum_r loss_r`` (``loss_r = sum_f sum(out_r[f] * c_r[f])``, fixed random ``c_r``).

Column-wise plans are made with ``min_partition = dim / 2`` so each table really is split in 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

TOL = 1e-5
WORLD = 2
SHARDERS = ("store_rec", "torchrec")
ROW_WISE = ("row_wise", "table_row_wise")
PROBE = "gloo_reduce_scatter"


def _tables_json(tables: Sequence[Any]) -> List[Dict[str, Any]]:
    from store_rec.distributed.sequence import is_sequence_table

    return [{"name": t.name, "embedding_dim": t.embedding_dim, "num_embeddings": t.num_embeddings, "feature_names": list(t.feature_names),
             "sequence": is_sequence_table(t)} for t in tables]


def _tables_from_json(tables_js: List[Dict[str, Any]]) -> List[Any]:
    """EmbeddingBagConfigs, and EmbeddingConfigs for the EmbeddingCollection (history) tables."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig

    return [(EmbeddingConfig if t.get("sequence") else EmbeddingBagConfig)(**{k: v for k, v in t.items() if k != "sequence"})
            for t in tables_js]


def _plain_key(key: str) -> str:
    """A state-dict / parameter name without DMP's and DDP's wrapper segments."""
    return ".".join(p for p in key.split(".") if p not in ("_dmp_wrapped_module", "module"))


def _as_dict(out: Any) -> Dict[str, Any]:
    """The module output as ``{feature: Tensor}`` (a KeyedTensor, awaitable or not, or a dict)."""
    out = out.wait() if hasattr(out, "wait") else out
    return dict(out) if isinstance(out, dict) else out.to_dict()


def _local_batch(tables: List[Any], rank: int, batch_size: int, seed: int):
    """The KJT rank ``rank`` feeds (0-3 ids per feature and sample, deterministic)."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    g = torch.Generator().manual_seed(seed * 1000 + rank)
    keys, lengths, values = [], [], []
    for t in tables:
        for f in t.feature_names:
            ln = torch.randint(0, 4, (batch_size,), generator=g)
            keys.append(f)
            lengths.append(ln)
            values.append(torch.randint(0, t.num_embeddings, (int(ln.sum()),), generator=g))
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))


def gloo_reduce_scatter_probe() -> Dict[str, List[float]]:
    """Call ``reduce_scatter`` and ``reduce_scatter_tensor`` on the current (gloo) process group.

    Rank ``r`` contributes ``(r + 1) * (j + 1)`` (two elements) to destination rank ``j``, so rank ``j``
    must receive ``(j + 1) * world * (world + 1) / 2`` -- ``[3, 3]`` on rank 0 and ``[6, 6]`` on rank 1 for
    2 ranks. Returns what this rank received from each call (TorchRec's row-wise output dist uses both:
    ``reduce_scatter`` in ``ReduceScatter_Req``, the tensor form in the sync path)."""
    import torch
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    inputs = [torch.full((2,), float((rank + 1) * (j + 1))) for j in range(world)]
    got = torch.zeros(2)
    dist.reduce_scatter(got, inputs)
    got_t = torch.zeros(2)
    dist.reduce_scatter_tensor(got_t, torch.cat(inputs))
    return {"reduce_scatter": got.tolist(), "reduce_scatter_tensor": got_t.tolist()}


def _sharder(kind: str, fused_params: Dict[str, Any]) -> Any:
    """``store_rec``: CpuRowWiseEBCSharder; ``torchrec``: TorchRec's stock EmbeddingBagCollectionSharder."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    from store_rec.distributed.cpu_row_wise import CpuRowWiseEBCSharder

    if kind not in SHARDERS:
        raise ValueError(f"sharder {kind!r} is not one of {SHARDERS}")
    return (CpuRowWiseEBCSharder if kind == "store_rec" else EmbeddingBagCollectionSharder)(fused_params=fused_params)


def check_plans(jobs: List[Dict[str, Any]], tables_js: List[Dict[str, Any]], batch_size: int = 8, seed: int = 0) -> List[Dict[str, Any]]:
    """On every rank of the current (gloo) process group: apply each job's plan (``{"strategy", "sharder",
    "plan": path}``) to the tables ``tables_js`` (:func:`_tables_json`) and compare with the unsharded
    module (see the module docstring); this rank's records (and the reduce-scatter probe's, with row-wise
    jobs)."""
    import torch
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    from store_rec.distributed.plan_io import load_plan
    from store_rec.distributed.planning.planner import planning_module
    from store_rec.distributed.sequence import CpuSequenceECSharder

    rank, world = dist.get_rank(), dist.get_world_size()
    tables = _tables_from_json(tables_js)
    out: List[Dict[str, Any]] = []
    if any(j["strategy"] in ROW_WISE for j in jobs):
        try:
            out.append({"strategy": PROBE, "rank": rank, **gloo_reduce_scatter_probe()})
        except RuntimeError as e:  # an older torch: gloo without reduce-scatter
            out.append({"strategy": PROBE, "rank": rank, "error": " ".join(str(e).split())[:300]})
    for job in jobs:
        torch.manual_seed(seed)
        ref = planning_module(tables, device="cpu")  # the EBC (and EC: history tables), unsharded
        full = {k: v.detach().clone() for k, v in ref.state_dict().items()}
        # unsharded reference: gradient of sum over ranks of loss_r on the global batch
        outs = []  # per rank: (embeddings per feature -- pooled / one row per id --, fixed loss weights per feature)
        for r in range(world):
            kt = _as_dict(ref(_local_batch(tables, r, batch_size, seed)))
            g = torch.Generator().manual_seed(seed + 7 + r)
            c = {k: torch.randn(v.shape, generator=g) for k, v in sorted(kt.items())}
            outs.append((kt, c))
        sum((kt[k] * c[k]).sum() for kt, c in outs for k in kt).backward()
        ref_grad = {n: p.grad for n, p in ref.named_parameters()}
        ref_out, c_local = outs[rank]

        plan = load_plan(job["plan"], tables, world, "cpu")
        fused = {"optimizer": EmbOptimType.EXACT_SGD, "learning_rate": 1.0}
        dmp = DistributedModelParallel(
            module=planning_module(tables),
            env=ShardingEnv.from_process_group(dist.group.WORLD),
            device=torch.device("cpu"),
            plan=plan,
            sharders=[_sharder(job.get("sharder", "store_rec"), fused), CpuSequenceECSharder(fused_params=fused)],
        )
        before: Dict[str, Any] = {}
        for key, val in dmp.state_dict().items():
            name = _plain_key(key)
            if hasattr(val, "local_shards"):
                for sh in val.local_shards():
                    (o0, o1), (s0, s1) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                    sh.tensor.detach().copy_(full[name][o0 : o0 + s0, o1 : o1 + s1])
            else:
                val.detach().copy_(full[name])
            before[name] = full[name]
        got = _as_dict(dmp(_local_batch(tables, rank, batch_size, seed)))
        if sorted(got) != sorted(ref_out):
            raise RuntimeError(f"{job['strategy']}: sharded output features {sorted(got)} != unsharded {sorted(ref_out)}")
        fwd = max(float((got[k].detach() - ref_out[k].detach()).abs().max()) for k in got)
        sum((got[k] * c_local[k]).sum() for k in got).backward()
        dense_grads = {_plain_key(n): p.grad for n, p in dmp.named_parameters() if p.grad is not None}
        gdiff = 0.0
        checked = 0
        for key, val in dmp.state_dict().items():
            name = _plain_key(key)
            if hasattr(val, "local_shards"):
                for sh in val.local_shards():
                    (o0, o1), (s0, s1) = sh.metadata.shard_offsets, sh.metadata.shard_sizes
                    eff = (before[name][o0 : o0 + s0, o1 : o1 + s1] - sh.tensor.detach()) * world
                    gdiff = max(gdiff, float((eff - ref_grad[name][o0 : o0 + s0, o1 : o1 + s1]).abs().max()))
                    checked += 1
            elif name in dense_grads:  # data parallel: DDP averaged the rank gradients
                gdiff = max(gdiff, float((dense_grads[name] * world - ref_grad[name]).abs().max()))
                checked += 1
            else:
                raise RuntimeError(f"{job['strategy']}: replicated table {name} got no gradient")
        out.append({"strategy": job["strategy"], "sharder": job.get("sharder", "store_rec"), "rank": rank,
                    "max_fwd_diff": fwd, "max_grad_diff": gdiff, "shards_checked": checked})
        dist.barrier()
    return out


def _worker(jobs: List[Dict[str, Any]], tables_js: List[Dict[str, Any]], batch_size: int, seed: int) -> List[Dict[str, Any]]:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        return check_plans(jobs, tables_js, batch_size, seed)
    finally:
        dist.destroy_process_group()


def verify_strategies(
    tables: Sequence[Any],
    strategies: Sequence[str],
    out_dir: os.PathLike,
    max_rows: int = 5000,
    batch_size: int = 8,
    seed: int = 0,
    sharders: Sequence[str] = ("store_rec",),
) -> List[Dict[str, Any]]:
    """Plan each strategy for 2 cpu ranks, run the plans on 2 gloo processes, compare with the unsharded EBC.

    Args:
        sharders: which EBC sharder ``DistributedModelParallel`` applies each plan with: ``store_rec``
            (:class:`~store_rec.distributed.cpu_row_wise.CpuRowWiseEBCSharder`) and/or ``torchrec``
            (TorchRec's stock ``EmbeddingBagCollectionSharder``). Plans are always made with the
            former (TorchRec's planner refuses row-wise types on cpu with the stock one).

    Returns one record per (strategy, sharder): ``{strategy, sharder, max_fwd_diff, max_grad_diff, ok,
    plan, ranks}`` (maxima over ranks). When a row-wise strategy is checked, the records of row-wise
    strategies also carry ``gloo_reduce_scatter``: what :func:`gloo_reduce_scatter_probe` received per
    rank, and ``DIR/gloo_reduce_scatter.json`` is written.
    """
    from store_rec.distributed.local_launch import launch_local

    jobs, tables_js = verify_jobs(tables, strategies, out_dir, max_rows, sharders)
    per_rank = launch_local(_worker, (jobs, tables_js, batch_size, seed), nproc=WORLD)
    return verify_results(jobs, [r for rank_recs in per_rank.values() for r in rank_recs], out_dir)


def verify_jobs(tables: Sequence[Any], strategies: Sequence[str], out_dir: os.PathLike, max_rows: int = 5000,
                sharders: Sequence[str] = ("store_rec",)) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """The plans :func:`verify_strategies` checks (saved in ``out_dir``) as ``(jobs, tables_js)`` for
    :func:`check_plans`: tables capped at ``max_rows`` rows, one world-size-2 cpu plan per strategy."""
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig

    from store_rec.distributed.plan_io import save_plan
    from store_rec.distributed.planning import PlanConfig, TableOverride, plan_tables
    from store_rec.distributed.sequence import is_sequence_table
    from store_rec.distributed.topology import load_topology

    bad = [s for s in sharders if s not in SHARDERS]
    if bad or not sharders:
        raise ValueError(f"sharders: expected some of {SHARDERS}, got {list(sharders)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    small = [(EmbeddingConfig if is_sequence_table(t) else EmbeddingBagConfig)(
        name=t.name, embedding_dim=t.embedding_dim, num_embeddings=min(t.num_embeddings, max_rows), feature_names=list(t.feature_names))
        for t in tables]
    spec = load_topology("cpu_gloo").with_world_size(WORLD)
    jobs = []
    for s in strategies:
        cfg = PlanConfig()
        if "column_wise" in s:
            cfg.tables = {t.name: TableOverride(min_partition=max(4, (t.embedding_dim // 2) // 4 * 4)) for t in small}
        res = plan_tables(small, spec, s, None, cfg)
        path = save_plan(res, out / f"plan_verify_{s}.json")
        jobs += [{"strategy": s, "sharder": sh, "plan": str(path)} for sh in sharders]
    return jobs, _tables_json(small)


def verify_results(jobs: List[Dict[str, Any]], all_recs: List[Dict[str, Any]], out_dir: os.PathLike) -> List[Dict[str, Any]]:
    """Every rank's :func:`check_plans` records -> one result per job (see :func:`verify_strategies`);
    writes ``verify.json`` (and ``gloo_reduce_scatter.json``) into ``out_dir``."""
    out = Path(out_dir)
    probe = sorted((r for r in all_recs if r["strategy"] == PROBE), key=lambda r: r["rank"])
    if probe:
        (out / "gloo_reduce_scatter.json").write_text(json.dumps(probe, indent=1) + "\n")
    results = []
    for j in jobs:
        recs = [r for r in all_recs if r["strategy"] == j["strategy"] and r.get("sharder") == j["sharder"]]
        fwd = max(r["max_fwd_diff"] for r in recs)
        grad = max(r["max_grad_diff"] for r in recs)
        rec = {"strategy": j["strategy"], "sharder": j["sharder"], "max_fwd_diff": fwd, "max_grad_diff": grad,
               "ok": fwd <= TOL and grad <= TOL, "plan": j["plan"], "ranks": recs}
        if j["strategy"] in ROW_WISE and probe:
            rec["gloo_reduce_scatter"] = probe
        results.append(rec)
    (out / "verify.json").write_text(json.dumps(results, indent=1) + "\n")
    return results
