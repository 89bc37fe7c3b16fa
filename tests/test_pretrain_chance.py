"""SASRec's report compares with chance; embeddings worse than chance are not exported unless --force."""

import json

import numpy as np
import pytest

from store_rec.tokenizer.sasrec import chance_hr_ndcg, worse_than_chance


def test_chance_level_is_exact():
    c = chance_hr_ndcg(101)
    assert c["hr@10"] == pytest.approx(10 / 101)
    assert c["ndcg@10"] == pytest.approx(sum(1 / np.log2(r + 2) for r in range(10)) / 101)
    # a random ranking reaches it (Monte Carlo over uniform ranks)
    ranks = np.random.default_rng(0).integers(0, 101, size=200_000)
    assert (ranks < 10).mean() == pytest.approx(c["hr@10"], abs=3e-3)
    # worse than chance = below by more than 2 standard errors of a chance-level HR
    assert worse_than_chance(0.033, 1000, 101) and not worse_than_chance(0.09, 1000, 101)
    assert not worse_than_chance(0.06, 50, 101)  # 50 users: 0.06 is within noise of 0.099


def _fake_result(hr):
    from store_rec.tokenizer.sasrec import SASRecResult

    m = {f"{n}_{s}": {"hr@10": v, "ndcg@10": v / 2} for n, v in (("sasrec", hr), ("popularity", 0.2))
         for s in ("valid", "test")}
    for s in ("valid", "test"):
        m[f"chance_{s}"] = {**chance_hr_ndcg(101), "candidates": 101}
    return SASRecResult(model=None, embeddings=np.zeros((6, 8), np.float32), metrics=m, epochs=1, seconds=0.1,
                        num_users=2000, catalog_size=5)


def test_pretrain_refuses_worse_than_chance_unless_forced(tmp_path, monkeypatch, capsys):
    from store_rec.cli import main
    import store_rec.tokenizer.sasrec as sasrec

    txt = tmp_path / "seq.txt"
    txt.write_text("".join(f"{u} {i}\n" for u in range(1, 4) for i in range(1, 6)))
    monkeypatch.setattr(sasrec, "train_sasrec", lambda seqs, cfg: _fake_result(0.033))
    out = tmp_path / "emb.parquet"
    assert main(["pretrain", "--sequences", str(txt), "--out", str(out), "--dim", "8"]) == 2
    cap = capsys.readouterr()
    assert "worse than chance on test HR@10 (0.0330 < chance 0.0990" in cap.err and "--force" in cap.err
    assert "chance" in cap.out and not out.exists() and not out.with_suffix(".json").exists()
    assert main(["pretrain", "--sequences", str(txt), "--out", str(out), "--dim", "8", "--force"]) == 0
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["worse_than_chance"] is True and rep["beats_chance"] is False and "worse than chance" in rep["warning"]
    assert rep["metrics"]["chance_test"]["hr@10"] == pytest.approx(10 / 101)
    monkeypatch.setattr(sasrec, "train_sasrec", lambda seqs, cfg: _fake_result(0.3))
    out2 = tmp_path / "ok.parquet"
    assert main(["pretrain", "--sequences", str(txt), "--out", str(out2), "--dim", "8"]) == 0
    assert json.loads(out2.with_suffix(".json").read_text())["beats_chance"] is True


def test_sequence_text_file_pairs_and_one_line_per_user_are_the_same(tmp_path):
    from store_rec.errors import DataError
    from store_rec.tokenizer.sasrec import load_sequences_text

    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1 5\n2 7\n1 6\n1 9\n2 3\n")
    lines = tmp_path / "lines.txt"
    lines.write_text("1 5 6 9\n2 7 3\n")
    a, b = load_sequences_text(pairs), load_sequences_text(lines)
    assert [x.tolist() for x in a.items] == [x.tolist() for x in b.items] == [[5, 6, 9], [7, 3]]
    assert a.num_items == b.num_items == 9 and a.users.tolist() == [1, 2]
    lines.write_text("1 5 6\n2 0 3\n")
    with pytest.raises(DataError, match="line 2: item id 0 < 1"):
        load_sequences_text(lines)
    lines.write_text("1 5 x\n")
    with pytest.raises(DataError, match="line 1: expected integers"):
        load_sequences_text(lines)
