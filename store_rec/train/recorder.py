"""Rank 0's outputs of a training run: ``<output.dir>/config.yaml`` (the resolved config),
``<output.dir>/metrics.jsonl`` (one record per eval) and TensorBoard scalars in ``<output.dir>/tb``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

from store_rec.distributed.env import DistEnv
from store_rec.config import to_dict
from store_rec.fileio import atomic_write_text, strict_json_dumps
from store_rec.train.config import TrainConfig


class Recorder:
    """Rank-0 metrics sink: JSONL records + TensorBoard scalars (inactive on the other ranks).

    A fresh run starts an empty ``metrics.jsonl``; a run resumed from step ``resumed_from`` keeps the
    records up to that step and drops the later ones (the resumed run writes them again)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, resumed_from: Optional[int]) -> None:
        self.active = env.rank == 0
        self.out = Path(cfg.output.dir)
        self.tb = None
        if self.active:
            self.out.mkdir(parents=True, exist_ok=True)
            jl = self.out / "metrics.jsonl"
            if jl.exists():  # a fresh run starts an empty file; a resumed one drops records past its step
                keep = [] if resumed_from is None else [
                    line for line in jl.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resumed_from]
                atomic_write_text(jl, "".join(line + "\n" for line in keep))
            if cfg.output.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tb"))

    def write_config(self, cfg: TrainConfig) -> None:
        """``config.yaml``: every key of the run's config after defaults and overrides (atomically)."""
        if not self.active:
            return
        import yaml

        atomic_write_text(self.out / "config.yaml", "# resolved store-rec train config of this run (defaults and overrides applied)\n"
                          + yaml.safe_dump(to_dict(cfg), sort_keys=False))

    def eval_record(self, rec: Dict[str, Any]) -> None:
        """Append one eval record (non-finite floats as null) and its metric scalars."""
        if not self.active:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            # strict JSON: a non-finite value is null, listed with what it was under "non_finite"
            f.write(strict_json_dumps(rec) + "\n")
        if self.tb is not None:
            for k in ("auc", "gauc", "logloss", "ne", "calibration", "eval_samples_per_s", "auc_error_bound"):
                if isinstance(rec.get(k), (int, float)) and math.isfinite(rec[k]):
                    self.tb.add_scalar(f"{rec['split']}/{k}", rec[k], rec["step"])
            self.tb.flush()

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
