"""``store-rec tokenize``: train a semantic tokenizer on item embeddings, write the SID table + report.

Example::

    store-rec tokenize --embeddings EMB.parquet --method opmq --num-sids 3 --codebook-size 256 \\
        --out SIDS.parquet --report REPORT.json --dedup

``--config YAML`` may hold ``model:`` (OPMQConfig fields: hidden_dims, latent_dim, codebook_update,
commitment_weight, orth_weight, dead_code_steps, kmeans_init, shared_codebook, ...) and ``train:``
(TrainConfig: steps, batch_size, lr, seed) sections; command-line flags win. OPQ uses neither
section except ``opq: {outer_iters, kmeans_iters}``.

A codebook larger than the number of items is an error (codebooks are initialised from the data).
Items missing from the SID table get the OOV SID = C when the loader attaches it.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("tokenize", help="item embeddings -> semantic IDs (OPMQ / RQ-VAE / OPQ)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", required=True, help="EMB.parquet (item int64, embedding list<float32>[d])")
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
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import numpy as np
    import time

    import torch
    import yaml

    from store_rec.config import ConfigError, from_dict
    from store_rec.errors import UserError
    from store_rec.tokenizer import OPMQ, OPQ, RQVAE, OPMQConfig, TrainConfig, fit_tokenizer
    from store_rec.tokenizer.embeddings import load_embeddings, read_metadata, write_json_atomic
    from store_rec.tokenizer.report import tokenizer_report
    from store_rec.tokenizer.sid_table import write_sid_table

    if args.num_sids <= 0 or args.codebook_size <= 0:
        raise ConfigError(f"--num-sids/--codebook-size: must be > 0, got {args.num_sids}/{args.codebook_size}")
    raw = {}
    if args.config:
        with open(args.config) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict) or set(raw) - {"model", "train", "opq"}:
            raise ConfigError(f"{args.config}: expected a mapping with keys model/train/opq, got {list(raw)}")
    mcfg = dict(raw.get("model") or {}, num_sids=args.num_sids, codebook_size=args.codebook_size)
    tcfg = dict(raw.get("train") or {})
    if args.steps is not None:
        tcfg["steps"] = args.steps
    if args.seed is not None:
        tcfg["seed"] = args.seed
    model_cfg = from_dict(OPMQConfig, mcfg, path="model")
    train_cfg = from_dict(TrainConfig, tcfg, path="train")
    ids, emb_np = load_embeddings(args.embeddings)
    n, d = emb_np.shape
    if args.codebook_size > n:
        raise UserError(f"--codebook-size {args.codebook_size} > number of items {n} in {args.embeddings}: "
                        "codebooks are initialised from the data")
    emb = torch.from_numpy(np.array(emb_np, dtype=np.float32))  # writable copy
    t0 = time.perf_counter()
    if args.method == "opq":
        model = OPQ(d, args.num_sids, args.codebook_size, seed=train_cfg.seed)
        history = model.fit(emb, **(raw.get("opq") or {}))
    else:
        cls = OPMQ if args.method == "opmq" else RQVAE
        model = cls(d, config=model_cfg, seed=train_cfg.seed)
        history = fit_tokenizer(model, emb, train_cfg, progress=True)
    train_s = time.perf_counter() - t0
    codes = model.encode(emb)
    meta = read_metadata(args.embeddings) if str(args.embeddings).endswith(".parquet") else {}
    feature = args.item_feature or meta.get("item_feature", "item")
    write_sid_table(args.out, ids, codes.numpy(), method=args.method, codebook_size=args.codebook_size,
                    item_feature=feature, dedup=args.dedup)
    rep = tokenizer_report(model, emb, codes)
    rep.update({"method": args.method, "item_feature": feature, "embedding_dim": d, "train_seconds": train_s,
                "config": {"model": mcfg, "train": tcfg}, "embeddings": str(args.embeddings),
                "history": {k: v for k, v in history.items() if k != "step"}})
    if args.report:
        write_json_atomic(args.report, rep)
    print(f"tokenize {args.method}: {n} items K={args.num_sids} C={args.codebook_size} "
          f"recon_mse={rep['recon_mse']:.4g} cos={rep['recon_cosine']:.3f} "
          f"util={min(rep['utilization']):.2f}-{max(rep['utilization']):.2f} "
          f"unique_tuples={rep['unique_tuple_rate']:.3f} max_collision={rep['largest_collision_group']} "
          f"train={train_s:.1f}s -> {args.out}")
    return 0
