"""Cold / warm item slices of a prepared dataset's test split, and per-slice AUC of a trained config.

    python scripts/slice_eval.py RUN_DIR OUT_DIR ITEM_FEATURE

RUN_DIR: a finished ``store-rec experiments`` run (its ``run.json`` gives the config and overrides).

Writes ``OUT_DIR/data``: the same train split (linked), ``valid`` := the test rows whose item occurs in
train (warm), ``test`` := the test rows whose item never occurs in train (cold). Then trains the given
config on it with early stopping off, evaluating both slices at every epoch end (training is
deterministic per seed and does not depend on the evaluation splits, so the model after epoch e is
the model of the main run after epoch e). Prints ``{"epoch": e, "warm_auc": .., "cold_auc": ..}`` per
epoch and writes them to ``OUT_DIR/slices.json``. Diagnostic only: selection stays with the main run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def make_slices(data: Path, out: Path, item: str) -> dict:
    schema = json.loads((data / "schema.json").read_text())
    train_items = set()
    for f in schema["splits"]["train"]["files"]:
        train_items.update(pq.read_table(data / f, columns=[item]).column(item).to_numpy().tolist())
    test = pq.read_table(data / schema["splits"]["test"]["files"][0])
    for f in schema["splits"]["test"]["files"][1:]:
        import pyarrow as pa
        test = pa.concat_tables([test, pq.read_table(data / f)])
    warm = np.isin(test.column(item).to_numpy(), np.fromiter(train_items, np.int64))
    out.mkdir(parents=True, exist_ok=True)
    (out / "train").exists() or os.symlink((data / "train").resolve(), out / "train")
    for extra in ("vocab",):
        if (data / extra).exists() and not (out / extra).exists():
            os.symlink((data / extra).resolve(), out / extra)
    label = schema["label"]
    for split, mask in (("valid", warm), ("test", ~warm)):
        (out / split).mkdir(exist_ok=True)
        t = test.filter(mask)
        pq.write_table(t, out / split / "part-00000.parquet")
        schema["splits"][split] = {"files": [f"{split}/part-00000.parquet"], "rows": t.num_rows,
                                   "positives": int(t.column(label).to_numpy().sum())}
    (out / "schema.json").write_text(json.dumps(schema, indent=1))
    return {"warm_rows": int(warm.sum()), "cold_rows": int((~warm).sum())}


def main(argv):
    run, out, item = Path(argv[0]), Path(argv[1]), argv[2]
    meta = json.loads((run / "run.json").read_text())
    overrides = [o for o in meta["overrides"] if not o.startswith(("data.dir=", "output.dir="))]
    data = Path(next(o for o in meta["overrides"] if o.startswith("data.dir=")).split("=", 1)[1])
    info = make_slices(data, out / "data", item)
    cmd = [sys.executable, "-m", "store_rec.train", "--config", meta["base_config"], *overrides, f"data.dir={out / 'data'}",
           "train.early_stop_patience=0", "train.epoch_end_splits=[valid,test]", f"output.dir={out / 'run'}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = {}
    for line in (out / "run" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") in ("valid", "test") and "epoch" in r:
            rows.setdefault(int(r["epoch"]) + 1, {})["warm_auc" if r["split"] == "valid" else "cold_auc"] = r["auc"]
    res = {**info, "epochs": rows}
    (out / "slices.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
