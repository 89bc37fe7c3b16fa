"""STORE architecture switches: static-token modes, token-specific FFN, pairwise dots, dense skip.

Shapes, gradients reaching every parameter, and reference checks (the shared FFN, TorchRec's
``InteractionArch``, the "w/o rotation" token count and FLOPs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.models.dlrm import InteractionArch

from store_rec.models import AttentionConfig, RotationConfig, StoreInteractionArch
from store_rec.modules.pairwise import PairwiseDot
from store_rec.modules.rotation import OrthogonalRotation
from store_rec.modules.token_ffn import TokenFFN

D = 8
GROUPS = [[3, 4], [5]]  # 3 id tokens (0..2), static groups of 2 and 1 features


def _arch(rotation=None, **att):
    a = AttentionConfig(num_layers=2, num_heads=2, ffn_dim=16, block_size=2, **att)
    return StoreInteractionArch(num_sparse_features=6, embedding_dim=D, static_groups=GROUPS, attention=a,
                                rotation=rotation or RotationConfig())


def _grads_everywhere(arch):
    dense = torch.randn(4, D, requires_grad=True)
    sparse = torch.randn(4, 6, D, requires_grad=True)
    y = arch(dense_features=dense, sparse_features=sparse)
    assert y.shape == (4, arch.output_dim)
    (y.square().sum() + sum(arch.aux_losses().values())).backward()
    assert (sparse.grad.abs().sum(dim=(0, 2)) > 0).all()
    for name, p in arch.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("static_tokens,enabled,n_static", [
    ("fused", True, 2),         # K = G = 2 rotated copies of C
    ("fused", False, 2),        # paper's w/o rotation: one token per group (same count)
    ("per_feature", True, 3),   # each static feature, rotated by its group's R
    ("per_feature", False, 3),  # each static feature, plain
])
def test_static_token_modes_shapes_and_gradients(static_tokens, enabled, n_static):
    torch.manual_seed(0)
    arch = _arch(RotationConfig(enabled=enabled, static_tokens=static_tokens))
    assert arch.seq_len == 1 + 3 + n_static and arch.output_dim == arch.seq_len * D
    assert (arch.rotation is not None) == enabled
    assert ("diversity" in arch.aux_losses()) == enabled
    _grads_everywhere(arch)


def test_per_feature_rotation_rotates_each_feature_by_its_group():
    torch.manual_seed(0)
    rot = OrthogonalRotation(D, [2, 1], static_tokens="per_feature")
    assert len(rot.group_mlps) == 0 and rot.num_tokens == 3
    x = torch.randn(5, 3, D)
    R = rot.rotation_matrices()
    ref = torch.stack([x[:, 0] @ R[0], x[:, 1] @ R[0], x[:, 2] @ R[1]], dim=1)
    torch.testing.assert_close(rot(x), ref)
    # rotations are orthogonal: token norms are the feature norms
    torch.testing.assert_close(rot(x).norm(dim=-1), x.norm(dim=-1))
    with pytest.raises(ValueError, match="num_rotations must be the number of groups"):
        OrthogonalRotation(D, [2, 1], num_rotations=3, static_tokens="per_feature")


def test_without_rotation_keeps_token_count_and_flops_close():
    """Paper Table 2: w/o rotation 1.760 vs 1.763 TFLOPs -- the same tokens, no rotation matmuls."""
    torch.manual_seed(0)
    on = _arch(RotationConfig(enabled=True, mlp_hidden=16))
    off = _arch(RotationConfig(enabled=False, mlp_hidden=16))
    assert on.seq_len == off.seq_len
    f_on, f_off = on.flops(1024), off.flops(1024)
    # only the group-MLP output widths and the K rotation matmuls differ: within 5 %
    assert abs(f_on - f_off) / f_on < 0.05, (f_on, f_off)
    # the old per-feature reading changes the token count (and the attention cost)
    pf = _arch(RotationConfig(enabled=False, static_tokens="per_feature"))
    assert pf.seq_len == on.seq_len + 1


def test_token_ffn_equals_shared_ffn_with_tied_weights():
    torch.manual_seed(0)
    shared = nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Dropout(0.0), nn.Linear(16, D))
    tok = TokenFFN(5, D, 16)
    tok.load_shared(shared)
    x = torch.randn(3, 5, D)
    torch.testing.assert_close(tok(x), shared(x))
    # untied: positions differ
    tok.reset_parameters()
    y = tok(x.expand(3, 5, D).clone()[:, :1].expand(3, 5, D).contiguous())
    assert not torch.allclose(y[:, 0], y[:, 1])


def test_token_ffn_arch_gradients_and_params():
    torch.manual_seed(0)
    arch = _arch(token_ffn=True)
    ffn = arch.layers[0].ffn
    assert isinstance(ffn, TokenFFN) and ffn.num_tokens == arch.seq_len
    n_shared = sum(p.numel() for p in _arch().layers[0].ffn.parameters())
    assert sum(p.numel() for p in ffn.parameters()) == arch.seq_len * n_shared
    _grads_everywhere(arch)


def test_pairwise_dot_matches_torchrec_interaction_arch():
    torch.manual_seed(0)
    B, L = 4, 6
    x = torch.randn(B, L, D)
    ref = InteractionArch(num_sparse_features=L - 1)(x[:, 0], x[:, 1:])  # [dense, dots]
    torch.testing.assert_close(PairwiseDot(L)(x), ref[:, D:])


def test_dot_features_and_dense_skip_in_output():
    torch.manual_seed(0)
    arch = _arch(RotationConfig(enabled=False, static_tokens="per_feature"), dot_features=True, dense_skip=True)
    L = arch.seq_len
    assert arch.output_dim == L * D + L * (L - 1) // 2 + D
    dense, sparse = torch.randn(4, D), torch.randn(4, 6, D)
    y = arch(dense_features=dense, sparse_features=sparse)
    x0 = arch.tokens(dense, sparse)
    torch.testing.assert_close(y[:, L * D:L * D + L * (L - 1) // 2], PairwiseDot(L)(x0))
    torch.testing.assert_close(y[:, -D:], dense)
    _grads_everywhere(arch)
