"""Cold / warm target-item slice AUCs (store_rec.train.metrics.slice_aucs, EvalMetrics with
slices, store_rec.data.slices): hand-computed values, the decomposition of the AUC into the
slices' AUCs, the streaming / histogram / 2-rank paths against the reference, and the warm set of a
prepared dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from store_rec.train.metrics import EvalMetrics, auc, slice_aucs

NAMES = ("warm", "cold")


def test_slice_aucs_by_hand():
    # rows: (score, label, slice): warm pos 0.9; cold pos 0.5 and 0.6; negs 0.5 (warm), 0.1 (cold), 0.5 (cold)
    s = np.array([0.9, 0.5, 0.5, 0.1, 0.6, 0.5])
    y = np.array([1, 1, 0, 0, 1, 0])
    g = np.array([0, 1, 0, 1, 1, 1])
    got = slice_aucs(s, y, g, NAMES)
    # warm positive 0.9 beats all 3 negatives: 3/3
    assert got["auc_warm"] == pytest.approx(1.0)
    # cold positives vs every negative: 0.5 -> tie, win, tie = 2; 0.6 -> 3 wins: 5 / 6
    assert got["auc_cold"] == pytest.approx(5 / 6)
    # within warm: 0.9 vs 0.5 -> 1; within cold: 0.5 vs {0.1, 0.5} = 1.5, 0.6 vs both = 2 -> 3.5 / 4
    assert got["auc_within_warm"] == pytest.approx(1.0)
    assert got["auc_within_cold"] == pytest.approx(3.5 / 4)
    assert (got["positives_warm"], got["negatives_warm"], got["positives_cold"], got["negatives_cold"]) == (1, 1, 2, 2)
    # the slices' AUCs decompose the AUC: (1 * 1 + 2 * 5/6) / 3 = 8/9
    assert auc(s, y) == pytest.approx(8 / 9)
    assert (1 * got["auc_warm"] + 2 * got["auc_cold"]) / 3 == pytest.approx(auc(s, y))


def test_slice_without_positives_is_nan_and_rows_without_slice_are_left_out():
    s = np.array([0.3, 0.2, 0.9, 0.4])
    y = np.array([1, 0, 0, 1])
    g = np.array([0, 1, -1, 0])  # the 0.9 negative is in no slice, but it is a negative of the split
    got = slice_aucs(s, y, g, NAMES)
    assert math.isnan(got["auc_cold"]) and math.isnan(got["auc_within_cold"])
    assert got["auc_warm"] == pytest.approx(2 / 4)  # 0.3, 0.4 beat 0.2 and lose to 0.9
    assert math.isnan(got["auc_within_warm"])  # warm has no negative
    with pytest.raises(ValueError, match="slices"):
        slice_aucs(s, y, np.array([0, 2, 0, 0]), NAMES)


def _data(n=3000, seed=0):
    r = np.random.default_rng(seed)
    y = (r.random(n) < 0.3).astype(np.float32)
    g = (r.random(n) < 0.2).astype(np.int64)  # 20 % cold rows
    x = (y * (1.0 - 0.8 * g) + r.normal(size=n)).astype(np.float32)  # cold positives are harder
    x[:200] = np.round(x[:200])  # ties
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g)


def test_eval_metrics_slices_equal_the_reference_exact_and_histogram():
    x, y, g = _data()
    ref = slice_aucs(x, y, g, NAMES)
    assert ref["auc_cold"] < ref["auc_warm"] - 0.1
    P = ref["positives_warm"] + ref["positives_cold"]
    assert (ref["positives_warm"] * ref["auc_warm"] + ref["positives_cold"] * ref["auc_cold"]) / P == pytest.approx(auc(x, y))
    for method in ("exact", "histogram"):
        m = EvalMetrics(auc_method=method, gauc=False, slice_names=NAMES)
        for i in range(0, len(x), 701):
            m.update(x[i:i + 701], y[i:i + 701], None, g[i:i + 701])
        got = m.compute()
        for k, v in ref.items():
            if method == "exact" or k.startswith(("positives", "negatives")):
                assert got[k] == pytest.approx(v, rel=1e-12), (method, k)
            else:  # same-bin pairs counted 1/2: within 2e-3 at 65536 bins (mostly the exact ties)
                assert abs(got[k] - v) < 2e-3, (method, k)


def _two_rank_worker():
    from store_rec.distributed.env import init_distributed

    env = init_distributed()
    x, y, g = _data()
    lo, hi = (0, 2000) if env.rank == 0 else (2000, 3000)
    out = {}
    for method in ("exact", "histogram"):
        m = EvalMetrics(auc_method=method, gauc=False, slice_names=NAMES)
        m.update(x[lo:hi], y[lo:hi], None, g[lo:hi])
        out[method] = m.compute()
    return out


def test_two_gloo_ranks_slice_aucs_equal_the_reference_on_the_union():
    from store_rec.distributed.local_launch import launch_local

    x, y, g = _data()
    ref = slice_aucs(x, y, g, NAMES)
    outs = launch_local(_two_rank_worker, (), nproc=2)
    assert outs[0] == outs[1]
    for k, v in ref.items():
        assert outs[0]["exact"][k] == pytest.approx(v, rel=1e-12), k
        assert abs(outs[0]["histogram"][k] - v) < 2e-3, k
