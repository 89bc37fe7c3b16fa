"""Item embeddings -> trained tokenizer -> SID table + report: what ``store-rec tokenize`` runs in one
process (the experiments runner calls it directly; the data-parallel version is
:mod:`store_rec.distributed.tokenizer`)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, List, Optional, Tuple

from store_rec.errors import UserError
from store_rec.fileio import PathLike

logger = logging.getLogger(__name__)


def check_tokenize_outputs(out: PathLike, *, report: Optional[PathLike] = None, save_model: Optional[PathLike] = None,
                           embeddings: Optional[PathLike] = None, ids: Optional[PathLike] = None,
                           config: Optional[PathLike] = None, data: Optional[PathLike] = None) -> None:
    """Every output checked before anything is read: none may be an input (``--out X --embeddings X`` would
    replace the embeddings with the SID table), contain one, be a directory, or equal another output."""
    import os

    from store_rec.fileio import check_distinct_outputs, check_output_path

    inputs: List[Tuple[str, Any]] = [("--embeddings", embeddings), ("--ids", ids), ("--config", config), ("--data", data)]
    if data is not None:
        from store_rec.data.schema import SCHEMA_FILE

        inputs.append(("--data", os.path.join(data, SCHEMA_FILE)))
    outputs = [("--out", out), ("--report", report), ("--save-model", save_model)]
    for flag, path in outputs:
        if path is not None:
            check_output_path(path, inputs=inputs, flag=flag, may_nest=("--data",))
    check_distinct_outputs(outputs)


def make_sid_table(embeddings: PathLike, out: PathLike, *, method: str, num_sids: int, codebook_size: int,
                   report: Optional[PathLike] = None, config: Optional[PathLike] = None,
                   steps: Optional[int] = None, seed: Optional[int] = None, dedup: bool = False,
                   item_feature: Optional[str] = None, ids: Optional[PathLike] = None,
                   positional_ids: Optional[int] = None, dim: Optional[int] = None,
                   data: Optional[PathLike] = None, save_model: Optional[PathLike] = None,
                   progress: bool = True) -> Dict[str, Any]:
    """Train a ``method`` tokenizer (K = ``num_sids``, C = ``codebook_size``) on the item embeddings and
    write the SID table ``out`` (atomic; :mod:`store_rec.data.sid_table`), the report JSON ``report`` and,
    with ``save_model``, the trained tokenizer. Arguments are ``store-rec tokenize``'s flags (see
    :mod:`store_rec.cli.tokenize`). Returns the report (``recon_mse``, ``utilization``, ...,
    ``train_seconds``, plus ``num_items`` and ``encode_seconds``)."""
    import numpy as np
    import torch

    from store_rec.data.sid_table import write_sid_table
    from store_rec.fileio import atomic_write_json
    from store_rec.tokenizer.embeddings import load_item_embeddings, load_trained_mask
    from store_rec.tokenizer.report import tokenizer_report
    from store_rec.tokenizer.train import build_tokenizer, load_tokenize_spec, train_tokenizer

    check_tokenize_outputs(out, report=report, save_model=save_model, embeddings=embeddings, ids=ids, config=config,
                           data=data)
    spec = load_tokenize_spec(None if config is None else str(config), method=method, num_sids=num_sids, codebook_size=codebook_size, steps=steps,
                              seed=seed)
    item_ids, emb_np, feature = load_item_embeddings(embeddings, ids_path=ids, positional_ids=positional_ids,
                                                     expected_dim=dim, data_dir=data, item_feature=item_feature)
    trained = load_trained_mask(embeddings)
    n_untrained = 0
    if trained is not None:
        if len(trained) != len(item_ids):
            raise UserError(f"{embeddings}: 'trained' column has {len(trained)} rows for {len(item_ids)} items")
        n_untrained = int((~trained).sum())
        if n_untrained:
            logger.warning("%s: %d of %d items have an untrained (initial) embedding; they are not tokenized and get "
                           "the OOV SID", embeddings, n_untrained, len(item_ids))
            item_ids, emb_np = item_ids[trained], emb_np[trained]
        if len(item_ids) == 0:
            raise UserError(f"{embeddings}: no item has a trained embedding ('trained' column all false)")
    n, d = emb_np.shape
    if codebook_size > n:
        raise UserError(f"--codebook-size {codebook_size} > number of items {n} in {embeddings}: "
                        "codebooks are initialised from the data")
    emb = torch.from_numpy(np.array(emb_np, dtype=np.float32))  # writable copy
    t0 = time.perf_counter()
    model: Any = build_tokenizer(spec, d)  # an OPMQ / RQVAE / OPQ module (encode, codebook_size)
    try:
        history = train_tokenizer(model, emb, spec, progress=progress)
    except FloatingPointError as e:  # fit_tokenizer: a non-finite loss stops training
        raise UserError(f"{embeddings}: tokenizer training diverged: {e}; nothing written (largest |value| in the "
                        f"table: {float(emb.abs().max()):.3g}; rescale the embeddings, e.g. L2-normalise each row, "
                        "or lower train.lr)") from None
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = model.encode(emb)
    enc_s = time.perf_counter() - t0
    rep = tokenizer_report(model, emb, codes, encode_seconds=enc_s)
    bad = [k for k in ("recon_mse", "recon_cosine") if not math.isfinite(float(rep.get(k, 0.0)))]
    if bad:  # e.g. embeddings so large that the reconstruction overflows: every code would be garbage
        raise UserError(f"{embeddings}: the trained tokenizer is not finite ({', '.join(f'{k}={rep[k]}' for k in bad)}); "
                        f"nothing written (largest |value| in the table: {float(emb.abs().max()):.3g}; rescale the "
                        "embeddings, e.g. L2-normalise each row)")
    if save_model:
        from store_rec.tokenizer.online import save_tokenizer

        save_tokenizer(save_model, model, method)
    write_sid_table(out, item_ids, codes.numpy(), method=method, codebook_size=codebook_size, item_feature=feature,
                    dedup=dedup)
    for w in rep.get("warnings", []):
        logger.warning("%s", w)
    rep.update({"untrained_items": n_untrained, "oov_sid_items": n_untrained, "method": method,
                "item_feature": feature, "embedding_dim": d, "train_seconds": train_s,
                "config": spec.raw, "embeddings": str(embeddings),
                "history": {k: v for k, v in history.items() if k != "step"}})
    if report:
        atomic_write_json(report, rep)
    return {**rep, "num_items": n, "encode_seconds": enc_s}
