"""Plots a reader can trust, redrawn from committed JSON without re-running anything: the results
sweep puts GFLOPs on a labelled right axis from 0 with every series in the legend, `store-rec
experiments --replot` and `store-rec bench replot` rewrite PNG (+ table) from JSON only."""

from __future__ import annotations

import json

import pytest

from store_rec.cli import main

SWEEP = {
    "kind": "sweep", "title": "t: test AUC and GFLOPs vs sparsity", "x_label": "sparsity", "datasets": ["a", "b"],
    "series": [
        {"dataset": "a", "variant": "STORE", "x": [0.0, 0.5], "auc_mean": [0.70, 0.71], "auc_std": [0.01, 0.0],
         "gflops": [0.377, 0.35], "seeds": [3, 3]},
        {"dataset": "b", "variant": "STORE", "x": [0.0, 0.5], "auc_mean": [0.60, 0.61], "auc_std": [0.0, 0.0],
         "gflops": [0.2, 0.1], "seeds": [2, 2]},
    ],
}


def test_sweep_figure_has_gflops_axis_from_zero_and_a_legend_entry_per_series():
    import matplotlib.pyplot as plt

    from store_rec.experiments.report import figure

    fig = figure(SWEEP)
    try:
        ax, ax2 = fig.axes[0], fig.axes[2]  # panel a's AUC axis, then its twin (panel b's axes come between)
        assert ax.get_title() == "a" and ax2.get_ylim()[0] == 0.0  # a 7% FLOPs change is drawn as 7%, not a cliff
        assert "GFLOPs" in ax2.get_ylabel()
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["STORE: test AUC (mean ± std, 3 seeds)", "STORE: GFLOPs / batch (0.377 -> 0.35, -7%)"]
        assert fig._suptitle.get_text() == SWEEP["title"]
    finally:
        plt.close(fig)


def test_experiments_replot_redraws_png_from_json_only(tmp_path, capsys):
    j = tmp_path / "results" / "sp.json"
    j.parent.mkdir()
    j.write_text(json.dumps(SWEEP))
    assert main(["experiments", "--replot", str(j)]) == 0
    assert j.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "pie"}))
    assert main(["experiments", "--replot", str(bad)]) == 2
    assert "not a results figure JSON" in capsys.readouterr().err
    assert main(["experiments"]) == 2  # neither --config nor --replot


def test_bench_replot_rewrites_table_in_gflops_from_an_old_json(tmp_path, capsys):
    """A train-bench JSON from before the GFLOPs column (tflops_per_batch only) replots with GFLOPs."""
    rec = {"world_size": 1, "model": "store_moba", "seq_len": 70, "steps": 80, "batch_size": 512, "samples_per_s": 1285.0,
           "speedup_vs_vanilla": 1.25, "tflops_per_batch": 0.009843, "flops_ratio_vs_vanilla": 1.195, "train_time_s": 31.9}
    out = tmp_path / "train.json"
    out.write_text(json.dumps({"suite": "train", "machine": {}, "config": {}, "summary": {"x": 1.0}, "records": [rec]}))
    before = out.read_text()
    assert main(["bench", "replot", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| gflops_per_batch |" in md and "| 9.843 |" in md and "tflops" not in md
    assert out.with_suffix(".png").stat().st_size > 0 and out.read_text() == before  # the JSON is only read
    out.write_text(json.dumps({"suite": "nope", "records": []}))
    assert main(["bench", "replot", str(out)]) == 2
    assert "suite 'nope'" in capsys.readouterr().err


def test_bench_data_plot_is_log_scaled_with_every_bar_labelled():
    """Loader (~1e6/s) and train step (~1e4/s) differ by decades: a linear axis hid the train step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from store_rec.bench import data

    recs = [{"stage": "loader", "schema": "s", "mode": "shuffled", "batch_size": 8, "threads": 1, "samples_per_s": 1.7e6},
            {"stage": "train_step", "schema": "s", "mode": "shuffled", "batch_size": 8, "threads": 1, "samples_per_s": 1.8e4}]
    fig = data.figure(recs)
    try:
        ax = fig.axes[0]
        assert ax.get_yscale() == "log" and ax.get_ylim()[0] <= 1.8e4
        assert sorted(t.get_text() for t in ax.texts) == ["1.7M", "18k"]
        assert "loader (shuffled) / train step: s 94x" in ax.get_title()
    finally:
        plt.close(fig)


def test_plan_warns_on_imbalance_shows_no_plan_runs_and_replots(tmp_path, capsys):
    """3 tables table-wise on 8 / 16 ranks: most ranks hold nothing (HBM max/mean 6.6x, 13.3x) -> WARNING;
    row_wise is balanced -> none; data_parallel + fused has no plan -> kept as a run, drawn as such."""
    out = tmp_path / "plan"
    argv = ["plan", "--synthetic-tables", "3", "--rows-scale", "0.001", "--topology", "h100x8", "--world-sizes", "8,16",
            "--strategy", "table_wise,data_parallel,row_wise", "--kernel", "fused", "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    warned = sorted(line.split("]")[0][1:] for line in text.splitlines() if "WARNING" in line)
    assert warned == ["ws16_table_wise", "ws8_table_wise"]
    assert "HBM 6.6x the mean on one rank" in text and "(> --imbalance-warn 2)" in text
    payload = json.loads((out / "comparison.json").read_text())
    assert payload["meta"]["topology"] == "h100x8" and payload["meta"]["num_tables"] == 3
    assert payload["meta"]["description"] == "3 synthetic tables (1.81 M rows)"
    status = {(r["world_size"], r["strategy"]): r["status"] for r in payload["records"]}
    assert status[(8, "data_parallel")].startswith("no plan") and status[(16, "row_wise")] == "ok"
    assert len(payload["ranks"]["ws16_row_wise"]["hbm_gb"]) == 16 and "ws8_data_parallel" not in payload["ranks"]
    hbm = payload["ranks"]["ws8_table_wise"]["hbm_gb"]
    rec = next(r for r in payload["records"] if (r["world_size"], r["strategy"]) == (8, "table_wise"))
    assert rec["hbm_imbalance"] == pytest.approx(max(hbm) / (sum(hbm) / 8), rel=1e-3)  # the plotted per-rank data
    assert "3 synthetic tables" in (out / "comparison.md").read_text().splitlines()[0]  # title names what was planned
    for png in ("step_time.png", "peak_memory.png", "rank_memory.png"):
        (out / png).unlink()
    assert main(["plan", "--replot", str(out)]) == 0
    assert all((out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for png in ("step_time.png", "peak_memory.png", "rank_memory.png"))
    assert main([*argv, "--imbalance-warn", "1"]) == 2  # a threshold <= 1 is refused (before any planning)


def test_imbalance_warning_text():
    from store_rec.cli.plan import imbalance_warnings

    rec = {"hbm_imbalance": 33.1, "ddr_imbalance": 1.0, "perf_imbalance": 1.9, "peak_hbm_gb": 59.9, "step_time_ms": 2.4}
    assert imbalance_warnings(rec, 2.0) == "HBM 33.1x the mean on one rank (59.9 GB peak) (> --imbalance-warn 2)"
    assert imbalance_warnings(rec, 40.0) == ""
