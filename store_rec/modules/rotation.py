"""Orthogonal rotation of static (low-cardinality) features into K tokens (STORE, section 2).

How the instance block is built and cut into tokens (store_rec's documented choice; the paper
leaves it open)::

    static features of group k          g_k  : Tensor[B, n_k * D]   (its n_k embeddings, concatenated)
    one shallow MLP per group           c_k  = MLP_k(g_k) : Tensor[B, d_k]
    instance block (concatenation)      C    = [c_1, ..., c_G] : Tensor[B, D]     (sum_k d_k = D)
    K rotations, R_i in O(D)            O_i  = C R_i : Tensor[B, D]               (i = 1..K)
    tokens                              T    = stack_i O_i : Tensor[B, K, D]

With ``static_tokens="per_feature"`` (a reading of the paper that does not squeeze the static
features into one D-wide vector) there is no group MLP: every static feature keeps its own
embedding as a token and the features of group ``k`` are rotated by ``R_k``::

    static feature s of group k(s)      e_s  : Tensor[B, D]
    tokens                              T_s  = e_s R_{k(s)} : Tensor[B, D]      (s = 1..S)

so ``K`` must equal the number of groups ``G``, the token count is ``S`` (not ``K``), and the
diversity term pushes the groups' rotations apart. Because every static feature has its own
embedding table, ``e_s R_k`` is a re-parametrisation of a free embedding: the rotation adds no
expressive power in this reading, only the diversity coupling between the groups (an honest
consequence of the reading, measured in docs/MODEL.md).

So every group MLP outputs a slice of the model width (``d_k = D // G``, the first ``D % G`` groups
get one more), the concatenated block C has exactly the token width D, each ``R_i`` is a ``D x D``
orthogonal matrix, and each rotated copy of the *whole* block is one token. ``K`` defaults to the
number of groups ``G`` (the paper uses one K for both); ``num_rotations`` sets it independently.

Orthogonality is exact by construction (not a soft penalty):

* ``method="cayley"`` (default): ``torch.nn.utils.parametrizations.orthogonal`` with the Cayley map,
  one ``D x D`` parametrized weight per rotation (a loop over K, no batched (K, D, D) Cayley — it
  crashes with an MKL error in the CPU wheel at D >= 256). Works with any optimizer, DDP/DMP,
  ``TrainPipelineSparseDist`` and checkpoints without hooks.
* ``method="matrix_exp"``: same parametrization with the matrix exponential (slower).
* ``method="qr"``: ``R_i`` are plain parameters and :meth:`OrthogonalRotation.retract_` maps them
  back onto O(D) with a sign-fixed QR after each optimizer step (:class:`AlternatingOptimizer`
  calls it). Cheapest per step, but needs the hook.

Measured cost of one training step of K=4 rotations (forward + backward + Adam step, plus the QR
for the retraction; median of 30, 2 CPU threads, torch 2.13 CPU; max|R^T R - I| after the steps)::

    D     cayley            matrix_exp         householder        qr retraction
    16    0.76 ms (7e-7)    1.60 ms (5e-7)     2.82 ms (8e-7)     0.36 ms (5e-7)
    64    1.31 ms (9e-7)    4.50 ms (3e-6)    10.3 ms (7e-7)      0.74 ms (6e-7)
    128   2.67 ms (1e-6)   11.7 ms (7e-6)     28.8 ms (8e-7)      1.74 ms (7e-7)
    256   7.21 ms (1e-6)   79.1 ms (1e-5)    106 ms (1e-6)        5.93 ms (8e-7)

The QR retraction is 1.2-2x cheaper than Cayley but needs the post-step hook; Cayley is the
default because it is orthogonal by construction under any optimizer/pipeline/checkpoint, and its
cost (about 2 ms per step for K=8, D=64) is negligible next to the interaction layers.
``RankingModel.forward`` evaluates the R_i once per step (``parametrize.cached``).

Diversity regularizer (paper: minimise ``-lambda * sum_{i<j} ||R_i - R_j||_F^2``)::

    sum_{i<j} ||R_i - R_j||_F^2 = K * sum_i ||R_i||_F^2 - ||sum_i R_i||_F^2 = K^2 D - ||sum_i R_i||_F^2

for orthogonal ``R_i`` (``||R_i||_F^2 = D``), so the term lies in ``[0, K^2 D]`` and the loss
``-lambda * (...)`` in ``[-lambda K^2 D, 0]`` (:meth:`OrthogonalRotation.diversity_bound`). It is
well-defined only because the R_i stay exactly orthogonal; :meth:`diversity_loss` returns the
*unweighted* negative sum (multiply by lambda in the train loop, see
``StoreModel.aux_loss_weights``).
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrizations

logger = logging.getLogger(__name__)

ROTATION_METHODS = ("cayley", "matrix_exp", "qr")


def _split_width(total: int, parts: int) -> List[int]:
    """``total`` split into ``parts`` near-equal positive sizes (first ones one larger)."""
    if parts < 1 or total < parts:
        raise ValueError(f"cannot split width {total} into {parts} group outputs (need width >= groups)")
    base, rest = divmod(total, parts)
    return [base + (1 if k < rest else 0) for k in range(parts)]


class _GroupMLP(nn.Module):
    """Shallow MLP fusing one semantic group: ``Tensor[B, n*D] -> Tensor[B, d_k]``."""

    def __init__(self, in_features: int, out_features: int, hidden: int) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
            )
        else:
            self.net = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class OrthogonalRotation(nn.Module):
    """Static-feature groups -> K exactly-orthogonal rotations of the instance block -> K tokens.

    Args:
        embedding_dim: D, the width of each input embedding and of each output token.
        group_sizes: number of static features in each semantic group (G groups); the input's
            feature axis holds the groups' features consecutively in this order.
        num_rotations: K (default: G).
        mlp_hidden: hidden width of each group MLP (0 = a single linear layer).
        method: ``"cayley"`` | ``"matrix_exp"`` | ``"qr"`` (see module docstring).
        static_tokens: ``"fused"`` (default: group MLPs -> C -> K rotated copies of C) or
            ``"per_feature"`` (no MLP; feature s of group k becomes the token ``e_s R_k``; needs
            ``num_rotations`` None or G).

    Shapes::

        forward(static: Tensor[B, S, D]) -> Tensor[B, K, D]      S = sum(group_sizes)   (fused)
        forward(static: Tensor[B, S, D]) -> Tensor[B, S, D]                             (per_feature)

    Example::

        rot = OrthogonalRotation(16, group_sizes=[2, 3])          # 2 groups -> 2 tokens
        tokens = rot(torch.randn(8, 5, 16))                       # [8, 2, 16]
        loss = bce + 0.1 * rot.diversity_loss()
    """

    def __init__(
        self,
        embedding_dim: int,
        group_sizes: Sequence[int],
        *,
        num_rotations: Optional[int] = None,
        mlp_hidden: int = 64,
        method: str = "cayley",
        static_tokens: str = "fused",
    ) -> None:
        super().__init__()
        if static_tokens not in ("fused", "per_feature"):
            raise ValueError(f"static_tokens {static_tokens!r} is not 'fused' or 'per_feature'")
        if static_tokens == "per_feature" and num_rotations and int(num_rotations) != len(group_sizes):
            raise ValueError(f"static_tokens 'per_feature' rotates group k by R_k: num_rotations must be the number "
                             f"of groups ({len(group_sizes)}), got {num_rotations}")
        self.static_tokens = static_tokens
        if not group_sizes or any(int(n) < 1 for n in group_sizes):
            raise ValueError(f"group_sizes must be non-empty positive counts, got {list(group_sizes)}")
        if method not in ROTATION_METHODS:
            raise ValueError(f"method {method!r} is not one of {ROTATION_METHODS}")
        self.embedding_dim = int(embedding_dim)
        self.group_sizes = [int(n) for n in group_sizes]
        self.num_rotations = int(num_rotations) if num_rotations else len(self.group_sizes)
        if self.num_rotations < 1:
            raise ValueError(f"num_rotations must be >= 1, got {num_rotations}")
        self.method = method
        D = self.embedding_dim
        if static_tokens == "fused":
            self.group_out = _split_width(D, len(self.group_sizes))
            self.group_mlps = nn.ModuleList(
                _GroupMLP(n * D, d, mlp_hidden) for n, d in zip(self.group_sizes, self.group_out)
            )
        else:
            self.group_out = []
            self.group_mlps = nn.ModuleList()
        # per_feature: rotation index of each static feature (its group)
        feat_group = [k for k, n in enumerate(self.group_sizes) for _ in range(n)]
        self.register_buffer("feature_group", torch.tensor(feat_group, dtype=torch.long), persistent=False)
        # One D x D holder per rotation (looped: no batched Cayley, see module docstring).
        self.rotations = nn.ModuleList()
        for _ in range(self.num_rotations):
            holder = nn.Module()
            w = torch.linalg.qr(torch.randn(D, D))[0]
            holder.weight = nn.Parameter(w)
            if method != "qr":
                parametrizations.orthogonal(holder, "weight", orthogonal_map=method)
            self.rotations.append(holder)
        pairs = torch.triu_indices(self.num_rotations, self.num_rotations, offset=1)
        self.register_buffer("pair_i", pairs[0].clone(), persistent=False)
        self.register_buffer("pair_j", pairs[1].clone(), persistent=False)

    # ------------------------------------------------------------------ rotations
    def rotation_matrices(self) -> torch.Tensor:
        """The K orthogonal matrices stacked: ``Tensor[K, D, D]``."""
        return torch.stack([h.weight for h in self.rotations])

    def rotation_parameters(self) -> List[nn.Parameter]:
        """The trainable parameters behind the R_i (for the rotation optimizer)."""
        return [p for h in self.rotations for p in h.parameters()]

    @torch.no_grad()
    def retract_(self) -> None:
        """Map each R_i back onto O(D) (sign-fixed QR). Needed only for ``method="qr"``;
        a no-op for the parametrized methods (they are orthogonal by construction)."""
        if self.method != "qr":
            return
        for h in self.rotations:
            q, r = torch.linalg.qr(h.weight)
            h.weight.copy_(q * torch.sign(torch.diagonal(r)).unsqueeze(0))

    def orthogonality_error(self) -> float:
        """``max_i max|R_i^T R_i - I|`` (a diagnostic, no gradient)."""
        with torch.no_grad():
            R = self.rotation_matrices()
            eye = torch.eye(self.embedding_dim, dtype=R.dtype, device=R.device)
            return float((R.transpose(1, 2) @ R - eye).abs().max())

    def diversity_loss(self, R: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``-sum_{i<j} ||R_i - R_j||_F^2`` (unweighted; multiply by lambda). ``Tensor[]``.

        Computed directly over pairs; in ``[-K^2 D, 0]`` for orthogonal R (see module docstring).
        """
        if R is None:  # python-int K: the train pipeline fx-traces this (no tensor control flow)
            R, K = self.rotation_matrices(), self.num_rotations
            i, j = self.pair_i, self.pair_j
        else:
            K = int(R.shape[0])
            i, j = torch.triu_indices(K, K, offset=1, device=R.device)
        if K < 2:
            return R.sum() * 0.0
        return -((R[i] - R[j]) ** 2).sum()

    def diversity_bound(self) -> float:
        """``K^2 * D``: ``-diversity_loss()`` never exceeds it while every R_i is orthogonal."""
        return float(self.num_rotations**2 * self.embedding_dim)

    # ------------------------------------------------------------------ forward
    def instance_block(self, static: torch.Tensor) -> torch.Tensor:
        """``Tensor[B, S, D] -> C: Tensor[B, D]`` (group MLP outputs concatenated)."""
        # no shape checks on tensor sizes here (the train pipeline fx-traces this); a wrong S fails
        # in torch.split ("split_with_sizes expects split_sizes to sum exactly to S"), a wrong D in
        # the group MLP's Linear
        parts = torch.split(static, self.group_sizes, dim=1)
        return torch.cat([mlp(g.flatten(1)) for mlp, g in zip(self.group_mlps, parts)], dim=1)

    @property
    def num_tokens(self) -> int:
        """Tokens emitted: K (fused) or S = sum(group_sizes) (per_feature)."""
        return self.num_rotations if self.static_tokens == "fused" else sum(self.group_sizes)

    def forward(self, static: torch.Tensor) -> torch.Tensor:
        """``static: Tensor[B, S, D] -> tokens``: ``Tensor[B, K, D]`` with token i = C R_i (fused), or
        ``Tensor[B, S, D]`` with token s = e_s R_{k(s)} (per_feature)."""
        if self.static_tokens == "per_feature":
            R = self.rotation_matrices().index_select(0, self.feature_group)  # type: ignore[arg-type]  # buffer [S], [S, D, D]
            return torch.einsum("bsd,sde->bse", static, R)
        C = self.instance_block(static)
        return torch.einsum("bd,kde->bke", C, self.rotation_matrices())


# ---------------------------------------------------------------------- optimisation helpers
def rotation_modules(model: nn.Module) -> List[OrthogonalRotation]:
    """Every :class:`OrthogonalRotation` inside ``model`` (works through DMP/DDP wrappers)."""
    return [m for m in model.modules() if isinstance(m, OrthogonalRotation)]


def rotation_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The rotation-matrix parameters of ``model`` (empty when rotation is off)."""
    seen, out = set(), []
    for m in rotation_modules(model):
        for p in m.rotation_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def split_rotation_params(
    model: nn.Module, named_params: Optional[Iterable[Tuple[str, nn.Parameter]]] = None
) -> Tuple[Dict[str, nn.Parameter], Dict[str, nn.Parameter]]:
    """Split ``named_params`` (default ``model.named_parameters()``) into ``(main, rotation)``
    dicts by parameter identity, so names may carry any DMP/DDP prefix.

    With DMP pass ``in_backward_optimizer_filter(model.named_parameters())`` to leave out the
    sparse tables (their fused optimizer runs in backward)."""
    rot_ids = {id(p) for p in rotation_parameters(model)}
    main: Dict[str, nn.Parameter] = {}
    rot: Dict[str, nn.Parameter] = {}
    for name, p in named_params if named_params is not None else model.named_parameters():
        (rot if id(p) in rot_ids else main)[name] = p
    return main, rot


class AlternatingSchedule:
    """Which parameter group steps at global step ``t`` (the paper's alternating optimisation).

    ``spec`` is ``"joint"`` (both every step) or ``"M:R"``: a cycle of ``M`` main-network steps
    followed by ``R`` rotation steps (``"1:1"`` alternates every step, ``"4:1"`` rotates every
    fifth step). Step ``t`` (0-based) is a main step iff ``t mod (M+R) < M``.
    """

    def __init__(self, spec: str = "1:1") -> None:
        self.spec = spec
        if spec == "joint":
            self.main_steps, self.rotation_steps = 0, 0
            return
        try:
            m, r = (int(x) for x in spec.split(":"))
        except ValueError:
            raise ValueError(f"alternating schedule {spec!r}: expected 'joint' or 'M:R' with integers, e.g. '1:1'") from None
        if m < 1 or r < 1:
            raise ValueError(f"alternating schedule {spec!r}: M and R must both be >= 1")
        self.main_steps, self.rotation_steps = m, r

    @property
    def joint(self) -> bool:
        return self.main_steps == 0

    def steps_main(self, t: int) -> bool:
        return self.joint or t % (self.main_steps + self.rotation_steps) < self.main_steps

    def steps_rotation(self, t: int) -> bool:
        return self.joint or not self.steps_main(t)

    def __repr__(self) -> str:
        return f"AlternatingSchedule({self.spec!r})"


class AlternatingOptimizer:
    """Optimizer facade stepping ``main`` and ``rotation`` optimizers on an :class:`AlternatingSchedule`.

    It has the ``zero_grad()`` / ``step()`` / ``state_dict()`` surface that
    ``TrainPipelineSparseDist(model, optimizer, ...)`` and plain loops call. ``zero_grad`` clears
    both groups every step so skipped gradients never accumulate. Only the *dense* optimizers are
    gated: TorchRec's fused sparse optimizer (DMP, ``apply_optimizer_in_backward``) updates the
    embedding tables inside backward on every step. After a rotation step it calls
    ``retract_()`` on ``rotation_modules`` (only does work for ``method="qr"``).
    """

    def __init__(
        self,
        main: Optional[torch.optim.Optimizer],
        rotation: Optional[torch.optim.Optimizer],
        schedule: AlternatingSchedule,
        rotation_modules: Sequence[OrthogonalRotation] = (),
    ) -> None:
        self.main, self.rotation, self.schedule = main, rotation, schedule
        self.rotation_modules = list(rotation_modules)
        self.t = 0

    @property
    def param_groups(self) -> List[dict]:
        return [g for o in (self.main, self.rotation) if o is not None for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in (self.main, self.rotation):
            if o is not None:
                o.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:  # noqa: ANN001 - torch optimizer signature
        if self.main is not None and self.schedule.steps_main(self.t):
            self.main.step()
        if self.rotation is not None and self.schedule.steps_rotation(self.t):
            self.rotation.step()
            for m in self.rotation_modules:
                m.retract_()
        self.t += 1

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "main": self.main.state_dict() if self.main is not None else None,
            "rotation": self.rotation.state_dict() if self.rotation is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        if self.main is not None:
            self.main.load_state_dict(state["main"])
        if self.rotation is not None:
            self.rotation.load_state_dict(state["rotation"])

