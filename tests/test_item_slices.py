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


# ----------------------------------------------------------------------- negatives and the warm set
def _ml_root(shared_datasets, tmp_path):
    """A ratings.dat of 30 users over 40 movies (movies 31..40 only ever a user's last or
    second-to-last positive: positives in valid / test only, none in train)."""
    root = tmp_path / "ml"
    root.mkdir()
    for n in ("users.dat", "movies.dat"):
        (root / n).write_bytes((shared_datasets / "ml-1m" / "grouplens" / n).read_bytes())
    r = np.random.default_rng(0)
    lines = []
    for u in range(1, 31):
        hist = list(r.choice(np.arange(1, 31), size=8, replace=False)) + list(r.choice(np.arange(31, 41), 2, replace=False))
        lines += [f"{u}::{m}::5::{t}" for t, m in enumerate(hist)]
    (root / "ratings.dat").write_text("\n".join(lines) + "\n")
    return root


def _rows(out, split):
    from store_rec.data.schema import DatasetSchema
    from store_rec.data.vocab import load_vocab

    import pyarrow.parquet as pq

    s = DatasetSchema.load(out)
    mv = load_vocab(out, "movie_id")
    t = pq.read_table(out / s.splits[split].files[0])
    return list(zip(t.column("user_key").to_pylist(), mv.decode(t.column("movie_id").to_numpy()),
                    t.column("label").to_pylist())), t


def test_movielens_train_negatives_only_from_movies_with_a_train_positive(shared_datasets, tmp_path):
    from store_rec.data.prepare import prepare
    from store_rec.data.slices import item_slices

    root = _ml_root(shared_datasets, tmp_path)
    new = prepare("movielens", str(root), tmp_path / "new", neg_ratio=3)
    old = prepare("movielens", str(root), tmp_path / "old", neg_ratio=3, negatives_from="catalog")
    assert new.params["negatives_from"] == "train_positives" and old.params["negatives_from"] == "catalog"
    warm = {str(m) for m in range(1, 31)}  # the movies with a train positive
    new_train, _ = _rows(tmp_path / "new", "train")
    old_train, _ = _rows(tmp_path / "old", "train")
    assert {m for _, m, y in new_train if y == 1.0} == warm
    assert all(m in warm for _, m, y in new_train if y == 0.0)  # no train negative on a cold movie
    cold_negs = sum(1 for _, m, y in old_train if y == 0.0 and m not in warm)
    assert cold_negs > 0 and new.params["train_negatives_resampled"] == cold_negs  # ... which the old rule drew
    for split in ("valid", "test"):  # the evaluation sets are unchanged, row for row, but for the vocabulary:
        a, _ = _rows(tmp_path / "new", split)  # a cold movie is no longer in train, so it is OOV (None) now
        b, _ = _rows(tmp_path / "old", split)
        assert len(a) == len(b) and [(u, y) for u, _, y in a] == [(u, y) for u, _, y in b]
        assert all(m == n or (m is None and n not in warm) for (_, m, _), (_, n, _) in zip(a, b))
        assert any(m is None and y == 1.0 for _, m, y in a) and any(m is None and y == 0.0 for _, m, y in a)
    # negatives are never the user's own movies
    hist = {}
    for line in (root / "ratings.dat").read_text().split():
        u, m, _, _ = line.split("::")
        hist.setdefault(int(u), set()).add(m)
    assert all(m not in hist[u] for u, m, y in new_train if y == 0.0)
    # the warm set of the dataset: vocab ids of the movies with a train positive
    from store_rec.data.vocab import load_vocab

    sl = item_slices(tmp_path / "new")
    mv = load_vocab(tmp_path / "new", "movie_id")
    assert sl.feature == "movie_id" and sorted(mv.decode(np.flatnonzero(sl.warm))) == sorted(warm)
    _, t = _rows(tmp_path / "new", "test")
    codes = sl.codes(t.column("movie_id").to_numpy())
    assert set(codes.tolist()) == {0, 1}
    assert all((c == 1) == (m is None or m not in warm) for c, (_, m, _) in zip(codes, _rows(tmp_path / "new", "test")[0]))


def test_interaction_log_train_negatives_only_from_items_with_a_train_positive(tmp_path):
    from store_rec.data.prepare import prepare

    r = np.random.default_rng(1)
    lines = ["user,item,ts"]
    for u in range(30):
        hist = list(r.choice(30, size=8, replace=False)) + list(r.choice(np.arange(30, 40), 2, replace=False))
        lines += [f"u{u},i{i},{t}" for t, i in enumerate(hist)]
    src = tmp_path / "log.csv"
    src.write_text("\n".join(lines) + "\n")
    out = {}
    for mode in ("train_positives", "catalog"):
        for strategy in ("uniform", "popularity"):
            sch = tmp_path / f"{mode}_{strategy}.yaml"
            sch.write_text("kind: interactions\ncolumns:\n  user: {role: user_key}\n  item: {role: id, item_key: true}\n"
                           f"  ts: {{role: timestamp}}\ninteractions: {{negatives: {{strategy: {strategy}, ratio: 3, "
                           f"sample_from: {mode}}}}}\n")
            d = tmp_path / f"{mode}_{strategy}"
            s = prepare("table", str(src), d, schema=str(sch))
            from store_rec.data.vocab import load_vocab

            import pyarrow.parquet as pq

            iv = load_vocab(d, "item")
            t = pq.read_table(d / s.splits["train"].files[0])
            items = iv.decode(t.column("item").to_numpy())
            out[(mode, strategy)] = (s, [(i, y) for i, y in zip(items, t.column("label").to_pylist())])
    warm = {f"i{i}" for i in range(30)}
    for strategy in ("uniform", "popularity"):
        s, rows = out[("train_positives", strategy)]
        assert s.params["negatives_sample_from"] == "train_positives"
        assert all(i in warm for i, y in rows if y == 0.0)
        _, old = out[("catalog", strategy)]
        assert any(i not in warm for i, y in old if y == 0.0)


def test_split_matched_negatives_draw_each_split_from_its_own_positives_by_popularity():
    from store_rec.data.sampling import pair_keys, split_matched_negatives
    from store_rec.errors import DataError

    # split 0's positives: item 1 x 90, item 2 x 10; split 2's: item 3 x 5, item 4 x 5
    pos_items = np.array([1] * 90 + [2] * 10 + [3] * 5 + [4] * 5)
    pos_split = np.array([0] * 100 + [2] * 10)
    users = np.array([9] * 4000 + [8] * 1000)  # user 8 interacted with item 3
    split = np.array([0] * 4000 + [2] * 1000)
    keys = pair_keys(np.array([8]), np.array([3]), 10)
    out = split_matched_negatives(np.random.default_rng(0), users, split, pos_items, pos_split, keys, 10)
    assert set(out[:4000].tolist()) == {1, 2} and abs((out[:4000] == 1).mean() - 0.9) < 0.02  # popularity-matched
    assert set(out[4000:].tolist()) == {4}  # only split 2's items, never the user's own item 3
    uni = split_matched_negatives(np.random.default_rng(0), users[:4000], split[:4000], pos_items, pos_split, keys, 10,
                                  weighted=False)
    assert abs((uni == 1).mean() - 0.5) < 0.03  # distinct items alike
    with pytest.raises(DataError, match="split 1 has negatives to draw but no positive"):
        split_matched_negatives(np.random.default_rng(0), users[:3], np.array([1, 1, 1]), pos_items, pos_split, keys, 10)


def test_movielens_split_positives_makes_new_movies_negatives_of_their_split_too(shared_datasets, tmp_path):
    """With a time split the valid / test positives here are all movies without a train positive
    (31..40): catalogue-uniform negatives are almost never such movies, so "new movie" gives the label
    away; ``split_positives`` draws each split's negatives from that split's positives."""
    from store_rec.data.prepare import prepare

    root = _ml_root(shared_datasets, tmp_path)
    new = prepare("movielens", str(root), tmp_path / "m", neg_ratio=3, negatives_from="split_positives")
    assert prepare("movielens", str(root), tmp_path / "o", neg_ratio=3).params["negatives_from"] == "train_positives"
    assert new.params["negatives_from"] == "split_positives"
    hist = {}
    for line in (root / "ratings.dat").read_text().split():
        u, m, _, _ = line.split("::")
        hist.setdefault(int(u), set()).add(m)
    warm = {str(m) for m in range(1, 31)}
    for split in ("train", "valid", "test"):
        rows, _ = _rows(tmp_path / "m", split)
        pos = {m for _, m, y in rows if y == 1.0}
        negs = [(u, m) for u, m, y in rows if y == 0.0]
        assert len(negs) == 3 * sum(1 for _, _, y in rows if y == 1.0)
        assert {m for _, m in negs} <= pos  # drawn from the split's own positives ...
        assert all(m not in hist[u] for u, m in negs if m is not None)  # ... never the user's own movies
        if split != "train":  # every valid / test positive is a new (OOV) movie: so is every negative now
            assert all(m is None for _, m in negs)
            old_rows, _ = _rows(tmp_path / "o", split)
            assert sum(1 for _, m, y in old_rows if y == 0.0 and m is None) < len(negs) / 2
        else:
            assert all(m in warm for _, m in negs)
    # the generic interaction log has the same option
    r = np.random.default_rng(1)
    lines = ["user,item,ts"]
    for u in range(30):
        h = list(r.choice(30, size=8, replace=False)) + list(r.choice(np.arange(30, 40), 2, replace=False))
        lines += [f"u{u},i{i},{t}" for t, i in enumerate(h)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "s.yaml").write_text("kind: interactions\ncolumns:\n  user: {role: user_key}\n  item: {role: id, item_key: true}\n"
                                     "  ts: {role: timestamp}\ninteractions: {negatives: {strategy: popularity, ratio: 2, "
                                     "sample_from: split_positives}}\n")
    s = prepare("table", str(tmp_path / "log.csv"), tmp_path / "t", schema=str(tmp_path / "s.yaml"))
    assert s.params["negatives_sample_from"] == "split_positives"
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "t" / s.splits["test"].files[0])
    lab = np.asarray(t.column("label").to_pylist())
    item = t.column("item").to_numpy()
    assert set(item[lab == 0].tolist()) <= set(item[lab == 1].tolist()) and (lab == 0).sum() == 2 * (lab == 1).sum()
