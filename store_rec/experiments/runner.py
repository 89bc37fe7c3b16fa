"""Build what the experiments need (prepared data, SASRec embeddings, SID tables), then run them.

Artifacts live under ``OUT/data/<dataset>/`` and are built once, in this process, with the same
commands users run (``store-rec data prepare`` / ``pretrain`` / ``tokenize``); a file that exists is
reused. Runs live under ``OUT/runs/<experiment>/<dataset>/<variant>[/<x>]/seed<s>/`` and are
launched as ``python -m store_rec.train`` subprocesses (one thread each, ``jobs`` at a time). A run
whose ``summary.json`` exists and whose ``run.json`` holds the same overrides is not run again, so a
re-run after editing one experiment only recomputes what changed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from store_rec.errors import UserError
from store_rec.experiments.spec import DatasetSpec, ExperimentSpec, PaperSpec, SidShape

logger = logging.getLogger(__name__)


@dataclass
class Run:
    experiment: str
    dataset: str
    variant: str
    seed: int
    x: Optional[Any]
    overrides: List[str]
    dir: Path
    sids: Optional[str]  # method actually used (None: raw IDs)
    notes: List[str] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"


def _x_dir(x: Any) -> str:
    return "x=" + str(x).replace("/", "_")


class Artifacts:
    """Prepared datasets, embeddings and SID tables under ``root`` (built on demand, cached)."""

    def __init__(self, spec: PaperSpec, root: Path, tiny: bool) -> None:
        self.spec, self.root, self.tiny = spec, root, tiny

    def data_dir(self, name: str) -> Path:
        d = self.root / name
        if (d / "schema.json").exists():
            return d
        ds = self.spec.datasets[name]
        p = ds.prepare
        sets = {**p.set, **(ds.tiny if self.tiny else {})}
        argv = ["data", "prepare", p.dataset, "--out", str(d)]
        if p.source:
            argv += ["--source", p.source]
        for k, v in sets.items():
            argv += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
        self._cli(argv, f"prepare {name}")
        return d

    def embeddings(self, name: str) -> Path:
        ds = self.spec.datasets[name]
        out = self.root / name / "emb.parquet"
        if out.exists():
            return out
        pt = ds.pretrain
        epochs = 1 if self.tiny else pt.epochs
        self._cli(["pretrain", "--data", str(self.data_dir(name)), "--out", str(out), "--epochs", str(epochs),
                   "--dim", str(pt.dim), "--max-len", str(pt.max_len)], f"pretrain {name}")
        return out

    def sid_table(self, name: str, method: str, shape: SidShape) -> Path:
        out = self.root / name / f"sids_{method}_K{shape.num_sids}_C{shape.codebook_size}.parquet"
        if out.exists():
            return out
        argv = ["tokenize", "--embeddings", str(self.embeddings(name)), "--method", method, "--num-sids", str(shape.num_sids),
                "--codebook-size", str(shape.codebook_size), "--out", str(out), "--report", str(out.with_suffix(".json"))]
        steps = 50 if self.tiny else shape.steps
        if steps and method != "opq":
            argv += ["--steps", str(steps)]
        self._cli(argv, f"tokenize {name} {method} K={shape.num_sids} C={shape.codebook_size}")
        return out

    @staticmethod
    def _cli(argv: List[str], what: str) -> None:
        from store_rec.cli import main

        logger.info("experiments: %s: store-rec %s", what, " ".join(argv))
        t0 = time.perf_counter()
        if main(argv) != 0:
            raise UserError(f"experiments: {what} failed (store-rec {' '.join(argv)})")
        logger.info("experiments: %s done in %.1f s", what, time.perf_counter() - t0)


def plan_runs(spec: PaperSpec, out: Path, only: Optional[List[str]] = None, tiny: bool = False) -> List[Run]:
    """Every run of the selected experiments (artifacts are built as their paths are needed)."""
    arts = Artifacts(spec, out / "data", tiny)
    runs: List[Run] = []
    names = only or list(spec.experiments)
    unknown = [n for n in names if n not in spec.experiments]
    if unknown:
        raise UserError(f"--only: unknown experiment(s) {unknown}; known: {list(spec.experiments)}")
    for en in names:
        e = spec.experiments[en]
        seeds = spec.tiny.seeds if tiny else e.seeds
        xs: List[Any] = [None]
        if e.sweep is not None:
            xs = list(e.sweep.values)[: spec.tiny.max_values] if tiny else list(e.sweep.values)
        for dn in e.datasets:
            ds = spec.datasets[dn]
            for vn, v in e.variants.items():
                for x in xs:
                    base = _data_overrides(arts, dn, ds, e, v.sids, x)
                    for seed in seeds:
                        d = out / "runs" / en / dn / vn
                        if x is not None:
                            d = d / _x_dir(x)
                        d = d / f"seed{seed}"
                        ov = [*ds.set, *base["overrides"], *e.set, *v.set]
                        if e.sweep is not None and e.sweep.key is not None:
                            ov.append(f"{e.sweep.key}={json.dumps(x)}")
                        ov += [f"train.seed={seed}", f"output.dir={d}", "checkpoint.enabled=false",
                               "output.progress_bar=false", "output.tensorboard=false"]
                        if tiny:
                            ov += spec.tiny.set
                        runs.append(Run(en, dn, vn, seed, x, ov, d, base["sids"], base["notes"]))
    return runs


def _data_overrides(arts: Artifacts, dn: str, ds: DatasetSpec, e: ExperimentSpec, method: Optional[str], x: Any) -> Dict[str, Any]:
    ov = [f"data.dir={arts.data_dir(dn)}", "data.prepare_if_missing=null"]
    notes: List[str] = []
    if method is not None and ds.pretrain is None:
        notes.append(f"{dn} has no user sequences to pre-train item embeddings: raw IDs instead of {method} SIDs")
        method = None
    if method is None:
        ov += ["model.tokenizer=none", "data.sid_table=null"]
        return {"overrides": ov, "sids": None, "notes": notes}
    shape = ds.sids
    if e.sweep is not None and e.sweep.sids_key is not None:
        shape = replace(shape, **{e.sweep.sids_key: int(x)})
    table = arts.sid_table(dn, method, shape)
    ov += [f"data.sid_table={table}", f"model.tokenizer={method}", "model.sid_source=batch", f"model.item_feature={ds.item_feature}"]
    return {"overrides": ov, "sids": method, "notes": notes}


def execute(runs: List[Run], base_config: str, jobs: int, force: bool = False) -> Dict[str, int]:
    """Run what is not done yet, ``jobs`` at a time; returns counts of done / ran / failed."""
    todo = []
    for r in runs:
        meta = r.dir / "run.json"
        if not force and r.summary_path.exists() and meta.exists() and json.loads(meta.read_text()).get("overrides") == r.overrides:
            continue
        todo.append(r)
    logger.info("experiments: %d runs, %d to do (%d done)", len(runs), len(todo), len(runs) - len(todo))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed = []

    def one(r: Run) -> None:
        r.dir.mkdir(parents=True, exist_ok=True)
        if r.summary_path.exists():
            r.summary_path.unlink()
        cmd = [sys.executable, "-m", "store_rec.train", "--config", base_config, *r.overrides, "--metrics-out", str(r.summary_path)]
        t0 = time.perf_counter()
        with open(r.dir / "train.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not r.summary_path.exists():
            failed.append(r)
            logger.error("experiments: FAILED %s (exit %d), log %s", r.dir, rc, r.dir / "train.log")
            return
        tmp = r.dir / "run.json.tmp"
        tmp.write_text(json.dumps({"overrides": r.overrides, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
        os.replace(tmp, r.dir / "run.json")
        logger.info("experiments: %s/%s/%s x=%s seed %d done in %.0f s", r.experiment, r.dataset, r.variant, r.x, r.seed,
                    time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    if failed:
        raise UserError(f"experiments: {len(failed)} run(s) failed, first: {failed[0].dir / 'train.log'}")
    return {"runs": len(runs), "ran": len(todo)}
