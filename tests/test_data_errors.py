"""Bad input to ``store-rec data prepare``: each case exits 2 with a message naming file/line/key, and
no output (nor temp directory) is left behind."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store_rec.cli import main
from store_rec.data.prepare import prepare
from store_rec.data.schema import SPLITS, DatasetSchema
from store_rec.data.writer import DatasetWriter
from store_rec.errors import DataError, UserError

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
    (tmp_path / "ml").mkdir()
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(tmp_path / "ml"), "--set", "neg_ratio=-1")
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
    assert rc == 2 and "ratings.dat: line 2: column 'MovieID': expected a positive integer id, got 'x'" in err
    (d / "sub" / "ratings.dat").write_text("1::1::5::1\n1::7::5::2\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(d))
    assert rc == 2 and "ratings.dat: line 2: movie id 7 is not in" in err
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
    assert rc == 2 and "output directory exists and is not empty (use --overwrite" in err
    rc, err, _ = _run(capsys, tmp_path, "synthetic", "--source", str(d))
    assert rc == 2 and "synthetic: --source is not used" in err


def test_info_on_non_dataset(capsys, tmp_path):
    rc = main(["data", "info", str(tmp_path)])
    assert rc == 2 and "no prepared dataset here" in capsys.readouterr().err


# ------------------------------------------------------------------------------ existing --out directory
def test_existing_empty_out_dir_is_replaced_non_empty_refused(capsys, tmp_path):
    src = _avazu(tmp_path, [HEADER] + [_row(i) for i in range(6)])
    out = tmp_path / "out"
    out.mkdir()  # empty: fine, replaced by the dataset
    rc = main(["data", "prepare", "avazu", "--source", str(src), "--out", str(out), "--set", "min_count=1"])
    assert rc == 0, capsys.readouterr().err
    assert sum(s.rows for s in DatasetSchema.load(out).splits.values()) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    rc = main(["data", "prepare", "avazu", "--source", str(src), "--out", str(other)])
    assert rc == 2 and "other: output directory exists and is not empty (use --overwrite" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["keep.txt"] and (other / "keep.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    rc = main(["data", "prepare", "avazu", "--source", str(src), "--out", str(tmp_path / "afile")])
    assert rc == 2 and "afile: exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def _tiny_schema(name: str) -> DatasetSchema:
    return DatasetSchema(dataset=name, label="label", dense=[], sparse=[], user_key=None, sequences=None,
                         split_method="test", source="test", params={})


def test_writer_out_dir_appearing_while_preparing(tmp_path):
    table = pa.table({"label": pa.array([1.0, 0.0], pa.float32())})
    out = tmp_path / "d"
    with DatasetWriter(out) as w:  # absent at start, created empty meanwhile: replaced
        w.split("train", table.schema, label="label").write(table)
        out.mkdir()
        w.commit(_tiny_schema("a"))
    assert pq.read_table(out / "train" / "part-00000.parquet").num_rows == 2
    assert DatasetSchema.load(out).splits["train"].positives == 1
    out2 = tmp_path / "e"
    with pytest.raises(UserError, match=r"e: output directory is not empty \(files were written to it while "
                                        r"preparing\); refusing to replace it"):
        with DatasetWriter(out2) as w:  # filled meanwhile: never clobbered
            w.split("train", table.schema, label="label").write(table)
            out2.mkdir()
            (out2 / "x").write_text("someone else's")
            w.commit(_tiny_schema("b"))
    assert [p.name for p in out2.iterdir()] == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e"]  # temp dirs removed


# ------------------------------------------------------------------------------ movielens malformed lines
def _ml_dir(root: Path, users=None, movies=None, ratings=None) -> Path:
    """4 users rating movies u..u+5 (5 stars, times 1..6); 20 movies; well-formed unless overridden."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "users.dat").write_text(users if users is not None else
                                    "".join(f"{u}::{'FM'[u % 2]}::{u}::{u + 10}::{u}0000\n" for u in range(1, 5)))
    (root / "movies.dat").write_text(movies if movies is not None else
                                     "".join(f"{m}::Movie {m} ({1980 + m})::Comedy\n" for m in range(1, 21)))
    (root / "ratings.dat").write_text(ratings if ratings is not None else "".join(
        f"{u}::{u + k}::5::{k + 1}\n" for u in range(1, 5) for k in range(6)))
    return root


def _good_ratings() -> list:
    return [f"{u}::{u + k}::5::{k + 1}" for u in range(1, 5) for k in range(6)]


def test_movielens_malformed_dat_lines_named_and_skipped(capsys, tmp_path):
    good_users = [f"{u}::{'FM'[u % 2]}::{u}::{u + 10}::{u}0000" for u in range(1, 5)]
    users = good_users[:2] + ["9::F::1::10", "x::M::1::1::1", "2::M::3::3::99999"] + good_users[2:]
    movies = [f"{m}::Movie {m} ({1980 + m})::Comedy" for m in range(1, 21)]
    movies.insert(4, "21::No genres field")
    ratings = _good_ratings()
    ratings[3:3] = ["1::2::3", "2:7::5::9", "1:9:3::4::5", "3::x::5::1", "4::99::5::1"]  # lines 4..8
    src = _ml_dir(tmp_path / "ml", "\n".join(users) + "\n", "\n".join(movies) + "\n", "\n".join(ratings) + "\n")
    argv = ["movielens", "--source", str(src), "--set", "neg_ratio=1"]
    rc, err, out = _run(capsys, tmp_path, *argv)
    assert rc == 2 and "ratings.dat: line 4: expected UserID::MovieID::Rating::Timestamp, got '1::2::3' " \
                       "(use --skip-bad-rows to skip malformed rows)" in err
    _no_leftovers(tmp_path, out)
    fixed = ratings[:3] + ratings[4:]  # each ratings problem in turn becomes the first one
    expected = ["line 4: expected UserID::MovieID::Rating::Timestamp, got '2:7::5::9'",
                "line 4: expected UserID::MovieID::Rating::Timestamp, got '1:9:3::4::5'",
                "line 4: column 'MovieID': expected a positive integer id, got 'x'"]
    for want in expected:
        (src / "ratings.dat").write_text("\n".join(fixed) + "\n")
        rc, err, out = _run(capsys, tmp_path, *argv)
        assert rc == 2 and f"ratings.dat: {want}" in err, (want, err)
        fixed = fixed[:3] + fixed[4:]
    (src / "ratings.dat").write_text("\n".join(fixed) + "\n")  # ratings fine now; users.dat line 3 is not
    rc, err, out = _run(capsys, tmp_path, *argv)
    assert rc == 2 and ("users.dat: line 3: expected UserID::Gender::Age::Occupation::Zip-code "
                        "(5 '::'-separated fields), got 4 field(s): '9::F::1::10'") in err
    (src / "users.dat").write_text("\n".join(users[:2] + users[3:]) + "\n")
    rc, err, out = _run(capsys, tmp_path, *argv)
    assert rc == 2 and "users.dat: line 3: UserID: expected a positive integer id, got 'x'" in err
    (src / "users.dat").write_text("\n".join(users[:2] + users[4:]) + "\n")
    rc, err, out = _run(capsys, tmp_path, *argv)
    assert rc == 2 and "users.dat: line 3: duplicate UserID 2 (first on line 2)" in err
    (src / "users.dat").write_text("\n".join(good_users) + "\n")
    rc, err, out = _run(capsys, tmp_path, *argv)
    assert rc == 2 and ("movies.dat: line 5: expected MovieID::Title::Genres (3 '::'-separated fields), "
                        "got 2 field(s)") in err
    (src / "movies.dat").write_text("\n".join(movies[:4] + movies[5:]) + "\n")
    rc, err, out = _run(capsys, tmp_path, *argv)  # ratings line 4 is "4::99::5::1"
    assert rc == 2 and f"ratings.dat: line 4: movie id 99 is not in {src / 'movies.dat'} (1 unknown movie id(s))" in err
    _no_leftovers(tmp_path, out)
    (src / "movies.dat").write_text("\n".join(movies) + "\n")

    # --skip-bad-rows: every malformed line of the three files is skipped and counted, the rest prepared
    (src / "users.dat").write_text("\n".join(users) + "\n")
    (src / "ratings.dat").write_text("\n".join(ratings) + "\n")
    rc = main(["data", "prepare", *argv, "--out", str(out), "--skip-bad-rows"])
    printed = capsys.readouterr().out
    assert rc == 0 and "skipped malformed rows: 9" in printed
    s = DatasetSchema.load(out)
    assert s.params["skipped_rows"] == 9
    assert s.params["skipped_rows_by_file"] == {str(src / "ratings.dat"): 5, str(src / "users.dat"): 3,
                                                str(src / "movies.dat"): 1}
    assert sum(x.positives for x in s.splits.values()) == 24 and sum(x.rows for x in s.splits.values()) == 48
    assert [s.splits[k].positives for k in SPLITS] == [16, 4, 4]
    # users 1..4 keep their users.dat attributes (line 5's duplicate of user 2 was skipped, not used)
    t = pq.read_table(out / "train")
    from store_rec.data.vocab import load_vocab
    occ = load_vocab(out, "occupation").decode(t.column("occupation").to_numpy())
    assert {(u, o) for u, o in zip(t.column("user_key").to_pylist(), occ)} == {(u, str(u + 10)) for u in range(1, 5)}


def test_movielens_pairs_tsv_and_parquet_errors(capsys, tmp_path):
    src = _ml_dir(tmp_path / "ml")
    (src / "ratings.dat").unlink()
    lines = [f"{u}\t{u + k}" for u in range(1, 5) for k in range(6)]
    lines.insert(1, "1\t2\t3")
    with gzip.open(src / "ratings_user_movie_pairs.tsv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(src))
    assert rc == 2 and ("ratings_user_movie_pairs.tsv.gz: line 2: expected user<TAB>movie (2 tab-separated "
                        "fields), got '1\\t2\\t3'") in err
    assert "Rating" not in err and "UserID" not in err
    lines[1] = "1\tseven"
    with gzip.open(src / "ratings_user_movie_pairs.tsv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(src))
    assert rc == 2 and "tsv.gz: line 2: column 'movie': expected a positive integer id, got 'seven'" in err
    rc, err, out = _run(capsys, tmp_path, "movielens", "--source", str(src), "--skip-bad-rows")
    assert rc == 0
    s = DatasetSchema.load(out)
    assert s.params["skipped_rows"] == 1 and sum(x.positives for x in s.splits.values()) == 24

    pq_src = _ml_dir(tmp_path / "mlpq")
    (pq_src / "ratings.dat").unlink()
    users = [str(u) for u in range(1, 5) for _ in range(6)]
    movies = [str(u + k) for u in range(1, 5) for k in range(6)]
    users[7], movies[10] = None, "1.5"
    pq.write_table(pa.table({"userID": users, "movieID": movies}), pq_src / "ratings.parquet")
    out2 = tmp_path / "out2"
    with pytest.raises(DataError, match=r"ratings.parquet: row 8: column 'userID': expected a positive integer id, "
                                        r"got None"):
        prepare("movielens", str(pq_src), out2)
    s = prepare("movielens", str(pq_src), out2, skip_bad_rows=True, neg_ratio=1)
    assert s.params["skipped_rows"] == 2 and sum(x.positives for x in s.splits.values()) == 22
