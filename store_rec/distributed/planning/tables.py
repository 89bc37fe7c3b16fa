"""Table statistics for the planner: fingerprints of EmbeddingBagConfigs, synthetic industrial table
sets (planning only) and pooling factors (synthetic, or measured from a prepared dataset)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

from store_rec.distributed.planning.config import SyntheticTablesConfig
from store_rec.errors import UserError


def table_fingerprint(tables: Sequence[Any]) -> List[Dict[str, Any]]:
    """``[{name, rows, dim, features}]`` of EmbeddingBagConfigs (what a saved plan is checked against);
    an EmbeddingCollection table (``EmbeddingConfig``: history tokens) also has ``"kind": "sequence"``."""
    from store_rec.distributed.sequence import is_sequence_table

    return [
        {"name": t.name, "rows": int(t.num_embeddings), "dim": int(t.embedding_dim), "features": list(t.feature_names),
         **({"kind": "sequence"} if is_sequence_table(t) else {})}
        for t in tables
    ]


def synthetic_tables(cfg: SyntheticTablesConfig) -> List[Any]:
    """An industrial-looking set of ``cfg.num_tables`` EmbeddingBagConfigs, for planning only.

    Generator (seeded, deterministic):

    * rows: the i-th largest table (i = 1..N) has ``max_rows * rows_scale * i ** -zipf`` rows, times a
      log-normal jitter (sigma 0.3), clipped to ``[min_rows, max_rows * rows_scale]``: a few tables with
      ~1e9 rows (user / item / query ids), a long tail of small ones (countries, device types).
      With the defaults and 200 tables the set has ~5-6 billion rows.
    * dim: 128 for the largest 5% of tables, 64 for the next 25%, 32 for the next 40%, 16 for the rest.
    * pooling factor: 70% single-valued (1.0); 30% multi-hot with a log-normal mean (median 8 ids).
      Stored as ``EmbeddingBagConfig`` names ``t_syn_<i>`` / features ``syn_<i>``; the pooling factors
      are returned by :func:`synthetic_pooling_factors`.
    """
    import numpy as np
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_tables
    hi = cfg.max_rows * cfg.rows_scale
    out = []
    for i in range(n):
        base = hi * (i + 1) ** (-cfg.zipf) * float(np.exp(rng.normal(0.0, 0.3)))
        rows = int(min(max(base, cfg.min_rows), hi))
        q = i / max(n, 1)
        dim = 128 if q < 0.05 else 64 if q < 0.30 else 32 if q < 0.70 else 16
        out.append(EmbeddingBagConfig(name=f"t_syn_{i}", embedding_dim=dim, num_embeddings=max(rows, 1), feature_names=[f"syn_{i}"]))
    return out


def synthetic_pooling_factors(cfg: SyntheticTablesConfig) -> Dict[str, float]:
    """Feature -> mean ids per sample for :func:`synthetic_tables` (same seed, see its docstring)."""
    import numpy as np

    rng = np.random.default_rng(cfg.seed + 1)
    out = {}
    for i in range(cfg.num_tables):
        multi = rng.random() < 0.3
        pf = float(np.exp(rng.normal(math.log(8.0), 0.8))) if multi else 1.0
        out[f"syn_{i}"] = round(max(pf, 1.0), 3)
    return out


def measure_pooling_factors(data_dir: Path, features: Sequence[str], max_rows: int = 200_000) -> Dict[str, float]:
    """Mean ids per sample of each sparse feature, from the first ``max_rows`` rows of the train split.

    int64 columns count 1 per row (id 0 = OOV is still a lookup); ``list<int64>`` columns count their
    list length (null = 0). Features not in the parquet (e.g. ``sid_*`` attached by the loader) are
    left out: the caller uses 1.0 for them.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted((Path(data_dir) / "train").glob("*.parquet"))
    if not files:
        raise UserError(f"{data_dir}/train: no parquet files to measure pooling factors from")
    sums: Dict[str, float] = {}
    rows = 0
    for f in files:
        pf = pq.ParquetFile(f)
        cols = [c for c in features if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=65_536, columns=cols):
            take = min(batch.num_rows, max_rows - rows)
            batch = batch.slice(0, take)
            for c in cols:
                col = batch.column(c)
                if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                    n = pc.sum(pc.fill_null(pc.list_value_length(col), 0)).as_py() or 0
                else:
                    n = take
                sums[c] = sums.get(c, 0.0) + float(n)
            rows += take
            if rows >= max_rows:
                break
        if rows >= max_rows:
            break
    if rows == 0:
        raise UserError(f"{data_dir}/train: no rows to measure pooling factors from")
    return {c: round(s / rows, 4) for c, s in sums.items()}
