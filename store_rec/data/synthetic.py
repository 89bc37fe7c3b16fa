"""Synthetic industrial-shaped CTR dataset with *planted structure* (``store-rec data prepare synthetic``).

The generator exists so that STORE's ideas can be tested on data whose truth is known:

* **Items** ``1..items`` belong to ``num_clusters`` latent semantic clusters (balanced sizes). Each
  cluster has a centre ``Tensor[latent_dim]``; an item's latent vector is its centre plus Gaussian
  noise (written to ``truth/items.parquet`` together with the cluster, so tokenizer tests can check
  that semantic IDs recover clusters; ``truth/users.parquet`` holds user -> group). Item popularity
  is Zipf-like (weight ``rank^-zipf_a`` with a random rank per item), so most items are rare.
* **Users** ``1..users`` belong to ``num_user_groups`` groups. Group ``g`` and cluster ``c`` have an
  affinity ``A[g, c] = affinity_scale * <u_g, centre_c> / sqrt(latent_dim)``.
* **Impressions** (rows): a user (mildly Zipf-active), then an item: with probability
  ``personalized`` from a cluster drawn from the group's preference ``softmax(A[g]/temperature)``
  (item by within-cluster popularity), else by global popularity. Context (hour, weekday, device).
* **Click**: ``label ~ Bernoulli(sigmoid(bias + A[g, c] + item_bias + user_bias + W_age_cat[age,
  category] + W_price_city[price, city] + W_hour_device[hour, device] + tag_match * 0.6 + noise))``.
  A model that knows item clusters (semantic IDs) can share the cluster effect across rare items, so it
  beats raw item ids there.
* **Sequences** (``sequences.parquet``): per user, a Markov walk over clusters (stay with probability
  ``seq_stay``, else resample from the group's preference), items by within-cluster popularity, so
  SASRec-style pre-training can recover clusters from co-occurrence.

Generators (``generator``, default ``v1``; ``store-rec data prepare synthetic --set generator=v2``):

* ``v1`` (the description above): the click logit is biases plus *pairwise* field terms only --
  exactly the model class of an FM / DLRM dot interaction -- side information (category, price,
  seller) largely reveals the item cluster, and only ~3 % of test rows have an item unseen in train.
  It favours DLRM by construction (measured in ``MODEL_AUDIT.md``). Its output is unchanged
  (digest-tested).
* ``v2``: a data set that does not pick the winner:

  - **3-way terms** (``three_way_scale``, default 0.5): ``+ W3[age, category, device] +
    A3[user group, cluster, daypart]`` with i.i.d. normal cells (daypart = 4 blocks of 6 hours),
    which no sum of pairwise products represents exactly;
  - **cluster semantics only SIDs carry to cold items**: category, price and seller are drawn
    independently of the cluster, so the cluster effects (``A``, ``A3``, tag match) reach an item only
    through its ID (warm items) or its SIDs (pre-trained on the sequences, which contain cold items);
  - **a cold-start slice** (``cold_item_frac``, default 0.1 of the items): cold items never appear in
    train rows (a warm item of the same cluster is shown instead), only in valid / test;
    ``truth/items.parquet`` gets a ``cold`` column. Rare cold items may also be missing from the
    sequences (then they have no pre-trained embedding: OOV SID).

  v2's extra draws come from their own random streams, so v2 and v1 share users, item clusters,
  popularity and sequences for the same seed.

**History** (``history_len`` N > 0, either generator; default 0 = off, output unchanged): every row
gets the role ``history`` lists ``hist_item_id``, ``hist_category`` and ``hist_gap`` (the user's last
<= N clicks in rows strictly before it, oldest first, never a test-split click; the row number is
the time, so ``hist_gap`` is the log2-bucketed number of rows back; :mod:`store_rec.data.history`)
and a **sequence signal only the history carries**: the click logit gains

    history_scale * sum_{j in the row's last m history items} T[cluster_j, cluster_target] / sqrt(m)

(``m = min(len, history_window)``, 0 for an empty history; ``T[a, b] ~ N(0, 1)`` i.i.d. from its own
stream: "after clicks on a, b is (un)attractive", which no static user feature encodes). The term
uses exactly the history the row is given, so the truth is recoverable from the data; rows are
labelled in time order (per block, in waves of distinct users) because a click feeds the later
histories. ``T`` is written to ``truth/history.parquet``. Defaults: ``history_scale`` 0.7,
``history_window`` ``min(32, N)`` (so N = 16 sees part of the signal and N >= 32 all of it). The
other draws are unchanged, so with history on only the labels differ from the same seed without.
Memory: the per-user state is ``users x N x 16`` bytes; chunks are cut to ``<= 2**22`` list entries.

Features (``schema.json``):

==================  ======  =========  =======================================================
name                role    group      meaning
==================  ======  =========  =======================================================
item_id             id                 item (vocab ``items + 1``), the item feature
user_id             id                 user (vocab ``users + 1``), also the ``user_key``
seller_id           id                 seller: from the item cluster's seller pool (80 %) or any
gender              static  user       2 values
age_bucket          static  user       7 buckets, correlated with the user group
city_tier           static  user       4 tiers
interest_tags       static  user       multi-hot list<int64>: 1..``max_tags`` clusters of interest
category            static  item       ``num_categories`` values, mostly ``cluster % num_categories``
price_bucket        static  item       10 buckets, cluster-dependent
brand_tier          static  item       5 tiers
hour                static  context    hour of day (diurnal)
weekday             static  context    ``day % 7`` of the synthetic day
device              static  context    4 device types
item_quality        dense              noisy observation of ``item_bias``
user_propensity     dense              noisy observation of ``user_bias``
==================  ======  =========  =======================================================

Every id is already contiguous: ``0`` is the OOV id and is never generated, so there are no vocab files.
The static groups above are the default; ``static_groups`` (a number of groups or a mapping group ->
features, see :func:`resolve_static_groups`) regroups the same 10 static features in ``schema.json``.

Splits: the row stream is chronological over ``days`` synthetic days; ``split="time"`` (default) puts
the first ``train_frac`` of rows in train, the next ``valid_frac`` in valid, the rest in test;
``split="random"`` assigns each row independently with the same probabilities (seeded).

Determinism and streaming: every random draw comes from a generator seeded by ``(seed, stream,
block)`` where a block is ``BLOCK_ROWS`` rows (or users / items), so the output is identical for any
``chunk_rows``; only ``O(chunk_rows)`` rows are held in memory (plus per-item / per-user attribute
arrays, ~60 bytes per item and ~40 bytes per user). Sequences are written for at most
``max_sequence_users`` users (``1..min(users, max_sequence_users)``), also in blocks.

Defaults (``rows=200_000, items=20_000, users=5_000``) are sized for the quickstart: prepare +
pretrain + tokenize + train in a few minutes of CPU on 2 cores.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from store_rec.data.history import (ENTRIES_PER_CHUNK, GAP_COLUMN, GAP_VOCAB, RecentPositives, gap_buckets,
                                    history_column, history_params, history_row_group_size)
from store_rec.data.schema import HISTORY, ID, STATIC, DatasetSchema, SequenceInfo, SparseFeature
from store_rec.data.writer import DatasetWriter
from store_rec.errors import UserError

logger = logging.getLogger(__name__)

BLOCK_ROWS = 4096  # unit of randomness: output is identical for every chunk_rows
_STREAM_ITEMS, _STREAM_USERS, _STREAM_ROWS, _STREAM_SEQ, _STREAM_TRUTH, _STREAM_GLOBAL = 1, 2, 3, 4, 5, 6
_STREAM_V2_WORLD, _STREAM_V2_ROWS = 7, 8  # generator v2's extra draws (v1 output stays byte-identical)
_STREAM_HISTORY = 9  # the history truth T (history_len > 0 only)
HISTORY_KEYS = ("history_len", "history_scale", "history_window")
GENERATORS = ("v1", "v2")
# generator-dependent defaults (None in DEFAULTS = take the generator's value from here)
GENERATOR_DEFAULTS: Dict[str, Dict[str, float]] = {
    "v1": dict(cold_item_frac=0.0, three_way_scale=0.0),
    "v2": dict(cold_item_frac=0.1, three_way_scale=0.5),
}

DEFAULTS: Dict[str, object] = dict(
    rows=200_000, items=20_000, users=5_000, num_clusters=32, num_user_groups=16, latent_dim=16,
    zipf_a=1.05, user_zipf_a=0.6, personalized=0.5, temperature=0.7, affinity_scale=1.2,
    num_categories=16, num_sellers=None, max_tags=4, days=10, split="time", train_frac=0.8,
    valid_frac=0.1, seq_min_len=5, seq_max_len=50, seq_stay=0.8, max_sequence_users=1_000_000,
    bias=-2.2, noise=0.3, item_bias_std=0.4, user_bias_std=0.3, latent_noise=0.35, truth_latents=True,
    generator="v1", cold_item_frac=None, three_way_scale=None,
    history_len=0, history_scale=0.7, history_window=None,
)

SPARSE_SPEC = [  # (name, role, group)
    ("item_id", ID, None), ("user_id", ID, None), ("seller_id", ID, None),
    ("gender", STATIC, "user"), ("age_bucket", STATIC, "user"), ("city_tier", STATIC, "user"),
    ("interest_tags", STATIC, "user"),
    ("category", STATIC, "item"), ("price_bucket", STATIC, "item"), ("brand_tier", STATIC, "item"),
    ("hour", STATIC, "context"), ("weekday", STATIC, "context"), ("device", STATIC, "context"),
]
STATIC_NAMES = [name for name, role, _ in SPARSE_SPEC if role == STATIC]
DEFAULT_STATIC_GROUPS: Dict[str, List[str]] = {
    g: [name for name, role, group in SPARSE_SPEC if role == STATIC and group == g]
    for g in dict.fromkeys(group for _, role, group in SPARSE_SPEC if role == STATIC)}
DENSE_NAMES = ["item_quality", "user_propensity"]
_HOUR_P = np.array([1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 6, 6, 6, 6, 7, 8, 9, 9, 8, 5, 3], float)
_DEVICE_P = np.array([0.6, 0.25, 0.1, 0.05])


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stream, block])


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like weights ``rank^-a`` with a random rank per entity: float64[n]."""
    ranks = rng.permutation(n) + 1.0
    return ranks ** (-a)


def _categorical(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: ``cum`` increasing, last entry 1; returns indices for uniforms ``u``."""
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


class _World:
    """Per-item / per-user attributes and the planted parameters (everything not per row)."""

    def __init__(self, seed: int, p: Dict[str, object]):
        self.p = p
        n_items, n_users = int(p["items"]), int(p["users"])
        C, G, d = int(p["num_clusters"]), int(p["num_user_groups"]), int(p["latent_dim"])
        g = _rng(seed, _STREAM_GLOBAL)
        self.centres = g.standard_normal((C, d)).astype(np.float32)
        self.group_vecs = g.standard_normal((G, d)).astype(np.float32)
        self.affinity = (float(p["affinity_scale"]) * self.group_vecs @ self.centres.T / math.sqrt(d)).astype(np.float64)
        logits = self.affinity / float(p["temperature"])
        pref = np.exp(logits - logits.max(axis=1, keepdims=True))
        pref /= pref.sum(axis=1, keepdims=True)
        self.pref = pref  # [G, C]
        # flat keys g + cumpref: searchsorted(flat, g + u) samples a cluster from pref[g]
        cum = np.cumsum(pref, axis=1)
        cum[:, -1] = 1.0
        self.pref_keys = (np.arange(G)[:, None] + cum).ravel()
        ncat = int(p["num_categories"])
        self.w_age_cat = g.normal(0, 0.4, (8, ncat + 1))
        self.w_price_city = g.normal(0, 0.3, (11, 5))
        self.w_hour_device = g.normal(0, 0.2, (25, 5))
        self.cluster_price = g.integers(1, 11, C)
        self.cluster_category = (np.arange(C) % ncat) + 1
        self.num_sellers = int(p["num_sellers"] or max(C, n_items // 50))

        # ---- items (index 0 = OOV item, unused) ------------------------------------------
        r = _rng(seed, _STREAM_ITEMS)
        self.item_cluster = np.zeros(n_items + 1, np.int32)
        self.item_cluster[1:] = r.permutation(np.arange(n_items) % C)
        w = np.zeros(n_items + 1)
        w[1:] = _zipf_weights(n_items, float(p["zipf_a"]), r)
        cum = np.cumsum(w)
        self.item_cum = cum / cum[-1]  # global popularity CDF over ids 0..N (id 0 has weight 0)
        order = np.argsort(self.item_cluster[1:], kind="stable") + 1  # items sorted by cluster
        cl = self.item_cluster[order]
        ws = w[order]
        cs = np.cumsum(ws)
        starts = np.searchsorted(cl, np.arange(C))
        seg_total = np.add.reduceat(ws, starts)
        before = np.concatenate([[0.0], cs])[starts]
        self.cluster_order = order
        self.cluster_keys = cl + (cs - np.repeat(before, np.diff(np.append(starts, len(cl))))) / np.repeat(
            seg_total, np.diff(np.append(starts, len(cl))))
        self.item_bias = np.zeros(n_items + 1, np.float32)
        self.item_bias[1:] = r.normal(0, float(p["item_bias_std"]), n_items)
        other_cat = r.integers(1, ncat + 1, n_items + 1)
        self.item_category = np.where(r.random(n_items + 1) < 0.9, self.cluster_category[self.item_cluster],
                                      other_cat).astype(np.int16)
        price = self.cluster_price[self.item_cluster] + r.integers(-1, 2, n_items + 1)
        self.item_price = np.clip(price, 1, 10).astype(np.int16)
        self.item_brand = r.integers(1, 6, n_items + 1).astype(np.int16)
        S = self.num_sellers
        own = self.item_cluster + C * r.integers(0, max(1, S // C), n_items + 1)  # cluster's seller pool
        own = np.where(own < S, own, self.item_cluster)
        self.item_seller = (np.where(r.random(n_items + 1) < 0.8, own, r.integers(0, S, n_items + 1)) + 1).astype(np.int32)

        # ---- users (index 0 unused) ---------------------------------------------------------
        u = _rng(seed, _STREAM_USERS)
        self.user_group = u.integers(0, G, n_users + 1).astype(np.int32)
        uw = np.zeros(n_users + 1)
        uw[1:] = _zipf_weights(n_users, float(p["user_zipf_a"]), u)
        ucum = np.cumsum(uw)
        self.user_cum = ucum / ucum[-1]
        self.user_bias = u.normal(0, float(p["user_bias_std"]), n_users + 1).astype(np.float32)
        self.user_gender = u.integers(1, 3, n_users + 1).astype(np.int16)
        age = np.where(u.random(n_users + 1) < 0.7, (self.user_group * 3) % 7, u.integers(0, 7, n_users + 1)) + 1
        self.user_age = age.astype(np.int16)
        self.user_city = u.integers(1, 5, n_users + 1).astype(np.int16)
        T = int(p["max_tags"])
        self.user_ntags = u.integers(1, T + 1, n_users + 1).astype(np.int16)
        tags = self.sample_clusters(self.user_group.repeat(T), u.random((n_users + 1) * T)).reshape(-1, T)
        self.user_tags = (tags + 1).astype(np.int32)  # tag id = cluster + 1 (0 = OOV)
        if p["generator"] == "v2":
            self._init_v2(seed, p)
        self.history_len = int(p["history_len"])
        if self.history_len:
            self.hist_truth = _rng(seed, _STREAM_HISTORY).standard_normal((C, C))  # T[from cluster, to cluster]
            self.recent = RecentPositives(n_users + 1, self.history_len)

    def _init_v2(self, seed: int, p: Dict[str, object]) -> None:
        """Generator v2 (see the module docstring): side information independent of the cluster, a
        3-way truth, and cold items (each mapped to a warm item of its cluster for train rows)."""
        n_items, C, G = int(p["items"]), int(p["num_clusters"]), int(p["num_user_groups"])
        ncat = int(p["num_categories"])
        v = _rng(seed, _STREAM_V2_WORLD)
        # side information carries no cluster: only the item id (warm) or its SIDs (warm and cold) do
        self.item_category = v.integers(1, ncat + 1, n_items + 1).astype(np.int16)
        self.item_price = v.integers(1, 11, n_items + 1).astype(np.int16)
        self.item_seller = v.integers(1, self.num_sellers + 1, n_items + 1).astype(np.int32)
        s3 = float(p["three_way_scale"])
        self.w3_static = s3 * v.standard_normal((8, ncat + 1, 5))  # [age, category, device]
        self.w3_latent = s3 * v.standard_normal((G, C, 4))  # [user group, cluster, daypart]
        cold = np.zeros(n_items + 1, bool)
        n_cold = int(round(float(p["cold_item_frac"]) * n_items))
        if n_cold:
            cold[1 + v.choice(n_items, n_cold, replace=False)] = True
        self.item_cold = cold
        # a warm item of the same cluster for every item (identity for warm items)
        sub = np.arange(n_items + 1)
        for c in range(C):
            members = np.flatnonzero((self.item_cluster == c) & ~cold)
            members = members[members > 0]
            cold_c = np.flatnonzero((self.item_cluster == c) & cold)
            if len(cold_c):
                if not len(members):
                    raise UserError(f"synthetic: cold_item_frac={p['cold_item_frac']}: cluster {c} has no warm item")
                sub[cold_c] = v.choice(members, len(cold_c))
        self.warm_substitute = sub

    def sample_clusters(self, groups: np.ndarray, uni: np.ndarray) -> np.ndarray:
        """A cluster per entry from ``pref[groups]``: int64[n]."""
        C = self.pref.shape[1]
        idx = np.searchsorted(self.pref_keys, groups + uni, side="right")
        return np.minimum(idx - groups * C, C - 1)

    def sample_items_in(self, clusters: np.ndarray, uni: np.ndarray) -> np.ndarray:
        """An item per entry from ``clusters`` by within-cluster popularity: int64[n]."""
        idx = np.searchsorted(self.cluster_keys, clusters + uni, side="left")
        return self.cluster_order[np.minimum(idx, len(self.cluster_order) - 1)]


def _block_rows(world: _World, seed: int, block: int, start: int, n: int, total: int) -> Dict[str, np.ndarray]:
    """Rows ``start .. start+n`` (one block): dict of column arrays plus ``_split`` codes (0/1/2)."""
    p = world.p
    r = _rng(seed, _STREAM_ROWS, block)
    users = _categorical(world.user_cum, r.random(n))
    users = np.maximum(users, 1)
    grp = world.user_group[users]
    personal = r.random(n) < float(p["personalized"])
    cl_pick = world.sample_clusters(grp, r.random(n))
    items_p = world.sample_items_in(cl_pick, r.random(n))
    items_g = np.maximum(_categorical(world.item_cum, r.random(n)), 1)
    items = np.where(personal, items_p, items_g)
    v2 = p["generator"] == "v2"
    row = np.arange(start, start + n)
    tf, vf = float(p["train_frac"]), float(p["valid_frac"])
    if v2:
        # the split first: cold items never appear in train rows (a warm item of their cluster instead)
        rv = _rng(seed, _STREAM_V2_ROWS, block)
        pos = rv.random(n) if p["split"] == "random" else row / max(total, 1)
        v2_split = np.where(pos < tf, 0, np.where(pos < tf + vf, 1, 2))
        items = np.where(v2_split == 0, world.warm_substitute[items], items)
    cl = world.item_cluster[items]
    hour = _categorical(np.cumsum(_HOUR_P) / _HOUR_P.sum(), r.random(n)) + 1
    device = _categorical(np.cumsum(_DEVICE_P), r.random(n)) + 1
    day = row * int(p["days"]) // max(total, 1)
    weekday = day % 7 + 1
    age, city = world.user_age[users], world.user_city[users]
    cat, price = world.item_category[items], world.item_price[items]
    ntags = world.user_ntags[users].astype(np.int64)
    T = world.user_tags.shape[1]
    tagmat = world.user_tags[users]
    mask = np.arange(T)[None, :] < ntags[:, None]
    match = ((tagmat == (cl + 1)[:, None]) & mask).any(axis=1)
    logit = (float(p["bias"]) + world.affinity[grp, cl] + world.item_bias[items] + world.user_bias[users]
             + world.w_age_cat[age, cat] + world.w_price_city[price, city] + world.w_hour_device[hour, device]
             + 0.6 * match + r.normal(0, float(p["noise"]), n))
    if v2:  # 3-way terms: no pairwise (FM / dot-product) model represents them exactly
        daypart = (hour - 1) // 6
        logit = logit + world.w3_static[age, cat, device] + world.w3_latent[grp, cl, daypart]
    label_u = r.random(n)
    item_quality = world.item_bias[items] + r.normal(0, 0.5, n).astype(np.float32)
    user_prop = world.user_bias[users] + r.normal(0, 0.3, n).astype(np.float32)
    split_u = r.random(n)
    if v2:
        split = v2_split
    else:
        pos = split_u if p["split"] == "random" else row / max(total, 1)
        split = np.where(pos < tf, 0, np.where(pos < tf + vf, 1, 2))
    hist: Dict[str, np.ndarray] = {}
    if world.history_len:
        label, hist = _label_with_history(world, users, items, cl, row, split, logit, label_u)
    else:
        label = (label_u < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return {**hist,
        "label": label, "item_quality": item_quality.astype(np.float32), "user_propensity": user_prop.astype(np.float32),
        "item_id": items, "user_id": users, "seller_id": world.item_seller[items],
        "gender": world.user_gender[users], "age_bucket": age, "city_tier": city,
        "_tags_values": tagmat[mask], "_tags_lengths": ntags,
        "category": cat, "price_bucket": price, "brand_tier": world.item_brand[items],
        "hour": hour, "weekday": weekday, "device": device, "_split": split,
    }


def _label_with_history(world: _World, users: np.ndarray, items: np.ndarray, cl: np.ndarray, row: np.ndarray,
                        split: np.ndarray, logit: np.ndarray, label_u: np.ndarray
                        ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Labels of one block in time order with the history term, and the rows' history lists.

    Rows are processed in waves: wave ``k`` holds every user's ``k``-th row of the block (distinct
    users, so one vectorised step), and its clicks (non-test) enter the state before wave ``k + 1``.
    Returns ``(label float32[n], {"_hist_lengths", "_hist_items", "_hist_gap", "_hist_category"})``
    with the lists in row order."""
    p, recent, T = world.p, world.recent, world.hist_truth
    scale, window = float(p["history_scale"]), int(p["history_window"])
    n = len(users)
    order = np.argsort(users, kind="stable")
    su = users[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    occ = np.empty(n, np.int64)
    occ[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    wave_order = np.lexsort((np.arange(n), occ))
    bounds = np.searchsorted(occ[wave_order], np.arange(int(occ.max(initial=-1)) + 2))
    label = np.zeros(n, np.float32)
    parts = []
    for k in range(len(bounds) - 1):
        rows = wave_order[bounds[k]:bounds[k + 1]]
        offs, h_items, h_time = recent.lists(users[rows])
        lens = np.diff(offs)
        m = np.minimum(lens, window)
        owner = np.repeat(np.arange(len(rows)), m)
        last = np.repeat(offs[1:] - m, m) + (np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m))
        contrib = T[world.item_cluster[h_items[last]], cl[rows][owner]]
        term = np.bincount(owner, weights=contrib, minlength=len(rows)) / np.sqrt(np.maximum(m, 1))
        z = logit[rows] + scale * term
        label[rows] = (label_u[rows] < 1.0 / (1.0 + np.exp(-z))).astype(np.float32)
        push = (label[rows] > 0.5) & (split[rows] != 2)
        recent.push(users[rows][push], items[rows][push], row[rows][push].astype(np.float64))
        parts.append((rows, lens, h_items, np.repeat(row[rows], lens) - h_time))
    rows_all = np.concatenate([q[0] for q in parts])
    lens_all = np.concatenate([q[1] for q in parts])
    offs_all = np.zeros(n + 1, np.int64)
    np.cumsum(lens_all, out=offs_all[1:])
    perm = np.argsort(rows_all)  # back to row order
    new_lens = lens_all[perm]
    noffs = np.zeros(n + 1, np.int64)
    np.cumsum(new_lens, out=noffs[1:])
    idx = np.repeat(offs_all[:-1][perm] - noffs[:-1], new_lens) + np.arange(noffs[-1])
    h_items = np.concatenate([q[2] for q in parts])[idx]
    gaps = np.concatenate([q[3] for q in parts])[idx]
    return label, {"_hist_lengths": new_lens, "_hist_items": h_items, "_hist_gap": gap_buckets(gaps),
                   "_hist_category": world.item_category[h_items].astype(np.int64)}


#: history output column -> (lengths key, values key) of the block columns
HISTORY_COLUMNS = {history_column("item_id"): ("_hist_lengths", "_hist_items"),
                   history_column("category"): ("_hist_lengths", "_hist_category"),
                   GAP_COLUMN: ("_hist_lengths", "_hist_gap")}
_LIST_COLUMNS = {"interest_tags": ("_tags_lengths", "_tags_values"), **HISTORY_COLUMNS}


def _arrow_schema(history: bool = False) -> pa.Schema:
    fields = [pa.field("label", pa.float32())] + [pa.field(d, pa.float32()) for d in DENSE_NAMES]
    for name, _, _ in SPARSE_SPEC:
        fields.append(pa.field(name, pa.list_(pa.int64()) if name == "interest_tags" else pa.int64()))
    if history:
        fields += [pa.field(name, pa.list_(pa.int64())) for name in HISTORY_COLUMNS]
    return pa.schema(fields)


def _to_table(cols: Dict[str, np.ndarray], sel: Optional[np.ndarray], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        if f.name in _LIST_COLUMNS:
            lkey, vkey = _LIST_COLUMNS[f.name]
            lens = cols[lkey]
            offs = np.zeros(len(lens) + 1, np.int64)
            np.cumsum(lens, out=offs[1:])
            vals = cols[vkey]
            if sel is not None:
                lens = lens[sel]
                starts = offs[:-1][sel]
                noffs = np.zeros(len(lens) + 1, np.int64)
                np.cumsum(lens, out=noffs[1:])
                idx = np.repeat(starts - noffs[:-1], lens) + np.arange(noffs[-1])
                vals, offs = vals[idx], noffs
            arrays.append(pa.ListArray.from_arrays(pa.array(offs.astype(np.int32)), pa.array(vals.astype(np.int64))))
        else:
            a = cols[f.name] if sel is None else cols[f.name][sel]
            arrays.append(pa.array(a.astype(f.type.to_pandas_dtype(), copy=False)))
    return pa.Table.from_arrays(arrays, schema=schema)


def _concat(blocks):
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def _write_sequences(world: _World, seed: int, path: Path) -> int:
    """Write ``user``/``items`` sequences in blocks of users; returns the number of users written."""
    p = world.p
    n_users = min(int(p["users"]), int(p["max_sequence_users"]))
    lo_len, hi_len, stay = int(p["seq_min_len"]), int(p["seq_max_len"]), float(p["seq_stay"])
    schema = pa.schema([pa.field("user", pa.int64()), pa.field("items", pa.list_(pa.int64()))])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for block, start in enumerate(range(1, n_users + 1, BLOCK_ROWS)):
            users = np.arange(start, min(start + BLOCK_ROWS, n_users + 1))
            r = _rng(seed, _STREAM_SEQ, block)
            lens = r.integers(lo_len, hi_len + 1, len(users))
            tot = int(lens.sum())
            offs = np.zeros(len(users) + 1, np.int64)
            np.cumsum(lens, out=offs[1:])
            owner = np.repeat(np.arange(len(users)), lens)
            first = np.zeros(tot, bool)
            first[offs[:-1]] = True
            resample = first | (r.random(tot) >= stay)
            cand = world.sample_clusters(world.user_group[users][owner], r.random(tot))
            last = np.maximum.accumulate(np.where(resample, np.arange(tot), 0))
            clusters = cand[last]
            items = world.sample_items_in(clusters, r.random(tot))
            w.write_table(pa.table({
                "user": pa.array(users.astype(np.int64)),
                "items": pa.ListArray.from_arrays(pa.array(offs.astype(np.int32)), pa.array(items.astype(np.int64))),
            }, schema=schema))
    return n_users


def _write_truth(world: _World, seed: int, path: Path) -> None:
    """``truth/items.parquet``: item, cluster, popularity weight, latent vector (centre + noise).

    The latent column (``4 * latent_dim`` bytes per item, incompressible) is left out when
    ``truth_latents=False`` -- worth it at 10M items (about 0.7 GB).
    """
    p = world.p
    n_items, d = int(p["items"]), int(p["latent_dim"])
    latents = bool(p["truth_latents"])
    v2 = p["generator"] == "v2"
    schema = pa.schema([pa.field("item", pa.int64()), pa.field("cluster", pa.int64()),
                        pa.field("popularity", pa.float64())]
                       + ([pa.field("cold", pa.bool_())] if v2 else [])
                       + ([pa.field("latent", pa.list_(pa.float32(), d))] if latents else []))
    pop = np.diff(world.item_cum)  # weight of ids 1..N
    step = BLOCK_ROWS * 16
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for block, start in enumerate(range(1, n_items + 1, step)):
            ids = np.arange(start, min(start + step, n_items + 1))
            r = _rng(seed, _STREAM_TRUTH, block)
            cl = world.item_cluster[ids]
            cols = {"item": pa.array(ids.astype(np.int64)), "cluster": pa.array(cl.astype(np.int64)),
                    "popularity": pa.array(pop[ids - 1])}
            if v2:
                cols["cold"] = pa.array(world.item_cold[ids])
            if latents:
                lat = world.centres[cl] + float(p["latent_noise"]) * r.standard_normal((len(ids), d)).astype(np.float32)
                cols["latent"] = pa.FixedSizeListArray.from_arrays(pa.array(lat.astype(np.float32).ravel()), d)
            w.write_table(pa.table(cols, schema=schema))


def _check_params(p: Dict[str, object]) -> None:
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise UserError(f"synthetic: {key}={p.get(key)!r}: {msg}")

    for k in ("rows", "items", "users", "num_clusters", "num_user_groups", "latent_dim", "num_categories",
              "max_tags", "days", "seq_min_len", "max_sequence_users"):
        need(isinstance(p[k], (int, np.integer)) and int(p[k]) >= 1, k, "must be a positive integer")
    need(int(p["items"]) >= int(p["num_clusters"]), "items", "must be >= num_clusters")
    need(int(p["seq_max_len"]) >= int(p["seq_min_len"]), "seq_max_len", "must be >= seq_min_len")
    need(p["split"] in ("time", "random"), "split", "must be 'time' or 'random'")
    need(0 < float(p["train_frac"]) and float(p["train_frac"]) + float(p["valid_frac"]) < 1, "train_frac",
         "need 0 < train_frac and train_frac + valid_frac < 1")
    need(0 <= float(p["personalized"]) <= 1, "personalized", "must be in [0, 1]")
    need(0 <= float(p["seq_stay"]) < 1, "seq_stay", "must be in [0, 1)")
    need(p["num_sellers"] is None or int(p["num_sellers"]) >= 1, "num_sellers", "must be >= 1")
    need(p["generator"] in GENERATORS, "generator", f"must be one of {', '.join(GENERATORS)}")
    if p["generator"] == "v1":
        for k, v in GENERATOR_DEFAULTS["v1"].items():
            need(float(p[k]) == v, k, "is a generator v2 parameter (set generator: v2)")
    need(0 <= float(p["cold_item_frac"]) < 1, "cold_item_frac", "must be in [0, 1)")
    need(float(p["three_way_scale"]) >= 0, "three_way_scale", "must be >= 0")
    hl = p["history_len"]
    need(isinstance(hl, (int, np.integer)) and not isinstance(hl, bool) and int(hl) >= 0, "history_len",
         "must be an integer >= 0 (0 = no history)")
    need(isinstance(p["history_scale"], (int, float)) and float(p["history_scale"]) >= 0, "history_scale",
         "must be a number >= 0")
    if int(hl):
        w = p["history_window"]
        need(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and 1 <= int(w) <= int(hl),
             "history_window", f"must be an integer in 1..history_len ({hl})")
    else:
        for k in ("history_scale", "history_window"):
            need(p[k] == DEFAULTS[k], k, "needs history_len > 0")


def resolve_static_groups(static_groups: Union[None, int, Mapping[str, Sequence[str]]]) -> Dict[str, List[str]]:
    """Static semantic groups of the output schema: group -> static feature names (in output order).

    * ``None``: the built-in layout ``user`` / ``item`` / ``context`` (3 groups).
    * an int ``G`` in ``1 .. 10``: the 10 static features, in the order of the built-in layout, cut into
      ``G`` consecutive groups of near-equal size (the first ``10 % G`` groups one feature larger),
      named ``g1 .. gG``. ``G = 3`` gives the built-in partition (4 / 3 / 3) under generic names.
    * a mapping ``{group: [feature, ...]}``: any partition of the 10 static features (each exactly once).

    Only the grouping (``schema.json``) changes: the generated columns are the same for every value.
    """
    if static_groups is None:
        return {g: list(v) for g, v in DEFAULT_STATIC_GROUPS.items()}
    n = len(STATIC_NAMES)
    if isinstance(static_groups, (int, np.integer)) and not isinstance(static_groups, bool):
        g = int(static_groups)
        if not 1 <= g <= n:
            raise UserError(f"synthetic: static_groups={g}: must be in 1..{n} (the number of static features) "
                            "or a mapping group -> features")
        sizes = [n // g + (1 if i < n % g else 0) for i in range(g)]
        bounds = np.cumsum([0] + sizes)
        return {f"g{i + 1}": STATIC_NAMES[bounds[i]:bounds[i + 1]] for i in range(g)}
    if not isinstance(static_groups, Mapping) or not static_groups:
        raise UserError(f"synthetic: static_groups={static_groups!r}: expected an int (number of groups) or a "
                        "non-empty mapping group -> list of static features")
    seen: Dict[str, str] = {}
    out: Dict[str, List[str]] = {}
    for group, names in static_groups.items():
        if not isinstance(group, str) or not group:
            raise UserError(f"synthetic: static_groups: group name {group!r} must be a non-empty string")
        if isinstance(names, str) or not isinstance(names, Sequence) or not names:
            raise UserError(f"synthetic: static_groups.{group}: expected a non-empty list of static features")
        for i, name in enumerate(names):
            if name not in STATIC_NAMES:
                raise UserError(f"synthetic: static_groups.{group}[{i}]: unknown static feature {name!r} "
                                f"(static features: {', '.join(STATIC_NAMES)})")
            if name in seen:
                raise UserError(f"synthetic: static_groups.{group}[{i}]: {name!r} is already in group {seen[name]!r}")
            seen[name] = group
        out[group] = list(names)
    missing = [name for name in STATIC_NAMES if name not in seen]
    if missing:
        raise UserError(f"synthetic: static_groups: static feature(s) {missing} are in no group "
                        "(every static feature must be in exactly one group)")
    return out


def prepare_synthetic(out: os.PathLike, *, rows: int = 200_000, items: int = 20_000, users: int = 5_000,
                      seed: int = 0, overwrite: bool = False, num_clusters: int = 32,
                      chunk_rows: int = 262_144, row_group_size: int = 65_536,
                      static_groups: Union[None, int, Mapping[str, Sequence[str]]] = None, **kw) -> DatasetSchema:
    """Generate the synthetic dataset into ``out`` (atomically) and return its schema.

    Args:
        out: dataset directory to create (``DIR/schema.json``, ``DIR/{train,valid,test}/``,
            ``DIR/sequences.parquet``, ``DIR/truth/items.parquet``).
        rows: impressions over all splits (default 200k: the quickstart size). Streams in chunks, so
            1e8 rows need only ``O(chunk_rows)`` memory.
        items: item ids ``1..items`` (default 20k; tested up to 10M: attributes ~60 B per item).
        users: user ids ``1..users`` (default 5k).
        seed: everything is a deterministic function of ``seed`` (and the parameters).
        num_clusters: latent item clusters (default 32).
        chunk_rows: rows generated per step (rounded up to a multiple of ``BLOCK_ROWS``); does not
            change the output.
        row_group_size: parquet row group size.
        static_groups: static semantic groups of the schema (see :func:`resolve_static_groups`):
            None (default: user / item / context), a number of groups ``1..10`` or a mapping
            group -> features. Changes ``schema.json`` only, never the generated data.
        **kw: any other key of ``DEFAULTS`` (e.g. ``num_user_groups``, ``zipf_a``, ``split``,
            ``max_sequence_users``); unknown keys are an error.
    """
    unknown = sorted(set(kw) - set(DEFAULTS))
    if unknown:
        raise UserError(f"synthetic: unknown parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    p: Dict[str, object] = dict(DEFAULTS)
    p.update(kw)
    p.update(rows=int(rows), items=int(items), users=int(users), num_clusters=int(num_clusters))
    gen = GENERATOR_DEFAULTS.get(str(p["generator"]), GENERATOR_DEFAULTS["v1"])
    for k, v in gen.items():
        if p[k] is None:
            p[k] = v
    if p["history_window"] is None and isinstance(p["history_len"], (int, np.integer)) and p["history_len"]:
        p["history_window"] = min(32, int(p["history_len"]))
    _check_params(p)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"synthetic: seed={seed!r}: must be a non-negative integer")
    if chunk_rows < 1:
        raise UserError(f"synthetic: chunk_rows={chunk_rows!r}: must be >= 1")
    groups = resolve_static_groups(static_groups)
    blocks_per_chunk = max(1, math.ceil(chunk_rows / BLOCK_ROWS))
    H = int(p["history_len"])
    if H:  # bounded list entries per chunk and per row group
        blocks_per_chunk = max(1, min(blocks_per_chunk, ENTRIES_PER_CHUNK // (BLOCK_ROWS * H)))
        row_group_size = history_row_group_size(H, row_group_size)
    world = _World(int(seed), p)
    arrow_schema = _arrow_schema(history=bool(H))
    n = int(p["rows"])
    hist_entries = np.zeros(3, np.int64)
    with DatasetWriter(out, overwrite=overwrite, row_group_size=row_group_size) as w:
        writers = [w.split(s, arrow_schema, label="label") for s in ("train", "valid", "test")]
        nblocks = math.ceil(n / BLOCK_ROWS)
        for c0 in range(0, nblocks, blocks_per_chunk):
            blocks = [_block_rows(world, int(seed), b, b * BLOCK_ROWS, min(BLOCK_ROWS, n - b * BLOCK_ROWS), n)
                      for b in range(c0, min(c0 + blocks_per_chunk, nblocks))]
            cols = _concat(blocks)
            for code, sw in enumerate(writers):
                sel = np.flatnonzero(cols["_split"] == code)
                if H:
                    hist_entries[code] += int(cols["_hist_lengths"][sel].sum())
                if len(sel):
                    sw.write(_to_table(cols, None if len(sel) == len(cols["_split"]) else sel, arrow_schema))
            logger.debug("synthetic: %d / %d rows", min((c0 + blocks_per_chunk) * BLOCK_ROWS, n), n)
        n_seq_users = _write_sequences(world, int(seed), w.root / "sequences.parquet")
        (w.root / "truth").mkdir()
        _write_truth(world, int(seed), w.root / "truth" / "items.parquet")
        w.write_table("truth/users.parquet", pa.table({
            "user": pa.array(np.arange(1, int(p["users"]) + 1, dtype=np.int64)),
            "group": pa.array(world.user_group[1:].astype(np.int64))}))
        if H:
            C = int(p["num_clusters"])
            w.write_table("truth/history.parquet", pa.table({
                "from_cluster": pa.array(np.repeat(np.arange(C), C).astype(np.int64)),
                "to_cluster": pa.array(np.tile(np.arange(C), C).astype(np.int64)),
                "weight": pa.array(world.hist_truth.ravel())}))
        vocab = {
            "item_id": int(p["items"]) + 1, "user_id": int(p["users"]) + 1, "seller_id": world.num_sellers + 1,
            "gender": 3, "age_bucket": 8, "city_tier": 5, "interest_tags": int(p["num_clusters"]) + 1,
            "category": int(p["num_categories"]) + 1, "price_bucket": 11, "brand_tier": 6,
            "hour": 25, "weekday": 8, "device": 5,
        }
        # id features, then the static features group by group (the built-in order when static_groups is None)
        layout = [(name, role, None) for name, role, _ in SPARSE_SPEC if role == ID]
        layout += [(name, STATIC, g) for g, names in groups.items() for name in names]
        sparse = [SparseFeature(name=name, role=role, vocab_size=vocab[name], group=group,
                                multi_hot=name == "interest_tags",
                                max_len=int(p["max_tags"]) if name == "interest_tags" else 1)
                  for name, role, group in layout]
        history_params_: Dict[str, object] = {}
        if H:
            sizes = {history_column("item_id"): ("item_id", vocab["item_id"]),
                     history_column("category"): ("category", vocab["category"]), GAP_COLUMN: (None, GAP_VOCAB)}
            sparse += [SparseFeature(name=name, role=HISTORY, vocab_size=v, multi_hot=True, max_len=H, history_of=of)
                       for name, (of, v) in sizes.items()]
            rows_per = [writers[i].rows for i in range(3)]
            history_params_ = {"history": history_params(
                H, "item_id", list(HISTORY_COLUMNS), "row number in the chronological stream", events=int(
                    (world.recent.count).sum()),
                truth=("logit += history_scale * sum_{j in the last min(len, history_window) history items} "
                       "T[cluster_j, cluster_target] / sqrt(m); T in truth/history.parquet"),
                mean_len={s_: round(float(hist_entries[i]) / rows_per[i], 3)
                          for i, s_ in enumerate(("train", "valid", "test")) if rows_per[i]})}
        schema = DatasetSchema(
            dataset="synthetic", label="label", dense=list(DENSE_NAMES), sparse=sparse, user_key="user_id",
            sequences=SequenceInfo(file="sequences.parquet", item_feature="item_id", num_items=int(p["items"]),
                                   num_users=n_seq_users, order="markov-cluster-walk"),
            split_method=(f"time: first {p['train_frac']} / next {p['valid_frac']} / rest of the chronological stream"
                          if p["split"] == "time" else
                          f"random: per row, seeded, train {p['train_frac']} / valid {p['valid_frac']} / rest"),
            source="store_rec.data.synthetic",
            params={**{k: (v if not isinstance(v, np.generic) else v.item()) for k, v in p.items()
                       if (p["generator"] == "v2" or (k not in GENERATOR_DEFAULTS["v1"] and k != "generator"))
                       and (H or k not in HISTORY_KEYS)},
                    **history_params_,
                    "seed": int(seed), "num_sellers": world.num_sellers,
                    "truth_files": ["truth/items.parquet", "truth/users.parquet"]
                    + (["truth/history.parquet"] if H else []),
                    **({} if static_groups is None else {"static_groups": groups})},
        )
        w.commit(schema)
    return schema
