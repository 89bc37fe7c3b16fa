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

from store_rec.tokenizer.flags import add_tokenize_flags


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="item embeddings -> semantic IDs (OPMQ / RQ-VAE / OPQ)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_tokenize_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from store_rec.tokenizer.make_sids import make_sid_table

    rep = make_sid_table(args.embeddings, args.out, method=args.method, num_sids=args.num_sids,
                         codebook_size=args.codebook_size, report=args.report, config=args.config, steps=args.steps,
                         seed=args.seed, dedup=args.dedup, item_feature=args.item_feature, ids=args.ids,
                         positional_ids=args.positional_ids, dim=args.dim, data=args.data, save_model=args.save_model)
    n, enc_s, train_s = rep["num_items"], rep["encode_seconds"], rep["train_seconds"]
    print(f"tokenize {args.method}: {n} items K={args.num_sids} C={args.codebook_size} "
          f"recon_mse={rep['recon_mse']:.4g} cos={rep['recon_cosine']:.3f} "
          f"util={min(rep['utilization']):.2f}-{max(rep['utilization']):.2f} "
          f"unique_tuples={rep['unique_tuple_rate']:.3f} max_collision={rep['largest_collision_group']} "
          f"untrained->OOV={rep['untrained_items']} "
          f"train={train_s:.1f}s encode={n / max(enc_s, 1e-9):,.0f} items/s -> {args.out}")
    return 0
