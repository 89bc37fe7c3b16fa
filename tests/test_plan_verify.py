"""`store-rec plan --verify`: a saved world-size-2 cpu plan run on 2 gloo ranks == the unsharded EBC."""

from __future__ import annotations

import json

from store_rec.cli import main


def test_verify_table_wise_column_wise_row_wise_on_2_gloo_ranks(tmp_path, capsys):
    # 4 synthetic tables (dims 128/64/32/16), rows capped at 300 for the 2-rank run
    rc = main(
        [
            "plan", "--synthetic-tables", "4", "--rows-scale", "1e-6", "--topology", "cpu_gloo",
            "--strategy", "table_wise,column_wise,row_wise", "--verify", "--verify-max-rows", "300", "--out", str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    res = {r["strategy"]: r for r in json.loads((tmp_path / "out" / "verify" / "verify.json").read_text())}
    assert set(res) == {"table_wise", "column_wise", "row_wise"}
    for s, r in res.items():
        assert r["ok"] and r["max_fwd_diff"] <= 1e-5 and r["max_grad_diff"] <= 1e-5, r
        assert sorted(x["rank"] for x in r["ranks"]) == [0, 1]
    # table_wise: every table whole on one rank (4 tables over 2 ranks); column_wise: each table split in 2
    plan_tw = json.loads((tmp_path / "out" / "verify" / "plan_verify_table_wise.json").read_text())["plan"]
    assert all(len(e["shards"]) == 1 for e in plan_tw.values())
    assert sum(x["shards_checked"] for x in res["table_wise"]["ranks"]) == 4
    plan_cw = json.loads((tmp_path / "out" / "verify" / "plan_verify_column_wise.json").read_text())["plan"]
    assert all(len(e["shards"]) == 2 and e["shards"][0]["sizes"][1] * 2 == e["shards"][0]["sizes"][1] + e["shards"][1]["sizes"][1] for e in plan_cw.values())
    assert sum(x["shards_checked"] for x in res["column_wise"]["ranks"]) == 8
    # row_wise on cpu/gloo (store_rec's CpuRowWiseEBCSharder): each table's rows split over both ranks
    plan_rw = json.loads((tmp_path / "out" / "verify" / "plan_verify_row_wise.json").read_text())["plan"]
    assert all([s["rank"] for s in e["shards"]] == [0, 1] and e["shards"][1]["offsets"][0] > 0 for e in plan_rw.values())
    assert sum(x["shards_checked"] for x in res["row_wise"]["ranks"]) == 8
    assert "--verify table_wise: 2 gloo ranks" in out and "-> OK" in out
    assert "--verify: gloo reduce_scatter / reduce_scatter_tensor on 2 ranks (expected [3.0, 3.0] and [6.0, 6.0]): rank 0: [3.0, 3.0] / [3.0, 3.0]; rank 1: [6.0, 6.0] / [6.0, 6.0]" in out
