"""``store-rec bench prepare``: ``data prepare table`` on a generated wide CSV -- peak RSS and rows/s.

A seeded CSV of ``--rows`` rows (files of ``--file-rows`` rows each, under ``--tmp``) with the shape of a
CTR log: ``click``, 3 dense columns (5 % missing), ``user`` (role user_key, ~rows/10 distinct), ``item``
(id, vocabulary, 200k distinct, Zipf), ``site`` (id, hashed into 1M buckets, ~rows/2 distinct),
``brand`` / ``color`` / ``device`` / ``hour`` (static), ``tags`` (multi-hot) and ``ts``. For each
``--sizes`` x ``--workers`` the command ``store-rec data prepare table`` runs as a child process; the
resident memory of its whole process tree (the parent plus worker processes, read from ``/proc``
every 0.1 s) gives ``peak_rss_mib`` (sum over the tree) and ``peak_proc_rss_mib`` (largest process).
``rows_per_s`` = rows / wall seconds of the whole command (both passes, writing, sanity figures).
``load_1min`` is the machine's 1-minute load average when the run started (on a shared machine, rows/s
move with it; the RSS does not). The generated files and outputs are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from store_rec.bench.common import BenchResult

SCHEMA = """\
name: bench
columns:
  click: {role: label}
  d1: {role: dense, transform: log1p}
  d2: {role: dense}
  d3: {role: dense, transform: log1p}
  user: {role: user_key}
  item: {role: id, min_count: 2}
  site: {role: id, hash_buckets: 1000000}
  brand: {role: static, group: item}
  color: {role: static, group: item}
  device: {role: static, group: context}
  hour: {role: static, group: context}
  tags: {role: static, group: item, multi_hot: "|"}
  ts: {role: timestamp}
split: {method: random, train_frac: 0.8, valid_frac: 0.1}
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="1000000,10000000", help="row counts, comma-separated")
    p.add_argument("--workers", default="1,2", help="worker process counts, comma-separated")
    p.add_argument("--file-rows", type=int, default=1_000_000, help="rows per generated CSV file")
    p.add_argument("--tmp", default=None, help="directory for the generated CSV (default: the system temp dir)")
    p.add_argument("--seed", type=int, default=0)


def generate(d: Path, rows: int, file_rows: int, seed: int) -> List[Path]:
    """Write ``rows`` rows as ``part-NNN.csv`` files of ``file_rows`` rows; returns the paths."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k, a in enumerate(range(0, rows, file_rows)):
        n = min(file_rows, rows - a)

        def pre(prefix: str, v: np.ndarray) -> pa.Array:
            return pc.binary_join_element_wise(prefix, pc.cast(pa.array(v), pa.string()), "")

        def dense(scale: float) -> pa.Array:
            x = rng.gamma(1.5, scale, n).round(3)
            return pa.array(x, mask=rng.random(n) < 0.05)

        t1, t2 = pre("t", rng.integers(0, 50, n)), pre("t", rng.integers(0, 50, n))
        tags = pc.if_else(pa.array(rng.random(n) < 0.3), pa.scalar(None, pa.string()),
                          pc.binary_join_element_wise(t1, t2, "|"))
        table = pa.table({
            "click": pa.array((rng.random(n) < 0.2).astype(np.int8)),
            "d1": dense(10.0), "d2": dense(1.0), "d3": dense(100.0),
            "user": pre("u", rng.integers(0, max(rows // 10, 1), n)),
            "item": pre("i", np.minimum(rng.zipf(1.3, n), 200_000)),
            "site": pre("s", rng.integers(0, max(rows // 2, 1), n)),
            "brand": pre("b", rng.integers(0, 1000, n)), "color": pre("c", rng.integers(0, 12, n)),
            "device": pre("d", rng.integers(0, 5, n)), "hour": pa.array(rng.integers(0, 24, n)),
            "tags": tags, "ts": pa.array(1_700_000_000 + a + np.arange(n)),
        })
        path = d / f"part-{k:03d}.csv"
        pacsv.write_csv(table, path)
        paths.append(path)
    return paths


def _tree_rss(pid: int) -> Tuple[int, int]:
    """(sum, max) resident bytes of ``pid`` and its descendants, from /proc."""
    todo, total, biggest = [pid], 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                rss = int(f.read().split()[1]) * page
            total += rss
            biggest = max(biggest, rss)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total, biggest


def measure(cmd: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0, 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            s, m = _tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], s), max(peak[1], m)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak[0] / 2**20, 1),
            "peak_proc_rss_mib": round(peak[1] / 2**20, 1), "output": out}


def run(args: argparse.Namespace) -> BenchResult:
    sizes = [int(s) for s in str(args.sizes).split(",")]
    workers = [int(w) for w in str(args.workers).split(",")]
    if args.quick:
        sizes, workers, args.file_rows = [10_000, 30_000], [1, 2], 10_000
    root = Path(tempfile.mkdtemp(prefix="store_rec_bench_prepare_", dir=args.tmp))
    records: List[Dict[str, Any]] = []
    try:
        generate(root / "csv", max(sizes), args.file_rows, args.seed)
        files = sorted((root / "csv").glob("part-*.csv"))
        (root / "schema.yaml").write_text(SCHEMA)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for n in sizes:
            k = -(-n // args.file_rows)
            src = root / f"src_{n}"
            src.mkdir()
            for f in files[:k]:
                os.symlink(f, src / f.name)
            mib = sum(f.stat().st_size for f in files[:k]) / 2**20
            for w in workers:
                if args.quick and w > k:
                    continue  # one file runs in-process whatever --workers says
                out = root / f"out_{n}_{w}"
                cmd = [sys.executable, "-m", "store_rec", "data", "prepare", "table", "--source", str(src),
                       "--schema", str(root / "schema.yaml"), "--out", str(out), "--workers", str(w)]
                load = os.getloadavg()[0]
                m = measure(cmd, env)
                rows = n if n % args.file_rows == 0 else k * args.file_rows
                records.append({"rows": rows, "files": k, "csv_mib": round(mib, 1), "workers": w,
                                "wall_s": m["wall_s"], "rows_per_s": round(rows / m["wall_s"]),
                                "peak_rss_mib": m["peak_rss_mib"], "peak_proc_rss_mib": m["peak_proc_rss_mib"],
                                "load_1min": round(load, 1)})
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary: Dict[str, Any] = {}
    for w in workers:
        rs = [r for r in records if r["workers"] == w]
        if len(rs) >= 2:
            summary[f"rss_ratio_largest_vs_smallest_w{w}"] = round(rs[-1]["peak_rss_mib"] / rs[0]["peak_rss_mib"], 2)
    return BenchResult(suite="prepare", records=records,
                       config={"sizes": sizes, "workers": workers, "file_rows": args.file_rows, "seed": args.seed,
                               "schema": SCHEMA, "cpu_count": os.cpu_count()},
                       columns=["rows", "files", "csv_mib", "workers", "wall_s", "rows_per_s", "peak_rss_mib",
                                "peak_proc_rss_mib", "load_1min"], summary=summary)
