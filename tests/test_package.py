"""store_rec as a package: shipped configs found through importlib.resources from any directory, the wheel's
contents, one version, and the message a broken torch / fbgemm / torchrec stack gets."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import store_rec
from store_rec.config import ConfigError, load_yaml
from store_rec.presets import config_root, find_preset, preset_names, resolve_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = config_root()
    assert root == Path(store_rec.__file__).parent / "configs"
    assert {"smoke", "store_synthetic", "quickstart"} <= set(preset_names())
    assert preset_names("topologies") == ["a100x8", "cpu_gloo", "h100x8"]
    for name in ("smoke", "smoke.yaml", "configs/smoke.yaml"):
        assert find_preset(name) == root / "smoke.yaml"
    assert find_preset("h100x8", "topologies") == root / "topologies" / "h100x8.yaml"
    assert find_preset("configs/experiments/paper.yaml") == root / "experiments" / "paper.yaml"
    assert find_preset("../pyproject.toml") is None and find_preset("/etc/passwd") is None
    assert load_yaml("configs/smoke.yaml")["model"]["name"] == "store"
    # your own file wins over the shipped one of the same name
    (tmp_path / "smoke.yaml").write_text("model: {name: dlrm_dcn}\n")
    assert resolve_config("smoke.yaml") == Path("smoke.yaml")
    assert load_yaml("smoke.yaml")["model"]["name"] == "dlrm_dcn"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found \(shipped configs: .*smoke"):
        load_yaml("nope.yaml")
    from store_rec.distributed.topology import load_topology

    assert load_topology("h100x8").name == "h100x8"
    with pytest.raises(ConfigError, match="presets: a100x8, cpu_gloo, h100x8"):
        load_topology("h200x8")


def test_checkout_links_are_the_package_files():
    assert (ROOT / "configs").resolve() == config_root().resolve()
    assert (ROOT / "launch" / "components.py").resolve() == (ROOT / "store_rec" / "launch" / "components.py").resolve()


def test_one_version_license_changelog():
    import importlib.metadata as md

    assert md.version("store_rec") == store_rec.__version__
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and 'version = {attr = "store_rec.__version__"}' in text
    assert f"## {store_rec.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    lic = (ROOT / "LICENSE").read_text()
    assert "Apache License" in lic and "Version 2.0, January 2004" in lic and "END OF TERMS AND CONDITIONS" in lic
    assert (ROOT / "store_rec" / "py.typed").exists()


def test_wheel_holds_the_package_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp_path.glob("store_rec-*.whl")
    assert whl.name.startswith(f"store_rec-{store_rec.__version__}-")
    names = set(zipfile.ZipFile(whl).namelist())
    for f in ("store_rec/configs/smoke.yaml", "store_rec/configs/topologies/h100x8.yaml",
              "store_rec/configs/datasets/avazu.yaml", "store_rec/configs/experiments/paper.yaml",
              "store_rec/launch/components.py", "store_rec/presets.py", "store_rec/py.typed"):
        assert f in names, f
    dist = f"store_rec-{store_rec.__version__}.dist-info"
    assert f"{dist}/licenses/LICENSE" in names
    z = zipfile.ZipFile(whl)
    eps = z.read(f"{dist}/entry_points.txt").decode()
    assert "store_rec = store_rec.launch.components" in eps and "dist = torchx.components.dist" in eps
    meta = z.read(f"{dist}/METADATA").decode()
    for req in ('torch==2.13.0; extra == "cpu"', 'fbgemm-gpu-cpu==1.8.0; extra == "cpu"', 'fbgemm-gpu==1.8.0; extra == "cuda"',
                'torchrec==1.8.0; extra == "cuda"', 'torchx==0.7.0; extra == "launch"', "Requires-Dist: torchmetrics==1.0.3"):
        assert req in meta, req
    assert 'torchrec==1.8.0; extra == "cpu"' not in meta  # it would pull the CUDA fbgemm-gpu


def _broken_stack(tmp_path: Path) -> dict:
    """A PYTHONPATH that makes this venv look like `pip install torchrec` was run on a CPU machine: the CUDA
    fbgemm-gpu distribution is installed next to fbgemm-gpu-cpu, and importing torchrec fails in fbgemm."""
    fake = tmp_path / "site"
    (fake / "fbgemm_gpu-1.8.0.dist-info").mkdir(parents=True)
    (fake / "fbgemm_gpu-1.8.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fbgemm-gpu\nVersion: 1.8.0\n")
    (fake / "torchrec").mkdir()
    (fake / "torchrec" / "__init__.py").write_text(
        "raise OSError('Could not load this library: /venv/lib/python3.11/site-packages/fbgemm_gpu/fbgemm_gpu_config.so')\n")
    return {**os.environ, "PYTHONPATH": str(fake)}


def test_broken_fbgemm_is_reported_with_the_fix(tmp_path):
    env = _broken_stack(tmp_path)
    r = subprocess.run([sys.executable, "-m", "store_rec", "plan", "--topology", "h100x8", "--synthetic-tables", "2",
                        "--out", str(tmp_path / "p")], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr
    assert "Traceback" not in err
    assert "store-rec plan: error: the torch/fbgemm/torchrec stack does not import (OSError: Could not load" in err
    assert "fbgemm-gpu (the CUDA build) and fbgemm-gpu-cpu are both installed" in err
    assert "pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu && pip install fbgemm-gpu-cpu==1.8.0" in err
    r = subprocess.run([sys.executable, "-c", "import store_rec; store_rec.DLRM_STORE"], env=env, capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1 and "StackError: store_rec.DLRM_STORE: the torch/fbgemm/torchrec stack" in r.stderr
    assert "pip install fbgemm-gpu-cpu==1.8.0" in r.stderr


def test_unrelated_errors_are_not_blamed_on_the_stack():
    from store_rec.stack import diagnose

    assert diagnose(OSError("disk full")) is None
    assert diagnose(ImportError("No module named 'foo'")) is None
