"""Offline sharding plans (store_rec.distributed.{topology,planning,plan_io}, `store-rec plan`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from store_rec.cli import main
from store_rec.config import ConfigError
from store_rec.distributed.plan_io import load_plan, read_plan, save_plan
from store_rec.distributed.planning import (
    PlanConfig,
    PlanningError,
    SyntheticTablesConfig,
    TableOverride,
    measure_pooling_factors,
    plan_tables,
    synthetic_tables,
)
from store_rec.distributed.topology import GB, load_topology, make_topology
from store_rec.errors import UserError


def _tables(n=6, rows=1000, dim=32):
    return [EmbeddingBagConfig(name=f"t_f{i}", embedding_dim=dim, num_embeddings=rows * (i + 1), feature_names=[f"f{i}"]) for i in range(n)]


@pytest.fixture(scope="module")
def h100_64():
    return load_topology("h100x8").with_world_size(64)


@pytest.fixture(scope="module")
def auto64(h100_64):
    return plan_tables(_tables(), h100_64, "auto", "fused", PlanConfig(proposer="greedy"), {"f0": 3.0})


def test_offline_plan_64_cuda_ranks_without_process_group(auto64):
    assert not torch.distributed.is_initialized()
    plan = auto64.sharding_plan.plan[""]
    assert sorted(plan) == [f"t_f{i}" for i in range(6)]
    for ps in plan.values():
        assert ps.compute_kernel == "fused"
        assert all(0 <= r < 64 for r in ps.ranks)
        if ps.sharding_spec is not None:
            assert all(str(s.placement).split("/")[1].startswith("cuda:") for s in ps.sharding_spec.shards)
    assert len(auto64.ranks) == 64
    s = auto64.summary()
    assert s["world_size"] == 64 and s["step_time_ms"] > 0 and s["peak_hbm_gb"] > 0
    assert s["perf_imbalance"] >= 1.0 and s["hbm_imbalance"] >= 1.0
    # per-rank HBM sums to the shards' storage the planner assigned
    total = sum(sh.storage.hbm for so in auto64.sharding_options for sh in so.shards) / GB
    assert sum(r.hbm_gb for r in auto64.ranks) == pytest.approx(total, rel=1e-9)
    assert "Planner Statistics" in auto64.stats_text  # TorchRec's EmbeddingStats table was captured
    assert auto64.pooling_factors["f0"] == 3.0 and auto64.pooling_factors["f1"] == 1.0


def test_fast_planner_gives_identical_plans(h100_64):
    runs = [plan_tables(_tables(), h100_64, "auto", None, PlanConfig(proposer="greedy", fast_planner=f)) for f in (True, False)]
    fast, ref = ({so.name: so for so in r.sharding_options} for r in runs)
    assert sorted(fast) == sorted(ref)
    for name, so in ref.items():
        assert (fast[name].sharding_type, fast[name].compute_kernel) == (so.sharding_type, so.compute_kernel)
        assert [(s.rank, s.size, s.offset, s.perf, s.storage) for s in fast[name].shards] == [(s.rank, s.size, s.offset, s.perf, s.storage) for s in so.shards]
    assert runs[0].summary() | {"planning_time_s": 0} == runs[1].summary() | {"planning_time_s": 0}



def test_fast_planner_falls_back_on_other_torchrec(monkeypatch, caplog):
    """Another torchrec version: TorchRec's own code path (nothing patched), with one warning naming both versions."""
    import copy

    from torchrec.distributed.planner import enumerators, planners

    from store_rec.distributed.planning import torchrec_patches as tp

    with tp.fast_planner(True):  # the installed (patched-for) version: the copy shims are in place
        assert enumerators.copy is not copy and planners.copy is not copy
    assert enumerators.copy is copy and planners.copy is copy
    monkeypatch.setattr(tp, "installed_torchrec_version", lambda: "9.9.9")
    monkeypatch.setattr(tp, "_warned", set())
    with caplog.at_level("WARNING", logger=tp.__name__):
        for _ in range(2):
            with tp.fast_planner(True):
                assert enumerators.copy is copy and planners.copy is copy
    warnings = [r.getMessage() for r in caplog.records if r.name == tp.__name__]
    assert len(warnings) == 1 and f"written for torchrec {tp.PATCHED_TORCHREC}, found 9.9.9" in warnings[0]

@pytest.mark.parametrize("strategy", ["row_wise", "column_wise", "table_wise"])
def test_forced_strategy_honoured(h100_64, strategy):
    cfg = PlanConfig(proposer="greedy")
    if strategy == "column_wise":
        cfg.tables = {t.name: TableOverride(min_partition=8) for t in _tables()}
    res = plan_tables(_tables(), h100_64, strategy, None, cfg)
    plan = res.sharding_plan.plan[""]
    assert {ps.sharding_type for ps in plan.values()} == {strategy}
    t1 = plan["t_f1"]
    sizes = [list(s.shard_sizes) for s in t1.sharding_spec.shards]
    if strategy == "row_wise":
        assert len(sizes) == 64 and sum(s[0] for s in sizes) == 2000 and all(s[1] == 32 for s in sizes)
    elif strategy == "column_wise":
        assert len(sizes) >= 2 and all(s[0] == 2000 for s in sizes) and sum(s[1] for s in sizes) == 32
    else:
        assert sizes == [[2000, 32]]


def test_per_table_override_wins(h100_64):
    cfg = PlanConfig(proposer="greedy", tables={"t_f2": TableOverride(sharding_types=["row_wise"])})
    plan = plan_tables(_tables(), h100_64, "table_wise", None, cfg).sharding_plan.plan[""]
    assert plan["t_f2"].sharding_type == "row_wise"
    assert {plan[n].sharding_type for n in plan if n != "t_f2"} == {"table_wise"}
    with pytest.raises(UserError, match="plan.tables.t_nope: no such table"):
        plan_tables(_tables(), h100_64, "auto", None, PlanConfig(tables={"t_nope": TableOverride()}))


def test_save_load_round_trip(auto64, h100_64, tmp_path):
    path = save_plan(auto64, tmp_path / "plan.json")
    d = read_plan(path)
    assert d["world_size"] == 64 and d["compute_device"] == "cuda"
    assert [t["name"] for t in d["tables"]] == [f"t_f{i}" for i in range(6)]
    loaded = load_plan(path, _tables(), 64, "cuda").plan[""]
    orig = auto64.sharding_plan.plan[""]
    assert sorted(loaded) == sorted(orig)
    for name, ps in orig.items():
        got = loaded[name]
        assert (got.sharding_type, got.compute_kernel, got.ranks) == (ps.sharding_type, ps.compute_kernel, ps.ranks)
        if ps.sharding_spec is None:
            assert got.sharding_spec is None
        else:
            assert [(s.shard_offsets, s.shard_sizes, str(s.placement)) for s in got.sharding_spec.shards] == [
                (s.shard_offsets, s.shard_sizes, str(s.placement)) for s in ps.sharding_spec.shards
            ]
    # a module path for the model the plan is applied to
    assert list(load_plan(path, _tables(), 64, torch.device("cuda"), module_path="sparse_arch.embedding_bag_collection").plan) == [
        "sparse_arch.embedding_bag_collection"
    ]


def test_load_rejects_mismatches(auto64, tmp_path):
    path = save_plan(auto64, tmp_path / "plan.json")
    with pytest.raises(UserError, match=r"world size: plan has 64, this job has 8"):
        load_plan(path, _tables(), 8, "cuda")
    with pytest.raises(UserError, match=r"device: plan is for cuda, this job runs on cpu"):
        load_plan(path, _tables(), 64, "cpu")
    with pytest.raises(UserError, match=r"tables missing from the plan: t_f6"):
        load_plan(path, _tables(7), 64, "cuda")
    with pytest.raises(UserError, match=r"tables in the plan but not in the model: t_f4, t_f5"):
        load_plan(path, _tables(4), 64, "cuda")
    changed = _tables()
    changed[1] = EmbeddingBagConfig(name="t_f1", embedding_dim=16, num_embeddings=2001, feature_names=["f1"])
    with pytest.raises(UserError, match=r"table t_f1: rows changed \(plan 2000, model 2001\); table t_f1: dim changed \(plan 32, model 16\)"):
        load_plan(path, changed, 64, "cuda")
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not a store_rec plan"):
        load_plan(tmp_path / "bad.json", _tables(), 64, "cuda")


def test_topology_presets_and_bad_keys(tmp_path):
    h = load_topology("h100x8")
    assert (h.compute_device, h.local_world_size, h.hbm_cap_gb, h.intra_host_bw_gbs, h.inter_host_bw_gbs) == ("cuda", 8, 80, 900, 50)
    topo = make_topology(h.with_world_size(16))
    assert topo.world_size == 16 and topo.local_world_size == 8 and topo.compute_device == "cuda"
    assert topo.devices[0].storage.hbm == 80 * GB and topo.devices[3].storage.ddr == 256 * GB
    assert topo.intra_host_bw == pytest.approx(900 * GB / 1000) and topo.inter_host_bw == pytest.approx(50 * GB / 1000)
    assert load_topology("cpu_gloo").compute_device == "cpu" and load_topology("a100x8").intra_host_bw_gbs == 600
    bad = tmp_path / "t.yaml"
    bad.write_text("world_size: 8\nhbm_cap: 80\n")
    with pytest.raises(ConfigError, match=r"t.yaml: topology.hbm_cap: unknown key"):
        load_topology(bad)
    bad.write_text("world_size: 8\nhbm_cap_gb: -1\n")
    with pytest.raises(ConfigError, match=r"topology.hbm_cap_gb: must be > 0"):
        load_topology(bad)
    with pytest.raises(ConfigError, match=r"topology.world_size: expected int"):
        load_topology("h100x8", ["world_size=many"])
    with pytest.raises(ConfigError, match="neither a YAML file nor a preset"):
        load_topology("tpu_v9")


def test_insufficient_memory_is_a_user_error_with_suggestion(tmp_path, capsys):
    spec = load_topology("h100x8").with_world_size(8)  # 80 GB HBM + 256 GB DDR per rank, 15% reserved
    # 2e9 x 128 fp32 = 953.7 GB: no rank holds it whole, whatever the kernel -> more ranks / UVM cannot help
    huge = [EmbeddingBagConfig(name="t_huge", embedding_dim=128, num_embeddings=2_000_000_000, feature_names=["huge"])]
    for kernel in ("fused", None):
        with pytest.raises(PlanningError, match=r"table t_huge needs at least 953.7 GB on one rank .* a rank holds 68.0 GB HBM \+ 217.6 GB DDR") as e:
            plan_tables(huge, spec, "table_wise", kernel, PlanConfig(proposer="greedy"))
        msg = str(e.value)
        assert e.value.kind == "table_too_large"
        assert "more ranks cannot help (table_wise keeps a shard of this size on one rank)" in msg and "world_size 8 ->" not in msg
        assert "--strategy row_wise" in msg and "ddr_cap_gb=1122" in msg  # 953.7 GB / 0.85
        assert "--kernel fused_uvm_caching (table" not in msg  # does not fit DDR either
    assert "kernels fused/fused_uvm/fused_uvm_caching" in msg  # kernel auto: TorchRec already tried DDR
    # 4e8 x 128 = 190.7 GB: too big for HBM with the forced fused kernel, fits DDR -> UVM is the suggestion
    mid = [EmbeddingBagConfig(name="t_mid", embedding_dim=128, num_embeddings=400_000_000, feature_names=["mid"])]
    with pytest.raises(PlanningError, match=r"table t_mid needs at least 190.7 GB .*more ranks cannot help.*--kernel fused_uvm_caching \(table in host DDR") as e:
        plan_tables(mid, spec, "table_wise", "fused", PlanConfig(proposer="greedy"))
    assert e.value.kind == "table_too_large"
    # row_wise: each table splits over all ranks, but together they exceed the cluster: 40 x 71.5 GB
    many = [EmbeddingBagConfig(name=f"t_{i}", embedding_dim=128, num_embeddings=150_000_000, feature_names=[f"m{i}"]) for i in range(40)]
    with pytest.raises(PlanningError, match=r"the tables need at least 2861.\d GB, the cluster has 2284.8 GB .*more ranks \(world_size 8 -> at least 11 ") as e:
        plan_tables(many, spec, "row_wise", None, PlanConfig(proposer="greedy"))
    assert e.value.kind == "insufficient_storage"
    with pytest.raises(PlanningError, match=r"No available sharding type and compute kernel combination .*kernel fused is not offered for data_parallel on cuda \(offered: data_parallel: dense\)") as e:
        plan_tables(_tables(), spec, "data_parallel", "fused")
    assert e.value.kind == "strict_constraints"
    cpu = load_topology("cpu_gloo")
    with pytest.raises(PlanningError, match=r"--strategy: grid_shard is not available for compute_device cpu: grid_shard needs compute_device cuda .*ROW_WISE_CPU") as e:
        plan_tables(_tables(), cpu, "grid_shard")
    assert e.value.kind == "unsupported_device"
    with pytest.raises(PlanningError, match=r"kernel fused_uvm_caching is not offered for table_wise on cpu \(offered: table_wise: fused\); UVM kernels need cuda"):
        plan_tables(_tables(), cpu, "table_wise", "fused_uvm_caching")
    # through the CLI: one line on stderr, exit code 2
    rc = main(["plan", "--synthetic-tables", "3", "--rows-scale", "4", "--topology", "h100x8", "--world-sizes", "8", "--strategy", "table_wise", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("store-rec plan: error: no sharding plan for 3 tables on 8 x cuda") and "suggestion:" in err
    # in a sweep each failure is a row whose status names the reason
    rc = main(["plan", "--synthetic-tables", "3", "--topology", "cpu_gloo", "--world-sizes", "2", "--strategy", "table_wise,grid_shard", "--out", str(tmp_path / "sweep")])
    assert rc == 2 and "no run produced a plan" in capsys.readouterr().err
    with (tmp_path / "sweep" / "comparison.csv").open() as f:
        assert [(r["strategy"], r["status"]) for r in csv.DictReader(f)] == [("table_wise", "no plan (table_too_large)"), ("grid_shard", "no plan (unsupported_device)")]


def test_cpu_plans_auto_keeps_torchrec_types_row_wise_when_forced():
    cpu = load_topology("cpu_gloo")
    auto = plan_tables(_tables(), cpu, "auto", None, PlanConfig(proposer="greedy"))
    assert {so.sharding_type for so in auto.sharding_options} <= {"data_parallel", "table_wise", "column_wise", "table_column_wise"}
    rw = plan_tables(_tables(), cpu, "row_wise", None, PlanConfig(proposer="greedy")).sharding_plan.plan[""]
    assert {ps.sharding_type for ps in rw.values()} == {"row_wise"} and all(ps.ranks == [0, 1] for ps in rw.values())
    assert all(str(s.placement).endswith("/cpu") for s in rw["t_f0"].sharding_spec.shards)


def test_synthetic_tables_are_deterministic_and_skewed():
    cfg = SyntheticTablesConfig(num_tables=200)
    a, b = synthetic_tables(cfg), synthetic_tables(cfg)
    assert [(t.name, t.num_embeddings, t.embedding_dim) for t in a] == [(t.name, t.num_embeddings, t.embedding_dim) for t in b]
    rows = [t.num_embeddings for t in a]
    assert len(a) == 200 and max(rows) == 1_000_000_000 and min(rows) >= 1000
    assert sum(rows) > 2_000_000_000  # billions of rows
    assert sum(r > 100_000_000 for r in rows) < 20  # a few huge tables, long tail
    assert {t.embedding_dim for t in a} == {16, 32, 64, 128}
    assert max(t.num_embeddings for t in synthetic_tables(SyntheticTablesConfig(num_tables=5, rows_scale=0.001))) == 1_000_000


def _tiny_dataset(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from store_rec.data.schema import DatasetSchema, SparseFeature, SplitInfo

    d = root / "ds"
    (d / "train").mkdir(parents=True)
    table = pa.table(
        {
            "label": pa.array([0.0, 1.0, 0.0, 1.0], pa.float32()),
            "item": pa.array([1, 2, 3, 0], pa.int64()),
            "tags": pa.array([[1, 2], [3], [], [1, 2, 3, 4, 5]], pa.list_(pa.int64())),
            "country": pa.array([1, 1, 2, 0], pa.int64()),
        }
    )
    pq.write_table(table, d / "train" / "part-00000.parquet")
    DatasetSchema(
        dataset="tiny",
        label="label",
        sparse=[
            SparseFeature("item", "id", 40),
            SparseFeature("tags", "id", 8, multi_hot=True, max_len=5),
            SparseFeature("country", "static", 4, group="geo"),
        ],
        splits={"train": SplitInfo(files=["train/part-00000.parquet"], rows=4)},
    ).save(d)
    return d


def test_pooling_factors_measured_from_parquet(tmp_path):
    d = _tiny_dataset(tmp_path)
    assert measure_pooling_factors(d, ["item", "tags", "country", "sid_0"]) == {"item": 1.0, "tags": 2.0, "country": 1.0}
    assert measure_pooling_factors(d, ["tags"], max_rows=2) == {"tags": 1.5}


def test_cli_sweep_from_config_writes_plans_table_and_plots(tmp_path, capsys):
    d = _tiny_dataset(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        f"data: {{dir: {d}}}\nmodel: {{name: dlrm, tokenizer: none, embedding_dim: 16}}\n"
        "plan: {proposer: greedy}\ntrain: {ignored: true}\n"
        "sharding: {plan_file: null, sharding_types: [row_wise], tables: {t_tags: {sharding_types: [column_wise]}}}\n"
    )
    out = tmp_path / "out"
    rc = main(["plan", "--config", str(cfg), "--topology", "h100x8", "--world-sizes", "8,16", "--strategy", "auto,table_wise", "--kernel", "fused", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.count("planning time") == 4
    for w in (8, 16):
        for s in ("auto", "table_wise"):
            p = read_plan(out / f"plan_ws{w}_{s}.json")
            assert p["world_size"] == w and [t["name"] for t in p["tables"]] == ["t_item", "t_tags", "t_country"]
            assert p["pooling_factors"] == {"item": 1.0, "tags": 2.0, "country": 1.0}
            assert p["plan"]["t_tags"]["sharding_type"] == "column_wise"  # sharding.tables override
            # sharding.sharding_types applies to auto runs; a forced strategy replaces it
            assert p["plan"]["t_item"]["sharding_type"] == ("row_wise" if s == "auto" else "table_wise")
            assert "Planner Statistics" in (out / f"stats_ws{w}_{s}.txt").read_text()
            with (out / f"ranks_ws{w}_{s}.csv").open() as f:
                assert len(list(csv.DictReader(f))) == w
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["world_size"]), r["strategy"], r["status"]) for r in rows] == [(8, "auto", "ok"), (8, "table_wise", "ok"), (16, "auto", "ok"), (16, "table_wise", "ok")]
    assert all(float(r["step_time_ms"]) > 0 for r in rows)
    assert "| world_size | strategy |" in (out / "comparison.md").read_text()
    for png in ("step_time.png", "peak_memory.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the saved plan loads for the model's own tables
    from store_rec.models.config import ModelConfig
    from store_rec.data.schema import DatasetSchema
    from store_rec.models.tables import embedding_tables

    from store_rec.distributed.plan_io import ebc_module_path
    from store_rec.models.factory import build_model

    mcfg = ModelConfig(name="dlrm", tokenizer="none", embedding_dim=16)
    schema = DatasetSchema.load(d)
    tables = embedding_tables(schema, mcfg)
    model = build_model(mcfg, schema, torch.device("meta"))
    plan = load_plan(out / "plan_ws8_auto.json", tables, 8, "cuda", module_path=ebc_module_path(model)).plan
    assert list(plan) == ["model.sparse_arch.embedding_bag_collection"]
    assert sorted(plan["model.sparse_arch.embedding_bag_collection"]) == ["t_country", "t_item", "t_tags"]


def test_load_checks_ranks_per_host(auto64, tmp_path, monkeypatch):
    path = save_plan(auto64, tmp_path / "plan.json")  # h100x8: 8 ranks per host
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert sorted(load_plan(path, _tables(), 64, "cuda", local_world_size=8).plan[""]) == [f"t_f{i}" for i in range(6)]
    with pytest.raises(UserError, match=r"local world size \(ranks per host\): plan has 8, this job has 4 \(shard placements are cuda:\{rank % 8\}"):
        load_plan(path, _tables(), 64, "cuda", local_world_size=4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # what torchrun / torchx set: the default when not given
    with pytest.raises(UserError, match=r"plan has 8, this job has 4"):
        load_plan(path, _tables(), 64, "cuda")
    # cpu placements carry no device index: only host-grouped types (table_row_wise) care
    cpu = load_topology("cpu_gloo").with_world_size(4)  # 2 ranks per host
    tw = save_plan(plan_tables(_tables(), cpu, "table_wise", None, PlanConfig(proposer="greedy")), tmp_path / "tw.json")
    assert len(load_plan(tw, _tables(), 4, "cpu", local_world_size=4).plan[""]) == 6
    twrw = save_plan(plan_tables(_tables(), cpu, "table_row_wise", None, PlanConfig(proposer="greedy")), tmp_path / "twrw.json")
    assert len(load_plan(twrw, _tables(), 4, "cpu", local_world_size=2).plan[""]) == 6
    with pytest.raises(UserError, match=r"local world size \(ranks per host\): plan has 2, this job has 4 \(table_row_wise shards are grouped by host\)"):
        load_plan(twrw, _tables(), 4, "cpu", local_world_size=4)


def test_copy_sharding_options_equals_deepcopy(auto64):
    import copy

    from store_rec.distributed.planning import copy_sharding_options

    opts = auto64.sharding_options
    fast, ref = copy_sharding_options(opts), copy.deepcopy(opts)
    assert len(fast) == len(ref) == 6
    for a, b, o in zip(fast, ref, opts):
        assert sorted(a.__dict__) == sorted(b.__dict__)
        assert a.tensor is o.tensor and a.module is o.module  # shared, as ShardingOption.__deepcopy__ does
        assert (a.name, a.sharding_type, a.compute_kernel, a.cache_params) == (b.name, b.sharding_type, b.compute_kernel, b.cache_params)
        assert [(s.size, s.offset, s.storage, s.perf, s.rank) for s in a.shards] == [(s.size, s.offset, s.storage, s.perf, s.rank) for s in b.shards]
        for sa, so in zip(a.shards, o.shards):  # nothing mutable shared with the original
            assert sa is not so and sa.size is not so.size and sa.perf is not so.perf and sa.storage is not so.storage


def test_interface_command_prepares_smoke_data_and_writes_plans(tmp_path, capsys, monkeypatch):
    """`store-rec plan --config configs/smoke.yaml --topology h100x8 --world-sizes 64,1024 --out DIR` on a fresh
    checkout: data.dir is missing, so it is generated from data.prepare_if_missing (into a temp dir here)."""
    import re

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    data, out = tmp_path / "smoke", tmp_path / "plan"
    rc = main(["plan", "--config", "configs/smoke.yaml", "--topology", "h100x8", "--world-sizes", "64,1024", "--out", str(out), f"data.dir={data}"])
    text = capsys.readouterr().out
    assert rc == 0
    assert (data / "schema.json").exists() and f"data.dir {data} has no schema.json: preparing synthetic data" in text
    for w in (64, 1024):
        p = read_plan(out / f"plan_ws{w}_auto.json")
        assert p["world_size"] == w and p["local_world_size"] == 8 and p["compute_device"] == "cuda"
        assert len(p["tables"]) == 13 and set(p["plan"]) == {t["name"] for t in p["tables"]}
        # smoke.yaml's sharding.sharding_types bound the auto search
        assert {e["sharding_type"] for e in p["plan"].values()} <= {"table_wise", "column_wise", "data_parallel"}
    times = [float(x) for x in re.findall(r"\[ws(?:64|1024)_auto\] planning time (\d+\.\d+) s \(default proposer, greedy partitioner\)", text)]
    assert len(times) == 2 and all(t > 0 for t in times)
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["world_size"]), r["strategy"], r["status"]) for r in rows] == [(64, "auto", "ok"), (1024, "auto", "ok")]
    assert [float(r["planning_time_s"]) for r in rows] == pytest.approx(times, abs=0.01)
    assert (out / "comparison.md").read_text().count("| auto | auto | default | greedy | ok |") == 2


def test_auto_proposer_by_problem_size():
    from store_rec.distributed.planning import AUTO_PROPOSER_LIMIT, choose_proposer

    assert AUTO_PROPOSER_LIMIT == 200_000
    assert choose_proposer("auto", 13, 1024) == "default"  # smoke.yaml: 169 * 1024 = 173,056
    assert choose_proposer("auto", 26, 64) == "default"  # 43,264
    assert choose_proposer("auto", 23, 1024) == "uniform"  # 541,696
    assert choose_proposer("auto", 200, 64) == "uniform"  # 2,560,000
    assert choose_proposer("greedy", 200, 1024) == "greedy" and choose_proposer("default", 200, 1024) == "default"
    assert PlanConfig().proposer == "auto"


def test_plan_reads_the_data_section_as_train_does(tmp_path, capsys):
    """`store-rec plan --config` validates ``data:`` with the train config's DataConfig: keys train rejects
    (the old aliases data_dir / path / prepared_dir) are errors naming the file and key; a missing
    dataset without prepare_if_missing is a one-line error naming data.dir."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  data_dir: {tmp_path / 'd'}\nmodel:\n  name: dlrm_dcn\n")
    assert main(["plan", "--config", str(cfg), "--topology", "h100x8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: data.data_dir: unknown key" in err and "Traceback" not in err
    cfg.write_text(f"data:\n  dir: {tmp_path / 'd'}\nmodel:\n  name: dlrm_dcn\n")
    assert main(["plan", "--config", str(cfg), "--topology", "h100x8", "--out", str(tmp_path / "o")]) == 2
    assert f"{cfg}: data.dir: {tmp_path / 'd'} has no schema.json" in capsys.readouterr().err
