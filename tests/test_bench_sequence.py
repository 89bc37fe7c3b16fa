"""``store-rec bench sequence --tiny``: JSON + table + PNG, the summary the issue asks for, finite numbers.
Speed is never asserted here (the committed docs/bench/sequence.json measures it)."""

from __future__ import annotations

import json
import math

from store_rec.cli import main


def test_bench_sequence_tiny(tmp_path):
    out = tmp_path / "seq.json"
    assert main(["bench", "sequence", "--tiny", "--out", str(out), "--sweep", "0.5,0.75", "--repeats", "1",
                 "--embedding-dim", "8", "--heads", "2", "--items-per-block", "2"]) == 0
    p = json.loads(out.read_text())
    assert p["suite"] == "sequence" and p["config"]["tiny"] is True
    assert out.with_suffix(".md").read_text().startswith("# bench sequence")
    assert out.with_suffix(".png").stat().st_size > 0
    s = p["summary"]
    assert {"tokens", "tflops_ratio", "speedup"} <= set(s)
    for k in ("tokens", "tflops_ratio", "speedup"):
        assert math.isfinite(s[k]) and s[k] > 0, k
    per_n = [r for r in p["records"] if r["point"] == "per_n"]
    assert {(r["history_len"], r["model"]) for r in per_n} == {(n, m) for n in (4, 8) for m in ("store_moba", "store_vanilla")}
    K = p["config"]["num_sids"]
    tok = {r["history_len"]: r["tokens"] for r in per_n}
    assert tok[8] - tok[4] == 4 * K  # N*K history tokens in front of the same non-sequential ones
    assert s["tokens"] == tok[8]
    for r in p["records"]:
        for k in ("gflops_per_batch", "flops_ratio", "step_s", "samples_per_s", "speedup", "activation_mb"):
            assert math.isfinite(r[k]) and r[k] > 0, (k, r)
    moba = {r["sparsity"]: r for r in p["records"] if r["history_len"] == 8 and r["model"] == "store_moba"}
    assert set(moba) == {0.5, 0.75} and moba[0.5]["point"] == "per_n" and moba[0.75]["point"] == "sweep"
    assert 1.0 < moba[0.5]["flops_ratio"] < moba[0.75]["flops_ratio"]  # fewer blocks, fewer FLOPs
