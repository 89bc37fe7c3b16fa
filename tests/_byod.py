"""Generators of small "your own data" files for the bring-your-own-data tests (interaction log, wide CSV)."""

from pathlib import Path

import numpy as np


def write_interaction_log(path: Path, users: int = 150, items: int = 120, rows: int = 4000, seed: int = 0) -> None:
    """An e-commerce log ``user,item,category,behavior,timestamp`` with planted sequential structure:
    each user walks through the items of a few categories in order (so SASRec has something to learn)."""
    rng = np.random.default_rng(seed)
    cat = np.arange(items) % 8
    lines = ["user,item,category,behavior,timestamp"]
    t = 1_600_000_000
    per_user = rows // users
    for u in range(users):
        start = int(rng.integers(items))
        for j in range(per_user):
            i = (start + j * 3 + int(rng.integers(2))) % items
            b = rng.choice(["pv", "cart", "buy"], p=[0.6, 0.2, 0.2])
            t += int(rng.integers(1, 50))
            lines.append(f"U{u},item{i},cat{cat[i]},{b},{t}")
    path.write_text("\n".join(lines) + "\n")


LOG_SCHEMA = """\
kind: interactions
name: shop
columns:
  user: {role: id, user_key: true}
  item: {role: id, item_key: true}
  category: {role: static, group: item, item_side: true}
  behavior: {role: behavior}
  timestamp: {role: timestamp}
interactions:
  positive: [buy, cart]
  negatives: {strategy: popularity, ratio: 1}
"""


def write_wide_csv(path: Path, rows: int = 4000, seed: int = 0, users: int = 120, items: int = 300) -> None:
    """A wide CTR table: label, 3 dense, user/item/site ids, 4 static columns, a multi-hot tag list,
    a timestamp and an unused column; the label depends on item and a dense feature."""
    rng = np.random.default_rng(seed)
    head = "click,price,age,score,user_id,item_id,site,brand,color,device,hour,tags,ts,row_id"
    lines = [head]
    item_q = rng.normal(size=items)
    for r in range(rows):
        u, i = int(rng.integers(users)), int(rng.integers(items))
        price = float(rng.gamma(2.0, 10.0))
        p = 1 / (1 + np.exp(-(item_q[i] - 0.02 * price + 0.3)))
        y = int(rng.random() < p)
        price_s = "" if rng.random() < 0.05 else f"{price:.2f}"
        tags = "|".join(f"t{x}" for x in rng.choice(10, size=int(rng.integers(0, 4)), replace=False))
        lines.append(f"{y},{price_s},{int(rng.integers(18, 70))},{rng.normal():.3f},user{u},it{i},"
                     f"s{int(rng.integers(300))},b{i % 7},c{int(rng.integers(5))},d{int(rng.integers(3))},"
                     f"{int(rng.integers(24))},{tags},{1_700_000_000 + r},{r}")
    path.write_text("\n".join(lines) + "\n")


WIDE_SCHEMA = """\
name: wide
columns:
  click: {role: label}
  price: {role: dense, transform: log1p}
  age: {role: dense}
  score: {role: dense}
  user_id: {role: id, user_key: true}
  item_id: {role: id, item_key: true}
  site: {role: id, hash_buckets: 512}
  brand: {role: static, group: item}
  color: {role: static, group: item}
  device: {role: static, group: context}
  hour: {role: static, group: context}
  tags: {role: static, group: item, multi_hot: "|"}
  ts: {role: timestamp}
  row_id: {role: drop}
split: {method: random, train_frac: 0.8, valid_frac: 0.1}
"""
