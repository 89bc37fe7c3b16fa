"""Tokenizer benchmark: encode items/s at d=64, training time, and quality on planted-cluster data.

Records (one per method x KxC setting), all on ``--dim`` (64) synthetic embeddings with 64 planted
gaussian clusters:

* ``train_items`` / ``train_steps`` / ``train_seconds``: OPMQ / RQ-VAE: ``--epochs`` passes of minibatch
  Adam (``--batch-size``) over ``train_items`` (default 1M) items, k-means init included; OPQ: the
  Procrustes / k-means alternation on up to 200k of them.
* ``encode_items`` / ``encode_items_per_s``: ``model.encode`` on ``encode_items`` (default 1M) items with
  its default memory-budgeted batching, median of ``--repeats`` timed runs after one warm-up.
  ``encode_peak_mib``: the largest batch working set (``encode_batch_size * encode_bytes_per_row``).
* ``report_encode_seconds``: the time ``tokenizer_report`` measured for its own encode of the train items
  (the report times encoding itself; it is only ``None`` when codes are handed in untimed).
* quality on the train items: ``recon_mse`` (vs ``data_variance``), mean ``utilization``,
  ``unique_tuple_rate``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List

from store_rec.bench.common import BenchResult, time_fn

COLUMNS = ["method", "K", "C", "train_items", "train_steps", "train_seconds", "encode_items",
           "encode_items_per_s", "encode_batch", "encode_peak_mib", "report_encode_seconds", "recon_mse",
           "data_variance", "utilization", "unique_tuple_rate"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--train-items", type=int, default=None, help="default 1M (quick 20k)")
    parser.add_argument("--encode-items", type=int, default=None, help="default 1M (quick 50k)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=None, help="encode timing repeats (default 5, quick 2)")
    parser.add_argument("--settings", default="3x16,8x64", help="comma list of KxC")
    parser.add_argument("--methods", default="opmq,rqvae,opq")
    parser.add_argument("--hidden-dims", default="128",
                        help="encoder/expert hidden widths, comma list ('' = linear); default = OPMQConfig's [128]")
    parser.add_argument("--latent-dim", type=int, default=32, help="default = OPMQConfig's 32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's own, i.e. all cores); 1 = one core")


def clustered_embeddings(n: int, d: int, clusters: int = 64, noise: float = 0.3, seed: int = 0):
    """``Tensor[n, d]``: ``clusters`` standard-normal centres plus ``noise`` gaussian noise (seeded)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    cent = torch.randn(clusters, d, generator=g)
    lab = torch.randint(clusters, (n,), generator=g)
    return cent[lab] + noise * torch.randn(n, d, generator=g)


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    """Encode items/s and training seconds per method, one bar group per KxC setting."""
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(f"{r['K']}x{r['C']}" for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    at = {(f"{r['K']}x{r['C']}", r["method"]): r for r in records}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(methods)
    for ax, key, label in ((axes[0], "encode_items_per_s", "encode items/s"), (axes[1], "train_seconds", "training seconds")):
        for i, m in enumerate(methods):
            xs = [j + i * width for j in range(len(settings))]
            ax.bar(xs, [at[(s, m)][key] if (s, m) in at else 0 for s in settings], width, label=m)
        ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(settings))], [f"K x C = {s}" for s in settings])
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[0].set_title(f"encode {records[0]['encode_items']} items")
    axes[1].set_title(f"train on {records[0]['train_items']} items")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from store_rec.tokenizer import OPMQ, OPQ, RQVAE, TrainConfig, fit_tokenizer
    from store_rec.tokenizer.report import tokenizer_report

    quick = bool(getattr(args, "quick", False))
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    n_train = args.train_items or (20000 if quick else 1_000_000)
    n_enc = args.encode_items or (50000 if quick else 1_000_000)
    repeats = args.repeats or (2 if quick else 5)
    hidden = [int(v) for v in args.hidden_dims.split(",") if v]
    x = clustered_embeddings(max(n_train, n_enc), args.dim)
    records = []
    for setting in args.settings.split(","):
        k, c = (int(v) for v in setting.lower().split("x"))
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            if method == "opq":
                m = OPQ(args.dim, k, c)
                m.fit(x[:n_train], outer_iters=5 if quick else 20)
                steps = None
            else:
                m = (OPMQ if method == "opmq" else RQVAE)(args.dim, k, c, hidden_dims=hidden,
                                                          latent_dim=args.latent_dim)
                steps = args.epochs * -(-n_train // args.batch_size)
                fit_tokenizer(m, x[:n_train], TrainConfig(steps=steps, batch_size=args.batch_size))
            train_s = time.perf_counter() - t0
            m.eval()
            xe = x[:n_enc]
            t = time_fn(lambda: m.encode(xe), repeats=repeats, warmup=1)
            rep = tokenizer_report(m, x[:n_train])
            bs = m.encode_batch_size()
            records.append({"method": method, "K": k, "C": c, "train_items": n_train, "train_steps": steps,
                            "train_seconds": round(train_s, 2), "encode_items": n_enc,
                            "encode_items_per_s": round(n_enc / t["median_s"]), "encode_batch": bs,
                            "encode_peak_mib": round(bs * m.encode_bytes_per_row() / 2 ** 20, 1),
                            "report_encode_seconds": round(rep["encode_seconds"], 3),
                            "recon_mse": round(rep["recon_mse"], 5), "data_variance": round(rep["data_variance"], 4),
                            "utilization": round(sum(rep["utilization"]) / k, 3),
                            "unique_tuple_rate": round(rep["unique_tuple_rate"], 4)})
    return BenchResult(suite="tokenizer", records=records, columns=COLUMNS,
                       config={"dim": args.dim, "train_items": n_train, "encode_items": n_enc, "epochs": args.epochs,
                               "batch_size": args.batch_size, "repeats": repeats, "quick": quick,
                               "threads": torch.get_num_threads(), "hidden_dims": hidden,
                               "latent_dim": args.latent_dim, "data": "64 planted gaussian clusters, noise 0.3"},
                       plot=plot)
