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


def _curve_rows(pairs):
    rows = []
    for ep, (v, t) in enumerate(pairs):
        rows += [{"epoch": ep, "split": "valid", "auc": v}, {"epoch": ep, "split": "test", "auc": t}]
    return rows


def test_one_epoch_curves_table_and_verdict(tmp_path):
    from store_rec.experiments.fair import EpochCurve, epoch_scores, one_epoch_rows, one_epoch_verdict

    p = _jsonl(tmp_path / "m.jsonl", _curve_rows([(0.70, 0.69), (0.74, 0.73), (0.73, 0.72)]) +
               [{"epoch": 3, "split": "valid", "auc": 0.75}])  # an epoch without test is left out
    assert epoch_scores(p) == {1: (0.70, 0.69), 2: (0.74, 0.73), 3: (0.73, 0.72)}
    assert epoch_scores(tmp_path / "missing.jsonl") == {}
    store = EpochCurve("STORE", 0.005, {0: {1: (0.70, 0.69), 2: (0.74, 0.73), 3: (0.73, 0.72)},
                                        1: {1: (0.71, 0.70), 2: (0.72, 0.71), 3: (0.75, 0.74)}}, raw_ids=False)
    raw = EpochCurve("DLRM (raw IDs)", 0.005, {0: {1: (0.72, 0.71), 2: (0.70, 0.70)},
                                                1: {1: (0.73, 0.72), 2: (0.71, 0.70)}}, raw_ids=True)
    assert store.best == {0: 2, 1: 3} and raw.best == {0: 1, 1: 1}
    assert store.best_test() == pytest.approx((0.73 + 0.74) / 2)  # each seed's test at its own best-valid epoch
    assert one_epoch_verdict([store, raw], "STORE") == "reproduced"
    # a raw-ID model that improves past epoch 1 on one seed: only half of the claim
    raw2 = EpochCurve("DLRM (raw IDs)", 0.005, {0: {1: (0.72, 0.71), 2: (0.73, 0.70)}, 1: raw.by_seed[1]}, raw_ids=True)
    assert one_epoch_verdict([store, raw2], "STORE").startswith("half: STORE improves")
    assert one_epoch_verdict([EpochCurve("STORE", None, store.by_seed, raw_ids=True), raw], "STORE").startswith("not testable")
    rows = "\n".join(one_epoch_rows("synthetic", [store, raw], 3, "lr"))
    assert "| STORE | SIDs | 0.005 | 0.7050 / 0.6950 | 0.7300 / 0.7200 | 0.7400 / 0.7300 | 2,3 | 0.6950 -> 0.7350 (+0.0400) |" in rows
    assert "| DLRM (raw IDs) | raw IDs | 0.005 | 0.7250 / 0.7150 | 0.7050 / 0.7000 | (stopped) | 1,1 |" in rows


def test_cold_and_warm_test_auc_are_read_and_shown(tmp_path):
    rows = [{"epoch": 0, "split": "valid", "auc": 0.7},
            {"epoch": 0, "split": "test", "auc": 0.71, "logloss": 0.5, "auc_cold": 0.6, "auc_warm": 0.74}]
    s = best_valid_epoch(_jsonl(tmp_path / "m.jsonl", rows))
    assert (s.test_auc_cold, s.test_auc_warm) == (0.6, 0.74)
    sel = select_all({"STORE": {None: {0: s, 1: RunScore(0, 0.7, 0.73, 0.5, None, 0.62, 0.76)}}})
    table = fair_table("ml", sel, "STORE", [], "lr")
    assert "test AUC cold items | test AUC warm items" in table[2]
    assert "| 0.6100 ± 0.0141 | 0.7500 ± 0.0141 |" in table[4]
    plain = fair_table("ml", select_all({"STORE": {None: {0: RunScore(0, 0.7, 0.71, 0.5)}}}), "STORE", [], "lr")
    assert "cold" not in plain[2]  # a dataset without an item feature has no slice columns


def test_restrict_to_datasets_and_variants_and_the_shipped_sid_ablation():
    from pathlib import Path

    from store_rec.errors import UserError
    from store_rec.experiments.spec import load_spec, restrict

    spec = load_spec(str(Path(__file__).resolve().parents[1] / "configs" / "experiments" / "fair.yaml"))
    assert spec.datasets["movielens"].prepare.set["negatives_from"] == "train_positives"
    ab = spec.experiments["sid_embedding_store"]
    assert {v.set[-1] for n, v in ab.variants.items() if n != "STORE"} == {
        "data.sid_embedding=prefix_ngram", "data.sid_embedding=tuple_hash"}
    r = restrict(spec, ["movielens"], ["STORE", "DLRM"])
    assert list(r.experiments) == ["fair"]  # the ablations run on synthetic_v2 only
    assert r.experiments["fair"].datasets == ["movielens"] and list(r.experiments["fair"].variants) == ["STORE", "DLRM"]
    assert spec.experiments["fair"].datasets != ["movielens"]  # the input spec is left as it was
    with pytest.raises(UserError, match="--datasets: unknown"):
        restrict(spec, ["nope"])
    with pytest.raises(UserError, match="keep it in --variants"):
        restrict(spec, None, ["DLRM"])
