"""``store-rec quickstart``: the whole STORE pipeline on the embedded synthetic default, no download,
ending in a fair STORE-vs-baseline comparison.

    store-rec quickstart [--out runs/quickstart] [--seed 0] [--generator v2] [--baseline dlrm_dcn,dlrm] [--nproc 2]

Steps (each a store_rec command users run themselves on their own data):

1. ``store-rec data prepare synthetic`` -> ``OUT/data`` (planted item clusters, user sequences);
2. ``store-rec pretrain`` -> SASRec item embeddings ``OUT/emb.parquet`` (HR@10 / NDCG@10 vs popularity);
3. ``store-rec tokenize --method opmq`` -> semantic IDs ``OUT/sids.parquet`` + report, and the
   tokenizer itself ``OUT/tokenizer.pt`` (``configs/quickstart_online.yaml`` tokenizes inside the model);
4. ``torchx run -s local_cwd <store_rec/launch/components.py>:train`` on ``--nproc`` local gloo ranks:
   STORE (the shipped ``configs/quickstart.yaml``, SIDs from the batch) and the baselines (default
   TorchRec's DLRM_DCN and DLRM) on the same data with the same features (the same SID table; only
   ``model.name`` differs);
5. prints which model won and by how much, and the features every model read, and writes ``OUT/quickstart.json``.

**The comparison is the fair protocol of ``configs/experiments/fair.yaml`` (docs/RESULTS.md), at one
seed.** Every model reads the same data and the same features (the OPMQ SIDs replace the raw item id for
all; the printed feature lists are computed from each run's own resolved config), get the same epoch
budget (``--epochs``, default 3) with early stopping on valid AUC (patience 1), and each is scored at
**its own best-valid epoch** (valid and test are evaluated at every epoch end; the test AUC printed is
the one of the epoch with the best valid AUC, so no test number picks anything). The recipe in
``configs/quickstart.yaml`` is the fair protocol's: the dataset sizes below are fair.yaml's
``synthetic_v2`` data set, the global batch is the same 512 rows (256 per rank on the default 2 ranks),
and the dense LR 0.005 is the one selected on valid for STORE, DLRM and DCNv2 alike on that data set.

Measured (seeds 0, 1, 2; docs/RESULTS.md): test AUC STORE 0.7458 ± 0.0165, DLRM-DCN 0.7401 ± 0.0196, DLRM
0.7454 ± 0.0156; paired STORE − DLRM-DCN +0.0057 ± 0.0033 (ahead on every seed), STORE − DLRM +0.0004 ±
0.0034 (a tie). 6-7 minutes per run on 2 cores shared with other jobs.

**Generator** (``--generator``, default ``v2``): generator ``v1``'s click logit is biases plus pairwise
field terms only -- exactly the hypothesis class of DLRM's dot interaction, so it picks the baseline by
construction. ``v2`` adds 3-way terms, item side information that does not reveal the item's cluster and
10 % cold items seen only in valid / test: a data set that does not pick the winner by design
(:mod:`store_rec.data.synthetic`). ``--generator v1`` runs the old one.

One seed is one comparison, not a result: ``--seed`` changes the data, the pre-training, the tokenizer
and every training; run several seeds (into several ``--out``) and compare paired differences
(docs/RESULTS.md has the measured ones).

A step whose output already exists is not redone (delete ``OUT`` to start over); an ``OUT/data`` made
with other data arguments is an error, not silently reused. Runs from any directory: the torchx
component and the config are package data (:mod:`store_rec.presets`); step 4 needs torchx
(``pip install store_rec[launch]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

logger = logging.getLogger(__name__)

CONFIG = "quickstart"  # the shipped configs/quickstart.yaml (store_rec.presets)


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("quickstart", help="prepare -> pretrain -> tokenize -> train STORE + a baseline, compared fairly "
                                                 "(synthetic data)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    # default sizes: configs/experiments/fair.yaml's synthetic_v2 data set (where the recipe was selected on valid)
    p.add_argument("--rows", type=int, default=100_000, help="synthetic impressions (default 100k)")
    p.add_argument("--items", type=int, default=10_000, help="items (default 10k)")
    p.add_argument("--users", type=int, default=3_000, help="users (default 3k)")
    p.add_argument("--clusters", type=int, default=32, help="planted item clusters (default 32)")
    p.add_argument("--generator", choices=("v1", "v2"), default="v2",
                   help="synthetic generator (default v2: 3-way terms, cold items; v1's pairwise truth is DLRM's model class)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, pre-training, tokenizer and both trainings")
    p.add_argument("--pretrain-epochs", type=int, default=20, help="SASRec epochs (default 20, as in fair.yaml)")
    p.add_argument("--num-sids", type=int, default=3, help="K semantic IDs per item (paper's Avazu setting: 3)")
    p.add_argument("--codebook-size", type=int, default=16, help="C codewords per codebook (paper's Avazu setting: 16)")
    p.add_argument("--baseline", default="dlrm_dcn,dlrm",
                   help="comma-separated baselines trained next to STORE with the same features (default dlrm_dcn,dlrm: "
                        "DCNv2 and DLRM, DLRM being the strongest equally tuned rival on the fair protocol's valid AUC)")
    p.add_argument("--nproc", type=int, default=2, help="local ranks for torchx (default 2)")
    p.add_argument("--epochs", type=int, default=3,
                   help="epoch budget of each model, early stopping on valid AUC (patience 1); default 3")
    p.set_defaults(func=run)


def _step(name: str, done: bool) -> bool:
    print(f"[quickstart] {name}{' (exists, skipped)' if done else ''}", flush=True)
    return not done


def _torchx_train(run_dir: Path, overrides: List[str], nproc: int) -> Dict[str, Any]:
    """``torchx run -s local_cwd <installed components.py>:train`` from ``run_dir``'s parent -> its summary JSON."""
    from importlib import resources

    from store_rec.errors import UserError

    components = resources.files("store_rec.launch").joinpath("components.py")

    summary = run_dir / "summary.json"
    cmd = [sys.executable, "-m", "torchx.cli.main", "run", "-s", "local_cwd", f"{components}:train",
           "--config", CONFIG, "--j", f"1x{nproc}", "--", *overrides, f"output.dir={run_dir}",
           f"checkpoint.dir={run_dir}/checkpoints", "output.progress_bar=false", "--metrics-out", str(summary),
           "--overwrite-checkpoints"]  # a step without its summary is redone from scratch (its own run dir)
    # no PATH set-up for an unactivated venv: the component runs this Python's torchrun when none is on PATH
    t0 = time.perf_counter()
    log = run_dir.with_suffix(".log")
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=run_dir.parent, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0 or not summary.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise UserError(f"training failed (exit {r.returncode}); log: {log}\n{tail}")
    out = json.loads(summary.read_text())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


# the data arguments an existing OUT/data must have been made with (schema.json's "params")
_DATA_KEYS = {"rows": "rows", "items": "items", "users": "users", "num_clusters": "clusters", "generator": "generator",
              "seed": "seed"}


def check_data_params(data: Path, want: Mapping[str, Any]) -> None:
    """An existing ``data`` dir must have been generated with ``want`` (``schema.json``'s ``params``):
    a quickstart with other data arguments never trains on stale data (UserError naming the key)."""
    from store_rec.errors import UserError

    have = json.loads((data / "schema.json").read_text()).get("params", {})
    for key, flag in _DATA_KEYS.items():
        got = have.get(key, "v1" if key == "generator" else None)  # generator v1's schema does not record it
        if key in want and got != want[key]:
            raise UserError(f"{data}: made with {key}={got!r}, but --{flag} is {want[key]!r}; "
                            "use another --out (or delete this one) to start over")


def score_run(run_dir: Path) -> Dict[str, Any]:
    """One training run's scores at **its best-valid epoch** (:func:`store_rec.experiments.fair.best_valid_epoch`
    on ``run_dir/metrics.jsonl``) plus its throughput and cost from ``summary.json``."""
    from store_rec.errors import UserError
    from store_rec.experiments.fair import best_valid_epoch

    sc = best_valid_epoch(run_dir / "metrics.jsonl")
    if sc is None:
        raise UserError(f"{run_dir / 'metrics.jsonl'}: no epoch with both a valid and a test AUC "
                        "(the quickstart evaluates both at every epoch end)")
    summ = json.loads((run_dir / "summary.json").read_text())
    return {"best_epoch": sc.epoch + 1, "epochs_trained": summ.get("epochs_completed"), "valid_auc": sc.valid_auc,
            "test_auc": sc.test_auc, "test_gauc": sc.test_gauc, "test_logloss": sc.test_logloss,
            "samples_per_s": summ.get("samples_per_s"), "tflops_per_batch": summ.get("tflops_per_batch"),
            "steps": summ.get("steps")}


def model_inputs(run_dir: Path) -> List[str]:
    """The features a finished run's model read, from its resolved ``config.yaml`` and its dataset:
    the id/SID tokens, the static groups and the dense features
    (:func:`store_rec.models.tables.model_features`)."""
    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.models.tables import model_features
    from store_rec.train.config import load_train_config

    cfg = load_train_config(run_dir / "config.yaml")
    schema = ParquetBatchLoader(cfg.data.dir, "valid", 1, sid_table=cfg.data.sid_table, sid_feature=cfg.data.sid_feature).schema
    mf = model_features(schema, cfg.model)
    groups = [f"{g}({', '.join(names)})" for g, names in mf.static_groups.items()]
    return [*mf.tokens, *groups, *(f"dense:{d}" for d in schema.dense)]


def parse_baselines(text: str) -> List[str]:
    """``--baseline``: comma-separated model names (each a ``model.name`` other than ``store``), no repeats."""
    from store_rec.errors import UserError
    from store_rec.models.config import MODEL_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in MODEL_NAMES or n == "store":
            raise UserError(f"--baseline: {n!r} is not a baseline model; one of {', '.join(m for m in MODEL_NAMES if m != 'store')}")
    if not names or len(set(names)) != len(names):
        raise UserError(f"--baseline: {text!r}: give one or more distinct model names, comma-separated")
    return names


def comparison_lines(results: Mapping[str, Mapping[str, Any]], features: Mapping[str, Sequence[str]],
                     epochs: int) -> List[str]:
    """The printed comparison: one row per model (scored at its best-valid epoch), who won by how much on
    test AUC, and whether both read the same features."""
    names = list(results)
    lines = [f"{'model':12s} {'best epoch':>10s} {'valid AUC':>9s} {'test AUC':>9s} {'GAUC':>7s} {'LogLoss':>8s} "
             f"{'samples/s':>10s} {'GFLOPs/1024':>12s} {'wall s':>7s}"]
    for name, r in results.items():
        ep = f"{r['best_epoch']} of {r['epochs_trained']}"
        gauc = f"{r['test_gauc']:7.4f}" if r.get("test_gauc") is not None else f"{'n/a':>7s}"
        lines.append(f"{name:12s} {ep:>10s} {r['valid_auc']:9.4f} {r['test_auc']:9.4f} {gauc} {r['test_logloss']:8.4f} "
                     f"{r['samples_per_s'] or 0:10.0f} {(r['tflops_per_batch'] or 0) * 1e3:12.4g} {r.get('wall_s', 0):7.1f}")
    lines.append(f"(each model: up to {epochs} epochs, early stopping on valid AUC; scores at its own best-valid epoch; "
                 "'of N' = epochs trained)")
    a = names[0]
    for b in names[1:]:
        d = results[a]["test_auc"] - results[b]["test_auc"]
        who = f"{a if d > 0 else b} ahead" if d else "tied"
        lines.append(f"test AUC {a} - {b}: {d:+.4f} -> {who} on this seed "
                     f"(valid AUC {results[a]['valid_auc'] - results[b]['valid_auc']:+.4f})")
    if len(names) >= 2:
        lines.append("one seed is one comparison, not a result: docs/RESULTS.md has the paired seeds")
    feats = list(features.values())
    if feats and all(f == feats[0] for f in feats):
        lines.append(f"same features for {' and '.join(features)}: {', '.join(feats[0])}")
    else:
        for name, f in features.items():
            lines.append(f"features of {name} (NOT the same as the others'): {', '.join(f)}")
    return lines


def run(args: argparse.Namespace) -> int:
    from store_rec.errors import UserError
    from store_rec.fileio import atomic_write_json

    try:
        import torchx  # noqa: F401
    except ImportError:
        raise UserError("quickstart launches its training runs with torchx: pip install 'store_rec[launch]'") from None
    from store_rec.fileio import check_output_path

    if args.epochs < 1:
        raise UserError(f"--epochs: must be >= 1, got {args.epochs}")
    baselines = parse_baselines(args.baseline)
    out = check_output_path(args.out, kind="dir").resolve()
    data, emb, sids, tok = out / "data", out / "emb.parquet", out / "sids.parquet", out / "tokenizer.pt"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    want = {"rows": args.rows, "items": args.items, "users": args.users, "num_clusters": args.clusters,
            "generator": args.generator, "seed": args.seed}
    if _step(f"1/4 data prepare synthetic (generator {args.generator}, {args.rows} rows, {args.items} items, seed "
             f"{args.seed}) -> {data}", (data / "schema.json").exists()):
        from store_rec.data.synthetic import prepare_synthetic

        prepare_synthetic(data, rows=args.rows, items=args.items, users=args.users, seed=args.seed,
                          num_clusters=args.clusters, generator=args.generator)
    check_data_params(data, want)
    if _step(f"2/4 pretrain SASRec item embeddings -> {emb}", emb.exists()):
        from store_rec.cli import main as cli

        if cli(["pretrain", "--data", str(data), "--out", str(emb), "--epochs", str(args.pretrain_epochs),
                "--max-len", "50", "--dim", "32", "--seed", str(args.seed)]):
            raise UserError("pretrain failed")
    if _step(f"3/4 tokenize OPMQ K={args.num_sids} C={args.codebook_size} -> {sids}", sids.exists() and tok.exists()):
        from store_rec.cli import main as cli

        if cli(["tokenize", "--embeddings", str(emb), "--method", "opmq", "--num-sids", str(args.num_sids),
                "--codebook-size", str(args.codebook_size), "--out", str(sids), "--report", str(out / "sids_report.json"),
                "--seed", str(args.seed), "--save-model", str(tok)]):
            raise UserError("tokenize failed")

    # the fair protocol: same data, same SID table, same epoch budget with early stopping on valid, valid and
    # test at every epoch end (each model scored at its best-valid epoch); only model.name differs
    common = [f"data.dir={data}", "data.prepare_if_missing=null", f"data.sid_table={sids}", f"train.epochs={args.epochs}",
              "train.early_stop_patience=1", "train.epoch_end_splits=[valid,test]", f"train.seed={args.seed}"]
    print(f"[quickstart] 4/4 torchx run: STORE and {', '.join(baselines)} on {args.nproc} local gloo ranks, up to "
          f"{args.epochs} epochs each, early stopping on valid AUC", flush=True)
    runs = {"store": out / "store", **{b: out / b for b in baselines}}
    summaries = {name: _torchx_train(run_dir, [*common, f"model.name={name}"], args.nproc) for name, run_dir in runs.items()}
    results = {}
    for name, run_dir in runs.items():
        results[name] = {**score_run(run_dir), "wall_s": summaries[name]["wall_s"]}
    features = {name: model_inputs(run_dir) for name, run_dir in runs.items()}
    lines = comparison_lines(results, features, args.epochs)

    pre = json.loads(emb.with_suffix(".json").read_text())["metrics"]
    report = {"results": results, "features": features,
              "test_auc_store_minus": {b: results["store"]["test_auc"] - results[b]["test_auc"] for b in baselines},
              "protocol": "same data and features; up to --epochs epochs, early stopping on valid AUC (patience 1); "
                          "each model scored at its best-valid epoch",
              "summaries": summaries,
              "pretrain_test": {k: pre[f"{k}_test"] for k in ("sasrec", "popularity")},
              "tokenizer": json.loads((out / "sids_report.json").read_text()) if (out / "sids_report.json").exists() else None,
              "total_wall_s": round(time.perf_counter() - t_start, 1),
              "args": {k: v for k, v in vars(args).items() if k != "func"}}
    atomic_write_json(out / "quickstart.json", report, default=str)

    print("\n" + "\n".join(lines))
    print(f"\nwrote {out / 'quickstart.json'} (total {report['total_wall_s']:.0f} s); runs in {out}/<model>/")
    return 0
