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
training popularity are the baseline, and a random ranking's expectation is the chance level
(HR@10 = 10/101 = 0.099 with 100 negatives). If SASRec does not beat popularity on test NDCG@10 a
warning is printed and the JSON says ``"beats_popularity": false`` with a ``"warning"``. If its test
HR@10 is **below chance** by more than two standard errors (it ranks held-out items lower than a coin
would: sequences out of order, ids that do not match, a broken log), nothing is exported and the
command exits with code 2, unless ``--force``.
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
    p.add_argument("--force", action="store_true",
                   help="export the embeddings even when SASRec is worse than chance on test HR@10")
    p.set_defaults(func=run)


def _print_table(res) -> None:
    print(f"{'':12s} {'valid HR@10':>12s} {'valid NDCG@10':>14s} {'test HR@10':>11s} {'test NDCG@10':>13s}")
    for name in ("sasrec", "popularity", "chance"):
        v, t = res.metrics[f"{name}_valid"], res.metrics[f"{name}_test"]
        print(f"{name:12s} {v['hr@10']:12.4f} {v['ndcg@10']:14.4f} {t['hr@10']:11.4f} {t['ndcg@10']:13.4f}")
    print(f"epochs {res.epochs}, training {res.seconds:.1f} s, {res.num_users} users")


def run(args) -> int:
    import logging
    from pathlib import Path

    from store_rec.fileio import atomic_write_json
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.sasrec import SASRecConfig, load_sequences_dir, load_sequences_text, train_sasrec, training_items

    log = logging.getLogger("store_rec.cli.pretrain")
    out = Path(args.out)
    if out.suffix != ".parquet":
        from store_rec.errors import UserError

        raise UserError(f"--out {out}: must end with .parquet")
    seqs = load_sequences_dir(args.data) if args.data else load_sequences_text(args.sequences)
    cfg = SASRecConfig(dim=args.dim, max_len=args.max_len, num_blocks=args.blocks, num_heads=args.heads,
                       dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                       seed=args.seed, device=args.device)
    res = train_sasrec(seqs, cfg)
    if res.worse_than_chance and not args.force:
        _print_table(res)
        from store_rec.errors import UserError

        hr, ch = res.metrics["sasrec_test"]["hr@10"], res.metrics["chance_test"]["hr@10"]
        raise UserError(f"SASRec is worse than chance on test HR@10 ({hr:.4f} < chance {ch:.4f}, {res.num_users} users): "
                        f"not exporting {out} (check that sequences are in interaction order and ids match the "
                        "dataset; --force exports anyway)")
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
    report = {"metrics": res.metrics, "beats_popularity": res.beats_popularity, "beats_chance": res.beats_chance,
              "worse_than_chance": res.worse_than_chance,
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
    if res.worse_than_chance:
        warning = ((warning + "; ") if warning else "") + "SASRec is worse than chance on test HR@10 (exported with --force)"
        report["warning"] = warning
    atomic_write_json(out.with_suffix(".json"), report)
    print(f"wrote {out} ({len(ids)} items x {cfg.dim}) and {out.with_suffix('.json')}")
    _print_table(res)
    if warning:
        import sys

        print(f"WARNING: {warning}", file=sys.stderr)
    return 0
