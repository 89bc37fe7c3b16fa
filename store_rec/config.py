"""Configs as data: YAML validated into dataclasses, with errors that name the bad key.

Every config section of store_rec is a ``@dataclass``. :func:`from_dict` builds one from plain data
(a parsed YAML mapping), checking every key and type and naming the full key path on error::

    >>> @dataclass
    ... class Opt:
    ...     lr: float = 1e-3
    >>> from_dict(Opt, {"lr": "fast"}, path="train.optimizer")
    Traceback (most recent call last):
    ConfigError: train.optimizer.lr: expected float, got str 'fast'

Validation beyond types lives in a dataclass's ``__post_init__``; raise :class:`ConfigError` there
with :func:`check` helpers (the path is filled in by :func:`from_dict`).

Overrides on the command line use dotted keys with YAML values: ``model.num_layers=4``,
``data.batch_size=512``, ``model.attention.sparsity=0.5``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config key or value. The message starts with the dotted key path."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ConfigError(``key: msg``) unless ``cond``; use inside ``__post_init__``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _join(path: str, key: Union[str, int]) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType)):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: no variant of {_type_name(tp)} accepts {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, List, Sequence, tuple, Tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if origin in (tuple, Tuple) and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        out = [_convert(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(out) if origin in (tuple, Tuple) else out
    if origin in (dict, Dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, _join(path, str(k))): _convert(vt, v, _join(path, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            f = float(value)
            if f != f or f in (float("inf"), float("-inf")):
                raise ConfigError(f"{path}: expected a finite float, got {value!r}")
            return f
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-3" as a string; accept numeric strings for floats only
                return _convert(float, float(value), path)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: Type[T], data: Optional[Mapping[str, Any]], path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys, wrong types and failed
    ``__post_init__`` checks raise :class:`ConfigError` naming the dotted key path."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'top level'}: expected a mapping for {cls.__name__}, got "
                          f"{type(data).__name__} {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        bad = _join(path, unknown[0])
        raise ConfigError(f"{bad}: unknown key (valid keys under {path or 'top level'}: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(_join(path, msg) if path and not msg.startswith((path + ".", path + "[", path + ":")) else msg) from None


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config dataclass (for saving next to results)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """``["a.b=3", "c=[1,2]"]`` -> nested dict ``{"a": {"b": 3}, "c": [1, 2]}`` (values are YAML)."""
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.epochs=2)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML "
                              f"({str(e).splitlines()[0]}); quote it or close its brackets") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is set both as a value and a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently, so a second ``model:`` section would replace the first without a word)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: Dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                dup = key in seen
            except TypeError:  # unhashable key: the base class reports it
                break
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1}, again at line "
                    f"{key_node.start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeyLoader.construct_mapping)


def load_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """Read a YAML mapping; errors name the file (missing, a directory, not UTF-8, not YAML, a key given
    twice in one mapping, not a mapping). ``path``: an existing file, else the shipped config it names
    (``store_rec/configs``)."""
    from store_rec.presets import not_found_hint, resolve_config

    p = resolve_config(path)
    if not p.exists():
        raise ConfigError(f"{p}: config file not found ({not_found_hint()})")
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; expected a YAML config file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"{p}: line {line}: not valid UTF-8 ({e.reason})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: Type[T], path: Optional[os.PathLike], overrides: Sequence[str] = ()) -> T:
    """YAML file (optional) + ``key=value`` overrides -> validated dataclass ``cls``."""
    data = load_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
