"""mamba_rl.closed_form: the jump across constant inputs with a step count per row."""

import torch

from mamba_rl.closed_form import advance_ssm


def test_per_row_steps_equal_the_scalar_jump_and_zero_steps_keep_the_state():
    torch.manual_seed(0)
    # [B=3, d_inner=5, d_state=4]
    ssm = torch.randn(3, 5, 4, dtype=torch.float64)
    dt_a = -torch.rand(3, 5, 4, dtype=torch.float64) * 1e-3
    drive = torch.randn(3, 5, 4, dtype=torch.float64)
    steps = torch.tensor([0, 7, 10**7])
    jumped = advance_ssm(ssm, dt_a, drive, steps[:, None, None])
    assert torch.equal(jumped[0], ssm[0])
    for row in (1, 2):
        want = advance_ssm(ssm[row], dt_a[row], drive[row], int(steps[row]))
        torch.testing.assert_close(jumped[row], want, rtol=1e-14, atol=0)
    # seven steps of h <- exp(dt_a) h + drive
    h = ssm[1]
    for _ in range(7):
        h = torch.exp(dt_a[1]) * h + drive[1]
    torch.testing.assert_close(jumped[1], h, rtol=1e-12, atol=1e-12)


def test_a_decay_of_exactly_one_adds_the_drive_up_with_finite_gradients():
    # regression guard: a where() over expm1(n dt_a) / expm1(dt_a) gives 0/0 in the unused branch,
    # whose gradient is NaN unless the denominator is kept off 0
    dt_a = torch.tensor([0.0, -1e-3], dtype=torch.float64, requires_grad=True)
    ssm = torch.tensor([2.0, 2.0], dtype=torch.float64, requires_grad=True)
    drive = torch.tensor([0.5, 0.5], dtype=torch.float64, requires_grad=True)
    out = advance_ssm(ssm, dt_a, drive, torch.tensor([10.0, 10.0], dtype=torch.float64))
    assert out[0].item() == 2.0 + 10 * 0.5
    out.sum().backward()
    for tensor in (dt_a, ssm, drive):
        assert torch.isfinite(tensor.grad).all()
    assert drive.grad[0].item() == 10.0
