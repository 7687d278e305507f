"""MambaMixer: mamba-ssm compatibility, the three entry points agree, state is pure and differentiable."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mamba_rl import MambaConfig, MambaMixer, MambaState
from tests.conftest import assert_close

# (name, shape) of mamba_ssm.modules.mamba_simple.Mamba(d_model=16) with its defaults
MAMBA_SSM_PARAMS_D16 = {
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,),
    "x_proj.weight": (1 + 2 * 16, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "A_log": (32, 16),
    "D": (32,),
    "out_proj.weight": (16, 32),
}


def mamba_ssm_reference_forward(sd, x, d_state=16, d_conv=4):
    """mamba-ssm's reference computation (slow path of Mamba.forward with selective_scan_ref),
    written from the published equations on a raw state dict, independent of MambaMixer."""
    batch, seqlen, _ = x.shape
    d_inner = sd["D"].shape[0]
    dt_rank = sd["dt_proj.weight"].shape[1]
    xz = (x @ sd["in_proj.weight"].T).transpose(1, 2)
    xs, z = xz.chunk(2, dim=1)
    xs = F.silu(F.conv1d(xs, sd["conv1d.weight"], sd["conv1d.bias"], padding=d_conv - 1, groups=d_inner)[..., :seqlen])
    x_dbl = xs.transpose(1, 2).reshape(batch * seqlen, d_inner) @ sd["x_proj.weight"].T
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    dt = (sd["dt_proj.weight"] @ dt.T).reshape(d_inner, batch, seqlen).permute(1, 0, 2)
    B = B.reshape(batch, seqlen, d_state).transpose(1, 2)
    C = C.reshape(batch, seqlen, d_state).transpose(1, 2)
    A = -torch.exp(sd["A_log"])
    delta = F.softplus(dt + sd["dt_proj.bias"][None, :, None])
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, xs)
    h = torch.zeros(batch, d_inner, d_state, dtype=x.dtype)
    ys = []
    for i in range(seqlen):
        h = delta_A[:, :, i] * h + delta_B_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = (torch.stack(ys, dim=2) + xs * sd["D"][None, :, None]) * F.silu(z)
    return y.transpose(1, 2) @ sd["out_proj.weight"].T


def test_parameter_names_shapes_and_init_match_mamba_ssm():
    mixer = MambaMixer(16)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes == MAMBA_SSM_PARAMS_D16
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(32, 1))
    assert torch.equal(mixer.D, torch.ones(32))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)


def test_mamba_ssm_state_dict_loads_and_outputs_match_reference():
    torch.manual_seed(0)
    sd = {k: torch.randn(shape, dtype=torch.float64) * 0.3 for k, shape in MAMBA_SSM_PARAMS_D16.items()}
    sd["A_log"] = torch.log(torch.arange(1, 17.0, dtype=torch.float64)).repeat(32, 1)
    mixer = MambaMixer(16, dtype=torch.float64, backend="torch").double()
    mixer.load_state_dict(sd, strict=True)
    x = torch.randn(2, 11, 16, dtype=torch.float64)
    y, _ = mixer(x)
    assert_close(y, mamba_ssm_reference_forward(sd, x))


@pytest.mark.gpu
def test_outputs_equal_mamba_ssm_when_installed():
    mamba_simple = pytest.importorskip("mamba_ssm.modules.mamba_simple")
    torch.manual_seed(0)
    theirs = mamba_simple.Mamba(d_model=64, use_fast_path=False).cuda()
    ours = MambaMixer(64, device="cuda")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 128, 64, device="cuda")
    torch.testing.assert_close(ours(x)[0], theirs(x), rtol=1e-4, atol=1e-4)


def random_reset(batch, steps, seed):
    g = torch.Generator().manual_seed(seed)
    reset = torch.rand(batch, steps, generator=g) < 0.2
    reset[0, 0] = True
    reset[-1, -1] = True
    return reset


@pytest.mark.parametrize("steps", [1, 7, 20])
def test_step_loop_equals_sequence_with_resets(steps):
    torch.manual_seed(steps)
    mixer = MambaMixer(8, d_state=4, dtype=torch.float64, backend="torch")
    x = torch.randn(3, steps, 8, dtype=torch.float64)
    reset = random_reset(3, steps, steps)
    state = MambaState(conv=torch.randn(3, 16, 3, dtype=torch.float64), ssm=torch.randn(3, 16, 4, dtype=torch.float64))
    y_seq, final = mixer(x, state, reset)
    for t in range(steps):
        y_t, state = mixer.step(x[:, t], state, reset[:, t])
        assert_close(y_t, y_seq[:, t])
    assert_close(state.conv, final.conv)
    assert_close(state.ssm, final.ssm)


def test_every_step_reset_equals_independent_single_steps():
    mixer = MambaMixer(8, d_state=4, dtype=torch.float64, backend="torch")
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    y_seq, _ = mixer(x, reset=torch.ones(2, 5, dtype=torch.bool))
    for t in range(5):
        assert_close(y_seq[:, t : t + 1], mixer(x[:, t : t + 1])[0])


@pytest.mark.parametrize("cuts", [[3], [1, 2, 10], [12]], ids=str)
def test_chunked_sequence_with_carried_state_equals_whole(cuts):
    mixer = MambaMixer(8, d_state=4, dtype=torch.float64, backend="torch")
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    reset = random_reset(2, 13, 1)
    y_whole, final = mixer(x, reset=reset)
    bounds = [0, *cuts, 13]
    state, ys = None, []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        y, state = mixer(x[:, lo:hi], state, reset[:, lo:hi])
        ys.append(y)
    assert_close(torch.cat(ys, 1), y_whole)
    assert_close(state.ssm, final.ssm)
    assert_close(state.conv, final.conv)


def test_step_does_not_mutate_state_and_is_differentiable():
    mixer = MambaMixer(8, d_state=4)
    state = mixer.zero_state((2,))
    state = MambaState(conv=state.conv.normal_(), ssm=state.ssm.normal_())
    snapshot = MambaState(conv=state.conv.clone(), ssm=state.ssm.clone())
    ssm = state.ssm.clone().requires_grad_()
    y, new = mixer.step(torch.randn(2, 8), MambaState(conv=state.conv, ssm=ssm))
    assert torch.equal(state.conv, snapshot.conv) and torch.equal(state.ssm, snapshot.ssm)
    (y.sum() + new.ssm.sum()).backward()
    assert ssm.grad is not None and ssm.grad.abs().sum() > 0


def test_gradients_into_initial_state_match_finite_differences():
    torch.manual_seed(0)
    mixer = MambaMixer(4, d_state=2, expand=1, dtype=torch.float64, backend="torch")
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    reset = torch.zeros(2, 6, dtype=torch.bool)
    reset[1, 3] = True
    conv0 = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    ssm0 = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)

    def f(conv0, ssm0):
        y, final = mixer(x, MambaState(conv=conv0, ssm=ssm0), reset)
        return y, final.conv, final.ssm

    assert torch.autograd.gradcheck(f, (conv0, ssm0))


def test_small_dt_values_are_accepted_and_used():
    mixer = MambaMixer(8, dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-6)
    dt = F.softplus(mixer.dt_proj.bias.double())
    assert dt.min() >= 1e-6 * 0.999 and dt.max() <= 1e-5 * 1.001


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(d_model=0), ["d_model", "0"]),
        (dict(d_state=-1), ["d_state", "-1"]),
        (dict(d_conv=1), ["d_conv", "1"]),
        (dict(dt_min=0.0), ["dt_min", "0.0"]),
        (dict(dt_min=0.1, dt_max=0.01), ["dt_max", "0.01"]),
        (dict(dt_min=1e-6, dt_init_floor=1e-4), ["dt_init_floor", "0.0001"]),
        (dict(dt_init="uniform"), ["dt_init", "uniform"]),
        (dict(backend="cuda"), ["backend", "cuda"]),
        (dict(dt_rank=2.5), ["dt_rank", "2.5"]),
    ],
    ids=lambda v: str(v) if isinstance(v, dict) else "",
)
def test_bad_constructor_values_name_the_argument(kwargs, words):
    kwargs = {"d_model": 8, **kwargs}
    with pytest.raises(ValueError) as info:
        MambaMixer(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_inputs_name_the_argument():
    mixer = MambaMixer(8, d_state=4)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, d_model\] with d_model=8, got \[2, 3, 7\]"):
        mixer(torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got dtype torch.int64"):
        mixer(torch.ones(2, 3, 8, dtype=torch.long))
    bad_state = MambaState(conv=torch.zeros(2, 16, 3), ssm=torch.zeros(2, 16, 5))
    with pytest.raises(ValueError, match=r"ssm_state must have shape \[2, 16, 4\], got \[2, 16, 5\]"):
        mixer(torch.randn(2, 3, 8), bad_state)
    with pytest.raises(ValueError, match="reset must have shape"):
        mixer(torch.randn(2, 3, 8), reset=torch.zeros(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("start_marker", [False, True], ids=["plain", "start_marker"])
def test_sequence_with_restart_states_equals_steps_that_restart_from_them(start_marker):
    torch.manual_seed(0)
    mixer = MambaMixer(8, d_state=4, backend="torch", start_marker=start_marker, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 8, generator=g, dtype=torch.float64)
    reset = torch.zeros(2, 7, dtype=torch.bool)
    reset[0, [0, 4]] = True
    reset[1, 6] = True
    zero = mixer.zero_state((3,), dtype=torch.float64)
    restart = MambaState(
        conv=torch.randn(zero.conv.shape, generator=g, dtype=torch.float64).requires_grad_(),
        ssm=torch.randn(zero.ssm.shape, generator=g, dtype=torch.float64).requires_grad_(),
    )
    y, final = mixer(x, None, reset, restart)
    state, ys, row = mixer.zero_state((2,), dtype=torch.float64), [], 0
    for t in range(7):
        conv, ssm = list(state.conv.unbind(0)), list(state.ssm.unbind(0))
        for b in range(2):
            if reset[b, t]:
                conv[b], ssm[b] = restart.conv[row], restart.ssm[row]
                row += 1
        step_y, state = mixer.step(x[:, t], MambaState(conv=torch.stack(conv), ssm=torch.stack(ssm)))
        ys.append(step_y)
    assert_close(y, torch.stack(ys, 1))
    assert_close(final.ssm, state.ssm)
    assert_close(final.conv, state.conv)
    grads = torch.autograd.grad(y.sum(), restart)
    expected = torch.autograd.grad(torch.stack(ys, 1).sum(), restart)
    for got, want in zip(grads, expected):
        assert_close(got, want)
        assert got.abs().sum() > 0


def test_presets_fill_only_the_config_fields_left_unset():
    assert astuple_init(MambaConfig()) == (1e-4, 1e-4, 30.0, True)
    assert astuple_init(MambaConfig(preset="mamba_ssm")) == (1e-3, 1e-4, 1.0, False)
    # a dt_min below the preset's floor lowers the floor with it; an explicit value wins over the preset
    assert astuple_init(MambaConfig(preset="mamba_ssm", dt_min=1e-6, start_marker=True)) == (1e-6, 1e-6, 1.0, True)
    made = MambaConfig(preset="mamba_ssm")
    assert dataclasses.replace(made, backend="torch").bc_init_scale == made.bc_init_scale
    assert MambaMixer(16).config == MambaConfig(d_model=16, preset="mamba_ssm")


def astuple_init(config):
    return (config.dt_min, config.dt_init_floor, config.bc_init_scale, config.start_marker)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(preset="ssm"), "preset must be one of ['rl', 'mamba_ssm'], got 'ssm'"),
        (dict(num_layers=0), "num_layers must be a positive int, got 0"),
        (dict(expand=True), "expand must be a positive int, got True"),
        (dict(bc_init_scale=0.0), "bc_init_scale must be a finite float > 0, got 0.0"),
        (dict(start_marker="yes"), "start_marker must be a bool, got 'yes'"),
        (dict(norm="batchnorm"), "norm must be 'rmsnorm' or 'layernorm', got 'batchnorm'"),
        (dict(dt_min=1e-50), "dt_min must give a finite initial step in float32"),
        (dict(dt_min=1e-3, dt_init_floor=1e-50), "dt_init_floor must give a finite initial step in float32"),
        (dict(dt_max=1e39), "dt_max must give a finite initial step in float32"),
    ],
    ids=lambda v: "-".join(map(str, v)) if isinstance(v, dict) else "",
)
def test_bad_config_values_name_the_field_expected_and_got(kwargs, message):
    with pytest.raises(ValueError) as info:
        MambaConfig(**kwargs)
    assert message in str(info.value)


def test_a_mixer_takes_a_config_or_keywords_not_both():
    config = MambaConfig(d_model=8, d_state=4, preset="mamba_ssm")
    torch.manual_seed(0)
    from_config = MambaMixer(config=config)
    torch.manual_seed(0)
    from_keywords = MambaMixer(8, d_state=4)
    for (name, a), (_, b) in zip(from_config.state_dict().items(), from_keywords.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"not both: got config and \['d_state'\]"):
        MambaMixer(config=config, d_state=8)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['d_stat'\]"):
        MambaMixer(8, d_stat=4)
    from_config.backend = "torch"
    assert from_config.config.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        from_config.backend = "cuda"
