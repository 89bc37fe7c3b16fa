"""Item embeddings -> trained tokenizer -> SID table + report: what ``store-rec tokenize`` runs in one
process (the experiments runner calls it directly; the data-parallel version is
:mod:`store_rec.distributed.tokenizer`)."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from store_rec.errors import UserError
from store_rec.fileio import PathLike


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
    from store_rec.tokenizer.embeddings import load_item_embeddings
    from store_rec.tokenizer.report import tokenizer_report
    from store_rec.tokenizer.train import build_tokenizer, load_tokenize_spec, train_tokenizer

    spec = load_tokenize_spec(None if config is None else str(config), method=method, num_sids=num_sids, codebook_size=codebook_size, steps=steps,
                              seed=seed)
    item_ids, emb_np, feature = load_item_embeddings(embeddings, ids_path=ids, positional_ids=positional_ids,
                                                     expected_dim=dim, data_dir=data, item_feature=item_feature)
    n, d = emb_np.shape
    if codebook_size > n:
        raise UserError(f"--codebook-size {codebook_size} > number of items {n} in {embeddings}: "
                        "codebooks are initialised from the data")
    emb = torch.from_numpy(np.array(emb_np, dtype=np.float32))  # writable copy
    t0 = time.perf_counter()
    model: Any = build_tokenizer(spec, d)  # an OPMQ / RQVAE / OPQ module (encode, codebook_size)
    history = train_tokenizer(model, emb, spec, progress=progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = model.encode(emb)
    enc_s = time.perf_counter() - t0
    if save_model:
        from store_rec.tokenizer.online import save_tokenizer

        save_tokenizer(save_model, model, method)
    write_sid_table(out, item_ids, codes.numpy(), method=method, codebook_size=codebook_size, item_feature=feature,
                    dedup=dedup)
    rep = tokenizer_report(model, emb, codes, encode_seconds=enc_s)
    rep.update({"method": method, "item_feature": feature, "embedding_dim": d, "train_seconds": train_s,
                "config": spec.raw, "embeddings": str(embeddings),
                "history": {k: v for k, v in history.items() if k != "step"}})
    if report:
        atomic_write_json(report, rep)
    return {**rep, "num_items": n, "encode_seconds": enc_s}
