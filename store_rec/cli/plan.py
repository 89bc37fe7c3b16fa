"""``store-rec plan``: offline sharding-plan experiments with TorchRec's planner (no GPUs needed).

    store-rec plan --config configs/smoke.yaml --topology h100x8 --world-sizes 64,1024 --out DIR
    store-rec plan --synthetic-tables 200 --rows-scale 1 --topology h100x8 --world-sizes 64,256,1024 \
        --strategy auto,row_wise,table_row_wise --out DIR
    store-rec plan --config CONFIG.yaml --topology cpu_gloo --strategy table_wise,column_wise --verify --out DIR

Writes into DIR, per world size W and strategy S: ``plan_ws{W}_{S}.json`` (loadable by
``store-rec train --plan``), ``stats_ws{W}_{S}.txt`` (TorchRec's planner table), ``ranks_ws{W}_{S}.csv``
(per-rank HBM/DDR and estimated fwd/bwd compute/comms); and once: ``comparison.md`` / ``comparison.csv`` /
``comparison.json`` (the records plus what was planned: topology, tables, per-rank HBM/DDR of every plan)
and the plots ``step_time.png`` / ``peak_memory.png`` (one line per strategy vs world size; a run that
found no plan is an ``x`` on the axis, named in the legend) and ``rank_memory.png`` (per-rank HBM and
DDR distribution of every plan against the per-rank capacity). ``store-rec plan --replot DIR`` redraws
the plots from ``DIR/comparison.json``.

A plan whose per-rank HBM (or DDR, or estimated time) is more than ``--imbalance-warn`` (default 2.0)
times the mean over ranks is reported with a ``WARNING`` line and in the table's ``warnings`` column:
one rank holding many times its share is the rank that runs out of memory or sets the step time.

A model with history tokens (``model.history``) has an ``EmbeddingCollection`` next to its EBC: its
tables are planned with the others (EmbeddingCollection sharding types only: table_wise, column_wise,
row_wise, and data_parallel on cuda; a forced strategy they lack leaves them to the planner), appear in
every plan file with ``"kind": "sequence"`` and their memory, and are listed per run ("history
(EmbeddingCollection) tables: ..."); the comparison records ``sequence_tables`` / ``sequence_hbm_gb`` /
``sequence_ddr_gb``. Their pooling factor is the mean history length (capped at ``data.history_len``).

Config keys read (everything else in the file is ignored, so a train config works as is):
``model`` (ModelConfig), ``plan`` (store_rec.distributed.planning.PlanConfig; planning-only configs),
``sharding`` (the train config's planner constraints: ``tables.<t>`` overrides, and global
``sharding_types`` / ``compute_kernels`` for ``--strategy auto`` runs) and ``data``, validated as the train
config's ``data:`` section (:class:`store_rec.train.config.DataConfig`): the prepared dataset directory
``data.dir`` (when it has no schema.json and ``data.prepare_if_missing`` is set, the synthetic dataset is
generated there first, exactly as ``store-rec train`` does), an optional SID table (``data.sid_table``,
``data.sid_feature``) and ``data.history_len``: the schema planned is the one the train app's loader yields.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="offline sharding plans for a cluster you do not have (TorchRec planner, no GPUs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="experiment YAML (keys model, plan, data are read)")
    p.add_argument("--topology", help="preset name (h100x8, a100x8, cpu_gloo) or a topology YAML file")
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
    p.add_argument("--partitioner", default=None,
                   help="comma list of TorchRec partitioners compared side by side: greedy (default: GreedyPerfPartitioner "
                        "by storage), greedy_perf (by perf), memory_balanced (MemoryBalancedPartitioner: lowest max HBM "
                        "within plan.memory_balanced_tolerance of greedy's perf)")
    p.add_argument("--imbalance-warn", type=float, default=2.0, metavar="X",
                   help="warn when a plan's max/mean over ranks of HBM, DDR or estimated time exceeds X (default 2.0)")
    p.add_argument("--replot", metavar="DIR", default=None,
                   help="only redraw DIR's plots from DIR/comparison.json (no planning; other flags ignored)")
    p.add_argument("--out", help="output directory (required unless --replot)")
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
        from store_rec.distributed.sequence import is_sequence_table
        from store_rec.models.config import ModelConfig

        try:
            mcfg = from_dict(ModelConfig, raw.get("model") or {}, "model")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        tables = _model_tables(mcfg, schema)
        feats = [f for t in tables for f in t.feature_names]
        missing = [f for f in feats if f not in cfg.pooling_factors]
        if missing and data_dir is not None:
            # + the history columns H whose items' SIDs the loader makes into <H>_sid_k keys (not in the parquet)
            bases = sorted({m.group(1) for f in missing if (m := re.fullmatch(HISTORY_SID_KEY, f))} - set(missing))
            measured = measure_pooling_factors(data_dir, [*missing, *bases], cfg.pooling_sample_rows)
            pfs.update({f: v for f, v in measured.items() if f in missing})
            pfs.update(_history_pooling_factors(tables, measured, (raw.get("data") or {}).get("history_len")))
        n_seq = sum(is_sequence_table(t) for t in tables)
        desc.append(f"{len(tables)} tables of model {mcfg.name} on dataset {schema.dataset}"
                    + (f" ({n_seq} of them history-token EmbeddingCollection tables)" if n_seq else ""))
    elif args.config and cfg.synthetic.num_tables == 0:
        raise UserError(f"{where}: no 'model' or 'data' section (and no --synthetic-tables): nothing to plan")
    if cfg.synthetic.num_tables > 0:
        syn_tables = synthetic_tables(cfg.synthetic)
        tables += syn_tables
        pfs.update(synthetic_pooling_factors(cfg.synthetic))
        rows = sum(t.num_embeddings for t in syn_tables)
        desc.append(f"{len(syn_tables)} synthetic tables ({_rows_text(rows)})")
    if not tables:
        raise UserError("nothing to plan: give --config with a model section, or --synthetic-tables N")
    _merge_sharding_section(raw.get("sharding"), cfg, tables, where)
    if args.proposer:
        cfg.proposer = args.proposer
    if args.timeout:
        cfg.timeout_s = args.timeout
    return tables, pfs, cfg, " + ".join(desc)


HISTORY_SID_KEY = r"(.+)_sid_\d+"
"""A loader-made key ``<H>_sid_<k>``: the k-th SID of each item of history column ``H``
(``store_rec.data.loader.history_sid_name``)."""


def _model_tables(mcfg: Any, schema: Any) -> List[Any]:
    """The tables the train app shards for this model: its EBC's and, with history tokens, its
    EmbeddingCollection's (the model is built on the meta device: no table memory)."""
    import torch

    from store_rec.models.factory import build_model
    from store_rec.train.sharding import model_tables

    return model_tables(build_model(mcfg, schema, device=torch.device("meta")))


def _history_pooling_factors(tables: List[Any], measured: Dict[str, float], history_len: Any) -> Dict[str, float]:
    """Pooling factors (ids per sample) of the EmbeddingCollection (history) features: a loader-made key
    ``<H>_sid_<k>`` (one SID per history item of column ``H``, not in the parquet) has ``H``'s; every history
    feature is capped at ``data.history_len`` (the loader keeps the newest that many per row)."""
    from store_rec.distributed.sequence import is_sequence_table

    out: Dict[str, float] = {}
    for t in tables:
        if not is_sequence_table(t):
            continue
        for f in t.feature_names:
            pf = measured.get(f)
            m = re.fullmatch(HISTORY_SID_KEY, f)
            if pf is None and m and m.group(1) in measured:
                pf = measured[m.group(1)]
            if pf is not None and isinstance(history_len, int) and not isinstance(history_len, bool):
                pf = min(pf, float(history_len))
            if pf is not None:
                out[f] = max(pf, 1e-3)  # an empty history still plans (TorchRec's cost model divides by it)
    return out


def _rows_text(rows: int) -> str:
    """3_730_000_000 -> '3.73 B rows'; 2_400_000 -> '2.4 M rows'; 12_345 -> '12,345 rows'."""
    for div, unit in ((1e9, "B"), (1e6, "M")):
        if rows >= div:
            return f"{rows / div:.3g} {unit} rows"
    return f"{rows:,} rows"


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
    if (data.sid_table and not schema.features_with_role(SID)) or data.history_len is not None:
        from store_rec.data.loader import ParquetBatchLoader

        # the schema of what the train app's loader yields: sid_0..sid_{K-1} (data.sid_embedding's vocabs), the history
        # items' SID keys <H>_sid_k, history lists cut to data.history_len (0: none)
        split = "train" if "train" in schema.splits else next(iter(schema.splits), "train")
        try:
            schema = ParquetBatchLoader(d, split, data.batch_size, sid_table=data.sid_table if not schema.features_with_role(SID) else None,
                                        sid_feature=data.sid_feature, history_len=data.history_len,
                                        sid_embedding=data.sid_embedding, sid_hash_buckets=data.sid_hash_buckets).schema
        except FileNotFoundError as e:
            raise UserError(f"{where}: data.sid_table: {e}") from None
    if data.sid_tables:  # each feature's SIDs: {feature}_sid_0.., vocab C + 1 (store_rec.data.feature_sids)
        from store_rec.data.feature_sids import schema_with_feature_sids

        try:
            schema = schema_with_feature_sids(schema, data.sid_tables, schema.params.get("sid_item_feature"))  # type: ignore[arg-type]
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    return schema, d


def run(args) -> int:
    import logging

    from store_rec.distributed.plan_io import save_plan
    from store_rec.distributed.planning import KERNELS, PARTITIONERS, STRATEGIES, choose_proposer, plan_tables
    from store_rec.distributed.topology import load_topology
    from store_rec.errors import UserError
    from store_rec.fileio import atomic_write_text

    if args.replot:
        paths = replot(Path(args.replot))
        print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    for flag in ("topology", "out"):
        if not getattr(args, flag):
            raise UserError(f"--{flag}: required (unless --replot)")
    if not args.imbalance_warn > 1.0:
        raise UserError(f"--imbalance-warn: a max/mean ratio above 1.0, got {args.imbalance_warn}")
    from store_rec.fileio import check_output_path

    check_output_path(args.out, inputs=[("--config", args.config)], kind="dir")
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

    partitioners = [x.strip() for x in (args.partitioner or cfg.partitioner).split(",") if x.strip()]
    for x in partitioners:
        if x not in PARTITIONERS:
            raise UserError(f"--partitioner: {x!r} is not one of {', '.join(PARTITIONERS)}")
    records: List[Dict[str, Any]] = []
    ranks: Dict[str, Dict[str, List[float]]] = {}  # tag -> per-rank hbm_gb / ddr_gb / total_ms
    failures: List[str] = []
    runs = [(w, s, x) for w in worlds for s in strategies for x in partitioners]
    for w, s, x in runs:
        spec = base.with_world_size(w)
        cfg.partitioner = x
        tag = _tag({"world_size": w, "strategy": s, "partitioner": x})
        t0 = time.perf_counter()
        try:
            res = plan_tables(tables, spec, s, args.kernel, cfg, pfs)
        except UserError as e:
            if len(runs) == 1:
                raise
            failures.append(f"{tag}: {e}")
            records.append({"world_size": w, "strategy": s, "kernel": args.kernel or "auto",
                            "proposer": choose_proposer(cfg.proposer, len(tables), w), "partitioner": x,
                            "status": f"no plan ({getattr(e, 'kind', 'other')})",
                            "planning_time_s": round(time.perf_counter() - t0, 3)})
            print(f"[{tag}] no plan ({time.perf_counter() - t0:.1f} s): {e}")
            continue
        save_plan(res, out / f"plan_{tag}.json")
        atomic_write_text(out / f"stats_{tag}.txt", res.stats_text)
        _write_ranks(out / f"ranks_{tag}.csv", res)
        rec = {**res.summary(), "status": "ok"}
        rec["warnings"] = imbalance_warnings(rec, args.imbalance_warn)
        records.append(rec)
        ranks[tag] = {"hbm_gb": [round(r.hbm_gb, 6) for r in res.ranks], "ddr_gb": [round(r.ddr_gb, 6) for r in res.ranks],
                      "total_ms": [round(r.total_ms, 6) for r in res.ranks]}
        print(
            f"[{tag}] planning time {res.planning_time_s:.2f} s ({rec['proposer']} proposer, {x} partitioner) | "
            f"step {rec['step_time_ms']:.3f} ms (est.) | "
            f"peak HBM {rec['peak_hbm_gb']:.2f} GB, DDR {rec['peak_ddr_gb']:.2f} GB per rank | imbalance perf {rec['perf_imbalance']:.2f}, "
            f"HBM {rec['hbm_imbalance']:.2f} | {rec['sharding_types']}"
        )
        seq = {n: u for n, u in res.table_usage().items() if u["kind"] == "sequence"}
        if seq:
            shown = [f"{n} {u['sharding_type']} on {len(u['ranks'])} rank(s), {u['hbm_gb']:.3g} GB HBM + {u['ddr_gb']:.3g} GB DDR"
                     for n, u in list(seq.items())[:8]]
            print(f"[{tag}] history (EmbeddingCollection) tables: " + "; ".join(shown) + (f"; ... ({len(seq)} in all)" if len(seq) > 8 else ""))
        if rec["warnings"]:
            print(f"[{tag}] WARNING: {rec['warnings']} -- {_imbalance_hint(rec)}")
        if w <= 16 and len(runs) == 1:
            sys.stdout.write(res.stats_text)
    meta = {"description": desc, "num_tables": len(tables), "topology": base.name, "compute_device": base.compute_device,
            "hbm_cap_gb": base.hbm_cap_gb, "ddr_cap_gb": base.ddr_cap_gb, "batch_size_per_rank": base.batch_size,
            "kernel": args.kernel or "auto", "imbalance_warn": args.imbalance_warn, "config": args.config}
    paths = write_comparison(records, out, meta, ranks)
    print(_markdown(records))
    print("wrote " + ", ".join(str(p) for p in paths) + f" and per-run plan/stats/ranks files in {out}")
    if args.verify:
        _verify(args, tables, strategies, out)
    if failures and len(failures) == len(records):
        raise UserError("no run produced a plan:\n" + "\n".join(failures))
    return 0


COLUMNS = [
    "world_size", "strategy", "kernel", "proposer", "partitioner", "status", "step_time_ms", "fwd_compute_ms", "fwd_comms_ms", "bwd_compute_ms",
    "bwd_comms_ms", "input_dist_ms", "peak_hbm_gb", "peak_ddr_gb", "perf_imbalance", "hbm_imbalance", "ddr_imbalance",
    "planning_time_s", "sharding_types", "warnings",
]

def _tag(r: Dict[str, Any]) -> str:
    """File tag of a run: ``ws{W}_{strategy}``, plus ``_{partitioner}`` for a non-default partitioner."""
    x = r.get("partitioner") or "greedy"
    return f"ws{r['world_size']}_{r['strategy']}" + ("" if x == "greedy" else f"_{x}")


def _series(r: Dict[str, Any]) -> str:
    """Plot series of a run: the strategy, plus ``/ partitioner`` for a non-default partitioner."""
    x = r.get("partitioner") or "greedy"
    return r["strategy"] if x == "greedy" else f"{r['strategy']} / {x}"


IMBALANCE_KEYS = (("hbm_imbalance", "HBM"), ("ddr_imbalance", "DDR"), ("perf_imbalance", "estimated time"))


def imbalance_warnings(rec: Dict[str, Any], threshold: float) -> str:
    """``"HBM 33.1x the mean on one rank (59.9 GB peak)"``-style text for every max/mean over ranks above
    ``threshold`` ('' when the plan is balanced within it)."""
    out = []
    for key, what in IMBALANCE_KEYS:
        v = rec.get(key)
        if v is not None and v > threshold:
            peak = {"HBM": f"{rec.get('peak_hbm_gb', 0):.3g} GB peak", "DDR": f"{rec.get('peak_ddr_gb', 0):.3g} GB peak",
                    "estimated time": f"{rec.get('step_time_ms', 0):.3g} ms on the slowest rank"}[what]
            out.append(f"{what} {v:.1f}x the mean on one rank ({peak})")
    return "; ".join(out) + (f" (> --imbalance-warn {threshold:g})" if out else "")


def _imbalance_hint(rec: Dict[str, Any]) -> str:
    if rec["strategy"] == "row_wise":
        return "see the per-rank spread in rank_memory.png"
    return ("most of the memory sits on a few ranks (whole tables, columns, or host-local row shards: table_row_wise "
            "splits a table over one host only); compare --strategy row_wise (rows over every rank), --partitioner "
            "memory_balanced or fewer ranks, and see the per-rank spread in rank_memory.png")


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


def write_comparison(records: List[Dict[str, Any]], out: Path, meta: Optional[Dict[str, Any]] = None,
                     ranks: Optional[Dict[str, Dict[str, List[float]]]] = None) -> List[Path]:
    """comparison.md, comparison.csv, comparison.json and the plots (each written atomically)."""
    import csv

    from store_rec.fileio import atomic_path, atomic_write_json, atomic_write_text

    meta = dict(meta or {})
    md = atomic_write_text(
        out / "comparison.md",
        (f"{_title(meta)}\n\n" if meta else "")
        + "Estimated by TorchRec's planner cost model (not measured): step time = max over ranks of "
        "fwd/bwd compute + comms of the embedding tables; memory = table shards per rank.\n\n" + _markdown(records),
    )
    cs = out / "comparison.csv"
    with atomic_path(cs) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)
    js = atomic_write_json(out / "comparison.json", {"meta": meta, "records": records, "ranks": ranks or {}})
    return [md, cs, js, *plot_comparison({"meta": meta, "records": records, "ranks": ranks or {}}, out)]


def replot(out: Path) -> List[Path]:
    """Redraw ``out``'s plots from its ``comparison.json`` (written by a plan run; only read here)."""
    import json

    from store_rec.errors import UserError

    path = out / "comparison.json"
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--replot: {path} not found (written by store-rec plan ... --out {out})") from None
    except ValueError as e:
        raise UserError(f"--replot: {path}: not JSON ({e})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise UserError(f"--replot: {path}: no 'records' list")
    return plot_comparison(payload, out)


def _title(meta: Dict[str, Any]) -> str:
    """``200 synthetic tables (...) on h100x8 (cuda, 80 GB HBM + 512 GB DDR per rank, batch 512/rank)``."""
    if not meta:
        return ""
    cap = f"{meta.get('hbm_cap_gb', 0):g} GB HBM + {meta.get('ddr_cap_gb', 0):g} GB DDR per rank"
    kern = f", kernel {meta['kernel']}" if meta.get("kernel") not in (None, "auto") else ""
    return (f"{meta.get('description', '?')} on {meta.get('topology', '?')} ({meta.get('compute_device', '?')}, {cap}, "
            f"batch {meta.get('batch_size_per_rank', '?')}/rank{kern})")


def plot_comparison(payload: Dict[str, Any], out: Path) -> List[Path]:
    """step_time.png, peak_memory.png (lines per strategy vs world size; no-plan runs as x markers on the
    axis, named in the legend) and rank_memory.png (per-rank HBM / DDR of every plan, min-max bar and
    quartile box, against the per-rank capacity)."""
    import matplotlib

    from store_rec.fileio import atomic_path

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, records, ranks = payload.get("meta") or {}, payload["records"], payload.get("ranks") or {}
    title = _wrap(_title(meta)) if meta else "store-rec plan"
    strategies = list(dict.fromkeys(_series(r) for r in records))
    worlds = sorted({r["world_size"] for r in records})
    pngs = []
    markers, styles = "osD^vP*X", ["-", "--", "-.", ":"]
    for fname, key, ylabel in (
        ("step_time.png", "step_time_ms", "estimated step time (ms, max over ranks)"),
        ("peak_memory.png", None, "peak memory per rank (GB, max of HBM and DDR)"),
    ):
        fig, ax = plt.subplots(figsize=(7.6, 4.8))
        failed_any, ys_all = False, []
        for k, s in enumerate(strategies):
            ok = sorted((r for r in records if _series(r) == s and r.get("status") == "ok"), key=lambda r: r["world_size"])
            bad = sorted(r["world_size"] for r in records if _series(r) == s and r.get("status") != "ok")
            if ok:  # distinct marker + dash per strategy: identical plans (auto == table_row_wise) stay visible
                xs = [r["world_size"] for r in ok]
                ys = [r[key] if key else max(r["peak_hbm_gb"], r["peak_ddr_gb"]) for r in ok]
                ys_all += ys
                ax.plot(xs, ys, marker=markers[k % len(markers)], ls=styles[k % len(styles)], color=f"C{k}",
                        ms=8 - 1.2 * (k % 4), label=s)
            if bad:
                failed_any = True
                # on the x axis (axes coordinates: visible on linear and log scales alike)
                ax.plot(bad, [0.0] * len(bad), "x", color=f"C{k}", ms=11, mew=2.5, clip_on=False, zorder=5,
                        transform=ax.get_xaxis_transform(),
                        label=f"{s}: no plan at W={','.join(map(str, bad))}" if ok else f"{s}: no plan at any W")
        if len(worlds) > 1 and worlds[-1] / worlds[0] >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(worlds, [str(w) for w in worlds])
        pos = [y for y in ys_all if y > 0]
        if pos and max(pos) / min(pos) >= 100:  # spans decades: log, so the small values stay readable
            ax.set_yscale("log")
            ylabel += ", log scale"
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("world size (ranks)")
        ax.set_ylabel(ylabel)
        ax.set_title(title + ("\n(x on the axis: TorchRec found no plan)" if failed_any else ""), fontsize=8.5)
        ax.grid(True, alpha=0.3)
        if strategies:
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / fname
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        pngs.append(p)
    pngs.append(_plot_rank_memory(records, ranks, meta, title, out / "rank_memory.png"))
    return pngs


def _plot_rank_memory(records: List[Dict[str, Any]], ranks: Dict[str, Dict[str, List[float]]], meta: Dict[str, Any],
                      title: str, path: Path) -> Path:
    """Per-rank HBM (top) and DDR (bottom) of every run, grouped by world size, one colour per strategy:
    min-max line, 25-75% box, median bar, mean diamond, the max labelled; capacity dashed; no plan named."""
    import matplotlib.pyplot as plt
    import numpy as np

    from store_rec.fileio import atomic_path

    strategies = list(dict.fromkeys(_series(r) for r in records))
    worlds = sorted({r["world_size"] for r in records})
    n = len(strategies)
    fig, axes = plt.subplots(2, 1, figsize=(max(7.5, 0.55 * n * len(worlds) + 3), 7.2), sharex=True)
    at = {(r["world_size"], _series(r)): r for r in records}
    for ax, key, cap_key, what in ((axes[0], "hbm_gb", "hbm_cap_gb", "HBM"), (axes[1], "ddr_gb", "ddr_cap_gb", "DDR")):
        for g, w in enumerate(worlds):
            for k, s in enumerate(strategies):
                x = g * (n + 1) + k
                r = at.get((w, s))
                if r is None:
                    continue
                vals = (ranks.get(_tag(r)) or {}).get(key)
                if r.get("status") != "ok" or not vals:
                    ax.text(x, 0.03, "no plan" if r.get("status") != "ok" else "no per-rank data", rotation=90,
                            ha="center", va="bottom", transform=ax.get_xaxis_transform(), color=f"C{k}", fontsize=8)
                    continue
                v = np.asarray(vals, dtype=float)
                q1, med, q3 = np.percentile(v, [25, 50, 75])
                ax.vlines(x, v.min(), v.max(), color="k", lw=1)
                ax.add_patch(plt.Rectangle((x - 0.35, q1), 0.7, q3 - q1, facecolor=f"C{k}", alpha=0.6, edgecolor="k"))
                ax.plot([x - 0.35, x + 0.35], [med, med], color="k", lw=1.5)
                ax.plot([x], [v.mean()], "D", color="w", mec="k", ms=4)
                if v.max() > 0:
                    ax.annotate(f"{v.max():.3g}", (x, v.max()), textcoords="offset points", xytext=(0, 3), ha="center",
                                fontsize=7)
        cap = meta.get(cap_key)
        if cap:
            ax.axhline(cap, color="C3", ls="--", lw=1)
            ax.text(1.0, cap, f" {what} capacity\n {cap:g} GB", transform=ax.get_yaxis_transform(), va="center",
                    fontsize=7, color="C3")
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{what} per rank (GB)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[1].set_xticks([g * (n + 1) + (n - 1) / 2 for g in range(len(worlds))], [f"W = {w}" for w in worlds])
    axes[1].set_xlim(-0.8, len(worlds) * (n + 1) - 1.2)
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=f"C{k}", alpha=0.6, edgecolor="k") for k in range(n)]
    axes[0].legend(handles, strategies, fontsize=8, loc="upper left", ncol=min(n, 4))
    axes[0].set_title("per-rank memory of each plan: min-max line, 25-75% box, median bar, mean diamond, max labelled",
                      fontsize=8)
    fig.suptitle(title, fontsize=8.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 95) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


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
