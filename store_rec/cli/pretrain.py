"""``store-rec pretrain``: train SASRec item embeddings, evaluate, export EMB.parquet + EMB.json.

Sources:

* ``--data DIR``: a prepared dataset with ``sequences.parquet`` (ids = the item feature's vocab
  ids, ``schema.json`` ``sequences.num_items`` = N items with ids ``1 .. N``, 0 = OOV). Every vocab id
  ``1 .. N`` is exported (ids that never occur in a sequence keep their initial vector; their count is
  logged and written to the JSON as ``unseen_items``).
* ``--sequences FILE``: the raw SASRec text format (``user item`` per line, optionally ``.gz``);
  the file's own item ids are kept and only ids that occur in the file are exported.

Evaluation: leave-last-out, HR@10 / NDCG@10 of the held-out item against 100 negatives drawn from the
items that occur in the data and that the user never interacted with; the same lists ranked by
training popularity are the baseline. If SASRec does not beat popularity on test NDCG@10 a warning is
printed and the JSON says ``"beats_popularity": false`` with a ``"warning"``.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="train SASRec item embeddings (HR@10/NDCG@10 vs popularity)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="prepared dataset directory with sequences.parquet")
    src.add_argument("--sequences", help="raw SASRec text file: 'user item' per line (.gz ok)")
    p.add_argument("--out", required=True, help="output EMB.parquet (EMB.json with metrics is written beside it)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--dim", type=int, default=64, help="embedding / hidden size (multiple of 4 for FBGEMM)")
    p.add_argument("--max-len", type=int, default=200)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    from pathlib import Path

    from store_rec.fileio import atomic_write_json
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.sasrec import SASRecConfig, load_sequences_dir, load_sequences_text, train_sasrec, training_items

    from store_rec.errors import UserError
    from store_rec.fileio import check_output_path

    log = logging.getLogger("store_rec.cli.pretrain")
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise UserError(f"--out {out}: must end with .parquet")
    # both outputs checked before anything is read: neither may be an input or contain one; inside the
    # --data directory only new files are fine (the files it reads are inputs too)
    inputs = [("--sequences", args.sequences), ("--data", args.data)]
    if args.data and Path(args.data).is_dir():
        from store_rec.data.schema import SCHEMA_FILE

        d = Path(args.data)
        inputs += [("--data", d / SCHEMA_FILE), ("--data", d / "sequences.parquet")]
        inputs += [("--data subdirectory", p) for p in d.iterdir() if p.is_dir()]  # splits, vocab
    for path in (out, out.with_suffix(".json")):
        check_output_path(path, inputs=inputs, flag="--out", may_nest=("--data",))
    seqs = load_sequences_dir(args.data) if args.data else load_sequences_text(args.sequences)
    cfg = SASRecConfig(dim=args.dim, max_len=args.max_len, num_blocks=args.blocks, num_heads=args.heads,
                       dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                       seed=args.seed, device=args.device)
    res = train_sasrec(seqs, cfg)
    if args.data:
        ids = training_items(seqs)
        unseen = int(len(ids) - res.catalog_size)  # the catalog: the ids that occur in a sequence
        if unseen:
            log.warning("%d of %d vocab items never occur in a sequence; exported with their initial vectors",
                        unseen, len(ids))
    else:
        ids, unseen = seqs.catalog(), 0
    meta = {"dim": cfg.dim, "item_feature": seqs.item_feature, "source": "sasrec", "num_items": seqs.num_items,
            "input": str(args.data or args.sequences)}
    save_embeddings(out, ids, res.embeddings[ids], meta)
    sas, pop = res.metrics["sasrec_test"]["ndcg@10"], res.metrics["popularity_test"]["ndcg@10"]
    report = {"metrics": res.metrics, "beats_popularity": res.beats_popularity,
              "epochs": res.epochs, "seconds": round(res.seconds, 2),
              "num_users": res.num_users, "num_items": seqs.num_items, "exported_items": int(len(ids)),
              "unseen_items": unseen, "catalog_items": res.catalog_size, "config": cfg.__dict__,
              "input": meta["input"],
              "eval": (f"leave-last-out, true item vs {cfg.num_eval_negatives} negatives drawn uniformly from the "
                       f"{res.catalog_size} items occurring in the data, excluding the user's items")}
    warning = None
    if not res.beats_popularity:
        warning = (f"SASRec does not beat popularity on test NDCG@10 ({sas:.4f} <= {pop:.4f}): these embeddings "
                   "are no better than item counts (train longer, check that sequences are in interaction order)")
        report["warning"] = warning
    atomic_write_json(out.with_suffix(".json"), report)
    print(f"wrote {out} ({len(ids)} items x {cfg.dim}) and {out.with_suffix('.json')}")
    print(f"{'':12s} {'valid HR@10':>12s} {'valid NDCG@10':>14s} {'test HR@10':>11s} {'test NDCG@10':>13s}")
    for name in ("sasrec", "popularity"):
        v, t = res.metrics[f"{name}_valid"], res.metrics[f"{name}_test"]
        print(f"{name:12s} {v['hr@10']:12.4f} {v['ndcg@10']:14.4f} {t['hr@10']:11.4f} {t['ndcg@10']:13.4f}")
    print(f"epochs {res.epochs}, training {res.seconds:.1f} s")
    if warning:
        import sys

        print(f"WARNING: {warning}", file=sys.stderr)
    return 0
