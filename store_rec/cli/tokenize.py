"""``store-rec tokenize``: train a semantic tokenizer on item embeddings, write the SID table + report.

Example::

    store-rec tokenize --embeddings EMB.parquet --method opmq --num-sids 3 --codebook-size 256 \\
        --out SIDS.parquet --report REPORT.json --dedup
    store-rec tokenize --embeddings EMB.npy --ids IDS.txt --dim 64 --data DATA_DIR ...   # foreign table

``--config YAML`` may hold ``model:`` (OPMQConfig fields: hidden_dims, latent_dim, codebook_update,
commitment_weight, orth_weight, dead_code_steps, kmeans_init, shared_codebook, ...) and ``train:``
(TrainConfig: steps, epochs, batch_size, lr, seed) sections; command-line flags win. OPQ uses neither
section except ``opq: {outer_iters, kmeans_iters, max_train}``.

Embeddings: ``EMB.parquet`` (item ids in its ``item`` column) or ``EMB.npy`` with ``--ids FILE`` (``.npy``
or text, one id per row). A ``.npy`` without ids is refused unless ``--positional-ids 1`` (row i = item
i+1) or ``--positional-ids 0`` (row i = item i; row 0 is the OOV id and is dropped) says rows are
positional. Checks: width (``--dim``, and the parquet's ``dim`` metadata), NaN/inf, duplicate ids,
ids < 1, and with ``--data DIR`` every item of the dataset's item vocabulary must have a row.

A codebook larger than the number of items is an error (codebooks are initialised from the data).
Items missing from the SID table get the OOV SID = C when the loader attaches it.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="item embeddings -> semantic IDs (OPMQ / RQ-VAE / OPQ)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True,
                   help="EMB.parquet (item int64, embedding list<float32>[d]) or EMB.npy (with --ids)")
    p.add_argument("--ids", default=None, help="item ids of the .npy rows: .npy int array or text, one id per line")
    p.add_argument("--positional-ids", type=int, choices=[0, 1], default=None,
                   help=".npy without --ids: row i is item i+FIRST (1) or item i with row 0 = OOV dropped (0)")
    p.add_argument("--dim", type=int, default=None, help="required embedding width d")
    p.add_argument("--data", default=None,
                   help="prepared dataset dir: every item of its item vocabulary must have an embedding")
    p.add_argument("--method", choices=["opmq", "rqvae", "opq"], default="opmq")
    p.add_argument("--num-sids", type=int, required=True, help="K, SIDs per item")
    p.add_argument("--codebook-size", type=int, required=True, help="C, codewords per codebook")
    p.add_argument("--out", required=True, help="output SID table (.parquet)")
    p.add_argument("--report", default=None, help="output report JSON")
    p.add_argument("--config", default=None, help="YAML with model:/train:/opq: sections")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dedup", action="store_true", help="add the sid_dedup disambiguation column")
    p.add_argument("--item-feature", default=None, help="item feature name (default: EMB metadata or 'item')")
    p.add_argument("--save-model", default=None, metavar="FILE",
                   help="also save the trained tokenizer (for model.sid_source: online, model.online.tokenizer)")
    p.set_defaults(func=run)


def run(args) -> int:
    import math
    import os
    import time

    import numpy as np
    import torch

    from store_rec.errors import UserError
    from store_rec.tokenizer.embeddings import load_item_embeddings
    from store_rec.tokenizer.report import tokenizer_report
    from store_rec.tokenizer.sid_table import write_sid_table
    from store_rec.tokenizer.train import build_tokenizer, load_tokenize_spec, train_tokenizer
    from store_rec.fileio import atomic_write_json, check_distinct_outputs, check_output_path

    # every output checked before anything is read: none may be an input (--out X --embeddings X would
    # replace the embeddings with the SID table), contain one, be a directory, or equal another output
    inputs = [("--embeddings", args.embeddings), ("--ids", args.ids), ("--config", args.config),
              ("--data", args.data)]
    if args.data:
        from store_rec.data.schema import SCHEMA_FILE

        inputs.append(("--data", os.path.join(args.data, SCHEMA_FILE)))
    outputs = [("--out", args.out), ("--report", args.report), ("--save-model", args.save_model)]
    for flag, path in outputs:
        if path is not None:
            check_output_path(path, inputs=inputs, flag=flag, may_nest=("--data",))
    check_distinct_outputs(outputs)
    spec = load_tokenize_spec(args.config, method=args.method, num_sids=args.num_sids,
                              codebook_size=args.codebook_size, steps=args.steps, seed=args.seed)
    ids, emb_np, feature = load_item_embeddings(args.embeddings, ids_path=args.ids, positional_ids=args.positional_ids,
                                                expected_dim=args.dim, data_dir=args.data,
                                                item_feature=args.item_feature)
    n, d = emb_np.shape
    if args.codebook_size > n:
        raise UserError(f"--codebook-size {args.codebook_size} > number of items {n} in {args.embeddings}: "
                        "codebooks are initialised from the data")
    emb = torch.from_numpy(np.array(emb_np, dtype=np.float32))  # writable copy
    t0 = time.perf_counter()
    model = build_tokenizer(spec, d)
    try:
        history = train_tokenizer(model, emb, spec, progress=True)
    except FloatingPointError as e:  # fit_tokenizer: a non-finite loss stops training
        raise UserError(f"{args.embeddings}: tokenizer training diverged: {e}; nothing written (largest "
                        f"|value| in the table: {float(emb.abs().max()):.3g}; rescale the embeddings, e.g. "
                        "L2-normalise each row, or lower train.lr)") from None
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = model.encode(emb)
    enc_s = time.perf_counter() - t0
    rep = tokenizer_report(model, emb, codes, encode_seconds=enc_s)
    bad = [k for k in ("recon_mse", "recon_cosine") if not math.isfinite(float(rep.get(k, 0.0)))]
    if bad:  # e.g. embeddings so large that the reconstruction overflows: every code would be garbage
        raise UserError(f"{args.embeddings}: the trained tokenizer is not finite ({', '.join(f'{k}={rep[k]}' for k in bad)}); "
                        f"nothing written (largest |value| in the table: {float(emb.abs().max()):.3g}; rescale "
                        "the embeddings, e.g. L2-normalise each row)")
    if args.save_model:
        from store_rec.tokenizer.online import save_tokenizer

        save_tokenizer(args.save_model, model, args.method)
    write_sid_table(args.out, ids, codes.numpy(), method=args.method, codebook_size=args.codebook_size,
                    item_feature=feature, dedup=args.dedup)
    rep.update({"method": args.method, "item_feature": feature, "embedding_dim": d, "train_seconds": train_s,
                "config": spec.raw, "embeddings": str(args.embeddings),
                "history": {k: v for k, v in history.items() if k != "step"}})
    if args.report:
        atomic_write_json(args.report, rep)
    print(f"tokenize {args.method}: {n} items K={args.num_sids} C={args.codebook_size} "
          f"recon_mse={rep['recon_mse']:.4g} cos={rep['recon_cosine']:.3f} "
          f"util={min(rep['utilization']):.2f}-{max(rep['utilization']):.2f} "
          f"unique_tuples={rep['unique_tuple_rate']:.3f} max_collision={rep['largest_collision_group']} "
          f"train={train_s:.1f}s encode={n / max(enc_s, 1e-9):,.0f} items/s -> {args.out}")
    return 0
