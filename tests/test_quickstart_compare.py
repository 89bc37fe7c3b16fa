"""store-rec quickstart's comparison: each model scored at its own best-valid epoch, the winner and the
features printed, stale data refused (numbers asserted; no training)."""

from __future__ import annotations

import json

import pytest

from store_rec.cli.quickstart import check_data_params, comparison_lines, parse_baselines, score_run
from store_rec.errors import UserError


def _run(tmp_path, name, pairs, epochs_completed):
    d = tmp_path / name
    d.mkdir()
    rows = []
    for ep, (v, t) in enumerate(pairs):
        rows += [{"epoch": ep, "split": "valid", "auc": v, "logloss": 0.5},
                 {"epoch": ep, "split": "test", "auc": t, "logloss": 0.5 - ep / 100, "gauc": t - 0.01}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d / "summary.json").write_text(json.dumps({"auc": 0.1, "epochs_completed": epochs_completed, "samples_per_s": 1000.0,
                                                "tflops_per_batch": 1e-4, "steps": 10}))
    return d


def test_scores_at_best_valid_epoch_and_prints_winner_and_features(tmp_path):
    store = score_run(_run(tmp_path, "store", [(0.70, 0.69), (0.73, 0.72), (0.74, 0.735)], 3))
    dcn = score_run(_run(tmp_path, "dlrm_dcn", [(0.72, 0.71), (0.71, 0.74)], 2))  # its best *test* epoch is not used
    assert (store["best_epoch"], store["test_auc"], store["epochs_trained"]) == (3, 0.735, 3)
    assert (dcn["best_epoch"], dcn["test_auc"], dcn["test_logloss"]) == (1, 0.71, 0.5)
    feats = ["sid_0", "sid_1", "user(age)"]
    text = "\n".join(comparison_lines({"store": store, "dlrm_dcn": dcn}, {"store": feats, "dlrm_dcn": feats}, 3))
    assert "test AUC store - dlrm_dcn: +0.0250 -> store ahead on this seed (valid AUC +0.0200)" in text
    assert "same features for store and dlrm_dcn: sid_0, sid_1, user(age)" in text
    assert "   3 of 3" in text and "   1 of 2" in text
    text = "\n".join(comparison_lines({"store": dcn, "dlrm": store}, {"store": feats, "dlrm": feats[:1]}, 3))
    assert "-> dlrm ahead" in text and "features of dlrm (NOT the same as the others'): sid_0" in text
    with pytest.raises(UserError, match="no epoch with both a valid and a test AUC"):
        score_run(_run(tmp_path, "empty", [], 0))


def test_baselines_and_stale_data_are_checked(tmp_path):
    assert parse_baselines("dlrm_dcn, dlrm") == ["dlrm_dcn", "dlrm"]
    for bad in ("store", "dlrm,dlrm", "xgboost", ","):
        with pytest.raises(UserError, match="--baseline"):
            parse_baselines(bad)
    (tmp_path / "schema.json").write_text(json.dumps({"params": {"rows": 100, "items": 10, "generator": "v2", "seed": 0}}))
    check_data_params(tmp_path, {"rows": 100, "items": 10, "generator": "v2", "seed": 0})
    with pytest.raises(UserError, match="made with generator='v2', but --generator is 'v1'"):
        check_data_params(tmp_path, {"generator": "v1"})
    with pytest.raises(UserError, match="made with seed=0, but --seed is 1"):
        check_data_params(tmp_path, {"seed": 1})
    (tmp_path / "schema.json").write_text(json.dumps({"params": {"rows": 100}}))  # generator v1 records no generator
    with pytest.raises(UserError, match="made with generator='v1', but --generator is 'v2'"):
        check_data_params(tmp_path, {"generator": "v2"})
    check_data_params(tmp_path, {"generator": "v1", "rows": 100})
