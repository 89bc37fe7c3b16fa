"""``store-rec data``: prepare a dataset (raw files -> parquet + schema.json) and inspect one.

    store-rec data prepare avazu --source train.csv.gz --out data/avazu [--config cfg.yaml] [--seed 0]
    store-rec data prepare movielens --source ml-1m --out data/ml --set max_users=300
    store-rec data prepare synthetic --out data/syn --rows 200000 --items 20000
    store-rec data prepare table --source 'logs/*.csv' --schema shop.yaml --out data/shop --workers 2
    store-rec data prepare criteo --splits train=train.txt,valid=dev.txt,test=test.txt --out data/criteo
    store-rec data prepare torchrec_criteo --source /data/criteo_npy --out data/criteo_trec
    store-rec data info data/avazu
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="prepare datasets (raw -> parquet) and inspect them")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    pp = sub.add_parser("prepare", help="raw files -> DIR/{train,valid,test}/*.parquet + schema.json",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Prepare a dataset. Writes atomically: a failed run leaves nothing at --out.")
    pp.add_argument("name", choices=["table", "avazu", "criteo", "movielens", "synthetic", "torchrec_criteo"])
    pp.add_argument("--source", help="raw data: a file, a directory or a glob (movielens: the ml-1m directory; "
                                     "torchrec_criteo: the directory of day_{i}_*.npy)")
    pp.add_argument("--out", required=True, help="output dataset directory")
    pp.add_argument("--schema", help="table: YAML giving each column its role (see datasets/README.md)")
    pp.add_argument("--config", help="dataset config YAML (defaults: configs/datasets/<name>.yaml)")
    pp.add_argument("--splits", metavar="train=PATH,valid=PATH,test=PATH",
                    help="given splits, kept row for row (avazu, criteo, table); PATH: file, directory or glob, "
                         "several joined with +")
    pp.add_argument("--resplit", action="store_true",
                    help="split given splits (--splits or files named train/valid/test) again by the rule")
    pp.add_argument("--workers", type=int, default=1, help="table: worker processes over the input files")
    pp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, YAML value (e.g. min_count=1, max_users=300); repeatable")
    pp.add_argument("--seed", type=int, default=0, help="split / sampling seed (default 0)")
    pp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pp.add_argument("--skip-bad-rows", action="store_true",
                    help="skip (and count) malformed rows instead of failing on the first one")
    pp.add_argument("--rows", type=int, help="synthetic: number of rows")
    pp.add_argument("--items", type=int, help="synthetic: number of items")
    pp.set_defaults(func=run_prepare)

    pi = sub.add_parser("info", help="print the summary of a prepared dataset")
    pi.add_argument("dir", help="prepared dataset directory")
    pi.set_defaults(func=run_info)


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def summary(schema, path: Path, sanity=None) -> str:
    lines = [f"dataset {schema.dataset} at {path} ({_dir_bytes(path):,} bytes on disk)",
             f"  split: {schema.split_method}"]
    total = sum(s.rows for s in schema.splits.values())
    for name, s in schema.splits.items():
        rate = s.positives / s.rows if s.rows else 0.0
        lines.append(f"  {name:5s}: {s.rows:>10,} rows  label rate {rate:.4f}  ({len(s.files)} file(s))")
    lines.append(f"  total: {total:>10,} rows")
    if schema.dense:
        lines.append(f"  dense ({len(schema.dense)}): {', '.join(schema.dense)}")
    ids = schema.features_with_role("id")
    lines.append("  id features: " + ", ".join(f"{f.name}[{f.vocab_size:,}]" for f in ids))
    for g, names in schema.groups.items():
        lines.append(f"  static group {g}: " + ", ".join(
            f"{n}[{schema.feature(n).vocab_size:,}]{'*' if schema.feature(n).multi_hot else ''}" for n in names))
    hist = schema.history
    if hist:
        h = schema.params.get("history", {}) if isinstance(schema.params, dict) else {}
        mean = h.get("mean_len", {}) if isinstance(h, dict) else {}
        lines.append(f"  history (max_len {hist[0].max_len}): " + ", ".join(
            f"{f.name}[{f.vocab_size:,}]" + (f" <- {f.history_of}" if f.history_of else "") for f in hist)
            + ("; mean length " + ", ".join(f"{k} {v:g}" for k, v in mean.items()) if mean else ""))
    if schema.user_key:
        lines.append(f"  user_key: {schema.user_key}")
    if schema.sequences:
        sq = schema.sequences
        lines.append(f"  sequences: {sq.file} ({sq.num_users:,} users, item feature {sq.item_feature}, order {sq.order})")
    skipped = schema.params.get("skipped_rows") if isinstance(schema.params, dict) else None
    if skipped:
        lines.append(f"  skipped malformed rows: {skipped:,}")
    if sanity is not None:
        from store_rec.data.sanity import format_sanity

        lines.append(format_sanity(sanity))
    return "\n".join(lines)


def run_prepare(args) -> int:
    from store_rec.config import parse_overrides
    from store_rec.data.prepare import prepare
    from store_rec.errors import UserError

    from store_rec.data.splits import parse_splits_arg

    opts = dict(seed=args.seed, overwrite=args.overwrite, splits=parse_splits_arg(args.splits), resplit=args.resplit,
                workers=args.workers)
    if args.name == "table":
        if args.config and args.schema:
            raise UserError("table: give the column roles with --schema (not also --config)")
        opts["schema"] = args.schema or args.config
        args.config = None
    elif args.schema:
        raise UserError(f"{args.name}: --schema is for `prepare table` (use --config)")
    if args.name == "synthetic":
        if args.overrides:
            opts.update(parse_overrides(args.overrides))
        if args.rows is not None:
            opts["rows"] = args.rows
        if args.items is not None:
            opts["items"] = args.items
        opts.update(config=args.config, skip_bad_rows=args.skip_bad_rows)
    else:
        if args.rows is not None or args.items is not None:
            raise UserError(f"{args.name}: --rows/--items are for synthetic only")
        opts.update(config=args.config, skip_bad_rows=args.skip_bad_rows, **parse_overrides(args.overrides))
    t0 = time.perf_counter()
    schema = prepare(args.name, args.source, args.out, **opts)
    dt = time.perf_counter() - t0
    import json

    from store_rec.data.sanity import SANITY_FILE

    sanity_path = Path(args.out) / SANITY_FILE
    print(summary(schema, Path(args.out), json.loads(sanity_path.read_text()) if sanity_path.exists() else None))
    print(f"  prepared in {dt:.2f} s")
    return 0


def run_info(args) -> int:
    from store_rec.data.schema import DatasetSchema

    import json

    from store_rec.data.sanity import SANITY_FILE, dataset_sanity

    schema = DatasetSchema.load(args.dir)
    path = Path(args.dir) / SANITY_FILE
    sanity = json.loads(path.read_text()) if path.exists() else dataset_sanity(args.dir, schema)
    print(summary(schema, Path(args.dir), sanity))
    return 0
