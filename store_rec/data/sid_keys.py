"""SID embedding schemes: which embedding-table ids (KJT keys) an item's semantic-ID tuple becomes.

An item's SIDs are ``(s_0, .., s_{K-1})``, each in ``[0, C]`` (``C`` = the OOV SID of an item
without a row in the SID table). ``data.sid_embedding`` picks the keys the loader puts in the batch
(every model embeds the keys it is given, one table per key):

* ``position`` (default): ``sid_k = s_k``, K keys of ``C + 1`` ids -- one table per position (the
  STORE paper; tokens of different items share a row whenever they share one code).
* ``prefix_ngram``: ``sid_k`` = the id of the prefix ``(s_0, .., s_k)``, K keys of ``(C + 1)^(k+1)``
  ids ("Better Generalization with Semantic IDs", Singh et al. 2023, the prefix-n-gram variant:
  items share the rows of their common coarse prefixes, and the last key is the full tuple). The
  key names stay ``sid_0 .. sid_{K-1}``; their meaning is the prefix.
* ``tuple_hash``: the K position keys plus ``sid_tuple`` = the id of the full tuple (memorisation of
  the exact SID next to the shared per-position codes): K + 1 keys.

Ids are exact (mixed radix ``p_k = p_{k-1} (C + 1) + s_k``) while ``(C + 1)^(k+1) <=
sid_hash_buckets``; beyond that the prefix is hashed (64-bit multiply-xorshift over the codes, so
equal prefixes collide always and different ones with probability ~1 / buckets) into
``sid_hash_buckets`` ids. K = 3, C = 16 (the shipped shape): 17 / 289 / 4,913 ids, all exact.

:func:`sid_key_shapes` gives the key names and table sizes (the schema), :func:`sid_key_ids` the
ids of every item (the loader's lookup table), from the same rule.
"""

from __future__ import annotations

import re
from typing import List, Sequence, Tuple

import numpy as np

#: ``data.sid_embedding`` values
SID_EMBEDDINGS = ("position", "prefix_ngram", "tuple_hash")
DEFAULT_HASH_BUCKETS = 1 << 18

_M1 = np.uint64(0x9E3779B97F4A7C15)
_M2 = np.uint64(0xBF58476D1CE4E5B9)


def _check(scheme: str, codebook_size: int, buckets: int) -> None:
    if scheme not in SID_EMBEDDINGS:
        raise ValueError(f"sid_embedding: {scheme!r} is not one of {SID_EMBEDDINGS}")
    if codebook_size < 1 or buckets < 2:
        raise ValueError(f"codebook_size {codebook_size} / sid_hash_buckets {buckets}: need >= 1 / >= 2")


def _prefix_sizes(k: int, codebook_size: int, buckets: int) -> List[int]:
    """Table size of each prefix length 1..k: ``min((C + 1)^n, buckets)``."""
    return [min((codebook_size + 1) ** (n + 1), buckets) for n in range(k)]


def tuple_key_name(names: Sequence[str]) -> str:
    """``sid_tuple`` for ``sid_0..`` (the position keys' common stem + ``tuple``)."""
    stem = re.sub(r"\d+$", "", names[0]) if names else "sid_"
    return f"{stem}tuple"


def sid_key_shapes(names: Sequence[str], codebook_size: int, scheme: str = "position",
                   buckets: int = DEFAULT_HASH_BUCKETS) -> Tuple[List[str], List[int]]:
    """``(key names, table sizes)`` of the SID keys for the table's columns ``names`` (``sid_0..``)."""
    _check(scheme, codebook_size, buckets)
    k = len(names)
    pos = [codebook_size + 1] * k
    if scheme == "position":
        return list(names), pos
    prefix = _prefix_sizes(k, codebook_size, buckets)
    if scheme == "prefix_ngram":
        return list(names), prefix
    return [*names, tuple_key_name(names)], [*pos, prefix[-1]]


def sid_key_ids(codes: np.ndarray, codebook_size: int, scheme: str = "position",
                buckets: int = DEFAULT_HASH_BUCKETS) -> np.ndarray:
    """Key ids ``int64[len(keys), V]`` of ``codes: int64[K, V]`` (``codes[k, i]`` = ``s_k`` of item
    i, in ``[0, C]``), in :func:`sid_key_shapes`' key order; every id in ``[0, table size)``."""
    _check(scheme, codebook_size, buckets)
    codes = np.asarray(codes, np.int64)
    if scheme == "position":
        return codes
    k = codes.shape[0]
    sizes = _prefix_sizes(k, codebook_size, buckets)
    prefix = np.empty_like(codes)
    exact = np.zeros(codes.shape[1], np.int64)
    h = np.zeros(codes.shape[1], np.uint64)
    with np.errstate(over="ignore"):
        for n in range(k):
            exact = exact * (codebook_size + 1) + codes[n] if sizes[n] == (codebook_size + 1) ** (n + 1) else exact
            h = (h ^ (codes[n].astype(np.uint64) + np.uint64(1))) * _M1
            h ^= h >> np.uint64(31)
            h *= _M2
            h ^= h >> np.uint64(29)
            if sizes[n] == (codebook_size + 1) ** (n + 1):
                prefix[n] = exact
            else:
                prefix[n] = (h % np.uint64(buckets)).astype(np.int64)
    if scheme == "prefix_ngram":
        return prefix
    return np.concatenate([codes, prefix[-1:]], axis=0)
