"""Fair protocol: best-valid epoch, selection on valid, paired differences (numbers asserted)."""

from __future__ import annotations

import json

import pytest

from store_rec.experiments.fair import (RunScore, best_valid_epoch, claim_row, fair_table, paired_difference, select,
                                        select_all, verdict)


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_best_valid_epoch_reads_test_at_the_best_valid_epoch(tmp_path):
    rows = []
    for ep, (v, t) in enumerate([(0.70, 0.71), (0.74, 0.72), (0.73, 0.76)]):
        rows += [{"epoch": ep, "split": "valid", "auc": v, "logloss": 0.5},
                 {"epoch": ep, "split": "test", "auc": t, "logloss": 0.4 + ep, "gauc": 0.6}]
    rows.append({"epoch": 3, "split": "valid", "auc": float("nan")})  # a NaN epoch never wins
    s = best_valid_epoch(_jsonl(tmp_path / "m.jsonl", rows))
    assert s == RunScore(1, 0.74, 0.72, 1.4, 0.6)  # not the best *test* epoch (0.76)
    assert best_valid_epoch(tmp_path / "missing.jsonl") is None


def test_selection_uses_mean_valid_and_pairs_seeds():
    def rs(v, t):
        return RunScore(0, v, t, 0.5)

    grid = {0.002: {0: rs(0.70, 0.80), 1: rs(0.72, 0.80)},   # best test, worse valid
            0.005: {0: rs(0.73, 0.75), 1: rs(0.73, 0.74)}}
    assert select(grid) == 0.005
    assert select({**grid, 0.01: {0: rs(0.99, 0.9)}}) == 0.005  # a point missing a seed is not compared
    m, s, n = paired_difference({0: 0.75, 1: 0.74, 2: 0.9}, {0: 0.74, 1: 0.72})
    assert n == 2 and m == pytest.approx(0.015) and s == pytest.approx(0.00707107, rel=1e-5)
    assert verdict(0.015, 0.007, 2) == "ahead by >= 1 std"
    assert verdict(-0.002, 0.01, 3) == "within 1 std (tie)"
    sel = select_all({"STORE": grid, "DLRM": {0.002: {0: rs(0.71, 0.70), 1: rs(0.71, 0.72)}}})
    assert sel["STORE"].x == 0.005 and sel["DLRM"].x == 0.002
    table = "\n".join(fair_table("synthetic", sel, "STORE", ["DLRM"], "lr"))
    assert "+0.0350 ± 0.0212 (ahead by >= 1 std)" in table
    assert claim_row("synthetic", sel, "STORE", ["DLRM"]).startswith("| synthetic | DLRM | 0.7450 | 0.7100 | +0.0350")
