"""``store-rec pretrain``: train SASRec item embeddings, evaluate, export EMB.parquet + EMB.json.

Sources:

* ``--data DIR``: a prepared dataset with ``sequences.parquet`` (ids = the item feature's vocab
  ids, ``schema.json`` ``sequences.num_items`` = N items with ids ``1 .. N``, 0 = OOV). Every vocab id
  ``1 .. N`` is exported (ids that never occur in a sequence keep their initial vector, are marked
  ``trained = false`` in EMB.parquet so ``store-rec tokenize`` gives them the OOV SID; their count is
  logged and written to the JSON as ``unseen_items``).
* ``--sequences FILE``: a SASRec text file, ``user item`` pairs or one line per user ``user item1 item2
  ...`` (optionally ``.gz``); the file's own item ids are kept and only ids that occur in the file
  are exported.

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
    src.add_argument("--sequences", help="SASRec text file: 'user item' pairs or 'user item1 item2 ...' lines (.gz ok)")
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


def _print_table(report) -> None:
    metrics = report["metrics"]
    print(f"{'':12s} {'valid HR@10':>12s} {'valid NDCG@10':>14s} {'test HR@10':>11s} {'test NDCG@10':>13s}")
    for name in ("sasrec", "popularity", "chance"):
        v, t = metrics[f"{name}_valid"], metrics[f"{name}_test"]
        print(f"{name:12s} {v['hr@10']:12.4f} {v['ndcg@10']:14.4f} {t['hr@10']:11.4f} {t['ndcg@10']:13.4f}")
    print(f"epochs {report['epochs']}, training {report['seconds']:.1f} s, {report['num_users']} users")


def run(args) -> int:
    from pathlib import Path

    from store_rec.tokenizer.pretrain import WorseThanChance, pretrain_embeddings
    from store_rec.tokenizer.sasrec import SASRecConfig

    out = Path(args.out)
    cfg = SASRecConfig(dim=args.dim, max_len=args.max_len, num_blocks=args.blocks, num_heads=args.heads,
                       dropout=args.dropout, lr=args.lr, batch_size=args.batch_size, epochs=args.epochs,
                       seed=args.seed, device=args.device)
    try:
        report = pretrain_embeddings(out, cfg, data=args.data, sequences=args.sequences, force=args.force)
    except WorseThanChance as e:
        _print_table(e.report)
        raise
    print(f"wrote {out} ({report['exported_items']} items x {cfg.dim}) and {out.with_suffix('.json')}")
    _print_table(report)
    if report.get("warning"):
        import sys

        print(f"WARNING: {report['warning']}", file=sys.stderr)
    return 0
