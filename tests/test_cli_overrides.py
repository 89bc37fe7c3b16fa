"""``key=value`` overrides after an option (``--metrics-out F a=1``, what the torchx component builds when it
appends ``checkpoint.dir=...``) are overrides for both entry points, not "unrecognized arguments"."""

import pytest


@pytest.mark.parametrize("entry", ["store-rec train", "python -m store_rec.train"])
def test_overrides_after_an_option_are_applied(entry, tmp_path, capsys):
    from store_rec.cli import main as cli_main
    from store_rec.train.__main__ import main as train_main

    argv = ["--config", "smoke", "data.batch_size=64", "--metrics-out", str(tmp_path / "m.json"), "train.epochs=0"]
    rc = cli_main(["train", *argv]) if entry == "store-rec train" else train_main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "train.epochs: must be >= 1, got 0" in err, err  # the override after the option was read
    assert not (tmp_path / "m.json").exists()


def test_unknown_option_is_still_an_error(capsys):
    from store_rec.cli import main as cli_main

    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--config", "smoke", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
