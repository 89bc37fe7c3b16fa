"""Negative sampling shared by dataset preparation (MovieLens negatives) and SASRec pre-training.

A user's history is a sorted array of unique keys ``user * stride + item`` (``stride`` > every item
id), so "did this user interact with this item" is one ``searchsorted`` for a whole batch of draws.
"""

from __future__ import annotations

import numpy as np

from store_rec.errors import DataError


def pair_keys(users: np.ndarray, items: np.ndarray, stride: int) -> np.ndarray:
    """Sorted unique keys ``users * stride + items`` (``int64``) of every (user, item) pair."""
    return np.unique(np.asarray(users, np.int64) * stride + np.asarray(items, np.int64))


def users_with_every_item(keys: np.ndarray, stride: int, catalog_size: int) -> np.ndarray:
    """Users (sorted) whose history ``keys`` (:func:`pair_keys`) holds at least ``catalog_size`` items:
    every catalog item, when their items are catalog items, so no negative can be drawn for them."""
    users, counts = np.unique(keys // stride, return_counts=True)
    return users[counts >= catalog_size]


def resample_train_negatives(rng: np.random.Generator, neg_items: np.ndarray, neg_users: np.ndarray,
                             neg_is_train: np.ndarray, train_catalog: np.ndarray, keys: np.ndarray, stride: int,
                             max_rounds: int = 1000, hint: str = "") -> np.ndarray:
    """``negatives_from: train_positives``: the sampled negatives of train rows (``neg_is_train``)
    whose item has no train positive are drawn again, uniformly over ``train_catalog`` (the items
    with a train positive; repeated entries weight an item, e.g. by its train positives for
    popularity-matched negatives), excluding the user's own items; every other negative is kept.

    Why: an item without a train positive (one whose only positives are in valid / test) would enter
    training only as a negative; it shares the OOV SID with every other such item (no pre-trained
    embedding exists for it), so the model learns "OOV SID = negative" and scores exactly the test
    positives of those items low (MovieLens, docs/RESULTS_FAIR.md). Such items are unknown at train time
    in production too. Valid / test negatives stay drawn from the whole catalogue (kept row for row:
    the evaluation sets do not change), so the cold items stay in the evaluation, on both classes."""
    out = np.array(neg_items, np.int64, copy=True)
    train_catalog = np.asarray(train_catalog, np.int64)
    known = np.zeros(int(max(out.max(initial=0), train_catalog.max(initial=0))) + 1, bool)
    known[train_catalog] = True
    redo = np.flatnonzero(np.asarray(neg_is_train, bool) & ~known[out])
    if len(redo) and len(train_catalog):
        out[redo] = sample_negatives(rng, train_catalog, np.asarray(neg_users, np.int64)[redo], keys, stride,
                                     max_rounds, hint)
    return out


def split_matched_negatives(rng: np.random.Generator, neg_users: np.ndarray, neg_split: np.ndarray,
                            pos_items: np.ndarray, pos_split: np.ndarray, keys: np.ndarray, stride: int,
                            max_rounds: int = 1000, hint: str = "", weighted: bool = True) -> np.ndarray:
    """``negatives_from: split_positives``: the negatives of each split are drawn from **that split's
    positives**, each positive one entry (an item is drawn in proportion to its positives in the
    split: popularity-matched per split), excluding the user's own items.

    Why: with a time split the later splits hold items that are new there (MovieLens at 600 users:
    27% of the test positives are items without a train positive), while catalogue-uniform negatives
    are almost all older items (2 of 1,200 test negatives). The target item's warm/cold state then
    predicts the label by itself, and test AUC mostly measures how high a model scores the shared OOV
    SID of unseen items, not how well it matches user and item (docs/RESULTS_SEQUENCE.md: every
    history model gains on warm items and loses only on that cold slice). Matched per split, an item
    is as frequent among a split's negatives as among its positives, so no item -- warm or cold --
    carries the label alone and AUC measures the user-item match. Train negatives are items with a
    train positive (as with ``train_positives``), weighted by popularity. The pools look at their own
    split's positives only, never at features, so no row sees a later interaction as a feature.

    ``neg_users`` / ``neg_split``: the user and split code of every negative to draw; ``pos_items`` /
    ``pos_split``: item and split code of every positive; ``weighted=False`` draws uniformly over the
    split's distinct positive items instead. Returns ``int64[len(neg_users)]``; raises
    ``DataError`` when a split with negatives has no positive, or (``sample_negatives``) when a user
    interacted with every item of a pool."""
    neg_users, neg_split = np.asarray(neg_users, np.int64), np.asarray(neg_split)
    pos_items, pos_split = np.asarray(pos_items, np.int64), np.asarray(pos_split)
    out = np.zeros(len(neg_users), np.int64)
    for code in np.unique(neg_split):
        idx = np.flatnonzero(neg_split == code)
        pool = np.sort(pos_items[pos_split == code]) if weighted else np.unique(pos_items[pos_split == code])
        if not len(pool):
            raise DataError(f"split {int(code)} has negatives to draw but no positive to draw them from{hint}")
        out[idx] = sample_negatives(rng, pool, neg_users[idx], keys, stride, max_rounds, hint)
    return out


def sample_negatives(rng: np.random.Generator, catalog: np.ndarray, users: np.ndarray, keys: np.ndarray,
                     stride: int, max_rounds: int = 1000, hint: str = "") -> np.ndarray:
    """One negative per entry of ``users``: uniform over ``catalog`` (the items that exist), with
    replacement, excluding the user's own items (``keys`` = :func:`pair_keys` with the same ``stride``).

    Vectorised rejection sampling: draw for every entry, then redraw the entries that hit their user's
    history until none does. The draws depend only on ``rng`` and the inputs. Returns ``int64[len(users)]``;
    raises ``DataError`` (ending with ``hint``) after ``max_rounds`` rounds.
    """
    m = len(users)
    out = catalog[rng.integers(0, len(catalog), size=m)]
    todo = np.arange(m)
    if not len(keys):
        return out
    last = len(keys) - 1
    for _ in range(max_rounds):
        k = users[todo] * stride + out[todo]
        pos = np.searchsorted(keys, k)
        hit = keys[np.minimum(pos, last)] == k
        todo = todo[hit]
        if not len(todo):
            return out
        out[todo] = catalog[rng.integers(0, len(catalog), size=len(todo))]
    raise DataError(f"negative sampling did not finish after {max_rounds} rounds: user {int(users[todo[0]])} "
                    f"interacted with almost every one of the {len(catalog)} catalog items{hint}")
