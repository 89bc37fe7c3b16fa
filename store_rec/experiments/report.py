"""``RESULTS.md`` and its plots from the runs' ``summary.json`` / ``metrics.jsonl`` files.

Per experiment kind:

* ``table``: mean +- std (over seeds) of test AUC / GAUC / LogLoss, GFLOPs per batch of 1024 and
  train samples/s per (dataset, variant), and for every dataset what the numbers say about the
  first variant (STORE) against the others: the difference of means and the larger seed std;
* ``epochs``: test AUC after every epoch (``train.epoch_end_splits`` includes test), one line per
  variant and dataset, and the AUC change from the first to the last epoch;
* ``sweep``: test AUC (and GFLOPs per batch, on a right axis from 0) against the swept value;
* ``fair``: the fair protocol (:mod:`store_rec.experiments.fair`): per dataset, every model at its
  grid point selected on valid (scores at each run's best-valid epoch), test AUC / LogLoss, and the
  paired per-seed test-AUC difference of the reference against it; then a claims table (the
  reference against the best non-extra rival on every dataset).

The epochs and sweep plots are drawn from a small JSON written beside them (``results/<name>.json``:
the plotted means, stds, seeds and GFLOPs), so ``store-rec experiments --replot results/<name>.json``
redraws a PNG without the run directories (:func:`replot`).

The statements are computed from the numbers, so they stay true when the numbers change; the
experiment's ``notes`` (hand-written) follow them. Every experiment says how many of its planned runs
had results ("9 of 9 runs"); one with only some (or none) still renders from what there is.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from store_rec.experiments.runner import Run
from store_rec.experiments.spec import ExperimentSpec, PaperSpec
from store_rec.fileio import atomic_path, atomic_write_json, atomic_write_text, ensure_inside

METRICS = ("auc", "gauc", "logloss")


def _ms(xs: Sequence[float]) -> Tuple[float, float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fmt(m: float, s: float, digits: int = 4) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _gflops(summaries: Sequence[Dict[str, Any]]) -> float:
    """Mean GFLOPs of one fwd+bwd per batch of 1024 over runs (their summary.json's ``tflops_per_batch``)."""
    return 1e3 * statistics.fmean(s["tflops_per_batch"] for s in summaries)


def _epoch_curve(run: Run) -> Dict[int, float]:
    """Test AUC after each epoch (1-based) from the run's metrics.jsonl."""
    out: Dict[int, float] = {}
    path = run.dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if r["split"] == "test" and r.get("auc") is not None:
                out[int(r["epoch"]) + 1] = float(r["auc"])
    return out


def _group(runs: List[Run]) -> Dict[Tuple[str, str, Any], List[Dict[str, Any]]]:
    g: Dict[Tuple[str, str, Any], List[Dict[str, Any]]] = {}
    for r in runs:
        s = json.loads(r.summary_path.read_text())
        s["_run"] = r
        g.setdefault((r.dataset, r.variant, r.x), []).append(s)
    return g


def _table(name: str, e: ExperimentSpec, runs: List[Run], fig_dir: Path) -> List[str]:
    g = _group(runs)
    lines = ["| dataset | model | seeds | test AUC | GAUC | LogLoss | GFLOPs/batch | samples/s |", "|---|---|---|---|---|---|---|---|"]
    stats: Dict[Tuple[str, str], Dict[str, Tuple[float, float]]] = {}
    for (dn, vn, _), ss in g.items():
        st = {m: _ms([s[m] for s in ss]) for m in METRICS}
        stats[(dn, vn)] = st
        lines.append(f"| {dn} | {vn} | {len(ss)} | {_fmt(*st['auc'])} | {_fmt(*st['gauc'])} | {_fmt(*st['logloss'])} | "
                     f"{_gflops(ss):.3g} | {statistics.fmean(s['samples_per_s'] for s in ss):.0f} |")
    lines.append("")
    first = next(iter(e.variants))
    for dn in e.datasets:
        if (dn, first) not in stats:
            continue
        ref_m, ref_s = stats[(dn, first)]["auc"]
        others = sorted(((stats[(dn, v)]["auc"], v) for v in e.variants if v != first and (dn, v) in stats), reverse=True)
        for (m, s), v in others:
            d = ref_m - m
            noise = max(ref_s, s)
            verdict = "above" if d > 0 else "below"
            lines.append(f"- {dn}: {first} is {abs(d):.4f} AUC {verdict} {v} (seed std up to {noise:.4f}"
                         f"{'; within noise' if abs(d) <= noise else ''}).")
        best = max(((stats[(dn, v)]["auc"][0], v) for v in e.variants if (dn, v) in stats))
        lines.append(f"- {dn}: highest mean test AUC: **{best[1]}** ({best[0]:.4f}).")
    lines += _pairs(e, g)
    notes = sorted({n for r in runs for n in r.notes})
    lines += [f"- note: {n}." for n in notes]
    return lines


def _pairs(e: ExperimentSpec, g: Dict[Tuple[str, str, Any], List[Dict[str, Any]]]) -> List[str]:
    """The experiment's ``pairs``: per dataset, A − B per seed both ran (same data, same seed), mean ± std."""
    from store_rec.experiments.fair import paired_difference

    rows = []
    for dn in e.datasets:
        for a, b in e.pairs:
            by_seed = [{int(s["_run"].seed): s for s in g.get((dn, v, None), [])} for v in (a, b)]
            cells, n = [], 0
            for metric in METRICS:
                m, sd, n = paired_difference(*({k: s[metric] for k, s in runs.items()} for runs in by_seed))
                cells.append("n/a" if math.isnan(m) else f"{m:+.4f} ± {sd:.4f}")
            if n:
                rows.append(f"| {dn} | {a} | {b} | {n} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "Paired per-seed differences A − B (mean ± std over the seeds both ran):", "",
            "| dataset | A | B | seeds | AUC A − B | GAUC A − B | LogLoss A − B |", "|---|---|---|---|---|---|---|", *rows]


def _epochs(name: str, e: ExperimentSpec, runs: List[Run], fig_dir: Path) -> List[str]:
    curves: Dict[Tuple[str, str], Dict[int, List[float]]] = {}
    for r in runs:
        for ep, auc in _epoch_curve(r).items():
            curves.setdefault((r.dataset, r.variant), {}).setdefault(ep, []).append(auc)
    lines = []
    series = []
    for dn in e.datasets:
        for vn in e.variants:
            c = curves.get((dn, vn), {})
            if not c:
                continue
            eps = sorted(c)
            ms = [_ms(c[k]) for k in eps]
            series.append({"dataset": dn, "variant": vn, "x": eps, "auc_mean": [m for m, _ in ms],
                           "auc_std": [s for _, s in ms], "seeds": [len(c[k]) for k in eps]})
            row = " | ".join(_fmt(m, s) for m, s in ms)
            lines.append(f"| {dn} | {vn} | {row} |")
            best_ep = eps[max(range(len(ms)), key=lambda j: ms[j][0])]
            lines.append(f"|  |  | change epoch {eps[0]} -> {eps[-1]}: {ms[-1][0] - ms[0][0]:+.4f}; best epoch {best_ep} |")
    png = _figure(fig_dir, name, {"kind": "epochs", "title": e.title, "x_label": "epoch", "datasets": list(e.datasets),
                                  "series": series})
    n_ep = max((max(c) for c in curves.values() if c), default=0)
    head = ["| dataset | model | " + " | ".join(f"epoch {k}" for k in range(1, n_ep + 1)) + " |",
            "|---|---|" + "---|" * n_ep]
    return head + lines + ["", f"![{name}](results/{png.name})"]


def _sweep(name: str, e: ExperimentSpec, runs: List[Run], fig_dir: Path) -> List[str]:
    g = _group(runs)
    lines = [f"| dataset | model | {e.sweep.label} | seeds | test AUC | GAUC | LogLoss | GFLOPs/batch |", "|---|---|---|---|---|---|---|---|"]
    series = []
    for dn in e.datasets:
        for vn in e.variants:
            pts = sorted((x, ss) for (d, v, x), ss in g.items() if d == dn and v == vn)
            if not pts:
                continue
            xs, aucs, gfl, seeds = [], [], [], []
            for x, ss in pts:
                st = {m: _ms([s[m] for s in ss]) for m in METRICS}
                t = _gflops(ss)
                lines.append(f"| {dn} | {vn} | {x} | {len(ss)} | {_fmt(*st['auc'])} | {_fmt(*st['gauc'])} | "
                             f"{_fmt(*st['logloss'])} | {t:.3g} |")
                xs.append(x)
                aucs.append(st["auc"])
                gfl.append(t)
                seeds.append(len(ss))
            series.append({"dataset": dn, "variant": vn, "x": xs, "auc_mean": [m for m, _ in aucs],
                           "auc_std": [s for _, s in aucs], "gflops": gfl, "seeds": seeds})
            lo, hi = min(range(len(xs)), key=lambda j: aucs[j][0]), max(range(len(xs)), key=lambda j: aucs[j][0])
            lines.append(f"|  |  | AUC range {aucs[lo][0]:.4f} ({e.sweep.label}={xs[lo]}) .. {aucs[hi][0]:.4f} "
                         f"({e.sweep.label}={xs[hi]}); GFLOPs {gfl[0]:.3g} -> {gfl[-1]:.3g} "
                         f"({_pct(gfl[0], gfl[-1])}) |  |  |  |  |  |")
    png = _figure(fig_dir, name, {"kind": "sweep", "title": e.title, "x_label": e.sweep.label,
                                  "datasets": list(e.datasets), "series": series})
    return lines + ["", f"![{name}](results/{png.name})"]


def _pct(a: float, b: float) -> str:
    return f"{100 * (b / a - 1):+.0f}%" if a else "n/a"


def _figure(fig_dir: Path, name: str, data: Dict[str, Any]) -> Path:
    """Write ``fig_dir/<name>.json`` (the plotted numbers) and draw ``fig_dir/<name>.png`` from it."""
    # names are validated by the spec; a plot is still never written outside its folder
    atomic_write_json(ensure_inside(fig_dir / f"{name}.json", fig_dir, f"plot data of experiments[{name!r}]"), data)
    return draw(data, ensure_inside(fig_dir / f"{name}.png", fig_dir, f"plot of experiments[{name!r}]"))


def replot(json_path: Path) -> Path:
    """Redraw the PNG beside a figure JSON written by :func:`write_results` (the JSON is only read)."""
    from store_rec.errors import UserError

    json_path = Path(json_path)
    try:
        data = json.loads(json_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{json_path}: cannot read a results figure JSON ({e})") from None
    if not isinstance(data, dict) or data.get("kind") not in ("epochs", "sweep") or "series" not in data:
        raise UserError(f"{json_path}: not a results figure JSON (needs kind 'epochs' or 'sweep' and 'series')")
    return draw(data, json_path.with_suffix(".png"))


def draw(data: Dict[str, Any], png: Path) -> Path:
    """:func:`figure` saved as ``png`` (atomically)."""
    import matplotlib.pyplot as plt

    fig = figure(data)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return png


def figure(data: Dict[str, Any]) -> Any:
    """A matplotlib figure of a figure JSON: one panel per dataset: test AUC (mean, error bars = sample std over the seeds) against the x value;
    for sweeps also GFLOPs per batch of 1024 on a labelled right axis that starts at 0, so a 6% change
    looks like 6%. Every series is in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in data["datasets"] if any(s["dataset"] == d for s in data["series"])] or data["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.6 * len(datasets), 4.0), squeeze=False)
    for i, dn in enumerate(datasets):
        ax = axes[0][i]
        handles = []
        ax2 = None
        mine = [s for s in data["series"] if s["dataset"] == dn]
        for k, sr in enumerate(mine):
            seeds = sorted(set(sr.get("seeds") or []))
            seed_txt = f"{seeds[0]} seeds" if len(seeds) == 1 else "seeds " + "/".join(map(str, seeds))
            h = ax.errorbar(sr["x"], sr["auc_mean"], yerr=sr["auc_std"], marker="o", capsize=3, color=f"C{k}",
                            label=f"{sr['variant']}: test AUC (mean ± std, {seed_txt})")
            handles.append(h)
            if data["kind"] == "sweep" and sr.get("gflops"):
                ax2 = ax2 or ax.twinx()
                g = sr["gflops"]
                (h2,) = ax2.plot(sr["x"], g, "s--", color="gray" if len(mine) == 1 else f"C{k}", alpha=0.8,
                                 label=f"{sr['variant']}: GFLOPs / batch ({g[0]:.3g} -> {g[-1]:.3g}, {_pct(g[0], g[-1])})")
                handles.append(h2)
        if ax2 is not None:
            top = max(v for sr in mine for v in sr.get("gflops") or [0])
            ax2.set_ylim(0, top * 1.35)  # from 0: the height of a change is its size; headroom for the legend
            ax2.set_ylabel("GFLOPs per batch of 1024 (fwd+bwd), from 0")
        xs = sorted({x for sr in mine for x in sr["x"]})
        if 0 < len(xs) <= 10:  # ticks at the measured values (no 1.5 layers)
            ax.set_xticks(xs)
        ax.set_title(dn)
        ax.set_xlabel(data["x_label"])
        ax.set_ylabel("test AUC")
        lo = min((m - s for sr in mine for m, s in zip(sr["auc_mean"], sr["auc_std"])), default=0.5)
        hi = max((m + s for sr in mine for m, s in zip(sr["auc_mean"], sr["auc_std"])), default=1.0)
        pad = max(hi - lo, 0.01)
        ax.set_ylim(lo - 0.55 * pad, hi + 0.1 * pad)  # room below the curves for the legend
        ax.grid(True, alpha=0.3)
        ax.legend(handles=handles, loc="lower left", fontsize=7)
    fig.suptitle(data.get("title", ""), fontsize=11)
    fig.tight_layout()
    return fig


KINDS = {"table": _table, "epochs": _epochs, "sweep": _sweep, "fair": lambda *a: _fair(*a)}


def _save(fig: Any, png: Path) -> Path:
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return png


def _fair(name: str, e: ExperimentSpec, runs: List[Run], fig_dir: Path) -> List[str]:
    from store_rec.experiments.fair import EpochCurve, best_valid_epoch, claim_row, epoch_scores, fair_table, select_all

    label = e.sweep.label if e.sweep is not None else "setting"
    rivals = [v for v, spec in e.variants.items() if v != e.reference and not spec.extra]
    lines: List[str] = [f"Selection: per model, the {label} with the best mean valid AUC over seeds (each run scored "
                        "at its best-valid epoch, early stopping on valid); test reported at that epoch. "
                        f"Last column: paired per-seed test-AUC difference {e.reference} − model, mean ± std.", ""]
    claims = ["| dataset | best rival (same features) | " + f"{e.reference} test AUC | rival test AUC | "
              f"{e.reference} − rival (paired) | seeds | outcome |", "|---|---|---|---|---|---|---|"]
    curves: Dict[str, List[Any]] = {}
    for dn in e.datasets:
        scores: Dict[str, Dict[Any, Dict[int, Any]]] = {}
        mine = [r for r in runs if r.dataset == dn]
        for r in mine:
            sc = best_valid_epoch(r.dir / "metrics.jsonl")
            if sc is not None:
                scores.setdefault(r.variant, {}).setdefault(r.x, {})[r.seed] = sc
        if not scores:
            continue
        sel = select_all({v: scores[v] for v in e.variants if v in scores})
        assert e.reference is not None  # validated by the spec for kind 'fair'
        lines += fair_table(dn, sel, e.reference, rivals, label) + [""]
        row = claim_row(dn, sel, e.reference, rivals)
        if row:
            claims.append(row)
        # the per-epoch curves of every model at its selected grid point (the One-Epoch section)
        curves[dn] = [EpochCurve(vn, s.x, {r.seed: epoch_scores(r.dir / "metrics.jsonl")
                                                     for r in mine if r.variant == vn and r.x == s.x},
                                      raw_ids=all(r.sids is None for r in mine if r.variant == vn))
                      for vn, s in sel.items()]
    notes = sorted({n for r in runs for n in r.notes})
    lines += ["Claims (generated from the numbers above):", ""] + claims + [""] + [f"- note: {n}." for n in notes]
    if curves:
        lines += [""] + _one_epoch(name, e, curves, label, fig_dir)
    return lines


def _one_epoch(name: str, e: ExperimentSpec, curves: Dict[str, List[Any]], label: str, fig_dir: Path) -> List[str]:
    """The fair runs read per epoch: the paper's One-Epoch claim (STORE keeps improving over epochs,
    raw-ID models peak after epoch 1), a table per dataset and a plot of test AUC per epoch."""
    from store_rec.experiments.fair import one_epoch_rows, one_epoch_verdict

    assert e.reference is not None
    n_ep = max((max(c.epochs) for cs in curves.values() for c in cs if c.epochs), default=0)
    lines = ["### One-Epoch: AUC per epoch (the same runs)", "",
             f"Every model at its selected {label}; mean over the seeds that trained that far (early stopping on valid "
             "ends a seed's run one epoch after its best; fewer seeds are marked). The paper's claim: STORE keeps "
             "improving over epochs while raw-ID models peak after epoch 1.", ""]
    verdicts = ["| dataset | " + f"{e.reference}'s best-valid epoch per seed | raw-ID model(s): best-valid epoch per seed | "
                "One-Epoch claim |", "|---|---|---|---|"]
    series = []
    for dn, cs in curves.items():
        lines += one_epoch_rows(dn, cs, n_ep, label) + [""]
        ref = next((c for c in cs if c.variant == e.reference), None)
        raw = [c for c in cs if c.raw_ids and c.variant != e.reference]
        fmt = lambda c: ",".join(str(c.best[s]) for s in sorted(c.best))  # noqa: E731
        verdicts.append(f"| {dn} | {fmt(ref) if ref else '—'}{' (on raw IDs)' if ref is not None and ref.raw_ids else ''} | "
                        + ("; ".join(f"{c.variant} {fmt(c)}" for c in raw) or "—") + f" | {one_epoch_verdict(cs, e.reference)} |")
        for c in cs:
            eps = c.epochs
            ms = [_ms(c.at(k, 1)) for k in eps]
            series.append({"dataset": dn, "variant": c.variant,
                           "x": eps, "auc_mean": [m for m, _ in ms], "auc_std": [s for _, s in ms],
                           "seeds": [len(c.at(k, 1)) for k in eps]})
    png = _figure(fig_dir, f"{name}_epochs", {"kind": "epochs", "title": f"{e.title}: test AUC per epoch",
                                              "x_label": "epoch", "datasets": list(curves), "series": series})
    return lines + ["Per dataset (generated from the best-valid epochs above):", ""] + verdicts + ["",
                                                                                               f"![{name}_epochs](results/{png.name})"]


def write_results(spec: PaperSpec, runs: List[Run], path: Path, command: str, tiny: bool, header: Optional[str] = None,
                  done: Optional[List[Run]] = None) -> Path:
    """Write ``path`` (markdown, atomically) and its PNGs into ``path.parent / "results"``.

    ``runs``: every planned run; ``done``: those whose results are current (default: every run with a
    ``summary.json``). Each planned experiment gets a section saying how many of its runs had results.
    """
    from store_rec.bench.common import machine_info

    fig_dir = path.parent / "results"
    fig_dir.mkdir(parents=True, exist_ok=True)
    done_dirs = {r.dir for r in (done if done is not None else [r for r in runs if r.summary_path.exists()])}
    info = machine_info()
    out = [
        "# store_rec results",
        "",
        f"Regenerate with `{command}`" + (" (**tiny mode**: smoke-sized data, not results)" if tiny else "") + ".",
        f"Machine: {info.get('cpu_model', '?')}, {info['cpu_count']} cores, torch {info['torch']}, torchrec {info['torchrec']}, "
        f"device {info['device']}. Each run: 1 process, 1 thread. Cells are mean ± sample std over the seeds listed.",
        "",
    ]
    if header:
        out += [header.strip(), ""]
    for name, e in spec.experiments.items():
        planned = [r for r in runs if r.experiment == name]
        if not planned:  # not selected (--only)
            continue
        mine = [r for r in planned if r.dir in done_dirs]
        seeds = sorted({r.seed for r in mine}) if mine else sorted({r.seed for r in planned})
        out += [f"## {e.title}", "", f"`{name}`: datasets {', '.join(e.datasets)}; seeds {seeds}; variants "
                f"{', '.join(e.variants)}; results: {len(mine)} of {len(planned)} runs"
                + ("." if len(mine) == len(planned) else " (the others are not trained yet or out of date)."), ""]
        if mine:
            out += KINDS[e.kind](name, e, mine, fig_dir)
        else:
            out.append("No results yet.")
        if e.notes.strip():
            out += ["", e.notes.strip()]
        out.append("")
    atomic_write_text(path, "\n".join(out) + "\n")
    return path
