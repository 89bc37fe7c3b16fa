"""Build what the experiments need (prepared data, SASRec embeddings, SID tables), then run them.

Artifacts live under ``OUT/data/<dataset>/`` (``OUT/data-tiny/`` with ``--tiny``) and are built in
this process by the library functions behind the commands users run (``store-rec data prepare`` /
``pretrain`` / ``tokenize``: :func:`store_rec.data.prepare.prepare`,
:func:`store_rec.tokenizer.pretrain.pretrain_embeddings`, :func:`store_rec.tokenizer.make_sids.make_sid_table`);
the equivalent command line is logged and recorded. Every artifact gets a build record beside it, ``<artifact>.build.json``: the store-rec
arguments it was built with (paths under the artifacts root written as ``{root}/...``) and the
sha256 of its inputs' build records. An artifact is reused only when its record matches what the
current config asks for; otherwise it is removed together with everything built from it, and rebuilt
(a warning names what changed). An artifact without a record (built before records existed, or an
interrupted build: the record is written last) is stale, unless ``adopt`` is set: then a record is
written for it as if it matched the current config.

Runs live under ``OUT/runs/<experiment>/<dataset>/<variant>[/<x>]/seed<s>/`` (``OUT/runs-tiny/``
with ``--tiny``); a run whose training config (its overrides but ``output.dir``) equals one planned
earlier, like table 2's STORE row and table 1's, shares that run's directory and is trained once
(among the experiments selected: ``--only table2`` trains its STORE row in its own directory).
Runs are launched as ``python -m store_rec.train`` subprocesses (one thread each,
``jobs`` at a time). A run is not run again when its ``summary.json`` exists and its ``run.json``
holds the same overrides, the same sha256 of the base training config's content, and the same
build-record hashes of the data / SID table it used; a re-run after editing one experiment, the base
config or a dataset's settings recomputes exactly what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from store_rec.data.writer import is_prepared_dataset
from store_rec.errors import UserError
from store_rec.experiments.spec import DatasetSpec, ExperimentSpec, PaperSpec, SidShape
from store_rec.fileio import atomic_write_json, ensure_inside

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".build.json"


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
    # build-record sha256 of each artifact the run reads ("data", "sid_table"); None: missing or stale
    # (only when planned with build=False)
    inputs: Dict[str, Optional[str]] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    @property
    def meta_path(self) -> Path:
        return self.dir / "run.json"

    @property
    def ready(self) -> bool:
        """Every artifact the run reads exists and is up to date."""
        return all(v is not None for v in self.inputs.values())


@dataclass
class Artifact:
    path: Path
    digest: Optional[str]  # sha256 of its build record; None: missing or stale (not built: build=False)


def record_path(path: Path) -> Path:
    """The build record of an artifact: ``<artifact>.build.json`` beside it."""
    return path.with_name(path.name + RECORD_SUFFIX)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def base_config_sha256(base: str, config: Optional[str] = None) -> str:
    """sha256 of the base training config's content (what run.json records)."""
    from store_rec.presets import resolve_config

    p = resolve_config(base)  # a file, else the shipped config it names (configs/experiments/base.yaml)
    if not p.is_file():
        raise UserError(f"{config or 'experiments config'}: base: training config {base} not found")
    return sha256_file(p)


def _flags(argv: List[str]) -> List[str]:
    """``--flag value`` pairs (and lone tokens) of an argv, for naming what changed."""
    out, i = [], 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append(f"{argv[i]} {argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _what_changed(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> str:
    if old is None:
        return ("it has no build record (built before build records existed, or its build did not finish; "
                "--adopt-artifacts keeps artifacts built before records existed)")
    parts = []
    if old.get("args") != new["args"]:
        o, n = _flags(old.get("args") or []), _flags(new["args"])
        gone, added = [f for f in o if f not in n], [f for f in n if f not in o]
        parts.append(f"built with `{' '.join(gone) or '-'}`, now needs `{' '.join(added) or '-'}`")
    old_in = old.get("inputs") or {}
    for k in sorted(set(old_in) | set(new["inputs"])):
        if old_in.get(k) != new["inputs"].get(k):
            parts.append(f"its input {k} was rebuilt since")
    return "; ".join(parts)


def _x_dir(x: Any) -> str:
    return "x=" + _path_part(str(x))


def _path_part(name: str) -> str:
    """``name`` as one directory level: path separators become ``_`` ("w/o rotation" -> "w_o rotation"), and
    ``:`` becomes ``-`` (a ``": "`` in ``output.dir=...`` would make the override parse as a YAML mapping)."""
    return name.replace("/", "_").replace("\\", "_").replace(":", "-")


class Artifacts:
    """Prepared datasets, embeddings and SID tables under ``root``, checked against their build records.

    ``build=False`` only resolves paths: a missing or stale artifact is reported with ``digest=None``
    and nothing is built or removed. ``adopt=True`` writes a record for an existing artifact that has
    none, as if it matched the current config (artifacts whose record differs are still rebuilt).
    """

    def __init__(self, spec: PaperSpec, root: Path, tiny: bool, build: bool = True, adopt: bool = False) -> None:
        self.spec, self.root, self.tiny, self.build, self.adopt = spec, root, tiny, build, adopt
        self._seen: Dict[Path, Artifact] = {}
        self.counts = {"reused": 0, "built": 0, "rebuilt": 0, "adopted": 0, "unavailable": 0}

    def data_dir(self, name: str) -> Artifact:
        d = ensure_inside(self.root / name, self.root, f"datasets[{name!r}]")
        ds = self.spec.datasets[name]
        p = ds.prepare
        sets = {**p.set, **(ds.tiny if self.tiny else {})}
        argv = ["data", "prepare", p.dataset, "--out", str(d)]
        if p.source:
            argv += ["--source", p.source]
        for k, v in sets.items():
            if p.dataset == "table" and k == "schema":
                argv += ["--schema", str(v)]
            else:
                argv += ["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
        if p.seed:  # only when set: the records of datasets prepared with the default seed stay as they were
            argv += ["--seed", str(p.seed)]

        def remove() -> None:  # everything else under d (embeddings, SID tables) was built from it
            if d.exists() or d.is_symlink():
                if not is_prepared_dataset(d):  # only ever delete what `data prepare` wrote
                    raise UserError(f"experiments: {d} exists and is not a prepared dataset; refusing to delete "
                                    "it (move it away, or choose another --out)")
                shutil.rmtree(d)

        def build() -> None:  # = store-rec data prepare (argv above)
            from store_rec.config import parse_overrides
            from store_rec.data.prepare import prepare

            opts = parse_overrides(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items())
            prepare(p.dataset, p.source, d, seed=p.seed, overwrite=False, config=None, skip_bad_rows=False, **opts)

        inputs: Dict[str, Artifact] = {}
        if p.dataset == "table":  # the schema YAML is config: an edit to it rebuilds the dataset
            schema = Path(str(sets["schema"]))
            if not schema.is_file():
                raise UserError(f"datasets.{name}.prepare.set.schema: {schema} is not a file")
            inputs["schema"] = Artifact(schema, sha256_file(schema))
        return self._ensure(d, argv, build, inputs, lambda: (d / "schema.json").exists(), remove, f"prepare {name}")

    def embeddings(self, name: str) -> Artifact:
        ds = self.spec.datasets[name]
        out = self.root / name / "emb.parquet"
        data = self.data_dir(name)
        pt = ds.pretrain
        assert pt is not None, f"{name}: no pretrain section (callers check ds.pretrain first)"
        epochs = 1 if self.tiny else pt.epochs
        argv = ["pretrain", "--data", str(data.path), "--out", str(out), "--epochs", str(epochs),
                "--dim", str(pt.dim), "--max-len", str(pt.max_len)]

        def remove() -> None:  # with it: its metrics JSON and every SID table built from it
            for f in [out, out.with_suffix(".json"), *out.parent.glob("sids_*")]:
                f.unlink(missing_ok=True)

        def build() -> None:  # = store-rec pretrain (argv above; its other flags' defaults are SASRecConfig's)
            from store_rec.tokenizer.pretrain import pretrain_embeddings
            from store_rec.tokenizer.sasrec import SASRecConfig

            pretrain_embeddings(out, SASRecConfig(dim=pt.dim, max_len=pt.max_len, epochs=epochs), data=data.path)

        return self._ensure(out, argv, build, {"data": data}, out.exists, remove, f"pretrain {name}")

    def sid_table(self, name: str, method: str, shape: SidShape) -> Artifact:
        out = self.root / name / f"sids_{method}_K{shape.num_sids}_C{shape.codebook_size}.parquet"
        return self._tokenized(self.embeddings(name), out, method, shape,
                               f"tokenize {name} {method} K={shape.num_sids} C={shape.codebook_size}")

    def _tokenized(self, emb: Artifact, out: Path, method: str, shape: SidShape, what: str) -> Artifact:
        """``emb`` tokenized into the SID table ``out`` (+ its ``.json`` report): ``store-rec tokenize``."""
        steps = 50 if self.tiny else shape.steps
        steps = steps if steps and method != "opq" else None
        argv = ["tokenize", "--embeddings", str(emb.path), "--method", method, "--num-sids", str(shape.num_sids),
                "--codebook-size", str(shape.codebook_size), "--out", str(out), "--report", str(out.with_suffix(".json"))]
        if steps:
            argv += ["--steps", str(steps)]

        def remove() -> None:
            for f in (out, out.with_suffix(".json")):
                f.unlink(missing_ok=True)

        def build() -> None:  # = store-rec tokenize (argv above)
            from store_rec.tokenizer.make_sids import make_sid_table

            make_sid_table(emb.path, out, method=method, num_sids=shape.num_sids, codebook_size=shape.codebook_size,
                           report=out.with_suffix(".json"), steps=steps)

        return self._ensure(out, argv, build, {"embeddings": emb}, out.exists, remove, what)

    # ---- SIDs for features without sequences: first-stage model -> its tables -> tokenize ----------------
    def first_stage(self, name: str) -> Artifact:
        """The first-stage run of dataset ``name`` (``OUT/data/<name>.first_stage/``, its checkpoint in
        ``ck/``): ``store-rec train`` of the experiments' base config with the dataset's ``set``, raw ids,
        ``first_stage.set`` (default model DLRM), fixed epochs, no early stopping, valid only evaluated (for the
        log; test never). Its record holds the base config's hash: editing the base retrains it."""
        ds = self.spec.datasets[name]
        fs = ds.first_stage
        assert fs is not None, f"{name}: no first_stage section (callers check first)"
        data = self.data_dir(name)
        d = self.root / f"{name}.first_stage"  # beside the dataset: a run never writes into its input
        epochs = 1 if self.tiny else fs.epochs
        ov = [*ds.set, f"data.dir={data.path}", "data.prepare_if_missing=null", "model.name=dlrm", "model.tokenizer=none",
              "data.sid_table=null", *fs.set, f"train.epochs={epochs}", "train.early_stop_patience=0", "train.max_steps=null",
              "train.eval_splits=[valid]", "train.epoch_end_splits=[valid]", f"train.seed={fs.seed}",
              "checkpoint.enabled=true", f"checkpoint.dir={d / 'ck'}", "checkpoint.keep=1", "checkpoint.every_steps=0",
              f"output.dir={d}", "output.progress_bar=false", "output.tensorboard=false"]
        argv = ["train", "--config", self.spec.base, *ov, "--metrics-out", str(d / "summary.json")]
        base = Artifact(Path(self.spec.base), base_config_sha256(self.spec.base))

        def remove() -> None:  # only a directory this runner made (a training output: config.yaml) or an empty one
            if d.exists():
                if any(d.iterdir()) and not (d / "config.yaml").exists():
                    raise UserError(f"experiments: {d} exists and is not a first-stage run; refusing to delete it")
                shutil.rmtree(d)

        def build() -> None:  # = store-rec train (argv above), as a subprocess like every run
            d.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "store_rec.train", *argv[1:]]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            with open(d / "train.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if rc != 0 or not (d / "summary.json").exists():
                raise UserError(f"first-stage training exited with {rc}; log {d / 'train.log'}")

        return self._ensure(d, argv, build, {"data": data, "base": base}, lambda: (d / "summary.json").exists(), remove,
                            f"first stage {name}")

    def feature_embeddings(self, name: str, feature: str) -> Artifact:
        """``feature``'s table of the first-stage checkpoint as ``OUT/data/<name>/emb_<feature>.parquet``."""
        stage = self.first_stage(name)
        data = self.data_dir(name)
        out = self.root / name / f"emb_{feature}.parquet"
        argv = ["embeddings", "export", "--checkpoint", str(stage.path), "--data", str(data.path), "--feature", feature,
                "--out", str(out)]

        def remove() -> None:  # with it: every SID table tokenized from it
            for f in [out, *out.parent.glob(f"fsids_{feature}_*")]:
                f.unlink(missing_ok=True)

        def build() -> None:  # = store-rec embeddings export (argv above)
            from store_rec.inference.table_export import export_feature_embeddings

            export_feature_embeddings(stage.path, feature, out, data=data.path)

        return self._ensure(out, argv, build, {"first_stage": stage}, out.exists, remove, f"export {name} {feature}")

    def feature_sid_table(self, name: str, feature: str, method: str, shape: SidShape) -> Artifact:
        """``feature``'s first-stage embeddings tokenized: ``OUT/data/<name>/fsids_<feature>_<method>_K<K>_C<C>.parquet``."""
        out = self.root / name / f"fsids_{feature}_{method}_K{shape.num_sids}_C{shape.codebook_size}.parquet"
        return self._tokenized(self.feature_embeddings(name, feature), out, method, shape,
                               f"tokenize {name} {feature} {method} K={shape.num_sids} C={shape.codebook_size}")

    def _rel(self, tok: str) -> str:
        """A path under the artifacts root as ``{root}/...`` (records survive moving OUT)."""
        try:
            return "{root}/" + Path(tok).relative_to(self.root).as_posix()
        except ValueError:
            return tok

    def _ensure(self, path: Path, argv: List[str], build: Callable[[], None], inputs: Dict[str, Artifact],
                exists: Callable[[], bool], remove: Callable[[], None], what: str) -> Artifact:
        """``argv``: the equivalent ``store-rec`` command (recorded for reproducibility, compared for reuse);
        ``build``: builds the artifact through the library functions that command runs."""
        if path in self._seen:
            return self._seen[path]
        art = self._resolve(path, argv, build, inputs, exists, remove, what)
        self._seen[path] = art
        return art

    def _resolve(self, path: Path, argv: List[str], build: Callable[[], None], inputs: Dict[str, Artifact],
                 exists: Callable[[], bool], remove: Callable[[], None], what: str) -> Artifact:
        rec_path = record_path(path)
        if any(a.digest is None for a in inputs.values()):  # build=False and an input is not usable
            self.counts["unavailable"] += 1
            return Artifact(path, None)
        want = {"args": [self._rel(t) for t in argv], "inputs": {k: a.digest for k, a in inputs.items()}}
        present = exists()
        old = None
        if present and rec_path.exists():
            try:
                old = json.loads(rec_path.read_text())
            except (OSError, ValueError):
                logger.warning("experiments: %s: unreadable build record, treated as missing", rec_path)
        if present and old is not None and old.get("args") == want["args"] and old.get("inputs") == want["inputs"]:
            self.counts["reused"] += 1
            return Artifact(path, sha256_file(rec_path))
        if present and old is None and self.adopt:
            atomic_write_json(rec_path, {**want, "command": "store-rec " + " ".join(argv), "adopted": time.strftime("%Y-%m-%dT%H:%M:%S")})
            logger.warning("experiments: adopted %s (--adopt-artifacts): recorded as built by store-rec %s", path, " ".join(argv))
            self.counts["adopted"] += 1
            return Artifact(path, sha256_file(rec_path))
        if not self.build:
            why = _what_changed(old, want) if present else "missing"
            logger.info("experiments: %s is not usable (%s); not built (report only)", path, why)
            self.counts["unavailable"] += 1
            return Artifact(path, None)
        if present:
            logger.warning("experiments: %s is out of date: %s; removing it and everything built from it, then rebuilding",
                           path, _what_changed(old, want))
            self.counts["rebuilt"] += 1
        else:
            self.counts["built"] += 1
        # no artifact (or an interrupted build's leftovers): start clean so a half-written one is never reused
        rec_path.unlink(missing_ok=True)
        remove()
        self._build(build, argv, what)
        # the record is written last: an artifact without one was never finished (or predates records)
        atomic_write_json(rec_path, {**want, "command": "store-rec " + " ".join(argv), "built": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return Artifact(path, sha256_file(rec_path))

    @staticmethod
    def _build(build: Callable[[], None], argv: List[str], what: str) -> None:
        from store_rec.errors import USER_ERRORS

        logger.info("experiments: %s: store-rec %s", what, " ".join(argv))
        t0 = time.perf_counter()
        try:
            build()
        except USER_ERRORS as e:
            raise UserError(f"experiments: {what} failed (store-rec {' '.join(argv)}): {e}") from e
        logger.info("experiments: %s done in %.1f s", what, time.perf_counter() - t0)


def plan_runs(spec: PaperSpec, out: Path, only: Optional[List[str]] = None, tiny: bool = False, build: bool = True,
              adopt: bool = False) -> List[Run]:
    """Every run of the selected experiments.

    ``build=True``: the artifacts the runs read are built (or rebuilt) as their paths are needed.
    ``build=False``: only paths are computed; a run whose artifacts are missing or stale has
    ``ready == False`` (``--report-only`` leaves it out). ``adopt``: see :class:`Artifacts`.
    Restrict ``spec`` to some datasets / variants first with :func:`store_rec.experiments.spec.restrict`.
    """
    names = only or list(spec.experiments)
    unknown = [n for n in names if n not in spec.experiments]
    if unknown:
        raise UserError(f"--only: unknown experiment(s) {unknown}; known: {list(spec.experiments)}")
    arts = Artifacts(spec, out / ("data-tiny" if tiny else "data"), tiny, build=build, adopt=adopt)
    runs_root = out / ("runs-tiny" if tiny else "runs")
    runs: List[Run] = []
    first_dir: Dict[tuple, Path] = {}  # training config (overrides but output.dir) -> the run dir planned first
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
                        d = runs_root / _path_part(en) / _path_part(dn) / _path_part(vn)
                        if x is not None:
                            d = d / _x_dir(x)
                        d = ensure_inside(d / f"seed{seed}", runs_root, f"run of experiments[{en!r}]")
                        pre = [*ds.set, *base["overrides"], *e.set, *v.set]
                        if e.sweep is not None and e.sweep.key is not None:
                            pre.append(f"{e.sweep.key}={json.dumps(x)}")
                        if e.kind == "fair":  # scores are read at the best-valid epoch: test at every epoch end
                            pre.append("train.epoch_end_splits=[valid,test]")
                        post = ["checkpoint.enabled=false", "output.progress_bar=false", "output.tensorboard=false",
                                *(spec.tiny.set if tiny else [])]
                        # the same training config planned again (table2's STORE is table1's): share its run
                        d = first_dir.setdefault((tuple(pre), seed, tuple(post)), d)
                        ov = [*pre, f"train.seed={seed}", f"output.dir={d}", *post]
                        runs.append(Run(en, dn, vn, seed, x, ov, d, base["sids"], base["notes"], dict(base["inputs"])))
    c = arts.counts
    logger.info("experiments: artifacts under %s: %d reused, %d built, %d rebuilt, %d adopted%s", arts.root, c["reused"],
                c["built"], c["rebuilt"], c["adopted"], f", {c['unavailable']} missing or stale (not built)" if not build else "")
    return runs


def _data_overrides(arts: Artifacts, dn: str, ds: DatasetSpec, e: ExperimentSpec, method: Optional[str], x: Any) -> Dict[str, Any]:
    data = arts.data_dir(dn)
    ov = [f"data.dir={data.path}", "data.prepare_if_missing=null"]
    inputs: Dict[str, Optional[str]] = {"data": data.digest}
    notes: List[str] = []
    if method is not None and not ds.has_sids:
        notes.append(f"{dn} has no user sequences to pre-train item embeddings: raw IDs instead of {method} SIDs")
        method = None
    if method is None:
        ov += ["model.tokenizer=none", "data.sid_table=null"]
        return {"overrides": ov, "sids": None, "notes": notes, "inputs": inputs}
    shape = ds.sids
    if e.sweep is not None and e.sweep.sids_key is not None:
        shape = replace(shape, **{e.sweep.sids_key: int(x)})
    if ds.pretrain is not None:
        table = arts.sid_table(dn, method, shape)
        inputs["sid_table"] = table.digest
        ov += [f"data.sid_table={table.path}", f"model.tokenizer={method}", "model.sid_source=batch",
               f"model.item_feature={ds.item_feature}"]
    else:
        ov += ["data.sid_table=null", f"model.tokenizer={method}", "model.sid_source=batch"]
    if ds.first_stage is not None:  # each feature's own table: keys {feature}_sid_k (data.sid_tables)
        tables = {}
        for f in ds.first_stage.features:
            t = arts.feature_sid_table(dn, f, method, shape)
            inputs[f"sid_table.{f}"] = t.digest
            tables[f] = str(t.path)
        ov.append(f"data.sid_tables={json.dumps(tables)}")
        model = next((s.split("=", 1)[1] for s in reversed(ds.first_stage.set) if s.startswith("model.name=")), "dlrm")
        notes.append(f"{dn}: SIDs of {', '.join(ds.first_stage.features)} ({method}, K = {shape.num_sids}, C = "
                     f"{shape.codebook_size}) tokenized from the tables of a first-stage {model} trained on the train "
                     "split (ids never seen in training get the OOV SID)")
    return {"overrides": ov, "sids": method, "notes": notes, "inputs": inputs}


def _read_meta(r: Run) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(r.meta_path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("experiments: %s: unreadable, the run counts as not done", r.meta_path)
        return None


def _run_state(r: Run, base_sha: str, adopt: bool) -> Optional[str]:
    """None when the run's result is current (adopting a pre-hash run.json if ``adopt``), else why not."""
    if not r.ready:
        return "artifacts missing or stale"
    if not r.summary_path.exists():
        return "no summary"
    meta = _read_meta(r)
    if meta is None:
        return "no run.json"
    if meta.get("overrides") != r.overrides:
        return "overrides changed"
    if "base_sha256" not in meta:
        if not adopt:
            return "run.json without a base config hash (made before hashes were recorded; --adopt-artifacts keeps it)"
        atomic_write_json(r.meta_path, {**meta, "base_sha256": base_sha, "inputs": r.inputs, "adopted": True}, indent=1)
        logger.warning("experiments: adopted run %s (--adopt-artifacts): recorded as made with the current base config", r.dir)
        return None
    if meta["base_sha256"] != base_sha:
        return "base config changed"
    if meta.get("inputs") != r.inputs:
        return "data or SID table rebuilt"
    return None


def _why_counts(why: List[str]) -> str:
    return "; ".join(f"{n}: {w}" for w, n in Counter(why).items())


def finished_runs(runs: List[Run], base_sha: str, adopt: bool = False) -> List[Run]:
    """The runs whose results are current (what ``--report-only`` reports); logs how many are left out."""
    done, why = [], []
    for r in runs:
        w = _run_state(r, base_sha, adopt)
        if w is None:
            done.append(r)
        else:
            why.append(w)
    if why:
        logger.info("experiments: %d of %d planned runs left out of the report (%s)", len(why), len(runs), _why_counts(why))
    return done


def execute(runs: List[Run], base_config: str, jobs: int, force: bool = False, base_sha: Optional[str] = None,
            adopt: bool = False) -> Dict[str, int]:
    """Run what is not done yet, ``jobs`` at a time; returns counts of runs / ran."""
    base_sha = base_sha or base_config_sha256(base_config)
    todo, why, seen = [], [], set()
    for r in runs:
        if r.dir in seen:  # a run shared by several experiments (plan_runs) is trained once
            continue
        seen.add(r.dir)
        w = "--force" if force else _run_state(r, base_sha, adopt)
        if w is not None:
            todo.append(r)
            why.append(w)
    logger.info("experiments: %d runs, %d to do (%d done)%s", len(seen), len(todo), len(seen) - len(todo),
                f": {_why_counts(why)}" if why else "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed = []

    def one(r: Run) -> None:
        r.dir.mkdir(parents=True, exist_ok=True)
        r.summary_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "store_rec.train", "--config", base_config, *r.overrides, "--metrics-out", str(r.summary_path)]
        t0 = time.perf_counter()
        with open(r.dir / "train.log", "w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not r.summary_path.exists():
            failed.append(r)
            logger.error("experiments: FAILED %s (exit %d), log %s", r.dir, rc, r.dir / "train.log")
            return
        atomic_write_json(r.meta_path, {"overrides": r.overrides, "base_config": base_config, "base_sha256": base_sha,
                                        "inputs": r.inputs, "seconds": round(time.perf_counter() - t0, 1),
                                        "command": shlex.join(["python", *cmd[1:]])}, indent=1)
        logger.info("experiments: %s/%s/%s x=%s seed %d done in %.0f s", r.experiment, r.dataset, r.variant, r.x, r.seed,
                    time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    if failed:
        raise UserError(f"experiments: {len(failed)} run(s) failed, first: {failed[0].dir / 'train.log'}")
    return {"runs": len(seen), "ran": len(todo)}
