"""The MoBA argument rules, defined once (torch-free, so configs can import them).

Who checks what:

* :class:`store_rec.models.config.AttentionConfig` checks them when a config is loaded (errors name
  the ``model.attention.<key>``); everything built from a config trusts them.
* The public entry points of :mod:`store_rec.ops.moba` for direct use check them once at their
  boundary: :class:`~store_rec.ops.moba.BlockSparseAttention` at construction (never per step) and
  :func:`~store_rec.ops.moba.moba_attention` per call (a few Python comparisons). Below them the router
  (:func:`~store_rec.ops.moba.route`), the mask and both implementations trust their arguments: no
  checks on the hot path.
"""

from __future__ import annotations

from typing import Optional, Tuple

from store_rec.ops.flops import ROUTINGS

IMPLS = ("reference", "fast", "dense")
ROUTING_ALIASES = {"block": "query_block"}  # accepted spelling of "query_block" (model config)


def moba_problem(*, block_size: int, sparsity: float, routing: str, own_block: bool = False,
                 impl: str = "fast") -> Optional[Tuple[str, str]]:
    """``(argument, what is wrong)`` of the first MoBA rule the arguments break, or None.

    Rules: ``routing`` in :data:`ROUTINGS` (or an alias), ``impl`` in :data:`IMPLS`, ``block_size >= 1``,
    ``0 <= sparsity < 1``, ``own_block`` not with ``instance`` routing (all queries of a sample share
    one selection, so there is no "own" block).
    """
    routing = ROUTING_ALIASES.get(routing, routing)
    if routing not in ROUTINGS:
        return "routing", f"must be one of {ROUTINGS}, got {routing!r}"
    if impl not in IMPLS:
        return "impl", f"must be one of {IMPLS}, got {impl!r}"
    if not block_size >= 1:
        return "block_size", f"must be >= 1, got {block_size}"
    if not 0.0 <= sparsity < 1.0:
        return "sparsity", f"must be in [0, 1), got {sparsity}"
    if own_block and routing == "instance":
        return "own_block", "is undefined for routing 'instance' (all queries of a sample share one selection)"
    return None


def check_moba_args(*, block_size: int, sparsity: float, routing: str, own_block: bool = False,
                    impl: str = "fast") -> str:
    """Raise ``ValueError`` naming the argument if :func:`moba_problem` finds one; returns the canonical routing."""
    bad = moba_problem(block_size=block_size, sparsity=sparsity, routing=routing, own_block=own_block, impl=impl)
    if bad is not None:
        raise ValueError(f"{bad[0]} {bad[1]}")
    return ROUTING_ALIASES.get(routing, routing)
