"""Bad input to ``store-rec data prepare``: each case exits 2 with a message naming file/line/key, and
no output (nor temp directory) is left behind."""

from __future__ import annotations

import gzip
from pathlib import Path

from store_rec.cli import main
from store_rec.data.prepare import prepare
from store_rec.data.schema import DatasetSchema

HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
          "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def _row(i: int, click="0", hour="14102100") -> str:
    return f"{1000 + i},{click},{hour},1005,0,s{i % 3},d,c,a,ad,ac,di,ip{i % 4},m,1,0,1,2,3,4,5,6,7,8"


def _avazu(tmp_path: Path, lines, name="a.csv") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _run(capsys, tmp_path, *argv):
    out = tmp_path / "out"
    rc = main(["data", "prepare", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    return rc, err, out


def _no_leftovers(tmp_path: Path, out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_wrong_path(capsys, tmp_path):
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(tmp_path / "missing.csv"))
    assert rc == 2 and "missing.csv: --source does not exist" in err
    _no_leftovers(tmp_path, out)


def test_empty_file(capsys, tmp_path):
    (tmp_path / "e.csv").write_text("")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(tmp_path / "e.csv"))
    assert rc == 2 and "e.csv: empty file" in err
    _no_leftovers(tmp_path, out)
    _avazu(tmp_path, [HEADER], "h.csv")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(tmp_path / "h.csv"))
    assert rc == 2 and "h.csv: no data rows" in err


def test_wrong_field_count_names_line_and_skip(capsys, tmp_path):
    lines = [HEADER] + [_row(i) for i in range(10)]
    lines[4] = lines[4].rsplit(",", 1)[0]  # 23 fields on line 5
    src = _avazu(tmp_path, lines)
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src))
    assert rc == 2 and "a.csv: line 5: expected 24 fields, got 23" in err
    _no_leftovers(tmp_path, out)
    rc = main(["data", "prepare", "avazu", "--source", str(src), "--out", str(out), "--skip-bad-rows",
               "--set", "min_count=1"])
    printed = capsys.readouterr().out
    assert rc == 0 and "skipped malformed rows: 1" in printed
    schema = DatasetSchema.load(out)
    assert schema.params["skipped_rows"] == 1 and sum(s.rows for s in schema.splits.values()) == 9


def test_bad_label_and_hour(capsys, tmp_path):
    src = _avazu(tmp_path, [HEADER, _row(0), _row(1, click="yes"), _row(2)])
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src))
    assert rc == 2 and "line 3: column 'click': label must be 0 or 1, got 'yes'" in err
    _no_leftovers(tmp_path, out)
    src = _avazu(tmp_path, [_row(0), _row(1), _row(2, hour="14139900")], "nohdr.csv")  # month 13
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src))
    assert rc == 2 and "nohdr.csv: line 3: column 'hour': expected YYMMDDHH, got '14139900'" in err
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src), "--skip-bad-rows")
    assert rc == 0 and DatasetSchema.load(out).params["skipped_rows"] == 1


def test_unknown_and_missing_column(capsys, tmp_path):
    src = _avazu(tmp_path, [HEADER.replace("C21", "C99"), _row(0)])
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src))
    assert rc == 2 and "a.csv: line 1: unknown column(s) ['C99']" in err
    src = _avazu(tmp_path, [HEADER.rsplit(",", 1)[0], _row(0).rsplit(",", 1)[0]], "b.csv")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src))
    assert rc == 2 and "b.csv: line 1: missing column(s) ['C21']" in err
    _no_leftovers(tmp_path, out)


def test_criteo_non_numeric_dense(capsys, tmp_path):
    head = "label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
    row = "0," + ",".join(["1.0"] * 13) + "," + ",".join(["0a1b2c3d"] * 26)
    bad = row.split(",")
    bad[5] = "abc"  # I5
    lines = [head, row, row, ",".join(bad), row]
    p = tmp_path / "c.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("\n".join(lines) + "\n")
    rc, err, out = _run(capsys, tmp_path, "criteo", "--source", str(p))
    assert rc == 2 and "c.csv.gz: line 4: column 'I5': non-numeric value 'abc'" in err
    _no_leftovers(tmp_path, out)
    tsv = tmp_path / "t.txt"
    tsv.write_text("1\t2\n")
    rc, err, out = _run(capsys, tmp_path, "criteo", "--source", str(tsv))
    assert rc == 2 and "t.txt: line 1: expected 40 fields, got 2" in err


def test_bad_config_key_and_value(capsys, tmp_path):
    src = _avazu(tmp_path, [HEADER, _row(0), _row(1)])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("min_cnt: 3\n")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src), "--config", str(cfg))
    assert rc == 2 and "cfg.yaml: min_cnt: unknown key" in err
    cfg.write_text("static_groups:\n  ad: [C1, banner_pos, C15, C16, C18, C19, C20, C21, nope]\n")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src), "--config", str(cfg))
    assert rc == 2 and "static_groups.ad[8]: unknown column 'nope'" in err
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(src), "--set", "drop=[site_id]")
    assert rc == 2 and "drop: column 'site_id' is also listed in id_features" in err
    rc, err, out = _run(capsys, tmp_path, "criteo", "--source", str(src), "--set", "categorical=md5")
    assert rc == 2 and "categorical: 'md5' is not one of ['vocab', 'hash']" in err
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(tmp_path), "--set", "neg_ratio=-1")
    assert rc == 2 and "neg_ratio: must be >= 0" in err
    _no_leftovers(tmp_path, out)


def test_movielens_missing_files(capsys, tmp_path, shared_datasets):
    d = tmp_path / "ml"
    (d / "sub").mkdir(parents=True)
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "no interactions file found" in err
    (d / "sub" / "ratings.dat").write_text("1::1::5::1\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "users.dat not found" in err
    (d / "users.dat").write_bytes((shared_datasets / "ml-1m" / "grouplens" / "users.dat").read_bytes())
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "movies.dat not found" in err
    (d / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    (d / "sub" / "ratings.dat").write_text("1::1::5::1\n1::x::5::2\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "ratings.dat: row 2: column 'MovieID': expected a positive integer id, got 'x'" in err
    (d / "sub" / "ratings.dat").write_text("1::1::5::1\n1::7::5::2\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "movie id 7 is not in" in err
    _no_leftovers(tmp_path, out)


def test_failure_in_second_file_leaves_nothing_and_overwrite(capsys, tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    _avazu(d, [HEADER] + [_row(i) for i in range(5)], "a.csv")
    _avazu(d, [_row(9), "1,2,3"], "b.csv")
    rc, err, out = _run(capsys, tmp_path, "avazu", "--source", str(d))
    assert rc == 2 and "b.csv: line 2: expected 24 fields, got 3" in err
    _no_leftovers(tmp_path, out)
    (d / "b.csv").unlink()
    prepare("avazu", str(d), out, min_count=1)
    rc, err, _ = _run(capsys, tmp_path, "avazu", "--source", str(d))
    assert rc == 2 and "output directory exists and is not empty (use --overwrite)" in err
    rc, err, _ = _run(capsys, tmp_path, "synthetic", "--source", str(d))
    assert rc == 2 and "synthetic: --source is not used" in err


def test_info_on_non_dataset(capsys, tmp_path):
    rc = main(["data", "info", str(tmp_path)])
    assert rc == 2 and "no prepared dataset here" in capsys.readouterr().err
