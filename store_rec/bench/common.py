"""Shared benchmark plumbing: machine info, timing, and writing JSON + markdown table + PNG plot.

Every ``store-rec bench <suite>`` produces ``OUT.json`` (``{"suite", "machine", "config", "records"}``),
``OUT.md`` (a markdown table of the records) and, when the suite defines a plot, ``OUT.png``.
Files are written to a temp name and renamed, so a crashed benchmark leaves no partial results.

The table and plot are views of the JSON: ``store-rec bench replot OUT.json`` (:func:`replot`) redraws
``OUT.md`` and ``OUT.png`` from a committed JSON without re-running the benchmark. A suite module
exposes ``COLUMNS`` and ``plot(records, path)``; it may expose ``derive(records) -> records`` to add
columns computed from stored ones (e.g. GFLOPs from an older JSON's TFLOPs), applied on both paths.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from store_rec.errors import UserError
from store_rec.fileio import atomic_path, atomic_write_json, atomic_write_text


def machine_info() -> Dict[str, Any]:
    """Cores, library versions and device, recorded in every benchmark JSON."""
    import torch

    info: Dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    try:
        import torchrec

        info["torchrec"] = torchrec.__version__
    except Exception:  # noqa: BLE001 - torchrec is optional for some suites
        info["torchrec"] = None
    try:
        import fbgemm_gpu  # noqa: F401
        from importlib.metadata import version

        for dist in ("fbgemm-gpu-cpu", "fbgemm-gpu"):
            try:
                info["fbgemm_gpu"] = f"{dist}=={version(dist)}"
                break
            except Exception:  # noqa: BLE001
                continue
    except Exception:  # noqa: BLE001
        info["fbgemm_gpu"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, sync: bool = False) -> Dict[str, float]:
    """Median / min / max wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    import torch

    def _sync():
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


@dataclass
class BenchResult:
    """What a suite returns: records (list of flat dicts) plus how to show them."""

    suite: str
    records: List[Dict[str, Any]]
    config: Dict[str, Any] = field(default_factory=dict)
    columns: Optional[Sequence[str]] = None  # table columns (default: keys of the first record)
    summary: Dict[str, Any] = field(default_factory=dict)  # e.g. fitted exponents, headline ratios
    plot: Optional[Callable[[List[Dict[str, Any]], Path], None]] = None  # draws a PNG at the path
    derive: Optional[Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]] = None  # display-only columns


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def markdown_table(records: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None) -> str:
    if not records:
        return "(no records)\n"
    cols = list(columns or records[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_result(result: BenchResult, out_json: os.PathLike) -> Dict[str, Path]:
    """Write OUT.json, OUT.md and (if the suite plots) OUT.png; returns the paths written."""
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "suite": result.suite,
        "machine": machine_info(),
        "config": result.config,
        "summary": result.summary,
        "records": result.records,
    }
    atomic_write_json(out, payload, default=float)
    return {"json": out, **write_views(payload, out, result.columns, result.plot, result.derive)}


def write_views(payload: Dict[str, Any], out_json: os.PathLike, columns: Optional[Sequence[str]] = None,
                plot: Optional[Callable[[List[Dict[str, Any]], Path], None]] = None,
                derive: Optional[Callable[[List[Dict[str, Any]]], List[Dict[str, Any]]]] = None) -> Dict[str, Path]:
    """OUT.md (summary + table) and, with ``plot``, OUT.png from a benchmark payload (the JSON's content)."""
    out = Path(out_json)
    records = [dict(r) for r in payload["records"]]
    if derive is not None:
        records = derive(records)
    summary = payload.get("summary") or {}
    md = out.with_suffix(".md")
    head = f"# bench {payload['suite']}\n\n"
    if summary:
        head += "".join(f"- {k}: {_fmt(v)}\n" for k, v in summary.items()) + "\n"
    atomic_write_text(md, head + markdown_table(records, columns))
    paths = {"md": md}
    if plot is not None and records:
        import matplotlib

        matplotlib.use("Agg")
        png = out.with_suffix(".png")
        with atomic_path(png) as tmp:  # the plot functions save with format="png" (tmp has no .png suffix)
            plot(records, tmp)
        paths["png"] = png
    return paths


def replot(out_json: os.PathLike, module: Any) -> Dict[str, Path]:
    """Redraw OUT.md and OUT.png of an existing benchmark JSON with ``module``'s current table and plot
    (``COLUMNS``, ``plot``, optional ``derive``); the JSON itself is only read."""
    out = Path(out_json)
    payload = json.loads(out.read_text())
    for key in ("suite", "records"):
        if key not in payload:
            raise UserError(f"{out}: not a store-rec bench JSON (no {key!r} key)")
    return write_views(payload, out, getattr(module, "COLUMNS", None), getattr(module, "plot", None),
                       getattr(module, "derive", None))
