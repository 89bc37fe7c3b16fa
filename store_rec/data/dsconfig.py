"""Loading a dataset's prepare config: YAML file (optional) + keyword overrides -> validated dataclass."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

from store_rec.config import ConfigError, check, deep_merge, from_dict, load_yaml

T = TypeVar("T")



def _config_dir() -> Path:
    from store_rec.presets import config_root

    return config_root() / "datasets"


CONFIG_DIR = _config_dir()
"""The shipped dataset prepare configs (package data ``store_rec/configs/datasets``)."""


def load_dataset_config(cls: Type[T], config: Union[None, str, os.PathLike, Mapping[str, Any], T],
                        overrides: Optional[Mapping[str, Any]] = None) -> T:
    """``config`` is None (defaults), a YAML path, a mapping or an instance; ``overrides`` win.

    Errors are :class:`ConfigError` naming the file (when any) and the dotted key.
    """
    where = ""
    if config is None:
        data: Dict[str, Any] = {}
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        where = str(config)
        data = load_yaml(config)
    data = deep_merge(data, dict(overrides or {}))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def check_layout(known: Sequence[str], id_features: Sequence[str], static_groups: Mapping[str, Sequence[str]],
                 drop: Sequence[str], extra_keys: Mapping[str, Sequence[str]] = {}) -> None:
    """Every known column is in exactly one of ``id_features``, a static group or ``drop``;
    every name used anywhere (also in ``extra_keys``: key -> names) is a known column."""
    known_set = set(known)
    hint = f"known columns: {', '.join(known)}"
    places: Dict[str, List[str]] = {}
    lists = [("id_features", id_features), ("drop", drop)]
    lists += [(f"static_groups.{g}", names) for g, names in static_groups.items()]
    for key, names in lists:
        for i, n in enumerate(names):
            check(n in known_set, f"{key}[{i}]", f"unknown column {n!r} ({hint})")
            places.setdefault(n, []).append(key)
    for key, names in extra_keys.items():
        for i, n in enumerate(names):
            check(n in known_set, f"{key}[{i}]" if len(names) > 1 or key.endswith("s") else key,
                  f"unknown column {n!r} ({hint})")
    for n, where in places.items():
        if len(where) > 1:
            raise ConfigError(f"{where[1]}: column {n!r} is also listed in {where[0]}")
    missing = [n for n in known if n not in places]
    check(not missing, "id_features",
          f"column(s) {missing} are in no list: put each in id_features, a static group or drop")
    for g, names in static_groups.items():
        check(bool(names), f"static_groups.{g}", "a static group needs at least one column")
