"""The results generator end to end on a tiny config: artifacts (synthetic data, SASRec embeddings, OPMQ
and OPQ SID tables) are built, every run trains, RESULTS.md holds a table / an epoch curve / a sweep
with numbers from the runs, plots exist, and a second invocation reuses the finished runs."""

from __future__ import annotations

import json
import numpy as np
import shutil
from pathlib import Path

import pytest

from store_rec.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY = """
base: {base}
jobs: 2
datasets:
  syn:
    prepare: {{dataset: synthetic, set: {{rows: 1500, items: 120, users: 60, num_clusters: 4}}}}
    pretrain: {{epochs: 1, dim: 16, max_len: 20}}
    sids: {{num_sids: 2, codebook_size: 4, steps: 30}}
    item_feature: item_id
    set: [data.batch_size=128, train.epochs=1, model.attention.num_layers=1]
experiments:
  t1:
    title: "tiny table"
    kind: table
    datasets: [syn]
    seeds: [0, 1]
    variants:
      STORE: {{sids: opmq}}
      OPQ: {{sids: opq}}
      DCNv2: {{set: [model.name=dlrm_dcn]}}
    pairs: [[STORE, DCNv2]]
    notes: "hand-written note"
  ep:
    title: "tiny epochs"
    kind: epochs
    datasets: [syn]
    seeds: [0]
    set: [train.epochs=2, "train.epoch_end_splits=[valid,test]"]
    variants:
      STORE: {{sids: opmq}}
  sp:
    title: "tiny sweep"
    kind: sweep
    datasets: [syn]
    seeds: [0]
    sweep: {{label: sparsity, key: model.attention.sparsity, values: [0.0, 0.5]}}
    variants:
      STORE: {{sids: opmq}}
  fa:
    title: "tiny fair"
    kind: fair
    datasets: [syn]
    seeds: [0, 1]
    sweep: {{label: lr, key: optim.dense.lr, values: [0.002]}}
    reference: STORE
    variants:
      STORE: {{sids: opmq}}
      DCNv2: {{sids: opmq, set: [model.name=dlrm_dcn]}}
"""


def test_results_generator_on_a_tiny_config(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(base=ROOT / "configs" / "experiments" / "base.yaml"))
    out, md = tmp_path / "runs", tmp_path / "docs" / "RESULTS.md"
    argv = ["experiments", "--config", str(cfg), "--out", str(out), "--results", str(md)]
    assert main(argv) == 0
    text = md.read_text()
    summaries = sorted(out.glob("runs/**/summary.json"))
    assert len(summaries) == 3 * 2 + 1 + 2 + 2 * 2
    s = json.loads((out / "runs/t1/syn/STORE/seed0/summary.json").read_text())
    auc = [json.loads(p.read_text())["auc"] for p in sorted((out / "runs/t1/syn/STORE").glob("seed*/summary.json"))]
    mean = sum(auc) / 2
    assert f"| syn | STORE | 2 | {mean:.4f} ± " in text  # the table holds the runs' own numbers
    assert "highest mean test AUC" in text and "hand-written note" in text
    # pairs: the per-seed difference A - B, mean ± std, from the runs' own summaries
    import statistics

    d = [json.loads((out / f"runs/t1/syn/STORE/seed{k}/summary.json").read_text())["auc"]
         - json.loads((out / f"runs/t1/syn/DCNv2/seed{k}/summary.json").read_text())["auc"] for k in (0, 1)]
    cell = f"{statistics.fmean(d):.4f} ± {statistics.stdev(d):.4f}"
    assert f"| syn | STORE | DCNv2 | 2 | {'' if cell.startswith('-') else '+'}{cell} |" in text
    assert "| syn | STORE | 0.0 | 1 |" in text and "| syn | STORE | 0.5 | 1 |" in text
    assert "epoch 1 | epoch 2" in text
    # fair: scores at the best-valid epoch, the paired difference and the claim from the runs' numbers
    from store_rec.experiments.fair import best_valid_epoch, paired_difference

    fa = out / "runs/fa/syn"
    t = {v: {k: best_valid_epoch(fa / v / "x=0.002" / f"seed{k}" / "metrics.jsonl").test_auc for k in (0, 1)}
         for v in ("STORE", "DCNv2")}
    m, sd, n = paired_difference(t["STORE"], t["DCNv2"])
    assert n == 2 and "| DCNv2 | 0.002 |" in text and f"{m:+.4f} ± {sd:.4f}" in text
    assert "Claims (generated" in text and "| syn | DCNv2 | " in text
    # ... and its One-Epoch section: every model's AUC per epoch at its selected grid point, plot beside it
    assert "### One-Epoch: AUC per epoch" in text and "| DCNv2 | SIDs | 0.002 | " in text
    assert (md.parent / "results" / "fa_epochs.png").stat().st_size > 0
    for name in ("ep", "sp"):
        assert (md.parent / "results" / f"{name}.png").stat().st_size > 0
        fig = json.loads((md.parent / "results" / f"{name}.json").read_text())  # the plotted numbers, for --replot
        assert fig["kind"] == {"ep": "epochs", "sp": "sweep"}[name] and fig["series"][0]["variant"] == "STORE"
    assert "| GFLOPs/batch |" in text and "TFLOPs" not in text
    # artifacts the runs used: the data, embeddings, and one SID table per method
    data = out / "data" / "syn"
    assert (data / "emb.parquet").exists()
    assert {p.name for p in data.glob("sids_*.parquet")} == {"sids_opmq_K2_C4.parquet", "sids_opq_K2_C4.parquet"}
    assert s["model"] == "store"
    # a second run trains nothing new and rewrites the same tables
    mtime = (out / "runs/t1/syn/STORE/seed0/summary.json").stat().st_mtime
    assert main(argv) == 0
    assert (out / "runs/t1/syn/STORE/seed0/summary.json").stat().st_mtime == mtime


def test_experiments_config_errors_name_the_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.format(base="b.yaml").replace("datasets: [syn]\n    seeds: [0, 1]", "datasets: [nope]\n    seeds: [0, 1]"))
    assert main(["experiments", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "experiments.t1.datasets[0]: 'nope' is not one of ['syn']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # rejected before anything was built


def test_pairs_name_variants_of_a_table(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.format(base="b.yaml").replace("pairs: [[STORE, DCNv2]]", "pairs: [[STORE, DLRM]]"))
    assert main(["experiments", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "experiments.t1.pairs[0]: 'DLRM' is not one of the variants" in capsys.readouterr().err
    from store_rec.experiments.spec import load_spec, restrict

    spec = load_spec(str(ROOT / "configs" / "experiments" / "sequence.yaml"))
    kept = restrict(spec, variants=["STORE N=0", "STORE N=16", "STORE vanilla N=16"]).experiments["sequence_synthetic"]
    assert kept.pairs == [["STORE N=16", "STORE N=0"], ["STORE N=16", "STORE vanilla N=16"]]


def test_shipped_paper_config_validates_and_plans():
    """configs/experiments/paper.yaml: every key valid, the experiments the issue asks for are there."""
    from store_rec.experiments.spec import load_spec

    spec = load_spec(str(ROOT / "configs" / "experiments" / "paper.yaml"))
    assert {"table1", "table2", "epochs", "num_sids", "layers", "sparsity"} <= set(spec.experiments)
    assert {"movielens", "avazu"} <= set(spec.experiments["table1"].datasets)
    assert all(len(spec.experiments[n].seeds) >= 3 for n in ("table1", "table2", "epochs", "sparsity"))
    t2 = spec.experiments["table2"].variants
    assert {v.sids for v in t2.values()} >= {"opmq", "opq", "rqvae"}


def test_runs_with_the_same_training_config_share_one_directory(tmp_path):
    """table2's STORE row and num_sids at K=3 train exactly what table1's STORE row trains: one run each."""
    from store_rec.experiments.runner import plan_runs
    from store_rec.experiments.spec import load_spec

    spec = load_spec(str(ROOT / "configs" / "experiments" / "paper.yaml"))
    runs = plan_runs(spec, tmp_path / "out", build=False)
    by = {(r.experiment, r.dataset, r.variant, r.x, r.seed): r for r in runs}
    t1 = by[("table1", "movielens", "STORE", None, 0)]
    assert by[("table2", "movielens", "STORE", None, 0)].dir == t1.dir
    assert by[("num_sids", "movielens", "STORE", 3, 0)].dir == t1.dir
    assert by[("num_sids", "movielens", "STORE", 4, 0)].dir != t1.dir
    assert by[("table1", "movielens", "STORE", None, 1)].dir != t1.dir  # another seed is another run
    dirs = {r.dir: r.overrides for r in runs}
    assert all(dirs[r.dir] == r.overrides for r in runs)  # a shared directory means identical overrides
    assert len(runs) == 168 and len(dirs) == 158


def test_variant_names_are_one_directory_level(tmp_path, capsys):
    from store_rec.experiments.runner import plan_runs
    from store_rec.experiments.spec import load_spec

    spec = load_spec(str(ROOT / "configs" / "experiments" / "paper.yaml"))
    runs = [r for r in plan_runs(spec, tmp_path / "out", only=["table2"], build=False)
            if r.variant == "w/o orthogonal rotation"]
    assert runs and all(r.dir.parent.name == "w_o orthogonal rotation" and r.dir.parent.parent.name == r.dataset
                        for r in runs)
    cfg = tmp_path / "dots.yaml"
    cfg.write_text(TINY.format(base="b.yaml").replace("      STORE:", "      '..':", 1))
    assert main(["experiments", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "experiments.t1.variants['..']: is not usable as a run directory name" in capsys.readouterr().err


# --- build records, the run cache and --report-only / --adopt-artifacts, on a smaller config ---------------
# Everything is relative to the working directory (--out out), so one built OUT (the module fixture) can be
# copied into each test's own directory and changed there.

SMALL = """
base: base.yaml
jobs: 2
datasets:
  syn:
    prepare: {dataset: synthetic, set: {rows: 1500, items: 120, users: 60, num_clusters: 4}}
    pretrain: {epochs: 1, dim: 16, max_len: 20}
    sids: {num_sids: 2, codebook_size: 4, steps: 30}
    item_feature: item_id
    set: [data.batch_size=128, train.epochs=1, model.attention.num_layers=1]
    tiny: {rows: 800}
experiments:
  t:
    title: "small table"
    kind: table
    datasets: [syn]
    seeds: [0]
    variants:
      STORE: {sids: opmq}
      DCNv2: {set: [model.name=dlrm_dcn]}
tiny: {set: [train.epochs=1], seeds: [0]}
"""
SMALL_ARGV = ["experiments", "--config", "small.yaml", "--out", "out", "--results", "RESULTS.md", "--tiny"]
STORE_RUN, DCN_RUN = Path("out/runs-tiny/t/syn/STORE/seed0"), Path("out/runs-tiny/t/syn/DCNv2/seed0")
DATA = Path("out/data-tiny/syn")


def _mtimes(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    shutil.copy(ROOT / "configs" / "experiments" / "base.yaml", d / "base.yaml")
    (d / "small.yaml").write_text(SMALL)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        assert main(SMALL_ARGV) == 0
    return d


@pytest.fixture
def small(small_out, tmp_path, monkeypatch):
    """A private copy of the built small OUT (and its configs); the test runs in it."""
    w = tmp_path / "w"
    shutil.copytree(small_out, w)
    monkeypatch.chdir(w)
    return w


def test_tiny_artifacts_have_their_own_root_and_build_records(small):
    assert not Path("out/data").exists() and not Path("out/runs").exists()
    rec = json.loads(Path("out/data-tiny/syn/emb.parquet.build.json").read_text())
    assert rec["args"][:3] == ["pretrain", "--data", "{root}/syn"] and "--epochs" in rec["args"]
    assert set(rec["inputs"]) == {"data"} and Path("out/data-tiny/syn.build.json").exists()
    assert json.loads((DATA / "sids_opmq_K2_C4.parquet.build.json").read_text())["inputs"]["embeddings"]
    meta = json.loads((STORE_RUN / "run.json").read_text())
    assert len(meta["base_sha256"]) == 64 and set(meta["inputs"]) == {"data", "sid_table"}
    # a full (non-tiny) run would not see the tiny artifacts: its artifacts are missing, nothing is built
    from store_rec.experiments.runner import plan_runs
    from store_rec.experiments.spec import load_spec

    full = plan_runs(load_spec("small.yaml"), Path("out"), tiny=False, build=False)
    assert [r.ready for r in full] == [False, False] and str(full[0].dir).startswith("out/runs/")
    assert not Path("out/data").exists()


def test_changed_dataset_setting_rebuilds_the_artifact_and_reruns_its_runs(small, capsys):
    before = _mtimes(Path("out"))
    cfg = Path("small.yaml")
    cfg.write_text(SMALL.replace("dim: 16", "dim: 8"))
    capsys.readouterr()
    assert main(SMALL_ARGV) == 0
    err = capsys.readouterr().err
    assert "emb.parquet is out of date" in err and "`--dim 16`, now needs `--dim 8`" in err
    after = _mtimes(Path("out"))
    changed = {p for p in after if after[p] != before.get(p)}
    # embeddings and the SID table built from them are rebuilt; the prepared data is not
    assert {str(DATA / "emb.parquet"), str(DATA / "sids_opmq_K2_C4.parquet")} <= changed
    assert not any(p.startswith(str(DATA) + "/") and p.endswith("schema.json") for p in changed)
    assert str(DATA) + ".build.json" not in changed
    assert json.loads((DATA / "emb.parquet.build.json").read_text())["args"][-3] == "8"
    # the run that read the SID table reruns; the raw-ID run reads only the data: it does not
    assert str(STORE_RUN / "summary.json") in changed and str(DCN_RUN / "summary.json") not in changed
    # an artifact without a record (unknown origin) is stale too: --report-only leaves its run out, builds nothing
    (DATA / "sids_opmq_K2_C4.parquet.build.json").unlink()
    before = _mtimes(Path("out"))
    assert main([*SMALL_ARGV, "--report-only"]) == 0
    assert "has no build record" in capsys.readouterr().err and _mtimes(Path("out")) == before
    assert "results: 1 of 2 runs (the others are not trained yet or out of date)." in Path("RESULTS.md").read_text()


def test_changed_base_config_reruns_runs_but_no_artifacts(small):
    base = Path("base.yaml")
    base.write_text(base.read_text().replace("log_every: 100", "log_every: 50"))
    before = _mtimes(Path("out"))
    assert main(SMALL_ARGV) == 0
    after = _mtimes(Path("out"))
    assert all(after[p] == before[p] for p in before if p.startswith(str(DATA.parent)))
    for r in (STORE_RUN, DCN_RUN):
        assert after[str(r / "summary.json")] != before[str(r / "summary.json")]
    from store_rec.experiments.runner import sha256_file

    assert json.loads((STORE_RUN / "run.json").read_text())["base_sha256"] == sha256_file(base)
    assert main(SMALL_ARGV) == 0 and _mtimes(Path("out")) == after  # and then it is current


def test_report_only_on_a_fresh_out_builds_nothing(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.format(base=ROOT / "configs" / "experiments" / "base.yaml"))
    out, md = tmp_path / "runs", tmp_path / "RESULTS.md"
    assert main(["experiments", "--config", str(cfg), "--out", str(out), "--results", str(md), "--report-only"]) == 0
    assert not out.exists()
    text = md.read_text()
    assert "results: 0 of 6 runs" in text and "results: 0 of 1 runs" in text and "results: 0 of 2 runs" in text
    assert text.count("No results yet.") == 4 and "hand-written note" in text and "results: 0 of 4 runs" in text


def test_adopt_artifacts_keeps_an_out_made_before_build_records(small, capsys):
    # what an OUT made before this change looks like: no build records, run.json without the hashes
    for p in Path("out").rglob("*.build.json"):
        p.unlink()
    for r in (STORE_RUN, DCN_RUN):
        meta = json.loads((r / "run.json").read_text())
        (r / "run.json").write_text(json.dumps({"overrides": meta["overrides"], "seconds": meta["seconds"]}))
    before = _mtimes(Path("out"))
    # without the flag they are stale: --report-only leaves both runs out (and removes / builds nothing)
    assert main([*SMALL_ARGV, "--report-only"]) == 0
    assert "results: 0 of 2 runs" in Path("RESULTS.md").read_text() and _mtimes(Path("out")) == before
    capsys.readouterr()
    assert main([*SMALL_ARGV, "--adopt-artifacts"]) == 0
    assert "adopted" in capsys.readouterr().err
    after = _mtimes(Path("out"))
    assert all(after[p] == before[p] for p in before if not p.endswith("run.json"))  # nothing rebuilt or retrained
    assert {Path(p).name for p in after if p.endswith(".build.json")} == {
        "syn.build.json", "emb.parquet.build.json", "sids_opmq_K2_C4.parquet.build.json"}
    assert "base_sha256" in json.loads((STORE_RUN / "run.json").read_text())
    text = Path("RESULTS.md").read_text()
    assert "results: 2 of 2 runs." in text and "--adopt-artifacts" not in text
    assert main(SMALL_ARGV) == 0 and _mtimes(Path("out")) == after  # adopted for good: nothing to do


TABLE_LOG = """
base: {base}
jobs: 1
datasets:
  log:
    prepare: {{dataset: table, source: log.txt, set: {{schema: log.yaml, interactions.history_len: 8}}}}
    pretrain: {{epochs: 1, dim: 16, max_len: 20}}
    sids: {{num_sids: 2, codebook_size: 4, steps: 30}}
    item_feature: item
    set: [data.batch_size=64, train.epochs=1]
experiments:
  seq:
    title: "an interaction log with history"
    kind: table
    datasets: [log]
    seeds: [0]
    variants:
      "DLRM N=0": {{sids: opmq, set: [model.name=dlrm, data.history_len=0]}}
      "DIN N=8": {{sids: opmq, set: [model.name=din, data.history_len=8, model.history.enabled=true, model.history.max_len=8]}}
"""


def test_experiments_on_your_own_interaction_log_with_history(tmp_path, monkeypatch):
    """``prepare: {dataset: table}``: a user's own log (here SASRec's "user item" lines) through the
    experiments runner, its schema from ``set.schema`` and a schema key overridden from ``set``."""
    monkeypatch.chdir(tmp_path)
    r = np.random.default_rng(0)
    lines = [f"{u} {int(i)}" for u in range(1, 41) for i in r.choice(np.arange(1, 200), 14, replace=False)]
    Path("log.txt").write_text("\n".join(lines) + "\n")
    Path("log.yaml").write_text(
        "kind: interactions\nformat: csv\ndelimiter: ' '\nheader: false\ncolumns:\n"
        "  user: {role: id, user_key: true}\n  item: {role: id, item_key: true}\n"
        "interactions: {negatives: {strategy: popularity, ratio: 1, sample_from: split_positives}}\n")
    Path("b.yaml").write_text((ROOT / "configs" / "experiments" / "base.yaml").read_text())
    Path("x.yaml").write_text(TABLE_LOG.format(base="b.yaml"))
    assert main(["experiments", "--config", "x.yaml", "--out", "out", "--results", "R.md"]) == 0
    schema = json.loads(Path("out/data/log/schema.json").read_text())
    assert schema["params"]["history"]["max_len"] == 8 and schema["params"]["negatives_sample_from"] == "split_positives"
    build = json.loads(Path("out/data/log.build.json").read_text())
    assert build["args"][:4] == ["data", "prepare", "table", "--out"] and build["args"][-4:-2] == ["--schema", "log.yaml"]
    text = Path("R.md").read_text()
    assert "| log | DIN N=8 | 1 | 0." in text and "| log | DLRM N=0 | 1 | 0." in text
    # the schema is config: editing it rebuilds the dataset (and reruns its runs)
    Path("log.yaml").write_text(Path("log.yaml").read_text().replace("ratio: 1", "ratio: 2"))
    assert main(["experiments", "--config", "x.yaml", "--out", "out", "--results", "R.md"]) == 0
    assert json.loads(Path("out/data/log/schema.json").read_text())["params"]["sampled_negatives"] == 2 * 560
    # a table dataset without its schema is a config error naming the key, before anything is built
    Path("y.yaml").write_text(TABLE_LOG.format(base="b.yaml").replace("schema: log.yaml, ", ""))
    assert main(["experiments", "--config", "y.yaml", "--out", "out2"]) == 2
    assert not Path("out2").exists()
