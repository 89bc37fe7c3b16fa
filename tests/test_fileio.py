import json

import pytest

from store_rec.fileio import atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"b": [1, 2]}, sort_keys=True)
    assert json.loads(p.read_text()) == {"b": [1, 2]}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_text(p, "old")
    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": object()})
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_outputs_get_the_mode_a_plain_open_gives(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        out = atomic_write_text(tmp_path / "atomic.txt", "x")  # mkstemp alone would leave 0600
        assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
