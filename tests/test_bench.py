"""Every ``store-rec bench`` suite in its tiny mode: exit 0 and JSON + markdown (+ PNG) with the
documented fields, machine info included. Speed itself is never asserted here (benchmarks measure it)."""

from __future__ import annotations

import json
import math

import pytest

from store_rec.cli import main

MACHINE_KEYS = {"cpu_count", "torch", "torchrec", "device", "python"}


def _bench(tmp_path, suite, *args):
    out = tmp_path / f"{suite}.json"
    assert main(["bench", suite, "--quick", "--out", str(out), *args]) == 0
    payload = json.loads(out.read_text())
    assert payload["suite"] == suite and MACHINE_KEYS <= set(payload["machine"])
    assert out.with_suffix(".md").read_text().startswith(f"# bench {suite}")
    assert out.with_suffix(".png").stat().st_size > 0
    assert payload["records"]
    return payload


def test_bench_attention_quick_interface(tmp_path):
    """The interface other work relies on: seq_len, sparsity, moba_s, dense_s, speedup, flops_ratio, with
    L=512 at sparsity 0.5 present even in quick mode."""
    p = _bench(tmp_path, "attention", "--batch", "2", "--repeats", "1")
    for r in p["records"]:
        assert {"seq_len", "sparsity", "moba_s", "dense_s", "speedup", "flops_ratio"} <= set(r)
        assert r["moba_s"] > 0 and r["dense_s"] > 0
        assert r["speedup"] == pytest.approx(r["dense_s"] / r["moba_s"])
    at = {(r["seq_len"], r["sparsity"]): r for r in p["records"]}
    assert at[(512, 0.5)]["flops_ratio"] == pytest.approx(2.0, rel=0.02)  # half the key blocks: half the core FLOPs
    assert at[(512, 0.0)]["flops_ratio"] == pytest.approx(1.0, rel=0.02)
    assert "speedup_L512_s0.5" in p["summary"]


def test_bench_attention_arch_level(tmp_path):
    p = _bench(tmp_path, "attention", "--level", "arch", "--lengths", "32", "--sparsities", "0.5", "--batch", "2",
               "--d-model", "16", "--heads", "2", "--repeats", "1")
    (r,) = p["records"]
    assert r["level"] == "arch" and 1.0 < r["flops_ratio"] < 2.0  # diluted by FFN and projections


def test_bench_attention_routings_naming_the_default_measures_it_once(tmp_path):
    # 'instance' runs at every sparsity anyway; naming it in --routings once crashed the summary's sort
    p = _bench(tmp_path, "attention", "--level", "layer", "--lengths", "16,32", "--sparsities", "0,0.5",
               "--routings", "instance,query_block", "--batch", "2", "--d-model", "16", "--heads", "2", "--repeats", "1")
    keys = [(r["seq_len"], r["sparsity"], r["routing"]) for r in p["records"]]
    assert len(keys) == len(set(keys)) == 6  # 2 lengths x (2 sparsities of instance + query_block at 0.5)
    assert "dense_time_exponent" in p["summary"]


def test_bench_data_quick_has_loader_and_train_step(tmp_path):
    p = _bench(tmp_path, "data", "--rows", "6000", "--batch-size", "512", "--repeats", "1", "--train-steps", "2")
    stages = {(r["stage"], r["schema"]) for r in p["records"]}
    assert {("loader", "avazu"), ("loader", "synthetic"), ("train_step", "avazu"), ("train_step", "synthetic")} <= stages
    assert all(r["samples_per_s"] > 0 for r in p["records"])
    assert p["summary"]["loader_headroom_synthetic"] > 0


def test_bench_train_quick(tmp_path):
    p = _bench(tmp_path, "train", "--models", "store_moba,store_vanilla,dlrm_dcn", "--world-sizes", "1", "--steps", "3",
               "--rows", "2000", "--num-sids", "4")
    rs = {r["model"]: r for r in p["records"]}
    assert set(rs) == {"store_moba", "store_vanilla", "dlrm_dcn"}
    for r in rs.values():
        assert r["steps"] == 3 and r["samples_per_s"] > 0 and r["tflops_per_batch"] > 0 and r["seq_len"] > 4
    assert rs["store_vanilla"]["speedup_vs_vanilla"] == 1.0
    # same tokens and dims: MoBA at sparsity 1/2 does fewer attention FLOPs than the dense twin
    assert rs["store_moba"]["tflops_per_batch"] < rs["store_vanilla"]["tflops_per_batch"]
    assert math.isclose(rs["store_moba"]["flops_ratio_vs_vanilla"],
                        rs["store_vanilla"]["tflops_per_batch"] / rs["store_moba"]["tflops_per_batch"])


def test_bench_train_history_on_two_ranks(tmp_path):
    """``--history-len``: the sequence models through the real app on 1 and 2 gloo ranks (the history
    EmbeddingCollection sharded); STORE's token count is N * K history tokens + the non-sequential ones."""
    p = _bench(tmp_path, "train", "--history-len", "16", "--items-per-block", "2", "--world-sizes", "1,2", "--steps", "2",
               "--rows", "1500", "--models", "store_moba,store_vanilla,din")
    rs = {(r["world_size"], r["model"]): r for r in p["records"]}
    assert set(rs) == {(w, m) for w in (1, 2) for m in ("store_moba", "store_vanilla", "din")}
    assert p["config"]["history_len"] == 16 and p["config"]["num_sids"] == 3 and p["config"]["block_size"] == 6
    no_hist = _bench(tmp_path / "nh", "train", "--models", "store_moba", "--world-sizes", "1", "--steps", "1",
                     "--rows", "1500", "--num-sids", "3")["records"][0]
    assert rs[(1, "store_moba")]["seq_len"] == no_hist["seq_len"] + 16 * 3
    for w in (1, 2):
        assert rs[(w, "store_moba")]["steps"] == 2 and rs[(w, "din")]["samples_per_s"] > 0
        # 8 history blocks at sparsity 1/2: MoBA does fewer FLOPs than its dense twin on the same tokens
        assert rs[(w, "store_moba")]["flops_ratio_vs_vanilla"] > 1.1
    assert "store_moba_vs_vanilla_speedup_2rank" in p["summary"]


def test_bench_tokenizer_quick(tmp_path):
    p = _bench(tmp_path, "tokenizer", "--train-items", "3000", "--encode-items", "2000", "--settings", "2x8",
               "--batch-size", "512", "--repeats", "1")
    assert [r["method"] for r in p["records"]] == ["opmq", "rqvae", "opq"]
    for r in p["records"]:
        assert (r["K"], r["C"], r["encode_items"], r["train_items"]) == (2, 8, 2000, 3000)
        assert r["encode_items_per_s"] > 0 and r["train_seconds"] > 0 and 0 < r["utilization"] <= 1
        assert 0 < r["unique_tuple_rate"] <= 1 and r["recon_mse"] > 0
