"""Pre-train SASRec item embeddings and export them as EMB.parquet + EMB.json (what ``store-rec pretrain``
runs; the experiments runner calls it directly)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from store_rec.errors import UserError
from store_rec.fileio import PathLike, atomic_write_json

logger = logging.getLogger(__name__)


def pretrain_embeddings(out: PathLike, cfg: Any, *, data: Optional[PathLike] = None,
                        sequences: Optional[PathLike] = None) -> Dict[str, Any]:
    """Train SASRec (``cfg``: :class:`store_rec.tokenizer.sasrec.SASRecConfig`) on the user sequences of a
    prepared dataset ``data`` (its ``sequences.parquet``) or of a raw ``sequences`` text file, write the
    item embeddings to ``out`` (``.parquet``) and the metrics report to ``out`` with suffix ``.json``.

    Returns the report (``metrics`` with ``sasrec_valid/test`` and ``popularity_valid/test`` HR@10 /
    NDCG@10, ``beats_popularity``, ``epochs``, ``seconds``, item counts; ``warning`` when SASRec does
    not beat popularity) plus ``exported_items``.
    """
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.sasrec import load_sequences_dir, load_sequences_text, train_sasrec, training_items

    out = Path(out)
    if out.suffix != ".parquet":
        raise UserError(f"--out {out}: must end with .parquet")
    if (data is None) == (sequences is None):
        raise UserError("pretrain: give exactly one of --data (prepared dataset) or --sequences (text file)")
    seqs = load_sequences_dir(str(data)) if data else load_sequences_text(str(sequences))
    res = train_sasrec(seqs, cfg)
    if data:
        ids = training_items(seqs)
        unseen = int(len(ids) - res.catalog_size)  # the catalog: the ids that occur in a sequence
        if unseen:
            logger.warning("%d of %d vocab items never occur in a sequence; exported with their initial vectors",
                           unseen, len(ids))
    else:
        ids, unseen = seqs.catalog(), 0
    meta = {"dim": cfg.dim, "item_feature": seqs.item_feature, "source": "sasrec", "num_items": seqs.num_items,
            "input": str(data or sequences)}
    save_embeddings(out, ids, res.embeddings[ids], meta)
    sas, pop = res.metrics["sasrec_test"]["ndcg@10"], res.metrics["popularity_test"]["ndcg@10"]
    report = {"metrics": res.metrics, "beats_popularity": res.beats_popularity,
              "epochs": res.epochs, "seconds": round(res.seconds, 2),
              "num_users": res.num_users, "num_items": seqs.num_items, "exported_items": int(len(ids)),
              "unseen_items": unseen, "catalog_items": res.catalog_size, "config": cfg.__dict__,
              "input": meta["input"],
              "eval": (f"leave-last-out, true item vs {cfg.num_eval_negatives} negatives drawn uniformly from the "
                       f"{res.catalog_size} items occurring in the data, excluding the user's items")}
    if not res.beats_popularity:
        report["warning"] = (f"SASRec does not beat popularity on test NDCG@10 ({sas:.4f} <= {pop:.4f}): these "
                             "embeddings are no better than item counts (train longer, check that sequences are in "
                             "interaction order)")
    atomic_write_json(out.with_suffix(".json"), report)
    return report
