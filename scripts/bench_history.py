"""Vanilla vs MoBA with behaviour-sequence tokens (issue 13): the attention op and STORE's train step.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_history.py [--out FILE.json] [--reps 5] [--tiny]

Same process, CPU, 1 thread, variants interleaved rep by rep, medians reported:

* op: ``store_rec.ops.moba.history_attention`` fwd+bwd, B = 256, H = 2, Dh = 8 (STORE's D = 16), R
  history tokens in blocks of 12 + 12 always-attended tokens, ~1/4 of the rows with a third of
  their history padding; dense (vanilla) vs MoBA fast at sparsity 1/2 and 3/4.
* model: ``StoreModel`` with ``model.history`` (N items x 3 SID tokens + category / gap side keys)
  on prepared synthetic data (history_len N) + a SID table: one train step (forward, backward, Adam
  step) on a batch of 256, vanilla vs MoBA 1/2 and 3/4 (block = 4 items, item gate), plus the
  analytic TFLOPs per batch of 1024 (``store_rec.ops.flops.model_flops``) and their ratios.

Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch


def _interleaved(fns: Dict[str, Callable[[], None]], reps: int) -> Dict[str, float]:
    for f in fns.values():  # warm-up
        f()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def bench_op(R: int, reps: int, B: int = 256, H: int = 2, Dh: int = 8, fixed: int = 12, bs: int = 12) -> dict:
    from store_rec.ops.flops import history_attention_flops
    from store_rec.ops.moba import history_attention

    g = torch.Generator().manual_seed(0)
    L = R + fixed
    q, k, v = [torch.randn(B, H, L, Dh, generator=g, requires_grad=True) for _ in range(3)]
    kv = torch.ones(B, R, dtype=torch.bool)
    kv[: B // 4, : R // 3] = False
    gate = torch.randn(B, H, Dh, generator=g)

    def run(impl: str, sp: float) -> Callable[[], None]:
        def f() -> None:
            out = history_attention(q, k, v, kv, block_size=bs, sparsity=sp, impl=impl, gate=gate)
            torch.autograd.grad(out.sum(), [q, k, v])
        return f

    ms = _interleaved({"vanilla": run("dense", 0.5), "moba_1/2": run("fast", 0.5), "moba_3/4": run("fast", 0.75)}, reps)
    fl = {name: history_attention_flops(B, H, L, Dh, history=R, block_size=bs, sparsity=sp, impl=impl)["total"]
          for name, impl, sp in (("vanilla", "dense", 0.5), ("moba_1/2", "fast", 0.5), ("moba_3/4", "fast", 0.75))}
    return {"tokens": L, "history_tokens": R, "ms": {k: round(x, 2) for k, x in ms.items()},
            "speedup_1/2": round(ms["vanilla"] / ms["moba_1/2"], 3), "speedup_3/4": round(ms["vanilla"] / ms["moba_3/4"], 3),
            "flops_ratio_1/2": round(fl["vanilla"] / fl["moba_1/2"], 3), "flops_ratio_3/4": round(fl["vanilla"] / fl["moba_3/4"], 3)}


def bench_model(N: int, reps: int, tmp: Path, B: int = 256, rows: int = 20_000) -> dict:
    from store_rec.config import from_dict
    from store_rec.data.loader import ParquetBatchLoader
    from store_rec.data.sid_table import write_sid_table
    from store_rec.data.synthetic import prepare_synthetic
    from store_rec.models import ModelConfig, RankingTrain, build_model
    from store_rec.ops.flops import model_flops

    items = 400
    prepare_synthetic(tmp / f"ds{N}", rows=rows, items=items, users=60, num_clusters=8, num_user_groups=4, seed=5,
                      history_len=N)
    ids = np.arange(1, items + 1)
    sid = write_sid_table(tmp / f"sids{N}.parquet", ids, np.stack([ids % 7, (ids // 7) % 7, (ids // 49) % 7], 1),
                          method="opmq", codebook_size=7, item_feature="item_id")
    ld = ParquetBatchLoader(tmp / f"ds{N}", "train", B, sid_table=sid)
    batch = list(ld)[-2]  # a late batch: users have long histories
    lens = batch.sparse_features["hist_item_id"].lengths()
    models, steps = {}, {}
    for name, att in (("vanilla", {"type": "vanilla"}), ("moba_1/2", {"type": "moba", "sparsity": 0.5, "gate": "item"}),
                      ("moba_3/4", {"type": "moba", "sparsity": 0.75, "gate": "item"})):
        cfg = from_dict(ModelConfig, {"embedding_dim": 16, "item_feature": "item_id", "attention": {
            "block_size": 12, "num_heads": 2, "ffn_dim": 64, "num_layers": 2, **att},
            "history": {"enabled": True, "max_len": N, "side": ["hist_category", "hist_gap"]}}, "model")
        torch.manual_seed(0)
        train = RankingTrain(build_model(cfg, ld.schema))
        opt = torch.optim.Adam(train.parameters(), lr=1e-3)

        def step(train=train, opt=opt) -> None:  # noqa: ANN001
            loss, _ = train(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

        models[name], steps[name] = train.model, step
    ms = _interleaved(steps, reps)
    tf = {k: model_flops(m, 1024) / 1e12 for k, m in models.items()}
    inter = models["moba_1/2"].model.inter_arch
    return {"history_items": N, "tokens": inter.num_history_tokens + inter.seq_len,
            "history_tokens": inter.num_history_tokens, "non_sequential_tokens": inter.seq_len, "batch": B,
            "mean_history_len": round(float(lens.float().mean()), 1),
            "train_step_ms": {k: round(x, 1) for k, x in ms.items()},
            "speedup": round(ms["vanilla"] / ms["moba_1/2"], 3), "speedup_3/4": round(ms["vanilla"] / ms["moba_3/4"], 3),
            "tflops_per_1024": {k: round(x, 5) for k, x in tf.items()},
            "tflops_ratio": round(tf["vanilla"] / tf["moba_1/2"], 3),
            "tflops_ratio_3/4": round(tf["vanilla"] / tf["moba_3/4"], 3)}


def main(argv: List[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="CI size: a short history, 1 rep")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    lengths = [8] if a.tiny else [64, 128]
    reps = 1 if a.tiny else a.reps
    with tempfile.TemporaryDirectory() as tmp:
        res = {"threads": torch.get_num_threads(),
               "op": [bench_op(3 * n, reps, B=32 if a.tiny else 256) for n in lengths],
               "model": [bench_model(n, reps, Path(tmp), B=32 if a.tiny else 256, rows=3000 if a.tiny else 20_000)
                         for n in lengths]}
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main()
