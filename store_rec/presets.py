"""The shipped configs (``store_rec/configs``: training configs, ``topologies/``, ``datasets/``,
``experiments/``) as package data, found through :mod:`importlib.resources`.

They travel inside the wheel, so an installed ``store-rec`` finds them from any directory. In a git
checkout the top-level ``configs`` is a symlink to ``store_rec/configs``, so ``configs/smoke.yaml``
names the same file both ways.

How a config argument is resolved (:func:`resolve_config`, used by :func:`store_rec.config.load_yaml`,
i.e. by every ``--config`` of the CLI and by ``python -m store_rec.train``):

1. an existing file is used as is (your own config always wins);
2. otherwise, when it names a shipped config, that one: ``smoke``, ``smoke.yaml``,
   ``configs/smoke.yaml``, ``topologies/h100x8``, ``configs/experiments/paper.yaml`` ...;
3. otherwise :class:`~store_rec.config.ConfigError` (``config file not found``, listing the presets).

Relative paths *inside* a shipped config (``data.dir: data/smoke``, ``output.dir: runs/smoke``) stay
relative to the current directory: running a preset writes under the directory you run it from.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional, Union

PACKAGE_DIR = "configs"
"""Folder of package ``store_rec`` holding the shipped configs (mirrored by the checkout's ``configs``)."""


def config_root() -> Path:
    """The directory of the shipped configs (``.../site-packages/store_rec/configs`` once installed)."""
    root = resources.files("store_rec").joinpath(PACKAGE_DIR)
    if not isinstance(root, Path):  # a zipped install: every consumer here reads real files
        raise RuntimeError(f"store_rec's configs are not on the file system ({root!r}); install store_rec unzipped (pip does)")
    return root


def preset_names(kind: str = "") -> List[str]:
    """Names (file stems) of the shipped ``*.yaml`` in ``configs/<kind>`` (``kind=""``: training configs)."""
    d = config_root() / kind
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def find_preset(name: Union[str, Path], kind: str = "") -> Optional[Path]:
    """The shipped config that ``name`` names, or None.

    ``name`` may be a stem (``smoke``), a file name (``smoke.yaml``), a path below ``configs``
    (``topologies/h100x8``) or the checkout path (``configs/smoke.yaml``); ``kind`` is a subfolder tried
    first for bare names (``topologies`` for ``h100x8``)."""
    s = str(name).replace("\\", "/")
    if not s or s.startswith("/") or ".." in s.split("/"):
        return None
    if s.startswith(f"{PACKAGE_DIR}/"):
        s = s[len(PACKAGE_DIR) + 1:]
    root = config_root()
    for rel in ([f"{kind}/{s}"] if kind else []) + [s]:
        for cand in (root / rel, root / f"{rel}.yaml"):
            if cand.is_file():
                return cand
    return None


def resolve_config(path: Union[str, Path], kind: str = "") -> Path:
    """``path`` if it is an existing file, else the shipped config it names, else ``Path(path)`` unchanged
    (the caller reports the missing file; :func:`not_found_hint` says what exists)."""
    p = Path(path)
    if p.exists():
        return p
    return find_preset(path, kind) or p


def not_found_hint(kind: str = "") -> str:
    """``"shipped configs: a, b, ..."`` for error messages."""
    names = preset_names(kind)
    where = f"configs/{kind}" if kind else "configs"
    return f"shipped {where}: {', '.join(names) if names else '(none found)'}"
