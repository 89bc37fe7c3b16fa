"""Evaluation metrics that scale (store_rec.train.metrics.EvalMetrics) against the exact reference
functions (auc / gauc / logloss on every prediction): 1 process, and 2 gloo ranks with unequal
shards, ties and a rank without positives; the histogram AUC stays within its stated bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from store_rec.train.metrics import EvalMetrics, auc, gauc, histogram_auc, logloss


def _data(n=4000, seed=0):
    g = np.random.default_rng(seed)
    u = g.integers(0, 250, n)
    y = (g.random(n) < 0.3).astype(np.float32)
    x = (y * 0.8 + g.normal(size=n)).astype(np.float32)
    x[:300] = np.round(x[:300])  # ties
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(u)


def _reference(x, y, u):
    p = torch.sigmoid(x.double())
    ctr = float(y.double().mean())
    ll = logloss(x, y)
    return {"auc": auc(x, y), "gauc": gauc(x, y, u), "logloss": ll, "ctr": ctr,
            "calibration": float(p.sum() / y.double().sum()),
            "ne": ll / -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))}


def test_single_process_equals_the_exact_reference():
    x, y, u = _data()
    ref = _reference(x, y, u)
    m = EvalMetrics()
    for i in range(0, len(x), 333):  # batches of uneven size
        m.update(x[i:i + 333], y[i:i + 333], u[i:i + 333])
    got = m.compute()
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-12), k
    assert got["num_samples"] == len(x) and got["auc_error_bound"] == 0.0


def test_histogram_auc_within_its_bound_and_bound_is_tight_for_few_bins():
    x, y, _ = _data(seed=1)
    exact = auc(x, y)
    for bins in (16, 1024, 1 << 16):
        m = EvalMetrics(auc_method="histogram", bins=bins, gauc=False)
        m.update(x, y)
        got = m.compute()
        assert abs(got["auc"] - exact) <= got["auc_error_bound"] + 1e-15
        assert got["logloss"] == pytest.approx(logloss(x, y), rel=1e-12)
    assert got["auc_error_bound"] < 2e-3  # 65536 bins (most of it from the 300 exact ties)


def test_histogram_auc_by_hand():
    # bins ascending: pos [1, 0, 2], neg [1, 1, 0]: pairs (P=3, N=2): pos in bin 2 beat both negs (4),
    # pos in bin 0 ties the neg in bin 0 (1/2) and loses to bin 1 -> (4 + 0.5) / 6; bound 0.5 * 1 / 6
    a, bound = histogram_auc(np.array([1, 0, 2]), np.array([1, 1, 0]))
    assert a == pytest.approx(4.5 / 6) and bound == pytest.approx(0.5 / 6)
    assert all(math.isnan(v) for v in histogram_auc(np.array([0, 0]), np.array([1, 2])))


def _two_rank_worker():
    from store_rec.distributed.env import init_distributed

    env = init_distributed()
    x, y, u = _data()
    y = y.clone()
    y[3000:] = 0.0  # no positive on rank 1 (its AUC alone is undefined; the global one is not)
    lo, hi = (0, 3000) if env.rank == 0 else (3000, 4000)  # unequal shards
    out = {}
    for method in ("exact", "histogram"):
        m = EvalMetrics(auc_method=method)
        for i in range(lo, hi, 512):
            j = min(i + 512, hi)
            m.update(x[i:j], y[i:j], u[i:j])
        out[method] = m.compute()
    return out


def test_two_gloo_ranks_equal_the_reference_on_the_union():
    from store_rec.distributed.local_launch import launch_local

    x, y, u = _data()
    y = y.clone()
    y[3000:] = 0.0
    ref = _reference(x, y, u)
    outs = launch_local(_two_rank_worker, (), nproc=2)
    assert outs[0] == outs[1]  # every rank gets the same numbers
    for method, got in outs[0].items():
        for k in ("gauc", "logloss", "ctr", "calibration", "ne"):
            assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), (method, k)
        if method == "exact":
            assert got["auc"] == pytest.approx(ref["auc"], rel=1e-12) and got["auc_error_bound"] == 0.0
        else:
            assert abs(got["auc"] - ref["auc"]) <= got["auc_error_bound"] < 2e-3
        assert got["num_samples"] == 4000


def test_gauc_is_absent_when_some_rows_have_no_user():
    x, y, u = _data(n=600)
    m = EvalMetrics()
    m.update(x[:300], y[:300], u[:300])
    m.update(x[300:], y[300:], None)
    got = m.compute()
    assert got["gauc"] is None and got["auc"] == pytest.approx(auc(x, y), rel=1e-12)
