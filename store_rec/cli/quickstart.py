"""``store-rec quickstart``: the whole STORE pipeline on the embedded synthetic default, no download.

    store-rec quickstart [--out runs/quickstart] [--rows 100000] [--baseline dlrm_dcn] [--nproc 2]

Steps (each a store_rec command users run themselves on their own data):

1. ``store-rec data prepare synthetic`` -> ``OUT/data`` (planted item clusters, user sequences);
2. ``store-rec pretrain`` -> SASRec item embeddings ``OUT/emb.parquet`` (HR@10 / NDCG@10 vs popularity);
3. ``store-rec tokenize --method opmq`` -> semantic IDs ``OUT/sids.parquet`` + report, and the
   tokenizer itself ``OUT/tokenizer.pt`` (``configs/quickstart_online.yaml`` tokenizes inside the model);
4. ``torchx run -s local_cwd <store_rec/launch/components.py>:train`` on ``--nproc`` local gloo ranks:
   STORE (the shipped ``configs/quickstart.yaml``, SIDs from the batch) and one baseline on the same data
   with the same features (the same SID table; only ``model.name`` differs);
5. prints AUC / GAUC / LogLoss / samples/s / TFLOPs per batch of 1024 side by side and writes
   ``OUT/quickstart.json``.

A step whose output already exists is not redone (delete ``OUT`` to start over). Runs from any
directory: the torchx component and the config are package data (:mod:`store_rec.presets`); step 4
needs torchx (``pip install store_rec[launch]``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

logger = logging.getLogger(__name__)

CONFIG = "quickstart"  # the shipped configs/quickstart.yaml (store_rec.presets)


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("quickstart", help="prepare -> pretrain -> tokenize -> train STORE + a baseline (synthetic data)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--rows", type=int, default=100_000, help="synthetic impressions (default 100k)")
    p.add_argument("--items", type=int, default=2_000)
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--num-sids", type=int, default=3, help="K semantic IDs per item (paper's Avazu setting: 3)")
    p.add_argument("--codebook-size", type=int, default=16, help="C codewords per codebook (paper's Avazu setting: 16)")
    p.add_argument("--baseline", default="dlrm_dcn", help="baseline trained next to STORE (default dlrm_dcn)")
    p.add_argument("--nproc", type=int, default=2, help="local ranks for torchx (default 2)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs of each model (default 2)")
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


def run(args: argparse.Namespace) -> int:
    from store_rec.errors import UserError
    from store_rec.fileio import atomic_write_json

    try:
        import torchx  # noqa: F401
    except ImportError:
        raise UserError("quickstart launches its training runs with torchx: pip install 'store_rec[launch]'") from None
    from store_rec.fileio import check_output_path

    out = check_output_path(args.out, kind="dir").resolve()
    data, emb, sids, tok = out / "data", out / "emb.parquet", out / "sids.parquet", out / "tokenizer.pt"
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    if _step(f"1/4 data prepare synthetic ({args.rows} rows, {args.items} items) -> {data}", (data / "schema.json").exists()):
        from store_rec.data.synthetic import prepare_synthetic

        prepare_synthetic(data, rows=args.rows, items=args.items, users=args.users, seed=args.seed, num_clusters=16)
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

    common = [f"data.dir={data}", "data.prepare_if_missing=null", f"train.epochs={args.epochs}", f"train.seed={args.seed}"]
    print(f"[quickstart] 4/4 torchx run: STORE and {args.baseline} on {args.nproc} local gloo ranks", flush=True)
    results = {
        "store": _torchx_train(out / "store", [*common, f"data.sid_table={sids}"], args.nproc),
        # the baseline gets the same features as STORE: the same SID table replaces the raw item id
        args.baseline: _torchx_train(out / args.baseline, [*common, f"data.sid_table={sids}", f"model.name={args.baseline}"],
                                     args.nproc),
    }
    pre = json.loads(emb.with_suffix(".json").read_text())["metrics"]
    report = {"results": results, "pretrain_test": {k: pre[f"{k}_test"] for k in ("sasrec", "popularity")},
              "tokenizer": json.loads((out / "sids_report.json").read_text()) if (out / "sids_report.json").exists() else None,
              "total_wall_s": round(time.perf_counter() - t_start, 1),
              "args": {k: v for k, v in vars(args).items() if k != "func"}}
    atomic_write_json(out / "quickstart.json", report, default=str)

    print(f"\n{'model':12s} {'test AUC':>9s} {'GAUC':>7s} {'LogLoss':>8s} {'samples/s':>10s} {'GFLOPs/1024':>12s} {'wall s':>7s}")
    for name, r in results.items():
        print(f"{name:12s} {r['auc']:9.4f} {r['gauc']:7.4f} {r['logloss']:8.4f} {r['samples_per_s']:10.0f} "
              f"{r['tflops_per_batch'] * 1e3:12.4g} {r['wall_s']:7.1f}")
    print(f"\nwrote {out / 'quickstart.json'} (total {report['total_wall_s']:.0f} s); runs in {out}/<model>/")
    return 0
