"""Row-wise sharding on cpu/gloo (docs/ROW_WISE_CPU.md): the evidence, reproducible.

* gloo on this torch implements reduce-scatter (the collective TorchRec's row-wise output dist needs);
* row_wise and table_row_wise plans run on 2 gloo ranks and equal the unsharded EBC, applied with
  store_rec's CpuRowWiseEBCSharder *and* with TorchRec's stock EmbeddingBagCollectionSharder;
* what the stock sharder refuses is planning: its ``sharding_types("cpu")`` lacks the row-wise types, so
  TorchRec's planner finds no (type, kernel) pair for them.
"""

from __future__ import annotations

import json

import pytest
import torch
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from store_rec.distributed.cpu_row_wise import CpuRowWiseEBCSharder
from store_rec.distributed.topology import load_topology, make_topology
from store_rec.distributed.verify import verify_strategies


def _tables():
    # rows not divisible by 2 (uneven row-wise shards), dims 8 and 16
    return [
        EmbeddingBagConfig(name="t_a", embedding_dim=8, num_embeddings=51, feature_names=["a"]),
        EmbeddingBagConfig(name="t_b", embedding_dim=16, num_embeddings=81, feature_names=["b"]),
    ]


def test_stock_sharder_offers_no_row_wise_on_cpu_so_torchrec_planner_refuses():
    assert "row_wise" not in EmbeddingBagCollectionSharder().sharding_types("cpu")
    assert {"row_wise", "table_row_wise"} <= set(CpuRowWiseEBCSharder().sharding_types("cpu"))
    assert CpuRowWiseEBCSharder().sharding_types("cuda") == EmbeddingBagCollectionSharder().sharding_types("cuda")
    topo = make_topology(load_topology("cpu_gloo").with_world_size(2))
    ebc = EmbeddingBagCollection(tables=_tables(), device=torch.device("meta"))
    cons = {t.name: ParameterConstraints(sharding_types=["row_wise"]) for t in _tables()}
    with pytest.raises(RuntimeError, match="No available sharding type and compute kernel combination"):
        EmbeddingShardingPlanner(topology=topo, constraints=cons).plan(ebc, [EmbeddingBagCollectionSharder()])
    plan = EmbeddingShardingPlanner(topology=topo, constraints=cons).plan(ebc, [CpuRowWiseEBCSharder()]).plan[""]
    assert {ps.sharding_type for ps in plan.values()} == {"row_wise"}


def test_gloo_reduce_scatter_and_row_wise_sharded_equals_unsharded_with_both_sharders(tmp_path):
    res = verify_strategies(_tables(), ["row_wise", "table_row_wise"], tmp_path, sharders=("store_rec", "torchrec"))
    # gloo reduce-scatter on 2 ranks: rank r sends (r+1)*(j+1) to rank j -> rank 0 gets 1+2=3, rank 1 gets 2+4=6
    probe = json.loads((tmp_path / "gloo_reduce_scatter.json").read_text())
    assert [p["rank"] for p in probe] == [0, 1]
    assert [p["reduce_scatter"] for p in probe] == [[3.0, 3.0], [6.0, 6.0]]
    assert [p["reduce_scatter_tensor"] for p in probe] == [[3.0, 3.0], [6.0, 6.0]]
    assert {(r["strategy"], r["sharder"]) for r in res} == {(s, h) for s in ("row_wise", "table_row_wise") for h in ("store_rec", "torchrec")}
    for r in res:
        assert r["ok"] and r["max_fwd_diff"] <= 1e-5 and r["max_grad_diff"] <= 1e-5, r
        assert r["gloo_reduce_scatter"] == probe
        # both tables split over both ranks: 2 shards checked per rank
        assert sorted(x["rank"] for x in r["ranks"]) == [0, 1] and all(x["shards_checked"] == 2 for x in r["ranks"])
    for s in ("row_wise", "table_row_wise"):
        plan = json.loads((tmp_path / f"plan_verify_{s}.json").read_text())["plan"]
        assert [sh["sizes"][0] for sh in plan["t_a"]["shards"]] == [26, 25]
        assert [sh["sizes"][0] for sh in plan["t_b"]["shards"]] == [41, 40]
        assert all(e["sharding_type"] == s for e in plan.values())
