"""``store-rec plan``: offline sharding-plan experiments with TorchRec's planner (no GPUs needed).

    store-rec plan --config configs/smoke.yaml --topology h100x8 --world-sizes 64,1024 --out DIR
    store-rec plan --synthetic-tables 200 --rows-scale 1 --topology h100x8 --world-sizes 64,256,1024 \
        --strategy auto,row_wise,table_row_wise --out DIR
    store-rec plan --config CONFIG.yaml --topology cpu_gloo --strategy table_wise,column_wise --verify --out DIR

Writes into DIR, per world size W and strategy S: ``plan_ws{W}_{S}.json`` (loadable by
``store-rec train --plan``), ``stats_ws{W}_{S}.txt`` (TorchRec's planner table), ``ranks_ws{W}_{S}.csv``
(per-rank HBM/DDR and estimated fwd/bwd compute/comms); and once: ``comparison.md`` / ``comparison.csv``
and ``step_time.png`` / ``peak_memory.png`` (one line per strategy vs world size).

Config keys read (everything else in the file is ignored, so a train config works as is):
``model`` (ModelConfig), ``plan`` (store_rec.distributed.planning.PlanConfig; planning-only configs),
``sharding`` (the train config's planner constraints: ``tables.<t>`` overrides, and global
``sharding_types`` / ``compute_kernels`` for ``--strategy auto`` runs) and ``data``, validated as the train
config's ``data:`` section (:class:`store_rec.train.config.DataConfig`): the prepared dataset directory
``data.dir`` (when it has no schema.json and ``data.prepare_if_missing`` is set, the synthetic dataset is
generated there first, exactly as ``store-rec train`` does) and an optional SID table (``data.sid_table``,
``data.sid_feature``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="offline sharding plans for a cluster you do not have (TorchRec planner, no GPUs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="experiment YAML (keys model, plan, data are read)")
    p.add_argument("--topology", required=True, help="preset name (h100x8, a100x8, cpu_gloo) or a topology YAML file")
    p.add_argument("--topology-set", action="append", default=[], metavar="KEY=VALUE", help="override a topology key (repeatable), e.g. hbm_cap_gb=40")
    p.add_argument("--world-sizes", help="comma list of world sizes (default: the topology's world_size)")
    p.add_argument("--strategy", default="auto",
                   help="comma list of: auto, data_parallel, table_wise, row_wise, column_wise, table_row_wise, "
                        "table_column_wise, grid_shard")
    p.add_argument("--kernel", default=None, help="force a compute kernel on every table: fused, fused_uvm_caching, fused_uvm, dense ...")
    p.add_argument("--synthetic-tables", type=int, default=None, metavar="N", help="plan N synthetic industrial tables instead of (or without) a config")
    p.add_argument("--rows-scale", type=float, default=None, help="multiply synthetic table rows (largest table = 1e9 x this)")
    p.add_argument("--proposer", choices=("auto", "default", "greedy", "uniform"), default=None,
                   help="TorchRec proposers: auto (default: TorchRec's four for small problems, uniform for big ones; "
                        "see docs/PLANNING.md), default (all four), greedy, uniform")
    p.add_argument("--timeout", type=int, default=None, help="stop each search after this many seconds and keep the best plan so far")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--verify", action="store_true",
                   help="for cpu-runnable strategies: 2 gloo ranks apply a world-size-2 cpu plan and check sharded == "
                        "unsharded fwd/bwd")
    p.add_argument("--verify-max-rows", type=int, default=5000, help="cap on table rows in --verify (it checks sharding mechanics, not size)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. plan.storage_reservation=0.2")
    p.set_defaults(func=run)


def _int_list(text: str, flag: str) -> List[int]:
    from store_rec.errors import UserError

    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise UserError(f"{flag}: expected positive integers, got {text!r}")
    return vals


def load_tables(args) -> Tuple[List[Any], Dict[str, float], Any, str]:
    """(tables, pooling factors, PlanConfig, description) from --config and/or --synthetic-tables."""
    from store_rec.config import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides, to_dict
    from store_rec.distributed.planning import PlanConfig, measure_pooling_factors, synthetic_pooling_factors, synthetic_tables
    from store_rec.errors import UserError

    raw: Dict[str, Any] = load_yaml(args.config) if args.config else {}
    raw = deep_merge(raw, parse_overrides(args.overrides))
    where = args.config or "overrides"
    try:
        cfg = from_dict(PlanConfig, raw.get("plan") or {}, "plan")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if args.synthetic_tables is not None or args.rows_scale is not None:
        syn = to_dict(cfg.synthetic)
        if args.synthetic_tables is not None:
            syn["num_tables"] = args.synthetic_tables
        if args.rows_scale is not None:
            syn["rows_scale"] = args.rows_scale
        from store_rec.distributed.planning import SyntheticTablesConfig

        cfg.synthetic = from_dict(SyntheticTablesConfig, syn, "plan.synthetic")
    tables: List[Any] = []
    pfs: Dict[str, float] = {}
    desc = []
    if args.config and ("model" in raw or "data" in raw):  # a train config may leave model at its defaults
        schema, data_dir = _schema_from(raw, where)
        from store_rec.models.config import ModelConfig
        from store_rec.models.tables import embedding_tables

        try:
            mcfg = from_dict(ModelConfig, raw.get("model") or {}, "model")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        tables = embedding_tables(schema, mcfg)
        feats = [f for t in tables for f in t.feature_names]
        missing = [f for f in feats if f not in cfg.pooling_factors]
        if missing and data_dir is not None:
            pfs.update(measure_pooling_factors(data_dir, missing, cfg.pooling_sample_rows))
        desc.append(f"{len(tables)} tables of model {mcfg.name} on dataset {schema.dataset}")
    elif args.config and cfg.synthetic.num_tables == 0:
        raise UserError(f"{where}: no 'model' or 'data' section (and no --synthetic-tables): nothing to plan")
    if cfg.synthetic.num_tables > 0:
        syn_tables = synthetic_tables(cfg.synthetic)
        tables += syn_tables
        pfs.update(synthetic_pooling_factors(cfg.synthetic))
        rows = sum(t.num_embeddings for t in syn_tables)
        desc.append(f"{len(syn_tables)} synthetic tables ({rows / 1e9:.2f} B rows)")
    if not tables:
        raise UserError("nothing to plan: give --config with a model section, or --synthetic-tables N")
    _merge_sharding_section(raw.get("sharding"), cfg, tables, where)
    if args.proposer:
        cfg.proposer = args.proposer
    if args.timeout:
        cfg.timeout_s = args.timeout
    return tables, pfs, cfg, " + ".join(desc)


def _merge_sharding_section(sec: Any, cfg: Any, tables: List[Any], where: str) -> None:
    """The train config's ``sharding:`` section -> planning constraints.

    ``sharding.tables.<t>.{sharding_types, compute_kernels}`` become per-table overrides (``plan.tables``
    wins where both name a table). ``sharding.sharding_types`` / ``compute_kernels`` (every table) are
    kept in ``cfg.auto_defaults`` and apply to ``--strategy auto`` runs only (a forced strategy replaces
    them). ``sharding.plan_file`` is ignored here.
    """
    from store_rec.config import ConfigError, from_dict
    from store_rec.distributed.planning import TableOverride

    if not sec:
        return
    if not isinstance(sec, dict):
        raise ConfigError(f"{where}: sharding: expected a mapping")
    for name, t in (sec.get("tables") or {}).items():
        if name not in cfg.tables:
            try:
                cfg.tables[name] = from_dict(TableOverride, t or {}, f"sharding.tables.{name}")
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None
    st, ck = sec.get("sharding_types"), sec.get("compute_kernels")
    if st or ck:
        try:
            cfg.auto_defaults = from_dict(TableOverride, {"sharding_types": st, "compute_kernels": ck}, "sharding")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _schema_from(raw: Dict[str, Any], where: str):
    """The config's ``data`` section (:class:`store_rec.train.config.DataConfig`, as ``store-rec train``
    reads it) -> (prepared dataset's schema + SID features of data.sid_table, data dir). A missing
    dataset is generated from ``data.prepare_if_missing`` exactly as ``store-rec train`` does."""
    from store_rec.config import ConfigError, from_dict
    from store_rec.data.schema import SID, DatasetSchema
    from store_rec.errors import UserError
    from store_rec.train.config import DataConfig, ensure_data_dir

    section = raw.get("data") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: data: expected a mapping, got {type(section).__name__} {section!r}")
    try:
        data = from_dict(DataConfig, section, "data")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    d = Path(data.dir)
    generate = not (d / "schema.json").exists() and data.prepare_if_missing is not None
    if generate:
        assert data.prepare_if_missing is not None
        print(f"data.dir {d} has no schema.json: preparing synthetic data from data.prepare_if_missing "
              f"({data.prepare_if_missing.rows} rows)")
    t0 = time.perf_counter()
    try:
        ensure_data_dir(data)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if generate:
        print(f"prepared {d} in {time.perf_counter() - t0:.1f} s")
    schema = DatasetSchema.load(d)
    if data.sid_table and not schema.features_with_role(SID):
        from store_rec.data.loader import schema_with_sids

        try:  # the features the loader attaches: sid_0..sid_{K-1}, vocab C + 1
            schema = schema_with_sids(schema, data.sid_table, data.sid_feature)
        except FileNotFoundError as e:
            raise UserError(f"{where}: data.sid_table: {e}") from None
    return schema, d


def run(args) -> int:
    import logging

    from store_rec.distributed.plan_io import save_plan
    from store_rec.distributed.planning import KERNELS, STRATEGIES, choose_proposer, plan_tables
    from store_rec.distributed.topology import load_topology
    from store_rec.errors import UserError
    from store_rec.fileio import atomic_write_text

    logging.getLogger("torchrec").setLevel(logging.ERROR)  # the planner logs a lot at INFO/WARNING
    base = load_topology(args.topology, args.topology_set)
    worlds = _int_list(args.world_sizes, "--world-sizes") if args.world_sizes else [base.world_size]
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    for s in strategies:
        if s not in STRATEGIES:
            raise UserError(f"--strategy: {s!r} is not one of {', '.join(STRATEGIES)}")
    if args.kernel is not None and args.kernel not in KERNELS:
        raise UserError(f"--kernel: {args.kernel!r} is not one of {', '.join(KERNELS)}")
    tables, pfs, cfg, desc = load_tables(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"planning {desc} on topology {base.name} ({base.compute_device}, {base.hbm_cap_gb:g} GB HBM, "
          f"{base.ddr_cap_gb:g} GB DDR per rank, batch {base.batch_size}/rank)")

    records: List[Dict[str, Any]] = []
    failures: List[str] = []
    for w in worlds:
        spec = base.with_world_size(w)
        for s in strategies:
            tag = f"ws{w}_{s}"
            t0 = time.perf_counter()
            try:
                res = plan_tables(tables, spec, s, args.kernel, cfg, pfs)
            except UserError as e:
                if len(worlds) * len(strategies) == 1:
                    raise
                failures.append(f"{tag}: {e}")
                records.append({"world_size": w, "strategy": s, "kernel": args.kernel or "auto",
                                "proposer": choose_proposer(cfg.proposer, len(tables), w),
                                "status": f"no plan ({getattr(e, 'kind', 'other')})",
                                "planning_time_s": round(time.perf_counter() - t0, 3)})
                print(f"[{tag}] no plan ({time.perf_counter() - t0:.1f} s): {e}")
                continue
            save_plan(res, out / f"plan_{tag}.json")
            atomic_write_text(out / f"stats_{tag}.txt", res.stats_text)
            _write_ranks(out / f"ranks_{tag}.csv", res)
            rec = {**res.summary(), "status": "ok"}
            records.append(rec)
            print(
                f"[{tag}] planning time {res.planning_time_s:.2f} s ({rec['proposer']} proposer) | step {rec['step_time_ms']:.3f} ms (est.) | "
                f"peak HBM {rec['peak_hbm_gb']:.2f} GB, DDR {rec['peak_ddr_gb']:.2f} GB per rank | imbalance perf {rec['perf_imbalance']:.2f}, "
                f"HBM {rec['hbm_imbalance']:.2f} | {rec['sharding_types']}"
            )
            if w <= 16 and len(worlds) * len(strategies) == 1:
                sys.stdout.write(res.stats_text)
    paths = write_comparison(records, out)
    print(_markdown(records))
    print("wrote " + ", ".join(str(p) for p in paths) + f" and per-run plan/stats/ranks files in {out}")
    if args.verify:
        _verify(args, tables, strategies, out)
    if failures and len(failures) == len(records):
        raise UserError("no run produced a plan:\n" + "\n".join(failures))
    return 0


COLUMNS = [
    "world_size", "strategy", "kernel", "proposer", "status", "step_time_ms", "fwd_compute_ms", "fwd_comms_ms", "bwd_compute_ms",
    "bwd_comms_ms", "input_dist_ms", "peak_hbm_gb", "peak_ddr_gb", "perf_imbalance", "hbm_imbalance", "ddr_imbalance",
    "planning_time_s", "sharding_types",
]


def _markdown(records: List[Dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in records:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _write_ranks(path: Path, res) -> None:
    import csv
    import dataclasses

    from store_rec.fileio import atomic_path

    fields = [f.name for f in dataclasses.fields(res.ranks[0])] + ["total_ms"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in res.ranks:
            w.writerow([*(round(v, 6) if isinstance(v, float) else v for v in dataclasses.astuple(r)), round(r.total_ms, 6)])


def write_comparison(records: List[Dict[str, Any]], out: Path) -> List[Path]:
    """comparison.md, comparison.csv, step_time.png, peak_memory.png (each written atomically)."""
    import csv

    import matplotlib

    from store_rec.fileio import atomic_path, atomic_write_text

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = atomic_write_text(
        out / "comparison.md",
        "Estimated by TorchRec's planner cost model (not measured): step time = max over ranks of "
        "fwd/bwd compute + comms of the embedding tables; memory = table shards per rank.\n\n" + _markdown(records),
    )
    cs = out / "comparison.csv"
    with atomic_path(cs) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    pngs = []
    ok = [r for r in records if r.get("status") == "ok"]
    for fname, key, ylabel in (
        ("step_time.png", "step_time_ms", "estimated step time (ms, max over ranks)"),
        ("peak_memory.png", None, "peak memory per rank (GB)"),
    ):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in dict.fromkeys(r["strategy"] for r in ok):
            rs = sorted((r for r in ok if r["strategy"] == s), key=lambda r: r["world_size"])
            xs = [r["world_size"] for r in rs]
            ys = [r[key] if key else max(r["peak_hbm_gb"], r["peak_ddr_gb"]) for r in rs]
            ax.plot(xs, ys, marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("world size (ranks)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if ok:
            ax.legend()
        fig.tight_layout()
        p = out / fname
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        pngs.append(p)
    return [md, cs, *pngs]


def _verify(args, tables, strategies, out: Path) -> None:
    from store_rec.distributed.planning import CPU_STRATEGIES
    from store_rec.distributed.verify import verify_strategies
    from store_rec.errors import UserError

    todo = [s for s in strategies if s in CPU_STRATEGIES] or (list(CPU_STRATEGIES) if "auto" in strategies else [])
    skipped = [s for s in strategies if s not in CPU_STRATEGIES and s != "auto"]
    if skipped:
        print(f"--verify: skipping {', '.join(skipped)} (not runnable on cpu/gloo in TorchRec; see docs/ROW_WISE_CPU.md)")
    if not todo:
        return
    results = verify_strategies(tables, todo, out / "verify", max_rows=args.verify_max_rows)
    probe = next((r["gloo_reduce_scatter"] for r in results if "gloo_reduce_scatter" in r), None)
    if probe:
        got = "; ".join(f"rank {p['rank']}: " + (p["error"] if "error" in p else f"{p['reduce_scatter']} / {p['reduce_scatter_tensor']}") for p in probe)
        print(f"--verify: gloo reduce_scatter / reduce_scatter_tensor on 2 ranks (expected [3.0, 3.0] and [6.0, 6.0]): {got}")
    bad = []
    for r in results:
        print(
            f"--verify {r['strategy']}: 2 gloo ranks, max |fwd diff| {r['max_fwd_diff']:.2e}, max |grad diff| {r['max_grad_diff']:.2e} "
            f"-> {'OK' if r['ok'] else 'MISMATCH'}"
        )
        if not r["ok"]:
            bad.append(r["strategy"])
    if bad:
        raise UserError(f"--verify: sharded != unsharded (tolerance 1e-5) for {', '.join(bad)}; details in {out / 'verify'}")
