"""``store-rec embeddings export``: one feature's table of a trained model -> EMB.parquet (for ``tokenize``).

    store-rec embeddings export --checkpoint RUN --feature site_id --out EMB_site_id.parquet
    store-rec tokenize --embeddings EMB_site_id.parquet --method opmq --num-sids 3 --codebook-size 16 \\
        --out SIDS_site_id.parquet
    store-rec train --config C.yaml 'data.sid_tables={site_id: SIDS_site_id.parquet}' model.tokenizer=opmq

``--checkpoint``: a ``step-N`` dir, a checkpoint root (its newest step) or a run's ``output.dir``, of any
model store_rec trains (DLRM, DCN, STORE ...; multi-rank and sharded checkpoints are assembled). The
rows are the feature's ids ``1 .. vocab-1``; ``trained`` marks the ids that occur in the dataset's train
split (the others keep their initialisation and get the OOV SID from ``tokenize``). Details:
:mod:`store_rec.inference.table_export`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:  # noqa: ANN001
    p = subparsers.add_parser("embeddings", help="item-embedding tables: export one from a training checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="embeddings_command", metavar="SUBCOMMAND")
    sub.required = True
    e = sub.add_parser("export", help="one feature's table of a checkpoint -> EMB.parquet (store-rec tokenize input)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="step-N dir, a checkpoint root (newest step-N) or a run's output.dir")
    e.add_argument("--feature", required=True, help="sparse feature whose table is exported (e.g. site_id)")
    e.add_argument("--out", required=True, help="output EMB.parquet (atomic; not replaced without --force)")
    e.add_argument("--table", help="EBC table name (default t_<feature>)")
    e.add_argument("--config", help="the run's training config (default: config.yaml found above the checkpoint)")
    e.add_argument("--data", help="prepared dataset (default: the config's data.dir); its train split marks trained rows")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.set_defaults(func=run_export)


def run_export(args) -> int:  # noqa: ANN001
    from store_rec.inference.table_export import export_feature_embeddings

    s = export_feature_embeddings(args.checkpoint, args.feature, args.out, table=args.table, config=args.config,
                                  data=args.data, force=args.force)
    print(f"wrote {s['out']}: {s['rows']} x {s['dim']} from {s['table']} of {s['model']} ({s['step']}); "
          f"{s['trained_items']} trained, {s['untrained_items']} never in the train split (-> OOV SID at tokenize)")
    return 0
