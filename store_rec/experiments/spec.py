"""The experiments YAML (``configs/experiments/paper.yaml``) validated into dataclasses.

Layout (every key checked; errors name the key path)::

    base: configs/experiments/base.yaml     # training config every run starts from
    jobs: 2                                 # runs in parallel (1 thread each)
    datasets:
      <name>:
        prepare: {dataset: movielens|avazu|criteo|synthetic|table, source: PATH, set: {KEY: VALUE}, seed: 0}
        pretrain: {epochs, dim, max_len}    # SASRec item embeddings; null: no SIDs (raw IDs)
        sids: {num_sids, codebook_size, steps}   # default semantic-ID shape on this dataset
        item_feature: movie_id              # the id feature SIDs replace
        first_stage:                        # SIDs without sequences: train a first-stage model on the
          features: [site_id, app_id]       # train split, export these features' tables, tokenize each
          set: [model.name=dlrm]            # (ds.sids shape) and attach them as data.sid_tables
          epochs: 3                         # (keys {feature}_sid_k) to every run with `sids`
          seed: 0
        set: [KEY=VALUE, ...]               # training overrides of every run on it
        tiny: {KEY: VALUE}                  # prepare overrides in --tiny mode
    experiments:
      <name>:
        title: ...
        kind: table | epochs | sweep | fair # table: mean/std per variant; epochs: test AUC per
                                            # epoch (x = 1..train.epochs); sweep: metric vs x;
                                            # fair: the fair protocol (store_rec.experiments.fair):
                                            # sweep = the tuning grid every variant gets, selection
                                            # on valid at the best-valid epoch, paired seeds vs
                                            # `reference`; variants with `extra: true` (e.g. raw
                                            # IDs) are reported but not a rival in the claims
        datasets: [<name>, ...]
        seeds: [0, 1, 2]
        set: [KEY=VALUE, ...]               # overrides of every run of the experiment
        variants: {<label>: {sids: opmq|rqvae|opq|null, set: [...], extra: false}}
        reference: <label>                  # kind fair: the model the others are compared with
        pairs: [[<A>, <B>], ...]            # kind table: paired per-seed differences A - B
        sweep: {label, key: <config key> | sids_key: num_sids|codebook_size, values: [...]}
        notes: free text copied into RESULTS.md
    tiny: {set: [...], seeds: [0], max_values: 2}   # --tiny: what CI runs

A run is (experiment, dataset, variant, x, seed); its overrides are, in order: the dataset's
``set``, data location / SIDs, the experiment's ``set``, the variant's ``set``, the sweep value,
``train.seed``, the output location (and ``tiny.set`` in tiny mode).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from store_rec.config import check

#: a dataset or experiment name becomes one directory / file name under the output folders: letters,
#: digits and ``_ - . +``, not starting with a dot (no ``/``, ``..``, hidden or absolute paths)
NAME_RE = r"^[A-Za-z0-9_+\-][A-Za-z0-9_.+\-]*$"


def check_name(name: str, key: str) -> None:
    """ConfigError naming ``key`` unless ``name`` is usable as one path component (see :data:`NAME_RE`)."""
    import re

    check(isinstance(name, str) and re.match(NAME_RE, name) is not None and len(name) <= 128, key,
          f"{name!r} is not usable as a directory name: use letters, digits and _ - . + only, not starting "
          "with a dot (it becomes a path under the output folder)")


@dataclass
class PrepareSpec:
    dataset: Literal["movielens", "avazu", "criteo", "synthetic", "table"]
    source: Optional[str] = None
    set: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0  # split / sampling seed (store-rec data prepare --seed): another seed, another random split

    def __post_init__(self) -> None:
        check(self.dataset == "synthetic" or bool(self.source), "source", f"{self.dataset} needs the raw data path")
        # your own files (store-rec data prepare table): set.schema is the YAML giving each column its
        # role, the other set keys override its keys (e.g. interactions.history_len: 16)
        check(self.dataset != "table" or isinstance(self.set.get("schema"), str), "set.schema",
              "table needs set.schema: the path of its schema YAML (datasets/README.md)")


@dataclass
class PretrainSpec:
    epochs: int = 20
    dim: int = 32
    max_len: int = 50

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.dim >= 4 and self.dim % 4 == 0, "dim", f"must be a positive multiple of 4, got {self.dim}")


@dataclass
class SidShape:
    num_sids: int = 3
    codebook_size: int = 16
    steps: Optional[int] = None  # tokenizer training steps (default: store-rec tokenize's)

    def __post_init__(self) -> None:
        check(self.num_sids >= 1, "num_sids", f"must be >= 1, got {self.num_sids}")
        check(self.codebook_size >= 2, "codebook_size", f"must be >= 2, got {self.codebook_size}")


@dataclass
class FirstStageSpec:
    """SIDs for features without sequences: a first-stage model (``model.name`` in ``set``, default
    DLRM on raw ids) trained on the train split for ``epochs`` (no early stopping, valid evaluated only for
    the log, test never), its ``features``' tables exported (``store-rec embeddings export``) and tokenized."""

    features: List[str]
    set: List[str] = field(default_factory=list)
    epochs: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        check(bool(self.features), "features", "needs at least one id feature to tokenize")
        dup = sorted({f for f in self.features if self.features.count(f) > 1})
        check(not dup, "features", f"lists {dup} more than once")
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")


@dataclass
class DatasetSpec:
    prepare: PrepareSpec
    pretrain: Optional[PretrainSpec] = None
    sids: SidShape = field(default_factory=SidShape)
    item_feature: Optional[str] = None
    set: List[str] = field(default_factory=list)
    tiny: Dict[str, Any] = field(default_factory=dict)
    first_stage: Optional[FirstStageSpec] = None

    def __post_init__(self) -> None:
        check(self.pretrain is None or bool(self.item_feature), "item_feature", "needed when SIDs are pre-trained")
        if self.first_stage is not None:
            for i, f in enumerate(self.first_stage.features):
                check_name(f, f"first_stage.features[{i}]")
                check(f != self.item_feature or self.pretrain is None, f"first_stage.features[{i}]",
                      f"{f!r} is item_feature, tokenized from its pre-trained embeddings already")

    @property
    def has_sids(self) -> bool:
        """SIDs can be built: from pre-trained sequence embeddings and/or a first-stage model."""
        return self.pretrain is not None or self.first_stage is not None


@dataclass
class VariantSpec:
    sids: Optional[Literal["opmq", "rqvae", "opq"]] = None  # None: raw IDs (model.tokenizer=none)
    set: List[str] = field(default_factory=list)
    extra: bool = False  # kind fair: reported, but not a rival in the claims (e.g. a raw-ID row)


@dataclass
class SweepSpec:
    label: str
    values: List[Any]
    key: Optional[str] = None  # a training-config key, e.g. model.attention.sparsity
    sids_key: Optional[Literal["num_sids", "codebook_size"]] = None  # or a SID-table shape

    def __post_init__(self) -> None:
        check((self.key is None) != (self.sids_key is None), "key", "give exactly one of key / sids_key")
        check(len(self.values) >= 1, "values", "needs at least one value")


@dataclass
class ExperimentSpec:
    title: str
    kind: Literal["table", "epochs", "sweep", "fair"]
    datasets: List[str]
    variants: Dict[str, VariantSpec]
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    set: List[str] = field(default_factory=list)
    sweep: Optional[SweepSpec] = None
    notes: str = ""
    reference: Optional[str] = None  # kind fair
    # kind table: [A, B] variant pairs reported as paired per-seed differences A - B (AUC, GAUC, LogLoss)
    pairs: List[List[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(bool(self.variants), "variants", "needs at least one variant")
        for name in self.variants:  # a variant names a run directory (separators become '_')
            check(name.strip(" ./\\") != "", f"variants[{name!r}]", "is not usable as a run directory name (only dots, slashes or spaces)")
            check(not name.startswith("."), f"variants[{name!r}]", "must not start with a dot (a hidden run directory)")
        check(bool(self.seeds), "seeds", "needs at least one seed")
        check(self.kind == "sweep" or self.sweep is None or self.kind == "fair", "sweep",
              "only kinds 'sweep' and 'fair' (its tuning grid) take a sweep")
        check(self.kind != "sweep" or self.sweep is not None, "sweep", "kind 'sweep' needs a sweep")
        if self.kind == "fair":
            check(self.reference in self.variants, "reference",
                  f"kind 'fair' needs the reference variant, one of {list(self.variants)}; got {self.reference!r}")
            check(self.sweep is None or self.sweep.key is not None, "sweep.key",
                  "the tuning grid of kind 'fair' sweeps a training-config key (not a SID shape)")
        else:
            check(self.reference is None, "reference", "only kind 'fair' takes a reference")
        check(self.kind == "table" or not self.pairs, "pairs", "only kind 'table' takes pairs")
        for i, pair in enumerate(self.pairs):
            check(len(pair) == 2 and pair[0] != pair[1], f"pairs[{i}]", f"needs two different variants [A, B], got {pair!r}")
            for name in pair:
                check(name in self.variants, f"pairs[{i}]", f"{name!r} is not one of the variants {list(self.variants)}")


@dataclass
class TinySpec:
    set: List[str] = field(default_factory=list)
    seeds: List[int] = field(default_factory=lambda: [0])
    max_values: int = 2  # sweep values kept in tiny mode


@dataclass
class PaperSpec:
    base: str
    datasets: Dict[str, DatasetSpec]
    experiments: Dict[str, ExperimentSpec]
    jobs: int = 2
    tiny: TinySpec = field(default_factory=TinySpec)

    def __post_init__(self) -> None:
        check(self.jobs >= 1, "jobs", f"must be >= 1, got {self.jobs}")
        for name in self.datasets:
            check_name(name, f"datasets[{name!r}]")
        for name in self.experiments:
            check_name(name, f"experiments[{name!r}]")
        for name, e in self.experiments.items():
            for i, d in enumerate(e.datasets):
                check(d in self.datasets, f"experiments.{name}.datasets[{i}]", f"{d!r} is not one of {sorted(self.datasets)}")


def restrict(spec: PaperSpec, datasets: Optional[List[str]] = None, variants: Optional[List[str]] = None) -> PaperSpec:
    """``spec`` with every experiment cut down to the given ``datasets`` / ``variants`` (names; None:
    all), experiments left with none dropped (``store-rec experiments --datasets / --variants``). A
    name that no experiment has is a ``UserError``; a kept ``fair`` experiment must keep its reference."""
    import copy

    from store_rec.errors import UserError

    known_d = {d for e in spec.experiments.values() for d in e.datasets}
    known_v = {v for e in spec.experiments.values() for v in e.variants}
    for flag, names, known in (("--datasets", datasets, known_d), ("--variants", variants, known_v)):
        bad = [n for n in names or [] if n not in known]
        if bad:
            raise UserError(f"{flag}: unknown name(s) {bad}; the experiments have: {sorted(known)}")
    out = copy.deepcopy(spec)
    for name in list(out.experiments):
        e = out.experiments[name]
        if datasets is not None:
            e.datasets = [d for d in e.datasets if d in datasets]
        if variants is not None:
            e.variants = {k: v for k, v in e.variants.items() if k in variants}
            e.pairs = [p for p in e.pairs if p[0] in e.variants and p[1] in e.variants]
            if e.kind == "fair" and e.variants and e.reference not in e.variants:
                raise UserError(f"--variants: experiment {name!r} compares with {e.reference!r}; keep it in --variants")
        if not e.datasets or not e.variants:
            del out.experiments[name]
    if not out.experiments:
        raise UserError("--datasets / --variants: no experiment is left")
    return out


def load_spec(path: str) -> PaperSpec:
    from store_rec.config import load_config

    return load_config(PaperSpec, path)
