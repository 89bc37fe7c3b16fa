"""Speed-ups of TorchRec's private planner internals (:func:`fast_planner`): the one place store_rec
patches TorchRec.

They replace module attributes inside ``torchrec.distributed.planner`` (``enumerators.copy``,
``planners.copy``, ``estimator.annotations._get_*_method``, ``estimator.get_embedding_perf_sharding_evaluator``)
for the duration of one ``plan()`` call, and were written against the TorchRec version in
:data:`PATCHED_TORCHREC`. With any other installed version :func:`fast_planner` logs a warning and runs
TorchRec's own code path (slower, same plan). ``tests/test_plan.py`` compares both paths shard by shard.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from typing import Any, Dict, Iterator, List, Optional

logger = logging.getLogger(__name__)

PATCHED_TORCHREC = "1.8.0"
"""The TorchRec release whose private planner internals :func:`fast_planner` replaces."""


def installed_torchrec_version() -> str:
    """The installed torchrec's version without a local suffix (``1.8.0+cpu`` -> ``1.8.0``); ``""`` if unknown."""
    try:
        return importlib.metadata.version("torchrec").split("+")[0]
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - torchrec installed without metadata
        return ""


_warned: set = set()


def _version_ok() -> bool:
    have = installed_torchrec_version()
    if have == PATCHED_TORCHREC:
        return True
    if have not in _warned:
        _warned.add(have)
        logger.warning(
            "fast_planner: written for torchrec %s, found %s: using TorchRec's own planner code path "
            "(same plans, slower; set plan.fast_planner: false to silence this)", PATCHED_TORCHREC, have or "unknown",
        )
    return False


class _SearchSpaceCopyShim:
    """Stands in for the ``copy`` module inside ``torchrec.distributed.planner.enumerators`` (see
    :func:`fast_planner`): a list of ShardingOptions is copied shallowly, anything else deeply."""

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        import copy

        from torchrec.distributed.planner.types import ShardingOption

        if isinstance(x, list) and x and isinstance(x[0], ShardingOption):
            return list(x)
        return copy.deepcopy(x, memo)


def _copy_flat(x: Any) -> Any:
    """Copy of a Perf / Storage (dataclasses of numbers): a shallow copy is a deep copy."""
    if x is None:
        return None
    out = object.__new__(type(x))
    out.__dict__.update(x.__dict__)
    return out


def copy_sharding_options(options: List[Any], memo: Optional[Dict[int, Any]] = None) -> List[Any]:
    """``copy.deepcopy(options)`` for a list of TorchRec ``ShardingOption``s, ~10x faster.

    Same result as ``ShardingOption.__deepcopy__`` (module and tensor shared, everything else copied),
    but each ``Shard`` (lists of ints, a ``Storage`` and a ``Perf`` of numbers, an int rank) is rebuilt
    directly instead of through ``copy``'s generic reconstruction; any other shard type goes through
    ``copy.deepcopy``. ``tests/test_plan.py`` compares it with ``copy.deepcopy``.
    """
    import copy

    from torchrec.distributed.planner.types import Perf, Shard, Storage

    memo = {} if memo is None else memo
    flat = (Perf, Storage, type(None))
    out = []
    for so in options:
        new = object.__new__(type(so))
        for k, v in so.__dict__.items():
            if k in ("_tensor", "_module"):
                new.__dict__[k] = v
            elif k == "shards":
                shards = []
                for sh in v:
                    if type(sh) is Shard and type(sh.storage) in flat and type(sh.perf) in flat:
                        shards.append(Shard(size=list(sh.size), offset=list(sh.offset), storage=_copy_flat(sh.storage), perf=_copy_flat(sh.perf), rank=sh.rank))
                    else:  # pragma: no cover - a Shard subclass or a new field type
                        shards.append(copy.deepcopy(sh, memo))
                new.__dict__[k] = shards
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        out.append(new)
    return out


class _PlanCopyShim:
    """Stands in for ``copy`` inside ``torchrec.distributed.planner.planners``: the planner deep-copies
    every better plan it finds (``best_plan = copy.deepcopy(plan)``); a list of ShardingOptions is
    copied by :func:`copy_sharding_options`, anything else by ``copy``."""

    @staticmethod
    def deepcopy(x: Any, memo: Any = None) -> Any:
        import copy

        from torchrec.distributed.planner.types import ShardingOption

        if isinstance(x, list) and x and all(isinstance(so, ShardingOption) for so in x):
            return copy_sharding_options(x, memo)
        return copy.deepcopy(x, memo)

    @staticmethod
    def copy(x: Any) -> Any:
        import copy

        return copy.copy(x)


class _LastPerf:
    """The most recent (evaluator, context, config) -> Perf of :class:`_RepeatedShardEvaluator`."""

    __slots__ = ("key", "ctx", "perf")

    def __init__(self) -> None:
        self.key: Any = None
        self.ctx: Any = None
        self.perf: Any = None


class _RepeatedShardEvaluator:
    """Wraps a TorchRec ``EmbeddingShardingPerfEvaluator``: a shard whose ``ShardPerfContext`` equals
    the previous shard's (same evaluator and config) gets a copy of that shard's ``Perf`` instead of a
    recomputation. See :func:`fast_planner` (3)."""

    def __init__(self, inner: Any, last: _LastPerf) -> None:
        self._inner = inner
        self._last = last

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def compute_perf(self, ctx: Any, config: Any) -> Any:
        last = self._last
        key = (id(self._inner), id(config))
        if last.key == key and last.ctx == ctx:
            return _copy_flat(last.perf)
        perf = self._inner.compute_perf(ctx=ctx, config=config)
        last.key, last.ctx, last.perf = key, ctx, _copy_flat(perf)
        return perf


@contextlib.contextmanager
def fast_planner(enabled: bool = True) -> Iterator[None]:
    """Remove four costs of TorchRec's planner that do not change its result (one ``plan()`` call).

    1. ``estimator.annotations._get_annotated_method`` / ``_get_coefficient_method`` scan
       ``dir(config)`` on every call (hundreds of thousands of calls for 200 tables x 1024 ranks).
       Which method they find depends only on the config's class and instance attribute names, the
       marker attribute and the sharding type: we cache the *attribute name* found under that key and
       return ``getattr(config, name)`` -- the same bound method the scan returns.
    2. ``EmbeddingEnumerator.enumerate`` deep-copies the whole search space (every ShardingOption with
       all its shards: ~45% of the time at 1024 ranks) to cache it for a second ``enumerate`` of the
       same module, which only plan loading/hashing (``plan_loader``) reads. We plan once per planner
       and use no plan loader, so a shallow list copy is stored instead.
    3. The perf estimator computes every shard of every ShardingOption separately: a row-wise option at
       1024 ranks is 1024 shards, all but the last of the same size, i.e. 1024 identical computations.
       ``compute_perf(ctx, config)`` reads only its (dataclass) ``ShardPerfContext`` and the hardware
       config, so a shard whose context *equals* the previous shard's gets a copy of that ``Perf``
       (~75% of the estimator's work at 256 ranks).
    4. ``EmbeddingShardingPlanner.plan`` deep-copies every better plan it finds; at 1024 ranks that is
       200k shards per copy through ``copy``'s generic reconstruction. :func:`copy_sharding_options`
       builds the same copy directly.

    Off (``enabled=False``) = TorchRec's own code path; ``tests/test_plan.py`` checks both give
    identical plans, shards and perf estimates. Also off, with a logged warning, when the installed
    torchrec is not :data:`PATCHED_TORCHREC` (the patched internals are private and may change).
    """
    if not enabled or not _version_ok():
        yield
        return
    try:
        from torchrec.distributed.planner import enumerators as enum_mod
        from torchrec.distributed.planner.estimator import annotations as ann
    except ImportError:  # pragma: no cover - other torchrec versions: nothing to speed up
        yield
        return
    originals = {n: getattr(ann, n, None) for n in ("_get_annotated_method", "_get_coefficient_method")}
    if any(v is None for v in originals.values()) or getattr(enum_mod, "copy", None) is None:  # pragma: no cover
        yield
        return

    def memo(orig):
        cache: Dict[Any, Optional[str]] = {}

        def lookup(config: Any, attr: str, sharding_type: Optional[str] = None):
            key = (type(config), tuple(sorted(getattr(config, "__dict__", {}))), attr, sharding_type)
            if key not in cache:
                found = orig(config, attr, sharding_type)
                name = getattr(found, "__name__", None) if found is not None else None
                cache[key] = name
                if found is not None and (name is None or getattr(config, name, None) != found):  # not re-findable by name
                    cache[key] = "\0"
                return found
            name = cache[key]
            if name == "\0":
                return orig(config, attr, sharding_type)
            return None if name is None else getattr(config, name)

        return lookup

    copy_mod = enum_mod.copy
    try:
        from torchrec.distributed.planner.estimator import estimator as est_mod
    except ImportError:  # pragma: no cover
        est_mod = None
    from torchrec.distributed.planner import planners as planners_mod

    get_evaluator = getattr(est_mod, "get_embedding_perf_sharding_evaluator", None)
    planners_copy = getattr(planners_mod, "copy", None)
    try:
        for n, f in originals.items():
            setattr(ann, n, memo(f))
        enum_mod.copy = _SearchSpaceCopyShim  # type: ignore[assignment]
        if planners_copy is not None:
            planners_mod.copy = _PlanCopyShim  # type: ignore[assignment]
        if get_evaluator is not None:
            last = _LastPerf()
            est_mod.get_embedding_perf_sharding_evaluator = lambda *a, **k: _RepeatedShardEvaluator(get_evaluator(*a, **k), last)
        yield
    finally:
        for n, f in originals.items():
            setattr(ann, n, f)
        enum_mod.copy = copy_mod
        if planners_copy is not None:
            planners_mod.copy = planners_copy
        if get_evaluator is not None:
            est_mod.get_embedding_perf_sharding_evaluator = get_evaluator
