"""Issue 11 regression tests: no command deletes or overwrites what it did not write, nothing loaded runs
code, non-finite results stop with a message, and bad input gets exit code 2 naming the file/row/key.

One test per case of the issue (``test_case<N>_...``), then a fuzz-style test feeding malformed rows,
configs and files to every CLI entry point (exit 2, a message naming the file/row/key, and an input tree
whose every file hashes the same before and after).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from store_rec.cli import main

REPO = Path(__file__).resolve().parents[1]

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
                "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")


def _row(i: int, click: str = "0", site: str = "") -> str:
    site = site or f"s{i % 3}"
    return f"{1000 + i},{click},14102100,1005,0,{site},d,c,a,ad,ac,di,ip{i % 4},m,1,0,1,2,3,4,5,6,7,8"


def _avazu_csv(path: Path, n: int = 12, extra=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([AVAZU_HEADER] + [_row(i) for i in range(n)] + list(extra)) + "\n")
    return path


def tree_hash(root: Path) -> dict:
    """relative path -> sha256 of every file under ``root`` (directories as ``<dir>``)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cli(capsys, *argv) -> tuple:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.err, cap.out


# ------------------------------------------------------------------ case 1: data prepare never deletes its input
def test_case1_prepare_out_equal_to_above_or_inside_the_source_is_refused(tmp_path, capsys):
    src = tmp_path / "raw"
    _avazu_csv(src / "train.csv")
    before = tree_hash(tmp_path)
    for out, what in [(src, "is the input --source"), (src / "train.csv", "is inside the input --source"),
                      (tmp_path, "contains the input --source"), (src / "prepared", "is inside the input --source")]:
        rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--out", out, "--overwrite",
                          "--set", "min_count=1")
        assert rc == 2 and what in err, (out, err)
        assert tree_hash(tmp_path) == before  # the raw CSV (and everything else) untouched
    # the source file itself as --out, with --source the file
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src / "train.csv", "--out", src / "train.csv",
                      "--overwrite")
    assert rc == 2 and "is the input --source" in err and tree_hash(tmp_path) == before


def test_case1_overwrite_replaces_only_a_prepared_dataset(tmp_path, capsys):
    from store_rec.data.writer import MARKER

    src = _avazu_csv(tmp_path / "raw" / "train.csv")
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "keep.txt").write_text("mine")
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--out", mine, "--overwrite")
    assert rc == 2 and "not a dataset prepared by store-rec" in err
    assert (mine / "notes" / "keep.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes"]
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "avazu", "--source", src, "--out", out, "--set", "min_count=1"]
    assert _cli(capsys, *argv)[0] == 0 and (out / MARKER).is_file() and (out / "schema.json").is_file()
    (out / "train" / "part-00000.parquet").write_bytes(b"stale")  # a previous dataset: replaced as a whole
    assert _cli(capsys, *argv, "--overwrite")[0] == 0
    assert (out / "train" / "part-00000.parquet").read_bytes()[:4] == b"PAR1"
    # a dataset written before the marker existed (schema.json only) is still recognised
    (out / MARKER).unlink()
    assert _cli(capsys, *argv, "--overwrite")[0] == 0 and (out / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp / trash dirs left


def test_case1_every_cli_output_is_checked_against_its_inputs(tmp_path, capsys):
    """The rule holds at every command: bench/plan outputs are checked before any work."""
    (tmp_path / "f").write_text("x")
    before = tree_hash(tmp_path)
    rc, err, _ = _cli(capsys, "plan", "--topology", "h100x8", "--synthetic-tables", "2", "--out", tmp_path / "f")
    assert rc == 2 and "exists and is not a directory" in err
    cfg = tmp_path / "plan.yaml"
    cfg.write_text("plan: {}\n")
    rc, err, _ = _cli(capsys, "plan", "--topology", "h100x8", "--config", cfg, "--out", cfg)
    assert rc == 2 and "is the input --config" in err
    rc, err, _ = _cli(capsys, "bench", "data", "--quick", "--out", tmp_path / "f" / "b.json")
    assert rc == 2 and "is a file, not a directory" in err
    (tmp_path / "d.json").mkdir()
    rc, err, _ = _cli(capsys, "bench", "data", "--quick", "--out", tmp_path / "d.json")
    assert rc == 2 and "is a directory" in err
    cfg.unlink()
    assert tree_hash(tmp_path) == {**before, "d.json": "<dir>"}


# ------------------------------------------------------------------ case 2: experiments names stay inside the output
EXP = """
base: {base}
datasets:
  {ds}:
    prepare: {{dataset: synthetic, set: {{rows: 1500, items: 120, users: 60}}}}
experiments:
  {ex}:
    title: t
    kind: table
    datasets: [{ds}]
    seeds: [0]
    variants:
      DCN: {{set: [model.name=dlrm_dcn]}}
"""


@pytest.mark.parametrize("ds,ex,key", [("'../../victim'", "t1", "datasets['../../victim']"),
                                       ("syn", "'../../../figpwn'", "experiments['../../../figpwn']"),
                                       ("'/abs'", "t1", "datasets['/abs']"),
                                       ("'.hidden'", "t1", "datasets['.hidden']")])
def test_case2_experiment_and_dataset_names_that_escape_are_refused(tmp_path, capsys, ds, ex, key):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    base = tmp_path / "base.yaml"
    base.write_text("data: {dir: x}\n")
    cfg = tmp_path / "work" / "exp.yaml"
    cfg.parent.mkdir()
    cfg.write_text(EXP.format(base=base, ds=ds, ex=ex))
    before = tree_hash(tmp_path)
    out = tmp_path / "work" / "a" / "out"
    rc, err, _ = _cli(capsys, "experiments", "--config", cfg, "--out", out, "--results", tmp_path / "work" / "R.md")
    assert rc == 2 and key in err and "not usable as a directory name" in err
    assert tree_hash(tmp_path) == before and not out.exists()


def test_case2_written_paths_are_checked_against_their_root(tmp_path):
    """Even with a spec built in code (no YAML validation), a run directory, a dataset directory and a plot
    never resolve outside their roots, and a non-dataset directory is never removed."""
    from store_rec.errors import UserError
    from store_rec.experiments import report
    from store_rec.experiments.runner import Artifacts
    from store_rec.experiments.spec import DatasetSpec, PaperSpec, PrepareSpec

    spec = PaperSpec.__new__(PaperSpec)  # bypass __post_init__: a spec whose names were never validated
    spec.datasets = {"../victim": DatasetSpec(prepare=PrepareSpec(dataset="synthetic"))}
    root = tmp_path / "out" / "data"
    root.mkdir(parents=True)
    with pytest.raises(UserError, match="resolves outside"):
        Artifacts(spec, root, tiny=True).data_dir("../victim")
    with pytest.raises(UserError, match="resolves outside"):
        report._figure(tmp_path / "results", "../../figpwn", {"kind": "sweep", "series": []})
    spec.datasets = {"syn": DatasetSpec(prepare=PrepareSpec(dataset="synthetic"))}
    (root / "syn").mkdir()
    (root / "syn" / "precious.txt").write_text("mine")  # not a dataset: never deleted to rebuild
    with pytest.raises(UserError, match="is not a prepared dataset; refusing to delete"):
        Artifacts(spec, root, tiny=True).data_dir("syn")
    assert (root / "syn" / "precious.txt").read_text() == "mine"


# ------------------------------------------------------------------ helpers for the tokenizer cases
def _emb(path: Path, n: int = 64, d: int = 8, scale: float = 1.0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = (np.random.default_rng(0).standard_normal((n, d)) * scale).astype(np.float32)
    table = pa.table({"item": pa.array(np.arange(1, n + 1), pa.int64()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d)})
    pq.write_table(table, path)
    return path


def _tok_argv(emb, out, *extra):
    return ["tokenize", "--embeddings", emb, "--num-sids", "2", "--codebook-size", "4", "--steps", "5",
            "--out", out, *extra]


# ------------------------------------------------------------------ case 4: tokenize --out == --embeddings
def test_case4_tokenize_out_equal_to_an_input_is_refused(tmp_path, capsys):
    emb = _emb(tmp_path / "emb.parquet")
    before = tree_hash(tmp_path)
    for argv, what in [
        (_tok_argv(emb, emb), "--out {}: is the input --embeddings"),
        (_tok_argv(emb, tmp_path / "s.parquet", "--report", emb), "--report {}: is the input --embeddings"),
        (_tok_argv(emb, tmp_path / "s.parquet", "--save-model", emb), "--save-model {}: is the input"),
        (_tok_argv(emb, tmp_path / "sub" / ".." / "emb.parquet"), "is the input --embeddings"),
        (_tok_argv(emb, tmp_path / "s.parquet", "--report", tmp_path / "s.parquet"), "two outputs cannot share"),
    ]:
        rc, err, _ = _cli(capsys, *argv)
        assert rc == 2 and what.split("{}")[-1] in err, err
    os.symlink(emb, tmp_path / "link.parquet")  # through a symlink too
    rc, err, _ = _cli(capsys, *_tok_argv(emb, tmp_path / "link.parquet"))
    assert rc == 2 and "is the input --embeddings" in err
    (tmp_path / "link.parquet").unlink()
    assert tree_hash(tmp_path) == before


# ------------------------------------------------------------------ case 5: nothing loaded runs code
class _Evil:
    """Unpickling this calls ``open(marker, "w")`` — a stand-in for any code a crafted file could run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_case5_crafted_tokenizer_file_is_refused_not_executed(tmp_path):
    import torch

    from store_rec.errors import UserError
    from store_rec.tokenizer.online import load_tokenizer, save_tokenizer
    from store_rec.tokenizer.opmq import OPMQ, OPMQConfig

    marker = tmp_path / "pwned"
    evil = tmp_path / "tok.pt"
    torch.save({"version": 1, "method": "opmq", "payload": _Evil(str(marker))}, evil)
    with pytest.raises(UserError, match="refused: the file holds objects other than tensors"):
        load_tokenizer(evil)
    assert not marker.exists()  # the payload never ran
    # a real tokenizer file still loads (weights only: plain containers + tensors)
    tok = OPMQ(8, config=OPMQConfig(num_sids=2, codebook_size=4, hidden_dims=[16]))
    save_tokenizer(tmp_path / "ok.pt", tok, "opmq")
    loaded, method = load_tokenizer(tmp_path / "ok.pt")
    assert method == "opmq" and loaded.num_sids == 2
    for k, v in tok.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


# ------------------------------------------------------------------ case 7: huge / non-finite embeddings
def test_case7_huge_embeddings_are_refused_and_nothing_written(tmp_path, capsys):
    emb = _emb(tmp_path / "emb.parquet", scale=1e30)
    out = tmp_path / "s.parquet"
    rc, err, _ = _cli(capsys, *_tok_argv(emb, out, "--report", tmp_path / "r.json"))
    assert rc == 2 and "emb.parquet: embedding of id 1 (row 0) has a value of magnitude" in err
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_case7_diverging_tokenizer_training_stops_with_the_file_and_step(tmp_path, capsys, monkeypatch):
    """Finite inputs whose training still goes non-finite (here: a huge learning rate on large values):
    exit 2 naming the file and the step, no SID table of (0, 0, 0) rows, no report with NaN."""
    import torch

    from store_rec.tokenizer import train as tok_train

    emb = _emb(tmp_path / "emb.parquet", scale=1e14)
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("train: {lr: 1.0e+30}\n")
    out = tmp_path / "s.parquet"
    rc, err, _ = _cli(capsys, *_tok_argv(emb, out, "--config", cfg, "--report", tmp_path / "r.json"))
    assert rc == 2 and "emb.parquet: tokenizer" in err and ("diverged: step" in err or "not finite" in err), err
    assert not out.exists() and not (tmp_path / "r.json").exists()
    # the training loop itself: a non-finite loss raises at its step
    from store_rec.tokenizer.opmq import OPMQ, OPMQConfig

    m = OPMQ(4, config=OPMQConfig(num_sids=2, codebook_size=2, hidden_dims=[8]))
    x = torch.randn(16, 4)
    orig = m.forward

    def nan_forward(batch):
        o = orig(batch)
        return o._replace(losses={**o.losses, "recon": o.losses["recon"] * float("nan")})

    monkeypatch.setattr(m, "forward", nan_forward)
    with pytest.raises(FloatingPointError, match="step 0: loss is nan"):
        tok_train.fit_tokenizer(m, x, tok_train.TrainConfig(steps=3, batch_size=8))


# ------------------------------------------------------------------ case 10: raw tracebacks -> exit 2 naming the file
def test_case10_corrupt_gzip_names_the_file(tmp_path, capsys):
    data = bytearray(gzip.compress(("\n".join([AVAZU_HEADER] + [_row(i) for i in range(2000)]) + "\n").encode()))
    for i in range(200, 260):
        data[i] ^= 0x55
    (tmp_path / "raw").mkdir()
    src = tmp_path / "raw" / "train.csv.gz"
    src.write_bytes(bytes(data))
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--out", tmp_path / "o")
    assert rc == 2 and "train.csv.gz: corrupt or truncated gzip file" in err
    seq = tmp_path / "seq.txt.gz"
    seq.write_bytes(bytes(data))
    rc, err, _ = _cli(capsys, "pretrain", "--sequences", seq, "--out", tmp_path / "e.parquet")
    assert rc == 2 and "seq.txt.gz: corrupt or truncated gzip file" in err


def test_case10_bad_embeddings_files_name_the_file(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "text.parquet").write_text("not parquet")
    pq.write_table(pa.table({"item": pa.array([], pa.int64()), "embedding": pa.array([], pa.list_(pa.float32()))}),
                   tmp_path / "zero.parquet")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    for name, what in [("text.parquet", "not a readable parquet file"), ("zero.parquet", "empty embedding table"),
                       ("bad.npy", "not a readable .npy array")]:
        extra = ["--positional-ids", "1"] if name.endswith(".npy") else []
        rc, err, _ = _cli(capsys, *_tok_argv(tmp_path / name, tmp_path / "s.parquet", *extra))
        assert rc == 2 and f"{name}: {what}" in err, err
    emb = _emb(tmp_path / "emb.parquet")
    (tmp_path / "outdir").mkdir()
    rc, err, _ = _cli(capsys, *_tok_argv(emb, tmp_path / "outdir"))
    assert rc == 2 and "outdir: is a directory" in err


def test_case10_config_errors_name_the_file_and_key(tmp_path, capsys):
    (tmp_path / "cfgdir").mkdir()
    rc, err, _ = _cli(capsys, "train", "--config", tmp_path / "cfgdir")
    assert rc == 2 and "cfgdir: is a directory; expected a YAML config file" in err
    cfg = tmp_path / "t.yaml"
    cfg.write_text((REPO / "configs" / "smoke.yaml").read_text())
    rc, err, _ = _cli(capsys, "train", "--config", cfg, "model.dense_arch=[32")
    assert rc == 2 and "override 'model.dense_arch=[32': value '[32' is not valid YAML" in err
    (tmp_path / "afile").write_text("x")
    rc, err, _ = _cli(capsys, "train", "--config", cfg, f"output.dir={tmp_path / 'afile'}")
    assert rc == 2 and "output.dir" in err and "afile: exists and is not a directory" in err
    rc, err, _ = _cli(capsys, "train", "--config", cfg, f"output.dir={tmp_path / 'afile' / 'run'}")
    assert rc == 2 and "afile is a file, not a directory" in err
    (tmp_path / "m").mkdir()
    rc, err, _ = _cli(capsys, "train", "--config", cfg, f"output.dir={tmp_path / 'run'}", "--metrics-out", tmp_path / "m")
    assert rc == 2 and "--metrics-out" in err and "is a directory" in err
    rc, err, _ = _cli(capsys, "train", "--config", cfg, f"checkpoint.dir={tmp_path / 'afile'}")
    assert rc == 2 and "checkpoint.dir" in err and "not a directory" in err
    assert not (tmp_path / "run").exists()


def test_case10_broken_pipe_exits_quietly(tmp_path):
    from store_rec.data.synthetic import prepare_synthetic

    prepare_synthetic(tmp_path / "d", rows=300, items=64, num_clusters=4)
    p = subprocess.run(f"{sys.executable} -m store_rec data info {tmp_path / 'd'} | head -c 10",
                       shell=True, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert p.stdout == "dataset sy" and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    # and in-process: main() turns a closed stdout into exit 141 (what a SIGPIPE-killed tool reports)
    p = subprocess.run(f"set -o pipefail; {sys.executable} -m store_rec data info {tmp_path / 'd'} | head -c 1 >/dev/null",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert p.returncode in (0, 141) and p.stderr == "", p.stderr


# ------------------------------------------------------------------ case 11: SIGTERM / SIGINT clean up
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_case11_signal_during_prepare_removes_the_temp_dir(tmp_path, sig):
    out = tmp_path / "syn"
    p = subprocess.Popen([sys.executable, "-m", "store_rec", "data", "prepare", "synthetic", "--out", str(out),
                          "--rows", "3000000", "--items", "5000"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 60
    while time.time() < deadline and p.poll() is None and not list(tmp_path.glob(".syn.tmp-*")):
        time.sleep(0.01)
    assert p.poll() is None, "prepare finished before the temp dir was seen"
    time.sleep(0.2)  # mid-way: the temp dir is being filled
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 128 + sig, err.decode()
    assert "outputs in progress were removed" in err.decode()
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ case 12: nan text, invalid UTF-8, duplicate keys
def test_case12_nan_text_is_data_and_said_so(tmp_path, capsys):
    import pyarrow.parquet as pq

    src = _avazu_csv(tmp_path / "raw" / "a.csv", n=10, extra=[_row(20, site="nan"), _row(21, site="nan")])
    out = tmp_path / "o"
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--out", out, "--set", "min_count=1")
    assert rc == 0, err
    assert "a.csv: column 'site_id': 2 value(s) such as 'nan'/'NA'/'NULL' are read as text, not as missing" in err
    vocab = pq.read_table(out / "vocab" / "site_id.parquet").column("value").to_pylist()
    assert "nan" in vocab  # a value of its own, not the missing/OOV id
    # in a numeric column (the label) it is an error naming file and line
    src2 = _avazu_csv(tmp_path / "raw2" / "b.csv", n=4, extra=[_row(9, click="nan")])
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src2, "--out", tmp_path / "o2")
    assert rc == 2 and "b.csv: line 6: column 'click'" in err and "'nan'" in err


def test_case12_invalid_utf8_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "raw" / "a.csv"
    src.parent.mkdir()
    lines = [AVAZU_HEADER] + [_row(i) for i in range(5)]
    lines[4] = lines[4].replace(",d,", ",d\xff\xfe,")
    src.write_bytes("\n".join(lines).encode("utf-8").replace("\xff\xfe".encode("utf-8"), b"\xff\xfe") + b"\n")
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--out", tmp_path / "o")
    assert rc == 2 and "a.csv: line 5: not valid UTF-8" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"min_count: 1\n# caf\xe9\n")
    rc, err, _ = _cli(capsys, "data", "prepare", "avazu", "--source", src, "--config", cfg, "--out", tmp_path / "o")
    assert rc == 2 and "c.yaml: line 2: not valid UTF-8" in err


def test_case12_duplicate_yaml_keys_are_refused(tmp_path, capsys):
    from store_rec.config import ConfigError, load_yaml

    cfg = tmp_path / "t.yaml"
    cfg.write_text("model:\n  name: store\ntrain:\n  epochs: 1\nmodel:\n  name: dlrm_dcn\n")
    with pytest.raises(ConfigError, match=r"t.yaml: not valid YAML: .*duplicate key 'model' \(first at line 1, again at line 5\)"):
        load_yaml(cfg)
    cfg.write_text("train:\n  epochs: 1\n  epochs: 2\n")
    rc, err, _ = _cli(capsys, "train", "--config", cfg)
    assert rc == 2 and "t.yaml" in err and "duplicate key 'epochs'" in err


# ------------------------------------------------------------------ strict JSON (used by every JSON output)
def test_json_outputs_are_strict(tmp_path):
    from store_rec.fileio import atomic_write_json

    p = atomic_write_json(tmp_path / "s.json", {"auc": float("nan"), "x": [1.0, float("inf")], "ok": 0.5})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    d = json.loads(text)
    assert d["auc"] is None and d["x"] == [1.0, None] and d["ok"] == 0.5
    assert d["non_finite"] == {"auc": "nan", "x[1]": "inf"}


# ------------------------------------------------------------------ fuzz: every entry point, malformed input
def _fuzz_cases(root: Path):
    """(name, argv, expected message parts) over files created under ``root/in``; outputs go to ``root/out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    i, o = root / "in", root / "out"
    i.mkdir()
    o.mkdir()
    cases = []
    # data prepare: malformed rows / files / configs
    _avazu_csv(i / "short" / "a.csv", n=5, extra=["1,2,3"])
    cases.append(("prepare short row", ["data", "prepare", "avazu", "--source", i / "short", "--out", o / "p"],
                  ["a.csv: line 7: expected 24 fields, got 3"]))
    _avazu_csv(i / "label" / "a.csv", n=3, extra=[_row(7, click="2")])
    cases.append(("prepare bad label", ["data", "prepare", "avazu", "--source", i / "label", "--out", o / "p"],
                  ["a.csv: line 5: column 'click'"]))
    (i / "cfg_unknown.yaml").write_text("min_cnt: 1\n")
    cases.append(("prepare unknown key", ["data", "prepare", "avazu", "--source", i / "short", "--config",
                                          i / "cfg_unknown.yaml", "--out", o / "p"], ["cfg_unknown.yaml: min_cnt: unknown key"]))
    (i / "cfg_dup.yaml").write_text("min_count: 1\nmin_count: 2\n")
    cases.append(("prepare duplicate key", ["data", "prepare", "avazu", "--source", i / "short", "--config",
                                            i / "cfg_dup.yaml", "--out", o / "p"], ["cfg_dup.yaml", "duplicate key 'min_count'"]))
    cases.append(("prepare bad override", ["data", "prepare", "avazu", "--source", i / "short", "--set", "min_count=[1",
                                           "--out", o / "p"], ["override 'min_count=[1'"]))
    cases.append(("prepare out=source", ["data", "prepare", "avazu", "--source", i / "short", "--overwrite",
                                         "--out", i / "short"], ["is the input --source"]))
    cases.append(("prepare out above source", ["data", "prepare", "avazu", "--source", i / "short", "--overwrite",
                                               "--out", i], ["contains the input --source"]))
    # pretrain
    (i / "seq.txt").write_text("1 2\n1 x\n")
    cases.append(("pretrain bad line", ["pretrain", "--sequences", i / "seq.txt", "--out", o / "e.parquet"],
                  ["seq.txt: line 2: expected integers 'user item [item ...]'"]))
    (i / "seq0.txt").write_text("1 2\n1 0\n")
    cases.append(("pretrain item 0", ["pretrain", "--sequences", i / "seq0.txt", "--out", o / "e.parquet"],
                  ["seq0.txt: line 2: item id 0 < 1"]))
    (i / "seq.parquet").write_text("1 2\n")
    cases.append(("pretrain out=input", ["pretrain", "--sequences", i / "seq.parquet", "--out", i / "seq.parquet"],
                  ["is the input --sequences"]))
    cases.append(("pretrain no dataset", ["pretrain", "--data", i / "short", "--out", o / "e.parquet"],
                  ["short/schema.json: no prepared dataset here"]))
    # tokenize
    emb = _emb(i / "emb.parquet")
    (i / "text.parquet").write_text("hello")
    cases.append(("tokenize not parquet", _tok_argv(i / "text.parquet", o / "s.parquet"), ["text.parquet: not a readable parquet"]))
    pq.write_table(pa.table({"item": pa.array([], pa.int64()), "embedding": pa.array([], pa.list_(pa.float32()))}),
                   i / "zero.parquet")
    cases.append(("tokenize zero rows", _tok_argv(i / "zero.parquet", o / "s.parquet"), ["zero.parquet: empty embedding table"]))
    x = np.ones((8, 4), np.float32)
    x[3, 1] = np.nan
    np.save(i / "nan.npy", x)
    cases.append(("tokenize NaN row", _tok_argv(i / "nan.npy", o / "s.parquet", "--positional-ids", "1"),
                  ["nan.npy: NaN in embedding of id 4 (row 3)"]))
    cases.append(("tokenize out=embeddings", _tok_argv(emb, emb), ["is the input --embeddings"]))
    (i / "tok_dup.yaml").write_text("train: {steps: 2}\ntrain: {steps: 3}\n")
    cases.append(("tokenize duplicate section", _tok_argv(emb, o / "s.parquet", "--config", i / "tok_dup.yaml"),
                  ["tok_dup.yaml", "duplicate key 'train'"]))
    (i / "tok_bad.yaml").write_text("model: {latent_dimm: 3}\n")
    cases.append(("tokenize unknown key", _tok_argv(emb, o / "s.parquet", "--config", i / "tok_bad.yaml"),
                  ["tok_bad.yaml: model.latent_dimm: unknown key"]))
    # train: config errors only (caught before any training)
    smoke = (REPO / "configs" / "smoke.yaml").read_text()
    (i / "train.yaml").write_text(smoke)
    cases.append(("train unknown key", ["train", "--config", i / "train.yaml", "model.nope=1"], ["model.nope: unknown key"]))
    cases.append(("train bad type", ["train", "--config", i / "train.yaml", "train.epochs=many"], ["train.epochs: expected int"]))
    cases.append(("train bad override", ["train", "--config", i / "train.yaml", "model.dense_arch=[32"],
                  ["override 'model.dense_arch=[32'"]))
    (i / "train_dup.yaml").write_text(smoke + "\nmodel: {name: dlrm_dcn}\n")
    cases.append(("train duplicate section", ["train", "--config", i / "train_dup.yaml"], ["train_dup.yaml", "duplicate key 'model'"]))
    cases.append(("train config dir", ["train", "--config", i / "short"], ["short: is a directory"]))
    cases.append(("train output.dir=config", ["train", "--config", i / "train.yaml", f"output.dir={i}"],
                  ["output.dir", "contains the input --config"]))
    # plan
    (i / "plan.yaml").write_text("plan: {proposerr: greedy}\n")
    cases.append(("plan unknown key", ["plan", "--topology", "h100x8", "--config", i / "plan.yaml", "--out", o / "plan"], ["plan.yaml: plan.proposerr: unknown key"]))
    cases.append(("plan out=config", ["plan", "--topology", "h100x8", "--config", i / "plan.yaml", "--out", i / "plan.yaml"], ["is the input --config"]))
    # experiments
    base = i / "base.yaml"
    base.write_text(smoke)
    (i / "exp_escape.yaml").write_text(EXP.format(base=base, ds="'../../victim'", ex="t1"))
    cases.append(("experiments dataset escape", ["experiments", "--config", i / "exp_escape.yaml", "--out", o / "x",
                                                 "--results", o / "R.md"], ["datasets['../../victim']"]))
    (i / "exp_fig.yaml").write_text(EXP.format(base=base, ds="syn", ex="'../../../figpwn'"))
    cases.append(("experiments figure escape", ["experiments", "--config", i / "exp_fig.yaml", "--out", o / "x",
                                                "--results", o / "R.md"], ["experiments['../../../figpwn']"]))
    (i / "exp_ok.yaml").write_text(EXP.format(base=base, ds="syn", ex="t1"))
    cases.append(("experiments results=config", ["experiments", "--config", i / "exp_ok.yaml", "--out", o / "x",
                                                  "--results", i / "exp_ok.yaml"], ["--results", "is the input --config"]))
    cases.append(("experiments out contains config", ["experiments", "--config", i / "exp_ok.yaml", "--out", i,
                                                      "--results", o / "R.md"], ["contains the input --config"]))
    return cases


def test_fuzz_every_entry_point_exits_2_naming_the_input_and_leaves_it_untouched(tmp_path, capsys):
    cases = _fuzz_cases(tmp_path)
    before = tree_hash(tmp_path / "in")
    failures = []
    for name, argv, parts in cases:
        rc, err, _ = _cli(capsys, *argv)
        if rc != 2 or not all(p in err for p in parts):
            failures.append(f"{name}: rc={rc} err={err.strip()[-300:]!r} (wanted {parts})")
        if tree_hash(tmp_path / "in") != before:
            failures.append(f"{name}: changed the input tree")
            before = tree_hash(tmp_path / "in")
        if "Traceback" in err:
            failures.append(f"{name}: traceback")
    leftovers = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "out").rglob("*")]
    assert not failures, "\n".join(failures)
    assert leftovers == []  # no half-written output, no temp files
    assert len(cases) >= 25


# ------------------------------------------------------------------ training (PART B): checkpoints, divergence
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from store_rec.data.synthetic import prepare_synthetic

    d = tmp_path_factory.mktemp("reldata") / "tiny"
    prepare_synthetic(d, rows=1200, items=80, users=50, seed=0, num_clusters=4)
    return d


def _train_argv(data: Path, out: Path, *extra) -> list:
    return ["train", "--config", REPO / "configs" / "smoke.yaml", f"data.dir={data}", "data.prepare_if_missing=null",
            "data.batch_size=64", "data.eval_batch_size=256", f"output.dir={out}", "output.progress_bar=false",
            "output.tensorboard=false", f"checkpoint.dir={out / 'ck'}", "checkpoint.keep=5", "train.epochs=2",
            "train.eval_every=0", "checkpoint.every_steps=0", "model.attention.num_layers=1", *extra]


def _steps(ck: Path) -> list:
    return sorted(p.name for p in ck.iterdir() if p.name.startswith("step-"))


def test_case3_fresh_train_never_deletes_checkpoints_it_was_not_asked_to(tiny_data, tmp_path, capsys):
    from store_rec.train.checkpoint import MARKER

    out = tmp_path / "run"
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out))
    assert rc == 0, err[-2000:]
    ck = out / "ck"
    first = _steps(ck)
    assert len(first) == 2 and all((ck / s / MARKER).is_file() for s in first)
    (ck / "step-notes").mkdir()
    (ck / "step-notes" / "notes.txt").write_text("my notes")
    (ck / "step-5").mkdir()  # a user's folder with a checkpoint-like name but no marker
    (ck / "step-5" / "mine.txt").write_text("mine")
    before = tree_hash(ck)
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out))  # forgot --resume
    assert rc == 2 and "checkpoints exist" in err and "pass --resume" in err and "--overwrite-checkpoints" in err
    assert tree_hash(ck) == before  # refused before anything was touched
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out, "train.epochs=1"), "--overwrite-checkpoints")
    assert rc == 0, err[-2000:]
    assert (ck / "step-notes" / "notes.txt").read_text() == "my notes" and (ck / "step-5" / "mine.txt").read_text() == "mine"
    assert sorted(set(_steps(ck)) - {"step-notes", "step-5"}) == [first[0]]  # the old run's step dirs were replaced


def test_case5_crafted_checkpoint_extras_are_refused_not_executed(tmp_path):
    import torch

    from store_rec.train.checkpoint import CheckpointError, _load_extra

    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": _Evil(str(marker))}, tmp_path / "extra-rank0.pt")
    with pytest.raises(CheckpointError, match="extra-rank0.pt: refused: holds objects other than tensors"):
        _load_extra(tmp_path, 0)
    assert not marker.exists()


def test_case5_extras_and_rng_state_round_trip_with_weights_only(tmp_path):
    import random

    import torch

    from store_rec.train.checkpoint import _load_extra, _plain, rng_state, set_rng_state

    np.random.seed(3)
    random.seed(3)
    st = rng_state()
    torch.save(_plain({"rng": st, "best": {"auc": np.float64(0.7)}, "step": 3}), tmp_path / "extra-rank0.pt")
    expect = (np.random.rand(3), random.random(), torch.rand(2))
    np.random.seed(99)
    random.seed(99)
    extra = _load_extra(tmp_path, 0)
    set_rng_state(extra["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(2))
    np.testing.assert_array_equal(got[0], expect[0])
    assert got[1] == expect[1] and torch.equal(got[2], expect[2]) and extra["best"]["auc"] == 0.7


def test_case6_diverging_training_stops_naming_the_step_and_writes_no_checkpoint(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out, "optim.dense.lr=1.0e+30", "optim.sparse.lr=1.0e+30",
                                           "checkpoint.every_steps=2"))
    assert rc == 2 and "training diverged: the loss is NaN or inf at step" in err and "optim.dense.lr=1e+30" in err, err[-2000:]
    assert not (out / "summary.json").exists()
    assert not (out / "ck").exists() or not _steps(out / "ck")  # no checkpoint of non-finite weights
    for line in (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_case6_no_checkpoint_of_non_finite_weights():
    import torch

    from store_rec.train.checkpoint import non_finite_tensors

    assert non_finite_tensors({"a": torch.ones(3), "b": [torch.zeros(2)]}) == 0
    assert non_finite_tensors({"a": torch.tensor([1.0, float("inf")]), "b": {"c": torch.tensor([float("nan")])}}) == 2


def test_case8_corrupt_newest_checkpoint_falls_back_to_the_newest_complete_one(tiny_data, tmp_path, capsys):
    import shutil

    from store_rec.train.checkpoint import latest_checkpoint, verify_checkpoint

    out = tmp_path / "run"
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out, "checkpoint.every_steps=5", "train.epochs=1"))
    assert rc == 0, err[-2000:]
    ck = out / "ck"
    steps = sorted(_steps(ck), key=lambda s: int(s[5:]))
    assert len(steps) >= 3
    newest, older, oldest = ck / steps[-1], ck / steps[-2], ck / steps[-3]
    # unit: each kind of damage is named
    bak = tmp_path / "bak"
    shutil.copytree(newest, bak)
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    shard.unlink()
    assert verify_checkpoint(newest) == f"missing file {shard.name}"
    shutil.rmtree(newest)
    shutil.copytree(bak, newest)
    with open(newest / ".metadata", "r+b") as f:
        f.truncate(10)
    assert verify_checkpoint(newest).startswith("truncated file .metadata (10 of ")
    with open(older / "extra-rank0.pt", "r+b") as f:
        f.truncate(100)
    assert verify_checkpoint(older).startswith("truncated file extra-rank0.pt (100 of ")
    (ck / "step-999").mkdir()
    assert verify_checkpoint(ck / "step-999") == "empty directory"
    assert latest_checkpoint(ck) == oldest
    # end to end: --resume says which ones are corrupt and continues from the newest complete one
    rc, err, _ = _cli(capsys, *_train_argv(tiny_data, out, "checkpoint.every_steps=5", "train.epochs=1"), "--resume")
    assert rc == 0, err[-3000:]
    assert f"checkpoint {ck / 'step-999'} is not usable (empty directory)" in err and "world size" not in err
    assert f"checkpoint {newest} is not usable (truncated file .metadata" in err
    assert f"checkpoint {older} is not usable (truncated file extra-rank0.pt" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_step"] == int(oldest.name[5:])


def test_case9_output_paths_are_checked_before_training(tiny_data, tmp_path, capsys):
    import time as _time

    (tmp_path / "m").mkdir()
    (tmp_path / "f").write_text("x")
    for extra, what in [(("--metrics-out", tmp_path / "m"), "--metrics-out"),
                        ((f"checkpoint.dir={tmp_path / 'f'}",), "checkpoint.dir"),
                        ((f"output.dir={tmp_path / 'f'}",), "output.dir"),
                        ((f"output.metrics_out={tiny_data / 'schema.json'}",), "is inside the input data.dir")]:
        t0 = _time.perf_counter()
        rc, err, _ = _cli(capsys, *_train_argv(tiny_data, tmp_path / "run"), *extra)
        assert rc == 2 and what in err, err[-1000:]
        assert "eval" not in err and _time.perf_counter() - t0 < 30  # refused at start-up, nothing trained
    assert not (tmp_path / "run").exists()


def _diverge_worker(argv):
    """One rank of a diverging run: returns the TrainingDiverged message (every rank must raise it)."""
    import argparse

    from store_rec.train.__main__ import add_arguments, run_from_args
    from store_rec.train.trainer import TrainingDiverged

    p = argparse.ArgumentParser()
    add_arguments(p)
    try:
        run_from_args(p.parse_args([str(a) for a in argv[1:]]))
    except TrainingDiverged as e:
        return str(e)
    return "finished"


def test_case6_divergence_stops_every_rank_of_a_two_rank_run(tiny_data, tmp_path):
    """A non-finite loss on the ranks is all-reduced at the segment end: both ranks stop at the same step
    (no rank is left waiting in a collective), and no checkpoint is written."""
    from store_rec.distributed.local_launch import launch_local

    out = tmp_path / "run"
    argv = _train_argv(tiny_data, out, "optim.dense.lr=1.0e+30", "optim.sparse.lr=1.0e+30", "checkpoint.every_steps=2")
    res = launch_local(_diverge_worker, (argv,), nproc=2)
    msgs = [res[r] for r in (0, 1)]
    assert all(m.startswith("training diverged: the loss is NaN or inf at step") for m in msgs), msgs
    assert msgs[0] == msgs[1]  # the same first step on both ranks
    assert not (out / "summary.json").exists() and (not (out / "ck").exists() or not _steps(out / "ck"))


def test_case11_interrupted_checkpoint_write_leaves_no_temp_dir(tmp_path, monkeypatch):
    """SIGTERM (raised as Terminated) or an error while a checkpoint is written removes its step-N.tmp."""
    import torch

    from store_rec.distributed.env import DistEnv
    from store_rec.errors import Terminated
    from store_rec.train import checkpoint as ck

    class _M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2))
            self.fused_optimizer = torch.optim.SGD([self.w], lr=0.1)

    def boom(*a, **k):
        raise Terminated(15)

    monkeypatch.setattr(ck.dist, "barrier", lambda: None)
    monkeypatch.setattr(ck.dist, "all_reduce", lambda t, *a, **k: t)
    import torch.distributed.checkpoint as dcp

    monkeypatch.setattr(dcp, "save", boom)
    env = DistEnv.__new__(DistEnv)
    env.rank, env.world_size = 0, 1
    with pytest.raises(Terminated):
        ck.save_checkpoint(tmp_path / "ck", 3, _M(), {"step": 3}, env, keep=2)
    assert list((tmp_path / "ck").iterdir()) == []
