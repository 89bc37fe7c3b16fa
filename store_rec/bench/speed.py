"""``store-rec bench speed``: the training speed options side by side in one process.

Variants (``--variants``; each a real run of the training app, ``store_rec.train.trainer.run``, world
of one, same data, seed, steps and config): ``fp32`` (the default), ``bf16`` (``train.precision:
bf16``: autocast of the dense part), ``compile`` (``train.compile: true``), ``compile_bf16``. They run
interleaved ``--repeats`` times (fp32, bf16, compile, fp32, bf16, ... so machine load hits all alike);
per variant the median of the app's train ``samples_per_s`` (wall) is reported with
``speedup_vs_fp32`` (median / fp32's median), and the same by rank 0's process CPU time
(``samples_per_cpu_s``, ``cpu_speedup_vs_fp32``: train samples / CPU seconds of the training steps,
one thread: steadier than wall time when other jobs share the cores), the test AUC / LogLoss of the first repeat and ``auc_diff_vs_fp32`` (same
seed and data: the parity of the precision change), ``compiled`` (False when ``torch.compile`` fell
back to eager) and ``compile_s`` (the one-off compile of the first batch, outside the timed training).
Default model: ``configs/smoke.yaml`` (STORE: OPMQ-free raw IDs, MoBA 1/2), 1 thread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from store_rec.bench.common import BenchResult

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"
VARIANTS = {
    "fp32": [],
    "bf16": ["train.precision=bf16"],
    "compile": ["train.compile=true"],
    "compile_bf16": ["train.compile=true", "train.precision=bf16"],
}
COLUMNS = ("variant", "steps", "batch_size", "samples_per_s", "speedup_vs_fp32", "min_samples_per_s", "max_samples_per_s",
           "samples_per_cpu_s", "cpu_speedup_vs_fp32", "min_samples_per_cpu_s", "max_samples_per_cpu_s",
           "test_auc", "auc_diff_vs_fp32", "test_logloss", "compiled", "compile_s", "repeats")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", default="fp32,bf16,compile", help=f"comma list of {','.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per run (default 2; quick: 12 steps)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 2; quick 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (repeatable)")


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = [r["variant"] for r in records]
    import numpy as np

    x = np.arange(len(names))
    for k, (key, lab) in enumerate((("speedup_vs_fp32", "wall time"), ("cpu_speedup_vs_fp32", "process CPU time"))):
        vals = [r.get(key) or 0.0 for r in records]
        bars = axes[0].bar(x + (k - 0.5) * 0.4, vals, 0.4, label=lab)
        axes[0].bar_label(bars, labels=[f"{v:.2f}x" for v in vals], fontsize=7)
    axes[0].set_xticks(x, names)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_ylabel("train samples/s / fp32's (median)")
    axes[0].set_title("speed vs fp32, same process", fontsize=9)
    axes[0].legend(fontsize=7)
    bars = axes[1].bar(names, [r["auc_diff_vs_fp32"] for r in records], color=[f"C{i}" for i in range(len(records))])
    axes[1].bar_label(bars, labels=[f"{r['auc_diff_vs_fp32']:+.4f}" for r in records], fontsize=8)
    axes[1].axhline(0.0, color="k", lw=0.8)
    # a fixed +-0.01 AUC window (wider only if needed): a 0.002 difference must not fill the panel
    lim = max(0.01, 1.3 * max(abs(r["auc_diff_vs_fp32"] or 0.0) for r in records))
    axes[1].set_ylim(-lim, lim)
    axes[1].set_ylabel(f"test AUC - fp32's test AUC (axis +-{lim:.2g})")
    axes[1].set_title("AUC parity (same seed and data)", fontsize=9, pad=12)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.errors import UserError
    from store_rec.train.config import load_train_config
    from store_rec.train.trainer import run as train

    quick = bool(getattr(args, "quick", False))
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise UserError(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    repeats = args.repeats or (1 if quick else 2)
    torch.set_num_threads(args.threads)
    runs: Dict[str, List[Dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data"
        prepare_synthetic(data, rows=4000 if quick else 20000, items=200 if quick else 2000, users=100 if quick else 500,
                          seed=0, num_clusters=16)
        length = ["train.max_steps=12"] if quick else [f"train.epochs={args.epochs or 2}"]
        for r in range(repeats):
            for v in variants:
                ov = [f"data.dir={data}", "data.prepare_if_missing=null", f"data.batch_size={args.batch_size}",
                      "data.eval_batch_size=2048", f"output.dir={tmp / f'{v}-{r}'}", "output.tensorboard=false",
                      "output.progress_bar=false", "checkpoint.enabled=false", "train.eval_at_epoch_end=false",
                      "train.eval_splits=[test]", *length, *VARIANTS[v], *args.set]
                runs[v].append(train(load_train_config(CONFIG, ov)))
    records: List[Dict[str, Any]] = []
    base = statistics.median(s["samples_per_s"] for s in runs["fp32"]) if "fp32" in runs else None
    cpu = {v: [s["train_samples"] / s["train_cpu_s"] for s in ss] for v, ss in runs.items()}
    base_cpu = statistics.median(cpu["fp32"]) if "fp32" in cpu else None
    base_auc = runs["fp32"][0]["auc"] if "fp32" in runs else None
    for v, ss in runs.items():
        sps = [s["samples_per_s"] for s in ss]
        med = statistics.median(sps)
        records.append({
            "variant": v, "steps": ss[0]["steps"], "batch_size": args.batch_size, "samples_per_s": med,
            "speedup_vs_fp32": med / base if base else None, "min_samples_per_s": min(sps), "max_samples_per_s": max(sps),
            "samples_per_cpu_s": statistics.median(cpu[v]),
            "cpu_speedup_vs_fp32": statistics.median(cpu[v]) / base_cpu if base_cpu else None,
            "min_samples_per_cpu_s": min(cpu[v]), "max_samples_per_cpu_s": max(cpu[v]),
            "test_auc": ss[0]["auc"], "auc_diff_vs_fp32": ss[0]["auc"] - base_auc if base_auc is not None else None,
            "test_logloss": ss[0]["logloss"], "compiled": ss[0]["compiled"], "compile_s": ss[0]["compile_s"],
            "repeats": len(ss)})
    summary = {f"{r['variant']}_speedup_vs_fp32": r["speedup_vs_fp32"] for r in records if r["variant"] != "fp32"}
    summary.update({f"{r['variant']}_cpu_speedup_vs_fp32": r["cpu_speedup_vs_fp32"] for r in records if r["variant"] != "fp32"})
    summary.update({f"{r['variant']}_auc_diff_vs_fp32": r["auc_diff_vs_fp32"] for r in records if r["variant"] != "fp32"})
    config = {"variants": variants, "repeats": repeats, "batch_size": args.batch_size, "threads": args.threads,
              "length": length, "set": args.set, "config": str(CONFIG.name), "quick": quick,
              "timing": "the app's samples_per_s: train samples / train time (evals and the compile of the first batch excluded)"}
    return BenchResult(suite="speed", records=records, config=config, columns=COLUMNS, summary=summary, plot=plot)
