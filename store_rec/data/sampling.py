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
