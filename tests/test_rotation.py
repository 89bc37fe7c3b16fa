"""OrthogonalRotation: shapes, gradients, exact orthogonality after training, diversity loss,
alternating schedule / optimizer semantics."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from store_rec.modules.rotation import (
    AlternatingOptimizer,
    AlternatingSchedule,
    OrthogonalRotation,
    rotation_modules,
    rotation_parameters,
    split_rotation_params,
)


def test_shapes_tokens_and_gradients():
    torch.manual_seed(0)
    rot = OrthogonalRotation(8, group_sizes=[2, 1], mlp_hidden=4)
    x = torch.randn(5, 3, 8, requires_grad=True)
    out = rot(x)
    assert out.shape == (5, 2, 8)
    assert rot.group_out == [4, 4]
    # token i is the whole instance block C rotated by R_i
    C = rot.instance_block(x)
    assert C.shape == (5, 8)
    R = rot.rotation_matrices()
    for i in range(2):
        torch.testing.assert_close(out[:, i], C @ R[i], atol=1e-6, rtol=1e-5)
    (out.square().sum() + rot.diversity_loss()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in rot.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_group_widths_and_num_rotations():
    rot = OrthogonalRotation(10, group_sizes=[1, 1, 1], num_rotations=5, mlp_hidden=0)
    assert rot.group_out == [4, 3, 3]
    assert rot(torch.randn(2, 3, 10)).shape == (2, 5, 10)
    with pytest.raises(RuntimeError, match="split_sizes"):
        rot(torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match="method"):
        OrthogonalRotation(8, [1], method="svd")


@pytest.mark.parametrize("method", ["cayley", "matrix_exp", "qr"])
def test_orthogonal_after_training_steps(method):
    torch.manual_seed(0)
    rot = OrthogonalRotation(16, group_sizes=[2, 2, 1], method=method, mlp_hidden=8)
    sched = AlternatingSchedule("joint")
    main, r = split_rotation_params(rot)
    opt = AlternatingOptimizer(
        torch.optim.Adam(main.values(), lr=0.05), torch.optim.Adam(r.values(), lr=0.05), sched, rotation_modules(rot)
    )
    x, y = torch.randn(32, 5, 16), torch.randn(32, 3, 16)
    start = [p.detach().clone() for p in r.values()]
    for _ in range(25):
        opt.zero_grad()
        loss = (rot(x) - y).square().mean() + 0.1 * rot.diversity_loss()
        loss.backward()
        opt.step()
    assert any((a - b.detach()).abs().max() > 1e-3 for a, b in zip(start, r.values()))  # it trained
    assert rot.orthogonality_error() < 1e-5
    R = rot.rotation_matrices().detach().double()
    err = torch.linalg.matrix_norm(R.transpose(1, 2) @ R - torch.eye(16, dtype=torch.float64)).max()
    assert err < 1e-5


def test_diversity_loss_hand_computed_two_matrices():
    rot = OrthogonalRotation(2, group_sizes=[1, 1])
    R1 = torch.eye(2)
    R2 = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # 90 degree rotation
    # ||R1 - R2||_F^2 = 1 + 1 + 1 + 1 = 4
    assert rot.diversity_loss(torch.stack([R1, R2])).item() == pytest.approx(-4.0)
    # bound K^2 D = 8 is reached by R2 = -R1 (||2 R1||^2 = 4 * 2)
    assert rot.diversity_bound() == 8.0
    assert rot.diversity_loss(torch.stack([R1, -R1])).item() == pytest.approx(-8.0)
    # the loss on the module's own (parametrized) matrices equals the pair formula
    R = rot.rotation_matrices().detach()
    assert rot.diversity_loss().item() == pytest.approx(-((R[0] - R[1]) ** 2).sum().item(), rel=1e-6)


def test_diversity_within_bound_for_random_rotations():
    torch.manual_seed(1)
    rot = OrthogonalRotation(6, group_sizes=[1, 1, 1, 1], mlp_hidden=0)
    d = -rot.diversity_loss().item()
    assert 0.0 <= d <= rot.diversity_bound() + 1e-4
    # identity: sum_{i<j} ||R_i - R_j||^2 = K^2 D - ||sum R_i||^2
    R = rot.rotation_matrices().detach()
    assert d == pytest.approx(4 * 4 * 6 - R.sum(0).square().sum().item(), rel=1e-5)


def test_alternating_schedule_semantics():
    s = AlternatingSchedule("1:1")
    assert [s.steps_main(t) for t in range(4)] == [True, False, True, False]
    assert [s.steps_rotation(t) for t in range(4)] == [False, True, False, True]
    s = AlternatingSchedule("2:1")
    assert [s.steps_main(t) for t in range(6)] == [True, True, False, True, True, False]
    assert [s.steps_rotation(t) for t in range(6)] == [False, False, True, False, False, True]
    j = AlternatingSchedule("joint")
    assert all(j.steps_main(t) and j.steps_rotation(t) for t in range(3))
    for bad in ("1", "0:1", "a:b", "1:0"):
        with pytest.raises(ValueError, match="schedule"):
            AlternatingSchedule(bad)


def test_alternating_optimizer_gates_groups_and_clears_grads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), OrthogonalRotation(4, [1]))  # names carry a prefix
    main, rot = split_rotation_params(model)
    assert set(rot) == {n for n, _ in model.named_parameters() if n.startswith("1.rotations.")}
    assert {id(p) for p in rot.values()} == {id(p) for p in rotation_parameters(model)}
    opt = AlternatingOptimizer(
        torch.optim.SGD(main.values(), lr=0.1), torch.optim.SGD(rot.values(), lr=0.1), AlternatingSchedule("1:1")
    )
    x = torch.randn(3, 1, 4)

    def one_step():
        before_m = [p.detach().clone() for p in main.values()]
        before_r = [p.detach().clone() for p in rot.values()]
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        moved_m = any(not torch.equal(a, b) for a, b in zip(before_m, main.values()))
        moved_r = any(not torch.equal(a, b) for a, b in zip(before_r, rot.values()))
        return moved_m, moved_r

    assert one_step() == (True, False)  # t=0: main network
    assert one_step() == (False, True)  # t=1: rotations
    assert one_step() == (True, False)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    state = opt.state_dict()
    assert state["t"] == 3
    opt2 = AlternatingOptimizer(torch.optim.SGD(main.values(), lr=0.1), torch.optim.SGD(rot.values(), lr=0.1), AlternatingSchedule("1:1"))
    opt2.load_state_dict(state)
    assert opt2.t == 3 and not opt2.schedule.steps_main(opt2.t)
