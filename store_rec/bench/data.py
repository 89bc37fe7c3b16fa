"""``store-rec bench data``: ``ParquetBatchLoader`` samples/s on the Avazu-shaped and synthetic schemas.

Schemas:

* ``avazu``: the prepared-Avazu shape -- label + 23 single-valued int64 sparse features (C1,
  banner_pos, site_*/app_* x3, device_* x5, C14..C21, hour-of-day, weekday), no dense. Built as a seeded
  random parquet dataset in a temp dir with realistic vocab sizes, or read from ``--data DIR`` (a
  directory written by ``store-rec data prepare avazu``).
* ``synthetic``: ``store_rec.data.synthetic`` (13 sparse features incl. the multi-hot
  ``interest_tags``, 2 dense).

For each schema and mode (``sequential``: file order; ``shuffled``: row-group permutation + windowed
shuffle; ``prefetch``: shuffled with a background thread 2 batches ahead) a full epoch of the train
split is read, ``--repeats`` times, modes interleaved, and the median is reported as ``samples_per_s``
(wall) and ``samples_per_cpu_s`` (process CPU time, steadier on a shared machine). One core:
``torch.set_num_threads(--threads)`` and pyarrow's CPU/IO pools set to ``--threads`` too.

Stages: ``loader`` (above) and ``train_step``: the training app itself (``store_rec.train.trainer.run``,
world of one: fused sparse optimizer, ``TrainPipelineSparseDist``, STORE on raw IDs, MoBA 1/2) reading
the same train split with its own (shuffled) loader for ``--train-steps`` steps; its ``samples_per_s``
is the app's train-time figure, so loader / train_step is how many times faster the data arrives
than the model consumes it (the ``loader_headroom`` summary).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from store_rec.bench.common import BenchResult

TARGET_SAMPLES_PER_S = 200_000

# Prepared-Avazu feature names and vocab sizes (+ weekday below): 23 single-valued sparse features.
AVAZU_SPARSE = {
    "C1": 8, "banner_pos": 8, "site_id": 4_738, "site_domain": 7_746, "site_category": 27,
    "app_id": 8_553, "app_domain": 560, "app_category": 37, "device_id": 2_686_409,
    "device_ip": 6_729_487, "device_model": 8_252, "device_type": 6, "device_conn_type": 5,
    "C14": 2_627, "C15": 9, "C16": 10, "C17": 436, "C18": 5, "C19": 69, "C20": 173, "C21": 61,
    "hour": 25,
}
AVAZU_IDS = ("site_id", "site_domain", "app_id", "device_id", "device_ip", "device_model", "C14")
MODES = {"sequential": dict(shuffle=False), "shuffled": dict(shuffle=True), "prefetch": dict(shuffle=True, prefetch=2)}

COLUMNS = ("stage", "schema", "mode", "batch_size", "rows", "sparse_features", "threads", "samples_per_s",
           "samples_per_cpu_s", "min_s", "max_s", "vs_target")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=str, default=None,
                        help="prepared avazu dataset dir to read instead of the Avazu-shaped synthetic parquet")
    parser.add_argument("--rows", type=int, default=None, help="rows per generated dataset (default 1M, quick 40k)")
    parser.add_argument("--batch-size", type=int, default=4096, help="batch size (default 4096)")
    parser.add_argument("--threads", type=int, default=1, help="torch and pyarrow threads (default 1: one core)")
    parser.add_argument("--train-steps", type=int, default=None, help="train_step stage: app steps (default 60, quick 5)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs timed per mode (default 5, quick 2)")
    parser.add_argument("--schemas", type=str, default="avazu,synthetic", help="comma-separated: avazu,synthetic")
    parser.add_argument("--modes", type=str, default=",".join(MODES), help=f"comma-separated of {list(MODES)}")


def make_avazu_shaped(out: Path, rows: int, seed: int = 0, row_group_size: int = 65_536) -> Path:
    """Write an Avazu-shaped prepared dataset (random ids, same columns and types) into ``out``."""
    import pyarrow as pa

    from store_rec.data.schema import DatasetSchema, SparseFeature
    from store_rec.data.writer import DatasetWriter

    arrow = pa.schema([("click", pa.float32())] + [(n, pa.int64()) for n in AVAZU_SPARSE] + [("weekday", pa.int64())])
    vocab = {**AVAZU_SPARSE, "weekday": 8}
    with DatasetWriter(out, overwrite=True, row_group_size=row_group_size) as w:
        split = w.split("train", arrow, label="click")
        rng = np.random.default_rng(seed)
        for start in range(0, rows, 262_144):
            n = min(262_144, rows - start)
            cols: Dict[str, Any] = {"click": (rng.random(n) < 0.17).astype(np.float32)}
            for name, v in vocab.items():
                # Zipf-ish ids like the real columns (most mass on few values); id features get half
                # their rows uniform over the vocab, like device_ip's long tail (harder to compress)
                ids = np.minimum(rng.zipf(1.3, n), v - 1)
                if name in AVAZU_IDS:
                    ids = np.where(rng.random(n) < 0.5, rng.integers(1, v, n), ids)
                cols[name] = ids.astype(np.int64)
            split.write(pa.table(cols, schema=arrow))
        sparse = [SparseFeature(name=n, role="id" if n in AVAZU_IDS else "static", vocab_size=v,
                                group=None if n in AVAZU_IDS else ("context" if n in ("hour", "weekday") else "ad"))
                  for n, v in vocab.items()]
        w.commit(DatasetSchema(dataset="avazu-shaped", label="click", sparse=sparse, source="store_rec.bench.data"))
    return out


def _epoch(loader) -> int:
    n = 0
    for b in loader:
        n += b.labels.shape[0]
    return n


def measure_loader(make_loader: Callable[[], Any], repeats: int) -> List[Dict[str, float]]:
    """Per repeat: (rows, wall seconds, CPU seconds) of one full epoch of a fresh loader."""
    out = []
    for _ in range(repeats):
        loader = make_loader()
        t0, c0 = time.perf_counter(), time.process_time()
        n = _epoch(loader)
        out.append({"rows": n, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0})
    return out


def measure_train_step(data_dir: Path, batch_size: int, steps: int) -> Dict[str, float]:
    """The training app on ``data_dir`` for ``steps`` steps (world of one): rows, train seconds."""
    from store_rec.config import from_dict
    from store_rec.train.trainer import run
    from store_rec.train.config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="store_rec_bench_step_") as out:
        cfg = from_dict(TrainConfig, {
            "data": {"dir": str(data_dir), "batch_size": batch_size, "eval_batch_size": 65536},
            "model": {"name": "store", "tokenizer": "none", "embedding_dim": 16,
                      "attention": {"type": "moba", "sparsity": 0.5, "block_size": 4, "num_layers": 2, "num_heads": 2}},
            "train": {"max_steps": steps, "epochs": 1000, "eval_at_epoch_end": False, "eval_splits": ["valid"]},
            "checkpoint": {"enabled": False}, "output": {"dir": out, "tensorboard": False, "progress_bar": False},
        }, path="bench")
        s = run(cfg)
    return {"rows": s["train_samples"], "wall_s": s["train_time_s"], "cpu_s": float("nan")}


STAGES: Dict[str, Callable[[Callable[[], Any], int], List[Dict[str, float]]]] = {
    "loader": measure_loader,
}


def plot(records: List[Dict[str, Any]], path: Path) -> None:
    """:func:`figure` saved as PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(records)
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def figure(records: List[Dict[str, Any]]) -> Any:
    """One bar per (stage, mode) per schema on a log axis (loader ~1e6/s and train step ~1e4/s differ by
    decades), each bar labelled with its value, the 200k/s target dashed, the loader headroom in the title."""
    import matplotlib.pyplot as plt

    schemas = sorted({r["schema"] for r in records})
    series = sorted({(r["stage"], r["mode"]) for r in records}, key=lambda sm: (sm[0] != "loader", list(MODES).index(sm[1]) if sm[1] in MODES else len(MODES)))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    width = 0.8 / max(len(series), 1)
    for k, (stage, mode) in enumerate(series):
        xs, ys = [], []
        for j, s in enumerate(schemas):
            r = next((r for r in records if r["schema"] == s and r["mode"] == mode and r["stage"] == stage), None)
            if r is not None:
                xs.append(j + k * width)
                ys.append(r["samples_per_s"])
        bars = ax.bar(xs, ys, width, label=f"{stage} ({mode})" if stage == "loader" else f"{stage}: training app ({mode} loader)",
                      hatch="//" if stage != "loader" else None, edgecolor="k", lw=0.5)
        ax.bar_label(bars, labels=[_si(y) for y in ys], fontsize=7, padding=2)
    ax.axhline(TARGET_SAMPLES_PER_S, color="k", ls="--", lw=1, label="target 200k samples/s")
    ax.set_yscale("log")
    lo = min(r["samples_per_s"] for r in records)
    hi = max(r["samples_per_s"] for r in records)
    ax.set_ylim(10 ** np.floor(np.log10(min(lo, TARGET_SAMPLES_PER_S)) - 0.3), 10 ** np.ceil(np.log10(hi) + 0.4))
    ax.set_xticks(np.arange(len(schemas)) + width * (len(series) - 1) / 2)
    ax.set_xticklabels(schemas)
    ax.set_ylabel("samples / s (median epoch, log scale)")
    r0 = records[0]
    title = f"ParquetBatchLoader vs training step, batch {r0['batch_size']}, {r0['threads']} thread(s)"
    heads = []
    for s in schemas:
        load = next((r for r in records if r["stage"] == "loader" and r["schema"] == s and r["mode"] == "shuffled"), None)
        step = next((r for r in records if r["stage"] == "train_step" and r["schema"] == s), None)
        if load and step:
            heads.append(f"{s} {load['samples_per_s'] / step['samples_per_s']:.0f}x")
    if heads:
        title += "\nloader (shuffled) / train step: " + ", ".join(heads)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def _si(v: float) -> str:
    """1234567 -> '1.23M', 14114 -> '14.1k'."""
    for div, suf in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suf}"
    return f"{v:.3g}"


def run(args: argparse.Namespace) -> BenchResult:
    import pyarrow as pa
    import torch

    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.data.synthetic import prepare_synthetic

    threads = int(args.threads)
    torch.set_num_threads(threads)
    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    rows = args.rows or (40_000 if args.quick else 1_000_000)
    repeats = args.repeats or (2 if args.quick else 5)
    schemas = [s for s in args.schemas.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            raise ValueError(f"--modes: unknown mode {m!r}; known: {list(MODES)}")
    records: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="store_rec_bench_data_") as tmp:
        dirs: Dict[str, Path] = {}
        for s in schemas:
            if s == "avazu":
                dirs[s] = Path(args.data) if args.data else make_avazu_shaped(Path(tmp) / "avazu", rows)
            elif s == "synthetic":
                dirs[s] = Path(tmp) / "synthetic"
                prepare_synthetic(dirs[s], rows=round(rows / 0.8), items=max(1_000, rows // 10),
                                  users=max(500, rows // 40))
            else:
                raise ValueError(f"--schemas: unknown schema {s!r}; known: avazu, synthetic")
        for stage, measure in STAGES.items():
            runs: Dict[tuple, List[Dict[str, float]]] = {(s, m): [] for s in schemas for m in modes}
            for _ in range(repeats):  # interleave schemas and modes so machine load hits all alike
                for s in schemas:
                    for m in modes:
                        def make(s=s, m=m):
                            return ParquetBatchLoader(dirs[s], "train", args.batch_size, seed=0, **MODES[m])
                        runs[(s, m)] += measure(make, 1)
            for (s, m), rs in runs.items():
                probe = ParquetBatchLoader(dirs[s], "train", args.batch_size)
                walls = [r["wall_s"] for r in rs]
                n = rs[0]["rows"]
                sps = n / statistics.median(walls)
                records.append({
                    "stage": stage, "schema": s, "mode": m, "batch_size": args.batch_size, "rows": n,
                    "sparse_features": len(probe.keys), "threads": threads, "samples_per_s": sps,
                    "samples_per_cpu_s": n / statistics.median([r["cpu_s"] for r in rs]),
                    "min_s": min(walls), "max_s": max(walls), "vs_target": sps / TARGET_SAMPLES_PER_S,
                })
        steps = args.train_steps or (5 if args.quick else 60)
        for s in schemas:  # the app's own loader shuffles: compare with the loader's "shuffled" mode
            t = measure_train_step(dirs[s], args.batch_size, steps)
            sps = t["rows"] / t["wall_s"]
            records.append({
                "stage": "train_step", "schema": s, "mode": "shuffled", "batch_size": args.batch_size, "rows": t["rows"],
                "sparse_features": len(ParquetBatchLoader(dirs[s], "train", args.batch_size).keys), "threads": threads,
                "samples_per_s": sps, "samples_per_cpu_s": float("nan"), "min_s": t["wall_s"], "max_s": t["wall_s"],
                "vs_target": sps / TARGET_SAMPLES_PER_S,
            })
    summary: Dict[str, Any] = {f"{r['stage']}_{r['schema']}_{r['mode']}_samples_per_s": round(r["samples_per_s"])
                               for r in records}
    for s in schemas:
        load = next((r for r in records if r["stage"] == "loader" and r["schema"] == s and r["mode"] == "shuffled"), None)
        step = next((r for r in records if r["stage"] == "train_step" and r["schema"] == s), None)
        if load and step:
            summary[f"loader_headroom_{s}"] = load["samples_per_s"] / step["samples_per_s"]
    return BenchResult(suite="data", records=records, columns=COLUMNS, summary=summary, plot=plot,
                       config={"rows": rows, "repeats": repeats, "batch_size": args.batch_size,
                               "threads": threads, "schemas": schemas, "modes": modes,
                               "data": args.data, "quick": bool(args.quick), "train_steps": steps})
