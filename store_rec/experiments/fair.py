"""The fair-comparison protocol: selection on valid, test reported once, paired seeds.

Every model (variant) gets the same tuning budget: the same grid of training settings (e.g. dense
LR), each trained for every seed with early stopping on valid AUC. The scores of a run are read at
its **best-valid epoch** (``metrics.jsonl`` holds valid and test at every epoch end; the test AUC of
that epoch is the run's test score, so no test number influences any choice). Per model and
dataset the grid point with the best *mean valid AUC over seeds* is selected; its per-seed test
scores are reported. Models are compared by **paired seeds**: the per-seed difference of test AUC
against the reference model (same seed, same data), reported as mean ± std of the differences.

Shapes of the inputs (plain dicts, so the runner and the tests build them the same way)::

    scores[variant][x][seed] = RunScore          x: the grid point (None without a grid)
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple


@dataclass(frozen=True)
class RunScore:
    """A run's scores at its best-valid epoch (0-based ``epoch``)."""

    epoch: int
    valid_auc: float
    test_auc: float
    test_logloss: float
    test_gauc: Optional[float] = None
    # test AUC of the cold / warm target items' positives against every negative (store_rec.data.slices;
    # None for a dataset without an item feature, or a run made before slices were reported)
    test_auc_cold: Optional[float] = None
    test_auc_warm: Optional[float] = None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def best_valid_epoch(metrics_jsonl: Path) -> Optional[RunScore]:
    """The run's :class:`RunScore` at the epoch end with the best valid AUC (the earliest on ties).

    Needs valid and test evaluated at every epoch end (``train.epoch_end_splits=[valid,test]``);
    ``None`` when the file is missing or holds no epoch with both a finite valid and test AUC.
    """
    if not metrics_jsonl.exists():
        return None
    by_epoch: Dict[int, Dict[str, Dict[str, Any]]] = {}
    for line in metrics_jsonl.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("split") in ("valid", "test") and "epoch" in r:
            by_epoch.setdefault(int(r["epoch"]), {})[r["split"]] = r
    best: Optional[RunScore] = None
    for ep in sorted(by_epoch):
        v, t = by_epoch[ep].get("valid"), by_epoch[ep].get("test")
        if not v or not t or not _finite(v.get("auc")) or not _finite(t.get("auc")):
            continue
        if best is None or v["auc"] > best.valid_auc:
            best = RunScore(ep, float(v["auc"]), float(t["auc"]), float(t.get("logloss", float("nan"))),
                            float(t["gauc"]) if _finite(t.get("gauc")) else None,
                            float(t["auc_cold"]) if _finite(t.get("auc_cold")) else None,
                            float(t["auc_warm"]) if _finite(t.get("auc_warm")) else None)
    return best


def select(per_x: Mapping[Any, Mapping[int, RunScore]]) -> Any:
    """The grid point with the best mean valid AUC over its seeds (the first one on ties). Only grid
    points with the most seeds take part (a point with a missing seed is not compared on fewer)."""
    best_x, best_v = None, -math.inf
    most = max((len(v) for v in per_x.values()), default=0)
    for x, by_seed in per_x.items():
        if not by_seed or len(by_seed) < most:
            continue
        v = statistics.fmean(s.valid_auc for s in by_seed.values())
        if v > best_v:
            best_x, best_v = x, v
    return best_x


def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample std (0 for one value; NaN for none)."""
    xs = [x for x in xs if _finite(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Tuple[float, float, int]:
    """``(mean, std, n)`` of ``a[s] - b[s]`` over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    m, s = mean_std([a[k] - b[k] for k in seeds])
    return m, s, len(seeds)


@dataclass
class Selected:
    """One model on one dataset after selection."""

    variant: str
    x: Any
    by_seed: Dict[int, RunScore]

    @property
    def test_auc(self) -> Dict[int, float]:
        return {k: s.test_auc for k, s in self.by_seed.items()}


def select_all(scores: Mapping[str, Mapping[Any, Mapping[int, RunScore]]]) -> Dict[str, Selected]:
    """Selection for every variant of one dataset (variants without any finished run are left out)."""
    out: Dict[str, Selected] = {}
    for vn, per_x in scores.items():
        x = select(per_x)
        if x is None and not per_x.get(None):
            continue
        out[vn] = Selected(vn, x, dict(per_x[x]))
    return out


def verdict(diff_mean: float, diff_std: float, n: int) -> str:
    """Plain-words outcome of a paired comparison (reference minus other)."""
    if n == 0 or not _finite(diff_mean):
        return "not measured"
    if n < 2:
        return "ahead (1 seed)" if diff_mean > 0 else "behind (1 seed)"
    if diff_std == 0 or abs(diff_mean) >= diff_std:
        return "ahead by >= 1 std" if diff_mean > 0 else "behind by >= 1 std"
    return "within 1 std (tie)"


def fair_table(dataset: str, sel: Dict[str, Selected], reference: str, rivals: Sequence[str],
               grid_label: str) -> List[str]:
    """Markdown rows for one dataset: every selected model with its grid point, valid / test AUC,
    LogLoss, epochs, and the paired test-AUC difference of the reference against it; with the test
    AUC of cold / warm target items when the runs report them (datasets with an item feature)."""
    slices = any(r.test_auc_cold is not None or r.test_auc_warm is not None
                 for s in sel.values() for r in s.by_seed.values())
    lines = [f"**{dataset}**", "",
             f"| model | selected {grid_label} | valid AUC | test AUC | "
             + ("test AUC cold items | test AUC warm items | " if slices else "")
             + f"test LogLoss | best epoch | {reference} − model (paired test AUC) | seeds |",
             "|---|---|---|---|" + ("---|---|" if slices else "") + "---|---|---|---|"]
    ref = sel.get(reference)
    for vn, s in sel.items():
        va = mean_std([r.valid_auc for r in s.by_seed.values()])
        ta = mean_std([r.test_auc for r in s.by_seed.values()])
        ll = mean_std([r.test_logloss for r in s.by_seed.values()])
        ep = sorted(r.epoch + 1 for r in s.by_seed.values())
        if vn == reference or ref is None:
            d = "—"
        else:
            m, sd, n = paired_difference(ref.test_auc, s.test_auc)
            d = f"{m:+.4f} ± {sd:.4f} ({verdict(m, sd, n)})"
        sl = ""
        if slices:
            for vals in ([r.test_auc_cold for r in s.by_seed.values()], [r.test_auc_warm for r in s.by_seed.values()]):
                m_, sd_ = mean_std([v for v in vals if v is not None])
                sl += (f"{m_:.4f} ± {sd_:.4f} | " if _finite(m_) else "n/a | ")
        lines.append(f"| {vn} | {s.x if s.x is not None else '—'} | {va[0]:.4f} ± {va[1]:.4f} | "
                     f"{ta[0]:.4f} ± {ta[1]:.4f} | {sl}{ll[0]:.4f} ± {ll[1]:.4f} | {','.join(map(str, ep))} | {d} | "
                     f"{len(s.by_seed)} |")
    return lines


def claim_row(dataset: str, sel: Dict[str, Selected], reference: str, rivals: Sequence[str]) -> Optional[str]:
    """A claims-table row: the reference against the best rival (by selected mean valid AUC)."""
    ref = sel.get(reference)
    cands = [sel[r] for r in rivals if r in sel]
    if ref is None or not cands:
        return None
    best = max(cands, key=lambda s: mean_std([r.valid_auc for r in s.by_seed.values()])[0])
    m, sd, n = paired_difference(ref.test_auc, best.test_auc)
    return (f"| {dataset} | {best.variant} | {mean_std(list(ref.test_auc.values()))[0]:.4f} | "
            f"{mean_std(list(best.test_auc.values()))[0]:.4f} | {m:+.4f} ± {sd:.4f} | {n} | {verdict(m, sd, n)} |")


def epoch_scores(metrics_jsonl: Path) -> Dict[int, Tuple[float, float]]:
    """``{epoch (1-based): (valid AUC, test AUC)}`` for every epoch end of a run with both finite (empty
    when the file is missing). A run stopped early has no entries past its last epoch."""
    out: Dict[int, Dict[str, float]] = {}
    if not metrics_jsonl.exists():
        return {}
    for line in metrics_jsonl.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("split") in ("valid", "test") and "epoch" in r and _finite(r.get("auc")):
            out.setdefault(int(r["epoch"]) + 1, {})[r["split"]] = float(r["auc"])
    return {ep: (v["valid"], v["test"]) for ep, v in sorted(out.items()) if "valid" in v and "test" in v}


@dataclass
class EpochCurve:
    """One model's per-epoch AUCs on one dataset at its selected grid point.

    ``by_seed[seed][e] = (valid AUC, test AUC)`` after epoch ``e`` (1-based); early stopping ends a
    seed's curve, so later epochs can have fewer seeds. ``raw_ids``: the model read raw item IDs."""

    variant: str
    x: Any
    by_seed: Dict[int, Dict[int, Tuple[float, float]]]
    raw_ids: bool

    def at(self, epoch: int, which: int) -> List[float]:
        """The AUCs (``which`` 0: valid, 1: test) after ``epoch`` of the seeds that trained that far."""
        return [c[epoch][which] for c in self.by_seed.values() if epoch in c]

    @property
    def epochs(self) -> List[int]:
        return sorted({e for c in self.by_seed.values() for e in c})

    @property
    def best(self) -> Dict[int, int]:
        """Each seed's best-valid epoch (the earliest on ties, as :func:`best_valid_epoch`)."""
        return {s: max(c, key=lambda e: (c[e][0], -e)) for s, c in self.by_seed.items() if c}

    def best_test(self) -> float:
        """Mean over seeds of the test AUC at each seed's best-valid epoch (the fair table's number)."""
        b = self.best
        return mean_std([self.by_seed[s][e][1] for s, e in b.items()])[0]

    def peaks_at_one(self) -> bool:
        return bool(self.best) and all(e == 1 for e in self.best.values())

    def keeps_rising(self) -> bool:
        return bool(self.best) and all(e > 1 for e in self.best.values())


def one_epoch_verdict(curves: Sequence[EpochCurve], reference: str) -> str:
    """The paper's One-Epoch claim on one dataset: the reference (STORE on SIDs) improves past epoch 1 on
    every seed (best-valid epoch > 1) while every raw-ID model peaks at epoch 1 on every seed."""
    ref = next((c for c in curves if c.variant == reference), None)
    raw = [c for c in curves if c.raw_ids and c.variant != reference]
    if ref is None or not ref.best:
        return "not measured"
    if ref.raw_ids:
        return f"not testable ({reference} has no SIDs here)"
    if not raw:
        return "not testable (no raw-ID model)"
    rises, peak = ref.keeps_rising(), all(c.peaks_at_one() for c in raw)
    if rises and peak:
        return "reproduced"
    if rises:
        return f"half: {reference} improves past epoch 1, but the raw-ID model does too on some seed"
    if peak:
        return f"half: the raw-ID model peaks at epoch 1, but so does {reference} on some seed"
    return "not reproduced"


def one_epoch_rows(dataset: str, curves: Sequence[EpochCurve], n_epochs: int, grid_label: str) -> List[str]:
    """Markdown rows for one dataset: mean valid / test AUC after each epoch (with the number of seeds
    where early stopping left fewer), each seed's best-valid epoch, and mean test AUC epoch 1 -> best."""
    lines = [f"**{dataset}**", "",
             f"| model | item feature | {grid_label} | " + " | ".join(f"epoch {k}: valid / test" for k in range(1, n_epochs + 1))
             + " | best-valid epoch per seed | mean test AUC: epoch 1 -> best-valid epoch |",
             "|---|---|---|" + "---|" * n_epochs + "---|---|"]
    for c in curves:
        n_all = len(c.by_seed)
        cells = []
        for k in range(1, n_epochs + 1):
            v, t = c.at(k, 0), c.at(k, 1)
            if not v:
                cells.append("(stopped)")
                continue
            cells.append(f"{mean_std(v)[0]:.4f} / {mean_std(t)[0]:.4f}" + (f" ({len(v)} of {n_all} seeds)" if len(v) < n_all else ""))
        t1, tb = mean_std(c.at(1, 1))[0], c.best_test()
        best = ",".join(str(c.best[s]) for s in sorted(c.best))
        x = c.x if c.x is not None else "—"
        lines.append(f"| {c.variant} | {'raw IDs' if c.raw_ids else 'SIDs'} | {x} | " + " | ".join(cells)
                     + f" | {best} | {t1:.4f} -> {tb:.4f} ({tb - t1:+.4f}) |")
    return lines
