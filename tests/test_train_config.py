"""Bad train config keys / values fail at start-up with the dotted key path."""

from pathlib import Path

import pytest

from store_rec.cli import main as cli_main
from store_rec.config import ConfigError
from store_rec.train.config import TrainConfig, load_train_config

ROOT = Path(__file__).resolve().parents[1]


TRAIN_CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) + ["experiments/base.yaml"]


@pytest.mark.parametrize("cfg", TRAIN_CONFIGS)
def test_shipped_configs_validate(cfg):
    """Every training YAML shipped in configs/ (the top level) and the experiments' base validates."""
    c = load_train_config(ROOT / "configs" / cfg)
    assert isinstance(c, TrainConfig)


def test_the_shipped_train_configs_are_the_expected_ones():
    assert {"smoke.yaml", "quickstart.yaml", "store_synthetic.yaml", "dlrm_dcn_synthetic.yaml", "store_movielens.yaml",
            "store_avazu.yaml", "store_criteo.yaml"} <= set(TRAIN_CONFIGS)


@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.sparse.type=lamb", "optim.sparse.type"),
        ("optim.dense.lr=-1", "optim.dense.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.bogus=1", "train.bogus"),
        ("model.embedding_dim=6", "model.embedding_dim"),
        ("sharding.sharding_types=[row_wize]", "sharding.sharding_types[0]"),
        ("sharding.tables.t_item_id.compute_kernels=[gpu]", "sharding.tables.t_item_id.compute_kernels[0]"),
        ("data.batch_size=abc", "data.batch_size"),
        ("loss.aux_weights.diversity=-0.5", "loss.aux_weights.diversity"),
        ("train.eval_splits=[dev]", "train.eval_splits[0]"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_train_config(ROOT / "configs" / "smoke.yaml", [override])
    assert f"{key}:" in str(e.value)


def test_cli_reports_bad_key_before_training(capsys):
    rc = cli_main(["train", "--config", str(ROOT / "configs" / "smoke.yaml"), "optim.sparse.momentum=0.9"])
    assert rc == 2
    assert "optim.sparse.momentum: unknown key" in capsys.readouterr().err
