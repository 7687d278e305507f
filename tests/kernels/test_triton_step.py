"""The fused Triton rollout step: conv step, SSM step and the whole in-place mixer step."""

import pytest
import torch

from tests.kernels.conftest import assert_rel_close

pytest.importorskip("triton")

from mamba_rl.kernels import naive, ops  # noqa: E402
from mamba_rl.kernels.triton_conv import causal_conv1d_triton  # noqa: E402
from mamba_rl.kernels.triton_scan import selective_scan_triton  # noqa: E402
from mamba_rl.kernels.triton_step import (  # noqa: E402
    MixerStepWorkspace,
    causal_conv1d_step_inplace,
    causal_conv1d_step_triton,
    mamba_mixer_step,
    selective_state_step_inplace,
    selective_state_step_triton,
)
from mamba_rl.mixer import MambaMixer  # noqa: E402
from mamba_rl.state import MambaState  # noqa: E402


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def conv_step_inputs(b, d, width, dtype, *, bias=True, seed=0, device="cpu"):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    reset = torch.tensor([True, False] * (b // 2) + [False] * (b % 2)).to(device)
    return dict(x=r(b, d), conv_state=r(b, d, width - 1), weight=r(d, width), bias=r(d) if bias else None), reset


def ssm_step_inputs(b, d, n, dtype, *, z=True, D=True, bias=True, seed=0, device="cpu"):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    inputs = dict(
        h=r(b, d, n),
        x=r(b, d).to(dtype),
        delta=(0.5 * r(b, d) - 1).to(dtype),
        A=-torch.exp(0.5 * r(d, n)),
        B=r(b, n).to(dtype),
        C=r(b, n).to(dtype),
        D=r(d) if D else None,
        z=r(b, d).to(dtype) if z else None,
        delta_bias=0.5 * r(d) if bias else None,
    )
    reset = torch.tensor([True, False] * (b // 2) + [False] * (b % 2))
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}, reset.to(device)


@pytest.mark.parametrize("width", [2, 4], ids=["W2", "W4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_reset", [False, True], ids=["noreset", "reset"])
def test_conv_step_matches_reference(width, dtype, with_reset, device):
    inputs, reset = conv_step_inputs(5, 37, width, dtype, device=device)
    reset = reset if with_reset else None
    y_ref, s_ref = naive.causal_conv1d_step_ref(
        **{k: None if v is None else v.double() for k, v in inputs.items()}, activation="silu", reset=reset
    )
    y, state = causal_conv1d_step_triton(**inputs, activation="silu", reset=reset)
    assert y.dtype == dtype and state.dtype == dtype
    assert_rel_close("y", y, y_ref, dtype)
    assert_rel_close("conv_state", state, s_ref, dtype)
    # in place: the state buffer itself becomes the new state
    state_buf = inputs["conv_state"].clone()
    y_inplace = causal_conv1d_step_inplace(inputs["x"], state_buf, inputs["weight"], inputs["bias"], "silu", reset)
    assert torch.equal(y_inplace, y) and torch.equal(state_buf, state)


@pytest.mark.parametrize("n", [1, 16, 64], ids=["N1", "N16", "N64"])
@pytest.mark.parametrize("options", [{}, {"z": False, "D": False, "bias": False}], ids=["full", "bare"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ssm_step_matches_reference(n, options, dtype, device):
    inputs, reset = ssm_step_inputs(5, 12, n, dtype, device=device, **options)
    y_ref, h_ref = naive.selective_state_step_ref(
        **{k: None if v is None else v.double() for k, v in inputs.items()}, delta_softplus=True, reset=reset
    )
    y, h_new = selective_state_step_triton(**inputs, delta_softplus=True, reset=reset)
    assert y.dtype == dtype and h_new.dtype == torch.float32
    assert_rel_close("y", y, y_ref, dtype)
    assert_rel_close("h", h_new, h_ref, dtype)
    h_buf = inputs["h"].clone()
    args = {k: v for k, v in inputs.items() if k != "h"}
    y_inplace = selective_state_step_inplace(h_buf, **args, delta_softplus=True, reset=reset)
    assert torch.equal(y_inplace, y) and torch.equal(h_buf, h_new)


def test_ssm_step_with_grad_matches_reference_grads(device):
    inputs, reset = ssm_step_inputs(4, 8, 16, torch.float32, device=device)
    outs = {}
    for name, fn, cast in (
        ("ref", naive.selective_state_step_ref, torch.float64),
        ("triton", selective_state_step_triton, torch.float32),
    ):
        leaves = {k: v.detach().to(cast).requires_grad_(True) for k, v in inputs.items()}
        y, h = fn(**leaves, delta_softplus=True, reset=reset)
        (y.double().sum() + (h.double() ** 2).sum()).backward()
        outs[name] = (y, h, {k: v.grad for k, v in leaves.items()})
    for k in inputs:
        assert_rel_close(f"d{k}", outs["triton"][2][k], outs["ref"][2][k], torch.float32)


def test_step_loop_equals_sequence_with_resets(device):
    """Stepping conv and SSM one step at a time gives the sequence kernels' outputs and states."""
    g = _gen(3)
    b, d, n, L, width = 3, 8, 16, 12, 4
    x = torch.randn(b, d, L, generator=g).to(device)
    weight = torch.randn(d, width, generator=g).to(device)
    conv_bias = torch.randn(d, generator=g).to(device)
    conv0 = torch.randn(b, d, width - 1, generator=g).to(device)
    reset = torch.zeros(b, L, dtype=torch.bool)
    reset[0, 0] = reset[1, 5] = reset[2, L - 1] = reset[1, 6] = True
    reset = reset.to(device)
    delta = torch.randn(b, d, L, generator=g).to(device)
    A = -torch.rand(d, n, generator=g).to(device) - 0.1
    B, C = (torch.randn(b, n, L, generator=g).to(device) for _ in range(2))
    D = torch.randn(d, generator=g).to(device)
    z = torch.randn(b, d, L, generator=g).to(device)
    dbias = torch.randn(d, generator=g).to(device)
    h0 = torch.randn(b, d, n, generator=g).to(device)

    xc_seq, conv_last = causal_conv1d_triton(x, weight, conv_bias, conv0, reset, "silu")
    y_seq, h_last = selective_scan_triton(xc_seq, delta, A, B, C, D, z, dbias, True, h0, reset)

    conv_state, h, ys = conv0.clone(), h0.clone(), []
    for t in range(L):
        xc = causal_conv1d_step_inplace(
            x[..., t].contiguous(), conv_state, weight, conv_bias, "silu", reset[:, t].contiguous()
        )
        ys.append(
            selective_state_step_inplace(
                h, xc, delta[..., t], A, B[..., t], C[..., t], D, z[..., t], dbias, True, reset[:, t].contiguous()
            )
        )
    assert_rel_close("y", torch.stack(ys, -1), y_seq, torch.float32)
    assert_rel_close("h_last", h, h_last, torch.float32)
    assert_rel_close("conv_state", conv_state, conv_last, torch.float32)


def _mixer(d_model, device, seed=0, dtype=None):
    torch.manual_seed(seed)
    mixer = MambaMixer(d_model, backend="torch", device=device, dtype=dtype)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mixer


def _mixer_params(mixer):
    return (
        mixer.conv1d.weight.squeeze(1),
        mixer.conv1d.bias,
        mixer.x_proj.weight,
        mixer.dt_proj.weight,
        mixer.dt_proj.bias,
        mixer.A.contiguous(),
        mixer.D,
    )


def _fused_step(mixer, x, conv_state, ssm_state, reset, out, workspace):
    """The fused mixer step, states in place, with in_proj and out_proj around it."""
    mamba_mixer_step(mixer.in_proj(x), conv_state, ssm_state, *_mixer_params(mixer), reset, out, workspace)
    return mixer.out_proj(out)


# STEP_CONFIG overrides: the default (one channel tile at d_inner = 64), several conv and SSM
# channel tiles with a partial last env block (21 envs), and tl.dot for x_proj (16 envs a program)
MIXER_STEP_CONFIGS = {
    "default": {},
    "tiles": {"block_e": 4, "block_k": 16, "block_d": 16},
    "dot": {"block_e": 16, "block_k": 32, "block_d": 32},
}


@pytest.fixture(params=list(MIXER_STEP_CONFIGS))
def mixer_step_config(request, monkeypatch):
    import mamba_rl.kernels.triton_step as triton_step

    monkeypatch.setattr(triton_step, "STEP_CONFIG", {**triton_step.STEP_CONFIG, **MIXER_STEP_CONFIGS[request.param]})
    return request.param


@torch.no_grad()
def test_fused_mixer_step_equals_mixer_step_over_several_steps(device, mixer_step_config):
    mixer = _mixer(32, device)
    N = 21
    g = _gen(5)
    state = MambaState(
        conv=torch.randn(N, mixer.d_inner, mixer.d_conv - 1, generator=g).to(device),
        ssm=torch.randn(N, mixer.d_inner, mixer.d_state, generator=g).to(device),
    )
    conv_buf, ssm_buf = state.conv.clone(), state.ssm.clone()
    out = torch.empty(N, mixer.d_inner, device=device)
    workspace = MixerStepWorkspace(N, mixer.dt_rank, mixer.d_state, device)
    for step in range(3):
        x = torch.randn(N, 32, generator=g).to(device)
        reset = (torch.rand(N, generator=g) < 0.3).to(device)
        y_ref, state = mixer.step(x, state, reset)
        y = _fused_step(mixer, x, conv_buf, ssm_buf, reset, out, workspace)
        assert_rel_close(f"y[{step}]", y, y_ref, torch.float32)
        assert_rel_close(f"conv[{step}]", conv_buf, state.conv, torch.float32)
        assert_rel_close(f"ssm[{step}]", ssm_buf, state.ssm, torch.float32)


# the interpreter computes on NaN and inf with numpy, which warns
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@torch.no_grad()
def test_steps_clear_nonfinite_states_at_a_reset(device):
    """NaN and inf conv windows and SSM states of reset envs do not survive the reset (selects, not
    products with a keep mask: ``NaN * 0`` is NaN): the conv step, the SSM step and the fused mixer
    step give exactly what they give from zero states, and leave the other envs (one with a NaN
    state and no reset) as they were."""
    bad = torch.tensor([float("nan"), 0.0, float("inf"), float("nan"), 0.0], device=device)
    for kind in ("conv", "ssm", "mixer"):
        if kind == "conv":
            inputs, reset = conv_step_inputs(5, 37, 4, torch.float32, device=device)
            name, step = "conv_state", causal_conv1d_step_triton
        elif kind == "ssm":
            inputs, reset = ssm_step_inputs(5, 12, 16, torch.float32, device=device)
            name, step = "h", selective_state_step_triton
        # reset [5]: envs 0 and 2 (NaN and inf states) restart; env 3 keeps its NaN state
        if kind != "mixer":
            kwargs = {"activation": "silu"} if kind == "conv" else {"delta_softplus": True}
            poisoned = dict(inputs, **{name: inputs[name] + bad.view(-1, 1, 1)})
            zeroed = dict(inputs, **{name: torch.where(reset.view(-1, 1, 1), 0.0, poisoned[name])})
            y_bad, state_bad = step(**poisoned, reset=reset, **kwargs)
            y_zero, state_zero = step(**zeroed, reset=reset, **kwargs)
        else:
            mixer = _mixer(16, device)
            reset = torch.tensor([True, False, True, False, False], device=device)
            g = _gen(7)
            x = torch.randn(5, 16, generator=g).to(device)
            conv = torch.randn(5, mixer.d_inner, mixer.d_conv - 1, generator=g).to(device) + bad.view(-1, 1, 1)
            ssm = torch.randn(5, mixer.d_inner, mixer.d_state, generator=g).to(device) + bad.view(-1, 1, 1)
            outs = []
            for c, h in (
                (conv, ssm),
                (torch.where(reset.view(-1, 1, 1), 0.0, conv), torch.where(reset.view(-1, 1, 1), 0.0, ssm)),
            ):
                c, h = c.clone(), h.clone()
                out = torch.empty(5, mixer.d_inner, device=device)
                workspace = MixerStepWorkspace(5, mixer.dt_rank, mixer.d_state, device)
                outs.append((_fused_step(mixer, x, c, h, reset, out, workspace), c, h))
            (y_bad, conv_bad, ssm_bad), (y_zero, conv_zero, ssm_zero) = outs
            assert torch.equal(conv_bad[[0, 2]], conv_zero[[0, 2]]), kind
            state_bad, state_zero = ssm_bad, ssm_zero
        assert torch.isfinite(y_bad[[0, 2]]).all() and torch.isfinite(state_bad[[0, 2]]).all(), kind
        assert torch.equal(y_bad[[0, 1, 2, 4]], y_zero[[0, 1, 2, 4]]), kind
        assert torch.equal(state_bad[[0, 1, 2, 4]], state_zero[[0, 1, 2, 4]]), kind
        assert torch.isnan(y_bad[3]).all() and torch.isnan(y_zero[3]).all(), kind


def test_fused_mixer_step_rejects_wrong_state_dtype(device):
    mixer = _mixer(16, device)
    N = 2
    with pytest.raises(ValueError, match="ssm_state"):
        _fused_step(
            mixer,
            torch.randn(N, 16, device=device),
            torch.zeros(N, mixer.d_inner, 3, device=device),
            torch.zeros(N, mixer.d_inner, mixer.d_state, device=device, dtype=torch.float64),
            None,
            torch.empty(N, mixer.d_inner, device=device),
            MixerStepWorkspace(N, mixer.dt_rank, mixer.d_state, device),
        )


def test_dispatchers_route_steps_to_triton(device):
    inputs, reset = conv_step_inputs(4, 8, 4, torch.float32, device=device)
    y_ops, s_ops = ops.causal_conv1d_step(**inputs, activation="silu", reset=reset, backend="triton")
    y_tri, s_tri = causal_conv1d_step_triton(**inputs, activation="silu", reset=reset)
    assert torch.equal(y_ops, y_tri) and torch.equal(s_ops, s_tri)
    inputs, reset = ssm_step_inputs(4, 8, 16, torch.float32, device=device)
    y_ops, h_ops = ops.selective_state_step(**inputs, delta_softplus=True, reset=reset, backend="triton")
    y_tri, h_tri = selective_state_step_triton(**inputs, delta_softplus=True, reset=reset)
    assert torch.equal(y_ops, y_tri) and torch.equal(h_ops, h_tri)


@pytest.mark.gpu
@torch.no_grad()
def test_fused_mixer_step_in_cuda_graph_equals_eager_at_4096_envs():
    mixer = _mixer(128, "cuda")
    N = 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(N, 128, device="cuda", generator=g)
    reset = torch.rand(N, device="cuda", generator=g) < 0.01
    conv0 = torch.randn(N, mixer.d_inner, mixer.d_conv - 1, device="cuda", generator=g)
    ssm0 = torch.randn(N, mixer.d_inner, mixer.d_state, device="cuda", generator=g)
    y_ref, state_ref = mixer.step(x, MambaState(conv=conv0, ssm=ssm0), reset)

    conv_buf, ssm_buf = conv0.clone(), ssm0.clone()
    out = torch.empty(N, mixer.d_inner, device="cuda")
    workspace = MixerStepWorkspace(N, mixer.dt_rank, mixer.d_state, "cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        _fused_step(mixer, x, conv_buf.clone(), ssm_buf.clone(), reset, out, workspace)  # compile
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = _fused_step(mixer, x, conv_buf, ssm_buf, reset, out, workspace)
    conv_buf.copy_(conv0)
    ssm_buf.copy_(ssm0)
    graph.replay()
    torch.cuda.synchronize()
    assert_rel_close("y", y_graph, y_ref, torch.float32)
    assert_rel_close("conv", conv_buf, state_ref.conv, torch.float32)
    assert_rel_close("ssm", ssm_buf, state_ref.ssm, torch.float32)


@torch.no_grad()
def test_fused_mixer_step_writes_separate_outputs_and_leaves_its_inputs(device, mixer_step_config):
    mixer = _mixer(32, device)
    N, d, w, n = 9, mixer.d_inner, mixer.d_conv, mixer.d_state
    g = _gen(7)
    # each state is layer 1 of a [N, 2, ...] stack (strided envs), its output layer 0 of another
    conv_all = torch.randn(N, 2, d, w - 1, generator=g).to(device)
    ssm_all = torch.randn(N, 2, d, n, generator=g).to(device)
    conv_before, ssm_before = conv_all.clone(), ssm_all.clone()
    conv_out = torch.full_like(conv_all, float("nan"))
    ssm_out = torch.full_like(ssm_all, float("nan"))
    x = torch.randn(N, 32, generator=g).to(device)
    reset = (torch.arange(N) % 3 == 0).to(device)
    xz = mixer.in_proj(x)
    out = torch.empty(N, d, device=device)
    _, conv_new, ssm_new = mamba_mixer_step(
        xz,
        conv_all[:, 1],
        ssm_all[:, 1],
        *_mixer_params(mixer),
        reset,
        out,
        conv_state_out=conv_out[:, 0],
        ssm_state_out=ssm_out[:, 0],
    )
    assert torch.equal(conv_all, conv_before) and torch.equal(ssm_all, ssm_before), "an input state was written"
    assert conv_out[:, 1].isnan().all() and ssm_out[:, 1].isnan().all(), "written outside the output slices"
    assert conv_new.data_ptr() == conv_out.data_ptr() and ssm_new.data_ptr() == ssm_out.data_ptr()
    # the same bits as in place on copies of the inputs
    conv_ip, ssm_ip = conv_all[:, 1].clone(), ssm_all[:, 1].clone()
    out_ip = torch.empty(N, d, device=device)
    mamba_mixer_step(
        xz, conv_ip, ssm_ip, *_mixer_params(mixer), reset, out_ip, MixerStepWorkspace(N, mixer.dt_rank, n, device)
    )
    assert torch.equal(out_ip, out) and torch.equal(conv_ip, conv_out[:, 0]) and torch.equal(ssm_ip, ssm_out[:, 0])
    # and the unfused step's numbers
    y_ref, state_ref = mixer.step(x, MambaState(conv=conv_all[:, 1], ssm=ssm_all[:, 1]), reset)
    assert_rel_close("y", mixer.out_proj(out), y_ref, torch.float32)
    assert_rel_close("conv", conv_out[:, 0], state_ref.conv, torch.float32)
    assert_rel_close("ssm", ssm_out[:, 0], state_ref.ssm, torch.float32)


def test_fused_mixer_step_names_a_bad_output_state(device):
    mixer = _mixer(16, device)
    N, d, n = 2, mixer.d_inner, mixer.d_state
    args = (
        mixer.in_proj(torch.randn(N, 16, device=device)).detach(),
        torch.zeros(N, d, 3, device=device),
        torch.zeros(N, d, n, device=device),
        *_mixer_params(mixer),
        None,
        torch.empty(N, d, device=device),
    )
    with pytest.raises(ValueError, match=r"ssm_state_out must be a float32 \[2, 32, 16\]"):
        mamba_mixer_step(*args, ssm_state_out=torch.zeros(N, n, d, device=device).transpose(1, 2))
    with pytest.raises(ValueError, match="conv_state_out must be"):
        mamba_mixer_step(*args, conv_state_out=torch.zeros(N, d, 2, device=device))


@pytest.mark.parametrize(
    "in_place,dtype",
    [(False, torch.float32), (True, torch.float32), (True, torch.bfloat16)],
    ids=["pure-fp32", "in_place-fp32", "in_place-bf16"],
)
def test_mixer_step_without_grad_runs_the_fused_kernels(in_place, dtype, device, monkeypatch):
    import mamba_rl.kernels.triton_step as triton_step

    calls = []
    fused_step = triton_step.mamba_mixer_step
    monkeypatch.setattr(triton_step, "mamba_mixer_step", lambda *a, **k: calls.append(1) or fused_step(*a, **k))
    reference = _mixer(32, device, dtype=dtype)
    mixer = _mixer(32, device, dtype=dtype)
    mixer.backend = "triton"
    N = 7
    g = _gen(11)
    # conv state in the parameters' dtype, SSM state fp32
    state_ref = MambaState(
        conv=torch.randn(N, mixer.d_inner, mixer.d_conv - 1, generator=g).to(device, dtype),
        ssm=torch.randn(N, mixer.d_inner, mixer.d_state, generator=g).to(device),
    )
    state = MambaState(conv=state_ref.conv.clone(), ssm=state_ref.ssm.clone())
    for step in range(3):
        x = torch.randn(N, 32, generator=g).to(device, dtype)
        reset = (torch.rand(N, generator=g) < 0.3).to(device)
        with torch.no_grad():
            y_ref, state_ref = reference.step(x, state_ref, reset)
            y, new = mixer.step(x, state, reset, out_state=state if in_place else None)
        assert (new.ssm.data_ptr() == state.ssm.data_ptr()) == in_place
        assert y.dtype == dtype and new.conv.dtype == dtype and new.ssm.dtype == torch.float32
        state = new
        # bf16: the fused step keeps x_proj's output in fp32, the unfused one rounds it to bf16
        assert_rel_close(f"y[{step}]", y, y_ref, dtype)
        assert_rel_close(f"conv[{step}]", state.conv, state_ref.conv, dtype)
        assert_rel_close(f"ssm[{step}]", state.ssm, state_ref.ssm, dtype)
    assert len(calls) == 3
    # with a gradient to compute, the step is the differentiable one
    y, _ = mixer.step(x, state, reset)
    y.float().square().sum().backward()
    assert len(calls) == 3 and mixer.A_log.grad is not None and mixer.x_proj.weight.grad is not None


def test_rollout_stepping_fused_in_place_is_replayed_by_the_triton_scan(device):
    from mamba_rl.config import TrainConfig
    from mamba_rl.envs import DelayedMemoryParams
    from mamba_rl.evaluate import build_policy
    from mamba_rl.training import RolloutCollector, replay

    torch.manual_seed(0)
    cfg = TrainConfig(
        num_bits=2, horizon=6, num_envs=6, d_model=16, device=str(device), mamba_backend="triton", bc_init_scale=10.0
    )
    params = DelayedMemoryParams(num_bits=2, horizon=(2, 6))
    policy = build_policy(cfg, device)
    collector = RolloutCollector(policy, params, 6, 5, 2, 0, device, cuda_graph=False)
    collector.collect()
    rollout = collector.collect()
    assert not bool(rollout.is_init[:, 0].all()), "rows must start mid-episode"
    with torch.no_grad():
        logits, value = replay(policy, rollout, torch.arange(6, device=device))
    log_prob = torch.log_softmax(logits, -1).gather(-1, rollout.action[..., None]).squeeze(-1)
    torch.testing.assert_close(log_prob, rollout.log_prob, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, rollout.value, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@torch.no_grad()
def test_module_step_in_place_in_a_cuda_graph_matches_the_torch_backend():
    from mamba_rl import MambaModule
    from mamba_rl.module import MambaState

    torch.manual_seed(0)
    module = MambaModule(32, 128, 2, in_key="obs", out_key="feat", backend="triton", device="cuda")
    reference = MambaModule(32, 128, 2, in_key="obs", out_key="feat", backend="torch", device="cuda")
    reference.load_state_dict(module.state_dict())
    N = 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    zero = module.zero_state((N,), "cuda")
    state_ref = MambaState(
        torch.randn(zero.ssm.shape, device="cuda", generator=g),
        torch.randn(zero.conv.shape, device="cuda", generator=g),
    )
    state = MambaState(state_ref.ssm.clone(), state_ref.conv.clone())
    x = torch.empty(N, 32, device="cuda")
    reset = torch.empty(N, device="cuda", dtype=torch.bool)

    def step():
        return module.step(x, state, reset, out_state=state)[0]

    x.normal_(generator=g)
    reset.copy_(torch.rand(N, device="cuda", generator=g) < 0.01)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compiles
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    # undo the warm-up step (capturing runs nothing)
    state.ssm.copy_(state_ref.ssm)
    state.conv.copy_(state_ref.conv)
    for t in range(3):
        x.normal_(generator=g)
        reset.copy_(torch.rand(N, device="cuda", generator=g) < 0.01)
        graph.replay()
        y_ref, state_ref = reference.step(x, state_ref, reset)
        assert_rel_close(f"y[{t}]", out, y_ref, torch.float32)
        assert_rel_close(f"ssm[{t}]", state.ssm, state_ref.ssm, torch.float32)
        assert_rel_close(f"conv[{t}]", state.conv, state_ref.conv, torch.float32)
