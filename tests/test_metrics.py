"""AUC / GAUC / LogLoss against hand computations, and the distributed gather."""

import math

import numpy as np
import pytest
import torch

from store_rec.train.metrics import auc, gauc, logloss


def mann_whitney(scores, labels):
    """Pairwise definition: P(score_pos > score_neg) + 1/2 P(tie)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_hand_case_with_ties():
    s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    y = [0, 0, 1, 1, 1, 0]
    # pairs (pos vs neg): 0.35>0.1, 0.35<0.4, 0.35<0.4 | 0.8 beats all 3 | 0.4>0.1, 0.4=0.4 (1/2), 0.4=0.4 (1/2)
    assert auc(torch.tensor(s), torch.tensor(y)) == pytest.approx((1 + 3 + 2) / 9)
    assert auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(mann_whitney(s, y))


def test_auc_random_matches_pairwise():
    g = np.random.default_rng(0)
    s = np.round(g.normal(size=300), 1)  # many ties
    y = (g.random(300) < 0.3).astype(int)
    assert auc(s, y) == pytest.approx(mann_whitney(s, y), abs=1e-12)
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def test_gauc_weighted_and_skips_one_class_users():
    s = np.array([0.9, 0.1, 0.5, 0.7, 0.2, 0.3, 0.6, 0.4])
    y = np.array([1, 0, 0, 1, 1, 0, 1, 1])
    u = np.array([1, 1, 2, 2, 2, 3, 4, 4])  # user 4 has only positives: skipped; user 3 one row: skipped
    a1 = mann_whitney(s[u == 1], y[u == 1])  # 1.0
    a2 = mann_whitney(s[u == 2], y[u == 2])  # pos 0.7, 0.2 vs neg 0.5 -> 0.5
    assert (a1, a2) == (1.0, 0.5)
    assert gauc(s, y, u) == pytest.approx((2 * a1 + 3 * a2) / 5)


def test_logloss_hand():
    x = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    p = torch.sigmoid(x)
    want = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert logloss(x, y) == pytest.approx(float(want), rel=1e-9)
