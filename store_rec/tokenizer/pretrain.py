"""Pre-train SASRec item embeddings and export them as EMB.parquet + EMB.json (what ``store-rec pretrain``
runs; the experiments runner calls it directly)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from store_rec.errors import UserError
from store_rec.fileio import PathLike, atomic_write_json

logger = logging.getLogger(__name__)


def check_pretrain_outputs(out: Path, *, data: Optional[PathLike] = None, sequences: Optional[PathLike] = None) -> None:
    """Both outputs (``out`` and its ``.json``) checked before anything is read: neither may be an input or
    contain one; inside the ``data`` directory only new files are fine (the files it reads are inputs too,
    and its split / vocab folders may not receive outputs)."""
    from store_rec.fileio import check_output_path

    inputs: List[Tuple[str, Any]] = [("--sequences", sequences), ("--data", data)]
    if data is not None and Path(data).is_dir():
        from store_rec.data.schema import SCHEMA_FILE

        d = Path(data)
        inputs += [("--data", d / SCHEMA_FILE), ("--data", d / "sequences.parquet")]
        inputs += [("--data subdirectory", p) for p in d.iterdir() if p.is_dir()]  # splits, vocab
    for path in (out, out.with_suffix(".json")):
        check_output_path(path, inputs=inputs, flag="--out", may_nest=("--data",))


class WorseThanChance(UserError):
    """SASRec ranks held-out items significantly below chance: nothing was exported. ``report`` holds the
    metrics (what the JSON would have said)."""

    def __init__(self, message: str, report: Dict[str, Any]):
        super().__init__(message)
        self.report = report


def pretrain_embeddings(out: PathLike, cfg: Any, *, data: Optional[PathLike] = None,
                        sequences: Optional[PathLike] = None, force: bool = False) -> Dict[str, Any]:
    """Train SASRec (``cfg``: :class:`store_rec.tokenizer.sasrec.SASRecConfig`) on the user sequences of a
    prepared dataset ``data`` (its ``sequences.parquet``) or of a raw ``sequences`` text file, write the
    item embeddings to ``out`` (``.parquet``) and the metrics report to ``out`` with suffix ``.json``.

    Returns the report (``metrics`` with ``sasrec_valid/test``, ``popularity_valid/test`` and
    ``chance_valid/test`` HR@10 / NDCG@10, ``beats_popularity``, ``beats_chance``, ``worse_than_chance``,
    ``epochs``, ``seconds``, item counts; ``warning`` when SASRec does not beat popularity) plus
    ``exported_items``. When SASRec's test HR@10 is significantly below chance
    (:func:`store_rec.tokenizer.sasrec.worse_than_chance`) nothing is written and :class:`WorseThanChance`
    is raised, unless ``force``.
    """
    from store_rec.tokenizer.embeddings import save_embeddings
    from store_rec.tokenizer.sasrec import load_sequences_dir, load_sequences_text, train_sasrec, training_items

    out = Path(out)
    if out.suffix != ".parquet":
        raise UserError(f"--out {out}: must end with .parquet")
    if (data is None) == (sequences is None):
        raise UserError("pretrain: give exactly one of --data (prepared dataset) or --sequences (text file)")
    check_pretrain_outputs(out, data=data, sequences=sequences)
    seqs = load_sequences_dir(str(data)) if data else load_sequences_text(str(sequences))
    res = train_sasrec(seqs, cfg)
    if res.worse_than_chance and not force:
        hr, ch = res.metrics["sasrec_test"]["hr@10"], res.metrics["chance_test"]["hr@10"]
        raise WorseThanChance(
            f"SASRec is worse than chance on test HR@10 ({hr:.4f} < chance {ch:.4f}, {res.num_users} users): not "
            f"exporting {out} (check that sequences are in interaction order and ids match the dataset; --force "
            "exports anyway)", {"metrics": res.metrics, "epochs": res.epochs, "seconds": round(res.seconds, 2),
                                "num_users": res.num_users})
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
    import numpy as np

    # rows never trained (ids in no sequence) are marked, so tokenize gives them the OOV SID
    save_embeddings(out, ids, res.embeddings[ids], meta, trained=np.isin(ids, seqs.catalog()))
    sas, pop = res.metrics["sasrec_test"]["ndcg@10"], res.metrics["popularity_test"]["ndcg@10"]
    report = {"metrics": res.metrics, "beats_popularity": res.beats_popularity, "beats_chance": res.beats_chance,
              "worse_than_chance": res.worse_than_chance,
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
    if res.worse_than_chance:
        report["warning"] = ((report["warning"] + "; ") if "warning" in report else "") + \
            "SASRec is worse than chance on test HR@10 (exported with --force)"
    atomic_write_json(out.with_suffix(".json"), report)
    return report
